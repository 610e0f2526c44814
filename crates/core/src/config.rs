//! `config.json`: typed, strict, with the original's defaults.
//!
//! Unknown keys and wrong types are errors that name the key's path
//! (`managers.daemon_manager.py.startup_delay: expected a non-negative number of seconds`),
//! because a typo that silently falls back to a default is the worst kind of config bug.
//! A missing file or a missing field takes the spec's default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::schema::{DAEMON_MANAGER, MAIN_LLM_MANAGER, NANO_MANAGER};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is {kind}, not a regular file: replace it with a JSON file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("config {path} is larger than {limit} bytes: a config.json is a few hundred bytes")]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// A duration written in seconds (integer or fraction); negative values and non-numbers are
/// rejected with the key named.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Seconds(pub f64);

impl Seconds {
    pub fn duration(self) -> Duration {
        Duration::from_secs_f64(self.0)
    }
}

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecondsVisitor;
        impl Visitor<'_> for SecondsVisitor {
            type Value = Seconds;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative number of seconds")
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Seconds, E> {
                if value.is_finite() && (0.0..=86_400.0 * 365.0).contains(&value) {
                    Ok(Seconds(value))
                } else {
                    Err(E::invalid_value(de::Unexpected::Float(value), &self))
                }
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Seconds, E> {
                self.visit_f64(value as f64)
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Seconds, E> {
                if value < 0 {
                    return Err(E::invalid_value(de::Unexpected::Signed(value), &self));
                }
                self.visit_f64(value as f64)
            }
        }
        deserializer.deserialize_any(SecondsVisitor)
    }
}

/// One manager as written in the file; absent fields take that manager's defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagerEntry {
    name: Option<String>,
    startup_delay: Option<Seconds>,
    health_check_interval: Option<Seconds>,
    critical: Option<bool>,
}

/// A manager boot starts, with its settings resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ManagerSpec {
    /// The manager's binary and `manager_affinity` value (`daemon_manager`).
    pub binary: String,
    /// Human name ("Daemon Manager").
    pub name: String,
    /// Pause after starting this manager before starting the next one.
    pub startup_delay: Seconds,
    /// How often boot checks that the manager is alive and its heartbeat fresh.
    pub health_check_interval: Seconds,
    /// Boot restarts a critical manager that dies.
    pub critical: bool,
}

fn default_manager(binary: &str) -> Option<ManagerSpec> {
    let (name, delay, interval, critical) = match binary {
        DAEMON_MANAGER => ("Daemon Manager", 1.0, 30.0, true),
        NANO_MANAGER => ("Nano Manager", 1.0, 30.0, true),
        MAIN_LLM_MANAGER => ("Main LLM Manager", 2.0, 60.0, false),
        _ => return None,
    };
    Some(ManagerSpec {
        binary: binary.to_owned(),
        name: name.to_owned(),
        startup_delay: Seconds(delay),
        health_check_interval: Seconds(interval),
        critical,
    })
}

/// How managers restart and stop components (the port's addition to config.json).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisorPolicy {
    /// A component that ran at least this long is restarted at once when it dies.
    pub min_uptime: Seconds,
    /// The first backoff after a quick death; doubles with each further quick death.
    pub backoff_initial: Seconds,
    /// The longest backoff.
    pub backoff_max: Seconds,
    /// Quick deaths in a row after which a component is FAILED and stays down.
    pub max_quick_deaths: u32,
    /// Grace period between SIGTERM and SIGKILL when stopping.
    pub stop_timeout: Seconds,
    /// How often a manager proves it is alive (boot reads the heartbeat).
    pub heartbeat_interval: Seconds,
    /// Exits counted for the crash-loop rule: this many within `crash_window` are treated as
    /// quick deaths (backoff, then FAILED) however long each run lasted.
    pub max_crashes_in_window: u32,
    pub crash_window: Seconds,
    /// How long a component may wait for its dependencies before it is FAILED.
    pub start_timeout: Seconds,
}

impl Default for SupervisorPolicy {
    fn default() -> Self {
        SupervisorPolicy {
            min_uptime: Seconds(1.0),
            backoff_initial: Seconds(0.5),
            backoff_max: Seconds(60.0),
            max_quick_deaths: 5,
            stop_timeout: Seconds(10.0),
            heartbeat_interval: Seconds(2.0),
            max_crashes_in_window: 10,
            crash_window: Seconds(60.0),
            start_timeout: Seconds(30.0),
        }
    }
}

impl SupervisorPolicy {
    /// The delay before the restart that follows the `quick_deaths`-th quick death in a row.
    pub fn backoff(&self, quick_deaths: u32) -> Duration {
        let exponent = quick_deaths.saturating_sub(1).min(30);
        let secs = self.backoff_initial.0 * f64::from(1u32 << exponent);
        Duration::from_secs_f64(secs.min(self.backoff_max.0))
    }
}

/// How long metric and log rows are kept (the port's addition).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Rows older than this many days are pruned.
    pub max_age_days: Seconds,
    /// How often a daemon prunes its table.
    pub prune_interval: Seconds,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age_days: Seconds(7.0),
            prune_interval: Seconds(3600.0),
        }
    }
}

/// Size-based rotation of every log n0m1 writes through its log writer: `<id>.log` →
/// `<id>.log.1` … `<id>.log.<keep>` (the same for `.err`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// A file is rotated before a line would take it past this size (a single longer line
    /// is written whole).
    pub max_bytes: u64,
    /// Rotated files kept; older ones are deleted.
    pub keep: u32,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            max_bytes: 10 * 1024 * 1024,
            keep: 5,
        }
    }
}

/// Per-component resource sampling by the managers (`component_resource_log`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResourceSettings {
    /// Seconds between two samples of every running component's process tree.
    pub interval: Seconds,
}

impl Default for ResourceSettings {
    fn default() -> Self {
        ResourceSettings {
            interval: Seconds(10.0),
        }
    }
}

/// The model components' settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// What `--model default` means (a model id, a .gguf file or a folder); unset: each
    /// component's built-in default.
    pub default: Option<String>,
    /// The CPU priority (nice, 0-19) model work runs at, below the supervisors and the
    /// metric daemons, so a busy model never starves what watches the machine.
    pub nice: i32,
    /// Model components ask the model service (`run/model.sock`) for completions, so
    /// components naming the same model share one loaded copy; `false`: each loads its own.
    pub shared: bool,
    /// The memory limit of the model service and the model components that have no
    /// `memory_max` of their own (`"2G"`, or bytes); unset: none.
    pub memory_max: Option<ByteSize>,
}

impl Default for ModelSettings {
    fn default() -> Self {
        ModelSettings {
            default: None,
            nice: 10,
            shared: true,
            memory_max: None,
        }
    }
}

/// A size in bytes, written as a number of bytes or a string such as `"64M"` (K, M, G, T;
/// 1024-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            Bytes(u64),
            Text(String),
        }
        match Written::deserialize(deserializer)? {
            Written::Bytes(bytes) => Ok(ByteSize(bytes)),
            Written::Text(text) => crate::limits::parse_size(&text)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// `n0m1_web`'s settings (its address is a flag: `--listen`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Reads need the token too (mutations always do). Required for a non-loopback address.
    pub read_requires_token: bool,
    /// HTTPS: a certificate and key of the operator's, or one made in the home.
    pub tls: Option<TlsSetting>,
    /// Plain HTTP on a non-loopback address anyway (flagged by `status` and the dashboard).
    pub insecure_http: bool,
}

/// `web.tls`: `"self-signed"`, or `{"cert": FILE, "key": FILE}` (PEM; relative to the home).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum TlsSetting {
    /// `"self-signed"`: a key and certificate made at n0m1_web's first start, kept in the home.
    Named(SelfSigned),
    Files {
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub enum SelfSigned {
    #[serde(rename = "self-signed")]
    SelfSigned,
}

/// How proposed actions are handled (`action_policy` says which need an operator).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ActionSettings {
    /// How long a proposal waits for an operator before it expires.
    pub proposal_ttl: Seconds,
}

impl Default for ActionSettings {
    fn default() -> Self {
        ActionSettings {
            proposal_ttl: Seconds(crate::actions::DEFAULT_PROPOSAL_TTL_SECS),
        }
    }
}

/// Bounds that make a setting a mistake rather than a choice.
const MIN_LOG_BYTES: u64 = 1024;
const MAX_LOG_KEEP: u32 = 1000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    managers: Option<IndexMap<String, ManagerEntry>>,
    #[serde(default)]
    supervisor: SupervisorPolicy,
    #[serde(default)]
    retention: Retention,
    #[serde(default)]
    logs: LogSettings,
    #[serde(default)]
    resources: ResourceSettings,
    #[serde(default)]
    web: WebSettings,
    #[serde(default)]
    models: ModelSettings,
    #[serde(default)]
    actions: ActionSettings,
}

/// The whole configuration, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    /// In start order: the file's order, or daemon, nano, main LLM.
    pub managers: Vec<ManagerSpec>,
    pub supervisor: SupervisorPolicy,
    pub retention: Retention,
    pub logs: LogSettings,
    pub resources: ResourceSettings,
    pub web: WebSettings,
    pub models: ModelSettings,
    pub actions: ActionSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            managers: [DAEMON_MANAGER, NANO_MANAGER, MAIN_LLM_MANAGER]
                .iter()
                .filter_map(|binary| default_manager(binary))
                .collect(),
            supervisor: SupervisorPolicy::default(),
            retention: Retention::default(),
            logs: LogSettings::default(),
            resources: ResourceSettings::default(),
            web: WebSettings::default(),
            models: ModelSettings::default(),
            actions: ActionSettings::default(),
        }
    }
}

/// The largest config.json read.
pub const MAX_CONFIG_BYTES: u64 = 1024 * 1024;
/// The longest manager `name`: it is written into lifecycle messages.
pub const MAX_NAME_CHARS: usize = 200;

impl Config {
    /// Loads `path`; a missing file is the default configuration. Only a regular file of at
    /// most `MAX_CONFIG_BYTES` is read: a FIFO would block the reader (boot's SIGHUP handling
    /// with it) and a link to /dev/zero would never end.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let read_error = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Config::default());
            }
            Err(source) => return Err(read_error(source)),
        };
        let metadata = file.metadata().map_err(read_error)?;
        if let Some(kind) = crate::home::not_a_regular_file(&metadata.file_type()) {
            return Err(ConfigError::NotAFile {
                path: path.to_path_buf(),
                kind,
            });
        }
        let too_large = || ConfigError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_CONFIG_BYTES,
        };
        if metadata.len() > MAX_CONFIG_BYTES {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(too_large());
        }
        let text = String::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: "(top level)".into(),
            message: "the file is not UTF-8 text".into(),
        })?;
        Config::parse(&text, path)
    }

    /// Parses config text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let mut deserializer = serde_json::Deserializer::from_str(text);
        let file: ConfigFile =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                let key = error.path().to_string();
                let key = if key == "." || key == "?" {
                    "(top level)".to_owned()
                } else {
                    key
                };
                invalid(key, error.into_inner().to_string())
            })?;
        let mut config = Config {
            supervisor: file.supervisor,
            retention: file.retention,
            logs: file.logs,
            resources: file.resources,
            web: file.web,
            models: file.models,
            actions: file.actions,
            ..Config::default()
        };
        if !(0..=19).contains(&config.models.nice) {
            return Err(invalid(
                "models.nice".into(),
                format!(
                    "{} is not a nice value from 0 (normal) to 19 (lowest)",
                    config.models.nice
                ),
            ));
        }
        if let Some(ByteSize(bytes)) = config.models.memory_max
            && bytes < crate::limits::MIN_MEMORY
        {
            return Err(invalid(
                "models.memory_max".into(),
                format!(
                    "{} is below the smallest memory limit, {}",
                    crate::limits::format_size(bytes),
                    crate::limits::format_size(crate::limits::MIN_MEMORY)
                ),
            ));
        }
        if config
            .models
            .default
            .as_deref()
            .is_some_and(|d| d.trim().is_empty())
        {
            return Err(invalid(
                "models.default".into(),
                "is empty: name a model id, a .gguf file or a folder, or leave it out".into(),
            ));
        }
        if config.resources.interval.0 < 0.1 {
            return Err(invalid(
                "resources.interval".into(),
                format!(
                    "{} s is too short: sample at most ten times a second",
                    config.resources.interval.0
                ),
            ));
        }
        if config.logs.max_bytes < MIN_LOG_BYTES {
            return Err(invalid(
                "logs.max_bytes".into(),
                format!(
                    "{} is below the {MIN_LOG_BYTES} bytes a log file needs",
                    config.logs.max_bytes
                ),
            ));
        }
        if config.logs.keep > MAX_LOG_KEEP {
            return Err(invalid(
                "logs.keep".into(),
                format!(
                    "{} is more than the {MAX_LOG_KEEP} rotated files allowed",
                    config.logs.keep
                ),
            ));
        }
        if config.supervisor.max_crashes_in_window == 0 {
            return Err(invalid(
                "supervisor.max_crashes_in_window".into(),
                "must be at least 1".into(),
            ));
        }
        if config.supervisor.max_quick_deaths == 0 {
            return Err(invalid(
                "supervisor.max_quick_deaths".into(),
                "must be at least 1".into(),
            ));
        }
        if let Some(entries) = file.managers {
            config.managers.clear();
            for (key, entry) in entries {
                // The original keys managers by script name (`daemon_manager.py`).
                let binary = key.strip_suffix(".py").unwrap_or(&key);
                let Some(mut spec) = default_manager(binary) else {
                    return Err(invalid(
                        format!("managers.{key}"),
                        "unknown manager: expected daemon_manager.py, nano_manager.py or main_llm_manager.py"
                            .into(),
                    ));
                };
                if config.managers.iter().any(|m| m.binary == spec.binary) {
                    return Err(invalid(
                        format!("managers.{key}"),
                        "manager listed twice".into(),
                    ));
                }
                if let Some(name) = entry.name {
                    if name.chars().count() > MAX_NAME_CHARS {
                        return Err(invalid(
                            format!("managers.{key}.name"),
                            format!("longer than {MAX_NAME_CHARS} characters"),
                        ));
                    }
                    spec.name = name;
                }
                if let Some(delay) = entry.startup_delay {
                    spec.startup_delay = delay;
                }
                if let Some(interval) = entry.health_check_interval {
                    if interval.0 <= 0.0 {
                        return Err(invalid(
                            format!("managers.{key}.health_check_interval"),
                            "must be greater than 0".into(),
                        ));
                    }
                    spec.health_check_interval = interval;
                }
                if let Some(critical) = entry.critical {
                    spec.critical = critical;
                }
                config.managers.push(spec);
            }
        }
        Ok(config)
    }

    pub fn manager(&self, binary: &str) -> Option<&ManagerSpec> {
        self.managers.iter().find(|m| m.binary == binary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("config.json")).map_err(|e| e.to_string())
    }

    fn check_error(text: &str, expected: &str) {
        let message = parse(text).unwrap_err();
        assert!(message.contains(expected), "{message:?} lacks {expected:?}");
    }

    #[test]
    fn missing_file_and_empty_object_are_defaults() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::load(&tmp.path().join("none.json")).unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(parse("{}").unwrap(), Config::default());
        let daemon = config.manager("daemon_manager").unwrap();
        assert_eq!(
            (
                daemon.startup_delay.0,
                daemon.health_check_interval.0,
                daemon.critical
            ),
            (1.0, 30.0, true)
        );
        let main = config.manager("main_llm_manager").unwrap();
        assert_eq!(
            (
                main.startup_delay.0,
                main.health_check_interval.0,
                main.critical
            ),
            (2.0, 60.0, false)
        );
    }

    #[test]
    fn only_a_small_regular_file_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        let fifo = tmp.path().join("fifo.json");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        // Returns at once (no writer is waited for) and names what it found.
        let message = Config::load(&fifo).unwrap_err().to_string();
        assert!(message.contains("a FIFO, not a regular file"), "{message}");
        let zero = tmp.path().join("zero.json");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let message = Config::load(&zero).unwrap_err().to_string();
        assert!(message.contains("a device"), "{message}");
        let big = tmp.path().join("big.json");
        std::fs::write(&big, format!("{{\"x\": \"{}\"}}", "y".repeat(2 << 20))).unwrap();
        let message = Config::load(&big).unwrap_err().to_string();
        assert!(message.contains("larger than 1048576 bytes"), "{message}");
        let real = tmp.path().join("real.json");
        std::fs::write(&real, "{}").unwrap();
        let link = tmp.path().join("link.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(Config::load(&link).unwrap(), Config::default());
        check_error(
            &format!(
                "{{\"managers\": {{\"daemon_manager.py\": {{\"name\": \"{}\"}}}}}}",
                "n".repeat(5000)
            ),
            "managers.daemon_manager.py.name: longer than 200 characters",
        );
    }

    #[test]
    fn seed_example_parses_with_defaults_for_the_rest() {
        let config = parse(
            r#"{"managers": {"daemon_manager.py": {"name": "Daemon Manager", "startup_delay": 1,
                "health_check_interval": 30, "critical": true}}}"#,
        )
        .unwrap();
        assert_eq!(config.managers.len(), 1);
        assert_eq!(config.managers[0].binary, "daemon_manager");
    }

    #[test]
    fn missing_fields_take_that_managers_defaults_and_order_is_kept() {
        let config = parse(
            r#"{"managers": {"main_llm_manager.py": {}, "daemon_manager": {"critical": false}}}"#,
        )
        .unwrap();
        let names: Vec<_> = config.managers.iter().map(|m| m.binary.as_str()).collect();
        assert_eq!(names, ["main_llm_manager", "daemon_manager"]);
        assert_eq!(config.managers[0].startup_delay.0, 2.0);
        assert!(!config.managers[1].critical);
    }

    #[test]
    fn errors_name_the_key() {
        check_error(
            r#"{"managers": {"daemon_manager.py": {"startup_delay": "x"}}}"#,
            "managers.daemon_manager.py.startup_delay: invalid type: string \"x\", expected a non-negative number of seconds",
        );
        check_error(
            r#"{"managers": {"daemon_manager.py": {"startup_delay": -1}}}"#,
            "startup_delay",
        );
        check_error(
            r#"{"managers": {"daemon_manager.py": {"critcal": true}}}"#,
            "unknown field `critcal`",
        );
        check_error(r#"{"managrs": {}}"#, "unknown field `managrs`");
        check_error(
            r#"{"managers": {"evil.py": {}}}"#,
            "managers.evil.py: unknown manager",
        );
        check_error(
            r#"{"supervisor": {"stop_timeout": -3}}"#,
            "supervisor.stop_timeout",
        );
        check_error(
            r#"{"supervisor": {"max_quick_deaths": 0}}"#,
            "max_quick_deaths",
        );
        check_error(
            r#"{"managers": {"nano_manager.py": {"health_check_interval": 0}}}"#,
            "greater than 0",
        );
        check_error("{not json", "(top level)");
        check_error("[]", "(top level)");
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = SupervisorPolicy::default();
        let secs: Vec<f64> = (1..=9).map(|n| policy.backoff(n).as_secs_f64()).collect();
        assert_eq!(secs, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]);
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_a_config_or_a_named_error(text in "\\PC{0,200}") {
            if let Err(error) = Config::parse(&text, Path::new("config.json")) {
                proptest::prop_assert!(error.to_string().starts_with("config config.json: "));
            }
        }

        #[test]
        fn any_number_for_a_duration_is_accepted_or_rejected_by_name(value in proptest::num::f64::ANY) {
            let text = format!(r#"{{"supervisor": {{"stop_timeout": {value}}}}}"#);
            match Config::parse(&text, Path::new("config.json")) {
                Ok(config) => proptest::prop_assert!(config.supervisor.stop_timeout.0 >= 0.0),
                // Finite negatives name the key; NaN and infinities are not JSON at all.
                Err(error) => proptest::prop_assert!(
                    error.to_string().contains("supervisor.stop_timeout") || !value.is_finite(),
                    "{}", error
                ),
            }
        }
    }
}
