//! `metrics`: last value, its time, average, min, max and a sparkline of the last N samples
//! of CPU usage, memory and CPU temperature.

use anyhow::Context;
pub use n0m1_core::metric::Metric;
use n0m1_core::schema::COMPONENT_LIFECYCLE_LOG;
use n0m1_core::{Home, LifecycleEvent};
use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct MetricSummary {
    pub name: String,
    pub unit: String,
    pub samples: usize,
    pub last: Option<f64>,
    pub last_time: Option<String>,
    pub average: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Oldest first.
    pub sparkline: String,
    /// Why there are no values, when there are none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// One bar per value, scaled between the window's min and max (a flat series is mid-height).
pub fn sparkline(values: &[f64]) -> String {
    let (min, max) = values
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(*v), hi.max(*v)));
    values
        .iter()
        .map(|v| {
            if (max - min).abs() < f64::EPSILON {
                BARS[3]
            } else {
                BARS[(((v - min) / (max - min)) * 7.0).round() as usize]
            }
        })
        .collect()
}

/// The widest sparkline drawn: a longer window is averaged into this many bars, so a huge
/// `--limit` costs one pass in SQLite and never a bar per row.
pub const SPARKLINE_WIDTH: i64 = 60;

fn summarise(conn: &Connection, metric: Metric, limit: u64) -> anyhow::Result<MetricSummary> {
    let (name, unit, table, column) = (
        metric.label(),
        metric.unit(),
        metric.table(),
        metric.column(),
    );
    let context = || format!("reading {table}");
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let window = format!(
        "SELECT id, {column} AS v FROM {table} WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT ?1"
    );
    // Aggregates over the window, streamed by SQLite: memory does not grow with the limit.
    let (n, average, min, max, first_id, last_id): Stats = conn
        .query_row(
            &format!("SELECT count(*), avg(v), min(v), max(v), min(id), max(id) FROM ({window})"),
            [limit],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            },
        )
        .with_context(context)?;
    let last: Option<(f64, String)> = conn
        .query_row(
            &format!(
                "SELECT {column}, timestamp FROM {table} WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT 1"
            ),
            [],
            |r| Ok((r.get(0)?, r.get::<_, Option<String>>(1)?.unwrap_or_default())),
        )
        .optional()
        .with_context(context)?;
    // Oldest first; beyond the width, each bar is the average of a run of consecutive ids.
    let (first_id, last_id) = (first_id.unwrap_or(0), last_id.unwrap_or(0));
    let span = (last_id - first_id + 1).max(1);
    let bars: Vec<f64> = if n <= SPARKLINE_WIDTH {
        let mut statement = conn
            .prepare(&format!("SELECT v FROM ({window}) ORDER BY id"))
            .with_context(context)?;
        statement
            .query_map([limit], |r| r.get(0))?
            .collect::<Result<_, _>>()
            .with_context(context)?
    } else {
        let mut statement = conn
            .prepare(&format!(
                "SELECT (id - ?2) * ?3 / ?4 AS bar, avg(v) FROM ({window}) GROUP BY bar ORDER BY bar"
            ))
            .with_context(context)?;
        statement
            .query_map(
                rusqlite::params![limit, first_id, SPARKLINE_WIDTH, span],
                |r| r.get(1),
            )?
            .collect::<Result<_, _>>()
            .with_context(context)?
    };
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Ok(MetricSummary {
        name: name.to_owned(),
        unit: unit.to_owned(),
        samples: usize::try_from(n).unwrap_or(0),
        last: last.as_ref().map(|r| round(r.0)),
        last_time: last.map(|r| r.1),
        average: average.map(round),
        min: min.map(round),
        max: max.map(round),
        sparkline: sparkline(&bars),
        missing: None,
    })
}

/// count, avg, min, max, first id, last id of a window.
type Stats = (
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    Option<i64>,
    Option<i64>,
);

/// `(unix time, value)` samples of a metric after `since`, oldest first, the newest `limit`.
pub fn series(
    conn: &Connection,
    metric: Metric,
    since: f64,
    limit: u32,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let (table, column) = (metric.table(), metric.column());
    let mut statement = conn
        .prepare_cached(&format!(
            "SELECT t, v FROM (SELECT id, unixepoch(timestamp) AS t, {column} AS v FROM {table}
               WHERE {column} IS NOT NULL AND timestamp > datetime(?1, 'unixepoch')
               ORDER BY id DESC LIMIT ?2)
             ORDER BY id"
        ))
        .with_context(|| format!("reading {table}"))?;
    let rows = statement
        .query_map(rusqlite::params![since, limit], |r| {
            Ok((r.get::<_, Option<f64>>(0)?.unwrap_or(0.0), r.get(1)?))
        })
        .with_context(|| format!("reading {table}"))?;
    rows.collect::<Result<_, _>>()
        .with_context(|| format!("reading {table}"))
}

/// The newest value of a metric.
pub fn latest(conn: &Connection, metric: Metric) -> anyhow::Result<Option<f64>> {
    let (table, column) = (metric.table(), metric.column());
    conn.query_row(
        &format!(
            "SELECT {column} FROM {table} WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT 1"
        ),
        [],
        |r| r.get(0),
    )
    .optional()
    .with_context(|| format!("reading {table}"))
}

pub fn collect(home: &Home, limit: u64) -> anyhow::Result<Vec<MetricSummary>> {
    let conn = crate::open_database(home)?;
    let mut summaries = Metric::ALL
        .into_iter()
        .map(|metric| summarise(&conn, metric, limit))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for summary in &mut summaries {
        if summary.samples == 0 {
            summary.missing = Some("no samples yet".to_owned());
        }
    }
    let no_sensor: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {COMPONENT_LIFECYCLE_LOG} WHERE event_type = ?1"),
            [LifecycleEvent::NoSensor.as_str()],
            |r| r.get(0),
        )
        .unwrap_or(0);
    if summaries[2].samples == 0 && no_sensor > 0 {
        summaries[2].missing = Some("no sensor".to_owned());
    }
    Ok(summaries)
}

pub fn run(home: &Home, limit: u64, json: bool) -> anyhow::Result<()> {
    let summaries = collect(home, limit)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    println!("Last {limit} samples:");
    print(&summaries);
    Ok(())
}

/// One line per metric: last value and time, average, min, max, sparkline.
pub fn print(summaries: &[MetricSummary]) {
    let fmt = |v: Option<f64>, unit: &str| {
        v.map_or_else(|| "N/A".to_owned(), |v| format!("{v:.1}{unit}"))
    };
    for s in summaries {
        if let Some(missing) = &s.missing {
            println!("  {:<16} N/A ({missing})", s.name);
            continue;
        }
        println!(
            "  {:<16} last {:>8} at {}  avg {:>8}  min {:>8}  max {:>8}  {} ({} samples)",
            s.name,
            fmt(s.last, &s.unit),
            s.last_time.as_deref().unwrap_or("-"),
            fmt(s.average, &s.unit),
            fmt(s.min, &s.unit),
            fmt(s.max, &s.unit),
            s.sparkline,
            s.samples
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use n0m1_core::db;

    #[test]
    fn sparkline_scales_between_min_and_max() {
        assert_eq!(sparkline(&[0.0, 50.0, 100.0]), "▁▅█");
        assert_eq!(sparkline(&[3.0, 3.0]), "▄▄");
        assert_eq!(sparkline(&[]), "");
    }

    #[test]
    fn summary_of_rows_and_no_sensor() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path());
        db::initialise(&home.db_path()).unwrap();
        let conn = db::open(&home.db_path()).unwrap();
        conn.execute_batch(
            "INSERT INTO cpu_usage_log (cpu_usage) VALUES (10), (20), (60);
             INSERT INTO component_lifecycle_log (component_id, event_type) VALUES ('temp_main_daemon', 'NO_SENSOR');",
        )
        .unwrap();
        let all = collect(&home, 2).unwrap();
        assert_eq!(all[0].samples, 2);
        assert_eq!(
            (all[0].last, all[0].average, all[0].min, all[0].max),
            (Some(60.0), Some(40.0), Some(20.0), Some(60.0))
        );
        assert_eq!(all[1].missing.as_deref(), Some("no samples yet"));
        assert_eq!(all[2].missing.as_deref(), Some("no sensor"));
    }

    #[test]
    fn a_long_window_is_averaged_into_a_bounded_sparkline() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path());
        db::initialise(&home.db_path()).unwrap();
        let conn = db::open(&home.db_path()).unwrap();
        // 6,000 samples, a ramp 0..100: the window's stats are exact, the line 60 bars wide
        // and still rising from the lowest bar to the highest.
        conn.execute_batch(
            "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 5999)
             INSERT INTO cpu_usage_log (cpu_usage) SELECT i / 60.0 FROM n;",
        )
        .unwrap();
        let all = collect(&home, u64::MAX).unwrap();
        let cpu = &all[0];
        assert_eq!(cpu.samples, 6000);
        assert_eq!(
            (cpu.min, cpu.max, cpu.last),
            (Some(0.0), Some(99.98), Some(99.98))
        );
        assert_eq!(cpu.average, Some(49.99));
        let bars: Vec<char> = cpu.sparkline.chars().collect();
        assert_eq!(bars.len(), SPARKLINE_WIDTH as usize);
        assert_eq!((bars[0], bars[59]), ('▁', '█'));
        assert!(bars.windows(2).all(|w| w[0] <= w[1]), "{}", cpu.sparkline);
        // A short window keeps one bar per sample.
        assert_eq!(collect(&home, 5).unwrap()[0].sparkline.chars().count(), 5);
    }
}
