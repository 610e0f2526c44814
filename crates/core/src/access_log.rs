//! `db_access_log`: which component read or wrote which table, as the original records it.

use rusqlite::Connection;

use crate::schema::DB_ACCESS_LOG;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKind {
    Read,
    Write,
}

impl AccessKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessKind::Read => "READ",
            AccessKind::Write => "WRITE",
        }
    }
}

/// Records one access.
pub fn record_access(
    conn: &Connection,
    component_id: &str,
    table: &str,
    kind: AccessKind,
) -> rusqlite::Result<()> {
    conn.prepare_cached(&format!(
        "INSERT INTO {DB_ACCESS_LOG} (component_id, table_name, access_type) VALUES (?1, ?2, ?3)"
    ))?
    .execute([component_id, table, kind.as_str()])?;
    Ok(())
}

/// Deletes access rows older than `age_secs` (the retention age), `batch` rows at a time.
pub fn prune(conn: &Connection, age_secs: i64, batch: usize) -> rusqlite::Result<usize> {
    crate::db::prune_older_than(conn, DB_ACCESS_LOG, "timestamp", age_secs, batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_and_write() {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrations().to_latest(&mut conn).unwrap();
        record_access(
            &conn,
            "cpu_usage_daemon",
            "cpu_usage_log",
            AccessKind::Write,
        )
        .unwrap();
        record_access(
            &conn,
            "main_llm_processor",
            "cpu_usage_summary",
            AccessKind::Read,
        )
        .unwrap();
        let kinds: Vec<String> = conn
            .prepare("SELECT access_type FROM db_access_log ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kinds, ["WRITE", "READ"]);
    }
}
