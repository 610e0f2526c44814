//! n0m1_web benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench --bench web` (release build). A home with `BENCH_COMPONENTS` components
//! (default 500; half of them with a live process recorded, a resource sample each, 5,000
//! lifecycle rows, an hour of metrics); n0m1_web's RSS idle and with 10 SSE clients, then
//! `BENCH_REQUESTS` (default 500) sequential requests to `/metrics` and `/api/v1/components`
//! over one keep-alive connection: p50, p99, max.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binary under test

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use n0m1_core::Home;

mod common;
use common::{env_usize, percentile, rss};

fn populate(home: &Home, components: usize) {
    n0m1_core::db::initialise(&home.db_path()).unwrap();
    let conn = n0m1_core::db::open(&home.db_path()).unwrap();
    let me = std::process::id() as i32;
    let ticks = n0m1_core::process::ProcStat::read(me).unwrap().start_ticks as i64;
    let now = n0m1_core::state::unix_now();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..components {
        let id = format!("bench_{i:04}");
        conn.execute(
            "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state, launch_args_json)
             VALUES (?1, 'sleeper.sh', 'daemon_manager', 'active', '{}')",
            [&id],
        )
        .unwrap();
        let running = i % 2 == 0;
        conn.execute(
            "INSERT INTO component_state (component_id, manager, state, pid, pid_start_ticks, started_at, restarts, last_exit, updated_at)
             VALUES (?1, 'daemon_manager', ?2, ?3, ?4, ?5, ?6, 'exit code 1', ?5)",
            rusqlite::params![
                id,
                if running { "running" } else { "failed" },
                running.then_some(me),
                running.then_some(ticks),
                now - 100.0,
                (i % 7) as i64
            ],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO component_resource_log (component_id, manager, sampled_at, rss_bytes, cpu_seconds, processes)
             VALUES (?1, 'daemon_manager', ?2, 4194304, 1.5, 1)",
            rusqlite::params![id, now - 1.0],
        )
        .unwrap();
    }
    for i in 0..5000 {
        conn.execute(
            "INSERT INTO component_lifecycle_log (component_id, event_type, message) VALUES (?1, 'START_ATTEMPT', 'bench')",
            [format!("bench_{:04}", i % components.max(1))],
        )
        .unwrap();
    }
    conn.execute_batch(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 3599)
         INSERT INTO cpu_usage_log (timestamp, cpu_usage) SELECT datetime('now', '-' || i || ' seconds'), i % 100 FROM n;
         WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 3599)
         INSERT INTO memory_usage_log (timestamp, mem_usage) SELECT datetime('now', '-' || i || ' seconds'), 40 + i % 10 FROM n;
         COMMIT",
    )
    .unwrap();
}

fn open_stream(addr: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .write_all(format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    reader
}

fn main() {
    let components = env_usize("BENCH_COMPONENTS", 500);
    let requests = env_usize("BENCH_REQUESTS", 500);
    let tmp = tempfile::tempdir().unwrap();
    let home = Home::new(tmp.path().join("home"));
    home.ensure().unwrap();
    populate(&home, components);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(env!("CARGO_BIN_EXE_n0m1_web"))
        .args(["--home", home.root().to_str().unwrap(), "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < deadline, "n0m1_web did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
    let agent = ureq::AgentBuilder::new().build();
    let get = |path: &str| {
        let response = agent.get(&format!("http://{addr}{path}")).call().unwrap();
        response.into_string().unwrap().len()
    };
    // One request of each kind first: the blocking pool's threads exist from then on.
    let metrics_bytes = get("/metrics");
    let list_bytes = get("/api/v1/components");
    std::thread::sleep(Duration::from_secs(2));
    let (idle, _) = rss(server.id());

    let mut streams: Vec<_> = (0..10).map(|_| open_stream(&addr)).collect();
    // Events for the streams to carry.
    let conn = n0m1_core::db::open(&home.db_path()).unwrap();
    for _ in 0..50 {
        conn.execute(
            "INSERT INTO component_lifecycle_log (component_id, event_type, message) VALUES ('bench_0000', 'READY', 'bench')",
            [],
        )
        .unwrap();
    }
    for stream in &mut streams {
        let mut seen = 0;
        while seen < 50 {
            let mut line = String::new();
            stream.read_line(&mut line).unwrap();
            if line.starts_with("id:") {
                seen += 1;
            }
        }
    }
    let (with_clients, _) = rss(server.id());

    let mut results = Vec::new();
    for path in ["/metrics", "/api/v1/components"] {
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let start = Instant::now();
            get(path);
            times.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        times.sort_by(f64::total_cmp);
        results.push((path, times));
    }
    let (after, peak) = rss(server.id());
    drop(streams);
    let _ = server.kill();
    let _ = server.wait();

    println!(
        "n0m1_web, {components} components ({} with a live pid), release build, {} cores",
        components.div_ceil(2),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("  /metrics {metrics_bytes} bytes, /api/v1/components {list_bytes} bytes");
    println!(
        "  RSS idle {:.1} MB; with 10 SSE clients {:.1} MB; after {requests} requests of each {:.1} MB (peak {:.1} MB)",
        idle as f64 / 1024.0,
        with_clients as f64 / 1024.0,
        after as f64 / 1024.0,
        peak as f64 / 1024.0
    );
    for (path, times) in &results {
        println!(
            "  {path:<20} n={} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            times.len(),
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().copied().unwrap_or(0.0)
        );
    }
}
