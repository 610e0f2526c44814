//! One manager at a time, run in the foreground as the test's child.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{TestEnv, alive, file_contains, wait_until};

const T: Duration = Duration::from_secs(10);

fn signal(pid: i32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid), signal);
}

fn component_pid(env: &TestEnv, id: &str) -> i32 {
    env.wait_pid(id, &format!("{id} to run"))
}

#[test]
fn starts_active_rows_with_args_env_and_logs() {
    let mut env = TestEnv::new();
    env.add_component(
        "sleepy",
        "sleeper.sh",
        "daemon_manager",
        r#"{"--b": "2", "--a": 1}"#,
    );
    env.add_component("envy", "env.sh", "daemon_manager", "{}");
    env.add_component("other", "sleeper.sh", "nano_manager", "{}");
    env.spawn("daemon_manager");
    let pid = component_pid(&env, "sleepy");
    component_pid(&env, "envy");
    let log = env.home.component_logs("sleepy").0;
    wait_until(T, "the component's stdout in logs/sleepy.log", || {
        file_contains(
            &log,
            &format!("started {pid} with --b 2 --a 1 --run_type PRIMARY_RUN"),
        )
    });
    let env_out = env.home.root().join("env.out");
    wait_until(T, "env.sh to record its environment", || env_out.exists());
    assert_eq!(
        std::fs::read_to_string(&env_out).unwrap().trim(),
        format!("{}|envy", env.root())
    );
    // Its own process group, so a stop reaches its whole tree.
    assert_eq!(TestEnv::group_members(pid), vec![pid]);
    assert_eq!(env.state_of("sleepy").as_deref(), Some("running"));
    // Rows of another manager are not ours.
    assert!(env.pid_of("other").is_none());
}

#[test]
fn a_killed_component_is_restarted_and_the_old_one_reaped() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    let first = component_pid(&env, "sleepy");
    // Past min_uptime, so the restart is immediate rather than a backoff.
    std::thread::sleep(Duration::from_millis(600));
    signal(first, Signal::SIGKILL);
    let mut second = 0;
    wait_until(T, "a replacement with a new pid", || {
        second = env.pid_of("sleepy").unwrap_or(0);
        second != 0 && second != first && alive(second)
    });
    // Reaped: not even a zombie is left of the first.
    wait_until(T, "the first process to be reaped", || {
        n0m1_core::process::ProcStat::read(first).is_none()
    });
    wait_until(T, "CRASHED in the lifecycle log", || {
        env.count_events("sleepy", "CRASHED") == 1
    });
    // The state row follows through the writer thread, maybe in a later batch than CRASHED.
    let restarts = || -> i64 {
        env.db()
            .query_row(
                "SELECT restarts FROM component_state WHERE component_id = 'sleepy'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    wait_until(T, "restarts = 1 in component_state", || restarts() == 1);
    assert_eq!(restarts(), 1);
}

#[test]
fn a_crash_loop_ends_failed_and_enable_gives_it_another_go() {
    let mut env = TestEnv::new();
    env.add_component("crashy", "crasher.sh", "daemon_manager", "{}");
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    let manager = env.spawn("daemon_manager");
    wait_until(T, "crashy to be FAILED", || {
        env.state_of("crashy").as_deref() == Some("failed")
    });
    // max_quick_deaths is 3 in the test config: 3 starts, 2 backoffs, then FAILED.
    assert_eq!(env.count_events("crashy", "START_ATTEMPT"), 3);
    assert_eq!(env.count_events("crashy", "RESTART_SCHEDULED"), 2);
    assert_eq!(env.count_events("crashy", "FAILED"), 1);
    // It stays down, and the manager and its other components are unharmed.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(env.count_events("crashy", "START_ATTEMPT"), 3);
    assert!(alive(manager));
    assert!(env.pid_of("sleepy").is_some_and(alive));

    env.ctl(&["enable", "crashy"]).success();
    wait_until(T, "crashy to be FAILED again after enable", || {
        env.count_events("crashy", "FAILED") == 2
    });
    assert_eq!(env.count_events("crashy", "RESET"), 1);
    assert_eq!(env.count_events("crashy", "START_ATTEMPT"), 6);
}

/// Each run outlives `min_uptime` (0.5 s in the test config), so no single death is quick;
/// the crash window (10 exits in 60 s by default) still calls it a crash loop, after which
/// each exit counts as a quick death: 3 more (max_quick_deaths) and it is FAILED.
#[test]
fn a_component_dying_just_after_min_uptime_forever_ends_failed() {
    let mut env = TestEnv::new();
    env.script(
        "slow_crasher.sh",
        "#!/bin/sh
sleep 0.7
exit 1
",
    );
    env.add_component("slow_crashy", "slow_crasher.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    wait_until(Duration::from_secs(40), "slow_crashy to be FAILED", || {
        env.state_of("slow_crashy").as_deref() == Some("failed")
    });
    // Exits 1-9 restart at once; the 10th fills the window (quick death 1, backoff), the 11th
    // is quick death 2 (backoff), the 12th the third: FAILED.
    assert_eq!(env.count_events("slow_crashy", "START_ATTEMPT"), 12);
    assert_eq!(env.count_events("slow_crashy", "RESTART_SCHEDULED"), 2);
    let starts = 12;
    assert_eq!(env.count_events("slow_crashy", "FAILED"), 1);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        env.count_events("slow_crashy", "START_ATTEMPT"),
        starts,
        "it stays down"
    );
}

#[test]
fn disable_and_enable_through_n0m1ctl_and_through_sql() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    let first = component_pid(&env, "sleepy");

    env.ctl(&["disable", "sleepy"]).success();
    wait_until(T, "disable to stop the process", || !alive(first));
    wait_until(T, "the PID file to go", || {
        env.pid_of("sleepy").is_none() && !env.pid_files().contains(&"sleepy.pid".to_owned())
    });
    // Rows are written after the work, at the end of the manager's loop turn.
    wait_until(T, "STOPPED_SUCCESSFULLY", || {
        env.count_events("sleepy", "STOPPED_SUCCESSFULLY") == 1
    });

    env.sql("UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'sleepy'");
    let second = component_pid(&env, "sleepy");
    assert_ne!(first, second);
    env.sql(
        "UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'sleepy'",
    );
    wait_until(T, "an SQL update to stop it", || !alive(second));

    env.ctl(&["enable", "no_such_component"])
        .failure()
        .stderr(predicates::str::contains("unknown component"))
        .stderr(predicates::str::contains("sleepy"));
}

#[test]
fn stop_kills_the_whole_tree_and_a_stubborn_one_is_killed() {
    let mut env = TestEnv::new();
    env.add_component("tree", "tree.sh", "daemon_manager", "{}");
    env.add_component("stubborn", "stubborn.sh", "daemon_manager", "{}");
    let manager = env.spawn("daemon_manager");
    let tree = component_pid(&env, "tree");
    component_pid(&env, "stubborn");
    wait_until(T, "tree.sh to fork its three sleeps", || {
        n0m1_core::process::descendants(tree).len() >= 3
    });
    let descendants: Vec<i32> = n0m1_core::process::descendants(tree)
        .iter()
        .map(|p| p.pid)
        .collect();

    signal(manager, Signal::SIGTERM);
    let status = env.wait_child(manager, T);
    assert!(status.success(), "a manager stopped by SIGTERM exits 0");
    assert!(!alive(tree));
    for pid in descendants {
        assert!(
            !alive(pid),
            "descendant {pid} of tree.sh (one of them in its own session) survived"
        );
    }
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
    assert!(env.pid_files().is_empty(), "{:?}", env.pid_files());
    assert_eq!(env.count_events("stubborn", "STOPPED_FORCEFULLY"), 1);
    assert_eq!(env.count_events("tree", "STOPPED_SUCCESSFULLY"), 1);
    assert_eq!(env.state_of("tree").as_deref(), Some("stopped"));
}

#[test]
fn bad_rows_are_start_failed_and_the_manager_carries_on() {
    let mut env = TestEnv::new();
    env.script("plain.sh", "#!/bin/sh\nexit 0\n");
    std::fs::set_permissions(
        env.home.components_dir().join("plain.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    std::os::unix::fs::symlink("/bin/sh", env.home.components_dir().join("escape")).unwrap();
    env.add_component("bad_json", "sleeper.sh", "daemon_manager", "{not json");
    env.add_component("not_object", "sleeper.sh", "daemon_manager", "[1, 2]");
    env.add_component("abs_path", "/bin/sh", "daemon_manager", "{}");
    env.add_component("dotdot", "../../bin/sh", "daemon_manager", "{}");
    env.add_component("unknown", "nope.py", "daemon_manager", "{}");
    env.add_component("meta", "sleeper.sh; rm -rf ~", "daemon_manager", "{}");
    env.add_component("symlink", "escape", "daemon_manager", "{}");
    env.add_component("noexec", "plain.sh", "daemon_manager", "{}");
    env.add_component("good", "sleeper.sh", "daemon_manager", "{}");
    let manager = env.spawn("daemon_manager");
    component_pid(&env, "good");
    for id in [
        "bad_json",
        "not_object",
        "abs_path",
        "dotdot",
        "unknown",
        "meta",
        "symlink",
        "noexec",
    ] {
        wait_until(T, &format!("{id} to be START_FAILED"), || {
            env.count_events(id, "START_FAILED") == 1
        });
        assert_eq!(env.state_of(id).as_deref(), Some("failed"), "{id}");
        assert!(env.pid_of(id).is_none(), "{id}");
    }
    let message: String = env
        .db()
        .query_row(
            "SELECT message FROM component_lifecycle_log WHERE component_id = 'bad_json' AND event_type = 'START_FAILED'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(
        message.contains("launch_args_json is not valid JSON"),
        "{message}"
    );
    assert!(alive(manager));
    // Fixing the row is enough to start it.
    env.sql(
        "UPDATE autorun_components SET launch_args_json = '{}' WHERE component_id = 'bad_json'",
    );
    component_pid(&env, "bad_json");
}

#[test]
fn a_oneshot_runs_once_and_a_changed_row_restarts_a_running_one() {
    let mut env = TestEnv::new();
    env.add_component("once", "oneshot.sh", "daemon_manager", "{}");
    env.sql(
        "UPDATE autorun_components SET run_type_on_boot = 'ONESHOT' WHERE component_id = 'once'",
    );
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", r#"{"--v": "1"}"#);
    env.spawn("daemon_manager");
    wait_until(T, "the one-shot to complete", || {
        env.state_of("once").as_deref() == Some("completed")
    });
    let first = component_pid(&env, "sleepy");
    std::thread::sleep(Duration::from_millis(700));
    let runs = std::fs::read_to_string(env.home.root().join("oneshot.out")).unwrap();
    assert_eq!(runs.lines().count(), 1, "a clean one-shot is not restarted");

    env.sql(r#"UPDATE autorun_components SET launch_args_json = '{"--v": "2"}' WHERE component_id = 'sleepy'"#);
    let mut second = 0;
    wait_until(T, "a restart with the new arguments", || {
        second = env.pid_of("sleepy").unwrap_or(0);
        second != 0 && second != first
    });
    let log = env.home.component_logs("sleepy").0;
    wait_until(T, "the new arguments in the log", || {
        file_contains(&log, "--v 2")
    });
    assert!(!alive(first));
}

#[test]
fn a_deleted_row_is_stopped() {
    let mut env = TestEnv::new();
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    let pid = component_pid(&env, "sleepy");
    env.sql("DELETE FROM autorun_components WHERE component_id = 'sleepy'");
    wait_until(T, "a deleted row's process to stop", || !alive(pid));
    wait_until(T, "its PID file to go", || {
        env.pid_files() == ["daemon_manager.pid"]
    });
}
