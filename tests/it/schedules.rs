//! Scheduled one-shots through the real manager and n0m1ctl: `every` runs on time and never
//! twice at once, a cron expression with seconds fires on its second, `status` shows the next
//! run, a run missed while n0m1 was stopped runs once with `missed once`, and bad schedules
//! are refused by name.

use std::time::Duration;

use predicates::str::contains;

use crate::support::{TestEnv, wait_until};

const T: Duration = Duration::from_secs(30);

/// A job that appends `start <unix time> <pid>` and `end <unix time> <pid>` around a sleep.
fn job(env: &TestEnv, name: &str, seconds: f64) {
    env.script(
        name,
        &format!(
            "#!/bin/sh\nout=\"$N0M1_HOME/$N0M1_COMPONENT_ID.runs\"\necho \"start $(date +%s.%N) $$\" >> \"$out\"\nsleep {seconds}\necho \"end $(date +%s.%N) $$\" >> \"$out\"\n"
        ),
    );
}

/// `(start, end)` of each run the job recorded, in order (an unfinished run ends at +inf).
fn runs(env: &TestEnv, id: &str) -> Vec<(f64, f64)> {
    let text =
        std::fs::read_to_string(env.home.root().join(format!("{id}.runs"))).unwrap_or_default();
    let mut starts: Vec<(String, f64)> = Vec::new();
    let mut ends = std::collections::HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        let time: f64 = parts[1].parse().unwrap();
        match parts[0] {
            "start" => starts.push((parts[2].to_owned(), time)),
            _ => {
                ends.insert(parts[2].to_owned(), time);
            }
        }
    }
    starts
        .into_iter()
        .map(|(pid, start)| (start, ends.get(&pid).copied().unwrap_or(f64::INFINITY)))
        .collect()
}

fn add_oneshot(env: &TestEnv, id: &str, script: &str) {
    env.ctl(&[
        "add",
        id,
        "--script",
        script,
        "--manager",
        "daemon_manager",
        "--oneshot",
    ])
    .success();
}

#[test]
fn every_two_seconds_runs_on_time_and_a_long_run_is_never_doubled() {
    let env = TestEnv::new();
    job(&env, "quick.sh", 0.1);
    job(&env, "slow.sh", 3.0);
    add_oneshot(&env, "quick", "quick.sh");
    add_oneshot(&env, "slow", "slow.sh");
    env.ctl(&["schedule", "quick", "--every", "2s"])
        .success()
        .stdout(contains(
            "schedule of quick: every 2s (overlap skip, missed skip); next run",
        ));
    env.ctl(&["schedule", "slow", "--every", "2s", "--overlap", "skip"])
        .success();
    env.ctl(&["start"]).success();
    // Between runs it is `scheduled`, with its next run shown.
    wait_until(T, "quick scheduled", || {
        env.status_json("quick")["actual"] == "scheduled"
    });
    let shown = env.status_json("quick");
    let next = shown["schedule"]["next_run"].as_f64().unwrap();
    let now = n0m1_core::state::unix_now();
    assert!(
        next > now - 0.5 && next <= now + 2.5,
        "next run {next}, now {now}"
    );
    assert_eq!(next % 2.0, 0.0, "every 2s runs on even seconds: {next}");
    env.ctl(&["status", "quick"])
        .success()
        .stdout(contains("Schedule: every 2s (overlap skip, missed skip)"))
        .stdout(contains("Next run: "));

    std::thread::sleep(Duration::from_secs(8));
    let quick = runs(&env, "quick");
    assert!(quick.len() >= 3, "{} runs in 8 s: {quick:?}", quick.len());
    assert!(env.count_events("quick", "SCHEDULED_START") >= 3);
    // Each run began within half a second of its even second.
    for (start, _) in &quick {
        assert!(start % 2.0 < 0.5, "a run began at {start}");
    }
    let slow = runs(&env, "slow");
    assert!(slow.len() >= 2, "{slow:?}");
    for pair in slow.windows(2) {
        assert!(pair[1].0 >= pair[0].1, "two runs at once: {slow:?}");
    }
    assert!(env.count_events("slow", "SKIPPED_OVERLAP") >= 1);
    assert!(
        env.last_message("slow", "SKIPPED_OVERLAP")
            .contains("still runs (overlap skip)"),
        "{}",
        env.last_message("slow", "SKIPPED_OVERLAP")
    );
    // Never restarted between runs: every start is a scheduled one.
    assert_eq!(
        env.count_events("slow", "START_ATTEMPT"),
        env.count_events("slow", "SCHEDULED_START")
    );
    env.ctl(&["stop"]).success();
}

#[test]
fn a_cron_expression_with_seconds_fires_on_its_second() {
    let env = TestEnv::new();
    job(&env, "tick.sh", 0.0);
    add_oneshot(&env, "tick", "tick.sh");
    env.ctl(&["schedule", "tick", "--cron", "*/3 * * * * *"])
        .success();
    env.ctl(&["start"]).success();
    wait_until(T, "two cron runs", || runs(&env, "tick").len() >= 2);
    for (start, _) in runs(&env, "tick") {
        assert!(
            start % 3.0 < 0.5,
            "a run began at {start}, not on a third second"
        );
    }
    env.ctl(&["stop"]).success();
}

#[test]
fn a_run_missed_while_stopped_runs_once_with_missed_once() {
    let env = TestEnv::new();
    job(&env, "nightly.sh", 0.0);
    add_oneshot(&env, "nightly", "nightly.sh");
    env.ctl(&["schedule", "nightly", "--every", "3s", "--missed", "once"])
        .success();
    env.ctl(&["start"]).success();
    wait_until(T, "a first run", || runs(&env, "nightly").len() == 1);
    env.ctl(&["stop"]).success();
    // Stopped across at least one of its times.
    std::thread::sleep(Duration::from_secs(4));
    let before = runs(&env, "nightly").len();
    let started = n0m1_core::state::unix_now();
    env.ctl(&["start"]).success();
    wait_until(T, "the missed run", || runs(&env, "nightly").len() > before);
    let caught_up = runs(&env, "nightly")[before].0;
    assert!(
        caught_up - started < 2.0,
        "the missed run came {:.1} s after start",
        caught_up - started
    );
    let message = env.last_message("nightly", "SCHEDULED_START");
    let missed = env
        .db()
        .query_row(
            "SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'nightly' AND event_type = 'SCHEDULED_START' AND message LIKE '%missed%'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    assert_eq!(missed, 1, "one catch-up run: {message}");
    env.ctl(&["stop"]).success();
}

#[test]
fn bad_schedules_are_refused_by_name_and_change_nothing() {
    let mut env = TestEnv::new();
    job(&env, "job.sh", 0.0);
    env.add_component("always", "sleeper.sh", "daemon_manager", "{}");
    add_oneshot(&env, "job", "job.sh");
    let refused = |args: &[&str], says: &str| {
        env.ctl(args).failure().stderr(contains(says.to_owned()));
    };
    refused(
        &["schedule", "always", "--every", "5s"],
        "always is not a ONESHOT",
    );
    refused(&["schedule", "nothere", "--every", "5s"], "nothere");
    refused(&["schedule", "job", "--every", "0s"], "below the shortest");
    refused(&["schedule", "job", "--cron", "0 0 30 2 *"], "never fires");
    refused(
        &["schedule", "job", "--cron", "61 * * * *"],
        "not a cron expression",
    );
    refused(
        &["schedule", "job", "--every", "5s", "--overlap", "sometimes"],
        "component_schedules.overlap \"sometimes\" is not one of skip, queue, kill",
    );
    refused(
        &["schedule", "job", "--cron", "TZ=Mars/Olympus @hourly"],
        "Mars/Olympus",
    );
    assert_eq!(env.count_rows("component_schedules"), 0);
    // A bad row written by hand is said by its manager and never runs.
    env.sql("INSERT INTO component_schedules (component_id, spec) VALUES ('job', 'every 0s')");
    env.spawn("daemon_manager");
    wait_until(T, "the manager's refusal", || {
        env.last_message("job", "ERROR")
            .contains("below the shortest")
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(env.count_events("job", "START_ATTEMPT"), 0);
    env.ctl(&["schedule", "job", "--clear"])
        .success()
        .stdout(contains("schedule of job cleared"));
}
