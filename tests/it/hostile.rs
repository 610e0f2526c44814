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

// Round three: what a component prints, what the token file is, and clients that stop
// half-way. Each case runs the whole system (boot, the log writer, the web server).

/// A piece of what the noisy component prints.
#[derive(Debug, Clone)]
enum Output {
    Text(String),
    /// One line of this many bytes (past the log writer's 64 KiB pieces and its 1 MiB cap).
    Long(usize, u8),
    /// Any bytes: NUL, invalid UTF-8, newlines where they fall.
    Binary(Vec<u8>),
}

fn output() -> impl Strategy<Value = Output> {
    prop_oneof![
        "\\PC{0,80}".prop_map(Output::Text),
        Just(Output::Text(
            "\u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}]52;c;cHduZWQ=\u{7}".to_owned()
        )),
        (60_000usize..1_500_000, b'a'..=b'z').prop_map(|(n, b)| Output::Long(n, b)),
        prop::collection::vec(any::<u8>(), 0..4096).prop_map(Output::Binary),
    ]
}

/// The bytes printed: the pieces, each ended by a newline, then `END`.
fn printed(pieces: &[Output]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for piece in pieces {
        match piece {
            Output::Text(text) => bytes.extend(text.as_bytes()),
            Output::Long(n, b) => bytes.extend(std::iter::repeat_n(*b, *n)),
            Output::Binary(raw) => bytes.extend(raw),
        }
        bytes.push(b'\n');
    }
    bytes.extend(b"END\n");
    bytes
}

/// What the log file must hold: every line as printed, one past the cap cut once and marked.
fn logged(printed: &[u8]) -> Vec<u8> {
    let cap = n0m1_logd::MAX_WHOLE_LINE as usize;
    let mut expected = Vec::new();
    for line in printed.strip_suffix(b"\n").unwrap().split(|b| *b == b'\n') {
        if line.len() > cap {
            expected.extend(&line[..cap]);
            expected.extend(
                format!(
                    " [n0m1_logd: line cut at {cap} bytes, {} more not kept]\n",
                    line.len() - cap
                )
                .as_bytes(),
            );
        } else {
            expected.extend(line);
            expected.push(b'\n');
        }
    }
    expected
}

#[derive(Debug, Clone, Copy)]
enum TokenFile {
    Made,
    Fifo,
    Directory,
    Device,
    Empty,
    Huge,
    Exposed,
}

/// Puts the token file in place; returns what every refusal must say, if it must be refused.
fn write_token(env: &TestEnv, token: TokenFile) -> Option<&'static str> {
    use std::os::unix::fs::PermissionsExt;
    let path = env.home.web_token();
    let private = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    match token {
        TokenFile::Made => None,
        TokenFile::Fifo => {
            nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
            Some("is a FIFO")
        }
        TokenFile::Directory => {
            std::fs::create_dir(&path).unwrap();
            Some("is a directory")
        }
        TokenFile::Device => {
            std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
            Some("is a device")
        }
        TokenFile::Empty => {
            private(b"");
            Some("does not hold a token")
        }
        TokenFile::Huge => {
            private(&vec![b'a'; 1 << 20]);
            Some("does not hold a token")
        }
        TokenFile::Exposed => {
            private(format!("{}\n", "ab".repeat(32)).as_bytes());
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            Some("can be read by others")
        }
    }
}

fn token_file() -> impl Strategy<Value = TokenFile> {
    prop::sample::select(vec![
        TokenFile::Made,
        TokenFile::Made,
        TokenFile::Fifo,
        TokenFile::Directory,
        TokenFile::Device,
        TokenFile::Empty,
        TokenFile::Huge,
        TokenFile::Exposed,
    ])
}

/// What a client sends before it stops: a prefix of a request, or any bytes.
fn half_request() -> impl Strategy<Value = Vec<u8>> {
    const REQUEST: &[u8] =
        b"POST /api/components/noisy/disable HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 10\r\n\r\n{\"a\":";
    prop_oneof![
        (0..REQUEST.len()).prop_map(|n| REQUEST[..n].to_vec()),
        prop::collection::vec(any::<u8>(), 1..512),
    ]
}

fn round_three_case(pieces: Vec<Output>, token: TokenFile, halves: Vec<Vec<u8>>) {
    use std::io::Write;
    let env = TestEnv::new();
    let payload = printed(&pieces);
    eprintln!(
        "case: {} bytes printed, token {token:?}, {} half-open clients",
        payload.len(),
        halves.len()
    );
    std::fs::write(env.home.root().join("payload"), &payload).unwrap();
    env.script(
        "noisy.sh",
        &format!(
            "#!/bin/sh\ncat '{0}/payload'\ncat '{0}/payload' >&2\nexec sleep 1000\n",
            env.root()
        ),
    );
    env.add_component("noisy", "noisy.sh", "daemon_manager", "{}");
    let refusal = write_token(&env, token);
    let addr = format!("127.0.0.1:{}", crate::support::free_port());
    env.db()
        .execute(
            "UPDATE autorun_components SET desired_state = 'active', launch_args_json = ?1 WHERE component_id = 'n0m1_web'",
            [format!(r#"{{"--listen": "{addr}"}}"#)],
        )
        .unwrap();
    env.ctl(&["start"]).success();
    let logd = env.wait_pid(n0m1_core::home::LOGD_STEM, "the log writer");

    // Every line as printed, on both streams; one past 1 MiB cut once and marked.
    let expected = logged(&payload);
    let (out, err) = env.home.component_logs("noisy");
    for file in [&out, &err] {
        wait_until(DEADLINE, &format!("{} complete", file.display()), || {
            std::fs::read(file).is_ok_and(|bytes| bytes.ends_with(b"\nEND\n"))
        });
        let got = std::fs::read(file).unwrap();
        assert!(
            got == expected,
            "{}: {} bytes logged, {} expected",
            file.display(),
            got.len(),
            expected.len()
        );
    }
    // `logs` piped passes the bytes on and ends.
    let shown = env.ctl(&["logs", "noisy", "-n", "3"]).success();
    assert!(shown.get_output().stdout.ends_with(b"END\n"));

    let remote = |env: &TestEnv| {
        assert_cmd::Command::new(crate::support::bin("n0m1ctl"))
            .args([
                "--home",
                env.root(),
                "--remote",
                &format!("http://{addr}"),
                "status",
            ])
            .timeout(DEADLINE)
            .assert()
    };
    match refusal {
        Some(says) => {
            let (_, web_err) = env.home.component_logs("n0m1_web");
            wait_until(DEADLINE, &format!("n0m1_web's refusal: {says}"), || {
                file_contains(&web_err, says)
            });
            let answer = remote(&env).failure();
            let error = String::from_utf8_lossy(&answer.get_output().stderr).into_owned();
            assert!(
                error.contains("web.token") && error.contains(says),
                "{error}"
            );
        }
        None => {
            wait_until(DEADLINE, "n0m1_web ready", || {
                env.status_json("n0m1_web")["ready"] == true
            });
            let mut held = Vec::new();
            for half in &halves {
                let mut stream = std::net::TcpStream::connect(&addr).unwrap();
                // The server may close on garbage at once.
                let _ = stream.write_all(half);
                held.push(stream);
            }
            // The half-open clients are still connected; others are served.
            assert_eq!(
                crate::web::http(&addr, "GET", "/healthz", &[], b"").status,
                200
            );
            let listed = remote(&env).success();
            let text = String::from_utf8_lossy(&listed.get_output().stdout).into_owned();
            assert!(text.contains("noisy"), "{text}");
            drop(held);
        }
    }
    assert_eq!(
        env.state_of("noisy").as_deref(),
        Some("running"),
        "no half request reached it"
    );
    assert_eq!(
        env.pid_of(n0m1_core::home::LOGD_STEM),
        Some(logd),
        "the log writer never died"
    );
    env.ctl(&["stop"]).success();
    assert!(
        env.live_processes().is_empty(),
        "{:?}",
        env.live_processes()
    );
    for dir in [env.home.logs_dir(), env.home.manager_logs_dir()] {
        for entry in std::fs::read_dir(dir).unwrap().filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("noisy.") {
                continue;
            }
            assert!(!file_contains(&entry.path(), "panicked"), "{name}");
        }
    }
}

proptest! {
    // The whole system per case, with lines up to 1.5 MB through the log writer.
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn long_lines_binary_output_bad_tokens_and_half_open_clients_break_nothing(
        pieces in prop::collection::vec(output(), 1..5),
        token in token_file(),
        halves in prop::collection::vec(half_request(), 0..200),
    ) {
        round_three_case(pieces, token, halves);
    }
}
