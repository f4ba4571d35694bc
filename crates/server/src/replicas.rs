//! Replicas that serve the API beside the leader. Every replica reads the store and writes to it
//! what tenants and admins ask (submissions, cancels, tenants, quotas, join tokens); only the
//! leader schedules and talks to agents. What the leader must act on reaches it as a notice sent
//! in the write's own transaction ([`store::Notice`]); what only the leader knows (its agents'
//! live figures, job output, GPU power caps) a replica forwards to it, at the address the
//! lease holds; agents asking a replica that does not lead are told to try another server.

use crate::error::ApiError;
use crate::scheduler::{SchedEvent, SchedEvents};
use crate::{AppState, now_ms};
use axum::body::Body;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store::{JobState, Notice, Store};
use tokio::sync::watch;

/// Whether this replica schedules, or only serves the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Leader,
    Standby,
}

/// The scheduler's inbox once this replica leads: notices of other replicas' writes go there.
pub(crate) type LeaderLink = Arc<Mutex<Option<SchedEvents>>>;

/// Marks a request a replica forwarded, so that it is never forwarded again.
const FORWARDED: &str = "x-drome-forwarded";
/// The longest a forwarded request waits for the leader's answer (a log request waits for a
/// node's heartbeat).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

fn bump(events: &watch::Sender<u64>) {
    events.send_modify(|n| *n = n.wrapping_add(1));
}

/// Follows the other replicas' notices, for as long as the process runs: they wake this
/// replica's event streams, make it forget the tokens of a tenant whose token changed, and once it leads (`link` set) they tell its scheduler what other
/// replicas stored, cancelled or set. A notice lost with the connection makes the leader read
/// the store again.
pub(crate) async fn follow_notices(
    mut listener: store::Listener,
    store: Store,
    events: watch::Sender<u64>,
    link: LeaderLink,
    tenant_cache: Arc<crate::auth::TenantCache>,
) {
    loop {
        let notice = match listener.next().await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot receive the replicas' notices; listening again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                Notice::Missed
            }
        };
        // A token revoked on any replica is refused on this one from now on.
        match notice {
            Notice::TokensChanged(tenant_id) => tenant_cache.forget_tenant(tenant_id),
            Notice::Missed => tenant_cache.forget_all(),
            _ => {}
        }
        let scheduler = link.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(scheduler) = scheduler else {
            bump(&events);
            continue;
        };
        let tell = |event: SchedEvent| {
            let _ = scheduler.send(event);
        };
        match notice {
            // The leader announced it itself, or a deposed leader did: its streams know already.
            Notice::JobsChanged => continue,
            Notice::Submitted(ids) => match store.jobs_by_ids(&ids).await {
                // A job cancelled meanwhile is no longer pending: its cancel notice follows.
                Ok(jobs) => jobs.into_iter().filter(|j| j.state == JobState::Pending).for_each(|j| {
                    tell(SchedEvent::Submitted(Box::new(j)));
                }),
                Err(e) => {
                    tracing::warn!(error = %e, jobs = ids.len(), "cannot read jobs another replica stored");
                    tell(SchedEvent::Reload);
                }
            },
            Notice::Cancelled(ids) => ids.into_iter().for_each(|id| tell(SchedEvent::Cancelled(id))),
            Notice::QuotaSet(tenant_id) | Notice::TokensChanged(tenant_id) => match store.tenant(tenant_id).await {
                Ok(Some(t)) => tell(SchedEvent::QuotaSet { tenant_id, quota: t.quota }),
                Ok(None) => {}
                Err(_) => tell(SchedEvent::Reload),
            },
            Notice::Missed => tell(SchedEvent::Reload),
        }
        bump(&events);
    }
}

/// The leader's side: tells the other replicas' event streams that jobs changed, at most every
/// few tens of milliseconds, however many changes there were.
pub(crate) async fn announce_changes(store: Store, mut changes: watch::Receiver<u64>) {
    while changes.changed().await.is_ok() {
        if let Err(e) = store.announce_jobs_changed().await {
            tracing::debug!(error = %e, "cannot announce job changes");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Records this replica in the store a few times a lease, so that every replica can list the
/// others ([`crate::routes`]'s `/v1/cluster`); forgets replicas not seen for ten minutes.
pub(crate) async fn record_presence(store: Store, name: Arc<str>, address: Arc<str>, started_ms: i64, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(every).await;
        let now = now_ms();
        if let Err(e) = store.record_replica(&name, &address, started_ms, now, now - FORGET_AFTER_MS).await {
            tracing::debug!(error = %e, "cannot record this replica's presence");
        }
    }
}

/// Replicas not seen for this long are forgotten.
pub(crate) const FORGET_AFTER_MS: i64 = 600_000;

/// Where the leader serves, if another replica leads now.
async fn leader_address(st: &AppState) -> Result<String, ApiError> {
    let lease = st.store.lease().await?;
    let no_leader = || ApiError::Unavailable("no replica leads at the moment; retry shortly".into());
    let lease = lease.filter(|l| l.expires_ms > now_ms()).ok_or_else(no_leader)?;
    if lease.holder == *st.replica {
        // Leading already, and this request came through the router of its standby days.
        return Err(ApiError::Unavailable("this replica just took the lead; retry".into()));
    }
    lease.address.ok_or_else(no_leader)
}

/// Answers a request only the leader can answer by asking the leader.
pub(crate) async fn forward_to_leader(State(st): State<AppState>, req: Request) -> Result<Response, ApiError> {
    if req.headers().contains_key(FORWARDED) {
        return Err(ApiError::Unavailable("forwarded to a replica that does not lead; retry".into()));
    }
    let base = leader_address(&st).await?;
    let (parts, body) = req.into_parts();
    // The URI as the client sent it: routers nested under `/v1` see it without the prefix.
    let uri = parts.extensions.get::<OriginalUri>().map(|o| &o.0).unwrap_or(&parts.uri);
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let body = axum::body::to_bytes(body, api::limits::MAX_BODY_BYTES)
        .await
        .map_err(|e| ApiError::BadRequest { message: format!("cannot read the request: {e}"), field: None })?;
    let mut ask = st
        .http
        .request(parts.method.clone(), format!("{}{path}", base.trim_end_matches('/')))
        .timeout(FORWARD_TIMEOUT)
        .header(FORWARDED, "1")
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE, header::ACCEPT] {
        if let Some(v) = parts.headers.get(&name) {
            ask = ask.header(name, v);
        }
    }
    let answer = ask.send().await.map_err(|e| {
        tracing::debug!(error = %e, leader = %base, "forwarding to the leader failed");
        ApiError::Unavailable(format!("the leader at {base} does not answer; retry shortly"))
    })?;
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = answer
        .bytes()
        .await
        .map_err(|_| ApiError::Unavailable(format!("the leader at {base} broke off its answer; retry")))?;
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    response.headers_mut().insert("x-drome-served-by", HeaderValue::from_static("leader"));
    Ok(response)
}

/// Agents talk to the leader only: a replica that does not lead sends them on (they try the
/// next server they were given).
pub(crate) async fn not_leader(State(st): State<AppState>) -> Response {
    let leader = st.store.lease().await.ok().flatten().and_then(|l| l.address);
    let message = match leader {
        Some(a) => format!("this replica does not lead; the leader serves at {a}"),
        None => "this replica does not lead; no leader is known at the moment".into(),
    };
    ApiError::Unavailable(message).into_response()
}
