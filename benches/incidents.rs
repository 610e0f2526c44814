//! Incident evaluation: prints figures, asserts nothing.
//!
//! `cargo bench --bench incidents` (build the model binaries first for the model rows:
//! `cargo build --release -p n0m1-models`). Each incident kind is staged for real through the
//! binaries `BENCH_ROUNDS` times (default 5): a crash loop, a hung component killed by its
//! watchdog, a dependency disabled under its dependent, a metric spell seen by a nano
//! instance, and an OOM kill under a 16 MiB limit (as root, with cgroups). Then, for the
//! rules alone and for each model (`BENCH_MODELS`, default `fixture`; add a path to a GGUF
//! file or model folder, e.g. SmolLM2's, as `name=path`): the incident kind and component
//! right, the diagnosis accepted by the checker (a model's; the rules' always is), the
//! suggested action right, and the wall time and CPU seconds (alerter, processor and model
//! service) from the triggering event to the final diagnosis.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binaries under test

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use n0m1_core::Home;
use n0m1_core::process::ProcStat;
use rusqlite::{Connection, OptionalExtension};

fn ctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_n0m1ctl"))
}

const CONFIG: &str = r#"{
  "managers": {
    "daemon_manager.py": {"startup_delay": 0, "health_check_interval": 1},
    "nano_manager.py": {"startup_delay": 0, "health_check_interval": 1},
    "main_llm_manager.py": {"startup_delay": 0, "health_check_interval": 1}
  },
  "supervisor": {
    "min_uptime": 0.5, "backoff_initial": 0.05, "backoff_max": 0.2,
    "max_quick_deaths": 3, "stop_timeout": 1.5, "heartbeat_interval": 0.3
  }MODELS
}"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    CrashLoop,
    Unhealthy,
    DependencyHalted,
    MetricAlert,
    OomKilled,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::CrashLoop => "crash_loop",
            Kind::Unhealthy => "unhealthy",
            Kind::DependencyHalted => "dependency_halted",
            Kind::MetricAlert => "metric_alert",
            Kind::OomKilled => "oom_killed",
        }
    }
    /// What a person would do first.
    fn right_action(self) -> &'static str {
        match self {
            Kind::CrashLoop => "stop",
            Kind::Unhealthy => "restart",
            Kind::DependencyHalted => "start_dependency",
            Kind::MetricAlert => "none",
            Kind::OomKilled => "raise_limit",
        }
    }
}

struct Home_ {
    _tmp: tempfile::TempDir,
    home: Home,
}

impl Home_ {
    fn new(model: Option<&Path>) -> Home_ {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("home"));
        home.ensure().unwrap();
        let models = model.map_or(String::new(), |path| {
            format!(
                r#", "models": {{"default": {}}}"#,
                serde_json::Value::String(path.display().to_string())
            )
        });
        std::fs::write(home.config_path(), CONFIG.replace("MODELS", &models)).unwrap();
        n0m1_core::db::initialise(&home.db_path()).unwrap();
        let script = |name: &str, body: &str| {
            let path = home.components_dir().join(name);
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        };
        script("sleeper.sh", "#!/bin/sh\nexec sleep 100000\n");
        script(
            "crasher.sh",
            "#!/bin/sh\necho 'loading settings'\necho 'fatal: cannot open settings.toml' >&2\nexit 3\n",
        );
        // Never sends WATCHDOG=1: its watchdog finds it hung.
        script(
            "silent.sh",
            "#!/bin/sh\necho 'waiting for work'\nexec sleep 100000\n",
        );
        script(
            "grower.sh",
            "#!/bin/sh\necho 'building the index'\nexec python3 -c 'import time; x = bytearray(256 << 20); time.sleep(60)'\n",
        );
        let h = Home_ { _tmp: tmp, home };
        let model_rows = if model.is_some() {
            "UPDATE autorun_components SET desired_state = 'active' WHERE component_id IN ('main_llm_processor', 'model_service', 'llm_config_daemon');"
        } else {
            ""
        };
        h.sql(&format!(
            "UPDATE autorun_components SET desired_state = 'inactive';
             UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'n0m1_alerts';
             {model_rows}
             INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state, launch_args_json)
               VALUES ('nano_bench', 'nano_instance', 'nano_manager', 'active',
                       '{{\"--instance_id\": \"bench\", \"--metrics_table\": \"cpu_usage_log\", \"--summary_table\": \"cpu_usage_summary\", \"--pull_interval\": \"0.2\"}}');"
        ));
        h
    }
    fn db(&self) -> Connection {
        let conn = Connection::open(self.home.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
    fn sql(&self, sql: &str) {
        self.db().execute_batch(sql).unwrap();
    }
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(ctl())
            .arg("--home")
            .arg(self.home.root())
            .args(args)
            .output()
            .unwrap()
    }
    fn add(&self, id: &str, script: &str) {
        self.sql(&format!(
            "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state)
             VALUES ('{id}', '{script}', 'daemon_manager', 'active')"
        ));
    }
    fn state(&self, id: &str) -> Option<String> {
        self.db()
            .query_row(
                "SELECT state FROM component_state WHERE component_id = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .unwrap()
    }
    fn pid(&self, stem: &str) -> Option<i32> {
        n0m1_core::PidFile::inspect(&self.home.pid_file(stem))
            .ok()?
            .live_pid()
    }
}

impl Drop for Home_ {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "--force"]);
    }
}

fn wait<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(value) = probe() {
            return Some(value);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

fn cpu_seconds(pids: &[i32]) -> f64 {
    let tick = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    pids.iter()
        .filter_map(|p| ProcStat::read(*p))
        .map(|s| (s.utime_ticks + s.stime_ticks) as f64 / tick)
        .sum()
}

/// One staged incident's outcome.
struct Outcome {
    kind_right: bool,
    component_right: bool,
    accepted: bool,
    action_right: bool,
    wall: f64,
    cpu: f64,
    rejected: Option<String>,
    /// The model's accepted diagnosis.
    diagnosis: Option<String>,
}

/// Stages `kind` (round `round`) and waits for its incident and its final diagnosis.
fn stage(h: &Home_, kind: Kind, round: usize, with_model: bool) -> Option<Outcome> {
    let first_event: i64 = h
        .db()
        .query_row(
            "SELECT coalesce(max(id), 0) FROM component_lifecycle_log",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let (component, trigger) = match kind {
        Kind::CrashLoop => {
            let id = format!("crash_{round}");
            h.add(&id, "crasher.sh");
            (id, "CRASHED")
        }
        Kind::Unhealthy => {
            let id = format!("hung_{round}");
            h.sql(&format!(
                "INSERT INTO component_health (component_id, watchdog_s) VALUES ('{id}', 1.0)"
            ));
            h.add(&id, "silent.sh");
            (id, "UNHEALTHY")
        }
        Kind::DependencyHalted => {
            let (base, id) = (format!("base_{round}"), format!("dependent_{round}"));
            h.add(&base, "sleeper.sh");
            h.add(&id, "sleeper.sh");
            h.sql(&format!(
                "INSERT INTO component_dependencies (component_id, depends_on, condition) VALUES ('{id}', '{base}', 'started')"
            ));
            wait(Duration::from_secs(20), || {
                (h.state(&id).as_deref() == Some("running")).then_some(())
            })?;
            h.ctl(&["disable", &base]);
            (id, "STOP_REQUESTED")
        }
        Kind::MetricAlert => {
            // Calm first (the previous spell recovered), then a spell above 90.
            h.sql("INSERT INTO cpu_usage_log (cpu_usage) VALUES (20.0)");
            std::thread::sleep(Duration::from_millis(500));
            h.sql("INSERT INTO cpu_usage_log (cpu_usage) VALUES (97.5)");
            // A nano instance records its events under its lifecycle id.
            ("nano_instance_bench".to_owned(), "METRIC_ALERT")
        }
        Kind::OomKilled => {
            let id = format!("oom_{round}");
            h.sql(&format!(
                "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state)
                 VALUES ('{id}', 'grower.sh', 'daemon_manager', 'inactive')"
            ));
            let limited = h.ctl(&["limit", &id, "--memory", "16M"]);
            if !limited.status.success() {
                return None;
            }
            h.ctl(&["enable", &id]);
            (id, "OOM_KILLED")
        }
    };
    let watched: Vec<i32> = ["n0m1_alerts", "main_llm_processor", "model_service"]
        .iter()
        .filter_map(|s| h.pid(s))
        .collect();
    // One connection polled every 2 ms for the trigger and the incident: both times are
    // taken by the same clock (the log's timestamps have whole seconds only).
    let conn = h.db();
    type Row = (
        String,
        String,
        Option<String>,
        Option<String>,
        Option<String>,
    );
    let incident = |conn: &Connection| -> Option<Row> {
        conn.query_row(
            "SELECT kind, component_id, suggested_action, diagnosis_source, diagnosis_rejected
             FROM incidents WHERE component_id = ?1 AND opened_by_event >= ?2 ORDER BY id DESC LIMIT 1",
            rusqlite::params![&component, first_event],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .optional()
        .unwrap()
    };
    let timeout = if with_model {
        Duration::from_secs(120)
    } else {
        Duration::from_secs(30)
    };
    let deadline = Instant::now() + timeout + Duration::from_secs(60);
    let (mut trigger_seen, mut cpu_before, mut row) = (None, 0.0, None);
    while Instant::now() < deadline {
        if trigger_seen.is_none() {
            let seen: Option<i64> = conn
                .query_row(
                    "SELECT id FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = ?2 AND id > ?3 LIMIT 1",
                    rusqlite::params![&component, trigger, first_event],
                    |r| r.get(0),
                )
                .optional()
                .unwrap();
            if seen.is_some() {
                trigger_seen = Some(Instant::now());
                cpu_before = cpu_seconds(&watched);
            }
        }
        if trigger_seen.is_some()
            && let Some(found) = incident(&conn)
            && (!with_model || found.3.as_deref() != Some("rules") || found.4.is_some())
        {
            row = Some(found);
            break;
        }
        if trigger_seen.is_some_and(|t| t.elapsed() > timeout) {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let trigger_seen = trigger_seen?;
    let wall = trigger_seen.elapsed().as_secs_f64();
    let cpu = cpu_seconds(&watched) - cpu_before;
    // Quiet again for the next round.
    match kind {
        Kind::CrashLoop | Kind::Unhealthy | Kind::OomKilled => {
            h.ctl(&["disable", &component]);
        }
        Kind::DependencyHalted => {
            h.ctl(&["disable", &component]);
        }
        Kind::MetricAlert => {
            h.sql("INSERT INTO cpu_usage_log (cpu_usage) VALUES (10.0)");
            wait(Duration::from_secs(10), || {
                h.db()
                    .query_row(
                        "SELECT 1 FROM incidents WHERE component_id = 'nano_instance_bench' AND state = 'open'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                    .optional()
                    .unwrap()
                    .is_none()
                    .then_some(())
            });
        }
    }
    let Some((found_kind, found_component, action, source, rejected)) = row else {
        return Some(Outcome {
            kind_right: false,
            component_right: false,
            accepted: false,
            action_right: false,
            wall,
            cpu,
            rejected: Some("no incident".into()),
            diagnosis: None,
        });
    };
    let accepted = !with_model || source.as_deref() != Some("rules");
    let diagnosis = (with_model && accepted)
        .then(|| {
            conn.query_row(
                "SELECT diagnosis FROM incidents WHERE component_id = ?1 ORDER BY id DESC LIMIT 1",
                [&component],
                |r| r.get::<_, Option<String>>(0),
            )
            .ok()
            .flatten()
        })
        .flatten();
    Some(Outcome {
        kind_right: found_kind == kind.name(),
        component_right: found_component == component,
        accepted,
        action_right: action.as_deref() == Some(kind.right_action()),
        wall,
        cpu,
        rejected,
        diagnosis,
    })
}

fn quantiles(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "-".into();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    format!("median {:.2} max {:.2}", at(0.5), at(1.0))
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut modes: Vec<(String, Option<PathBuf>)> = vec![("rules".into(), None)];
    let fixture_dir = tempfile::tempdir().unwrap();
    let models = std::env::var("BENCH_MODELS").unwrap_or_else(|_| "fixture".into());
    for entry in models.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        if entry == "fixture" {
            let dir = fixture_dir.path().join("fixture.gguf");
            let made = Command::new(ctl())
                .args(["model", "fixture"])
                .arg(&dir)
                .args(["--arch", "llama-gguf"])
                .output()
                .unwrap();
            if made.status.success() {
                // A GGUF fixture is one file; a folder fixture is used as it is.
                let file = std::fs::read_dir(&dir)
                    .ok()
                    .and_then(|entries| {
                        entries
                            .filter_map(Result::ok)
                            .map(|e| e.path())
                            .find(|p| p.extension().is_some_and(|x| x == "gguf"))
                    })
                    .unwrap_or(dir.clone());
                modes.push(("fixture".into(), Some(file)));
            } else {
                println!(
                    "fixture model: cannot be made ({}); build n0m1_model with `cargo build --release -p n0m1-models`",
                    String::from_utf8_lossy(&made.stderr).trim()
                );
            }
        } else if let Some((name, path)) = entry.split_once('=') {
            if Path::new(path).exists() {
                modes.push((name.to_owned(), Some(PathBuf::from(path))));
            } else {
                println!("{name}: {path} is not there; skipped");
            }
        }
    }
    let root = nix::unistd::geteuid().is_root();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_owned();
    println!(
        "incident evaluation: {rounds} rounds of each kind; {cpu}, {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "{:<10} {:<18} {:>5} {:>9} {:>9} {:>8} {:>7}  {:<26} {:<26}",
        "mode", "kind", "n", "kind ok", "comp ok", "accepted", "action", "wall s", "cpu s"
    );
    for (mode, model) in &modes {
        let h = Home_::new(model.as_deref());
        let started = h.ctl(&["start"]);
        if !started.status.success() {
            println!(
                "{mode}: n0m1 did not start: {}",
                String::from_utf8_lossy(&started.stderr).trim()
            );
            continue;
        }
        wait(Duration::from_secs(20), || {
            (h.state("n0m1_alerts").as_deref() == Some("running")).then_some(())
        });
        // Let the alerter take its cursor before anything happens.
        std::thread::sleep(Duration::from_millis(500));
        let mut kinds = vec![
            Kind::CrashLoop,
            Kind::Unhealthy,
            Kind::DependencyHalted,
            Kind::MetricAlert,
        ];
        if root {
            kinds.push(Kind::OomKilled);
        }
        let mut reasons: Vec<String> = Vec::new();
        let mut samples: Vec<String> = Vec::new();
        for kind in kinds {
            let mut outcomes = Vec::new();
            for round in 0..rounds {
                if let Some(outcome) = stage(&h, kind, round, model.is_some()) {
                    outcomes.push(outcome);
                }
            }
            let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
            let n = outcomes.len();
            let mut walls: Vec<f64> = outcomes.iter().map(|o| o.wall).collect();
            let mut cpus: Vec<f64> = outcomes.iter().map(|o| o.cpu).collect();
            reasons.extend(outcomes.iter().filter_map(|o| o.rejected.clone()));
            samples.extend(
                outcomes
                    .iter()
                    .filter_map(|o| {
                        o.diagnosis
                            .as_ref()
                            .map(|d| format!("{}: {d}", kind.name()))
                    })
                    .take(1),
            );
            println!(
                "{:<10} {:<18} {:>5} {:>9} {:>9} {:>8} {:>7}  {:<26} {:<26}",
                mode,
                kind.name(),
                n,
                format!("{}/{n}", count(|o| o.kind_right)),
                format!("{}/{n}", count(|o| o.component_right)),
                format!("{}/{n}", count(|o| o.accepted)),
                format!("{}/{n}", count(|o| o.action_right)),
                quantiles(&mut walls),
                quantiles(&mut cpus),
            );
        }
        if !samples.is_empty() {
            println!("  {mode}: accepted diagnoses (one per kind):");
            for sample in &samples {
                println!("    {sample}");
            }
        }
        if model.is_some() && !reasons.is_empty() {
            reasons.sort();
            reasons.dedup();
            println!("  {mode}: why the checker refused its diagnoses (distinct):");
            for reason in reasons.iter().take(8) {
                println!("    {reason}");
            }
        }
    }
}
