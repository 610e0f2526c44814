//! The nano summariser's evaluation: prints figures, asserts nothing.
//!
//! `cargo bench -p n0m1-models --bench summaries` (release build). 50 synthetic windows
//! (rising, falling, flat, spike, oscillating, just under and just over the threshold, each 7
//! ways, plus a missing sensor) go through the real `NanoInstance` with each local model: the
//! seeded tiny fixture always, and every `.gguf` file in `BENCH_MODELS` (a colon-separated list
//! of paths; `scripts/fetch_smollm2.sh` fetches SmolLM2). For each model it prints how many
//! raw model texts claim a trend and how many of those agree with the computed trend, the share
//! the checker rejected (and the reasons), tokens and CPU seconds per summary. Then the alert
//! rows for a scripted CPU trace, and whether any repeats.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use n0m1_core::Home;
use n0m1_models::{EngineGenerator, ModelArgs, load_engine};
use n0m1_protocol::alerting::AlertTracker;
use n0m1_protocol::checker;
use n0m1_protocol::generator::{GenerateError, Generator};
use n0m1_protocol::nano::{NanoInstance, NanoOptions};
use n0m1_protocol::window::{MetricRow, window_stats};

/// Records what the model was asked and said, before the checker saw it.
struct Recording {
    engine: Rc<RefCell<EngineGenerator>>,
    said: Rc<RefCell<Vec<(String, String)>>>,
}

impl Generator for Recording {
    fn describe(&self) -> String {
        self.engine.borrow().describe()
    }
    fn complete(&mut self, system: Option<&str>, prompt: &str) -> Result<String, GenerateError> {
        let text = self.engine.borrow_mut().complete(system, prompt)?;
        let asked = format!("{}\n{prompt}", system.unwrap_or_default());
        self.said.borrow_mut().push((text.clone(), asked));
        Ok(text)
    }
}

/// CPU seconds (user + system) this process has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = n0m1_core::process::clock_ticks_per_second() as f64;
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / ticks
}

/// The synthetic windows, by kind: 10 values each.
fn windows() -> Vec<(&'static str, Vec<f64>)> {
    let mut out = Vec::new();
    for variant in 0..7 {
        let v = f64::from(variant);
        let base = 20.0 + 7.0 * v;
        out.push((
            "rising",
            (0..10).map(|i| base + f64::from(i) * (2.0 + v)).collect(),
        ));
        out.push((
            "falling",
            (0..10)
                .map(|i| base + 40.0 - f64::from(i) * (2.0 + v))
                .collect(),
        ));
        out.push((
            "flat",
            (0..10)
                .map(|i| base + if i % 2 == 0 { 0.1 } else { 0.0 })
                .collect(),
        ));
        out.push((
            "spike",
            (0..10)
                .map(|i| if i == 5 { 95.0 + v } else { base })
                .collect(),
        ));
        out.push((
            "oscillating",
            (0..10)
                .map(|i| base + if i % 2 == 0 { 15.0 } else { -15.0 })
                .collect(),
        ));
        out.push((
            "just under",
            (0..10)
                .map(|i| 88.0 + f64::from(i % 3) * 0.6 + v * 0.1)
                .collect(),
        ));
        out.push((
            "just over",
            (0..10)
                .map(|i| 90.5 + f64::from(i % 3) * 0.5 + v * 0.1)
                .collect(),
        ));
    }
    out.push(("missing sensor", Vec::new()));
    out
}

/// The first trend a text claims, by the checker's own words.
fn claimed_trend(text: &str) -> Option<&'static str> {
    checker::claimed_trends(text)
        .first()
        .map(|(trend, _)| *trend)
}

fn evaluate(name: &str, model: &Path, home: &Home) {
    let args = ModelArgs {
        model: model.display().to_string(),
        threads: Some(2),
        quantize: "none".into(),
        lora: None,
        max_new_tokens: 40,
    };
    let engine = match load_engine(&args, "none", home) {
        Ok(engine) => Rc::new(RefCell::new(engine)),
        Err(error) => {
            println!("{name}: cannot load ({error}); skipped");
            return;
        }
    };
    let db = home.db_path();
    let mut summaries = 0;
    let mut rejected: BTreeMap<String, usize> = BTreeMap::new();
    let (mut claims, mut agree) = (0, 0);
    // Kind of window -> trend claims that disagreed, to see where the model goes wrong.
    let mut disagreeing: BTreeMap<&str, usize> = BTreeMap::new();
    let mut tokens = 0;
    let mut cpu = 0.0;
    let mut missing_ok = 0;
    let mut examples = Vec::new();
    let mut rejected_examples = Vec::new();
    let total = windows().len();
    for (kind, values) in windows() {
        let conn = n0m1_core::db::open(&db).unwrap();
        conn.execute("DELETE FROM cpu_usage_log", []).unwrap();
        conn.execute("DELETE FROM cpu_usage_summary", []).unwrap();
        let said = Rc::new(RefCell::new(Vec::new()));
        let before = engine.borrow().generated_tokens;
        let recording = Recording {
            engine: engine.clone(),
            said: said.clone(),
        };
        let options = NanoOptions {
            instance_id: "cpu_usage".into(),
            metrics_table: "cpu_usage_log".into(),
            summary_table: "cpu_usage_summary".into(),
            pull_interval: Duration::from_secs(1),
            summary_interval: Duration::from_secs(60),
            context_window: 10,
            system_prompt_file: None,
            mode: None,
            alert_remind: 300.0,
        };
        let (mut nano, _) = NanoInstance::new(&conn, options, Some(Box::new(recording))).unwrap();
        let mut window = VecDeque::new();
        for (i, value) in values.iter().enumerate() {
            conn.execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (?1)", [value])
                .unwrap();
            nano.pull(&conn).unwrap();
            window.push_back(MetricRow {
                id: i as i64 + 1,
                values: vec![("cpu_usage".into(), *value)],
            });
        }
        let start = cpu_seconds();
        let content = nano.summarise(&conn).unwrap();
        cpu += cpu_seconds() - start;
        drop(nano);
        tokens += engine.borrow().generated_tokens - before;
        let Some(content) = content else {
            if kind == "missing sensor" {
                missing_ok += 1;
            }
            continue;
        };
        summaries += 1;
        let stats = window_stats(&window);
        if let Some((raw, asked)) = said.borrow().last() {
            if let Some(claim) = claimed_trend(raw) {
                claims += 1;
                if stats.iter().any(|s| s.trend == claim) {
                    agree += 1;
                } else {
                    *disagreeing.entry(kind).or_default() += 1;
                }
            }
            if let Err(reason) =
                checker::check(raw, &stats).and_then(|text| checker::not_copied(&text, asked))
            {
                let kind = if reason.contains("called the") {
                    "a statistic named as another".to_owned()
                } else if reason.starts_with("number") {
                    "a number not in the window".to_owned()
                } else if reason.starts_with("trend") {
                    "a wrong trend word".to_owned()
                } else {
                    reason.clone()
                };
                *rejected.entry(kind).or_default() += 1;
                if rejected_examples.len() < 4 {
                    rejected_examples.push(format!("{reason}: {}", raw.trim().replace('\n', " ")));
                }
            }
            if examples.len() < 3 {
                examples.push(format!("{kind}: {}", raw.trim().replace('\n', " ")));
            }
        }
        assert!(content.contains("| model: "), "{content}");
    }
    let rejections: usize = rejected.values().sum();
    println!(
        "{name}: {summaries} summaries of {total} windows (the missing sensor gave none: {})",
        missing_ok == 1
    );
    println!(
        "  raw model texts claiming a trend: {claims}; agreeing with the computed trend: {agree}{}",
        if claims > 0 {
            format!(" ({:.0} %)", 100.0 * agree as f64 / claims as f64)
        } else {
            String::new()
        }
    );
    if !disagreeing.is_empty() {
        println!("  disagreeing claims by kind of window: {disagreeing:?}");
    }
    println!(
        "  rejected by the checker: {rejections} of {summaries} ({:.0} %): {rejected:?}",
        100.0 * rejections as f64 / summaries.max(1) as f64
    );
    println!(
        "  per summary: {:.1} tokens, {:.3} CPU s",
        tokens as f64 / summaries.max(1) as f64,
        cpu / summaries.max(1) as f64
    );
    for example in examples {
        println!("  e.g. {}", example.chars().take(160).collect::<String>());
    }
    for example in rejected_examples {
        println!(
            "  rejected: {}",
            example.chars().take(200).collect::<String>()
        );
    }
}

fn alerts_for_a_scripted_trace() {
    // One sample every 5 s for 30 minutes: calm, a 12-minute high with dips to 87-89
    // (inside the hysteresis band), calm, a short second high.
    let mut tracker = AlertTracker::new(300.0);
    let mut rows = Vec::new();
    let mut above = 0;
    for i in 0..360 {
        let t = f64::from(i) * 5.0;
        let value = match i {
            0..60 => 40.0,
            60..204 => {
                if i % 10 == 0 {
                    88.0
                } else {
                    93.0 + f64::from(i % 5)
                }
            }
            204..300 => 35.0,
            300..320 => 96.0,
            _ => 50.0,
        };
        let row = MetricRow {
            id: i64::from(i) + 1,
            values: vec![("cpu_usage".into(), value)],
        };
        above += usize::from(value > 90.0);
        rows.extend(tracker.observe(&row, "cpu_usage_log", t));
    }
    let unique: std::collections::HashSet<&String> = rows.iter().collect();
    println!(
        "scripted CPU trace (360 samples 5 s apart, {above} of them above 90): {} alert rows, {} distinct",
        rows.len(),
        unique.len()
    );
    for row in &rows {
        println!("  {row}");
    }
}

fn main() {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home"));
    home.ensure().unwrap();
    n0m1_core::db::initialise(&home.db_path()).unwrap();
    let fixture = tmp.path().join("tiny-gpt2");
    n0m1_llm::fixture::write_tiny_gpt2(&fixture, 42).unwrap();
    println!(
        "nano summariser evaluation, {} windows, 2 threads, 40 new tokens at most, {} cores",
        windows().len(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    evaluate(
        "tiny GPT-2 fixture (seed 42, random weights)",
        &fixture,
        &home,
    );
    for path in std::env::var("BENCH_MODELS")
        .unwrap_or_default()
        .split(':')
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
    {
        let name = path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        evaluate(&name, &path, &home);
    }
    alerts_for_a_scripted_trace();
}
