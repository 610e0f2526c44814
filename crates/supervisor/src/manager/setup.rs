//! What a manager sets up about its own process before it supervises anything (boot shares
//! the first).

use n0m1_core::process;

use super::ManagerError;

/// Orphans of our components are re-parented to us, not to PID 1 (which does not reap here),
/// so they can be reaped and nothing is left as a zombie.
pub fn become_subreaper() -> Result<(), ManagerError> {
    nix::sys::prctl::set_child_subreaper(true).map_err(|errno| ManagerError::Os {
        what: "cannot become a child subreaper",
        source: errno.into(),
    })
}

/// Started by boot: die with boot (SIGTERM on its death), and refuse to start if boot is
/// already gone, so a manager never runs on as an orphan.
pub(super) fn die_with_boot(manager: &str) -> Result<(), ManagerError> {
    process::die_with_boot().map_err(|error| match error {
        process::DieWithBootError::Os(source) => ManagerError::Os {
            what: "cannot set the parent-death signal",
            source,
        },
        process::DieWithBootError::Orphaned { boot_pid } => ManagerError::Orphaned {
            manager: manager.to_owned(),
            boot_pid,
        },
    })
}

/// Each supervised component holds a PID file open; 500 components need more than the
/// usual soft limit of 1024 descriptors once logs and pidfds are counted.
pub(super) fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}
