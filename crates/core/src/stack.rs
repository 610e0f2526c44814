//! The stack as data: the configuration tables as sections of rows, read and written
//! wholesale for `n0m1ctl export`, `plan` and `apply` (the file format is n0m1ctl's). A
//! section names its table, the columns that identify a row and the columns kept; timestamps
//! and the lifecycle are not configuration and stay out. Writing goes through `Change`s
//! computed by `diff`, so a row the file leaves as it is is never touched (a manager would
//! take an updated row for an edited one). What a row means is checked by the table's owner
//! (`health`, `dependencies`, `schedules`, `limits`, `alert_rules`, `actions`) on the tables
//! as they would be after the change, inside the same transaction (see n0m1ctl's `stack`).

use std::collections::BTreeMap;

use rusqlite::types::{Value, ValueRef};
use rusqlite::{Connection, params_from_iter};

use crate::schema::{
    ACTION_POLICY, ALERT_RULES, AUTORUN_COMPONENTS, COMPONENT_DEPENDENCIES, COMPONENT_HEALTH,
    COMPONENT_LIMITS, COMPONENT_SCHEDULES,
};

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Text,
    Integer,
    Real,
    /// 0 or 1 in the table, a boolean in the file.
    Flag,
}

#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub name: &'static str,
    pub kind: Kind,
    /// A row without it is refused (NOT NULL without a default).
    pub required: bool,
    /// What the table puts there when a row leaves it out (NOT NULL with a default);
    /// `None`: NULL.
    pub default: Option<Default>,
}

/// A column's default, as its migration writes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Default {
    Text(&'static str),
    Integer(i64),
    Real(f64),
}

impl Default {
    fn value(self) -> Value {
        match self {
            Default::Text(text) => Value::Text(text.to_owned()),
            Default::Integer(n) => Value::Integer(n),
            Default::Real(x) => Value::Real(x),
        }
    }
}

const fn text(name: &'static str) -> Column {
    Column {
        name,
        kind: Kind::Text,
        required: false,
        default: None,
    }
}
const fn required(name: &'static str) -> Column {
    Column {
        required: true,
        ..text(name)
    }
}
const fn of(name: &'static str, kind: Kind) -> Column {
    Column { kind, ..text(name) }
}
const fn with(column: Column, default: Default) -> Column {
    Column {
        default: Some(default),
        ..column
    }
}

/// One table of the stack.
#[derive(Debug)]
pub struct Section {
    /// Its name in the file.
    pub name: &'static str,
    pub table: &'static str,
    /// What the section is, for the file's comment.
    pub about: &'static str,
    /// The columns that identify a row (its primary or unique key), first among `columns`.
    pub key: &'static [&'static str],
    /// Every column kept, in the file's order.
    pub columns: &'static [Column],
}

/// In the order a file lists them (and `apply` adds them): what is depended on first.
pub const SECTIONS: &[Section] = &[
    Section {
        name: "components",
        table: AUTORUN_COMPONENTS,
        about: "what runs, under which manager, with which arguments",
        key: &["component_id"],
        columns: &[
            required("component_id"),
            required("base_script_name"),
            required("manager_affinity"),
            with(text("desired_state"), Default::Text("active")),
            text("launch_args_json"),
            text("run_type_on_boot"),
            text("description"),
        ],
    },
    Section {
        name: "dependencies",
        table: COMPONENT_DEPENDENCIES,
        about: "start order: a component waits until what it depends on is started, ready or running",
        key: &["component_id", "depends_on"],
        columns: &[
            required("component_id"),
            required("depends_on"),
            with(text("condition"), Default::Text("started")),
        ],
    },
    Section {
        name: "health",
        table: COMPONENT_HEALTH,
        about: "watchdogs and probes",
        key: &["component_id"],
        columns: &[
            required("component_id"),
            of("watchdog_s", Kind::Real),
            text("probe"),
            with(of("probe_interval_s", Kind::Real), Default::Real(10.0)),
            with(of("probe_timeout_s", Kind::Real), Default::Real(5.0)),
            with(of("failures", Kind::Integer), Default::Integer(3)),
        ],
    },
    Section {
        name: "schedules",
        table: COMPONENT_SCHEDULES,
        about: "when ONESHOT components run on their own",
        key: &["component_id"],
        columns: &[
            required("component_id"),
            required("spec"),
            with(text("overlap"), Default::Text("skip")),
            with(text("missed"), Default::Text("skip")),
        ],
    },
    Section {
        name: "limits",
        table: COMPONENT_LIMITS,
        about: "memory (bytes), CPU (cores) and task limits, and the account a component runs as",
        key: &["component_id"],
        columns: &[
            required("component_id"),
            of("memory_max", Kind::Integer),
            of("memory_high", Kind::Integer),
            of("cpu_max", Kind::Real),
            of("cpu_weight", Kind::Integer),
            of("pids_max", Kind::Integer),
            text("run_as_user"),
            text("run_as_group"),
        ],
    },
    Section {
        name: "alert_rules",
        table: ALERT_RULES,
        about: "which lifecycle events reach a hook or a webhook",
        key: &["id"],
        columns: &[
            Column {
                required: true,
                ..of("id", Kind::Integer)
            },
            required("event_types"),
            with(text("component_glob"), Default::Text("*")),
            required("action"),
            required("target"),
            with(of("min_interval_s", Kind::Real), Default::Real(300.0)),
            with(of("remind_s", Kind::Real), Default::Real(3600.0)),
            with(of("enabled", Kind::Flag), Default::Integer(1)),
        ],
    },
    Section {
        name: "action_policy",
        table: ACTION_POLICY,
        about: "what a model's CMD: line may do: auto, approve or deny",
        key: &["action", "component_glob"],
        columns: &[
            with(text("action"), Default::Text("*")),
            with(text("component_glob"), Default::Text("*")),
            required("decision"),
            of("max_per_hour", Kind::Integer),
        ],
    },
];

impl Section {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The value a row has for a column: what it says, else the table's default, else NULL.
    pub fn value_of(&self, row: &Row, column: &Column) -> Value {
        row.get(column.name)
            .cloned()
            .or_else(|| column.default.map(Default::value))
            .unwrap_or(Value::Null)
    }

    /// A row's identity: its key columns' values (defaults applied).
    pub fn key_of(&self, row: &Row) -> Key {
        Key(self
            .key
            .iter()
            .map(|name| {
                let column = self.column(name).expect("key columns are columns");
                match self.value_of(row, column) {
                    Value::Text(text) => crate::text::printable(&text).into_owned(),
                    other => shown(&other),
                }
            })
            .collect())
    }

    /// Every row of the table, by key, NULL columns left out.
    pub fn read(&self, conn: &Connection) -> rusqlite::Result<BTreeMap<Key, Row>> {
        let names: Vec<&str> = self.columns.iter().map(|c| c.name).collect();
        let mut statement = conn.prepare(&format!(
            "SELECT {} FROM {} ORDER BY {}",
            names.join(", "),
            self.table,
            self.key.join(", ")
        ))?;
        let mut rows = statement.query([])?;
        let mut found = BTreeMap::new();
        while let Some(sql) = rows.next()? {
            let mut row = Row::new();
            for (i, column) in self.columns.iter().enumerate() {
                if let Some(value) = stored(column.kind, sql.get_ref(i)?) {
                    row.insert(column.name.to_owned(), value);
                }
            }
            found.insert(self.key_of(&row), row);
        }
        Ok(found)
    }
}

/// A column's value as the stack keeps it, converted to the column's kind (SQLite stores what
/// it is given; a REAL column may hold 300 as an integer).
fn stored(kind: Kind, value: ValueRef<'_>) -> Option<Value> {
    Some(match (kind, value) {
        (_, ValueRef::Null) => return None,
        (Kind::Real, ValueRef::Integer(n)) => Value::Real(n as f64),
        (Kind::Integer | Kind::Flag, ValueRef::Real(x)) if x.fract() == 0.0 => {
            Value::Integer(x as i64)
        }
        (Kind::Flag, ValueRef::Integer(n)) => Value::Integer(i64::from(n != 0)),
        (Kind::Text, ValueRef::Integer(n)) => Value::Text(n.to_string()),
        (Kind::Text, ValueRef::Real(x)) => Value::Text(x.to_string()),
        (_, ValueRef::Integer(n)) => Value::Integer(n),
        (_, ValueRef::Real(x)) => Value::Real(x),
        (_, ValueRef::Text(bytes)) => Value::Text(String::from_utf8_lossy(bytes).into_owned()),
        (_, ValueRef::Blob(bytes)) => Value::Blob(bytes.to_vec()),
    })
}

/// A value as plan prints it.
pub fn shown(value: &Value) -> String {
    match value {
        Value::Null => "(none)".to_owned(),
        Value::Integer(n) => n.to_string(),
        Value::Real(x) => format!("{x:?}"),
        Value::Text(text) => format!("{:?}", crate::text::printable(text)),
        Value::Blob(bytes) => format!("({} bytes)", bytes.len()),
    }
}

/// A row: column name → value (absent: the table's default, or NULL).
pub type Row = BTreeMap<String, Value>;

/// A row's identity, as plan prints it: the key columns' values.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(pub Vec<String>);

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(" "))
    }
}

/// What applying a file changes in one row.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add(Row),
    /// The columns that differ: (name, now, then).
    Update {
        row: Row,
        columns: Vec<(&'static str, Value, Value)>,
    },
    Remove(Row),
}

/// Row by row, what makes the table hold `wanted`; rows only in the table are removed only
/// when `prune`. Returns the changes and the keys of rows kept only because of no `prune`.
pub fn diff(
    section: &Section,
    current: &BTreeMap<Key, Row>,
    wanted: &BTreeMap<Key, Row>,
    prune: bool,
) -> (Vec<(Key, Change)>, Vec<Key>) {
    let mut changes = Vec::new();
    let mut kept = Vec::new();
    for (key, row) in wanted {
        match current.get(key) {
            None => changes.push((key.clone(), Change::Add(row.clone()))),
            Some(now) => {
                let columns: Vec<_> = section
                    .columns
                    .iter()
                    .filter_map(|column| {
                        let (before, after) =
                            (section.value_of(now, column), section.value_of(row, column));
                        (before != after).then_some((column.name, before, after))
                    })
                    .collect();
                if !columns.is_empty() {
                    changes.push((
                        key.clone(),
                        Change::Update {
                            row: row.clone(),
                            columns,
                        },
                    ));
                }
            }
        }
    }
    for (key, row) in current {
        if !wanted.contains_key(key) {
            if prune {
                changes.push((key.clone(), Change::Remove(row.clone())));
            } else {
                kept.push(key.clone());
            }
        }
    }
    (changes, kept)
}

/// Performs one change (on a transaction: `apply` runs every change in one).
pub fn write(conn: &Connection, section: &Section, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Add(row) => {
            let present: Vec<&Column> = section
                .columns
                .iter()
                .filter(|c| row.contains_key(c.name))
                .collect();
            let names: Vec<&str> = present.iter().map(|c| c.name).collect();
            let marks: Vec<String> = (1..=present.len()).map(|i| format!("?{i}")).collect();
            conn.execute(
                &format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    section.table,
                    names.join(", "),
                    marks.join(", ")
                ),
                params_from_iter(present.iter().map(|c| row[c.name].clone())),
            )?;
        }
        Change::Update { row, columns } => {
            let sets: Vec<String> = columns
                .iter()
                .enumerate()
                .map(|(i, (name, _, _))| format!("{name} = ?{}", i + 1))
                .collect();
            let mut values: Vec<Value> = columns.iter().map(|(_, _, v)| v.clone()).collect();
            let (clause, key_values) = section.key_clause(row, values.len());
            values.extend(key_values);
            let touch = if section.table == AUTORUN_COMPONENTS {
                ", modified_timestamp = CURRENT_TIMESTAMP"
            } else {
                ""
            };
            conn.execute(
                &format!(
                    "UPDATE {} SET {}{touch} WHERE {clause}",
                    section.table,
                    sets.join(", ")
                ),
                params_from_iter(values),
            )?;
        }
        Change::Remove(row) => {
            let (clause, values) = section.key_clause(row, 0);
            conn.execute(
                &format!("DELETE FROM {} WHERE {clause}", section.table),
                params_from_iter(values),
            )?;
        }
    }
    Ok(())
}

impl Section {
    /// `a = ?n AND b = ?n+1` for the key, numbered after `before` other parameters.
    fn key_clause(&self, row: &Row, before: usize) -> (String, Vec<Value>) {
        let mut parts = Vec::new();
        let mut values = Vec::new();
        for (i, name) in self.key.iter().enumerate() {
            let column = self.column(name).expect("key columns are columns");
            parts.push(format!("{name} = ?{}", before + i + 1));
            values.push(self.value_of(row, column));
        }
        (parts.join(" AND "), values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(name: &str) -> &'static Section {
        SECTIONS.iter().find(|s| s.name == name).unwrap()
    }

    #[test]
    fn every_section_names_real_columns_and_its_key_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        crate::db::initialise(&path).unwrap();
        let conn = crate::db::open(&path).unwrap();
        for section in SECTIONS {
            section.read(&conn).unwrap();
            for key in section.key {
                assert!(section.column(key).is_some(), "{}.{key}", section.name);
            }
        }
    }

    #[test]
    fn diff_then_write_makes_the_table_hold_the_rows_and_touches_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        crate::db::initialise(&path).unwrap();
        let conn = crate::db::open(&path).unwrap();
        let health = section("health");
        let row = |id: &str, failures: i64| -> Row {
            [
                ("component_id".to_owned(), Value::Text(id.into())),
                ("watchdog_s".to_owned(), Value::Real(2.0)),
                ("failures".to_owned(), Value::Integer(failures)),
            ]
            .into_iter()
            .collect()
        };
        let wanted: BTreeMap<Key, Row> = [row("a", 3), row("b", 5)]
            .into_iter()
            .map(|r| (health.key_of(&r), r))
            .collect();
        let (changes, kept) = diff(health, &health.read(&conn).unwrap(), &wanted, false);
        assert_eq!(changes.len(), 2);
        assert!(kept.is_empty());
        for (_, change) in &changes {
            write(&conn, health, change).unwrap();
        }
        // The table's defaults fill what the rows leave out; reading back gives no diff.
        let now = health.read(&conn).unwrap();
        assert_eq!(
            now[&Key(vec!["a".into()])]["probe_interval_s"],
            Value::Real(10.0)
        );
        assert!(diff(health, &now, &wanted, true).0.is_empty());
        // One changed column is one update; a row left out is kept, or removed with prune.
        let edited: BTreeMap<Key, Row> = [row("a", 4)]
            .into_iter()
            .map(|r| (health.key_of(&r), r))
            .collect();
        let (changes, kept) = diff(health, &now, &edited, false);
        assert_eq!(kept, vec![Key(vec!["b".into()])]);
        match &changes[..] {
            [(_, Change::Update { columns, .. })] => {
                assert_eq!(
                    columns,
                    &vec![("failures", Value::Integer(3), Value::Integer(4))]
                );
            }
            other => panic!("{other:?}"),
        }
        let (changes, _) = diff(health, &now, &edited, true);
        for (_, change) in &changes {
            write(&conn, health, change).unwrap();
        }
        assert_eq!(health.read(&conn).unwrap().len(), 1);
    }
}
