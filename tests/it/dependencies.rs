//! Start order across managers: a dependent starts only once its dependency meets the
//! condition; a cycle is refused; a dependency never met fails after `start_timeout`; stops go
//! the other way (dependents first), at `stop` and when a dependency is disabled.

use std::time::Duration;

use crate::support::{FAST_CONFIG, TestEnv, wait_until};

const T: Duration = Duration::from_secs(20);

/// The id of the first `event` row of `id` in the lifecycle log (its commit order).
fn first_event(env: &TestEnv, id: &str, event: &str) -> Option<i64> {
    env.db()
        .query_row(
            "SELECT min(id) FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = ?2",
            [id, event],
            |r| r.get(0),
        )
        .unwrap()
}

fn last_event(env: &TestEnv, id: &str, event: &str) -> Option<i64> {
    env.db()
        .query_row(
            "SELECT max(id) FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = ?2",
            [id, event],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn dependents_start_after_their_dependency_is_ready_and_stop_before_it() {
    let env = TestEnv::new();
    let mut config: serde_json::Value = serde_json::from_str(FAST_CONFIG).unwrap();
    config["supervisor"]["start_timeout"] = 2.into();
    std::fs::write(env.home.config_path(), config.to_string()).unwrap();
    // Ready one second after it starts.
    env.script(
        "slow_ready.py",
        "import os, socket, time\ntime.sleep(1)\n\
         socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', os.environ['NOTIFY_SOCKET'])\n\
         time.sleep(1000)\n",
    );
    env.add_component("base", "slow_ready.py", "daemon_manager", "{}");
    // In another manager.
    env.add_component("dependent", "sleeper.sh", "nano_manager", "{}");
    env.add_component("c1", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("c2", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("never_ready", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("impatient", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("odd", "sleeper.sh", "daemon_manager", "{}");
    env.sql(
        "INSERT INTO component_dependencies (component_id, depends_on, condition) VALUES
           ('dependent', 'base', 'ready'),
           ('c1', 'c2', 'started'), ('c2', 'c1', 'started'),
           ('impatient', 'never_ready', 'ready'),
           ('odd', 'base', 'whenever'), ('odd', 'ghost', 'started')",
    );
    env.ctl(&["start"]).success();

    // While base warms up, dependent waits and says for what.
    wait_until(T, "dependent to wait", || {
        env.status_json("dependent")["actual"] == "waiting"
    });
    assert_eq!(env.status_json("dependent")["waiting_for"], "base (ready)");
    wait_until(T, "dependent to start", || {
        first_event(&env, "dependent", "START_ATTEMPT").is_some()
    });
    let ready = first_event(&env, "base", "READY").expect("base READY");
    let started = first_event(&env, "dependent", "START_ATTEMPT").unwrap();
    assert!(
        ready < started,
        "READY {ready} before the dependent's start {started}"
    );

    // The cycle: named, and nothing in it starts.
    wait_until(T, "the cycle reported", || {
        env.count_events("c1", "ERROR") == 1 && env.count_events("c2", "ERROR") == 1
    });
    assert!(
        env.last_message("c1", "ERROR")
            .contains("dependency cycle c1 → c2 → c1")
    );
    assert_eq!(env.count_events("c1", "START_ATTEMPT"), 0);
    assert_eq!(env.count_events("c2", "START_ATTEMPT"), 0);
    assert_eq!(env.status_json("c1")["actual"], "waiting");

    // Never met: FAILED after start_timeout, saying what it waited for.
    wait_until(T, "impatient to fail", || {
        env.count_events("impatient", "FAILED") == 1
    });
    let failed = env.last_message("impatient", "FAILED");
    assert!(failed.contains("for never_ready (ready)"), "{failed}");
    assert!(failed.contains("supervisor.start_timeout"), "{failed}");

    // Bad rows are errors naming the field; the rest of odd's rows are ignored, so it runs.
    wait_until(T, "odd's errors", || env.count_events("odd", "ERROR") == 2);
    let errors: Vec<String> = {
        let conn = env.db();
        let mut statement = conn
            .prepare("SELECT message FROM component_lifecycle_log WHERE component_id = 'odd' AND event_type = 'ERROR' ORDER BY id")
            .unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(
        errors.iter().any(|e| e.contains("condition: \"whenever\"")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("depends_on: no component \"ghost\"")),
        "{errors:?}"
    );
    assert!(env.pid_of("odd").is_some());

    // Disabling the dependency stops the dependent first; the dependent then waits.
    let stops_before = last_event(&env, "dependent", "STOPPED_SUCCESSFULLY");
    assert_eq!(stops_before, None);
    env.ctl(&["disable", "base"]).success();
    // The PID file goes with the process; the rows follow through the manager's writer.
    wait_until(T, "base's stop recorded", || {
        last_event(&env, "base", "STOPPED_SUCCESSFULLY").is_some()
    });
    let dependent_stopped =
        last_event(&env, "dependent", "STOPPED_SUCCESSFULLY").expect("dependent stopped");
    let base_stopped = last_event(&env, "base", "STOPPED_SUCCESSFULLY").expect("base stopped");
    assert!(
        dependent_stopped < base_stopped,
        "dependent {dependent_stopped} before base {base_stopped}"
    );
    assert!(
        env.last_message("dependent", "STOP_REQUESTED")
            .contains("its dependency base is disabled")
    );
    wait_until(T, "dependent to wait again", || {
        env.status_json("dependent")["actual"] == "waiting"
    });
    // Enabled again: base, then the dependent once base is ready.
    env.ctl(&["enable", "base"]).success();
    wait_until(T, "the dependent back", || {
        env.count_events("dependent", "START_ATTEMPT") == 2
    });
    assert!(last_event(&env, "base", "READY") < last_event(&env, "dependent", "START_ATTEMPT"));

    // `stop` goes in reverse: the dependent (nano_manager) before base (daemon_manager).
    env.ctl(&["stop"]).success();
    let dependent_stopped = last_event(&env, "dependent", "STOPPED_SUCCESSFULLY").unwrap();
    let base_stopped = last_event(&env, "base", "STOPPED_SUCCESSFULLY").unwrap();
    assert!(
        dependent_stopped < base_stopped,
        "dependent {dependent_stopped} before base {base_stopped}"
    );
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
}
