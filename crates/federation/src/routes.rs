//! The federation's `/v1` API: the routes of a site's API a tenant needs to submit, follow and
//! cancel jobs, and the admin's tenants; answers in the same types, each job with its site and
//! why.

use crate::site::SiteError;
use crate::{Federation, FederationError, now_ms};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::TryRngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use store::{FED_FORWARDING, FedInserted, NewFedJob};

type Fed = State<Arc<Federation>>;

/// An answer that is not a success, in the API's error body.
pub(crate) struct Failure {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
}

impl Failure {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Failure {
        Failure { status, code, message: message.into(), field: None }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = api::ErrorBody {
            error: api::ErrorDetail { code: self.code.to_string(), message: self.message, field: self.field },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<store::StoreError> for Failure {
    fn from(e: store::StoreError) -> Failure {
        match e {
            store::StoreError::Conflict { .. } => Failure::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            e => {
                tracing::error!(error = %e, "federation store failed");
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("the federation's store: {e}"))
            }
        }
    }
}

impl From<FederationError> for Failure {
    fn from(e: FederationError) -> Failure {
        match e {
            FederationError::Store(e) => e.into(),
            FederationError::Site(e) => e.into(),
        }
    }
}

impl From<SiteError> for Failure {
    fn from(e: SiteError) -> Failure {
        match e {
            SiteError::Unreachable { .. } => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e.to_string())
            }
            SiteError::Refused { status, body, message, .. } => {
                let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
                match body {
                    Some(b) => Failure {
                        status,
                        code: static_code(&b.error.code),
                        message: b.error.message,
                        field: b.error.field,
                    },
                    None => Failure::new(status, "invalid_field", message),
                }
            }
        }
    }
}

/// The API's error codes are few and fixed: a site's is mapped onto one of them.
fn static_code(code: &str) -> &'static str {
    const CODES: [&str; 11] = [
        "unauthorized",
        "forbidden",
        "not_found",
        "invalid_json",
        "invalid_field",
        "too_large",
        "conflict",
        "unavailable",
        "rate_limited",
        "internal",
        "timeout",
    ];
    CODES.iter().find(|c| **c == code).copied().unwrap_or("invalid_field")
}

fn bearer(headers: &HeaderMap) -> Result<&str, Failure> {
    let unauthorized = || Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "a bearer token is needed");
    let value = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or_else(unauthorized)?;
    value.strip_prefix("Bearer ").map(str::trim).filter(|t| !t.is_empty()).ok_or_else(unauthorized)
}

fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Equal in time whatever the first difference: a token is not guessed byte by byte.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn admin(fed: &Federation, headers: &HeaderMap) -> Result<(), Failure> {
    let token = bearer(headers)?;
    if same(token, &fed.options.admin_token) {
        Ok(())
    } else {
        Err(Failure::new(StatusCode::FORBIDDEN, "forbidden", "this needs the admin's token"))
    }
}

async fn tenant(fed: &Federation, headers: &HeaderMap) -> Result<store::Tenant, Failure> {
    let token = bearer(headers)?;
    if same(token, &fed.options.admin_token) {
        return Err(Failure::new(StatusCode::FORBIDDEN, "forbidden", "the admin has no jobs: use a tenant's token"));
    }
    fed.tenant_by_hash(&hash_token(token))
        .await?
        .ok_or_else(|| Failure::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown token"))
}

/// The admin or a tenant: anyone else is turned away.
async fn caller(fed: &Federation, headers: &HeaderMap) -> Result<(), Failure> {
    if admin(fed, headers).is_ok() {
        return Ok(());
    }
    tenant(fed, headers).await.map(|_| ())
}

pub fn router(fed: Arc<Federation>) -> axum::Router {
    let v1 = axum::Router::new()
        .route("/tenants", post(create_tenant).get(list_tenants))
        .route("/jobs", post(submit).get(list_jobs))
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/sites", get(sites))
        .route("/federation/sites", get(federation_sites));
    axum::Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(health))
        .fallback(|| async { Failure::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .with_state(fed)
}

async fn health(State(fed): Fed) -> Response {
    match fed.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok"}))).into_response(),
        Err(e) => Failure::from(e).into_response(),
    }
}

fn tenant_to_api(t: &store::Tenant) -> api::Tenant {
    api::Tenant {
        id: t.id,
        name: t.name.clone(),
        gpu_quota: None,
        cpu_milli_quota: None,
        memory_mib_quota: None,
        created_at_ms: t.created_ms,
        max_priority: 0,
        token_expires_at_ms: None,
    }
}

async fn create_tenant(State(fed): Fed, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    admin(&fed, &headers)?;
    let new: api::NewTenant = parse_body(&body)?;
    let valid = !new.name.is_empty()
        && new.name.len() <= 64
        && new.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        let mut f =
            Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", "1 to 64 of a-z, A-Z, 0-9, - and _");
        f.field = Some("name".into());
        return Err(f);
    }
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("no randomness: {e}")))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let created =
        fed.store.create_tenant(&new.name, &hash_token(&token), store::TenantQuota::default(), now_ms()).await?;
    tracing::info!(tenant = %created.name, "federation tenant created");
    let body = api::TenantCreated { tenant: tenant_to_api(&created), token };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn list_tenants(State(fed): Fed, headers: HeaderMap) -> Result<Json<Vec<api::Tenant>>, Failure> {
    admin(&fed, &headers)?;
    let tenants = fed.store.tenants().await?;
    Ok(Json(tenants.iter().filter(|t| t.removed_ms.is_none()).map(tenant_to_api).collect()))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body).map_err(|e| {
        let mut f = Failure::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the request body: {e}"));
        f.field = e.to_string().split('`').nth(1).map(str::to_string);
        f
    })
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, Failure> {
    let Some(v) = headers.get("idempotency-key") else { return Ok(None) };
    let key = v.to_str().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > 128 {
        let mut f = Failure::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the Idempotency-Key header: 1 to 128 visible ASCII characters",
        );
        f.field = Some("Idempotency-Key".into());
        return Err(f);
    }
    Ok(Some(key.to_string()))
}

/// `POST /v1/jobs`: the job is recorded with its site and why, then forwarded. 201 once the
/// site took it; 202 when the site did not answer (recorded: it is sent as soon as a site
/// answers); the site's own refusal (a bad job) is the answer, and nothing is kept.
async fn submit(State(fed): Fed, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, Failure> {
    let tenant = tenant(&fed, &headers).await?;
    let key = idempotency_key(&headers)?;
    let mut spec: api::JobSpec = parse_body(&body)?;
    spec.federated = false; // the federation's own mark, set when it forwards
    if let Some(d) = &spec.dataset {
        let field = |name: &str, message: String| {
            let mut f = Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
            f.field = Some(name.to_string());
            f
        };
        if fed.site(&d.site).is_none() {
            return Err(field("dataset.site", format!("no site '{}' in this federation", d.site)));
        }
        if !(d.size_gb.is_finite() && (0.0..=1e9).contains(&d.size_gb)) {
            return Err(field("dataset.size_gb", "between 0 and 10^9 GB".into()));
        }
    }
    let spec_json = serde_json::to_string(&spec)
        .map_err(|e| Failure::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    let request_hash: String = Sha256::digest(spec_json.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let (site, reason) = fed.choose(&tenant.name, &spec, None).map_err(|e| {
        let status = match e {
            dispatch::Refusal::NoSite(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        };
        Failure::new(
            status,
            if status == StatusCode::SERVICE_UNAVAILABLE { "unavailable" } else { "invalid_field" },
            e.to_string(),
        )
    })?;
    let new = NewFedJob {
        tenant_id: tenant.id,
        name: spec.name.clone().unwrap_or_else(|| "job".into()),
        spec_json,
        idempotency_key: key,
        request_hash,
        site,
        reason,
    };
    let job = match fed.record(new).await {
        crate::Recorded::Done(inserted) => match *inserted {
            FedInserted::New(j) => j,
            FedInserted::Existing(j) => {
                let at_site = live(&fed, &j, &tenant).await;
                let body = Json(fed.to_api(&j, &tenant.name, at_site));
                return Ok((StatusCode::OK, [("idempotent-replayed", "true")], body).into_response());
            }
        },
        crate::Recorded::Conflict => {
            return Err(Failure::new(
                StatusCode::CONFLICT,
                "conflict",
                "this Idempotency-Key was used for a different request",
            ));
        }
        crate::Recorded::Failed(why) => {
            tracing::error!(error = %why, "job not recorded");
            return Err(Failure::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("not recorded: {why}")));
        }
    };
    let reachable = fed.view(&job.site).is_some_and(|v| v.reachable && !v.lost);
    if !reachable {
        return Ok((StatusCode::ACCEPTED, Json(fed.to_api(&job, &tenant.name, None))).into_response());
    }
    match fed.forward(&job, &tenant.name).await {
        Ok(taken) => {
            let mut job = job;
            job.site_job_id = Some(taken.id);
            job.state = taken.state.as_str().to_string();
            Ok((StatusCode::CREATED, Json(fed.to_api(&job, &tenant.name, Some(taken)))).into_response())
        }
        Err(FederationError::Site(e @ SiteError::Refused { .. })) => {
            // The site's validation: the job was never acknowledged, it is not kept.
            fed.store.fed_forget(job.id).await?;
            Err(e.into())
        }
        Err(e) => {
            tracing::debug!(job = job.id, error = %e, "job recorded, not yet forwarded");
            Ok((StatusCode::ACCEPTED, Json(fed.to_api(&job, &tenant.name, None))).into_response())
        }
    }
}

/// The site's own answer for a job, when its site answers.
async fn live(fed: &Federation, job: &store::FedJob, tenant: &store::Tenant) -> Option<api::Job> {
    let site_id = job.site_job_id?;
    let site = fed.site(&job.site)?;
    if !site.view.read().unwrap_or_else(|e| e.into_inner()).reachable {
        return None;
    }
    let token = fed.site_token(site, tenant.id, &tenant.name).await.ok()?;
    site.client.job(&token, site_id).await.ok()
}

#[derive(Deserialize)]
struct ListParams {
    state: Option<api::JobState>,
    limit: Option<u32>,
    before: Option<i64>,
}

async fn list_jobs(
    State(fed): Fed,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::JobList>, Failure> {
    let tenant = tenant(&fed, &headers).await?;
    let Query(params) =
        params.map_err(|e| Failure::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", e.body_text()))?;
    let limit = params.limit.unwrap_or(100);
    if limit == 0 || limit > api::limits::MAX_PAGE {
        let mut f = Failure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("between 1 and {}", api::limits::MAX_PAGE),
        );
        f.field = Some("limit".into());
        return Err(f);
    }
    let rows = fed.store.fed_jobs(tenant.id, params.state.map(|s| s.as_str()), params.before, i64::from(limit)).await?;
    let jobs: Vec<api::Job> = rows.iter().map(|j| fed.to_api(j, &tenant.name, None)).collect();
    let next_before = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id)).flatten();
    Ok(Json(api::JobList { jobs, next_before }))
}

async fn find(fed: &Federation, tenant: &store::Tenant, id: &str) -> Result<store::FedJob, Failure> {
    let not_found = || Failure::new(StatusCode::NOT_FOUND, "not_found", format!("no job {id}"));
    let id: i64 = id.parse().map_err(|_| not_found())?;
    fed.store.fed_job(tenant.id, id).await?.ok_or_else(not_found)
}

async fn get_job(State(fed): Fed, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<api::Job>, Failure> {
    let tenant = tenant(&fed, &headers).await?;
    let job = find(&fed, &tenant, &id).await?;
    let at_site = live(&fed, &job, &tenant).await;
    Ok(Json(fed.to_api(&job, &tenant.name, at_site)))
}

async fn cancel(State(fed): Fed, headers: HeaderMap, Path(id): Path<String>) -> Result<Json<api::Job>, Failure> {
    let tenant = tenant(&fed, &headers).await?;
    let job = find(&fed, &tenant, &id).await?;
    if job.state == FED_FORWARDING {
        let update = store::FedStateUpdate {
            id: job.id,
            state: "cancelled".into(),
            message: Some("cancelled before any site took it".into()),
        };
        fed.store.fed_set_states(&[update], now_ms()).await?;
        let job = find(&fed, &tenant, &id).await?;
        return Ok(Json(fed.to_api(&job, &tenant.name, None)));
    }
    let (Some(site_id), Some(site)) = (job.site_job_id, fed.site(&job.site)) else {
        return Ok(Json(fed.to_api(&job, &tenant.name, None)));
    };
    let token = fed.site_token(site, tenant.id, &tenant.name).await?;
    let answer = site.client.cancel(&token, site_id).await?;
    let update =
        store::FedStateUpdate { id: job.id, state: answer.state.as_str().into(), message: answer.message.clone() };
    fed.store.fed_set_states(&[update], now_ms()).await?;
    Ok(Json(fed.to_api(&job, &tenant.name, Some(answer))))
}

/// Every site's own report, as the sites last gave it.
async fn sites(State(fed): Fed, headers: HeaderMap) -> Result<Json<Vec<api::Site>>, Failure> {
    caller(&fed, &headers).await?;
    let mut out = Vec::new();
    for s in &fed.sites {
        let v = s.view.read().unwrap_or_else(|e| e.into_inner());
        out.extend(v.reports.iter().cloned());
    }
    Ok(Json(out))
}

async fn federation_sites(State(fed): Fed, headers: HeaderMap) -> Result<Json<Vec<api::FederationSite>>, Failure> {
    caller(&fed, &headers).await?;
    let mut out = Vec::new();
    for s in &fed.sites {
        let active = fed
            .store
            .fed_jobs_at(&s.config.name, &[FED_FORWARDING, "pending", "scheduled", "running", "preempted"])
            .await?
            .len() as u64;
        let v = s.view.read().unwrap_or_else(|e| e.into_inner()).clone();
        out.push(api::FederationSite {
            name: s.config.name.clone(),
            url: s.config.url.clone(),
            region: s.config.region.clone().or_else(|| v.reports.iter().find_map(|r| r.region.clone())),
            reachable: v.reachable,
            lost: v.lost,
            last_answer_ms: v.last_answer_ms,
            gpus: v.reports.iter().map(|r| r.gpus).sum(),
            gpus_free: v.reports.iter().map(|r| r.gpus_free).sum(),
            gpus_pending: v.reports.first().map_or(0.0, |r| r.gpus_pending),
            active_jobs: active,
        });
    }
    Ok(Json(out))
}
