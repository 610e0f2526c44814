use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use predicates::str::contains;

use n0m1_core::state::unix_now;

use crate::support::{
    TestEnv, align_to_second_fraction, alive, assert_one_row_per_second, wait_for_a_row_from,
    wait_until,
};

const T: Duration = Duration::from_secs(10);

fn term(env: &mut TestEnv, pid: i32) {
    kill(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    let status = env.wait_child(pid, T);
    assert!(
        status.success(),
        "a daemon stopped by SIGTERM exits 0, got {status:?}"
    );
}

#[test]
fn cpu_and_memory_daemons_write_rows_within_a_second_and_stop_cleanly() {
    let mut env = TestEnv::new();
    let started = Instant::now();
    let cpu = env.spawn_with("cpu_usage_daemon", &["--interval", "0.2"], &[]);
    let mem = env.spawn_with("mem_usage_daemon", &["--interval", "0.2"], &[]);
    wait_until(T, "a cpu_usage_log row", || {
        env.count_rows("cpu_usage_log") > 0
    });
    wait_until(T, "a memory_usage_log row", || {
        env.count_rows("memory_usage_log") > 0
    });
    // Not a timing assertion on the machine's speed: a first row taking seconds would mean the
    // daemon waited a whole interval or more, which is the defect being guarded against.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "first rows took {:?}",
        started.elapsed()
    );
    wait_until(T, "a few rounds", || {
        env.count_rows("cpu_usage_log") >= 3 && env.count_rows("system_metrics_log") >= 3
    });
    let (min, max): (f64, f64) = env
        .db()
        .query_row(
            "SELECT min(cpu_usage), max(cpu_usage) FROM cpu_usage_log",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(
        (0.0..=100.0).contains(&min) && (0.0..=100.0).contains(&max),
        "{min}..{max}"
    );
    let mem_usage: f64 = env
        .db()
        .query_row("SELECT mem_usage FROM memory_usage_log LIMIT 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(mem_usage > 0.0 && mem_usage < 100.0, "{mem_usage}");
    let combined: i64 = env
        .db()
        .query_row(
            "SELECT count(*) FROM system_metrics_log WHERE cpu_usage IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(combined >= 3);
    term(&mut env, cpu);
    term(&mut env, mem);
    for id in ["cpu_usage_daemon", "mem_usage_daemon"] {
        let events = env.events_of(id);
        assert_eq!(
            events.first().map(String::as_str),
            Some("STARTED_SUCCESSFULLY"),
            "{id}"
        );
        assert_eq!(events.last().map(String::as_str), Some("STOPPED"), "{id}");
    }
    let writes: i64 = env
        .db()
        .query_row("SELECT count(*) FROM db_access_log WHERE component_id = 'cpu_usage_daemon' AND access_type = 'WRITE'", [], |r| r.get(0))
        .unwrap();
    assert!(writes >= 1);
}

#[test]
fn a_writer_holding_the_lock_for_seconds_loses_no_sample() {
    let mut env = TestEnv::new();
    // One sample a second, taken near 0.3 s into each second (its row's timestamp is the whole
    // second), so every second of the run must hold exactly one row.
    align_to_second_fraction(0.3);
    let mem = env.spawn_with("mem_usage_daemon", &["--interval", "1"], &[]);
    wait_until(T, "the first row", || {
        env.count_rows("memory_usage_log") > 0
    });
    let first_second = unix_now() as i64;
    let blocker = env.db();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let locked_at = unix_now() as i64;
    std::thread::sleep(Duration::from_secs(5));
    let unlocked_at = unix_now() as i64;
    assert_eq!(
        env.db()
            .query_row(
                "SELECT count(*) FROM memory_usage_log WHERE timestamp > datetime(?1, 'unixepoch')",
                [locked_at],
                |r| r.get::<_, i64>(0)
            )
            .unwrap(),
        0,
        "nothing could be written while the lock was held"
    );
    blocker.execute_batch("COMMIT").unwrap();
    drop(blocker);
    let last_second = unlocked_at + 1;
    wait_for_a_row_from(&env, "memory_usage_log", last_second + 1);
    assert!(alive(mem), "the daemon survives a held lock");
    term(&mut env, mem);
    // Samples taken while the lock was held were queued with their own time and written later.
    assert_one_row_per_second(&env, "memory_usage_log", first_second, last_second);
    let errors = env.count_events("mem_usage_daemon", "ERROR");
    assert_eq!(errors, 0);
}

#[test]
fn no_sensor_is_reported_once_and_the_daemon_idles() {
    let mut env = TestEnv::new();
    let empty_sys = env.home.root().join("empty_sys");
    std::fs::create_dir_all(&empty_sys).unwrap();
    let temp = env.spawn_with(
        "temp_main_daemon",
        &["--interval", "0.1"],
        &[("N0M1_SYS_ROOT", empty_sys.to_str().unwrap())],
    );
    wait_until(T, "NO_SENSOR", || {
        env.count_events("temp_main_daemon", "NO_SENSOR") == 1
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(alive(temp));
    assert_eq!(env.count_events("temp_main_daemon", "NO_SENSOR"), 1);
    assert_eq!(env.count_rows("cpu_temperature_log"), 0, "no fake rows");
    term(&mut env, temp);
    env.ctl(&["metrics"])
        .success()
        .stdout(contains("N/A (no sensor)"));
}

#[test]
fn a_sensor_is_read_in_celsius() {
    let mut env = TestEnv::new();
    let sys = env.home.root().join("sys");
    let hwmon = sys.join("class/hwmon/hwmon3");
    std::fs::create_dir_all(&hwmon).unwrap();
    std::fs::write(hwmon.join("name"), "k10temp\n").unwrap();
    std::fs::write(hwmon.join("temp1_input"), "47250\n").unwrap();
    std::fs::write(hwmon.join("temp1_label"), "Tctl\n").unwrap();
    let temp = env.spawn_with(
        "temp_main_daemon",
        &["--interval", "0.1"],
        &[("N0M1_SYS_ROOT", sys.to_str().unwrap())],
    );
    wait_until(T, "a temperature row", || {
        env.count_rows("cpu_temperature_log") >= 2
    });
    let value: f64 = env
        .db()
        .query_row(
            "SELECT temperature_celsius FROM cpu_temperature_log LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(value, 47.25);
    term(&mut env, temp);
    env.ctl(&["metrics", "--limit", "5"])
        .success()
        .stdout(contains("47.2°C"));
}

#[test]
fn the_default_daemons_run_under_daemon_manager() {
    let mut env = TestEnv::new();
    env.sql("UPDATE autorun_components SET desired_state = 'active' WHERE component_id IN ('cpu_usage_daemon', 'mem_usage_daemon', 'temp_main_daemon')");
    env.spawn("daemon_manager");
    wait_until(T, "rows from the managed daemons", || {
        env.count_rows("cpu_usage_log") > 0 && env.count_rows("memory_usage_log") > 0
    });
    for id in ["cpu_usage_daemon", "mem_usage_daemon", "temp_main_daemon"] {
        wait_until(T, &format!("{id} to announce itself"), || {
            env.count_events(id, "STARTED_SUCCESSFULLY") == 1
        });
    }
    let output = env
        .ctl(&["metrics", "--json"])
        .success()
        .get_output()
        .stdout
        .clone();
    let summaries: serde_json::Value = serde_json::from_slice(&output).unwrap();
    assert_eq!(summaries[0]["name"], "CPU usage");
    assert!(summaries[0]["samples"].as_u64().unwrap() >= 1);
}
