//! The one owner of the model loop's tables: `llm_notifications` (typed as `Notification`),
//! `llm_io_config`, and the output tables (`llm_outputs` and any `output_table` a config
//! names). The processor, the config and command daemons and n0m1_web read and write them
//! only through here, as the supervisors use `n0m1_core::components` and `state`.

use n0m1_core::schema::{
    CPU_TEMP_SUMMARY, CPU_USAGE_SUMMARY, LLM_IO_CONFIG, LLM_NOTIFICATIONS, LLM_OUTPUTS,
    MEMORY_USAGE_SUMMARY, NANO_OUTPUTS,
};
use rusqlite::{Connection, OptionalExtension, params};

use crate::tables::{self, TableName};

/// What a row of `llm_notifications` asks of a model component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Summarise the tables named in the payload, or the configured `read_tables`.
    Run { tables: Option<String> },
    /// Summarise the tables named in the payload (none is an error).
    Push { tables: Option<String> },
    /// Pass a request on (`REQUEST:<payload>`).
    PullRequest { what: Option<String> },
    /// Read `llm_io_config` again.
    ConfigReload,
    /// Diagnose incident `id` (the payload) from its evidence; `None`: the payload is not an
    /// incident id.
    Incident { id: Option<i64> },
    /// A type this version does not know: marked processed with an error event.
    Unknown {
        kind: String,
        payload: Option<String>,
    },
}

pub const RUN: &str = "RUN";
pub const PUSH: &str = "PUSH";
pub const PULL_REQUEST: &str = "PULL_REQUEST";
pub const CONFIG_RELOAD: &str = "CONFIG_RELOAD";
pub const INCIDENT: &str = "INCIDENT";

impl Notification {
    /// The row's `notification_type` and `payload`, as written by anyone.
    pub fn parse(kind: &str, payload: Option<String>) -> Notification {
        match kind {
            RUN => Notification::Run { tables: payload },
            PUSH => Notification::Push { tables: payload },
            PULL_REQUEST => Notification::PullRequest { what: payload },
            CONFIG_RELOAD => Notification::ConfigReload,
            INCIDENT => Notification::Incident {
                id: payload.as_deref().and_then(|p| p.trim().parse().ok()),
            },
            _ => Notification::Unknown {
                kind: kind.to_owned(),
                payload,
            },
        }
    }

    /// The `notification_type` column.
    pub fn kind(&self) -> &str {
        match self {
            Notification::Run { .. } => RUN,
            Notification::Push { .. } => PUSH,
            Notification::PullRequest { .. } => PULL_REQUEST,
            Notification::ConfigReload => CONFIG_RELOAD,
            Notification::Incident { .. } => INCIDENT,
            Notification::Unknown { kind, .. } => kind,
        }
    }

    /// The `payload` column.
    pub fn payload(&self) -> Option<String> {
        match self {
            Notification::Run { tables } | Notification::Push { tables } => tables.clone(),
            Notification::PullRequest { what } => what.clone(),
            Notification::ConfigReload => None,
            Notification::Incident { id } => id.map(|id| id.to_string()),
            Notification::Unknown { payload, .. } => payload.clone(),
        }
    }
}

/// A notification not yet processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: i64,
    pub notification: Notification,
}

/// The oldest unprocessed notifications of `llm_id`, at most `limit`. Types and payloads are
/// read as bytes (anyone may write the table) and the payload cut at 4,096 characters.
pub fn pending(conn: &Connection, llm_id: &str, limit: usize) -> rusqlite::Result<Vec<Pending>> {
    conn.prepare_cached(&format!(
        "SELECT id, CAST(notification_type AS BLOB), CAST(substr(payload, 1, 4096) AS BLOB) FROM {LLM_NOTIFICATIONS}
         WHERE llm_id = ?1 AND COALESCE(processed, 0) = 0 ORDER BY id LIMIT ?2"
    ))?
    .query_map(params![llm_id, limit as i64], |r| {
        let kind: Vec<u8> = r.get(1)?;
        let payload: Option<Vec<u8>> = r.get(2)?;
        Ok(Pending {
            id: r.get(0)?,
            notification: Notification::parse(
                &String::from_utf8_lossy(&kind),
                payload.map(|p| String::from_utf8_lossy(&p).into_owned()),
            ),
        })
    })?
    .collect()
}

/// Marks notification `id` processed unless someone did already; true if this call did.
/// Called inside the transaction that writes its outputs, so both or neither happen.
pub fn claim(conn: &Connection, id: i64) -> rusqlite::Result<bool> {
    conn.execute(
        &format!(
            "UPDATE {LLM_NOTIFICATIONS} SET processed = 1 WHERE id = ?1 AND COALESCE(processed, 0) = 0"
        ),
        [id],
    )
    .map(|changed| changed > 0)
}

/// Queues a notification for `llm_id`; returns its id.
pub fn notify(
    conn: &Connection,
    llm_id: &str,
    notification: &Notification,
) -> rusqlite::Result<i64> {
    conn.execute(
        &format!(
            "INSERT INTO {LLM_NOTIFICATIONS} (llm_id, notification_type, payload) VALUES (?1, ?2, ?3)"
        ),
        params![llm_id, notification.kind(), notification.payload()],
    )?;
    Ok(conn.last_insert_rowid())
}

/// The llm_ids some processor row answers to: each `llm_processor` row's `--llm_id`
/// (`main_llm_processor` when it names none), sorted.
pub fn processor_llm_ids(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut ids: Vec<String> = n0m1_core::components::all(conn)?
        .into_iter()
        .filter(|row| row.base_script_name.trim_end_matches(".py") == "llm_processor")
        .map(|row| {
            serde_json::from_str::<serde_json::Value>(
                row.launch_args_json.as_deref().unwrap_or("{}"),
            )
            .ok()
            .and_then(|args| {
                ["--llm_id", "--llm-id"]
                    .iter()
                    .find_map(|key| args.get(*key)?.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| n0m1_core::schema::MAIN_LLM_ID.to_owned())
        })
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// A row of `llm_notifications` as the dashboard lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NotificationRow {
    pub id: i64,
    pub llm_id: Option<String>,
    pub notification_type: Option<String>,
    /// The first 1,000 characters.
    pub payload: Option<String>,
    pub processed: i64,
    pub created_timestamp: Option<String>,
}

/// The newest notifications of every llm, newest first.
pub fn recent(conn: &Connection, limit: u32) -> rusqlite::Result<Vec<NotificationRow>> {
    let text = |row: &rusqlite::Row<'_>, i: usize| -> rusqlite::Result<Option<String>> {
        let bytes: Option<Vec<u8>> = row.get(i)?;
        Ok(bytes.map(|b| String::from_utf8_lossy(&b).into_owned()))
    };
    conn.prepare(&format!(
        "SELECT id, CAST(llm_id AS BLOB), CAST(notification_type AS BLOB),
                CAST(substr(payload, 1, 1000) AS BLOB), coalesce(processed, 0),
                CAST(created_timestamp AS TEXT)
         FROM {LLM_NOTIFICATIONS} ORDER BY id DESC LIMIT ?1"
    ))?
    .query_map([limit], |row| {
        Ok(NotificationRow {
            id: row.get(0)?,
            llm_id: text(row, 1)?,
            notification_type: text(row, 2)?,
            payload: text(row, 3)?,
            processed: row.get(4)?,
            created_timestamp: row.get(5)?,
        })
    })?
    .collect()
}

/// `llm_io_config` for one llm_id, validated.
#[derive(Debug, Clone)]
pub struct IoConfig {
    pub read_tables: String,
    pub output_table: TableName,
}

/// The row of `llm_id`, its `output_table` checked to exist with `llm_id` and `content`
/// columns; the error names the row and what is wrong.
pub fn load_config(conn: &Connection, llm_id: &str) -> Result<IoConfig, String> {
    let row: Option<(String, String)> = conn
        .query_row(
            &format!("SELECT read_tables, output_table FROM {LLM_IO_CONFIG} WHERE llm_id = ?1"),
            [llm_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| format!("cannot read {LLM_IO_CONFIG}: {e}"))?;
    let (read_tables, output) =
        row.ok_or_else(|| format!("no {LLM_IO_CONFIG} row for llm_id {llm_id:?}"))?;
    let output_table = tables::validate_with_columns(conn, &output, &["llm_id", "content"])
        .map_err(|e| format!("output_table of {llm_id}: {e}"))?;
    Ok(IoConfig {
        read_tables,
        output_table,
    })
}

/// Every `llm_io_config` row with `needs_reload = 1` becomes one CONFIG_RELOAD notification
/// and has the flag cleared, in one transaction; returns the llm_ids notified.
pub fn announce_reloads(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let transaction = conn.unchecked_transaction()?;
    let ids: Vec<String> = transaction
        .prepare(&format!(
            "SELECT llm_id FROM {LLM_IO_CONFIG} WHERE needs_reload = 1 ORDER BY llm_id"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for id in &ids {
        notify(&transaction, id, &Notification::ConfigReload)?;
        transaction.execute(
            &format!("UPDATE {LLM_IO_CONFIG} SET needs_reload = 0 WHERE llm_id = ?1"),
            [id],
        )?;
    }
    transaction.commit()?;
    Ok(ids)
}

/// Appends one output row of `llm_id` to its output table.
pub fn write_output(
    conn: &Connection,
    table: &TableName,
    llm_id: &str,
    content: &str,
) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO {} (llm_id, content) VALUES (?1, ?2)",
            table.quoted()
        ),
        params![llm_id, content],
    )
    .map(drop)
}

/// `llm_outputs` rows after `after` (id and the first 512 bytes of content, as bytes: model
/// output need not be UTF-8), oldest first, at most `limit`.
pub fn outputs_after(
    conn: &Connection,
    after: i64,
    limit: usize,
) -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
    conn.prepare_cached(&format!(
        "SELECT id, CAST(substr(COALESCE(content, ''), 1, 512) AS BLOB) FROM {LLM_OUTPUTS} WHERE id > ?1 ORDER BY id LIMIT ?2"
    ))?
    // An empty blob comes back from substr as NULL: read it as no bytes, or the reader would
    // stop on that row for ever.
    .query_map(params![after, limit as i64], |r| {
        Ok((r.get(0)?, r.get::<_, Option<Vec<u8>>>(1)?.unwrap_or_default()))
    })?
    .collect()
}

/// Output tables every database has.
const STANDARD_OUTPUT_TABLES: &[&str] = &[
    CPU_TEMP_SUMMARY,
    CPU_USAGE_SUMMARY,
    MEMORY_USAGE_SUMMARY,
    NANO_OUTPUTS,
    LLM_OUTPUTS,
];

/// The output tables of this database: the standard ones and any `output_table` named in
/// `llm_io_config`, each only if it exists, validated.
pub fn output_tables(conn: &Connection) -> rusqlite::Result<Vec<TableName>> {
    let mut names: Vec<String> = STANDARD_OUTPUT_TABLES
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let configured: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT output_table FROM {LLM_IO_CONFIG} WHERE output_table IS NOT NULL"
        ))?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    names.extend(configured);
    let mut existing: Vec<TableName> = Vec::new();
    for name in names {
        if let Ok(table) = tables::validate(conn, &name)
            && !existing.contains(&table)
        {
            existing.push(table);
        }
    }
    Ok(existing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::db;

    #[test]
    fn a_notification_reads_back_as_it_was_written() {
        let conn = db();
        let written = [
            Notification::Run { tables: None },
            Notification::Run {
                tables: Some("cpu_usage_summary".into()),
            },
            Notification::Push {
                tables: Some("memory_usage_summary".into()),
            },
            Notification::PullRequest {
                what: Some("metrics".into()),
            },
            Notification::ConfigReload,
            Notification::Unknown {
                kind: "WHATEVER".into(),
                payload: Some("x".into()),
            },
        ];
        for notification in &written {
            notify(&conn, "main_llm_processor", notification).unwrap();
        }
        notify(&conn, "someone_else", &Notification::ConfigReload).unwrap();
        let read: Vec<Notification> = pending(&conn, "main_llm_processor", 100)
            .unwrap()
            .into_iter()
            .map(|p| p.notification)
            .collect();
        assert_eq!(read, written);
        let first = pending(&conn, "main_llm_processor", 1).unwrap()[0].id;
        assert!(claim(&conn, first).unwrap());
        assert!(!claim(&conn, first).unwrap(), "claimed once");
        assert_eq!(pending(&conn, "main_llm_processor", 100).unwrap().len(), 5);
        let newest = recent(&conn, 1).unwrap();
        assert_eq!(newest[0].llm_id.as_deref(), Some("someone_else"));
        assert_eq!(newest[0].notification_type.as_deref(), Some(CONFIG_RELOAD));
    }

    #[test]
    fn output_tables_are_the_standard_and_configured_ones_that_exist() {
        let conn = db();
        conn.execute_batch(
            "CREATE TABLE my_outputs (id INTEGER PRIMARY KEY, llm_id TEXT, content TEXT);
             INSERT INTO llm_io_config (llm_id, read_tables, output_table) VALUES
               ('mine', 'cpu_usage_summary', 'my_outputs'),
               ('ghost', 'cpu_usage_summary', 'no_such_table');",
        )
        .unwrap();
        let names: Vec<String> = output_tables(&conn)
            .unwrap()
            .iter()
            .map(|t| t.as_str().to_owned())
            .collect();
        assert!(names.contains(&"llm_outputs".to_owned()));
        assert!(names.contains(&"my_outputs".to_owned()));
        assert!(!names.contains(&"no_such_table".to_owned()));
        let table = load_config(&conn, "mine").unwrap().output_table;
        write_output(&conn, &table, "mine", "hello").unwrap();
        let error = load_config(&conn, "ghost").unwrap_err();
        assert!(
            error.contains("ghost") && error.contains("no_such_table"),
            "{error}"
        );
    }
}
