//! The whole system: boot, its managers and n0m1ctl.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use predicates::str::contains;

use crate::support::{TestEnv, alive, wait_until};

const T: Duration = Duration::from_secs(15);

#[test]
fn start_status_stop_leave_nothing_behind() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("tree", "tree.sh", "nano_manager", "{}");
    env.ctl(&["status"]).code(3);
    env.ctl(&["start"])
        .success()
        .stdout(contains("n0m1 started"));
    env.ctl(&["start"])
        .success()
        .stdout(contains("already running"));
    for name in [
        "boot_system",
        "daemon_manager",
        "nano_manager",
        "main_llm_manager",
    ] {
        assert!(
            env.pid_of(name).is_some_and(alive),
            "{name} is up when start returns"
        );
    }
    env.wait_pid("sleepy", "sleepy to run");
    env.wait_pid("tree", "tree to run");

    let output = env
        .ctl(&["status", "--json", "--detailed"])
        .success()
        .get_output()
        .stdout
        .clone();
    let view: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(view["boot"]["state"], "running");
    let managers = view["managers"].as_array().unwrap();
    assert!(
        managers.iter().all(|m| m["state"] == "running"),
        "{managers:?}"
    );
    let sleepy = view["components"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["component_id"] == "sleepy")
        .unwrap();
    assert_eq!(sleepy["actual"], "running");
    assert_eq!(sleepy["desired"], "active");
    assert!(sleepy["rss_kib"].as_u64().unwrap() > 0);
    env.ctl(&["status"])
        .success()
        .stdout(contains("sleepy"))
        .stdout(contains("running"));

    env.ctl(&["stop"])
        .success()
        .stdout(contains("n0m1 stopped"));
    assert!(
        env.live_processes().is_empty(),
        "left running: {:?}",
        env.live_processes()
    );
    assert!(
        env.pid_files().is_empty(),
        "left PID files: {:?}",
        env.pid_files()
    );
    env.ctl(&["status"]).code(3).stdout(contains("stopped"));
    env.ctl(&["stop"]).success().stdout(contains("not running"));
}

#[test]
fn killing_boot_takes_down_managers_and_components() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("tree", "tree.sh", "main_llm_manager", "{}");
    let boot = env.spawn("boot_system");
    env.wait_pid("sleepy", "sleepy to run");
    env.wait_pid("tree", "tree to run");
    kill(Pid::from_raw(boot), Signal::SIGKILL).unwrap();
    env.wait_child(boot, T);
    wait_until(T, "no process of this home left alive", || {
        env.live_processes().is_empty()
    });
}

#[test]
fn a_killed_manager_is_restarted_and_adopts_its_components() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("boot_system");
    let component = env.wait_pid("sleepy", "sleepy to run");
    let manager = env.wait_pid("daemon_manager", "daemon_manager to run");
    kill(Pid::from_raw(manager), Signal::SIGKILL).unwrap();
    env.wait_new_pid(
        "daemon_manager",
        manager,
        T,
        "boot to restart daemon_manager",
    );
    wait_until(T, "the component to be adopted", || {
        env.count_events("sleepy", "ADOPTED") == 1
    });
    assert_eq!(
        env.pid_of("sleepy"),
        Some(component),
        "the same process, not a new one"
    );
    assert_eq!(env.processes_of("sleepy"), vec![component], "no duplicate");
    assert_eq!(
        env.count_events("boot_daemon_manager", "MANAGER_CRASHED"),
        1
    );

    // The adopted process is still supervised: a crash is seen and it is restarted.
    std::thread::sleep(Duration::from_millis(600));
    kill(Pid::from_raw(component), Signal::SIGKILL).unwrap();
    let next = env.wait_new_pid(
        "sleepy",
        component,
        T,
        "the adopted component to be restarted",
    );
    wait_until(T, "exactly one sleeper", || {
        env.processes_of("sleepy") == vec![next]
    });
    // And disabling it still works.
    env.ctl(&["disable", "sleepy"]).success();
    wait_until(T, "disable to stop it", || {
        env.processes_of("sleepy").is_empty()
    });
}

#[test]
fn sighup_applies_a_changed_config() {
    let mut env = TestEnv::new();
    let boot = env.spawn("boot_system");
    let llm = env.wait_pid("main_llm_manager", "main_llm_manager to run");
    let mut config: serde_json::Value = serde_json::from_str(crate::support::FAST_CONFIG).unwrap();
    config["managers"]
        .as_object_mut()
        .unwrap()
        .remove("main_llm_manager.py");
    let without_llm = config.to_string();
    std::fs::write(env.home.config_path(), &without_llm).unwrap();
    kill(Pid::from_raw(boot), Signal::SIGHUP).unwrap();
    wait_until(T, "the removed manager to stop", || !alive(llm));
    // Boot's rows go through its writer thread: written soon after, not at once.
    wait_until(T, "MANAGER_STOPPED recorded", || {
        env.count_events("boot_main_llm_manager", "MANAGER_STOPPED") == 1
    });

    std::fs::write(
        env.home.config_path(),
        "{\"managers\": {\"daemon_manager.py\": {\"startup_delay\": \"soon\"}}}",
    )
    .unwrap();
    kill(Pid::from_raw(boot), Signal::SIGHUP).unwrap();
    wait_until(T, "a bad config to be reported", || {
        env.count_events("boot_system", "ERROR") == 1
    });
    assert!(alive(boot), "a bad config does not stop boot");

    std::fs::write(env.home.config_path(), crate::support::FAST_CONFIG).unwrap();
    kill(Pid::from_raw(boot), Signal::SIGHUP).unwrap();
    env.wait_pid("main_llm_manager", "the re-added manager to start");
}

#[test]
fn starts_and_stops_at_once_take_turns() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    let ctl = |args: &'static [&'static str]| {
        let root = env.root().to_owned();
        std::thread::spawn(move || {
            assert_cmd::Command::new(crate::support::bin("n0m1ctl"))
                .arg("--home")
                .arg(root)
                .args(args)
                .timeout(std::time::Duration::from_secs(60))
                .output()
                .unwrap()
        })
    };
    // Four starts at once: one system, and every start says so and succeeds.
    let starts: Vec<_> = (0..4).map(|_| ctl(&["start"])).collect();
    for start in starts {
        let output = start.join().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("n0m1 started") || stdout.contains("already running"),
            "{stdout}"
        );
    }
    let sleepy = env.wait_pid("sleepy", "sleepy to run");
    assert_eq!(env.processes_of("sleepy"), vec![sleepy], "one system");

    // A start issued while a stop runs waits for it, then starts a fresh system. A component
    // that ignores SIGTERM keeps the stop going for its stop_timeout.
    env.add_component("stubborn", "stubborn.sh", "daemon_manager", "{}");
    env.wait_pid("stubborn", "stubborn to run");
    let boot = env.pid_of("boot_system").unwrap();
    let stop = ctl(&["stop"]);
    wait_until(
        std::time::Duration::from_secs(10),
        "the stop to begin",
        || env.count_events("stubborn", "STOP_REQUESTED") == 1,
    );
    let start = ctl(&["start"]).join().unwrap();
    assert!(stop.join().unwrap().status.success());
    let stdout = String::from_utf8_lossy(&start.stdout);
    assert!(start.status.success(), "{stdout}");
    assert!(stdout.contains("n0m1 started"), "{stdout}");
    let new_boot = env.wait_pid("boot_system", "the fresh boot");
    assert_ne!(new_boot, boot);
    env.wait_pid("sleepy", "sleepy to run again");
    env.ctl(&["stop"]).success();
}

/// Under systemd (`Type=notify`, `WatchdogSec=`): boot says READY=1 once every manager holds
/// its PID file, pings the watchdog, says STOPPING=1 on SIGTERM, and keeps systemd's socket to
/// itself (managers and components never see it).
#[test]
fn boot_tells_systemd_ready_pings_the_watchdog_and_keeps_the_socket_to_itself() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    let socket_path = env.home.root().join("systemd.notify");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let boot = env.spawn_with(
        "boot_system",
        &[],
        &[
            ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    let receive = || {
        let mut buf = [0u8; 512];
        let n = socket.recv(&mut buf).expect("a datagram from boot");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    // Pings may come first; READY=1 comes once the managers are up.
    let mut pings = 0;
    let ready = loop {
        let message = receive();
        if message == "WATCHDOG=1" {
            pings += 1;
            continue;
        }
        break message;
    };
    assert!(
        ready.starts_with("READY=1\nSTATUS=3 managers and the log writer running"),
        "{ready}"
    );
    for manager in [
        "n0m1_logd",
        "daemon_manager",
        "nano_manager",
        "main_llm_manager",
    ] {
        assert!(
            env.pid_of(manager).is_some(),
            "{manager} is up when READY=1 is sent"
        );
    }
    while pings < 3 {
        assert_eq!(receive(), "WATCHDOG=1");
        pings += 1;
    }
    // Managers and components do not inherit systemd's socket; components get their
    // manager's.
    let environ = |pid: i32| std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let manager = env.pid_of("daemon_manager").unwrap();
    let sleepy = env.wait_pid("sleepy", "sleepy to run");
    let has = |env: &[u8], needle: &str| env.split(|b| *b == 0).any(|kv| kv == needle.as_bytes());
    let systemd = format!("NOTIFY_SOCKET={}", socket_path.display());
    assert!(!has(&environ(manager), &systemd));
    assert!(!has(&environ(manager), "WATCHDOG_USEC=400000"));
    assert!(!has(&environ(sleepy), &systemd));
    assert!(has(
        &environ(sleepy),
        &format!(
            "NOTIFY_SOCKET={}",
            env.home.notify_socket("daemon_manager").display()
        )
    ));
    kill(Pid::from_raw(boot), Signal::SIGTERM).unwrap();
    let stopping = loop {
        let message = receive();
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert_eq!(stopping, "STOPPING=1");
    assert!(env.wait_child(boot, Duration::from_secs(30)).success());
}
