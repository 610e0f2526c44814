//! `metrics`: last value, its time, average, min, max and a sparkline of the last N samples
//! of CPU usage, memory and CPU temperature.

use anyhow::Context;
use n0m1_core::schema::{
    COMPONENT_LIFECYCLE_LOG, CPU_TEMPERATURE_LOG, CPU_USAGE_LOG, MEMORY_USAGE_LOG,
};
use n0m1_core::{Home, LifecycleEvent};
use rusqlite::Connection;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct MetricSummary {
    pub name: &'static str,
    pub unit: &'static str,
    pub samples: usize,
    pub last: Option<f64>,
    pub last_time: Option<String>,
    pub average: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Oldest first.
    pub sparkline: String,
    /// Why there are no values, when there are none.
    #[serde(skip_serializing_if = "Option::is_none")]
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

fn summarise(
    conn: &Connection,
    name: &'static str,
    unit: &'static str,
    table: &str,
    column: &str,
    limit: usize,
) -> anyhow::Result<MetricSummary> {
    let mut statement = conn
        .prepare(&format!(
            "SELECT {column}, timestamp FROM {table} WHERE {column} IS NOT NULL ORDER BY id DESC LIMIT ?1"
        ))
        .with_context(|| format!("reading {table}"))?;
    let rows: Vec<(f64, String)> = statement
        .query_map([limit as i64], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })?
        .collect::<Result<_, _>>()
        .with_context(|| format!("reading {table}"))?;
    let mut values: Vec<f64> = rows.iter().map(|r| r.0).collect();
    values.reverse();
    let n = values.len();
    let round = |v: f64| (v * 100.0).round() / 100.0;
    Ok(MetricSummary {
        name,
        unit,
        samples: n,
        last: rows.first().map(|r| round(r.0)),
        last_time: rows.first().map(|r| r.1.clone()),
        average: (n > 0).then(|| round(values.iter().sum::<f64>() / n as f64)),
        min: values.iter().copied().reduce(f64::min).map(round),
        max: values.iter().copied().reduce(f64::max).map(round),
        sparkline: sparkline(&values),
        missing: None,
    })
}

pub fn collect(home: &Home, limit: usize) -> anyhow::Result<Vec<MetricSummary>> {
    let conn = crate::open_database(home)?;
    let mut summaries = vec![
        summarise(&conn, "CPU usage", "%", CPU_USAGE_LOG, "cpu_usage", limit)?,
        summarise(&conn, "Memory", "%", MEMORY_USAGE_LOG, "mem_usage", limit)?,
        summarise(
            &conn,
            "CPU temperature",
            "°C",
            CPU_TEMPERATURE_LOG,
            "temperature_celsius",
            limit,
        )?,
    ];
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

pub fn run(home: &Home, limit: usize, json: bool) -> anyhow::Result<()> {
    let summaries = collect(home, limit.max(1))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&summaries)?);
        return Ok(());
    }
    let fmt = |v: Option<f64>, unit: &str| {
        v.map_or_else(|| "N/A".to_owned(), |v| format!("{v:.1}{unit}"))
    };
    println!("Last {limit} samples:");
    for s in &summaries {
        if let Some(missing) = &s.missing {
            println!("  {:<16} N/A ({missing})", s.name);
            continue;
        }
        println!(
            "  {:<16} last {:>8} at {}  avg {:>8}  min {:>8}  max {:>8}  {}",
            s.name,
            fmt(s.last, s.unit),
            s.last_time.as_deref().unwrap_or("-"),
            fmt(s.average, s.unit),
            fmt(s.min, s.unit),
            fmt(s.max, s.unit),
            s.sparkline
        );
    }
    Ok(())
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
}
