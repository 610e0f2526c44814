//! Hostile input, generated: component ids, launch arguments and config files from the
//! classes that broke n0m1 before (control characters, reserved names, huge strings,
//! non-regular files). Each case runs the real manager and n0m1ctl on a fresh home and checks
//! that nothing hangs past a deadline, nothing panics, every refused row is `START_FAILED`
//! with a message naming its field, and no process is left.

use std::collections::BTreeMap;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use proptest::prelude::*;

use crate::support::{TestEnv, file_contains, wait_until};

/// Each verdict, and each command, must come within this long.
const DEADLINE: Duration = Duration::from_secs(20);

fn component_id() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,20}",
        // Control characters (ESC, NUL, newline, C1) inside an id.
        (
            "[a-z]{1,5}",
            prop::char::range('\u{0}', '\u{1f}'),
            "[a-z]{0,5}"
        )
            .prop_map(|(a, c, b)| format!("{a}{c}]0;PWNED{b}")),
        ("[a-z]{1,5}", Just('\u{9b}'), "[a-z]{0,5}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        prop::sample::select(vec![
            "boot_system",
            "daemon_manager",
            "nano_manager",
            "main_llm_manager"
        ])
        .prop_map(str::to_owned),
        "[a-z]{129,2000}",
        "[a-z]{1,5}[ ;$|&/]{1,3}[a-z]{0,5}",
        "[.-][a-z]{1,8}",
    ]
}

fn launch_args() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9 ]{0,12}".prop_map(|v| format!(r#"{{"--a": "{v}"}}"#)),
        (any::<i64>(), "[1-9][0-9]{19,40}")
            .prop_map(|(n, big)| format!(r#"{{"--n": {n}, "--big": {big}}}"#)),
        Just(r#"{"--x": "a\u0000b"}"#.to_owned()),
        Just(r#"{"--t": "\u001b]0;PWNED\u0007\u001b[2J"}"#.to_owned()),
        (70_000usize..100_000).prop_map(|n| format!(r#"{{"--x": "{}"}}"#, "y".repeat(n))),
        Just(r#"{"--x": [1, 2]}"#.to_owned()),
        "\\PC{0,40}",
    ]
}

#[derive(Debug, Clone)]
enum ConfigFile {
    Valid,
    Fifo,
    Directory,
    DevZero,
    Huge,
    LongName(usize),
    NotUtf8,
}

fn config_file() -> impl Strategy<Value = ConfigFile> {
    prop_oneof![
        Just(ConfigFile::Valid),
        Just(ConfigFile::Fifo),
        Just(ConfigFile::Directory),
        Just(ConfigFile::DevZero),
        Just(ConfigFile::Huge),
        (201usize..100_000).prop_map(ConfigFile::LongName),
        Just(ConfigFile::NotUtf8),
    ]
}

/// Writes the config and returns what `config check` must say, if it must fail.
fn write_config(env: &TestEnv, config: &ConfigFile) -> Option<&'static str> {
    let path = env.home.config_path();
    let replace = |write: &dyn Fn(&std::path::Path)| {
        std::fs::remove_file(&path).unwrap();
        write(&path);
    };
    match config {
        ConfigFile::Valid => None,
        ConfigFile::Fifo => {
            replace(&|p| {
                nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()
            });
            Some("is a FIFO")
        }
        ConfigFile::Directory => {
            replace(&|p| std::fs::create_dir(p).unwrap());
            Some("is a directory")
        }
        ConfigFile::DevZero => {
            replace(&|p| std::os::unix::fs::symlink("/dev/zero", p).unwrap());
            Some("is a device")
        }
        ConfigFile::Huge => {
            replace(&|p| {
                let text = format!("{{{}}}", " ".repeat(2 << 20));
                std::fs::write(p, text).unwrap()
            });
            Some("larger than")
        }
        ConfigFile::LongName(n) => {
            let n = *n;
            replace(&move |p| {
                let text = format!(
                    r#"{{"managers": {{"daemon_manager.py": {{"name": "{}"}}}}}}"#,
                    "n".repeat(n)
                );
                std::fs::write(p, text).unwrap()
            });
            Some("name")
        }
        ConfigFile::NotUtf8 => {
            replace(&|p| std::fs::write(p, b"{\"managers\": \xff}").unwrap());
            Some("not UTF-8")
        }
    }
}

fn no_control_characters(text: &str) -> bool {
    text.chars().all(|c| c == '\n' || !c.is_control())
}

fn hostile_case(rows: BTreeMap<String, String>, config: ConfigFile) {
    let mut env = TestEnv::new();
    for (id, args) in &rows {
        env.add_component(id, "sleeper.sh", "daemon_manager", args);
    }
    let refusal = write_config(&env, &config);
    let check = env.ctl(&["config", "check"]);
    let output = check.get_output();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    match refusal {
        None => assert!(output.status.success(), "{stderr}"),
        Some(says) => {
            assert!(!output.status.success());
            assert!(
                stderr.contains("config.json") && stderr.contains(says),
                "{stderr}"
            );
        }
    }

    let manager = env.spawn("daemon_manager");
    for (id, args) in &rows {
        let id_ok = n0m1_core::home::validate_supervised_id(id).is_ok();
        let args_ok = n0m1_supervisor::launch::launch_args(Some(args), "PRIMARY_RUN").is_ok();
        if id_ok && args_ok {
            wait_until(DEADLINE, &format!("{} to run", id.escape_debug()), || {
                env.state_of(id).as_deref() == Some("running")
            });
            continue;
        }
        let field = if id_ok {
            "launch_args_json"
        } else {
            "component id"
        };
        let mut message = String::new();
        wait_until(DEADLINE, &format!("{} refused", id.escape_debug()), || {
            message = env
                .db()
                .query_row(
                    "SELECT message FROM component_lifecycle_log WHERE component_id = ?1 AND event_type = 'START_FAILED'",
                    [id],
                    |r| r.get(0),
                )
                .unwrap_or_default();
            !message.is_empty()
        });
        assert!(message.contains(field), "{}: {message}", id.escape_debug());
        assert!(
            message.len() < 4096,
            "the message does not carry the huge input"
        );
    }

    // status answers in time and cannot drive the terminal, whatever the ids.
    let status = env.ctl(&["status"]);
    let output = status.get_output();
    assert!(matches!(output.status.code(), Some(0 | 3)), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(no_control_characters(&stdout), "{stdout}");

    kill(Pid::from_raw(manager), Signal::SIGTERM).unwrap();
    let status = env.wait_child(manager, DEADLINE);
    assert!(status.success(), "the manager stops cleanly: {status}");
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
    let err_log = env.home.root().join("daemon_manager.test.err");
    assert!(!file_contains(&err_log, "panicked"));
    let (_, manager_err) = env.home.manager_logs("daemon_manager");
    assert!(!file_contains(&manager_err, "panicked"));
}

proptest! {
    // Each case starts a manager on a fresh home: a few dozen cases, not hundreds.
    #![proptest_config(ProptestConfig {
        cases: 24,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn hostile_ids_args_and_configs_are_refused_by_name_and_leave_nothing(
        rows in prop::collection::btree_map(component_id(), launch_args(), 1..5),
        config in config_file(),
    ) {
        hostile_case(rows, config);
    }
}
