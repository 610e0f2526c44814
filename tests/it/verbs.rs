//! The verbs operators of supervisorctl, systemctl and pm2 expect, through the real n0m1ctl
//! and a real manager: `add`, `restart ID`, `status ID`, `events [-f] [--component]`,
//! `remove`; and the managers' resource samples of each component's tree.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{TestEnv, alive, bin, wait_until};

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

fn stderr(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stderr).into_owned()
}

#[test]
fn add_restart_status_events_and_remove_work_like_their_namesakes() {
    let mut env = TestEnv::new();
    crate::web::write_config(&env, serde_json::json!({}));
    env.spawn("daemon_manager");

    // add: checked as the manager would check it, then run.
    let added = env
        .ctl(&[
            "add",
            "worker",
            "--script",
            "sleeper.sh",
            "--manager",
            "daemon_manager",
            "--args",
            r#"{"--name": "w"}"#,
        ])
        .success();
    assert!(
        stdout(&added).starts_with("added worker (active, daemon_manager)"),
        "{}",
        stdout(&added)
    );
    wait_until(Duration::from_secs(10), "worker running", || {
        env.state_of("worker").as_deref() == Some("running")
    });
    for (args, says) in [
        (
            vec![
                "add",
                "worker",
                "--script",
                "sleeper.sh",
                "--manager",
                "daemon_manager",
            ],
            "already exists",
        ),
        (
            vec![
                "add",
                "w2",
                "--script",
                "no_such.sh",
                "--manager",
                "daemon_manager",
            ],
            "--script",
        ),
        (
            vec![
                "add",
                "w2",
                "--script",
                "sleeper.sh",
                "--manager",
                "no_manager",
            ],
            "no manager is called",
        ),
        (
            vec![
                "add",
                "w2",
                "--script",
                "sleeper.sh",
                "--manager",
                "daemon_manager",
                "--args",
                "[1]",
            ],
            "--args",
        ),
        (
            vec![
                "add",
                "../w2",
                "--script",
                "sleeper.sh",
                "--manager",
                "daemon_manager",
            ],
            "cannot add",
        ),
    ] {
        let refused = env.ctl(&args).failure();
        assert!(
            stderr(&refused).contains(says),
            "{args:?}: {}",
            stderr(&refused)
        );
    }
    assert_eq!(
        env.count_rows("autorun_components WHERE component_id = 'w2'"),
        0
    );
    env.ctl(&[
        "add",
        "idle",
        "--script",
        "sleeper.sh",
        "--manager",
        "daemon_manager",
        "--inactive",
    ])
    .success();

    // status ID: state, pid, restarts, the log.
    let pid = env.status_json("worker")["pid"].as_i64().unwrap() as i32;
    wait_until(Duration::from_secs(10), "worker's first log line", || {
        stdout(&env.ctl(&["status", "worker"])).contains("started")
    });
    let shown = stdout(&env.ctl(&["status", "worker"]).success());
    assert!(
        shown.starts_with("● worker (manager daemon_manager)"),
        "{shown}"
    );
    for part in [
        "Desired: active",
        "Actual: running for",
        "Restarts: 0",
        &format!("PID: {pid}"),
        "worker.log <==",
        "started",
    ] {
        assert!(shown.contains(part), "{part:?} in {shown}");
    }
    let idle = env.ctl(&["status", "idle"]).code(3);
    assert!(stdout(&idle).contains("Actual: stopped"));
    let unknown = env.ctl(&["status", "nope"]).failure();
    assert!(stderr(&unknown).contains("unknown component 'nope'"));

    // events -f follows like journalctl -f.
    let mut follower = Command::new(bin("n0m1ctl"))
        .args([
            "--home",
            env.root(),
            "events",
            "-f",
            "--component",
            "worker",
            "-n",
            "1",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(follower.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(" worker "), "{first}");

    // restart ID: a new process, the desired state unchanged.
    let said = stdout(&env.ctl(&["restart", "worker"]).success());
    assert!(said.contains("restart of worker requested"), "{said}");
    let new_pid = {
        let mut new_pid = 0;
        wait_until(Duration::from_secs(10), "worker restarted", || {
            new_pid = env.status_json("worker")["pid"].as_i64().unwrap_or(0) as i32;
            new_pid != 0 && new_pid != pid
        });
        new_pid
    };
    assert!(!alive(pid));
    assert_eq!(env.status_json("worker")["desired"], "active");
    let mut followed = Vec::new();
    while !followed
        .iter()
        .any(|l: &String| l.contains("START_ATTEMPT"))
    {
        followed.push(lines.next().unwrap().unwrap());
    }
    assert!(
        followed[0].contains("STOP_REQUESTED")
            && followed[0].contains("restart requested by an operator"),
        "{followed:?}"
    );
    assert!(followed.iter().all(|l| l.contains(" worker ")));
    let _ = follower.kill();
    let _ = follower.wait();
    let history = stdout(
        &env.ctl(&["events", "--component", "worker", "-n", "3"])
            .success(),
    );
    assert_eq!(history.lines().count(), 3, "{history}");
    assert!(
        history.lines().last().unwrap().contains("START_ATTEMPT"),
        "{history}"
    );
    // A typo is an error naming it, as the API's 404.
    let typo = env.ctl(&["events", "--component", "nothere"]).failure();
    assert!(
        stderr(&typo).contains("unknown component 'nothere'"),
        "{}",
        stderr(&typo)
    );
    let refused = env.ctl(&["restart", "idle"]).failure();
    assert!(
        stderr(&refused).contains("'idle' is inactive"),
        "{}",
        stderr(&refused)
    );
    assert!(stderr(&env.ctl(&["restart", "nope"]).failure()).contains("unknown component"));

    // remove: the manager stops the process and forgets it.
    let removed = stdout(&env.ctl(&["remove", "worker"]).success());
    assert!(removed.starts_with("removed worker"), "{removed}");
    wait_until(
        Duration::from_secs(10),
        "worker stopped after remove",
        || !alive(new_pid),
    );
    assert_eq!(
        env.count_rows("autorun_components WHERE component_id = 'worker'"),
        0
    );
    assert!(stderr(&env.ctl(&["remove", "worker"]).failure()).contains("unknown component"));
}

#[test]
fn managers_sample_each_components_whole_tree_and_prune_old_samples() {
    let mut env = TestEnv::new();
    crate::web::write_config(&env, serde_json::json!({}));
    // A sample from long ago: the retention (7 days by default) prunes it at start.
    env.sql(
        "INSERT INTO component_resource_log (component_id, manager, sampled_at, rss_bytes, cpu_seconds, processes)
         VALUES ('tree', 'daemon_manager', 1000.0, 1, 0.0, 1)",
    );
    env.add_component("tree", "tree.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    let count = |sql: &str| -> i64 { env.db().query_row(sql, [], |r| r.get(0)).unwrap() };
    wait_until(Duration::from_secs(10), "three samples of tree", || {
        count(
            "SELECT count(*) FROM component_resource_log WHERE component_id = 'tree' AND sampled_at > 2000",
        ) >= 3
    });
    assert_eq!(
        count("SELECT count(*) FROM component_resource_log WHERE sampled_at < 2000"),
        0
    );
    // tree.sh and its three sleeps, one of them in a session of its own (setsid).
    wait_until(
        Duration::from_secs(10),
        "a sample of the whole tree",
        || {
            count("SELECT max(processes) FROM component_resource_log WHERE component_id = 'tree'")
                == 4
        },
    );
    let (rss, processes): (i64, i64) = env
        .db()
        .query_row(
            "SELECT rss_bytes, processes FROM component_resource_log WHERE component_id = 'tree' ORDER BY id DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(processes, 4);
    // In its cgroup (as root), the sample is the cgroup's own charge, which counts a shared
    // page once; without one, the tree's summed RSS.
    let charged = env.status_json("tree")["limits"]["memory_bytes"].as_u64();
    let members: u64 = charged.unwrap_or_else(|| {
        env.processes_of("tree")
            .iter()
            .filter_map(|pid| n0m1_core::process::ProcStat::read(*pid))
            .map(|s| n0m1_core::process::rss_kib(&s) * 1024)
            .sum()
    });
    assert!(
        rss as u64 > members / 2 && (rss as u64) < members * 2,
        "sampled {rss}, now {members} (from its cgroup: {})",
        charged.is_some()
    );
}

#[test]
fn supervisors_link_no_http_stack() {
    let contains = |name: &str, needle: &[u8]| {
        let bytes = std::fs::read(bin(name)).unwrap();
        bytes.windows(needle.len()).any(|w| w == needle)
    };
    // The control: the web server's binary does carry the crates' symbols.
    assert!(contains("n0m1_web", b"axum::"), "n0m1_web links axum");
    assert!(contains("n0m1_web", b"hyper::"), "n0m1_web links hyper");
    for supervisor in [
        "boot_system",
        "daemon_manager",
        "nano_manager",
        "main_llm_manager",
    ] {
        for crate_path in [&b"axum::"[..], b"hyper::", b"tokio::"] {
            assert!(
                !contains(supervisor, crate_path),
                "{supervisor} links {}",
                String::from_utf8_lossy(crate_path)
            );
        }
    }
}
