//! The model loop's tables as the dashboard shows them: the summary tables and `llm_outputs`
//! (read only), `llm_notifications` (read, and a new notification such as a RUN).

use n0m1_core::schema::{
    CPU_TEMP_SUMMARY, CPU_USAGE_SUMMARY, LLM_IO_CONFIG, LLM_NOTIFICATIONS, LLM_OUTPUTS,
    MEMORY_USAGE_SUMMARY, NANO_OUTPUTS,
};
use n0m1_core::text::printable;
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value};

use crate::ApiError;

/// Output tables every database has.
const OUTPUT_TABLES: &[&str] = &[
    CPU_TEMP_SUMMARY,
    CPU_USAGE_SUMMARY,
    MEMORY_USAGE_SUMMARY,
    NANO_OUTPUTS,
    LLM_OUTPUTS,
];

/// The longest payload accepted (the processor reads the first 4,096 characters).
const MAX_PAYLOAD_CHARS: usize = 16 * 1024;

/// The output tables of this database: the standard ones and any `output_table` named in
/// `llm_io_config`, each only if it exists.
pub fn output_tables(conn: &Connection) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = OUTPUT_TABLES.iter().map(|s| s.to_string()).collect();
    let configured: Vec<String> = conn
        .prepare(&format!(
            "SELECT DISTINCT output_table FROM {LLM_IO_CONFIG}"
        ))
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| ApiError::database(LLM_IO_CONFIG, e))?;
    names.extend(configured);
    let mut existing = Vec::new();
    for name in names {
        let exists: bool = conn
            .query_row(
                "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [&name],
                |r| r.get(0),
            )
            .map_err(|e| ApiError::database("sqlite_master", e))?;
        if exists && !existing.contains(&name) {
            existing.push(name);
        }
    }
    Ok(existing)
}

fn json_value(value: ValueRef<'_>) -> Value {
    match value {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) => Value::from(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::from(format!("({} bytes)", b.len())),
    }
}

/// Rows of a query as JSON objects keyed by column name.
fn rows_as_json(
    conn: &Connection,
    sql: &str,
    limit: u32,
    what: &str,
) -> Result<Vec<Value>, ApiError> {
    let mut statement = conn.prepare(sql).map_err(|e| ApiError::database(what, e))?;
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement
        .query([limit])
        .map_err(|e| ApiError::database(what, e))?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(|e| ApiError::database(what, e))? {
        let mut object = Map::new();
        for (i, name) in names.iter().enumerate() {
            let value = row.get_ref(i).map_err(|e| ApiError::database(what, e))?;
            object.insert(name.clone(), json_value(value));
        }
        out.push(Value::Object(object));
    }
    Ok(out)
}

/// The newest rows of an output table, newest first. The name must be one of
/// `output_tables`; it is then quoted as an identifier, never spliced as given.
pub fn outputs(conn: &Connection, table: &str, limit: u32) -> Result<Vec<Value>, ApiError> {
    let tables = output_tables(conn)?;
    let Some(name) = tables.iter().find(|t| t.as_str() == table) else {
        return Err(ApiError::not_found(format!(
            "no output table '{}': {}",
            printable(table),
            tables.join(", ")
        )));
    };
    let quoted = format!("\"{}\"", name.replace('"', "\"\""));
    rows_as_json(
        conn,
        &format!("SELECT * FROM {quoted} ORDER BY rowid DESC LIMIT ?1"),
        limit,
        name,
    )
}

/// The newest notifications, newest first.
pub fn notifications(conn: &Connection, limit: u32) -> Result<Vec<Value>, ApiError> {
    rows_as_json(
        conn,
        &format!(
            "SELECT id, llm_id, notification_type, substr(payload, 1, 1000) AS payload,
                    coalesce(processed, 0) AS processed, created_timestamp
             FROM {LLM_NOTIFICATIONS} ORDER BY id DESC LIMIT ?1"
        ),
        limit,
        LLM_NOTIFICATIONS,
    )
}

/// The body of `POST /api/v1/notifications`.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNotification {
    pub llm_id: String,
    pub notification_type: String,
    #[serde(default)]
    pub payload: Option<String>,
}

/// Queues a notification for a model component; returns its id.
pub fn insert_notification(conn: &Connection, new: &NewNotification) -> Result<i64, ApiError> {
    n0m1_core::home::validate_component_id(&new.llm_id)
        .map_err(|e| ApiError::bad_request(format!("llm_id: {e}")))?;
    let kind = &new.notification_type;
    if kind.is_empty()
        || kind.len() > 64
        || !kind.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
    {
        return Err(ApiError::bad_request(format!(
            "notification_type '{}': expected an upper-case word such as RUN or PUSH",
            printable(kind)
        )));
    }
    if new
        .payload
        .as_ref()
        .is_some_and(|p| p.chars().count() > MAX_PAYLOAD_CHARS)
    {
        return Err(ApiError::bad_request(format!(
            "payload: longer than {MAX_PAYLOAD_CHARS} characters"
        )));
    }
    conn.execute(
        &format!(
            "INSERT INTO {LLM_NOTIFICATIONS} (llm_id, notification_type, payload) VALUES (?1, ?2, ?3)"
        ),
        rusqlite::params![new.llm_id, kind, new.payload],
    )
    .map_err(|e| ApiError::database(LLM_NOTIFICATIONS, e))?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_output_tables_are_read_and_a_name_is_never_sql() {
        let mut conn = Connection::open_in_memory().unwrap();
        n0m1_core::schema::migrations()
            .to_latest(&mut conn)
            .unwrap();
        conn.execute(
            "INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'hello')",
            [],
        )
        .unwrap();
        let rows = outputs(&conn, LLM_OUTPUTS, 10).unwrap();
        assert_eq!(rows[0]["content"], "hello");
        for hostile in [
            "autorun_components",
            "llm_outputs; DROP TABLE autorun_components",
            "llm_outputs\" --",
            "sqlite_master",
        ] {
            let error = outputs(&conn, hostile, 10).unwrap_err();
            assert_eq!(error.status, axum::http::StatusCode::NOT_FOUND, "{hostile}");
        }
        let id = insert_notification(
            &conn,
            &NewNotification {
                llm_id: "main_llm_processor".into(),
                notification_type: "RUN".into(),
                payload: None,
            },
        )
        .unwrap();
        assert_eq!(notifications(&conn, 5).unwrap()[0]["id"], id);
        let bad = NewNotification {
            llm_id: "x".into(),
            notification_type: "run; drop".into(),
            payload: None,
        };
        assert!(insert_notification(&conn, &bad).is_err());
    }
}
