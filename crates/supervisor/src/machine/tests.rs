//! The README's supervision policy, rule by rule, as tables of (time, input) → effects
//! against the pure machine.

use std::time::{Duration, Instant};

use n0m1_core::components::{ComponentRow, RUN_TYPE_ONESHOT};
use n0m1_core::config::{Seconds, SupervisorPolicy};
use n0m1_core::state::RunState;
use nix::sys::signal::Signal;

use super::*;

fn policy() -> SupervisorPolicy {
    SupervisorPolicy {
        min_uptime: Seconds(1.0),
        backoff_initial: Seconds(0.5),
        backoff_max: Seconds(60.0),
        max_quick_deaths: 3,
        stop_timeout: Seconds(10.0),
        heartbeat_interval: Seconds(2.0),
        max_crashes_in_window: 4,
        crash_window: Seconds(60.0),
        start_timeout: Seconds(30.0),
    }
}

fn row(active: bool) -> ComponentRow {
    ComponentRow {
        component_id: "c".into(),
        base_script_name: "sleeper.sh".into(),
        manager_affinity: "daemon_manager".into(),
        desired_active: active,
        launch_args_json: Some("{}".into()),
        run_type: "PRIMARY_RUN".into(),
        modified: Some("2026-12-01 00:00:00".into()),
    }
}

fn active() -> Input {
    Input::Row {
        row: row(true),
        request: None,
    }
}

fn inactive() -> Input {
    Input::Row {
        row: row(false),
        request: None,
    }
}

fn spawned(pid: i32) -> Input {
    Input::Spawned {
        pid,
        start_ticks: 1,
        script_path: "/x/sleeper.sh".into(),
    }
}

fn exited(pid: i32, cause: ExitCause) -> Input {
    Input::Exited { pid, cause }
}

const KILLED: ExitCause = ExitCause::Signal(Signal::SIGKILL);

/// Effects in short: `spawn`, `term 10`, `kill 10`, `release`, `save`, `forget`, and the
/// event type of each record.
fn short(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|effect| match effect {
            Effect::Spawn { .. } => "spawn".to_owned(),
            Effect::Terminate { pid } => format!("term {pid}"),
            Effect::Kill { pid } => format!("kill {pid}"),
            Effect::ReleasePidFile => "release".to_owned(),
            Effect::KillOrphans => "orphans".to_owned(),
            Effect::Record(record) => record.event.as_str().to_owned(),
            Effect::SaveState(_) => "save".to_owned(),
            Effect::Forget => "forget".to_owned(),
            Effect::RunProbe { .. } => "probe".to_owned(),
            Effect::KillProbe { pid } => format!("kill-probe {pid}"),
            Effect::ApplyLimits(_) => "apply-limits".to_owned(),
        })
        .collect()
}

/// Runs `steps` (milliseconds after the start, input, expected effects) against a new
/// component, `shutting_down` from the step that has it on; returns the machine.
fn check(steps: &[(u64, Input, &[&str])]) -> Component {
    check_with(Component::new(row(true)), &policy(), steps)
}

fn check_with(
    mut component: Component,
    policy: &SupervisorPolicy,
    steps: &[(u64, Input, &[&str])],
) -> Component {
    let start = Instant::now();
    let mut shutting_down = false;
    for (index, (at_ms, input, expected)) in steps.iter().enumerate() {
        shutting_down |= *input == Input::Shutdown;
        let cx = Context {
            now: start + Duration::from_millis(*at_ms),
            unix_now: 1_000.0 + *at_ms as f64 / 1000.0,
            policy,
            shutting_down,
        };
        let effects = component.handle(input.clone(), &cx);
        assert_eq!(
            short(&effects),
            *expected,
            "step {index} at {at_ms} ms: {input:?}"
        );
    }
    component
}

#[test]
fn an_active_row_is_started_and_an_inactive_one_is_not() {
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (50, active(), &[]),
    ]);
    assert_eq!(c.run_state(), RunState::Running);
    assert_eq!(c.proc().unwrap().started_unix, 1_000.0);
    let c = check(&[(0, inactive(), &[])]);
    assert_eq!(c.run_state(), RunState::Stopped);
}

#[test]
fn a_crash_after_min_uptime_restarts_at_once_spawning_before_any_record() {
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            1_500,
            exited(10, KILLED),
            &["kill 10", "release", "spawn", "CRASHED", "orphans"],
        ),
        (1_500, spawned(11), &["START_ATTEMPT", "save"]),
        // A clean exit of a persistent component is restarted too.
        (
            3_000,
            exited(11, ExitCause::Code(0)),
            &["kill 11", "release", "spawn", "EXITED", "orphans"],
        ),
    ]);
    assert_eq!(c.restarts(), 2);
    assert_eq!(c.last_exit(), Some("exit code 0"));
}

#[test]
fn quick_deaths_back_off_doubling_then_fail_until_enabled() {
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            100,
            exited(10, ExitCause::Code(1)),
            &[
                "kill 10",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        // backoff_initial 0.5 s: not before.
        (599, Input::Tick, &[]),
        (600, Input::Tick, &["spawn"]),
        (600, spawned(11), &["START_ATTEMPT", "save"]),
        (
            700,
            exited(11, ExitCause::Code(1)),
            &[
                "kill 11",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        // Doubled: 1 s.
        (1_699, Input::Tick, &[]),
        (1_700, Input::Tick, &["spawn"]),
        (1_700, spawned(12), &["START_ATTEMPT", "save"]),
        // The third quick death is max_quick_deaths: FAILED, no more starts.
        (
            1_800,
            exited(12, ExitCause::Code(1)),
            &["kill 12", "release", "CRASHED", "FAILED", "save", "orphans"],
        ),
        (60_000, Input::Tick, &[]),
        (60_000, active(), &[]),
    ]);
    assert_eq!(c.run_state(), RunState::Failed);
    assert!(c.last_exit().unwrap().contains("n0m1ctl enable c"));
}

fn failed() -> Component {
    check(&[
        (0, active(), &["spawn"]),
        (
            0,
            Input::LaunchFailed {
                reason: "no such script".into(),
            },
            &["START_FAILED", "save"],
        ),
    ])
}

#[test]
fn enable_or_any_edit_of_the_row_resets_a_failed_component() {
    let reset = Input::Row {
        row: row(true),
        request: Some(Request::Reset),
    };
    let c = check_with(failed(), &policy(), &[(0, reset, &["RESET", "spawn"])]);
    assert_eq!(c.run_state(), RunState::Running);

    let mut edited = row(true);
    edited.modified = Some("2026-12-01 00:00:05".into());
    let edit = Input::Row {
        row: edited,
        request: None,
    };
    check_with(failed(), &policy(), &[(0, edit, &["RESET", "spawn"])]);

    // Disabling a failed component forgets the failure.
    let c = check_with(failed(), &policy(), &[(0, inactive(), &["save"])]);
    assert_eq!(c.run_state(), RunState::Stopped);
}

#[test]
fn an_operator_restart_stops_and_starts_a_running_component_and_wakes_a_backing_off_one() {
    let restart = || Input::Row {
        row: row(true),
        request: Some(Request::Restart),
    };
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (2_000, restart(), &["term 10", "STOP_REQUESTED", "save"]),
        (2_010, exited(10, ExitCause::Signal(Signal::SIGTERM)), &[]),
        (
            2_020,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "spawn", "orphans"],
        ),
        (2_020, spawned(11), &["START_ATTEMPT", "save"]),
        // Died at once: backing off; a restart request does not wait for the backoff.
        (
            2_100,
            exited(11, ExitCause::Code(1)),
            &[
                "kill 11",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        (2_200, restart(), &["RESET", "spawn"]),
        (2_200, spawned(12), &["START_ATTEMPT", "save"]),
    ]);
    assert_eq!(c.run_state(), RunState::Running);
    // The desired state is the row's: a restart of an inactive component does nothing, and
    // a failed one starts again.
    check_with(
        Component::new(row(false)),
        &policy(),
        &[(
            0,
            Input::Row {
                row: row(false),
                request: Some(Request::Restart),
            },
            &[],
        )],
    );
    check_with(failed(), &policy(), &[(0, restart(), &["RESET", "spawn"])]);
}

#[test]
fn a_spawn_error_counts_as_a_quick_death() {
    let c = check(&[
        (0, active(), &["spawn"]),
        (
            0,
            Input::SpawnFailed {
                reason: "cannot start x: permission denied".into(),
            },
            &["START_FAILED", "RESTART_SCHEDULED", "save"],
        ),
    ]);
    assert_eq!(c.run_state(), RunState::Backoff);
}

#[test]
fn a_oneshot_runs_once_after_a_clean_exit_and_again_after_a_crash() {
    let mut oneshot = row(true);
    oneshot.run_type = RUN_TYPE_ONESHOT.into();
    let c = check_with(
        Component::new(oneshot.clone()),
        &policy(),
        &[
            (
                0,
                Input::Row {
                    row: oneshot.clone(),
                    request: None,
                },
                &["spawn"],
            ),
            (0, spawned(10), &["START_ATTEMPT", "save"]),
            (
                2_000,
                exited(10, ExitCause::Code(3)),
                &["kill 10", "release", "spawn", "CRASHED", "orphans"],
            ),
            (2_000, spawned(11), &["START_ATTEMPT", "save"]),
            (
                4_000,
                exited(11, ExitCause::Code(0)),
                &["kill 11", "release", "STOPPED", "save", "orphans"],
            ),
            (
                9_000,
                Input::Row {
                    row: oneshot,
                    request: None,
                },
                &[],
            ),
        ],
    );
    assert_eq!(c.run_state(), RunState::Completed);
}

#[test]
fn changed_launch_settings_restart_a_running_component() {
    let mut changed = row(true);
    changed.launch_args_json = Some(r#"{"--interval": "5"}"#.into());
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            2_000,
            Input::Row {
                row: changed,
                request: None,
            },
            &["term 10", "STOP_REQUESTED", "save"],
        ),
        (2_010, exited(10, ExitCause::Signal(Signal::SIGTERM)), &[]),
        (
            2_020,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "spawn", "orphans"],
        ),
        (2_020, spawned(11), &["START_ATTEMPT", "save"]),
    ]);
    assert_eq!(c.restarts(), 1);
}

#[test]
fn disabling_stops_and_enabling_during_the_stop_starts_it_again() {
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, inactive(), &["term 10", "STOP_REQUESTED", "save"]),
        (150, exited(10, ExitCause::Code(0)), &[]),
        (
            160,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "save", "orphans"],
        ),
        (200, active(), &["spawn"]),
        (200, spawned(11), &["START_ATTEMPT", "save"]),
        (300, inactive(), &["term 11", "STOP_REQUESTED", "save"]),
        (310, active(), &[]),
        (320, exited(11, ExitCause::Code(0)), &[]),
        (
            330,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "spawn", "orphans"],
        ),
    ]);
}

#[test]
fn a_deleted_row_stops_the_component_and_forgets_it() {
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, Input::RowGone, &["term 10", "STOP_REQUESTED", "save"]),
        (150, exited(10, ExitCause::Code(0)), &[]),
        (
            160,
            Input::TreeGone,
            &[
                "STOPPED_SUCCESSFULLY",
                "release",
                "save",
                "forget",
                "orphans",
            ],
        ),
    ]);
    check_with(
        Component::new(row(false)),
        &policy(),
        &[(0, inactive(), &[]), (10, Input::RowGone, &["forget"])],
    );
}

#[test]
fn the_stop_timeout_escalates_to_sigkill_then_gives_up_loudly() {
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, inactive(), &["term 10", "STOP_REQUESTED", "save"]),
        (10_099, Input::Tick, &[]),
        (10_100, Input::Tick, &["kill 10"]),
        (15_099, Input::Tick, &[]),
        (
            15_100,
            Input::Tick,
            &["STOP_FAILED", "release", "orphans", "save"],
        ),
    ]);
    assert_eq!(c.run_state(), RunState::Stopped);
    assert!(c.proc().is_none());

    // Killed in time: stopped forcefully.
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, inactive(), &["term 10", "STOP_REQUESTED", "save"]),
        (10_100, Input::Tick, &["kill 10"]),
        (10_110, exited(10, KILLED), &[]),
        (
            10_120,
            Input::TreeGone,
            &["STOPPED_FORCEFULLY", "release", "save", "orphans"],
        ),
    ]);
}

#[test]
fn a_stop_waits_for_the_tree_not_just_the_leader() {
    let mut c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, inactive(), &["term 10", "STOP_REQUESTED", "save"]),
    ]);
    let t0 = Instant::now();
    assert_eq!(c.awaiting_tree(), None);
    let cx = Context {
        now: t0,
        unix_now: 0.0,
        policy: &policy(),
        shutting_down: false,
    };
    assert!(c.handle(exited(10, ExitCause::Code(0)), &cx).is_empty());
    assert_eq!(c.awaiting_tree(), Some(10));
    assert_eq!(c.deadline(t0), Some(t0 + GROUP_POLL), "polls the group");
    assert_eq!(c.run_state(), RunState::Stopping);
}

#[test]
fn an_adopted_process_is_supervised_like_a_spawned_one() {
    let adopted = Input::Adopted {
        pid: 77,
        start_ticks: 5,
        started_unix: 900.0,
        age: Duration::from_secs(100),
        restarts: 4,
        last_exit: Some("exit code 1".into()),
        ready: true,
        status_text: Some("serving".into()),
    };
    let c = check_with(
        Component::new(row(true)),
        &policy(),
        &[
            (0, adopted, &["ADOPTED", "save"]),
            // Its age counts toward min_uptime: an immediate restart, not a backoff.
            (
                10,
                exited(77, ExitCause::Unknown),
                &["kill 77", "release", "spawn", "CRASHED", "orphans"],
            ),
        ],
    );
    assert_eq!(c.restarts(), 5);
    assert!(!c.ready(), "the replacement has not said READY=1 yet");
}

#[test]
fn ready_is_recorded_once_per_process_and_status_text_is_saved() {
    let status = |text: &str| Input::Notified(vec![Notice::Status(text.into())]);
    let c = check_with(
        Component::new(row(true)),
        &policy(),
        &[
            (0, active(), &["spawn"]),
            (0, spawned(10), &["START_ATTEMPT", "save"]),
            (1, status("warming up"), &["save"]),
            (1, status("warming up"), &[]),
            (
                2,
                Input::Notified(vec![Notice::Ready, Notice::Status("serving".into())]),
                &["READY", "save"],
            ),
            (
                3,
                Input::Notified(vec![Notice::Ready, Notice::Watchdog]),
                &[],
            ),
        ],
    );
    assert!(c.ready());
    assert_eq!(c.status_text(), Some("serving"));
    // A new process starts not ready, and a stopping one is not heard.
    let c = check_with(
        c,
        &policy(),
        &[
            (
                5000,
                exited(10, ExitCause::Code(1)),
                &["kill 10", "release", "spawn", "CRASHED", "orphans"],
            ),
            (5000, spawned(11), &["START_ATTEMPT", "save"]),
            (5001, inactive(), &["term 11", "STOP_REQUESTED", "save"]),
            (5001, Input::Notified(vec![Notice::Ready]), &[]),
        ],
    );
    assert!(!c.ready());
    assert_eq!(c.status_text(), None);
}

#[test]
fn shutdown_stops_what_runs_and_restarts_nothing() {
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, Input::Shutdown, &["term 10", "STOP_REQUESTED", "save"]),
        (150, exited(10, ExitCause::Code(0)), &[]),
        (
            160,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "save", "orphans"],
        ),
    ]);
    // A crash during shutdown is recorded, not restarted; a backoff is cancelled.
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            2_000,
            Input::Shutdown,
            &["term 10", "STOP_REQUESTED", "save"],
        ),
    ]);
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            100,
            exited(10, ExitCause::Code(1)),
            &[
                "kill 10",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        (200, Input::Shutdown, &["save"]),
        (5_000, Input::Tick, &[]),
    ]);
}

#[test]
fn exits_of_other_pids_and_unsafe_ids_are_refused() {
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, exited(99, KILLED), &[]),
    ]);
    let mut bad = row(true);
    bad.component_id = "../etc".into();
    let c = check_with(
        Component::new(bad.clone()),
        &policy(),
        &[
            (
                0,
                Input::Row {
                    row: bad.clone(),
                    request: None,
                },
                &["START_FAILED", "save"],
            ),
            (
                10,
                Input::Row {
                    row: bad,
                    request: Some(Request::Reset),
                },
                &[],
            ),
        ],
    );
    assert_eq!(c.run_state(), RunState::Failed);

    // n0m1's own PID-file names are not for components.
    for reserved in ["nano_manager", "boot_system"] {
        let mut hijack = row(true);
        hijack.component_id = reserved.into();
        let mut c = Component::new(hijack.clone());
        let effects = c.handle(
            Input::Row {
                row: hijack,
                request: None,
            },
            &Context {
                now: Instant::now(),
                unix_now: 0.0,
                policy: &policy(),
                shutting_down: false,
            },
        );
        assert_eq!(short(&effects), ["START_FAILED", "save"]);
        let Effect::Record(record) = &effects[0] else {
            panic!("a record first: {effects:?}")
        };
        assert!(record.message.as_deref().unwrap().contains("reserved"));
    }
}

#[test]
fn exits_just_after_min_uptime_are_a_crash_loop_when_too_many_fall_in_the_window() {
    // min_uptime 1 s and at most 4 exits in 60 s: runs of 1.2 s restart at once three times,
    // then the 4th exit in the window backs off like a quick death, and so on to FAILED.
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            1_200,
            exited(10, ExitCause::Code(1)),
            &["kill 10", "release", "spawn", "CRASHED", "orphans"],
        ),
        (1_200, spawned(11), &["START_ATTEMPT", "save"]),
        (
            2_400,
            exited(11, ExitCause::Code(1)),
            &["kill 11", "release", "spawn", "CRASHED", "orphans"],
        ),
        (2_400, spawned(12), &["START_ATTEMPT", "save"]),
        (
            3_600,
            exited(12, ExitCause::Code(1)),
            &["kill 12", "release", "spawn", "CRASHED", "orphans"],
        ),
        (3_600, spawned(13), &["START_ATTEMPT", "save"]),
        (
            4_800,
            exited(13, ExitCause::Code(1)),
            &[
                "kill 13",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        (5_300, Input::Tick, &["spawn"]),
        (5_300, spawned(14), &["START_ATTEMPT", "save"]),
        (
            6_500,
            exited(14, ExitCause::Code(1)),
            &[
                "kill 14",
                "release",
                "CRASHED",
                "RESTART_SCHEDULED",
                "save",
                "orphans",
            ],
        ),
        (7_500, Input::Tick, &["spawn"]),
        (7_500, spawned(15), &["START_ATTEMPT", "save"]),
        (
            8_700,
            exited(15, ExitCause::Code(1)),
            &["kill 15", "release", "CRASHED", "FAILED", "save", "orphans"],
        ),
    ]);
    assert_eq!(c.run_state(), RunState::Failed);
    assert!(
        c.last_exit().unwrap().contains("exits within 60 s"),
        "{:?}",
        c.last_exit()
    );

    // Spread out (one exit every 21 s), the same runs are restarted at once forever.
    let mut steps: Vec<(u64, Input, &[&str])> = vec![
        (0, active(), &["spawn"]),
        (0, spawned(100), &["START_ATTEMPT", "save"]),
    ];
    let restarted: &[&str] = &["kill", "release", "spawn", "CRASHED", "orphans"];
    for run in 0..8u64 {
        let pid = 100 + run as i32;
        steps.push((
            (run + 1) * 21_000,
            exited(pid, ExitCause::Code(1)),
            restarted,
        ));
        steps.push((
            (run + 1) * 21_000,
            spawned(pid + 1),
            &["START_ATTEMPT", "save"],
        ));
    }
    let mut component = Component::new(row(true));
    let start = Instant::now();
    let policy = policy();
    for (at_ms, input, expected) in steps {
        let cx = Context {
            now: start + Duration::from_millis(at_ms),
            unix_now: 0.0,
            policy: &policy,
            shutting_down: false,
        };
        let effects: Vec<String> = short(&component.handle(input, &cx))
            .into_iter()
            .map(|e| {
                if e.starts_with("kill ") {
                    "kill".to_owned()
                } else {
                    e
                }
            })
            .collect();
        assert_eq!(effects, expected, "at {at_ms} ms");
    }
    assert_eq!(component.run_state(), RunState::Running);
}

#[test]
fn a_process_that_died_unwatched_is_recorded_and_its_count_kept() {
    let c = check(&[
        (
            0,
            Input::Vanished {
                pid: 42,
                restarts: 3,
            },
            &["CRASHED", "save"],
        ),
        (0, active(), &["spawn"]),
        (0, spawned(43), &["START_ATTEMPT", "save"]),
    ]);
    assert_eq!(c.restarts(), 4);
    // Only a component that is not running can have vanished.
    check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (
            10,
            Input::Vanished {
                pid: 9,
                restarts: 3,
            },
            &[],
        ),
    ]);
}

fn watchdog(ms: u64) -> Input {
    Input::Health(n0m1_core::health::HealthCheck {
        watchdog: Some(Duration::from_millis(ms)),
        probe: None,
    })
}

fn probe(failures: u32) -> Input {
    Input::Health(n0m1_core::health::HealthCheck {
        watchdog: None,
        probe: Some(n0m1_core::health::Probe {
            program: "/h/hooks/check".into(),
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            failures,
        }),
    })
}

fn probe_done(pid: i32, ok: bool) -> Input {
    Input::ProbeDone {
        pid: Some(pid),
        ok,
        how: if ok { "exit code 0" } else { "exit code 1" }.into(),
    }
}

#[test]
fn a_missed_watchdog_is_unhealthy_and_the_group_killed_then_restarted() {
    let ping = || Input::Notified(vec![Notice::Watchdog]);
    let c = check(&[
        (0, watchdog(1000), &[]),
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        // Pings keep it healthy; a tick before the period ends does nothing.
        (900, ping(), &[]),
        (1800, Input::Tick, &[]),
        (1900, Input::Tick, &["UNHEALTHY", "kill 10"]),
        // Killed once, not on every tick.
        (1950, Input::Tick, &[]),
        // The SIGKILL's exit is a crash like any other: restarted at once (it ran > 1 s).
        (
            1960,
            exited(10, KILLED),
            &["kill 10", "release", "spawn", "CRASHED", "orphans"],
        ),
        (1960, spawned(11), &["START_ATTEMPT", "save"]),
    ]);
    // The replacement has its own period from its start.
    let t0 = Instant::now();
    assert!(c.deadline(t0).is_some());
}

#[test]
fn failed_probes_in_a_row_are_unhealthy_and_a_success_resets_the_count() {
    check(&[
        (0, probe(2), &[]),
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, Input::Tick, &["probe"]),
        (100, Input::ProbeStarted { pid: 50 }, &[]),
        (110, probe_done(50, false), &[]),
        (210, Input::Tick, &["probe"]),
        (210, Input::ProbeStarted { pid: 51 }, &[]),
        (220, probe_done(51, true), &[]),
        (320, Input::Tick, &["probe"]),
        (320, Input::ProbeStarted { pid: 52 }, &[]),
        (330, probe_done(52, false), &[]),
        // A probe that overruns its timeout is killed, and counts as a failure.
        (430, Input::Tick, &["probe"]),
        (430, Input::ProbeStarted { pid: 53 }, &[]),
        (480, Input::Tick, &["kill-probe 53"]),
        (
            485,
            Input::ProbeDone {
                pid: Some(53),
                ok: false,
                how: "signal SIGKILL".into(),
            },
            &["UNHEALTHY", "kill 10"],
        ),
        // A result from a probe that is not the one out is ignored.
        (486, probe_done(99, false), &[]),
    ]);
}

#[test]
fn a_component_waits_for_its_dependencies_then_starts_or_fails_after_the_timeout() {
    let waiting = || Input::Dependencies(Gate::Waiting("d (ready)".into()));
    let c = check(&[
        (0, waiting(), &[]),
        (0, active(), &["save"]),
        (10_000, Input::Tick, &[]),
        (20_000, Input::Dependencies(Gate::Open), &["spawn"]),
        (20_000, spawned(10), &["START_ATTEMPT", "save"]),
    ]);
    assert_eq!(c.run_state(), RunState::Running);
    // Never met: FAILED at start_timeout, saying what it waited for.
    let c = check(&[
        (0, waiting(), &[]),
        (0, active(), &["save"]),
        (29_999, Input::Tick, &[]),
        (30_000, Input::Tick, &["FAILED", "save"]),
    ]);
    assert_eq!(c.run_state(), RunState::Failed);
    assert!(
        c.last_exit().is_some_and(|m| m.contains("for d (ready)")),
        "{:?}",
        c.last_exit()
    );
    // Disabled while waiting: stopped.
    let c = check(&[
        (0, waiting(), &[]),
        (0, active(), &["save"]),
        (5, inactive(), &["save"]),
    ]);
    assert_eq!(c.run_state(), RunState::Stopped);
}

#[test]
fn a_halted_dependent_waits_without_a_timeout_and_its_clock_starts_when_the_dependency_returns() {
    let halt = || Input::Dependencies(Gate::Halt("its dependency d is disabled".into()));
    let c = check(&[
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (5000, halt(), &["term 10", "STOP_REQUESTED", "save"]),
        (5010, exited(10, ExitCause::Signal(Signal::SIGTERM)), &[]),
        (
            5010,
            Input::TreeGone,
            &["STOPPED_SUCCESSFULLY", "release", "save", "orphans"],
        ),
        // Disabled for an hour: no timeout.
        (3_600_000, Input::Tick, &[]),
        // Enabled again: it waits for the condition, with a fresh start_timeout.
        (
            3_600_000,
            Input::Dependencies(Gate::Waiting("d (ready)".into())),
            &[],
        ),
        (3_629_999, Input::Tick, &[]),
        (3_630_000, Input::Dependencies(Gate::Open), &["spawn"]),
    ]);
    assert_eq!(c.run_state(), RunState::Running);
}

#[test]
fn a_component_in_a_cycle_is_refused_once_and_never_times_out() {
    let cycle = || Input::Dependencies(Gate::Cycle("c → d → c".into()));
    let c = check(&[
        (0, cycle(), &[]),
        (0, active(), &["ERROR", "save"]),
        (1, cycle(), &[]),
        (1, active(), &[]),
    ]);
    assert_eq!(c.run_state(), RunState::Waiting);
    assert_eq!(c.deadline(Instant::now()), None);
    // Broken: it starts.
    check_with(
        c,
        &policy(),
        &[(2, Input::Dependencies(Gate::Open), &["spawn"])],
    );
}

/// Effects carry what the executor needs: a spawn what to launch and the watchdog period, a
/// saved row the component as it is after the whole input.
#[test]
fn effects_carry_their_data() {
    let start = Instant::now();
    let policy = policy();
    let cx = |ms: u64| Context {
        now: start + Duration::from_millis(ms),
        unix_now: 1_000.0 + ms as f64 / 1000.0,
        policy: &policy,
        shutting_down: false,
    };
    let mut c = Component::new(row(true));
    c.handle(
        Input::Health(HealthCheck {
            watchdog: Some(Duration::from_secs(3)),
            ..HealthCheck::default()
        }),
        &cx(0),
    );
    let effects = c.handle(active(), &cx(0));
    assert_eq!(
        effects,
        [Effect::Spawn {
            launch: row(true).launch_key(),
            watchdog: Some(Duration::from_secs(3)),
            limits: Limits::default(),
        }]
    );
    let effects = c.handle(spawned(10), &cx(0));
    let Some(Effect::SaveState(saved)) = effects.last() else {
        panic!("{effects:?}");
    };
    assert_eq!(saved.component_id, "c");
    assert_eq!(saved.state, RunState::Running);
    assert_eq!(saved.pid, Some(10));
    assert_eq!(saved.started_at, Some(1_000.0));

    // A crash after min_uptime: the row saved in the batch is the state after it (the
    // replacement on its way), and the spawn carries the row's launch again.
    let effects = c.handle(exited(10, KILLED), &cx(1_500));
    assert!(effects.contains(&Effect::Spawn {
        launch: row(true).launch_key(),
        watchdog: Some(Duration::from_secs(3)),
        limits: Limits::default(),
    }));
    let effects = c.handle(spawned(11), &cx(1_600));
    let saved: Vec<&n0m1_core::state::ComponentState> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::SaveState(row) => Some(row),
            _ => None,
        })
        .collect();
    assert!(!saved.is_empty());
    for row in saved {
        assert_eq!(row.restarts, 1);
        assert_eq!(row.last_exit.as_deref(), Some("killed by signal SIGKILL"));
    }
}

fn limited(memory_mib: u64) -> Input {
    Input::Limits(Limits {
        memory_max: Some(memory_mib << 20),
        ..Limits::default()
    })
}

/// Limits reach a running process at once, never restart it; an account change waits for
/// the next process; a kill by the memory limit is OOM_KILLED, then restarted like any crash.
#[test]
fn limits_apply_live_and_an_oom_kill_is_named_then_restarted() {
    let c = check(&[
        (0, limited(64), &[]),
        (0, active(), &["spawn"]),
        (0, spawned(10), &["START_ATTEMPT", "save"]),
        (100, limited(64), &[]),
        (200, limited(128), &["apply-limits"]),
        (
            300,
            Input::Limits(Limits {
                memory_max: Some(128 << 20),
                user: Some("nobody".into()),
                ..Limits::default()
            }),
            &[],
        ),
        (
            1_500,
            Input::OutOfMemory {
                pid: 99,
                detail: "someone else's".into(),
            },
            &[],
        ),
        (
            1_500,
            Input::OutOfMemory {
                pid: 10,
                detail: "pid 10: over memory_max 128.0 MiB (peak 128.0 MiB)".into(),
            },
            &[],
        ),
        (
            1_500,
            exited(10, KILLED),
            &["kill 10", "release", "spawn", "OOM_KILLED", "orphans"],
        ),
        (1_500, spawned(11), &["START_ATTEMPT", "save"]),
        // The next crash of the new process is a plain crash again.
        (
            3_000,
            exited(11, KILLED),
            &["kill 11", "release", "spawn", "CRASHED", "orphans"],
        ),
    ]);
    assert_eq!(c.limits().user.as_deref(), Some("nobody"));
}

#[test]
fn an_oom_kill_record_names_the_limit_and_the_peak() {
    let start = Instant::now();
    let policy = policy();
    let cx = Context {
        now: start,
        unix_now: 1_000.0,
        policy: &policy,
        shutting_down: false,
    };
    let mut c = Component::new(row(true));
    c.handle(limited(64), &cx);
    c.handle(active(), &cx);
    c.handle(spawned(812), &cx);
    c.handle(
        Input::OutOfMemory {
            pid: 812,
            detail: "pid 812: over memory_max 64.0 MiB (peak 64.0 MiB)".into(),
        },
        &cx,
    );
    let effects = c.handle(exited(812, KILLED), &cx);
    let record = effects
        .iter()
        .find_map(|e| match e {
            Effect::Record(r) if r.event == LifecycleEvent::OomKilled => Some(r),
            _ => None,
        })
        .unwrap();
    assert!(
        record.message.as_deref().unwrap().starts_with(
            "pid 812: over memory_max 64.0 MiB (peak 64.0 MiB); killed by signal SIGKILL"
        ),
        "{record:?}"
    );
}

fn scheduled_row() -> ComponentRow {
    let mut row = row(true);
    row.run_type = RUN_TYPE_ONESHOT.into();
    row
}

fn scheduled_input() -> Input {
    Input::Row {
        row: scheduled_row(),
        request: None,
    }
}

/// `every 2s`, with the overlap and missed rules given; the log saw it last at `last_run`.
fn every_two_seconds(overlap: &str, missed: &str, last_run: Option<f64>) -> Input {
    let row = n0m1_core::schedules::ScheduleRow {
        component_id: "c".into(),
        spec: "every 2s".into(),
        overlap: overlap.into(),
        missed: missed.into(),
    };
    Input::Timing(Timing::Scheduled {
        schedule: row.check().unwrap(),
        last_run,
    })
}

// The table's clock: unix 1000.0 at 0 ms, so `every 2s` is due at 1002 (2,000 ms), 1004, …

#[test]
fn a_scheduled_oneshot_runs_on_time_and_waits_between_runs() {
    let c = check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (1_000, Input::Tick, &[]),
            (2_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (2_000, spawned(10), &["START_ATTEMPT", "save"]),
            // A clean end: back to waiting, never restarted between runs.
            (
                2_500,
                exited(10, ExitCause::Code(0)),
                &["kill 10", "release", "STOPPED", "save", "orphans"],
            ),
            (3_000, Input::Tick, &[]),
            (4_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
        ],
    );
    assert_eq!(c.next_run(), Some(1_006.0));
}

#[test]
fn overlap_skip_records_the_skipped_run_and_queue_runs_it_after() {
    let skip = check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (2_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (2_000, spawned(10), &["START_ATTEMPT", "save"]),
            // Still running when the next run is due.
            (4_000, Input::Tick, &["SKIPPED_OVERLAP"]),
            (
                5_000,
                exited(10, ExitCause::Code(0)),
                &["kill 10", "release", "STOPPED", "save", "orphans"],
            ),
            (6_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
        ],
    );
    assert_eq!(skip.next_run(), Some(1_008.0));
    check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("queue", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (2_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (2_000, spawned(10), &["START_ATTEMPT", "save"]),
            (4_000, Input::Tick, &[]),
            // The queued run starts as the last one ends.
            (
                5_000,
                exited(10, ExitCause::Code(0)),
                &[
                    "kill 10",
                    "release",
                    "STOPPED",
                    "spawn",
                    "SCHEDULED_START",
                    "orphans",
                ],
            ),
        ],
    );
}

#[test]
fn overlap_kill_stops_the_old_run_and_starts_the_new_one() {
    check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("kill", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (2_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (2_000, spawned(10), &["START_ATTEMPT", "save"]),
            (4_000, Input::Tick, &["term 10", "STOP_REQUESTED", "save"]),
            (4_100, exited(10, ExitCause::Signal(Signal::SIGTERM)), &[]),
            (
                4_100,
                Input::TreeGone,
                &[
                    "STOPPED_SUCCESSFULLY",
                    "release",
                    "spawn",
                    "SCHEDULED_START",
                    "orphans",
                ],
            ),
        ],
    );
}

#[test]
fn a_missed_run_is_run_once_only_when_the_row_says_once() {
    // Last run at 990: the run due at 992 was missed while no manager ran.
    check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "once", Some(990.0)), &[]),
            (0, scheduled_input(), &["spawn", "SCHEDULED_START"]),
        ],
    );
    check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "skip", Some(990.0)), &[]),
            (0, scheduled_input(), &["save"]),
        ],
    );
    // Nothing was missed: the last run was the last one due.
    check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "once", Some(999.5)), &[]),
            (0, scheduled_input(), &["save"]),
        ],
    );
}

#[test]
fn failed_runs_count_as_quick_deaths_and_end_failed() {
    let c = check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (2_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (2_000, spawned(10), &["START_ATTEMPT", "save"]),
            (
                2_100,
                exited(10, ExitCause::Code(1)),
                &["kill 10", "release", "CRASHED", "save", "orphans"],
            ),
            (4_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (4_000, spawned(11), &["START_ATTEMPT", "save"]),
            (
                4_100,
                exited(11, ExitCause::Code(1)),
                &["kill 11", "release", "CRASHED", "save", "orphans"],
            ),
            (6_000, Input::Tick, &["spawn", "SCHEDULED_START"]),
            (6_000, spawned(12), &["START_ATTEMPT", "save"]),
            (
                6_100,
                exited(12, ExitCause::Code(1)),
                &["kill 12", "release", "CRASHED", "FAILED", "save", "orphans"],
            ),
            (8_000, Input::Tick, &[]),
        ],
    );
    assert_eq!(c.run_state(), RunState::Failed);
}

#[test]
fn a_removed_schedule_leaves_it_completed_and_a_broken_one_never_runs() {
    let c = check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, every_two_seconds("skip", "skip", None), &[]),
            (0, scheduled_input(), &["save"]),
            (1_000, Input::Timing(Timing::Unscheduled), &["save"]),
            (2_000, Input::Tick, &[]),
            (2_000, scheduled_input(), &[]),
        ],
    );
    assert_eq!(c.run_state(), RunState::Completed);
    let broken = check_with(
        Component::new(scheduled_row()),
        &policy(),
        &[
            (0, Input::Timing(Timing::Broken), &[]),
            (0, scheduled_input(), &["save"]),
            (60_000, Input::Tick, &[]),
        ],
    );
    assert_eq!(broken.run_state(), RunState::Scheduled);
    assert_eq!(broken.next_run(), None);
}
