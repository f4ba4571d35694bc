-- Node agents (SQLite dialect): join tokens made by the admin, and the nodes that joined with
-- one. Tokens and credentials are kept only as SHA-256 hashes.
CREATE TABLE join_tokens (
    token_hash TEXT PRIMARY KEY NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE agent_nodes (
    name TEXT PRIMARY KEY NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    inventory_json TEXT NOT NULL,
    address TEXT NOT NULL,
    joined_ms BIGINT NOT NULL
);
