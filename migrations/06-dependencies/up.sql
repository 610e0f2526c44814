-- Start order: component_id starts only when depends_on meets `condition` ('started': running;
-- 'ready': running and said READY=1; 'completed_ok': a ONESHOT that exited 0), across
-- managers. Stops go the other way: dependents first.
CREATE TABLE IF NOT EXISTS component_dependencies (
    component_id TEXT NOT NULL,
    depends_on TEXT NOT NULL,
    condition TEXT NOT NULL DEFAULT 'started',
    PRIMARY KEY (component_id, depends_on)
);
