//! drome's REST API as the wire sees it: request and response types (serde + utoipa schemas) and
//! the OpenAPI document of `/v1`. This crate knows nothing of SQL or of how the server runs; the
//! server and the CLI client both speak these types.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::{OpenApi, ToSchema};

pub mod paths;
pub mod ranges;

/// Limits the server enforces on a submission (and the client can check before sending).
pub mod limits {
    /// Largest request body, in bytes.
    pub const MAX_BODY_BYTES: usize = 64 * 1024;
    pub const MAX_NAME_LEN: usize = 128;
    pub const MAX_COMMAND_LEN: usize = 4096;
    pub const MAX_ARGS: usize = 256;
    pub const MAX_ENV: usize = 128;
    pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 128;
    pub const MAX_NODES: u32 = 4096;
    pub const MAX_RESTARTS: u32 = 10;
    pub const MAX_PAGE: u32 = 1000;
}

/// A job's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting in the queue.
    Pending,
    /// Placed on nodes, not yet started: a run being stopped there is not gone yet.
    Scheduled,
    /// Handed to its nodes' agents, which start it; each start is a new generation.
    Running,
    /// Ended with exit code 0 (or a GPU instance released at its expiry).
    Succeeded,
    /// Ended with a non-zero exit code, or ran past its maximum runtime.
    Failed,
    /// Cancelled by its tenant (a GPU instance released), or for a spent budget set to stop
    /// running work; it has its finish time once its processes are gone.
    Cancelled,
    /// Taken off its GPUs by the scheduler, its processes being stopped; it goes back to the
    /// queue once they are gone.
    Preempted,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Preempted => "preempted",
        }
    }
}

/// What to do when a job's command fails.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    /// A failed job stays failed.
    #[default]
    Never,
    /// A failed job goes back to the queue, up to `max_restarts` times.
    OnFailure,
    /// A job whose node (or site) is lost goes back to the queue under the same id, up to
    /// `max_restarts` times; one whose program fails stays failed. For work that checkpoints.
    OnNodeLoss,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Never => "never",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::OnNodeLoss => "on-node-loss",
        }
    }

    /// The policy named `text` as [`Self::as_str`] writes it; `never` for any other text.
    pub fn from_name(text: &str) -> RestartPolicy {
        [RestartPolicy::OnFailure, RestartPolicy::OnNodeLoss]
            .into_iter()
            .find(|p| p.as_str() == text)
            .unwrap_or(RestartPolicy::Never)
    }

    /// Whether a job under it runs again when its node or site is lost.
    pub fn restarts_on_node_loss(self) -> bool {
        matches!(self, RestartPolicy::OnFailure | RestartPolicy::OnNodeLoss)
    }
}

fn one() -> u32 {
    1
}

fn default_max_restarts() -> u32 {
    3
}

/// A submission. A job without `command` is a GPU instance: it holds its GPUs until cancelled
/// (released) or until `max_runtime_s` passes (expired).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A name for people; defaults to the command (or `instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Program to run on every node of the job; none for a GPU instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Whole GPUs on each node (0 for CPU-only work).
    #[serde(default = "one", deserialize_with = "crate::ranges::int32")]
    pub gpus_per_node: u32,
    /// Nodes the job spans; all start together or none does.
    #[serde(default = "one", deserialize_with = "crate::ranges::int32")]
    pub nodes: u32,
    /// A share of one GPU instead of whole GPUs, in thousandths (1-999; `gpus_per_node` 1,
    /// `nodes` 1): the GPU is shared with other work (time-sliced or MPS), and drome places
    /// shares where they leave the least capacity stranded. Counts as one GPU against quotas.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_milli: Option<u32>,
    /// GPU model or family the job needs (`H200`); any when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// CPU time held on each node, in thousandths of a CPU (`4000`: four CPUs). Unset: the
    /// fleet's share per GPU times the GPUs asked for (one CPU for CPU-only work). The run is
    /// confined to it.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub cpu_milli: Option<u64>,
    /// Memory held on each node, in MiB. Unset: the fleet's share per GPU times the GPUs asked
    /// for (2 GiB for CPU-only work). A run that goes past it is killed by the node.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub memory_mib: Option<u64>,
    /// An OCI image to run the command in (`localhost/train:3`), taken from the node's own image
    /// store (nodes pull nothing): the job goes only to nodes with a container runtime, under
    /// the same limits, user and GPUs as any run. Unset: the command runs on the node's system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// The job may wait for cheaper or cleaner power: it yields to other work of its priority.
    #[serde(default)]
    pub deferrable: bool,
    /// Sent by a federation endpoint: the job starts only while the site holds a federation
    /// lease (`PUT /v1/federation/lease`), so that a job the federation moved away from a site
    /// cut off from it never starts there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub federated: bool,
    /// Where the job's input data lives: a federation endpoint weighs the time to move it over
    /// the fiber when it picks a site (`data` dispatch). A site itself ignores it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Dataset>,
    /// The job is stopped (failed; an instance: expired) after this many seconds of running.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub max_runtime_s: Option<u64>,
    #[serde(default)]
    pub restart_policy: RestartPolicy,
    /// Restarts allowed under `on-failure`.
    #[serde(default = "default_max_restarts", deserialize_with = "crate::ranges::int32")]
    pub max_restarts: u32,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: None,
            command: None,
            args: Vec::new(),
            env: BTreeMap::new(),
            gpus_per_node: 1,
            nodes: 1,
            gpu_milli: None,
            gpu_model: None,
            cpu_milli: None,
            memory_mib: None,
            image: None,
            priority: 0,
            deferrable: false,
            federated: false,
            dataset: None,
            max_runtime_s: None,
            restart_policy: RestartPolicy::Never,
            max_restarts: default_max_restarts(),
        }
    }
}

/// One gang member's place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PlacedMember {
    pub node: String,
    /// GPU indexes on the node.
    #[serde(deserialize_with = "crate::ranges::vec_int32")]
    pub gpus: Vec<u32>,
}

/// One entry of a job's state history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StateChange {
    pub state: JobState,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A job as the server reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Job {
    pub id: i64,
    pub tenant: String,
    pub name: String,
    pub state: JobState,
    /// True for a GPU instance (no command).
    pub instance: bool,
    pub spec: JobSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Times the job has been started.
    pub attempts: i64,
    #[serde(default)]
    pub placement: Vec<PlacedMember>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub submitted_at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<i64>,
    /// State history, oldest first; only in `GET /v1/jobs/{id}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<StateChange>,
    /// Answered by a federation endpoint: the site the job went to and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationPlace>,
}

/// A job's input data, for a federation's choice of site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Dataset {
    /// The site that holds it.
    pub site: String,
    /// Its size, GB (10^9 bytes).
    pub size_gb: f64,
}

/// Where a federation endpoint sent a job, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FederationPlace {
    pub site: String,
    /// The job's id at that site, once the site took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_job_id: Option<i64>,
    /// Why that site, as the dispatch policy saw it.
    pub reason: String,
    /// Sites it left (that site stopped answering while the job waited there), oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<FederationMove>,
}

/// A site a job left.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FederationMove {
    pub site: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site_job_id: Option<i64>,
    pub reason: String,
    pub left_at_ms: i64,
    /// Why it left.
    pub why: String,
}

/// A federation endpoint's view of one of its sites (`GET /v1/federation/sites`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct FederationSite {
    pub name: String,
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The last poll was answered.
    pub reachable: bool,
    /// It has not answered for longer than the federation's loss delay: its waiting jobs move.
    pub lost: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_answer_ms: Option<i64>,
    pub gpus: u64,
    pub gpus_free: u64,
    pub gpus_pending: f64,
    /// Jobs the federation has there, not ended.
    pub active_jobs: u64,
}

/// `GET /v1/jobs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobList {
    /// Newest first.
    pub jobs: Vec<Job>,
    /// Pass as `before` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// `POST /v1/tenants`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Letters, digits, `-` and `_`; 1 to 64 characters.
    pub name: String,
    /// GPUs the tenant may hold at once; unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_quota: Option<u32>,
    /// Thousandths of a CPU the tenant's jobs may hold at once, over all their nodes; unlimited
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub cpu_milli_quota: Option<u64>,
    /// MiB of memory the tenant's jobs may hold at once, over all their nodes; unlimited when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub memory_mib_quota: Option<u64>,
    /// Seconds its token works; it never expires when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub token_ttl_s: Option<u64>,
    /// The highest priority its jobs may ask for (0 when absent: priority orders every
    /// tenant's jobs, so raising it is the admin's to give).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_priority: Option<i32>,
}

/// `POST /v1/tenants/{name}/token`: a new token for the tenant (the old one stops working).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRotation {
    /// Seconds the new token works; it never expires when absent.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub ttl_s: Option<u64>,
}

/// One admin action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    /// `tenant.create`, `tenant.token.rotate`, `tenant.token.revoke`, `tenant.remove`,
    /// `quota.set`, `site.gpu_power_cap`, `federation.lease`, `node.drain`, `node.resume`,
    /// `node.remove`, `join_token.create`, `join_token.revoke`.
    pub action: String,
    pub target: String,
    /// The values set, as JSON.
    pub detail: String,
}

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_quota: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub cpu_milli_quota: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub memory_mib_quota: Option<u64>,
    pub created_at_ms: i64,
    /// The highest priority its jobs may ask for.
    #[serde(default)]
    pub max_priority: i32,
    /// When its token stops working.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_at_ms: Option<i64>,
}

/// A new tenant and its token, shown only this once (the server keeps its hash).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantCreated {
    pub tenant: Tenant,
    pub token: String,
}

/// `PUT /v1/tenants/{name}/quota`: the whole quota, replaced (a field left out is unlimited).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaUpdate {
    /// GPUs the tenant may hold at once; `null` for unlimited.
    #[serde(default, deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_quota: Option<u32>,
    /// Thousandths of a CPU its jobs may hold at once, over all their nodes; `null` or absent
    /// for unlimited.
    #[serde(default, deserialize_with = "crate::ranges::opt_int64")]
    pub cpu_milli_quota: Option<u64>,
    /// MiB of memory its jobs may hold at once, over all their nodes; `null` or absent for
    /// unlimited.
    #[serde(default, deserialize_with = "crate::ranges::opt_int64")]
    pub memory_mib_quota: Option<u64>,
    /// The highest priority its jobs may ask for; 0 when absent.
    #[serde(default)]
    pub max_priority: Option<i32>,
}

/// A tenant's quota and what it uses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Quota {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_quota: Option<u32>,
    /// GPUs held by the tenant's scheduled and running jobs.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus_used: u64,
    /// GPUs asked for by the tenant's pending jobs.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus_pending: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub cpu_milli_quota: Option<u64>,
    /// Thousandths of a CPU held by the tenant's scheduled and running jobs, over their nodes.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub cpu_milli_used: u64,
    /// Thousandths of a CPU asked for by its pending jobs.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub cpu_milli_pending: u64,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub memory_mib_quota: Option<u64>,
    /// MiB of memory held by the tenant's scheduled and running jobs, over their nodes.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub memory_mib_used: u64,
    /// MiB of memory asked for by its pending jobs.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub memory_mib_pending: u64,
}

/// A node of the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Node {
    pub name: String,
    pub site: String,
    pub hall: String,
    pub rack: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub gpus: u32,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub gpus_free: u32,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub gpus_used: u32,
    /// Power draw its agent last reported, in watts (absent without an agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
    /// The GPU power cap its agent applies, watts per GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_power_cap_watts: Option<f64>,
    /// The power limit its agent holds the node's CPU packages to, watts for all of them (the
    /// dynamic power mode with host caps, while its site sheds watts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_power_cap_watts: Option<f64>,
    /// Why the node's agent was last refused (a join or report that does not hold against the
    /// fleet or physical bounds), until a report passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Why the admin drained the node: it takes no new work; its running work goes on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drained: Option<String>,
    /// Whether a node agent holds the node's lease now (servers with agents only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<bool>,
}

/// `PUT /v1/nodes/{name}/drain`: why the node takes no new work.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Drain {
    /// Shown with the node (`maintenance: DIMM swap`); `drained by the admin` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A site of the fleet.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Site {
    pub name: String,
    pub cooling: String,
    /// Region the site stands in (an ISO 3166-2 code such as `FR-ARA`), as the fleet declares it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub nodes: u32,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus: u64,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus_free: u64,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus_used: u64,
    /// GPU power draw, in watts: the load the site's cap is measured against. Live where the
    /// nodes' agents report it (`power_reporting_nodes`), else the board power of the GPUs in use.
    pub power_watts: f64,
    /// Nodes whose draw in `power_watts` is their agent's report.
    #[serde(default, deserialize_with = "crate::ranges::int32")]
    pub power_reporting_nodes: u32,
    /// The GPU power cap the site's nodes are asked to apply, watts per GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_power_cap_watts: Option<f64>,
    /// Board power of every GPU of the site, in watts.
    pub power_nameplate_watts: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_cap_watts: Option<f64>,
    /// GPUs asked for by the jobs waiting in this server's queue (pending: not placed yet), a
    /// share of one GPU counting as its fraction. One server schedules all its sites' nodes
    /// from one queue and a job is not bound to a site before it is placed: every site of the
    /// server reports the server's whole figure.
    #[serde(default)]
    pub gpus_pending: f64,
    /// The site's GPUs by model, for nodes that have GPUs.
    #[serde(default)]
    pub gpu_models: Vec<SiteGpuModel>,
    /// Mean grid price over the next 4 hours (UTC hour of the year on the shipped French grid
    /// year), the site's price adder included, EUR/MWh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_eur_per_mwh: Option<f64>,
    /// Mean grid carbon intensity over the next 4 hours, gCO2/kWh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub co2_g_per_kwh: Option<f64>,
    /// Outdoor temperature this hour, °C: the site's climate normals, else the Valence year.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outdoor_celsius: Option<f64>,
    /// What the site's heat network asks for this hour, watts; absent when the fleet declares
    /// no heat network at the site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_demand_watts: Option<f64>,
    /// Waste heat the site gives its heat network now, watts: its GPU draw (`power_watts`), at
    /// most the demand; absent without a heat network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heat_supplied_watts: Option<f64>,
}

/// The GPUs of one model at a site.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SiteGpuModel {
    /// The model's name in the fleet (`H200`).
    pub model: String,
    /// Nodes of the site with GPUs of this model.
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub nodes: u32,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus: u64,
    /// GPUs of the largest such node: the most one gang member of this model can ask for here.
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub gpus_per_node_max: u32,
    /// GPUs of this model with no work placed on them.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub gpus_free: u64,
}

/// `PUT /v1/federation/lease`: the federation endpoint renews the site's lease on federated jobs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FederationLease {
    /// How long from now, on the site's own clock, federated jobs may start: 1 to 600,000 ms.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub lease_ms: u64,
    /// Jobs of this site (its ids) the federation lets start; a grant lasts until the job starts
    /// or ends; at most 10,000 ids a call.
    #[serde(default)]
    pub grant: Vec<i64>,
}

/// The site's federation lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FederationLeaseState {
    /// Until when federated jobs may start, Unix milliseconds on the site's clock; 0 when no
    /// lease was ever given.
    pub until_ms: i64,
    /// Federated jobs (this site's ids, ascending, at most 10,000) the scheduler would have
    /// started in its latest rounds but held back for want of a grant; still pending.
    #[serde(default)]
    pub waiting_for_grant: Vec<i64>,
}

/// `PUT /v1/sites/{name}/gpu-power-cap`: the power cap every GPU of the site is to run under.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GpuPowerCap {
    /// Watts per GPU; `null` lifts the cap.
    pub gpu_power_cap_watts: Option<f64>,
}

/// One event of `GET /v1/events`: a job of the tenant changed state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    /// Increasing; resume a stream with `Last-Event-ID` or `?after=`.
    pub id: i64,
    pub job_id: i64,
    pub state: JobState,
    pub at_ms: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One GPU of a node, as its agent discovered it (NVML) or declared it (virtual).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GpuInfo {
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub index: u32,
    pub model: String,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub memory_mib: u64,
    /// The board power limit now in force, in watts.
    pub power_limit_watts: f64,
    /// Indexes of the GPUs this one reaches over NVLink.
    #[serde(default, deserialize_with = "crate::ranges::vec_int32")]
    pub nvlink_peers: Vec<u32>,
    #[serde(default)]
    pub mig_enabled: bool,
    /// True when declared (`--declared-gpus`) rather than found on a driver.
    #[serde(default)]
    pub r#virtual: bool,
}

/// `POST /v1/join-tokens` (the body may be left out): the limits of a new join token.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewJoinToken {
    /// Nodes it may join (default 1; an agent serving several nodes needs one per node).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub uses: Option<u32>,
    /// Seconds it stays valid (default 86,400: a day; at most a year).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int64")]
    pub ttl_s: Option<u64>,
    /// The only node it may join, by its fleet name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A join token agents join with (admin only), shown once, with its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinToken {
    pub token: String,
    /// Names the token in `GET /v1/join-tokens` and `DELETE /v1/join-tokens/{id}`.
    #[serde(default)]
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub uses: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A join token as `GET /v1/join-tokens` lists it (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JoinTokenInfo {
    pub id: String,
    pub created_at_ms: i64,
    /// Joins left; absent: any number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses_left: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at_ms: Option<i64>,
    /// `active`, `used_up`, `expired` or `revoked`.
    pub state: String,
}

/// `POST /v1/agent/join`: a node agent joins with a join token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentJoin {
    pub join_token: String,
    /// The node's name in the fleet.
    pub node: String,
    /// Where the node's gang members reach each other.
    pub address: String,
    pub gpus: Vec<GpuInfo>,
    /// Container runtimes the node runs images with (`podman`); without one, the node takes no
    /// job that names an image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runtimes: Vec<String>,
}

/// The node's own credential (shown once) and the lease timing it must keep.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AgentJoined {
    pub node: String,
    pub credential: String,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub heartbeat_ms: u64,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub lease_ms: u64,
}

/// One gang member's run on a node: the job, its rank and the generation it was assigned under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub struct RunKey {
    pub job_id: i64,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub member: u32,
    /// The job's start count when this run was assigned; a run of an older generation is stale.
    pub generation: i64,
}

/// A run that ended on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunExit {
    pub run: RunKey,
    /// The exit code; `128 + N` when killed by signal N.
    pub code: i32,
}

/// `POST /v1/agent/heartbeat`: renews the node's lease and reports its runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// Runs alive on the node.
    #[serde(default)]
    pub running: Vec<RunKey>,
    /// Runs that ended and whose end the server has not acknowledged yet (`acked` in a reply):
    /// sent again with every heartbeat until it has, so no end is lost to a server's crash.
    #[serde(default)]
    pub exited: Vec<RunExit>,
    /// The node's power draw, in watts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power_watts: Option<f64>,
    /// The GPU power cap the node applies, watts per GPU, as the server last asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_power_cap_watts: Option<f64>,
    /// The CPU package power limit the node applies, watts for all packages, as last asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_power_cap_watts: Option<f64>,
    /// How long the server may hold the call waiting for work, in milliseconds.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub wait_ms: u64,
}

/// One node's heartbeat within a batch, with the node's own credential.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeHeartbeat {
    pub node: String,
    pub credential: String,
    /// Its `wait_ms` is not read: the batch's is.
    pub heartbeat: Heartbeat,
}

/// `POST /v1/agent/heartbeats`: one agent process's heartbeats for many nodes, over one
/// connection. It lists the nodes whose state changed, and every node at least once per
/// heartbeat period (each listing renews that node's lease); the server holds the call until
/// one of the agent's nodes, listed or not, has work to do, or `wait_ms` passes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatBatch {
    /// Names the agent process (random, made at its start): the nodes it serves are woken
    /// together.
    pub agent_id: String,
    #[serde(default)]
    pub nodes: Vec<NodeHeartbeat>,
    /// How long the server may hold the call waiting for work, in milliseconds.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub wait_ms: u64,
    /// The `answer` number of the last answer this process received (0: none): the server
    /// plans again the nodes of later answers, which the process dropped or never got.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub last_answer: u64,
}

/// The answer for one node of a batch: its heartbeat reply, or why the node was refused.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodeHeartbeatReply {
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<HeartbeatReply>,
    /// The node's credential was refused: it must join again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The server's answer to a batched heartbeat: only the nodes that have something to do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatBatchReply {
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub lease_ms: u64,
    /// Numbers this answer, for the process's next `last_answer`.
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub answer: u64,
    #[serde(default)]
    pub nodes: Vec<NodeHeartbeatReply>,
}

/// Work for a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Assignment {
    pub run: RunKey,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub members: u32,
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// The job's environment with drome's own variables (`DROME_RANK`, ...) added.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// GPU indexes on the node.
    #[serde(deserialize_with = "crate::ranges::vec_int32")]
    pub gpus: Vec<u32>,
    /// The share of its one GPU, thousandths, when the run holds less than a whole GPU: the node
    /// holds it to that share of the GPU's compute and memory through MPS.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "crate::ranges::opt_int32")]
    pub gpu_milli: Option<u32>,
    /// CPU time the run may use, in thousandths of a CPU (0: not limited).
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub cpu_milli: u64,
    /// Memory the run may use, in MiB (0: not limited).
    #[serde(default, deserialize_with = "crate::ranges::int64")]
    pub memory_mib: u64,
    /// The OCI image to run the command in, from the node's own image store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The server's answer to a heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HeartbeatReply {
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub lease_ms: u64,
    /// Runs to start (the node ignores those it already runs).
    #[serde(default)]
    pub assign: Vec<Assignment>,
    /// Runs to stop: cancelled, or stale (a newer generation exists, or the job ended).
    #[serde(default)]
    pub kill: Vec<RunKey>,
    /// Ended runs whose end the server has recorded durably (or no longer needs): the node
    /// stops reporting them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked: Vec<RunKey>,
    /// GPU power cap the scheduler asks for, in watts per GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_power_cap_watts: Option<f64>,
    /// Power limit for the node's CPU packages the scheduler asks for, watts for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_power_cap_watts: Option<f64>,
    /// Pieces of run output a tenant asked for: the node answers each with
    /// `POST /v1/agent/logs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogRequest>,
    /// The node's new credential (a rotation): the node keeps it in place of the one it has and
    /// uses it from its next call; the old one works until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Which output of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogStream {
    #[default]
    Stdout,
    Stderr,
}

impl LogStream {
    pub fn as_str(self) -> &'static str {
        match self {
            LogStream::Stdout => "stdout",
            LogStream::Stderr => "stderr",
        }
    }
}

/// The server asks a node for a piece of a run's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogRequest {
    /// Echoed in the answer.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub id: u64,
    pub run: RunKey,
    pub stream: LogStream,
    /// Byte offset in the output file.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub offset: u64,
    /// The most bytes to send.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub limit: u64,
}

/// `POST /v1/agent/logs`: a node's answer to a [`LogRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogChunk {
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub id: u64,
    /// The bytes from the offset, as UTF-8 (cut before an incomplete character at the end;
    /// invalid bytes become U+FFFD).
    #[serde(default)]
    pub data: String,
    /// Where the next read starts: the offset plus the bytes sent.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub next_offset: u64,
    /// The file's size when read.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub size: u64,
    /// Why the node could not read the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/jobs/{id}/logs`: a piece of one gang member's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct JobLogs {
    pub job_id: i64,
    #[serde(deserialize_with = "crate::ranges::int32")]
    pub member: u32,
    /// The run the output belongs to (the job's start count).
    pub generation: i64,
    pub node: String,
    pub stream: LogStream,
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub offset: u64,
    pub data: String,
    /// Pass as `offset` to read on.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub next_offset: u64,
    /// The output's size so far, in bytes.
    #[serde(deserialize_with = "crate::ranges::int64")]
    pub size: u64,
    /// The job has ended: nothing is written after `size`.
    pub complete: bool,
}

/// Every error the API returns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `unauthorized`, `forbidden`, `not_found`, `invalid_json`,
    /// `invalid_field`, `too_large`, `conflict`, `unavailable`, `internal`.
    pub code: String,
    pub message: String,
    /// The offending field of the request body, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `GET /healthz`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub database: String,
}

/// The leader among the servers on one store: who holds the lease, in which epoch, since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Leader {
    /// The leading server's replica name (host:process:nonce).
    pub replica: String,
    /// One more at every takeover; the leader's writes are fenced by it.
    pub epoch: i64,
    /// When it took the lease, Unix milliseconds.
    pub since_ms: i64,
    /// When it last renewed the lease, Unix milliseconds.
    pub renewed_ms: i64,
    /// When the lease runs out unless renewed, Unix milliseconds.
    pub expires_ms: i64,
    /// Where the leader serves its API (other replicas forward to it what only it can answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// A server of the control plane, as it last recorded itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Replica {
    /// Its replica name (host:process:nonce).
    pub name: String,
    /// Where it serves the API.
    pub address: String,
    /// Whether it holds the leader's lease.
    pub leads: bool,
    /// When it started, Unix milliseconds.
    pub started_ms: i64,
    /// When it last recorded itself (a few times a lease), Unix milliseconds.
    pub seen_ms: i64,
}

/// `GET /v1/cluster`: the control plane's replicas as this server sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The replica that answered.
    pub replica: String,
    /// Whether the replica that answered leads.
    pub leads: bool,
    pub leader: Option<Leader>,
    /// Every replica seen within the last three leases, by name.
    #[serde(default)]
    pub replicas: Vec<Replica>,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// The UTC calendar date of `ms` (Unix milliseconds): year, month (1-12), day (1-31). Usage
/// reports name their days and months by it.
pub fn utc_date(ms: i64) -> (i64, u32, u32) {
    let days = ms.div_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m as u32, d as u32)
}

/// Unix milliseconds of the start (00:00 UTC) of the first day of the month `year`-`month`.
pub fn utc_month_start_ms(year: i64, month: u32) -> i64 {
    // Days from civil (Howard Hinnant's algorithm), day 1.
    let (y, m) = (if month <= 2 { year - 1 } else { year }, i64::from(month));
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400_000
}

/// How a usage report groups its rows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UsageBy {
    /// One row per tenant.
    #[default]
    Tenant,
    /// One row per job (all its runs).
    Job,
    /// One row per UTC day.
    Day,
    /// One row per UTC month.
    Month,
    /// One row per GPU model (CPU-only work: `none`).
    Model,
    /// One row per site (a gang's members are at one site).
    Site,
    /// One row per site and UTC month (`valence 2026-11`): the site's monthly report.
    #[serde(rename = "site-month")]
    SiteMonth,
}

impl std::str::FromStr for UsageBy {
    type Err = String;

    fn from_str(s: &str) -> Result<UsageBy, String> {
        [UsageBy::Tenant, UsageBy::Job, UsageBy::Day, UsageBy::Month, UsageBy::Model, UsageBy::Site, UsageBy::SiteMonth]
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| format!("'{s}' is not one of tenant, job, day, month, model, site, site-month"))
    }
}

impl UsageBy {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageBy::Tenant => "tenant",
            UsageBy::Job => "job",
            UsageBy::Day => "day",
            UsageBy::Month => "month",
            UsageBy::Model => "model",
            UsageBy::Site => "site",
            UsageBy::SiteMonth => "site-month",
        }
    }
}

/// What some runs used within a report's window. Fractional GPUs count by their share.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageRow {
    /// The group: a tenant's name, a job id, `2026-12-07`, `2026-12`, a GPU model, a site or a
    /// site's month (`valence 2026-11`).
    pub key: String,
    /// The tenant, for rows by job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Runs counted (a job restarted runs again).
    pub runs: u64,
    /// Runs still going at the report's end: their use is counted up to it.
    pub running: u64,
    pub gpu_hours: f64,
    /// CPU cores held, times hours.
    pub cpu_core_hours: f64,
    /// Memory held, GiB times hours.
    pub memory_gib_hours: f64,
    /// Energy its nodes' agents reported while it ran, its share of each node's draw, kWh.
    pub energy_kwh_measured: f64,
    /// Energy over the time no draw was reported, its GPUs counted at board power, kWh.
    pub energy_kwh_estimated: f64,
    /// Of its GPU-hours, the share over which a draw was reported (0 to 1).
    pub measured_share: f64,
    /// What it costs by the price list now in force, in the report's currency.
    pub cost: f64,
    /// The site's facility energy its energy brought (cooling, power conversion): its measured
    /// and estimated kWh times the site's marginal PUE less one, hour by hour, kWh.
    pub facility_kwh: f64,
    /// Its energy and the facility's, times the grid's carbon intensity hour by hour, kg CO2.
    pub co2_kg: f64,
    /// Its energy, the facility's and the heat pump's that sold its heat, at each hour's grid
    /// price: what the site paid for it, EUR.
    #[serde(default)]
    pub grid_cost_eur: f64,
    /// Heat its energy brought to the site's heat network, hour by hour (the share the network
    /// took of the heat the site recovers, at full load), kWh.
    #[serde(default)]
    pub heat_sold_kwh: f64,
    /// What the heat network paid for that heat, EUR.
    #[serde(default)]
    pub heat_revenue_eur: f64,
}

/// The price list usage is charged by (`PUT /v1/prices`, admin). Every figure is in `currency`,
/// excluding taxes; a job that may wait for cheaper power (`deferrable`) pays less by
/// `deferrable_discount`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Three capital letters (`EUR`).
    pub currency: String,
    /// Per GPU-hour, by GPU model (`H200`); a share of a GPU pays its share.
    #[serde(default)]
    pub gpu_hour: BTreeMap<String, f64>,
    /// Per GPU-hour of a model the list does not name.
    #[serde(default)]
    pub gpu_hour_default: f64,
    /// Per CPU core held for an hour.
    #[serde(default)]
    pub cpu_core_hour: f64,
    /// Per GiB of memory held for an hour.
    #[serde(default)]
    pub memory_gib_hour: f64,
    /// Per kWh the job's GPUs drew (measured, or estimated where not reported); 0: included in
    /// the GPU-hour.
    #[serde(default)]
    pub energy_kwh: f64,
    /// The share taken off a deferrable job's cost, 0 to 1.
    #[serde(default)]
    pub deferrable_discount: f64,
    /// Also charge each run's energy, the facility's and the heat pump's at the hour's grid price
    /// (the site's cost passed through, `grid_cost_eur`; the currency must be EUR, the grid's).
    #[serde(default)]
    pub energy_pass_through: bool,
    /// The share of the heat revenue a run's energy earned that is taken off its cost, 0 to 1
    /// (the currency must be EUR, the heat network's).
    #[serde(default)]
    pub heat_credit_share: f64,
}

impl Prices {
    /// A GPU-hour of `model` (matched without regard to case, as the fleet matches models), or
    /// the list's default.
    pub fn gpu_hour_of(&self, model: &str) -> f64 {
        self.gpu_hour.get(model).copied().unwrap_or_else(|| {
            let named = self.gpu_hour.iter().find(|(m, _)| m.eq_ignore_ascii_case(model));
            named.map_or(self.gpu_hour_default, |(_, p)| *p)
        })
    }
}

impl Default for Prices {
    fn default() -> Prices {
        Prices {
            currency: "EUR".into(),
            gpu_hour: BTreeMap::new(),
            gpu_hour_default: 0.0,
            cpu_core_hour: 0.0,
            memory_gib_hour: 0.0,
            energy_kwh: 0.0,
            deferrable_discount: 0.0,
            energy_pass_through: false,
            heat_credit_share: 0.0,
        }
    }
}

/// A tenant's monthly budget and where it stands this month (UTC): `GET /v1/budget`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    pub tenant: String,
    /// The most it may spend in a month; none when it has no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly: Option<f64>,
    pub currency: String,
    /// This month, `2026-12`.
    pub month: String,
    /// What its runs cost this month so far, by the price list in force.
    pub spent: f64,
    /// What its waiting and running jobs may still cost at most (their `max_runtime_s`).
    pub held: f64,
    /// Once this month's spending reaches the budget, its running and waiting jobs are
    /// cancelled (the admin's choice; otherwise only new submissions are refused).
    #[serde(default)]
    pub stop_running: bool,
}

/// Sets a tenant's monthly budget (`PUT /v1/tenants/{name}/budget`); absent removes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetUpdate {
    #[serde(default)]
    pub monthly: Option<f64>,
    /// Cancel the tenant's running and waiting jobs once the month's spending reaches the
    /// budget (default: running work goes on, new submissions are refused).
    #[serde(default)]
    pub stop_running: bool,
}

/// A usage report: `GET /v1/usage`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// The window, Unix ms: runs count for the part of them inside it.
    pub since_ms: i64,
    pub until_ms: i64,
    pub by: UsageBy,
    /// The currency of `cost`.
    pub currency: String,
    pub rows: Vec<UsageRow>,
    /// All rows together.
    pub total: UsageRow,
}

/// One finished job in `GET /v1/history` (what Slurm's `sacct` lists).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryRow {
    pub job_id: i64,
    pub name: String,
    pub tenant: String,
    /// How it ended: succeeded, failed or cancelled.
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub submitted_ms: i64,
    /// Its first run's start; `None` if it never ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<i64>,
    pub finished_ms: i64,
    /// Runs it had (a restart runs again).
    pub runs: u64,
    /// Its runs' time together, seconds.
    pub elapsed_s: f64,
    pub nodes: u32,
    /// GPUs it held (a share counts by its share).
    pub gpus: f64,
    /// The nodes of its last run.
    #[serde(default)]
    pub node_list: Vec<String>,
    pub gpu_hours: f64,
    /// Measured and estimated, kWh.
    pub energy_kwh: f64,
    /// What its runs cost by the price list in force, in the history's currency.
    pub cost: f64,
}

/// Finished jobs: `GET /v1/history`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct History {
    /// Jobs that finished in `[since_ms, until_ms)`, Unix ms, oldest end first.
    pub since_ms: i64,
    pub until_ms: i64,
    pub currency: String,
    pub rows: Vec<HistoryRow>,
    /// More jobs finished in the window than `limit`: ask again with `since_ms` the last row's
    /// `finished_ms` and `after_id` its `job_id`.
    pub truncated: bool,
}

/// The OpenAPI document of drome's REST API.
#[derive(OpenApi)]
#[openapi(
    info(title = "drome", description = "drome's control plane: tenants, jobs, GPU instances and the fleet.", version = "1"),
    paths(
        paths::health,
        paths::cluster,
        paths::create_tenant,
        paths::list_tenants,
        paths::set_quota,
        paths::rotate_tenant_token,
        paths::revoke_tenant_token,
        paths::remove_tenant,
        paths::audit_log,
        paths::usage,
        paths::history,
        paths::get_prices,
        paths::set_prices,
        paths::get_budget,
        paths::set_budget,
        paths::get_quota,
        paths::submit_job,
        paths::list_jobs,
        paths::get_job,
        paths::cancel_job,
        paths::job_logs,
        paths::list_nodes,
        paths::list_sites,
        paths::set_gpu_power_cap,
        paths::get_federation_lease,
        paths::set_federation_lease,
        paths::drain_node,
        paths::resume_node,
        paths::remove_node,
        paths::events,
        paths::create_join_token,
        paths::list_join_tokens,
        paths::revoke_join_token,
        paths::agent_join,
        paths::agent_heartbeat,
        paths::agent_heartbeats,
        paths::agent_logs,
    ),
    components(schemas(
        JobState, RestartPolicy, JobSpec, PlacedMember, StateChange, Job, JobList, NewTenant, Tenant,
        TenantCreated, QuotaUpdate, Quota, Node, Site, Event, ErrorBody, ErrorDetail, Health,
        GpuInfo, JoinToken, AgentJoin, AgentJoined, RunKey, RunExit, Heartbeat, Assignment, HeartbeatReply,
        NodeHeartbeat, HeartbeatBatch, NodeHeartbeatReply, HeartbeatBatchReply,
        LogStream, LogRequest, LogChunk, JobLogs, GpuPowerCap, Leader, Replica, ClusterStatus, NewJoinToken, JoinTokenInfo, Drain,
        TokenRotation, AuditEntry, UsageBy, UsageRow, UsageReport, HistoryRow, History, Prices, Budget, BudgetUpdate, SiteGpuModel, FederationLease, FederationLeaseState
    )),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags((name = "jobs", description = "Work: jobs and GPU instances"), (name = "tenants", description = "Tenants and quotas"), (name = "fleet", description = "Nodes and sites"), (name = "agents", description = "Node agents: join, leases, work"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn openapi() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}
