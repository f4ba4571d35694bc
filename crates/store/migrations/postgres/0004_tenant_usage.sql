-- A tenant's GPU usage (`Store::tenant_gpus`) reads only its active jobs, however many it ran before
-- (PostgreSQL dialect).
CREATE INDEX jobs_by_tenant_state ON jobs (tenant_id, state);
