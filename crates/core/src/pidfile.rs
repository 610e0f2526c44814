//! PID files that cannot race.
//!
//! The owner opens `pids/<name>.pid`, takes an exclusive `flock` with `File::try_lock`, and only
//! then writes the pid; the lock lives as long as the open `File`. The lock, not the file's
//! existence or the pid in it, is the truth: a file whose lock is free is stale, whatever pid it
//! names (on these machines an exited, unreaped process still answers `kill(pid, 0)`).
//! Descriptors are opened close-on-exec, so a child never inherits a lock it does not own.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum PidError {
    #[error("already running (pid {pid}): {path} is locked")]
    AlreadyRunning { pid: String, path: PathBuf },
    #[error("cannot {action} {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What a look at a PID file found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidStatus {
    /// No file.
    Absent,
    /// The file is locked by a live owner; the pid it holds (`None` if not yet written).
    Live { pid: Option<i32> },
    /// The file exists but nobody holds its lock: whatever pid it names is not to be trusted.
    Stale { pid: Option<i32> },
}

/// A locked PID file; the lock is released when this is dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    file: File,
}

fn io<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> PidError + 'a {
    move |source| PidError::Io {
        path: path.to_path_buf(),
        action,
        source,
    }
}

fn parse_pid(text: &str) -> Option<i32> {
    text.lines()
        .next()?
        .trim()
        .parse()
        .ok()
        .filter(|pid: &i32| *pid > 0)
}

impl PidFile {
    /// Locks `path` and writes this process's pid into it.
    pub fn acquire(path: &Path) -> Result<PidFile, PidError> {
        Self::acquire_for(path, std::process::id() as i32)
    }

    /// Locks `path` and writes `pid` into it: a manager holds its components' PID files this
    /// way, so the lock is free exactly when no manager watches the component.
    pub fn acquire_for(path: &Path, pid: i32) -> Result<PidFile, PidError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io(path, "open"))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let pid = parse_pid(&text).map_or_else(|| "unknown".to_owned(), |p| p.to_string());
                return Err(PidError::AlreadyRunning {
                    pid,
                    path: path.to_path_buf(),
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(path, "lock")(source)),
        }
        let mut pid_file = PidFile {
            path: path.to_path_buf(),
            file,
        };
        pid_file.write_pid(pid)?;
        Ok(pid_file)
    }

    fn write_pid(&mut self, pid: i32) -> Result<(), PidError> {
        let path = &self.path;
        self.file.set_len(0).map_err(io(path, "truncate"))?;
        self.file
            .seek(SeekFrom::Start(0))
            .map_err(io(path, "seek"))?;
        self.file
            .write_all(format!("{pid}\n").as_bytes())
            .map_err(io(path, "write"))?;
        self.file.flush().map_err(io(path, "write"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Marks the owner as alive now (the file's mtime); boot reads it as a heartbeat.
    pub fn touch(&self) -> Result<(), PidError> {
        self.file
            .set_modified(SystemTime::now())
            .map_err(io(&self.path, "touch"))
    }

    /// Removes the file, then releases the lock (in that order, so no one sees an unlocked
    /// file that is about to vanish and mistakes it for stale).
    pub fn remove(self) {
        let _ = fs::remove_file(&self.path);
    }

    /// Removes the file now and returns its descriptor, still locked, for the caller to close
    /// when it has time: closing the last descriptor of a removed file is when the file system
    /// frees it (a third of a millisecond on ext4), which a restart should not wait for.
    /// No one can mistake the still-locked file for stale: it has no name any more.
    pub fn unlink(self) -> File {
        let _ = fs::remove_file(&self.path);
        self.file
    }

    /// Looks at a PID file without disturbing its owner: a shared lock conflicts only with the
    /// owner's exclusive one, and is dropped at once.
    pub fn inspect(path: &Path) -> Result<PidStatus, PidError> {
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PidStatus::Absent);
            }
            Err(source) => return Err(io(path, "open")(source)),
        };
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(io(path, "read"))?;
        let pid = parse_pid(&text);
        match file.try_lock_shared() {
            Ok(()) => Ok(PidStatus::Stale { pid }),
            Err(TryLockError::WouldBlock) => {
                // The owner may have written the pid after our read.
                if pid.is_none() {
                    let mut again = String::new();
                    let _ = File::open(path).and_then(|mut f| f.read_to_string(&mut again));
                    return Ok(PidStatus::Live {
                        pid: parse_pid(&again),
                    });
                }
                Ok(PidStatus::Live { pid })
            }
            Err(TryLockError::Error(source)) => Err(io(path, "lock")(source)),
        }
    }

    /// The mtime of a PID file: the owner's last heartbeat.
    pub fn heartbeat(path: &Path) -> Option<SystemTime> {
        fs::metadata(path).and_then(|m| m.modified()).ok()
    }
}

impl PidStatus {
    pub fn live_pid(&self) -> Option<i32> {
        match self {
            PidStatus::Live { pid } => *pid,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_fails_while_first_is_held() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.pid");
        let held = PidFile::acquire_for(&path, 4242).unwrap();
        match PidFile::acquire(&path) {
            Err(PidError::AlreadyRunning { pid, .. }) => assert_eq!(pid, "4242"),
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        assert_eq!(
            PidFile::inspect(&path).unwrap(),
            PidStatus::Live { pid: Some(4242) }
        );
        drop(held);
        assert_eq!(
            PidFile::inspect(&path).unwrap(),
            PidStatus::Stale { pid: Some(4242) }
        );
        // A stale file is taken over, and the new pid replaces the old one entirely.
        let _again = PidFile::acquire_for(&path, 7).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "7\n");
    }

    #[test]
    fn removed_file_is_absent() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("y.pid");
        PidFile::acquire(&path).unwrap().remove();
        assert_eq!(PidFile::inspect(&path).unwrap(), PidStatus::Absent);
    }

    #[test]
    fn garbage_pid_is_stale_without_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("z.pid");
        fs::write(&path, "not a pid").unwrap();
        assert_eq!(
            PidFile::inspect(&path).unwrap(),
            PidStatus::Stale { pid: None }
        );
    }
}
