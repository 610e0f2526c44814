//! Health checks through the real manager: a component that stops pinging its watchdog, or
//! whose probe fails, is UNHEALTHY, killed and running again; bad rows are errors naming the
//! field, and the manager carries on.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{TestEnv, alive, file_contains, wait_until};

const T: Duration = Duration::from_secs(20);

#[test]
fn a_sigstopped_component_misses_its_watchdog_and_runs_again_within_three_seconds() {
    let mut env = TestEnv::new();
    // Pings at a fifth of the period systemd's way (WATCHDOG_USEC), after checking that
    // WATCHDOG_PID names it.
    env.script(
        "pinger.py",
        "import os, socket, time\n\
         print('watchdog', os.environ['WATCHDOG_USEC'], 'pid match', os.environ['WATCHDOG_PID'] == str(os.getpid()), flush=True)\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         period = int(os.environ['WATCHDOG_USEC']) / 1e6\n\
         while True:\n    s.sendto(b'WATCHDOG=1', os.environ['NOTIFY_SOCKET'])\n    time.sleep(period / 5)\n",
    );
    env.add_component("pinger", "pinger.py", "daemon_manager", "{}");
    env.sql("UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'mem_usage_daemon'");
    env.sql(
        "INSERT INTO component_health (component_id, watchdog_s) VALUES ('pinger', 1), ('mem_usage_daemon', 1)",
    );
    env.spawn_with("daemon_manager", &[], &[("N0M1_NATIVE", "1")]);
    let first = env.wait_pid("pinger", "pinger to run");
    let log = env.home.component_logs("pinger").0;
    wait_until(T, "pinger's first line", || {
        file_contains(&log, "watchdog 1000000 pid match True")
    });
    // Pinging, it stays healthy past several periods; so does the bundled daemon, which
    // pings from its own loop when asked.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(env.count_events("pinger", "UNHEALTHY"), 0);
    assert_eq!(env.count_events("mem_usage_daemon", "UNHEALTHY"), 0);
    assert_eq!(env.pid_of("pinger"), Some(first));

    kill(Pid::from_raw(first), Signal::SIGSTOP).unwrap();
    let stopped = Instant::now();
    let second = env.wait_new_pid(
        "pinger",
        first,
        Duration::from_secs(3),
        "pinger to run again within 3 s",
    );
    // Not at once: the last ping came up to a fifth of the period (plus scheduling delay on
    // a loaded machine) before the stop, and the miss is a full period after it.
    let found = stopped.elapsed();
    assert!(
        found >= Duration::from_millis(500),
        "not before the period: {found:?}"
    );
    assert!(alive(second));
    assert!(!alive(first), "the hung process was killed");
    let unhealthy = env.last_message("pinger", "UNHEALTHY");
    assert!(unhealthy.contains("no WATCHDOG=1 for"), "{unhealthy}");
    assert!(unhealthy.contains("watchdog_s = 1"), "{unhealthy}");
}

#[test]
fn a_failing_probe_is_unhealthy_and_bad_rows_name_their_field() {
    let mut env = TestEnv::new();
    let hook = env.home.hooks_dir().join("check.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"checking $N0M1_CHECKED_COMPONENT pid $N0M1_CHECKED_PID\"\nsetsid sleep 4243 > /dev/null 2>&1 &\n[ ! -e \"$N0M1_HOME/sick\" ]\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    env.add_component("probed", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("badly_checked", "sleeper.sh", "daemon_manager", "{}");
    env.sql(
        "INSERT INTO component_health (component_id, probe, probe_interval_s, probe_timeout_s, failures)
         VALUES ('probed', 'check.sh', 0.2, 1, 2), ('badly_checked', '../../bin/true', 1, 1, 1)",
    );
    let manager = env.spawn("daemon_manager");
    let first = env.wait_pid("probed", "probed to run");
    let probe_log = env.home.probe_log("probed");
    wait_until(T, "a probe run", || {
        file_contains(&probe_log, &format!("checking probed pid {first}"))
    });
    std::thread::sleep(Duration::from_millis(600));
    // Each run left a setsid child behind it; each went with its probe (one may be caught
    // between its probe's exit and the next run).
    let left: Vec<_> = crate::support::live_processes_mentioning(env.root())
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("sleep 4243"))
        .collect();
    assert!(left.len() <= 1, "probes' children left behind: {left:?}");
    assert_eq!(
        env.count_events("probed", "UNHEALTHY"),
        0,
        "a passing probe"
    );

    std::fs::write(env.home.root().join("sick"), "").unwrap();
    let second = env.wait_new_pid(
        "probed",
        first,
        Duration::from_secs(3),
        "probed to run again",
    );
    let unhealthy = env.last_message("probed", "UNHEALTHY");
    assert!(
        unhealthy.contains("check.sh failed 2 times in a row"),
        "{unhealthy}"
    );
    assert!(alive(second));

    // The bad row: one ERROR naming the row and the field; the component itself runs.
    wait_until(T, "the bad row's error", || {
        env.count_events("badly_checked", "ERROR") == 1
    });
    let error = env.last_message("badly_checked", "ERROR");
    assert!(
        error.contains("component_health row \"badly_checked\": probe"),
        "{error}"
    );
    assert!(env.pid_of("badly_checked").is_some_and(alive));
    std::thread::sleep(Duration::from_millis(5500)); // past a periodic pass
    assert_eq!(env.count_events("badly_checked", "ERROR"), 1, "said once");
    assert!(alive(manager));
    // No probe outlives the manager's stop.
    std::fs::remove_file(env.home.root().join("sick")).unwrap();
    kill(Pid::from_raw(manager), Signal::SIGTERM).unwrap();
    assert!(env.wait_child(manager, T).success());
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
}
