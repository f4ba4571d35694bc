//! The six policies of the FGD paper's evaluation, scored as its simulator scores them: integer
//! node scores in 0..=100 (so that near-equal nodes tie and the tie is broken at random), CPU
//! normalised by 128 cores and GPU by 8 GPUs where the paper normalises.
//!
//! GPU choice on the chosen node: a share goes on the fitting GPU with the least free share
//! (lowest index on ties) for every policy except Random (a fitting GPU at random) and FGD (the GPU
//! whose use grows fragmentation least); whole GPUs are always the lowest-numbered free ones.

use super::measure::FragMeter;
use super::typical::{DEFAULT_POPULARITY, TypicalPods};
use super::{Best, GpuChoice, TieOrder, feasible, place_members, tightest_gpu};
use crate::cluster::{ClusterState, MEMBER_KINDS, Placement};
use crate::demand::Demand;
use crate::placer::Placer;
use model::{GPU_MILLI_PER_GPU, GpuModelId, GpuRequest, NodeId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

/// CPU of the largest node the paper normalises by, in thousandths of a core.
pub const MAX_SPEC_CPU_MILLI: f64 = 128_000.0;
/// GPU share of the largest node the paper normalises by (8 GPUs).
pub const MAX_SPEC_GPU_MILLI: f64 = 8_000.0;

fn gpu_total(free: &[u16]) -> u32 {
    free.iter().map(|&f| u32::from(f)).sum()
}

fn demand_gpu_milli(demand: &Demand) -> u32 {
    match demand.gpu {
        GpuRequest::None => 0,
        GpuRequest::Fraction { gpu_milli } => gpu_milli,
        GpuRequest::Gang { gpus_per_node, .. } => gpus_per_node * GPU_MILLI_PER_GPU,
    }
}

/// The paper's GPU choice for every policy but Random and FGD.
fn best_fit_choice(cluster: &ClusterState, node: NodeId, demand: &Demand) -> GpuChoice {
    match demand.gpu {
        GpuRequest::None => GpuChoice::None,
        GpuRequest::Fraction { gpu_milli } => {
            tightest_gpu(cluster.gpu_free_milli(node), gpu_milli).map_or(GpuChoice::FirstFree, GpuChoice::Share)
        }
        GpuRequest::Gang { .. } => GpuChoice::FirstFree,
    }
}

/// Scores every feasible node with `score` and places each member on the best.
fn place_by_score(
    cluster: &ClusterState,
    demand: &Demand,
    rng: &mut ChaCha8Rng,
    ties: &mut TieOrder,
    mut score: impl FnMut(&ClusterState, NodeId, &Demand) -> i64,
) -> Option<Placement> {
    ties.ensure(cluster.node_count(), rng);
    let ties = &*ties;
    place_members(cluster, demand, |cluster, demand, taken| {
        let mut best = Best::new(ties);
        for node in feasible(cluster, demand, taken) {
            let s = score(cluster, node, demand);
            best.offer(s, node, best_fit_choice(cluster, node, demand));
        }
        best.get().map(|(_, n, c)| (n, c))
    })
}

/// Random: a feasible node uniformly at random, a fitting GPU at random.
#[derive(Clone, Debug)]
pub struct RandomFit {
    rng: ChaCha8Rng,
}

impl RandomFit {
    pub fn new(seed: u64) -> Self {
        RandomFit { rng: ChaCha8Rng::seed_from_u64(seed) }
    }
}

impl Placer for RandomFit {
    fn name(&self) -> &str {
        "random"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        let rng = &mut self.rng;
        place_members(cluster, demand, |cluster, demand, taken| {
            let nodes: Vec<NodeId> = feasible(cluster, demand, taken).collect();
            if nodes.is_empty() {
                return None;
            }
            let node = nodes[rng.random_range(0..nodes.len())];
            let choice = match demand.gpu {
                GpuRequest::None => GpuChoice::None,
                GpuRequest::Gang { .. } => GpuChoice::FirstFree,
                GpuRequest::Fraction { gpu_milli } => {
                    let mut pick = None;
                    let mut seen = 0u32;
                    for (i, &f) in cluster.gpu_free_milli(node).iter().enumerate() {
                        if u32::from(f) >= gpu_milli {
                            seen += 1;
                            if rng.random_range(0..seen) == 0 {
                                pick = Some(i as u8);
                            }
                        }
                    }
                    GpuChoice::Share(pick?)
                }
            };
            Some((node, choice))
        })
    }
}

/// DotProd (Tetris, SIGCOMM'14, as the paper runs it): the node whose free (CPU, total GPU),
/// normalised by the largest node, has the smallest dot product with the request.
#[derive(Clone, Debug)]
pub struct DotProd {
    rng: ChaCha8Rng,
    ties: TieOrder,
}

impl DotProd {
    pub fn new(seed: u64) -> Self {
        DotProd { rng: ChaCha8Rng::seed_from_u64(seed), ties: TieOrder::default() }
    }

    pub fn score(cluster: &ClusterState, node: NodeId, demand: &Demand) -> i64 {
        let cpu_left = cluster.free_cpu_milli(node) as f64;
        let gpu_left = f64::from(gpu_total(cluster.gpu_free_milli(node)));
        let dot = (cpu_left / MAX_SPEC_CPU_MILLI) * (demand.cpu_milli as f64 / MAX_SPEC_CPU_MILLI)
            + (gpu_left / MAX_SPEC_GPU_MILLI) * (f64::from(demand_gpu_milli(demand)) / MAX_SPEC_GPU_MILLI);
        (100.0 * (1.0 - dot / 2.0)) as i64
    }
}

impl Placer for DotProd {
    fn name(&self) -> &str {
        "dotprod"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        place_by_score(cluster, demand, &mut self.rng, &mut self.ties, Self::score)
    }
}

/// GPU affinity of a request: `None` for CPU-only, 0 for a share of a GPU, else the GPU count.
fn affinity(demand_gpu: &GpuRequest) -> Option<u32> {
    match *demand_gpu {
        GpuRequest::None => None,
        GpuRequest::Fraction { .. } => Some(0),
        GpuRequest::Gang { gpus_per_node, .. } => Some(gpus_per_node),
    }
}

/// GpuClustering: requests of one kind (GPU share, 1, 2, 4, 8 GPUs) packed together: nodes
/// holding only that kind first, then nodes holding it among others, then empty nodes, then
/// nodes of other kinds; within a band, the node with less GPU free.
#[derive(Clone, Debug)]
pub struct GpuClustering {
    rng: ChaCha8Rng,
    ties: TieOrder,
}

impl GpuClustering {
    pub fn new(seed: u64) -> Self {
        GpuClustering { rng: ChaCha8Rng::seed_from_u64(seed), ties: TieOrder::default() }
    }
}

impl Placer for GpuClustering {
    fn name(&self) -> &str {
        "gpuclustering"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        place_by_score(cluster, demand, &mut self.rng, &mut self.ties, |cluster, node, demand| {
            let Some(kind) = affinity(&demand.gpu) else { return 0 };
            let left = i64::from(gpu_total(cluster.gpu_free_milli(node)));
            let packed = 25 * (MAX_SPEC_GPU_MILLI as i64 - left) / MAX_SPEC_GPU_MILLI as i64;
            // Kinds running on the node (bit 0: shares, bit k: k whole GPUs).
            let on_node = cluster.member_kinds(node);
            let band = if on_node & (1 << kind.min(MEMBER_KINDS as u32 - 1)) != 0 {
                if on_node.count_ones() == 1 { 75 } else { 50 }
            } else if on_node == 0 {
                25
            } else {
                0
            };
            packed + band
        })
    }
}

/// GpuPacking: shared GPUs first (fullest first), then free GPUs on partly used nodes, then empty
/// nodes (those with fewer GPUs first).
#[derive(Clone, Debug)]
pub struct GpuPacking {
    rng: ChaCha8Rng,
    ties: TieOrder,
}

impl GpuPacking {
    pub fn new(seed: u64) -> Self {
        GpuPacking { rng: ChaCha8Rng::seed_from_u64(seed), ties: TieOrder::default() }
    }

    pub fn score(cluster: &ClusterState, node: NodeId, demand: &Demand) -> i64 {
        let (milli, count) = match demand.gpu {
            GpuRequest::None => return 0,
            GpuRequest::Fraction { gpu_milli } => (gpu_milli, 1u32),
            GpuRequest::Gang { gpus_per_node, .. } => (GPU_MILLI_PER_GPU, gpus_per_node),
        };
        let free = cluster.gpu_free_milli(node);
        let full = free.iter().filter(|&&f| u32::from(f) == GPU_MILLI_PER_GPU).count() as i64;
        if full == free.len() as i64 {
            return (100 / 3 - full).max(full);
        }
        let mut order: Vec<usize> = (0..free.len()).collect();
        order.sort_by_key(|&i| free[i]);
        let mut need = count;
        let mut full_used = 0i64;
        let mut shared_left = 0i64;
        for i in order {
            if need == 0 {
                break;
            }
            if u32::from(free[i]) >= milli {
                need -= 1;
                if u32::from(free[i]) == GPU_MILLI_PER_GPU {
                    full_used += 1;
                }
                shared_left += i64::from(free[i]) * 100 / i64::from(GPU_MILLI_PER_GPU);
            }
        }
        if need != 0 {
            return 0;
        }
        if full_used > 0 {
            return (50 - full_used).max(100 / 3);
        }
        (100 - shared_left / 10).max(50)
    }
}

impl Placer for GpuPacking {
    fn name(&self) -> &str {
        "gpupacking"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        place_by_score(cluster, demand, &mut self.rng, &mut self.ties, Self::score)
    }
}

/// BestFit as the paper defines it: the node left with the least free CPU and GPU after placement,
/// `0.5 * cpu/128 cores + 0.5 * gpu/8 GPUs`.
#[derive(Clone, Debug)]
pub struct PaperBestFit {
    rng: ChaCha8Rng,
    ties: TieOrder,
}

impl PaperBestFit {
    pub fn new(seed: u64) -> Self {
        PaperBestFit { rng: ChaCha8Rng::seed_from_u64(seed), ties: TieOrder::default() }
    }

    pub fn score(cluster: &ClusterState, node: NodeId, demand: &Demand) -> i64 {
        let cpu_rest = cluster.free_cpu_milli(node) as f64 - demand.cpu_milli as f64;
        let gpu_rest = f64::from(gpu_total(cluster.gpu_free_milli(node))) - f64::from(demand_gpu_milli(demand));
        let s = cpu_rest / MAX_SPEC_CPU_MILLI * 0.5 + gpu_rest / MAX_SPEC_GPU_MILLI * 0.5;
        ((1.0 - s) * 100.0) as i64
    }
}

impl Placer for PaperBestFit {
    fn name(&self) -> &str {
        "bestfit"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        place_by_score(cluster, demand, &mut self.rng, &mut self.ties, Self::score)
    }
}

/// A cache of node fragmentation by node state, valid for one typical distribution.
#[derive(Clone, Debug, Default)]
pub(crate) struct FragCache {
    pub(crate) meter: FragMeter,
    memo: FxHashMap<u128, f64>,
    version: Option<u64>,
}

impl FragCache {
    /// Rebuilds the meter if `typical` changed since the last call.
    pub(crate) fn sync(&mut self, typical: &TypicalPods, cluster: &ClusterState) {
        self.sync_with(typical, cluster, DEFAULT_POPULARITY);
    }

    /// [`FragCache::sync`] keeping the most frequent shapes that cover `popularity` of requests.
    pub(crate) fn sync_with(&mut self, typical: &TypicalPods, cluster: &ClusterState, popularity: f64) {
        if self.version != Some(typical.version()) {
            self.meter = FragMeter::new(&typical.distribution(popularity), cluster.fleet());
            self.memo.clear();
            self.version = Some(typical.version());
        }
    }

    /// Fragmentation of a node of `model` with `cpu_left` and GPU shares `free`.
    pub(crate) fn frag(&mut self, model: Option<GpuModelId>, cpu_left: u64, free: &[u16]) -> f64 {
        let Some(m) = model else { return 0.0 };
        if free.len() > 8 || cpu_left >= 1 << 30 || m.0 >= 255 {
            return self.meter.node_frag(model, cpu_left, free);
        }
        let mut sorted = [0u16; 8];
        sorted[..free.len()].copy_from_slice(free);
        sorted[..free.len()].sort_unstable();
        let mut key = u128::from(m.0) << 120 | u128::from(cpu_left) << 88 | (free.len() as u128) << 80;
        for (i, f) in sorted.iter().enumerate() {
            key |= u128::from(*f & 0x3ff) << (10 * i);
        }
        if let Some(&v) = self.memo.get(&key) {
            return v;
        }
        let v = self.meter.node_frag(model, cpu_left, free);
        if self.memo.len() > 4_000_000 {
            self.memo.clear();
        }
        self.memo.insert(key, v);
        v
    }
}

/// Fragmentation growth if one member of `demand` goes on `node` with `choice`.
pub(crate) fn frag_growth(
    cache: &mut FragCache,
    cluster: &ClusterState,
    node: NodeId,
    demand: &Demand,
    choice: GpuChoice,
    before: f64,
) -> f64 {
    let model = cluster.node_model(node);
    let cpu_left = cluster.free_cpu_milli(node).saturating_sub(demand.cpu_milli);
    let mut after = [0u16; 16];
    let n = free_after(cluster.gpu_free_milli(node), demand, choice, &mut after);
    cache.frag(model, cpu_left, &after[..n]) - before
}

/// Writes into `out` the free GPU shares `free` (at most 16 GPUs) left once one member of
/// `demand` takes `choice`, and returns how many GPUs were written.
pub(crate) fn free_after(free: &[u16], demand: &Demand, choice: GpuChoice, out: &mut [u16; 16]) -> usize {
    let n = free.len().min(16);
    out[..n].copy_from_slice(&free[..n]);
    match (choice, demand.gpu) {
        (GpuChoice::Share(i), GpuRequest::Fraction { gpu_milli }) => {
            out[i as usize] = out[i as usize].saturating_sub(gpu_milli as u16);
        }
        (_, GpuRequest::Gang { gpus_per_node, .. }) => {
            let mut need = gpus_per_node;
            for f in out[..n].iter_mut() {
                if need > 0 && u32::from(*f) == GPU_MILLI_PER_GPU {
                    *f = 0;
                    need -= 1;
                }
            }
        }
        _ => {}
    }
    n
}

/// Candidate GPU choices of one member on `node`: every fitting GPU for a share (one per distinct
/// free share, lowest index first), the first free GPUs otherwise.
pub(crate) fn choices(free: &[u16], demand: &Demand, out: &mut Vec<GpuChoice>) {
    out.clear();
    match demand.gpu {
        GpuRequest::None => out.push(GpuChoice::None),
        GpuRequest::Gang { .. } => out.push(GpuChoice::FirstFree),
        GpuRequest::Fraction { gpu_milli } => {
            for (i, &f) in free.iter().enumerate() {
                if u32::from(f) >= gpu_milli && !free[..i].contains(&f) {
                    out.push(GpuChoice::Share(i as u8));
                }
            }
        }
    }
}

/// FGD (Weng et al., ATC'23): the node and GPU whose use grows the node's expected fragmentation
/// against the typical distribution least. Scored as the paper's simulator does:
/// `int(100 * sigmoid(-growth / 1000))`, ties broken at random.
#[derive(Clone, Debug)]
pub struct Fgd {
    typical: TypicalPods,
    cache: FragCache,
    rng: ChaCha8Rng,
    ties: TieOrder,
    /// Learn the distribution from every request placed (off when it is given up front).
    pub learn: bool,
}

impl Fgd {
    pub fn new(typical: TypicalPods, seed: u64) -> Self {
        let learn = typical.is_empty();
        Fgd {
            typical,
            cache: FragCache::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            ties: TieOrder::default(),
            learn,
        }
    }

    /// Counts a request into the typical distribution.
    pub fn observe(&mut self, demand: &Demand) {
        self.typical.observe(demand);
    }

    fn sigmoid_score(growth: f64) -> i64 {
        (100.0 / (1.0 + (growth / 1000.0).exp())) as i64
    }
}

impl Placer for Fgd {
    fn name(&self) -> &str {
        "fgd"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        if self.learn {
            self.typical.observe(demand);
        }
        self.cache.sync(&self.typical, cluster);
        self.ties.ensure(cluster.node_count(), &mut self.rng);
        let cache = &mut self.cache;
        let ties = &self.ties;
        let mut cands = Vec::with_capacity(8);
        place_members(cluster, demand, |cluster, demand, taken| {
            let mut best = Best::new(ties);
            for node in feasible(cluster, demand, taken) {
                let free = cluster.gpu_free_milli(node);
                let before = cache.frag(cluster.node_model(node), cluster.free_cpu_milli(node), free);
                choices(free, demand, &mut cands);
                let mut node_best: Option<(i64, GpuChoice)> = None;
                for &c in &cands {
                    let s = Self::sigmoid_score(frag_growth(cache, cluster, node, demand, c, before));
                    if node_best.is_none_or(|(b, _)| s > b) {
                        node_best = Some((s, c));
                    }
                }
                if let Some((s, c)) = node_best {
                    best.offer(s, node, c);
                }
            }
            best.get().map(|(_, n, c)| (n, c))
        })
    }
}
