//! `component_health`: the one reader of the table, and the validation that turns a row into
//! a `HealthCheck` (or an error naming the row and the field).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use crate::schema::COMPONENT_HEALTH;

/// A row as written, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthRow {
    pub component_id: String,
    pub watchdog_s: Option<f64>,
    pub probe: Option<String>,
    pub probe_interval_s: f64,
    pub probe_timeout_s: f64,
    pub failures: i64,
}

impl std::hash::Hash for HealthRow {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.component_id.hash(state);
        self.watchdog_s.map(f64::to_bits).hash(state);
        self.probe.hash(state);
        self.probe_interval_s.to_bits().hash(state);
        self.probe_timeout_s.to_bits().hash(state);
        self.failures.hash(state);
    }
}

/// What a manager checks of a running component, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HealthCheck {
    /// `WATCHDOG=1` must come at least this often.
    pub watchdog: Option<Duration>,
    pub probe: Option<Probe>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    /// An executable inside the home's `hooks/`.
    pub program: PathBuf,
    pub interval: Duration,
    pub timeout: Duration,
    /// Failed runs in a row that make a miss.
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{COMPONENT_HEALTH} row {component_id:?}: {field}: {reason}; health checks of it are off until the row is fixed"
)]
pub struct HealthError {
    pub component_id: String,
    pub field: &'static str,
    pub reason: String,
}

/// Every row of the table (a few, one per checked component).
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<HealthRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT component_id, watchdog_s, probe, probe_interval_s, probe_timeout_s, failures
         FROM {COMPONENT_HEALTH} ORDER BY component_id"
    ))?;
    let rows = statement.query_map([], |r| {
        Ok(HealthRow {
            component_id: r.get(0)?,
            watchdog_s: r.get(1)?,
            probe: r.get(2)?,
            probe_interval_s: r.get(3)?,
            probe_timeout_s: r.get(4)?,
            failures: r.get(5)?,
        })
    })?;
    rows.collect()
}

/// The shortest period accepted: checks faster than this would cost more than they find.
const MIN_PERIOD_S: f64 = 0.1;

fn period(
    value: f64,
    field: &'static str,
    bad: &dyn Fn(&'static str, String) -> HealthError,
) -> Result<Duration, HealthError> {
    if !value.is_finite() || value < MIN_PERIOD_S {
        return Err(bad(
            field,
            format!("{value} is not a number of seconds of at least {MIN_PERIOD_S}"),
        ));
    }
    Ok(Duration::from_secs_f64(value.min(86_400.0)))
}

impl HealthRow {
    /// Validates the row; a probe must name an executable file inside `hooks_dir`.
    pub fn check(&self, hooks_dir: &Path) -> Result<HealthCheck, HealthError> {
        let bad = |field, reason| HealthError {
            component_id: self.component_id.clone(),
            field,
            reason,
        };
        let watchdog = match self.watchdog_s {
            None => None,
            Some(value) => Some(period(value, "watchdog_s", &bad)?),
        };
        let probe = match self.probe.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(name) => {
                let program = hook(hooks_dir, name).map_err(|reason| bad("probe", reason))?;
                let failures = u32::try_from(self.failures)
                    .ok()
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| {
                        bad(
                            "failures",
                            format!("{} is not a count of at least 1", self.failures),
                        )
                    })?;
                Some(Probe {
                    program,
                    interval: period(self.probe_interval_s, "probe_interval_s", &bad)?,
                    timeout: period(self.probe_timeout_s, "probe_timeout_s", &bad)?,
                    failures,
                })
            }
        };
        Ok(HealthCheck { watchdog, probe })
    }
}

/// Resolves `name` to an executable inside `hooks_dir` (no path, no escaping symlink). Hooks
/// and probes run without a shell, so only such a file can run.
pub fn hook(hooks_dir: &Path, name: &str) -> Result<PathBuf, String> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name.starts_with('.') {
        return Err(format!(
            "{name:?} is not a file name in {}: put the executable there and name it",
            hooks_dir.display()
        ));
    }
    let path = hooks_dir.join(name);
    let real = path
        .canonicalize()
        .map_err(|error| format!("{} cannot be used: {error}", path.display()))?;
    let real_dir = hooks_dir
        .canonicalize()
        .map_err(|error| format!("{} cannot be used: {error}", hooks_dir.display()))?;
    if !real.starts_with(&real_dir) {
        return Err(format!(
            "{} leads outside {}",
            path.display(),
            hooks_dir.display()
        ));
    }
    let meta = real
        .metadata()
        .map_err(|error| format!("{} cannot be used: {error}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!(
            "{} is not an executable file: chmod +x it",
            path.display()
        ));
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> HealthRow {
        HealthRow {
            component_id: "c".into(),
            watchdog_s: Some(1.0),
            probe: None,
            probe_interval_s: 10.0,
            probe_timeout_s: 5.0,
            failures: 3,
        }
    }

    #[test]
    fn rows_are_validated_field_by_field() {
        let dir = tempfile::tempdir().unwrap();
        let hooks = dir.path().join("hooks");
        std::fs::create_dir(&hooks).unwrap();
        std::fs::write(hooks.join("ok.sh"), "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(hooks.join("ok.sh"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::write(hooks.join("plain"), "x").unwrap();
        std::os::unix::fs::symlink("/bin/true", hooks.join("escape")).unwrap();

        let check = row().check(&hooks).unwrap();
        assert_eq!(check.watchdog, Some(Duration::from_secs(1)));
        assert_eq!(check.probe, None);
        let with_probe = HealthRow {
            probe: Some("ok.sh".into()),
            ..row()
        };
        let probe = with_probe.check(&hooks).unwrap().probe.unwrap();
        assert_eq!(
            (probe.interval, probe.timeout, probe.failures),
            (Duration::from_secs(10), Duration::from_secs(5), 3)
        );

        for (bad, field) in [
            (
                HealthRow {
                    watchdog_s: Some(-1.0),
                    ..row()
                },
                "watchdog_s",
            ),
            (
                HealthRow {
                    watchdog_s: Some(f64::NAN),
                    ..row()
                },
                "watchdog_s",
            ),
            (
                HealthRow {
                    probe: Some("../x".into()),
                    ..row()
                },
                "probe",
            ),
            (
                HealthRow {
                    probe: Some("/bin/true".into()),
                    ..row()
                },
                "probe",
            ),
            (
                HealthRow {
                    probe: Some("escape".into()),
                    ..row()
                },
                "probe",
            ),
            (
                HealthRow {
                    probe: Some("plain".into()),
                    ..row()
                },
                "probe",
            ),
            (
                HealthRow {
                    probe: Some("missing".into()),
                    ..row()
                },
                "probe",
            ),
            (
                HealthRow {
                    probe: Some("ok.sh".into()),
                    failures: 0,
                    ..row()
                },
                "failures",
            ),
            (
                HealthRow {
                    probe: Some("ok.sh".into()),
                    probe_interval_s: 0.0,
                    ..row()
                },
                "probe_interval_s",
            ),
            (
                HealthRow {
                    probe: Some("ok.sh".into()),
                    probe_timeout_s: -3.0,
                    ..row()
                },
                "probe_timeout_s",
            ),
        ] {
            let error = bad.check(&hooks).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert!(
                error.to_string().contains("component_health row \"c\""),
                "{error}"
            );
        }
    }
}
