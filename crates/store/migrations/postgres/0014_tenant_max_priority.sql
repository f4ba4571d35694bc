-- The highest priority a tenant's jobs may ask for: priority orders all tenants' jobs, so it is
-- the admin's to give (0 by default: a tenant may only put its own jobs behind others).
ALTER TABLE tenants ADD COLUMN max_priority BIGINT NOT NULL DEFAULT 0;
