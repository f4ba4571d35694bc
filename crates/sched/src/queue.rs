//! The pending queue: jobs in arrival order, removable from anywhere in O(log n).
//!
//! Every push gets a sequence number that only grows, so a policy that keeps its own ordered index
//! of the queue (by priority, by tenant) reads only what arrived since its last round
//! ([`Queue::iter_from`]) and checks [`Queue::contains`] for what left, instead of rescanning.

use crate::demand::Demand;
use model::{SimDuration, SimTime, Workload, WorkloadId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A job waiting to start.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    pub workload: Arc<Workload>,
    pub demand: Demand,
    /// When it (last) entered the queue: its submit time, or its preemption time.
    pub enqueued_at: SimTime,
    /// GPU-seconds it has held so far, over all its runs (what least-attained-service policies
    /// rank by). Work lost to preemption counts: the GPUs were held.
    pub attained_gpu_s: f64,
    /// Work kept across preemptions (up to its last checkpoint): run time it need not redo.
    pub progress: SimDuration,
    /// Times it has been preempted.
    pub preemptions: u32,
    /// When its last run started; `None` if it never ran.
    pub last_started: Option<SimTime>,
    /// How long its last run lasted (zero if it never ran).
    pub last_run: SimDuration,
}

impl QueuedJob {
    /// A job that has never run, queued at `now`.
    pub fn new(workload: Arc<Workload>, demand: Demand, now: SimTime) -> Self {
        QueuedJob {
            workload,
            demand,
            enqueued_at: now,
            attained_gpu_s: 0.0,
            progress: SimDuration::ZERO,
            preemptions: 0,
            last_started: None,
            last_run: SimDuration::ZERO,
        }
    }

    /// Whole GPUs (fractions counted as their share) the job holds when it runs.
    pub fn gpus(&self) -> f64 {
        self.workload.gpu.total_gpus()
    }

    pub fn id(&self) -> WorkloadId {
        self.workload.id
    }
}

/// Pending jobs in arrival order.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    next_seq: u64,
    /// Which queue this is, for policies that read only what was pushed since their last round.
    generation: u64,
    by_seq: BTreeMap<u64, QueuedJob>,
    seq_of: rustc_hash::FxHashMap<WorkloadId, u64>,
}

impl Queue {
    pub fn new() -> Self {
        Queue::default()
    }

    /// A queue that replaces the one a policy saw before (a caller that rebuilds its queue every
    /// round, as the live server does, gives each a new `generation`): policies that keep an
    /// index of what was pushed since their last round read such a queue whole.
    pub fn with_generation(generation: u64) -> Self {
        Queue { generation, ..Queue::default() }
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Appends `job`; a job already queued keeps its place.
    pub fn push(&mut self, job: QueuedJob) {
        if self.seq_of.contains_key(&job.id()) {
            return;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.seq_of.insert(job.id(), seq);
        self.by_seq.insert(seq, job);
    }

    pub fn remove(&mut self, id: WorkloadId) -> Option<QueuedJob> {
        let seq = self.seq_of.remove(&id)?;
        self.by_seq.remove(&seq)
    }

    pub fn get(&self, id: WorkloadId) -> Option<&QueuedJob> {
        self.seq_of.get(&id).and_then(|s| self.by_seq.get(s))
    }

    pub fn contains(&self, id: WorkloadId) -> bool {
        self.seq_of.contains_key(&id)
    }

    /// Jobs pushed with sequence number `seq` or later, with their sequence numbers, in order.
    pub fn iter_from(&self, seq: u64) -> impl Iterator<Item = (u64, &QueuedJob)> {
        self.by_seq.range(seq..).map(|(s, j)| (*s, j))
    }

    /// The sequence number the next push will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The sequence number `id` was queued under.
    pub fn seq(&self, id: WorkloadId) -> Option<u64> {
        self.seq_of.get(&id).copied()
    }

    /// Jobs in arrival order.
    pub fn iter(&self) -> impl Iterator<Item = &QueuedJob> {
        self.by_seq.values()
    }

    pub fn front(&self) -> Option<&QueuedJob> {
        self.by_seq.values().next()
    }

    pub fn len(&self) -> usize {
        self.by_seq.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_seq.is_empty()
    }
}
