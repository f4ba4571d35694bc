//! The typical-workload distribution: how often each request shape arrives. FGD and drome's
//! placer measure fragmentation against it. It is learned online from the requests a scheduler
//! sees ([`TypicalPods::observe`]); the openb bench feeds it the whole pod list, as the FGD paper
//! does.

use crate::demand::Demand;
use model::{GPU_MILLI_PER_GPU, GpuModelId, GpuRequest};
use rustc_hash::FxHashMap;

/// Share of all requests the most frequent shapes must cover to be kept (the FGD simulator's
/// `podPopularityThreshold`, 95% in the paper's runs); rarer shapes are dropped and the rest
/// renormalised.
pub const DEFAULT_POPULARITY: f64 = 0.95;

/// What the fragmentation measure distinguishes of a request: CPU, the share of each GPU, the GPU
/// count per member and the models it accepts. Memory is not part of it (as in the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ShapeKey {
    pub cpu_milli: u64,
    /// Share of each GPU taken: the fraction for a GPU-sharing request, 1000 for whole GPUs, 0 for
    /// CPU-only requests.
    pub gpu_milli: u32,
    /// GPUs per member (1 for a share of a GPU, 0 for CPU-only).
    pub gpus: u32,
    /// Accepted model ids 0..64 as bits; `u64::MAX` for any model, 0 for CPU-only requests.
    pub models: u64,
}

impl ShapeKey {
    pub fn of(demand: &Demand) -> ShapeKey {
        let (gpu_milli, gpus) = match demand.gpu {
            GpuRequest::None => (0, 0),
            GpuRequest::Fraction { gpu_milli } => (gpu_milli, 1),
            GpuRequest::Gang { gpus_per_node, .. } => (GPU_MILLI_PER_GPU, gpus_per_node),
        };
        let models = if gpus == 0 {
            0
        } else {
            (0..64u16).filter(|&m| demand.models.allows(GpuModelId(m))).fold(0u64, |acc, m| acc | 1 << m)
        };
        ShapeKey { cpu_milli: demand.cpu_milli, gpu_milli, gpus, models }
    }

    pub fn is_cpu_only(&self) -> bool {
        self.gpus == 0
    }
}

/// One shape of the distribution with its probability.
#[derive(Clone, Debug)]
pub struct TypicalPod {
    pub key: ShapeKey,
    /// A request of this shape, to test model constraints against nodes.
    pub demand: Demand,
    pub probability: f64,
}

/// Counts of request shapes seen so far.
#[derive(Clone, Debug, Default)]
pub struct TypicalPods {
    counts: FxHashMap<ShapeKey, (f64, Demand)>,
    total: f64,
    /// Bumped on every change, so that caches built on the distribution know when to rebuild.
    version: u64,
}

impl TypicalPods {
    pub fn new() -> Self {
        Self::default()
    }

    /// The distribution of `demands`, each counted once.
    pub fn from_demands<'a>(demands: impl IntoIterator<Item = &'a Demand>) -> Self {
        let mut t = Self::new();
        for d in demands {
            t.observe(d);
        }
        t
    }

    /// Counts one more request of `demand`'s shape.
    pub fn observe(&mut self, demand: &Demand) {
        let key = ShapeKey::of(demand);
        self.counts.entry(key).or_insert_with(|| (0.0, demand.clone())).0 += 1.0;
        self.total += 1.0;
        self.version += 1;
    }

    pub fn total(&self) -> f64 {
        self.total
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// The most frequent shapes covering at least `popularity` of all requests (ties in count
    /// broken by larger shape first), with probabilities renormalised to sum to 1.
    pub fn distribution(&self, popularity: f64) -> Vec<TypicalPod> {
        let mut all: Vec<(&ShapeKey, &(f64, Demand))> = self.counts.iter().collect();
        all.sort_by(|a, b| b.1.0.total_cmp(&a.1.0).then_with(|| b.0.cmp(a.0)));
        let want = popularity * self.total;
        let mut cum = 0.0;
        let mut kept = Vec::new();
        for (key, (count, demand)) in all {
            if cum >= want && !kept.is_empty() {
                break;
            }
            cum += count;
            kept.push(TypicalPod { key: *key, demand: demand.clone(), probability: *count });
        }
        for t in &mut kept {
            t.probability /= cum;
        }
        kept
    }
}
