-- Each run of a job, the record usage is read from: one row per start (its generation), written
-- in the transaction that starts the job and closed in the one that moves it out of `running`,
-- so a run is counted once whatever restarts, agent losses or takeovers happen. Kept when a job's
-- state changes are pruned.
CREATE TABLE job_runs (
    job_id BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    tenant_id BIGINT NOT NULL,
    nodes BIGINT NOT NULL,
    gpus_per_node BIGINT NOT NULL,
    -- A share of one GPU in thousandths (NULL: whole GPUs).
    gpu_milli BIGINT,
    cpu_milli BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    -- The job's placement when it started, JSON the store does not look inside.
    placement_json TEXT,
    started_ms BIGINT NOT NULL,
    ended_ms BIGINT,
    -- The state it left `running` for.
    end_state TEXT,
    -- Energy its nodes' agents reported while it ran, its share of each node's draw, joules;
    -- and over how many milliseconds of the run a draw was reported (the rest is estimated).
    energy_joules BIGINT NOT NULL DEFAULT 0,
    energy_measured_ms BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, generation)
);
CREATE INDEX job_runs_by_tenant ON job_runs (tenant_id, started_ms);
CREATE INDEX job_runs_by_start ON job_runs (started_ms);
CREATE INDEX job_runs_open ON job_runs (ended_ms);
CREATE INDEX job_runs_by_tenant_end ON job_runs (tenant_id, ended_ms);
-- Jobs running when this came in: their run so far, from their start.
INSERT INTO job_runs (job_id, generation, tenant_id, nodes, gpus_per_node, gpu_milli, cpu_milli, memory_mib,
    placement_json, started_ms)
SELECT id, generation, tenant_id, nodes, gpus_per_node, gpu_milli, cpu_milli, memory_mib, placement_json, started_ms
FROM jobs WHERE state = 'running' AND started_ms IS NOT NULL;
