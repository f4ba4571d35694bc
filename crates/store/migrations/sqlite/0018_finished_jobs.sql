-- Finished jobs by the time they finished, for the job history (`GET /v1/history`).
CREATE INDEX jobs_by_finish ON jobs (finished_ms);
CREATE INDEX jobs_by_tenant_finish ON jobs (tenant_id, finished_ms);
