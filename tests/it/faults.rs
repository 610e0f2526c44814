//! Fault injection: each case breaks something on purpose and asserts the end state — no
//! orphan, no zombie left by us, no duplicate, no stale PID file, no lost row, an intact
//! database — not merely that nothing panicked.

use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use predicates::str::contains;

use crate::support::{
    TestEnv, align_to_second_fraction, alive, assert_one_row_per_second, file_contains,
    wait_for_a_row_from, wait_until,
};

const T: Duration = Duration::from_secs(20);

fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

fn integrity_ok(env: &TestEnv) {
    let result: String = env
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(result, "ok");
}

#[test]
fn a_sigstopped_component_is_still_stopped() {
    let mut env = TestEnv::new();
    env.add_component("frozen", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    let pid = env.wait_pid("frozen", "frozen to run");
    signal(pid, Signal::SIGSTOP);
    env.ctl(&["disable", "frozen"]).success();
    wait_until(T, "the stopped process to be killed", || !alive(pid));
    wait_until(T, "STOPPED_FORCEFULLY", || {
        env.count_events("frozen", "STOPPED_FORCEFULLY") == 1
    });
    assert!(!env.pid_files().contains(&"frozen.pid".to_owned()));
}

#[test]
fn what_a_dead_leader_left_in_its_group_goes_with_it() {
    let mut env = TestEnv::new();
    // Forks a long-lived child, then dies after min_uptime: restarted at once each time.
    env.script("forker.sh", "#!/bin/sh\nsleep 1000 &\nsleep 0.7\nexit 1\n");
    env.add_component("forker", "forker.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    wait_until(T, "three generations", || {
        env.count_events("forker", "CRASHED") >= 3
    });
    // One generation alive at a time: the leader and its own sleeps, never an old sleep 1000.
    let live = env.processes_of("forker");
    assert!(
        live.len() <= 3,
        "left behind by earlier generations: {live:?}"
    );
    env.ctl(&["disable", "forker"]).success();
    wait_until(T, "nothing of forker left", || {
        env.processes_of("forker").is_empty()
    });
}

#[test]
fn two_hundred_components_start_and_stop_cleanly() {
    let env = TestEnv::new();
    let mut sql = String::from("BEGIN;");
    for i in 0..200 {
        sql.push_str(&format!(
            "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state)
             VALUES ('many_{i}', 'sleeper.sh', 'nano_manager', 'active');"
        ));
    }
    sql.push_str("COMMIT;");
    env.sql(&sql);
    env.ctl(&["start"]).success();
    wait_until(Duration::from_secs(60), "200 components running", || {
        env.db()
            .query_row(
                "SELECT count(*) FROM component_state WHERE state = 'running'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap()
            == 200
    });
    let output = env
        .ctl(&["status", "--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    let view: serde_json::Value = serde_json::from_slice(&output).unwrap();
    let running = view["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["actual"] == "running")
        .count();
    assert_eq!(running, 200);
    env.ctl(&["stop"]).success();
    assert!(
        env.live_processes().is_empty(),
        "left: {:?}",
        env.live_processes().len()
    );
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    integrity_ok(&env);
}

#[test]
fn killing_n0m1ctl_in_the_middle_of_stop_leaves_a_stoppable_system() {
    let env = TestEnv::new();
    env.add_component("stubborn", "stubborn.sh", "daemon_manager", "{}");
    env.add_component("sleepy", "sleeper.sh", "nano_manager", "{}");
    env.ctl(&["start"]).success();
    env.wait_pid("stubborn", "stubborn to run");
    #[allow(clippy::disallowed_methods)] // the test drives the binary under test
    let mut stopper = std::process::Command::new(crate::support::bin("n0m1ctl"))
        .args(["--home", env.root(), "stop"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    stopper.kill().unwrap();
    stopper.wait().unwrap();
    // Boot got its SIGTERM and finishes the shutdown without n0m1ctl; a second stop confirms.
    wait_until(T, "the system to finish stopping", || {
        env.live_processes().is_empty()
    });
    env.ctl(&["stop"]).success();
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    env.ctl(&["status"]).code(3);
}

#[test]
fn every_manager_killed_is_restarted_and_duplicates_nothing() {
    let mut env = TestEnv::new();
    for manager in ["daemon_manager", "nano_manager", "main_llm_manager"] {
        env.add_component(&format!("under_{manager}"), "sleeper.sh", manager, "{}");
    }
    env.spawn("boot_system");
    for manager in ["daemon_manager", "nano_manager", "main_llm_manager"] {
        let id = format!("under_{manager}");
        let component = env.wait_pid(&id, "its component");
        let old = env.wait_pid(manager, "the manager");
        signal(old, Signal::SIGKILL);
        wait_until(T, "a new manager", || {
            env.pid_of(manager).is_some_and(|p| p != old && alive(p))
        });
        // Twice the usual patience under a loaded CI machine, and what the manager said when
        // it still does not come (a clean CI run once timed out here; the cause is not known).
        let deadline = Instant::now() + 2 * T;
        while env.count_events(&id, "ADOPTED") != 1 {
            if Instant::now() > deadline {
                let log =
                    std::fs::read_to_string(env.home.manager_logs(manager).1).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "no ADOPTED for {id} after {:?}; its events: {:?}; pid file: {:?}; {manager}'s log, newest first:\n{}",
                    2 * T,
                    env.events_of(&id),
                    n0m1_core::PidFile::inspect(&env.home.pid_file(&id)),
                    tail.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            env.processes_of(&id),
            vec![component],
            "{manager}: same process, no duplicate"
        );
    }
}

#[test]
fn a_write_lock_held_for_ten_seconds_loses_nothing_and_stops_no_restart() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.sql(
        "UPDATE autorun_components SET desired_state = 'active', launch_args_json = '{\"--interval\": \"1\"}'
         WHERE component_id = 'mem_usage_daemon'",
    );
    // The daemon samples once a second from its start; started early in a second, each
    // sample falls well inside the whole second its row's timestamp names.
    align_to_second_fraction(0.05);
    let manager = env.spawn("daemon_manager");
    let first = env.wait_pid("sleepy", "sleepy to run");
    wait_until(T, "memory rows", || env.count_rows("memory_usage_log") > 0);
    let started_at: f64 = env
        .db()
        .query_row(
            "SELECT started_at FROM component_state WHERE component_id = 'mem_usage_daemon'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (0.0..0.6).contains(&started_at.fract()),
        "the daemon started {:.3} s into a second: too close to the next for whole-second rows",
        started_at.fract()
    );
    let first_second = started_at as i64;
    std::thread::sleep(Duration::from_millis(600));
    let blocker = env.db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    // The restart path writes nothing, so a crash is answered while the lock is held.
    let killed_at = n0m1_core::state::unix_now() as i64;
    signal(first, Signal::SIGKILL);
    let started = Instant::now();
    wait_until(T, "a restart during the lock", || {
        env.pid_of("sleepy").is_some_and(|p| p != first && alive(p))
    });
    assert!(started.elapsed() < Duration::from_secs(5));
    // Its row cannot be written yet; status still tells the truth, from the PID file its
    // manager holds.
    let restarted = env.pid_of("sleepy").unwrap();
    let shown = env.status_json("sleepy");
    assert_eq!(shown["actual"], "running", "{shown}");
    assert_eq!(shown["pid"], restarted, "{shown}");
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let unlocked_at = n0m1_core::state::unix_now() as i64;
    assert_eq!(
        env.count_events("sleepy", "CRASHED"),
        0,
        "the lock was still held, so the crash is only queued"
    );
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    assert!(alive(manager));
    let daemon = env.pid_of("mem_usage_daemon").unwrap();
    assert!(alive(daemon), "the daemon survived the lock");
    wait_until(T, "the queued CRASHED event", || {
        env.count_events("sleepy", "CRASHED") == 1
    });
    // Written 10 s late, it carries the time of the crash.
    let stamped: i64 = env
        .db()
        .query_row(
            "SELECT CAST(strftime('%s', event_timestamp) AS INTEGER) FROM component_lifecycle_log
             WHERE component_id = 'sleepy' AND event_type = 'CRASHED'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        (killed_at..=killed_at + 2).contains(&stamped),
        "CRASHED stamped {stamped}, the kill was at {killed_at}, the write after {unlocked_at}"
    );
    // The samples queued during the lock are written at the daemon's next round: every second
    // from its start to after the lock has its row.
    let last_second = unlocked_at + 1;
    wait_for_a_row_from(&env, "memory_usage_log", last_second + 1);
    assert_one_row_per_second(&env, "memory_usage_log", first_second, last_second);
    integrity_ok(&env);
}

#[test]
fn a_dropped_table_is_an_error_not_a_crash_and_init_repairs_it() {
    let mut env = TestEnv::new();
    let mem = env.spawn_with("mem_usage_daemon", &["--interval", "0.1"], &[]);
    wait_until(T, "rows", || env.count_rows("memory_usage_log") > 0);
    env.sql("DROP TABLE memory_usage_log");
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(mem), "a missing table does not kill the daemon");
    env.ctl(&["init", "--quiet"]).success();
    wait_until(T, "rows again after init recreated the table", || {
        env.count_rows("memory_usage_log") > 0
    });
    integrity_ok(&env);
}

#[test]
fn a_database_replaced_by_garbage_is_named_and_the_system_stops_itself() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.ctl(&["start"]).success();
    env.wait_pid("sleepy", "sleepy to run");
    let boot = env.pid_of("boot_system").unwrap();
    let db = env.home.db_path();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    std::fs::remove_file(&db).unwrap();
    std::fs::write(&db, vec![0x42u8; 65536]).unwrap();
    // Boot notices on its next turn (each second at the latest) and takes everything down.
    wait_until(T, "boot to stop the system", || !alive(boot));
    wait_until(T, "nothing left", || env.live_processes().is_empty());
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    assert!(
        // Deleted, or replaced: boot may look between the two steps.
        logs_mention(&env, n0m1_core::home::BOOT_LOG_STEM, "n0m1_agi.db was"),
        "boot's logs name the replaced database"
    );
    env.ctl(&["status"])
        .failure()
        .stderr(contains("n0m1_agi.db"))
        .stderr(contains("not an SQLite database"));
    env.ctl(&["stop"]).success();
}

/// True when a supervisor's stdout or stderr log contains `needle`.
fn logs_mention(env: &TestEnv, stem: &str, needle: &str) -> bool {
    let (stdout, stderr) = env.home.manager_logs(stem);
    file_contains(&stdout, needle) || file_contains(&stderr, needle)
}

/// A database deleted under a running system: every binary notices. Boot is held with
/// SIGSTOP so the commands run while the system is provably still up on the deleted file.
#[test]
fn a_deleted_database_is_noticed_by_every_binary_and_nothing_writes_into_it() {
    let env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.sql("UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'mem_usage_daemon'");
    env.ctl(&["start"]).success();
    env.wait_pid("sleepy", "sleepy to run");
    let db = env.home.db_path();
    wait_until(T, "a memory sample", || {
        env.count_rows("memory_usage_log") > 0
    });
    let boot = env.pid_of("boot_system").unwrap();
    // A second name for the file keeps it readable once its path is gone.
    let kept = env.home.root().join("kept.db");
    std::fs::hard_link(&db, &kept).unwrap();
    kill(Pid::from_raw(boot), Signal::SIGSTOP).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    // The managers stop their components and exit, saying why.
    wait_until(T, "daemon_manager to exit", || {
        env.pid_of("daemon_manager").is_none()
    });
    assert!(
        logs_mention(&env, "daemon_manager", "was deleted"),
        "the manager's log names the deleted database"
    );
    wait_until(T, "sleepy and the metric daemon to stop", || {
        env.processes_of("sleepy").is_empty() && env.processes_of("mem_usage_daemon").is_empty()
    });
    // Nothing more goes into the deleted file.
    let rows = |path: &std::path::Path| -> i64 {
        rusqlite::Connection::open(path)
            .unwrap()
            .query_row("SELECT count(*) FROM memory_usage_log", [], |r| r.get(0))
            .unwrap()
    };
    let before = rows(&kept);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        rows(&kept),
        before,
        "no metric row written into the deleted file"
    );
    // init and status refuse while boot (still holding its PID file) runs on the old file.
    env.ctl(&["init"])
        .failure()
        .stderr(contains(format!("boot_system pid {boot}")))
        .stderr(contains("deleted"))
        .stderr(contains("n0m1ctl stop"));
    env.ctl(&["status"])
        .failure()
        .stderr(contains("uses another database"));
    assert!(
        !db.exists(),
        "init created nothing beside the running system"
    );
    // Boot goes on, notices and stops (it does not restart the managers into a new file).
    kill(Pid::from_raw(boot), Signal::SIGCONT).unwrap();
    wait_until(T, "boot to exit", || !alive(boot));
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    env.ctl(&["start"])
        .success()
        .stdout(contains("does not exist: creating a fresh one"));
    env.ctl(&["status"]).code(0);
    env.ctl(&["stop"]).success();
}

#[test]
fn pid_files_and_logs_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    env.wait_pid("sleepy", "sleepy to run");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for path in [
        env.home.pid_file("sleepy"),
        env.home.pid_file("daemon_manager"),
        env.home.component_logs("sleepy").0,
        env.home.component_logs("sleepy").1,
        env.home.db_path(),
    ] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    assert_eq!(mode(env.home.root()), 0o700);
}

#[test]
fn a_full_disk_corrupts_nothing_and_loses_nothing_once_space_returns() {
    let tmp = tempfile::Builder::new()
        .prefix("n0m1-full-")
        .tempdir()
        .unwrap();
    let mount_point = tmp.path().join("disk");
    let Some(disk) = crate::support::SmallDisk::mount(&mount_point, "4m") else {
        eprintln!("skipped");
        return;
    };
    let mut env = TestEnv::with_home(tmp, mount_point.join("home"));
    let daemon = env.spawn_with("mem_usage_daemon", &["--interval", "0.02"], &[]);
    wait_until(T, "rows", || env.count_rows("memory_usage_log") > 5);
    // Fill the disk to the last byte.
    let filler_path = disk.fill();
    let before = env.count_rows("memory_usage_log");
    std::thread::sleep(Duration::from_secs(2));
    assert!(alive(daemon), "a full disk does not kill the daemon");
    integrity_ok(&env);
    std::fs::remove_file(&filler_path).unwrap();
    // The samples taken while the disk was full are written once there is room.
    wait_until(T, "the queued samples", || {
        env.count_rows("memory_usage_log") >= before + 50
    });
    integrity_ok(&env);
}

#[test]
fn descendants_that_escaped_a_dead_leader_are_killed_with_it() {
    let mut env = TestEnv::new();
    // Each run leaves a sleep in a session of its own, orphaned to the manager, then dies.
    env.script(
        "escaper.sh",
        "#!/bin/sh\n( setsid sh -c 'exec sleep 1000' & )\nsleep 0.1\nexit 1\n",
    );
    // This one keeps running beside its escaped sleep.
    env.script(
        "runner.sh",
        "#!/bin/sh\n( setsid sh -c 'exec sleep 1000' & )\nexec sleep 1000\n",
    );
    env.add_component("escaper", "escaper.sh", "daemon_manager", "{}");
    env.add_component("runner", "runner.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    wait_until(T, "the crash loop to end FAILED", || {
        env.state_of("escaper").as_deref() == Some("failed")
    });
    wait_until(T, "nothing of escaper left", || {
        env.processes_of("escaper").is_empty()
    });
    wait_until(T, "runner and its escaped sleep", || {
        env.processes_of("runner").len() == 2
    });
    env.ctl(&["disable", "runner"]).success();
    wait_until(T, "disable to take the escaped sleep too", || {
        env.processes_of("runner").is_empty()
    });
}

#[test]
fn a_component_named_like_a_manager_cannot_take_its_pid_file() {
    let mut env = TestEnv::new();
    env.add_component("nano_manager", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("boot_system", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("boot_system");
    wait_until(T, "both rows refused", || {
        env.count_events("nano_manager", "START_FAILED") == 1
            && env.count_events("boot_system", "START_FAILED") == 1
    });
    let manager = env.wait_pid("nano_manager", "the real nano_manager");
    let cmdline = std::fs::read_to_string(format!("/proc/{manager}/cmdline")).unwrap();
    assert!(cmdline.contains("nano_manager"), "{cmdline}");
    assert!(
        env.processes_of("nano_manager").is_empty(),
        "no sleeper ran"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        env.count_events("boot_nano_manager", "MANAGER_CRASHED"),
        0,
        "the manager is not restarted over and over"
    );
}

#[test]
fn a_component_that_died_while_its_manager_was_down_is_recorded_and_keeps_its_count() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    let restarts = |env: &TestEnv| -> i64 {
        env.db()
            .query_row(
                "SELECT restarts FROM component_state WHERE component_id = 'sleepy'",
                [],
                |r| r.get(0),
            )
            .unwrap_or(-1)
    };
    let manager = env.spawn("daemon_manager");
    let first = env.wait_pid("sleepy", "sleepy to run");
    std::thread::sleep(Duration::from_millis(600));
    signal(first, Signal::SIGKILL);
    wait_until(T, "one restart recorded", || restarts(&env) == 1);
    let second = env.wait_pid("sleepy", "the replacement");
    signal(manager, Signal::SIGKILL);
    env.wait_child(manager, T);
    signal(second, Signal::SIGKILL);
    wait_until(T, "the unwatched component to die", || !alive(second));

    env.spawn("daemon_manager");
    wait_until(T, "its death to be recorded", || {
        env.count_events("sleepy", "CRASHED") == 2
    });
    let message: String = env
        .db()
        .query_row(
            "SELECT message FROM component_lifecycle_log WHERE component_id = 'sleepy'
             AND event_type = 'CRASHED' ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(message.contains("while its manager was down"), "{message}");
    let third = env.wait_pid("sleepy", "sleepy to run again");
    assert_ne!(third, second);
    wait_until(T, "the count carried over", || restarts(&env) == 2);
}

/// A FIFO as config.json once blocked boot's reload forever (a killed manager was then never
/// restarted). Now the reload is refused at once, naming the file, and boot carries on.
#[test]
fn a_fifo_config_on_reload_blocks_nothing() {
    let env = TestEnv::new();
    env.ctl(&["start"]).success();
    let boot = env.pid_of("boot_system").unwrap();
    let manager = env.wait_pid("daemon_manager", "daemon_manager to run");
    std::fs::remove_file(env.home.config_path()).unwrap();
    nix::unistd::mkfifo(
        &env.home.config_path(),
        nix::sys::stat::Mode::from_bits_truncate(0o600),
    )
    .unwrap();
    kill(Pid::from_raw(boot), Signal::SIGHUP).unwrap();
    wait_until(T, "the reload to be refused", || {
        env.count_events("boot_system", "ERROR") == 1
    });
    let message: String = env
        .db()
        .query_row(
            "SELECT message FROM component_lifecycle_log WHERE component_id = 'boot_system' AND event_type = 'ERROR'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        message.contains("config.json is a FIFO")
            && message.contains("keeping the running configuration"),
        "{message}"
    );
    // A manager told to reload says it kept its settings, and only that.
    kill(Pid::from_raw(manager), Signal::SIGHUP).unwrap();
    wait_until(T, "the manager's refusal", || {
        env.count_events("daemon_manager", "ERROR") == 1
    });
    assert!(
        env.last_message("daemon_manager", "ERROR")
            .contains("keeping the previous supervisor policy")
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.count_events("daemon_manager", "CONFIG_RELOADED"), 0);
    // Boot is not stuck: a killed manager is restarted as usual.
    kill(Pid::from_raw(manager), Signal::SIGKILL).unwrap();
    env.wait_new_pid(
        "daemon_manager",
        manager,
        T,
        "boot to restart daemon_manager",
    );
    // stop and status read the config too; neither hangs.
    env.ctl(&["status"]).success();
    env.ctl(&["stop"]).success();
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
}
