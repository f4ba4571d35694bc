-- CPUs (thousandths) and memory (MiB) a job holds on each of its nodes; 0 for jobs stored
-- before jobs asked for them (not limited).
ALTER TABLE jobs ADD COLUMN cpu_milli BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN memory_mib BIGINT NOT NULL DEFAULT 0;
-- A node's credential being rotated: the one it had, still good until the node uses its new one.
ALTER TABLE agent_nodes ADD COLUMN previous_token_hash TEXT;
