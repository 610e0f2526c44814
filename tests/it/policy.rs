//! Rules the README documents, each through the real binaries: boot's health kill and
//! backoff, managers that are not critical, retention pruning, `stop --force`, `restart`,
//! `.py` components and `logs boot`.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use predicates::str::contains;

use crate::support::{FAST_CONFIG, TestEnv, alive, wait_until};

const T: Duration = Duration::from_secs(30);

fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

fn messages(env: &TestEnv, id: &str, event: &str) -> Vec<String> {
    env.db()
        .prepare(
            "SELECT COALESCE(message, '') FROM component_lifecycle_log
             WHERE component_id = ?1 AND event_type = ?2 ORDER BY id",
        )
        .unwrap()
        .query_map([id, event], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// FAST_CONFIG with `edit` applied to its JSON.
fn config_with(edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut config: serde_json::Value = serde_json::from_str(FAST_CONFIG).unwrap();
    edit(&mut config);
    config.to_string()
}

#[test]
fn a_sigstopped_manager_is_killed_by_the_health_check_and_restarted() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("boot_system");
    let component = env.wait_pid("sleepy", "sleepy to run");
    let manager = env.wait_pid("daemon_manager", "daemon_manager to run");
    // Hung: alive, but its heartbeat (the PID file's mtime) stops moving.
    signal(manager, Signal::SIGSTOP);
    wait_until(T, "boot to call it unhealthy", || {
        env.count_events("boot_daemon_manager", "MANAGER_UNHEALTHY") == 1
    });
    let unhealthy = &messages(&env, "boot_daemon_manager", "MANAGER_UNHEALTHY")[0];
    assert!(unhealthy.contains("heartbeat is"), "{unhealthy}");
    assert!(unhealthy.contains("killing it"), "{unhealthy}");
    env.wait_new_pid(
        "daemon_manager",
        manager,
        T,
        "boot to restart daemon_manager",
    );
    assert!(!alive(manager), "the hung manager was killed");
    wait_until(T, "its component to be adopted", || {
        env.count_events("sleepy", "ADOPTED") == 1
    });
    assert_eq!(env.processes_of("sleepy"), vec![component]);
}

/// The heartbeat is looked at on a timer of its own (each second), not once per
/// `health_check_interval`: a manager hung just after a check, for less than two intervals,
/// is still found. Here the interval is 10 s; the manager is stopped 10.5 s after it started
/// (just after boot's first look at 10 s) for 14 s. Looking once per interval (at 20 s the
/// heartbeat is 9.5 s old, at 30 s fresh again) would never see it.
#[test]
fn a_manager_hung_between_two_health_checks_is_still_found() {
    let mut env = TestEnv::new();
    std::fs::write(
        env.home.config_path(),
        config_with(|c| {
            c["managers"]["daemon_manager.py"]["health_check_interval"] = 10.into();
            c["managers"]["daemon_manager.py"]["critical"] = true.into();
        }),
    )
    .unwrap();
    env.spawn("boot_system");
    let manager = env.wait_pid("daemon_manager", "daemon_manager to run");
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(10_500).saturating_sub(started.elapsed()));
    signal(manager, Signal::SIGSTOP);
    let stopped = Instant::now();
    wait_until(Duration::from_secs(14), "boot to call it unhealthy", || {
        env.count_events("boot_daemon_manager", "MANAGER_UNHEALTHY") == 1
    });
    let found_after = stopped.elapsed();
    signal(manager, Signal::SIGCONT);
    env.wait_new_pid("daemon_manager", manager, T, "boot to restart it");
    // Found once the heartbeat was older than the 10 s tolerance, before a second interval.
    assert!(found_after >= Duration::from_secs(10), "{found_after:?}");
}

#[test]
fn a_manager_that_is_not_critical_is_reported_and_left_alone() {
    let mut env = TestEnv::new();
    std::fs::write(
        env.home.config_path(),
        config_with(|c| c["managers"]["main_llm_manager.py"]["critical"] = false.into()),
    )
    .unwrap();
    env.spawn("boot_system");
    let manager = env.wait_pid("main_llm_manager", "main_llm_manager to run");
    signal(manager, Signal::SIGSTOP);
    wait_until(T, "boot to call it unhealthy", || {
        env.count_events("boot_main_llm_manager", "MANAGER_UNHEALTHY") >= 1
    });
    let unhealthy = &messages(&env, "boot_main_llm_manager", "MANAGER_UNHEALTHY")[0];
    assert!(unhealthy.contains("not critical"), "{unhealthy}");
    assert!(
        alive(manager),
        "a manager that is not critical is not killed"
    );
    signal(manager, Signal::SIGKILL);
    wait_until(T, "its death to be reported", || {
        env.count_events("boot_main_llm_manager", "MANAGER_CRASHED") == 1
    });
    let crashed = &messages(&env, "boot_main_llm_manager", "MANAGER_CRASHED")[0];
    assert!(crashed.contains("not critical, left down"), "{crashed}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(env.pid_of("main_llm_manager"), None, "left down");
    assert_eq!(
        env.count_events("boot_main_llm_manager", "MANAGER_STARTED"),
        1
    );
}

#[test]
fn boot_backs_off_a_manager_that_keeps_dying() {
    let mut env = TestEnv::new();
    std::fs::write(
        env.home.config_path(),
        config_with(|c| {
            c["supervisor"]["backoff_initial"] = 0.4.into();
            c["supervisor"]["backoff_max"] = 0.8.into();
        }),
    )
    .unwrap();
    env.spawn("boot_system");
    let mut previous = 0;
    for _ in 0..4 {
        let manager =
            env.wait_new_pid("daemon_manager", previous, T, "daemon_manager to (re)start");
        // Each death comes well within boot's 10 s of stable uptime.
        signal(manager, Signal::SIGKILL);
        previous = manager;
    }
    wait_until(T, "four deaths reported", || {
        env.count_events("boot_daemon_manager", "MANAGER_CRASHED") == 4
    });
    let delays: Vec<String> = messages(&env, "boot_daemon_manager", "MANAGER_CRASHED")
        .iter()
        .map(|m| m.rsplit("restarting in ").next().unwrap().to_owned())
        .collect();
    // At once, then backoff_initial doubling up to backoff_max.
    assert_eq!(delays, ["0.0 s", "0.4 s", "0.8 s", "0.8 s"]);
    env.wait_pid("daemon_manager", "the last restart");
}

#[test]
fn old_rows_are_pruned_in_batches_and_recent_ones_kept() {
    let mut env = TestEnv::new();
    std::fs::write(
        env.home.config_path(),
        config_with(|c| {
            c["retention"] = serde_json::json!({"max_age_days": 1, "prune_interval": 1});
        }),
    )
    .unwrap();
    // More old rows than one batch of 1,000, in each table the CPU daemon prunes; the recent
    // row has a value no real sample is likely to have (a sample of 2.0 % once made it two).
    env.sql(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 2500)
         INSERT INTO cpu_usage_log (timestamp, cpu_usage) SELECT '2020-01-01 00:00:00', 1.0 FROM n;
         INSERT INTO cpu_usage_log (cpu_usage) VALUES (2.345);
         INSERT INTO system_metrics_log (timestamp, cpu_usage) VALUES ('2020-01-01 00:00:00', 1.0);
         INSERT INTO component_lifecycle_log (event_timestamp, component_id, event_type)
           VALUES ('2020-01-01 00:00:00', 'old', 'ERROR');
         INSERT INTO component_lifecycle_log (component_id, event_type) VALUES ('recent', 'ERROR');
         INSERT INTO db_access_log (timestamp, component_id, table_name, access_type)
           VALUES ('2020-01-01 00:00:00', 'old', 'x', 'READ');",
    );
    let daemon = env.spawn_with("cpu_usage_daemon", &["--interval", "1"], &[]);
    let old = |table: &str, column: &str| -> i64 {
        env.db()
            .query_row(
                &format!("SELECT count(*) FROM {table} WHERE {column} < '2021-01-01'"),
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    wait_until(T, "the old rows to be pruned", || {
        old("cpu_usage_log", "timestamp") == 0
            && old("system_metrics_log", "timestamp") == 0
            && old("component_lifecycle_log", "event_timestamp") == 0
            && old("db_access_log", "timestamp") == 0
    });
    let recent: i64 = env
        .db()
        .query_row(
            "SELECT count(*) FROM cpu_usage_log WHERE cpu_usage = 2.345",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(recent, 1, "a row within max_age_days is kept");
    assert_eq!(env.count_events("recent", "ERROR"), 1);
    assert!(alive(daemon));
}

#[test]
fn stop_force_kills_everything_at_once() {
    let env = TestEnv::new();
    env.add_component("stubborn", "stubborn.sh", "daemon_manager", "{}");
    env.add_component("tree", "tree.sh", "nano_manager", "{}");
    env.ctl(&["start"]).success();
    env.wait_pid("stubborn", "stubborn to run");
    env.wait_pid("tree", "tree to run");
    env.ctl(&["stop", "--force"])
        .success()
        .stdout(contains("n0m1 stopped"));
    assert!(
        env.live_processes().is_empty(),
        "left running: {:?}",
        env.live_processes()
    );
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    env.ctl(&["status"]).code(3);
}

#[test]
fn restart_replaces_every_process_and_brings_the_components_back() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.ctl(&["start"]).success();
    let boot = env.wait_pid("boot_system", "boot to run");
    let sleepy = env.wait_pid("sleepy", "sleepy to run");
    env.ctl(&["restart"])
        .success()
        .stdout(contains("n0m1 stopped"))
        .stdout(contains("n0m1 started"));
    let new_boot = env.wait_pid("boot_system", "the new boot");
    assert_ne!(new_boot, boot);
    assert!(!alive(boot) && !alive(sleepy), "the old processes are gone");
    let new_sleepy = env.wait_pid("sleepy", "sleepy to run again");
    assert_ne!(new_sleepy, sleepy);
    assert_eq!(env.processes_of("sleepy"), vec![new_sleepy]);
    env.ctl(&["stop"]).success();
}

#[test]
fn python_components_run_with_the_home_venv_unless_native() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::new();
    std::fs::write(
        env.home.components_dir().join("tool.py"),
        "import os, sys, time\n\
         open(os.environ['N0M1_HOME'] + '/py.out', 'w').write(' '.join(sys.argv[1:]))\n\
         time.sleep(1000)\n",
    )
    .unwrap();
    let venv_bin = env.home.root().join("venv/bin");
    std::fs::create_dir_all(&venv_bin).unwrap();
    let python = venv_bin.join("python");
    std::fs::write(
        &python,
        "#!/bin/sh\necho venv >> \"$N0M1_HOME/venv.used\"\nexec python3 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    env.add_component("tool", "tool.py", "daemon_manager", r#"{"--flag": "x"}"#);
    let out = env.home.root().join("py.out");
    let used = env.home.root().join("venv.used");

    let manager = env.spawn("daemon_manager");
    wait_until(T, "the script to run", || out.is_file());
    assert!(used.is_file(), "the home's venv python ran it");
    wait_until(T, "its arguments", || {
        std::fs::read_to_string(&out).is_ok_and(|t| t == "--flag x --run_type PRIMARY_RUN")
    });
    signal(manager, Signal::SIGTERM);
    env.wait_child(manager, T);
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&used).unwrap();

    let manager = env.spawn_with("daemon_manager", &[], &[("N0M1_NATIVE", "1")]);
    wait_until(T, "the script to run natively", || out.is_file());
    assert!(!used.exists(), "N0M1_NATIVE runs python3, not the venv");
    signal(manager, Signal::SIGTERM);
    env.wait_child(manager, T);
}

#[test]
fn logs_boot_shows_what_boot_wrote() {
    let env = TestEnv::new();
    env.ctl(&["start"]).success();
    wait_until(T, "boot's log to name its managers", || {
        crate::support::file_contains(
            &env.home.manager_logs(n0m1_core::home::BOOT_LOG_STEM).1,
            "MANAGER_STARTED",
        )
    });
    env.ctl(&["logs", "boot", "-n", "50"])
        .success()
        .stdout(contains("boot_daemon_manager MANAGER_STARTED"));
    env.ctl(&["stop"]).success();
}

#[test]
fn reload_applies_supervisor_settings_without_restarting_components() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.ctl(&["start"]).success();
    let sleepy = env.wait_pid("sleepy", "sleepy to run");
    std::fs::write(
        env.home.config_path(),
        config_with(|c| c["supervisor"]["stop_timeout"] = 3.5.into()),
    )
    .unwrap();
    env.ctl(&["reload"])
        .success()
        .stdout(contains("SIGHUP sent to boot_system"))
        .stdout(contains("n0m1_logd"))
        .stdout(contains("daemon_manager"));
    wait_until(T, "each manager to apply it", || {
        ["daemon_manager", "nano_manager", "main_llm_manager"]
            .iter()
            .all(|m| env.count_events(m, "CONFIG_RELOADED") == 1)
    });
    assert!(messages(&env, "daemon_manager", "CONFIG_RELOADED")[0].contains("stop_timeout 3.5 s"));
    wait_until(T, "boot to apply it", || {
        env.count_events("boot_system", "CONFIG_RELOADED") == 1
    });
    assert_eq!(env.pid_of("sleepy"), Some(sleepy), "no component restarted");
    // A bad file is refused before anything is signalled.
    std::fs::write(
        env.home.config_path(),
        r#"{"supervisor": {"stop_timeout": "soon"}}"#,
    )
    .unwrap();
    env.ctl(&["reload"])
        .failure()
        .stderr(contains("supervisor.stop_timeout"))
        .stderr(contains("was not sent to the running system"));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.count_events("daemon_manager", "CONFIG_RELOADED"), 1);
    env.ctl(&["stop"]).success();
}
