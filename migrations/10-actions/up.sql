-- What the model (or anyone writing llm_outputs) asks n0m1 to do, as proposals a policy
-- decides and an operator may approve; and the incidents the rules open and the model
-- explains. Times are Unix seconds.
CREATE TABLE IF NOT EXISTS action_proposals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    -- Where the line came from: `llm_outputs row 42`, `incident 3`.
    source TEXT NOT NULL,
    -- START, STOP, RESTART, LIMIT; for a refused line, what its verb was (or '').
    action TEXT NOT NULL,
    component_id TEXT,
    -- LIMIT: the new memory_max in bytes.
    argument TEXT,
    -- The line as written (escaped), and why it was denied when it was.
    reason TEXT,
    state TEXT NOT NULL DEFAULT 'proposed' CHECK (state IN
        ('proposed', 'approved', 'rejected', 'denied', 'executed', 'failed', 'expired')),
    decided_by TEXT,
    decided_at REAL,
    result TEXT,
    -- JSON: the component's state, pid and readiness before the action and after it.
    state_before TEXT,
    state_after TEXT
);
CREATE INDEX IF NOT EXISTS action_proposals_by_state ON action_proposals (state, created_at);
CREATE INDEX IF NOT EXISTS action_proposals_by_component ON action_proposals (component_id, created_at);

-- Which proposals run at once (auto), wait for an operator (approve) or never run (deny).
-- The most specific row wins: a named action over '*', then the longer glob. Boot, the log
-- writer, the managers and n0m1's bundled supervisors are denied whatever this table says.
CREATE TABLE IF NOT EXISTS action_policy (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL DEFAULT '*',
    component_glob TEXT NOT NULL DEFAULT '*',
    decision TEXT NOT NULL CHECK (decision IN ('auto', 'approve', 'deny')),
    -- At most this many proposals per component per hour; NULL: no limit.
    max_per_hour INTEGER,
    UNIQUE (action, component_glob)
);
-- The defaults, only into an empty table: START nano_* runs at once (the original's
-- behaviour), everything else waits for an operator.
INSERT INTO action_policy (action, component_glob, decision, max_per_hour)
    SELECT * FROM (VALUES ('START', 'nano_*', 'auto', 12), ('*', '*', 'approve', NULL))
    WHERE NOT EXISTS (SELECT 1 FROM action_policy);

-- One row per problem the rules found; open (closed_at NULL) until the component recovers.
CREATE TABLE IF NOT EXISTS incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    opened_at REAL NOT NULL,
    closed_at REAL,
    component_id TEXT NOT NULL,
    -- failed, crash_loop, unhealthy, dependency_halted, oom_killed, metric_alert
    kind TEXT NOT NULL,
    -- JSON, at most 16 KiB, control characters escaped.
    evidence TEXT NOT NULL,
    summary TEXT NOT NULL,
    diagnosis TEXT,
    -- 'rules' or the model's name.
    diagnosis_source TEXT,
    -- Why a model's diagnosis was refused (it is replaced by the rules' one).
    diagnosis_rejected TEXT,
    -- One of restart, stop, start_dependency, raise_limit, none.
    suggested_action TEXT,
    state TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed')),
    -- The lifecycle row that opened it and the one that closed it.
    opened_by_event INTEGER,
    closed_by_event INTEGER
);
CREATE INDEX IF NOT EXISTS incidents_open ON incidents (component_id, kind) WHERE closed_at IS NULL;
