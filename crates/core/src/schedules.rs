//! The one owner of `component_schedules`: when a ONESHOT component runs on its own. A spec is
//! `every DURATION` (fires at whole multiples of the interval since the Unix epoch, so `every
//! 1h` fires on the hour) or a cron expression with optional seconds, evaluated by croner in
//! local time or the zone of a `TZ=<zone> ` prefix (an IANA name from the system's zoneinfo,
//! or a POSIX TZ string). Validated here for everyone (n0m1ctl, the managers, `apply`), so a
//! bad row is refused by name before a manager acts on it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;
use rusqlite::{Connection, OptionalExtension, params};

use crate::lifecycle::LifecycleEvent;
use crate::schema::{COMPONENT_LIFECYCLE_LOG, COMPONENT_SCHEDULES};

/// The shortest interval of `every`: a process a second is already a lot to start.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error(
        "{COMPONENT_SCHEDULES}.spec {spec:?}: {why}; write `every 30s`, `every 2h`, a cron expression such as `0 */5 * * * *` (seconds optional) or `@hourly`, optionally after `TZ=<zone> `"
    )]
    Spec { spec: String, why: String },
    #[error("{COMPONENT_SCHEDULES}.overlap {0:?} is not one of skip, queue, kill")]
    Overlap(String),
    #[error("{COMPONENT_SCHEDULES}.missed {0:?} is not one of skip, once")]
    Missed(String),
}

fn spec_error(spec: &str, why: impl Into<String>) -> ScheduleError {
    ScheduleError::Spec {
        spec: spec.to_owned(),
        why: why.into(),
    }
}

/// When it fires.
#[derive(Debug, Clone)]
pub enum Spec {
    Every(Duration),
    Cron { cron: Box<Cron>, zone: TimeZone },
}

impl Spec {
    /// Parses and checks a spec: a zero or sub-second interval, a cron expression that does
    /// not parse or never fires, an unknown zone are refused by name.
    pub fn parse(text: &str) -> Result<Spec, ScheduleError> {
        let trimmed = text.trim();
        if let Some(interval) = trimmed.strip_prefix("every ") {
            let duration: jiff::SignedDuration = interval.trim().parse().map_err(|_| {
                spec_error(text, format!("{:?} is not a duration", interval.trim()))
            })?;
            let duration = Duration::try_from(duration)
                .map_err(|_| spec_error(text, "the interval is negative"))?;
            if duration < MIN_INTERVAL {
                return Err(spec_error(
                    text,
                    format!(
                        "the interval is below the shortest, {} s",
                        MIN_INTERVAL.as_secs()
                    ),
                ));
            }
            return Ok(Spec::Every(duration));
        }
        let (zone, expression) = match trimmed.strip_prefix("TZ=") {
            Some(rest) => {
                let (name, expression) = rest
                    .split_once(char::is_whitespace)
                    .ok_or_else(|| spec_error(text, "nothing follows the time zone"))?;
                (zone_named(text, name)?, expression.trim())
            }
            None => (TimeZone::system(), trimmed),
        };
        if expression.is_empty() {
            return Err(spec_error(text, "it is empty"));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Optional)
            .build()
            .parse(expression)
            .map_err(|error| spec_error(text, format!("not a cron expression: {error}")))?;
        let spec = Spec::Cron {
            cron: Box::new(cron),
            zone,
        };
        if spec
            .next_after(Timestamp::now().as_second() as f64)
            .is_none()
        {
            return Err(spec_error(text, "it never fires"));
        }
        Ok(spec)
    }

    /// The first time it fires strictly after `unix` (seconds), or `None` if never.
    pub fn next_after(&self, unix: f64) -> Option<f64> {
        match self {
            Spec::Every(interval) => {
                let step = interval.as_secs_f64();
                Some(((unix / step).floor() + 1.0) * step)
            }
            Spec::Cron { cron, zone } => {
                let from = Timestamp::from_second(unix.floor() as i64).ok()?;
                let next = cron
                    .find_next_occurrence(&from.to_zoned(zone.clone()), false)
                    .ok()?;
                Some(next.timestamp().as_second() as f64)
            }
        }
    }
}

fn zone_named(spec: &str, name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name)
        .or_else(|_| TimeZone::posix(name))
        .map_err(|_| {
            spec_error(
                spec,
                format!(
                    "{name:?} is neither a time zone of this machine's zoneinfo nor a POSIX TZ string"
                ),
            )
        })
}

/// A run due while the last one still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    /// Not run (`SKIPPED_OVERLAP`).
    Skip,
    /// Run once the current one ends (at most one waits).
    Queue,
    /// The current one is stopped and the new one runs.
    Kill,
}

/// A run that fell due while n0m1 was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missed {
    Skip,
    /// Run once, as soon as the manager is back.
    Once,
}

macro_rules! words {
    ($type:ident, $error:ident, $($variant:ident = $text:literal),*) => {
        impl $type {
            pub fn as_str(self) -> &'static str {
                match self { $($type::$variant => $text,)* }
            }
        }
        impl FromStr for $type {
            type Err = ScheduleError;
            fn from_str(text: &str) -> Result<Self, ScheduleError> {
                match text {
                    $($text => Ok($type::$variant),)*
                    other => Err(ScheduleError::$error(other.to_owned())),
                }
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
words!(
    Overlap,
    Overlap,
    Skip = "skip",
    Queue = "queue",
    Kill = "kill"
);
words!(Missed, Missed, Skip = "skip", Once = "once");

/// A checked schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// As written, for messages and `status`.
    pub text: String,
    pub spec: Spec,
    pub overlap: Overlap,
    pub missed: Missed,
}

/// Equal as written: the same text parses to the same times.
impl PartialEq for Schedule {
    fn eq(&self, other: &Schedule) -> bool {
        (&self.text, self.overlap, self.missed) == (&other.text, other.overlap, other.missed)
    }
}

/// One `component_schedules` row as stored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ScheduleRow {
    pub component_id: String,
    pub spec: String,
    pub overlap: String,
    pub missed: String,
}

impl ScheduleRow {
    pub fn check(&self) -> Result<Schedule, ScheduleError> {
        Ok(Schedule {
            text: self.spec.trim().to_owned(),
            spec: Spec::parse(&self.spec)?,
            overlap: self.overlap.parse()?,
            missed: self.missed.parse()?,
        })
    }
}

pub fn all(conn: &Connection) -> rusqlite::Result<Vec<ScheduleRow>> {
    let mut statement = conn.prepare(&format!(
        "SELECT component_id, spec, overlap, missed FROM {COMPONENT_SCHEDULES} ORDER BY component_id"
    ))?;
    statement
        .query_map([], |r| {
            Ok(ScheduleRow {
                component_id: r.get(0)?,
                spec: r.get(1)?,
                overlap: r.get(2)?,
                missed: r.get(3)?,
            })
        })?
        .collect()
}

pub fn get(conn: &Connection, component_id: &str) -> rusqlite::Result<Option<ScheduleRow>> {
    conn.query_row(
        &format!(
            "SELECT component_id, spec, overlap, missed FROM {COMPONENT_SCHEDULES} WHERE component_id = ?1"
        ),
        [component_id],
        |r| {
            Ok(ScheduleRow {
                component_id: r.get(0)?,
                spec: r.get(1)?,
                overlap: r.get(2)?,
                missed: r.get(3)?,
            })
        },
    )
    .optional()
}

/// Writes the row (checked first: a bad one is refused by name, nothing written).
pub fn set(conn: &Connection, row: &ScheduleRow) -> Result<(), SetError> {
    row.check()?;
    conn.execute(
        &format!(
            "INSERT INTO {COMPONENT_SCHEDULES} (component_id, spec, overlap, missed) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(component_id) DO UPDATE SET spec = excluded.spec, overlap = excluded.overlap,
             missed = excluded.missed, modified_timestamp = CURRENT_TIMESTAMP"
        ),
        params![row.component_id, row.spec.trim(), row.overlap, row.missed],
    )?;
    Ok(())
}

/// Removes the component's schedule; true if it had one.
pub fn clear(conn: &Connection, component_id: &str) -> rusqlite::Result<bool> {
    Ok(conn.execute(
        &format!("DELETE FROM {COMPONENT_SCHEDULES} WHERE component_id = ?1"),
        [component_id],
    )? > 0)
}

#[derive(Debug, thiserror::Error)]
pub enum SetError {
    #[error(transparent)]
    Invalid(#[from] ScheduleError),
    #[error("cannot write {COMPONENT_SCHEDULES}: {0}")]
    Sql(#[from] rusqlite::Error),
}

/// When each scheduled component last started on its schedule (its newest `SCHEDULED_START`
/// row, Unix seconds): what a manager coming back compares the schedule with (`missed`).
pub fn last_runs(conn: &Connection) -> rusqlite::Result<HashMap<String, f64>> {
    let mut statement = conn.prepare(&format!(
        "SELECT s.component_id,
                (SELECT CAST(strftime('%s', max(l.event_timestamp)) AS REAL) FROM {COMPONENT_LIFECYCLE_LOG} l
                 WHERE l.component_id = s.component_id AND l.event_type = ?1)
         FROM {COMPONENT_SCHEDULES} s"
    ))?;
    let rows = statement.query_map([LifecycleEvent::ScheduledStart.as_str()], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, Option<f64>>(1)?))
    })?;
    let mut found = HashMap::new();
    for row in rows {
        let (id, last) = row?;
        if let Some(last) = last {
            found.insert(id, last);
        }
    }
    Ok(found)
}

/// `2026-12-07 19:00:02 UTC`: a time as the schedule's zone shows it (local for `every`).
pub fn describe_time(spec: &Spec, unix: f64) -> String {
    let zone = match spec {
        Spec::Cron { zone, .. } => zone.clone(),
        Spec::Every(_) => TimeZone::system(),
    };
    match Timestamp::from_second(unix.floor() as i64) {
        Ok(at) => at
            .to_zoned(zone)
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => format!("{unix} (Unix time)"),
    }
}

#[cfg(test)]
mod tests;
