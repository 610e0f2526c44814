//! Reaping: the one `waitpid` loop of boot and the managers, and the one type for how a
//! supervised process ended. Both are child subreapers, so orphaned grandchildren come here
//! too; the caller decides which pids are its own.

use nix::sys::signal::Signal;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

/// How a supervised process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCause {
    Code(i32),
    Signal(Signal),
    /// A process we watched but did not start (adopted): its parent reaps it, and its
    /// status is not ours to see.
    Unknown,
}

impl ExitCause {
    pub fn is_clean(self) -> bool {
        self == ExitCause::Code(0)
    }

    /// In the lifecycle log's words: `exit code 3`, `killed by signal SIGKILL`.
    pub fn describe(self) -> String {
        match self {
            ExitCause::Code(code) => format!("exit code {code}"),
            ExitCause::Signal(signal) => format!("killed by signal {}", signal.as_str()),
            ExitCause::Unknown => "exited (status unknown: adopted process)".to_owned(),
        }
    }
}

/// Reaps every child that has exited, without blocking. SIGCHLDs coalesce, so one signal may
/// stand for many exits: callers reap until nothing is left.
pub fn reap_exited() -> Vec<(i32, ExitCause)> {
    let mut reaped = Vec::new();
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => reaped.push((pid.as_raw(), ExitCause::Code(code))),
            Ok(WaitStatus::Signaled(pid, signal, _)) => {
                reaped.push((pid.as_raw(), ExitCause::Signal(signal)))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(_) => continue,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn causes_read_as_the_lifecycle_log_spells_them() {
        assert_eq!(ExitCause::Code(3).describe(), "exit code 3");
        assert_eq!(
            ExitCause::Signal(Signal::SIGKILL).describe(),
            "killed by signal SIGKILL"
        );
        assert!(ExitCause::Code(0).is_clean());
        assert!(!ExitCause::Signal(Signal::SIGTERM).is_clean());
        assert!(!ExitCause::Unknown.is_clean());
    }

    /// Held by every test of this crate that waits for its own children: this one reaps
    /// any child of the test process.
    pub(crate) static CHILDREN: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn reaps_a_child_with_its_exit_code() {
        let _children = CHILDREN.lock().unwrap_or_else(|e| e.into_inner());
        #[allow(clippy::disallowed_methods, clippy::zombie_processes)] // a test's own child
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 7"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // Reaped by `reap_exited`, not by `Child::wait`: that is what is under test.
        drop(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut found = None;
        while found.is_none() && std::time::Instant::now() < deadline {
            found = reap_exited().into_iter().find(|(p, _)| *p == pid);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(found, Some((pid, ExitCause::Code(7))));
    }
}
