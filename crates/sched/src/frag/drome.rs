//! drome's default fragmentation-aware placer.
//!
//! It starts from FGD's idea — put a request where it grows the expected fragmentation least —
//! and fixes what the paper's scoring leaves on the table:
//!
//! 1. **Linear growth buckets.** FGD's simulator squashes the growth through a sigmoid into an
//!    integer score, so buckets widen as growth moves away from 0. drome buckets the growth itself
//!    in fixed steps.
//! 2. **Deterministic tie-breaks.** Growths within `growth_epsilon_milli` (25 milli-GPU, about
//!    one point of FGD's score) tie; ties go to the first node of a fixed random priority order,
//!    so equal choices keep landing on the same nodes. (Preferring the node with the least free
//!    GPU among ties, `pack`, measured worse on openb and is off.)
//! 3. **CPU-only work keeps off GPU nodes.** A CPU-only request goes to a node without GPUs when
//!    one fits (best fit on CPU); only otherwise to the GPU node where its CPU grows fragmentation
//!    least.
//!
//! Everything it reads is online knowledge: the cluster's free state and the distribution of
//! requests seen so far. Its parameters ([`DromeParams`]) are fixed; nothing is tuned per
//! workload.

use super::paper::{FragCache, choices, frag_growth};
use super::typical::TypicalPods;
use super::{Best, GpuChoice, TieOrder, feasible, place_members};
use crate::cluster::{ClusterState, Placement};
use crate::demand::Demand;
use crate::placer::Placer;
use model::GpuRequest;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// drome placer's fixed parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DromeParams {
    /// Growths closer than this (in `gpu_milli`) count as equal, so the packing tie-breaks decide.
    pub growth_epsilon_milli: f64,
    /// Send CPU-only requests to nodes without GPUs first.
    pub cpu_only_to_cpu_nodes: bool,
    /// Among equal growths, prefer the node with the least free GPU share.
    pub pack: bool,
}

impl Default for DromeParams {
    fn default() -> Self {
        DromeParams { growth_epsilon_milli: 25.0, cpu_only_to_cpu_nodes: true, pack: false }
    }
}

/// drome's default placer: see the module documentation.
#[derive(Clone, Debug)]
pub struct DromeFit {
    typical: TypicalPods,
    cache: FragCache,
    params: DromeParams,
    rng: ChaCha8Rng,
    ties: TieOrder,
    /// Learn the distribution from every request placed (on when none is given up front).
    pub learn: bool,
}

impl DromeFit {
    pub fn new(typical: TypicalPods, params: DromeParams, seed: u64) -> Self {
        let learn = typical.is_empty();
        DromeFit {
            typical,
            cache: FragCache::default(),
            params,
            rng: ChaCha8Rng::seed_from_u64(seed),
            ties: TieOrder::default(),
            learn,
        }
    }

    pub fn params(&self) -> DromeParams {
        self.params
    }

    /// Counts a request into the typical distribution.
    pub fn observe(&mut self, demand: &Demand) {
        self.typical.observe(demand);
    }
}

impl Placer for DromeFit {
    fn name(&self) -> &str {
        "drome"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        if self.learn {
            self.typical.observe(demand);
        }
        self.cache.sync(&self.typical, cluster);
        self.ties.ensure(cluster.node_count(), &mut self.rng);
        let cache = &mut self.cache;
        let ties = &self.ties;
        let params = self.params;
        let mut cands = Vec::with_capacity(8);
        place_members(cluster, demand, |cluster, demand, taken| {
            // Lexicographic: (cpu-node preference, -growth bucket, -free GPU, -free CPU).
            let mut best: Best<(i64, i64, i64, i64)> = Best::new(ties);
            for node in feasible(cluster, demand, taken) {
                let free = cluster.gpu_free_milli(node);
                let gpu_free: i64 = free.iter().map(|&f| i64::from(f)).sum();
                let cpu_rest = cluster.free_cpu_milli(node).saturating_sub(demand.cpu_milli) as i64;
                let cpu_node = cluster.node_model(node).is_none();
                let pref =
                    i64::from(params.cpu_only_to_cpu_nodes && matches!(demand.gpu, GpuRequest::None) && cpu_node);
                let before = cache.frag(cluster.node_model(node), cluster.free_cpu_milli(node), free);
                choices(free, demand, &mut cands);
                for &c in &cands {
                    let growth = frag_growth(cache, cluster, node, demand, c, before);
                    let bucket = (growth / params.growth_epsilon_milli.max(1e-9)).round() as i64;
                    let share_left = match c {
                        GpuChoice::Share(i) => i64::from(free[i as usize]),
                        _ => 0,
                    };
                    let packing = if params.pack { -(gpu_free * 1024 + share_left) } else { 0 };
                    let cpu_pack = if params.pack { -cpu_rest } else { 0 };
                    best.offer((pref, -bucket, packing, cpu_pack), node, c);
                }
            }
            best.get().map(|(_, n, c)| (n, c))
        })
    }
}
