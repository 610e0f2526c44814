//! `llm_command_daemon`: lets the main model start and stop components by writing
//! `CMD:START <id>` or `CMD:STOP <id>` into `llm_outputs`.
//!
//! Each row is handled exactly once across restarts: the last id handled is kept in
//! `llm_command_cursor` and advanced in the same transaction as the action. Model output is
//! never deleted. Unknown ids are inserted only as nano instances (`nano_<name>`), never as an
//! arbitrary script, and the supervisors themselves cannot be commanded.

use std::time::Duration;

use n0m1_core::access_log::AccessKind;
use n0m1_core::components::{self, DESIRED_ACTIVE, DESIRED_INACTIVE, NewComponent};
use n0m1_core::home::validate_component_id;
use n0m1_core::lifecycle::{LifecycleEvent, LifecycleRecord};
use n0m1_core::schema::{
    AUTORUN_COMPONENTS, LLM_COMMAND_CURSOR, LLM_OUTPUTS, MANAGERS, NANO_MANAGER,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::runtime::Runtime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Start(String),
    Stop(String),
}

/// Only the first line counts, and only its first part: a model may ramble after the command.
const MAX_COMMAND_LINE: usize = 256;

/// `None` when the content is not a command; `Some(Err)` when it is one we refuse.
pub fn parse_command(content: &str) -> Option<Result<Command, String>> {
    let rest = content.strip_prefix("CMD:")?;
    let line: String = rest
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(MAX_COMMAND_LINE)
        .collect();
    let mut words = line.split_whitespace();
    let (Some(verb), Some(id), None) = (words.next(), words.next(), words.next()) else {
        return Some(Err(format!(
            "expected `CMD:START <id>` or `CMD:STOP <id>`, got {:?}",
            line.trim()
        )));
    };
    if let Err(error) = validate_component_id(id) {
        return Some(Err(error.to_string()));
    }
    if id.starts_with("boot") || MANAGERS.contains(&id) {
        return Some(Err(format!(
            "{id:?} is a supervisor and cannot be commanded"
        )));
    }
    Some(match verb.to_ascii_uppercase().as_str() {
        "START" => Ok(Command::Start(id.to_owned())),
        "STOP" => Ok(Command::Stop(id.to_owned())),
        other => Err(format!("unknown verb {other:?}: only START and STOP")),
    })
}

/// What happened to one row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied { output_id: i64, message: String },
    Rejected { output_id: i64, reason: String },
}

fn apply(conn: &Connection, command: &Command) -> Result<String, String> {
    let sql_error = |e: rusqlite::Error| e.to_string();
    let (id, active) = match command {
        Command::Start(id) => (id, true),
        Command::Stop(id) => (id, false),
    };
    if components::set_desired(conn, id, active).map_err(sql_error)? {
        return Ok(format!(
            "{id} set {}",
            if active {
                DESIRED_ACTIVE
            } else {
                DESIRED_INACTIVE
            }
        ));
    }
    let Command::Start(id) = command else {
        return Err(format!("unknown component {id:?}"));
    };
    let Some(name) = id.strip_prefix("nano_").filter(|n| !n.is_empty()) else {
        return Err(format!(
            "unknown component {id:?}: only nano instances (nano_<name>) can be created by command"
        ));
    };
    let args = serde_json::json!({ "--instance_id": name }).to_string();
    components::insert_if_missing(
        conn,
        NewComponent {
            component_id: id,
            base_script_name: "nano_instance",
            manager_affinity: NANO_MANAGER,
            active: true,
            launch_args_json: &args,
            description: "created by CMD:START",
        },
    )
    .map_err(sql_error)?;
    Ok(format!("{id} created as a nano instance and set active"))
}

/// Handles every `llm_outputs` row after the cursor, each in its own transaction with the
/// cursor's advance.
pub fn process_new_outputs(conn: &Connection, daemon_id: &str) -> rusqlite::Result<Vec<Outcome>> {
    let cursor: i64 = conn
        .query_row(
            &format!("SELECT last_output_id FROM {LLM_COMMAND_CURSOR} WHERE daemon_id = ?1"),
            [daemon_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    let rows = crate::llm_tables::outputs_after(conn, cursor, 1000)?;
    let mut outcomes = Vec::new();
    for (output_id, bytes) in rows {
        let content = String::from_utf8_lossy(&bytes);
        let transaction = conn.unchecked_transaction()?;
        let outcome = match parse_command(&content) {
            None => None,
            Some(Err(reason)) => Some(Outcome::Rejected { output_id, reason }),
            Some(Ok(command)) => Some(match apply(&transaction, &command) {
                Ok(message) => Outcome::Applied { output_id, message },
                Err(reason) => Outcome::Rejected { output_id, reason },
            }),
        };
        if let Some(Outcome::Rejected { reason, .. }) = &outcome {
            let message = format!("llm_outputs row {output_id}: {reason}");
            LifecycleRecord::new(daemon_id, LifecycleEvent::CommandRejected)
                .message(&message)
                .write(&transaction)?;
        }
        transaction.execute(
            &format!(
                "INSERT INTO {LLM_COMMAND_CURSOR} (daemon_id, last_output_id) VALUES (?1, ?2)
                 ON CONFLICT (daemon_id) DO UPDATE SET last_output_id = excluded.last_output_id"
            ),
            params![daemon_id, output_id],
        )?;
        transaction.commit()?;
        outcomes.extend(outcome);
    }
    Ok(outcomes)
}

pub fn run(mut runtime: Runtime) -> anyhow::Result<()> {
    runtime.event(
        LifecycleEvent::StartedSuccessfully,
        "watching llm_outputs for CMD: lines",
    );
    runtime.access(LLM_OUTPUTS, AccessKind::Read);
    runtime.access(AUTORUN_COMPONENTS, AccessKind::Write);
    let daemon_id = runtime.component_id.clone();
    runtime.serve(Duration::from_secs(5), |conn| {
        match process_new_outputs(conn, &daemon_id) {
            Ok(outcomes) => {
                for outcome in outcomes {
                    tracing::info!(?outcome, "command handled");
                }
            }
            Err(error) => tracing::warn!(%error, "cannot read llm_outputs now; trying again"),
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::db;

    fn output(conn: &Connection, content: &[u8]) {
        conn.execute(
            "INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', ?1)",
            [content],
        )
        .unwrap();
    }

    fn desired(conn: &Connection, id: &str) -> Option<String> {
        conn.query_row(
            "SELECT desired_state FROM autorun_components WHERE component_id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()
        .unwrap()
    }

    #[test]
    fn parses_commands_and_refuses_the_rest() {
        assert_eq!(parse_command("hello"), None);
        assert_eq!(
            parse_command("CMD:START nano_cpu_usage"),
            Some(Ok(Command::Start("nano_cpu_usage".into())))
        );
        assert_eq!(
            parse_command("CMD:stop  cpu_usage_daemon\nand more"),
            Some(Ok(Command::Stop("cpu_usage_daemon".into())))
        );
        for bad in [
            "CMD:START ../../bin/sh",
            "CMD:RUN x",
            "CMD:START",
            "CMD:START a b",
            "CMD:STOP daemon_manager",
            "CMD:STOP boot_system",
            "CMD:START x;rm",
        ] {
            assert!(matches!(parse_command(bad), Some(Err(_))), "{bad}");
        }
        let huge = format!("CMD:START {}", "a".repeat(1_000_000));
        assert!(matches!(parse_command(&huge), Some(Err(_))));
    }

    #[test]
    fn updates_inserts_nano_instances_and_handles_each_row_once() {
        let conn = db();
        output(&conn, b"CMD:START main_llm_processor");
        output(&conn, b"CMD:START nano_foo");
        output(&conn, b"just text");
        output(&conn, b"CMD:START evil_script");
        output(&conn, b"CMD:START ../../bin/sh");
        output(&conn, &[b'C', b'M', b'D', b':', 0xff, 0xfe]);
        let outcomes = process_new_outputs(&conn, "llm_command_daemon").unwrap();
        assert_eq!(outcomes.len(), 5, "{outcomes:?}");
        assert_eq!(
            desired(&conn, "main_llm_processor").as_deref(),
            Some("active")
        );
        assert_eq!(desired(&conn, "nano_foo").as_deref(), Some("active"));
        let (script, manager, args): (String, String, String) = conn
            .query_row(
                "SELECT base_script_name, manager_affinity, launch_args_json FROM autorun_components WHERE component_id = 'nano_foo'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (script.as_str(), manager.as_str(), args.as_str()),
            (
                "nano_instance",
                "nano_manager",
                r#"{"--instance_id":"foo"}"#
            )
        );
        assert_eq!(
            desired(&conn, "evil_script"),
            None,
            "no arbitrary script is inserted"
        );
        let rejected: i64 = conn
            .query_row("SELECT count(*) FROM component_lifecycle_log WHERE event_type = 'COMMAND_REJECTED'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rejected, 3);
        // Nothing is handled twice, and model output is kept.
        assert!(
            process_new_outputs(&conn, "llm_command_daemon")
                .unwrap()
                .is_empty()
        );
        let kept: i64 = conn
            .query_row("SELECT count(*) FROM llm_outputs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, 6);
        conn.execute("UPDATE autorun_components SET desired_state = 'inactive' WHERE component_id = 'main_llm_processor'", []).unwrap();
        output(&conn, b"CMD:STOP nano_foo");
        process_new_outputs(&conn, "llm_command_daemon").unwrap();
        assert_eq!(desired(&conn, "nano_foo").as_deref(), Some("inactive"));
        assert_eq!(
            desired(&conn, "main_llm_processor").as_deref(),
            Some("inactive"),
            "old rows are not replayed"
        );
    }

    proptest::proptest! {
        #[test]
        fn parsing_never_panics(content in "\\PC{0,300}") {
            let _ = parse_command(&content);
        }

        #[test]
        fn accepted_commands_name_safe_ids(content in "CMD:(START|STOP|start|[A-Z]{0,5}) [ -~]{0,40}") {
            if let Some(Ok(Command::Start(id) | Command::Stop(id))) = parse_command(&content) {
                proptest::prop_assert!(validate_component_id(&id).is_ok());
                proptest::prop_assert!(!id.starts_with("boot") && !MANAGERS.contains(&id.as_str()));
            }
        }
    }
}
