//! Fleet benchmark: prints figures, asserts nothing about time.
//!
//! `cargo bench --bench fleet` (release build). `BENCH_HOSTS` local homes (default 100), each
//! with `BENCH_COMPONENTS` rows (default 1,000) and its own n0m1_web serving TLS (self-signed,
//! `read_requires_token`) on a loopback address; then `n0m1ctl --fleet FILE status` over the
//! first 20 and over all of them, interleaved (20, all, 20, all …) `BENCH_RUNS` times each
//! (default 15): median, p99, max wall time. Last, n0m1_web's RSS with TLS against without,
//! on `BENCH_RSS_HOMES` homes of each kind (default 5), after one status request each,
//! sampled alternately.

#![allow(clippy::disallowed_methods)] // the benchmark starts the binaries under test

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use n0m1_core::Home;

mod common;
use common::{cpu_name, env_usize, percentile, rss};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    home: PathBuf,
    addr: String,
    tls: bool,
    child: Child,
}

/// A home with `components` rows and n0m1_web on `addr`.
fn home_with_web(root: &Path, index: usize, components: usize, tls: bool) -> Server {
    let path = root.join(format!("home{index:03}"));
    let home = Home::new(&path);
    home.ensure().unwrap();
    n0m1_core::db::initialise(&home.db_path()).unwrap();
    let conn = n0m1_core::db::open(&home.db_path()).unwrap();
    conn.execute_batch("BEGIN").unwrap();
    for i in 0..components {
        conn.execute(
            "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state, launch_args_json)
             VALUES (?1, 'sleeper.sh', 'daemon_manager', 'inactive', '{}')",
            [format!("c{i:04}")],
        )
        .unwrap();
    }
    conn.execute_batch("COMMIT").unwrap();
    let web = if tls {
        r#"{"web": {"tls": "self-signed", "read_requires_token": true}}"#
    } else {
        r#"{"web": {"read_requires_token": true}}"#
    };
    std::fs::write(home.config_path(), web).unwrap();
    let addr = format!(
        "127.0.{}.{}:{}",
        1 + index / 250,
        2 + index % 250,
        free_port()
    );
    let child = Command::new(env!("CARGO_BIN_EXE_n0m1_web"))
        .args(["--home", path.to_str().unwrap(), "--listen", &addr])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Server {
        home: path,
        addr,
        tls,
        child,
    }
}

fn wait_listening(server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(&server.addr).is_err() {
        assert!(Instant::now() < deadline, "{} never listened", server.addr);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ctl(home: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_n0m1ctl"))
        .arg("--home")
        .arg(home)
        .args(args)
        .output()
        .unwrap()
}

fn fleet_file(path: &Path, servers: &[Server]) {
    let mut text = String::new();
    for (i, server) in servers.iter().enumerate() {
        let pin = String::from_utf8(ctl(&server.home, &["web", "fingerprint"]).stdout).unwrap();
        text.push_str(&format!(
            "[[hosts]]\nname = \"h{i:03}\"\nurl = \"https://{}\"\ntoken_file = \"{}\"\nfingerprint = \"{}\"\n\n",
            server.addr,
            server.home.join("web.token").display(),
            pin.trim()
        ));
    }
    std::fs::write(path, text).unwrap();
}

fn main() {
    let hosts = env_usize("BENCH_HOSTS", 100).max(20);
    let components = env_usize("BENCH_COMPONENTS", 1000);
    let runs = env_usize("BENCH_RUNS", 15);
    let rss_homes = env_usize("BENCH_RSS_HOMES", 5);
    let tmp = tempfile::tempdir().unwrap();
    println!(
        "machine: {}, {} CPUs; {hosts} homes of {components} components, n0m1_web with TLS each",
        cpu_name(),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut servers: Vec<Server> = (0..hosts)
        .map(|i| home_with_web(tmp.path(), i, components, true))
        .collect();
    servers.iter().for_each(wait_listening);
    let small = tmp.path().join("fleet20.toml");
    let large = tmp.path().join("fleet-all.toml");
    fleet_file(&small, &servers[..20]);
    fleet_file(&large, &servers);

    let (mut twenty, mut all) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        for (file, times) in [(&small, &mut twenty), (&large, &mut all)] {
            let started = Instant::now();
            let out = ctl(tmp.path(), &["--fleet", file.to_str().unwrap(), "status"]);
            times.push(started.elapsed().as_secs_f64() * 1000.0);
            assert!(
                out.status.success(),
                "fleet status failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    for (label, times) in [
        ("20 hosts", &mut twenty),
        (&*format!("{hosts} hosts"), &mut all),
    ] {
        times.sort_by(f64::total_cmp);
        println!(
            "--fleet status, {label}: median {:.0} ms, p99 {:.0} ms, max {:.0} ms ({runs} runs, interleaved)",
            percentile(times, 0.5),
            percentile(times, 0.99),
            times.last().unwrap()
        );
    }

    // RSS with TLS against without: fresh homes of each kind, one status request each.
    let mut plain: Vec<Server> = (0..rss_homes)
        .map(|i| home_with_web(tmp.path(), 900 + i, components, false))
        .collect();
    plain.iter().for_each(wait_listening);
    let pick = |servers: &[Server], tls: bool| -> Vec<usize> {
        servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.tls == tls)
            .map(|(i, _)| i)
            .take(rss_homes)
            .collect()
    };
    let tls_ones = pick(&servers, true);
    for server in tls_ones.iter().map(|&i| &servers[i]).chain(plain.iter()) {
        let url = format!(
            "{}://{}",
            if server.tls { "https" } else { "http" },
            server.addr
        );
        let mut args = vec!["--remote", &url, "--token-file"];
        let token = server.home.join("web.token");
        args.push(token.to_str().unwrap());
        let pin;
        if server.tls {
            pin = String::from_utf8(ctl(&server.home, &["web", "fingerprint"]).stdout).unwrap();
            args.extend(["--fingerprint", pin.trim()]);
        }
        args.push("status");
        let out = ctl(&server.home, &args);
        // 3: answered, and said boot is not running in these homes (only n0m1_web runs).
        assert!(
            matches!(out.status.code(), Some(0 | 3)),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (mut with_tls, mut without) = (Vec::new(), Vec::new());
    for (a, b) in tls_ones.iter().zip(&plain) {
        with_tls.push(rss(servers[*a].child.id()).0 as f64 / 1024.0);
        without.push(rss(b.child.id()).0 as f64 / 1024.0);
    }
    with_tls.sort_by(f64::total_cmp);
    without.sort_by(f64::total_cmp);
    println!(
        "n0m1_web RSS after one status request ({components} components): with TLS median {:.1} MB (max {:.1}), without {:.1} MB (max {:.1}); {} homes each",
        percentile(&with_tls, 0.5),
        with_tls.last().unwrap(),
        percentile(&without, 0.5),
        without.last().unwrap(),
        with_tls.len()
    );
    for server in servers.iter_mut().chain(plain.iter_mut()) {
        let _ = server.child.kill();
        let _ = server.child.wait();
    }
}
