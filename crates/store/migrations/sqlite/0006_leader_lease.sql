-- The leader's lease: one row. A replica leads while it holds the row's epoch and renews the
-- lease before it expires; a takeover bumps the epoch, and every write a leader makes checks
-- the epoch in its own transaction, so a deposed leader's writes are refused.
CREATE TABLE leader_lease (
    id INTEGER PRIMARY KEY NOT NULL CHECK (id = 1),
    holder TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    acquired_ms BIGINT NOT NULL,
    renewed_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL
);
