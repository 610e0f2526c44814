//! The n0m1 home folder: where the database, config, logs and PID files live.
//!
//! Every path the system uses is derived here, so that a component started by a manager and
//! one started by hand agree on where things are. This module creates folders; it never
//! deletes anything.

use std::fs::{self, DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the home folder; `--home` beats it.
pub const ENV_HOME: &str = "N0M1_HOME";
/// Environment variable a manager gives each component: its own `component_id`.
pub const ENV_COMPONENT_ID: &str = "N0M1_COMPONENT_ID";
/// The seed's tip: when set, `.py` components run with `python3` rather than the home's venv.
pub const ENV_NATIVE: &str = "N0M1_NATIVE";
/// Set by boot for the managers it starts, so a manager can tell that boot is its parent.
pub const ENV_BOOT_PID: &str = "N0M1_BOOT_PID";
/// Given to a health probe: the component it checks, and that component's pid.
pub const ENV_CHECKED_COMPONENT: &str = "N0M1_CHECKED_COMPONENT";
pub const ENV_CHECKED_PID: &str = "N0M1_CHECKED_PID";

/// Folder name under `$HOME` when neither `--home` nor `N0M1_HOME` is given (the seed's path).
pub const DEFAULT_HOME_DIR: &str = "n0m1_agi";
pub const DB_FILE: &str = "n0m1_agi.db";
pub const CONFIG_FILE: &str = "config.json";
pub const LOGS_DIR: &str = "logs";
pub const MANAGER_LOGS_DIR: &str = "logs_managers";
pub const PIDS_DIR: &str = "pids";
/// Executables for health probes and alert hooks (run without a shell, only from here).
pub const HOOKS_DIR: &str = "hooks";
/// Sockets: each manager's notification socket (`run/<manager>.notify`) and the model
/// service's (`run/model.sock`).
pub const RUN_DIR: &str = "run";
pub const COMPONENTS_DIR: &str = "components";
pub const CTL_LOCK_FILE: &str = ".n0m1ctl.lock";
pub const MODELS_DIR: &str = "models";
/// The model service's socket in `run/`.
pub const MODEL_SOCKET_FILE: &str = "model.sock";
/// The web server's bearer token (32 random bytes in hex, mode 0600).
pub const WEB_TOKEN_FILE: &str = "web.token";
/// n0m1_web's self-signed certificate and its key (`web.tls = "self-signed"`), PEM, 0600.
pub const WEB_CERT_FILE: &str = "web.crt";
pub const WEB_KEY_FILE: &str = "web.key";
/// Boot's own log, as the original named it.
pub const BOOT_LOG_STEM: &str = "boot_system_daemon";
/// The log writer: its binary, PID file stem and log stem.
pub const LOGD_STEM: &str = "n0m1_logd";
/// The side log of the alerter's exec hooks (`logs/n0m1_alerts.hooks`).
pub const ALERT_HOOKS_LOG: &str = "n0m1_alerts.hooks";
/// Boot's PID file stem (`pids/boot_system.pid`).
pub const BOOT_PID_STEM: &str = "boot_system";

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error("no home folder: pass --home DIR or set {ENV_HOME} (and $HOME is not set either)")]
    NoHome,
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid component id {id:?}: {reason}")]
    BadComponentId { id: String, reason: &'static str },
}

/// Whose output a log FIFO carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogOwner {
    Component,
    Manager,
    /// One file for both streams, `logs/<name>`: health probes (`<id>.probe`) and alert hooks
    /// (`n0m1_alerts.hooks`).
    Side,
}

/// The resolved home folder of one n0m1 installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

/// The `--home DIR` flag of every binary (flatten it into the binary's arguments); global,
/// so a command-line tool takes it before or after its subcommand.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct HomeArg {
    /// The n0m1 home folder (default: $N0M1_HOME, else ~/n0m1_agi).
    #[arg(long = "home", global = true, value_name = "DIR")]
    pub path: Option<PathBuf>,
}

impl HomeArg {
    /// The home the flag, `$N0M1_HOME` or `$HOME` names.
    pub fn resolve(&self) -> Result<Home, HomeError> {
        Home::resolve(self.path.as_deref())
    }
}

impl Home {
    /// `--home DIR` beats `N0M1_HOME`, which beats `~/n0m1_agi`.
    pub fn resolve(flag: Option<&Path>) -> Result<Home, HomeError> {
        let env_home = std::env::var_os(ENV_HOME).filter(|value| !value.is_empty());
        let user_home = std::env::var_os("HOME").filter(|value| !value.is_empty());
        Self::resolve_from(
            flag,
            env_home.as_deref().map(Path::new),
            user_home.as_deref().map(Path::new),
        )
    }

    fn resolve_from(
        flag: Option<&Path>,
        env_home: Option<&Path>,
        user_home: Option<&Path>,
    ) -> Result<Home, HomeError> {
        let root = match (flag, env_home, user_home) {
            (Some(dir), _, _) => dir.to_path_buf(),
            (None, Some(dir), _) => dir.to_path_buf(),
            (None, None, Some(home)) => home.join(DEFAULT_HOME_DIR),
            (None, None, None) => return Err(HomeError::NoHome),
        };
        // Children get N0M1_HOME from this path, and they may run with another working
        // directory, so a relative path must be made absolute once, here.
        let root = if root.is_absolute() {
            root
        } else {
            std::env::current_dir()
                .map_err(|source| HomeError::Io {
                    path: root.clone(),
                    action: "resolve",
                    source,
                })?
                .join(root)
        };
        Ok(Home { root })
    }

    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Creates the home and its folders, private to the user (0700). Existing folders keep
    /// their contents; the home itself is tightened to 0700 because it holds the database.
    pub fn ensure(&self) -> Result<(), HomeError> {
        let mut builder = DirBuilder::new();
        builder.recursive(true).mode(0o700);
        for dir in [
            self.root.clone(),
            self.logs_dir(),
            self.manager_logs_dir(),
            self.pids_dir(),
            self.run_dir(),
            self.log_fifos_dir(),
            self.hooks_dir(),
            self.components_dir(),
        ] {
            builder.create(&dir).map_err(|source| HomeError::Io {
                path: dir.clone(),
                action: "create folder",
                source,
            })?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(|source| {
            HomeError::Io {
                path: self.root.clone(),
                action: "set permissions of",
                source,
            }
        })?;
        Ok(())
    }

    /// Lets a component that runs as another account reach what it needs: the home, its
    /// `components/` and `run/` become traversable but not listable (0711), so it can start
    /// its script in its working directory and send sd_notify datagrams to `socket` (made
    /// writable by all: a datagram counts only from a component's own process group). The
    /// database, the token and the logs stay 0600, out of its reach.
    pub fn open_to_other_accounts(&self, socket: Option<&Path>) -> Result<(), HomeError> {
        let traversable = [self.root.clone(), self.components_dir(), self.run_dir()];
        let modes = traversable
            .iter()
            .map(|dir| (dir.as_path(), 0o711))
            .chain(socket.map(|socket| (socket, 0o666)));
        for (path, mode) in modes {
            fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
                HomeError::Io {
                    path: path.to_owned(),
                    action: "set permissions of",
                    source,
                }
            })?;
        }
        Ok(())
    }

    pub fn db_path(&self) -> PathBuf {
        self.root.join(DB_FILE)
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    pub fn logs_dir(&self) -> PathBuf {
        self.root.join(LOGS_DIR)
    }
    pub fn manager_logs_dir(&self) -> PathBuf {
        self.root.join(MANAGER_LOGS_DIR)
    }
    pub fn pids_dir(&self) -> PathBuf {
        self.root.join(PIDS_DIR)
    }
    pub fn hooks_dir(&self) -> PathBuf {
        self.root.join(HOOKS_DIR)
    }
    /// Where a component's probe runs write their output.
    pub fn probe_log(&self, component_id: &str) -> PathBuf {
        self.logs_dir().join(self.probe_log_name(component_id))
    }
    /// The side log's name of a component's health probe.
    pub fn probe_log_name(&self, component_id: &str) -> String {
        format!("{component_id}.probe")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.root.join(RUN_DIR)
    }
    /// The FIFOs the log writer reads: `run/logs/c.<id>.out|err` for components,
    /// `run/logs/m.<stem>.out|err` for managers and `run/logs/s.<name>.out` for side logs.
    pub fn log_fifos_dir(&self) -> PathBuf {
        self.run_dir().join("logs")
    }
    pub fn log_fifo(&self, owner: LogOwner, stem: &str, stderr: bool) -> PathBuf {
        let kind = match owner {
            LogOwner::Component => "c",
            LogOwner::Manager => "m",
            LogOwner::Side => "s",
        };
        let stream = if stderr { "err" } else { "out" };
        self.log_fifos_dir().join(format!("{kind}.{stem}.{stream}"))
    }
    /// The log file a FIFO of `log_fifos_dir` is written to, by its name; `None` for a name
    /// that is not one of ours.
    pub fn log_target(&self, fifo_name: &str) -> Option<PathBuf> {
        let (kind, rest) = fifo_name.split_once('.')?;
        let (stem, stream) = rest.rsplit_once('.')?;
        validate_component_id(stem).ok()?;
        let (stdout, stderr) = match kind {
            "c" => self.component_logs(stem),
            "m" => self.manager_logs(stem),
            "s" if stream == "out" => return Some(self.logs_dir().join(stem)),
            _ => return None,
        };
        match stream {
            "out" => Some(stdout),
            "err" => Some(stderr),
            _ => None,
        }
    }
    /// The socket a manager's components send sd_notify datagrams to.
    pub fn notify_socket(&self, manager: &str) -> PathBuf {
        self.run_dir().join(format!("{manager}.notify"))
    }
    /// The model service's socket (mode 0600): model components ask it for completions, so
    /// one loaded copy of each model serves them all.
    pub fn model_socket(&self) -> PathBuf {
        self.run_dir().join(MODEL_SOCKET_FILE)
    }
    /// Held (flock) by `n0m1ctl start`, `stop` and `restart` for as long as they run, so they
    /// take turns: a start issued during a stop waits for it, and racing starts see the
    /// winner's system instead of failing.
    pub fn ctl_lock(&self) -> PathBuf {
        self.root.join(CTL_LOCK_FILE)
    }
    pub fn components_dir(&self) -> PathBuf {
        self.root.join(COMPONENTS_DIR)
    }
    pub fn web_token(&self) -> PathBuf {
        self.root.join(WEB_TOKEN_FILE)
    }
    /// The log writer's report of a full disk (`disk_report`), read by boot.
    pub fn disk_report(&self) -> PathBuf {
        self.run_dir().join("logd.disk")
    }
    pub fn web_cert(&self) -> PathBuf {
        self.root.join(WEB_CERT_FILE)
    }
    pub fn web_key(&self) -> PathBuf {
        self.root.join(WEB_KEY_FILE)
    }
    pub fn models_dir(&self) -> PathBuf {
        self.root.join(MODELS_DIR)
    }

    /// `pids/<stem>.pid`, for components, managers and boot alike.
    pub fn pid_file(&self, stem: &str) -> PathBuf {
        self.pids_dir().join(format!("{stem}.pid"))
    }
    pub fn boot_pid_file(&self) -> PathBuf {
        self.pid_file(BOOT_PID_STEM)
    }
    /// `pids/database.id`: the device and inode of the database file the running boot opened,
    /// so a command can tell when the file at `db_path` is no longer that one.
    pub fn running_database_record(&self) -> PathBuf {
        self.pids_dir().join("database.id")
    }
    /// `logs/<id>.log` (stdout) and `logs/<id>.err` (stderr) of a component.
    pub fn component_logs(&self, component_id: &str) -> (PathBuf, PathBuf) {
        let dir = self.logs_dir();
        (
            dir.join(format!("{component_id}.log")),
            dir.join(format!("{component_id}.err")),
        )
    }
    /// `logs_managers/<name>.log` and `.err` of a manager or of boot.
    pub fn manager_logs(&self, stem: &str) -> (PathBuf, PathBuf) {
        let dir = self.manager_logs_dir();
        (
            dir.join(format!("{stem}.log")),
            dir.join(format!("{stem}.err")),
        )
    }
}

/// Component ids become file names (`pids/<id>.pid`, `logs/<id>.log`), so they must not be
/// able to name a path outside those folders.
pub fn validate_component_id(id: &str) -> Result<(), HomeError> {
    let bad = |reason| {
        Err(HomeError::BadComponentId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return bad("it is empty");
    }
    if id.len() > 128 {
        return bad("it is longer than 128 characters");
    }
    if id.starts_with('.') || id.starts_with('-') {
        return bad("it starts with '.' or '-'");
    }
    if !id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return bad("only letters, digits, '_', '-' and '.' are allowed");
    }
    Ok(())
}

/// Checks an id a manager is asked to supervise: a valid component id that is not one of the
/// names n0m1 uses for its own PID files (a component called `nano_manager` would take over
/// that manager's PID file, and boot would restart the manager forever).
pub fn validate_supervised_id(id: &str) -> Result<(), HomeError> {
    validate_component_id(id)?;
    if id == BOOT_PID_STEM || crate::schema::MANAGERS.contains(&id) {
        return Err(HomeError::BadComponentId {
            id: id.to_owned(),
            reason: "it is reserved: n0m1 uses it for its own PID file; rename the row",
        });
    }
    Ok(())
}

/// What a file of type `kind` is when it is not a regular file (`a FIFO`, `a directory`, …),
/// for refusals that name it; `None` for a regular file.
pub fn not_a_regular_file(kind: &fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    Some(if kind.is_file() {
        return None;
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a regular file"
    })
}

/// Opens a file for appending, creating it private to the user (0600). Used for every log
/// file the system writes, so logs that may hold model output are never world-readable.
pub fn open_private_append(path: &Path) -> Result<fs::File, HomeError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| HomeError::Io {
            path: path.to_path_buf(),
            action: "open",
            source,
        })
}

/// Writes `bytes` to `path` (created 0600, or truncated), for what only the home's owner may
/// read: keys, certificates, exported stacks.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), HomeError> {
    use std::io::Write;
    let io = |source| HomeError::Io {
        path: path.to_path_buf(),
        action: "write",
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(flag: Option<&str>, env: Option<&str>, user: Option<&str>, expected: Option<&str>) {
        let got = Home::resolve_from(flag.map(Path::new), env.map(Path::new), user.map(Path::new));
        match expected {
            Some(path) => assert_eq!(got.unwrap().root(), Path::new(path)),
            None => assert!(matches!(got, Err(HomeError::NoHome))),
        }
    }

    #[test]
    fn flag_beats_env_beats_user_home() {
        check(Some("/a"), Some("/b"), Some("/c"), Some("/a"));
        check(None, Some("/b"), Some("/c"), Some("/b"));
        check(None, None, Some("/c"), Some("/c/n0m1_agi"));
        check(None, None, None, None);
    }

    #[test]
    fn relative_home_is_made_absolute() {
        let got = Home::resolve_from(Some(Path::new("rel")), None, None).unwrap();
        assert!(got.root().is_absolute());
        assert!(got.root().ends_with("rel"));
    }

    #[test]
    fn ensure_creates_private_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("home"));
        home.ensure().unwrap();
        for dir in [
            home.root().to_path_buf(),
            home.logs_dir(),
            home.pids_dir(),
            home.components_dir(),
        ] {
            let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
        let log = open_private_append(&home.component_logs("x").0).unwrap();
        assert_eq!(log.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn component_ids_cannot_escape_folders() {
        for good in ["cpu_usage_daemon", "nano_cpu-temp.2"] {
            validate_component_id(good).unwrap();
        }
        for bad in ["", "../x", "a/b", ".hidden", "-rf", "a b", "x;rm"] {
            assert!(validate_component_id(bad).is_err(), "{bad}");
        }
    }
}
