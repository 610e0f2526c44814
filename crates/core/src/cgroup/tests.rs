//! The layout read from mount tables of both kinds, the v2 files written into a tree laid out
//! like cgroupfs in a temporary folder, and (as root, on this machine's real hierarchies) a
//! child that joins its cgroups before exec checked against a process moved in afterwards.

use super::*;

/// The mount table and membership of this project's machines: systemd's hybrid layout.
const HYBRID_MOUNTS: &str = "tmpfs /sys/fs/cgroup tmpfs rw 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/freezer cgroup rw,relatime,freezer 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
const HYBRID_MEMBERSHIP: &str = "8:pids:/
6:freezer:/
4:memory:/process_api/x/n0m1/h1/daemon_manager
2:cpuacct:/
1:cpu:/
0::/
";

#[test]
fn a_hybrid_host_uses_cgroup2_for_membership_and_v1_for_each_controller() {
    let layout = Layout::from_text(HYBRID_MOUNTS, HYBRID_MEMBERSHIP, |_| String::new()).unwrap();
    let at = |role| {
        let h = &layout.roles[&role];
        (
            h.mount.to_str().unwrap().to_owned(),
            h.base.to_str().unwrap().to_owned(),
            h.v2,
        )
    };
    assert_eq!(
        at(Role::Membership),
        ("/sys/fs/cgroup/unified".into(), "/".into(), true)
    );
    // A manager already inside a home's subtree shares boot's base.
    assert_eq!(
        at(Role::Memory),
        (
            "/sys/fs/cgroup/memory".into(),
            "/process_api/x".into(),
            false
        )
    );
    assert_eq!(
        at(Role::Cpu),
        ("/sys/fs/cgroup/cpu".into(), "/".into(), false)
    );
    assert_eq!(
        at(Role::Pids),
        ("/sys/fs/cgroup/pids".into(), "/".into(), false)
    );
    assert!(at(Role::CpuUsage).2, "cpu.stat is in every cgroup2 cgroup");
    assert_eq!(at(Role::Freezer).0, "/sys/fs/cgroup/freezer");
    let cgroup = HomeCgroups {
        layout,
        relative: PathBuf::from("n0m1/h1"),
    }
    .component("daemon_manager", "worker");
    assert_eq!(
        cgroup.dir(Role::Memory).unwrap().0,
        Path::new("/sys/fs/cgroup/memory/process_api/x/n0m1/h1/daemon_manager/worker")
    );
    assert_eq!(
        cgroup.path().unwrap(),
        Path::new("/sys/fs/cgroup/unified/n0m1/h1/daemon_manager/worker")
    );
}

#[test]
fn a_v2_host_uses_the_unified_tree_for_everything_it_offers() {
    let mounts = "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n";
    let membership = "0::/system.slice/n0m1.service\n";
    let layout =
        Layout::from_text(mounts, membership, |_| "cpuset cpu io memory pids".into()).unwrap();
    for role in [
        Role::Membership,
        Role::Memory,
        Role::Cpu,
        Role::Pids,
        Role::CpuUsage,
    ] {
        assert!(layout.roles[&role].v2, "{role:?}");
        assert_eq!(
            layout.roles[&role].base,
            Path::new("/system.slice/n0m1.service")
        );
    }
    assert!(!layout.roles.contains_key(&Role::Freezer));
    // Without the pids controller delegated, a pids limit is refused by name.
    let layout = Layout::from_text(mounts, membership, |_| "memory".into()).unwrap();
    let error = layout
        .missing(&Limits {
            pids_max: Some(10),
            ..Limits::default()
        })
        .unwrap();
    assert_eq!(
        error.to_string(),
        "the pids controller is not available (neither the cgroup2 tree nor a v1 hierarchy offers it)"
    );
    assert!(Layout::from_text("proc /proc proc rw 0 0\n", "", |_| String::new()).is_err());
}

/// A cgroup2 tree laid out like cgroupfs in a temporary folder: every limit lands in its file
/// with the kernel's syntax, and readings come back from theirs.
#[test]
fn the_v2_files_are_written_and_read_in_the_kernels_syntax() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("cgroup");
    fs::create_dir(&root).unwrap();
    let mounts = format!("cgroup2 {} cgroup2 rw 0 0\n", root.display());
    let layout = Layout::from_text(&mounts, "0::/service\n", |_| "memory cpu pids".into()).unwrap();
    let home = layout.home("h0123456789").unwrap();
    assert!(root.join("service/n0m1/h0123456789").is_dir());
    // Each ancestor hands the controllers down; boot moves into a leaf of its own.
    for dir in ["service", "service/n0m1", "service/n0m1/h0123456789"] {
        assert_eq!(
            fs::read_to_string(root.join(dir).join("cgroup.subtree_control")).unwrap(),
            "+memory +cpu +pids",
            "{dir}"
        );
    }
    layout.move_supervisors("h0123456789").unwrap();
    assert_eq!(
        fs::read_to_string(root.join("service/n0m1/h0123456789/supervisors/cgroup.procs")).unwrap(),
        "0"
    );
    let cgroup = home.component("daemon_manager", "worker");
    cgroup.create().unwrap();
    let dir = root.join("service/n0m1/h0123456789/daemon_manager/worker");
    assert!(dir.is_dir());
    assert_eq!(
        fs::read_to_string(
            root.join("service/n0m1/h0123456789/daemon_manager/cgroup.subtree_control")
        )
        .unwrap(),
        "+memory +cpu +pids"
    );
    let limits = Limits {
        memory_max: Some(64 << 20),
        memory_high: Some(48 << 20),
        cpu_max: Some(0.2),
        cpu_weight: Some(50),
        pids_max: Some(10),
        ..Limits::default()
    };
    cgroup.apply(&limits).unwrap();
    let read = |file: &str| fs::read_to_string(dir.join(file)).unwrap();
    assert_eq!(read("memory.max"), "67108864");
    assert_eq!(read("memory.high"), "50331648");
    assert_eq!(read("memory.swap.max"), "0");
    assert_eq!(read("cpu.max"), "20000 100000");
    assert_eq!(read("cpu.weight"), "50");
    assert_eq!(read("pids.max"), "10");
    // Cleared: every limit back to "max", on the same (running) cgroup.
    cgroup.apply(&Limits::default()).unwrap();
    assert_eq!(read("memory.max"), "max");
    assert_eq!(read("cpu.max"), "max 100000");
    assert_eq!(read("pids.max"), "max");

    fs::write(
        dir.join("memory.events"),
        "low 0\nhigh 3\nmax 9\noom 2\noom_kill 2\n",
    )
    .unwrap();
    fs::write(dir.join("memory.current"), "1048576\n").unwrap();
    fs::write(dir.join("memory.peak"), "67108864\n").unwrap();
    fs::write(
        dir.join("cpu.stat"),
        "usage_usec 1500000\nuser_usec 1000000\n",
    )
    .unwrap();
    fs::write(dir.join("cgroup.procs"), "").unwrap();
    assert_eq!(cgroup.oom_kills(), Some(2));
    assert_eq!(
        cgroup.memory(),
        Some(MemoryUse {
            current: 1 << 20,
            peak: Some(64 << 20)
        })
    );
    assert_eq!(cgroup.cpu_seconds(), Some(1.5));
    assert_eq!(
        cgroup.describe_oom(&limits, 812),
        "pid 812: over memory_max 64.0 MiB (peak 64.0 MiB)"
    );
    // Killing an empty cgroup touches nothing (and never cgroup.kill: see `kill`).
    cgroup.kill();
    assert!(!dir.join("cgroup.kill").exists());
    assert!(!dir.join("cgroup.freeze").exists());
    // A stand-in for the kernel's rmdir, which ignores interface files.
    for file in fs::read_dir(&dir).unwrap().flatten() {
        fs::remove_file(file.path()).unwrap();
    }
    fs::write(dir.join("cgroup.procs"), "4242\n").unwrap();
    assert!(!cgroup.remove(), "not while a process is in it");
    fs::remove_file(dir.join("cgroup.procs")).unwrap();
    assert!(cgroup.remove());
    for file in [
        "supervisors/cgroup.procs",
        "cgroup.subtree_control",
        "daemon_manager/cgroup.subtree_control",
    ] {
        fs::remove_file(root.join("service/n0m1/h0123456789").join(file)).unwrap();
    }
    fs::remove_file(root.join("service/n0m1/cgroup.subtree_control")).unwrap();
    home.remove_empty();
    assert!(!root.join("service/n0m1").exists(), "nothing of n0m1 left");
}

#[test]
fn a_home_id_is_short_stable_and_differs_between_homes() {
    let a = home_id(Path::new("/tmp/one/home"));
    assert_eq!(a, home_id(Path::new("/tmp/one/home")));
    assert_ne!(a, home_id(Path::new("/tmp/two/home")));
    assert_eq!(a.len(), 11);
    assert!(a.starts_with('h'));
    assert_eq!(
        outside_subtree(Path::new("/a/b/n0m1/h1/x")),
        Path::new("/a/b")
    );
    assert_eq!(outside_subtree(Path::new("/")), Path::new("/"));
}

/// As root on a machine with cgroups: a child that joins through `join_files` before exec is
/// in exactly the cgroups a process moved in afterwards with `add` (the safe reference) is
/// in, and is there before its program runs: its own /proc/self/cgroup says so.
#[test]
fn a_child_joins_its_cgroups_before_its_program_runs() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: not root");
        return;
    }
    let Ok(layout) = Layout::detect() else {
        eprintln!("skipped: no cgroups");
        return;
    };
    let id = format!("h-test-{}", std::process::id());
    let Ok(home) = layout.home(&id) else {
        eprintln!("skipped: cannot create cgroups here");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let joined = home.component("test_manager", "joined");
    let moved = home.component("test_manager", "moved");
    /// Kills and removes the test's cgroups however the test ends.
    struct Cleanup(Vec<ComponentCgroup>, HomeCgroups);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            for cgroup in &self.0 {
                cgroup.kill();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.0.iter().any(|c| !c.remove()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            self.1.remove_empty();
        }
    }
    let _cleanup = Cleanup(vec![joined.clone(), moved.clone()], home.clone());
    joined.create().unwrap();
    moved.create().unwrap();
    let spec = |name: &str| crate::process::SpawnSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into(), "cat /proc/self/cgroup; exec sleep 30".into()],
        env: Vec::new(),
        stdout: tmp.path().join(format!("{name}.out")),
        stderr: tmp.path().join(format!("{name}.err")),
        current_dir: tmp.path().to_owned(),
    };
    // A memory limit: born in the cgroup2 tree, joining the v1 memory hierarchy (if that is
    // where memory is) before exec.
    let limits = Limits {
        memory_max: Some(256 << 20),
        ..Limits::default()
    };
    let (birth, cgroup_procs) = joined.placement(&limits).unwrap();
    let placement = crate::process::Placement {
        birth,
        cgroup_procs,
        account: None,
    };
    let child = crate::process::spawn_placed(&spec("joined"), placement).unwrap();
    let reference = crate::process::spawn(&spec("moved")).unwrap();
    moved.add(reference.pid).unwrap();
    // Each hierarchy a memory-limited component needs: the membership tree and memory's.
    let lines = |pid: i32| fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let needed = |text: &str, leaf: &str| {
        text.lines()
            .filter(|l| l.starts_with("0::") || l.contains(":memory:"))
            .all(|l| l.ends_with(&format!("/{leaf}")))
    };
    assert!(needed(&lines(child.pid), "joined"), "{}", lines(child.pid));
    assert!(
        needed(&lines(reference.pid), "moved"),
        "{}",
        lines(reference.pid)
    );
    assert!(joined.pids().contains(&child.pid), "{:?}", joined.pids());
    assert!(
        joined.memory().is_some(),
        "it is in the memory cgroup it reads"
    );
    // The program's first look at itself already shows it inside.
    let out = tmp.path().join("joined.out");
    let deadline = Instant::now() + Duration::from_secs(10);
    while fs::read_to_string(&out).map_or(true, |text| !text.contains("/joined")) {
        assert!(Instant::now() < deadline, "{:?}", fs::read_to_string(&out));
        std::thread::sleep(Duration::from_millis(10));
    }
    joined.kill();
    moved.kill();
    for pid in [child.pid, reference.pid] {
        let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None);
    }
}
