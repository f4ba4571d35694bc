-- A federation endpoint's record: each tenant's job, the site it went to and why, and the jobs a
-- lost site must be told to drop when it answers again. A site's own tables stay empty here.
CREATE TABLE fed_jobs (
    id BIGSERIAL PRIMARY KEY,
    tenant_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    idempotency_key TEXT,
    request_hash TEXT NOT NULL,
    -- The site it is at now, its id there once the site took it (NULL while being forwarded).
    site TEXT NOT NULL,
    site_job_id BIGINT,
    reason TEXT NOT NULL,
    -- The state the site last gave, 'forwarding' before the site took it, 'lost' with its site.
    state TEXT NOT NULL,
    message TEXT,
    -- When the federation let its present site start it (the site asked): from then on it
    -- may have started there, and it no longer moves if that site is lost.
    granted_ms BIGINT,
    -- Earlier sites, JSON: [{site, site_job_id, reason, left_ms, why}].
    moves_json TEXT NOT NULL DEFAULT '[]',
    submitted_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL
);
CREATE UNIQUE INDEX fed_jobs_idempotency ON fed_jobs (tenant_id, idempotency_key);
CREATE INDEX fed_jobs_site_state ON fed_jobs (site, state);
CREATE INDEX fed_jobs_site_job ON fed_jobs (site, site_job_id);
CREATE INDEX fed_jobs_tenant ON fed_jobs (tenant_id, id);
-- The federation acts at each site as the tenant, with a token of the tenant's there.
CREATE TABLE fed_site_tokens (
    tenant_id BIGINT NOT NULL,
    site TEXT NOT NULL,
    token TEXT NOT NULL,
    PRIMARY KEY (tenant_id, site)
);
-- A job moved away from a site that did not answer: it is cancelled there before the site's
-- federation lease is renewed (it could not start there meanwhile). `site_key` is the
-- idempotency key it was sent there with: a site that took it before its id was written here
-- gives the id back for the same request and key.
CREATE TABLE fed_left (
    site TEXT NOT NULL,
    site_key TEXT NOT NULL,
    site_job_id BIGINT,
    tenant_id BIGINT NOT NULL,
    fed_job_id BIGINT NOT NULL,
    left_ms BIGINT NOT NULL,
    cancelled_ms BIGINT,
    PRIMARY KEY (site, site_key)
);
