//! Actions a command asks for: proposals, the policy, approval through n0m1ctl, expiry and
//! rate limits, through the real command daemon, managers and n0m1ctl.

use std::time::Duration;

use crate::support::{TestEnv, alive, wait_until};

const T: Duration = Duration::from_secs(15);

fn say(env: &TestEnv, line: &str) {
    env.db()
        .execute(
            "INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', ?1)",
            [line],
        )
        .unwrap();
}

/// (id, state, result) of the newest proposal for `component`.
fn newest(env: &TestEnv, component: &str) -> Option<(i64, String, Option<String>)> {
    env.db()
        .query_row(
            "SELECT id, state, result FROM action_proposals WHERE component_id = ?1 ORDER BY id DESC LIMIT 1",
            [component],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
}

fn wait_proposal(env: &TestEnv, component: &str, count: i64, what: &str) -> (i64, String) {
    let mut found = None;
    wait_until(T, what, || {
        let n: i64 = env
            .db()
            .query_row(
                "SELECT count(*) FROM action_proposals WHERE component_id = ?1",
                [component],
                |r| r.get(0),
            )
            .unwrap();
        found = newest(env, component).filter(|_| n >= count);
        found.is_some()
    });
    let (id, state, _) = found.unwrap();
    (id, state)
}

#[test]
fn a_model_asks_an_operator_decides_and_the_policy_holds() {
    let env = TestEnv::new();
    env.add_component("x", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("y", "sleeper.sh", "nano_manager", "{}");
    env.sql(
        "UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'llm_command_daemon';
         INSERT INTO action_policy (action, component_glob, decision, max_per_hour) VALUES ('RESTART', 'y', 'auto', 1);",
    );
    env.ctl(&["start"]).success();
    let x = env.wait_pid("x", "x running");
    let y = env.wait_pid("y", "y running");
    env.wait_pid("llm_command_daemon", "the command daemon running");
    let manager = env.pid_of("daemon_manager").unwrap();

    // RESTART x waits for an operator; x keeps its pid meanwhile.
    say(&env, "CMD:RESTART x");
    let (proposal, state) = wait_proposal(&env, "x", 1, "the restart proposed");
    assert_eq!(state, "proposed");
    let listed = env.ctl(&["proposals"]).success();
    let listed = String::from_utf8_lossy(&listed.get_output().stdout).into_owned();
    assert!(
        listed.contains("RESTART x") && listed.contains("proposed"),
        "{listed}"
    );
    assert!(
        env.last_message("x", "ACTION_PROPOSED")
            .contains(&format!("proposal {proposal}"))
    );
    assert_eq!(env.pid_of("x"), Some(x), "nothing ran before the approval");

    // Approved: x restarts, and the proposal says how it went.
    let approved = env
        .ctl(&["proposals", "approve", &proposal.to_string()])
        .success();
    let said = String::from_utf8_lossy(&approved.get_output().stdout).into_owned();
    assert!(said.contains("executed"), "{said}");
    let new_x = env.pid_of("x").unwrap();
    assert_ne!(new_x, x);
    assert!(alive(new_x) && !alive(x));
    let (state, before, after, by): (String, String, String, String) = env
        .db()
        .query_row(
            "SELECT state, state_before, state_after, decided_by FROM action_proposals WHERE id = ?1",
            [proposal],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(state, "executed");
    assert!(by.contains("n0m1ctl"), "{by}");
    let before: serde_json::Value = serde_json::from_str(&before).unwrap();
    let after: serde_json::Value = serde_json::from_str(&after).unwrap();
    assert_eq!(before["pid"], x);
    assert_eq!(after["pid"], new_x);
    assert_eq!(after["state"], "running");
    assert!(
        env.last_message("x", "ACTION_EXECUTED")
            .contains(&format!("pid {x} → {new_x}"))
    );
    // Decided once: a second approval is refused by name.
    let again = env
        .ctl(&["proposals", "approve", &proposal.to_string()])
        .failure();
    let error = String::from_utf8_lossy(&again.get_output().stderr).into_owned();
    assert!(error.contains("is executed"), "{error}");

    // A manager is never commanded, whatever the policy says.
    env.sql("INSERT INTO action_policy (action, component_glob, decision) VALUES ('*', 'daemon_*', 'auto')");
    say(&env, "CMD:STOP daemon_manager");
    let (_, state) = wait_proposal(&env, "daemon_manager", 1, "the manager's stop decided");
    assert_eq!(state, "denied");
    assert_eq!(env.pid_of("daemon_manager"), Some(manager));
    assert!(env.count_events("llm_command_daemon", "COMMAND_REJECTED") >= 1);

    // An expired proposal does nothing.
    say(&env, "CMD:STOP x");
    let (stop, state) = wait_proposal(&env, "x", 2, "the stop proposed");
    assert_eq!(state, "proposed");
    env.sql(&format!(
        "UPDATE action_proposals SET created_at = created_at - 3600 WHERE id = {stop}"
    ));
    let late = env
        .ctl(&["proposals", "approve", &stop.to_string()])
        .failure();
    let error = String::from_utf8_lossy(&late.get_output().stderr).into_owned();
    assert!(error.contains("expired"), "{error}");
    assert_eq!(newest(&env, "x").unwrap().1, "expired");
    assert_eq!(env.pid_of("x"), Some(new_x));

    // Rejected: nothing done, the reason kept.
    say(&env, "CMD:STOP x");
    let (stop, _) = wait_proposal(&env, "x", 3, "another stop proposed");
    env.ctl(&[
        "proposals",
        "reject",
        &stop.to_string(),
        "--reason",
        "x is fine",
    ])
    .success();
    let (_, state, result) = newest(&env, "x").unwrap();
    assert_eq!(state, "rejected");
    assert!(result.unwrap().contains("x is fine"));
    assert_eq!(env.pid_of("x"), Some(new_x));

    // The policy's own auto rule runs at once, then its rate limit holds.
    say(&env, "CMD:RESTART y");
    wait_until(T, "y restarted by the policy", || {
        newest(&env, "y").is_some_and(|(_, state, _)| state == "executed")
    });
    let new_y = env.pid_of("y").unwrap();
    assert_ne!(new_y, y);
    say(&env, "CMD:RESTART y");
    let (_, state) = wait_proposal(&env, "y", 2, "the second restart decided");
    assert_eq!(state, "denied");
    let reason: String = env
        .db()
        .query_row(
            "SELECT reason FROM action_proposals ORDER BY id DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(reason.contains("rate limit"), "{reason}");
    assert_eq!(env.pid_of("y"), Some(new_y));
    env.ctl(&["stop"]).success();
}
