//! Queueing policies: given the pending queue and the cluster, decide what starts now. The same
//! trait object runs inside the simulator and the live server.

use crate::backfill::{Multifactor, MultifactorConfig};
use crate::cluster::{ClusterState, Placement};
use crate::placer::{BestFit, FirstFit, Placer};
use crate::prio::PreemptConfig;
use crate::queue::{Queue, QueuedJob};
use model::{SimDuration, SimTime, Workload, WorkloadId};

/// What a policy decided in one round. The policy has already applied it to the
/// [`ClusterState`] it was given; the caller records it (job states, events, the store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Start `job` on `placement`.
    Start { job: WorkloadId, placement: Placement },
    /// Stop the running `job` and put it back in the queue. The policy has already released its
    /// whole allocation (every gang member); the caller requeues it with the work it keeps (up to
    /// its last checkpoint) and charges it a restart delay when it next starts.
    Preempt { job: WorkloadId },
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

    /// A start this policy decided was undone by a wrapper (a power cap that could not carry it)
    /// and released from the cluster: `job` is still queued under `seq`. A policy that tracks what
    /// it started must forget this run and consider the job again; it learns nothing from it.
    fn start_undone(&mut self, _job: &QueuedJob, _seq: u64, _now: SimTime) {}

    /// The least a job runs after a start before this policy may preempt it; callers check every
    /// [`Decision::Preempt`] against it. Non-preemptive policies keep the default.
    fn min_runtime(&self) -> SimDuration {
        SimDuration::ZERO
    }

    /// The running jobs this policy would give up first at `now`, first: a power guard lowers
    /// their GPU caps before anyone else's ([`crate::power::CapShare::LowestRankFirst`]). Slowing
    /// a job the policy ranks low delays only that job; slowing a high-ranked one also delays
    /// every job that waits for its GPUs. Policies without a ranking return nothing.
    fn shed_order(&self, _now: SimTime) -> Vec<WorkloadId> {
        Vec::new()
    }
}

/// A boxed policy is a policy, so wrappers ([`crate::power::PowerCapped`]) take policies chosen
/// by name at run time.
impl<P: Policy + ?Sized> Policy for Box<P> {
    fn name(&self) -> &str {
        (**self).name()
    }

    fn is_clairvoyant(&self) -> bool {
        (**self).is_clairvoyant()
    }

    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        (**self).schedule(now, queue, cluster)
    }

    fn on_finished(&mut self, workload: &Workload, started: SimTime, now: SimTime) {
        (**self).on_finished(workload, started, now)
    }

    fn start_undone(&mut self, job: &QueuedJob, seq: u64, now: SimTime) {
        (**self).start_undone(job, seq, now)
    }

    fn min_runtime(&self) -> SimDuration {
        (**self).min_runtime()
    }

    fn shed_order(&self, now: SimTime) -> Vec<WorkloadId> {
        (**self).shed_order(now)
    }
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
        ("backfill", "Slurm-style priority (age) with EASY backfill on estimated walltimes"),
        ("fairshare", "Slurm-like multifactor fair share between tenants (7-day usage half-life), EASY backfill"),
        ("quota", "Kueue-like guaranteed GPUs per tenant, borrowing of idle quota, reclaim by preemption"),
        ("tiresias", "Tiresias: discretized 2D least-attained-service, preemptive, never reads durations"),
        ("srpt", "clairvoyant shortest remaining GPU-time first, preemptive: a lower-bound reference"),
        (
            "drome",
            "drome's default: Gittins index per GPU learned from finished jobs (per tenant and size, and from \
             siblings submitted together), preemptive, never reads durations",
        ),
    ]
}

/// Builds a policy from its name; `seed` feeds policies that break ties at random.
pub fn policy_by_name(name: &str, seed: u64) -> Result<Box<dyn Policy>, PolicyError> {
    policy_preempting_after(name, seed, PreemptConfig::default().min_runtime)
}

/// [`policy_by_name`], with preempting policies leaving a job alone until it has run
/// `min_runtime` (Slurm's `PreemptExemptTime`).
pub fn policy_preempting_after(
    name: &str,
    _seed: u64,
    min_runtime: SimDuration,
) -> Result<Box<dyn Policy>, PolicyError> {
    let preempt = PreemptConfig { min_runtime, ..PreemptConfig::default() };
    match name.trim().to_ascii_lowercase().as_str() {
        "fifo" | "fifo-firstfit" => Ok(Box::new(Fifo::new("fifo", Box::new(FirstFit)))),
        "fifo-bestfit" => Ok(Box::new(Fifo::new("fifo-bestfit", Box::new(BestFit)))),
        "backfill" => Ok(Box::new(Multifactor::new("backfill", MultifactorConfig::backfill()))),
        "fairshare" => Ok(Box::new(Multifactor::new("fairshare", MultifactorConfig::fairshare()))),
        "quota" => {
            Ok(Box::new(crate::quota::Quota::new(crate::quota::QuotaConfig { min_runtime, ..Default::default() })))
        }
        "tiresias" => Ok(Box::new(crate::rankers::tiresias(preempt))),
        "srpt" => Ok(Box::new(crate::rankers::srpt(preempt))),
        "drome" => Ok(Box::new(crate::rankers::drome(preempt))),
        _ => Err(PolicyError {
            name: name.to_string(),
            known: policy_names().iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
}
