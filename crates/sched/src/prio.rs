//! Preemptive priority scheduling: the machinery `tiresias`, `srpt` and `drome` share. A
//! [`Ranker`] gives every queued and running job a key (lower runs first); [`PriorityPolicy`]
//! starts queued jobs in key order wherever they fit (work conserving, so small jobs fill the gaps
//! a blocked gang leaves) and, for the best-ranked jobs that do not fit, preempts running jobs the
//! ranker ranks clearly worse, whole jobs only, never one that has run less than the minimum
//! runtime since its start.
//!
//! Cost per round: the policy keeps its own ordered index of the queue, fed from
//! [`Queue::iter_from`] (only new arrivals are read), so a round costs O(started x log q) plus a
//! bounded scan: at most [`PreemptConfig::scan_limit`] queued jobs are looked at, a shape (gang
//! size) that did not fit is not tried again in the same round, the scan stops once no GPU is
//! free and the preemption tries are used up, and only the first
//! [`PreemptConfig::preempt_tries`] blocked jobs may preempt.
//!
//! Placement ([`SharingPlacer`]): multi-node gangs by topology; on a fleet that serves GPU shares,
//! everything else with drome's fragmentation-aware placer, the one that beats FGD on openb,
//! learning the request distribution from the arrivals.

use crate::cluster::{ClusterState, Placement};
use crate::demand::Demand;
use crate::frag::{DromeFit, DromeParams, TypicalPods};
use crate::placer::Placer;
use crate::policy::{Decision, Policy};
use crate::queue::{Queue, QueuedJob};
use crate::topo::TopoPlacer;
use model::{GpuRequest, SimDuration, SimTime, Workload, WorkloadId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

/// Sort key of a job: lower runs first.
pub type Key = (u64, u64);

/// A job the policy started and that has not finished or been preempted, as the policy sees it.
#[derive(Clone, Debug)]
pub struct RunningJob {
    pub workload: Arc<Workload>,
    pub demand: Demand,
    pub started: SimTime,
    /// GPU-seconds held before this run.
    pub attained_at_start: f64,
    /// Work kept from earlier runs.
    pub progress_at_start: SimDuration,
}

impl RunningJob {
    pub fn gpus(&self) -> f64 {
        self.workload.gpu.total_gpus()
    }

    /// GPU-seconds held over all runs, up to `now`.
    pub fn attained_gpu_s(&self, now: SimTime) -> f64 {
        self.attained_at_start + self.gpus() * now.since(self.started).as_secs_f64()
    }

    /// Run time over all runs (kept work plus this run), up to `now`.
    pub fn run_time(&self, now: SimTime) -> SimDuration {
        self.progress_at_start + now.since(self.started)
    }
}

/// Ranks jobs for a [`PriorityPolicy`].
pub trait Ranker: Send {
    fn name(&self) -> &str;
    /// True if the ranker reads durations (reference policies only).
    fn is_clairvoyant(&self) -> bool {
        false
    }
    /// Key of a waiting job. It must not change while the job waits, except at the time
    /// [`Ranker::revisit_at`] names or when [`Ranker::epoch`] changes.
    fn queued_key(&mut self, job: &QueuedJob, now: SimTime) -> Key;
    /// Key of a running job at `now`.
    fn running_key(&self, job: &RunningJob, now: SimTime) -> Key;
    /// True if a waiting job keyed `waiting` may take GPUs from a running job keyed `running`.
    /// It must be monotone: if it holds for `running`, it holds for every larger key.
    fn may_preempt(&self, waiting: Key, running: Key) -> bool;
    /// When a waiting job's key is due to be recomputed (a starvation promotion).
    fn revisit_at(&self, _job: &QueuedJob) -> Option<SimTime> {
        None
    }
    /// Changes when every queued key must be recomputed (the ranker learned something).
    fn epoch(&self) -> u64 {
        0
    }
    /// Waiting jobs whose key changed since the last call, up to `now` (the ranker learned
    /// something about them in particular); the policy re-keys those still queued.
    fn take_stale(&mut self, _now: SimTime) -> Vec<WorkloadId> {
        Vec::new()
    }
    /// `job` starts now.
    fn on_started(&mut self, _job: &QueuedJob, _now: SimTime) {}
    /// `job` finished at `now`.
    fn on_finished(&mut self, _job: &RunningJob, _now: SimTime) {}
}

/// Preemption knobs of a [`PriorityPolicy`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PreemptConfig {
    /// Whether the policy preempts at all.
    pub enabled: bool,
    /// A job runs at least this long after each start before it may be preempted.
    pub min_runtime: SimDuration,
    /// Blocked jobs per round that may look for victims.
    pub preempt_tries: usize,
    /// Queued jobs looked at per round.
    pub scan_limit: usize,
}

impl Default for PreemptConfig {
    /// Preemptive, 10 minutes minimum runtime, 4 preemption tries and 2,048 jobs scanned a round.
    fn default() -> Self {
        PreemptConfig { enabled: true, min_runtime: SimDuration::from_secs(600), preempt_tries: 4, scan_limit: 2048 }
    }
}

/// A queued job in the index: key, queue sequence number, id, and its shape (so a round can pass
/// over jobs of shapes that already failed without looking them up).
type Entry = (Key, u64, WorkloadId, Shape);

/// A request's shape: jobs of one shape fit or not alike.
type Shape = (u8, u32, u32, u64, u64);

/// Queued jobs looked at per round once no GPU is free (only preemption can start them then).
const FULL_SCAN_BUDGET: usize = 64;
/// Queued jobs looked at per round after one did not fit and the preemption tries are spent.
const AFTER_FAIL_BUDGET: usize = 256;
/// Index entries read at a time.
const CHUNK: usize = 32;

/// A preemptive priority policy over a [`Ranker`], placing with [`TopoPlacer`].
pub struct PriorityPolicy<R: Ranker> {
    ranker: R,
    placer: SharingPlacer,
    config: PreemptConfig,
    seen_seq: u64,
    /// Generation of the queue `seen_seq` counts in.
    queue_generation: u64,
    epoch: u64,
    index: BTreeSet<Entry>,
    entry_of: FxHashMap<WorkloadId, Entry>,
    revisit: BTreeSet<(SimTime, u64, WorkloadId)>,
    running: BTreeMap<WorkloadId, RunningJob>,
    /// Jobs counted into the placer's request distribution and not finished.
    observed: FxHashSet<WorkloadId>,
}

fn shape(d: &Demand) -> Shape {
    match d.gpu {
        GpuRequest::None => (0, 0, 0, d.cpu_milli, d.memory_mib),
        GpuRequest::Fraction { gpu_milli } => (1, gpu_milli, 0, d.cpu_milli, d.memory_mib),
        GpuRequest::Gang { nodes, gpus_per_node } => (2, nodes, gpus_per_node, d.cpu_milli, d.memory_mib),
    }
}

impl<R: Ranker> PriorityPolicy<R> {
    pub fn new(ranker: R, config: PreemptConfig) -> Self {
        PriorityPolicy {
            ranker,
            placer: SharingPlacer::new(),
            config,
            seen_seq: 0,
            queue_generation: 0,
            epoch: 0,
            index: BTreeSet::new(),
            entry_of: FxHashMap::default(),
            revisit: BTreeSet::new(),
            running: BTreeMap::new(),
            observed: FxHashSet::default(),
        }
    }

    pub fn ranker(&self) -> &R {
        &self.ranker
    }

    /// Jobs this policy started that are still running.
    pub fn running(&self) -> impl Iterator<Item = &RunningJob> {
        self.running.values()
    }

    fn index_job(&mut self, seq: u64, job: &QueuedJob, now: SimTime) {
        if let Some(old) = self.entry_of.remove(&job.id()) {
            self.index.remove(&old);
        }
        let entry = (self.ranker.queued_key(job, now), seq, job.id(), shape(&job.demand));
        self.index.insert(entry);
        self.entry_of.insert(job.id(), entry);
        if let Some(t) = self.ranker.revisit_at(job) {
            self.revisit.insert((t, seq, job.id()));
        }
    }

    fn forget(&mut self, id: WorkloadId) {
        if let Some(e) = self.entry_of.remove(&id) {
            self.index.remove(&e);
        }
    }

    fn sync(&mut self, now: SimTime, queue: &Queue) {
        if self.ranker.epoch() != self.epoch || queue.generation() != self.queue_generation {
            self.epoch = self.ranker.epoch();
            self.queue_generation = queue.generation();
            self.index.clear();
            self.entry_of.clear();
            self.revisit.clear();
            self.seen_seq = 0;
        }
        let fresh: Vec<(u64, &QueuedJob)> = queue.iter_from(self.seen_seq).collect();
        for (seq, job) in fresh {
            // Counted once per job, however often it is queued again (preempted, re-read).
            if self.observed.insert(job.id()) {
                self.placer.observe(&job.demand);
            }
            self.index_job(seq, job, now);
        }
        self.seen_seq = queue.next_seq();
        for id in self.ranker.take_stale(now) {
            if let Some(seq) = queue.seq(id)
                && let Some(job) = queue.get(id)
                && self.entry_of.contains_key(&id)
            {
                self.index_job(seq, job, now);
            }
        }
        while let Some(&(t, seq, id)) = self.revisit.first() {
            if t > now {
                break;
            }
            self.revisit.pop_first();
            if queue.seq(id) == Some(seq)
                && let Some(job) = queue.get(id)
            {
                self.index_job(seq, job, now);
            }
        }
    }

    fn start(&mut self, now: SimTime, job: &QueuedJob, placement: Placement, out: &mut Vec<Decision>) {
        self.ranker.on_started(job, now);
        self.forget(job.id());
        self.running.insert(
            job.id(),
            RunningJob {
                workload: job.workload.clone(),
                demand: job.demand.clone(),
                started: now,
                attained_at_start: job.attained_gpu_s,
                progress_at_start: job.progress,
            },
        );
        out.push(Decision::Start { job: job.id(), placement });
    }

    /// Running jobs that may be preempted now, with their keys, the worst-ranked first (the rest
    /// in no order: only the few a waiting job may preempt get sorted, in [`Self::try_preempt`]).
    fn preemptible(&self, now: SimTime) -> Vec<(Key, WorkloadId)> {
        let mut v: Vec<(Key, WorkloadId)> = self
            .running
            .iter()
            .filter(|(_, r)| now.since(r.started) >= self.config.min_runtime)
            .map(|(id, r)| (self.ranker.running_key(r, now), *id))
            .collect();
        worst_first(&mut v);
        v
    }

    /// Frees GPUs for `job` by preempting running jobs of `candidates` ranked clearly worse (the
    /// worst first); on success the victims are released, `job` is allocated, and the placement
    /// returned with the victims.
    fn try_preempt(
        &mut self,
        key: Key,
        job: &QueuedJob,
        candidates: &[(Key, WorkloadId)],
        cluster: &mut ClusterState,
    ) -> Option<(Vec<WorkloadId>, Placement)> {
        let mut eligible: Vec<(Key, WorkloadId)> =
            candidates.iter().filter(|(k, _)| self.ranker.may_preempt(key, *k)).copied().collect();
        eligible.sort_unstable_by(|a, b| b.cmp(a));
        let order: Vec<WorkloadId> = eligible.into_iter().map(|(_, id)| id).collect();
        let victims = choose_victims(cluster, &job.demand, job.workload.gpu.total_gpu_milli(), &order)?;
        let running = &self.running;
        let p = preempt_and_place(cluster, &mut self.placer, job, &victims, |id| {
            running.get(&id).map(|r| r.demand.clone())
        })?;
        for id in &victims {
            self.running.remove(id);
        }
        Some((victims, p))
    }
}

/// Running jobs to preempt so that `demand` fits, taken from `eligible` (worst first): for a
/// single-node request, the node where preempting the worst eligible jobs first frees enough while
/// taking the fewest GPUs away; for a gang of several nodes, the nodes that no ineligible job holds,
/// cheapest first. `None` if the eligible jobs cannot make room.
pub(crate) fn choose_victims(
    cluster: &ClusterState,
    demand: &Demand,
    need_milli: u64,
    eligible: &[WorkloadId],
) -> Option<Vec<WorkloadId>> {
    if eligible.is_empty() {
        return None;
    }
    let free_milli = cluster.total_gpu_milli() - cluster.allocated_gpu_milli();
    let freeable: u64 = eligible.iter().filter_map(|id| cluster.allocation(*id)).map(|p| p.gpu_milli()).sum();
    if free_milli + freeable < need_milli {
        return None;
    }
    // Per node: the eligible jobs holding GPUs there, in `eligible`'s order (worst first).
    let mut holders: BTreeMap<u32, Vec<WorkloadId>> = BTreeMap::new();
    for id in eligible {
        if let Some(p) = cluster.allocation(*id) {
            for m in &p.members {
                holders.entry(m.node.0).or_default().push(*id);
            }
        }
    }
    let fleet = cluster.fleet();
    let allowed = |n: u32| fleet.nodes[n as usize].gpu_model.is_some_and(|m| demand.models.allows(m));
    let members = demand.members() as usize;
    if members > 1 {
        // Nodes an ineligible job holds are blocked.
        let is_eligible: FxHashSet<WorkloadId> = eligible.iter().copied().collect();
        let mut blocked: FxHashSet<u32> = FxHashSet::default();
        for (id, p) in cluster.allocations() {
            if !is_eligible.contains(id) {
                blocked.extend(p.members.iter().map(|m| m.node.0));
            }
        }
        // The candidates: nodes eligible jobs hold, and nodes nothing holds (every GPU free, so
        // in the index from the model's smallest node up), not a walk over the whole fleet. So
        // are nodes whose GPUs are withheld blocked (the power guard's, as an allocation would).
        let mut candidates: Vec<u32> = holders.keys().copied().collect();
        for m in cluster.allowed_models(demand) {
            for (free, node) in cluster.nodes_by_full_gpus(m, cluster.min_node_gpus(m)) {
                if free == fleet.node(node).gpu_count && !holders.contains_key(&node.0) {
                    candidates.push(node.0);
                }
            }
        }
        let mut nodes: Vec<(u64, u32)> = candidates
            .into_iter()
            .filter(|n| !blocked.contains(n) && !cluster.gpus_withheld_on(model::NodeId(*n)) && allowed(*n))
            .map(|n| {
                let held = holders.get(&n).map_or(0, |v| {
                    v.iter().filter_map(|id| cluster.allocation(*id)).map(|p| p.gpu_milli()).sum::<u64>()
                });
                (held, n)
            })
            .collect();
        if nodes.len() < members {
            return None;
        }
        nodes.sort_unstable();
        let mut v: Vec<WorkloadId> =
            nodes.iter().take(members).flat_map(|(_, n)| holders.get(n).cloned().unwrap_or_default()).collect();
        v.sort_unstable();
        v.dedup();
        return (!v.is_empty()).then_some(v);
    }
    let mut best: Option<(u64, u32, Vec<WorkloadId>)> = None;
    for (&n, ids) in &holders {
        if !allowed(n) {
            continue;
        }
        let mut free = u64::from(cluster.full_free_gpus(model::NodeId(n))) * 1000;
        let mut taken = Vec::new();
        let mut cost = 0u64;
        // A job holds at most one member per node, so `ids` has no repeats.
        for &id in ids {
            if free >= need_milli {
                break;
            }
            let Some(p) = cluster.allocation(id) else { continue };
            free += p.members.iter().filter(|m| m.node.0 == n).map(|m| m.gpus.len() as u64 * 1000).sum::<u64>();
            cost += p.gpu_milli();
            taken.push(id);
        }
        if free >= need_milli && !taken.is_empty() && best.as_ref().is_none_or(|(c, bn, _)| (cost, n) < (*c, *bn)) {
            best = Some((cost, n, taken));
        }
    }
    best.map(|(_, _, v)| v)
}

/// Moves the worst-ranked (largest key) of `v` to the front. Rankers' `may_preempt` is monotone
/// in the running job's key, so the front alone tells whether any of `v` may be preempted.
fn worst_first(v: &mut [(Key, WorkloadId)]) {
    if let Some(i) = v.iter().enumerate().max_by_key(|(_, e)| **e).map(|(i, _)| i) {
        v.swap(0, i);
    }
}

/// Releases `victims`, then places and allocates `job`; if it still does not fit, gives the
/// victims their GPUs back exactly as they were and returns `None`.
pub(crate) fn preempt_and_place(
    cluster: &mut ClusterState,
    placer: &mut dyn Placer,
    job: &QueuedJob,
    victims: &[WorkloadId],
    demand_of: impl Fn(WorkloadId) -> Option<Demand>,
) -> Option<Placement> {
    let mut released: Vec<(WorkloadId, Placement)> = Vec::new();
    for id in victims {
        if let Ok(p) = cluster.release(*id) {
            released.push((*id, p));
        }
    }
    if released.len() == victims.len()
        && let Some(p) = placer.place(cluster, &job.demand)
        && cluster.allocate(job.id(), &job.demand, p.clone()).is_ok()
    {
        return Some(p);
    }
    for (id, p) in released.into_iter().rev() {
        if let Some(d) = demand_of(id) {
            let _ = cluster.allocate(id, &d, p);
        }
    }
    None
}

impl<R: Ranker> Policy for PriorityPolicy<R> {
    fn name(&self) -> &str {
        self.ranker.name()
    }

    fn is_clairvoyant(&self) -> bool {
        self.ranker.is_clairvoyant()
    }

    fn min_runtime(&self) -> SimDuration {
        self.config.min_runtime
    }

    /// Running jobs by key, worst first (the order preemption would pick victims in).
    fn shed_order(&self, now: SimTime) -> Vec<WorkloadId> {
        let mut keyed: Vec<(Key, WorkloadId)> =
            self.running.values().map(|r| (self.ranker.running_key(r, now), r.workload.id)).collect();
        keyed.sort_unstable_by(|a, b| b.cmp(a));
        keyed.into_iter().map(|(_, id)| id).collect()
    }

    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        self.sync(now, queue);
        let mut out = Vec::new();
        // Shapes that did not fit, and that found no victims, this round (few: linear sets).
        let mut failed: Vec<Shape> = Vec::new();
        let mut tries = if self.config.enabled { self.config.preempt_tries } else { 0 };
        // Computed on the first blocked job, kept for the round (victims leave it as they go).
        let mut candidates: Option<Vec<(Key, WorkloadId)>> = None;
        let mut failed_preempt: Vec<Shape> = Vec::new();
        let mut full_budget = FULL_SCAN_BUDGET;
        let mut after_fail_budget = AFTER_FAIL_BUDGET;
        let mut cursor: Option<Entry> = None;
        let mut scanned = 0usize;
        let mut chunk: std::collections::VecDeque<Entry> = std::collections::VecDeque::new();
        while scanned < self.config.scan_limit {
            if chunk.is_empty() {
                let from = match cursor {
                    None => Bound::Unbounded,
                    Some(c) => Bound::Excluded(c),
                };
                chunk.extend(self.index.range((from, Bound::Unbounded)).take(CHUNK).copied());
            }
            let Some(entry) = chunk.pop_front() else { break };
            cursor = Some(entry);
            let (key, seq, id, s) = entry;
            if !failed.is_empty() && tries == 0 {
                if after_fail_budget == 0 {
                    break;
                }
                after_fail_budget -= 1;
            }
            if queue.seq(id) != Some(seq) {
                // Left the queue (cancelled, or started by someone else): drop it.
                self.forget(id);
                continue;
            }
            scanned += 1;
            let full = cluster.allocated_gpu_milli() >= cluster.total_gpu_milli();
            if full {
                if tries == 0 || full_budget == 0 {
                    break;
                }
                full_budget -= 1;
            }
            if !full && !failed.contains(&s) {
                let Some(job) = queue.get(id) else { continue };
                if let Some(p) = self.placer.place(cluster, &job.demand)
                    && cluster.allocate(id, &job.demand, p.clone()).is_ok()
                {
                    self.start(now, job, p, &mut out);
                    continue;
                }
                failed.push(s);
            }
            if tries == 0 || failed_preempt.contains(&s) {
                continue;
            }
            let Some(job) = queue.get(id) else { continue };
            let cands = candidates.get_or_insert_with(|| self.preemptible(now));
            // The worst candidate comes first: if it is not worse enough, none is.
            if cands.first().is_none_or(|(k, _)| !self.ranker.may_preempt(key, *k)) {
                if cands.is_empty() {
                    tries = 0;
                }
                failed_preempt.push(s);
                continue;
            }
            tries -= 1;
            let cands_now = std::mem::take(cands);
            match self.try_preempt(key, job, &cands_now, cluster) {
                Some((victims, p)) => {
                    let gone: FxHashSet<WorkloadId> = victims.iter().copied().collect();
                    let mut rest: Vec<(Key, WorkloadId)> =
                        cands_now.into_iter().filter(|(_, id)| !gone.contains(id)).collect();
                    worst_first(&mut rest);
                    candidates = Some(rest);
                    out.extend(victims.into_iter().map(|job| Decision::Preempt { job }));
                    self.start(now, job, p, &mut out);
                    // What was freed may fit shapes that failed before.
                    failed.clear();
                }
                None => {
                    failed_preempt.push(s);
                    candidates = Some(cands_now);
                }
            }
        }
        out
    }

    fn on_finished(&mut self, workload: &Workload, _started: SimTime, now: SimTime) {
        self.observed.remove(&workload.id);
        if let Some(r) = self.running.remove(&workload.id) {
            self.ranker.on_finished(&r, now);
        }
    }

    fn start_undone(&mut self, job: &QueuedJob, seq: u64, now: SimTime) {
        self.running.remove(&job.id());
        self.index_job(seq, job, now);
    }
}

/// Orders `f` (positive) as a key: larger `f` sorts later.
pub(crate) fn f64_key(f: f64) -> u64 {
    if f.is_nan() || f <= 0.0 { 0 } else { f.to_bits() }
}

pub(crate) fn key_f64(k: u64) -> f64 {
    f64::from_bits(k)
}

/// How a [`PriorityPolicy`] places: multi-node gangs by topology ([`TopoPlacer`]); once GPU
/// shares are among the requests seen, every other request with drome's fragmentation-aware
/// placer ([`DromeFit`], its default parameters) against the distribution of the requests that
/// arrived so far; before that, best fit. A fleet that never sees a share places exactly as
/// [`TopoPlacer`] does.
#[derive(Clone, Debug)]
pub struct SharingPlacer {
    shares: DromeFit,
    seen_shares: bool,
}

impl SharingPlacer {
    pub fn new() -> Self {
        let mut shares = DromeFit::new(TypicalPods::new(), DromeParams::default(), 0);
        shares.learn = false;
        SharingPlacer { shares, seen_shares: false }
    }

    /// Counts an arriving request into the distribution the share placement works against.
    pub fn observe(&mut self, demand: &Demand) {
        self.seen_shares |= matches!(demand.gpu, GpuRequest::Fraction { .. });
        self.shares.observe(demand);
    }
}

impl Default for SharingPlacer {
    fn default() -> Self {
        SharingPlacer::new()
    }
}

impl Placer for SharingPlacer {
    fn name(&self) -> &str {
        "sharing"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        match demand.gpu {
            GpuRequest::Gang { nodes, .. } if nodes > 1 => TopoPlacer.place(cluster, demand),
            _ if self.seen_shares => self.shares.place(cluster, demand),
            _ => TopoPlacer.place(cluster, demand),
        }
    }
}
