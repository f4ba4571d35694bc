//! The agent protocol: join tokens, joins and heartbeats.

use crate::AppState;
use crate::agents::RemoteNodes;
use crate::auth::{AdminCaller, caller_hash, hash_token, new_token};
use crate::error::ApiError;
use crate::json::ApiJson;
use crate::now_ms;
use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use std::time::{Duration, Instant};
use store::JobState;

fn remote(st: &AppState) -> Result<&RemoteNodes, ApiError> {
    st.remote.as_ref().ok_or_else(|| ApiError::NotFound("this server runs its nodes in process, not on agents".into()))
}

/// A caller that holds a node's credential: it acts only for that node.
pub(crate) struct NodeCaller(pub String, pub String);

impl FromRequestParts<AppState> for NodeCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let hash = caller_hash(parts)?;
        let remote = remote(state)?;
        if let Some(node) = remote.node_of(&hash) {
            return Ok(NodeCaller(node, hash));
        }
        Err(ApiError::Unauthorized("not a node credential".into()))
    }
}

/// Join tokens last a day and admit one node unless asked otherwise.
const DEFAULT_JOIN_TOKEN_TTL_S: u64 = 86_400;
const MAX_JOIN_TOKEN_TTL_S: u64 = 366 * 86_400;
const MAX_JOIN_TOKEN_USES: u32 = 1_000_000;
/// How many hex digits of a token's hash name it.
const JOIN_TOKEN_ID_LEN: usize = 16;

pub(crate) async fn create_join_token(
    State(st): State<AppState>,
    _admin: AdminCaller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<api::JoinToken>), ApiError> {
    // The body may be left out: a single-use token valid a day.
    let req: api::NewJoinToken = if body.iter().all(u8::is_ascii_whitespace) {
        api::NewJoinToken::default()
    } else {
        crate::json::parse(&body)?
    };
    let uses = req.uses.unwrap_or(1);
    if !(1..=MAX_JOIN_TOKEN_USES).contains(&uses) {
        return Err(ApiError::invalid("uses", format!("between 1 and {MAX_JOIN_TOKEN_USES}")));
    }
    let ttl_s = req.ttl_s.unwrap_or(DEFAULT_JOIN_TOKEN_TTL_S);
    if !(1..=MAX_JOIN_TOKEN_TTL_S).contains(&ttl_s) {
        return Err(ApiError::invalid("ttl_s", format!("between 1 and {MAX_JOIN_TOKEN_TTL_S} seconds")));
    }
    if let Some(n) = &req.node
        && !st.node_ids.contains_key(n)
    {
        return Err(ApiError::invalid("node", format!("no node {n:?} in the fleet")));
    }
    let token = new_token()?;
    let hash = hash_token(&token);
    let now = now_ms();
    let expires_ms = now.saturating_add(i64::try_from(ttl_s * 1000).unwrap_or(i64::MAX));
    let limits =
        store::JoinTokenLimits { uses: Some(i64::from(uses)), expires_ms: Some(expires_ms), node: req.node.clone() };
    let id = hash[..JOIN_TOKEN_ID_LEN.min(hash.len())].to_string();
    let detail = serde_json::json!({"uses": uses, "ttl_s": ttl_s, "node": req.node});
    crate::routes::audited(&st, "join_token.create", &id, detail).create_join_token(&hash, now, &limits).await?;
    tracing::info!(id, uses, ttl_s, node = ?req.node, "join token created");
    Ok((
        StatusCode::CREATED,
        Json(api::JoinToken { token, id, uses: Some(uses), expires_at_ms: Some(expires_ms), node: req.node }),
    ))
}

pub(crate) async fn list_join_tokens(
    State(st): State<AppState>,
    _admin: AdminCaller,
) -> Result<Json<Vec<api::JoinTokenInfo>>, ApiError> {
    let now = now_ms();
    let tokens = st.store.join_tokens().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| {
                let state = if t.revoked_ms.is_some() {
                    "revoked"
                } else if t.expires_ms.is_some_and(|e| e <= now) {
                    "expired"
                } else if t.uses_left.is_some_and(|u| u <= 0) {
                    "used_up"
                } else {
                    "active"
                };
                api::JoinTokenInfo {
                    id: t.token_hash[..JOIN_TOKEN_ID_LEN.min(t.token_hash.len())].to_string(),
                    created_at_ms: t.created_ms,
                    uses_left: t.uses_left,
                    expires_at_ms: t.expires_ms,
                    node: t.node,
                    revoked_at_ms: t.revoked_ms,
                    state: state.into(),
                }
            })
            .collect(),
    ))
}

pub(crate) async fn revoke_join_token(
    State(st): State<AppState>,
    _admin: AdminCaller,
    crate::json::PathSegment(id): crate::json::PathSegment,
) -> Result<StatusCode, ApiError> {
    let not_found = || ApiError::NotFound(format!("no join token {id:?} to revoke"));
    if id.len() != JOIN_TOKEN_ID_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(not_found());
    }
    let store = crate::routes::audited(&st, "join_token.revoke", &id, serde_json::json!({}));
    match store.revoke_join_tokens(&id, now_ms()).await? {
        0 => Err(not_found()),
        _ => {
            tracing::info!(id, "join token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
    }
}

pub(crate) async fn join(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<api::AgentJoin>,
) -> Result<Json<api::AgentJoined>, ApiError> {
    let remote = remote(&st)?;
    let Some(&id) = st.node_ids.get(&req.node) else {
        return Err(ApiError::invalid("node", format!("no node {:?} in the fleet", req.node)));
    };
    if let Err(r) = crate::agents::checks::check_join(&st.fleet, id, &req) {
        tracing::warn!(node = %req.node, field = r.field, reason = ?r.message, "join refused: the node's report does not hold");
        remote.set_problem(&req.node, Some(format!("join refused: {}", r.message)));
        return Err(ApiError::invalid(r.field, r.message));
    }
    // A node the admin removed stays out until resumed, whatever join token its agent holds.
    if remote.is_removed(&req.node) {
        return Err(ApiError::Conflict(format!(
            "node {} was removed from service by the admin: it joins again once resumed (drome nodes resume {})",
            req.node, req.node
        )));
    }
    // A node's agent holds it while its lease runs: nobody else may join under its name.
    if remote.is_live(&req.node) {
        return Err(ApiError::Conflict(format!(
            "node {} is live: its agent holds it; another may join under its name once its lease ({} ms) runs out",
            req.node,
            remote.config.lease.as_millis()
        )));
    }
    let credential = new_token()?;
    let hash = hash_token(&credential);
    let inventory_json = serde_json::to_string(&req.gpus).map_err(|e| ApiError::Internal(e.to_string()))?;
    let node = store::AgentNode {
        name: req.node.clone(),
        token_hash: hash.clone(),
        inventory_json,
        address: req.address.clone(),
        joined_ms: now_ms(),
        previous_token_hash: None,
        runtimes: req.runtimes.clone(),
    };
    // Last: a join refused for another reason costs the token nothing. The token's use and the
    // node's record are one write, committed with the joins that come meanwhile.
    if let Err(why) = st.store.join_agent_node(&hash_token(&req.join_token), &node, now_ms()).await? {
        return Err(match why {
            store::JoinTokenRefusal::OtherNode(_) => ApiError::Forbidden(why.to_string()),
            _ => ApiError::Unauthorized(why.to_string()),
        });
    }
    remote.register(&req.node, &hash, &req.address, &req.runtimes);
    st.wake.notify_one();
    remote.count_join();
    remote.set_problem(&req.node, None);
    tracing::debug!(node = %req.node, gpus = req.gpus.len(), address = ?req.address, "node joined");
    Ok(Json(api::AgentJoined {
        node: req.node,
        credential,
        heartbeat_ms: remote.config.heartbeat.as_millis() as u64,
        lease_ms: remote.config.lease.as_millis() as u64,
    }))
}

/// One node's answer, planned from its report `hb`: `renew` takes the report as new (it renews
/// the lease and hands its ends over).
struct NodeAnswer {
    reply: api::HeartbeatReply,
    /// It has something to do (or acknowledgements to carry): worth answering now.
    has_work: bool,
    /// The report handed ends over: the answer may wait a little for their acknowledgement.
    delivered_exits: bool,
}

async fn answer_node(
    st: &AppState,
    remote: &RemoteNodes,
    node: &str,
    hb: &api::Heartbeat,
    renew: bool,
) -> Result<NodeAnswer, ApiError> {
    let plan = remote.beat(node, hb, renew);
    if renew && let (Some(meter), Some(watts)) = (&st.meter, hb.power_watts) {
        let gpus = st.node_ids.get(node).map_or(0, |id| u32::from(st.fleet.node(*id).gpu_count));
        meter.record(node, crate::now_ms(), watts, gpus, &plan.metered);
    }
    if renew && plan.delivered_exits {
        st.wake.notify_one();
    }
    let mut kill = plan.kill;
    for run in plan.unknown {
        // Not assigned by this process: after a restart the store still knows the run.
        if !still_placed(st, run).await? {
            kill.push(run);
        }
    }
    let mut unneeded = Vec::new();
    for run in plan.unknown_exits {
        // An end of a run this process did not assign: kept for the run's resumption if the
        // store still has it running, acknowledged otherwise.
        if !still_placed(st, run).await? {
            unneeded.push(run);
        }
    }
    remote.acknowledge_unneeded(node, &unneeded);
    let mut acked = plan.acked;
    acked.extend(unneeded.iter().filter(|r| !acked.contains(r)).copied().collect::<Vec<_>>());
    let has_work =
        !plan.assign.is_empty() || !kill.is_empty() || !plan.logs.is_empty() || plan.cap_stale || !acked.is_empty();
    Ok(NodeAnswer {
        reply: api::HeartbeatReply {
            lease_ms: remote.config.lease.as_millis() as u64,
            assign: plan.assign,
            kill,
            acked,
            gpu_power_cap_watts: plan.cap,
            cpu_power_cap_watts: plan.cpu_cap,
            logs: plan.logs,
            credential: None,
        },
        has_work,
        delivered_exits: plan.delivered_exits,
    })
}

/// Credentials a call rotates or settles at most: one store write each, so a batch of nodes
/// that all came due at once spreads its writes over several calls.
const CREDENTIAL_WRITES_PER_CALL: usize = 64;

/// Rotates the credential of `node`, which called with the one hashed `used_hash`, when it is
/// due, or settles a rotation the node has taken up; the credential to send it, if any.
async fn step_credential(
    st: &AppState,
    remote: &RemoteNodes,
    node: &str,
    used_hash: &str,
    writes_left: &mut usize,
) -> Result<Option<String>, ApiError> {
    use crate::agents::CredentialStep;
    let step = remote.credential_step(node, used_hash);
    if matches!(step, CredentialStep::Rotate | CredentialStep::Settle) {
        if *writes_left == 0 {
            return Ok(None);
        }
        *writes_left -= 1;
    }
    match step {
        CredentialStep::Keep => Ok(None),
        CredentialStep::Resend(credential) => Ok(Some(credential)),
        CredentialStep::Settle => {
            st.store.settle_agent_credential(node).await?;
            remote.settled(node);
            Ok(None)
        }
        CredentialStep::Rotate => {
            let credential = new_token()?;
            let new_hash = hash_token(&credential);
            // Stored first: a restart between the two still knows both.
            if !st.store.rotate_agent_credential(node, &new_hash, used_hash).await? {
                return Ok(None);
            }
            if !remote.rotated(node, used_hash, &new_hash, &credential) {
                // Removed or joined again meanwhile: what the store holds now is what counts.
                return Ok(None);
            }
            tracing::debug!(node, "node credential rotated");
            Ok(Some(credential))
        }
    }
}

pub(crate) async fn heartbeat(
    State(st): State<AppState>,
    NodeCaller(node, used_hash): NodeCaller,
    ApiJson(hb): ApiJson<api::Heartbeat>,
) -> Result<Json<api::HeartbeatReply>, ApiError> {
    let remote = remote(&st)?.clone();
    check_report(&st, &remote, &node, &hb).map_err(|r| ApiError::invalid(r.field, r.message))?;
    let credential = step_credential(&st, &remote, &node, &used_hash, &mut 1).await?;
    let wait = Duration::from_millis(hb.wait_ms).min(remote.config.heartbeat);
    let mut deadline = Instant::now() + wait;
    let mut first = true;
    let (beat, notify) = remote.begin_beat(&node);
    loop {
        if !first && remote.superseded(&node, beat) {
            return Ok(Json(api::HeartbeatReply {
                lease_ms: remote.config.lease.as_millis() as u64,
                ..Default::default()
            }));
        }
        // Registered before looking, so that a change made in between still wakes this call.
        let changed = notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let mut answer = answer_node(&st, &remote, &node, &hb, first).await?;
        if credential.is_some() {
            answer.reply.credential.clone_from(&credential);
            answer.has_work = true;
        }
        if first && answer.delivered_exits {
            // The answer waits (a little) for the ends to be recorded, to acknowledge them: an
            // end the agent forgets is then never one a crash could lose.
            deadline = deadline.max(Instant::now() + EXIT_ACK_WAIT.min(remote.config.heartbeat));
        }
        let now = Instant::now();
        first = false;
        if answer.has_work || now >= deadline {
            remote.acks_sent(&node, &answer.reply.acked);
            return Ok(Json(answer.reply));
        }
        let _ = tokio::time::timeout(deadline - now, changed).await;
    }
}

/// Checks a node's heartbeat against the fleet and physical bounds: a refused one renews
/// nothing and marks the node with why; a good one clears the mark.
fn check_report(
    st: &AppState,
    remote: &RemoteNodes,
    node: &str,
    hb: &api::Heartbeat,
) -> Result<(), crate::agents::checks::Refusal> {
    let Some(&id) = st.node_ids.get(node) else { return Ok(()) };
    match st.node_bounds.check_heartbeat(id, hb) {
        Ok(()) => {
            remote.set_problem(node, None);
            Ok(())
        }
        Err(r) => {
            tracing::warn!(node, field = r.field, reason = ?r.message, "heartbeat refused: the node's report does not hold");
            remote.set_problem(node, Some(format!("report refused: {}", r.message)));
            Err(r)
        }
    }
}

/// The most nodes one batched heartbeat may list.
const MAX_BATCH_NODES: usize = 200_000;
/// The body limit of a batched heartbeat: its nodes at a few hundred bytes each.
pub(crate) const MAX_BATCH_BODY: usize = 128 * 1024 * 1024;

/// `POST /v1/agent/heartbeats`: every listed node is authenticated by its own credential and
/// renews its lease; the call is held until any node of the agent process (listed or not) has
/// work, then answers for those nodes alone. A node with nothing new costs a lookup and a lease
/// renewal, once per heartbeat period.
pub(crate) async fn heartbeats(
    State(st): State<AppState>,
    ApiJson(batch): ApiJson<api::HeartbeatBatch>,
) -> Result<Json<api::HeartbeatBatchReply>, ApiError> {
    let remote = remote(&st)?.clone();
    if batch.agent_id.is_empty() || batch.agent_id.len() > 128 {
        return Err(ApiError::invalid("agent_id", "1 to 128 characters"));
    }
    if batch.nodes.len() > MAX_BATCH_NODES {
        return Err(ApiError::invalid("nodes", format!("at most {MAX_BATCH_NODES} nodes in one batch")));
    }
    let lease_ms = remote.config.lease.as_millis() as u64;
    let session = remote.session(&batch.agent_id);
    let call = session.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    session.begin_call(batch.last_answer);
    let mut deadline = Instant::now() + Duration::from_millis(batch.wait_ms).min(remote.config.heartbeat);
    let mut replies = Vec::new();
    let mut listed = Vec::with_capacity(batch.nodes.len());
    let mut credentials: std::collections::HashMap<String, String> = std::collections::HashMap::new();
    let mut writes_left = CREDENTIAL_WRITES_PER_CALL;
    for nb in &batch.nodes {
        let used_hash = hash_token(&nb.credential);
        match remote.node_of(&used_hash) {
            Some(name) if name == nb.node => {
                if let Some(c) = step_credential(&st, &remote, &nb.node, &used_hash, &mut writes_left).await? {
                    credentials.insert(nb.node.clone(), c);
                }
                if let Err(r) = check_report(&st, &remote, &nb.node, &nb.heartbeat) {
                    replies.push(api::NodeHeartbeatReply {
                        node: nb.node.clone(),
                        reply: None,
                        error: Some(format!("report refused: {}: {}", r.field, r.message)),
                    });
                    continue;
                }
                remote.attach(&nb.node, &session);
                listed.push(nb);
            }
            _ => replies.push(api::NodeHeartbeatReply {
                node: nb.node.clone(),
                reply: None,
                error: Some("not this node's credential: join again".into()),
            }),
        }
    }
    let mut first = true;
    loop {
        if !first && session.calls.load(std::sync::atomic::Ordering::SeqCst) != call {
            // A newer call of the same process waits now: the wake-up is its.
            session.notify.notify_one();
            let answer =
                session.answering(replies.iter().filter(|r| r.reply.is_some()).map(|r| r.node.clone()).collect());
            return Ok(Json(api::HeartbeatBatchReply { lease_ms, answer, nodes: replies }));
        }
        let changed = session.notify.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let mut seen: std::collections::HashSet<String> = std::collections::HashSet::new();
        if first {
            for nb in &listed {
                let mut answer = answer_node(&st, &remote, &nb.node, &nb.heartbeat, true).await?;
                if let Some(c) = credentials.remove(&nb.node) {
                    answer.reply.credential = Some(c);
                    answer.has_work = true;
                }
                seen.insert(nb.node.clone());
                if answer.delivered_exits {
                    // Held (a little) for the ends to be recorded, to acknowledge them.
                    deadline = deadline.max(Instant::now() + EXIT_ACK_WAIT.min(remote.config.heartbeat));
                }
                if answer.has_work {
                    remote.acks_sent(&nb.node, &answer.reply.acked);
                    replies.push(api::NodeHeartbeatReply {
                        node: nb.node.clone(),
                        reply: Some(answer.reply),
                        error: None,
                    });
                }
            }
        }
        // Nodes of this process that changed since: planned from their last report.
        for node in session.take_dirty() {
            if !seen.insert(node.clone()) {
                continue;
            }
            let Some(hb) = remote.last_beat(&node) else { continue };
            let answer = answer_node(&st, &remote, &node, &hb, false).await?;
            if answer.has_work {
                remote.acks_sent(&node, &answer.reply.acked);
                replies.retain(|r| r.node != node);
                replies.push(api::NodeHeartbeatReply { node, reply: Some(answer.reply), error: None });
            }
        }
        first = false;
        let now = Instant::now();
        if !replies.is_empty() || now >= deadline {
            let answer =
                session.answering(replies.iter().filter(|r| r.reply.is_some()).map(|r| r.node.clone()).collect());
            return Ok(Json(api::HeartbeatBatchReply { lease_ms, answer, nodes: replies }));
        }
        let _ = tokio::time::timeout(deadline - now, changed).await;
    }
}

/// The longest a heartbeat that reported ends waits for them to be recorded.
const EXIT_ACK_WAIT: Duration = Duration::from_secs(2);

/// Whether the store still has `run`'s job placed under that generation.
async fn still_placed(st: &AppState, run: api::RunKey) -> Result<bool, ApiError> {
    Ok(st
        .store
        .job_by_id(run.job_id)
        .await?
        .is_some_and(|j| matches!(j.state, JobState::Scheduled | JobState::Assigned) && j.generation == run.generation))
}

pub(crate) async fn logs(
    State(st): State<AppState>,
    NodeCaller(node, _): NodeCaller,
    ApiJson(chunk): ApiJson<api::LogChunk>,
) -> Result<StatusCode, ApiError> {
    if chunk.data.len() > MAX_LOG_CHUNK as usize * 3 {
        return Err(ApiError::invalid("data", "larger than any log request asks for"));
    }
    remote(&st)?.log_answer(&node, chunk);
    Ok(StatusCode::NO_CONTENT)
}

/// The most bytes of output one `GET /v1/jobs/{id}/logs` returns.
pub(crate) const MAX_LOG_CHUNK: u64 = 256 * 1024;
/// The body limit of a node's answer: the chunk with every byte escaped (`\u001b`).
pub(crate) const MAX_LOG_BODY: usize = MAX_LOG_CHUNK as usize * 6 + 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogParams {
    #[serde(default, deserialize_with = "api::ranges::opt_int32")]
    member: Option<u32>,
    stream: Option<api::LogStream>,
    #[serde(default, deserialize_with = "api::ranges::opt_int64")]
    offset: Option<u64>,
    #[serde(default, deserialize_with = "api::ranges::opt_int64")]
    limit: Option<u64>,
}

pub(crate) async fn job_logs(
    State(st): State<AppState>,
    crate::auth::TenantCaller(tenant): crate::auth::TenantCaller,
    crate::json::PathSegment(id): crate::json::PathSegment,
    params: Result<axum::extract::Query<LogParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<api::JobLogs>, ApiError> {
    let axum::extract::Query(params) = params.map_err(crate::routes::query_error)?;
    let not_found = || ApiError::NotFound(format!("no job {id}"));
    let job_id: i64 = id.parse().map_err(|_| not_found())?;
    let job = st.store.job(tenant.id, job_id).await?.ok_or_else(not_found)?;
    let member = params.member.unwrap_or(0);
    let stream = params.stream.unwrap_or_default();
    let offset = params.offset.unwrap_or(0);
    let limit = params.limit.unwrap_or(MAX_LOG_CHUNK).clamp(1, MAX_LOG_CHUNK);
    let remote = remote(&st)?;
    let placement = job
        .placement_json
        .as_deref()
        .ok_or_else(|| ApiError::NotFound(format!("job {job_id} has not been placed: it has no output yet")))?;
    let members = crate::convert::decode_members(placement).map_err(ApiError::Internal)?;
    let node = members
        .get(member as usize)
        .map(|m| m.node.clone())
        .ok_or_else(|| ApiError::NotFound(format!("job {job_id} has no member {member} (it has {})", members.len())))?;
    let run = api::RunKey { job_id, member, generation: job.generation };
    let within = remote.config.heartbeat + Duration::from_secs(5);
    let chunk = remote.fetch_log(&node, run, stream, offset, limit, within).await.map_err(ApiError::Unavailable)?;
    if let Some(e) = chunk.error {
        return Err(ApiError::NotFound(format!("job {job_id} member {member} on {node}: {e}")));
    }
    let complete = job.state.is_terminal() && chunk.next_offset >= chunk.size;
    Ok(Json(api::JobLogs {
        job_id,
        member,
        generation: job.generation,
        node,
        stream,
        offset,
        data: chunk.data,
        next_offset: chunk.next_offset,
        size: chunk.size,
        complete,
    }))
}
