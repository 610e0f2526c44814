-- The original n0m1_agi schema. Every statement is IF NOT EXISTS so that a database made by
-- the original init_database.py (user_version 0, tables already present) upgrades in place.

CREATE TABLE IF NOT EXISTS autorun_components (
    component_id TEXT PRIMARY KEY,
    base_script_name TEXT NOT NULL,
    manager_affinity TEXT NOT NULL,
    desired_state TEXT NOT NULL DEFAULT 'active' CHECK (desired_state IN ('active', 'inactive')),
    launch_args_json TEXT DEFAULT '{}',
    run_type_on_boot TEXT DEFAULT 'PRIMARY_RUN',
    description TEXT,
    created_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    modified_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_autorun_manager_affinity ON autorun_components (manager_affinity);
CREATE INDEX IF NOT EXISTS idx_autorun_desired_state ON autorun_components (desired_state);
CREATE TRIGGER IF NOT EXISTS update_autorun_components_modified
AFTER UPDATE ON autorun_components
FOR EACH ROW
BEGIN
    UPDATE autorun_components SET modified_timestamp = CURRENT_TIMESTAMP
    WHERE component_id = OLD.component_id;
END;

CREATE TABLE IF NOT EXISTS component_lifecycle_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_timestamp DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
    component_id TEXT NOT NULL,
    process_pid INTEGER,
    event_type TEXT NOT NULL,
    run_type TEXT,
    message TEXT,
    manager_script TEXT,
    script_path TEXT
);
CREATE INDEX IF NOT EXISTS idx_lifecycle_component_id ON component_lifecycle_log (component_id);
CREATE INDEX IF NOT EXISTS idx_lifecycle_event_type ON component_lifecycle_log (event_type);
CREATE INDEX IF NOT EXISTS idx_lifecycle_event_timestamp ON component_lifecycle_log (event_timestamp);

CREATE TABLE IF NOT EXISTS cpu_temperature_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    temperature_celsius REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS cpu_usage_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    cpu_usage REAL
);
CREATE TABLE IF NOT EXISTS memory_usage_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    mem_usage REAL
);
CREATE TABLE IF NOT EXISTS system_metrics_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    cpu_temp REAL,
    cpu_usage REAL,
    mem_usage REAL
);

CREATE TABLE IF NOT EXISTS nano_outputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nano_id TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT
);
CREATE TABLE IF NOT EXISTS cpu_temp_summary (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nano_id TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT
);
CREATE TABLE IF NOT EXISTS cpu_usage_summary (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nano_id TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT
);
CREATE TABLE IF NOT EXISTS memory_usage_summary (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    nano_id TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT
);
CREATE TABLE IF NOT EXISTS nano_prompts (
    nano_id TEXT PRIMARY KEY,
    prompt TEXT NOT NULL,
    modified_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    needs_reload INTEGER DEFAULT 0
);

CREATE TABLE IF NOT EXISTS llm_outputs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    llm_id TEXT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    content TEXT
);
CREATE TABLE IF NOT EXISTS llm_io_config (
    llm_id TEXT PRIMARY KEY,
    read_tables TEXT NOT NULL,
    output_table TEXT NOT NULL,
    needs_reload INTEGER DEFAULT 0
);
CREATE TABLE IF NOT EXISTS llm_notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    llm_id TEXT NOT NULL,
    notification_type TEXT NOT NULL,
    payload TEXT,
    processed INTEGER DEFAULT 0,
    created_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS db_access_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp DATETIME DEFAULT CURRENT_TIMESTAMP,
    component_id TEXT NOT NULL,
    table_name TEXT NOT NULL,
    access_type TEXT NOT NULL CHECK (access_type IN ('READ', 'WRITE'))
);
