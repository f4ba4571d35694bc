//! The openb workload-inflation experiment of the FGD paper (Weng et al., USENIX ATC'23), and an
//! upper bound on what any placement could reach on it.
//!
//! 1. [`inflate`]: the pod list in a seeded random order, then pods drawn from it with replacement
//!    until their GPU demand would pass `tune` times the cluster's GPU capacity (the paper's
//!    simulator's `TunePodsByNodeTotalResource`; a list already above the target is thinned at
//!    random instead).
//! 2. [`run_inflation`]: pods placed one at a time, each at once or never (no queue, no
//!    departures). Each time the GPU demand that has arrived crosses k% of capacity, the GPU
//!    allocation ratio and the fragmentation are recorded.
//!
//! Pure and deterministic: no I/O, no clock.

mod bound;

pub use bound::{BoundError, allocation_bound};

use model::{Fleet, GPU_MILLI_PER_GPU, GpuRequest, WorkloadId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sched::frag::FragMeter;
use sched::{ClusterState, Demand, Placer, SchedError};
use std::sync::Arc;

/// Seeds of the paper's runs.
pub const PAPER_SEEDS: std::ops::RangeInclusive<u64> = 42..=51;
/// The paper's inflation target: 130% of the cluster's GPU capacity.
pub const PAPER_TUNE: f64 = 1.3;

/// Why an experiment could not run.
#[derive(Debug, thiserror::Error)]
pub enum OpenbError {
    #[error("policy {policy} returned a placement the cluster refused: {source}")]
    BadPlacement { policy: String, source: SchedError },
    #[error("the fleet has no GPUs")]
    NoGpus,
    #[error("the pod list asks for no GPUs")]
    NoGpuDemand,
}

/// GPU demand of a request in `gpu_milli`, all members together.
pub fn gpu_milli(demand: &Demand) -> u64 {
    demand.gpu.total_gpu_milli()
}

/// Share of one GPU a request asks for each GPU (what the paper's inflation compares against the
/// target): the fraction, 1000 for whole GPUs, 0 for CPU-only.
fn per_gpu_milli(demand: &Demand) -> u64 {
    match demand.gpu {
        GpuRequest::None => 0,
        GpuRequest::Fraction { gpu_milli } => u64::from(gpu_milli),
        GpuRequest::Gang { .. } => u64::from(GPU_MILLI_PER_GPU),
    }
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        let j = rng.random_range(0..=i);
        v.swap(i, j);
    }
}

/// The order in which pods arrive: indices into `pods`. All of the list in a random order, then
/// pods drawn with replacement while the total GPU demand stays within `tune * capacity_milli`
/// (drawing stops at the first pod whose per-GPU share would pass it, as in the paper's
/// simulator). A list whose demand is already above the target loses random pods instead.
pub fn inflate(pods: &[Demand], capacity_milli: u64, tune: f64, seed: u64) -> Result<Vec<usize>, OpenbError> {
    if capacity_milli == 0 {
        return Err(OpenbError::NoGpus);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut order: Vec<usize> = (0..pods.len()).collect();
    shuffle(&mut order, &mut rng);
    let mut total: u64 = pods.iter().map(gpu_milli).sum();
    if total == 0 {
        return Err(OpenbError::NoGpuDemand);
    }
    let target = tune * capacity_milli as f64;
    if tune <= 0.0 {
        return Ok(order);
    }
    if total as f64 > target {
        while total as f64 > target && !order.is_empty() {
            let k = rng.random_range(0..order.len());
            total -= gpu_milli(&pods[order.remove(k)]);
        }
        return Ok(order);
    }
    loop {
        let i = rng.random_range(0..pods.len());
        if (total + per_gpu_milli(&pods[i])) as f64 > target {
            break;
        }
        total += gpu_milli(&pods[i]);
        order.push(i);
    }
    Ok(order)
}

/// What one run recorded. Curves are indexed by k = 0..=max_pct, the arrived GPU demand in
/// percent of capacity; a point k not reached by the end holds the final value.
#[derive(Clone, Debug, PartialEq)]
pub struct RunOutcome {
    /// Allocated GPU share / capacity, percent.
    pub allocation_pct: Vec<f64>,
    /// Fragmented GPU share / capacity, percent (the paper's fragmented GPU amount).
    pub frag_pct: Vec<f64>,
    /// Fragmented share of the idle GPUs, percent.
    pub frag_ratio_pct: Vec<f64>,
    pub pods_arrived: usize,
    pub pods_placed: usize,
    pub arrived_gpu_milli: u64,
    pub allocated_gpu_milli: u64,
    pub capacity_gpu_milli: u64,
}

impl RunOutcome {
    /// The allocation ratio at the end (the paper's headline figure at 130%).
    pub fn final_allocation_pct(&self) -> f64 {
        100.0 * self.allocated_gpu_milli as f64 / self.capacity_gpu_milli as f64
    }

    /// Value of `curve` at arrived demand `k`% (the last point if `k` is beyond it).
    pub fn at(curve: &[f64], k: usize) -> f64 {
        curve.get(k).or(curve.last()).copied().unwrap_or(0.0)
    }
}

/// Places `order` (indices into `pods`) one at a time with `placer` on an empty `fleet` and records
/// the curves up to `max_pct`. `meter` measures fragmentation (against the typical distribution).
pub fn run_inflation(
    fleet: &Arc<Fleet>,
    pods: &[Demand],
    order: &[usize],
    placer: &mut dyn Placer,
    meter: &FragMeter,
    max_pct: usize,
) -> Result<RunOutcome, OpenbError> {
    let mut cluster = ClusterState::new(Arc::clone(fleet));
    let capacity = cluster.total_gpu_milli();
    if capacity == 0 {
        return Err(OpenbError::NoGpus);
    }
    let points = max_pct + 1;
    let mut out = RunOutcome {
        allocation_pct: Vec::with_capacity(points),
        frag_pct: Vec::with_capacity(points),
        frag_ratio_pct: Vec::with_capacity(points),
        pods_arrived: 0,
        pods_placed: 0,
        arrived_gpu_milli: 0,
        allocated_gpu_milli: 0,
        capacity_gpu_milli: capacity,
    };
    let record = |out: &mut RunOutcome, cluster: &ClusterState, upto: usize| {
        if out.allocation_pct.len() > upto {
            return;
        }
        let alloc = 100.0 * cluster.allocated_gpu_milli() as f64 / capacity as f64;
        let frag = meter.cluster(cluster);
        let frag_pct = 100.0 * frag.frag_milli / capacity as f64;
        let ratio = frag.ratio_pct();
        while out.allocation_pct.len() <= upto.min(max_pct) {
            out.allocation_pct.push(alloc);
            out.frag_pct.push(frag_pct);
            out.frag_ratio_pct.push(ratio);
        }
    };
    record(&mut out, &cluster, 0);
    for (seq, &i) in order.iter().enumerate() {
        let demand = &pods[i];
        out.pods_arrived += 1;
        out.arrived_gpu_milli += gpu_milli(demand);
        if let Some(p) = placer.place(&cluster, demand) {
            cluster
                .allocate(WorkloadId(seq as u32), demand, p)
                .map_err(|source| OpenbError::BadPlacement { policy: placer.name().to_string(), source })?;
            out.pods_placed += 1;
        }
        let k = (out.arrived_gpu_milli * 100 / capacity) as usize;
        if k >= out.allocation_pct.len() && k <= max_pct {
            record(&mut out, &cluster, k);
        }
    }
    record(&mut out, &cluster, max_pct);
    out.allocated_gpu_milli = cluster.allocated_gpu_milli();
    Ok(out)
}
