//! Threshold alerts of a nano instance, as a pure tracker: an alert fires when a value
//! crosses its threshold, a reminder goes every `remind` seconds while it stays high, and one
//! `RECOVERED:` row when it falls `CLEAR_MARGIN` below the threshold (hysteresis: a value
//! that hovers at the threshold is one alert, not one per sample).

use std::collections::HashMap;

use n0m1_core::metric::Metric;

use crate::window::MetricRow;

/// An alert clears this many points below its threshold.
pub const CLEAR_MARGIN: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq)]
struct High {
    since: f64,
    last_sent: f64,
}

/// Which columns are above their threshold, since when, and when they were last said.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertTracker {
    remind: f64,
    high: HashMap<String, High>,
}

impl AlertTracker {
    /// `remind`: seconds between reminders while a value stays high (0: none).
    pub fn new(remind: f64) -> AlertTracker {
        AlertTracker {
            remind,
            high: HashMap::new(),
        }
    }

    /// The rows a new sample calls for; `now` in seconds (any fixed origin).
    pub fn observe(&mut self, row: &MetricRow, table: &str, now: f64) -> Vec<String> {
        let mut out = Vec::new();
        for (column, value) in &row.values {
            // The original's thresholds, by the column's metric (its own table's column or
            // system_metrics_log's).
            let Some(metric) = Metric::of_column(column) else {
                continue;
            };
            let (limit, what) = (&metric.alert_threshold(), metric.describe());
            let clear = limit - CLEAR_MARGIN;
            match self.high.get_mut(column) {
                None if *value > *limit => {
                    self.high.insert(
                        column.clone(),
                        High {
                            since: now,
                            last_sent: now,
                        },
                    );
                    out.push(format!(
                        "ALERT: {what} {value:.1} > {limit:.0} ({table} row {})",
                        row.id
                    ));
                }
                None => {}
                Some(high) if *value <= clear => {
                    let lasted = now - high.since;
                    self.high.remove(column);
                    out.push(format!(
                        "RECOVERED: {what} {value:.1} <= {clear:.0} ({table} row {}) after {lasted:.0} s above {limit:.0}",
                        row.id
                    ));
                }
                Some(high) if self.remind > 0.0 && now - high.last_sent >= self.remind => {
                    high.last_sent = now;
                    out.push(format!(
                        "ALERT: {what} still above {limit:.0} for {:.0} s, now {value:.1} ({table} row {})",
                        now - high.since,
                        row.id
                    ));
                }
                Some(_) => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, cpu: f64) -> MetricRow {
        MetricRow {
            id,
            values: vec![("cpu_usage".into(), cpu)],
        }
    }

    /// (second, value, rows written)
    fn check(remind: f64, steps: &[(f64, f64, &[&str])]) {
        let mut tracker = AlertTracker::new(remind);
        for (i, (now, value, expected)) in steps.iter().enumerate() {
            let rows = tracker.observe(&row(i as i64 + 1, *value), "cpu_usage_log", *now);
            let kinds: Vec<&str> = rows
                .iter()
                .map(|r| {
                    if r.starts_with("RECOVERED") {
                        "RECOVERED"
                    } else if r.contains("still above") {
                        "REMIND"
                    } else {
                        "ALERT"
                    }
                })
                .collect();
            assert_eq!(
                kinds, *expected,
                "step {i} at {now} s, value {value}: {rows:?}"
            );
        }
    }

    #[test]
    fn an_alert_fires_on_crossing_reminds_while_high_and_recovers_once_below_the_margin() {
        check(
            300.0,
            &[
                (0.0, 50.0, &[]),
                (10.0, 95.0, &["ALERT"]),
                // Still high, or hovering between the threshold and the clear level: quiet.
                (20.0, 97.0, &[]),
                (30.0, 88.0, &[]),
                (40.0, 91.0, &[]),
                (309.0, 99.0, &[]),
                (310.0, 99.0, &["REMIND"]),
                (320.0, 99.0, &[]),
                (610.0, 86.0, &["REMIND"]),
                (620.0, 85.0, &["RECOVERED"]),
                (630.0, 85.0, &[]),
                (640.0, 92.0, &["ALERT"]),
            ],
        );
        // No reminders with remind 0; the first sample above fires.
        check(
            0.0,
            &[
                (0.0, 95.0, &["ALERT"]),
                (5000.0, 95.0, &[]),
                (5001.0, 10.0, &["RECOVERED"]),
            ],
        );
    }

    #[test]
    fn the_messages_name_the_metric_the_value_and_the_row() {
        let mut tracker = AlertTracker::new(300.0);
        assert_eq!(
            tracker.observe(&row(7, 95.0), "cpu_usage_log", 0.0),
            ["ALERT: CPU usage 95.0 > 90 (cpu_usage_log row 7)"]
        );
        assert_eq!(
            tracker.observe(&row(8, 96.5), "cpu_usage_log", 300.0),
            ["ALERT: CPU usage still above 90 for 300 s, now 96.5 (cpu_usage_log row 8)"]
        );
        assert_eq!(
            tracker.observe(&row(9, 40.0), "cpu_usage_log", 420.0),
            ["RECOVERED: CPU usage 40.0 <= 85 (cpu_usage_log row 9) after 420 s above 90"]
        );
        let unwatched = MetricRow {
            id: 1,
            values: vec![("disk".into(), 1000.0)],
        };
        assert!(tracker.observe(&unwatched, "t", 0.0).is_empty());
    }
}
