//! `autorun_components`: the one module that reads and writes it. Managers load their rows,
//! `n0m1ctl` and the command daemon flip `desired_state`, init inserts the defaults, status
//! lists everything. Nobody else spells the table's columns.

use rusqlite::{Connection, params};

use crate::schema::AUTORUN_COMPONENTS;

/// `desired_state` values.
pub const DESIRED_ACTIVE: &str = "active";
pub const DESIRED_INACTIVE: &str = "inactive";
/// The run type the original gives a row that names none.
pub const RUN_TYPE_PRIMARY: &str = "PRIMARY_RUN";
/// The run type that runs once and is not restarted after a clean exit.
pub const RUN_TYPE_ONESHOT: &str = "ONESHOT";

/// One row of `autorun_components`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ComponentRow {
    pub component_id: String,
    pub base_script_name: String,
    pub manager_affinity: String,
    pub desired_active: bool,
    pub launch_args_json: Option<String>,
    pub run_type: String,
    /// Moves on every UPDATE (a trigger), so any edit of the row is visible to its manager.
    pub modified: Option<String>,
}

/// What, if changed while running, needs a restart to take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchKey {
    pub base_script_name: String,
    pub launch_args_json: Option<String>,
    pub run_type: String,
}

impl ComponentRow {
    pub fn launch_key(&self) -> LaunchKey {
        LaunchKey {
            base_script_name: self.base_script_name.clone(),
            launch_args_json: self.launch_args_json.clone(),
            run_type: self.run_type.clone(),
        }
    }
    pub fn is_oneshot(&self) -> bool {
        self.run_type == RUN_TYPE_ONESHOT
    }
    pub fn desired_state(&self) -> &'static str {
        if self.desired_active {
            DESIRED_ACTIVE
        } else {
            DESIRED_INACTIVE
        }
    }
}

const COLUMNS: &str = "component_id, base_script_name, manager_affinity, desired_state,
    launch_args_json, COALESCE(run_type_on_boot, 'PRIMARY_RUN'), CAST(modified_timestamp AS TEXT)";

fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ComponentRow> {
    Ok(ComponentRow {
        component_id: row.get(0)?,
        base_script_name: row.get(1)?,
        manager_affinity: row.get(2)?,
        desired_active: row.get::<_, String>(3)? == DESIRED_ACTIVE,
        launch_args_json: row.get(4)?,
        run_type: row.get(5)?,
        modified: row.get(6)?,
    })
}

/// The manager a `manager_affinity` value names: rows written for the original name it by
/// its script (`daemon_manager.py`).
pub fn manager_name(affinity: &str) -> &str {
    affinity.strip_suffix(".py").unwrap_or(affinity)
}

/// The rows one manager owns, by id. Rows written for the original may name the manager by
/// its script (`daemon_manager.py`).
pub fn of_manager(conn: &Connection, manager: &str) -> rusqlite::Result<Vec<ComponentRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {AUTORUN_COMPONENTS}
         WHERE manager_affinity IN (?1, ?1 || '.py') ORDER BY component_id"
    ))?;
    let rows = statement.query_map([manager], from_row)?;
    rows.collect()
}

/// Every row, ordered by manager then id.
pub fn all(conn: &Connection) -> rusqlite::Result<Vec<ComponentRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {AUTORUN_COMPONENTS} ORDER BY manager_affinity, component_id"
    ))?;
    let rows = statement.query_map([], from_row)?;
    rows.collect()
}

/// Sets `desired_state`; false when no row has that id.
pub fn set_desired(conn: &Connection, component_id: &str, active: bool) -> rusqlite::Result<bool> {
    let desired = if active {
        DESIRED_ACTIVE
    } else {
        DESIRED_INACTIVE
    };
    let changed = conn.execute(
        &format!("UPDATE {AUTORUN_COMPONENTS} SET desired_state = ?1 WHERE component_id = ?2"),
        [desired, component_id],
    )?;
    Ok(changed > 0)
}

/// Deletes a row; false when no row has that id. Its manager stops the process.
pub fn remove(conn: &Connection, component_id: &str) -> rusqlite::Result<bool> {
    let changed = conn.execute(
        &format!("DELETE FROM {AUTORUN_COMPONENTS} WHERE component_id = ?1"),
        [component_id],
    )?;
    Ok(changed > 0)
}

/// The row with this id.
pub fn find(conn: &Connection, component_id: &str) -> rusqlite::Result<Option<ComponentRow>> {
    use rusqlite::OptionalExtension;
    conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM {AUTORUN_COMPONENTS} WHERE component_id = ?1"
    ))?
    .query_row([component_id], from_row)
    .optional()
}

/// A row to insert.
#[derive(Debug, Clone, Copy)]
pub struct NewComponent<'a> {
    pub component_id: &'a str,
    pub base_script_name: &'a str,
    pub manager_affinity: &'a str,
    pub active: bool,
    pub launch_args_json: &'a str,
    /// `RUN_TYPE_PRIMARY` or `RUN_TYPE_ONESHOT`.
    pub run_type: &'a str,
    pub description: &'a str,
}

/// Inserts a row unless one with its id exists; returns whether it was inserted.
pub fn insert_if_missing(conn: &Connection, row: NewComponent<'_>) -> rusqlite::Result<bool> {
    let desired = if row.active {
        DESIRED_ACTIVE
    } else {
        DESIRED_INACTIVE
    };
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT OR IGNORE INTO {AUTORUN_COMPONENTS}
             (component_id, base_script_name, manager_affinity, desired_state, launch_args_json,
              run_type_on_boot, description)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
        ))?
        .execute(params![
            row.component_id,
            row.base_script_name,
            row.manager_affinity,
            desired,
            row.launch_args_json,
            row.run_type,
            row.description
        ])?;
    Ok(inserted > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::schema::migrations().to_latest(&mut conn).unwrap();
        conn
    }

    #[test]
    fn rows_of_a_manager_include_the_original_script_spelling() {
        let conn = db();
        let new = |id, manager| NewComponent {
            run_type: RUN_TYPE_PRIMARY,
            component_id: id,
            base_script_name: "x.sh",
            manager_affinity: manager,
            active: true,
            launch_args_json: "{}",
            description: "",
        };
        assert!(insert_if_missing(&conn, new("a", "daemon_manager")).unwrap());
        assert!(insert_if_missing(&conn, new("b", "daemon_manager.py")).unwrap());
        assert!(insert_if_missing(&conn, new("c", "nano_manager")).unwrap());
        assert!(!insert_if_missing(&conn, new("a", "nano_manager")).unwrap());
        let ids: Vec<String> = of_manager(&conn, "daemon_manager")
            .unwrap()
            .into_iter()
            .map(|r| r.component_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(all(&conn).unwrap().len(), 3);
    }

    #[test]
    fn set_desired_reports_unknown_ids_and_moves_modified() {
        let conn = db();
        crate::defaults::insert_defaults(&conn).unwrap();
        let before = all(&conn).unwrap();
        let first = &before[0];
        assert!(set_desired(&conn, &first.component_id, !first.desired_active).unwrap());
        let after = of_manager(&conn, &first.manager_affinity).unwrap();
        let row = after
            .iter()
            .find(|r| r.component_id == first.component_id)
            .unwrap();
        assert_eq!(row.desired_active, !first.desired_active);
        assert!(!set_desired(&conn, "no_such_component", true).unwrap());
        assert_eq!(row.run_type, RUN_TYPE_PRIMARY);
    }
}
