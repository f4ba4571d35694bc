//! The HTTP surface: `/v1` (see `api::paths`), `/healthz`, `/metrics`, the OpenAPI document and
//! the Swagger UI.

use crate::auth::{AdminCaller, Caller, TenantCaller};
use crate::convert::{event_to_api, job_to_api, request_workload, state_from_api, total_gpus};
use crate::error::ApiError;
use crate::json::{ApiJson, PathSegment};
use crate::{AppState, now_ms};
use api::limits;
use axum::Json;
use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, post, put};
use futures_util::Stream;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::time::{Duration, Instant};
use store::{Change, JobFilter, JobState};
use utoipa_swagger_ui::SwaggerUi;

pub fn router(state: AppState) -> Router {
    use crate::replicas::{Role, forward_to_leader, not_leader};
    let standby = state.role == Role::Standby;
    // What needs the leader's agents or memory: a standby asks the leader.
    let leader_only = |m: MethodRouter<AppState>| if standby { any(forward_to_leader) } else { m };
    // Agents talk to the leader only: a standby sends them on.
    let agents_only = |m: MethodRouter<AppState>| if standby { any(not_leader) } else { m };
    let v1 = Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/tenants/{name}/quota", put(set_quota))
        .route("/tenants/{name}", delete(remove_tenant))
        .route("/tenants/{name}/token", post(rotate_tenant_token).delete(revoke_tenant_token))
        .route("/audit", get(audit_log))
        .route("/usage", get(crate::usage::usage))
        .route("/history", get(crate::usage::history))
        .route("/prices", get(crate::usage::get_prices).put(crate::usage::set_prices))
        .route("/budget", get(crate::budget::get_budget))
        .route("/tenants/{name}/budget", put(crate::budget::set_budget))
        .route("/quota", get(get_quota))
        .route("/jobs", post(submit_job).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel_job))
        .route("/nodes", leader_only(get(list_nodes)))
        .route("/sites", leader_only(get(list_sites)))
        .route("/cluster", get(cluster))
        .route("/sites/{name}/gpu-power-cap", leader_only(put(set_gpu_power_cap)))
        .route("/federation/lease", leader_only(get(get_federation_lease).put(set_federation_lease)))
        .route("/nodes/{name}/drain", leader_only(put(drain_node).delete(resume_node)))
        .route("/nodes/{name}/remove", leader_only(post(remove_node)))
        .route("/events", get(events))
        .route("/join-tokens", post(crate::agent_routes::create_join_token).get(crate::agent_routes::list_join_tokens))
        .route("/join-tokens/{id}", delete(crate::agent_routes::revoke_join_token))
        .route("/agent/join", agents_only(post(crate::agent_routes::join)))
        .route("/agent/heartbeat", agents_only(post(crate::agent_routes::heartbeat)))
        // A batch carries every node of an agent process, a few hundred bytes each.
        .route(
            "/agent/heartbeats",
            agents_only(post(crate::agent_routes::heartbeats))
                .layer(DefaultBodyLimit::max(crate::agent_routes::MAX_BATCH_BODY)),
        )
        // A piece of output, escaped as JSON, may exceed the general body limit.
        .route(
            "/agent/logs",
            agents_only(post(crate::agent_routes::logs))
                .layer(DefaultBodyLimit::max(crate::agent_routes::MAX_LOG_BODY)),
        )
        .route("/jobs/{id}/logs", leader_only(get(crate::agent_routes::job_logs)));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health))
        .route("/metrics", get(metrics))
        .route_layer(middleware::from_fn_with_state(state.clone(), track))
        .merge(SwaggerUi::new("/v1/docs").url("/v1/openapi.json", api::openapi()))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits::MAX_BODY_BYTES))
        .with_state(state)
}

async fn track(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_default();
    let method = req.method().to_string();
    let t0 = Instant::now();
    // A tenant known here is served in one of its seats; streams and output, which may last,
    // are bounded by its stream limit instead.
    let long_lived = route.ends_with("/events") || route.ends_with("/logs");
    let tenant = if long_lived { None } else { known_tenant(&st, &mut req) };
    let _seat = match tenant {
        Some(id) => st.limiter.seat(id).await,
        None => None,
    };
    let resp = if long_lived {
        next.run(req).await
    } else {
        match tokio::time::timeout(st.request_timeout, next.run(req)).await {
            Ok(resp) => resp,
            Err(_) => ApiError::Timeout(format!(
                "the request took longer than {} s (its body stopped coming?)",
                st.request_timeout.as_secs_f64()
            ))
            .into_response(),
        }
    };
    let labels = vec![
        ("method".to_string(), method),
        ("route".to_string(), route),
        ("status".into(), resp.status().as_u16().to_string()),
    ];
    st.metrics.api_seconds.get_or_create(&labels).observe(t0.elapsed().as_secs_f64());
    resp
}

/// The tenant a request's token belongs to, when this process checked the token lately. The
/// token's hash stays with the request for the caller's extractor.
fn known_tenant(st: &AppState, req: &mut Request) -> Option<i64> {
    let hash = crate::auth::hash_token(crate::auth::bearer(req.headers()).ok()?);
    let tenant = st.tenant_cache.get(&hash).map(|t| t.id);
    req.extensions_mut().insert(crate::auth::TokenHash(hash));
    tenant
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn health(State(st): State<AppState>) -> Result<Json<api::Health>, ApiError> {
    let database = database_name(st.store.backend());
    // Below this, a write may fail: the server says so before it does.
    const MIN_FREE_BYTES: u64 = 1 << 20;
    if let Some(disk) = st.store.disk() {
        if disk.read_only {
            return Err(ApiError::Unavailable(format!("the {database} store's disk is read-only")));
        }
        if disk.free_bytes < MIN_FREE_BYTES {
            return Err(ApiError::Unavailable(format!(
                "the {database} store's disk is full: {} KiB free",
                disk.free_bytes / 1024
            )));
        }
    }
    match st.store.ping().await {
        Ok(()) => Ok(Json(api::Health { status: "ok".into(), database: database.into() })),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store does not answer");
            Err(ApiError::Unavailable(format!("the {database} store does not answer")))
        }
    }
}

/// The store's engine as the API names it.
fn database_name(backend: store::Backend) -> &'static str {
    match backend {
        store::Backend::Sqlite => "sqlite",
        store::Backend::Postgres => "postgres",
    }
}

async fn metrics(State(st): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], st.metrics.render())
}

fn tenant_to_api(t: &store::Tenant) -> api::Tenant {
    api::Tenant {
        id: t.id,
        name: t.name.clone(),
        gpu_quota: t.quota.gpus.and_then(|q| u32::try_from(q).ok()),
        cpu_milli_quota: t.quota.cpu_milli.and_then(|q| u64::try_from(q).ok()),
        memory_mib_quota: t.quota.memory_mib.and_then(|q| u64::try_from(q).ok()),
        created_at_ms: t.created_ms,
        max_priority: i32::try_from(t.quota.max_priority).unwrap_or(0),
        token_expires_at_ms: t.token_expires_ms,
    }
}

/// The store, its next write recording an admin action in the audit log in the write's own
/// transaction: the log holds the action if and only if it was done.
pub(crate) fn audited(st: &AppState, action: &str, target: &str, detail: serde_json::Value) -> store::Store {
    st.store.audited(store::AuditRecord {
        actor: "admin".into(),
        action: action.into(),
        target: target.into(),
        detail: detail.to_string(),
        at_ms: now_ms(),
    })
}

/// When a token given now for `ttl_s` seconds stops working.
fn token_expiry(field: &str, ttl_s: Option<u64>) -> Result<Option<i64>, ApiError> {
    const MAX_TTL_S: u64 = 10 * 366 * 24 * 3600;
    match ttl_s {
        None => Ok(None),
        Some(s) if (1..=MAX_TTL_S).contains(&s) => Ok(Some(now_ms() + (s as i64) * 1000)),
        Some(_) => Err(ApiError::invalid(field, format!("between 1 and {MAX_TTL_S} seconds"))),
    }
}

async fn tenant_named(st: &AppState, name: &str) -> Result<store::Tenant, ApiError> {
    st.store
        .tenant_by_name(name)
        .await?
        .filter(|t| t.removed_ms.is_none())
        .ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))
}

async fn rotate_tenant_token(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
    body: axum::body::Bytes,
) -> Result<Json<api::TenantCreated>, ApiError> {
    let req: api::TokenRotation = if body.iter().all(u8::is_ascii_whitespace) {
        api::TokenRotation::default()
    } else {
        crate::json::parse(&body)?
    };
    let tenant = tenant_named(&st, &name).await?;
    let expires = token_expiry("ttl_s", req.ttl_s)?;
    let token = crate::auth::new_token()?;
    let store = audited(&st, "tenant.token.rotate", &name, serde_json::json!({"ttl_s": req.ttl_s}));
    if !store.set_token(tenant.id, &crate::auth::hash_token(&token), expires).await? {
        return Err(ApiError::NotFound(format!("no tenant '{name}'")));
    }
    st.tenant_cache.forget_tenant(tenant.id);
    tracing::info!(tenant = %name, expires_ms = ?expires, "tenant token rotated");
    let tenant = tenant_named(&st, &name).await?;
    Ok(Json(api::TenantCreated { tenant: tenant_to_api(&tenant), token }))
}

async fn revoke_tenant_token(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_named(&st, &name).await?;
    // A hash no token has: the tenant is locked out until the admin rotates it a new one.
    let unusable = format!("revoked:{}", crate::auth::new_token()?);
    let store = audited(&st, "tenant.token.revoke", &name, serde_json::json!({}));
    if !store.set_token(tenant.id, &unusable, None).await? {
        return Err(ApiError::NotFound(format!("no tenant '{name}'")));
    }
    st.tenant_cache.forget_tenant(tenant.id);
    tracing::info!(tenant = %name, "tenant token revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn remove_tenant(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_named(&st, &name).await?;
    let unusable = format!("removed:{}", crate::auth::new_token()?);
    let store = audited(&st, "tenant.remove", &name, serde_json::json!({}));
    if !store.remove_tenant(tenant.id, &unusable, now_ms()).await? {
        return Err(ApiError::Conflict(format!(
            "tenant '{name}' has jobs waiting or running: cancel them first (its finished jobs stay on record)"
        )));
    }
    st.tenant_cache.forget_tenant(tenant.id);
    tracing::info!(tenant = %name, "tenant removed");
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditParams {
    #[serde(default, deserialize_with = "api::ranges::opt_int32")]
    limit: Option<u32>,
    before: Option<i64>,
}

async fn audit_log(
    State(st): State<AppState>,
    _admin: AdminCaller,
    params: Result<Query<AuditParams>, QueryRejection>,
) -> Result<Json<Vec<api::AuditEntry>>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let limit = params.limit.unwrap_or(100);
    if !(1..=api::limits::MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid("limit", format!("between 1 and {}", api::limits::MAX_PAGE)));
    }
    let entries = st.store.audit_log(i64::from(limit), params.before).await?;
    Ok(Json(
        entries
            .into_iter()
            .map(|e| api::AuditEntry {
                id: e.id,
                at_ms: e.at_ms,
                actor: e.actor,
                action: e.action,
                target: e.target,
                detail: e.detail,
            })
            .collect(),
    ))
}

/// A quota as asked for, checked to fit the store's 64-bit integers.
fn quota_of(
    gpus: Option<u32>,
    cpu_milli: Option<u64>,
    memory_mib: Option<u64>,
    max_priority: Option<i32>,
) -> Result<store::TenantQuota, ApiError> {
    let signed = |field: &str, v: Option<u64>| -> Result<Option<i64>, ApiError> {
        v.map(|v| i64::try_from(v).map_err(|_| ApiError::invalid(field, format!("at most {}", i64::MAX)))).transpose()
    };
    Ok(store::TenantQuota {
        gpus: gpus.map(i64::from),
        cpu_milli: signed("cpu_milli_quota", cpu_milli)?,
        memory_mib: signed("memory_mib_quota", memory_mib)?,
        max_priority: i64::from(max_priority.unwrap_or(0)),
    })
}

fn valid_tenant_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn create_tenant(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiJson(req): ApiJson<api::NewTenant>,
) -> Result<(StatusCode, Json<api::TenantCreated>), ApiError> {
    if !valid_tenant_name(&req.name) {
        return Err(ApiError::invalid("name", "1 to 64 letters, digits, '-' or '_'"));
    }
    let quota = quota_of(req.gpu_quota, req.cpu_milli_quota, req.memory_mib_quota, req.max_priority)?;
    let expires = token_expiry("token_ttl_s", req.token_ttl_s)?;
    let store = audited(&st, "tenant.create", &req.name, serde_json::to_value(&req).unwrap_or_default());
    let (mut tenant, token) = crate::create_tenant(&store, &req.name, quota).await?;
    if expires.is_some() {
        st.store.set_token(tenant.id, &crate::auth::hash_token(&token), expires).await?;
        tenant.token_expires_ms = expires;
    }
    tracing::info!(tenant = %tenant.name, id = tenant.id, "tenant created");
    Ok((StatusCode::CREATED, Json(api::TenantCreated { tenant: tenant_to_api(&tenant), token })))
}

async fn list_tenants(State(st): State<AppState>, caller: Caller) -> Result<Json<Vec<api::Tenant>>, ApiError> {
    match caller {
        Caller::Admin => Ok(Json(st.store.tenants().await?.iter().map(tenant_to_api).collect())),
        Caller::Tenant(t) => Ok(Json(vec![tenant_to_api(&t)])),
    }
}

async fn set_quota(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
    ApiJson(req): ApiJson<api::QuotaUpdate>,
) -> Result<Json<api::Tenant>, ApiError> {
    let tenant =
        st.store.tenant_by_name(&name).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))?;
    let quota = quota_of(req.gpu_quota, req.cpu_milli_quota, req.memory_mib_quota, req.max_priority)?;
    let store = audited(&st, "quota.set", &name, serde_json::to_value(&req).unwrap_or_default());
    let updated =
        store.set_quota(tenant.id, quota).await?.ok_or_else(|| ApiError::NotFound(format!("no tenant '{name}'")))?;
    st.tenant_cache.forget_tenant(updated.id);
    tracing::info!(
        tenant = %name,
        gpus = ?req.gpu_quota,
        cpu_milli = ?req.cpu_milli_quota,
        memory_mib = ?req.memory_mib_quota,
        "quota set"
    );
    st.tell_scheduler(crate::scheduler::SchedEvent::QuotaSet { tenant_id: updated.id, quota: updated.quota });
    Ok(Json(tenant_to_api(&updated)))
}

async fn get_quota(State(st): State<AppState>, TenantCaller(t): TenantCaller) -> Result<Json<api::Quota>, ApiError> {
    let usage = st.store.tenant_usage(t.id).await?;
    let view = tenant_to_api(&t);
    Ok(Json(api::Quota {
        tenant: t.name.clone(),
        gpu_quota: view.gpu_quota,
        gpus_used: usage.gpus_used,
        gpus_pending: usage.gpus_pending,
        cpu_milli_quota: view.cpu_milli_quota,
        cpu_milli_used: usage.cpu_milli_used,
        cpu_milli_pending: usage.cpu_milli_pending,
        memory_mib_quota: view.memory_mib_quota,
        memory_mib_used: usage.memory_mib_used,
        memory_mib_pending: usage.memory_mib_pending,
    }))
}

fn check_text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if value.len() > max {
        return Err(ApiError::invalid(field, format!("longer than {max} bytes")));
    }
    if value.chars().any(|c| c == '\0') {
        return Err(ApiError::invalid(field, "contains a NUL character"));
    }
    Ok(())
}

/// An image reference as OCI tools write it (`[host[:port]/]path[:tag][@digest]`): letters,
/// digits and `._-/:@`, starting with a letter or digit (never taken for an option).
fn check_image(image: &str) -> Result<(), ApiError> {
    const MAX_IMAGE_LEN: usize = 255;
    let valid_chars = image.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-/:@".contains(&b));
    if image.is_empty() || image.len() > MAX_IMAGE_LEN {
        return Err(ApiError::invalid("image", format!("1 to {MAX_IMAGE_LEN} characters")));
    }
    if !valid_chars || !image.starts_with(|c: char| c.is_ascii_alphanumeric()) || image.contains("..") {
        return Err(ApiError::invalid(
            "image",
            format!("'{}' is not an image reference (e.g. localhost/train:3)", image.escape_debug()),
        ));
    }
    Ok(())
}

fn valid_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 256
}

/// Checks a submission against the limits and the fleet, and shapes it for the store.
fn validate(
    st: &AppState,
    tenant: &store::Tenant,
    spec: &api::JobSpec,
    key: Option<String>,
) -> Result<store::NewJob, ApiError> {
    let fleet = &st.fleet;
    if let Some(name) = &spec.name {
        check_text("name", name, limits::MAX_NAME_LEN)?;
    }
    if let Some(command) = &spec.command {
        if command.trim().is_empty() {
            return Err(ApiError::invalid("command", "empty; leave it out for a GPU instance"));
        }
        check_text("command", command, limits::MAX_COMMAND_LEN)?;
    } else if !spec.args.is_empty() {
        return Err(ApiError::invalid("args", "a GPU instance (no command) takes no args"));
    }
    if let Some(image) = &spec.image {
        if spec.command.is_none() {
            return Err(ApiError::invalid("image", "a GPU instance (no command) takes no image"));
        }
        check_image(image)?;
    }
    if spec.args.len() > limits::MAX_ARGS {
        return Err(ApiError::invalid("args", format!("more than {} args", limits::MAX_ARGS)));
    }
    for (i, a) in spec.args.iter().enumerate() {
        check_text(&format!("args[{i}]"), a, limits::MAX_COMMAND_LEN)?;
    }
    if spec.env.len() > limits::MAX_ENV {
        return Err(ApiError::invalid("env", format!("more than {} variables", limits::MAX_ENV)));
    }
    for (k, v) in &spec.env {
        if !valid_env_name(k) {
            return Err(ApiError::invalid(&format!("env.{k}"), "not a valid variable name"));
        }
        check_text(&format!("env.{k}"), v, limits::MAX_COMMAND_LEN)?;
    }
    let max_per_node = u32::from(st.max_gpus_per_node);
    if spec.gpus_per_node > max_per_node {
        return Err(ApiError::invalid(
            "gpus_per_node",
            format!("{} GPUs on one node; the largest node has {max_per_node}", spec.gpus_per_node),
        ));
    }
    if spec.gpus_per_node == 0 && spec.command.is_none() {
        return Err(ApiError::invalid("gpus_per_node", "a GPU instance needs at least one GPU"));
    }
    if spec.nodes == 0 || spec.nodes > limits::MAX_NODES {
        return Err(ApiError::invalid("nodes", format!("between 1 and {}", limits::MAX_NODES)));
    }
    if spec.gpus_per_node == 0 && spec.nodes > 1 {
        return Err(ApiError::invalid("nodes", "CPU-only work runs on one node"));
    }
    if let Some(m) = spec.gpu_milli {
        if !(1..1000).contains(&m) {
            return Err(ApiError::invalid("gpu_milli", "a share of one GPU, 1 to 999 thousandths"));
        }
        if spec.gpus_per_node != 1 || spec.nodes != 1 {
            return Err(ApiError::invalid(
                "gpu_milli",
                "a GPU share runs on one GPU of one node (gpus_per_node 1, nodes 1)",
            ));
        }
    }
    if spec.nodes as usize > fleet.nodes.len() {
        return Err(ApiError::invalid("nodes", format!("the fleet has {} nodes", fleet.nodes.len())));
    }
    if let Some(model) = &spec.gpu_model {
        check_text("gpu_model", model, limits::MAX_NAME_LEN)?;
        let filter = model::ModelFilter::parse_list(model);
        if filter.is_any() || !fleet.gpu_models.iter().any(|m| filter.accepts(m)) {
            let known: Vec<&str> = fleet.gpu_models.iter().map(|m| m.name.as_str()).collect();
            return Err(ApiError::invalid(
                "gpu_model",
                format!("no '{model}' GPUs in the fleet (it has {})", known.join(", ")),
            ));
        }
    }
    if spec.max_runtime_s == Some(0) || spec.max_runtime_s.is_some_and(|s| s > 366 * 24 * 3600) {
        return Err(ApiError::invalid("max_runtime_s", "between 1 second and a year"));
    }
    if spec.max_restarts > limits::MAX_RESTARTS {
        return Err(ApiError::invalid("max_restarts", format!("at most {}", limits::MAX_RESTARTS)));
    }
    let (cpu_milli, memory_mib) = st.resource_defaults.resolve(spec)?;
    // Priority orders every tenant's jobs: above 0 only as far as the admin allows.
    if i64::from(spec.priority) > tenant.quota.max_priority {
        return Err(ApiError::invalid(
            "priority",
            format!(
                "{} is above this tenant's highest, {} (the admin raises it: drome quota set {} --max-priority N)",
                spec.priority, tenant.quota.max_priority, tenant.name
            ),
        ));
    }
    // A job bigger than its tenant's whole quota would wait for ever: refused now.
    let nodes = u64::from(spec.nodes.max(1));
    let asks = [
        ("gpus_per_node", "GPUs", u64::from(spec.gpus_per_node) * nodes, tenant.quota.gpus),
        ("cpu_milli", "thousandths of a CPU", cpu_milli.saturating_mul(nodes), tenant.quota.cpu_milli),
        ("memory_mib", "MiB of memory", memory_mib.saturating_mul(nodes), tenant.quota.memory_mib),
    ];
    for (field, what, total, quota) in asks {
        if let Some(quota) = quota
            && total > quota.max(0).unsigned_abs()
        {
            return Err(ApiError::invalid(
                field,
                format!("asks for {total} {what} over its nodes; the tenant's quota is {quota}"),
            ));
        }
    }
    let name = spec.name.clone().unwrap_or_else(|| match &spec.command {
        Some(c) => c.rsplit('/').next().unwrap_or(c).chars().take(limits::MAX_NAME_LEN).collect(),
        None => "instance".into(),
    });
    let args_json = serde_json::to_string(&spec.args).map_err(|e| ApiError::Internal(e.to_string()))?;
    let env_json = serde_json::to_string(&spec.env).map_err(|e| ApiError::Internal(e.to_string()))?;
    let spec_json = serde_json::to_string(spec).map_err(|e| ApiError::Internal(e.to_string()))?;
    let request_hash: String = Sha256::digest(spec_json.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let job = store::NewJob {
        tenant_id: tenant.id,
        name,
        command: spec.command.clone(),
        args_json,
        env_json,
        gpus_per_node: i64::from(spec.gpus_per_node),
        nodes: i64::from(spec.nodes),
        gpu_milli: spec.gpu_milli.map(i64::from),
        cpu_milli: i64::try_from(cpu_milli).unwrap_or(i64::MAX),
        memory_mib: i64::try_from(memory_mib).unwrap_or(i64::MAX),
        image: spec.image.clone(),
        gpu_model: spec.gpu_model.clone(),
        priority: i64::from(spec.priority),
        deferrable: spec.deferrable,
        federated: spec.federated,
        max_runtime_s: spec.max_runtime_s.map(|s| s as i64),
        restart_policy: spec.restart_policy.as_str().to_string(),
        max_restarts: i64::from(spec.max_restarts),
        idempotency_key: key,
        request_hash,
    };
    // A shape no node set of the fleet can ever hold would wait forever: refuse it now.
    {
        let mut w = request_workload(model::WorkloadId(0), job.gpus_per_node, job.nodes, job.gpu_model.as_deref());
        (w.cpu_milli, w.memory_mib) = (cpu_milli, memory_mib);
        if !st.empty_cluster.could_ever_fit(&sched::Demand::of(&w, fleet)) {
            return Err(ApiError::invalid(
                "nodes",
                format!(
                    "{} nodes with {} {} GPUs each never fit this fleet",
                    spec.nodes,
                    spec.gpus_per_node,
                    spec.gpu_model.as_deref().unwrap_or("free")
                ),
            ));
        }
    }
    Ok(job)
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else { return Ok(None) };
    let bad =
        |message: &str| ApiError::BadRequest { message: message.to_string(), field: Some("Idempotency-Key".into()) };
    let key = value.to_str().map_err(|_| bad("the Idempotency-Key header must be visible ASCII"))?.trim();
    if key.is_empty() || key.len() > limits::MAX_IDEMPOTENCY_KEY_LEN {
        return Err(bad("the Idempotency-Key header must be 1 to 128 characters"));
    }
    Ok(Some(key.to_string()))
}

async fn submit_job(
    State(st): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    headers: HeaderMap,
    ApiJson(spec): ApiJson<api::JobSpec>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let new = validate(&st, &tenant, &spec, key)?;
    st.limiter.may_queue(tenant.id)?;
    // Held until the job is written: the tenant's next submission sees it.
    let _budget = crate::budget::check(&st, &tenant, &new).await?;
    let inserted = st.store.insert_job(&new, now_ms()).await?;
    if !inserted.created && inserted.job.spec.request_hash != new.request_hash {
        return Err(ApiError::Conflict("this Idempotency-Key was used for a different request".into()));
    }
    let job = job_to_api(&inserted.job, &tenant.name, &[])?;
    if inserted.created {
        tracing::debug!(tenant = %tenant.name, job = job.id, gpus = total_gpus(&inserted.job), "job submitted");
        st.limiter.queued(tenant.id);
        st.tell_scheduler(crate::scheduler::SchedEvent::Submitted(Box::new(inserted.job)));
        st.job_changed();
        Ok((StatusCode::CREATED, Json(job)).into_response())
    } else {
        Ok((StatusCode::OK, [("idempotent-replayed", "true")], Json(job)).into_response())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    state: Option<api::JobState>,
    #[serde(default, deserialize_with = "api::ranges::opt_int32")]
    limit: Option<u32>,
    before: Option<i64>,
}

pub(crate) fn query_error(e: QueryRejection) -> ApiError {
    let message = e.body_text();
    // serde names a field in backticks; a range check's message starts with `name: `.
    let named = || {
        let rest = message.split_once("query string: ")?.1;
        let (name, _) = rest.split_once(": ")?;
        name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_').then(|| name.to_string())
    };
    let field = message.split('`').nth(1).map(str::to_string).or_else(named).unwrap_or_else(|| "query".into());
    ApiError::Invalid { field, message }
}

async fn list_jobs(
    State(st): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<api::JobList>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > limits::MAX_PAGE {
        return Err(ApiError::invalid("limit", format!("between 1 and {}", limits::MAX_PAGE)));
    }
    let filter =
        JobFilter { state: params.state.map(state_from_api), before_id: params.before, limit: i64::from(limit) };
    let rows = st.store.jobs(tenant.id, &filter).await?;
    let jobs = rows.iter().map(|j| job_to_api(j, &tenant.name, &[])).collect::<Result<Vec<_>, _>>()?;
    let next_before = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(Json(api::JobList { jobs, next_before }))
}

/// Job ids in paths: anything that is not one of the tenant's jobs is simply not found.
async fn tenant_job(st: &AppState, tenant: &store::Tenant, id: &str) -> Result<store::Job, ApiError> {
    let not_found = || ApiError::NotFound(format!("no job {id}"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    st.store.job(tenant.id, id).await?.ok_or_else(not_found)
}

async fn get_job(
    State(st): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    PathSegment(id): PathSegment,
) -> Result<Json<api::Job>, ApiError> {
    let job = tenant_job(&st, &tenant, &id).await?;
    let history = st.store.history(job.id).await?;
    Ok(Json(job_to_api(&job, &tenant.name, &history)?))
}

async fn cancel_job(
    State(st): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    PathSegment(id): PathSegment,
) -> Result<Json<api::Job>, ApiError> {
    let job = tenant_job(&st, &tenant, &id).await?;
    if !job.state.is_terminal() {
        let message = if job.spec.command.is_none() { "released by the tenant" } else { "cancelled by the tenant" };
        // A job that may have processes on its nodes finishes once they are gone (the scheduler
        // records it); one that never ran finishes now. One of the two steps applies.
        let cancel = |from: Vec<JobState>, finished: bool| store::Transition {
            job_id: job.id,
            from,
            to: JobState::Cancelled,
            change: Change { finished, message: Some(message.into()), ..Default::default() },
        };
        let steps = [
            cancel(vec![JobState::Assigned, JobState::Preempted], false),
            cancel(vec![JobState::Pending, JobState::Scheduled], true),
        ];
        if st.store.transitions(&steps, now_ms()).await?.contains(&true) {
            tracing::info!(tenant = %tenant.name, job = job.id, "job cancelled");
            st.tell_scheduler(crate::scheduler::SchedEvent::Cancelled(job.id));
            st.job_changed();
        }
    }
    let job = st.store.job(tenant.id, job.id).await?.ok_or_else(|| ApiError::NotFound(format!("no job {id}")))?;
    let history = st.store.history(job.id).await?;
    Ok(Json(job_to_api(&job, &tenant.name, &history)?))
}

fn gpus_used(st: &AppState) -> Vec<u32> {
    let snap = st.snapshot.read().unwrap_or_else(|e| e.into_inner());
    snap.node_gpus_used.clone()
}

/// GPUs asked for by the jobs in the scheduler's queue, a share of one GPU as its fraction.
fn gpus_pending(st: &AppState) -> f64 {
    let snap = st.snapshot.read().unwrap_or_else(|e| e.into_inner());
    snap.gpus_pending_milli as f64 / 1000.0
}

async fn list_nodes(State(st): State<AppState>, _caller: Caller) -> Json<Vec<api::Node>> {
    Json(nodes(&st))
}

fn nodes(st: &AppState) -> Vec<api::Node> {
    let used = gpus_used(st);
    let (power, caps, cpu_caps, problems, drained) = match &st.remote {
        Some(r) => (r.power(), r.applied_caps(), r.applied_cpu_caps(), r.problems(), r.drained()),
        None => Default::default(),
    };
    // One look at the leases for the whole fleet, not one per node.
    let live: Option<std::collections::HashSet<String>> =
        st.remote.as_ref().map(|r| r.live_nodes().into_iter().collect());
    let fleet = &st.fleet;
    fleet
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let gpus = u32::from(n.gpu_count);
            let used = used.get(i).copied().unwrap_or(0).min(gpus);
            api::Node {
                name: n.name.clone(),
                site: fleet.sites[n.site.index()].name.clone(),
                hall: fleet.halls[n.hall.index()].name.clone(),
                rack: fleet.racks[n.rack.index()].name.clone(),
                gpu_model: n.gpu_model.map(|m| fleet.gpu_model(m).name.clone()),
                gpus,
                gpus_free: gpus - used,
                gpus_used: used,
                power_watts: power.get(&n.name).copied(),
                gpu_power_cap_watts: caps.get(&n.name).copied(),
                cpu_power_cap_watts: cpu_caps.get(&n.name).copied(),
                problem: problems.get(&n.name).cloned(),
                drained: drained.get(&n.name).cloned(),
                agent: live.as_ref().map(|l| l.contains(&n.name)),
            }
        })
        .collect()
}

/// The settings key that marks a node drained, its value the reason.
pub(crate) const DRAINED_PREFIX: &str = "drained/";
/// The settings key that marks a node removed from service.
pub(crate) const REMOVED_PREFIX: &str = "removed/";

/// The node `name` of a server with agents, or why there is none.
fn agent_node<'a>(st: &'a AppState, name: &str) -> Result<&'a crate::agents::RemoteNodes, ApiError> {
    if !st.node_ids.contains_key(name) {
        return Err(ApiError::NotFound(format!("no node '{name}' in the fleet")));
    }
    st.remote.as_ref().ok_or_else(|| ApiError::NotFound("this server runs its nodes in process: no agents".into()))
}

fn node_view(st: &AppState, name: &str) -> Result<Json<api::Node>, ApiError> {
    nodes(st).into_iter().find(|n| n.name == name).map(Json).ok_or_else(|| ApiError::NotFound(name.to_string()))
}

async fn drain_node(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
    body: axum::body::Bytes,
) -> Result<Json<api::Node>, ApiError> {
    let remote = agent_node(&st, &name)?;
    // The body may be left out.
    let drain: api::Drain =
        if body.iter().all(u8::is_ascii_whitespace) { api::Drain::default() } else { crate::json::parse(&body)? };
    let reason = drain.reason.unwrap_or_else(|| "drained by the admin".into());
    check_text("reason", &reason, limits::MAX_NAME_LEN * 2)?;
    if reason.chars().any(char::is_control) {
        return Err(ApiError::invalid("reason", "contains control characters"));
    }
    let store = audited(&st, "node.drain", &name, serde_json::json!({"reason": reason}));
    store.set_setting(&format!("{DRAINED_PREFIX}{name}"), &reason).await?;
    remote.set_drained(&name, Some(reason.clone()));
    tracing::info!(node = %name, reason = ?reason, "node drained");
    node_view(&st, &name)
}

async fn resume_node(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
) -> Result<Json<api::Node>, ApiError> {
    let remote = agent_node(&st, &name)?;
    st.store.delete_setting(&format!("{REMOVED_PREFIX}{name}")).await?;
    // A removed node was drained first: the drain's end is the resume, recorded with it.
    audited(&st, "node.resume", &name, serde_json::json!({}))
        .delete_setting(&format!("{DRAINED_PREFIX}{name}"))
        .await?;
    remote.set_drained(&name, None);
    tracing::info!(node = %name, "node resumed");
    node_view(&st, &name)
}

async fn remove_node(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
) -> Result<Json<api::Node>, ApiError> {
    let remote = agent_node(&st, &name)?;
    if !remote.drained().contains_key(&name) {
        return Err(ApiError::Conflict(format!(
            "node {name} is not drained: drain it first (drome nodes drain {name})"
        )));
    }
    if let Some(runs) = remote.runs_on(&name).filter(|&r| r > 0) {
        return Err(ApiError::Conflict(format!(
            "node {name} still holds {runs} runs: cancel them or wait for their end"
        )));
    }
    // Stored first: a server that restarts in between still keeps the node out.
    let store = audited(&st, "node.remove", &name, serde_json::json!({}));
    store.set_setting(&format!("{REMOVED_PREFIX}{name}"), "removed by the admin").await?;
    st.store.remove_agent_node(&name).await?;
    let runs = remote.remove(&name);
    if runs > 0 {
        // Nothing new goes to a drained node; a run that got there meanwhile ends as lost.
        tracing::warn!(node = %name, runs, "node removed while it held runs");
    }
    tracing::info!(node = %name, "node removed: its credential is revoked");
    node_view(&st, &name)
}

/// The settings key of a site's GPU power cap.
pub(crate) fn cap_key(site: &str) -> String {
    format!("gpu_power_cap_watts/{site}")
}

fn sites(st: &AppState) -> Vec<api::Site> {
    let used = gpus_used(st);
    let pending = gpus_pending(st);
    let power = st.remote.as_ref().map(|r| r.power()).unwrap_or_default();
    let caps = st.site_caps.read().unwrap_or_else(|e| e.into_inner()).clone();
    let fleet = &st.fleet;
    let mut sites: Vec<api::Site> = fleet
        .sites
        .iter()
        .map(|s| api::Site {
            name: s.name.clone(),
            cooling: s.cooling.as_str().to_string(),
            region: s.env.region.clone(),
            nodes: 0,
            gpus: 0,
            gpus_free: 0,
            gpus_used: 0,
            power_watts: 0.0,
            power_reporting_nodes: 0,
            gpu_power_cap_watts: caps.get(&s.name).copied(),
            power_nameplate_watts: 0.0,
            power_cap_watts: s.grid_power_cap_watts,
            // One queue for every site of this server: each reports all of it.
            gpus_pending: pending,
            gpu_models: Vec::new(),
            price_eur_per_mwh: None,
            co2_g_per_kwh: None,
            outdoor_celsius: None,
            heat_demand_watts: None,
            heat_supplied_watts: None,
        })
        .collect();
    for (i, n) in fleet.nodes.iter().enumerate() {
        let Some(site) = sites.get_mut(n.site.index()) else { continue };
        let gpus = u32::from(n.gpu_count);
        let u = used.get(i).copied().unwrap_or(0).min(gpus);
        let board = fleet.node_gpu_model(model::NodeId(i as u32)).map(|m| m.board_power_watts).unwrap_or(0.0);
        site.nodes += 1;
        site.gpus += u64::from(gpus);
        site.gpus_used += u64::from(u);
        site.gpus_free += u64::from(gpus - u);
        match power.get(&n.name) {
            Some(w) => {
                site.power_watts += w;
                site.power_reporting_nodes += 1;
            }
            None => site.power_watts += board * f64::from(u),
        }
        site.power_nameplate_watts += board * f64::from(gpus);
        if let Some(model) = n.gpu_model.filter(|_| gpus > 0) {
            let name = &fleet.gpu_model(model).name;
            let at = match site.gpu_models.iter().position(|m| &m.model == name) {
                Some(at) => at,
                None => {
                    site.gpu_models.push(api::SiteGpuModel {
                        model: name.clone(),
                        nodes: 0,
                        gpus: 0,
                        gpus_per_node_max: 0,
                        gpus_free: 0,
                    });
                    site.gpu_models.len() - 1
                }
            };
            let m = &mut site.gpu_models[at];
            m.nodes += 1;
            m.gpus += u64::from(gpus);
            m.gpus_per_node_max = m.gpus_per_node_max.max(gpus);
            m.gpus_free += u64::from(gpus - u);
        }
    }
    let hour = crate::hour_of_year(crate::now_ms());
    for (i, site) in sites.iter_mut().enumerate() {
        site.gpu_models.sort_by(|a, b| a.model.cmp(&b.model));
        if let Some(f) = st.site_years.facts(fleet, i, hour) {
            site.price_eur_per_mwh = Some(f.price_eur_per_mwh);
            site.co2_g_per_kwh = Some(f.co2_g_per_kwh);
            site.outdoor_celsius = Some(f.outdoor_celsius);
            site.heat_demand_watts = f.heat_demand_watts;
            // The GPUs' draw is the heat the site has to give.
            site.heat_supplied_watts = f.heat_supplied_watts(site.power_watts);
        }
    }
    sites
}

/// The leader's lease as stored, and whether this server holds it.
async fn cluster(State(st): State<AppState>, _caller: Caller) -> Result<Json<api::ClusterStatus>, ApiError> {
    let lease = st.store.lease().await?;
    let database = database_name(st.store.backend());
    // The lease is taken a moment before the replica has read the store and leads: it leads
    // once its router is the leader's.
    let now = crate::now_ms();
    let leads = st.role == crate::replicas::Role::Leader
        && lease.as_ref().is_some_and(|l| l.holder == *st.replica && l.expires_ms > now);
    let term_ms = i64::try_from(st.leader_lease.as_millis()).unwrap_or(i64::MAX);
    let holder = lease.as_ref().filter(|l| l.expires_ms > now).map(|l| l.holder.as_str());
    let replicas = st
        .store
        .replicas(now.saturating_sub(term_ms.saturating_mul(3)))
        .await?
        .into_iter()
        .map(|r| api::Replica {
            leads: holder == Some(r.name.as_str()),
            name: r.name,
            address: r.address,
            started_ms: r.started_ms,
            seen_ms: r.seen_ms,
        })
        .collect();
    Ok(Json(api::ClusterStatus {
        replica: st.replica.to_string(),
        leads,
        leader: lease.map(|l| api::Leader {
            replica: l.holder,
            epoch: l.epoch,
            since_ms: l.acquired_ms,
            renewed_ms: l.renewed_ms,
            expires_ms: l.expires_ms,
            address: l.address,
        }),
        replicas,
        database: database.into(),
    }))
}

async fn list_sites(State(st): State<AppState>, _caller: Caller) -> Json<Vec<api::Site>> {
    Json(sites(&st))
}

async fn set_gpu_power_cap(
    State(st): State<AppState>,
    _admin: AdminCaller,
    PathSegment(name): PathSegment,
    ApiJson(body): ApiJson<api::GpuPowerCap>,
) -> Result<Json<api::Site>, ApiError> {
    let Some(site) = st.fleet.sites.iter().position(|s| s.name == name) else {
        return Err(ApiError::NotFound(format!("no site '{name}'")));
    };
    let Some(remote) = &st.remote else {
        return Err(ApiError::NotFound("this server runs its nodes in process: no agent applies caps".into()));
    };
    if let Some(w) = body.gpu_power_cap_watts
        && !(w.is_finite() && w > 0.0 && w <= 5000.0)
    {
        return Err(ApiError::invalid("gpu_power_cap_watts", "watts per GPU, above 0 and at most 5000"));
    }
    let value = body.gpu_power_cap_watts.map(|w| w.to_string()).unwrap_or_default();
    let store = audited(&st, "site.gpu_power_cap", &name, serde_json::json!({"watts": body.gpu_power_cap_watts}));
    store.set_setting(&cap_key(&name), &value).await?;
    let nodes: Vec<String> = st.fleet.nodes.iter().filter(|n| n.site.index() == site).map(|n| n.name.clone()).collect();
    if !st.dynamic_caps {
        remote.set_gpu_power_cap(&nodes, body.gpu_power_cap_watts);
    }
    {
        let mut caps = st.site_caps.write().unwrap_or_else(|e| e.into_inner());
        match body.gpu_power_cap_watts {
            Some(w) => caps.insert(name.clone(), w),
            None => caps.remove(&name),
        };
    }
    // In the dynamic mode the scheduler asks for the lower of this cap and its own.
    st.wake.notify_one();
    tracing::info!(site = %name, watts = ?body.gpu_power_cap_watts, nodes = nodes.len(), "gpu power cap set");
    let site = sites(&st).into_iter().find(|s| s.name == name);
    site.map(Json).ok_or(ApiError::NotFound(name))
}

/// The longest federation lease a renewal gives: a federation endpoint renews well within it.
const MAX_FEDERATION_LEASE_MS: u64 = 600_000;

async fn get_federation_lease(
    State(st): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<api::FederationLeaseState>, ApiError> {
    let stored = st.store.setting(crate::scheduler::FEDERATION_LEASE_KEY).await?;
    // Unreadable counts as none, as the scheduler reads it.
    let until_ms = stored.and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(Json(api::FederationLeaseState { until_ms, waiting_for_grant: waiting_for_grant(&st, &[]) }))
}

/// The federated jobs the scheduler last held back for want of a grant, less those just
/// `granted` (the answer may lag the scheduler by a round).
fn waiting_for_grant(st: &AppState, granted: &[i64]) -> Vec<i64> {
    let snap = st.snapshot.read().unwrap_or_else(|e| e.into_inner());
    if granted.is_empty() {
        return snap.waiting_for_grant.clone();
    }
    let granted: HashSet<i64> = granted.iter().copied().collect();
    snap.waiting_for_grant.iter().copied().filter(|id| !granted.contains(id)).collect()
}

/// Renews the federation lease from this server's clock, so the federation's clock never
/// matters: it must only count the lease from before it sent the renewal.
async fn set_federation_lease(
    State(st): State<AppState>,
    _admin: AdminCaller,
    ApiJson(body): ApiJson<api::FederationLease>,
) -> Result<Json<api::FederationLeaseState>, ApiError> {
    if !(1..=MAX_FEDERATION_LEASE_MS).contains(&body.lease_ms) {
        return Err(ApiError::invalid("lease_ms", format!("between 1 and {MAX_FEDERATION_LEASE_MS} milliseconds")));
    }
    if body.grant.len() > crate::scheduler::MAX_GRANT_IDS {
        return Err(ApiError::invalid("grant", format!("at most {} job ids a call", crate::scheduler::MAX_GRANT_IDS)));
    }
    let now = now_ms();
    let until_ms = now.saturating_add(body.lease_ms as i64);
    // A lease taken anew is the admin's act, kept in the audit log; its renewals, every few
    // seconds while it holds, are not.
    let held = st.store.setting(crate::scheduler::FEDERATION_LEASE_KEY).await?.and_then(|v| v.parse::<i64>().ok());
    let store = if held.is_some_and(|until| until > now) {
        st.store.clone()
    } else {
        audited(&st, "federation.lease", "federation", serde_json::json!({"lease_ms": body.lease_ms}))
    };
    // The lease's length before its end: a lapse for as long again then counts from the new end.
    let lease_ms = body.lease_ms as i64;
    let known_ms = st.store.setting(crate::scheduler::FEDERATION_LEASE_MS_KEY).await?;
    if known_ms.and_then(|v| v.parse::<i64>().ok()) != Some(lease_ms) {
        st.store.set_setting(crate::scheduler::FEDERATION_LEASE_MS_KEY, &lease_ms.to_string()).await?;
    }
    store.set_setting(crate::scheduler::FEDERATION_LEASE_KEY, &until_ms.to_string()).await?;
    let waiting_for_grant = waiting_for_grant(&st, &body.grant);
    tracing::debug!(lease_ms, until_ms, grants = body.grant.len(), "federation lease renewed");
    // The event wakes the scheduler: granted jobs start in its next round.
    st.tell_scheduler(crate::scheduler::SchedEvent::FederationLease { until_ms, lease_ms, grant: body.grant });
    Ok(Json(api::FederationLeaseState { until_ms, waiting_for_grant }))
}

#[derive(Deserialize)]
struct EventParams {
    after: Option<i64>,
}

struct EventCursor {
    st: AppState,
    tenant_id: i64,
    after: i64,
    buffer: VecDeque<store::JobEvent>,
    changes: tokio::sync::watch::Receiver<u64>,
    /// Its place among the tenant's open streams, given back when the stream ends.
    _open: crate::limits::StreamGuard,
}

async fn next_event(mut c: EventCursor) -> Option<(Result<SseEvent, Infallible>, EventCursor)> {
    loop {
        if let Some(e) = c.buffer.pop_front() {
            c.after = e.id;
            let data = serde_json::to_string(&event_to_api(&e)).unwrap_or_default();
            return Some((Ok(SseEvent::default().id(e.id.to_string()).event("job").data(data)), c));
        }
        c.changes.mark_unchanged();
        match c.st.store.events_after(c.tenant_id, c.after, 100).await {
            Ok(events) if !events.is_empty() => c.buffer.extend(events),
            Ok(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), c.changes.changed()).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "event stream: store read failed");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn events(
    State(st): State<AppState>,
    TenantCaller(tenant): TenantCaller,
    headers: HeaderMap,
    params: Result<Query<EventParams>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let Query(params) = params.map_err(query_error)?;
    let open = st.limiter.open_stream(tenant.id)?;
    let from_header = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let after = match from_header.or(params.after) {
        Some(a) => a,
        None => st.store.last_event_id(tenant.id).await?,
    };
    let cursor = EventCursor {
        changes: st.events.subscribe(),
        st,
        tenant_id: tenant.id,
        after,
        buffer: VecDeque::new(),
        _open: open,
    };
    // A comment line every 5 s: a client gone is noticed then, and its stream's place given back.
    Ok(Sse::new(futures_util::stream::unfold(cursor, next_event))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(5))))
}
