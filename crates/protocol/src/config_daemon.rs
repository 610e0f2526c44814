//! `llm_config_daemon`: every `llm_io_config` row with `needs_reload = 1` becomes a
//! CONFIG_RELOAD notification for its llm_id, and the flag is cleared in the same
//! transaction, so a reload is announced exactly once.

use std::time::Duration;

use n0m1_core::access_log::AccessKind;
use n0m1_core::lifecycle::LifecycleEvent;
use n0m1_core::schema::{LLM_IO_CONFIG, LLM_NOTIFICATIONS};

use crate::llm_tables::announce_reloads;
use crate::runtime::Runtime;

pub fn run(mut runtime: Runtime, _home: &n0m1_core::Home) -> anyhow::Result<()> {
    runtime.event(
        LifecycleEvent::StartedSuccessfully,
        "watching llm_io_config for needs_reload",
    );
    runtime.access(LLM_IO_CONFIG, AccessKind::Read);
    runtime.access(LLM_NOTIFICATIONS, AccessKind::Write);
    // A periodic pass as well as change-driven ones, in case a change was missed.
    runtime.serve(Duration::from_secs(5), |conn| {
        match announce_reloads(conn) {
            Ok(ids) if !ids.is_empty() => {
                tracing::info!(llm_ids = %ids.join(", "), "CONFIG_RELOAD notified")
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "cannot process reloads now; trying again"),
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    #[test]
    fn clears_the_flag_and_notifies_once_for_any_llm() {
        let mut conn = Connection::open_in_memory().unwrap();
        n0m1_core::schema::migrations()
            .to_latest(&mut conn)
            .unwrap();
        n0m1_core::defaults::insert_defaults(&conn).unwrap();
        conn.execute_batch(
            "INSERT INTO llm_io_config (llm_id, read_tables, output_table, needs_reload) VALUES ('other', 'cpu_usage_summary', 'llm_outputs', 1);
             UPDATE llm_io_config SET needs_reload = 1 WHERE llm_id = 'main_llm_processor';",
        )
        .unwrap();
        assert_eq!(
            announce_reloads(&conn).unwrap(),
            ["main_llm_processor", "other"]
        );
        assert!(announce_reloads(&conn).unwrap().is_empty());
        let rows: Vec<(String, String, Option<String>)> = conn
            .prepare("SELECT llm_id, notification_type, payload FROM llm_notifications ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|r| r.1 == "CONFIG_RELOAD" && r.2.is_none()));
        let pending: i64 = conn
            .query_row(
                "SELECT count(*) FROM llm_io_config WHERE needs_reload = 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(pending, 0);
    }
}
