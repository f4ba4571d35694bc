//! The operations of `/v1`, declared for the OpenAPI document. The server implements them; these
//! declarations are never called.
#![allow(dead_code)]

use crate::{
    AgentJoin, AgentJoined, AuditEntry, Budget, BudgetUpdate, ClusterStatus, Drain, ErrorBody, Event, FederationLease,
    FederationLeaseState, GpuPowerCap, Health, Heartbeat, HeartbeatBatch, HeartbeatBatchReply, HeartbeatReply, History,
    Job, JobList, JobLogs, JobSpec, JoinToken, JoinTokenInfo, LogChunk, NewJoinToken, NewTenant, Node, Prices, Quota,
    QuotaUpdate, Site, Tenant, TenantCreated, TokenRotation, UsageBy, UsageReport,
};

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", security(()), responses(
    (status = 200, description = "The server and its database answer", body = Health),
    (status = 503, description = "The database does not answer", body = ErrorBody),
))]
pub fn health() {}

/// The control plane's replicas: which server leads, in which epoch, since when.
#[utoipa::path(get, path = "/v1/cluster", tag = "fleet", responses(
    (status = 200, description = "The leader's lease as stored, and whether this server leads", body = ClusterStatus),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
))]
pub fn cluster() {}

/// Creates a tenant and returns its token (admin only). The token is shown only this once.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant, responses(
    (status = 201, description = "Created", body = TenantCreated),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
    (status = 409, description = "A tenant of that name exists", body = ErrorBody),
    (status = 422, description = "A field is invalid", body = ErrorBody),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
))]
pub fn create_tenant() {}

/// Every tenant (admin), or the caller's own tenant.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", responses(
    (status = 200, description = "Tenants", body = Vec<Tenant>),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
))]
pub fn list_tenants() {}

/// Sets a tenant's GPU quota (admin only).
#[utoipa::path(put, path = "/v1/tenants/{name}/quota", tag = "tenants", request_body = QuotaUpdate,
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "Updated", body = Tenant),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 400, description = "The body is not JSON, or a path segment is not UTF-8", body = ErrorBody),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn set_quota() {}

/// Gives a tenant a new token, shown once; the old one stops working at once (admin only).
#[utoipa::path(post, path = "/v1/tenants/{name}/token", tag = "tenants", request_body(content = Option<TokenRotation>),
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "The tenant and its new token", body = TenantCreated),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 400, description = "The body is not JSON, or a path segment is not UTF-8", body = ErrorBody),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn rotate_tenant_token() {}

/// Revokes a tenant's token: it stops working at once, until a new one is made (admin only).
#[utoipa::path(delete, path = "/v1/tenants/{name}/token", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn revoke_tenant_token() {}

/// Removes a tenant with no work waiting or running: its token stops working; its finished
/// jobs stay on record (admin only).
#[utoipa::path(delete, path = "/v1/tenants/{name}", tag = "tenants",
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "It has work waiting or running", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn remove_tenant() {}

/// What the admin changed, newest first (admin only).
#[utoipa::path(get, path = "/v1/audit", tag = "tenants",
    params(
        ("limit" = Option<u32>, Query, description = "Entries, 1 to 1000 (100)"),
        ("before" = Option<i64>, Query, description = "Only entries older than this id"),
    ),
    responses(
        (status = 200, description = "The audit log", body = Vec<AuditEntry>),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn audit_log() {}

/// What was used: GPU-, CPU- and memory-hours and measured energy of every run within a window,
/// grouped by tenant, job, day, month or GPU model. A tenant sees its own; the admin sees all,
/// or one tenant's with `tenant`.
#[utoipa::path(get, path = "/v1/usage", tag = "tenants",
    params(
        ("since_ms" = Option<i64>, Query, description = "Window start, Unix ms (30 days before its end)"),
        ("until_ms" = Option<i64>, Query, description = "Window end, Unix ms (now)"),
        ("by" = Option<UsageBy>, Query, description = "tenant, job, day, month, model, site or site-month (tenant)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's (admin only)"),
    ),
    responses(
        (status = 200, description = "Usage in the window", body = UsageReport),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "`tenant` asked for by a tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn usage() {}

/// Finished jobs, like Slurm's `sacct`: how each ended, its exit code, times, GPUs, energy and
/// cost. A tenant sees its own; the admin sees all, or one tenant's with `tenant`.
#[utoipa::path(get, path = "/v1/history", tag = "tenants",
    params(
        ("since_ms" = Option<i64>, Query, description = "Jobs that finished from then, Unix ms (7 days before until_ms)"),
        ("until_ms" = Option<i64>, Query, description = "... up to then, Unix ms (now)"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's (admin only)"),
        ("limit" = Option<i64>, Query, description = "At most this many, 1 to 10,000 (1,000)"),
        ("after_id" = Option<i64>, Query, description = "Of the jobs that finished at `since_ms`, only those with a greater id (the next page)"),
    ),
    responses(
        (status = 200, description = "Finished jobs, oldest end first", body = History),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "`tenant` asked for by a tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn history() {}

/// The price list usage is charged by.
#[utoipa::path(get, path = "/v1/prices", tag = "tenants", responses(
    (status = 200, description = "The price list", body = Prices),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
))]
pub fn get_prices() {}

/// Sets the price list (admin only): what runs cost from now on, and what usage reports charge.
#[utoipa::path(put, path = "/v1/prices", tag = "tenants", request_body = Prices, responses(
    (status = 200, description = "The price list set", body = Prices),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
    (status = 413, description = "Body too large", body = ErrorBody),
    (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
))]
pub fn set_prices() {}

/// A tenant's monthly budget and where it stands: the caller's own, or (admin) `tenant`'s.
#[utoipa::path(get, path = "/v1/budget", tag = "tenants",
    params(("tenant" = Option<String>, Query, description = "The tenant (admin: required; a tenant: its own)")),
    responses(
        (status = 200, description = "The budget", body = Budget),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Another tenant's, asked for by a tenant", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 422, description = "A query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn get_budget() {}

/// Sets or removes a tenant's monthly budget (admin only). Past it, the tenant's submissions are
/// refused; its running work goes on, unless `stop_running`: then its running and waiting jobs
/// are cancelled once the month's spending reaches the budget.
#[utoipa::path(put, path = "/v1/tenants/{name}/budget", tag = "tenants", request_body = BudgetUpdate,
    params(("name" = String, Path, description = "Tenant name")),
    responses(
        (status = 200, description = "The budget set", body = Budget),
        (status = 400, description = "The body is not JSON, or a path segment is not UTF-8", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn set_budget() {}

/// The caller's quota and use.
#[utoipa::path(get, path = "/v1/quota", tag = "tenants", responses(
    (status = 200, description = "Quota", body = Quota),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "The admin token: work belongs to tenants", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
))]
pub fn get_quota() {}

/// Submits a job or a GPU instance. The job is committed to the store before the `201`. A retry
/// with the same `Idempotency-Key` returns the job stored the first time, with `200`.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs", request_body = JobSpec,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: one job per key and tenant")),
    responses(
        (status = 201, description = "Stored", body = Job),
        (status = 200, description = "A retry: the job stored for this key", body = Job),
        (status = 400, description = "Not JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "The admin token (work belongs to tenants), or the job would pass the tenant's monthly budget", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate or its cap on pending jobs: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 409, description = "The key was used for a different request", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A field is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn submit_job() {}

/// The caller's jobs, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(
        ("state" = Option<String>, Query, description = "Only jobs in this state"),
        ("limit" = Option<u32>, Query, description = "At most this many (default 100, at most 1000)"),
        ("before" = Option<i64>, Query, description = "Only jobs with a smaller id (the next page)"),
    ),
    responses(
        (status = 200, description = "Jobs", body = JobList),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "The admin token: work belongs to tenants", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn list_jobs() {}

/// One of the caller's jobs with its state history.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = Job),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "The admin token: work belongs to tenants", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn get_job() {}

/// Cancels a job, or releases a GPU instance. Cancelling a finished job changes nothing.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs", params(("id" = i64, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job after cancelling", body = Job),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "The admin token: work belongs to tenants", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 404, description = "No such job for this tenant", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn cancel_job() {}

/// A piece of one gang member's stdout or stderr, fetched from the node that ran it. Read on
/// from `next_offset`; `complete` says the job has ended and nothing more will come.
#[utoipa::path(get, path = "/v1/jobs/{id}/logs", tag = "jobs",
    params(
        ("id" = i64, Path, description = "Job id"),
        ("member" = Option<u32>, Query, description = "Gang member (rank), default 0"),
        ("stream" = Option<String>, Query, description = "`stdout` (default) or `stderr`"),
        ("offset" = Option<u64>, Query, description = "Byte offset to read from, default 0"),
        ("limit" = Option<u64>, Query, description = "At most this many bytes (default and most 256 KiB)"),
    ),
    responses(
        (status = 200, description = "The output from the offset", body = JobLogs),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "The admin token: work belongs to tenants", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate or its open streams: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 404, description = "No such job or member, or the job has not been placed", body = ErrorBody),
        (status = 503, description = "The node that ran it does not answer", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn job_logs() {}

/// The fleet's nodes and their free GPUs.
#[utoipa::path(get, path = "/v1/nodes", tag = "fleet", responses(
    (status = 200, description = "Nodes", body = Vec<Node>),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
))]
pub fn list_nodes() {}

/// The fleet's sites: GPUs free and used, power against the cap.
#[utoipa::path(get, path = "/v1/sites", tag = "fleet", responses(
    (status = 200, description = "Sites", body = Vec<Site>),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
))]
pub fn list_sites() {}

/// Sets the power cap of every GPU of a site (admin only). The nodes' agents apply it (NVML
/// where they may, recorded on declared GPUs) and report it back with their draw.
#[utoipa::path(put, path = "/v1/sites/{name}/gpu-power-cap", tag = "fleet", request_body = GpuPowerCap,
    params(("name" = String, Path, description = "Site name")),
    responses(
        (status = 200, description = "The site with its new cap", body = Site),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such site, or the server runs no agents", body = ErrorBody),
        (status = 422, description = "Not a positive number of watts", body = ErrorBody),
        (status = 400, description = "The body is not JSON, or a path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn set_gpu_power_cap() {}

/// The site's federation lease (admin only): until when federated jobs may start here.
#[utoipa::path(get, path = "/v1/federation/lease", tag = "fleet", responses(
    (status = 200, description = "The lease; `until_ms` 0 when none was given", body = FederationLeaseState),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
))]
pub fn get_federation_lease() {}

/// Renews the site's federation lease (admin only, the federation endpoint's token): federated
/// jobs may start here for `lease_ms` from now, on this server's clock, each once the federation
/// has granted it (`grant`). Once the lease runs out, they wait in the queue until the next
/// renewal; other jobs are not affected. The answer lists the jobs waiting for a grant.
#[utoipa::path(put, path = "/v1/federation/lease", tag = "fleet", request_body = FederationLease,
    responses(
        (status = 200, description = "The lease as renewed", body = FederationLeaseState),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 422, description = "`lease_ms` out of range (1 to 600,000), or over 10,000 ids in `grant`; `field` names it", body = ErrorBody),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
    ))]
pub fn set_federation_lease() {}

/// Drains a node (admin only): it takes no new work; what runs there goes on. Kept across
/// restarts and replicas.
#[utoipa::path(put, path = "/v1/nodes/{name}/drain", tag = "fleet", request_body(content = Option<Drain>),
    params(("name" = String, Path, description = "Node name")),
    responses(
        (status = 200, description = "The node, drained", body = Node),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 422, description = "A reason too long or with control characters", body = ErrorBody),
        (status = 400, description = "The body is not JSON, or a path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn drain_node() {}

/// Resumes a drained node (admin only): it takes work again.
#[utoipa::path(delete, path = "/v1/nodes/{name}/drain", tag = "fleet",
    params(("name" = String, Path, description = "Node name")),
    responses(
        (status = 200, description = "The node, taking work", body = Node),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such node", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn resume_node() {}

/// Removes a drained node with nothing running from service (admin only): its credential is
/// revoked and its agent's lease ended; it comes back only with a new join token, and stays
/// drained until resumed.
#[utoipa::path(post, path = "/v1/nodes/{name}/remove", tag = "fleet",
    params(("name" = String, Path, description = "Node name")),
    responses(
        (status = 200, description = "The node, out of service", body = Node),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 403, description = "Not the admin token", body = ErrorBody),
        (status = 404, description = "No such node, or the server runs no agents", body = ErrorBody),
        (status = 409, description = "Not drained, or work still runs there", body = ErrorBody),
        (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
    ))]
pub fn remove_node() {}

/// Server-sent events: the caller's job state changes, `event: job`, data an `Event`.
#[utoipa::path(get, path = "/v1/events", tag = "jobs",
    params(
        ("after" = Option<i64>, Query, description = "Start after this event id"),
        ("Last-Event-ID" = Option<i64>, Header, description = "Resume after this event id"),
    ),
    responses(
        (status = 200, description = "text/event-stream of Event", body = Event, content_type = "text/event-stream"),
        (status = 401, description = "Missing or bad token", body = ErrorBody),
        (status = 429, description = "Past the tenant's request rate or its open streams: try again after `Retry-After` seconds", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
    ))]
pub fn events() {}

/// Makes a join token for node agents (admin only), single-use and valid a day unless the body
/// says otherwise. Shown only this once.
#[utoipa::path(post, path = "/v1/join-tokens", tag = "agents", request_body(content = Option<NewJoinToken>), responses(
    (status = 201, description = "Created", body = JoinToken),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
    (status = 422, description = "A limit out of range, or an unknown node", body = ErrorBody),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
))]
pub fn create_join_token() {}

/// Every join token, newest first, with what is left of it (admin only).
#[utoipa::path(get, path = "/v1/join-tokens", tag = "agents", responses(
    (status = 200, description = "The join tokens", body = Vec<JoinTokenInfo>),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
))]
pub fn list_join_tokens() {}

/// Revokes a join token (admin only): no node joins with it any more; nodes that joined keep
/// their own credentials.
#[utoipa::path(delete, path = "/v1/join-tokens/{id}", tag = "agents", params(("id" = String, Path, description = "The token's id")), responses(
    (status = 204, description = "Revoked"),
    (status = 401, description = "Missing or bad token", body = ErrorBody),
    (status = 403, description = "Not the admin token", body = ErrorBody),
    (status = 404, description = "No such token, or revoked already", body = ErrorBody),
    (status = 400, description = "A path segment is not UTF-8", body = ErrorBody),
))]
pub fn revoke_join_token() {}

/// A node agent joins with a join token and gets its node's own credential.
#[utoipa::path(post, path = "/v1/agent/join", tag = "agents", security(()), request_body = AgentJoin, responses(
    (status = 200, description = "Joined", body = AgentJoined),
    (status = 401, description = "Unknown join token", body = ErrorBody),
    (status = 422, description = "No such node in the fleet", body = ErrorBody),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
))]
pub fn agent_join() {}

/// Renews the calling node's lease, takes its run reports and answers its work and kill list.
/// Called with the node's credential; it may wait up to `wait_ms` for work.
#[utoipa::path(post, path = "/v1/agent/heartbeat", tag = "agents", request_body = Heartbeat, responses(
    (status = 200, description = "Lease renewed", body = HeartbeatReply),
    (status = 401, description = "Not a node credential", body = ErrorBody),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
    (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
))]
pub fn agent_heartbeat() {}

/// Heartbeats of many nodes served by one agent process, in one call.
#[utoipa::path(post, path = "/v1/agent/heartbeats", tag = "agents", security(()), request_body = HeartbeatBatch, responses(
    (status = 200, description = "Leases of the listed nodes renewed; the nodes with work", body = HeartbeatBatchReply),
    (status = 400, description = "Malformed batch", body = ErrorBody),
    (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
))]
pub fn agent_heartbeats() {}

/// A node's answer to a log request of its heartbeat: a piece of a run's output.
#[utoipa::path(post, path = "/v1/agent/logs", tag = "agents", request_body = LogChunk, responses(
    (status = 204, description = "Taken"),
    (status = 401, description = "Not a node credential", body = ErrorBody),
    (status = 400, description = "The body is not JSON", body = ErrorBody),
    (status = 422, description = "A field or query parameter is invalid; `field` names it", body = ErrorBody),
))]
pub fn agent_logs() {}
