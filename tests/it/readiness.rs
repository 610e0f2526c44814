//! Readiness through sd_notify: each component gets `NOTIFY_SOCKET`; `READY=1` and
//! `STATUS=` from its process group are recorded and shown by `status`; datagrams from any
//! other process are ignored; n0m1's own daemons say READY=1 once they do their job.

use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::{TestEnv, wait_until};

const T: Duration = Duration::from_secs(20);

#[test]
fn ready_and_status_come_from_the_component_and_nobody_else() {
    let mut env = TestEnv::new();
    // A program written for systemd, in Python: STATUS first, READY a moment later.
    env.script(
        "notifier.py",
        "import os, socket, time\n\
         s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n\
         s.sendto(b'STATUS=warming up', os.environ['NOTIFY_SOCKET'])\n\
         time.sleep(0.3)\n\
         s.sendto(b'READY=1\\nSTATUS=serving 3 tables', os.environ['NOTIFY_SOCKET'])\n\
         time.sleep(1000)\n",
    );
    env.add_component("notifier", "notifier.py", "daemon_manager", "{}");
    env.add_component("sleepy", "sleeper.sh", "daemon_manager", "{}");
    env.sql("UPDATE autorun_components SET desired_state = 'active' WHERE component_id = 'mem_usage_daemon'");
    let manager = env.spawn_with("daemon_manager", &[], &[("N0M1_NATIVE", "1")]);
    wait_until(T, "notifier READY", || {
        env.count_events("notifier", "READY") == 1
    });
    let notifier = env.status_json("notifier");
    assert_eq!(notifier["ready"], true, "{notifier}");
    assert_eq!(notifier["status_text"], "serving 3 tables", "{notifier}");
    env.ctl(&["status"])
        .stdout(predicates::str::contains("serving 3 tables"));

    // The bundled metric daemon is ready once its first row is written.
    wait_until(T, "mem_usage_daemon READY", || {
        env.count_events("mem_usage_daemon", "READY") == 1
    });
    assert!(env.count_rows("memory_usage_log") >= 1);
    assert_eq!(
        env.status_json("mem_usage_daemon")["status_text"],
        "writing memory_usage_log"
    );

    // A datagram from a process that is not sleepy's (this test) is not sleepy's readiness.
    let sleepy = env.wait_pid("sleepy", "sleepy to run");
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    socket
        .send_to(
            b"READY=1\nSTATUS=spoofed",
            env.home.notify_socket("daemon_manager"),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let spoofed = env.status_json("sleepy");
    assert_eq!(spoofed["ready"], false, "{spoofed}");
    assert!(spoofed.get("status_text").is_none(), "{spoofed}");
    assert_eq!(env.count_events("sleepy", "READY"), 0);
    assert!(crate::support::alive(sleepy));

    // A restarted manager keeps what the adopted process said.
    kill(Pid::from_raw(manager), Signal::SIGKILL).unwrap();
    let _ = env.wait_child(manager, T);
    env.spawn_with("daemon_manager", &[], &[("N0M1_NATIVE", "1")]);
    wait_until(T, "notifier adopted", || {
        env.count_events("notifier", "ADOPTED") == 1
    });
    let adopted = env.status_json("notifier");
    assert_eq!(adopted["ready"], true, "{adopted}");
    assert_eq!(adopted["status_text"], "serving 3 tables", "{adopted}");
}

/// `systemd-notify` (a helper the component's script runs, so another pid of its group)
/// works unchanged, its BARRIER=1 included.
#[test]
fn systemd_notify_from_a_script_works_unchanged() {
    if !std::path::Path::new("/usr/bin/systemd-notify").exists() {
        eprintln!("skipped: no /usr/bin/systemd-notify (.ci/run installs systemd)");
        return;
    }
    let mut env = TestEnv::new();
    env.script(
        "sd.sh",
        "#!/bin/sh\nsystemd-notify --ready --status=\"up via systemd-notify\"\necho \"notify exit $?\"\nexec sleep 1000\n",
    );
    env.add_component("sd", "sd.sh", "daemon_manager", "{}");
    env.spawn("daemon_manager");
    wait_until(T, "sd READY", || env.count_events("sd", "READY") == 1);
    assert_eq!(
        env.status_json("sd")["status_text"],
        "up via systemd-notify"
    );
    let log = env.home.component_logs("sd").0;
    wait_until(T, "systemd-notify to return", || {
        crate::support::file_contains(&log, "notify exit 0")
    });
}

/// A flood of sd_notify datagrams from outside any component is counted and said at most
/// once a second: the manager's log keeps its history, and the flood costs little.
#[test]
fn a_flood_of_stray_notifications_is_summarised_not_logged_one_by_one() {
    let mut env = TestEnv::new();
    env.add_component("quiet", "sleeper.sh", "daemon_manager", "{}");
    let manager = env.spawn("daemon_manager");
    env.wait_pid("quiet", "quiet running");
    let socket = std::os::unix::net::UnixDatagram::unbound().unwrap();
    let path = env.home.notify_socket("daemon_manager");
    let started = std::time::Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        if socket.send_to(b"READY=1", &path).is_ok() {
            sent += 1;
        }
    }
    assert!(sent > 1000, "sent {sent}");
    std::thread::sleep(Duration::from_millis(1200));
    let log = std::fs::read_to_string(env.home.root().join("daemon_manager.test.err")).unwrap();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("no component")).collect();
    assert!(
        !warnings.is_empty() && warnings.len() <= 4,
        "{} warnings for {sent} datagrams",
        warnings.len()
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains(" notifications from processes of no component")),
        "{warnings:?}"
    );
    assert!(crate::support::alive(manager));
}
