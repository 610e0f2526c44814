//! The one owner of `component_limits`: each component's memory, CPU and task limits and the
//! account it runs as, validated here for everyone (n0m1ctl, the API, the managers), so a
//! limit is refused by name before it reaches a cgroup file.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::schema::COMPONENT_LIMITS;

/// The smallest memory limit accepted: below it nothing starts (the dynamic loader alone
/// needs more), and the kill would look like a crash loop.
pub const MIN_MEMORY: u64 = 4 * 1024 * 1024;
pub const MAX_CPU_WEIGHT: u32 = 10_000;

/// One component's limits; `None` is no limit (or the manager's own account).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    pub memory_max: Option<u64>,
    pub memory_high: Option<u64>,
    /// Cores: 0.5 is half of one core's time.
    pub cpu_max: Option<f64>,
    pub cpu_weight: Option<u32>,
    pub pids_max: Option<u64>,
    pub user: Option<String>,
    pub group: Option<String>,
}

impl Limits {
    /// No resource limit (an account may still be set).
    pub fn unlimited(&self) -> bool {
        !self.limits_memory() && !self.limits_cpu() && self.pids_max.is_none()
    }

    /// A memory limit is set (what its cgroup's memory controller is for).
    pub fn limits_memory(&self) -> bool {
        self.memory_max.is_some() || self.memory_high.is_some()
    }

    /// A CPU quota or weight is set.
    pub fn limits_cpu(&self) -> bool {
        self.cpu_max.is_some() || self.cpu_weight.is_some()
    }

    pub fn is_empty(&self) -> bool {
        self.unlimited() && self.user.is_none() && self.group.is_none()
    }

    /// `memory_max 64.0 MiB, cpu_max 0.5 cores, …`, or `none`.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(bytes) = self.memory_max {
            parts.push(format!("memory_max {}", format_size(bytes)));
        }
        if let Some(bytes) = self.memory_high {
            parts.push(format!("memory_high {}", format_size(bytes)));
        }
        if let Some(cores) = self.cpu_max {
            parts.push(format!("cpu_max {cores} cores"));
        }
        if let Some(weight) = self.cpu_weight {
            parts.push(format!("cpu_weight {weight}"));
        }
        if let Some(pids) = self.pids_max {
            parts.push(format!("pids_max {pids}"));
        }
        if let Some(user) = &self.user {
            parts.push(format!("user {user}"));
        }
        if let Some(group) = &self.group {
            parts.push(format!("group {group}"));
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    /// Checks every limit against the rules and this machine's size; the error names the
    /// limit, the value and what is allowed.
    pub fn validate(&self, machine: &MachineSize) -> Result<(), LimitError> {
        for (name, value) in [
            ("memory_max", self.memory_max),
            ("memory_high", self.memory_high),
        ] {
            let Some(bytes) = value else { continue };
            if bytes < MIN_MEMORY {
                return Err(LimitError::new(
                    name,
                    format_size(bytes),
                    format!("at least {}", format_size(MIN_MEMORY)),
                ));
            }
            if bytes > machine.memory_bytes {
                return Err(LimitError::new(
                    name,
                    format_size(bytes),
                    format!(
                        "at most this machine's memory, {}",
                        format_size(machine.memory_bytes)
                    ),
                ));
            }
        }
        if let (Some(high), Some(max)) = (self.memory_high, self.memory_max)
            && high > max
        {
            return Err(LimitError::new(
                "memory_high",
                format_size(high),
                format!("at most memory_max ({})", format_size(max)),
            ));
        }
        if let Some(cores) = self.cpu_max {
            // A thousandth of a core is the finest quota a 100 ms period can express.
            if !cores.is_finite() || cores < 0.001 {
                return Err(LimitError::new(
                    "cpu_max",
                    cores.to_string(),
                    "a number of cores above 0 (0.5 is half a core)",
                ));
            }
            if cores > machine.cpus as f64 {
                return Err(LimitError::new(
                    "cpu_max",
                    cores.to_string(),
                    format!("at most this machine's {} cores", machine.cpus),
                ));
            }
        }
        if let Some(weight) = self.cpu_weight
            && !(1..=MAX_CPU_WEIGHT).contains(&weight)
        {
            return Err(LimitError::new(
                "cpu_weight",
                weight.to_string(),
                "1 to 10000 (100 is the default share)",
            ));
        }
        if self.pids_max == Some(0) {
            return Err(LimitError::new(
                "pids_max",
                "0",
                "at least 1 (the component itself is a task)",
            ));
        }
        for (name, value) in [("user", &self.user), ("group", &self.group)] {
            if let Some(account) = value
                && (account.is_empty()
                    || account.len() > 64
                    || !account
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)))
            {
                return Err(LimitError::new(
                    name,
                    crate::text::printable(account),
                    "an account name (letters, digits, '_', '-', '.')",
                ));
            }
        }
        if self.group.is_some() && self.user.is_none() {
            return Err(LimitError::new(
                "group",
                self.group.clone().unwrap_or_default(),
                "only with --user (a group alone would keep the manager's user)",
            ));
        }
        Ok(())
    }
}

/// A limit refused: which, the value given and what is allowed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{limit} {value} is refused: it must be {allowed}")]
pub struct LimitError {
    pub limit: &'static str,
    pub value: String,
    pub allowed: String,
}

impl LimitError {
    fn new(limit: &'static str, value: impl Into<String>, allowed: impl Into<String>) -> Self {
        LimitError {
            limit,
            value: value.into(),
            allowed: allowed.into(),
        }
    }
}

/// What a limit may not exceed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineSize {
    pub memory_bytes: u64,
    pub cpus: usize,
}

impl MachineSize {
    /// This machine: MemTotal from /proc/meminfo and the CPUs this process may use.
    pub fn here() -> MachineSize {
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|line| line.strip_prefix("MemTotal:"))
                    .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(u64::MAX, |kib| kib * 1024);
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        MachineSize { memory_bytes, cpus }
    }
}

/// `64M`, `1.5G`, `512K`, `1048576`: bytes, with K, M, G or T (1024-based, an optional `i`
/// or `iB`/`B` after it).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KI" | "KIB" => 1 << 10,
        "M" | "MB" | "MI" | "MIB" => 1 << 20,
        "G" | "GB" | "GI" | "GIB" => 1 << 30,
        "T" | "TB" | "TI" | "TIB" => 1 << 40,
        _ => {
            return Err(format!(
                "size {:?}: expected bytes or a number with K, M, G or T (such as 64M)",
                crate::text::printable(text)
            ));
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!(
            "size {:?}: expected a number such as 64M",
            crate::text::printable(text)
        )
    })?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(format!(
            "size {:?}: out of range",
            crate::text::printable(text)
        ));
    }
    Ok(bytes.round() as u64)
}

/// `64.0 MiB`, `1.5 GiB`, `512 B`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

const COLUMNS: &str =
    "memory_max, memory_high, cpu_max, cpu_weight, pids_max, run_as_user, run_as_group";

fn from_row(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Limits> {
    let non_negative = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(row
            .get::<_, Option<i64>>(first + i)?
            .and_then(|v| u64::try_from(v).ok()))
    };
    Ok(Limits {
        memory_max: non_negative(0)?,
        memory_high: non_negative(1)?,
        cpu_max: row.get(first + 2)?,
        cpu_weight: non_negative(3)?.and_then(|v| u32::try_from(v).ok()),
        pids_max: non_negative(4)?,
        user: row.get(first + 5)?,
        group: row.get(first + 6)?,
    })
}

/// The limits of one component (all `None` when it has no row).
pub fn of(conn: &Connection, component_id: &str) -> rusqlite::Result<Limits> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM {COMPONENT_LIMITS} WHERE component_id = ?1"),
        [component_id],
        |row| from_row(row, 0),
    )
    .optional()
    .map(Option::unwrap_or_default)
}

/// Every component's row, by id.
pub fn all(conn: &Connection) -> rusqlite::Result<HashMap<String, Limits>> {
    conn.prepare_cached(&format!(
        "SELECT component_id, {COLUMNS} FROM {COMPONENT_LIMITS} ORDER BY component_id"
    ))?
    .query_map([], |row| Ok((row.get::<_, String>(0)?, from_row(row, 1)?)))?
    .collect()
}

/// A fingerprint of every row, for the managers' change watcher.
pub fn fingerprint(conn: &Connection) -> rusqlite::Result<String> {
    conn.query_row(
        &format!(
            "SELECT COALESCE(group_concat(component_id || ':' || COALESCE(CAST(modified_timestamp AS TEXT), '') || ':' || \
             COALESCE(memory_max, '') || ':' || COALESCE(memory_high, '') || ':' || COALESCE(cpu_max, '') || ':' || \
             COALESCE(cpu_weight, '') || ':' || COALESCE(pids_max, '') || ':' || COALESCE(run_as_user, '') || ':' || \
             COALESCE(run_as_group, ''), ';'), '') FROM (SELECT * FROM {COMPONENT_LIMITS} ORDER BY component_id)"
        ),
        [],
        |row| row.get(0),
    )
}

/// Writes a component's whole row (a `Limits` with nothing set deletes it).
pub fn store(conn: &Connection, component_id: &str, limits: &Limits) -> rusqlite::Result<()> {
    if limits.is_empty() {
        conn.execute(
            &format!("DELETE FROM {COMPONENT_LIMITS} WHERE component_id = ?1"),
            [component_id],
        )?;
        return Ok(());
    }
    let as_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
    conn.execute(
        &format!(
            "INSERT INTO {COMPONENT_LIMITS} (component_id, {COLUMNS}, modified_timestamp)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, CURRENT_TIMESTAMP)
             ON CONFLICT (component_id) DO UPDATE SET
               memory_max = excluded.memory_max, memory_high = excluded.memory_high,
               cpu_max = excluded.cpu_max, cpu_weight = excluded.cpu_weight,
               pids_max = excluded.pids_max, run_as_user = excluded.run_as_user,
               run_as_group = excluded.run_as_group, modified_timestamp = CURRENT_TIMESTAMP"
        ),
        params![
            component_id,
            as_i64(limits.memory_max),
            as_i64(limits.memory_high),
            limits.cpu_max,
            limits.cpu_weight,
            as_i64(limits.pids_max),
            limits.user,
            limits.group,
        ],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> MachineSize {
        MachineSize {
            memory_bytes: 8 << 30,
            cpus: 2,
        }
    }

    #[test]
    fn sizes_parse_1024_based_and_print_back() {
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        for bad in ["", "M", "64X", "-5M", "1e400", "six"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert_eq!(format_size(64 << 20), "64.0 MiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(100), "100 B");
    }

    #[test]
    fn each_bad_limit_is_refused_by_name() {
        let cases: &[(Limits, &str)] = &[
            (
                Limits {
                    memory_max: Some(1 << 20),
                    ..Limits::default()
                },
                "memory_max 1.0 MiB is refused: it must be at least 4.0 MiB",
            ),
            (
                Limits {
                    memory_high: Some(16 << 30),
                    ..Limits::default()
                },
                "memory_high 16.0 GiB is refused: it must be at most this machine's memory, 8.0 GiB",
            ),
            (
                Limits {
                    memory_max: Some(64 << 20),
                    memory_high: Some(128 << 20),
                    ..Limits::default()
                },
                "memory_high 128.0 MiB is refused: it must be at most memory_max (64.0 MiB)",
            ),
            (
                Limits {
                    cpu_max: Some(0.0),
                    ..Limits::default()
                },
                "cpu_max 0 is refused",
            ),
            (
                Limits {
                    cpu_max: Some(-1.0),
                    ..Limits::default()
                },
                "cpu_max -1 is refused",
            ),
            (
                Limits {
                    cpu_max: Some(3.0),
                    ..Limits::default()
                },
                "at most this machine's 2 cores",
            ),
            (
                Limits {
                    cpu_weight: Some(0),
                    ..Limits::default()
                },
                "cpu_weight 0 is refused",
            ),
            (
                Limits {
                    cpu_weight: Some(10_001),
                    ..Limits::default()
                },
                "cpu_weight 10001 is refused",
            ),
            (
                Limits {
                    pids_max: Some(0),
                    ..Limits::default()
                },
                "pids_max 0 is refused",
            ),
            (
                Limits {
                    user: Some("bad user".into()),
                    ..Limits::default()
                },
                "user bad user is refused",
            ),
            (
                Limits {
                    group: Some("nogroup".into()),
                    ..Limits::default()
                },
                "group nogroup is refused",
            ),
        ];
        for (limits, expected) in cases {
            let error = limits.validate(&machine()).unwrap_err().to_string();
            assert!(error.contains(expected), "{error} / {expected}");
        }
        let good = Limits {
            memory_max: Some(64 << 20),
            memory_high: Some(48 << 20),
            cpu_max: Some(0.2),
            cpu_weight: Some(50),
            pids_max: Some(10),
            user: Some("nobody".into()),
            group: Some("nogroup".into()),
        };
        good.validate(&machine()).unwrap();
        assert_eq!(
            good.describe(),
            "memory_max 64.0 MiB, memory_high 48.0 MiB, cpu_max 0.2 cores, cpu_weight 50, pids_max 10, user nobody, group nogroup"
        );
    }

    #[test]
    fn rows_are_stored_read_and_cleared() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrations().to_latest(&mut conn).unwrap();
        assert_eq!(of(&conn, "x").unwrap(), Limits::default());
        let limits = Limits {
            memory_max: Some(64 << 20),
            cpu_max: Some(0.5),
            ..Limits::default()
        };
        store(&conn, "x", &limits).unwrap();
        assert_eq!(of(&conn, "x").unwrap(), limits);
        let before = fingerprint(&conn).unwrap();
        store(
            &conn,
            "x",
            &Limits {
                pids_max: Some(5),
                ..limits.clone()
            },
        )
        .unwrap();
        assert_ne!(fingerprint(&conn).unwrap(), before);
        assert_eq!(all(&conn).unwrap()["x"].pids_max, Some(5));
        store(&conn, "x", &Limits::default()).unwrap();
        assert!(all(&conn).unwrap().is_empty());
    }
}
