//! Prometheus: `promtool check metrics` on a live `/metrics` with components in many states,
//! `promtool check rules`/`config` on `deploy/`, and a real Prometheus server on loopback that
//! scrapes n0m1_web and answers `n0m1_component_up` through its HTTP API.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{TestEnv, free_port, system_tool, wait_until};
use crate::web::{http, start_web, write_config};

fn workspace() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Components in each of the nine states `status` can show. Backoff and stopping last long
/// here (backoff from 5 s, a 30 s stop timeout for one that ignores SIGTERM); unsupervised and
/// dead are rows of a manager that is not running, whose recorded process is alive or gone.
fn components_in_every_state(env: &mut TestEnv) -> std::process::Child {
    let mut config: serde_json::Value = serde_json::from_str(crate::support::FAST_CONFIG).unwrap();
    config["supervisor"]["backoff_initial"] = 5.into();
    config["supervisor"]["backoff_max"] = 10.into();
    config["supervisor"]["stop_timeout"] = 30.into();
    config["resources"] = serde_json::json!({ "interval": 0.3 });
    std::fs::write(env.home.config_path(), config.to_string()).unwrap();
    env.add_component("runner", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("crasher", "crasher.sh", "daemon_manager", "{}");
    env.add_component("once", "oneshot.sh", "daemon_manager", "{}");
    env.sql(
        "UPDATE autorun_components SET run_type_on_boot = 'ONESHOT' WHERE component_id = 'once'",
    );
    env.add_component("idle", "sleeper.sh", "daemon_manager", "{}");
    env.sql("UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'idle'");
    env.add_component("stubborn", "stubborn.sh", "daemon_manager", "{}");
    env.add_component("unrunnable", "sleeper.sh", "no_such_manager", "{}");
    // Waits for a dependency that never says READY=1.
    env.add_component("dependent", "sleeper.sh", "daemon_manager", "{}");
    env.sql(
        "INSERT INTO component_dependencies (component_id, depends_on, condition) VALUES ('dependent', 'runner', 'ready')",
    );
    let orphan = Command::new("sleep").arg("600").spawn().unwrap();
    let ticks = n0m1_core::process::ProcStat::read(orphan.id() as i32)
        .unwrap()
        .start_ticks;
    env.add_component("unsupervised", "sleeper.sh", "nano_manager", "{}");
    env.add_component("dead", "sleeper.sh", "nano_manager", "{}");
    let conn = env.db();
    for (id, pid) in [("unsupervised", orphan.id() as i64), ("dead", 999_999_999)] {
        conn.execute(
            "INSERT INTO component_state (component_id, manager, state, pid, pid_start_ticks, started_at, restarts, updated_at)
             VALUES (?1, 'nano_manager', 'running', ?2, ?3, 1.0, 0, 1.0)",
            rusqlite::params![id, pid, ticks as i64],
        )
        .unwrap();
    }
    orphan
}

#[test]
fn promtool_passes_a_live_metrics_page_and_the_deploy_rules() {
    let Some(promtool) = system_tool("promtool", "prometheus") else {
        return;
    };
    let mut env = TestEnv::new();
    let mut orphan = components_in_every_state(&mut env);
    env.sql("INSERT INTO cpu_usage_log (cpu_usage) VALUES (12.5); INSERT INTO memory_usage_log (mem_usage) VALUES (40.0);");
    let web = start_web(&mut env);
    wait_until(Duration::from_secs(20), "the components settled", || {
        env.state_of("stubborn").as_deref() == Some("running")
            && env.state_of("once").as_deref() == Some("completed")
            && env.state_of("crasher").as_deref() == Some("backoff")
            && env.state_of("dependent").as_deref() == Some("waiting")
    });
    env.sql(
        "UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'stubborn'",
    );
    wait_until(Duration::from_secs(10), "stubborn stopping", || {
        env.state_of("stubborn").as_deref() == Some("stopping")
    });
    let metrics = web.get("/metrics");
    let _ = orphan.kill();
    let _ = orphan.wait();
    assert_eq!(metrics.status, 200);
    for (state, id) in [
        ("running", "runner"),
        ("stopped", "idle"),
        ("stopping", "stubborn"),
        ("waiting", "dependent"),
        ("backoff", "crasher"),
        ("failed", "unrunnable"),
        ("completed", "once"),
        ("unsupervised", "unsupervised"),
        ("dead", "dead"),
    ] {
        let line = format!("n0m1_component_state{{component=\"{id}\",state=\"{state}\"}} 1");
        assert!(
            metrics.body.lines().any(|l| l == line),
            "{line} in\n{}",
            metrics.body
        );
    }
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    check
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let rules = Command::new(&promtool)
        .args(["check", "rules"])
        .arg(workspace().join("deploy/rules/n0m1.yml"))
        .output()
        .unwrap();
    assert!(
        rules.status.success(),
        "{}",
        String::from_utf8_lossy(&rules.stdout)
    );
    assert!(String::from_utf8_lossy(&rules.stdout).contains("SUCCESS: 5 rules found"));
    let config = Command::new(&promtool)
        .args(["check", "config", "--syntax-only"])
        .arg(workspace().join("deploy/prometheus.yml"))
        .output()
        .unwrap();
    assert!(
        config.status.success(),
        "{}",
        String::from_utf8_lossy(&config.stdout)
    );
    if let Some(amtool) = system_tool_quiet("amtool") {
        let am = Command::new(amtool)
            .args(["check-config"])
            .arg(workspace().join("deploy/alertmanager.yml"))
            .output()
            .unwrap();
        assert!(
            am.status.success(),
            "{}",
            String::from_utf8_lossy(&am.stdout)
        );
    }
}

/// An optional tool: used when present, never required.
fn system_tool_quiet(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

#[test]
fn a_real_prometheus_scrapes_n0m1_web_and_answers_component_up() {
    let Some(prometheus) = system_tool("prometheus", "prometheus") else {
        return;
    };
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    env.add_component("runner", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("idle", "sleeper.sh", "daemon_manager", "{}");
    env.sql("UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'idle'");
    let web = start_web(&mut env);
    wait_until(Duration::from_secs(10), "runner running", || {
        env.state_of("runner").as_deref() == Some("running")
    });

    let dir = env.home.root().join("prometheus");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: n0m1\n    static_configs:\n      - targets: [\"{}\"]\n",
            web.addr
        ),
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
    let mut server = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "prometheus listening", || {
        std::net::TcpStream::connect(&listen).is_ok()
    });
    let query = |expr: &str| -> serde_json::Value {
        let answer = http(
            &listen,
            "GET",
            &format!("/api/v1/query?query={expr}"),
            &[],
            b"",
        );
        if answer.status != 200 {
            return serde_json::Value::Null;
        }
        answer.json()
    };
    let mut result = serde_json::Value::Null;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        result = query("n0m1_component_up");
        if result["data"]["result"]
            .as_array()
            .is_some_and(|r| r.len() >= 2)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let _ = server.kill();
    let _ = server.wait();
    let series = result["data"]["result"]
        .as_array()
        .unwrap_or_else(|| {
            panic!(
                "Prometheus never had n0m1_component_up: {result}\n{}",
                std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default()
            )
        })
        .clone();
    let value_of = |id: &str| {
        series
            .iter()
            .find(|s| s["metric"]["component"] == id)
            .map(|s| s["value"][1].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{id} not scraped: {series:?}"))
    };
    assert_eq!(value_of("runner"), "1");
    assert_eq!(value_of("idle"), "0");
    let runner = series
        .iter()
        .find(|s| s["metric"]["component"] == "runner")
        .unwrap();
    assert_eq!(runner["metric"]["manager"], "daemon_manager");
    assert_eq!(runner["metric"]["job"], "n0m1");
}
