//! The executor against a real temporary home: each effect performed with real processes,
//! PID files and the lifecycle writer, and the answer it gives the machine.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use n0m1_core::Home;
use n0m1_core::components::{ComponentRow, LaunchKey};
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::pidfile::{PidFile, PidStatus};
use n0m1_core::state::{self, RunState};
use n0m1_core::writer::Writer;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::super::slot::{PidOwner, Slot};
use super::{Executor, tree_gone};
use crate::launch::ScriptResolver;
use crate::machine::{Component, Effect, Input};

struct Bench {
    /// The reaper's test reaps any child: it waits while one of these runs.
    _children: std::sync::MutexGuard<'static, ()>,
    _tmp: tempfile::TempDir,
    home: Home,
    exec: Executor,
}

impl Bench {
    fn new() -> Bench {
        let children = crate::reaper::tests::CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("home"));
        home.ensure().unwrap();
        n0m1_core::db::initialise(&home.db_path()).unwrap();
        let exec = Executor {
            home: home.clone(),
            manager: "daemon_manager".to_owned(),
            resolver: ScriptResolver::new(&home, tmp.path().join("no-bundled-binaries")),
            writer: Writer::start(&home.db_path()).unwrap(),
            log_pipes: Default::default(),
            notify_socket: None,
            under_boot: false,
            snapshot: None,
            pids: Default::default(),
            cgroups: None,
            log_settings: Default::default(),
            released: Vec::new(),
        };
        Bench {
            _children: children,
            _tmp: tmp,
            home,
            exec,
        }
    }

    fn script(&self, name: &str, body: &str) {
        let path = self.home.components_dir().join(name);
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn slot(id: &str) -> Slot {
        Slot::new(Component::new(ComponentRow {
            component_id: id.to_owned(),
            base_script_name: "unused".to_owned(),
            manager_affinity: "daemon_manager".to_owned(),
            desired_active: true,
            launch_args_json: None,
            run_type: "PRIMARY_RUN".to_owned(),
            modified: None,
        }))
    }

    fn spawn(&mut self, id: &str, slot: &mut Slot, script: &str, args: Option<&str>) -> Input {
        let launch = LaunchKey {
            base_script_name: script.to_owned(),
            launch_args_json: args.map(str::to_owned),
            run_type: "PRIMARY_RUN".to_owned(),
        };
        self.exec
            .perform(
                id,
                slot,
                Effect::Spawn {
                    launch,
                    watchdog: None,
                    limits: Default::default(),
                },
            )
            .unwrap()
    }
}

/// Waits for our child `pid` to exit and returns how.
fn reap(pid: i32) -> WaitStatus {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).unwrap();
        if status != WaitStatus::StillAlive {
            return status;
        }
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_spawn_answers_with_the_pid_and_keeps_its_pid_file_and_index_entry() {
    let mut bench = Bench::new();
    bench.script(
        "argv.sh",
        "#!/bin/sh\necho \"$N0M1_COMPONENT_ID $*\" > \"$N0M1_HOME/argv.out\"\nexec sleep 1000\n",
    );
    let mut slot = Bench::slot("worker");
    let answer = bench.spawn("worker", &mut slot, "argv.sh", Some(r#"{"--every": "5"}"#));
    let Input::Spawned {
        pid, script_path, ..
    } = answer
    else {
        panic!("expected Spawned, got {answer:?}");
    };
    assert!(script_path.ends_with("argv.sh"), "{script_path}");
    assert_eq!(
        bench.exec.pids.get(&pid),
        Some(&PidOwner::Leader("worker".to_owned()))
    );
    assert!(slot.pid_file.is_some(), "the slot holds the PID file");
    assert_eq!(
        PidFile::inspect(&bench.home.pid_file("worker")).unwrap(),
        PidStatus::Live { pid: Some(pid) }
    );
    let argv = bench.home.root().join("argv.out");
    wait_for("the script's line", || {
        std::fs::read_to_string(&argv)
            .is_ok_and(|text| text == "worker --every 5 --run_type PRIMARY_RUN\n")
    });

    // Terminate signals the group; Kill and ReleasePidFile finish the job.
    bench
        .exec
        .perform("worker", &mut slot, Effect::Terminate { pid });
    assert!(matches!(
        reap(pid),
        WaitStatus::Signaled(_, nix::sys::signal::Signal::SIGTERM, _)
    ));
    assert!(tree_gone(&slot, pid));
    bench
        .exec
        .perform("worker", &mut slot, Effect::ReleasePidFile);
    assert!(slot.pid_file.is_none());
    assert!(!bench.home.pid_file("worker").exists());
}

#[test]
fn a_row_that_cannot_run_is_a_launch_failure_naming_the_script() {
    let mut bench = Bench::new();
    let mut slot = Bench::slot("ghost");
    let answer = bench.spawn("ghost", &mut slot, "no_such_script.sh", None);
    let Input::LaunchFailed { reason } = answer else {
        panic!("expected LaunchFailed, got {answer:?}");
    };
    assert!(reason.contains("no_such_script.sh"), "{reason}");
    assert!(bench.exec.pids.is_empty());
    assert!(slot.pid_file.is_none());

    bench.script("ok.sh", "#!/bin/sh\nexit 0\n");
    let answer = bench.spawn("ghost", &mut slot, "ok.sh", Some("[not an object"));
    assert!(
        matches!(&answer, Input::LaunchFailed { reason } if reason.contains("launch_args_json")),
        "{answer:?}"
    );
}

#[test]
fn a_watchdog_spawn_gives_the_period_and_the_process_its_own_pid() {
    let mut bench = Bench::new();
    bench.script(
        "env.sh",
        "#!/bin/sh\necho \"$$ $WATCHDOG_PID $WATCHDOG_USEC\" > \"$N0M1_HOME/env.out\"\nexec sleep 1000\n",
    );
    let mut slot = Bench::slot("watched");
    let launch = LaunchKey {
        base_script_name: "env.sh".to_owned(),
        launch_args_json: None,
        run_type: "PRIMARY_RUN".to_owned(),
    };
    let answer = bench.exec.perform(
        "watched",
        &mut slot,
        Effect::Spawn {
            launch,
            watchdog: Some(Duration::from_millis(1500)),
            limits: Default::default(),
        },
    );
    let Some(Input::Spawned { pid, .. }) = answer else {
        panic!("expected Spawned, got {answer:?}");
    };
    let out = bench.home.root().join("env.out");
    wait_for("the script's line", || {
        std::fs::read_to_string(&out).is_ok_and(|text| text == format!("{pid} {pid} 1500000\n"))
    });
    bench
        .exec
        .perform("watched", &mut slot, Effect::Kill { pid });
    reap(pid);
}

#[test]
fn kill_reaches_descendants_that_left_the_group() {
    let mut bench = Bench::new();
    bench.script(
        "escaper.sh",
        "#!/bin/sh\nsetsid sleep 1001 &\necho $! > \"$N0M1_HOME/escaped.pid\"\nexec sleep 1000\n",
    );
    let mut slot = Bench::slot("escaper");
    let Input::Spawned { pid, .. } = bench.spawn("escaper", &mut slot, "escaper.sh", None) else {
        panic!("not spawned");
    };
    let file = bench.home.root().join("escaped.pid");
    let mut escaped = 0;
    wait_for("the escaped pid", || {
        escaped = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(0);
        escaped > 0 && n0m1_core::process::ProcStat::read(escaped).is_some_and(|s| s.pgrp != pid)
    });
    // Terminate finds it (it left the group) and keeps it in the slot for Kill.
    bench
        .exec
        .perform("escaper", &mut slot, Effect::Terminate { pid });
    assert_eq!(slot.escaped.len(), 1, "{:?}", slot.escaped);
    assert_eq!(slot.escaped[0].0, escaped);
    bench
        .exec
        .perform("escaper", &mut slot, Effect::Kill { pid });
    reap(pid);
    wait_for("the escaped process to die", || {
        n0m1_core::process::ProcStat::read(escaped).is_none_or(|s| !s.is_alive())
    });
}

#[test]
fn records_and_saved_rows_reach_the_database_with_the_managers_name() {
    let mut bench = Bench::new();
    let mut slot = Bench::slot("saved");
    let mut row = slot.machine.snapshot();
    row.state = RunState::Backoff;
    row.restarts = 4;
    bench
        .exec
        .perform("saved", &mut slot, Effect::SaveState(row));
    bench.exec.perform(
        "saved",
        &mut slot,
        Effect::Record(LifecycleRecord::new("saved", LifecycleEvent::Crashed).message("test")),
    );
    let Bench {
        exec, home, _tmp, ..
    } = bench;
    exec.writer.close();
    let conn = n0m1_core::db::open(&home.db_path()).unwrap();
    let rows = state::load_all(&conn, Some("daemon_manager")).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].component_id, "saved");
    assert_eq!(rows[0].state, RunState::Backoff);
    assert_eq!(rows[0].restarts, 4);
    let manager: String = conn
        .query_row(
            "SELECT manager_script FROM component_lifecycle_log WHERE component_id = 'saved'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(manager.starts_with("daemon_manager"), "{manager}");
}

#[test]
fn a_probe_is_indexed_as_a_probe_of_its_component() {
    let mut bench = Bench::new();
    let hook = bench.home.hooks_dir().join("check.sh");
    std::fs::create_dir_all(bench.home.hooks_dir()).unwrap();
    std::fs::write(
        &hook,
        "#!/bin/sh\necho \"$N0M1_CHECKED_COMPONENT $N0M1_CHECKED_PID\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut slot = Bench::slot("probed");
    let answer = bench.exec.perform(
        "probed",
        &mut slot,
        Effect::RunProbe {
            program: hook,
            checked_pid: 4242,
        },
    );
    let Some(Input::ProbeStarted { pid }) = answer else {
        panic!("expected ProbeStarted, got {answer:?}");
    };
    assert_eq!(
        bench.exec.pids.get(&pid),
        Some(&PidOwner::Probe("probed".to_owned()))
    );
    assert_eq!(
        reap(pid),
        WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 0)
    );
    let log = bench.home.probe_log("probed");
    wait_for("the probe's output", || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("probed 4242"))
    });
}
