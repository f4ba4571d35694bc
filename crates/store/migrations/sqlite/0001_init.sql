-- drome's first schema (SQLite dialect). Times are milliseconds since the Unix epoch.
CREATE TABLE settings (
    key TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    gpu_quota BIGINT,
    created_ms BIGINT NOT NULL
);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id BIGINT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    command TEXT,
    args_json TEXT NOT NULL,
    env_json TEXT NOT NULL,
    gpus_per_node BIGINT NOT NULL,
    nodes BIGINT NOT NULL,
    gpu_model TEXT,
    priority BIGINT NOT NULL,
    is_deferrable BIGINT NOT NULL,
    max_runtime_s BIGINT,
    restart_policy TEXT NOT NULL,
    max_restarts BIGINT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    placement_json TEXT,
    exit_code BIGINT,
    message TEXT,
    submitted_ms BIGINT NOT NULL,
    started_ms BIGINT,
    finished_ms BIGINT,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX jobs_by_state ON jobs (state, id);
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, id);

CREATE TABLE job_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs (id),
    tenant_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    message TEXT
);
CREATE INDEX job_events_by_job ON job_events (job_id, id);
CREATE INDEX job_events_by_tenant ON job_events (tenant_id, id);
