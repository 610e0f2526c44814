//! The database schema: table names, migrations and default rows.
//!
//! Table names are defined here once; no other module spells them. The SQL itself lives in
//! `migrations/NN-name/up.sql` at the workspace root and is embedded at compile time.

use rusqlite::{Connection, params};
use rusqlite_migration::{M, Migrations};

use crate::dependencies::Condition;

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

/// One default row of `autorun_components`.
#[derive(Debug, Clone, Copy)]
pub struct DefaultComponent {
    pub component_id: &'static str,
    pub base_script_name: &'static str,
    pub manager_affinity: &'static str,
    pub desired_state: &'static str,
    pub launch_args_json: &'static str,
    pub description: &'static str,
}

/// The original's default rows, plus `llm_command_daemon` (inactive, like the processor) and
/// the alerter `n0m1_alerts` (active; with no rule it sends nothing) and the web server
/// `n0m1_web` (active, loopback only).
pub const DEFAULT_COMPONENTS: &[DefaultComponent] = &[
    DefaultComponent {
        component_id: "temp_main_daemon",
        base_script_name: "temp_main_daemon.py",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "CPU temperature into cpu_temperature_log",
    },
    DefaultComponent {
        component_id: "cpu_usage_daemon",
        base_script_name: "cpu_usage_daemon.py",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "CPU usage into cpu_usage_log",
    },
    DefaultComponent {
        component_id: "mem_usage_daemon",
        base_script_name: "mem_usage_daemon.py",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "Memory usage into memory_usage_log",
    },
    DefaultComponent {
        component_id: "llm_config_daemon",
        base_script_name: "llm_config_daemon.py",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "Turns llm_io_config changes into CONFIG_RELOAD notifications",
    },
    DefaultComponent {
        component_id: "llm_command_daemon",
        base_script_name: "llm_command_daemon.py",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "inactive",
        launch_args_json: "{}",
        description: "Lets the main LLM start nano instances with CMD:START",
    },
    DefaultComponent {
        component_id: "n0m1_alerts",
        base_script_name: "n0m1_alerts",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "Sends alert_rules alerts to hooks and webhooks",
    },
    DefaultComponent {
        component_id: "n0m1_web",
        base_script_name: "n0m1_web",
        manager_affinity: DAEMON_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "Dashboard, JSON API and Prometheus metrics on 127.0.0.1:8686",
    },
    DefaultComponent {
        component_id: MODEL_SERVICE_ID,
        base_script_name: "n0m1_model_service",
        manager_affinity: MAIN_LLM_MANAGER,
        desired_state: "active",
        launch_args_json: "{}",
        description: "One loaded copy of each model, shared by the model components over run/model.sock",
    },
    DefaultComponent {
        component_id: "main_llm_processor",
        base_script_name: "llm_processor.py",
        manager_affinity: MAIN_LLM_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--model": "default", "--threads": "4"}"#,
        description: "Main LLM, driven by llm_notifications",
    },
    DefaultComponent {
        component_id: "nano_analyzer_01",
        base_script_name: "nano_instance.py",
        manager_affinity: NANO_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--instance_id": "analyzer_01", "--mode": "analysis"}"#,
        description: "Nano instance in analysis mode",
    },
    DefaultComponent {
        component_id: "nano_collector_01",
        base_script_name: "nano_instance.py",
        manager_affinity: NANO_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--instance_id": "collector_01", "--mode": "collection"}"#,
        description: "Nano instance in collection mode",
    },
    DefaultComponent {
        component_id: "nano_cpu_temp",
        base_script_name: "nano_instance.py",
        manager_affinity: NANO_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--instance_id": "cpu_temp", "--metrics_table": "cpu_temperature_log", "--summary_table": "cpu_temp_summary"}"#,
        description: "Summarises cpu_temperature_log into cpu_temp_summary",
    },
    DefaultComponent {
        component_id: "nano_cpu_usage",
        base_script_name: "nano_instance.py",
        manager_affinity: NANO_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--instance_id": "cpu_usage", "--metrics_table": "cpu_usage_log", "--summary_table": "cpu_usage_summary"}"#,
        description: "Summarises cpu_usage_log into cpu_usage_summary",
    },
    DefaultComponent {
        component_id: "nano_mem_usage",
        base_script_name: "nano_instance.py",
        manager_affinity: NANO_MANAGER,
        desired_state: "inactive",
        launch_args_json: r#"{"--instance_id": "mem_usage", "--metrics_table": "memory_usage_log", "--summary_table": "memory_usage_summary"}"#,
        description: "Summarises memory_usage_log into memory_usage_summary",
    },
];

/// Instance ids that get an (empty) `nano_prompts` row by default.
pub const DEFAULT_NANO_PROMPT_IDS: &[&str] = &[
    "analyzer_01",
    "collector_01",
    "cpu_temp",
    "cpu_usage",
    "mem_usage",
];

pub const MAIN_LLM_ID: &str = "main_llm_processor";
/// The model service's component id (and its lifecycle id).
pub const MODEL_SERVICE_ID: &str = "model_service";
pub const MAIN_LLM_READ_TABLES: &str = "cpu_temp_summary,cpu_usage_summary,memory_usage_summary";

/// Default start order: each metric nano instance after its metric daemon is ready, the main
/// processor after the config daemon has started.
pub const DEFAULT_DEPENDENCIES: &[(&str, &str, Condition)] = &[
    ("nano_cpu_usage", "cpu_usage_daemon", Condition::Ready),
    ("nano_mem_usage", "mem_usage_daemon", Condition::Ready),
    ("nano_cpu_temp", "temp_main_daemon", Condition::Ready),
    (
        "main_llm_processor",
        "llm_config_daemon",
        Condition::Started,
    ),
];

/// Inserts the default rows that are missing; rows already present (and so any change an
/// operator made to them) are left alone. Returns how many rows were inserted.
pub fn insert_defaults(conn: &Connection) -> rusqlite::Result<usize> {
    let mut inserted = 0;
    for row in DEFAULT_COMPONENTS {
        inserted += usize::from(crate::components::insert_if_missing(conn, row.into())?);
    }
    let mut prompt =
        conn.prepare("INSERT OR IGNORE INTO nano_prompts (nano_id, prompt) VALUES (?1, '')")?;
    for nano_id in DEFAULT_NANO_PROMPT_IDS {
        inserted += prompt.execute([nano_id])?;
    }
    inserted += conn.execute(
        "INSERT OR IGNORE INTO llm_io_config (llm_id, read_tables, output_table) VALUES (?1, ?2, ?3)",
        params![MAIN_LLM_ID, MAIN_LLM_READ_TABLES, LLM_OUTPUTS],
    )?;
    // Only between rows that are there (a renamed default row must not gain a dangling
    // dependency, which would be reported as an error).
    let exists = |id: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            &format!("SELECT count(*) FROM {AUTORUN_COMPONENTS} WHERE component_id = ?1"),
            [id],
            |r| r.get::<_, i64>(0),
        )
        .map(|n| n > 0)
    };
    for (component, depends_on, condition) in DEFAULT_DEPENDENCIES {
        if exists(component)? && exists(depends_on)? {
            inserted +=
                crate::dependencies::insert_if_missing(conn, component, depends_on, *condition)?;
        }
    }
    Ok(inserted)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn defaults_are_inserted_once() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        let first = insert_defaults(&conn).unwrap();
        assert_eq!(
            first,
            DEFAULT_COMPONENTS.len()
                + DEFAULT_NANO_PROMPT_IDS.len()
                + 1
                + DEFAULT_DEPENDENCIES.len()
        );
        assert_eq!(insert_defaults(&conn).unwrap(), 0);
    }

    #[test]
    fn default_launch_args_are_json_objects() {
        for row in DEFAULT_COMPONENTS {
            let value: serde_json::Value = serde_json::from_str(row.launch_args_json).unwrap();
            assert!(value.is_object(), "{}", row.component_id);
        }
    }

    #[test]
    fn modified_timestamp_trigger_fires() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrations().to_latest(&mut conn).unwrap();
        insert_defaults(&conn).unwrap();
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
