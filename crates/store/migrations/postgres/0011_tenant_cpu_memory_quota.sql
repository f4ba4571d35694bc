-- A tenant's CPUs (thousandths) and memory (MiB) it may hold at once, over all its jobs and
-- nodes; NULL is unlimited.
ALTER TABLE tenants ADD COLUMN cpu_milli_quota BIGINT;
ALTER TABLE tenants ADD COLUMN memory_mib_quota BIGINT;
