//! Opt-in: a real model. `scripts/fetch_smollm2.sh` puts SmolLM2-135M-Instruct (GGUF) into a
//! home's models/; point N0M1_SMOLLM2 at the file. Without it this test says it is skipped
//! and passes (tests never look into a user's real home).

#![allow(clippy::disallowed_methods)] // the test starts the binary under test directly

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

fn model_file() -> Option<PathBuf> {
    std::env::var_os("N0M1_SMOLLM2")
        .map(PathBuf::from)
        .filter(|p| p.is_file())
}

#[test]
fn smollm2_summarises_a_metric_window() {
    let Some(model) = model_file() else {
        eprintln!("skipped: no SmolLM2 GGUF (run scripts/fetch_smollm2.sh, or set N0M1_SMOLLM2)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    n0m1_core::Home::new(&home).ensure().unwrap();
    n0m1_core::db::initialise(&home.join("n0m1_agi.db")).unwrap();
    // The model in the nano instance itself: by default it would ask the model service,
    // which this test does not start (the component tests cover the service).
    std::fs::write(home.join("config.json"), r#"{"models": {"shared": false}}"#).unwrap();
    let conn = Connection::open(home.join("n0m1_agi.db")).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(
        "UPDATE nano_prompts SET prompt = 'You watch a server. Say in one short sentence how busy its CPU is.', needs_reload = 1
         WHERE nano_id = 'cpu_usage';
         INSERT INTO cpu_usage_log (cpu_usage) VALUES (42.0);",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_nano_instance"))
        .arg("--home")
        .arg(&home)
        .args([
            "--instance_id",
            "cpu_usage",
            "--metrics_table",
            "cpu_usage_log",
            "--summary_table",
            "cpu_usage_summary",
        ])
        .args([
            "--pull_interval",
            "0.2",
            "--summary_interval",
            "1",
            "--max_new_tokens",
            "32",
            "--threads",
            "2",
        ])
        .arg("--model")
        .arg(&model)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut summary = None;
    while Instant::now() < deadline && summary.is_none() {
        summary = conn
            .query_row(
                "SELECT content FROM cpu_usage_summary WHERE content LIKE '%| model:%' LIMIT 1",
                [],
                |r| r.get::<_, String>(0),
            )
            .ok();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    let _ = child.wait();
    let summary = summary.expect("a summary with the model's text within two minutes");
    eprintln!("SmolLM2 summary: {summary}");
    let text = summary.split("| model:").nth(1).unwrap().trim();
    assert!(
        text.split_whitespace().count() >= 3,
        "a sentence, not noise: {text:?}"
    );
    assert!(summary.contains("count=1 min=42.00"), "{summary}");
}
