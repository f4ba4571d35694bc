//! Slurm-style multifactor priority with EASY backfill: `backfill` (age only) and `fairshare`
//! (age plus fair share between tenants, usage decaying with a half-life).
//!
//! Priority, as Slurm's multifactor plugin computes it: `age_weight x min(age / max_age, 1) +
//! fairshare_weight x 2^(-U / S)`, where `U` is the tenant's share of the decayed GPU-seconds used
//! by every tenant and `S` its share of the fleet (equal shares among the tenants seen). Within a
//! tenant the oldest job always ranks first, so the queue is kept as one FIFO per tenant and the
//! global order is a merge of the tenants' heads: no job's priority is recomputed while it waits.
//!
//! EASY backfill: the highest-priority job that does not fit gets a reservation at the earliest
//! time the running jobs' estimated ends free enough GPUs for it (the shadow time) on the nodes
//! that would hold it; a later job may start now if it fits and either is expected to end before
//! the shadow time or avoids the reserved nodes. Traces carry no requested walltime, so the
//! estimate is `over_estimate` (2) times the mean run time of the tenant's last 16 finished jobs
//! (one hour before the tenant has finished any); a job running past its estimate is expected to
//! end a minute from now. At most `depth` (500, Slurm's `bf_max_job_test` default) queued jobs are
//! looked at per round, and a gang shape that did not fit is not tried again in the same round.

use crate::cluster::{ClusterState, Placement};
use crate::placer::Placer;
use crate::policy::{Decision, Policy};
use crate::queue::{Queue, QueuedJob};
use crate::topo::TopoPlacer;
use model::{GpuRequest, NodeId, SimDuration, SimTime, Workload, WorkloadId};
use rustc_hash::{FxHashMap, FxHashSet};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};

/// A priority that orders as a total order (NaN never occurs: weights and factors are finite).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Prio(f64);

impl Eq for Prio {}

impl PartialOrd for Prio {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Prio {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Knobs of [`Multifactor`].
#[derive(Clone, Debug, PartialEq)]
pub struct MultifactorConfig {
    pub age_weight: f64,
    pub fairshare_weight: f64,
    /// Age at which the age factor reaches 1.
    pub max_age: SimDuration,
    /// Half-life of recorded usage.
    pub half_life: SimDuration,
    /// Walltime estimate = this x the tenant's recent mean run time.
    pub over_estimate: f64,
    /// Queued jobs looked at per round.
    pub depth: usize,
}

impl MultifactorConfig {
    /// `backfill`: priority by age alone (FIFO), EASY backfill.
    pub fn backfill() -> Self {
        MultifactorConfig {
            age_weight: 1000.0,
            fairshare_weight: 0.0,
            max_age: SimDuration::from_secs(7 * 86_400),
            half_life: SimDuration::from_secs(7 * 86_400),
            over_estimate: 2.0,
            depth: 500,
        }
    }

    /// `fairshare`: Slurm's documented weights (fair share 10,000, age 1,000), 7-day half-life
    /// and maximum age.
    pub fn fairshare() -> Self {
        MultifactorConfig { fairshare_weight: 10_000.0, ..Self::backfill() }
    }
}

struct Running {
    tenant: u32,
    gpus: f64,
    started: SimTime,
}

/// Multifactor priority plus EASY backfill.
pub struct Multifactor {
    name: String,
    config: MultifactorConfig,
    placer: TopoPlacer,
    seen_seq: u64,
    /// Generation of the queue `seen_seq` counts in.
    queue_generation: u64,
    by_tenant: BTreeMap<u32, BTreeSet<(u64, WorkloadId)>>,
    usage: FxHashMap<u32, f64>,
    usage_at: SimTime,
    running_gpus: FxHashMap<u32, f64>,
    running: BTreeMap<WorkloadId, Running>,
    history: FxHashMap<u32, VecDeque<f64>>,
    /// [`Multifactor::estimate_s`] per tenant, kept up to date with `history`.
    estimates: FxHashMap<u32, f64>,
}

const HISTORY: usize = 16;
const DEFAULT_ESTIMATE_S: f64 = 3600.0;

impl Multifactor {
    pub fn new(name: impl Into<String>, config: MultifactorConfig) -> Self {
        Multifactor {
            name: name.into(),
            config,
            placer: TopoPlacer,
            seen_seq: 0,
            queue_generation: 0,
            by_tenant: BTreeMap::new(),
            usage: FxHashMap::default(),
            usage_at: SimTime::ZERO,
            running_gpus: FxHashMap::default(),
            running: BTreeMap::new(),
            history: FxHashMap::default(),
            estimates: FxHashMap::default(),
        }
    }

    /// Decays usage to `now` and adds what the running jobs used since the last update.
    fn advance(&mut self, now: SimTime) {
        let dt = now.since(self.usage_at).as_secs_f64();
        self.usage_at = now;
        if dt <= 0.0 {
            return;
        }
        let h = self.config.half_life.as_secs_f64().max(1.0);
        let decay = (-dt / h * std::f64::consts::LN_2).exp();
        let gained = h / std::f64::consts::LN_2 * (1.0 - decay);
        for u in self.usage.values_mut() {
            *u *= decay;
        }
        for (t, g) in &self.running_gpus {
            *self.usage.entry(*t).or_default() += g * gained;
        }
    }

    fn estimate_s(&self, tenant: u32) -> f64 {
        self.estimates.get(&tenant).copied().unwrap_or(DEFAULT_ESTIMATE_S)
    }

    fn priority(&self, w: &Workload, now: SimTime, fs: &FxHashMap<u32, f64>) -> f64 {
        let age = (now.since(w.submit_time).as_secs_f64() / self.config.max_age.as_secs_f64().max(1.0)).min(1.0);
        self.config.age_weight * age
            + self.config.fairshare_weight * fs.get(&w.tenant.0).copied().unwrap_or(1.0)
            + f64::from(w.priority) * 1e6
    }

    /// Fair-share factor of every tenant with queued jobs.
    fn fairshare_factors(&self) -> FxHashMap<u32, f64> {
        let total: f64 = self.usage.values().sum();
        let tenants = self.by_tenant.len().max(self.usage.len()).max(1) as f64;
        self.by_tenant
            .keys()
            .map(|t| {
                let u = if total > 0.0 { self.usage.get(t).copied().unwrap_or(0.0) / total } else { 0.0 };
                (*t, (2.0f64).powf(-u * tenants))
            })
            .collect()
    }

    fn next_live<'a>(
        it: &mut std::collections::btree_set::Iter<'_, (u64, WorkloadId)>,
        queue: &'a Queue,
    ) -> Option<(u64, WorkloadId, &'a QueuedJob)> {
        for &(seq, id) in it.by_ref() {
            if queue.seq(id) == Some(seq)
                && let Some(j) = queue.get(id)
            {
                return Some((seq, id, j));
            }
        }
        None
    }

    /// When, by the estimates, `demand` could start, and on which nodes.
    fn reservation(
        &self,
        now: SimTime,
        cluster: &ClusterState,
        demand: &crate::demand::Demand,
    ) -> (SimTime, FxHashSet<NodeId>) {
        let fleet = cluster.fleet();
        let n_nodes = cluster.node_count();
        let mut free: Vec<u32> = (0..n_nodes as u32).map(|n| u32::from(cluster.full_free_gpus(NodeId(n)))).collect();
        let allowed: Vec<bool> =
            fleet.nodes.iter().map(|n| n.gpu_model.is_some_and(|m| demand.models.allows(m))).collect();
        let (members, per_node) = match demand.gpu {
            GpuRequest::Gang { nodes, gpus_per_node } => (nodes as usize, gpus_per_node),
            _ => (1, 1),
        };
        let whole = members > 1;
        let ok = |n: usize, f: u32| {
            allowed[n] && if whole { f == u32::from(fleet.nodes[n].gpu_count) } else { f >= per_node }
        };
        // Nodes in the order they become able to hold a member: the reservation takes the ones
        // freed last, leaving nodes idle now to backfill.
        let mut fitting: Vec<usize> = (0..n_nodes).filter(|&n| ok(n, free[n])).collect();
        let mut is_fitting: Vec<bool> = (0..n_nodes).map(|n| ok(n, free[n])).collect();
        let reserve = |fitting: &Vec<usize>| fitting.iter().rev().take(members).map(|&n| NodeId(n as u32)).collect();
        if fitting.len() >= members {
            return (now, reserve(&fitting));
        }
        let mut ends: Vec<(SimTime, WorkloadId)> = self
            .running
            .iter()
            .map(|(id, r)| {
                let est = r.started + SimDuration::from_secs_f64(self.estimate_s(r.tenant));
                (est.max(now + SimDuration::from_secs(60)), *id)
            })
            .collect();
        ends.sort_unstable();
        for (i, &(t, id)) in ends.iter().enumerate() {
            let Some(p) = cluster.allocation(id) else { continue };
            for m in &p.members {
                let n = m.node.index();
                free[n] += m.gpus.iter().filter(|g| u32::from(g.milli) == model::GPU_MILLI_PER_GPU).count() as u32;
                if !is_fitting[n] && ok(n, free[n]) {
                    is_fitting[n] = true;
                    fitting.push(n);
                }
            }
            // Everything estimated to end at `t` ends before the head starts.
            let last_at_t = ends.get(i + 1).is_none_or(|(next, _)| *next != t);
            if last_at_t && fitting.len() >= members {
                return (t, reserve(&fitting));
            }
        }
        (SimTime(u64::MAX), (0..n_nodes as u32).map(NodeId).collect())
    }

    fn start(&mut self, now: SimTime, w: &Workload, placement: Placement, out: &mut Vec<Decision>) {
        let gpus = w.gpu.total_gpus();
        *self.running_gpus.entry(w.tenant.0).or_default() += gpus;
        self.running.insert(w.id, Running { tenant: w.tenant.0, gpus, started: now });
        out.push(Decision::Start { job: w.id, placement });
    }
}

impl Policy for Multifactor {
    fn name(&self) -> &str {
        &self.name
    }

    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        self.advance(now);
        if queue.generation() != self.queue_generation {
            // A new queue: read it whole.
            self.queue_generation = queue.generation();
            self.by_tenant.clear();
            self.seen_seq = 0;
        }
        for (seq, job) in queue.iter_from(self.seen_seq) {
            self.by_tenant.entry(job.workload.tenant.0).or_default().insert((seq, job.id()));
        }
        self.seen_seq = queue.next_seq();
        let mut out = Vec::new();
        if cluster.allocated_gpu_milli() >= cluster.total_gpu_milli() {
            return out;
        }
        let fs = self.fairshare_factors();
        let by_tenant = std::mem::take(&mut self.by_tenant);
        // A lazy k-way merge of the tenants' FIFOs by (priority of the head, then seq).
        let mut cursors: Vec<std::collections::btree_set::Iter<'_, (u64, WorkloadId)>> =
            by_tenant.values().map(|s| s.iter()).collect();
        let mut heap: BinaryHeap<(Prio, Reverse<u64>, usize, WorkloadId)> = BinaryHeap::new();
        // The job each tenant's cursor has in the heap (one per tenant at a time).
        let mut heads: Vec<Option<&QueuedJob>> = vec![None; cursors.len()];
        for (i, it) in cursors.iter_mut().enumerate() {
            if let Some((seq, id, j)) = Self::next_live(it, queue) {
                heap.push((Prio(self.priority(&j.workload, now, &fs)), Reverse(seq), i, id));
                heads[i] = Some(j);
            }
        }
        let mut started: Vec<(u32, u64, WorkloadId)> = Vec::new();
        let mut reservation: Option<(SimTime, FxHashSet<NodeId>)> = None;
        let mut failed: FxHashSet<GpuRequest> = FxHashSet::default();
        let mut looked = 0usize;
        while let Some((_, Reverse(seq), i, id)) = heap.pop() {
            let head = heads[i].take();
            if let Some((seq, id, j)) = Self::next_live(&mut cursors[i], queue) {
                heap.push((Prio(self.priority(&j.workload, now, &fs)), Reverse(seq), i, id));
                heads[i] = Some(j);
            }
            looked += 1;
            if looked > self.config.depth || cluster.allocated_gpu_milli() >= cluster.total_gpu_milli() {
                break;
            }
            let Some(job) = head else { continue };
            if failed.contains(&job.workload.gpu) {
                continue;
            }
            let Some(p) = self.placer.place(cluster, &job.demand) else {
                failed.insert(job.workload.gpu);
                if reservation.is_none() {
                    reservation = Some(self.reservation(now, cluster, &job.demand));
                }
                continue;
            };
            if let Some((shadow, nodes)) = &reservation {
                let end = now + SimDuration::from_secs_f64(self.estimate_s(job.workload.tenant.0));
                if end > *shadow && p.nodes().any(|n| nodes.contains(&n)) {
                    continue;
                }
            }
            if cluster.allocate(id, &job.demand, p.clone()).is_ok() {
                let w = job.workload.clone();
                started.push((w.tenant.0, seq, id));
                self.start(now, &w, p, &mut out);
            }
        }
        drop(cursors);
        self.by_tenant = by_tenant;
        for (t, seq, id) in started {
            if let Some(set) = self.by_tenant.get_mut(&t) {
                set.remove(&(seq, id));
            }
        }
        self.by_tenant.retain(|_, s| !s.is_empty());
        out
    }

    fn start_undone(&mut self, job: &QueuedJob, seq: u64, now: SimTime) {
        self.advance(now);
        if let Some(r) = self.running.remove(&job.id()) {
            if let Some(g) = self.running_gpus.get_mut(&r.tenant) {
                *g = (*g - r.gpus).max(0.0);
            }
            self.by_tenant.entry(r.tenant).or_default().insert((seq, job.id()));
        }
    }

    fn on_finished(&mut self, workload: &Workload, _started: SimTime, now: SimTime) {
        self.advance(now);
        if let Some(r) = self.running.remove(&workload.id) {
            if let Some(g) = self.running_gpus.get_mut(&r.tenant) {
                *g = (*g - r.gpus).max(0.0);
            }
            let h = self.history.entry(r.tenant).or_default();
            h.push_back(now.since(r.started).as_secs_f64());
            if h.len() > HISTORY {
                h.pop_front();
            }
            let estimate = self.config.over_estimate * h.iter().sum::<f64>() / h.len() as f64;
            self.estimates.insert(r.tenant, estimate);
        }
    }
}
