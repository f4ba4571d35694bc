//! Between the store's rows, the wire types and the scheduler's model.

use crate::error::ApiError;
use model::{Fleet, GpuRequest, ModelFilter, NodeId, SimTime, TenantId, Workload, WorkloadId};
use sched::{GpuShare, MemberPlacement, Placement};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// A placement as stored: node names, so that it survives a fleet file that gains nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMember {
    pub node: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<GpuShare>,
}

pub fn encode_placement(fleet: &Fleet, placement: &Placement) -> String {
    let members: Vec<StoredMember> = placement
        .members
        .iter()
        .map(|m| StoredMember {
            node: fleet.node(m.node).name.clone(),
            cpu_milli: m.cpu_milli,
            memory_mib: m.memory_mib,
            gpus: m.gpus.clone(),
        })
        .collect();
    serde_json::to_string(&members).unwrap_or_else(|_| "[]".into())
}

pub fn decode_members(json: &str) -> Result<Vec<StoredMember>, String> {
    serde_json::from_str(json).map_err(|e| format!("unreadable placement: {e}"))
}

/// The stored placement resolved against this fleet.
pub fn decode_placement(json: &str, node_ids: &HashMap<String, NodeId>) -> Result<Placement, String> {
    let members = decode_members(json)?
        .into_iter()
        .map(|m| {
            let node = *node_ids.get(&m.node).ok_or_else(|| format!("node {} is not in the fleet", m.node))?;
            Ok(MemberPlacement { node, cpu_milli: m.cpu_milli, memory_mib: m.memory_mib, gpus: m.gpus })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Placement { members })
}

/// The GPU request of a stored job.
pub fn gpu_request(gpus_per_node: i64, nodes: i64) -> GpuRequest {
    if gpus_per_node <= 0 {
        GpuRequest::None
    } else {
        GpuRequest::Gang {
            nodes: u32::try_from(nodes.max(1)).unwrap_or(u32::MAX),
            gpus_per_node: u32::try_from(gpus_per_node).unwrap_or(u32::MAX),
        }
    }
}

/// Total GPUs a job holds when placed.
pub fn total_gpus(job: &store::Job) -> u64 {
    (job.spec.gpus_per_node.max(0) as u64) * (job.spec.nodes.max(1) as u64)
}

/// The scheduler's view of a request for `nodes` x `gpus_per_node` GPUs of `gpu_model`.
pub fn request_workload(id: WorkloadId, gpus_per_node: i64, nodes: i64, gpu_model: Option<&str>) -> Workload {
    Workload {
        id,
        name: String::new(),
        tenant: TenantId(0),
        priority: 0,
        submit_time: SimTime::ZERO,
        cpu_milli: 0,
        memory_mib: 0,
        gpu: gpu_request(gpus_per_node, nodes),
        models: gpu_model.map(ModelFilter::parse_list).unwrap_or_default(),
        duration: None,
        deferrable: false,
    }
}

/// The scheduler's view of a stored job, under the workload id the scheduler gave it (job ids
/// are 64-bit; the scheduler core numbers what it holds with 32).
pub fn workload_of(job: &store::Job, id: WorkloadId) -> Workload {
    let mut w = request_workload(id, job.spec.gpus_per_node, job.spec.nodes, job.spec.gpu_model.as_deref());
    w.name = job.spec.name.clone();
    w.tenant = TenantId(u32::try_from(job.spec.tenant_id).unwrap_or(u32::MAX));
    w.priority = i32::try_from(job.spec.priority).unwrap_or(0);
    w.submit_time = SimTime(job.submitted_ms.max(0) as u64);
    w.cpu_milli = job.spec.cpu_milli.max(0) as u64;
    w.memory_mib = job.spec.memory_mib.max(0) as u64;
    if let Some(m) = job.spec.gpu_milli.and_then(|m| u32::try_from(m).ok()) {
        w.gpu = GpuRequest::Fraction { gpu_milli: m };
    }
    w
}

pub fn state_to_api(s: store::JobState) -> api::JobState {
    match s {
        store::JobState::Pending => api::JobState::Pending,
        store::JobState::Scheduled => api::JobState::Scheduled,
        store::JobState::Assigned => api::JobState::Running,
        store::JobState::Succeeded => api::JobState::Succeeded,
        store::JobState::Failed => api::JobState::Failed,
        store::JobState::Cancelled => api::JobState::Cancelled,
        store::JobState::Preempted => api::JobState::Preempted,
    }
}

pub fn state_from_api(s: api::JobState) -> store::JobState {
    match s {
        api::JobState::Pending => store::JobState::Pending,
        api::JobState::Scheduled => store::JobState::Scheduled,
        api::JobState::Running => store::JobState::Assigned,
        api::JobState::Succeeded => store::JobState::Succeeded,
        api::JobState::Failed => store::JobState::Failed,
        api::JobState::Cancelled => store::JobState::Cancelled,
        api::JobState::Preempted => store::JobState::Preempted,
    }
}

pub fn args_env(job: &store::Job) -> Result<(Vec<String>, BTreeMap<String, String>), ApiError> {
    let args = serde_json::from_str(&job.spec.args_json)
        .map_err(|e| ApiError::Internal(format!("job {} has unreadable args: {e}", job.id)))?;
    let env = serde_json::from_str(&job.spec.env_json)
        .map_err(|e| ApiError::Internal(format!("job {} has unreadable env: {e}", job.id)))?;
    Ok((args, env))
}

pub fn event_to_api(e: &store::JobEvent) -> api::Event {
    api::Event { id: e.id, job_id: e.job_id, state: state_to_api(e.state), at_ms: e.at_ms, message: e.message.clone() }
}

/// A stored job on the wire, with `history` when given.
pub fn job_to_api(job: &store::Job, tenant: &str, history: &[store::JobEvent]) -> Result<api::Job, ApiError> {
    let (args, env) = args_env(job)?;
    let placement = match &job.placement_json {
        Some(p) => decode_members(p)
            .map_err(ApiError::Internal)?
            .into_iter()
            .map(|m| api::PlacedMember { node: m.node, gpus: m.gpus.iter().map(|g| u32::from(g.index)).collect() })
            .collect(),
        None => Vec::new(),
    };
    let restart_policy = api::RestartPolicy::from_name(&job.spec.restart_policy);
    Ok(api::Job {
        id: job.id,
        tenant: tenant.to_string(),
        name: job.spec.name.clone(),
        state: state_to_api(job.state),
        instance: job.spec.command.is_none(),
        spec: api::JobSpec {
            name: Some(job.spec.name.clone()),
            command: job.spec.command.clone(),
            args,
            env,
            gpus_per_node: u32::try_from(job.spec.gpus_per_node).unwrap_or(0),
            nodes: u32::try_from(job.spec.nodes).unwrap_or(1),
            gpu_milli: job.spec.gpu_milli.and_then(|m| u32::try_from(m).ok()),
            gpu_model: job.spec.gpu_model.clone(),
            cpu_milli: u64::try_from(job.spec.cpu_milli).ok().filter(|&c| c > 0),
            memory_mib: u64::try_from(job.spec.memory_mib).ok().filter(|&m| m > 0),
            image: job.spec.image.clone(),
            priority: i32::try_from(job.spec.priority).unwrap_or(0),
            deferrable: job.spec.deferrable,
            federated: job.spec.federated,
            dataset: None,
            max_runtime_s: job.spec.max_runtime_s.and_then(|s| u64::try_from(s).ok()),
            restart_policy,
            max_restarts: u32::try_from(job.spec.max_restarts).unwrap_or(0),
        },
        idempotency_key: job.spec.idempotency_key.clone(),
        attempts: job.generation,
        placement,
        exit_code: job.exit_code,
        message: job.message.clone(),
        submitted_at_ms: job.submitted_ms,
        started_at_ms: job.started_ms,
        finished_at_ms: job.finished_ms,
        history: history
            .iter()
            .map(|e| api::StateChange { state: state_to_api(e.state), at_ms: e.at_ms, message: e.message.clone() })
            .collect(),
        federation: None,
    })
}
