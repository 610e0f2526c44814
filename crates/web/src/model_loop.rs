//! The model loop's tables as the dashboard shows them: the summary tables and `llm_outputs`
//! (read only), `llm_notifications` (read, and a new notification such as a RUN).

use n0m1_core::schema::{LLM_IO_CONFIG, LLM_NOTIFICATIONS};
use n0m1_core::text::printable;
use n0m1_protocol::llm_tables::{self, Notification};
use n0m1_protocol::tables::{self, TableName};
use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::{Map, Value};

use crate::ApiError;

/// The longest payload accepted (the processor reads the first 4,096 characters).
const MAX_PAYLOAD_CHARS: usize = 16 * 1024;

/// The names of this database's output tables (`llm_tables::output_tables`).
pub fn output_tables(conn: &Connection) -> Result<Vec<TableName>, ApiError> {
    llm_tables::output_tables(conn).map_err(|e| ApiError::database(LLM_IO_CONFIG, e))
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

/// The newest rows of an output table, newest first, as JSON objects keyed by column. The
/// name must be one of `output_tables`; it reaches SQL only as a validated `TableName`.
pub fn outputs(conn: &Connection, table: &str, limit: u32) -> Result<Vec<Value>, ApiError> {
    let tables = output_tables(conn)?;
    let Some(name) = tables.iter().find(|t| t.as_str() == table) else {
        let names: Vec<&str> = tables.iter().map(TableName::as_str).collect();
        return Err(ApiError::not_found(format!(
            "no output table '{}': {}",
            printable(table),
            names.join(", ")
        )));
    };
    tables::latest_rows(conn, name, limit as usize, |names, row| {
        let mut object = Map::new();
        for (i, column) in names.iter().enumerate() {
            object.insert(column.clone(), json_value(row.get_ref(i)?));
        }
        Ok(Value::Object(object))
    })
    .map_err(|e| ApiError::database(name.as_str(), e))
}

/// The newest notifications, newest first.
pub fn notifications(conn: &Connection, limit: u32) -> Result<Vec<Value>, ApiError> {
    let rows =
        llm_tables::recent(conn, limit).map_err(|e| ApiError::database(LLM_NOTIFICATIONS, e))?;
    rows.into_iter()
        .map(|row| serde_json::to_value(row).map_err(|e| ApiError::internal(e.to_string())))
        .collect()
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
    let processors = llm_tables::processor_llm_ids(conn)
        .map_err(|e| ApiError::database(n0m1_core::schema::AUTORUN_COMPONENTS, e))?;
    if !processors.contains(&new.llm_id) {
        return Err(ApiError::not_found(format!(
            "llm_id '{}': no processor answers to it (llm_processor rows answer to: {}); a notification for it would wait for ever",
            printable(&new.llm_id),
            if processors.is_empty() {
                "none".to_owned()
            } else {
                processors.join(", ")
            }
        )));
    }
    let notification = Notification::parse(kind, new.payload.clone());
    llm_tables::notify(conn, &new.llm_id, &notification)
        .map_err(|e| ApiError::database(LLM_NOTIFICATIONS, e))
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
        // The default rows: main_llm_processor is the processor a notification may name.
        n0m1_core::defaults::insert_defaults(&conn).unwrap();
        conn.execute(
            "INSERT INTO llm_outputs (llm_id, content) VALUES ('main_llm_processor', 'hello')",
            [],
        )
        .unwrap();
        let rows = outputs(&conn, "llm_outputs", 10).unwrap();
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
        let nobody = NewNotification {
            llm_id: "nobody".into(),
            notification_type: "RUN".into(),
            payload: None,
        };
        let error = insert_notification(&conn, &nobody).unwrap_err();
        assert!(
            error.message.contains("no processor answers to it"),
            "{}",
            error.message
        );
    }
}
