//! Incidents: the alerter's rules open one per problem with its evidence and a diagnosis, and
//! close it when the component runs again; through the real alerter, manager and n0m1ctl.

use std::time::Duration;

use crate::support::{TestEnv, wait_until};

#[test]
fn a_crash_loop_opens_one_incident_with_evidence_and_closes_when_it_runs_again() {
    let env = TestEnv::new();
    env.script(
        "flaky.sh",
        "#!/bin/sh\nif [ -e \"$N0M1_HOME/fixed\" ]; then exec sleep 1000; fi\n\
         echo 'loading settings' \necho 'boom: cannot open settings.toml' >&2\nexit 3\n",
    );
    env.add_component("flaky", "flaky.sh", "daemon_manager", "{}");
    // Incidents go on to a hook like any event an alert rule names.
    let hook = env.home.hooks_dir().join("incident.sh");
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"$N0M1_EVENT $N0M1_COMPONENT: $N0M1_MESSAGE\" >> \"$N0M1_HOME/incident.out\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    env.sql(
        "INSERT INTO alert_rules (event_types, component_glob, action, target, min_interval_s, remind_s)
         VALUES ('INCIDENT_OPENED', '*', 'exec', 'incident.sh', 0, 0)",
    );
    env.sql(
        "UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'flaky';
         UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'n0m1_alerts';",
    );
    env.ctl(&["start"]).success();
    env.wait_pid("n0m1_alerts", "the alerter running");
    wait_until(Duration::from_secs(10), "the alerter watching", || {
        env.count_events("n0m1_alerts", "STARTED_SUCCESSFULLY") == 1
    });
    env.ctl(&["enable", "flaky"]).success();

    let incident = || -> Option<(i64, String, String, String, String, String)> {
        env.db()
            .query_row(
                "SELECT id, kind, evidence, diagnosis, suggested_action, state FROM incidents WHERE component_id = 'flaky'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
            )
            .ok()
    };
    wait_until(Duration::from_secs(15), "the crash loop's incident", || {
        incident().is_some()
    });
    wait_until(Duration::from_secs(15), "flaky FAILED", || {
        env.count_events("flaky", "FAILED") == 1
    });
    let (id, kind, evidence, diagnosis, suggested, state) = incident().unwrap();
    assert_eq!((kind.as_str(), state.as_str()), ("crash_loop", "open"));
    let evidence: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    let events = evidence["events"].to_string();
    assert!(
        events.contains("CRASHED") && events.contains("exit code 3"),
        "{events}"
    );
    assert!(
        evidence["stderr_tail"]
            .to_string()
            .contains("boom: cannot open settings.toml"),
        "{evidence}"
    );
    assert!(diagnosis.contains("flaky crashed 3 times"), "{diagnosis}");
    assert!(
        diagnosis.contains("boom: cannot open settings.toml"),
        "{diagnosis}"
    );
    assert_eq!(suggested, "stop");
    assert!(
        env.last_message("flaky", "INCIDENT_OPENED")
            .contains(&format!("incident {id} (crash_loop)"))
    );
    // The FAILED that ended the loop is the same problem: still one incident.
    let count: i64 = env
        .db()
        .query_row("SELECT count(*) FROM incidents", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
    let delivered = env.home.root().join("incident.out");
    wait_until(
        Duration::from_secs(15),
        "the incident sent to the hook",
        || crate::support::file_contains(&delivered, "INCIDENT_OPENED flaky: incident"),
    );
    assert!(crate::support::file_contains(
        &delivered,
        "boom: cannot open settings.toml"
    ));
    let listed = env.ctl(&["incidents"]).success();
    let listed = String::from_utf8_lossy(&listed.get_output().stdout).into_owned();
    assert!(
        listed.contains("crash_loop") && listed.contains("flaky"),
        "{listed}"
    );

    // Fixed and enabled: once it has run a while, the incident closes.
    std::fs::write(env.home.root().join("fixed"), "").unwrap();
    env.ctl(&["enable", "flaky"]).success();
    env.wait_pid("flaky", "flaky running");
    wait_until(Duration::from_secs(15), "the incident closed", || {
        incident().is_some_and(|i| i.5 == "closed")
    });
    assert_eq!(env.count_events("flaky", "INCIDENT_CLOSED"), 1);
    let shown = env.ctl(&["incidents", &id.to_string()]).success();
    let shown = String::from_utf8_lossy(&shown.get_output().stdout).into_owned();
    assert!(
        shown.contains("closed") && shown.contains("boom"),
        "{shown}"
    );
    env.ctl(&["stop"]).success();
}
