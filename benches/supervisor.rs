//! Supervisor benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench --bench supervisor` (release build). Set `BENCH_KILLS` for the number of
//! SIGKILLs per restart scenario (default 200, 1.5 s apart: 5 minutes each), `BENCH_IDLE_SECS`
//! to shorten the idle-CPU window (default 60 s), `BENCH_MANY` for the large start
//! (default 500) and `BENCH_ONLY=restart` to measure restarts alone (with and without log
//! capture, and the log writer at 10 MB/s). `BENCH_ONLY=compare` runs the interleaved
//! comparison alone: n0m1 (with its cgroup, as root), runit's `runsv` and a floor supervisor
//! (fork, exec, waitpid, write the pid: nothing else) each restart a component that forks a
//! grandchild, killed in turn (A, B, C, A, B, C…) `BENCH_KILLS` times (default 40) 1.5 s apart,
//! then the summed RSS and PSS of boot, the log writer and the managers, process by process.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binaries under test

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use n0m1_core::process::ProcStat;
use n0m1_core::{Home, PidFile};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rusqlite::Connection;

fn bin(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "n0m1ctl" => env!("CARGO_BIN_EXE_n0m1ctl"),
        "daemon_manager" => env!("CARGO_BIN_EXE_daemon_manager"),
        "boot_system" => env!("CARGO_BIN_EXE_boot_system"),
        "n0m1_logd" => env!("CARGO_BIN_EXE_n0m1_logd"),
        other => panic!("{other}"),
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn wait_for<T>(timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(value) = probe() {
            return Some(value);
        }
        // A short sleep, not a spin: on 2 cores a spinning prober would steal the CPU the
        // supervisor needs and inflate what it measures.
        std::thread::sleep(Duration::from_micros(50));
    }
    None
}

struct Bench {
    _tmp: tempfile::TempDir,
    home: Home,
    children: Vec<Child>,
}

impl Bench {
    fn new(config: &str) -> Bench {
        let tmp = tempfile::tempdir().unwrap();
        let home = Home::new(tmp.path().join("home"));
        home.ensure().unwrap();
        std::fs::write(home.config_path(), config).unwrap();
        n0m1_core::db::initialise(&home.db_path()).unwrap();
        let script = home.components_dir().join("sleeper.sh");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 100000\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let bench = Bench {
            _tmp: tmp,
            home,
            children: Vec::new(),
        };
        bench.sql("UPDATE autorun_components SET desired_state = 'inactive'");
        bench
    }
    fn sql(&self, sql: &str) {
        let conn = Connection::open(self.home.db_path()).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch(sql).unwrap();
    }
    fn add_sleepers(&self, count: usize, manager: &str) {
        let mut sql = String::from("BEGIN;");
        for i in 0..count {
            sql.push_str(&format!(
                "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state) VALUES ('s{i}', 'sleeper.sh', '{manager}', 'active');"
            ));
        }
        sql.push_str("COMMIT;");
        self.sql(&sql);
    }
    fn spawn(&mut self, name: &str) -> i32 {
        let child = Command::new(bin(name))
            .args(["--home", self.home.root().to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        self.children.push(child);
        pid
    }
    fn ctl(&self, args: &[&str]) -> std::process::Output {
        Command::new(bin("n0m1ctl"))
            .arg("--home")
            .arg(self.home.root())
            .args(args)
            .output()
            .unwrap()
    }
    fn pid(&self, stem: &str) -> Option<i32> {
        let text = std::fs::read_to_string(self.home.pid_file(stem)).ok()?;
        text.trim().parse().ok()
    }
    fn running_count(&self) -> usize {
        let conn = Connection::open(self.home.db_path()).unwrap();
        conn.query_row(
            "SELECT count(*) FROM component_state WHERE state = 'running'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0) as usize
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.ctl(&["stop", "--force"]);
        for child in &mut self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

fn fast_config(min_uptime: f64) -> String {
    format!(
        r#"{{"managers": {{"daemon_manager.py": {{"startup_delay": 0}}, "nano_manager.py": {{"startup_delay": 0}},
             "main_llm_manager.py": {{"startup_delay": 0}}}},
            "supervisor": {{"min_uptime": {min_uptime}, "max_crashes_in_window": 1000000}}}}"#
    )
}

/// The value below which `q` of `values` fall (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn summary(values: &[f64]) -> String {
    let mut largest = values.to_vec();
    largest.sort_by(|a, b| b.total_cmp(a));
    largest.truncate(5);
    let largest: Vec<String> = largest.iter().map(|v| format!("{v:.1}")).collect();
    format!(
        "median {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (min {:.2}, n={}; largest {})",
        quantile(values, 0.5),
        quantile(values, 0.9),
        quantile(values, 0.99),
        values.iter().copied().fold(0.0, f64::max),
        values.iter().copied().fold(f64::MAX, f64::min),
        values.len(),
        largest.join(", ")
    )
}

/// Set in the environment of the bench's own copy that plays the second process holding the
/// write lock: it holds `BEGIN IMMEDIATE` for 5 s, lets go for 0.5 s, and again, until killed.
const LOCKER_ENV: &str = "N0M1_BENCH_LOCKER_DB";
/// Set to a folder: this executable runs as the floor supervisor of `<folder>/run`, writing
/// each child's pid to `<folder>/pid`.
const FLOOR_ENV: &str = "N0M1_BENCH_FLOOR_DIR";

/// The least a supervisor can do: start the child, write its pid (atomically, as the others
/// do), wait for it, start it again. No logging, no database, no cgroup.
fn run_floor(dir: &str) -> ! {
    let dir = PathBuf::from(dir);
    loop {
        let mut child = Command::new(dir.join("run"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("floor: spawn");
        let tmp = dir.join("pid.tmp");
        std::fs::write(&tmp, child.id().to_string()).unwrap();
        std::fs::rename(&tmp, dir.join("pid")).unwrap();
        let _ = child.wait();
    }
}

/// The component of the comparison: it forks a grandchild, then becomes the sleeper.
const FORKING_SLEEPER: &str = "#!/bin/sh\nsleep 100001 &\nexec sleep 100000\n";

/// Kills the child a pid file names and waits for the next pid there.
struct Target {
    name: &'static str,
    read: Box<dyn Fn() -> Option<i32>>,
    current: i32,
    gaps: Vec<f64>,
}

impl Target {
    fn new(name: &'static str, read: Box<dyn Fn() -> Option<i32>>) -> Target {
        let current = wait_for(Duration::from_secs(10), &read).expect("supervised child up");
        Target {
            name,
            read,
            current,
            gaps: Vec::new(),
        }
    }
    fn kill_once(&mut self) {
        // The child may have been replaced since it was read (a supervisor restarting it for
        // its own reasons): kill whatever the pid file names now.
        if kill(Pid::from_raw(self.current), None).is_err() {
            self.current = wait_for(Duration::from_secs(10), &self.read)
                .unwrap_or_else(|| panic!("{}: no child", self.name));
        }
        let killed_at = Instant::now();
        if let Err(error) = kill(Pid::from_raw(self.current), Signal::SIGKILL) {
            panic!("{}: kill {}: {error}", self.name, self.current);
        }
        let current = self.current;
        let next = wait_for(Duration::from_secs(10), || {
            (self.read)().filter(|p| *p != current)
        })
        .expect("restart");
        self.gaps.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        self.current = next;
    }
}

/// n0m1, runsv and the floor, killed in turn.
fn restart_compare() {
    let kills: usize = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let every = Duration::from_millis(1500);
    let mut bench = Bench::new(&fast_config(0.2));
    std::fs::write(
        bench.home.components_dir().join("sleeper.sh"),
        FORKING_SLEEPER,
    )
    .unwrap();
    bench.add_sleepers(1, "daemon_manager");
    bench.spawn("daemon_manager");
    // Its PID file read as the others' are (a plain read, no lock test): measured the same way.
    let pid_file = bench.home.pid_file("s0");
    let mut targets = vec![Target::new(
        "n0m1",
        Box::new(move || std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok()),
    )];
    let in_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", targets[0].current))
        .is_ok_and(|text| text.contains("/n0m1/"));
    let tmp = tempfile::tempdir().unwrap();
    let service = |name: &str| {
        let dir = tmp.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        let run = dir.join("run");
        std::fs::write(&run, FORKING_SLEEPER).unwrap();
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    };
    let reader = |file: PathBuf| -> Box<dyn Fn() -> Option<i32>> {
        Box::new(move || std::fs::read_to_string(&file).ok()?.trim().parse().ok())
    };
    let mut helpers = Vec::new();
    if let Some(runsv) = ["/usr/bin/runsv", "/usr/sbin/runsv", "/sbin/runsv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
    {
        let dir = service("runit");
        helpers.push(
            Command::new(runsv)
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        targets.push(Target::new("runsv", reader(dir.join("supervise/pid"))));
    } else {
        println!("runit (runsv): not installed (apt-get install runit), its column skipped");
    }
    let dir = service("floor");
    helpers.push(
        Command::new(std::env::current_exe().unwrap())
            .env(FLOOR_ENV, &dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    targets.push(Target::new("floor", reader(dir.join("pid"))));
    for _ in 0..kills {
        for target in &mut targets {
            std::thread::sleep(every);
            target.kill_once();
        }
    }
    for helper in &mut helpers {
        let _ = helper.kill();
        let _ = helper.wait();
    }
    for target in &targets[1..] {
        let _ = kill(Pid::from_raw(target.current), Signal::SIGKILL);
    }
    println!(
        "restart after SIGKILL of a child that forked a grandchild, {kills} kills each, interleaved 1.5 s apart (n0m1's component in its cgroup: {in_cgroup}):"
    );
    let floor = targets.last().unwrap();
    let (floor_median, floor_p99) = (median(floor.gaps.clone()), quantile(&floor.gaps, 0.99));
    for target in &targets {
        println!(
            "  {:<6} {}  | median {:.2}x the floor's, p99 {:.2}x the floor's p99",
            target.name,
            summary(&target.gaps),
            median(target.gaps.clone()) / floor_median,
            quantile(&target.gaps, 0.99) / floor_p99
        );
    }
}

fn run_locker(db: &str) -> ! {
    let conn = Connection::open(db).unwrap();
    conn.busy_timeout(Duration::from_secs(30)).unwrap();
    loop {
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        std::thread::sleep(Duration::from_secs(5));
        conn.execute_batch("COMMIT").unwrap();
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// SIGKILLs the component `kills` times, `every` apart, and returns each gap from the kill to
/// the replacement's PID file, polled every 50 µs. (Sleeping in inotify instead was tried: on
/// this VM it measures how slowly idle vCPUs wake, median 3.1 ms and p90 11.5 ms for the same
/// binaries, so the figures come from the polling loop, which keeps one vCPU awake as a busy
/// machine would.)
fn kill_gaps(bench: &Bench, kills: usize, every: Duration) -> Vec<f64> {
    let mut gaps = Vec::new();
    let mut current = wait_for(Duration::from_secs(10), || bench.pid("s0")).expect("component up");
    for _ in 0..kills {
        std::thread::sleep(every);
        let killed_at = Instant::now();
        kill(Pid::from_raw(current), Signal::SIGKILL).unwrap();
        let next = wait_for(Duration::from_secs(10), || {
            bench.pid("s0").filter(|p| *p != current)
        })
        .expect("restart");
        gaps.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        current = next;
    }
    gaps
}

/// The anchor, measured the same way in the same run: runit's `runsv` supervising the same
/// sleeper, its replacement seen in `supervise/pid`. Skipped (None) where runit is not
/// installed (`apt-get install runit`).
fn runit_gaps(kills: usize, every: Duration) -> Option<Vec<f64>> {
    let runsv = ["/usr/bin/runsv", "/usr/sbin/runsv", "/bin/runsv"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())?;
    let tmp = tempfile::tempdir().unwrap();
    let service = tmp.path().join("sleeper");
    std::fs::create_dir(&service).unwrap();
    let run = service.join("run");
    std::fs::write(&run, "#!/bin/sh\nexec sleep 100000\n").unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut supervisor = Command::new(runsv)
        .arg(&service)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid_file = service.join("supervise/pid");
    let read = || -> Option<i32> { std::fs::read_to_string(&pid_file).ok()?.trim().parse().ok() };
    let mut gaps = Vec::new();
    let mut current = wait_for(Duration::from_secs(10), read).expect("runit's service up");
    for _ in 0..kills {
        std::thread::sleep(every);
        let killed_at = Instant::now();
        kill(Pid::from_raw(current), Signal::SIGKILL).unwrap();
        let next = wait_for(Duration::from_secs(10), || read().filter(|p| *p != current))
            .expect("runit restart");
        gaps.push(killed_at.elapsed().as_secs_f64() * 1000.0);
        current = next;
    }
    let _ = supervisor.kill();
    let _ = supervisor.wait();
    let _ = kill(Pid::from_raw(current), Signal::SIGKILL);
    Some(gaps)
}

/// CPU seconds (user + system) and resident/peak memory of `pid`, from /proc.
fn usage_of(pid: i32) -> (f64, u64, u64) {
    let cpu = ProcStat::read(pid).map_or(0.0, |s| {
        (s.utime_ticks + s.stime_ticks) as f64 / n0m1_core::process::clock_ticks_per_second() as f64
    });
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    (cpu, kib("VmRSS:"), kib("VmHWM:"))
}

/// The same restart measurement with log capture on (the component's stdout and stderr are
/// FIFOs read by `n0m1_logd`), then the log writer's CPU and memory while one component
/// writes 10 MB/s of 100-byte lines for 10 s.
fn log_capture(kills: usize, every: Duration) {
    let mut bench = Bench::new(&fast_config(0.2));
    let logd = bench.spawn("n0m1_logd");
    wait_for(Duration::from_secs(10), || bench.pid("n0m1_logd")).expect("log writer up");
    bench.add_sleepers(1, "daemon_manager");
    bench.spawn("daemon_manager");
    let gaps = kill_gaps(&bench, kills, every);
    let fifo = bench
        .home
        .log_fifo(n0m1_core::home::LogOwner::Component, "s0", false);
    println!(
        "restart after SIGKILL with log capture on ({} a FIFO), {kills} kills: {}",
        if n0m1_core::logpipe::is_fifo(&fifo) {
            "stdout is"
        } else {
            "NOT"
        },
        summary(&gaps)
    );
    let writer = bench.home.components_dir().join("writer.py");
    std::fs::write(
        &writer,
        "import sys, time\nchunk = (b'x' * 99 + b'\\n') * 100\nstart = time.time()\nsent = 0\n\
         while time.time() - start < 10:\n    sys.stdout.buffer.write(chunk); sys.stdout.flush(); sent += len(chunk)\n\
         \x20   pause = start + sent / 10e6 - time.time()\n    if pause > 0: time.sleep(pause)\n\
         print(sent, file=sys.stderr, flush=True)\ntime.sleep(100000)\n",
    )
    .unwrap();
    std::fs::set_permissions(&writer, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (cpu_before, _, _) = usage_of(logd);
    let started = Instant::now();
    bench.sql("INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state) VALUES ('writer', 'writer.py', 'daemon_manager', 'active')");
    let err_log = bench.home.component_logs("writer").1;
    let sent: Option<u64> = wait_for(Duration::from_secs(40), || {
        std::fs::read_to_string(&err_log).ok()?.trim().parse().ok()
    });
    let wall = started.elapsed().as_secs_f64();
    let (cpu_after, rss, peak) = usage_of(logd);
    let logged: u64 = std::fs::read_dir(bench.home.logs_dir())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("writer.log"))
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    println!(
        "log writer while a component writes 10 MB/s for 10 s: CPU {:.1} % of one core ({:.2} s in {:.1} s), RSS {} KiB (peak {} KiB); sent {} MB, {} MB on disk after rotation (10 MiB x 6 files at most)",
        (cpu_after - cpu_before) / wall * 100.0,
        cpu_after - cpu_before,
        wall,
        rss,
        peak,
        sent.unwrap_or(0) / 1_000_000,
        logged / 1_000_000
    );
}

fn restart_latency() {
    let kills: usize = std::env::var("BENCH_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let every = Duration::from_millis(1500);
    let mut bench = Bench::new(&fast_config(0.2));
    bench.add_sleepers(1, "daemon_manager");
    bench.spawn("daemon_manager");
    let gaps = kill_gaps(&bench, kills, every);
    println!(
        "restart after SIGKILL, {kills} kills 1.5 s apart: {}",
        summary(&gaps)
    );
    match runit_gaps(kills, every) {
        Some(gaps) => println!(
            "runit (runsv), the same sleeper and kills, same run: {}",
            summary(&gaps)
        ),
        None => println!("runit (runsv): not installed, anchor skipped"),
    }

    log_capture(kills, every);

    let mut locker = Command::new(std::env::current_exe().unwrap())
        .env(LOCKER_ENV, bench.home.db_path())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let gaps = kill_gaps(&bench, kills, every);
    let _ = locker.kill();
    let _ = locker.wait();
    println!(
        "restart after SIGKILL while another process holds the write lock 5 s of every 5.5 s: {}",
        summary(&gaps)
    );
    // Every crash is recorded once the lock lets go: the rows were queued, never dropped.
    let crashed = || -> i64 {
        Connection::open(bench.home.db_path())
            .unwrap()
            .query_row(
                "SELECT count(*) FROM component_lifecycle_log WHERE component_id = 's0' AND event_type = 'CRASHED'",
                [],
                |r| r.get(0),
            )
            .unwrap()
    };
    let written = wait_for(Duration::from_secs(15), || {
        (crashed() == 2 * kills as i64).then_some(())
    });
    println!(
        "CRASHED rows for the {} kills: {}{}",
        2 * kills,
        crashed(),
        if written.is_some() {
            ""
        } else {
            " (some still missing after 15 s)"
        }
    );

    let mut gone = Vec::new();
    for _ in 0..5 {
        let pid = wait_for(Duration::from_secs(10), || {
            bench.pid("s0").filter(|p| n0m1_core::process::is_alive(*p))
        })
        .expect("running");
        let started = Instant::now();
        let out = bench.ctl(&["disable", "s0"]);
        assert!(out.status.success());
        wait_for(Duration::from_secs(10), || {
            (!n0m1_core::process::is_alive(pid)).then_some(())
        })
        .expect("gone");
        gone.push(started.elapsed().as_secs_f64() * 1000.0);
        bench.ctl(&["enable", "s0"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "disable -> process gone: median {:.1} ms (n=5, including n0m1ctl itself)",
        median(gone)
    );
}

/// Boot, the log writer and the three managers that run, with their names.
fn supervisor_pids(home: &Home) -> Vec<(&'static str, i32)> {
    [
        "boot_system",
        "n0m1_logd",
        "daemon_manager",
        "nano_manager",
        "main_llm_manager",
    ]
    .into_iter()
    .filter_map(|stem| {
        Some((
            stem,
            PidFile::inspect(&home.pid_file(stem)).ok()?.live_pid()?,
        ))
    })
    .collect()
}

fn rss_kib(pid: i32) -> u64 {
    ProcStat::read(pid).map_or(0, |s| n0m1_core::process::rss_kib(&s))
}

fn pss_kib(pid: i32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn cpu_ticks(pids: &[i32]) -> u64 {
    pids.iter()
        .filter_map(|p| ProcStat::read(*p))
        .map(|s| s.utime_ticks + s.stime_ticks)
        .sum()
}

fn idle_footprint() {
    let bench = Bench::new(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.json")).unwrap(),
    );
    bench.add_sleepers(1, "daemon_manager");
    assert!(bench.ctl(&["start"]).status.success());
    std::thread::sleep(Duration::from_secs(3));
    let named = supervisor_pids(&bench.home);
    assert_eq!(named.len(), 5, "boot, the log writer and three managers");
    let pids: Vec<i32> = named.iter().map(|(_, pid)| *pid).collect();
    let total: u64 = pids.iter().map(|p| rss_kib(*p)).sum();
    let pss: u64 = pids.iter().map(|p| pss_kib(*p)).sum();
    println!(
        "RSS of boot, the log writer and 3 managers, idle with 1 component: {:.1} MB summed ({:.1} MB PSS: shared pages counted once)",
        total as f64 / 1024.0,
        pss as f64 / 1024.0
    );
    for (name, pid) in &named {
        println!(
            "  {name:<17} RSS {:>6} KiB  PSS {:>6} KiB",
            rss_kib(*pid),
            pss_kib(*pid)
        );
    }
    let secs: u64 = std::env::var("BENCH_IDLE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let before = cpu_ticks(&pids);
    std::thread::sleep(Duration::from_secs(secs));
    let used =
        (cpu_ticks(&pids) - before) as f64 / n0m1_core::process::clock_ticks_per_second() as f64;
    println!(
        "idle CPU of boot + 3 managers over {secs} s: {:.3} % of one core",
        used / secs as f64 * 100.0
    );
}

fn start_many(count: usize) {
    let bench = Bench::new(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.json")).unwrap(),
    );
    bench.add_sleepers(count, "daemon_manager");
    let started = Instant::now();
    assert!(bench.ctl(&["start"]).status.success());
    wait_for(Duration::from_secs(120), || {
        (bench.running_count() >= count).then_some(())
    })
    .expect("all running");
    let elapsed = started.elapsed();
    let spread: f64 = Connection::open(bench.home.db_path())
        .unwrap()
        .query_row(
            "SELECT max(started_at) - min(started_at) FROM component_state WHERE state = 'running'",
            [],
            |r| r.get(0),
        )
        .unwrap_or(0.0);
    let status_runs: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            assert!(bench.ctl(&["status", "--json"]).status.success());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    println!(
        "n0m1ctl start -> {count} components running: {:.2} s (first to last spawn {:.3} s); n0m1ctl status --json: median {:.1} ms",
        elapsed.as_secs_f64(),
        spread,
        median(status_runs)
    );
    let stop = Instant::now();
    assert!(bench.ctl(&["stop"]).status.success());
    println!(
        "n0m1ctl stop with {count} components: {:.2} s",
        stop.elapsed().as_secs_f64()
    );
}

fn main() {
    if let Some(db) = std::env::var_os(LOCKER_ENV) {
        run_locker(db.to_str().unwrap());
    }
    if let Some(dir) = std::env::var_os(FLOOR_ENV) {
        run_floor(dir.to_str().unwrap());
    }
    // `cargo bench` passes --bench; there are no filters here.
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        kernel()
    );
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "compare") {
        restart_compare();
        idle_footprint();
        return;
    }
    restart_latency();
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "restart") {
        return;
    }
    start_many(10);
    let many: usize = std::env::var("BENCH_MANY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    start_many(many);
    idle_footprint();
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "linux".into(), |s| format!("linux {}", s.trim()))
}
