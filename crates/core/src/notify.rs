//! The sd_notify datagram protocol, both ends: components (and boot, under systemd) send
//! `READY=1`, `STATUS=…`, `WATCHDOG=1`, `STOPPING=1` to the socket named by `NOTIFY_SOCKET`;
//! a manager binds one socket for its components and reads who sent each datagram from
//! the kernel (`SCM_CREDENTIALS`), never from the message.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};

/// Where a program sends its notifications (systemd's name, so programs written for systemd
/// work unchanged).
pub const ENV_NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";
/// The watchdog period in microseconds, when one is asked for.
pub const ENV_WATCHDOG_USEC: &str = "WATCHDOG_USEC";
/// The pid the watchdog period is meant for (programs ignore it when it is not theirs).
pub const ENV_WATCHDOG_PID: &str = "WATCHDOG_PID";

/// A datagram larger than this is cut (systemd accepts about the same).
const MAX_DATAGRAM: usize = 4096;
/// The longest `STATUS=` text kept.
pub const MAX_STATUS_CHARS: usize = 200;

/// One assignment of a notification datagram that n0m1 acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Ready,
    Status(String),
    Watchdog,
    Stopping,
}

/// The notices in a datagram (`KEY=VALUE` lines); unknown keys are ignored, as systemd does.
pub fn parse(datagram: &[u8]) -> Vec<Notice> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=')? {
            ("READY", "1") => Some(Notice::Ready),
            ("WATCHDOG", "1") => Some(Notice::Watchdog),
            ("STOPPING", "1") => Some(Notice::Stopping),
            ("STATUS", text) => Some(Notice::Status(
                text.chars().take(MAX_STATUS_CHARS).collect(),
            )),
            _ => None,
        })
        .collect()
}

/// Sends `state` (for example `"READY=1"`) to `$NOTIFY_SOCKET`. Ok(false) when the variable
/// is unset: nobody asked to be told.
pub fn notify(state: &str) -> std::io::Result<bool> {
    let Some(target) = std::env::var_os(ENV_NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let target = target.to_string_lossy().into_owned();
    let socket = UnixDatagram::unbound()?;
    // '@' is systemd's spelling of the abstract namespace.
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        socket.send_to_addr(state.as_bytes(), &address)?;
    } else {
        socket.send_to(state.as_bytes(), &target)?;
    }
    Ok(true)
}

/// The watchdog period asked of this process (`WATCHDOG_USEC`, when `WATCHDOG_PID` is unset or
/// names us), as `sd_watchdog_enabled` reads it.
pub fn watchdog_period() -> Option<Duration> {
    if let Some(pid) = std::env::var_os(ENV_WATCHDOG_PID)
        && pid.to_string_lossy().parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    let usec: u64 = std::env::var(ENV_WATCHDOG_USEC).ok()?.parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Pings the watchdog from a program's own loop (never from a thread of its own: a hung loop
/// must stop the pings). `due` says when the next ping is owed.
#[derive(Debug)]
pub struct WatchdogPinger {
    every: Option<Duration>,
    next: std::time::Instant,
}

impl WatchdogPinger {
    /// Pings at half the period asked for, as systemd advises; no period, no pings.
    pub fn from_env() -> WatchdogPinger {
        WatchdogPinger {
            every: watchdog_period().map(|p| p / 2),
            next: std::time::Instant::now(),
        }
    }

    /// When the loop must wake for the next ping, if pings are asked for.
    pub fn due(&self) -> Option<std::time::Instant> {
        self.every.map(|_| self.next)
    }

    /// Sends `WATCHDOG=1` if one is due.
    pub fn ping_if_due(&mut self) {
        let Some(every) = self.every else {
            return;
        };
        let now = std::time::Instant::now();
        if now >= self.next {
            if let Err(error) = notify("WATCHDOG=1") {
                tracing::warn!("cannot ping the watchdog: {error}");
            }
            self.next = now + every;
        }
    }
}

/// The socket a manager receives its components' notifications on.
pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error(
        "notification socket path {path} is {len} bytes, longer than the 107 a Unix socket allows: use a shorter home path (readiness and watchdogs are off until then)"
    )]
    PathTooLong { path: PathBuf, len: usize },
    #[error("cannot {action} notification socket {path}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl NotifySocket {
    /// Binds `path` (replacing a stale socket left by a killed manager), private to the user
    /// (its folder is 0700), non-blocking, with sender credentials switched on.
    pub fn bind(path: &Path) -> Result<NotifySocket, NotifyError> {
        let len = path.as_os_str().len();
        if len > 107 {
            return Err(NotifyError::PathTooLong {
                path: path.to_path_buf(),
                len,
            });
        }
        let io = |action| {
            move |source| NotifyError::Io {
                path: path.to_path_buf(),
                action,
                source,
            }
        };
        match std::fs::remove_file(path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("remove the old")(error));
            }
            _ => {}
        }
        let socket = UnixDatagram::bind(path).map_err(io("bind"))?;
        socket.set_nonblocking(true).map_err(io("configure"))?;
        rustix::net::sockopt::set_socket_passcred(&socket, true)
            .map_err(|e| io("configure")(e.into()))?;
        Ok(NotifySocket {
            socket,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket, for the runtime to poll.
    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.socket.as_fd()
    }

    /// The next waiting datagram: the sender's pid (from the kernel) and its notices; `None`
    /// when nothing is waiting. A datagram without credentials is dropped.
    pub fn receive(&self) -> Option<(i32, Vec<Notice>)> {
        loop {
            let mut data = [0u8; MAX_DATAGRAM];
            // Room for descriptors too: `systemd-notify` sends BARRIER=1 with a pipe and waits
            // until the receiver closes it, which dropping them here does.
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmCredentials(1), ScmRights(8))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let received = rustix::net::recvmsg(
                &self.socket,
                &mut [IoSliceMut::new(&mut data)],
                &mut control,
                RecvFlags::DONTWAIT,
            );
            let bytes = match received {
                Ok(message) => message.bytes.min(MAX_DATAGRAM),
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return None,
            };
            let mut pid = None;
            for message in control.drain() {
                match message {
                    RecvAncillaryMessage::ScmCredentials(cred) => {
                        pid = Some(cred.pid.as_raw_nonzero().get())
                    }
                    // Closed as they drop.
                    RecvAncillaryMessage::ScmRights(fds) => fds.for_each(drop),
                    _ => {}
                }
            }
            match pid {
                Some(pid) => return Some((pid, parse(&data[..bytes]))),
                None => continue,
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagrams_parse_like_systemd() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=loaded 2 tables\nMAINPID=7\nWATCHDOG=1\nSTOPPING=1\nREADY=0"),
            [
                Notice::Ready,
                Notice::Status("loaded 2 tables".into()),
                Notice::Watchdog,
                Notice::Stopping
            ]
        );
        assert_eq!(parse(b"garbage\xff\x00"), []);
        let long = format!("STATUS={}", "x".repeat(10_000));
        assert_eq!(
            parse(long.as_bytes()),
            [Notice::Status("x".repeat(MAX_STATUS_CHARS))]
        );
    }

    #[test]
    fn the_sender_pid_comes_from_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let socket = NotifySocket::bind(&path).unwrap();
        assert!(socket.receive().is_none());
        let client = UnixDatagram::unbound().unwrap();
        client.send_to(b"READY=1\nSTATUS=up", &path).unwrap();
        let (pid, notices) = socket.receive().unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(notices, [Notice::Ready, Notice::Status("up".into())]);
        // A second bind replaces a stale socket file.
        drop(socket);
        std::fs::write(&path, b"").unwrap();
        NotifySocket::bind(&path).unwrap();
        let long = dir.path().join("x".repeat(120));
        assert!(matches!(
            NotifySocket::bind(&long),
            Err(NotifyError::PathTooLong { .. })
        ));
    }
}
