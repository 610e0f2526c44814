//! `TestEnv`: a temporary n0m1 home with fast supervision settings and small shell components.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use n0m1_core::Home;
use n0m1_core::process::ProcStat;
use rusqlite::Connection;

pub fn bin(name: &str) -> PathBuf {
    let path = match name {
        "n0m1ctl" => env!("CARGO_BIN_EXE_n0m1ctl"),
        "init_database" => env!("CARGO_BIN_EXE_init_database"),
        "boot_system" => env!("CARGO_BIN_EXE_boot_system"),
        "daemon_manager" => env!("CARGO_BIN_EXE_daemon_manager"),
        "nano_manager" => env!("CARGO_BIN_EXE_nano_manager"),
        "main_llm_manager" => env!("CARGO_BIN_EXE_main_llm_manager"),
        "temp_main_daemon" => env!("CARGO_BIN_EXE_temp_main_daemon"),
        "cpu_usage_daemon" => env!("CARGO_BIN_EXE_cpu_usage_daemon"),
        "mem_usage_daemon" => env!("CARGO_BIN_EXE_mem_usage_daemon"),
        "n0m1_web" => env!("CARGO_BIN_EXE_n0m1_web"),
        other => panic!("no binary {other}"),
    };
    PathBuf::from(path)
}

/// A program from the system (Chromium, Prometheus) that a test needs: `None`, with the
/// reason printed, when it is not installed, unless under CI (`CI` set), whose `.ci/run`
/// installs it: there a missing tool fails the test.
pub fn system_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    });
    if found.is_none() {
        let why =
            format!("{name} is not installed (Debian package {package}; .ci/run installs it)");
        if std::env::var_os("CI").is_some() {
            panic!("{why}");
        }
        eprintln!("skipped: {why}");
    }
    found
}

/// A loopback port nobody listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `condition` until it holds, or panics saying what it waited for.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// Alive per /proc: exists and is not a zombie (PID 1 here never reaps orphans).
/// Whether this run may do what needs root (cgroups, mounts); CI runs as root, so there a
/// missing root is a failure, not a skip.
pub fn root_or_skip() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs root for cgroups or a mount (CI runs as root)"
    );
    eprintln!("skipped: not root");
    false
}

pub fn alive(pid: i32) -> bool {
    n0m1_core::process::is_alive(pid)
}

/// Live processes whose command line mentions `needle` (a test home's unique path).
pub fn live_processes_mentioning(needle: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    for stat in n0m1_core::process::all_processes() {
        if !stat.is_alive() || stat.pid == std::process::id() as i32 {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", stat.pid)).unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{}/environ", stat.pid)).unwrap_or_default();
        let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if text.contains(needle) || String::from_utf8_lossy(&environ).contains(needle) {
            found.push((stat.pid, text));
        }
    }
    found
}

pub const FAST_CONFIG: &str = r#"{
  "managers": {
    "daemon_manager.py": {"startup_delay": 0, "health_check_interval": 1},
    "nano_manager.py": {"startup_delay": 0, "health_check_interval": 1},
    "main_llm_manager.py": {"startup_delay": 0, "health_check_interval": 1, "critical": true}
  },
  "supervisor": {
    "min_uptime": 0.5, "backoff_initial": 0.05, "backoff_max": 0.2,
    "max_quick_deaths": 3, "stop_timeout": 1.5, "heartbeat_interval": 0.3
  }
}"#;

pub struct TestEnv {
    _tmp: tempfile::TempDir,
    pub home: Home,
    children: Vec<Child>,
}

impl TestEnv {
    /// A home with the fast config, an initialised database whose default rows are all
    /// inactive (the bundled daemons are tested elsewhere), and the test components.
    pub fn new() -> TestEnv {
        let tmp = tempfile::Builder::new()
            .prefix("n0m1-it-")
            .tempdir()
            .unwrap();
        let root = tmp.path().join("home");
        TestEnv::with_home(tmp, root)
    }

    /// A test home at `root` (inside `tmp`, which is removed with the env).
    pub fn with_home(tmp: tempfile::TempDir, root: PathBuf) -> TestEnv {
        let home = Home::new(root);
        home.ensure().unwrap();
        std::fs::write(home.config_path(), FAST_CONFIG).unwrap();
        let env = TestEnv {
            _tmp: tmp,
            home,
            children: Vec::new(),
        };
        let status = Command::new(bin("init_database"))
            .args(["--home", env.root(), "--quiet"])
            .status()
            .unwrap();
        assert!(status.success());
        env.sql("UPDATE autorun_components SET desired_state = 'inactive'");
        env.script(
            "sleeper.sh",
            "#!/bin/sh\necho \"started $$ with $*\"\nexec sleep 1000\n",
        );
        env.script("crasher.sh", "#!/bin/sh\necho crashing >&2\nexit 3\n");
        env.script(
            "stubborn.sh",
            "#!/bin/sh\ntrap '' TERM\nwhile :; do sleep 0.05; done\n",
        );
        env.script(
            "tree.sh",
            "#!/bin/sh\nsleep 1000 &\nsetsid sleep 1001 &\nsleep 1002 &\nwait\n",
        );
        env.script(
            "oneshot.sh",
            "#!/bin/sh\necho once >> \"$N0M1_HOME/oneshot.out\"\nexit 0\n",
        );
        env.script("env.sh", "#!/bin/sh\necho \"$N0M1_HOME|$N0M1_COMPONENT_ID\" > \"$N0M1_HOME/env.out\"\nexec sleep 1000\n");
        env
    }

    pub fn root(&self) -> &str {
        self.home.root().to_str().unwrap()
    }

    pub fn script(&self, name: &str, body: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.home.components_dir().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    pub fn db(&self) -> Connection {
        let conn = Connection::open(self.home.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }

    pub fn sql(&self, statement: &str) {
        self.db().execute_batch(statement).unwrap();
    }

    pub fn add_component(&self, id: &str, script: &str, manager: &str, args: &str) {
        self.db()
            .execute(
                "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state, launch_args_json)
                 VALUES (?1, ?2, ?3, 'active', ?4)",
                [id, script, manager, args],
            )
            .unwrap();
    }

    /// `n0m1ctl --home <home> args…`, for assertions.
    pub fn ctl(&self, args: &[&str]) -> assert_cmd::assert::Assert {
        assert_cmd::Command::new(bin("n0m1ctl"))
            .arg("--home")
            .arg(self.root())
            .args(args)
            .timeout(Duration::from_secs(60))
            .assert()
    }

    /// Starts a binary in the foreground as our child, killed (with its group) on drop.
    pub fn spawn(&mut self, name: &str) -> i32 {
        self.spawn_with(name, &[], &[])
    }

    pub fn spawn_with(&mut self, name: &str, args: &[&str], envs: &[(&str, &str)]) -> i32 {
        let child = Command::new(bin(name))
            .args(["--home", self.root()])
            .args(args)
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.home.root().join(format!("{name}.test.err")))
                    .unwrap(),
            )
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }

    /// Waits for (and reaps) a child started with `spawn`.
    pub fn wait_child(&mut self, pid: i32, timeout: Duration) -> std::process::ExitStatus {
        let index = self
            .children
            .iter()
            .position(|c| c.id() as i32 == pid)
            .expect("our child");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.children[index].try_wait().unwrap() {
                // Already reaped by try_wait; wait() returns the cached status.
                let _ = self.children.remove(index).wait();
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child {pid} did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid_of(&self, stem: &str) -> Option<i32> {
        n0m1_core::PidFile::inspect(&self.home.pid_file(stem))
            .unwrap()
            .live_pid()
    }

    /// Waits for `stem`'s PID file to name a live process other than `old` (a restart).
    pub fn wait_new_pid(&self, stem: &str, old: i32, timeout: Duration, what: &str) -> i32 {
        let mut pid = 0;
        wait_until(timeout, what, || {
            pid = self.pid_of(stem).unwrap_or(0);
            pid != 0 && pid != old && alive(pid)
        });
        pid
    }

    /// Waits for `stem`'s PID file to name a live process; for a component, also for its
    /// state row to say so (a manager writes the PID file as soon as the child exists, the
    /// row through its writer thread just after).
    pub fn wait_pid(&self, stem: &str, what: &str) -> i32 {
        let supervisor = [
            "boot_system",
            "n0m1_logd",
            "daemon_manager",
            "nano_manager",
            "main_llm_manager",
        ]
        .contains(&stem);
        let mut pid = None;
        wait_until(Duration::from_secs(10), what, || {
            pid = self.pid_of(stem);
            pid.is_some_and(alive)
                && (supervisor || self.state_of(stem).as_deref() == Some("running"))
        });
        pid.unwrap()
    }

    pub fn state_of(&self, id: &str) -> Option<String> {
        self.db()
            .query_row(
                "SELECT state FROM component_state WHERE component_id = ?1",
                [id],
                |r| r.get(0),
            )
            .ok()
    }

    pub fn events_of(&self, id: &str) -> Vec<String> {
        let conn = self.db();
        let mut statement = conn
            .prepare("SELECT event_type FROM component_lifecycle_log WHERE component_id = ?1 ORDER BY id")
            .unwrap();
        statement
            .query_map([id], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub fn count_rows(&self, table: &str) -> i64 {
        self.db()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    }

    /// The message of `id`'s latest `event` row ("" if none).
    pub fn last_message(&self, id: &str, event: &str) -> String {
        self.db()
            .query_row(
                "SELECT message FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = ?2 ORDER BY id DESC LIMIT 1",
                [id, event],
                |r| r.get(0),
            )
            .unwrap_or_default()
    }

    /// `id`'s entry in `n0m1ctl status --json`.
    pub fn status_json(&self, id: &str) -> serde_json::Value {
        let out = self.ctl(&["status", "--json"]);
        let view: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
        view["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component_id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("{id} not in status"))
    }

    pub fn count_events(&self, id: &str, event: &str) -> usize {
        self.events_of(id).iter().filter(|e| *e == event).count()
    }

    pub fn pid_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.home.pids_dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Live processes whose environment names component `id` of this home (a component's
    /// children inherit it, so this counts the whole tree).
    pub fn processes_of(&self, id: &str) -> Vec<i32> {
        n0m1_core::process::all_processes()
            .into_iter()
            .filter(|p| p.is_alive())
            .filter(|p| {
                let environ = std::fs::read(format!("/proc/{}/environ", p.pid)).unwrap_or_default();
                let text = String::from_utf8_lossy(&environ);
                text.contains(&format!("N0M1_COMPONENT_ID={id}\0")) && text.contains(self.root())
            })
            .map(|p| p.pid)
            .collect()
    }

    /// Live processes that belong to this home.
    pub fn live_processes(&self) -> Vec<(i32, String)> {
        live_processes_mentioning(self.root())
    }

    /// Process-group members still alive for a pgid.
    pub fn group_members(pgid: i32) -> Vec<i32> {
        n0m1_core::process::all_processes()
            .into_iter()
            .filter(|p: &ProcStat| p.pgrp == pgid && p.is_alive())
            .map(|p| p.pid)
            .collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        // Whatever a failed test left behind must not outlive it.
        for (pid, _) in self.live_processes() {
            n0m1_core::process::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
            n0m1_core::process::signal_process(pid, nix::sys::signal::Signal::SIGKILL);
        }
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        // And whatever is in its cgroups, which go too.
        if let Ok(layout) = n0m1_core::cgroup::Layout::detect() {
            let cgroups = layout.existing_home(&n0m1_core::cgroup::home_id(self.home.root()));
            for pid in cgroups.pids() {
                n0m1_core::process::signal_process(pid, nix::sys::signal::Signal::SIGKILL);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while !cgroups.pids().is_empty() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            cgroups.remove_empty();
        }
    }
}

pub fn file_contains(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|t| t.contains(needle))
}

/// Sleeps until the fractional part of the Unix time is `fraction`: a metric daemon started
/// then at a 1 s interval samples near that point of every second, far from the boundaries
/// its rows' whole-second timestamps are cut at.
pub fn align_to_second_fraction(fraction: f64) {
    let now = n0m1_core::state::unix_now();
    let wait = (fraction - now.fract()).rem_euclid(1.0);
    std::thread::sleep(Duration::from_secs_f64(wait));
}

/// Checks that `table` has exactly one row for every whole second from `from` to `to` (Unix
/// seconds, both included): a daemon sampling every second lost nothing in that span.
pub fn assert_one_row_per_second(env: &TestEnv, table: &str, from: i64, to: i64) {
    let per_second: Vec<(i64, i64)> = env
        .db()
        .prepare(&format!(
            "SELECT CAST(strftime('%s', timestamp) AS INTEGER) AS s, count(*) FROM {table}
             WHERE s BETWEEN ?1 AND ?2 GROUP BY s ORDER BY s"
        ))
        .unwrap()
        .query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let expected: Vec<(i64, i64)> = (from..=to).map(|s| (s, 1)).collect();
    assert_eq!(
        per_second, expected,
        "rows of {table} per second from {from} to {to}"
    );
}

/// Waits until `table` has a row stamped at or after Unix second `second`: the rows before
/// it are then all written (a daemon writes its queue in order).
pub fn wait_for_a_row_from(env: &TestEnv, table: &str, second: i64) {
    wait_until(
        Duration::from_secs(20),
        &format!("a row of {table} from second {second}"),
        || {
            env.db()
                .query_row(
                    &format!(
                        "SELECT count(*) FROM {table} WHERE timestamp >= datetime(?1, 'unixepoch')"
                    ),
                    [second],
                    |r| r.get::<_, i64>(0),
                )
                .unwrap()
                > 0
        },
    );
}

/// A tmpfs mounted on a directory for one test (a small disk to fill), unmounted however the
/// test ends.
pub struct SmallDisk(PathBuf);

impl SmallDisk {
    /// `None` (said) where no tmpfs can be mounted (not root, or a sandbox that forbids it).
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .arg("n0m1-test-small-disk")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!(
                "cannot mount a tmpfs on {} here (needs root, in a sandbox that allows it)",
                dir.display()
            );
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }

    /// Writes a file until the device is full, to the last byte; returns its path.
    pub fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for size in [64 * 1024, 512, 1] {
            let block = vec![0u8; size];
            while file.write_all(&block).is_ok() {}
        }
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
