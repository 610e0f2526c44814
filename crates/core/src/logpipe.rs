//! Log capture through the log writer (`n0m1_logd`): a process's stdout and stderr are FIFOs
//! in `run/logs/`, read by the log writer, which rotates the files. Whoever spawns a process
//! (boot for managers, a manager for components) holds each FIFO open for reading and
//! writing without reading it: opening the write end never blocks, and a writer never gets
//! SIGPIPE, even while the log writer restarts; what is written meanwhile waits in the pipe.
//! Whoever spawns next (a restarted manager) simply opens the FIFO again: the log writer has
//! held it all along, so a manager's death loses no line.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use rustix::fs::{Mode, OFlags};

use crate::home::{Home, LOGD_STEM, LogOwner};
use crate::pidfile::PidFile;

/// What a pipe holds before writers block, when the log writer is slow or restarting.
pub const PIPE_BYTES: usize = 1 << 20;

/// The FIFOs one spawner holds, by stem.
#[derive(Default)]
pub struct LogPipes {
    held: HashMap<(String, bool), OwnedFd>,
}

impl LogPipes {
    /// The stdout and stderr a process of `stem` is started with: its FIFOs when the log
    /// writer runs or is on its way (`via_writer`: under boot, which starts it first; created
    /// and held here), else its log files written directly.
    pub fn paths(
        &mut self,
        home: &Home,
        owner: LogOwner,
        stem: &str,
        via_writer: bool,
    ) -> (PathBuf, PathBuf) {
        let files = || match owner {
            LogOwner::Component => home.component_logs(stem),
            LogOwner::Manager => home.manager_logs(stem),
            LogOwner::Side => {
                let file = home.logs_dir().join(stem);
                (file.clone(), file)
            }
        };
        if !via_writer {
            return files();
        }
        let mut fifos = Vec::with_capacity(2);
        for stderr in [false, true] {
            let path = home.log_fifo(owner, stem, stderr);
            match self.hold(&path, (stem.to_owned(), stderr)) {
                Ok(()) => fifos.push(path),
                Err(error) => {
                    tracing::warn!(
                        "cannot use log FIFO {}: {error}; writing {stem}'s log directly",
                        path.display()
                    );
                    return files();
                }
            }
        }
        // The log writer creates a file at its first line; `tail -f logs/<id>.log` must work
        // from the start, and for a component that never writes to one of the two streams.
        let (out, err) = files();
        for file in [&out, &err] {
            if let Err(error) = crate::home::open_private_append(file) {
                tracing::warn!("{error}");
            }
        }
        (fifos[0].clone(), fifos[1].clone())
    }

    /// Where a short-lived helper (a health probe, an alert hook) writes both its streams:
    /// the side log `logs/<name>`, through the log writer when it runs (`via_writer`), so it
    /// is bounded and rotated like every log. Without the log writer, the file itself,
    /// rotated first when it has passed `settings.max_bytes`.
    pub fn side_path(
        &mut self,
        home: &Home,
        name: &str,
        via_writer: bool,
        settings: &crate::config::LogSettings,
    ) -> PathBuf {
        let file = home.logs_dir().join(name);
        let fifo = home.log_fifo(LogOwner::Side, name, false);
        // A name the log writer would not read must not get a FIFO nobody drains.
        let readable = fifo
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| home.log_target(n))
            .is_some();
        if via_writer && readable {
            match self.hold(&fifo, (format!("s.{name}"), false)) {
                Ok(()) => {
                    if let Err(error) = crate::home::open_private_append(&file) {
                        tracing::warn!("{error}");
                    }
                    return fifo;
                }
                Err(error) => tracing::warn!(
                    "cannot use log FIFO {}: {error}; writing {name} directly",
                    fifo.display()
                ),
            }
        }
        if std::fs::metadata(&file).is_ok_and(|m| m.len() > settings.max_bytes)
            && let Err(error) = rotate(&file, settings.keep)
        {
            tracing::warn!("cannot rotate {}: {error}", file.display());
        }
        file
    }

    fn hold(&mut self, path: &std::path::Path, key: (String, bool)) -> std::io::Result<()> {
        if self.held.contains_key(&key) && is_fifo(path) {
            return Ok(());
        }
        if !is_fifo(path) {
            let _ = std::fs::remove_file(path);
            match rustix::fs::mkfifoat(rustix::fs::CWD, path, Mode::RUSR | Mode::WUSR) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(error) => return Err(error.into()),
            }
        }
        let fd = open_fifo(path)?;
        self.held.insert(key, fd);
        Ok(())
    }
}

/// Opens a FIFO for reading and writing, non-blocking (never EOF, never blocks), with a
/// large pipe.
pub fn open_fifo(path: &std::path::Path) -> std::io::Result<OwnedFd> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )?;
    let _ = rustix::pipe::fcntl_setpipe_size(&fd, PIPE_BYTES);
    Ok(fd)
}

pub fn is_fifo(path: &std::path::Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// True while the log writer holds its PID file.
pub fn log_writer_running(home: &Home) -> bool {
    PidFile::inspect(&home.pid_file(LOGD_STEM)).is_ok_and(|status| status.live_pid().is_some())
}

/// Rotates `target`: `<target>.<k>` → `<target>.<k+1>` down to `<target>` → `<target>.1`;
/// the oldest beyond `keep` is overwritten (with `keep` 0, `target` is removed). Never
/// copytruncate: a writer still holding the old file keeps writing into `<target>.1`.
pub fn rotate(target: &std::path::Path, keep: u32) -> std::io::Result<()> {
    let numbered = |k: u32| PathBuf::from(format!("{}.{k}", target.display()));
    if keep == 0 {
        return match std::fs::remove_file(target) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        };
    }
    for k in (1..keep).rev() {
        match std::fs::rename(numbered(k), numbered(k + 1)) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
    }
    std::fs::rename(target, numbered(1))
}

/// For a process whose stdout and stderr are its own log files (boot started by
/// `n0m1ctl start`): once a file passes `max_bytes`, rotate it and point the descriptor at
/// a fresh one. Output that is not such a file (systemd's journal, a terminal) is left alone.
pub fn rotate_own_output(
    stdout: &std::path::Path,
    stderr: &std::path::Path,
    max_bytes: u64,
    keep: u32,
) {
    use std::os::unix::fs::MetadataExt;
    for (path, is_stderr) in [(stdout, false), (stderr, true)] {
        let fd = if is_stderr {
            rustix::stdio::stderr()
        } else {
            rustix::stdio::stdout()
        };
        let Ok(stat) = rustix::fs::fstat(fd) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            continue;
        };
        let same_file = meta.ino() == stat.st_ino && meta.dev() == stat.st_dev;
        if !same_file || !meta.is_file() || meta.len() <= max_bytes {
            continue;
        }
        if let Err(error) = rotate(path, keep) {
            tracing::warn!("cannot rotate {}: {error}", path.display());
            continue;
        }
        match crate::home::open_private_append(path) {
            Ok(file) => {
                let moved = if is_stderr {
                    rustix::stdio::dup2_stderr(&file)
                } else {
                    rustix::stdio::dup2_stdout(&file)
                };
                if let Err(error) = moved {
                    tracing::warn!("cannot reopen {}: {error}", path.display());
                }
            }
            Err(error) => tracing::warn!("cannot reopen {}: {error}", path.display()),
        }
    }
}

/// The last `n` lines of a log file of `size` bytes (lossy UTF-8), reading only its end.
pub fn last_lines(file: &mut std::fs::File, size: u64, n: usize) -> std::io::Result<String> {
    use std::io::{Read, Seek, SeekFrom};
    let window = (n as u64 + 1) * 512;
    let start = size.saturating_sub(window.max(64 * 1024));
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.take(size - start).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    Ok(lines[lines.len().saturating_sub(n)..].join("\n"))
}
