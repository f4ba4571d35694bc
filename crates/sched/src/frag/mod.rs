//! Fragmentation-aware placers for GPU-sharing workloads, and the fragmentation measure.
//!
//! Six published policies, as the FGD paper (Weng et al., USENIX ATC'23) evaluates them on the
//! Alibaba openb trace — [`RandomFit`], [`DotProd`], [`GpuClustering`], [`GpuPacking`],
//! [`PaperBestFit`], [`Fgd`] — and drome's own default, [`DromeFit`]. Each scores every node that
//! can take the request and picks the best; ties go to a node drawn uniformly at random from a
//! seeded random priority over the nodes (as in the paper's simulator), so runs are reproducible.
//!
//! All of them are [`Placer`]s and read only what a live scheduler knows: the cluster's free
//! state and, for FGD and drome, the distribution of requests seen so far ([`TypicalPods`]).

mod drome;
mod measure;
mod paper;
mod typical;

pub use drome::{DromeFit, DromeParams, HOLD_DEAD_MILLI, HoleWaste};
pub use measure::{ClusterFrag, FragMeter};
pub use paper::{DotProd, Fgd, GpuClustering, GpuPacking, PaperBestFit, RandomFit};
pub use typical::{DEFAULT_POPULARITY, ShapeKey, TypicalPod, TypicalPods};

use crate::cluster::{ClusterState, GpuShare, MemberPlacement, Placement};
use crate::demand::Demand;
use crate::placer::Placer;
use model::{GpuRequest, NodeId};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// The policies of the experiment, in the order of the paper's tables, drome last ([`placer_by_name`]
/// also takes [`STUDY_POLICY_NAMES`]).
pub const POLICY_NAMES: [&str; 7] = ["random", "dotprod", "gpuclustering", "gpupacking", "bestfit", "fgd", "drome"];

/// Policies for study, named only on request (not in `all`): `drome-hold` is drome's placer with
/// [`DromeParams::hold_above`] at [`STUDY_HOLD_ABOVE`]: it refuses requests that fit, to show what
/// that buys at the end of the inflation experiment and what it costs before.
pub const STUDY_POLICY_NAMES: [&str; 1] = ["drome-hold"];

/// The allocated share above which `drome-hold` holds whole GPUs.
pub const STUDY_HOLD_ABOVE: f64 = 0.7;

/// The paper's name for a policy (`fgd` -> `FGD`).
pub fn display_name(policy: &str) -> &str {
    match policy {
        "random" => "Random",
        "dotprod" => "DotProd",
        "gpuclustering" => "GpuClustering",
        "gpupacking" => "GpuPacking",
        "bestfit" => "BestFit",
        "fgd" => "FGD",
        "drome" => "drome",
        "drome-hold" => "drome (hold 70%)",
        other => other,
    }
}

/// A placer by name, with `typical` as the learned request distribution (used by `fgd` and
/// `drome`) and `seed` for tie-breaking.
pub fn placer_by_name(name: &str, typical: &TypicalPods, seed: u64) -> Option<Box<dyn Placer>> {
    Some(match name {
        "random" => Box::new(RandomFit::new(seed)),
        "dotprod" => Box::new(DotProd::new(seed)),
        "gpuclustering" => Box::new(GpuClustering::new(seed)),
        "gpupacking" => Box::new(GpuPacking::new(seed)),
        "bestfit" => Box::new(PaperBestFit::new(seed)),
        "fgd" => Box::new(Fgd::new(typical.clone(), seed)),
        "drome" => Box::new(DromeFit::new(typical.clone(), DromeParams::default(), seed)),
        "drome-hold" => {
            let params = DromeParams { hold_above: STUDY_HOLD_ABOVE, ..DromeParams::default() };
            Box::new(DromeFit::new(typical.clone(), params, seed))
        }
        _ => return None,
    })
}

/// Which GPUs of a node a member takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum GpuChoice {
    /// CPU-only request.
    None,
    /// A share of this GPU.
    Share(u8),
    /// The lowest-numbered whole free GPUs.
    FirstFree,
}

pub(crate) fn member(cluster: &ClusterState, node: NodeId, demand: &Demand, choice: GpuChoice) -> MemberPlacement {
    let gpus = match (choice, demand.gpu) {
        (GpuChoice::Share(index), GpuRequest::Fraction { gpu_milli }) => {
            vec![GpuShare { index, milli: gpu_milli as u16 }]
        }
        (_, GpuRequest::Gang { gpus_per_node, .. }) => cluster.first_whole_gpus(node, gpus_per_node as usize),
        _ => Vec::new(),
    };
    MemberPlacement { node, cpu_milli: demand.cpu_milli, memory_mib: demand.memory_mib, gpus }
}

/// The GPU with the least free share that still fits `milli` (lowest index on ties).
pub(crate) fn tightest_gpu(free: &[u16], milli: u32) -> Option<u8> {
    free.iter()
        .enumerate()
        .filter(|(_, f)| u32::from(**f) >= milli)
        .min_by_key(|(i, f)| (**f, *i))
        .map(|(i, _)| i as u8)
}

/// A fixed random priority over the nodes, drawn once from the placer's seed: ties in score go
/// to the node that comes first in it. The paper's simulator breaks ties the same way (its node
/// names carry a random prefix and the first best name wins), which packs ties onto the same nodes
/// instead of scattering them.
#[derive(Clone, Debug, Default)]
pub(crate) struct TieOrder {
    rank: Vec<u32>,
}

impl TieOrder {
    pub(crate) fn ensure(&mut self, nodes: usize, rng: &mut ChaCha8Rng) {
        if self.rank.len() != nodes {
            let mut perm: Vec<u32> = (0..nodes as u32).collect();
            for i in (1..perm.len()).rev() {
                let j = rng.random_range(0..=i);
                perm.swap(i, j);
            }
            self.rank = perm;
        }
    }

    pub(crate) fn rank(&self, node: NodeId) -> u32 {
        self.rank.get(node.index()).copied().unwrap_or(u32::MAX)
    }
}

/// Keeps the best-scoring candidate; ties go to the node of lowest [`TieOrder`] rank.
pub(crate) struct Best<'a, S> {
    best: Option<(S, u32, NodeId, GpuChoice)>,
    order: &'a TieOrder,
}

impl<'a, S: PartialOrd + Copy> Best<'a, S> {
    pub(crate) fn new(order: &'a TieOrder) -> Self {
        Best { best: None, order }
    }

    pub(crate) fn offer(&mut self, score: S, node: NodeId, choice: GpuChoice) {
        let rank = self.order.rank(node);
        let better = match &self.best {
            None => true,
            Some((s, r, _, _)) => score > *s || (score == *s && rank < *r),
        };
        if better {
            self.best = Some((score, rank, node, choice));
        }
    }

    pub(crate) fn get(&self) -> Option<(S, NodeId, GpuChoice)> {
        self.best.map(|(s, _, n, c)| (s, n, c))
    }
}

/// Places every member of `demand` on distinct nodes, each chosen by `pick` among the nodes
/// where a member fits and that earlier members did not take.
pub(crate) fn place_members(
    cluster: &ClusterState,
    demand: &Demand,
    mut pick: impl FnMut(&ClusterState, &Demand, &[NodeId]) -> Option<(NodeId, GpuChoice)>,
) -> Option<Placement> {
    let want = demand.members() as usize;
    let mut taken: Vec<NodeId> = Vec::with_capacity(want);
    let mut members = Vec::with_capacity(want);
    for _ in 0..want {
        let (node, choice) = pick(cluster, demand, &taken)?;
        members.push(member(cluster, node, demand, choice));
        taken.push(node);
    }
    Some(Placement { members })
}

/// Nodes where one member of `demand` fits, skipping `taken`.
pub(crate) fn feasible<'a>(
    cluster: &'a ClusterState,
    demand: &'a Demand,
    taken: &'a [NodeId],
) -> impl Iterator<Item = NodeId> + 'a {
    (0..cluster.node_count() as u32).map(NodeId).filter(move |n| !taken.contains(n) && cluster.member_fits(*n, demand))
}
