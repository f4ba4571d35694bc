//! The pending queue: jobs in arrival order, removable from anywhere in O(log n).

use crate::demand::Demand;
use model::{SimTime, Workload, WorkloadId};
use std::collections::BTreeMap;
use std::sync::Arc;

/// A job waiting to start.
#[derive(Clone, Debug)]
pub struct QueuedJob {
    pub workload: Arc<Workload>,
    pub demand: Demand,
    /// When it (last) entered the queue: its submit time, or its preemption time.
    pub enqueued_at: SimTime,
}

impl QueuedJob {
    pub fn id(&self) -> WorkloadId {
        self.workload.id
    }
}

/// Pending jobs in arrival order.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    next_seq: u64,
    by_seq: BTreeMap<u64, QueuedJob>,
    seq_of: rustc_hash::FxHashMap<WorkloadId, u64>,
}

impl Queue {
    pub fn new() -> Self {
        Queue::default()
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
