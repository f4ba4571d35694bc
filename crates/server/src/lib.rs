//! drome's control plane: the REST API under `/v1`, tenants and their tokens, the scheduler loop
//! and the nodes that run the work.
//!
//! - The store ([`store::Store`], SQLite or PostgreSQL) is the truth. A job is committed before
//!   its `201`; every state change is a conditional update.
//! - The scheduler loop keeps the cluster, the queue and the active jobs in memory, reads them
//!   from the store once at start-up, and keeps them up to date from events; it runs a
//!   [`sched::Policy`] on them, unchanged: after a restart it simply carries on.
//! - Nodes run the work behind the [`node::NodeExecutor`] trait; [`node::InProcessNodes`] runs it in
//!   process without GPUs.

use model::{Fleet, NodeId};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

mod agent_routes;
pub mod agents;
pub mod auth;
mod convert;
pub mod error;
pub mod json;
mod leadership;
pub mod metrics;
pub mod node;
mod routes;
mod scheduler;

pub use agents::{LeaseConfig, RemoteNodes};
pub use node::{InProcessNodes, NodeExecutor, RunOutcome, RunSpec};
pub use scheduler::bench::{LiveStartCost, live_start_cost};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Policy(#[from] sched::PolicyError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Token(String),
    #[error("{0}")]
    Config(String),
    /// Another replica took the leader's lease over, or it could not be renewed: this server
    /// stopped scheduling.
    #[error("no longer the leader: {0}")]
    LeadershipLost(String),
}

/// How to run a server.
pub struct Config {
    /// `sqlite://PATH` or `postgres://...`.
    pub db_url: String,
    pub listen: SocketAddr,
    /// The admin token; when `None`, the one stored earlier is kept, or a new one is made.
    pub admin_token: Option<String>,
    pub fleet: Fleet,
    /// A name [`sched::policy_by_name`] knows.
    pub policy: String,
    /// A preempting policy leaves a running job alone until it has run this long.
    pub preempt_exempt: Duration,
    /// The longest the scheduler waits between rounds when nothing wakes it.
    pub tick: Duration,
    pub executor: Arc<dyn NodeExecutor>,
    /// When set, the work runs on node agents with these leases, and `executor` is not used.
    pub agents: Option<LeaseConfig>,
    /// How sites with a grid cap are held to it: admission only, or also lowering the GPU power
    /// caps the agents apply (needs agents).
    pub power_mode: sched::power::PowerMode,
    /// Holds deferrable jobs for a cheaper, cleaner or heat-hungry hour; its hourly series is
    /// read by UTC hour of the year.
    pub deferral: Option<sched::defer::DeferralGate>,
    /// Price-following GPU caps: the fraction of the board limit no GPU runs above, for each UTC
    /// hour of the year (1 in cheap hours); agents apply it (needs agents).
    pub gpu_cap_by_hour: Option<Vec<f64>>,
    /// How long the leader's lease runs unrenewed: a replica waiting on PostgreSQL takes over
    /// this long after the leader stopped renewing it.
    pub leader_lease: Duration,
}

impl Config {
    /// A configuration with in-process nodes, FIFO scheduling and a short tick.
    pub fn new(db_url: impl Into<String>, listen: SocketAddr, fleet: Fleet) -> Config {
        Config {
            db_url: db_url.into(),
            listen,
            admin_token: None,
            fleet,
            policy: "fifo".into(),
            preempt_exempt: Duration::from_secs(600),
            tick: Duration::from_millis(500),
            executor: Arc::new(InProcessNodes::default()),
            agents: None,
            power_mode: sched::power::PowerMode::Admission,
            deferral: None,
            gpu_cap_by_hour: None,
            leader_lease: Duration::from_secs(5),
        }
    }
}

/// What the API reads of the scheduler's last round.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// GPUs in use per node, by node index.
    pub node_gpus_used: Vec<u32>,
}

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: store::Store,
    pub(crate) fleet: Arc<Fleet>,
    pub(crate) node_ids: Arc<HashMap<String, NodeId>>,
    pub(crate) admin_hash: Arc<str>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Wakes the scheduler when something outside its events changed (a cap, a node's report).
    pub(crate) wake: Arc<Notify>,
    /// What the API committed that the scheduler must know: submissions, cancellations, quotas.
    pub(crate) sched_events: scheduler::SchedEvents,
    /// The fleet with nothing allocated, to tell at once a request that could never fit.
    pub(crate) empty_cluster: Arc<sched::ClusterState>,
    /// GPUs of the fleet's largest node, read once: a submission's check does not walk the fleet.
    pub(crate) max_gpus_per_node: u8,
    /// Tenants by token hash, as read a moment ago: a burst of requests with one token costs
    /// one store read, not one each.
    pub(crate) tenant_cache: Arc<auth::TenantCache>,
    /// Bumped on every job event, for the event streams.
    pub(crate) events: watch::Sender<u64>,
    pub(crate) snapshot: Arc<RwLock<Snapshot>>,
    /// The node agents, when the work runs on them.
    pub(crate) remote: Option<RemoteNodes>,
    /// GPU power caps an admin set for each site's nodes, watts per GPU, by site name.
    pub(crate) site_caps: Arc<RwLock<HashMap<String, f64>>>,
    /// The scheduler's power guard chooses GPU caps too (dynamic mode): it asks the agents for
    /// the lower of its cap and the admin's.
    pub(crate) dynamic_caps: bool,
    /// This server's replica name: the lease's holder while it leads.
    pub(crate) replica: Arc<str>,
}

impl AppState {
    pub(crate) fn job_changed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells the scheduler of a change the store has committed.
    pub(crate) fn tell_scheduler(&self, event: scheduler::SchedEvent) {
        if self.sched_events.send(event).is_err() {
            tracing::warn!("scheduler is not running: the change waits for its next start");
        }
    }
}

/// A server that is running.
pub struct Running {
    /// Where it listens (the real port when asked for port 0).
    pub addr: SocketAddr,
    /// The admin token, when this start made one: shown once, stored only as a hash.
    pub generated_admin_token: Option<String>,
    store: store::Store,
    serve: tokio::task::JoinHandle<()>,
    scheduler: tokio::task::JoinHandle<()>,
    leases: Option<tokio::task::JoinHandle<()>>,
    /// Renews the leader's lease; ends, with why, when it is lost.
    leadership: tokio::task::JoinHandle<String>,
    /// The epoch of the lease this server leads in.
    pub epoch: i64,
}

impl Running {
    /// The store the server uses (for `drome up` and tests).
    pub fn store(&self) -> &store::Store {
        &self.store
    }

    /// Waits until the HTTP server stops (it does not, unless it fails) or the server loses the
    /// leader's lease (then its scheduler has stopped, and the loss is the error).
    pub async fn wait(mut self) -> Result<(), ServerError> {
        tokio::select! {
            _ = &mut self.serve => Ok(()),
            lost = &mut self.leadership => {
                self.serve.abort();
                Err(ServerError::LeadershipLost(lost.unwrap_or_else(|e| format!("the lease keeper stopped: {e}"))))
            }
        }
    }

    /// Stops serving and scheduling, and closes the store.
    pub async fn shutdown(self) {
        self.serve.abort();
        self.scheduler.abort();
        self.leadership.abort();
        if let Some(l) = self.leases {
            l.abort();
        }
        let _ = self.serve.await;
        let _ = self.scheduler.await;
        self.store.close().await;
    }
}

const ADMIN_HASH_KEY: &str = "admin_token_hash";

/// Opens the store (running migrations), settles the admin token, binds the listener and starts
/// the HTTP server and the scheduler loop.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let store = store::Store::connect(&config.db_url).await?;
    // Only the leader mints an admin token, schedules and talks to agents.
    let replica = leadership::holder_name();
    let leader = leadership::acquire(&store, &replica, config.leader_lease).await?;
    // Renewed from now on: the rest of the start-up may take longer than the lease.
    let metrics = Arc::new(metrics::Metrics::new());
    let keeper = leadership::Keeper::spawn(store.clone(), leader.clone(), metrics.clone());
    let mut generated = None;
    let admin_hash = match (&config.admin_token, store.setting(ADMIN_HASH_KEY).await?) {
        (Some(token), _) => {
            let hash = auth::hash_token(token);
            store.set_setting(ADMIN_HASH_KEY, &hash).await?;
            hash
        }
        (None, Some(hash)) => hash,
        (None, None) => {
            let token = auth::new_token().map_err(|e| ServerError::Token(e.to_string()))?;
            let hash = auth::hash_token(&token);
            store.set_setting(ADMIN_HASH_KEY, &hash).await?;
            generated = Some(token);
            hash
        }
    };
    let fleet = Arc::new(config.fleet);
    let exempt = model::SimDuration::from_secs_f64(config.preempt_exempt.as_secs_f64());
    let policy = sched::policy_preempting_after(&config.policy, 0, exempt)?;
    let dynamic = matches!(config.power_mode, sched::power::PowerMode::Dynamic { .. });
    if dynamic && config.agents.is_none() {
        return Err(ServerError::Config(
            "the dynamic power mode needs node agents (--agents) to apply GPU caps".into(),
        ));
    }
    let guard = power_guard(&fleet, config.power_mode);
    let node_ids = fleet.node_ids().map(|id| (fleet.node(id).name.clone(), id)).collect();
    let (events, _) = watch::channel(0u64);
    let wake = Arc::new(Notify::new());
    let remote = config.agents.map(|lease| {
        let mut r = RemoteNodes::new(lease);
        r.wake = wake.clone();
        r
    });
    let mut site_caps = HashMap::new();
    if let Some(r) = &remote {
        for n in store.agent_nodes().await? {
            r.register(&n.name, &n.token_hash, &n.address);
        }
        for (i, site) in fleet.sites.iter().enumerate() {
            let Some(w) = store.setting(&routes::cap_key(&site.name)).await?.and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            let nodes: Vec<String> =
                fleet.nodes.iter().filter(|n| n.site.index() == i).map(|n| n.name.clone()).collect();
            r.set_gpu_power_cap(&nodes, Some(w));
            site_caps.insert(site.name.clone(), w);
        }
    }
    let executor: Arc<dyn NodeExecutor> = match &remote {
        Some(r) => Arc::new(r.clone()),
        None => config.executor,
    };
    let (sched_events, sched_events_rx) = tokio::sync::mpsc::unbounded_channel();
    // Every write of this server is the leader's: fenced by its epoch, so once another replica
    // took over, what this one still tries to write is refused (the API answers 503).
    let state = AppState {
        store: store.fenced(leader.epoch),
        fleet: fleet.clone(),
        node_ids: Arc::new(node_ids),
        admin_hash: Arc::from(admin_hash.as_str()),
        metrics,
        wake,
        sched_events,
        empty_cluster: Arc::new(sched::ClusterState::new(fleet.clone())),
        max_gpus_per_node: fleet.max_gpus_per_node(),
        tenant_cache: Arc::default(),
        events,
        snapshot: Arc::new(RwLock::new(Snapshot { node_gpus_used: vec![0; fleet.nodes.len()] })),
        remote: remote.clone(),
        site_caps: Arc::new(RwLock::new(site_caps)),
        dynamic_caps: dynamic && guard.is_some(),
        replica: Arc::from(replica.as_str()),
    };
    state.metrics.leader_acquired.inc();
    state.metrics.leader_epoch.set(leader.epoch);
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    if let Some(g) = &guard {
        tracing::info!(policy = policy.name(), mode = ?g.budget().mode, "scheduling within the sites' grid caps");
    }
    let mut scheduler = scheduler::Scheduler::new(state.clone(), policy, guard, executor, config.tick, sched_events_rx);
    if let Some(gate) = config.deferral {
        tracing::info!(max_delay_h = gate.max_delay.as_secs_f64() / 3600.0, "deferrable jobs wait for better hours");
        scheduler.defer_with(gate);
    }
    if let Some(caps) = config.gpu_cap_by_hour {
        tracing::info!(dear_hours = caps.iter().filter(|&&c| c < 1.0).count(), "gpu caps follow the grid price");
        scheduler.cap_by_hour(caps);
    }
    let leases = remote.map(|r| {
        tokio::spawn(async move {
            let step = (r.config.lease / 10).clamp(Duration::from_millis(20), Duration::from_millis(500));
            // Joins are told in one line once they settle (a second without one), not node by node.
            let (mut told, mut seen, mut quiet) = (0u64, 0u64, Duration::ZERO);
            loop {
                tokio::time::sleep(step).await;
                r.expire();
                let joins = r.joins();
                if joins != seen {
                    (seen, quiet) = (joins, Duration::ZERO);
                } else if joins != told {
                    quiet += step;
                    if quiet >= Duration::from_secs(1) {
                        tracing::info!(joined = joins - told, live = r.live_nodes().len(), "nodes joined");
                        told = joins;
                    }
                }
            }
        })
    });
    let scheduler = tokio::spawn(scheduler.run());
    let epoch = leader.epoch;
    let leadership = {
        let (stop_scheduler, metrics) = (scheduler.abort_handle(), state.metrics.clone());
        let stop_leases = leases.as_ref().map(|l| l.abort_handle());
        tokio::spawn(async move {
            let lost = keeper.lost().await;
            metrics.leader_epoch.set(0);
            // A deposed leader stops scheduling and talking to agents at once.
            stop_scheduler.abort();
            if let Some(l) = stop_leases {
                l.abort();
            }
            tracing::error!(reason = %lost, "stepped down: no longer the leader");
            lost
        })
    };
    let app = routes::router(state);
    let serve = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    tracing::info!(%addr, backend = ?store.backend(), nodes = fleet.nodes.len(), gpus = fleet.total_gpus(), "drome server listening");
    Ok(Running { addr, generated_admin_token: generated, store, serve, scheduler, leases, leadership, epoch })
}

/// Unix milliseconds at which the UTC year holding `ms` began (0 for times before 1970).
pub fn year_start_ms(ms: i64) -> i64 {
    const DAY_MS: i64 = 86_400_000;
    let (mut year, mut start) = (1970i64, 0i64);
    loop {
        let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
        let next = start + if leap { 366 } else { 365 } * DAY_MS;
        if next > ms {
            return start;
        }
        (year, start) = (year + 1, next);
    }
}

/// Creates a tenant and returns it with its token (for `drome up`; the API does the same).
pub async fn create_tenant(
    store: &store::Store,
    name: &str,
    gpu_quota: Option<u32>,
) -> Result<(store::Tenant, String), error::ApiError> {
    let token = auth::new_token()?;
    let tenant = store.create_tenant(name, &auth::hash_token(&token), gpu_quota.map(i64::from), now_ms()).await?;
    Ok((tenant, token))
}

/// Gives an existing tenant a new token (the old one stops working) and returns it.
pub async fn rotate_token(store: &store::Store, tenant_id: i64) -> Result<String, error::ApiError> {
    let token = auth::new_token()?;
    if !store.set_token_hash(tenant_id, &auth::hash_token(&token)).await? {
        return Err(error::ApiError::NotFound(format!("no tenant {tenant_id}")));
    }
    Ok(token)
}

/// The guard that holds the live scheduler to the sites' grid caps (worst case at the hottest
/// hour of the shipped climate year) when any site of `fleet` declares one: it never starts work
/// a site's connection could not carry. In the dynamic mode it also chooses GPU power caps, which
/// the scheduler hands to the agents.
pub(crate) fn power_guard(fleet: &model::Fleet, mode: sched::power::PowerMode) -> Option<sched::power::PowerGuard> {
    if fleet.sites.iter().all(|s| s.grid_power_cap_watts.is_none()) {
        return None;
    }
    let model = energy::EnergyModel::new(fleet, None, &energy::HeatOptions::default());
    let hottest = energy::TemperatureYear::valence().map(|t| t.hottest_celsius()).unwrap_or(40.0);
    let f = model.guard_figures(fleet, hottest);
    let sites = fleet
        .sites
        .iter()
        .zip(&f.site_idle_watts)
        .map(|(s, &base)| sched::power::SiteBudget {
            cap_watts: s.grid_power_cap_watts.unwrap_or(f64::INFINITY),
            base_watts: base,
        })
        .collect();
    let nodes = f
        .nodes
        .iter()
        .map(|n| sched::power::NodeWatts {
            site: n.site,
            full_watts_per_gpu: n.full_watts_per_gpu,
            board_watts_per_gpu: n.board_watts_per_gpu,
            free_cap: n.free_cap,
            host_cut_watts_per_gpu: n.host_cut_watts_per_gpu,
        })
        .collect();
    Some(sched::power::PowerGuard::new(sched::power::PowerBudget { sites, nodes, mode }))
}
