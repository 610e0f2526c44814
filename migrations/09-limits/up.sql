-- Resource limits and the account a component runs as, one optional row per component; every
-- column optional (NULL: no limit, the manager's own user). Applied through the component's
-- cgroup, to the running process at once.
CREATE TABLE IF NOT EXISTS component_limits (
    component_id TEXT PRIMARY KEY,
    -- Bytes: the hard limit (a kill by the kernel's OOM killer above it) and the throttle.
    memory_max INTEGER,
    memory_high INTEGER,
    -- Cores, a real: 0.5 is half of one core's time.
    cpu_max REAL,
    -- 1-10000, relative share when CPUs are contended (100 is the default).
    cpu_weight INTEGER,
    -- Most tasks (processes and threads) at once.
    pids_max INTEGER,
    -- A user and group name to run as (only when n0m1 runs as root).
    run_as_user TEXT,
    run_as_group TEXT,
    modified_timestamp DATETIME DEFAULT CURRENT_TIMESTAMP
);
