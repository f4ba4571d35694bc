//! The cluster's allocation state: what is free on every node and GPU, which workload holds what,
//! and the indexes placers search.

use crate::demand::{Demand, model_bit};
use crate::tree::{Capacity, CapacityTree, Need};
use model::{Fleet, GPU_MILLI_PER_GPU, GpuModelId, GpuRequest, NodeId, WorkloadId};
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;

/// A share of one GPU held by a gang member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GpuShare {
    /// GPU index within its node.
    pub index: u8,
    pub milli: u16,
}

/// What one gang member holds on one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberPlacement {
    pub node: NodeId,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpus: Vec<GpuShare>,
}

/// Where every member of a workload runs. A gang's members are on distinct nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Placement {
    pub members: Vec<MemberPlacement>,
}

impl Placement {
    pub fn gpu_milli(&self) -> u64 {
        self.members.iter().flat_map(|m| m.gpus.iter()).map(|g| u64::from(g.milli)).sum()
    }

    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.members.iter().map(|m| m.node)
    }
}

/// Why the cluster refused an allocation or release. Refusals protect the invariants: a policy
/// bug shows up as an error, never as a double-booked GPU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedError {
    #[error("workload {0:?} already holds an allocation")]
    AlreadyAllocated(WorkloadId),
    #[error("workload {0:?} holds no allocation")]
    NotAllocated(WorkloadId),
    #[error("node {0:?} does not exist")]
    NoSuchNode(NodeId),
    #[error("gang members share node {0:?}")]
    SharedNode(NodeId),
    #[error("placement has {got} members, the request has {want}")]
    WrongShape { got: usize, want: u32 },
    #[error("node {node:?} cannot give {what}")]
    Overcommit { node: NodeId, what: &'static str },
    #[error("member on node {0:?} holds less CPU or memory than the request asks")]
    ShortOfDemand(NodeId),
    #[error("node {0:?} has a GPU model the request does not accept")]
    ModelNotAllowed(NodeId),
}

/// How a placer picks GPUs on a chosen node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GpuPick {
    /// Lowest-numbered GPUs that fit.
    First,
    /// For a fractional request, the GPU whose free share is the smallest that fits.
    Tightest,
}

/// Allocation state of a fleet.
#[derive(Clone, Debug)]
pub struct ClusterState {
    fleet: Arc<Fleet>,
    free_cpu: Vec<u64>,
    free_memory: Vec<u64>,
    gpu_offset: Vec<u32>,
    gpu_free: Vec<u16>,
    live: CapacityTree,
    empty: CapacityTree,
    /// Per model: (whole GPUs free, node), for best fit on whole GPUs.
    by_full_gpus: Vec<BTreeSet<(u8, u32)>>,
    /// Per model: how many nodes have each count of whole GPUs free (index: the count).
    full_gpus_nodes: Vec<Vec<u32>>,
    /// Per model: the fewest GPUs a node of it has (an idle node has at least that many free).
    min_node_gpus: Vec<u8>,
    /// Per leaf switch, the GPU nodes with nothing allocated.
    leaves: crate::leaves::LeafIndex,
    /// Per model: (largest free GPU share, node), for best fit on fractions.
    by_max_share: Vec<BTreeSet<(u16, u32)>>,
    allocations: FxHashMap<WorkloadId, Placement>,
    /// Per node: members holding GPUs, by [`member_kind`].
    member_kinds: Vec<[u16; MEMBER_KINDS]>,
    allocated_gpu_milli: u64,
    total_gpu_milli: u64,
    /// A caller's grouping of the nodes (a group per node), whose allocated GPU-thousandths are
    /// kept summed as work comes and goes: the power guard groups by site and power figures and
    /// reads a site's load from a few sums instead of walking every allocation.
    node_groups: Option<Arc<[u32]>>,
    group_allocated_milli: Vec<u64>,
    /// Allocations and releases so far: a caller that saw the same count saw the same state.
    changes: u64,
    /// Per node: the features it offers now ([`Demand::node_features`]), set by the caller.
    node_features: Vec<u64>,
    /// Nodes whose GPU shares are withheld from placement for a while
    /// ([`ClusterState::withhold_free_gpus`]), and the thousandths taken from each of their GPUs,
    /// node after node (a node's run as long as its GPU count).
    withheld: Vec<u32>,
    withheld_shares: Vec<u16>,
    /// Per node: whether it is in `withheld`.
    withheld_on: Vec<bool>,
    /// GPU-thousandths withheld, all nodes together.
    withheld_milli: u64,
}

/// Kinds of GPU-holding members [`ClusterState::member_kinds`] tells apart: a share of one GPU
/// (0), or 1 to 15 whole GPUs, and 16 for 16 or more.
pub const MEMBER_KINDS: usize = 17;

/// The kind of a member: `None` without GPUs, 0 for a share of one GPU, else its GPU count (up
/// to 16).
pub fn member_kind(member: &MemberPlacement) -> Option<usize> {
    match member.gpus.as_slice() {
        [] => None,
        [g] if u32::from(g.milli) < GPU_MILLI_PER_GPU => Some(0),
        gs => Some(gs.len().min(MEMBER_KINDS - 1)),
    }
}

impl ClusterState {
    /// An empty cluster over `fleet`.
    pub fn new(fleet: Arc<Fleet>) -> Self {
        let mut gpu_offset = Vec::with_capacity(fleet.nodes.len() + 1);
        let mut total = 0u32;
        for n in &fleet.nodes {
            gpu_offset.push(total);
            total += u32::from(n.gpu_count);
        }
        gpu_offset.push(total);
        let gpu_free = vec![GPU_MILLI_PER_GPU as u16; total as usize];
        let free_cpu: Vec<u64> = fleet.nodes.iter().map(|n| n.cpu_milli).collect();
        let free_memory: Vec<u64> = fleet.nodes.iter().map(|n| n.memory_mib).collect();
        let models = fleet.gpu_models.len();
        let mut state = ClusterState {
            free_cpu,
            free_memory,
            gpu_offset,
            gpu_free,
            live: CapacityTree::new(&[]),
            empty: CapacityTree::new(&[]),
            by_full_gpus: vec![BTreeSet::new(); models],
            full_gpus_nodes: vec![vec![0; usize::from(u8::MAX) + 1]; models],
            min_node_gpus: {
                let mut min = vec![u8::MAX; models];
                for n in &fleet.nodes {
                    if let Some(m) = n.gpu_model.and_then(|m| min.get_mut(m.0 as usize)) {
                        *m = (*m).min(n.gpu_count);
                    }
                }
                min
            },
            leaves: crate::leaves::LeafIndex::new(&fleet, &[]),
            by_max_share: vec![BTreeSet::new(); models],
            allocations: FxHashMap::default(),
            member_kinds: vec![[0; MEMBER_KINDS]; fleet.nodes.len()],
            allocated_gpu_milli: 0,
            total_gpu_milli: u64::from(total) * u64::from(GPU_MILLI_PER_GPU),
            node_groups: None,
            group_allocated_milli: Vec::new(),
            changes: 0,
            node_features: vec![0; fleet.nodes.len()],
            withheld: Vec::new(),
            withheld_shares: Vec::new(),
            withheld_on: vec![false; fleet.nodes.len()],
            withheld_milli: 0,
            fleet,
        };
        let caps: Vec<Capacity> = (0..state.fleet.nodes.len()).map(|i| state.capacity_of(i)).collect();
        state.live = CapacityTree::new(&caps);
        state.empty = state.live.clone();
        state.leaves = crate::leaves::LeafIndex::new(&state.fleet, &caps);
        for (i, c) in caps.iter().enumerate() {
            if let Some(m) = state.fleet.nodes[i].gpu_model {
                state.by_full_gpus[m.0 as usize].insert((c.full_gpus, i as u32));
                state.full_gpus_nodes[m.0 as usize][usize::from(c.full_gpus)] += 1;
                state.by_max_share[m.0 as usize].insert((c.max_gpu_milli, i as u32));
            }
        }
        state
    }

    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    pub fn node_count(&self) -> usize {
        self.free_cpu.len()
    }

    pub fn free_cpu_milli(&self, node: NodeId) -> u64 {
        self.free_cpu[node.index()]
    }

    pub fn free_memory_mib(&self, node: NodeId) -> u64 {
        self.free_memory[node.index()]
    }

    /// Free share of each of the node's GPUs, in `gpu_milli`.
    pub fn gpu_free_milli(&self, node: NodeId) -> &[u16] {
        let i = node.index();
        &self.gpu_free[self.gpu_offset[i] as usize..self.gpu_offset[i + 1] as usize]
    }

    /// Kinds ([`member_kind`]) of the GPU-holding members on `node`, as bits: bit `k` is set when
    /// a member of kind `k` runs there.
    pub fn member_kinds(&self, node: NodeId) -> u32 {
        self.member_kinds
            .get(node.index())
            .map_or(0, |c| c.iter().enumerate().filter(|(_, n)| **n > 0).fold(0, |acc, (k, _)| acc | 1 << k))
    }

    /// GPUs of the node with nothing allocated on them.
    pub fn full_free_gpus(&self, node: NodeId) -> u8 {
        self.gpu_free_milli(node).iter().filter(|&&f| u32::from(f) == GPU_MILLI_PER_GPU).count() as u8
    }

    pub fn node_model(&self, node: NodeId) -> Option<GpuModelId> {
        self.fleet.nodes[node.index()].gpu_model
    }

    /// GPU-thousandths allocated, and withheld ([`ClusterState::withhold_free_gpus`]).
    pub fn allocated_gpu_milli(&self) -> u64 {
        self.allocated_gpu_milli + self.withheld_milli
    }

    /// Takes every free GPU share of `node` out of placement until
    /// [`ClusterState::restore_withheld`]: its free shares read zero, so no search places GPUs
    /// there, and count as allocated, while its CPUs and memory stay free and GPUs freed on it
    /// meanwhile are free as usual. It is what an allocation of those shares to nobody would do,
    /// without the allocation: no placement is kept and no placement index is updated (every
    /// search checks a node's free shares themselves before it takes the node), so withholding
    /// many nodes for a round costs a few writes per node. Returns the thousandths withheld.
    pub fn withhold_free_gpus(&mut self, node: NodeId) -> u64 {
        let i = node.index();
        if i >= self.withheld_on.len() || self.withheld_on[i] {
            return 0;
        }
        let gpus = self.gpu_offset[i] as usize..self.gpu_offset[i + 1] as usize;
        let milli: u64 = self.gpu_free[gpus.clone()].iter().map(|&m| u64::from(m)).sum();
        if milli == 0 {
            return 0;
        }
        self.withheld_shares.extend_from_slice(&self.gpu_free[gpus.clone()]);
        self.gpu_free[gpus].fill(0);
        self.withheld_on[i] = true;
        self.withheld_milli += milli;
        self.withheld.push(i as u32);
        milli
    }

    /// Gives back every GPU share [`ClusterState::withhold_free_gpus`] took.
    pub fn restore_withheld(&mut self) {
        let (nodes, shares) = (std::mem::take(&mut self.withheld), std::mem::take(&mut self.withheld_shares));
        let mut taken = shares.iter();
        for i in nodes {
            let i = i as usize;
            for (free, milli) in self.gpu_free[self.gpu_offset[i] as usize..self.gpu_offset[i + 1] as usize]
                .iter_mut()
                .zip(taken.by_ref())
            {
                *free += milli;
            }
            self.withheld_on[i] = false;
            // Its index entry is what it was unless work came or went on it meanwhile.
            self.refresh(i);
        }
        self.withheld_milli = 0;
    }

    /// Whether some of `node`'s GPU shares are withheld ([`ClusterState::withhold_free_gpus`]).
    pub fn gpus_withheld_on(&self, node: NodeId) -> bool {
        self.withheld_on.get(node.index()).copied().unwrap_or(false)
    }

    pub fn total_gpu_milli(&self) -> u64 {
        self.total_gpu_milli
    }

    pub fn allocation(&self, job: WorkloadId) -> Option<&Placement> {
        self.allocations.get(&job)
    }

    pub fn allocations(&self) -> impl Iterator<Item = (&WorkloadId, &Placement)> {
        self.allocations.iter()
    }

    pub fn running_count(&self) -> usize {
        self.allocations.len()
    }

    /// Allocations and releases made so far.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Groups the nodes (`groups[node]`, below `group_count`; a node past the end of `groups`
    /// counts in no group) and sums the GPU-thousandths allocated in each group from now on,
    /// replacing any earlier grouping. Costs one walk over the allocations.
    pub fn set_node_groups(&mut self, groups: Arc<[u32]>, group_count: usize) {
        let mut sums = vec![0u64; group_count];
        for p in self.allocations.values() {
            for m in &p.members {
                if let Some(sum) = groups.get(m.node.index()).and_then(|&g| sums.get_mut(g as usize)) {
                    *sum += m.gpus.iter().map(|g| u64::from(g.milli)).sum::<u64>();
                }
            }
        }
        self.group_allocated_milli = sums;
        self.node_groups = Some(groups);
    }

    /// The grouping [`ClusterState::set_node_groups`] set, if any.
    pub fn node_groups(&self) -> Option<&Arc<[u32]>> {
        self.node_groups.as_ref()
    }

    /// GPU-thousandths allocated in each group of [`ClusterState::set_node_groups`].
    pub fn group_allocated_milli(&self) -> &[u64] {
        &self.group_allocated_milli
    }

    fn add_to_group(&mut self, member: &MemberPlacement, sign: bool) {
        let Some(groups) = &self.node_groups else { return };
        let Some(sum) = groups.get(member.node.index()).and_then(|&g| self.group_allocated_milli.get_mut(g as usize))
        else {
            return;
        };
        let milli: u64 = member.gpus.iter().map(|g| u64::from(g.milli)).sum();
        if sign {
            *sum += milli;
        } else {
            *sum -= milli;
        }
    }

    fn capacity_of(&self, i: usize) -> Capacity {
        let gpus = &self.gpu_free[self.gpu_offset[i] as usize..self.gpu_offset[i + 1] as usize];
        Capacity {
            full_gpus: gpus.iter().filter(|&&f| u32::from(f) == GPU_MILLI_PER_GPU).count() as u8,
            max_gpu_milli: gpus.iter().copied().max().unwrap_or(0),
            cpu_milli: self.free_cpu[i],
            memory_mib: self.free_memory[i],
            models: model_bit(self.fleet.nodes[i].gpu_model),
        }
    }

    fn refresh(&mut self, i: usize) {
        let old = self.live.get(i);
        let new = self.capacity_of(i);
        if old == new {
            return;
        }
        self.live.set(i, new);
        self.leaves.update(&self.fleet, i, &new);
        if let Some(m) = self.fleet.nodes[i].gpu_model {
            let m = m.0 as usize;
            if old.full_gpus != new.full_gpus {
                self.by_full_gpus[m].remove(&(old.full_gpus, i as u32));
                self.by_full_gpus[m].insert((new.full_gpus, i as u32));
                self.full_gpus_nodes[m][usize::from(old.full_gpus)] -= 1;
                self.full_gpus_nodes[m][usize::from(new.full_gpus)] += 1;
            }
            if old.max_gpu_milli != new.max_gpu_milli {
                self.by_max_share[m].remove(&(old.max_gpu_milli, i as u32));
                self.by_max_share[m].insert((new.max_gpu_milli, i as u32));
            }
        }
    }

    fn need_of(demand: &Demand) -> Need {
        Need {
            full_gpus: demand.whole_gpus_per_member().min(u32::from(u8::MAX)) as u8,
            gpu_milli: demand.fraction_milli().min(u32::from(u16::MAX)) as u16,
            cpu_milli: demand.cpu_milli,
            memory_mib: demand.memory_mib,
            models: demand.node_mask(),
        }
    }

    /// Sets the features `node` offers now (what a node can do beyond its hardware, such as run
    /// container images): new placements of work that needs one go only where it is offered.
    /// Work already placed is not moved when a node loses one.
    pub fn set_node_features(&mut self, node: NodeId, features: u64) {
        if let Some(f) = self.node_features.get_mut(node.index()) {
            *f = features;
        }
    }

    pub fn node_features(&self, node: NodeId) -> u64 {
        self.node_features.get(node.index()).copied().unwrap_or(0)
    }

    /// True if one member of `demand` fits on `node` now.
    pub fn member_fits(&self, node: NodeId, demand: &Demand) -> bool {
        let i = node.index();
        if i >= self.free_cpu.len() || self.free_cpu[i] < demand.cpu_milli || self.free_memory[i] < demand.memory_mib {
            return false;
        }
        if self.node_features[i] & demand.node_features != demand.node_features {
            return false;
        }
        let model = self.fleet.nodes[i].gpu_model;
        match demand.gpu {
            GpuRequest::None => true,
            GpuRequest::Fraction { gpu_milli } => {
                model.is_some_and(|m| demand.models.allows(m))
                    && self.gpu_free_milli(node).iter().any(|&f| u32::from(f) >= gpu_milli)
            }
            GpuRequest::Gang { gpus_per_node, .. } => {
                model.is_some_and(|m| demand.models.allows(m)) && u32::from(self.full_free_gpus(node)) >= gpus_per_node
            }
        }
    }

    /// The lowest-numbered node at or after `from` where one member of `demand` fits and that
    /// `accept` does not reject.
    pub fn first_fit_from(
        &self,
        demand: &Demand,
        from: usize,
        mut accept: impl FnMut(NodeId) -> bool,
    ) -> Option<NodeId> {
        let need = Self::need_of(demand);
        self.live
            .find_first(from, &need, &mut |i| {
                let n = NodeId(i as u32);
                i < self.free_cpu.len() && self.member_fits(n, demand) && accept(n)
            })
            .map(|i| NodeId(i as u32))
    }

    /// Nodes of `model` with at least `min_gpus` whole GPUs free, fewest free first, then by id.
    pub fn nodes_by_full_gpus(&self, model: GpuModelId, min_gpus: u8) -> impl Iterator<Item = (u8, NodeId)> + '_ {
        self.by_full_gpus
            .get(model.0 as usize)
            .into_iter()
            .flat_map(move |set| set.range((min_gpus, 0)..))
            .map(|&(k, n)| (k, NodeId(n)))
    }

    /// The fewest GPUs a node of `model` has: idle nodes of the model are among
    /// `nodes_by_full_gpus(model, min_node_gpus(model))`.
    pub fn min_node_gpus(&self, model: GpuModelId) -> u8 {
        self.min_node_gpus.get(model.0 as usize).copied().unwrap_or(0)
    }

    /// The leaf index of empty GPU nodes, for gang placement.
    pub(crate) fn leaf_index(&self) -> Option<&crate::leaves::LeafIndex> {
        // Withheld GPUs are not in the indexes: while any are, the index may count them free.
        self.withheld.is_empty().then_some(&self.leaves)
    }

    /// The fleet's GPU models `demand` accepts, by id.
    pub fn allowed_models<'a>(&'a self, demand: &'a Demand) -> impl Iterator<Item = GpuModelId> + 'a {
        (0..self.fleet.gpu_models.len() as u16).map(GpuModelId).filter(|&m| demand.models.allows(m))
    }

    /// How many nodes of the models `demand` accepts have at least `min_gpus` whole GPUs free.
    pub fn count_nodes_with_room(&self, demand: &Demand, min_gpus: u8) -> u64 {
        self.allowed_models(demand).map(|m| self.count_nodes_with_full_gpus(m, min_gpus)).sum()
    }

    /// How many nodes of `model` have at least `min_gpus` whole GPUs free: a sum of at most 256
    /// counters, whatever the fleet's size.
    pub fn count_nodes_with_full_gpus(&self, model: GpuModelId, min_gpus: u8) -> u64 {
        self.full_gpus_nodes
            .get(model.0 as usize)
            .map_or(0, |counts| counts[usize::from(min_gpus)..].iter().map(|&c| u64::from(c)).sum())
    }

    /// Nodes of `model` whose largest free GPU share is at least `min_milli`, smallest first.
    pub fn nodes_by_max_share(&self, model: GpuModelId, min_milli: u16) -> impl Iterator<Item = (u16, NodeId)> + '_ {
        self.by_max_share
            .get(model.0 as usize)
            .into_iter()
            .flat_map(move |set| set.range((min_milli, 0)..))
            .map(|&(k, n)| (k, NodeId(n)))
    }

    /// True if `demand` could be placed on the empty fleet: a request that fails this never fits.
    pub fn could_ever_fit(&self, demand: &Demand) -> bool {
        if !matches!(demand.gpu, GpuRequest::None) && demand.models.is_empty() {
            return false;
        }
        let need = Self::need_of(demand);
        let mut from = 0;
        for _ in 0..demand.members() {
            let found = self.empty.find_first(from, &need, &mut |i| {
                let node = &self.fleet.nodes.get(i);
                let Some(node) = node else { return false };
                if node.cpu_milli < demand.cpu_milli || node.memory_mib < demand.memory_mib {
                    return false;
                }
                match demand.gpu {
                    GpuRequest::None => true,
                    GpuRequest::Fraction { .. } => node.gpu_model.is_some_and(|m| demand.models.allows(m)),
                    GpuRequest::Gang { gpus_per_node, .. } => {
                        node.gpu_model.is_some_and(|m| demand.models.allows(m))
                            && u32::from(node.gpu_count) >= gpus_per_node
                    }
                }
            });
            match found {
                Some(i) => from = i + 1,
                None => return false,
            }
        }
        true
    }

    /// The member `demand` would hold on `node`, choosing GPUs by `pick`; `None` if it does not fit.
    pub fn member_on(&self, node: NodeId, demand: &Demand, pick: GpuPick) -> Option<MemberPlacement> {
        if !self.member_fits(node, demand) {
            return None;
        }
        let free = self.gpu_free_milli(node);
        let gpus = match demand.gpu {
            GpuRequest::None => Vec::new(),
            GpuRequest::Fraction { gpu_milli } => {
                let fits = free.iter().enumerate().filter(|(_, f)| u32::from(**f) >= gpu_milli);
                let (index, _) = match pick {
                    GpuPick::First => fits.min_by_key(|(i, _)| *i)?,
                    GpuPick::Tightest => fits.min_by_key(|(i, f)| (**f, *i))?,
                };
                vec![GpuShare { index: index as u8, milli: gpu_milli as u16 }]
            }
            GpuRequest::Gang { gpus_per_node, .. } => self.first_whole_gpus(node, gpus_per_node as usize),
        };
        Some(MemberPlacement { node, cpu_milli: demand.cpu_milli, memory_mib: demand.memory_mib, gpus })
    }

    /// The lowest-numbered `count` GPUs of `node` with nothing allocated on them, as whole shares
    /// (fewer if the node has fewer free).
    pub fn first_whole_gpus(&self, node: NodeId, count: usize) -> Vec<GpuShare> {
        self.gpu_free_milli(node)
            .iter()
            .enumerate()
            .filter(|(_, f)| u32::from(**f) == GPU_MILLI_PER_GPU)
            .take(count)
            .map(|(i, _)| GpuShare { index: i as u8, milli: GPU_MILLI_PER_GPU as u16 })
            .collect()
    }

    /// Checks `placement` against `demand` and the free state without changing anything.
    pub fn check(&self, job: WorkloadId, demand: &Demand, placement: &Placement) -> Result<(), SchedError> {
        if self.allocations.contains_key(&job) {
            return Err(SchedError::AlreadyAllocated(job));
        }
        if placement.members.len() != demand.members() as usize {
            return Err(SchedError::WrongShape { got: placement.members.len(), want: demand.members() });
        }
        for (k, m) in placement.members.iter().enumerate() {
            let i = m.node.index();
            if i >= self.free_cpu.len() {
                return Err(SchedError::NoSuchNode(m.node));
            }
            if placement.members[..k].iter().any(|o| o.node == m.node) {
                return Err(SchedError::SharedNode(m.node));
            }
            if m.cpu_milli < demand.cpu_milli || m.memory_mib < demand.memory_mib {
                return Err(SchedError::ShortOfDemand(m.node));
            }
            if self.free_cpu[i] < m.cpu_milli {
                return Err(SchedError::Overcommit { node: m.node, what: "the CPU asked" });
            }
            if self.free_memory[i] < m.memory_mib {
                return Err(SchedError::Overcommit { node: m.node, what: "the memory asked" });
            }
            let want_gpus = match demand.gpu {
                GpuRequest::None => 0,
                GpuRequest::Fraction { .. } => 1,
                GpuRequest::Gang { gpus_per_node, .. } => gpus_per_node as usize,
            };
            if m.gpus.len() != want_gpus {
                return Err(SchedError::Overcommit { node: m.node, what: "the GPUs in the shape asked" });
            }
            if want_gpus > 0 {
                match self.node_model(m.node) {
                    Some(model) if demand.models.allows(model) => {}
                    _ => return Err(SchedError::ModelNotAllowed(m.node)),
                }
            }
            let free = self.gpu_free_milli(m.node);
            for (g, share) in m.gpus.iter().enumerate() {
                let want = match demand.gpu {
                    GpuRequest::Fraction { gpu_milli } => gpu_milli,
                    _ => GPU_MILLI_PER_GPU,
                };
                if u32::from(share.milli) != want || m.gpus[..g].iter().any(|o| o.index == share.index) {
                    return Err(SchedError::Overcommit { node: m.node, what: "the GPU shares in the shape asked" });
                }
                match free.get(share.index as usize) {
                    Some(&f) if f >= share.milli => {}
                    _ => return Err(SchedError::Overcommit { node: m.node, what: "that GPU share" }),
                }
            }
        }
        Ok(())
    }

    /// Gives `placement` to `job` after checking it; all members or none.
    pub fn allocate(&mut self, job: WorkloadId, demand: &Demand, placement: Placement) -> Result<(), SchedError> {
        self.check(job, demand, &placement)?;
        for m in &placement.members {
            let i = m.node.index();
            self.free_cpu[i] -= m.cpu_milli;
            self.free_memory[i] -= m.memory_mib;
            let base = self.gpu_offset[i] as usize;
            for g in &m.gpus {
                self.gpu_free[base + g.index as usize] -= g.milli;
            }
            if let Some(k) = member_kind(m) {
                self.member_kinds[i][k] += 1;
            }
            self.refresh(i);
            self.add_to_group(m, true);
        }
        self.changes += 1;
        self.allocated_gpu_milli += placement.gpu_milli();
        self.allocations.insert(job, placement);
        Ok(())
    }

    /// Frees what `job` holds and returns its placement.
    pub fn release(&mut self, job: WorkloadId) -> Result<Placement, SchedError> {
        let placement = self.allocations.remove(&job).ok_or(SchedError::NotAllocated(job))?;
        for m in &placement.members {
            let i = m.node.index();
            self.free_cpu[i] += m.cpu_milli;
            self.free_memory[i] += m.memory_mib;
            let base = self.gpu_offset[i] as usize;
            for g in &m.gpus {
                self.gpu_free[base + g.index as usize] += g.milli;
            }
            if let Some(k) = member_kind(m) {
                self.member_kinds[i][k] -= 1;
            }
            self.refresh(i);
            self.add_to_group(m, false);
        }
        self.changes += 1;
        self.allocated_gpu_milli -= placement.gpu_milli();
        Ok(placement)
    }

    /// Recomputes every free figure from the allocations and compares: a self-check for tests.
    pub fn verify(&self) -> Result<(), String> {
        let fleet = &self.fleet;
        let mut cpu: Vec<u64> = fleet.nodes.iter().map(|n| n.cpu_milli).collect();
        let mut mem: Vec<u64> = fleet.nodes.iter().map(|n| n.memory_mib).collect();
        let mut gpu = vec![GPU_MILLI_PER_GPU as i64; self.gpu_free.len()];
        let mut kinds = vec![[0u16; MEMBER_KINDS]; fleet.nodes.len()];
        for (job, p) in &self.allocations {
            for m in &p.members {
                let i = m.node.index();
                if let Some(k) = member_kind(m) {
                    kinds[i][k] += 1;
                }
                cpu[i] = cpu[i].checked_sub(m.cpu_milli).ok_or(format!("{job:?} over-commits CPU on node {i}"))?;
                mem[i] = mem[i].checked_sub(m.memory_mib).ok_or(format!("{job:?} over-commits memory on node {i}"))?;
                for g in &m.gpus {
                    gpu[self.gpu_offset[i] as usize + g.index as usize] -= i64::from(g.milli);
                }
            }
        }
        let mut taken = self.withheld_shares.iter();
        for &i in &self.withheld {
            let gpus = self.gpu_offset[i as usize] as usize..self.gpu_offset[i as usize + 1] as usize;
            for (expected, milli) in gpu[gpus].iter_mut().zip(taken.by_ref()) {
                *expected -= i64::from(*milli);
            }
        }
        if let Some(pos) = gpu.iter().position(|&g| g < 0) {
            return Err(format!("GPU slot {pos} over-committed"));
        }
        if cpu != self.free_cpu || mem != self.free_memory {
            return Err("free CPU/memory out of step with allocations".into());
        }
        if gpu.iter().zip(&self.gpu_free).any(|(a, b)| *a != i64::from(*b)) {
            return Err("free GPU shares out of step with allocations".into());
        }
        if kinds != self.member_kinds {
            return Err("member kinds out of step with allocations".into());
        }
        let caps: Vec<Capacity> = (0..fleet.nodes.len()).map(|i| self.live.get(i)).collect();
        self.leaves.verify(fleet, &caps)?;
        let mut counts = vec![vec![0u32; usize::from(u8::MAX) + 1]; self.full_gpus_nodes.len()];
        for (m, set) in self.by_full_gpus.iter().enumerate() {
            for &(k, _) in set {
                counts[m][usize::from(k)] += 1;
            }
        }
        if counts != self.full_gpus_nodes {
            return Err("counts of nodes by whole GPUs free out of step with the index".into());
        }
        if let Some(groups) = &self.node_groups {
            let mut sums = vec![0u64; self.group_allocated_milli.len()];
            for p in self.allocations.values() {
                for m in &p.members {
                    if let Some(sum) = groups.get(m.node.index()).and_then(|&g| sums.get_mut(g as usize)) {
                        *sum += m.gpus.iter().map(|g| u64::from(g.milli)).sum::<u64>();
                    }
                }
            }
            if sums != self.group_allocated_milli {
                return Err("node groups' sums out of step with allocations".into());
            }
        }
        let withheld: u64 = self.withheld_shares.iter().map(|&m| u64::from(m)).sum();
        if withheld != self.withheld_milli || self.withheld.len() != self.withheld_on.iter().filter(|w| **w).count() {
            return Err("withheld GPU shares out of step".into());
        }
        for i in 0..self.free_cpu.len() {
            // A withheld node's entry may stay as it was before (see `withhold_free_gpus`).
            if !self.withheld_on[i] && self.live.get(i) != self.capacity_of(i) {
                return Err(format!("placement index stale at node {i}"));
            }
        }
        Ok(())
    }
}
