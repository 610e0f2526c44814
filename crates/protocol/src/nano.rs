//! `nano_instance`: a small model watching one metric table.
//!
//! Every pull it takes the table's newest row into a window of the last N rows. Threshold
//! alerts are written at once; every summary interval it writes exact statistics of the
//! window followed by the model's reading of them (statistics only without a model).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use n0m1_core::access_log::AccessKind;
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::schema::NANO_PROMPTS;
use rusqlite::{Connection, OptionalExtension, params};

use crate::alerting::AlertTracker;
use crate::checker;
use crate::generator::{GenerateError, Generator, Loaded, Unavailable};
use crate::runtime::{Runtime, Wake};
use crate::tables::{self, TableName};
use crate::window::{ColumnStats, MetricRow, window_stats};

#[derive(Debug, Clone)]
pub struct NanoOptions {
    pub instance_id: String,
    pub metrics_table: String,
    pub summary_table: String,
    pub pull_interval: Duration,
    pub summary_interval: Duration,
    pub context_window: usize,
    pub system_prompt_file: Option<PathBuf>,
    pub mode: Option<String>,
    /// Seconds between reminders while a value stays above its threshold (0: none).
    pub alert_remind: f64,
}

const DEFAULT_PROMPT: &str =
    "You watch one metric of a computer. In one sentence, say what the numbers show.";

fn newest_row(conn: &Connection, table: &TableName) -> rusqlite::Result<Option<MetricRow>> {
    let mut rows = tables::latest_rows(conn, table, 1, |names, row| {
        let mut id = 0;
        let mut values = Vec::new();
        for (i, name) in names.iter().enumerate() {
            match row.get_ref(i)? {
                rusqlite::types::ValueRef::Integer(v) if name == "id" => id = v,
                rusqlite::types::ValueRef::Integer(v) => values.push((name.clone(), v as f64)),
                rusqlite::types::ValueRef::Real(v) => values.push((name.clone(), v)),
                _ => {}
            }
        }
        Ok(MetricRow { id, values })
    })?;
    Ok(rows.pop())
}

pub struct NanoInstance {
    pub options: NanoOptions,
    metrics: TableName,
    summary: TableName,
    window: VecDeque<MetricRow>,
    last_id: Option<i64>,
    prompt: String,
    file_prompt: Option<String>,
    generator: Option<Box<dyn Generator>>,
    alerts: AlertTracker,
    /// The model service was down at the last summary (reported once per outage).
    model_down: bool,
    /// Lifecycle events for the loop to record (outage and recovery of the model service).
    events: Vec<(LifecycleEvent, String)>,
}

impl NanoInstance {
    /// Validates the tables and reads the system prompt file; errors name what is wrong.
    pub fn new(
        conn: &Connection,
        options: NanoOptions,
        generator: Option<Box<dyn Generator>>,
    ) -> Result<(NanoInstance, Vec<String>), String> {
        let metrics = tables::validate(conn, &options.metrics_table)
            .map_err(|e| format!("--metrics_table: {e}"))?;
        let summary =
            tables::validate_with_columns(conn, &options.summary_table, &["nano_id", "content"])
                .map_err(|e| format!("--summary_table: {e}"))?;
        let mut warnings = Vec::new();
        let file_prompt = match &options.system_prompt_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_owned()),
                Err(error) => {
                    warnings.push(format!(
                        "--system_prompt {}: {error}; using the built-in prompt",
                        path.display()
                    ));
                    None
                }
            },
            None => None,
        };
        Ok((
            NanoInstance {
                metrics,
                summary,
                window: VecDeque::new(),
                last_id: None,
                prompt: String::new(),
                file_prompt,
                generator,
                alerts: AlertTracker::new(options.alert_remind),
                model_down: false,
                events: Vec::new(),
                options,
            },
            warnings,
        ))
    }

    /// The prompt in use: the `nano_prompts` row (re-read when flagged), else the file, else
    /// the built-in one.
    pub fn refresh_prompt(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        let transaction = conn.unchecked_transaction()?;
        let row: Option<(String, i64)> = transaction
            .query_row(
                &format!("SELECT prompt, COALESCE(needs_reload, 0) FROM {NANO_PROMPTS} WHERE nano_id = ?1"),
                [&self.options.instance_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((prompt, needs_reload)) = row
            && (needs_reload != 0 || self.prompt.is_empty())
        {
            self.prompt = prompt;
            if needs_reload != 0 {
                transaction.execute(
                    &format!("UPDATE {NANO_PROMPTS} SET needs_reload = 0 WHERE nano_id = ?1"),
                    [&self.options.instance_id],
                )?;
            }
        }
        transaction.commit()
    }

    fn effective_prompt(&self) -> &str {
        if !self.prompt.trim().is_empty() {
            return &self.prompt;
        }
        self.file_prompt
            .as_deref()
            .filter(|p| !p.is_empty())
            .unwrap_or(DEFAULT_PROMPT)
    }

    fn write(&self, conn: &Connection, content: &str) -> rusqlite::Result<()> {
        conn.execute(
            &format!(
                "INSERT INTO {} (nano_id, content) VALUES (?1, ?2)",
                self.summary.quoted()
            ),
            params![self.options.instance_id, content],
        )?;
        Ok(())
    }

    /// One pull: the newest row into the window, and its alerts written at once.
    pub fn pull(&mut self, conn: &Connection) -> rusqlite::Result<Vec<String>> {
        let Some(row) = newest_row(conn, &self.metrics)? else {
            return Ok(Vec::new());
        };
        if self.last_id == Some(row.id) {
            return Ok(Vec::new());
        }
        self.last_id = Some(row.id);
        let raised = self
            .alerts
            .observe(&row, self.metrics.as_str(), n0m1_core::state::unix_now());
        for alert in &raised {
            self.write(conn, alert)?;
            // A crossing (not a reminder) is also a lifecycle event: the alerter's rules
            // open and close a metric incident on them, and alert rules can match them.
            if alert.starts_with("RECOVERED:") {
                self.events
                    .push((LifecycleEvent::MetricRecovered, alert.clone()));
            } else if alert.starts_with("ALERT:") && !alert.contains(" still above ") {
                self.events
                    .push((LifecycleEvent::MetricAlert, alert.clone()));
            }
        }
        self.window.push_back(row);
        while self.window.len() > self.options.context_window.max(1) {
            self.window.pop_front();
        }
        Ok(raised)
    }

    /// Lifecycle events noted since the last call, for the loop to record.
    pub fn take_events(&mut self) -> Vec<(LifecycleEvent, String)> {
        std::mem::take(&mut self.events)
    }

    /// Statistics of the window, then the model's text; `None` with an empty window.
    pub fn summarise(&mut self, conn: &Connection) -> rusqlite::Result<Option<String>> {
        let stats = window_stats(&self.window);
        if stats.is_empty() {
            return Ok(None);
        }
        let facts: Vec<String> = stats.iter().map(ColumnStats::describe).collect();
        let mut content = format!("{} window: {}", self.metrics, facts.join("; "));
        let prompt = self.effective_prompt().to_owned();
        if let Some(generator) = &mut self.generator {
            // Only the statistics: a text may quote nothing else (the checker holds it to
            // that), so raw samples in the prompt would only invite rejected numbers.
            let words: Vec<String> = stats.iter().map(ColumnStats::in_words).collect();
            let request = format!(
                "Metric table {} ({} mode), the last {} samples: {}.\nIn one sentence, using only these numbers, say what they show:",
                self.metrics,
                self.options.mode.as_deref().unwrap_or("summary"),
                self.window.len(),
                words.join(". ")
            );
            match generator.complete(Some(&prompt), &request) {
                Ok(text) => match checker::check(&text, &stats)
                    .and_then(|text| checker::not_copied(&text, &format!("{prompt}\n{request}")))
                {
                    Ok(reading) => content.push_str(&format!(" | model: {reading}")),
                    Err(reason) => content.push_str(&format!(
                        " | model: rejected ({reason}) | reading: {}",
                        checker::plain_reading(&stats)
                    )),
                },
                Err(GenerateError::ServiceDown(reason)) => {
                    if !std::mem::replace(&mut self.model_down, true) {
                        self.events.push((
                            LifecycleEvent::ModelUnavailable,
                            format!("{reason}; writing statistics alone until it answers"),
                        ));
                    }
                }
                Err(error) => tracing::warn!("generation failed ({error}); statistics only"),
            }
            if self.model_down && content.contains(" | model: ") {
                self.model_down = false;
                self.events.push((
                    LifecycleEvent::ModelAvailable,
                    "the model service answers again".into(),
                ));
            }
        }
        self.write(conn, &content)?;
        Ok(Some(content))
    }
}

pub fn run(mut runtime: Runtime, options: NanoOptions, generator: Loaded) -> anyhow::Result<()> {
    let generator = match generator {
        Ok(generator) => Some(generator),
        Err(Unavailable::Disabled) => None,
        Err(reason) => {
            runtime.event(
                LifecycleEvent::ModelUnavailable,
                &format!("{reason}; writing statistics only"),
            );
            None
        }
    };
    let description = generator
        .as_ref()
        .map_or_else(|| "no model".to_owned(), |g| g.describe());
    let (mut nano, warnings) = match NanoInstance::new(&runtime.conn, options, generator) {
        Ok(created) => created,
        Err(error) => {
            // A configuration error: say so and idle, rather than exit into a crash loop.
            runtime.event(
                LifecycleEvent::CriticalError,
                &format!("{error}; idle until reconfigured"),
            );
            while runtime.wait(Duration::from_secs(3600)) != Wake::Shutdown {}
            runtime.event(LifecycleEvent::Stopped, "stopped on signal");
            return Ok(());
        }
    };
    for warning in warnings {
        runtime.event(LifecycleEvent::Error, &warning);
    }
    runtime.event(
        LifecycleEvent::StartedSuccessfully,
        &format!(
            "watching {} into {} with {description}",
            nano.metrics, nano.summary
        ),
    );
    runtime.access(nano.metrics.as_str(), AccessKind::Read);
    runtime.access(nano.summary.as_str(), AccessKind::Write);
    let mut next_summary = Instant::now() + nano.options.summary_interval;
    let pull_interval = nano.options.pull_interval;
    let component_id = runtime.component_id.clone();
    runtime.serve(pull_interval, |conn| {
        let step = (|| -> rusqlite::Result<()> {
            nano.refresh_prompt(conn)?;
            let pulled = nano.pull(conn);
            let written = if Instant::now() >= next_summary {
                next_summary = Instant::now() + nano.options.summary_interval;
                nano.summarise(conn).map(|_| ())
            } else {
                Ok(())
            };
            for (event, message) in nano.take_events() {
                LifecycleRecord::new(component_id.as_str(), event)
                    .pid(std::process::id() as i32)
                    .message(&message)
                    .write(conn)?;
            }
            pulled?;
            written?;
            Ok(())
        })();
        if let Err(error) = step {
            tracing::warn!(%error, "pull failed; trying again next interval");
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::db;

    fn options() -> NanoOptions {
        NanoOptions {
            instance_id: "cpu_usage".into(),
            metrics_table: "cpu_usage_log".into(),
            summary_table: "cpu_usage_summary".into(),
            pull_interval: Duration::from_millis(10),
            summary_interval: Duration::from_secs(60),
            context_window: 3,
            system_prompt_file: None,
            mode: None,
            alert_remind: 300.0,
        }
    }

    #[test]
    fn a_95_percent_cpu_row_is_alerted_and_needs_reload_cleared() {
        let conn = db();
        conn.execute_batch(
            "UPDATE nano_prompts SET prompt = 'Watch the CPU', needs_reload = 1 WHERE nano_id = 'cpu_usage';
             INSERT INTO cpu_usage_log (cpu_usage) VALUES (95.0);",
        )
        .unwrap();
        let (mut nano, _) = NanoInstance::new(&conn, options(), None).unwrap();
        nano.refresh_prompt(&conn).unwrap();
        assert_eq!(nano.pull(&conn).unwrap().len(), 1);
        assert_eq!(
            nano.pull(&conn).unwrap().len(),
            0,
            "the same row is not alerted twice"
        );
        let rows =
            crate::testing::texts(&conn, "SELECT content FROM cpu_usage_summary ORDER BY id");
        assert_eq!(rows, ["ALERT: CPU usage 95.0 > 90 (cpu_usage_log row 1)"]);
        let flag: i64 = conn
            .query_row(
                "SELECT needs_reload FROM nano_prompts WHERE nano_id = 'cpu_usage'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(flag, 0);
        assert_eq!(nano.effective_prompt(), "Watch the CPU");
    }

    #[test]
    fn a_scripted_cpu_trace_alerts_on_crossing_and_recovers_once() {
        let conn = db();
        let (mut nano, _) = NanoInstance::new(&conn, options(), None).unwrap();
        // Above 90 for eight samples, hovering between 85 and 90 for two, down, up again.
        let trace = [
            50.0, 95.0, 97.0, 99.0, 88.0, 91.0, 93.0, 89.0, 96.0, 94.0, 84.0, 60.0, 92.0,
        ];
        for value in trace {
            conn.execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (?1)", [value])
                .unwrap();
            nano.pull(&conn).unwrap();
        }
        let rows =
            crate::testing::texts(&conn, "SELECT content FROM cpu_usage_summary ORDER BY id");
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert_eq!(rows[0], "ALERT: CPU usage 95.0 > 90 (cpu_usage_log row 2)");
        assert!(
            rows[1].starts_with("RECOVERED: CPU usage 84.0 <= 85 (cpu_usage_log row 11)"),
            "{}",
            rows[1]
        );
        assert_eq!(rows[2], "ALERT: CPU usage 92.0 > 90 (cpu_usage_log row 13)");
    }

    /// Answers every prompt with the same text.
    struct Scripted(&'static str);

    impl Generator for Scripted {
        fn complete(
            &mut self,
            _system: Option<&str>,
            _prompt: &str,
        ) -> Result<String, crate::generator::GenerateError> {
            Ok(self.0.to_owned())
        }
        fn describe(&self) -> String {
            "scripted".into()
        }
    }

    #[test]
    fn a_model_text_with_a_foreign_number_is_replaced_by_the_plain_reading() {
        for (said, expected) in [
            (
                "CPU usage rose to 60.00.",
                " | model: CPU usage rose to 60.00.",
            ),
            (
                "CPU usage hit 93.1 and is falling. CPU usage hit 93.1",
                " | model: rejected (number 93.1 not in window) | reading: cpu_usage rising over 3 samples: mean 36.67, min 20.00, max 60.00, last 60.00.",
            ),
        ] {
            let conn = db();
            let (mut nano, _) =
                NanoInstance::new(&conn, options(), Some(Box::new(Scripted(said)))).unwrap();
            for value in [20.0, 30.0, 60.0] {
                conn.execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (?1)", [value])
                    .unwrap();
                nano.pull(&conn).unwrap();
            }
            let text = nano.summarise(&conn).unwrap().unwrap();
            assert!(text.ends_with(expected), "{text}");
        }
    }

    /// The trace a user watched (two busy loops for 40 s, then idle): the nano rows alert and
    /// recover, the window that went up and came back is a spike, and the main model's reading
    /// of the summaries leads with the recovery, not the first alert it could copy.
    #[test]
    fn a_spike_is_called_a_spike_and_the_reading_leads_with_the_recovery() {
        let conn = db();
        let mut six = options();
        six.context_window = 6;
        let (mut nano, _) = NanoInstance::new(
            &conn,
            six,
            Some(Box::new(Scripted("CPU usage had a spike."))),
        )
        .unwrap();
        for value in [2.08, 33.8, 100.0, 100.0, 22.1, 1.05] {
            conn.execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (?1)", [value])
                .unwrap();
            nano.pull(&conn).unwrap();
        }
        let crossings: Vec<LifecycleEvent> =
            nano.take_events().into_iter().map(|(e, _)| e).collect();
        assert_eq!(
            crossings,
            [LifecycleEvent::MetricAlert, LifecycleEvent::MetricRecovered]
        );
        let text = nano.summarise(&conn).unwrap().unwrap();
        assert!(text.contains("trend=spike"), "{text}");
        assert!(text.ends_with(" | model: CPU usage had a spike."), "{text}");
        let rows =
            crate::testing::texts(&conn, "SELECT content FROM cpu_usage_summary ORDER BY id");
        assert!(
            rows[0].starts_with("ALERT: CPU usage 100.0 > 90"),
            "{rows:?}"
        );
        assert!(
            rows[1].starts_with("RECOVERED: CPU usage 22.1 <= 85"),
            "{rows:?}"
        );

        // The processor reads the summaries; a model that copies the first alert is refused,
        // and the reading says where things stand now.
        struct CopiesTheAlert;
        impl Generator for CopiesTheAlert {
            fn complete(
                &mut self,
                _: Option<&str>,
                _: &str,
            ) -> Result<String, crate::generator::GenerateError> {
                Ok("CPU usage 100.0 > 90 (cpu_usage_log row 3)".into())
            }
            fn describe(&self) -> String {
                "copies".into()
            }
        }
        conn.execute(
            "INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES ('main_llm_processor', 'RUN', 'cpu_usage_summary')",
            [],
        )
        .unwrap();
        let mut processor = crate::processor::Processor::new(
            &conn,
            "main_llm_processor",
            "main_llm_processor",
            Some(Box::new(CopiesTheAlert)),
        );
        processor.handle_pending(&conn).unwrap();
        let reading = crate::testing::texts(&conn, "SELECT content FROM llm_outputs").remove(0);
        assert!(
            reading.starts_with("cpu_usage_summary: now recovered: CPU usage 22.1 <= 85"),
            "{reading}"
        );
        assert!(reading.contains("rejected (it copies row"), "{reading}");
    }

    #[test]
    fn the_window_summary_has_exact_statistics() {
        let conn = db();
        let (mut nano, _) = NanoInstance::new(&conn, options(), None).unwrap();
        for value in [10.0, 20.0, 30.0, 60.0] {
            conn.execute("INSERT INTO cpu_usage_log (cpu_usage) VALUES (?1)", [value])
                .unwrap();
            nano.pull(&conn).unwrap();
        }
        let text = nano.summarise(&conn).unwrap().unwrap();
        // The window keeps the last 3 rows: 20, 30, 60.
        assert_eq!(
            text,
            "cpu_usage_log window: cpu_usage: count=3 min=20.00 mean=36.67 max=60.00 last=60.00 trend=rising"
        );
    }

    #[test]
    fn bad_tables_and_a_missing_prompt_file_are_errors_not_crashes() {
        let conn = db();
        let mut bad = options();
        bad.metrics_table = "x; DROP TABLE autorun_components".into();
        assert!(NanoInstance::new(&conn, bad, None).is_err());
        let mut no_file = options();
        no_file.system_prompt_file = Some("/nonexistent/prompt.txt".into());
        let (nano, warnings) = NanoInstance::new(&conn, no_file, None).unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(nano.effective_prompt(), DEFAULT_PROMPT);
    }
}
