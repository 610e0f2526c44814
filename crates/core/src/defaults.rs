//! The rows a new database starts with: the original's components (and n0m1's bundled
//! ones), empty nano prompts, the main model's `llm_io_config` and the default start order.
//! `insert_defaults` adds what is missing and never touches a row an operator changed.

use rusqlite::{Connection, params};

use crate::components::{DESIRED_ACTIVE, NewComponent};
use crate::dependencies::Condition;
use crate::schema::{
    AUTORUN_COMPONENTS, DAEMON_MANAGER, LLM_OUTPUTS, MAIN_LLM_ID, MAIN_LLM_MANAGER,
    MODEL_SERVICE_ID, MODEL_SERVICE_SCRIPT, NANO_MANAGER,
};

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
/// Where `n0m1_web` listens unless its row's `--listen` says otherwise.
pub const WEB_LISTEN: &str = "127.0.0.1:8686";
/// The bundled web server's script (and default row id).
pub const WEB_SCRIPT: &str = "n0m1_web";

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
        base_script_name: MODEL_SERVICE_SCRIPT,
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

impl<'a> From<&'a DefaultComponent> for NewComponent<'a> {
    fn from(row: &'a DefaultComponent) -> Self {
        NewComponent {
            component_id: row.component_id,
            base_script_name: row.base_script_name,
            manager_affinity: row.manager_affinity,
            active: row.desired_state == DESIRED_ACTIVE,
            launch_args_json: row.launch_args_json,
            run_type: crate::components::RUN_TYPE_PRIMARY,
            description: row.description,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::migrations;

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
}
