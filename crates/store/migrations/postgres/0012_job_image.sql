-- The OCI image a job's command runs in (NULL: on the node's own system).
ALTER TABLE jobs ADD COLUMN image TEXT;
-- The container runtimes a node's agent found (comma-separated; empty: none), so a restarted
-- server knows which nodes run images before their agents join again.
ALTER TABLE agent_nodes ADD COLUMN runtimes TEXT NOT NULL DEFAULT '';
