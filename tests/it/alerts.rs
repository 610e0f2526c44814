//! Alerts through the real alerter: a crash-looping component's FAILED reaches a webhook (a
//! local listener) and an exec hook once per interval, the suppressed count rides on the
//! next, RECOVERED follows `enable`; a hook that hangs delays no restart and `stop` ends it;
//! bad rules are errors naming their field.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{TestEnv, alive, wait_until};

const T: Duration = Duration::from_secs(20);

/// An HTTP listener that records each POST's JSON body and answers 200.
fn listener() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let socket = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", socket.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    std::thread::spawn(move || {
        for stream in socket.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_ok()
                && let Ok(json) = serde_json::from_slice(&body)
            {
                seen.lock().unwrap().push(json);
            }
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (url, bodies)
}

fn of(bodies: &Arc<Mutex<Vec<serde_json::Value>>>, event: &str) -> Vec<serde_json::Value> {
    bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["event"] == event)
        .cloned()
        .collect()
}

#[test]
fn failed_reaches_webhooks_and_hooks_once_per_interval_then_recovered() {
    let env = TestEnv::new();
    let (url, bodies) = listener();
    let hooks = env.home.hooks_dir();
    let write_hook = |name: &str, body: &str| {
        let path = hooks.join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
    };
    write_hook(
        "record.sh",
        "#!/bin/sh\necho \"$N0M1_EVENT $N0M1_COMPONENT $N0M1_SUPPRESSED\" >> \"$N0M1_HOME/hook.out\"\n",
    );
    write_hook("hang.sh", "#!/bin/sh\nexec sleep 1000\n");
    env.sql(&format!(
        "INSERT INTO alert_rules (id, event_types, component_glob, action, target, min_interval_s, remind_s) VALUES
           (1, 'FAILED,RECOVERED', 'crash*', 'webhook', '{url}', 2, 0),
           (2, 'FAILED', 'crash*', 'exec', 'record.sh', 2, 0),
           (3, 'CRASHED', 'victim', 'exec', 'hang.sh', 0, 0),
           (4, 'FAILED', '*', 'email', 'ops@example.org', 1, 0),
           (5, 'FAILED', '*', 'webhook', 'ftp://example.org/x', 1, 0),
           (6, 'FAILED', '*', 'exec', '../../bin/true', 1, 0)"
    ));
    env.sql(
        "UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'n0m1_alerts'",
    );
    env.add_component("victim", "sleeper.sh", "daemon_manager", "{}");
    env.ctl(&["start"]).success();
    wait_until(T, "the alerter to be ready", || {
        env.count_events("n0m1_alerts", "READY") == 1
    });
    // Bad rules: one error each, naming the row and the field.
    wait_until(T, "the bad rules reported", || {
        env.count_events("n0m1_alerts", "ERROR") == 3
    });
    let errors: String = {
        let conn = env.db();
        let mut statement = conn
            .prepare("SELECT group_concat(message, ' | ') FROM component_lifecycle_log WHERE component_id = 'n0m1_alerts' AND event_type = 'ERROR'")
            .unwrap();
        statement.query_row([], |r| r.get(0)).unwrap()
    };
    for expected in ["row 4: action", "row 5: target", "row 6: target"] {
        assert!(errors.contains(expected), "{expected}: {errors}");
    }

    // The crash loop: FAILED once to each target, with the fields.
    env.add_component("crashy", "crasher.sh", "daemon_manager", "{}");
    wait_until(T, "the first FAILED POST", || {
        of(&bodies, "FAILED").len() == 1
    });
    let first = Instant::now();
    let post = &of(&bodies, "FAILED")[0];
    assert_eq!(post["component"], "crashy");
    assert_eq!(post["suppressed"], 0);
    assert!(
        post["message"].as_str().unwrap().contains("quick deaths"),
        "{post}"
    );
    assert!(!post["timestamp"].as_str().unwrap().is_empty(), "{post}");
    let hook_out = env.home.root().join("hook.out");
    wait_until(T, "the exec hook", || {
        std::fs::read_to_string(&hook_out).is_ok_and(|t| t.contains("FAILED crashy 0"))
    });

    // Enabled, it fails again within min_interval_s: RECOVERED, then a suppressed FAILED.
    env.ctl(&["enable", "crashy"]).success();
    wait_until(T, "RECOVERED after enable", || {
        of(&bodies, "RECOVERED").len() == 1
    });
    wait_until(T, "the second FAILED counted", || {
        env.count_events("crashy", "FAILED") == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        of(&bodies, "FAILED").len(),
        1,
        "within the interval: suppressed"
    );
    // Past the interval, the next delivery carries the count.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(first.elapsed()));
    env.ctl(&["enable", "crashy"]).success();
    wait_until(T, "the third FAILED POST", || {
        of(&bodies, "FAILED").len() == 2
    });
    assert_eq!(of(&bodies, "FAILED")[1]["suppressed"], 1);
    wait_until(T, "the hook with the count", || {
        std::fs::read_to_string(&hook_out).is_ok_and(|t| t.contains("FAILED crashy 1"))
    });
    let suppressed: i64 = env
        .db()
        .query_row(
            "SELECT count(*) FROM alert_log WHERE rule_id = 1 AND outcome = 'suppressed'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(suppressed, 1);
    let delivered: i64 = env
        .db()
        .query_row(
            "SELECT count(*) FROM alert_log WHERE rule_id = 1 AND outcome = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(delivered >= 3, "each attempt logged: {delivered}");

    // A hook that never ends delays no restart.
    let mut victim = env.wait_pid("victim", "victim to run");
    for _ in 0..3 {
        kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
        victim = env.wait_new_pid(
            "victim",
            victim,
            Duration::from_secs(2),
            "victim restarted while hooks hang",
        );
    }
    wait_until(T, "the hanging hooks to run", || {
        crate::support::live_processes_mentioning("sleep 1000").len() >= 2
    });
    assert!(alive(victim));
    env.ctl(&["stop"]).success();
    assert!(
        env.live_processes().is_empty(),
        "stop ends hooks too: {:?}",
        env.live_processes()
    );
}

/// A burst of alerts runs at most `WORKERS` deliveries at once with a bounded queue behind
/// them; what finds the queue full is recorded as dropped, and the alerter stays small.
#[test]
fn a_burst_of_alerts_is_delivered_through_a_bounded_pool_and_the_rest_recorded_dropped() {
    let env = TestEnv::new();
    let hook = env.home.hooks_dir().join("slow.sh");
    std::fs::write(&hook, "#!/bin/sh\nexec sleep 3\n").unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    env.sql(
        "INSERT INTO alert_rules (event_types, component_glob, action, target, min_interval_s, remind_s)
           VALUES ('FAILED', 'burst*', 'exec', 'slow.sh', 0, 0);
         UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'n0m1_alerts';",
    );
    env.ctl(&["start"]).success();
    let alerter = env.wait_pid("n0m1_alerts", "the alerter running");
    wait_until(T, "the alerter watching", || {
        env.count_events("n0m1_alerts", "STARTED_SUCCESSFULLY") == 1
    });
    // 300 FAILED events at once, each for another component (none is suppressed).
    let mut sql = String::from("BEGIN;");
    for i in 0..300 {
        sql.push_str(&format!(
            "INSERT INTO component_lifecycle_log (component_id, event_type, message) VALUES ('burst{i}', 'FAILED', 'staged');"
        ));
    }
    sql.push_str("COMMIT;");
    env.sql(&sql);
    let dropped = || -> i64 {
        env.db()
            .query_row(
                "SELECT count(*) FROM alert_log WHERE outcome = 'dropped'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    // The workers may take up to 4 jobs from the queue while it fills.
    wait_until(T, "the overflow recorded", || dropped() >= 300 - 64 - 4);
    std::thread::sleep(Duration::from_millis(300));
    let hooks_running = crate::support::live_processes_mentioning(env.root())
        .into_iter()
        .filter(|(_, cmdline)| cmdline.contains("sleep 3"))
        .count();
    assert!(hooks_running <= 4, "{hooks_running} hooks at once");
    let threads: usize = std::fs::read_to_string(format!("/proc/{alerter}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(threads <= 12, "{threads} threads");
    let dropped_now = dropped();
    assert!(
        (300 - 64 - 4..=300 - 64).contains(&dropped_now),
        "{dropped_now}: every alert running, queued or recorded dropped"
    );
    let detail: String = env
        .db()
        .query_row(
            "SELECT detail FROM alert_log WHERE outcome = 'dropped' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains("dropped"), "{detail}");
    env.ctl(&["stop"]).success();
}
