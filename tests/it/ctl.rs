//! n0m1ctl commands that need no running system.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use predicates::str::contains;

use crate::support::{TestEnv, bin};

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
    std::fs::rename(&log, log.with_extension("log.1")).unwrap();
    std::fs::write(&log, "after rotation\n").unwrap();
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
        .stdout(contains("daemon_manager"));
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
