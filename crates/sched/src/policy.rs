//! Queueing policies: given the pending queue and the cluster, decide what starts now. The same
//! trait object runs inside the simulator and the live server.

use crate::cluster::{ClusterState, Placement};
use crate::placer::{BestFit, FirstFit, Placer};
use crate::queue::Queue;
use model::{SimTime, Workload, WorkloadId};

/// What a policy decided in one round. The policy has already applied it to the
/// [`ClusterState`] it was given; the caller records it (job states, events, the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start `job` on `placement`.
    Start { job: WorkloadId, placement: Placement },
}

/// Why a policy name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown policy '{name}' (known: {known})")]
pub struct PolicyError {
    pub name: String,
    pub known: String,
}

/// A scheduling policy. Implementations keep whatever history they learn from in `self`; they
/// never read the clock (time comes in as `now`) and never read a job's duration unless they are
/// declared clairvoyant.
pub trait Policy: Send {
    fn name(&self) -> &str;

    /// True if the policy reads [`Workload::duration`]: only reference policies may.
    fn is_clairvoyant(&self) -> bool {
        false
    }

    /// One scheduling round at `now`. Allocates on `cluster` what it starts and returns it.
    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision>;

    /// A job the policy started has finished at `now` (after the caller released it).
    fn on_finished(&mut self, _workload: &Workload, _started: SimTime, _now: SimTime) {}
}

/// Strict first-in first-out: the head starts when it fits; nothing overtakes it.
pub struct Fifo {
    name: String,
    placer: Box<dyn Placer>,
}

impl Fifo {
    pub fn new(name: impl Into<String>, placer: Box<dyn Placer>) -> Self {
        Fifo { name: name.into(), placer }
    }
}

impl Policy for Fifo {
    fn name(&self) -> &str {
        &self.name
    }

    fn schedule(&mut self, _now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        let mut started = Vec::new();
        for job in queue.iter() {
            let Some(placement) = self.placer.place(cluster, &job.demand) else { break };
            if cluster.allocate(job.id(), &job.demand, placement.clone()).is_err() {
                // A placer returned something the cluster refuses: stop rather than skip the head.
                break;
            }
            started.push(Decision::Start { job: job.id(), placement });
        }
        started
    }
}

/// `(name, what it does)` for every policy [`policy_by_name`] knows, for `--help` and errors.
pub fn policy_names() -> &'static [(&'static str, &'static str)] {
    &[
        ("fifo", "strict arrival order, first-fit placement (lowest-numbered nodes and GPUs)"),
        ("fifo-bestfit", "strict arrival order, best-fit placement (tightest node, tightest GPU)"),
    ]
}

/// Builds a policy from its name; `seed` feeds policies that break ties at random.
pub fn policy_by_name(name: &str, _seed: u64) -> Result<Box<dyn Policy>, PolicyError> {
    match name.trim().to_ascii_lowercase().as_str() {
        "fifo" | "fifo-firstfit" => Ok(Box::new(Fifo::new("fifo", Box::new(FirstFit)))),
        "fifo-bestfit" => Ok(Box::new(Fifo::new("fifo-bestfit", Box::new(BestFit)))),
        _ => Err(PolicyError {
            name: name.to_string(),
            known: policy_names().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}
