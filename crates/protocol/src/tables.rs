//! Table names that come from rows or payloads are identifiers, never SQL: accepted only when
//! they match `[A-Za-z_][A-Za-z0-9_]*`, name a table that exists, and are not SQLite's own;
//! then always quoted.

use rusqlite::Connection;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    #[error(
        "{name:?} is not a table name (letters, digits and '_' only, not starting with a digit)"
    )]
    NotAnIdentifier { name: String },
    #[error("table {name:?} does not exist")]
    Missing { name: String },
    #[error("table {name:?} is internal to SQLite")]
    Internal { name: String },
    #[error("table {name:?} lacks the column {column:?}")]
    MissingColumn { name: String, column: &'static str },
}

pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// A validated table name; `quoted()` is the only way it reaches SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName(String);

impl TableName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub fn quoted(&self) -> String {
        format!("\"{}\"", self.0)
    }
}

impl std::fmt::Display for TableName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks `name` against the rules and the database.
pub fn validate(conn: &Connection, name: &str) -> Result<TableName, TableError> {
    let name = name.trim();
    if !is_identifier(name) {
        return Err(TableError::NotAnIdentifier {
            name: name.to_owned(),
        });
    }
    if name.to_ascii_lowercase().starts_with("sqlite_") {
        return Err(TableError::Internal {
            name: name.to_owned(),
        });
    }
    let exists: bool = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
        .unwrap_or(false);
    if !exists {
        return Err(TableError::Missing {
            name: name.to_owned(),
        });
    }
    Ok(TableName(name.to_owned()))
}

/// Like `validate`, and the table must have each of `columns`.
pub fn validate_with_columns(
    conn: &Connection,
    name: &str,
    columns: &[&'static str],
) -> Result<TableName, TableError> {
    let table = validate(conn, name)?;
    let present = column_names(conn, &table);
    for column in columns {
        if !present.iter().any(|c| c == column) {
            return Err(TableError::MissingColumn {
                name: table.0.clone(),
                column,
            });
        }
    }
    Ok(table)
}

pub fn column_names(conn: &Connection, table: &TableName) -> Vec<String> {
    conn.prepare(&format!(
        "SELECT name FROM pragma_table_info('{}')",
        table.as_str()
    ))
    .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
    .unwrap_or_default()
}

/// The newest `limit` rows of `table` (by rowid, newest first), each mapped by `map`, which is
/// given the column names and the row: the one place a data-named table is read.
pub fn latest_rows<T>(
    conn: &Connection,
    table: &TableName,
    limit: usize,
    mut map: impl FnMut(&[String], &rusqlite::Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Vec<T>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT * FROM {} ORDER BY rowid DESC LIMIT ?1",
        table.quoted()
    ))?;
    let names: Vec<String> = statement
        .column_names()
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    let rows = statement.query_map([limit as i64], |row| map(&names, row))?;
    rows.collect()
}

/// Splits a comma-separated list (`read_tables`, a PUSH payload) and validates each entry;
/// returns the good ones and an error per bad one.
pub fn validate_list(conn: &Connection, list: &str) -> (Vec<TableName>, Vec<TableError>) {
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match validate(conn, entry) {
            Ok(table) if !good.contains(&table) => good.push(table),
            Ok(_) => {}
            Err(error) => bad.push(error),
        }
    }
    (good, bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::db;

    #[test]
    fn identifiers_only() {
        for good in ["cpu_usage_log", "_x", "T1"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in [
            "",
            "1x",
            "x; DROP TABLE autorun_components",
            "a-b",
            "\"x\"",
            "x y",
            "é",
        ] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn hostile_and_missing_tables_are_rejected() {
        let conn = db();
        assert!(validate(&conn, "cpu_usage_summary").is_ok());
        assert!(matches!(
            validate(&conn, "x; DROP TABLE autorun_components"),
            Err(TableError::NotAnIdentifier { .. })
        ));
        assert!(matches!(
            validate(&conn, "nope"),
            Err(TableError::Missing { .. })
        ));
        assert!(matches!(
            validate(&conn, "sqlite_master"),
            Err(TableError::Internal { .. })
        ));
        assert!(matches!(
            validate(&conn, "o'brien"),
            Err(TableError::NotAnIdentifier { .. })
        ));
        let (good, bad) = validate_list(&conn, "cpu_temp_summary, nope ,cpu_temp_summary,x;y");
        assert_eq!(good.len(), 1);
        assert_eq!(bad.len(), 2);
        assert!(matches!(
            validate_with_columns(&conn, "cpu_usage_log", &["llm_id", "content"]),
            Err(TableError::MissingColumn { .. })
        ));
        assert!(validate_with_columns(&conn, "llm_outputs", &["llm_id", "content"]).is_ok());
    }

    proptest::proptest! {
        #[test]
        fn only_plain_identifiers_pass(name in "\\PC{0,40}") {
            let conn = db();
            if let Ok(table) = validate(&conn, &name) {
                proptest::prop_assert!(table.as_str().chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                proptest::prop_assert!(n0m1_core::schema::ORIGINAL_TABLES.contains(&table.as_str())
                    || table.as_str().starts_with("llm_") || table.as_str().starts_with("component_"));
            }
        }
    }
}
