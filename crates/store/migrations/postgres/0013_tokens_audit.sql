-- A tenant's token may expire; a removed tenant keeps its rows (its jobs' history) but no token.
ALTER TABLE tenants ADD COLUMN token_expires_ms BIGINT;
ALTER TABLE tenants ADD COLUMN removed_ms BIGINT;
-- What the admin changed, when, on what: kept for good.
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
