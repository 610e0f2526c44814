//! Metric daemon benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench --bench metrics`. Per daemon: RSS and CPU time per 1,000 samples (each sample
//! includes its own write); then the sustained insert rate of the three daemons together with
//! a reader on one database file.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binaries under test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use n0m1_core::Home;
use n0m1_core::process::ProcStat;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rusqlite::Connection;

const DAEMONS: [(&str, &str); 3] = [
    ("cpu_usage_daemon", "cpu_usage_log"),
    ("mem_usage_daemon", "memory_usage_log"),
    ("temp_main_daemon", "cpu_temperature_log"),
];

fn bin(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "cpu_usage_daemon" => env!("CARGO_BIN_EXE_cpu_usage_daemon"),
        "mem_usage_daemon" => env!("CARGO_BIN_EXE_mem_usage_daemon"),
        "temp_main_daemon" => env!("CARGO_BIN_EXE_temp_main_daemon"),
        other => panic!("{other}"),
    })
}

fn fresh_home() -> (tempfile::TempDir, Home, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home"));
    home.ensure().unwrap();
    n0m1_core::db::initialise(&home.db_path()).unwrap();
    // A fake package sensor, so the temperature daemon has something to sample here too.
    let sys = tmp.path().join("sys");
    let hwmon = sys.join("class/hwmon/hwmon0");
    std::fs::create_dir_all(&hwmon).unwrap();
    std::fs::write(hwmon.join("name"), "coretemp\n").unwrap();
    std::fs::write(hwmon.join("temp1_input"), "50000\n").unwrap();
    std::fs::write(hwmon.join("temp1_label"), "Package id 0\n").unwrap();
    (tmp, home, sys)
}

fn spawn(name: &str, home: &Home, sys: &Path, interval: &str) -> Child {
    Command::new(bin(name))
        .args([
            "--home",
            home.root().to_str().unwrap(),
            "--interval",
            interval,
        ])
        .env("N0M1_SYS_ROOT", sys)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn rows(home: &Home, table: &str) -> i64 {
    Connection::open(home.db_path())
        .unwrap()
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn stop(mut child: Child) {
    let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
    let _ = child.wait();
}

fn per_daemon() {
    for (name, table) in DAEMONS {
        let (_tmp, home, sys) = fresh_home();
        let child = spawn(name, &home, &sys, "0.01");
        let pid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(60);
        while rows(&home, table) < 1000 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
        }
        let stat = ProcStat::read(pid).unwrap();
        let samples = rows(&home, table);
        let cpu_secs = (stat.utime_ticks + stat.stime_ticks) as f64
            / n0m1_core::process::clock_ticks_per_second() as f64;
        let rss_mb = n0m1_core::process::rss_kib(&stat) as f64 / 1024.0;
        println!(
            "{name:<17} RSS {rss_mb:.1} MB; CPU {:.3} ms per sample ({:.2} s for {samples} samples, start-up included)",
            cpu_secs * 1000.0 / samples as f64,
            cpu_secs
        );
        stop(child);
    }
}

fn sustained() {
    let (_tmp, home, sys) = fresh_home();
    let seconds = 10;
    let children: Vec<Child> = DAEMONS
        .iter()
        .map(|(name, _)| spawn(name, &home, &sys, "0.001"))
        .collect();
    let conn = Connection::open(home.db_path()).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    let started = Instant::now();
    let mut reads = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        for (_, table) in DAEMONS {
            let _: Vec<f64> = conn
                .prepare_cached(&format!("SELECT * FROM {table} ORDER BY id DESC LIMIT 10"))
                .unwrap()
                .query_map([], |r| r.get::<_, f64>(2))
                .unwrap()
                .filter_map(Result::ok)
                .collect();
            reads += 1;
        }
    }
    let alive = children
        .iter()
        .filter(|c| n0m1_core::process::is_alive(c.id() as i32))
        .count();
    for child in children {
        stop(child);
    }
    let total: i64 = DAEMONS.iter().map(|(_, t)| rows(&home, t)).sum::<i64>()
        + rows(&home, "system_metrics_log");
    let errors: i64 = Connection::open(home.db_path())
        .unwrap()
        .query_row(
            "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'ERROR'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    println!(
        "3 daemons at 1 ms intervals + 1 reader, {seconds} s: {:.0} rows/s written, {:.0} reads/s, {alive}/3 daemons alive, {errors} ERROR events",
        total as f64 / seconds as f64,
        reads as f64 / seconds as f64
    );
}

fn main() {
    println!(
        "machine: {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    per_daemon();
    sustained();
}
