//! The scheduler's memory of the site: the cluster's allocations, the queue, the active jobs and
//! each tenant's GPUs, kept up to date from events (submitted, started, ended, cancelled, node
//! lost or back, quota changed) instead of being read from the store every round. The store is
//! read whole once, at start-up or after a failed write ([`LiveState`] is then built anew).
//!
//! Knows nothing about the store, HTTP or tokio: every method is a plain, synchronous change of
//! memory whose cost grows with what changed, never with the fleet or the running jobs.

use crate::convert::{total_gpus, workload_of};
use model::{Fleet, NodeId, Workload, WorkloadId};
use sched::{ClusterState, Demand, Placement, Queue, QueuedJob};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use store::{Job, JobState, TenantQuota};

/// Queue order between all tenants' jobs: priority first, deferrable work after the rest, then
/// arrival (the job id).
pub(crate) type QueueKey = (Reverse<i64>, bool, i64);

fn key_of(job: &Job) -> QueueKey {
    (Reverse(job.spec.priority), job.spec.deferrable, job.id)
}

/// The node feature ([`sched::Demand::node_features`]) of nodes that run container images.
pub(crate) const RUNS_IMAGES: u64 = 1;

/// Where an active job stands in the scheduler's memory.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Place {
    /// Deferrable, waiting for its hour (Unix ms).
    Deferred(i64),
    /// Pending, held out of the queue by its tenant's quota.
    Held,
    /// Federated and pending while the site holds no federation lease: out of the queue, so
    /// that it neither starts nor keeps GPUs from other work in the policy's rounds.
    Fenced,
    /// In the queue the policy reads.
    Queued,
    /// Holding its placement on the cluster (scheduled or running).
    Placed(Placement),
    /// Cancelled or preempted, its run being stopped on these nodes: out of the cluster (other
    /// work may be placed there) but no start on these nodes runs until its nodes confirm it gone.
    Stopping(Placement),
}

/// An active job as the scheduler knows it.
pub(crate) struct LiveJob {
    /// The stored row as last written by this process.
    pub job: Job,
    /// Its id in the scheduler core, which numbers workloads with 32 bits: the server gives out
    /// its own, so job ids stay 64-bit.
    pub wid: WorkloadId,
    pub workload: Arc<Workload>,
    pub demand: Demand,
    /// What it holds when placed, over all its nodes, as quotas count it.
    pub holds: Holding,
    pub place: Place,
}

/// What a job holds, or a tenant's jobs hold together, over all their nodes: what a quota bounds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holding {
    /// Whole GPUs; a share of one GPU counts as one.
    pub gpus: u64,
    pub cpu_milli: u64,
    pub memory_mib: u64,
}

impl Holding {
    fn of(job: &Job) -> Holding {
        let nodes = job.spec.nodes.max(1).unsigned_abs();
        Holding {
            gpus: total_gpus(job),
            cpu_milli: job.spec.cpu_milli.max(0).unsigned_abs().saturating_mul(nodes),
            memory_mib: job.spec.memory_mib.max(0).unsigned_abs().saturating_mul(nodes),
        }
    }

    fn add(&mut self, other: Holding) {
        self.gpus = self.gpus.saturating_add(other.gpus);
        self.cpu_milli = self.cpu_milli.saturating_add(other.cpu_milli);
        self.memory_mib = self.memory_mib.saturating_add(other.memory_mib);
    }

    fn sub(&mut self, other: Holding) {
        self.gpus = self.gpus.saturating_sub(other.gpus);
        self.cpu_milli = self.cpu_milli.saturating_sub(other.cpu_milli);
        self.memory_mib = self.memory_mib.saturating_sub(other.memory_mib);
    }

    /// Whether this much stays within `quota` (a limit left out does not bound).
    fn within(&self, quota: &TenantQuota) -> bool {
        let within = |amount: u64, limit: Option<i64>| limit.is_none_or(|l| amount <= l.max(0).unsigned_abs());
        within(self.gpus, quota.gpus)
            && within(self.cpu_milli, quota.cpu_milli)
            && within(self.memory_mib, quota.memory_mib)
    }
}

/// Why a job could not be taken into memory.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LiveError {
    #[error("job {0} is already known")]
    Known(i64),
    #[error("job {job}'s placement cannot be restored: {why}")]
    Restore { job: i64, why: String },
}

pub(crate) struct LiveState {
    fleet: Arc<Fleet>,
    pub cluster: ClusterState,
    pub queue: Queue,
    /// The key of the last job pushed: a job that sorts before it makes the queue out of order,
    /// rebuilt (as a new generation) before the policy reads it.
    queue_tail: Option<QueueKey>,
    queue_out_of_order: bool,
    generation: u64,
    jobs: HashMap<i64, LiveJob>,
    job_of_wid: HashMap<WorkloadId, i64>,
    next_wid: u32,
    /// Quota by tenant id.
    quotas: HashMap<i64, TenantQuota>,
    /// What each tenant's placed and queued jobs hold, which its quota bounds.
    reserved: HashMap<i64, Holding>,
    /// Each tenant's pending jobs held back by its quota, in queue order.
    held: HashMap<i64, BTreeSet<QueueKey>>,
    /// Deferrable jobs by the time they may enter the queue.
    deferred: BTreeSet<(i64, i64)>,
    /// Whether federated jobs may enter the queue: the site holds a federation lease.
    federation_open: bool,
    /// Federated jobs waiting for a federation lease, in queue order.
    fenced: BTreeSet<QueueKey>,
    /// GPUs asked for by the pending jobs (queued, held, deferred or fenced), thousandths.
    pending_gpu_milli: u64,
    /// Nodes without a live agent: their free GPUs are held by a blocker workload.
    blocked: HashMap<NodeId, WorkloadId>,
    blockers: std::collections::HashSet<WorkloadId>,
    /// GPUs in use per node, by node index, and the nodes changed since last taken.
    node_gpus_used: Vec<u32>,
    touched_nodes: Vec<NodeId>,
    placed_jobs: usize,
    /// Runs being stopped per node ([`Place::Stopping`]).
    stopping_nodes: HashMap<NodeId, u32>,
    stopping_jobs: usize,
    /// Jobs recorded as scheduled, not running: a run being stopped still holds one of their
    /// nodes. They run once none does ([`LiveState::ready_to_run`]).
    waiting: BTreeSet<i64>,
}

impl LiveState {
    pub fn new(fleet: Arc<Fleet>, generation: u64) -> LiveState {
        let nodes = fleet.nodes.len();
        LiveState {
            cluster: ClusterState::new(fleet.clone()),
            fleet,
            queue: Queue::with_generation(generation),
            queue_tail: None,
            queue_out_of_order: false,
            generation,
            jobs: HashMap::new(),
            job_of_wid: HashMap::new(),
            next_wid: 1,
            quotas: HashMap::new(),
            reserved: HashMap::new(),
            held: HashMap::new(),
            deferred: BTreeSet::new(),
            federation_open: false,
            fenced: BTreeSet::new(),
            pending_gpu_milli: 0,
            blocked: HashMap::new(),
            blockers: Default::default(),
            node_gpus_used: vec![0; nodes],
            touched_nodes: Vec::new(),
            placed_jobs: 0,
            stopping_nodes: HashMap::new(),
            stopping_jobs: 0,
            waiting: BTreeSet::new(),
        }
    }

    pub fn knows_tenant(&self, tenant_id: i64) -> bool {
        self.quotas.contains_key(&tenant_id)
    }

    pub fn job(&self, id: i64) -> Option<&LiveJob> {
        self.jobs.get(&id)
    }

    pub fn job_mut(&mut self, id: i64) -> Option<&mut LiveJob> {
        self.jobs.get_mut(&id)
    }

    pub fn job_id_of(&self, wid: WorkloadId) -> Option<i64> {
        self.job_of_wid.get(&wid).copied()
    }

    /// Jobs holding a placement, with it.
    pub fn placed(&self) -> impl Iterator<Item = (&LiveJob, &Placement)> {
        self.jobs.values().filter_map(|j| match &j.place {
            Place::Placed(p) => Some((j, p)),
            _ => None,
        })
    }

    /// Jobs whose runs are being stopped, with where they ran.
    pub fn stopping(&self) -> impl Iterator<Item = (&LiveJob, &Placement)> {
        self.jobs.values().filter_map(|j| match &j.place {
            Place::Stopping(p) => Some((j, p)),
            _ => None,
        })
    }

    pub fn placed_jobs(&self) -> usize {
        self.placed_jobs
    }

    pub fn pending_jobs(&self) -> usize {
        self.jobs.len() - self.placed_jobs - self.stopping_jobs
    }

    /// GPUs the pending jobs ask for, thousandths (a share of one GPU counts as its share).
    pub fn pending_gpu_milli(&self) -> u64 {
        self.pending_gpu_milli
    }

    /// Opens or closes the queue to federated jobs as the site's federation lease holds or lapses:
    /// closing takes the queued ones out (their tenants' reservations freed for other work),
    /// opening lets the fenced ones in, in queue order. Returns whether it changed.
    pub fn set_federation_open(&mut self, open: bool) -> bool {
        if self.federation_open == open {
            return false;
        }
        self.federation_open = open;
        if open {
            for key in std::mem::take(&mut self.fenced) {
                self.admit(key.2);
            }
            return true;
        }
        let mut queued: Vec<(i64, i64)> = self
            .jobs
            .values()
            .filter(|j| j.job.spec.federated && j.place == Place::Queued)
            .map(|j| (j.job.id, j.job.spec.tenant_id))
            .collect();
        queued.sort_unstable();
        let mut tenants: Vec<i64> = queued.iter().map(|(_, t)| *t).collect();
        for (id, _) in queued {
            self.unqueue(id);
            self.fence(id);
        }
        tenants.sort_unstable();
        tenants.dedup();
        for tenant in tenants {
            self.admit_held(tenant);
        }
        true
    }

    /// Whether a run being stopped still holds a node of `placement`: work placed there waits.
    pub fn blocks_start(&self, placement: &Placement) -> bool {
        !self.stopping_nodes.is_empty() && placement.members.iter().any(|m| self.stopping_nodes.contains_key(&m.node))
    }

    /// A placed job recorded as scheduled only, waiting for runs being stopped on its nodes.
    pub fn wait_for_stops(&mut self, id: i64) {
        if matches!(self.jobs.get(&id).map(|j| &j.place), Some(Place::Placed(_))) {
            self.waiting.insert(id);
        }
    }

    /// Waiting jobs whose nodes no runs being stopped hold any more: they may run now.
    pub fn ready_to_run(&self) -> Vec<i64> {
        self.waiting
            .iter()
            .filter(|id| match self.jobs.get(id).map(|j| &j.place) {
                Some(Place::Placed(p)) => !self.blocks_start(p),
                _ => true,
            })
            .copied()
            .collect()
    }

    /// A waiting job runs now (or left): it waits no more.
    pub fn runs_now(&mut self, id: i64) {
        self.waiting.remove(&id);
    }

    /// A placed job whose run is being stopped (cancelled, or preempted), now in `state`: its
    /// GPUs leave the cluster (a preempting policy released them already) and its tenant's
    /// reservation, but starts on its nodes wait until [`LiveState::remove`] or
    /// [`LiveState::requeue`] says its run is gone. Returns whether it was placed.
    pub fn stop(&mut self, id: i64, state: JobState) -> bool {
        let Some(Place::Placed(placement)) = self.jobs.get(&id).map(|j| j.place.clone()) else { return false };
        self.vacate(id);
        self.stopping_now(id, placement);
        if let Some(j) = self.jobs.get_mut(&id) {
            j.job.state = state;
            let tenant = j.job.spec.tenant_id;
            self.admit_held(tenant);
        }
        true
    }

    /// A job the store says is being stopped (preempted, with its placement): its nodes wait
    /// for its run to be gone.
    pub fn add_stopping(&mut self, job: Job, placement: Placement) -> Result<(), LiveError> {
        let id = job.id;
        self.insert(job)?;
        self.stopping_now(id, placement);
        Ok(())
    }

    fn stopping_now(&mut self, id: i64, placement: Placement) {
        // Called on a job just taken into memory or just vacated: it was counted as pending.
        if let Some(j) = self.jobs.get(&id) {
            self.pending_gpu_milli = self.pending_gpu_milli.saturating_sub(gpu_milli_of(&j.job));
        }
        for m in &placement.members {
            *self.stopping_nodes.entry(m.node).or_default() += 1;
        }
        self.stopping_jobs += 1;
        self.set_place(id, Place::Stopping(placement));
    }

    fn take_wid(&mut self) -> WorkloadId {
        // 32 bits of workload ids outlast any process: ids are not reused before they wrap.
        loop {
            let wid = WorkloadId(self.next_wid);
            self.next_wid = self.next_wid.wrapping_add(1).max(1);
            if !self.job_of_wid.contains_key(&wid) && !self.blockers.contains(&wid) {
                return wid;
            }
        }
    }

    /// A tenant's quota, as stored. Lowering it sends the tenant's queued jobs over it back to
    /// be held; raising it lets held ones in.
    pub fn set_quota(&mut self, tenant_id: i64, quota: TenantQuota) {
        self.quotas.insert(tenant_id, quota);
        if !self.fits_quota(tenant_id, Holding::default()) {
            let mut queued: Vec<(QueueKey, i64)> = self
                .jobs
                .values()
                .filter(|j| j.job.spec.tenant_id == tenant_id && j.place == Place::Queued)
                .map(|j| (key_of(&j.job), j.job.id))
                .collect();
            queued.sort();
            for (_, id) in queued.into_iter().rev() {
                if self.fits_quota(tenant_id, Holding::default()) {
                    break;
                }
                self.unqueue(id);
                self.hold(id);
            }
        }
        self.admit_held(tenant_id);
    }

    /// Whether the tenant may reserve `more` beside what it holds.
    fn fits_quota(&self, tenant_id: i64, more: Holding) -> bool {
        let Some(quota) = self.quotas.get(&tenant_id) else { return true };
        let mut after = self.reserved.get(&tenant_id).copied().unwrap_or_default();
        after.add(more);
        after.within(quota)
    }

    /// A pending job: into the queue, held by its tenant's quota, or deferred until `release_ms`.
    pub fn add_pending(&mut self, job: Job, release_ms: Option<i64>, now_ms: i64) -> Result<(), LiveError> {
        let id = job.id;
        self.insert(job)?;
        match release_ms.filter(|&t| t > now_ms) {
            Some(t) => {
                self.deferred.insert((t, id));
                self.set_place(id, Place::Deferred(t));
            }
            None => self.admit(id),
        }
        Ok(())
    }

    /// A scheduled or running job whose placement was stored: it holds it again.
    pub fn add_placed(&mut self, job: Job, placement: Placement) -> Result<(), LiveError> {
        let id = job.id;
        self.insert(job)?;
        let Some(j) = self.jobs.get(&id) else { return Ok(()) };
        if let Err(e) = self.cluster.allocate(j.wid, &j.demand, placement.clone()) {
            self.forget(id);
            return Err(LiveError::Restore { job: id, why: e.to_string() });
        }
        self.placed_now(id, placement);
        Ok(())
    }

    fn insert(&mut self, job: Job) -> Result<(), LiveError> {
        if self.jobs.contains_key(&job.id) {
            return Err(LiveError::Known(job.id));
        }
        let wid = self.take_wid();
        let workload = workload_of(&job, wid);
        let mut demand = Demand::of(&workload, &self.fleet);
        if job.spec.image.is_some() {
            demand.node_features |= RUNS_IMAGES;
        }
        let holds = Holding::of(&job);
        self.pending_gpu_milli = self.pending_gpu_milli.saturating_add(gpu_milli_of(&job));
        self.job_of_wid.insert(wid, job.id);
        self.jobs.insert(job.id, LiveJob { job, wid, workload: Arc::new(workload), demand, holds, place: Place::Held });
        Ok(())
    }

    fn set_place(&mut self, id: i64, place: Place) {
        if let Some(j) = self.jobs.get_mut(&id) {
            j.place = place;
        }
    }

    /// Deferred jobs whose hour has come enter the queue (or wait for their quota).
    pub fn release_deferred(&mut self, now_ms: i64) -> usize {
        let mut released = 0;
        while let Some(&(t, id)) = self.deferred.first() {
            if t > now_ms {
                break;
            }
            self.deferred.pop_first();
            self.admit(id);
            released += 1;
        }
        released
    }

    /// When the next deferred job may enter the queue, Unix ms.
    pub fn next_release_ms(&self) -> Option<i64> {
        self.deferred.first().map(|(t, _)| *t)
    }

    fn admit(&mut self, id: i64) {
        let Some(j) = self.jobs.get(&id) else { return };
        let (tenant, holds) = (j.job.spec.tenant_id, j.holds);
        if self.fits_quota(tenant, holds) {
            self.enqueue(id);
        } else {
            self.hold(id);
        }
    }

    fn hold(&mut self, id: i64) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        j.place = Place::Held;
        self.held.entry(j.job.spec.tenant_id).or_default().insert(key_of(&j.job));
    }

    /// Held jobs of `tenant_id` that now fit its quota enter the queue, in queue order; a job
    /// too big for what is left does not stop a smaller one behind it.
    fn admit_held(&mut self, tenant_id: i64) {
        let Some(held) = self.held.get(&tenant_id) else { return };
        let keys: Vec<QueueKey> = held.iter().copied().collect();
        for key in keys {
            let id = key.2;
            let Some(holds) = self.jobs.get(&id).map(|j| j.holds) else { continue };
            if self.fits_quota(tenant_id, holds) {
                if let Some(h) = self.held.get_mut(&tenant_id) {
                    h.remove(&key);
                }
                self.enqueue(id);
            }
        }
        if self.held.get(&tenant_id).is_some_and(|h| h.is_empty()) {
            self.held.remove(&tenant_id);
        }
    }

    fn enqueue(&mut self, id: i64) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        if j.job.spec.federated && !self.federation_open {
            self.fence(id);
            return;
        }
        j.place = Place::Queued;
        let key = key_of(&j.job);
        self.reserved.entry(j.job.spec.tenant_id).or_default().add(j.holds);
        let queued = QueuedJob::new(j.workload.clone(), j.demand.clone(), j.workload.submit_time);
        if self.queue_tail.is_some_and(|tail| key < tail) {
            self.queue_out_of_order = true;
        }
        self.queue_tail = Some(self.queue_tail.map_or(key, |t| t.max(key)));
        self.queue.push(queued);
    }

    fn fence(&mut self, id: i64) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        j.place = Place::Fenced;
        self.fenced.insert(key_of(&j.job));
    }

    /// Takes a queued job out of the queue (it stays in memory).
    fn unqueue(&mut self, id: i64) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        if j.place != Place::Queued {
            return;
        }
        j.place = Place::Held;
        self.queue.remove(j.wid);
        if let Some(r) = self.reserved.get_mut(&j.job.spec.tenant_id) {
            r.sub(j.holds);
        }
    }

    /// Before the policy reads the queue: a queue that fell out of order is rebuilt in order, as
    /// a new generation (policies then index it whole). Returns whether it was.
    pub fn order_queue(&mut self) -> bool {
        if !self.queue_out_of_order {
            return false;
        }
        self.generation += 1;
        let mut queued: Vec<(QueueKey, i64)> =
            self.jobs.values().filter(|j| j.place == Place::Queued).map(|j| (key_of(&j.job), j.job.id)).collect();
        queued.sort();
        let mut queue = Queue::with_generation(self.generation);
        for (_, id) in &queued {
            if let Some(j) = self.jobs.get(id) {
                queue.push(QueuedJob::new(j.workload.clone(), j.demand.clone(), j.workload.submit_time));
            }
        }
        self.queue = queue;
        self.queue_tail = queued.last().map(|(k, _)| *k);
        self.queue_out_of_order = false;
        true
    }

    /// A queued job the policy placed (the cluster already holds `placement` for it) and whose
    /// start the store recorded.
    pub fn started(&mut self, id: i64, placement: Placement) {
        let Some(j) = self.jobs.get(&id) else { return };
        if j.place == Place::Queued {
            self.queue.remove(j.wid);
            self.placed_now(id, placement);
        }
    }

    fn placed_now(&mut self, id: i64, placement: Placement) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        let tenant = j.job.spec.tenant_id;
        self.pending_gpu_milli = self.pending_gpu_milli.saturating_sub(gpu_milli_of(&j.job));
        if j.place != Place::Queued {
            // Restored from the store: not reserved yet.
            self.reserved.entry(tenant).or_default().add(j.holds);
        }
        for m in &placement.members {
            if let Some(used) = self.node_gpus_used.get_mut(m.node.index()) {
                *used += m.gpus.len() as u32;
                self.touched_nodes.push(m.node);
            }
        }
        j.place = Place::Placed(placement);
        self.placed_jobs += 1;
    }

    /// Gives back what a job holds or waits for: its placement (the cluster releases it unless
    /// the policy already did), its place in the queue, its tenant's reservation.
    fn vacate(&mut self, id: i64) {
        let Some(j) = self.jobs.get_mut(&id) else { return };
        let tenant = j.job.spec.tenant_id;
        let place = std::mem::replace(&mut j.place, Place::Held);
        let (wid, holds) = (j.wid, j.holds);
        if matches!(place, Place::Placed(_) | Place::Stopping(_)) {
            // Held now: pending again until it is forgotten or placed.
            self.pending_gpu_milli = self.pending_gpu_milli.saturating_add(gpu_milli_of(&j.job));
        }
        match place {
            Place::Deferred(t) => {
                self.deferred.remove(&(t, id));
            }
            Place::Fenced => {
                self.fenced.remove(&key_of(&j.job));
            }
            Place::Held => {
                let key = key_of(&j.job);
                if let Some(h) = self.held.get_mut(&tenant) {
                    h.remove(&key);
                }
            }
            Place::Queued => {
                self.queue.remove(wid);
                if let Some(r) = self.reserved.get_mut(&tenant) {
                    r.sub(holds);
                }
            }
            Place::Stopping(placement) => {
                self.stopping_jobs -= 1;
                for m in &placement.members {
                    if let Some(n) = self.stopping_nodes.get_mut(&m.node) {
                        *n -= 1;
                        if *n == 0 {
                            self.stopping_nodes.remove(&m.node);
                        }
                    }
                }
            }
            Place::Placed(placement) => {
                // A preempting policy has released it already.
                let _ = self.cluster.release(wid);
                self.waiting.remove(&id);
                self.placed_jobs -= 1;
                if let Some(r) = self.reserved.get_mut(&tenant) {
                    r.sub(holds);
                }
                for m in &placement.members {
                    if let Some(used) = self.node_gpus_used.get_mut(m.node.index()) {
                        *used = used.saturating_sub(m.gpus.len() as u32);
                        self.touched_nodes.push(m.node);
                    }
                    // GPUs freed on a node without an agent must not take new work.
                    if self.blocked.contains_key(&m.node) {
                        self.unblock(m.node);
                        self.block(m.node);
                    }
                }
            }
        }
    }

    /// A job that left the active states (ended, cancelled, or never recorded): forgotten, and
    /// its tenant's held jobs reconsidered.
    pub fn remove(&mut self, id: i64) -> Option<LiveJob> {
        self.vacate(id);
        let j = self.forget(id)?;
        self.admit_held(j.job.spec.tenant_id);
        Some(j)
    }

    fn forget(&mut self, id: i64) -> Option<LiveJob> {
        let j = self.jobs.remove(&id)?;
        if !matches!(j.place, Place::Placed(_) | Place::Stopping(_)) {
            self.pending_gpu_milli = self.pending_gpu_milli.saturating_sub(gpu_milli_of(&j.job));
        }
        self.job_of_wid.remove(&j.wid);
        Some(j)
    }

    /// A placed job back to pending (preempted, or restarting after a failure), with `job` its
    /// row as now stored.
    pub fn requeue(&mut self, job: Job) {
        let id = job.id;
        self.vacate(id);
        let Some(j) = self.jobs.get_mut(&id) else { return };
        let tenant = job.spec.tenant_id;
        j.job = job;
        self.admit(id);
        self.admit_held(tenant);
    }

    /// Whether `node` has an agent to run work. Blocking holds its free whole GPUs with a
    /// blocker workload, so no policy places work there; unblocking frees them.
    /// Whether `node` runs container images now: jobs naming an image are placed only where one
    /// does (a job placed already stays).
    pub fn set_runs_images(&mut self, node: NodeId, runs_images: bool) {
        let features = self.cluster.node_features(node);
        let features = if runs_images { features | RUNS_IMAGES } else { features & !RUNS_IMAGES };
        self.cluster.set_node_features(node, features);
    }

    pub fn set_available(&mut self, node: NodeId, available: bool) {
        match (available, self.blocked.contains_key(&node)) {
            (false, false) => self.block(node),
            (true, true) => self.unblock(node),
            _ => {}
        }
    }

    fn block(&mut self, node: NodeId) {
        let free: Vec<sched::GpuShare> = self
            .cluster
            .gpu_free_milli(node)
            .iter()
            .enumerate()
            .filter(|(_, m)| **m >= 1000)
            .map(|(i, m)| sched::GpuShare { index: i as u8, milli: *m })
            .collect();
        let wid = self.take_wid();
        // Registered even with nothing to hold, so the node stays known as blocked.
        self.blocked.insert(node, wid);
        self.blockers.insert(wid);
        // Its free CPUs and memory too, or CPU-only work would still land there.
        let (cpu_milli, memory_mib) = (self.cluster.free_cpu_milli(node), self.cluster.free_memory_mib(node));
        if free.is_empty() && cpu_milli == 0 && memory_mib == 0 {
            return;
        }
        let mut w = crate::convert::request_workload(wid, free.len() as i64, 1, None);
        (w.cpu_milli, w.memory_mib) = (cpu_milli, memory_mib);
        let demand = Demand::of(&w, &self.fleet);
        let member =
            sched::MemberPlacement { node, cpu_milli: demand.cpu_milli, memory_mib: demand.memory_mib, gpus: free };
        if self.cluster.allocate(wid, &demand, Placement { members: vec![member] }).is_err() {
            tracing::debug!(node = node.index(), "node's free gpus could not be held");
        }
    }

    fn unblock(&mut self, node: NodeId) {
        if let Some(wid) = self.blocked.remove(&node) {
            self.blockers.remove(&wid);
            let _ = self.cluster.release(wid);
        }
    }

    /// Nodes whose GPUs in use changed since the last call, with their count now.
    pub fn take_touched_nodes(&mut self) -> Vec<(NodeId, u32)> {
        let mut touched = std::mem::take(&mut self.touched_nodes);
        touched.sort_unstable();
        touched.dedup();
        touched.into_iter().map(|n| (n, self.node_gpus_used.get(n.index()).copied().unwrap_or(0))).collect()
    }

    pub fn node_gpus_used(&self) -> &[u32] {
        &self.node_gpus_used
    }

    /// Checks the bookkeeping against itself (tests): what the cluster holds is what the jobs
    /// say they hold, the queue holds exactly the queued jobs, and reservations add up.
    #[cfg(test)]
    pub fn verify(&self) -> Result<(), String> {
        self.cluster.verify()?;
        let mut reserved: HashMap<i64, Holding> = HashMap::new();
        let mut used = vec![0u32; self.node_gpus_used.len()];
        let mut stopping: HashMap<NodeId, u32> = HashMap::new();
        let mut pending_milli = 0u64;
        for j in self.jobs.values() {
            match &j.place {
                Place::Placed(p) => {
                    if self.cluster.allocation(j.wid) != Some(p) {
                        return Err(format!("job {} is placed but the cluster disagrees", j.job.id));
                    }
                    reserved.entry(j.job.spec.tenant_id).or_default().add(j.holds);
                    for m in &p.members {
                        used[m.node.index()] += m.gpus.len() as u32;
                    }
                }
                Place::Queued => {
                    if !self.queue.contains(j.wid) {
                        return Err(format!("job {} is queued but not in the queue", j.job.id));
                    }
                    if j.job.spec.federated && !self.federation_open {
                        return Err(format!("federated job {} is queued without a lease", j.job.id));
                    }
                    reserved.entry(j.job.spec.tenant_id).or_default().add(j.holds);
                    pending_milli += gpu_milli_of(&j.job);
                }
                Place::Held | Place::Deferred(_) | Place::Fenced => {
                    if self.queue.contains(j.wid) {
                        return Err(format!("job {} waits but is in the queue", j.job.id));
                    }
                    if j.place == Place::Fenced && (self.federation_open || !j.job.spec.federated) {
                        return Err(format!("job {} is fenced though it may be queued", j.job.id));
                    }
                    pending_milli += gpu_milli_of(&j.job);
                }
                Place::Stopping(p) => {
                    if self.queue.contains(j.wid) || self.cluster.allocation(j.wid).is_some() {
                        return Err(format!("job {} is being stopped but holds a place", j.job.id));
                    }
                    for m in &p.members {
                        *stopping.entry(m.node).or_default() += 1;
                    }
                }
            }
        }
        if stopping != self.stopping_nodes {
            return Err("runs being stopped per node disagree with the jobs".into());
        }
        if pending_milli != self.pending_gpu_milli {
            return Err(format!(
                "pending jobs ask {pending_milli} GPU thousandths, counted {}",
                self.pending_gpu_milli
            ));
        }
        if self.fenced.len() != self.jobs.values().filter(|j| j.place == Place::Fenced).count() {
            return Err("the fenced set disagrees with the fenced jobs".into());
        }
        for id in &self.waiting {
            match self.jobs.get(id) {
                Some(j) if matches!(j.place, Place::Placed(_)) && j.job.state == JobState::Scheduled => {}
                _ => return Err(format!("job {id} waits to run but is not scheduled")),
            }
        }
        if self.queue.len() != self.jobs.values().filter(|j| j.place == Place::Queued).count() {
            return Err("the queue holds jobs that are not queued".into());
        }
        for (tenant, r) in &self.reserved {
            if reserved.get(tenant).copied().unwrap_or_default() != *r {
                return Err(format!("tenant {tenant} reserves {r:?}, its jobs {:?}", reserved.get(tenant)));
            }
        }
        if used != self.node_gpus_used {
            return Err("gpus in use per node disagree with the placements".into());
        }
        // Nothing is held back that its tenant's quota would now take.
        for (tenant, keys) in &self.held {
            for key in keys {
                let holds = self.jobs.get(&key.2).map_or(Holding::default(), |j| j.holds);
                if self.fits_quota(*tenant, holds) {
                    return Err(format!("job {} is held though tenant {tenant}'s quota has room", key.2));
                }
            }
        }
        let in_cluster = self.cluster.allocations().count();
        let blockers = self.blocked.values().filter(|w| self.cluster.allocation(**w).is_some()).count();
        if in_cluster != self.placed_jobs + blockers {
            return Err(format!("the cluster holds {in_cluster} allocations, {} jobs placed", self.placed_jobs));
        }
        Ok(())
    }
}

/// GPUs a job asks for, thousandths: a share of one GPU as asked, else whole GPUs on every node.
fn gpu_milli_of(job: &Job) -> u64 {
    match job.spec.gpu_milli {
        Some(milli) => milli.max(0).unsigned_abs(),
        None => job
            .spec
            .gpus_per_node
            .max(0)
            .unsigned_abs()
            .saturating_mul(job.spec.nodes.max(1).unsigned_abs())
            .saturating_mul(1000),
    }
}

/// Whether a job in `state` holds a placement.
pub(crate) fn is_placed_state(state: JobState) -> bool {
    matches!(state, JobState::Scheduled | JobState::Assigned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sched::Policy;

    const FLEET: &str = include_str!("../../../../fleets/small.toml");

    fn fleet() -> Arc<Fleet> {
        Arc::new(model::fleet_toml::parse_fleet(FLEET).expect("small fleet parses"))
    }

    fn job(id: i64, tenant_id: i64, gpus_per_node: i64, nodes: i64, priority: i64) -> Job {
        super::super::bench::pending_job(id, tenant_id, gpus_per_node, nodes, priority)
    }

    /// Runs fifo on the live state and records every start, as the loop does.
    fn schedule(live: &mut LiveState, policy: &mut dyn Policy) -> Vec<i64> {
        live.order_queue();
        let decisions = policy.schedule(model::SimTime::ZERO, &live.queue, &mut live.cluster);
        let mut started = Vec::new();
        for d in decisions {
            if let sched::Decision::Start { job, placement } = d {
                let id = live.job_id_of(job).expect("a started job is known");
                let waits = live.blocks_start(&placement);
                if let Some(j) = live.job_mut(id) {
                    if waits {
                        j.job.state = JobState::Scheduled;
                    } else {
                        j.job.state = JobState::Assigned;
                        j.job.generation += 1;
                    }
                }
                live.started(id, placement);
                if waits {
                    live.wait_for_stops(id);
                }
                started.push(id);
            }
        }
        started
    }

    fn gpu_quota(gpus: Option<i64>) -> TenantQuota {
        TenantQuota { gpus, ..TenantQuota::default() }
    }

    /// A job of `gpus_per_node` GPUs holding `cpu_milli` on each node.
    fn job_with_cpus(id: i64, tenant_id: i64, gpus_per_node: i64, nodes: i64, cpu_milli: i64) -> Job {
        let mut j = job(id, tenant_id, gpus_per_node, nodes, 0);
        j.spec.cpu_milli = cpu_milli;
        j.spec.memory_mib = cpu_milli * 2;
        j
    }

    fn queued_ids(live: &LiveState) -> Vec<i64> {
        live.queue.iter().filter_map(|q| live.job_id_of(q.id())).collect()
    }

    #[test]
    fn a_quota_holds_jobs_until_gpus_come_back() {
        let mut live = LiveState::new(fleet(), 1);
        let mut fifo = sched::policy_by_name("fifo", 0).unwrap();
        live.set_quota(7, gpu_quota(Some(8)));
        live.add_pending(job(1, 7, 8, 1, 0), None, 0).unwrap();
        live.add_pending(job(2, 7, 4, 1, 0), None, 0).unwrap();
        live.add_pending(job(3, 8, 8, 1, 0), None, 0).unwrap();
        assert_eq!(queued_ids(&live), vec![1, 3], "job 2 waits for tenant 7's quota");
        assert_eq!(schedule(&mut live, fifo.as_mut()), vec![1, 3]);
        live.verify().unwrap();
        live.remove(1);
        assert_eq!(queued_ids(&live), vec![2], "the quota has room again");
        live.verify().unwrap();
        assert_eq!(live.placed_jobs(), 1);
        assert_eq!(live.node_gpus_used().iter().sum::<u32>(), 8);
    }

    #[test]
    fn a_quota_set_on_an_unlimited_tenant_holds_what_is_over_it() {
        let mut live = LiveState::new(fleet(), 1);
        live.set_quota(3, gpu_quota(None));
        for id in 1..=3 {
            live.add_pending(job(id, 3, 8, 1, 0), None, 0).unwrap();
        }
        assert_eq!(queued_ids(&live), vec![1, 2, 3]);
        live.set_quota(3, gpu_quota(Some(8)));
        assert_eq!(queued_ids(&live), vec![1], "the first job keeps its place, the later ones wait");
        live.verify().unwrap();
        live.set_quota(3, gpu_quota(None));
        assert_eq!(queued_ids(&live).len(), 3);
        live.verify().unwrap();
    }

    #[test]
    fn cpu_only_jobs_count_against_a_cpu_quota() {
        let mut live = LiveState::new(fleet(), 1);
        let mut fifo = sched::policy_by_name("fifo", 0).unwrap();
        live.set_quota(4, TenantQuota { cpu_milli: Some(4000), ..TenantQuota::default() });
        for id in 1..=5 {
            live.add_pending(job_with_cpus(id, 4, 0, 1, 1000), None, 0).unwrap();
        }
        assert_eq!(queued_ids(&live), vec![1, 2, 3, 4], "four CPUs: the fifth CPU-only job waits");
        assert_eq!(schedule(&mut live, fifo.as_mut()), vec![1, 2, 3, 4]);
        live.verify().unwrap();
        live.remove(2);
        assert_eq!(queued_ids(&live), vec![5], "a CPU came back");
        live.verify().unwrap();
    }

    #[test]
    fn a_memory_quota_counts_every_node_of_a_gang() {
        let mut live = LiveState::new(fleet(), 1);
        // Two nodes of 1000 CPU-milli and 2000 MiB each: 4000 MiB in all.
        live.set_quota(5, TenantQuota { memory_mib: Some(3000), ..TenantQuota::default() });
        live.add_pending(job_with_cpus(1, 5, 1, 2, 1000), None, 0).unwrap();
        live.add_pending(job_with_cpus(2, 5, 1, 1, 1000), None, 0).unwrap();
        assert_eq!(queued_ids(&live), vec![2], "the gang's 4000 MiB are over the 3000 MiB quota");
        live.set_quota(5, TenantQuota { memory_mib: Some(6000), ..TenantQuota::default() });
        live.order_queue();
        assert_eq!(queued_ids(&live), vec![1, 2], "raised: the gang enters in its place");
        live.verify().unwrap();
    }

    #[test]
    fn a_job_that_sorts_earlier_rebuilds_the_queue_in_order() {
        let mut live = LiveState::new(fleet(), 1);
        live.add_pending(job(1, 1, 1, 1, 0), None, 0).unwrap();
        live.add_pending(job(2, 1, 1, 1, 0), None, 0).unwrap();
        assert!(!live.order_queue(), "arrivals in order keep the queue's generation");
        live.add_pending(job(3, 1, 1, 1, 5), None, 0).unwrap();
        let before = live.queue.generation();
        assert!(live.order_queue());
        assert_eq!(queued_ids(&live), vec![3, 1, 2], "priority first");
        assert!(live.queue.generation() > before, "policies read a reordered queue whole");
        live.verify().unwrap();
    }

    #[test]
    fn nodes_without_agents_take_no_work_even_when_their_gpus_free_up() {
        let fleet = fleet();
        let mut live = LiveState::new(fleet.clone(), 1);
        let mut fifo = sched::policy_by_name("fifo", 0).unwrap();
        // Fill the first node, then lose it.
        live.add_pending(job(1, 1, 8, 1, 0), None, 0).unwrap();
        assert_eq!(schedule(&mut live, fifo.as_mut()), vec![1]);
        let node = match &live.job(1).unwrap().place {
            Place::Placed(p) => p.members[0].node,
            other => panic!("job 1 is {other:?}"),
        };
        live.set_available(node, false);
        live.remove(1);
        live.verify().unwrap();
        assert_eq!(live.cluster.full_free_gpus(node), 0, "the freed GPUs of a lost node are held");
        for id in 2..=10 {
            live.add_pending(job(id, 1, 8, 1, 0), None, 0).unwrap();
        }
        for id in schedule(&mut live, fifo.as_mut()) {
            match &live.job(id).unwrap().place {
                Place::Placed(p) => assert!(p.members.iter().all(|m| m.node != node)),
                other => panic!("job {id} is {other:?}"),
            }
        }
        live.set_available(node, true);
        live.verify().unwrap();
        assert!(schedule(&mut live, fifo.as_mut()).len() == 1, "the node back takes one more whole-node job");
    }

    #[test]
    fn work_placed_where_a_run_is_being_stopped_waits_until_it_is_gone() {
        let mut live = LiveState::new(fleet(), 1);
        let mut fifo = sched::policy_by_name("fifo", 0).unwrap();
        // Fill the six 8-GPU nodes, then stop one job's run: its GPUs are free for the policy.
        for id in 1..=6 {
            live.add_pending(job(id, 1, 8, 1, 0), None, 0).unwrap();
        }
        assert_eq!(schedule(&mut live, fifo.as_mut()).len(), 6);
        let victim = 1;
        let node = match &live.job(victim).unwrap().place {
            Place::Placed(p) => p.members[0].node,
            other => panic!("job 1 is {other:?}"),
        };
        assert!(live.stop(victim, JobState::Preempted));
        live.verify().unwrap();
        live.add_pending(job(100, 2, 8, 1, 0), None, 0).unwrap();
        let mut started = schedule(&mut live, fifo.as_mut());
        started.retain(|&s| s == 100);
        assert_eq!(started, vec![100], "the stopped run's GPUs take the next job");
        assert_eq!(live.job(100).unwrap().job.state, JobState::Scheduled, "it waits for the stopped run");
        assert!(live.ready_to_run().is_empty());
        let Place::Placed(p) = &live.job(100).unwrap().place else { panic!("job 100 is placed") };
        assert_eq!(p.members[0].node, node);
        live.verify().unwrap();
        // The stopped run is gone: its job goes back to the queue, the waiting one may run.
        let mut row = live.job(victim).unwrap().job.clone();
        row.state = JobState::Pending;
        live.requeue(row);
        assert_eq!(live.ready_to_run(), vec![100]);
        live.runs_now(100);
        live.verify().unwrap();
    }

    #[derive(Clone, Debug)]
    enum Op {
        Submit {
            tenant: i64,
            gpus: i64,
            nodes: i64,
            priority: i64,
            cpu_milli: i64,
            federated: bool,
        },
        Schedule,
        /// The federation lease is given (or renewed) or lapses.
        Lease(bool),
        End(usize),
        Requeue(usize),
        Cancel(usize),
        /// Preempted or cancelled while running: its run is being stopped.
        Stop(usize),
        /// A run being stopped is gone.
        Gone(usize),
        /// Waiting jobs whose nodes are free of stopping runs run.
        Ready,
        Quota {
            tenant: i64,
            gpus: Option<i64>,
            cpu_milli: Option<i64>,
        },
        Node {
            index: usize,
            available: bool,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0i64..3, 0i64..=8, 1i64..=2, 0i64..3, 0i64..4, any::<bool>())
                .prop_map(|(tenant, gpus, nodes, priority, cpus, federated)| Op::Submit { tenant, gpus, nodes: if gpus == 0 { 1 } else { nodes }, priority, cpu_milli: cpus * 500, federated }),
            1 => any::<bool>().prop_map(Op::Lease),
            3 => Just(Op::Schedule),
            2 => any::<usize>().prop_map(Op::End),
            1 => any::<usize>().prop_map(Op::Requeue),
            1 => any::<usize>().prop_map(Op::Cancel),
            2 => any::<usize>().prop_map(Op::Stop),
            2 => any::<usize>().prop_map(Op::Gone),
            1 => Just(Op::Ready),
            1 => (0i64..3, proptest::option::of(0i64..24), proptest::option::of(0i64..8000))
                .prop_map(|(tenant, gpus, cpu_milli)| Op::Quota { tenant, gpus, cpu_milli }),
            1 => (0usize..8, any::<bool>()).prop_map(|(index, available)| Op::Node { index, available }),
        ]
    }

    #[test]
    fn federated_jobs_wait_out_of_the_queue_for_the_lease() {
        let mut live = LiveState::new(fleet(), 1);
        let mut fifo = sched::policy_by_name("fifo", 0).unwrap();
        live.set_quota(7, gpu_quota(Some(8)));
        let federated = |id, gpus| {
            let mut j = job(id, 7, gpus, 1, 0);
            j.spec.federated = true;
            j
        };
        live.add_pending(federated(1, 8), None, 0).unwrap();
        live.add_pending(job(2, 7, 4, 1, 0), None, 0).unwrap();
        let mut share = job(3, 8, 1, 1, 0);
        share.spec.gpu_milli = Some(250);
        live.add_pending(share, None, 0).unwrap();
        assert_eq!(queued_ids(&live), vec![2, 3], "no lease: the federated job keeps no quota nor GPUs");
        assert_eq!(live.pending_gpu_milli(), 12_250);
        live.verify().unwrap();

        assert!(live.set_federation_open(true));
        assert!(!live.set_federation_open(true), "no change");
        assert_eq!(queued_ids(&live), vec![2, 3], "in, but over its tenant's quota: held");
        live.remove(2);
        assert_eq!(queued_ids(&live), vec![3, 1]);
        live.verify().unwrap();

        // The lease lapses: the queued federated job leaves the queue; a plain one of its tenant
        // gets the quota back.
        live.add_pending(job(4, 7, 8, 1, 0), None, 0).unwrap();
        assert_eq!(queued_ids(&live), vec![3, 1]);
        assert!(live.set_federation_open(false));
        assert_eq!(queued_ids(&live), vec![3, 4]);
        live.verify().unwrap();
        assert_eq!(schedule(&mut live, fifo.as_mut()), vec![3, 4]);
        assert_eq!(live.pending_gpu_milli(), 8_000, "the federated job waits");
        live.verify().unwrap();
        live.remove(1);
        assert_eq!(live.pending_gpu_milli(), 0);
        live.verify().unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        /// Whatever the order of events, what the cluster holds, the queue, the tenants'
        /// reservations and the GPUs in use per node agree with the jobs, and no held job fits.
        #[test]
        fn the_live_state_stays_consistent(ops in proptest::collection::vec(op(), 1..120)) {
            let mut live = LiveState::new(fleet(), 1);
            let mut fifo = sched::policy_by_name("fifo-bestfit", 0).unwrap();
            let mut next_id = 1i64;
            let mut known: Vec<i64> = Vec::new();
            for op in ops {
                match op {
                    Op::Submit { tenant, gpus, nodes, priority, cpu_milli, federated } => {
                        let mut j = job(next_id, tenant, gpus, nodes, priority);
                        j.spec.cpu_milli = cpu_milli;
                        j.spec.federated = federated;
                        live.add_pending(j, None, 0).unwrap();
                        known.push(next_id);
                        next_id += 1;
                    }
                    Op::Schedule => {
                        schedule(&mut live, fifo.as_mut());
                    }
                    Op::Lease(open) => {
                        live.set_federation_open(open);
                    }
                    Op::End(k) | Op::Cancel(k) if !known.is_empty() => {
                        let id = known.swap_remove(k % known.len());
                        live.remove(id);
                    }
                    Op::Requeue(k) if !known.is_empty() => {
                        let id = known[k % known.len()];
                        if let Some(j) = live.job(id).filter(|j| matches!(j.place, Place::Placed(_))) {
                            let mut row = j.job.clone();
                            row.state = JobState::Pending;
                            live.requeue(row);
                        }
                    }
                    Op::Stop(k) if !known.is_empty() => {
                        let id = known[k % known.len()];
                        if live.job(id).is_some_and(|j| j.job.state == JobState::Assigned) {
                            prop_assert!(live.stop(id, JobState::Preempted));
                        }
                    }
                    Op::Gone(k) if !known.is_empty() => {
                        let id = known[k % known.len()];
                        if let Some(j) = live.job(id).filter(|j| matches!(j.place, Place::Stopping(_))) {
                            let mut row = j.job.clone();
                            row.state = JobState::Pending;
                            live.requeue(row);
                        }
                    }
                    Op::Ready => {
                        for id in live.ready_to_run() {
                            live.runs_now(id);
                            if let Some(j) = live.job_mut(id) {
                                j.job.state = JobState::Assigned;
                            }
                        }
                    }
                    Op::Quota { tenant, gpus, cpu_milli } => {
                        live.set_quota(tenant, TenantQuota { gpus, cpu_milli, ..TenantQuota::default() })
                    }
                    Op::Node { index, available } => live.set_available(NodeId(index as u32), available),
                    _ => {}
                }
                if let Err(e) = live.verify() {
                    return Err(TestCaseError::fail(e));
                }
            }
        }
    }
}
