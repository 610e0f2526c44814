//! Starting a child straight into its cgroup2 cgroup: `clone3(CLONE_INTO_CGROUP)`.
//!
//! Moving a process into a cgroup after it exists (writing `cgroup.procs`) takes the kernel's
//! cgroup_threadgroup_rwsem for writing, which waits for an RCU grace period: 6-8 ms on this
//! project's VMs for a restart that otherwise takes about 1 ms. A child born in its cgroup is
//! never moved. std's `Command` cannot pass a cgroup to the kernel, so this module does the
//! few things `Command` does for n0m1's spawns by hand: everything is prepared in the parent
//! (paths, argv and environment as C strings, descriptors), and the child between clone3 and
//! execve only makes async-signal-safe system calls, reporting a failure through a
//! close-on-exec pipe as std does. Where clone3 is missing, `join_before_exec` gives a
//! `Command` child the same cgroups through `pre_exec`. This is the crate's one module of
//! `unsafe` code; its test runs the same spec through `Command` (the safe reference) and
//! compares what the two children see.

#![allow(unsafe_code)]

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{Account, SpawnSpec};

/// How long a child may take from clone3 to execve before it is given up.
const EXEC_PATIENCE_SECS: i64 = 10;

/// `CLONE_INTO_CGROUP` from linux/sched.h (libc's constant is an i32, which it overflows).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// What the child needs, all of it allocated before the clone.
struct Prepared {
    program: CString,
    argv: Vec<CString>,
    envp: Vec<CString>,
    cwd: CString,
}

fn c_string(bytes: &[u8], what: &str) -> std::io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// `program` as execve needs it: a name without '/' is looked up in PATH, as std does.
fn program_path(program: &Path, path_var: Option<&OsStr>) -> PathBuf {
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.to_owned();
    }
    std::env::split_paths(path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin")))
        .map(|dir| dir.join(program))
        .find(|candidate| {
            rustix::fs::access(candidate, rustix::fs::Access::EXEC_OK).is_ok()
                && candidate.is_file()
        })
        .unwrap_or_else(|| program.to_owned())
}

fn prepare(spec: &SpawnSpec) -> std::io::Result<Prepared> {
    // The environment as std's Command builds it: ours, less the spawner's own sd_notify
    // variables, plus the spec's.
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(key, _)| {
            ![
                crate::notify::ENV_NOTIFY_SOCKET,
                crate::notify::ENV_WATCHDOG_USEC,
                crate::notify::ENV_WATCHDOG_PID,
            ]
            .iter()
            .any(|removed| key == removed)
        })
        .collect();
    for (key, value) in &spec.env {
        env.retain(|(k, _)| k != key.as_str());
        env.push((key.into(), value.clone()));
    }
    let path_var = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let program = program_path(&spec.program, path_var.as_deref());
    let mut argv = vec![c_string(
        spec.program.as_os_str().as_bytes(),
        "the program",
    )?];
    for arg in &spec.args {
        argv.push(c_string(arg.as_bytes(), "an argument")?);
    }
    let envp = env
        .iter()
        .map(|(key, value)| {
            let mut pair = key.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(value.as_bytes());
            c_string(&pair, "an environment variable")
        })
        .collect::<std::io::Result<_>>()?;
    Ok(Prepared {
        program: c_string(program.as_os_str().as_bytes(), "the program")?,
        argv,
        envp,
        cwd: c_string(
            spec.current_dir.as_os_str().as_bytes(),
            "the working directory",
        )?,
    })
}

/// Starts `spec` born into the cgroup `cgroup` (a cgroup2 directory), a process-group
/// leader with stdin from /dev/null and the given stdout and stderr, after joining `join`
/// (`cgroup.procs` of v1 hierarchies) and taking `account`. `Ok(None)`: this kernel has no
/// clone3 or refuses CLONE_INTO_CGROUP, and the caller spawns the usual way.
pub(super) fn spawn_into(
    spec: &SpawnSpec,
    cgroup: BorrowedFd<'_>,
    join: &[OwnedFd],
    account: Option<&Account>,
    stdout: &std::fs::File,
    stderr: &std::fs::File,
    on_born: &mut dyn FnMut(i32),
) -> std::io::Result<Option<i32>> {
    let prepared = prepare(spec)?;
    let stdin = std::fs::File::open("/dev/null")?;
    let mut argv: Vec<*const libc::c_char> = prepared.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = prepared.envp.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let join: Vec<i32> = join.iter().map(AsRawFd::as_raw_fd).collect();
    let (report_read, report_write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let ids = account.map(|a| (a.uid, a.gid));
    let (fd_in, fd_out, fd_err, fd_report) = (
        stdin.as_raw_fd(),
        stdout.as_raw_fd(),
        stderr.as_raw_fd(),
        report_write.as_raw_fd(),
    );
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without CLONE_VM or a stack duplicates this process as fork does: the
    // child gets a copy of the memory and only the calling thread. `args` lives across the
    // call and its size is passed with it.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid == 0 {
        // SAFETY: in the child, between clone3 and execve. Only async-signal-safe system
        // calls on memory prepared before the clone: nothing allocates, locks or unwinds.
        // Every pointer is to a C string or a null-terminated array that the parent's stack
        // frame (copied into the child) still owns.
        unsafe {
            let fail = |stage: i32| -> ! {
                let report = [stage, *libc::__errno_location()];
                libc::write(
                    fd_report,
                    report.as_ptr().cast(),
                    std::mem::size_of_val(&report),
                );
                libc::_exit(127)
            };
            if libc::setpgid(0, 0) != 0 {
                fail(1);
            }
            // Rust ignores SIGPIPE in its own processes; an exec'd program expects the default
            // (std's Command resets it the same way). The mask n0m1 never changes.
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for (from, to) in [(fd_in, 0), (fd_out, 1), (fd_err, 2)] {
                if libc::dup2(from, to) < 0 {
                    fail(2);
                }
            }
            if libc::chdir(prepared.cwd.as_ptr()) != 0 {
                fail(3);
            }
            for fd in &join {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    fail(4);
                }
            }
            // Raw system calls, not glibc's wrappers: those broadcast the change to every
            // thread glibc believes the process has, which after a raw clone are the
            // parent's threads, absent here (the broadcast would wait for them forever).
            if let Some((uid, gid)) = ids
                && (libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                    || libc::syscall(libc::SYS_setgid, gid) != 0
                    || libc::syscall(libc::SYS_setuid, uid) != 0)
            {
                fail(5);
            }
            libc::execve(prepared.program.as_ptr(), argv.as_ptr(), envp.as_ptr());
            fail(6);
        }
    }
    drop(report_write);
    if pid < 0 {
        let error = std::io::Error::last_os_error();
        return match error.raw_os_error() {
            // No clone3, or no CLONE_INTO_CGROUP here: the usual way then.
            Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(error),
        };
    }
    let pid = pid as i32;
    // The pid exists now, in its cgroup: the spawner may record it while the child execs.
    on_born(pid);
    // SAFETY: `report_read` is an open descriptor this function owns; the File takes it.
    let mut report_file =
        unsafe { std::fs::File::from_raw_fd(std::os::fd::IntoRawFd::into_raw_fd(report_read)) };
    let mut report = [0u8; 8];
    // A child stuck before exec must not hold its spawner forever.
    let mut ready = [rustix::event::PollFd::new(
        &report_file,
        rustix::event::PollFlags::IN,
    )];
    let patience = rustix::event::Timespec {
        tv_sec: EXEC_PATIENCE_SECS,
        tv_nsec: 0,
    };
    if matches!(rustix::event::poll(&mut ready, Some(&patience)), Ok(0)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("the child did not exec within {EXEC_PATIENCE_SECS} s; killed"),
        ));
    }
    let read = loop {
        match std::io::Read::read(&mut report_file, &mut report) {
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    match read {
        // The pipe closed on exec: the program runs.
        Ok(0) => Ok(Some(pid)),
        Ok(_) => {
            let stage = i32::from_ne_bytes(report[..4].try_into().unwrap_or_default());
            let errno = i32::from_ne_bytes(report[4..].try_into().unwrap_or_default());
            // It exits with 127 at once; reaped here, so no one else sees it.
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
            let step = match stage {
                1 => "setpgid",
                2 => "dup2",
                3 => "chdir to the working directory",
                4 => "joining a v1 cgroup",
                5 => "taking the account",
                _ => "execve",
            };
            let error = std::io::Error::from_raw_os_error(errno);
            Err(std::io::Error::new(
                error.kind(),
                format!("{step}: {error}"),
            ))
        }
        Err(error) => Err(error),
    }
}

/// Makes the child write `0` (itself) to each `cgroup.procs` before it execs.
pub(super) fn join_before_exec(
    command: &mut std::process::Command,
    files: Vec<std::os::fd::OwnedFd>,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes one write(2) per descriptor (opened
    // before the fork, so nothing is allocated or locked) and builds its error from the raw
    // errno without allocating. The descriptors are close-on-exec and owned by the closure,
    // which the parent drops after the spawn.
    unsafe {
        command.pre_exec(move || {
            for file in &files {
                if let Err(errno) = rustix::io::write(file, b"0") {
                    return Err(std::io::Error::from_raw_os_error(errno.raw_os_error()));
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests;
