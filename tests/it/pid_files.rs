use std::time::Duration;

use crate::support::{TestEnv, alive, wait_until};

#[test]
fn of_several_managers_started_at_once_exactly_one_wins() {
    let mut env = TestEnv::new();
    let pids: Vec<i32> = (0..4).map(|_| env.spawn("daemon_manager")).collect();
    let winner = env.wait_pid("daemon_manager", "one daemon_manager to hold its PID file");
    let losers: Vec<i32> = pids.iter().copied().filter(|p| *p != winner).collect();
    assert_eq!(losers.len(), 3, "the winner is one of the four");
    for loser in losers {
        let status = env.wait_child(loser, Duration::from_secs(10));
        assert!(!status.success(), "a second manager must refuse to run");
    }
    let err = std::fs::read_to_string(env.home.root().join("daemon_manager.test.err"))
        .unwrap_or_default();
    assert!(err.contains("already running"), "{err}");
    assert!(alive(winner));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(winner),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(env.wait_child(winner, Duration::from_secs(10)).success());
    wait_until(
        Duration::from_secs(5),
        "the winner's PID file to go",
        || env.pid_files().is_empty(),
    );
}
