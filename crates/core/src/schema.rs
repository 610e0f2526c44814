//! The database schema: table names, the ids it gives special meaning, and migrations.
//!
//! Table names are defined here once; no other module spells them (the default rows are
//! `defaults`). The SQL itself lives in
//! `migrations/NN-name/up.sql` at the workspace root and is embedded at compile time.

use rusqlite::Connection;
use rusqlite_migration::{M, Migrations};

pub const AUTORUN_COMPONENTS: &str = "autorun_components";
pub const COMPONENT_LIFECYCLE_LOG: &str = "component_lifecycle_log";
pub const COMPONENT_STATE: &str = "component_state";
pub const COMPONENT_READINESS: &str = "component_readiness";
pub const COMPONENT_HEALTH: &str = "component_health";
pub const COMPONENT_DEPENDENCIES: &str = "component_dependencies";
pub const ALERT_RULES: &str = "alert_rules";
pub const ALERT_LOG: &str = "alert_log";
pub const ALERT_CURSOR: &str = "alert_cursor";
pub const COMPONENT_RESOURCE_LOG: &str = "component_resource_log";
pub const CPU_TEMPERATURE_LOG: &str = "cpu_temperature_log";
pub const CPU_USAGE_LOG: &str = "cpu_usage_log";
pub const MEMORY_USAGE_LOG: &str = "memory_usage_log";
pub const SYSTEM_METRICS_LOG: &str = "system_metrics_log";
pub const NANO_OUTPUTS: &str = "nano_outputs";
pub const CPU_TEMP_SUMMARY: &str = "cpu_temp_summary";
pub const CPU_USAGE_SUMMARY: &str = "cpu_usage_summary";
pub const MEMORY_USAGE_SUMMARY: &str = "memory_usage_summary";
pub const NANO_PROMPTS: &str = "nano_prompts";
pub const LLM_OUTPUTS: &str = "llm_outputs";
pub const LLM_IO_CONFIG: &str = "llm_io_config";
pub const LLM_NOTIFICATIONS: &str = "llm_notifications";
pub const DB_ACCESS_LOG: &str = "db_access_log";
pub const LLM_COMMAND_CURSOR: &str = "llm_command_cursor";
pub const COMPONENT_LIMITS: &str = "component_limits";
pub const ACTION_PROPOSALS: &str = "action_proposals";
pub const ACTION_POLICY: &str = "action_policy";
pub const INCIDENTS: &str = "incidents";
pub const COMPONENT_SCHEDULES: &str = "component_schedules";

/// Every table of the original's schema, in the order the spec lists them.
pub const ORIGINAL_TABLES: &[&str] = &[
    AUTORUN_COMPONENTS,
    COMPONENT_LIFECYCLE_LOG,
    CPU_TEMPERATURE_LOG,
    CPU_USAGE_LOG,
    MEMORY_USAGE_LOG,
    SYSTEM_METRICS_LOG,
    NANO_OUTPUTS,
    CPU_TEMP_SUMMARY,
    CPU_USAGE_SUMMARY,
    MEMORY_USAGE_SUMMARY,
    NANO_PROMPTS,
    LLM_OUTPUTS,
    LLM_IO_CONFIG,
    LLM_NOTIFICATIONS,
    DB_ACCESS_LOG,
];

/// The tables n0m1 adds to the original's.
pub const N0M1_TABLES: &[&str] = &[
    COMPONENT_STATE,
    COMPONENT_READINESS,
    COMPONENT_HEALTH,
    COMPONENT_DEPENDENCIES,
    ALERT_RULES,
    ALERT_LOG,
    ALERT_CURSOR,
    COMPONENT_RESOURCE_LOG,
    LLM_COMMAND_CURSOR,
    COMPONENT_LIMITS,
    ACTION_PROPOSALS,
    ACTION_POLICY,
    INCIDENTS,
    COMPONENT_SCHEDULES,
];

/// The SQL of each migration, oldest first; `PRAGMA user_version` records how many ran.
const MIGRATION_SQL: &[&str] = &[
    include_str!("../../../migrations/01-original/up.sql"),
    include_str!("../../../migrations/02-supervisor-state/up.sql"),
    include_str!("../../../migrations/03-command-cursor/up.sql"),
    include_str!("../../../migrations/04-readiness/up.sql"),
    include_str!("../../../migrations/05-health/up.sql"),
    include_str!("../../../migrations/06-dependencies/up.sql"),
    include_str!("../../../migrations/07-alerts/up.sql"),
    include_str!("../../../migrations/08-resources/up.sql"),
    include_str!("../../../migrations/09-limits/up.sql"),
    include_str!("../../../migrations/10-actions/up.sql"),
    include_str!("../../../migrations/11-schedules/up.sql"),
];

/// The schema's migrations, oldest first.
pub fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATION_SQL.iter().map(|sql| M::up(sql)).collect())
}

/// Re-runs every migration's SQL on a database that is already current, recreating any table,
/// index or trigger someone dropped. Safe because every migration is written with
/// `IF NOT EXISTS` (a test holds them to it). Returns how many tables were missing.
pub fn repair(conn: &Connection) -> rusqlite::Result<usize> {
    let count = |conn: &Connection| -> rusqlite::Result<i64> {
        conn.query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
    };
    let before = count(conn)?;
    for sql in MIGRATION_SQL {
        conn.execute_batch(sql)?;
    }
    Ok((count(conn)? - before).max(0) as usize)
}

/// The `user_version` of a database whose schema is current.
pub fn latest_version() -> usize {
    MIGRATION_SQL.len()
}

/// The manager names, as the `manager_affinity` column spells them.
pub const DAEMON_MANAGER: &str = "daemon_manager";
pub const NANO_MANAGER: &str = "nano_manager";
pub const MAIN_LLM_MANAGER: &str = "main_llm_manager";
pub const MANAGERS: &[&str] = &[DAEMON_MANAGER, NANO_MANAGER, MAIN_LLM_MANAGER];

pub const MAIN_LLM_ID: &str = "main_llm_processor";
/// The model service's component id (and its lifecycle id).
pub const MODEL_SERVICE_ID: &str = "model_service";
/// The model service's binary, as its row names it.
pub const MODEL_SERVICE_SCRIPT: &str = "n0m1_model_service";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_table_the_migrations_create_is_named_here() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let mut created: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        created.sort();
        let mut named: Vec<String> = ORIGINAL_TABLES
            .iter()
            .chain(N0M1_TABLES)
            .map(|t| (*t).to_owned())
            .collect();
        named.sort();
        assert_eq!(created, named);
    }

    #[test]
    fn migrations_are_valid() {
        migrations().validate().unwrap();
    }

    #[test]
    fn latest_version_matches_migration_count() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version as usize, latest_version());
    }

    #[test]
    fn migrations_are_idempotent_and_repair_recreates_dropped_tables() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        assert_eq!(repair(&conn).unwrap(), 0);
        conn.execute_batch("DROP TABLE memory_usage_log; DROP TABLE component_state;")
            .unwrap();
        assert_eq!(repair(&conn).unwrap(), 2);
    }

    #[test]
    fn modified_timestamp_trigger_fires() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        crate::defaults::insert_defaults(&conn).unwrap();
        conn.execute(
            "UPDATE autorun_components SET modified_timestamp = '2000-01-01 00:00:00'",
            [],
        )
        .unwrap();
        // The trigger's own UPDATE replaces the stale value with CURRENT_TIMESTAMP.
        let stamp: String = conn
            .query_row(
                "SELECT modified_timestamp FROM autorun_components WHERE component_id = 'cpu_usage_daemon'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(stamp, "2000-01-01 00:00:00");
    }
}
