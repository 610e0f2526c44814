//! The model components as real processes against a temporary home and a real SQLite file,
//! with the engine's generated test model.

#![allow(clippy::disallowed_methods)] // tests start the binaries under test directly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rusqlite::Connection;

fn kill(pid: u32, signal: Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal);
}

const T: Duration = Duration::from_secs(20);

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while Instant::now() < deadline {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

struct Env {
    _tmp: tempfile::TempDir,
    home: PathBuf,
    model: PathBuf,
    children: Vec<Child>,
}

impl Env {
    /// A home whose model components use the model service (the default), with the service
    /// running.
    fn new() -> Env {
        let mut env = Env::bare();
        env.start_service();
        env
    }

    /// A home whose model components each load their own copy (`models.shared: false`).
    fn in_process() -> Env {
        let env = Env::bare();
        std::fs::write(
            env.home.join("config.json"),
            r#"{"models": {"shared": false}}"#,
        )
        .unwrap();
        env
    }

    fn socket(&self) -> PathBuf {
        self.home.join("run/model.sock")
    }

    /// Starts `n0m1_model_service` and waits until it answers.
    fn start_service(&mut self) -> u32 {
        let pid = self.spawn(SERVICE, &[]);
        let socket = self.socket();
        wait_until("the model service to answer", || {
            n0m1_protocol::model_service::status(&socket).is_ok()
        });
        pid
    }

    /// A home with the default configuration and no service running.
    fn bare() -> Env {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let model = tmp.path().join("tiny");
        n0m1_llm::fixture::write_tiny_gpt2(&model, 42).unwrap();
        n0m1_core::Home::new(&home).ensure().unwrap();
        n0m1_core::db::initialise(&home.join("n0m1_agi.db")).unwrap();
        Env {
            _tmp: tmp,
            home,
            model,
            children: Vec::new(),
        }
    }
    fn db(&self) -> Connection {
        let conn = Connection::open(self.home.join("n0m1_agi.db")).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn
    }
    fn sql(&self, sql: &str) {
        self.db().execute_batch(sql).unwrap();
    }
    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |r| r.get(0)).unwrap()
    }
    fn texts(&self, sql: &str) -> Vec<String> {
        self.db()
            .prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }
    fn spawn(&mut self, binary: &str, args: &[&str]) -> u32 {
        let child = Command::new(binary)
            .arg("--home")
            .arg(&self.home)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        self.children.push(child);
        pid
    }
    fn stop(&mut self, pid: u32) {
        kill(pid, Signal::SIGTERM);
        let child = self.children.iter_mut().find(|c| c.id() == pid).unwrap();
        let status = child.wait().unwrap();
        assert!(
            status.success(),
            "a component stopped by SIGTERM exits 0, got {status:?}"
        );
    }
    fn model(&self) -> &str {
        self.model.to_str().unwrap()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

const PROCESSOR: &str = env!("CARGO_BIN_EXE_llm_processor");
const NANO: &str = env!("CARGO_BIN_EXE_nano_instance");
const SERVICE: &str = env!("CARGO_BIN_EXE_n0m1_model_service");

fn root_bin(name: &str) -> PathBuf {
    // The root package's binaries land in the same folder as ours (`cargo test --workspace`
    // builds them).
    let path = Path::new(PROCESSOR).with_file_name(name);
    assert!(
        path.is_file(),
        "{} is not built: run the tests with `cargo test --workspace`",
        path.display()
    );
    path
}

#[test]
fn every_notification_type_end_to_end() {
    let mut env = Env::new();
    env.sql(
        "INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'cpu is calm');
         INSERT INTO memory_usage_summary (nano_id, content) VALUES ('mem_usage', 'memory is fine');",
    );
    let model = env.model().to_owned();
    let processor = env.spawn(
        PROCESSOR,
        &["--model", &model, "--max_new_tokens", "8", "--threads", "1"],
    );
    wait_until("the processor to start", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'main_llm_processor' AND event_type = 'STARTED_SUCCESSFULLY'") == 1
    });
    env.sql(
        "INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES
           ('main_llm_processor', 'RUN', NULL),
           ('main_llm_processor', 'PUSH', 'memory_usage_summary'),
           ('main_llm_processor', 'PULL_REQUEST', 'metrics'),
           ('main_llm_processor', 'WHATEVER', NULL),
           ('someone_else', 'RUN', NULL);",
    );
    wait_until("four notifications processed", || {
        env.count("SELECT count(*) FROM llm_notifications WHERE llm_id = 'main_llm_processor' AND processed = 1") == 4
    });
    let outputs = env.texts("SELECT content FROM llm_outputs ORDER BY id");
    assert_eq!(outputs.len(), 3 + 1 + 1, "{outputs:?}");
    assert_eq!(outputs[0], "cpu_temp_summary: no rows yet");
    assert!(outputs[1].starts_with("cpu_usage_summary: "));
    assert!(
        outputs[3].starts_with("memory_usage_summary: "),
        "PUSH reads its payload's tables"
    );
    assert_eq!(outputs[4], "REQUEST:metrics");
    assert_eq!(
        env.count("SELECT processed FROM llm_notifications WHERE llm_id = 'someone_else'"),
        0,
        "other llms' notifications are not ours"
    );
    assert_eq!(env.count("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'ERROR' AND message LIKE '%WHATEVER%'"), 1);

    // llm_config_daemon: needs_reload becomes one CONFIG_RELOAD, which the processor applies.
    let config_daemon = env.spawn(root_bin("llm_config_daemon").to_str().unwrap(), &[]);
    env.sql("UPDATE llm_io_config SET read_tables = 'memory_usage_summary', needs_reload = 1 WHERE llm_id = 'main_llm_processor'");
    wait_until("the reload to be applied", || {
        env.count(
            "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'CONFIG_RELOADED'",
        ) == 1
    });
    assert_eq!(
        env.count(
            "SELECT count(*) FROM llm_notifications WHERE notification_type = 'CONFIG_RELOAD'"
        ),
        1
    );
    assert_eq!(
        env.count("SELECT needs_reload FROM llm_io_config WHERE llm_id = 'main_llm_processor'"),
        0
    );
    env.sql("INSERT INTO llm_notifications (llm_id, notification_type) VALUES ('main_llm_processor', 'RUN')");
    wait_until("the RUN after the reload", || {
        env.count("SELECT count(*) FROM llm_outputs") == 6
    });
    assert!(
        env.texts("SELECT content FROM llm_outputs ORDER BY id DESC LIMIT 1")[0]
            .starts_with("memory_usage_summary: ")
    );
    env.stop(config_daemon);
    env.stop(processor);
}

#[test]
fn a_processor_killed_mid_notification_neither_loses_nor_repeats_it() {
    let mut env = Env::new();
    env.sql(
        "INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'a'), ('cpu_usage', 'b');
         INSERT INTO memory_usage_summary (nano_id, content) VALUES ('mem_usage', 'c');
         INSERT INTO cpu_temp_summary (nano_id, content) VALUES ('cpu_temp', 'd');",
    );
    // distilgpt2's shape with random weights: its 50,257-token vocabulary makes an early end of
    // text unlikely, and 3 tables x 30 tokens on one thread take seconds, so the kill lands
    // inside the notification's transaction (checked below, not assumed).
    let model = env.home.join("distil");
    n0m1_llm::fixture::write_gpt2(&model, &n0m1_llm::fixture::distilgpt2_config(), 7).unwrap();
    let model = model.to_str().unwrap().to_owned();
    let args = [
        "--model",
        &model,
        "--max_new_tokens",
        "30",
        "--threads",
        "1",
    ];
    let first = env.spawn(PROCESSOR, &args);
    wait_until("the processor to start", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'main_llm_processor' AND event_type = 'STARTED_SUCCESSFULLY'") == 1
    });
    env.sql("INSERT INTO llm_notifications (llm_id, notification_type) VALUES ('main_llm_processor', 'RUN')");
    // Its first table is read before the (slow) generation: freeze it right then.
    wait_until("the first read", || {
        env.count("SELECT count(*) FROM db_access_log WHERE access_type = 'READ'") >= 1
    });
    kill(first, Signal::SIGSTOP);
    // Frozen, it can commit nothing more: this is the state the SIGKILL hits.
    assert_eq!(
        env.count("SELECT count(*) FROM llm_notifications WHERE processed = 0"),
        1,
        "the notification is still unprocessed when the processor is killed"
    );
    assert_eq!(env.count("SELECT count(*) FROM llm_outputs"), 0);
    kill(first, Signal::SIGKILL);
    let _ = env
        .children
        .iter_mut()
        .find(|c| c.id() == first)
        .unwrap()
        .wait();
    let second = env.spawn(PROCESSOR, &args);
    wait_until("the notification to be processed", || {
        env.count("SELECT count(*) FROM llm_notifications WHERE processed = 1") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        env.count("SELECT count(*) FROM llm_outputs"),
        3,
        "exactly one output per table, none twice"
    );
    env.stop(second);
}

fn nano_args<'a>(id: &'a str, metrics: &'a str, summary: &'a str, model: &'a str) -> Vec<&'a str> {
    vec![
        "--instance_id",
        id,
        "--metrics_table",
        metrics,
        "--summary_table",
        summary,
        "--model",
        model,
        "--pull_interval",
        "0.1",
        "--summary_interval",
        "0.3",
        "--max_new_tokens",
        "4",
    ]
}

/// The nice value of a /proc stat line (field 19 of proc(5)).
fn nice_of(stat: &str) -> i64 {
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    rest.split_whitespace()
        .nth(19 - 3)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn components_naming_one_model_share_one_copy_and_outlive_the_service() {
    use n0m1_protocol::model_service::{Reply, status};
    let mut env = Env::bare();
    let service = env.start_service();
    env.sql(
        "INSERT INTO cpu_usage_log (cpu_usage) VALUES (40.0);
         INSERT INTO memory_usage_log (mem_usage) VALUES (25.0);
         INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'earlier');",
    );
    let model = env.model().to_owned();
    env.spawn(
        NANO,
        &nano_args("cpu_usage", "cpu_usage_log", "cpu_usage_summary", &model),
    );
    env.spawn(
        NANO,
        &nano_args(
            "mem_usage",
            "memory_usage_log",
            "memory_usage_summary",
            &model,
        ),
    );
    // `default` resolves to the same file (config.json models.default), so it shares it too.
    std::fs::write(
        env.home.join("config.json"),
        serde_json::json!({"models": {"default": model}}).to_string(),
    )
    .unwrap();
    let processor = env.spawn(PROCESSOR, &["--model", "default", "--max_new_tokens", "4"]);
    wait_until("model summaries from both nano instances", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE '%| model:%'") >= 1
            && env
                .count("SELECT count(*) FROM memory_usage_summary WHERE content LIKE '%| model:%'")
                >= 1
    });
    let socket = env.socket();
    wait_until("one model, three connections", || {
        matches!(status(&socket), Ok(Reply::Status { ref models, connections: 3, .. })
            if models.len() == 1 && models[0].clients == 3)
    });
    let mode = std::fs::metadata(&socket).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    assert_eq!(
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'model_service' AND event_type = 'MODEL_LOADED'"),
        1,
        "loaded once for three components"
    );
    // Every thread of the service, the model's pool included, runs at nice 10.
    let threads: Vec<i64> = std::fs::read_dir(format!("/proc/{service}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .map(|stat| nice_of(&stat))
        .collect();
    assert!(
        threads.len() > 2 && threads.iter().all(|n| *n == 10),
        "{threads:?}"
    );

    // The service dies. The nano instances go on with statistics alone...
    kill(service, Signal::SIGKILL);
    let _ = env
        .children
        .iter_mut()
        .find(|c| c.id() == service)
        .unwrap()
        .wait();
    let killed_at = env.count("SELECT MAX(id) FROM cpu_usage_summary");
    wait_until("statistics written while the service is down", || {
        env.count(&format!(
            "SELECT count(*) FROM cpu_usage_summary WHERE id > {killed_at} AND content LIKE 'cpu_usage_log window:%' AND content NOT LIKE '%| model:%'"
        )) >= 2
    });
    wait_until("MODEL_UNAVAILABLE from the nano instance", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'nano_instance_cpu_usage' AND event_type = 'MODEL_UNAVAILABLE' AND message LIKE '%model.sock%'") == 1
    });
    // ...and a notification waits, unprocessed, while the processor knows the service is down.
    env.sql("INSERT INTO llm_notifications (llm_id, notification_type) VALUES ('main_llm_processor', 'RUN')");
    wait_until("the processor to report the notification waiting", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'main_llm_processor' AND event_type = 'MODEL_UNAVAILABLE' AND message LIKE '%wait, unprocessed%'") == 1
    });
    assert_eq!(
        env.count("SELECT count(*) FROM llm_notifications WHERE COALESCE(processed, 0) = 0"),
        1,
        "still unprocessed after the processor found the service down"
    );
    assert_eq!(env.count("SELECT count(*) FROM llm_outputs"), 0);

    // Back: model text again, the notification handled once, one event each for the return.
    let restarted_at = env.count("SELECT MAX(id) FROM cpu_usage_summary");
    env.start_service();
    wait_until("model summaries after the restart", || {
        env.count(&format!(
            "SELECT count(*) FROM cpu_usage_summary WHERE id > {restarted_at} AND content LIKE '%| model:%'"
        )) >= 1
    });
    wait_until("the notification processed", || {
        env.count("SELECT count(*) FROM llm_notifications WHERE processed = 1") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    let outputs = env.texts("SELECT content FROM llm_outputs ORDER BY id");
    assert_eq!(
        outputs.len(),
        3,
        "one output per read table, none twice: {outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| o.starts_with("cpu_usage_summary: ")),
        "{outputs:?}"
    );
    for component in ["nano_instance_cpu_usage", "main_llm_processor"] {
        assert_eq!(
            env.count(&format!("SELECT count(*) FROM component_lifecycle_log WHERE component_id = '{component}' AND event_type = 'MODEL_AVAILABLE'")),
            1,
            "{component}"
        );
    }
    env.stop(processor);
}

#[test]
fn the_model_service_refuses_bad_requests_by_name_and_keeps_serving() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let socket = env.socket();
    let stream = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(T)).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut ask = |line: &[u8]| -> String {
        // The long line's tail meets a closed connection: EPIPE there is the point.
        let _ = writer.write_all(line);
        let mut reply = String::new();
        let _ = reader.read_line(&mut reply);
        reply
    };
    let reply = ask(b"{not json\n");
    assert!(
        reply.contains("bad_request") && reply.contains("one JSON object per line"),
        "{reply}"
    );
    let reply = ask(
        b"{\"op\": \"complete\", \"system\": null, \"prompt\": \"hi\", \"max_new_tokens\": 3}\n",
    );
    assert!(
        reply.contains("not_open") && reply.contains("open"),
        "{reply}"
    );
    let reply = ask(b"{\"op\": \"open\", \"model\": \"/nowhere/no-such-model.gguf\", \"default_model\": \"x\", \"lora\": null, \"quantize\": false}\n");
    assert!(
        reply.contains("\"load\"") && reply.contains("no-such-model"),
        "{reply}"
    );
    let reply = ask(b"{\"op\": \"launch_missiles\"}\n");
    assert!(
        reply.contains("bad_request") && reply.contains("launch_missiles"),
        "{reply}"
    );
    // A line past the limit is refused and the connection closed; the service goes on.
    let mut long = vec![b'x'; n0m1_protocol::model_service::MAX_LINE_BYTES + 10];
    long.push(b'\n');
    let reply = ask(&long);
    assert!(reply.contains("longer than"), "{reply}");
    assert_eq!(
        ask(b"{\"op\": \"status\"}\n"),
        "",
        "closed after the long line"
    );
    let model = env.model().to_owned();
    let mut generator = n0m1_protocol::model_service::ServiceGenerator::connect(
        &socket,
        n0m1_protocol::model_service::ModelSpec {
            model,
            default_model: "x".into(),
            lora: None,
            quantize: false,
        },
        3,
    )
    .unwrap();
    use n0m1_protocol::generator::Generator;
    assert!(generator.describe().contains("model service"));
    generator.complete(None, "hello").unwrap();
}

#[test]
fn without_a_model_the_processor_serves_digests() {
    let mut env = Env::new();
    env.sql("INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'x')");
    let missing = env.home.join("no-such-model");
    let processor = env.spawn(PROCESSOR, &["--model", missing.to_str().unwrap()]);
    wait_until("MODEL_UNAVAILABLE", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'MODEL_UNAVAILABLE' AND message LIKE '%no-such-model%'") == 1
    });
    env.sql("INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES ('main_llm_processor', 'PUSH', 'cpu_usage_summary')");
    wait_until("a digest row", || {
        env.count("SELECT count(*) FROM llm_outputs") == 1
    });
    let content = env.texts("SELECT content FROM llm_outputs")[0].clone();
    assert!(
        content.starts_with("cpu_usage_summary rows=1 digest="),
        "{content}"
    );
    env.stop(processor);
}

/// Run by hand in a fresh home (its `model_service` row active, no service running, no
/// manager): the processor digests instead of waiting for a service nobody starts.
#[test]
fn a_processor_run_by_hand_without_a_service_digests_every_notification() {
    let mut env = Env::bare();
    env.sql("INSERT INTO cpu_usage_summary (nano_id, content) VALUES ('cpu_usage', 'x')");
    assert_eq!(
        env.count("SELECT count(*) FROM autorun_components WHERE component_id = 'model_service' AND desired_state = 'active'"),
        1,
        "the home supervises a service; it just is not running"
    );
    let processor = env.spawn(PROCESSOR, &["--model", "/no/such/model"]);
    env.sql(
        "INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES
           ('main_llm_processor', 'RUN', NULL),
           ('main_llm_processor', 'PUSH', 'cpu_usage_summary'),
           ('main_llm_processor', 'PULL_REQUEST', 'metrics');",
    );
    wait_until("three notifications processed", || {
        env.count("SELECT count(*) FROM llm_notifications WHERE processed = 1") == 3
    });
    assert_eq!(env.count("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'MODEL_UNAVAILABLE' AND message LIKE '%/no/such/model%'"), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'MODEL_UNAVAILABLE' AND message LIKE '%n0m1ctl model fetch smollm2%'"),
        1,
        "the message says how to get a model that runs here"
    );
    let outputs = env.texts("SELECT content FROM llm_outputs ORDER BY id");
    assert!(
        outputs
            .iter()
            .any(|o| o.starts_with("cpu_usage_summary rows=1 digest=")),
        "{outputs:?}"
    );
    env.stop(processor);
}

/// A nano instance run by hand with a valid model and no service loads the model itself.
#[test]
fn a_nano_instance_run_by_hand_without_a_service_loads_its_model() {
    let mut env = Env::bare();
    env.sql("INSERT INTO cpu_usage_log (cpu_usage) VALUES (40.0), (45.0)");
    let model = env.model().to_owned();
    let nano = env.spawn(
        NANO,
        &nano_args("cpu_usage", "cpu_usage_log", "cpu_usage_summary", &model),
    );
    wait_until("a summary written by the model", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE '%| model:%'") >= 1
    });
    assert_eq!(
        env.count(
            "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'MODEL_UNAVAILABLE'"
        ),
        0
    );
    env.stop(nano);
}

#[test]
fn hostile_tables_and_commands_leave_the_database_intact() {
    let mut env = Env::new();
    env.sql(
        "UPDATE llm_io_config SET read_tables = 'x; DROP TABLE autorun_components' WHERE llm_id = 'main_llm_processor';
         INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'CMD:START ../../bin/sh'),
                                                         ('main_llm_processor', 'CMD:START nano_extra'),
                                                         ('main_llm_processor', 'CMD:STOP daemon_manager');",
    );
    let processor = env.spawn(PROCESSOR, &["--model", "none"]);
    let commands = env.spawn(root_bin("llm_command_daemon").to_str().unwrap(), &[]);
    env.sql(
        "INSERT INTO llm_notifications (llm_id, notification_type, payload) VALUES
           ('main_llm_processor', 'RUN', NULL), ('main_llm_processor', 'PUSH', 'no_such_table');",
    );
    wait_until("both notifications processed", || {
        env.count("SELECT count(*) FROM llm_notifications WHERE processed = 1") == 2
    });
    wait_until("the commands handled", || {
        env.count("SELECT count(*) FROM llm_command_cursor") == 1
            && env.count("SELECT last_output_id FROM llm_command_cursor") == 3
    });
    assert_eq!(
        env.count("SELECT count(*) FROM sqlite_master WHERE name = 'autorun_components'"),
        1
    );
    assert_eq!(env.count("SELECT count(*) FROM autorun_components WHERE component_id = 'nano_extra' AND base_script_name = 'nano_instance' AND desired_state = 'active'"), 1);
    assert_eq!(
        env.count("SELECT count(*) FROM autorun_components WHERE base_script_name LIKE '%sh%'"),
        0
    );
    assert_eq!(
        env.count(
            "SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'COMMAND_REJECTED'"
        ),
        2
    );
    assert_eq!(
        env.count("SELECT count(*) FROM llm_outputs WHERE content LIKE 'CMD:%'"),
        3,
        "model output is kept"
    );
    assert_eq!(env.texts("PRAGMA integrity_check")[0], "ok");
    env.stop(commands);
    env.stop(processor);
}

#[test]
fn a_nano_instance_alerts_summarises_and_clears_needs_reload() {
    // Its own copy of the model, so its own threads are the model's.
    let mut env = Env::in_process();
    env.sql(
        "UPDATE nano_prompts SET prompt = 'Watch the CPU closely', needs_reload = 1 WHERE nano_id = 'cpu_usage';
         INSERT INTO cpu_usage_log (cpu_usage) VALUES (40.0), (95.0);",
    );
    let model = env.model().to_owned();
    let nano = env.spawn(
        NANO,
        &[
            "--instance_id",
            "cpu_usage",
            "--model",
            &model,
            "--metrics_table",
            "cpu_usage_log",
            "--summary_table",
            "cpu_usage_summary",
            "--pull_interval",
            "0.1",
            "--summary_interval",
            "0.5",
            "--max_new_tokens",
            "6",
            "--threads",
            "1",
        ],
    );
    wait_until("the alert", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE 'ALERT: CPU usage 95.0 > 90%'") == 1
    });
    wait_until("needs_reload cleared", || {
        env.count("SELECT needs_reload FROM nano_prompts WHERE nano_id = 'cpu_usage'") == 0
    });
    // Model work runs below the supervisors: every thread that exists now (the model's pool
    // included, once a summary ran) at nice 10, the default of config.json `models.nice`.
    wait_until("a window summary", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE '%window%'") >= 1
    });
    let main_stat = std::fs::read_to_string(format!("/proc/{nano}/stat")).unwrap();
    assert_eq!(nice_of(&main_stat), 10, "the model's main thread");
    let model_threads: Vec<i64> = std::fs::read_dir(format!("/proc/{nano}/task"))
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
        .filter(|stat| {
            !["(db-writer)", "(db-watch)", "(pidfds)"]
                .iter()
                .any(|t| stat.contains(t))
        })
        .map(|stat| nice_of(&stat))
        .collect();
    assert!(model_threads.iter().all(|n| *n == 10), "{model_threads:?}");
    wait_until("a window summary", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE 'cpu_usage_log window:%| model:%'") >= 1
    });
    let summary = env
        .texts("SELECT content FROM cpu_usage_summary WHERE content LIKE '%window%' LIMIT 1")[0]
        .clone();
    assert!(
        summary.contains("cpu_usage: count=1 min=95.00 mean=95.00 max=95.00 last=95.00"),
        "{summary}"
    );
    assert_eq!(
        env.texts("SELECT DISTINCT nano_id FROM cpu_usage_summary"),
        ["cpu_usage"]
    );
    assert_eq!(env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'nano_instance_cpu_usage' AND event_type = 'STARTED_SUCCESSFULLY'"), 1);
    env.stop(nano);
}

#[test]
fn a_nano_instance_with_bad_flags_says_so_and_idles() {
    let mut env = Env::new();
    let nano = env.spawn(
        NANO,
        &[
            "--instance_id",
            "x",
            "--model",
            "none",
            "--metrics_table",
            "x; DROP TABLE autorun_components",
            "--system_prompt",
            "/nonexistent",
        ],
    );
    wait_until("CRITICAL_ERROR", || {
        env.count("SELECT count(*) FROM component_lifecycle_log WHERE component_id = 'nano_instance_x' AND event_type = 'CRITICAL_ERROR' AND message LIKE '%--metrics_table%'") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        env.children
            .iter_mut()
            .find(|c| c.id() == nano)
            .unwrap()
            .try_wait()
            .unwrap()
            .is_none(),
        "no crash loop: it idles"
    );
    env.stop(nano);
}

#[test]
fn the_whole_loop_runs_under_the_managers() {
    // The main LLM manager's model_service row runs the service.
    let env = Env::bare();
    let model = env.model().to_owned();
    std::fs::write(
        env.home.join("config.json"),
        r#"{"managers": {"daemon_manager.py": {"startup_delay": 0}, "nano_manager.py": {"startup_delay": 0},
            "main_llm_manager.py": {"startup_delay": 0}}}"#,
    )
    .unwrap();
    let nano_args = |id: &str, metrics: &str, summary: &str| {
        serde_json::json!({
            "--instance_id": id, "--metrics_table": metrics, "--summary_table": summary, "--model": model,
            "--pull_interval": "0.2", "--summary_interval": "1", "--max_new_tokens": "6", "--threads": "1"
        })
        .to_string()
    };
    let conn = env.db();
    conn.execute(
        "UPDATE autorun_components SET desired_state = 'inactive'",
        [],
    )
    .unwrap();
    for (row, id, metrics, summary) in [
        (
            "nano_cpu_usage",
            "cpu_usage",
            "cpu_usage_log",
            "cpu_usage_summary",
        ),
        (
            "nano_mem_usage",
            "mem_usage",
            "memory_usage_log",
            "memory_usage_summary",
        ),
    ] {
        conn.execute(
            "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = ?2",
            [nano_args(id, metrics, summary), row.to_owned()],
        )
        .unwrap();
    }
    let processor_args =
        serde_json::json!({"--model": model, "--threads": "1", "--max_new_tokens": "6"})
            .to_string();
    conn.execute(
        "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = 'main_llm_processor'",
        [processor_args],
    )
    .unwrap();
    conn.execute_batch(
        "UPDATE autorun_components SET desired_state = 'active', launch_args_json = '{\"--interval\": \"0.2\"}'
         WHERE component_id IN ('cpu_usage_daemon', 'mem_usage_daemon');
         UPDATE autorun_components SET desired_state = 'active' WHERE component_id IN ('llm_config_daemon', 'llm_command_daemon', 'model_service');",
    )
    .unwrap();
    let ctl = |args: &[&str]| {
        Command::new(root_bin("n0m1ctl"))
            .arg("--home")
            .arg(&env.home)
            .args(args)
            .output()
            .unwrap()
    };
    let started = ctl(&["start"]);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    wait_until("summaries from both nano instances", || {
        env.count("SELECT count(*) FROM cpu_usage_summary WHERE content LIKE '%| model:%'") >= 1
            && env
                .count("SELECT count(*) FROM memory_usage_summary WHERE content LIKE '%| model:%'")
                >= 1
    });
    // One copy serves all three: the service has one model open by three connections.
    let socket = env.home.join("run/model.sock");
    wait_until("the processor's connection too", || {
        matches!(
            n0m1_protocol::model_service::status(&socket),
            Ok(n0m1_protocol::model_service::Reply::Status { ref models, .. })
                if models.len() == 1 && models[0].clients == 3
        )
    });
    // Killed, the service is restarted by its manager and the summaries go on.
    let service_pid = || -> i64 {
        env.count("SELECT COALESCE(MAX(pid), 0) FROM component_state WHERE component_id = 'model_service' AND state = 'running'")
    };
    let killed = service_pid();
    assert!(killed > 0);
    let before = env.count("SELECT MAX(id) FROM cpu_usage_summary");
    kill(killed as u32, Signal::SIGKILL);
    wait_until("the model service restarted by main_llm_manager", || {
        let pid = service_pid();
        pid > 0 && pid != killed
    });
    wait_until("model summaries after the restart", || {
        env.count(&format!(
            "SELECT count(*) FROM cpu_usage_summary WHERE id > {before} AND content LIKE '%| model:%'"
        )) >= 1
    });
    env.sql("INSERT INTO llm_notifications (llm_id, notification_type) VALUES ('main_llm_processor', 'RUN')");
    wait_until("the RUN's outputs", || {
        env.count("SELECT count(*) FROM llm_outputs") >= 3
    });
    let outputs = env.texts("SELECT content FROM llm_outputs ORDER BY id");
    assert!(
        outputs.iter().any(|o| o.starts_with("cpu_usage_summary: ")),
        "{outputs:?}"
    );
    // A model asking for another nano instance gets it started by the nano manager.
    env.sql("INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'CMD:START nano_extra')");
    wait_until("nano_extra to run", || {
        env.count("SELECT count(*) FROM component_state WHERE component_id = 'nano_extra' AND state = 'running'") == 1
    });
    let stopped = ctl(&["stop"]);
    assert!(
        stopped.status.success(),
        "{}",
        String::from_utf8_lossy(&stopped.stderr)
    );
    let left: Vec<String> = std::fs::read_dir(env.home.join("pids"))
        .unwrap()
        .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(left.is_empty(), "PID files left: {left:?}");
}

#[test]
fn n0m1ctl_model_forwards_to_the_model_tool() {
    let env = Env::new();
    let dir = env.home.join("fixture");
    let output = Command::new(root_bin("n0m1ctl"))
        .arg("--home")
        .arg(&env.home)
        .args(["model", "fixture"])
        .arg(&dir)
        .args(["--arch", "llama"])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(dir.join(file).is_file(), "{file}");
    }
    let offline = Command::new(root_bin("n0m1ctl"))
        .arg("--home")
        .arg(&env.home)
        .args(["model", "pull", "distilgpt2"])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(!offline.status.success());
    assert!(String::from_utf8_lossy(&offline.stderr).contains("HF_HUB_OFFLINE"));
}

#[test]
fn n0m1ctl_model_list_generate_and_bench_use_a_model_in_the_home() {
    let env = Env::new();
    let ctl = |args: &[&str]| {
        let output = Command::new(root_bin("n0m1ctl"))
            .arg("--home")
            .arg(&env.home)
            .arg("model")
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("HF_HUB_CACHE", env.home.join("no-hub-cache"))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "model {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let dir = env.home.join("models").join("tiny-fixture");
    ctl(&["fixture", dir.to_str().unwrap()]);
    let (listed, _) = ctl(&["list"]);
    assert!(listed.contains("tiny-fixture"), "{listed}");

    // By its name in the home's models/, as a component's --model would say it.
    let generate = [
        "generate",
        "--model",
        "tiny-fixture",
        "--prompt",
        "hello",
        "--max_new_tokens",
        "5",
    ];
    let (text, report) = ctl(&generate);
    assert!(report.contains("generated"), "{report}");
    let (again, _) = ctl(&generate);
    assert_eq!(text, again, "greedy decoding is deterministic");

    let (figures, _) = ctl(&[
        "bench",
        "--model",
        "tiny-fixture",
        "--prompt-tokens",
        "8",
        "--new-tokens",
        "6",
    ]);
    let figures: serde_json::Value = serde_json::from_str(figures.trim()).unwrap();
    assert!(figures["decode_tok_s"].as_f64().unwrap() > 0.0, "{figures}");
    assert!(figures["peak_rss_mib"].as_f64().unwrap() > 0.0, "{figures}");
    assert_eq!(figures["ids"].as_array().unwrap().len(), 6, "{figures}");
}

/// A client that goes away mid-completion stops its generation at the next token (another
/// client is not kept waiting behind it), and connections that send half a request are
/// closed after `UNFINISHED_REQUEST`, so they cannot hold every slot.
#[test]
fn the_model_service_drops_work_for_clients_that_are_gone_and_half_requests() {
    use std::io::{BufRead, BufReader, Write};
    let env = Env::new();
    let socket = env.socket();
    let open = format!(
        "{{\"op\": \"open\", \"model\": {}, \"default_model\": \"x\", \"lora\": null, \"quantize\": false}}\n",
        serde_json::Value::String(env.model().to_owned())
    );
    // A long completion, asked for and abandoned.
    let mut quitter = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    quitter.set_read_timeout(Some(T)).unwrap();
    quitter.write_all(open.as_bytes()).unwrap();
    let mut opened = String::new();
    BufReader::new(quitter.try_clone().unwrap())
        .read_line(&mut opened)
        .unwrap();
    assert!(opened.contains("opened"), "{opened}");
    quitter
        .write_all(b"{\"op\": \"complete\", \"system\": null, \"prompt\": \"count\", \"max_new_tokens\": 4096}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    drop(quitter);
    let cancelled = || match n0m1_protocol::model_service::status(&socket) {
        Ok(n0m1_protocol::model_service::Reply::Status {
            connections,
            cancelled,
            ..
        }) => (connections, cancelled),
        _ => (usize::MAX, 0),
    };
    // Its connection is gone from the service. With the tiny test model the completion may
    // have ended (its context is short) before the hangup was seen; if not, it was stopped
    // and counted. (A larger model shows the stop: see the README.)
    wait_until("the abandoned connection closed", || cancelled().0 == 0);
    assert!(cancelled().1 <= 1);

    // 64 connections with half a request each: all slots taken, until the timeout frees them.
    let mut halves = Vec::new();
    for _ in 0..n0m1_models::service::MAX_CONNECTIONS {
        let mut half = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        half.write_all(b"{\"op\": \"sta").unwrap();
        halves.push(half);
    }
    std::thread::sleep(Duration::from_millis(300));
    let refused = n0m1_protocol::model_service::status(&socket);
    assert!(refused.is_err(), "every slot is taken: {refused:?}");
    let started = Instant::now();
    wait_until("the half requests closed", || {
        n0m1_protocol::model_service::status(&socket).is_ok()
    });
    assert!(
        started.elapsed() <= n0m1_models::service::UNFINISHED_REQUEST + Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let mut closed = 0;
    for half in &mut halves {
        half.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut buf = [0u8; 64];
        if matches!(std::io::Read::read(half, &mut buf), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert_eq!(closed, halves.len());
}

/// What a hostile client of the model service sends before it stops or hangs up.
#[derive(Debug, Clone)]
enum Sent {
    /// A prefix of a good `open` request, then nothing (half-open).
    Half(usize),
    /// Any bytes, newlines where they fall.
    Bytes(Vec<u8>),
    /// A line past the 1 MiB limit.
    TooLong(usize),
    /// A complete request with NUL and invalid UTF-8 in it.
    Garbled(Vec<u8>),
}

fn sent() -> impl proptest::strategy::Strategy<Value = (Sent, bool)> {
    use proptest::prelude::*;
    let what = prop_oneof![
        (0usize..120).prop_map(Sent::Half),
        prop::collection::vec(any::<u8>(), 1..2048).prop_map(Sent::Bytes),
        (0usize..4096).prop_map(|extra| Sent::TooLong(
            n0m1_protocol::model_service::MAX_LINE_BYTES + 1 + extra
        )),
        prop::collection::vec(prop_oneof![Just(0u8), Just(0xffu8), any::<u8>()], 1..64)
            .prop_map(Sent::Garbled),
    ];
    (what, any::<bool>())
}

/// Hostile clients, generated (round three of the hostile-input tests): half requests held
/// open, random bytes, lines past the limit, garbled requests, up to twice as many clients
/// as the service has slots. Whatever they send, the service stays up, a good client is
/// served once the bad ones are closed or timed out, and nothing panics.
fn hostile_clients_case(clients: Vec<(Sent, bool)>) {
    use std::io::Write;
    let mut env = Env::bare();
    let stderr = env.home.join("service.err");
    let child = Command::new(SERVICE)
        .arg("--home")
        .arg(&env.home)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    env.children.push(child);
    let socket = env.socket();
    wait_until("the model service to answer", || {
        n0m1_protocol::model_service::status(&socket).is_ok()
    });
    let open = format!(
        "{{\"op\": \"open\", \"model\": {}, \"default_model\": \"x\", \"lora\": null, \"quantize\": false}}\n",
        serde_json::Value::String(env.model().to_owned())
    );
    let mut held = Vec::new();
    for (what, hang_up) in &clients {
        // A full service refuses new clients: that is its limit working, not a failure.
        let Ok(mut stream) = std::os::unix::net::UnixStream::connect(&socket) else {
            continue;
        };
        let bytes = match what {
            Sent::Half(n) => open.as_bytes()[..(*n).min(open.len() - 1)].to_vec(),
            Sent::Bytes(raw) => raw.clone(),
            Sent::TooLong(n) => vec![b'{'; *n],
            Sent::Garbled(raw) => {
                let mut line = b"{\"op\": \"complete\", \"prompt\": \"".to_vec();
                line.extend(raw.iter().filter(|b| **b != b'\n'));
                line.extend(b"\", \"system\": null, \"max_new_tokens\": 3}\n");
                line
            }
        };
        // The service may close on a bad line before all of it is read.
        let _ = stream.write_all(&bytes);
        if !hang_up {
            held.push(stream);
        }
    }
    // A good client is served once the bad ones are gone (refused, or timed out).
    wait_until("the service to answer a good client", || {
        n0m1_protocol::model_service::status(&socket).is_ok()
    });
    let mut good = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    good.set_read_timeout(Some(T)).unwrap();
    good.write_all(open.as_bytes()).unwrap();
    good.write_all(
        b"{\"op\": \"complete\", \"system\": null, \"prompt\": \"hi\", \"max_new_tokens\": 2}\n",
    )
    .unwrap();
    let mut replies = std::io::BufRead::lines(std::io::BufReader::new(good));
    let opened = replies.next().unwrap().unwrap();
    assert!(opened.contains("opened"), "{opened}");
    let completed = replies.next().unwrap().unwrap();
    assert!(completed.contains("completed"), "{completed}");
    eprintln!(
        "{} hostile clients, {} held open",
        clients.len(),
        held.len()
    );
    drop(held);
    assert!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_ok(),
        "the service is still up"
    );
    env.stop(pid);
    let said = std::fs::read_to_string(&stderr).unwrap();
    assert!(!said.contains("panicked"), "{said}");
}

proptest::proptest! {
    // A service per case; a case that fills every slot waits out the 5 s request timeout.
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 8,
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    })]

    #[test]
    fn hostile_clients_cannot_take_the_model_service_down(
        clients in proptest::collection::vec(sent(), 0..2 * n0m1_models::service::MAX_CONNECTIONS),
    ) {
        hostile_clients_case(clients);
    }
}
