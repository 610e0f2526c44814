//! Memory of the model loop with one shared copy against one copy per process: prints
//! figures, asserts nothing.
//!
//! `cargo bench -p n0m1-models --bench shared_model` (release build). The model is the first
//! `.gguf` of `BENCH_MODELS` (a colon-separated list; `scripts/fetch_smollm2.sh` fetches
//! SmolLM2), else a generated GPT-2 of distilgpt2's shape. Two homes run the three metric
//! nano instances (cpu_usage, mem_usage, cpu_temp) and the main processor on that model, with
//! metric rows written by the benchmark: one with `models.shared: false` (each process loads its
//! own copy), one with the model service. Once every nano instance has written a summary with
//! model text and the processor has answered a RUN, it reads the resident memory (VmRSS) of
//! every process and prints each, their sum, and against one loaded model (the median
//! in-process component): what the processes holding weights sum to (with the service, the
//! service alone) and what the whole loop, clients included, does.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binaries it measures

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rusqlite::Connection;

const NANOS: [(&str, &str, &str); 3] = [
    ("cpu_usage", "cpu_usage_log", "cpu_usage_summary"),
    ("mem_usage", "memory_usage_log", "memory_usage_summary"),
    ("cpu_temp", "cpu_temperature_log", "cpu_temp_summary"),
];

/// Resident memory of a process, in MiB (VmRSS of /proc/PID/status).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

struct Loop {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    children: Vec<(String, Child)>,
}

impl Loop {
    fn new(shared: bool) -> Loop {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        n0m1_core::Home::new(&home).ensure().unwrap();
        n0m1_core::db::initialise(&home.join("n0m1_agi.db")).unwrap();
        std::fs::write(
            home.join("config.json"),
            serde_json::json!({"models": {"shared": shared}}).to_string(),
        )
        .unwrap();
        let db = Loop::open(&home);
        db.execute_batch(
            "INSERT INTO cpu_usage_log (cpu_usage) VALUES (35.0), (41.0), (38.5);
             INSERT INTO memory_usage_log (mem_usage) VALUES (52.0), (52.5), (53.0);
             INSERT INTO cpu_temperature_log (temperature_celsius) VALUES (48.0), (49.5), (51.0);",
        )
        .unwrap();
        Loop {
            _tmp: tmp,
            home,
            children: Vec::new(),
        }
    }

    fn open(home: &Path) -> Connection {
        let conn = Connection::open(home.join("n0m1_agi.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    fn count(&self, sql: &str) -> i64 {
        Loop::open(&self.home)
            .query_row(sql, [], |r| r.get(0))
            .unwrap()
    }

    fn spawn(&mut self, name: &str, binary: &str, args: &[&str]) {
        let child = Command::new(binary)
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.children.push((name.to_owned(), child));
    }

    fn wait(&self, what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(600);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs the loop on `model` until every component has used it; the RSS of each process.
    fn measure(&mut self, model: &str, service: bool) -> Vec<(String, f64)> {
        if service {
            self.spawn(
                "model_service",
                env!("CARGO_BIN_EXE_n0m1_model_service"),
                &["--threads", "2"],
            );
            let socket = self.home.join("run/model.sock");
            self.wait("the model service", || {
                n0m1_protocol::model_service::status(&socket).is_ok()
            });
        }
        for (id, metrics, summary) in NANOS {
            self.spawn(
                &format!("nano_{id}"),
                env!("CARGO_BIN_EXE_nano_instance"),
                &[
                    "--instance_id",
                    id,
                    "--metrics_table",
                    metrics,
                    "--summary_table",
                    summary,
                    "--model",
                    model,
                    "--pull_interval",
                    "0.5",
                    "--summary_interval",
                    "2",
                    "--max_new_tokens",
                    "16",
                    "--threads",
                    "2",
                ],
            );
        }
        self.spawn(
            "main_llm_processor",
            env!("CARGO_BIN_EXE_llm_processor"),
            &["--model", model, "--max_new_tokens", "16", "--threads", "2"],
        );
        for (_, _, summary) in NANOS {
            self.wait(summary, || {
                self.count(&format!(
                    "SELECT count(*) FROM {summary} WHERE content LIKE '%| model:%'"
                )) >= 1
            });
        }
        Loop::open(&self.home)
            .execute(
                "INSERT INTO llm_notifications (llm_id, notification_type) VALUES ('main_llm_processor', 'RUN')",
                [],
            )
            .unwrap();
        self.wait("the RUN", || {
            self.count("SELECT count(*) FROM llm_notifications WHERE processed = 1") == 1
        });
        self.children
            .iter()
            .map(|(name, child)| (name.clone(), rss_mib(child.id())))
            .collect()
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn print(label: &str, rss: &[(String, f64)]) -> f64 {
    let sum: f64 = rss.iter().map(|(_, mib)| mib).sum();
    let each: Vec<String> = rss
        .iter()
        .map(|(name, mib)| format!("{name} {mib:.1}"))
        .collect();
    println!("{label}: {} | sum {sum:.1} MiB", each.join(", "));
    sum
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let model = std::env::var("BENCH_MODELS")
        .ok()
        .and_then(|list| {
            list.split(':')
                .find(|p| p.ends_with(".gguf") && Path::new(p).is_file())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| {
            let dir = tmp.path().join("distilgpt2-shape");
            n0m1_llm::fixture::write_gpt2(&dir, &n0m1_llm::fixture::distilgpt2_config(), 7)
                .unwrap();
            dir.to_string_lossy().into_owned()
        });
    println!(
        "model: {model}; 3 nano instances + the processor, 2 threads, resident memory (VmRSS) once each has used the model"
    );
    let mut separate = Loop::new(false);
    let apart = separate.measure(&model, false);
    drop(separate);
    let mut copies: Vec<f64> = apart.iter().map(|(_, mib)| *mib).collect();
    copies.sort_by(f64::total_cmp);
    let one = copies[copies.len() / 2];
    let apart_sum = print("a copy in each process", &apart);
    let mut shared = Loop::new(true);
    let together = shared.measure(&model, true);
    let shared_sum = print("one copy in the model service", &together);
    let service = together
        .iter()
        .find(|(name, _)| name == "model_service")
        .map_or(0.0, |(_, mib)| *mib);
    println!(
        "one loaded model (median in-process component): {one:.1} MiB; processes holding model weights: {:.2}x shared (the service alone), {:.2}x with a copy each; the whole loop with its clients: {:.2}x",
        service / one,
        apart_sum / one,
        shared_sum / one
    );
}
