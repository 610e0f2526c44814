//! The one way every n0m1 binary opens the database.
//!
//! Settings chosen for many small writers on one file: `busy_timeout` first (so even the
//! pragmas below wait for a lock instead of failing), WAL (switched on once by init; racing
//! processes switching it on a fresh file fail), `synchronous=NORMAL`, foreign keys on.

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::schema;

/// How long a statement waits for another writer before it reports the database as busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {path} does not exist: run `n0m1ctl init` (or init_database) first")]
    Missing { path: PathBuf },
    #[error(
        "{path} is not an SQLite database (corrupt or another kind of file): move it aside and run `n0m1ctl init`"
    )]
    NotADatabase { path: PathBuf },
    #[error(
        "{path} is an SQLite database but not an n0m1 one (no {table} table): point --home or N0M1_HOME at an n0m1 home"
    )]
    NotN0m1 { path: PathBuf, table: &'static str },
    #[error(
        "database {path} has schema version {found}, older than this n0m1's {expected}: run `n0m1ctl init` to upgrade it"
    )]
    Outdated {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error(
        "database {path} has schema version {found}, newer than this n0m1's {expected}: use a newer n0m1"
    )]
    TooNew {
        path: PathBuf,
        found: usize,
        expected: usize,
    },
    #[error("cannot migrate database {path}: {source}")]
    Migration {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} was {change} after this process opened it (as file {was}): stopping rather than writing into a file nobody reads; start the system again with `n0m1ctl start`"
    )]
    Replaced {
        path: PathBuf,
        was: FileId,
        change: FileChange,
    },
    #[error(
        "the running system (boot_system pid {boot_pid}) uses another database than {path} (it opened file {running}; {path} is now {current}): the file was deleted or replaced while it ran; run `n0m1ctl stop`, then `n0m1ctl start`"
    )]
    RunningOnAnotherFile {
        path: PathBuf,
        boot_pid: i32,
        running: FileId,
        current: FileChange,
    },
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl DbError {
    /// True when the error is a lock held by another writer that outlasted `BUSY_TIMEOUT`:
    /// callers that must not lose data retry on it.
    pub fn is_busy(&self) -> bool {
        matches!(self, DbError::Sqlite { source, .. } if is_busy(source))
    }
}

/// True for errors that go away by themselves (another writer's lock, a full disk): a write
/// that fails with one is kept and tried again, never dropped.
pub fn is_transient(error: &rusqlite::Error) -> bool {
    is_busy(error) || error.sqlite_error_code() == Some(ErrorCode::DiskFull)
}

/// True for SQLITE_BUSY / SQLITE_LOCKED.
pub fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked)
    )
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> DbError + '_ {
    move |source| {
        if source.sqlite_error_code() == Some(ErrorCode::NotADatabase) {
            DbError::NotADatabase {
                path: path.to_path_buf(),
            }
        } else {
            DbError::Sqlite {
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

fn configure(conn: &Connection, path: &Path) -> Result<(), DbError> {
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite(path))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(sqlite(path))?;
    Ok(())
}

fn user_version(conn: &Connection, path: &Path) -> Result<usize, DbError> {
    conn.query_row("PRAGMA user_version", [], |row| row.get::<_, i64>(0))
        .map(|v| v.max(0) as usize)
        .map_err(sqlite(path))
}

fn has_table(conn: &Connection, path: &Path, table: &str) -> Result<bool, DbError> {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        [table],
        |row| row.get::<_, i64>(0),
    )
    .map(|n| n > 0)
    .map_err(sqlite(path))
}

/// Opens an existing, current n0m1 database. Used by every binary but init.
pub fn open(path: &Path) -> Result<Connection, DbError> {
    if !path.exists() {
        return Err(DbError::Missing {
            path: path.to_path_buf(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sqlite(path))?;
    configure(&conn, path)?;
    if !has_table(&conn, path, schema::AUTORUN_COMPONENTS)? {
        return Err(DbError::NotN0m1 {
            path: path.to_path_buf(),
            table: schema::AUTORUN_COMPONENTS,
        });
    }
    let found = user_version(&conn, path)?;
    let expected = schema::latest_version();
    if found < expected {
        return Err(DbError::Outdated {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    if found > expected {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found,
            expected,
        });
    }
    Ok(conn)
}

/// What `initialise` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitReport {
    pub created: bool,
    pub from_version: usize,
    pub to_version: usize,
    pub default_rows_inserted: usize,
    /// Tables that were missing from a current database and were recreated.
    pub tables_repaired: usize,
}

/// Creates or upgrades the database at `path` and inserts missing default rows. Safe to run
/// again: applied migrations are skipped and existing rows are kept.
pub fn initialise(path: &Path) -> Result<(Connection, InitReport), DbError> {
    let created = !path.exists();
    if created {
        // Create the file ourselves so it is 0600 from its first byte; SQLite gives the -wal
        // and -shm files the database file's permissions.
        OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| DbError::Io {
                path: path.to_path_buf(),
                action: "create",
                source,
            })?;
    } else {
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
            DbError::Io {
                path: path.to_path_buf(),
                action: "set permissions of",
                source,
            }
        })?;
    }
    let mut conn = Connection::open(path).map_err(sqlite(path))?;
    configure(&conn, path)?;
    // Reading the schema is the first thing that notices a file that is not a database.
    let from_version = user_version(&conn, path)?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .map_err(sqlite(path))?;
    if from_version == 0 && tables > 0 && !has_table(&conn, path, schema::AUTORUN_COMPONENTS)? {
        return Err(DbError::NotN0m1 {
            path: path.to_path_buf(),
            table: schema::AUTORUN_COMPONENTS,
        });
    }
    if from_version > schema::latest_version() {
        return Err(DbError::TooNew {
            path: path.to_path_buf(),
            found: from_version,
            expected: schema::latest_version(),
        });
    }
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(sqlite(path))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "database did not switch to WAL");
    }
    schema::migrations()
        .to_latest(&mut conn)
        .map_err(|source| DbError::Migration {
            path: path.to_path_buf(),
            source,
        })?;
    let tables_repaired = schema::repair(&conn).map_err(sqlite(path))?;
    let default_rows_inserted = crate::defaults::insert_defaults(&conn).map_err(sqlite(path))?;
    let to_version = user_version(&conn, path)?;
    Ok((
        conn,
        InitReport {
            created,
            from_version,
            to_version,
            default_rows_inserted,
            tables_repaired,
        },
    ))
}

/// Deletes the database and its WAL files (for `init --reset --yes`).
pub fn remove(path: &Path) -> Result<(), DbError> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DbError::Io {
                    path: file,
                    action: "remove",
                    source,
                });
            }
        }
    }
    Ok(())
}

/// A file's identity (device and inode): a path that names another file has another one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.dev, self.ino)
    }
}

impl std::str::FromStr for FileId {
    type Err = ();
    fn from_str(text: &str) -> Result<FileId, ()> {
        let (dev, ino) = text.trim().split_once(':').ok_or(())?;
        Ok(FileId {
            dev: dev.parse().map_err(|_| ())?,
            ino: ino.parse().map_err(|_| ())?,
        })
    }
}

impl FileId {
    /// The identity of the file `path` names now; `None` when nothing is there.
    pub fn of(path: &Path) -> std::io::Result<Option<FileId>> {
        match fs::metadata(path) {
            Ok(meta) => Ok(Some(FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            })),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }
}

/// What became of a database path since a process opened it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileChange {
    Deleted,
    ReplacedBy(FileId),
}

impl fmt::Display for FileChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileChange::Deleted => f.write_str("deleted"),
            FileChange::ReplacedBy(id) => write!(f, "replaced by another file ({id})"),
        }
    }
}

/// What became of the file `path` named when it had identity `was`; `None` when it is the
/// same file (or the path cannot be looked at: an unreadable folder is no evidence).
fn change_since(path: &Path, was: FileId) -> Option<FileChange> {
    match FileId::of(path) {
        Ok(Some(id)) if id == was => None,
        Ok(Some(id)) => Some(FileChange::ReplacedBy(id)),
        Ok(None) => Some(FileChange::Deleted),
        Err(_) => None,
    }
}

/// The database file a long-running process works on. SQLite keeps writing into an unlinked
/// file without complaint, so processes check now and then that the path still names it.
#[derive(Debug, Clone)]
pub struct DatabaseFile {
    path: PathBuf,
    id: FileId,
}

impl DatabaseFile {
    /// Remembers the file `path` names now (call right after opening it).
    pub fn capture(path: &Path) -> Result<DatabaseFile, DbError> {
        let io = |source| DbError::Io {
            path: path.to_path_buf(),
            action: "stat",
            source,
        };
        let id = FileId::of(path)
            .map_err(io)?
            .ok_or_else(|| DbError::Missing {
                path: path.to_path_buf(),
            })?;
        Ok(DatabaseFile {
            path: path.to_path_buf(),
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn id(&self) -> FileId {
        self.id
    }

    /// What happened to the file since `capture`, if anything (one `stat`).
    pub fn change(&self) -> Option<FileChange> {
        change_since(&self.path, self.id)
    }

    /// `Err(Replaced)` once the path names another file or none.
    pub fn check(&self) -> Result<(), DbError> {
        match self.change() {
            None => Ok(()),
            Some(change) => Err(DbError::Replaced {
                path: self.path.clone(),
                was: self.id,
                change,
            }),
        }
    }

    /// Writes the identity to `record` (0600), so other commands can tell which file the
    /// running system works on.
    pub fn record(&self, record: &Path) -> Result<(), DbError> {
        let io = |source| DbError::Io {
            path: record.to_path_buf(),
            action: "write",
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(record)
            .map_err(io)?;
        writeln!(file, "{}", self.id).map_err(io)
    }

    /// `Err(RunningOnAnotherFile)` when a running boot (`boot_pid`) recorded, in `record`, a
    /// database file other than the one at `path`.
    pub fn check_running(path: &Path, record: &Path, boot_pid: i32) -> Result<(), DbError> {
        let Some(running) = fs::read_to_string(record)
            .ok()
            .and_then(|text| text.parse::<FileId>().ok())
        else {
            return Ok(());
        };
        let Some(current) = change_since(path, running) else {
            return Ok(());
        };
        Err(DbError::RunningOnAnotherFile {
            path: path.to_path_buf(),
            boot_pid,
            running,
            current,
        })
    }
}

/// Runs `operation` again while the database stays busy, up to `attempts` times. For writes
/// that must not be lost (metric samples, lifecycle events) when a writer holds the lock
/// longer than `BUSY_TIMEOUT`.
pub fn retry_busy<T>(
    attempts: u32,
    mut operation: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let mut attempt = 1;
    loop {
        match operation() {
            Err(error) if is_busy(&error) && attempt < attempts => {
                attempt += 1;
                tracing::warn!(attempt, "database busy, retrying");
            }
            other => return other,
        }
    }
}

/// Deletes the rows of `table` whose `column` (a timestamp) is more than `age_secs` old,
/// oldest first, `batch` rows per statement so no statement holds the write lock long;
/// returns how many went. The owner of each table calls it (`lifecycle::prune`, …).
pub fn prune_older_than(
    conn: &Connection,
    table: &str,
    column: &str,
    age_secs: i64,
    batch: usize,
) -> rusqlite::Result<usize> {
    let sql = format!(
        "DELETE FROM {table} WHERE id IN (SELECT id FROM {table}
         WHERE {column} < datetime('now', ?1) ORDER BY id LIMIT {batch})"
    );
    let mut total = 0;
    loop {
        let deleted = conn.execute(&sql, [format!("-{age_secs} seconds")])?;
        total += deleted;
        if deleted < batch {
            return Ok(total);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_database_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n0m1.db");
        initialise(&path).unwrap();
        let file = DatabaseFile::capture(&path).unwrap();
        assert_eq!(file.change(), None);
        let record = dir.path().join("database.id");
        file.record(&record).unwrap();
        DatabaseFile::check_running(&path, &record, 1).unwrap();

        fs::rename(&path, dir.path().join("moved.db")).unwrap();
        assert_eq!(file.change(), Some(FileChange::Deleted));
        let error = file.check().unwrap_err().to_string();
        assert!(
            error.contains("was deleted") && error.contains("n0m1ctl start"),
            "{error}"
        );

        initialise(&path).unwrap();
        assert!(matches!(file.change(), Some(FileChange::ReplacedBy(id)) if id != file.id()));
        let error = DatabaseFile::check_running(&path, &record, 42)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("boot_system pid 42") && error.contains("n0m1ctl stop"),
            "{error}"
        );
    }

    #[test]
    fn initialise_twice_changes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("n0m1_agi.db");
        let (_, first) = initialise(&path).unwrap();
        assert!(first.created);
        assert_eq!(first.to_version, schema::latest_version());
        let (_, second) = initialise(&path).unwrap();
        assert!(!second.created);
        assert_eq!(second.default_rows_inserted, 0);
        assert_eq!(second.from_version, second.to_version);
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let conn = open(&path).unwrap();
        let journal: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    #[test]
    fn open_names_the_file_and_the_fix() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("none.db");
        let message = open(&missing).unwrap_err().to_string();
        assert!(
            message.contains("none.db") && message.contains("n0m1ctl init"),
            "{message}"
        );

        let garbage = tmp.path().join("garbage.db");
        fs::write(&garbage, vec![0x5a; 4096]).unwrap();
        assert!(matches!(open(&garbage), Err(DbError::NotADatabase { .. })));
        assert!(matches!(
            initialise(&garbage),
            Err(DbError::NotADatabase { .. })
        ));

        let foreign = tmp.path().join("foreign.db");
        Connection::open(&foreign)
            .unwrap()
            .execute("CREATE TABLE t (x)", [])
            .unwrap();
        assert!(matches!(open(&foreign), Err(DbError::NotN0m1 { .. })));
        assert!(matches!(initialise(&foreign), Err(DbError::NotN0m1 { .. })));
    }

    #[test]
    fn open_refuses_an_outdated_schema() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        schema::migrations().to_version(&mut conn, 1).unwrap();
        drop(conn);
        assert!(matches!(
            open(&path),
            Err(DbError::Outdated { found: 1, .. })
        ));
    }

    #[test]
    fn retry_busy_gives_up_after_attempts() {
        let mut calls = 0;
        let result: rusqlite::Result<()> = retry_busy(3, || {
            calls += 1;
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                None,
            ))
        });
        assert!(result.is_err());
        assert_eq!(calls, 3);
    }
}
