//! `quota`: per-tenant guaranteed GPUs with borrowing and reclaim, as Kueue's ClusterQueues in one
//! cohort do.
//!
//! Every tenant has a nominal quota of GPUs: given explicitly, or an equal share of the fleet
//! among the tenants seen so far. A round has two passes, both in submit order within a tenant
//! (Kueue's BestEffortFIFO: a job that does not fit does not block the ones behind it):
//!
//! 1. Within quota: tenants in the order of their oldest waiting job start jobs while their usage
//!    stays within their nominal quota. A job that fits its quota but not the free GPUs reclaims:
//!    it preempts jobs of tenants that are borrowing (using more than their nominal quota), most
//!    recently started first, never one that has run less than the minimum runtime.
//! 2. Borrowing: any waiting job, oldest first, starts if it fits in the idle GPUs.
//!
//! A tenant within its quota is never preempted, so reclaim cannot loop: a reclaimed job belongs
//! to a tenant over its quota, and the reclaiming job keeps its tenant within its own. At most 64
//! jobs per tenant in the first pass and 500 in the second are looked at per round.

use crate::cluster::ClusterState;
use crate::demand::Demand;
use crate::placer::Placer;
use crate::policy::{Decision, Policy};
use crate::prio::{choose_victims, preempt_and_place};
use crate::queue::{Queue, QueuedJob};
use crate::topo::TopoPlacer;
use model::{SimDuration, SimTime, Workload, WorkloadId};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet};

/// Knobs of [`Quota`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaConfig {
    /// Nominal GPUs per tenant id; tenants not listed share what is left equally.
    pub nominal: BTreeMap<u32, f64>,
    pub min_runtime: SimDuration,
    /// Reclaim attempts per round.
    pub reclaim_tries: usize,
}

impl Default for QuotaConfig {
    /// Equal shares, 10 minutes minimum runtime, 4 reclaim attempts a round.
    fn default() -> Self {
        QuotaConfig { nominal: BTreeMap::new(), min_runtime: SimDuration::from_secs(600), reclaim_tries: 4 }
    }
}

struct Running {
    tenant: u32,
    gpus: f64,
    started: SimTime,
    demand: Demand,
}

const PER_TENANT_DEPTH: usize = 64;
const BORROW_DEPTH: usize = 500;

/// Guaranteed quotas with borrowing and reclaim.
pub struct Quota {
    config: QuotaConfig,
    placer: TopoPlacer,
    seen_seq: u64,
    /// Generation of the queue `seen_seq` counts in.
    queue_generation: u64,
    by_tenant: BTreeMap<u32, BTreeSet<(u64, WorkloadId)>>,
    all: BTreeSet<(u64, WorkloadId)>,
    tenants_seen: BTreeSet<u32>,
    running: BTreeMap<WorkloadId, Running>,
    used: FxHashMap<u32, f64>,
    /// GPUs of the fleet, as of the last round.
    fleet_gpus: f64,
}

impl Quota {
    pub fn new(config: QuotaConfig) -> Self {
        Quota {
            config,
            placer: TopoPlacer,
            seen_seq: 0,
            queue_generation: 0,
            fleet_gpus: 0.0,
            by_tenant: BTreeMap::new(),
            all: BTreeSet::new(),
            tenants_seen: BTreeSet::new(),
            running: BTreeMap::new(),
            used: FxHashMap::default(),
        }
    }

    fn nominal(&self, tenant: u32, total_gpus: f64) -> f64 {
        if let Some(q) = self.config.nominal.get(&tenant) {
            return *q;
        }
        let fixed: f64 = self.config.nominal.values().sum();
        let others = self.tenants_seen.iter().filter(|t| !self.config.nominal.contains_key(t)).count().max(1);
        ((total_gpus - fixed).max(0.0) / others as f64).floor()
    }

    fn used(&self, tenant: u32) -> f64 {
        self.used.get(&tenant).copied().unwrap_or(0.0)
    }

    fn start(&mut self, now: SimTime, job: &QueuedJob, seq: u64, placement: crate::Placement, out: &mut Vec<Decision>) {
        let t = job.workload.tenant.0;
        let gpus = job.gpus();
        *self.used.entry(t).or_default() += gpus;
        self.running.insert(job.id(), Running { tenant: t, gpus, started: now, demand: job.demand.clone() });
        if let Some(s) = self.by_tenant.get_mut(&t) {
            s.remove(&(seq, job.id()));
        }
        self.all.remove(&(seq, job.id()));
        out.push(Decision::Start { job: job.id(), placement });
    }

    fn stop(&mut self, id: WorkloadId) -> Option<Running> {
        let r = self.running.remove(&id)?;
        if let Some(u) = self.used.get_mut(&r.tenant) {
            *u = (*u - r.gpus).max(0.0);
        }
        Some(r)
    }

    /// Borrowing tenants' jobs that may be preempted now, most recently started first.
    fn reclaimable(&self, now: SimTime, total: f64) -> Vec<WorkloadId> {
        let mut v: Vec<(SimTime, WorkloadId)> = self
            .running
            .iter()
            .filter(|(_, r)| now.since(r.started) >= self.config.min_runtime)
            .filter(|(_, r)| self.used(r.tenant) > self.nominal(r.tenant, total))
            .map(|(id, r)| (r.started, *id))
            .collect();
        v.sort_unstable_by(|a, b| b.cmp(a));
        v.into_iter().map(|(_, id)| id).collect()
    }
}

impl Policy for Quota {
    fn name(&self) -> &str {
        "quota"
    }

    fn min_runtime(&self) -> SimDuration {
        self.config.min_runtime
    }

    /// Jobs of tenants above their quota first (most recently started first), then the rest.
    fn shed_order(&self, _now: SimTime) -> Vec<WorkloadId> {
        let total = self.fleet_gpus;
        let mut v: Vec<(bool, std::cmp::Reverse<SimTime>, WorkloadId)> = self
            .running
            .iter()
            .map(|(id, r)| (self.used(r.tenant) <= self.nominal(r.tenant, total), std::cmp::Reverse(r.started), *id))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        if queue.generation() != self.queue_generation {
            // A new queue: read it whole.
            self.queue_generation = queue.generation();
            self.by_tenant.clear();
            self.all.clear();
            self.seen_seq = 0;
        }
        for (seq, job) in queue.iter_from(self.seen_seq) {
            let t = job.workload.tenant.0;
            self.tenants_seen.insert(t);
            self.by_tenant.entry(t).or_default().insert((seq, job.id()));
            self.all.insert((seq, job.id()));
        }
        self.seen_seq = queue.next_seq();
        let total = cluster.total_gpu_milli() as f64 / f64::from(model::GPU_MILLI_PER_GPU);
        self.fleet_gpus = total;
        let live = |seq: u64, id: WorkloadId| queue.seq(id) == Some(seq);
        let mut out = Vec::new();
        let mut tries = self.config.reclaim_tries;

        // Pass 1: within quota, tenants by their oldest waiting job.
        let mut tenants: Vec<(u64, u32)> =
            self.by_tenant.iter().filter_map(|(t, s)| s.first().map(|(seq, _)| (*seq, *t))).collect();
        tenants.sort_unstable();
        for (_, t) in tenants {
            let nominal = self.nominal(t, total);
            let jobs: Vec<(u64, WorkloadId)> =
                self.by_tenant.get(&t).map(|s| s.iter().take(PER_TENANT_DEPTH).copied().collect()).unwrap_or_default();
            for (seq, id) in jobs {
                if !live(seq, id) {
                    continue;
                }
                let Some(job) = queue.get(id) else { continue };
                if self.used(t) + job.gpus() > nominal {
                    continue;
                }
                if let Some(p) = self.placer.place(cluster, &job.demand)
                    && cluster.allocate(id, &job.demand, p.clone()).is_ok()
                {
                    self.start(now, job, seq, p, &mut out);
                    continue;
                }
                if tries == 0 {
                    continue;
                }
                tries -= 1;
                let cands = self.reclaimable(now, total);
                let Some(victims) = choose_victims(cluster, &job.demand, job.workload.gpu.total_gpu_milli(), &cands)
                else {
                    continue;
                };
                let running = &self.running;
                let placed = preempt_and_place(cluster, &mut self.placer, job, &victims, |v| {
                    running.get(&v).map(|r| r.demand.clone())
                });
                if let Some(p) = placed {
                    for v in &victims {
                        self.stop(*v);
                        out.push(Decision::Preempt { job: *v });
                    }
                    self.start(now, job, seq, p, &mut out);
                }
            }
        }

        // Pass 2: borrowing idle GPUs, oldest first.
        let jobs: Vec<(u64, WorkloadId)> = self.all.iter().take(BORROW_DEPTH).copied().collect();
        let mut failed = rustc_hash::FxHashSet::default();
        for (seq, id) in jobs {
            if cluster.allocated_gpu_milli() >= cluster.total_gpu_milli() {
                break;
            }
            if !live(seq, id) {
                continue;
            }
            let Some(job) = queue.get(id) else { continue };
            if failed.contains(&job.workload.gpu) {
                continue;
            }
            match self.placer.place(cluster, &job.demand) {
                Some(p) if cluster.allocate(id, &job.demand, p.clone()).is_ok() => {
                    self.start(now, job, seq, p, &mut out)
                }
                _ => {
                    failed.insert(job.workload.gpu);
                }
            }
        }
        // Drop what left the queue without us (cancelled).
        let gone: Vec<(u64, WorkloadId)> =
            self.all.iter().take(BORROW_DEPTH).filter(|(s, i)| !live(*s, *i)).copied().collect();
        for (seq, id) in gone {
            self.all.remove(&(seq, id));
            for s in self.by_tenant.values_mut() {
                s.remove(&(seq, id));
            }
        }
        self.by_tenant.retain(|_, s| !s.is_empty());
        out
    }

    fn on_finished(&mut self, workload: &Workload, _started: SimTime, _now: SimTime) {
        self.stop(workload.id);
    }

    fn start_undone(&mut self, job: &QueuedJob, seq: u64, _now: SimTime) {
        if self.stop(job.id()).is_some() {
            let t = job.workload.tenant.0;
            self.by_tenant.entry(t).or_default().insert((seq, job.id()));
            self.all.insert((seq, job.id()));
        }
    }
}
