//! The clone3 spawner against std's `Command` (through `process::spawn`, the safe
//! reference): the same spec gives a child that sees the same things, and failures are
//! reported by name. Needs a cgroup2 cgroup it may create (root); skips elsewhere.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::process::{SpawnSpec, spawn};

/// A cgroup2 directory of this test's own, removed at the end.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new(name: &str) -> Option<TestCgroup> {
        if !nix::unistd::Uid::effective().is_root() {
            return None;
        }
        let layout = crate::cgroup::Layout::detect().ok()?;
        let tree = layout.roles.get(&crate::cgroup::Role::Membership)?;
        if !tree.v2 {
            return None;
        }
        let dir = tree
            .mount
            .join(format!("n0m1-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        Some(TestCgroup(dir))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.0).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

const LOOK: &str = r#"
pgid=$(cut -d' ' -f5 /proc/$$/stat)
[ "$pgid" = "$$" ] && echo "leads its group"
echo "cwd $(pwd)"
echo "stdin $(readlink /proc/$$/fd/0)"
grep SigIgn /proc/$$/status
echo "args $*"
env | grep -v -e '^PWD=' -e '^SHLVL=' -e '^_=' | sort
"#;

fn spec(dir: &Path, name: &str) -> SpawnSpec {
    SpawnSpec {
        program: "sh".into(),
        args: vec![
            "-c".into(),
            LOOK.into(),
            "look".into(),
            "one".into(),
            "two words".into(),
        ],
        env: vec![("N0M1_TEST_VALUE".into(), "a b=c".into())],
        stdout: dir.join(format!("{name}.out")),
        stderr: dir.join(format!("{name}.err")),
        current_dir: dir.to_owned(),
    }
}

fn reap(pid: i32) -> nix::sys::wait::WaitStatus {
    nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap()
}

#[test]
fn a_child_born_in_its_cgroup_sees_what_a_command_child_sees() {
    let Some(cgroup) = TestCgroup::new("born") else {
        eprintln!("skipped: no cgroup2 tree this test may write to");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let reference = spawn(&spec(tmp.path(), "reference")).unwrap();
    reap(reference.pid);
    let dir = rustix::fs::open(
        &cgroup.0,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let born_spec = spec(tmp.path(), "born");
    let out = crate::home::open_private_append(&born_spec.stdout).unwrap();
    let err = crate::home::open_private_append(&born_spec.stderr).unwrap();
    let pid = spawn_into(&born_spec, dir.as_fd(), &[], None, &out, &err, &mut |_| {})
        .unwrap()
        .expect("this kernel has clone3 with CLONE_INTO_CGROUP");
    // Born inside: it is a member before anything moved it.
    let members = std::fs::read_to_string(cgroup.0.join("cgroup.procs")).unwrap_or_default();
    let status = reap(pid);
    assert_eq!(
        status,
        nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0)
    );
    assert!(
        members.lines().any(|l| l.trim() == pid.to_string()),
        "pid {pid} in {members:?}"
    );
    let read = |name: &str| std::fs::read_to_string(tmp.path().join(name)).unwrap();
    // Ignored signals aside (glibc's own real-time signals differ between the two ways of
    // starting; SIGPIPE is checked below), the two children see the same.
    let without_ignored = |text: String| -> String {
        text.lines()
            .filter(|l| !l.starts_with("SigIgn:"))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    let (seen, expected) = (read("born.out"), read("reference.out"));
    assert_eq!(
        without_ignored(seen.clone()),
        without_ignored(expected),
        "the same view as a Command child"
    );
    assert!(seen.contains("leads its group"), "{seen}");
    assert!(seen.contains("stdin /dev/null"), "{seen}");
    assert!(seen.contains("args one two words"), "{seen}");
    assert!(seen.contains("N0M1_TEST_VALUE=a b=c"), "{seen}");
    let ignored = seen
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .unwrap();
    assert_eq!(
        ignored & (1 << (libc::SIGPIPE - 1)),
        0,
        "SIGPIPE back to its default"
    );
    assert!(read("born.err").is_empty());
}

#[test]
fn a_child_that_cannot_start_is_an_error_naming_the_step() {
    let Some(cgroup) = TestCgroup::new("unborn") else {
        eprintln!("skipped: no cgroup2 tree this test may write to");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = rustix::fs::open(
        &cgroup.0,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let out = crate::home::open_private_append(&tmp.path().join("x.out")).unwrap();
    let mut missing = spec(tmp.path(), "x");
    missing.program = tmp.path().join("no-such-program");
    let error = spawn_into(&missing, dir.as_fd(), &[], None, &out, &out, &mut |_| {}).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    assert!(error.to_string().starts_with("execve: "), "{error}");
    let mut nowhere = spec(tmp.path(), "x");
    nowhere.current_dir = tmp.path().join("gone");
    let error = spawn_into(&nowhere, dir.as_fd(), &[], None, &out, &out, &mut |_| {}).unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("chdir to the working directory: "),
        "{error}"
    );
    // Both children were reaped here: nothing is left in the cgroup.
    assert!(
        std::fs::read_to_string(cgroup.0.join("cgroup.procs"))
            .unwrap()
            .trim()
            .is_empty()
    );
}

/// The account is taken with the raw system calls while the parent has other threads (as a
/// manager has): the child runs as the user and the spawner is not held.
#[test]
fn a_child_born_as_another_user_runs_as_that_user() {
    let Some(cgroup) = TestCgroup::new("account") else {
        eprintln!("skipped: no cgroup2 tree this test may write to");
        return;
    };
    // Threads in the parent, as in a manager (writer, watchers).
    let _busy: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(|| std::thread::sleep(Duration::from_secs(2))))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = rustix::fs::open(
        &cgroup.0,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let mut as_nobody = spec(tmp.path(), "nobody");
    as_nobody.args = vec!["-c".into(), "echo \"$(id -u) $(id -g) $(id -G)\"".into()];
    let out = crate::home::open_private_append(&as_nobody.stdout).unwrap();
    let account = Account::resolve("nobody", None).unwrap();
    let started = Instant::now();
    let pid = spawn_into(
        &as_nobody,
        dir.as_fd(),
        &[],
        Some(&account),
        &out,
        &out,
        &mut |_| {},
    )
    .unwrap()
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    reap(pid);
    let seen = std::fs::read_to_string(&as_nobody.stdout).unwrap();
    let expected = format!("{0} {1} {1}\n", account.uid, account.gid);
    assert_eq!(
        seen, expected,
        "its uid, its group, no supplementary groups"
    );
}
