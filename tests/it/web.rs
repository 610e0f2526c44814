//! n0m1_web through the real binary, started by a real daemon_manager as the bundled
//! component it is: every endpoint, hostile requests, SSE resume and descriptors, and
//! `n0m1ctl --remote` printing what the local command prints.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::support::{TestEnv, alive, bin, free_port, wait_until};

/// A running n0m1_web of a test home.
pub struct Web {
    pub addr: String,
    pub token: String,
    pub pid: i32,
}

/// One HTTP exchange, as raw as the test needs it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.body))
    }
}

/// Decodes a chunked body.
fn unchunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(end) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&raw[..end]);
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = end + 2;
        out.extend_from_slice(&raw[start..(start + size).min(raw.len())]);
        raw = &raw[(start + size + 2).min(raw.len())..];
    }
}

/// Sends one request over a fresh connection (`Connection: close`) and reads the answer.
/// A `Host` among `headers` replaces the default one.
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("Host: {addr}\r\n"));
    }
    for (key, value) in headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding"))
    {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    // The server may answer (413) and close before the whole body is sent.
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| {
            panic!(
                "no HTTP answer to {method} {path}: {:?}",
                String::from_utf8_lossy(&raw)
            )
        });
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = unchunk(&body);
    }
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

impl Web {
    pub fn get(&self, path: &str) -> Answer {
        http(&self.addr, "GET", path, &[], b"")
    }
    pub fn post(&self, path: &str, body: &str) -> Answer {
        let auth = format!("Bearer {}", self.token);
        http(
            &self.addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body.as_bytes(),
        )
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The test config with resource sampling every 0.3 s.
pub fn write_config(env: &TestEnv, web: Value) {
    let mut config: Value = serde_json::from_str(crate::support::FAST_CONFIG).unwrap();
    config["resources"] = serde_json::json!({ "interval": 0.3 });
    config["web"] = web;
    std::fs::write(env.home.config_path(), config.to_string()).unwrap();
}

/// Starts daemon_manager with the n0m1_web row active on a free loopback port and waits
/// until the server has said READY=1 and answers /healthz.
pub fn start_web(env: &mut TestEnv) -> Web {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    env.db()
        .execute(
            "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = 'n0m1_web'",
            [format!(r#"{{"--listen": "{addr}"}}"#)],
        )
        .unwrap();
    if env.pid_of("daemon_manager").is_none() {
        env.spawn("daemon_manager");
    }
    wait_until(Duration::from_secs(20), "n0m1_web ready", || {
        env.status_json("n0m1_web")["ready"] == true
    });
    let pid = env.status_json("n0m1_web")["pid"].as_i64().unwrap() as i32;
    assert_eq!(http(&addr, "GET", "/healthz", &[], b"").status, 200);
    let token = std::fs::read_to_string(env.home.web_token())
        .unwrap()
        .trim()
        .to_owned();
    Web { addr, token, pid }
}

/// Reads server-sent events from an open stream until `wanted` of them have come; returns
/// their `(id, data)`.
pub fn read_events(reader: &mut impl BufRead, wanted: usize) -> Vec<(i64, Value)> {
    let mut events = Vec::new();
    let (mut id, mut data) = (None, String::new());
    while events.len() < wanted {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "stream ended");
        let line = line.trim_end_matches(['\r', '\n']);
        if let Some(rest) = line.strip_prefix("id:") {
            id = Some(rest.trim().parse::<i64>().unwrap());
        } else if let Some(rest) = line.strip_prefix("data:") {
            data.push_str(rest.trim_start());
        } else if line.is_empty() && !data.is_empty() {
            events.push((id.unwrap_or(-1), serde_json::from_str(&data).unwrap()));
            data.clear();
            id = None;
        }
    }
    events
}

/// Opens an SSE stream and returns a reader positioned after the response head.
pub fn open_stream(addr: &str, path: &str, headers: &[(&str, &str)]) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (key, value) in headers {
        request.push_str(&format!("{key}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.contains(" 200 "), "stream {path}: {status}");
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            return reader;
        }
    }
}

fn component<'a>(list: &'a Value, id: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["component_id"] == id)
        .unwrap_or_else(|| panic!("{id} not listed"))
}

fn remote(env: &TestEnv, web: &Web, args: &[&str]) -> assert_cmd::assert::Assert {
    assert_cmd::Command::new(bin("n0m1ctl"))
        .args(["--remote", &web.url(), "--token-file"])
        .arg(env.home.web_token())
        .args(args)
        .timeout(Duration::from_secs(30))
        .assert()
}

fn stdout(assert: &assert_cmd::assert::Assert) -> String {
    String::from_utf8_lossy(&assert.get_output().stdout).into_owned()
}

/// The first four columns of status's component lines (id, manager, desired, actual):
/// uptimes differ between two runs a moment apart.
fn status_columns(text: &str) -> Vec<String> {
    text.lines()
        .skip_while(|l| !l.starts_with("COMPONENT"))
        .map(|l| l.split_whitespace().take(4).collect::<Vec<_>>().join(" "))
        .collect()
}

#[test]
fn every_endpoint_answers_and_n0m1ctl_remote_prints_what_the_local_command_prints() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    env.add_component("sleeper", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("crasher", "crasher.sh", "daemon_manager", "{}");
    env.sql(
        "INSERT INTO cpu_usage_log (cpu_usage) VALUES (10.0), (20.0), (30.5);
         INSERT INTO memory_usage_log (mem_usage) VALUES (41.0);
         INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'all quiet');
         INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('nano_cpu_usage', 'CPU flat at 20%');",
    );
    let web = start_web(&mut env);
    wait_until(Duration::from_secs(10), "sleeper running", || {
        env.state_of("sleeper").as_deref() == Some("running")
    });

    // Reads.
    assert_eq!(web.get("/healthz").json()["status"], "ok");
    let list = web.get("/api/v1/components");
    assert_eq!(list.status, 200);
    let sleeper = component(&list.json(), "sleeper").clone();
    assert_eq!(sleeper["actual"], "running");
    let pid = sleeper["pid"].as_i64().unwrap();
    assert!(sleeper["rss_kib"].as_u64().unwrap() > 0);
    let detail = web.get("/api/v1/components/sleeper").json();
    assert_eq!(detail["component"]["pid"], pid);
    // Limits, and (in its cgroup, as root) what it uses now.
    env.ctl(&["limit", "sleeper", "--memory", "256M", "--pids", "20"])
        .success();
    let limits_now = || web.get("/api/v1/components/sleeper").json()["component"]["limits"].clone();
    if nix::unistd::Uid::effective().is_root() {
        // Its manager moves it into the memory cgroup within a second.
        wait_until(Duration::from_secs(10), "the limit applied", || {
            limits_now()["memory_bytes"].as_u64().is_some()
        });
    }
    let limits = limits_now();
    assert_eq!(limits["memory_max"], 256 << 20);
    assert_eq!(limits["pids_max"], 20);
    assert_eq!(limits["summary"], "memory_max 256.0 MiB, pids_max 20");
    if nix::unistd::Uid::effective().is_root() {
        assert!(limits["memory_bytes"].as_u64().is_some(), "{limits}");
        assert_eq!(limits["tasks"], 1, "{limits}");
    }
    let status = web.get("/api/v1/status").json();
    assert_eq!(status["boot"]["state"], "stopped");
    assert!(
        status["managers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["name"] == "daemon_manager" && m["state"] == "running")
    );
    let page = web.get("/");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("/assets/app.js") && page.head.contains("content-security-policy"));
    assert_eq!(web.get("/components/sleeper").status, 200);
    let uplot = web.get("/assets/uPlot.iife.min.js");
    assert!(uplot.status == 200 && uplot.body.contains("uPlot"));
    assert!(web.get("/assets/uPlot-LICENSE.txt").body.contains("MIT"));

    let first = web.get("/api/v1/events?after=0&limit=3").json();
    let ids: Vec<i64> = first
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let next = web
        .get(&format!("/api/v1/events?after={}&limit=1", ids[2]))
        .json();
    assert!(next[0]["id"].as_i64().unwrap() > ids[2]);
    let own = web.get("/api/v1/events?component=sleeper&after=0").json();
    assert!(
        own.as_array()
            .unwrap()
            .iter()
            .all(|e| e["component_id"] == "sleeper")
    );
    assert!(
        own.as_array()
            .unwrap()
            .iter()
            .any(|e| e["event_type"] == "START_ATTEMPT")
    );

    let logs = web.get("/api/v1/logs/sleeper?lines=5").json();
    assert!(
        logs[0]["lines"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().starts_with("started"))
    );
    let cpu = web.get("/api/v1/metrics/cpu_usage?since=0").json();
    let values: Vec<f64> = cpu["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p[1].as_f64().unwrap())
        .collect();
    assert_eq!(values, [10.0, 20.0, 30.5]);
    assert!(
        cpu["points"][0][0].as_f64().unwrap() > 1.7e9,
        "x is Unix time"
    );
    let temperature = web.get("/api/v1/metrics/cpu_temperature?since=0").json();
    assert_eq!(temperature["points"].as_array().unwrap().len(), 0);
    assert!(temperature["missing"].is_string());
    wait_until(
        Duration::from_secs(10),
        "resource samples of sleeper",
        || {
            web.get("/api/v1/resources/sleeper?since=0")
                .json()
                .as_array()
                .unwrap()
                .len()
                >= 2
        },
    );
    let samples = web.get("/api/v1/resources/sleeper?since=0").json();
    assert!(samples[0]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        web.get("/api/v1/outputs/llm_outputs").json()[0]["content"],
        "all quiet"
    );
    assert_eq!(
        web.get("/api/v1/outputs/cpu_usage_summary").json()[0]["content"],
        "CPU flat at 20%"
    );
    let metrics = web.get("/metrics");
    assert!(metrics.head.contains("text/plain; version=0.0.4"));
    assert!(
        metrics
            .body
            .contains("n0m1_component_up{component=\"sleeper\",manager=\"daemon_manager\"} 1")
    );
    assert!(metrics.body.contains("n0m1_cpu_usage_percent 30.5"));

    // The lifecycle stream: live events carry their row id; a reconnect with Last-Event-ID
    // gets exactly what came after it.
    let mut stream = open_stream(&web.addr, "/api/v1/events/stream?component=sleeper", &[]);
    let restarted = web.post("/api/v1/components/sleeper/restart", "");
    assert_eq!(restarted.status, 200, "{}", restarted.body);
    assert!(
        restarted.json()["message"]
            .as_str()
            .unwrap()
            .contains("restart of sleeper requested")
    );
    let live = read_events(&mut stream, 2);
    assert_eq!(live[0].1["event_type"], "STOP_REQUESTED");
    assert_eq!(live[0].0, live[0].1["id"].as_i64().unwrap());
    drop(stream);
    let new_pid = {
        let mut new_pid = 0;
        wait_until(Duration::from_secs(10), "sleeper restarted", || {
            new_pid = env.status_json("sleeper")["pid"].as_i64().unwrap_or(0);
            new_pid != 0 && new_pid != pid
        });
        new_pid
    };
    assert!(!alive(pid as i32));
    let resumed_after = live[0].0.to_string();
    let mut again = open_stream(
        &web.addr,
        "/api/v1/events/stream?component=sleeper",
        &[("Last-Event-ID", &resumed_after)],
    );
    let resumed = read_events(&mut again, 1);
    assert_eq!(
        resumed[0].0, live[1].0,
        "resumes right after the last id seen"
    );
    let all: Vec<i64> = web
        .get(&format!(
            "/api/v1/events?component=sleeper&after={}",
            live[0].0
        ))
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_i64().unwrap())
        .collect();
    let mut streamed = vec![resumed[0].0];
    streamed.extend(
        read_events(&mut again, all.len() - 1)
            .into_iter()
            .map(|e| e.0),
    );
    assert_eq!(streamed, all, "nothing missed, nothing repeated");
    assert_eq!(
        env.status_json("sleeper")["desired"],
        "active",
        "restart keeps the desired state"
    );

    // The log stream sends lines written after it opened.
    let mut log = open_stream(&web.addr, "/api/v1/logs/sleeper/stream", &[]);
    assert_eq!(
        web.post("/api/v1/components/sleeper/restart", "").status,
        200
    );
    let line = read_events(&mut log, 1);
    assert!(
        line[0].1["line"].as_str().unwrap().starts_with("started"),
        "{:?}",
        line[0].1
    );
    drop(log);
    let _ = new_pid;

    // Notifications: a RUN is queued, unprocessed, for the processor.
    let queued = web.post(
        "/api/v1/notifications",
        r#"{"llm_id": "main_llm_processor", "notification_type": "RUN"}"#,
    );
    assert_eq!(queued.status, 201, "{}", queued.body);
    let id = queued.json()["id"].as_i64().unwrap();
    let notes = web.get("/api/v1/notifications").json();
    assert_eq!(notes[0]["id"], id);
    assert_eq!(notes[0]["processed"], 0);

    // n0m1ctl --remote prints what the local command prints.
    let local = env.ctl(&["status"]).get_output().stdout.clone();
    let remote_status = remote(&env, &web, &["status"]);
    assert_eq!(
        status_columns(&stdout(&remote_status)),
        status_columns(&String::from_utf8_lossy(&local))
    );
    for args in [&["status", "crasher"][..], &["logs", "sleeper", "-n", "3"]] {
        let here = env.ctl(args);
        let there = remote(&env, &web, args);
        assert_eq!(stdout(&there), stdout(&here), "n0m1ctl {args:?}");
    }
    let disabled = remote(&env, &web, &["disable", "sleeper"]).success();
    let local_words = "disabled sleeper; its manager acts on it within a second\n";
    assert_eq!(stdout(&disabled), local_words);
    wait_until(
        Duration::from_secs(10),
        "sleeper stopped by remote disable",
        || env.state_of("sleeper").as_deref() == Some("stopped"),
    );
    remote(&env, &web, &["enable", "sleeper"]).success();
    wait_until(Duration::from_secs(10), "sleeper running again", || {
        env.state_of("sleeper").as_deref() == Some("running")
    });
    let refused = remote(&env, &web, &["enable", "no_such_thing"]).failure();
    assert!(
        String::from_utf8_lossy(&refused.get_output().stderr)
            .contains("no component 'no_such_thing'")
    );
    let events =
        stdout(&remote(&env, &web, &["events", "--component", "sleeper", "-n", "2"]).success());
    assert_eq!(events.lines().count(), 2, "{events}");
    assert!(events.lines().all(|l| l.contains(" sleeper ")), "{events}");
    let unsupported = remote(&env, &web, &["stop"]).failure();
    assert!(String::from_utf8_lossy(&unsupported.get_output().stderr).contains("--remote carries"));
}

#[test]
fn hostile_requests_are_refused_by_name_and_change_nothing() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    env.add_component("sleeper", "sleeper.sh", "daemon_manager", "{}");
    let web = start_web(&mut env);
    let tables_before = env.count_rows("sqlite_master");
    let rows_before = env.count_rows("autorun_components");
    let disable = "/api/v1/components/sleeper/disable";

    let no_token = http(&web.addr, "POST", disable, &[], b"");
    assert_eq!(no_token.status, 401);
    assert!(
        no_token.json()["error"]
            .as_str()
            .unwrap()
            .contains("web.token")
    );
    assert!(
        no_token
            .head
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer")
    );
    let wrong = format!("Bearer {}", "0".repeat(64));
    assert_eq!(
        http(
            &web.addr,
            "POST",
            disable,
            &[("Authorization", &wrong)],
            b""
        )
        .status,
        401
    );
    let short = format!("Bearer {}", &web.token[..10]);
    assert_eq!(
        http(
            &web.addr,
            "POST",
            disable,
            &[("Authorization", &short)],
            b""
        )
        .status,
        401
    );
    for host in [
        "evil.example",
        "evil.example:8686",
        "127.0.0.1.evil.example",
        "127.0.0.1:18702@evil.com",
    ] {
        let answer = http(
            &web.addr,
            "GET",
            "/api/v1/components",
            &[("Host", host)],
            b"",
        );
        assert_eq!(answer.status, 403, "Host {host}");
        assert!(answer.json()["error"].as_str().unwrap().contains("Host"));
    }
    for path in [
        "/api/v1/logs/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/logs/..%2F..%2Fetc%2Fpasswd/stream",
        "/api/v1/components/no_such_component",
        "/api/v1/resources/..%2Fn0m1_agi.db",
        "/api/v1/metrics/..%2F..%2Fetc%2Fpasswd",
        "/api/v1/outputs/autorun_components",
        "/api/v1/outputs/llm_outputs%3B%20DROP%20TABLE%20autorun_components",
        "/api/v1/outputs/llm_outputs%22%20--",
        "/api/v1/outputs/sqlite_master",
        "/api/v1/events?component=..%2Fetc",
        "/api/v1/nothing",
        "/etc/passwd",
        "/api/v1/incidents/999",
    ] {
        let answer = web.get(path);
        assert_eq!(answer.status, 404, "{path}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{path}");
        assert!(!answer.body.contains("root:"), "{path}");
    }
    // Two Host headers (the second one foreign), and an absolute-form request naming another
    // host in its request line: refused.
    let doubled = http(
        &web.addr,
        "GET",
        "/api/v1/components",
        &[("Host", "localhost"), ("Host", "evil.example")],
        b"",
    );
    assert_eq!(doubled.status, 403);
    let absolute = http(
        &web.addr,
        "GET",
        "http://evil.example/api/v1/components",
        &[("Host", "localhost")],
        b"",
    );
    assert_eq!(absolute.status, 403);
    let unknown_action = web.post("/api/v1/components/sleeper/explode", "");
    assert_eq!(unknown_action.status, 404);
    // Proposals: an id that is not a number, one that does not exist, a decision that does
    // not exist, a body that is not the reason, and no token at all.
    for (path, body, status) in [
        ("/api/v1/proposals/1%3B%20DROP/approve", "", 400),
        ("/api/v1/proposals/999/approve", "", 404),
        ("/api/v1/proposals/999/explode", "", 404),
        ("/api/v1/proposals/999/reject", "{\"reason\": 5}", 400),
    ] {
        let answer = web.post(path, body);
        assert_eq!(answer.status, status, "{path}: {}", answer.body);
        assert!(answer.json()["error"].is_string(), "{path}");
    }
    assert_eq!(
        http(&web.addr, "POST", "/api/v1/proposals/1/approve", &[], b"").status,
        401
    );
    assert_eq!(web.get("/api/v1/incidents/x").status, 400);
    assert_eq!(
        web.get("/api/v1/proposals?all=1").json(),
        serde_json::json!([])
    );
    assert_eq!(
        web.post("/api/v1/components/no_such/restart", "").status,
        404
    );
    let wrong_method = http(
        &web.addr,
        "DELETE",
        "/api/v1/components",
        &[("Authorization", &format!("Bearer {}", web.token))],
        b"",
    );
    assert_eq!(wrong_method.status, 405);
    assert!(wrong_method.json()["error"].is_string());
    let auth = format!("Bearer {}", web.token);
    let megabyte = vec![b'a'; 1024 * 1024];
    let big = http(
        &web.addr,
        "POST",
        "/api/v1/notifications",
        &[("Authorization", &auth)],
        &megabyte,
    );
    assert_eq!(big.status, 413);
    assert!(big.json()["error"].as_str().unwrap().contains("65536"));
    // Without a Content-Length the limit holds too.
    let mut chunked = Vec::new();
    for _ in 0..20 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 * 1024).as_bytes());
        chunked.extend(std::iter::repeat_n(b'a', 64 * 1024));
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let streamed = http(
        &web.addr,
        "POST",
        "/api/v1/notifications",
        &[("Authorization", &auth), ("Transfer-Encoding", "chunked")],
        &chunked,
    );
    assert_eq!(streamed.status, 413);
    for (body, field) in [
        ("{not json", "must be JSON"),
        (r#"{"llm_id": "main_llm_processor"}"#, "notification_type"),
        (
            r#"{"llm_id": "../x", "notification_type": "RUN"}"#,
            "llm_id",
        ),
        (
            r#"{"llm_id": "m", "notification_type": "RUN; DROP TABLE x"}"#,
            "notification_type",
        ),
        (
            r#"{"llm_id": "m", "notification_type": "RUN", "extra": 1}"#,
            "extra",
        ),
    ] {
        let answer = web.post("/api/v1/notifications", body);
        assert_eq!(answer.status, 400, "{body}");
        assert!(
            answer.json()["error"].as_str().unwrap().contains(field),
            "{body}: {}",
            answer.body
        );
    }
    let nobody = web.post(
        "/api/v1/notifications",
        r#"{"llm_id": "nobody", "notification_type": "RUN"}"#,
    );
    assert_eq!(nobody.status, 404, "{}", nobody.body);
    assert!(
        nobody.body.contains("no processor answers to it"),
        "{}",
        nobody.body
    );
    for query in [
        "/api/v1/events?limit=abc",
        "/api/v1/events?limit=0",
        "/api/v1/logs/sleeper?lines=-1",
        "/api/v1/metrics/memory?since=yesterday",
    ] {
        let answer = web.get(query);
        assert_eq!(answer.status, 400, "{query}");
        assert!(
            answer.json()["error"].as_str().unwrap().contains('?'),
            "{query}"
        );
    }
    let bad_resume = http(
        &web.addr,
        "GET",
        "/api/v1/events/stream",
        &[("Last-Event-ID", "x")],
        b"",
    );
    assert_eq!(bad_resume.status, 400);

    // Nothing changed: same tables, same rows, the component still running, nothing queued.
    assert_eq!(env.count_rows("sqlite_master"), tables_before);
    assert_eq!(env.count_rows("autorun_components"), rows_before);
    assert_eq!(env.count_rows("llm_notifications"), 0);
    assert_eq!(env.status_json("sleeper")["desired"], "active");
    assert!(alive(web.pid), "no request took the server down");

    // A token file others can read is refused at start, naming the fix; so is a public
    // address while reads are open.
    let token = env.home.web_token();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    // n0m1_web run by hand on `host`: it must refuse to start; what it said.
    let refusal = |host: &str| -> String {
        let out = assert_cmd::Command::new(bin("n0m1_web"))
            .args([
                "--home",
                env.root(),
                "--listen",
                &format!("{host}:{}", free_port()),
            ])
            .timeout(Duration::from_secs(20))
            .assert()
            .failure();
        String::from_utf8_lossy(&out.get_output().stderr).into_owned()
    };
    assert!(refusal("127.0.0.1").contains("chmod 600"));
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(refusal("0.0.0.0").contains("plain HTTP would carry the token in clear"));
    // Plain HTTP accepted by the operator: reads still need the token off loopback.
    write_config(&env, serde_json::json!({ "insecure_http": true }));
    assert!(refusal("0.0.0.0").contains("read_requires_token"));
}

#[test]
fn reads_need_the_token_when_configured_so() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({ "read_requires_token": true }));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    env.spawn_with("n0m1_web", &["--listen", &addr], &[]);
    wait_until(Duration::from_secs(20), "n0m1_web listening", || {
        TcpStream::connect(&addr).is_ok()
    });
    let token = std::fs::read_to_string(env.home.web_token()).unwrap();
    let auth = format!("Bearer {}", token.trim());
    assert_eq!(
        http(&addr, "GET", "/api/v1/components", &[], b"").status,
        401
    );
    assert_eq!(http(&addr, "GET", "/metrics", &[], b"").status, 401);
    assert_eq!(
        http(
            &addr,
            "GET",
            "/api/v1/components",
            &[("Authorization", &auth)],
            b""
        )
        .status,
        200
    );
    // The page itself loads; it asks for the token before reading anything.
    assert_eq!(http(&addr, "GET", "/", &[], b"").status, 200);
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_thousand_sse_connects_and_disconnects_leave_the_open_fd_count_where_it_was() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    let web = start_web(&mut env);
    // Warm up: the blocking pool's threads and the database connections they open.
    for _ in 0..3 {
        drop(open_stream(&web.addr, "/api/v1/events/stream", &[]));
        drop(open_stream(&web.addr, "/api/v1/logs/n0m1_web/stream", &[]));
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = open_fds(web.pid);
    for i in 0..1000 {
        let path = if i % 2 == 0 {
            "/api/v1/events/stream"
        } else {
            "/api/v1/logs/n0m1_web/stream"
        };
        drop(open_stream(&web.addr, path, &[]));
    }
    let mut now = 0;
    wait_until(
        Duration::from_secs(40),
        "the server to close what the clients closed",
        || {
            now = open_fds(web.pid);
            now <= before
        },
    );
    assert!(alive(web.pid));
    assert_eq!(web.get("/healthz").status, 200);
    eprintln!("open fds: {before} before, {now} after 1,000 SSE connects");
}

/// A FIFO as `web.token` would block whoever opens it: the server refuses it by name and
/// does not start (its manager records why), and `n0m1ctl --remote` answers at once.
#[test]
fn a_fifo_token_is_refused_by_name_and_blocks_nobody() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    nix::unistd::mkfifo(
        &env.home.web_token(),
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .unwrap();
    let port = free_port();
    env.db()
        .execute(
            "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = 'n0m1_web'",
            [format!(r#"{{"--listen": "127.0.0.1:{port}"}}"#)],
        )
        .unwrap();
    env.spawn("daemon_manager");
    let (_, err) = env.home.component_logs("n0m1_web");
    wait_until(Duration::from_secs(15), "the server's refusal", || {
        crate::support::file_contains(&err, "is a FIFO, not a regular file")
    });
    let started = std::time::Instant::now();
    let answer = assert_cmd::Command::new(bin("n0m1ctl"))
        .args([
            "--home",
            env.root(),
            "--remote",
            &format!("http://127.0.0.1:{port}"),
            "status",
        ])
        .timeout(Duration::from_secs(20))
        .assert()
        .failure();
    assert!(started.elapsed() < Duration::from_secs(10));
    let error = String::from_utf8_lossy(&answer.get_output().stderr).into_owned();
    assert!(error.contains("is a FIFO"), "{error}");
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Clients that send a request line and stop cannot hold the server: the dashboard is still
/// served to a new client at once, the half-open ones are closed after the header-read
/// timeout, and memory stays bounded.
#[test]
fn half_open_connections_cannot_hold_the_server() {
    let mut env = TestEnv::new();
    write_config(&env, serde_json::json!({}));
    let web = start_web(&mut env);
    let idle = rss_kib(web.pid);
    let mut stalled = Vec::new();
    for _ in 0..600 {
        let mut stream = TcpStream::connect(&web.addr).unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        stalled.push(stream);
    }
    let started = std::time::Instant::now();
    let page = http(&web.addr, "GET", "/", &[], b"");
    assert_eq!(page.status, 200);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "served after {:?}",
        started.elapsed()
    );
    let peak = rss_kib(web.pid);
    // Every stalled client is closed: by eviction, or by the header-read timeout (5 s).
    for stream in &mut stalled {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut buf = [0u8; 256];
        // EOF, an answer (408) or a reset: closed. A read that times out: still held.
        let held = matches!(
            stream.read(&mut buf),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        );
        assert!(
            !held,
            "a stalled connection still held after the header-read timeout"
        );
    }
    drop(stalled);
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(web.pid);
    eprintln!(
        "n0m1_web RSS: idle {idle} KiB, with 600 stalled clients {peak} KiB, after {after} KiB"
    );
    assert!(peak < idle + 40 * 1024, "RSS {idle} → {peak} KiB");
    assert!(
        after < idle + 40 * 1024,
        "RSS after {after} KiB (idle {idle})"
    );
    assert_eq!(web.get("/healthz").status, 200);
}

/// `--remote` sends the home's token only to the address the home's n0m1_web listens on, and
/// gives up on a server that answers a byte at a time within its deadline.
#[test]
fn remote_keeps_the_home_token_at_home_and_has_a_deadline() {
    let env = TestEnv::new();
    // A token in the home, as n0m1_web would have made it.
    n0m1_ctl::token::load_or_create(&env.home.web_token()).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        // First client: record its request and answer 401. Second: one byte a second.
        let (mut first, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = first.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            request.extend_from_slice(&buf[..n]);
        }
        let _ = first.write_all(
            b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        );
        drop(first);
        let (mut slow, _) = listener.accept().unwrap();
        for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" {
            if slow.write_all(&[*byte]).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        String::from_utf8_lossy(&request).into_owned()
    });
    let url = format!("http://{addr}");
    let refused = assert_cmd::Command::new(bin("n0m1ctl"))
        .args(["--home", env.root(), "--remote", &url, "status"])
        .timeout(Duration::from_secs(20))
        .assert()
        .failure();
    let error = String::from_utf8_lossy(&refused.get_output().stderr).into_owned();
    assert!(
        error.contains("401") && error.contains("--token-file"),
        "{error}"
    );
    let started = std::time::Instant::now();
    assert_cmd::Command::new(bin("n0m1ctl"))
        .args([
            "--home",
            env.root(),
            "--remote",
            &url,
            "--timeout",
            "2",
            "status",
        ])
        .timeout(Duration::from_secs(20))
        .assert()
        .failure();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "the deadline held: {took:?}");
    let request = server.join().unwrap();
    assert!(
        !request.to_ascii_lowercase().contains("authorization"),
        "{request}"
    );
}
