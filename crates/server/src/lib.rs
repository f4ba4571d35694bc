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
use replicas::LeaderLink;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{Notify, watch};

mod agent_routes;
pub mod agents;
pub mod auth;
mod budget;
mod convert;
pub mod error;
pub mod json;
mod leadership;
pub mod limits;
mod meter;
pub mod metrics;
pub mod node;
mod replicas;
mod resources;
mod routes;
mod scheduler;
pub mod serve;
mod usage;

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
    /// The address other replicas reach this one's API at (`http://host:port`); by default the
    /// address it listens on (the host's name for a wildcard address).
    pub advertise: Option<String>,
    /// Serve HTTPS with this configuration (`tls::server_config`); plain HTTP when `None`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How other replicas are trusted when this one forwards to the leader over HTTPS.
    pub peer_tls: Option<rustls::ClientConfig>,
    /// How long a client may take over its handshake and each request's headers.
    pub timeouts: serve::Timeouts,
    /// What one tenant may ask of the API (rate, streams, pending jobs).
    pub tenant_limits: limits::TenantLimits,
    /// How long ended jobs' state changes and spent join tokens are kept (`None`: for good).
    pub keep_events: Option<Duration>,
    pub keep_spent_tokens: Option<Duration>,
    /// How often the leader cancels the work of tenants past a budget that stops running work.
    pub budget_every: Duration,
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
            advertise: None,
            tls: None,
            peer_tls: None,
            timeouts: serve::Timeouts::default(),
            tenant_limits: limits::TenantLimits::unlimited(),
            keep_events: None,
            keep_spent_tokens: None,
            budget_every: budget::ENFORCE_EVERY,
        }
    }
}

/// What the API reads of the scheduler's last round.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// GPUs in use per node, by node index.
    pub node_gpus_used: Vec<u32>,
    /// GPUs asked for by the pending jobs, thousandths (a share of one GPU counts as its share).
    pub gpus_pending_milli: u64,
    /// Federated jobs held back for want of the federation's grant, ascending (capped).
    pub waiting_for_grant: Vec<i64>,
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
    /// The CPUs and memory a job holds when it does not say, read once from the fleet.
    pub(crate) resource_defaults: resources::ResourceDefaults,
    /// Tenants by token hash, as read a moment ago: a burst of requests with one token costs
    /// one store read, not one each.
    pub(crate) tenant_cache: Arc<auth::TenantCache>,
    /// What each tenant has used of its limits.
    pub(crate) limiter: Arc<limits::Limiter>,
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
    /// The longest a request (its body read and its answer made) may take, streams aside.
    pub(crate) request_timeout: Duration,
    /// This server's replica name: the lease's holder while it leads.
    pub(crate) replica: Arc<str>,
    /// Whether this state is the leader's or a standby's: a standby forwards to the leader what
    /// only the leader can answer, and sends agents on.
    pub(crate) role: replicas::Role,
    /// Forwards requests to the leader (standby).
    pub(crate) http: reqwest::Client,
    /// The term of the leader's lease: replicas record themselves a few times a term.
    pub(crate) leader_lease: Duration,
    /// What nodes' reports may say (agents are input too).
    pub(crate) node_bounds: Arc<agents::checks::NodeBounds>,
    /// The grid and climate years the sites' price, carbon and heat figures are read from.
    pub(crate) site_years: Arc<SiteYears>,
    /// Integrates the nodes' reported draw into their runs' records (the leader, with agents).
    pub(crate) meter: Option<Arc<meter::Meter>>,
    /// Each budgeted tenant's submissions, one at a time through its check.
    pub(crate) budget_locks: Arc<budget::BudgetLocks>,
}

impl AppState {
    pub(crate) fn job_changed(&self) {
        self.events.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells the scheduler of a change the store has committed. A standby's store announces its
    /// writes to the leader itself, in their transactions.
    pub(crate) fn tell_scheduler(&self, event: scheduler::SchedEvent) {
        if self.role == replicas::Role::Standby {
            return;
        }
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
    /// The epoch it leads in, if it took the lead as it started (else it serves the API as a
    /// standby and takes the lead when the leader's lease runs out).
    pub epoch: Option<i64>,
    store: store::Store,
    serve: tokio::task::JoinHandle<()>,
    /// Leads, or waits to lead and then leads; ends, with why, when the lead is lost.
    role: tokio::task::JoinHandle<ServerError>,
    /// The leader's tasks, while it leads.
    leading: Arc<Mutex<Option<LeaderTasks>>>,
    /// Follows the other replicas' notices; records this replica's presence.
    background: Vec<tokio::task::JoinHandle<()>>,
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
            ended = &mut self.role => {
                self.serve.abort();
                Err(ended.unwrap_or_else(|e| ServerError::LeadershipLost(format!("the lease keeper stopped: {e}"))))
            }
        }
    }

    /// Stops serving and scheduling, and closes the store.
    pub async fn shutdown(self) {
        self.serve.abort();
        self.role.abort();
        for t in &self.background {
            t.abort();
        }
        let tasks = self.leading.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = tasks {
            t.stop().await;
        }
        let _ = self.serve.await;
        let _ = self.role.await;
        self.store.close().await;
    }
}

/// What a leader runs beside the API; stopped when it steps down.
struct LeaderTasks {
    scheduler: tokio::task::JoinHandle<()>,
    leases: Option<tokio::task::JoinHandle<()>>,
    announcer: Option<tokio::task::JoinHandle<()>>,
    meter: Option<tokio::task::JoinHandle<()>>,
    budgets: tokio::task::JoinHandle<()>,
}

impl LeaderTasks {
    fn abort(&self) {
        self.scheduler.abort();
        self.budgets.abort();
        for t in [&self.leases, &self.announcer, &self.meter].into_iter().flatten() {
            t.abort();
        }
    }

    async fn stop(self) {
        self.abort();
        let _ = self.scheduler.await;
    }
}

const ADMIN_HASH_KEY: &str = "admin_token_hash";

/// What every replica has, leading or not.
#[derive(Clone)]
struct Common {
    store: store::Store,
    fleet: Arc<Fleet>,
    node_ids: Arc<HashMap<String, NodeId>>,
    metrics: Arc<metrics::Metrics>,
    events: watch::Sender<u64>,
    empty_cluster: Arc<sched::ClusterState>,
    tenant_cache: Arc<auth::TenantCache>,
    limiter: Arc<limits::Limiter>,
    replica: Arc<str>,
    address: Arc<str>,
    http: reqwest::Client,
    leader_lease: Duration,
    node_bounds: Arc<agents::checks::NodeBounds>,
    site_years: Arc<SiteYears>,
    budget_locks: Arc<budget::BudgetLocks>,
    request_timeout: Duration,
}

impl Common {
    fn state(&self, role: replicas::Role, store: store::Store, admin_hash: &str) -> AppState {
        let (sched_events, _) = tokio::sync::mpsc::unbounded_channel();
        AppState {
            store,
            fleet: self.fleet.clone(),
            node_ids: self.node_ids.clone(),
            admin_hash: Arc::from(admin_hash),
            metrics: self.metrics.clone(),
            wake: Arc::new(Notify::new()),
            sched_events,
            empty_cluster: self.empty_cluster.clone(),
            max_gpus_per_node: self.fleet.max_gpus_per_node(),
            resource_defaults: resources::ResourceDefaults::of(&self.fleet),
            tenant_cache: self.tenant_cache.clone(),
            limiter: self.limiter.clone(),
            events: self.events.clone(),
            snapshot: Arc::new(RwLock::new(Snapshot {
                node_gpus_used: vec![0; self.fleet.nodes.len()],
                gpus_pending_milli: 0,
                waiting_for_grant: Vec::new(),
            })),
            remote: None,
            site_caps: Arc::default(),
            dynamic_caps: false,
            replica: self.replica.clone(),
            role,
            http: self.http.clone(),
            leader_lease: self.leader_lease,
            node_bounds: self.node_bounds.clone(),
            site_years: self.site_years.clone(),
            meter: None,
            budget_locks: self.budget_locks.clone(),
            request_timeout: self.request_timeout,
        }
    }
}

/// What only the leader uses of the configuration.
struct LeaderConfig {
    admin_token: Option<String>,
    policy: String,
    preempt_exempt: Duration,
    tick: Duration,
    executor: Arc<dyn NodeExecutor>,
    agents: Option<LeaseConfig>,
    power_mode: sched::power::PowerMode,
    deferral: Option<sched::defer::DeferralGate>,
    gpu_cap_by_hour: Option<Vec<f64>>,
    budget_every: Duration,
}

/// The router every request goes through: the standby's until the replica leads, the leader's
/// from then on.
type RouterCell = Arc<RwLock<axum::Router>>;

/// Opens the store (running migrations), binds the listener and serves the API. The replica
/// that takes the leader's lease (on SQLite, always this one) settles the admin token and runs
/// the scheduler; on PostgreSQL, while another replica leads, this one serves the API as a
/// standby and takes the lead when that replica's lease runs out.
pub async fn start(config: Config) -> Result<Running, ServerError> {
    let store = store::Store::connect(&config.db_url).await?;
    let replica = leadership::holder_name();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let addr = listener.local_addr().map_err(|source| ServerError::Listen { addr: config.listen, source })?;
    let scheme = if config.tls.is_some() { "https" } else { "http" };
    let address = config.advertise.clone().unwrap_or_else(|| leadership::default_address(addr, scheme));
    // Listening before anything is read: a write that commits later is announced to us.
    let link: LeaderLink = Arc::default();
    let fleet = Arc::new(config.fleet);
    let common = Common {
        store: store.clone(),
        node_ids: Arc::new(fleet.node_ids().map(|id| (fleet.node(id).name.clone(), id)).collect()),
        empty_cluster: Arc::new(sched::ClusterState::new(fleet.clone())),
        fleet: fleet.clone(),
        metrics: Arc::new(metrics::Metrics::new()),
        events: watch::channel(0u64).0,
        tenant_cache: Arc::default(),
        limiter: Arc::new(limits::Limiter::new(config.tenant_limits)),
        request_timeout: config.timeouts.request,
        replica: Arc::from(replica.as_str()),
        address: Arc::from(address.as_str()),
        http: {
            let builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
            let builder = match config.peer_tls.clone() {
                Some(tls) => builder.use_preconfigured_tls(tls),
                None => builder,
            };
            builder.build().map_err(|e| ServerError::Config(format!("cannot make an HTTP client: {e}")))?
        },
        leader_lease: config.leader_lease,
        node_bounds: Arc::new(agents::checks::NodeBounds::new(&fleet)),
        site_years: Arc::new(SiteYears::of(&fleet)),
        budget_locks: Arc::default(),
    };
    let mut background = Vec::new();
    if config.keep_events.is_some() || config.keep_spent_tokens.is_some() {
        let (events, tokens) = (config.keep_events, config.keep_spent_tokens);
        background.push(tokio::spawn(prune(store.clone(), events, tokens, Duration::from_secs(3600))));
    }
    if common.limiter.counts_pending() {
        let period = Duration::from_secs(1);
        background.push(tokio::spawn(limits::count_pending(store.clone(), common.limiter.clone(), period)));
    }
    if let Some(l) = store.listen().await? {
        background.push(tokio::spawn(replicas::follow_notices(
            l,
            store.clone(),
            common.events.clone(),
            link.clone(),
            common.tenant_cache.clone(),
        )));
    }
    // Listed by every replica from the moment this one serves.
    let started_ms = now_ms();
    store.record_replica(&replica, &address, started_ms, started_ms, started_ms - replicas::FORGET_AFTER_MS).await?;
    background.push(tokio::spawn(replicas::record_presence(
        store.clone(),
        common.replica.clone(),
        common.address.clone(),
        started_ms,
        config.leader_lease,
    )));
    let lead_config = LeaderConfig {
        admin_token: config.admin_token,
        policy: config.policy,
        preempt_exempt: config.preempt_exempt,
        tick: config.tick,
        executor: config.executor,
        agents: config.agents,
        power_mode: config.power_mode,
        deferral: config.deferral,
        gpu_cap_by_hour: config.gpu_cap_by_hour,
        budget_every: config.budget_every,
    };
    let lease = config.leader_lease;
    let leading: Arc<Mutex<Option<LeaderTasks>>> = Arc::default();
    let first = leadership::try_acquire(&store, &replica, &address, lease).await?;
    let (router, role, generated, epoch) = match first {
        Some(leader) => {
            let keeper = leadership::Keeper::spawn(store.clone(), leader.clone(), common.metrics.clone());
            let (state, tasks, generated) = lead(&common, &leader, lead_config, &link).await?;
            *leading.lock().unwrap_or_else(|e| e.into_inner()) = Some(tasks);
            let router: RouterCell = Arc::new(RwLock::new(routes::router(state)));
            let role = tokio::spawn(step_down_when_lost(keeper, common.metrics.clone(), leading.clone()));
            (router, role, generated, Some(leader.epoch))
        }
        None => {
            let admin_hash = standby_admin_hash(&store, lead_config.admin_token.as_deref()).await?;
            let state = common.state(replicas::Role::Standby, store.announcing(), &admin_hash);
            let router: RouterCell = Arc::new(RwLock::new(routes::router(state)));
            if let Some(l) = store.lease().await? {
                tracing::info!(leader = %l.holder, epoch = l.epoch, "another replica leads; serving the API as a standby");
            }
            let role =
                tokio::spawn(lead_when_free(common.clone(), lease, lead_config, link, router.clone(), leading.clone()));
            (router, role, None, None)
        }
    };
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let router = router.read().unwrap_or_else(|e| e.into_inner()).clone();
        async move {
            use tower::ServiceExt;
            match router.oneshot(req).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        }
    });
    let serve = tokio::spawn(serve::serve(listener, app, config.tls.clone(), config.timeouts));
    let fleet = &common.fleet;
    tracing::info!(%addr, %address, backend = ?store.backend(), nodes = fleet.nodes.len(), gpus = fleet.total_gpus(), leads = epoch.is_some(), "drome server listening");
    Ok(Running { addr, generated_admin_token: generated, epoch, store, serve, role, leading, background })
}

/// Forgets, every `period`, the state changes of jobs that ended longer ago than `events` and
/// the join tokens spent longer ago than `tokens` (each kept for good when `None`).
async fn prune(store: store::Store, events: Option<Duration>, tokens: Option<Duration>, period: Duration) {
    let before = |keep: Option<Duration>| match keep {
        Some(k) => now_ms().saturating_sub(i64::try_from(k.as_millis()).unwrap_or(i64::MAX)),
        None => i64::MIN,
    };
    loop {
        match store.prune(before(events), before(tokens), now_ms()).await {
            Ok((0, 0)) => {}
            Ok((events, tokens)) => tracing::info!(events, join_tokens = tokens, "pruned what is past its keeping"),
            Err(e) => tracing::warn!(error = %e, "cannot prune old events and join tokens"),
        }
        tokio::time::sleep(period).await;
    }
}

/// The admin token's hash a standby checks admins against: the one it was given, or the one
/// the leader stored (waited for, on the first start of a cluster).
async fn standby_admin_hash(store: &store::Store, token: Option<&str>) -> Result<String, ServerError> {
    if let Some(token) = token {
        return Ok(auth::hash_token(token));
    }
    let mut told = false;
    loop {
        if let Some(hash) = store.setting(ADMIN_HASH_KEY).await? {
            return Ok(hash);
        }
        if !told {
            tracing::info!("waiting for the leader to settle the admin token");
            told = true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A standby's life: waits for the lease, leads (its router becomes the leader's), and ends
/// when the lead is lost.
async fn lead_when_free(
    common: Common,
    lease: Duration,
    config: LeaderConfig,
    link: LeaderLink,
    router: RouterCell,
    leading: Arc<Mutex<Option<LeaderTasks>>>,
) -> ServerError {
    let leader = match leadership::acquire(&common.store, &common.replica, &common.address, lease).await {
        Ok(l) => l,
        Err(e) => return ServerError::Store(e),
    };
    let keeper = leadership::Keeper::spawn(common.store.clone(), leader.clone(), common.metrics.clone());
    match lead(&common, &leader, config, &link).await {
        Ok((state, tasks, _)) => {
            *leading.lock().unwrap_or_else(|e| e.into_inner()) = Some(tasks);
            *router.write().unwrap_or_else(|e| e.into_inner()) = routes::router(state);
        }
        Err(e) => return e,
    }
    step_down_when_lost(keeper, common.metrics.clone(), leading).await
}

/// Waits until the lease is lost, then stops scheduling and talking to agents at once.
async fn step_down_when_lost(
    keeper: leadership::Keeper,
    metrics: Arc<metrics::Metrics>,
    leading: Arc<Mutex<Option<LeaderTasks>>>,
) -> ServerError {
    let lost = keeper.lost().await;
    metrics.leader_epoch.set(0);
    if let Some(t) = leading.lock().unwrap_or_else(|e| e.into_inner()).take() {
        t.abort();
    }
    tracing::error!(reason = %lost, "stepped down: no longer the leader");
    ServerError::LeadershipLost(lost)
}

/// Takes up the lead under `leader`'s lease: settles the admin token, reads the agents and the
/// caps from the store and starts the scheduler (which reads the rest). Returns the leader's
/// state for the API, its tasks, and the admin token if this start made one.
async fn lead(
    common: &Common,
    leader: &leadership::Leadership,
    config: LeaderConfig,
    link: &LeaderLink,
) -> Result<(AppState, LeaderTasks, Option<String>), ServerError> {
    let store = &common.store;
    let mut generated = None;
    let admin_hash = match (&config.admin_token, store.setting(ADMIN_HASH_KEY).await?) {
        (Some(token), _) => {
            let hash = auth::hash_token(token);
            store.fenced(leader.epoch).set_setting(ADMIN_HASH_KEY, &hash).await?;
            hash
        }
        (None, Some(hash)) => hash,
        (None, None) => {
            let token = auth::new_token().map_err(|e| ServerError::Token(e.to_string()))?;
            let hash = auth::hash_token(&token);
            store.fenced(leader.epoch).set_setting(ADMIN_HASH_KEY, &hash).await?;
            generated = Some(token);
            hash
        }
    };
    let fleet = common.fleet.clone();
    let exempt = model::SimDuration::from_secs_f64(config.preempt_exempt.as_secs_f64());
    let policy = sched::policy_preempting_after(&config.policy, 0, exempt)?;
    let dynamic = matches!(config.power_mode, sched::power::PowerMode::Dynamic { .. });
    if dynamic && config.agents.is_none() {
        return Err(ServerError::Config(
            "the dynamic power mode needs node agents (--agents) to apply GPU caps".into(),
        ));
    }
    let guard = power_guard(&fleet, config.power_mode);
    // Every write of the leader is fenced by its epoch, so once another replica took over, what
    // this one still tries to write is refused (the API answers 503).
    let mut state = common.state(replicas::Role::Leader, store.fenced(leader.epoch), &admin_hash);
    let remote = config.agents.map(|lease| {
        let mut r = RemoteNodes::new(lease);
        r.wake = state.wake.clone();
        r
    });
    let mut site_caps = HashMap::new();
    if let Some(r) = &remote {
        for n in store.agent_nodes().await? {
            r.register(&n.name, &n.token_hash, &n.address, &n.runtimes);
            if let Some(previous) = &n.previous_token_hash {
                r.register_previous(&n.name, previous);
            }
        }
        for (key, reason) in store.settings_with_prefix(routes::DRAINED_PREFIX).await? {
            if let Some(node) = key.strip_prefix(routes::DRAINED_PREFIX) {
                r.set_drained(node, Some(reason));
            }
        }
        for (key, _) in store.settings_with_prefix(routes::REMOVED_PREFIX).await? {
            if let Some(node) = key.strip_prefix(routes::REMOVED_PREFIX) {
                r.set_removed(node);
            }
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
    state.sched_events = sched_events.clone();
    state.remote = remote.clone();
    // Reports further apart than a lease are not integrated: the node was not heard from.
    state.meter = remote.as_ref().map(|r| Arc::new(meter::Meter::new(r.config.lease.as_millis() as i64)));
    let meter = state.meter.clone().map(|m| tokio::spawn(meter::flush_loop(m, state.store.clone())));
    state.site_caps = Arc::new(RwLock::new(site_caps));
    state.dynamic_caps = dynamic && guard.is_some();
    state.metrics.leader_acquired.inc();
    state.metrics.leader_epoch.set(leader.epoch);
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
    // From here on the other replicas' writes reach the scheduler, which then reads the store:
    // what it reads and what it is told overlap, and it takes each job once.
    *link.lock().unwrap_or_else(|e| e.into_inner()) = Some(sched_events);
    let announcer = (store.backend() == store::Backend::Postgres)
        .then(|| tokio::spawn(replicas::announce_changes(store.clone(), state.events.subscribe())));
    let scheduler = tokio::spawn(scheduler.run());
    let budgets = tokio::spawn(budget::enforce_loop(state.clone(), config.budget_every));
    Ok((state, LeaderTasks { scheduler, leases, announcer, meter, budgets }, generated))
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

/// Hour of the UTC year holding `ms` (0-8783), the hour the energy years are read at.
pub(crate) fn hour_of_year(ms: i64) -> usize {
    ((ms - year_start_ms(ms)).max(0) / 3_600_000) as usize
}

/// Hours ahead whose mean price and carbon a site reports: the twin's federation compares the
/// same span.
pub(crate) const SITE_LOOKAHEAD_HOURS: usize = 4;

/// The grid and climate years a site's price, carbon and heat figures are read from, built once
/// at start: a site's climate year is synthesised from its normals, which takes milliseconds.
pub(crate) struct SiteYears {
    /// The shipped French grid year; `None` only if it could not be read.
    grid: Option<energy::GridYear>,
    /// Each site's temperature year, by site index.
    temperature: Vec<Option<energy::TemperatureYear>>,
    /// The fleet's power model: what a site's facility adds to its IT draw.
    energy: energy::EnergyModel,
    /// The most an IT kWh costs the site at any hour of the year at any site (its facility
    /// included, at the grid's price), EUR: what a budget holds for energy passed through.
    pub(crate) dearest_it_kwh_eur: f64,
}

impl SiteYears {
    fn of(fleet: &Fleet) -> SiteYears {
        let grid = energy::GridYear::france()
            .inspect_err(|e| tracing::warn!(error = %e, "grid year unreadable: sites report no price or carbon"))
            .ok();
        let temperature = fleet
            .sites
            .iter()
            .map(|site| {
                let year = energy::site_temperature_year(site);
                if let Err(e) = &year {
                    tracing::warn!(site = %site.name, error = %e, "temperature year unreadable: no grid or heat figures");
                }
                year.ok()
            })
            .collect();
        let energy = energy::EnergyModel::new(fleet, None, &energy::HeatOptions::default());
        let mut years = SiteYears { grid, temperature, energy, dearest_it_kwh_eur: 0.0 };
        let dearest = (0..fleet.sites.len())
            .flat_map(|i| (0..energy::HOURS_PER_YEAR).map(move |h| (i, h)))
            .filter_map(|(i, h)| years.hour_figures(i, h))
            .map(|f| f.marginal_pue.max(1.0) * f.price_eur_per_mwh / 1000.0)
            .fold(0.0, f64::max);
        years.dearest_it_kwh_eur = dearest;
        years
    }

    /// What the energy of a run at the fleet's site `index` brings at `hour_of_year`: the
    /// grid's carbon that hour and the site's marginal PUE at that hour's outdoor temperature.
    pub(crate) fn hour_figures(&self, index: usize, hour_of_year: usize) -> Option<usage::HourFigures> {
        let grid = self.grid.as_ref()?;
        let outdoor = self.temperature.get(index)?.as_ref()?.at_hour(hour_of_year);
        let site = model::SiteId(u32::try_from(index).ok()?);
        let it_watts = self.energy.sites.get(index)?.it.max_watts.max(1.0);
        let p0 = self.energy.site_power_at_it(site, 0.0, outdoor).total_watts;
        let p1 = self.energy.site_power_at_it(site, it_watts, outdoor).total_watts;
        // Heat sold per IT watt as at full load: the share of its heat the network takes is then
        // at its lowest, so a run is never credited heat a fuller site could not sell.
        let full_it = it_watts * self.energy.site_wall_factor(site);
        let heat = self.energy.site_heat_at_it(site, full_it, outdoor);
        let network = &self.energy.sites.get(index)?.network;
        Some(usage::HourFigures {
            co2_g_per_kwh: grid.co2_g_per_kwh(hour_of_year),
            marginal_pue: (p1 - p0) / it_watts,
            price_eur_per_mwh: grid.price_eur_per_mwh(hour_of_year),
            heat_sold_per_it: heat.map_or(0.0, |h| h.exported_watts / full_it.max(1.0)),
            heat_pump_per_it: heat.map_or(0.0, |h| h.heat_pump_watts / full_it.max(1.0)),
            heat_price_eur_per_mwh: network.price_eur_per_mwh,
        })
    }

    /// The figures of the fleet's site `index` at `hour_of_year`, if its years could be read.
    pub(crate) fn facts(&self, fleet: &Fleet, index: usize, hour_of_year: usize) -> Option<energy::SiteHourFacts> {
        let site = fleet.sites.get(index)?;
        let grid = self.grid.as_ref()?;
        let temperature = self.temperature.get(index)?.as_ref()?;
        Some(energy::site_hour_facts(site, grid, temperature, hour_of_year, SITE_LOOKAHEAD_HOURS))
    }
}

/// Creates a tenant and returns it with its token (for `drome up`; the API does the same).
pub async fn create_tenant(
    store: &store::Store,
    name: &str,
    quota: store::TenantQuota,
) -> Result<(store::Tenant, String), error::ApiError> {
    let token = auth::new_token()?;
    let tenant = store.create_tenant(name, &auth::hash_token(&token), quota, now_ms()).await?;
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
