//! drome's federation endpoint: one `/v1` API over many autonomous sites.
//!
//! Each site runs its own control plane (`drome server`, its own store and agents) and keeps
//! scheduling what it holds when the federation or the fiber is gone. The federation takes a
//! tenant's job, records it durably first (which site, why), then forwards it to that site as the
//! tenant, marked federated, under an idempotency key of its own: a forward retried after a crash
//! finds the job the first one made. Sites are chosen by [`dispatch::choose`], the same code the
//! twin replays years with.
//!
//! A site starts a federated job only while it holds the federation's lease, renewed at every
//! poll, and only once the federation has granted that job: the site says which jobs it would
//! start, the federation notes them durably as possibly started, then grants them. A site that
//! stops answering is skipped at once; once it has not answered for the loss delay and its lease
//! has surely lapsed, the jobs waiting there that were never granted move to other sites (those
//! granted or seen running are reported lost), and when it answers again it is told to drop the
//! moved jobs before its lease is renewed: a job runs at one site at most.
//!
//! Knows nothing about scheduling inside a site, SQL (the store's) or the twin.

pub mod config;
mod routes;
pub mod site;

use config::{SiteConfig, SitesConfig};
use dispatch::{DispatchPolicy, DispatchWeights, JobNeeds, SiteFacts};
use site::{SiteClient, SiteError};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use store::{FED_FORWARDING, FED_LOST, FedJob, FedMove, FedStateUpdate, NewFedJob, Store};

pub use routes::router;

/// How the federation polls, leases and declares sites lost.
#[derive(Clone, Debug)]
pub struct FederationOptions {
    pub policy: DispatchPolicy,
    pub weights: DispatchWeights,
    /// Each site is polled (its report, its lease, its jobs' states) this often.
    pub poll: Duration,
    /// A call to a site not answered within this is taken as no answer.
    pub request_timeout: Duration,
    /// How long a renewal lets a site start federated jobs.
    pub lease: Duration,
    /// A site not answering for this long is lost: its waiting jobs move.
    pub loss_after: Duration,
    /// A lost site's runs that restart on failure restart elsewhere this long after its lease
    /// has surely lapsed (at least two leases): longer than the sites' agent lease and grace, so
    /// that a site whose server died has had its agents stop them.
    pub restart_after: Duration,
    /// The admin's token (tenants are made with it).
    pub admin_token: String,
}

impl FederationOptions {
    pub fn new(admin_token: String) -> FederationOptions {
        FederationOptions {
            policy: DispatchPolicy::Capacity,
            weights: DispatchWeights::default(),
            poll: Duration::from_millis(1000),
            request_timeout: Duration::from_millis(2000),
            lease: Duration::from_millis(6000),
            loss_after: Duration::from_millis(5000),
            restart_after: Duration::from_millis(30_000),
            admin_token,
        }
    }
}

/// What the federation knows of a site now.
#[derive(Clone, Debug, Default)]
pub struct SiteView {
    pub reports: Vec<api::Site>,
    pub reachable: bool,
    pub lost: bool,
    pub last_answer_ms: Option<i64>,
    /// When the last lease renewal was sent, answered or not: the site's lease lapses at the
    /// latest a request timeout and a lease after it.
    pub last_lease_sent_ms: Option<i64>,
    /// GPUs of the jobs sent since its last report, which the report does not count yet.
    pub gpus_sent_since_report: f64,
}

pub(crate) struct Site {
    pub config: SiteConfig,
    pub client: SiteClient,
    pub view: RwLock<SiteView>,
    /// Which slice of the jobs running there the next poll reads.
    refresh_turn: std::sync::atomic::AtomicUsize,
    /// Woken when a job is sent here: a grant round follows shortly, so a job that fits starts
    /// without waiting for the next poll.
    sent: tokio::sync::Notify,
}

/// The federation's shared state: its store, its sites and their last reports.
pub struct Federation {
    pub store: Store,
    pub config: SitesConfig,
    pub options: FederationOptions,
    pub(crate) sites: Vec<Site>,
    /// Tokens to act as each tenant (by id) at each site, as stored.
    tokens: RwLock<std::collections::HashMap<(i64, String), String>>,
    /// Held while a token is made or rotated at a site: two at once would each undo the other.
    token_change: tokio::sync::Mutex<()>,
    /// Jobs to record, committed together by [`write_records`].
    records: tokio::sync::mpsc::Sender<RecordRequest>,
    /// Sites' ids of forwarded jobs, written together by [`write_forwarded`]; not waited for:
    /// a forward whose record is lost in a crash is sent again under the same key, and the site
    /// answers with the job it made.
    forwarded: tokio::sync::mpsc::UnboundedSender<(i64, String, i64, String)>,
    /// Tenants by the hash of their federation token.
    tenants: RwLock<std::collections::HashMap<String, store::Tenant>>,
}

/// A job to record, and where to say how that went.
struct RecordRequest {
    job: NewFedJob,
    reply: tokio::sync::oneshot::Sender<Recorded>,
}

/// What recording one job did.
pub(crate) enum Recorded {
    Done(Box<store::FedInserted>),
    /// Its idempotency key came before with another request.
    Conflict,
    Failed(String),
}

/// The group commit of new records: whatever requests wait go in one transaction.
async fn write_records(store: Store, mut queue: tokio::sync::mpsc::Receiver<RecordRequest>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match queue.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        let jobs: Vec<NewFedJob> = batch.iter().map(|r| r.job.clone()).collect();
        match store.fed_insert_jobs(&jobs, now_ms()).await {
            Ok(results) => {
                for (request, result) in batch.into_iter().zip(results) {
                    let answer = match result {
                        Ok(inserted) => Recorded::Done(Box::new(inserted)),
                        Err(store::StoreError::Conflict { .. }) => Recorded::Conflict,
                        Err(e) => Recorded::Failed(e.to_string()),
                    };
                    let _ = request.reply.send(answer);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = batch.len(), "jobs not recorded");
                for request in batch {
                    let _ = request.reply.send(Recorded::Failed(e.to_string()));
                }
            }
        }
    }
}

async fn write_forwarded(store: Store, mut queue: tokio::sync::mpsc::UnboundedReceiver<(i64, String, i64, String)>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 4096 {
            match queue.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        if let Err(e) = store.fed_set_forwarded(&batch, now_ms()).await {
            // Left forwarding: sent again, the site answers with the job it made.
            tracing::warn!(error = %e, jobs = batch.len(), "forwarded jobs' site ids not written");
        }
    }
}

/// Why the federation could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Site(#[from] SiteError),
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// One server's grid and heat figures for the dispatch. What the server reports of its sites
/// now wins (price and carbon their mean, heat their sum); the sites file's values stand in for a
/// figure none of its sites reports.
#[derive(Clone, Copy, Debug, PartialEq)]
struct GridAndHeat {
    price_eur_per_mwh: f64,
    co2_g_per_kwh: f64,
    heat_demand_watts: f64,
    heat_supplied_watts: f64,
}

impl GridAndHeat {
    fn of(reports: &[api::Site], config: &SiteConfig) -> GridAndHeat {
        let reported = |f: fn(&api::Site) -> Option<f64>| {
            reports.iter().filter_map(f).fold((0.0, 0usize), |(sum, n), x| (sum + x, n + 1))
        };
        let mean_or = |(sum, n): (f64, usize), fallback: f64| if n == 0 { fallback } else { sum / n as f64 };
        let sum_or = |(sum, n): (f64, usize), fallback: f64| if n == 0 { fallback } else { sum };
        // A server that reports no supply: its whole GPU draw is taken as the heat on offer.
        let power_watts: f64 = reports.iter().map(|r| r.power_watts).sum();
        GridAndHeat {
            price_eur_per_mwh: mean_or(reported(|r| r.price_eur_per_mwh), config.price_eur_per_mwh),
            co2_g_per_kwh: mean_or(reported(|r| r.co2_g_per_kwh), config.co2_g_per_kwh),
            heat_demand_watts: sum_or(reported(|r| r.heat_demand_watts), config.heat_demand_watts),
            heat_supplied_watts: sum_or(reported(|r| r.heat_supplied_watts), power_watts),
        }
    }
}

/// GPUs a job holds, a share of one GPU counted as its fraction.
pub fn job_gpus(spec: &api::JobSpec) -> f64 {
    match spec.gpu_milli {
        Some(m) => f64::from(m) / 1000.0 * f64::from(spec.nodes.max(1)),
        None => f64::from(spec.gpus_per_node) * f64::from(spec.nodes.max(1)),
    }
}

impl Federation {
    pub fn new(
        store: Store,
        config: SitesConfig,
        options: FederationOptions,
    ) -> Result<Arc<Federation>, FederationError> {
        let sites = config
            .sites
            .iter()
            .map(|c| {
                Ok(Site {
                    config: c.clone(),
                    client: SiteClient::new(c, options.request_timeout)?,
                    view: RwLock::new(SiteView::default()),
                    refresh_turn: std::sync::atomic::AtomicUsize::new(0),
                    sent: tokio::sync::Notify::new(),
                })
            })
            .collect::<Result<Vec<_>, SiteError>>()?;
        let (records, record_queue) = tokio::sync::mpsc::channel(4096);
        tokio::spawn(write_records(store.clone(), record_queue));
        let (forwarded, forwarded_queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(write_forwarded(store.clone(), forwarded_queue));
        Ok(Arc::new(Federation {
            store,
            config,
            options,
            sites,
            tokens: RwLock::new(Default::default()),
            token_change: tokio::sync::Mutex::new(()),
            records,
            forwarded,
            tenants: RwLock::new(Default::default()),
        }))
    }

    pub(crate) fn site(&self, name: &str) -> Option<&Site> {
        self.sites.iter().find(|s| s.config.name == name)
    }

    pub fn view(&self, name: &str) -> Option<SiteView> {
        self.site(name).map(|s| s.view.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// The facts of every site for one job, in the sites file's order.
    fn facts(&self, spec: &api::JobSpec) -> Vec<SiteFacts> {
        let gpus = job_gpus(spec);
        self.sites
            .iter()
            .map(|s| {
                let v = s.view.read().unwrap_or_else(|e| e.into_inner());
                let models = v.reports.iter().flat_map(|r| &r.gpu_models);
                let of_model = |m: &&api::SiteGpuModel| spec.gpu_model.as_ref().is_none_or(|want| *want == m.model);
                let could_ever_fit = models.clone().filter(of_model).any(|m| {
                    m.nodes >= spec.nodes.max(1)
                        && (spec.gpu_milli.is_some() || m.gpus_per_node_max >= spec.gpus_per_node)
                });
                let total_gpus: u64 = models.clone().filter(of_model).map(|m| m.gpus).sum();
                let free_gpus: u64 = models.filter(of_model).map(|m| m.gpus_free).sum();
                // One server queues all its sites' jobs: its figure is on each of its sites.
                let queued = v.reports.first().map_or(0.0, |r| r.gpus_pending) + v.gpus_sent_since_report;
                let headroom = v.reports.iter().all(|r| r.power_cap_watts.is_none_or(|cap| r.power_watts < cap));
                let region = s.config.region.clone().or_else(|| v.reports.iter().find_map(|r| r.region.clone()));
                let energy = GridAndHeat::of(&v.reports, &s.config);
                SiteFacts {
                    name: s.config.name.clone(),
                    region,
                    reachable: v.reachable && !v.lost,
                    // A site never heard from is taken as able: it gets the job once it answers.
                    could_ever_fit: could_ever_fit || v.reports.is_empty(),
                    fits_now: could_ever_fit && free_gpus as f64 - queued >= gpus && headroom,
                    total_gpus: total_gpus as f64,
                    free_gpus: free_gpus as f64,
                    queued_gpus: queued,
                    price_eur_per_mwh: energy.price_eur_per_mwh,
                    co2_g_per_kwh: energy.co2_g_per_kwh,
                    heat_demand_watts: energy.heat_demand_watts,
                    heat_supplied_watts: energy.heat_supplied_watts,
                    fiber_gbps: s.config.fiber_gbps,
                }
            })
            .collect()
    }

    /// What `tenant`'s job must stay in.
    fn needs(&self, tenant: &str, spec: &api::JobSpec) -> JobNeeds {
        let binding = self.config.binding(tenant);
        JobNeeds {
            gpus: job_gpus(spec),
            site: binding.and_then(|b| b.site.clone()),
            region: binding.and_then(|b| b.region.clone()),
            dataset: spec
                .dataset
                .as_ref()
                .map(|d| dispatch::Dataset { site: d.site.clone(), bytes: (d.size_gb.max(0.0) * 1e9) as u64 }),
        }
    }

    /// Chooses a site for a job, leaving out `avoid`. `Ok(None)` with a reason when sites could
    /// run it but none answers: the job is recorded at the first allowed one and waits there.
    pub fn choose(
        &self,
        tenant: &str,
        spec: &api::JobSpec,
        avoid: Option<&str>,
    ) -> Result<(String, String), dispatch::Refusal> {
        let mut facts = self.facts(spec);
        if let Some(a) = avoid {
            for f in facts.iter_mut().filter(|f| f.name == a) {
                f.reachable = false;
            }
        }
        let needs = self.needs(tenant, spec);
        match dispatch::choose(self.options.policy, &self.options.weights, &needs, &facts) {
            Ok(choice) => {
                let site = &facts[choice.site];
                let mut v = self.sites[choice.site].view.write().unwrap_or_else(|e| e.into_inner());
                v.gpus_sent_since_report += needs.gpus;
                Ok((site.name.clone(), format!("{} ({} policy)", choice.reason, self.options.policy)))
            }
            Err(dispatch::Refusal::NoneReachable(why)) => {
                let first = facts.iter().find(|f| dispatch::allowed(&needs, f) && Some(f.name.as_str()) != avoid);
                match first {
                    Some(f) => Ok((f.name.clone(), format!("waits for a site to answer: {why}"))),
                    None => Err(dispatch::Refusal::NoneReachable(why)),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Records a job, committed with whatever others wait.
    pub(crate) async fn record(&self, job: NewFedJob) -> Recorded {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if self.records.send(RecordRequest { job, reply }).await.is_err() {
            return Recorded::Failed("the federation's record writer stopped".into());
        }
        answer.await.unwrap_or_else(|_| Recorded::Failed("the federation's record writer stopped".into()))
    }

    /// The tenant whose federation token hashes to `hash`.
    pub(crate) async fn tenant_by_hash(&self, hash: &str) -> Result<Option<store::Tenant>, store::StoreError> {
        if let Some(t) = self.tenants.read().unwrap_or_else(|e| e.into_inner()).get(hash) {
            return Ok(Some(t.clone()));
        }
        let found = self.store.tenant_by_token_hash(hash).await?.filter(|t| t.removed_ms.is_none());
        if let Some(t) = &found {
            self.tenants.write().unwrap_or_else(|e| e.into_inner()).insert(hash.to_string(), t.clone());
        }
        Ok(found)
    }

    fn cached_token(&self, tenant_id: i64, site: &str) -> Option<String> {
        self.tokens.read().unwrap_or_else(|e| e.into_inner()).get(&(tenant_id, site.to_string())).cloned()
    }

    /// The token to act as `tenant_id` (named `tenant`) at `site`, made there on first use.
    pub(crate) async fn site_token(
        &self,
        site: &Site,
        tenant_id: i64,
        tenant: &str,
    ) -> Result<String, FederationError> {
        let name = &site.config.name;
        if let Some(t) = self.cached_token(tenant_id, name) {
            return Ok(t);
        }
        let _one_at_a_time = self.token_change.lock().await;
        let token = match self.store.fed_site_token(tenant_id, name).await? {
            Some(t) => t,
            None => {
                let t = site.client.tenant_token(tenant).await?;
                self.store.fed_set_site_token(tenant_id, name, &t).await?;
                t
            }
        };
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).insert((tenant_id, name.clone()), token.clone());
        Ok(token)
    }

    /// A new token for `tenant` at `site`, `refused` having been refused there (rotated at the
    /// site, or a new store); another caller's newer token if it made one meanwhile.
    pub(crate) async fn renew_site_token(
        &self,
        site: &Site,
        tenant_id: i64,
        tenant: &str,
        refused: &str,
    ) -> Result<String, FederationError> {
        let name = &site.config.name;
        let _one_at_a_time = self.token_change.lock().await;
        if let Some(t) = self.store.fed_site_token(tenant_id, name).await?.filter(|t| t != refused) {
            self.tokens.write().unwrap_or_else(|e| e.into_inner()).insert((tenant_id, name.clone()), t.clone());
            return Ok(t);
        }
        let t = site.client.tenant_token(tenant).await?;
        self.store.fed_set_site_token(tenant_id, name, &t).await?;
        self.tokens.write().unwrap_or_else(|e| e.into_inner()).insert((tenant_id, name.clone()), t.clone());
        Ok(t)
    }

    /// Sends a recorded job to its site. `Ok(true)` once the site took it; `Ok(false)` when the
    /// site did not answer (it stays recorded, forwarding, and is sent again).
    pub(crate) async fn forward(&self, job: &FedJob, tenant: &str) -> Result<api::Job, FederationError> {
        let Some(site) = self.site(&job.site) else {
            return Err(SiteError::Refused {
                site: job.site.clone(),
                status: 404,
                body: None,
                message: format!("site '{}' is no longer in the sites file", job.site),
            }
            .into());
        };
        let mut spec: api::JobSpec = serde_json::from_str(&job.spec_json).map_err(|e| SiteError::Refused {
            site: job.site.clone(),
            status: 400,
            body: None,
            message: format!("stored job {} is unreadable: {e}", job.id),
        })?;
        spec.federated = true;
        let token = self.site_token(site, job.tenant_id, tenant).await?;
        let key = site_key(job);
        let taken = match site.client.submit(&token, &spec, &key).await {
            Err(SiteError::Refused { status: 401, .. }) => {
                // The site forgot the tenant's token (rotated there, or a new store): a new one.
                let token = self.renew_site_token(site, job.tenant_id, tenant, &token).await?;
                site.client.submit(&token, &spec, &key).await?
            }
            other => other?,
        };
        let _ = self.forwarded.send((job.id, job.site.clone(), taken.id, taken.state.as_str().to_string()));
        site.sent.notify_one();
        Ok(taken)
    }

    /// The job as the tenant sees it: the site's answer with the federation's place, or the
    /// last known state when the site does not answer.
    pub(crate) fn to_api(&self, job: &FedJob, tenant: &str, at_site: Option<api::Job>) -> api::Job {
        let moves: Vec<api::FederationMove> = serde_json::from_str(&job.moves_json).unwrap_or_default();
        let place = api::FederationPlace {
            site: job.site.clone(),
            site_job_id: job.site_job_id,
            reason: job.reason.clone(),
            moves,
        };
        let spec: api::JobSpec = serde_json::from_str(&job.spec_json).unwrap_or_default();
        match at_site {
            Some(mut j) => {
                j.id = job.id;
                j.tenant = tenant.to_string();
                j.idempotency_key = job.idempotency_key.clone();
                j.spec.federated = spec.federated;
                j.federation = Some(place);
                j
            }
            None => {
                let (state, message) = match job.state.as_str() {
                    FED_FORWARDING => (api::JobState::Pending, Some(format!("being sent to site {}", job.site))),
                    FED_LOST => (
                        api::JobState::Running,
                        Some(format!("site {} is lost: its run's end is unknown until it answers", job.site)),
                    ),
                    s => (state_from_str(s).unwrap_or(api::JobState::Pending), job.message.clone()),
                };
                api::Job {
                    id: job.id,
                    tenant: tenant.to_string(),
                    name: job.name.clone(),
                    state,
                    instance: spec.command.is_none(),
                    spec,
                    idempotency_key: job.idempotency_key.clone(),
                    attempts: 0,
                    placement: Vec::new(),
                    exit_code: None,
                    message,
                    submitted_at_ms: job.submitted_ms,
                    started_at_ms: None,
                    finished_at_ms: None,
                    history: Vec::new(),
                    federation: Some(place),
                }
            }
        }
    }
}

/// The idempotency key a job is sent to its present site with: one per site it goes to.
pub(crate) fn site_key(job: &FedJob) -> String {
    let moves = serde_json::from_str::<Vec<api::FederationMove>>(&job.moves_json).map_or(0, |m| m.len());
    format!("federation-{}-{moves}", job.id)
}

pub(crate) fn state_from_str(s: &str) -> Option<api::JobState> {
    use api::JobState::*;
    [Pending, Scheduled, Running, Succeeded, Failed, Cancelled, Preempted].into_iter().find(|x| x.as_str() == s)
}

fn is_terminal(state: &str) -> bool {
    matches!(state, "succeeded" | "failed" | "cancelled")
}

/// Starts the federation's background work: a poller per site and the mover of jobs off lost
/// sites. Returns their handles.
pub fn spawn_tasks(fed: &Arc<Federation>) -> Vec<tokio::task::JoinHandle<()>> {
    let mut handles = Vec::new();
    for i in 0..fed.sites.len() {
        let fed = fed.clone();
        handles.push(tokio::spawn(async move { poll_site(fed, i).await }));
    }
    let f = fed.clone();
    handles.push(tokio::spawn(async move { keep_forwarding(f).await }));
    handles
}

/// One site's poll loop: its report, then (the site answering) the jobs it must drop, its
/// lease, and its jobs' states. A site not answering for the loss delay is declared lost, and
/// once its lease has surely lapsed its waiting jobs move.
async fn poll_site(fed: Arc<Federation>, index: usize) {
    let mut tick = tokio::time::interval(fed.options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let site = &fed.sites[index];
        tokio::select! {
            _ = tick.tick() => {}
            _ = site.sent.notified() => {
                // The site's scheduler holds a job that fits back for its grant in its next round.
                tokio::time::sleep(GRANT_ROUND_DELAY).await;
                if let Err(e) = grant_round(&fed, site).await {
                    tracing::debug!(site = %site.config.name, error = %e, "grant round failed; the next poll grants");
                }
                continue;
            }
        }
        let name = site.config.name.clone();
        match site.client.sites().await {
            Ok(reports) => {
                let was_lost = {
                    let mut v = site.view.write().unwrap_or_else(|e| e.into_inner());
                    let was = v.lost;
                    v.reports = reports;
                    v.reachable = true;
                    v.last_answer_ms = Some(now_ms());
                    v.gpus_sent_since_report = 0.0;
                    was
                };
                if was_lost {
                    tracing::info!(site = %name, "site answers again");
                }
                // Jobs moved away must be gone before the site may start federated jobs again.
                match drop_moved(&fed, site).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::warn!(site = %name, error = %e, "moved jobs not yet dropped; lease held back");
                        continue;
                    }
                }
                site.view.write().unwrap_or_else(|e| e.into_inner()).last_lease_sent_ms = Some(now_ms());
                let lease_ms = fed.options.lease.as_millis() as u64;
                let waiting = match site.client.renew_lease(lease_ms, Vec::new()).await {
                    Ok(state) => state.waiting_for_grant,
                    Err(e) => {
                        tracing::warn!(site = %name, error = %e, "lease not renewed");
                        continue;
                    }
                };
                site.view.write().unwrap_or_else(|e| e.into_inner()).lost = false;
                if let Err(e) = grant(&fed, site, &waiting, lease_ms).await {
                    tracing::warn!(site = %name, error = %e, "starts not granted");
                }
                if let Err(e) = refresh_states(&fed, site).await {
                    tracing::debug!(site = %name, error = %e, "job states not refreshed");
                }
            }
            Err(e) => {
                let now = now_ms();
                // A site cut off for a lease past its lease's end has stopped its federated runs
                // that restart elsewhere (on-failure), and a dead site's agents theirs after their
                // own lease: `restart_after` waits for both.
                let lease_ms = fed.options.lease.as_millis() as i64;
                let (declare, move_now, restart_now) = {
                    let mut v = site.view.write().unwrap_or_else(|e| e.into_inner());
                    if v.reachable {
                        tracing::warn!(site = %name, error = %e, "site does not answer; no new jobs go there");
                    }
                    v.reachable = false;
                    let silent_ms = now - v.last_answer_ms.unwrap_or(0);
                    let declare = !v.lost && silent_ms >= fed.options.loss_after.as_millis() as i64;
                    if declare {
                        v.lost = true;
                    }
                    let lapsed_at = v.last_lease_sent_ms.map_or(0, |t| {
                        t + fed.options.request_timeout.as_millis() as i64 + fed.options.lease.as_millis() as i64
                    });
                    let restart_ms = (fed.options.restart_after.as_millis() as i64).max(2 * lease_ms);
                    (declare, v.lost && now > lapsed_at, v.lost && now > lapsed_at + restart_ms)
                };
                if declare {
                    tracing::warn!(site = %name, "site lost: its waiting jobs move once its lease has lapsed");
                }
                if move_now && let Err(e) = move_off(&fed, site).await {
                    tracing::warn!(site = %name, error = %e, "jobs not moved");
                }
                if restart_now && let Err(e) = restart_off(&fed, site).await {
                    tracing::warn!(site = %name, error = %e, "jobs not restarted elsewhere");
                }
            }
        }
    }
}

/// How long after a job is sent to a site its grant round runs: time for the site's scheduler
/// to hold it back for want of a grant. It also bounds these rounds to a few dozen a second.
const GRANT_ROUND_DELAY: Duration = Duration::from_millis(30);

/// Between polls, after jobs were sent to `site`: asks which it would start now and grants
/// them. Only while the site answers and holds the lease (never while moved jobs are still to
/// drop there: the lease is not renewed before they are).
async fn grant_round(fed: &Federation, site: &Site) -> Result<(), FederationError> {
    {
        let mut v = site.view.write().unwrap_or_else(|e| e.into_inner());
        if !v.reachable || v.lost || v.last_lease_sent_ms.is_none() {
            return Ok(());
        }
        v.last_lease_sent_ms = Some(now_ms());
    }
    let lease_ms = fed.options.lease.as_millis() as u64;
    let waiting = site.client.renew_lease(lease_ms, Vec::new()).await?.waiting_for_grant;
    grant(fed, site, &waiting, lease_ms).await
}

/// Lets `site` start the jobs it asked to, once the federation has noted (durably) that they
/// may have started there: such a job no longer moves if the site is lost.
async fn grant(fed: &Federation, site: &Site, asked: &[i64], lease_ms: u64) -> Result<(), FederationError> {
    if asked.is_empty() {
        return Ok(());
    }
    let granted = fed.store.fed_grant(&site.config.name, asked, now_ms()).await?;
    if granted.is_empty() {
        return Ok(());
    }
    site.view.write().unwrap_or_else(|e| e.into_inner()).last_lease_sent_ms = Some(now_ms());
    site.client.renew_lease(lease_ms, granted.clone()).await?;
    tracing::debug!(site = %site.config.name, jobs = granted.len(), "starts granted");
    Ok(())
}

/// Cancels at `site` the jobs moved off it. `Ok(false)` when some are still to drop.
async fn drop_moved(fed: &Federation, site: &Site) -> Result<bool, FederationError> {
    let left = fed.store.fed_left_at(&site.config.name).await?;
    if left.is_empty() {
        return Ok(true);
    }
    let mut dropped = Vec::new();
    for l in &left {
        let Some(tenant) = fed.store.tenant(l.tenant_id).await? else { continue };
        let token = fed.site_token(site, l.tenant_id, &tenant.name).await?;
        let site_job_id = match l.site_job_id {
            Some(id) => id,
            None => {
                // Its id there was never written: the same request under the same key gives it
                // back (or makes it now, unable to start before it is cancelled: the lease is
                // held back until every moved job is dropped).
                let Some(job) = fed.store.fed_job(l.tenant_id, l.fed_job_id).await? else { continue };
                let mut spec: api::JobSpec = match serde_json::from_str(&job.spec_json) {
                    Ok(s) => s,
                    Err(_) => continue,
                };
                spec.federated = true;
                match site.client.submit(&token, &spec, &l.site_key).await {
                    Ok(j) => j.id,
                    Err(SiteError::Refused { .. }) => {
                        dropped.push(l.site_key.clone());
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        };
        match site.client.cancel(&token, site_job_id).await {
            Ok(_) => dropped.push(l.site_key.clone()),
            // Gone there already (ended, or the site's store is new): nothing to drop.
            Err(SiteError::Refused { status: 404 | 409, .. }) => dropped.push(l.site_key.clone()),
            Err(e) => return Err(e.into()),
        }
    }
    fed.store.fed_left_cancelled(&site.config.name, &dropped, now_ms()).await?;
    tracing::info!(site = %site.config.name, jobs = dropped.len(), "moved jobs dropped at their old site");
    Ok(dropped.len() == left.len())
}

/// Moves the jobs waiting at a lost site to others; those that ran there are reported lost.
async fn move_off(fed: &Federation, site: &Site) -> Result<(), FederationError> {
    let name = &site.config.name;
    // A job the site was let start may have started, whatever the federation last saw: it
    // stays, reported lost like those seen running.
    let (granted, waiting): (Vec<FedJob>, Vec<FedJob>) = fed
        .store
        .fed_jobs_at(name, &[FED_FORWARDING, "pending"])
        .await?
        .into_iter()
        .partition(|j| j.granted_ms.is_some());
    let mut ran = fed.store.fed_jobs_at(name, &["scheduled", "running", "preempted"]).await?;
    ran.extend(granted);
    if !ran.is_empty() {
        let lost: Vec<FedStateUpdate> = ran
            .iter()
            .map(|j| FedStateUpdate { id: j.id, state: FED_LOST.into(), message: Some(format!("site {name} lost")) })
            .collect();
        fed.store.fed_set_states(&lost, now_ms()).await?;
        tracing::warn!(site = %name, jobs = lost.len(), "jobs that ran at a lost site reported lost");
    }
    let moves = plan_moves(fed, name, waiting.iter(), &format!("site {name} stopped answering")).await?;
    if moves.is_empty() {
        return Ok(());
    }
    let moved = fed.store.fed_move(&moves, now_ms()).await?;
    let count = moved.iter().filter(|m| **m).count();
    tracing::info!(site = %name, jobs = count, "waiting jobs moved off a lost site");
    forward_waiting(fed).await;
    Ok(())
}

/// Chooses another site for each of `jobs`, leaving `from`, and records why in each job's
/// history. A job bound to `from`, or that fits nowhere else, is left where it is.
async fn plan_moves<'a>(
    fed: &Federation,
    from: &str,
    jobs: impl Iterator<Item = &'a FedJob>,
    why: &str,
) -> Result<Vec<FedMove>, FederationError> {
    let mut tenants = std::collections::HashMap::new();
    let mut moves = Vec::new();
    for job in jobs {
        let Ok(spec) = serde_json::from_str::<api::JobSpec>(&job.spec_json) else { continue };
        let tenant = match tenants.get(&job.tenant_id) {
            Some(t) => t,
            None => {
                let t = fed.store.tenant(job.tenant_id).await?.map(|t| t.name).unwrap_or_default();
                tenants.entry(job.tenant_id).or_insert(t)
            }
        };
        let Ok((to, reason)) = fed.choose(tenant, &spec, Some(from)) else { continue };
        if to == from {
            continue; // bound to this site: it waits for it
        }
        let mut history: Vec<api::FederationMove> = serde_json::from_str(&job.moves_json).unwrap_or_default();
        history.push(api::FederationMove {
            site: from.to_string(),
            site_job_id: job.site_job_id,
            reason: job.reason.clone(),
            left_at_ms: now_ms(),
            why: why.to_string(),
        });
        moves.push(FedMove {
            id: job.id,
            from_site: from.to_string(),
            from_key: site_key(job),
            to_site: to,
            reason,
            moves_json: serde_json::to_string(&history).unwrap_or_else(|_| "[]".into()),
        });
    }
    Ok(moves)
}

/// Restarts elsewhere the jobs that ran at a lost site and restart on failure: the site, cut
/// off for longer than its lease, has stopped them itself.
async fn restart_off(fed: &Federation, site: &Site) -> Result<(), FederationError> {
    let name = &site.config.name;
    let ran = fed.store.fed_jobs_at(name, &[FED_LOST, "scheduled", "running", "preempted", "pending"]).await?;
    let restarting = ran.iter().filter(|j| j.state != "pending" || j.granted_ms.is_some()).filter(|j| {
        serde_json::from_str::<api::JobSpec>(&j.spec_json).is_ok_and(|spec| spec.restart_policy.restarts_on_node_loss())
    });
    let why = format!("site {name} lost while it ran; stopped there, restarted here (its restart policy)");
    let moves = plan_moves(fed, name, restarting, &why).await?;
    if moves.is_empty() {
        return Ok(());
    }
    let moved = fed.store.fed_move(&moves, now_ms()).await?;
    tracing::info!(site = %name, jobs = moved.iter().filter(|m| **m).count(), "jobs that ran at a lost site restarted elsewhere");
    forward_waiting(fed).await;
    Ok(())
}

/// Refreshes the states of the jobs the federation has at `site` and has not seen end: the
/// pending ones from the site's pending lists, the others one by one.
async fn refresh_states(fed: &Federation, site: &Site) -> Result<(), FederationError> {
    let name = &site.config.name;
    let active = fed.store.fed_jobs_at(name, &["pending", "scheduled", "running", "preempted", FED_LOST]).await?;
    if active.is_empty() {
        return Ok(());
    }
    let mut by_tenant: std::collections::BTreeMap<i64, Vec<&FedJob>> = Default::default();
    for j in &active {
        by_tenant.entry(j.tenant_id).or_default().push(j);
    }
    let mut updates = Vec::new();
    // Jobs that left the queue since the last look are read now; those already started, a
    // slice of them each poll, in turn: a site running many jobs is not asked for all each time.
    let mut left_queue: Vec<(&FedJob, i64, String)> = Vec::new();
    let mut started: Vec<(&FedJob, i64, String)> = Vec::new();
    for (tenant_id, jobs) in by_tenant {
        let Some(tenant) = fed.store.tenant(tenant_id).await? else { continue };
        let token = fed.site_token(site, tenant_id, &tenant.name).await?;
        let pending: std::collections::HashSet<i64> =
            site.client.jobs_in(&token, api::JobState::Pending).await?.into_iter().map(|j| j.id).collect();
        for j in jobs {
            let Some(site_id) = j.site_job_id else { continue };
            if pending.contains(&site_id) {
                if j.state != "pending" {
                    updates.push(FedStateUpdate { id: j.id, state: "pending".into(), message: None });
                }
            } else if j.state == "pending" {
                left_queue.push((j, site_id, token.clone()));
            } else {
                started.push((j, site_id, token.clone()));
            }
        }
    }
    let turn = site.refresh_turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let slice = STARTED_READ_PER_POLL.min(started.len());
    let from = if started.is_empty() { 0 } else { (turn * STARTED_READ_PER_POLL) % started.len() };
    let in_turn = started.iter().cycle().skip(from).take(slice);
    for (j, site_id, token) in left_queue.iter().take(LEFT_QUEUE_READ_PER_POLL).chain(in_turn) {
        match site.client.job(token, *site_id).await {
            Ok(now) => {
                let state = now.state.as_str();
                if state != j.state || now.message != j.message {
                    updates.push(FedStateUpdate { id: j.id, state: state.into(), message: now.message });
                }
            }
            Err(SiteError::Refused { status: 404, .. }) => updates.push(FedStateUpdate {
                id: j.id,
                state: "failed".into(),
                message: Some(format!("site {name} no longer knows its job {site_id}")),
            }),
            Err(e) => return Err(e.into()),
        }
    }
    fed.store.fed_set_states(&updates, now_ms()).await?;
    Ok(())
}

/// Jobs read one by one at a site each poll: those that just left its queue, and those running
/// there, in turn.
const LEFT_QUEUE_READ_PER_POLL: usize = 1000;
const STARTED_READ_PER_POLL: usize = 100;

/// Forwards jobs recorded but not taken by a site (a site that did not answer, a move, a
/// restart of the federation), now and then.
async fn keep_forwarding(fed: Arc<Federation>) {
    let mut tick = tokio::time::interval(fed.options.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        forward_waiting(&fed).await;
    }
}

async fn forward_waiting(fed: &Federation) {
    let waiting = match fed.store.fed_forwarding(1000).await {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "jobs to forward not read");
            return;
        }
    };
    for job in waiting {
        let reachable = fed.view(&job.site).is_some_and(|v| v.reachable && !v.lost);
        if !reachable {
            continue;
        }
        let tenant = match fed.store.tenant(job.tenant_id).await {
            Ok(Some(t)) => t.name,
            _ => continue,
        };
        match fed.forward(&job, &tenant).await {
            Ok(_) => tracing::debug!(job = job.id, site = %job.site, "job forwarded"),
            Err(FederationError::Site(SiteError::Refused { message, .. })) => {
                let update = FedStateUpdate { id: job.id, state: "failed".into(), message: Some(message) };
                let _ = fed.store.fed_set_states(&[update], now_ms()).await;
            }
            Err(e) => tracing::debug!(job = job.id, error = %e, "job not forwarded yet"),
        }
    }
}

/// Whether a stored state is one a job leaves no more.
pub fn ended(state: &str) -> bool {
    is_terminal(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(power_watts: f64) -> api::Site {
        api::Site {
            name: "s".into(),
            cooling: "liquid".into(),
            region: None,
            nodes: 1,
            gpus: 8,
            gpus_free: 8,
            gpus_used: 0,
            power_watts,
            power_reporting_nodes: 0,
            gpu_power_cap_watts: None,
            power_nameplate_watts: 5600.0,
            power_cap_watts: None,
            gpus_pending: 0.0,
            gpu_models: Vec::new(),
            price_eur_per_mwh: None,
            co2_g_per_kwh: None,
            outdoor_celsius: None,
            heat_demand_watts: None,
            heat_supplied_watts: None,
        }
    }

    fn file_says() -> SiteConfig {
        SiteConfig {
            name: "a".into(),
            url: "http://127.0.0.1:1".into(),
            admin_token: "t".into(),
            region: None,
            price_eur_per_mwh: 62.0,
            co2_g_per_kwh: 32.0,
            heat_demand_watts: 3e6,
            fiber_gbps: None,
        }
    }

    #[test]
    fn reported_figures_win_over_the_sites_file() {
        let mut with_network = report(4000.0);
        with_network.price_eur_per_mwh = Some(50.0);
        with_network.co2_g_per_kwh = Some(20.0);
        with_network.heat_demand_watts = Some(3000.0);
        with_network.heat_supplied_watts = Some(3000.0);
        let mut without = report(1000.0);
        without.price_eur_per_mwh = Some(70.0);
        without.co2_g_per_kwh = Some(30.0);
        let f = GridAndHeat::of(&[with_network, without], &file_says());
        assert_eq!(
            f,
            GridAndHeat {
                price_eur_per_mwh: 60.0,
                co2_g_per_kwh: 25.0,
                heat_demand_watts: 3000.0,
                heat_supplied_watts: 3000.0
            },
            "price and carbon the sites' mean, heat their sum"
        );
    }

    #[test]
    fn the_sites_file_stands_in_for_what_is_not_reported() {
        let f = GridAndHeat::of(&[report(4000.0), report(1000.0)], &file_says());
        assert_eq!(
            f,
            GridAndHeat {
                price_eur_per_mwh: 62.0,
                co2_g_per_kwh: 32.0,
                heat_demand_watts: 3e6,
                heat_supplied_watts: 5000.0
            },
            "the GPU draw is the heat on offer"
        );
        let never_heard = GridAndHeat::of(&[], &file_says());
        assert_eq!((never_heard.price_eur_per_mwh, never_heard.heat_supplied_watts), (62.0, 0.0));
    }
}
