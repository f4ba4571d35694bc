//! Per leaf switch, the GPU nodes with nothing allocated: a gang placer finds the leaf that holds
//! a gang best, or the leaves with the most empty nodes, in a few lookups instead of a walk over
//! every idle node of the fleet.

use crate::tree::Capacity;
use model::{Fleet, GpuModelId, NodeId};
use std::collections::BTreeSet;

/// What a node is for the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    /// Not a GPU node, or something is allocated on it and some GPU is in use.
    Other,
    /// A GPU node with nothing allocated.
    Empty,
    /// Every GPU free while something (CPU-only work) holds CPU or memory.
    GpuIdleOnly,
}

#[derive(Clone, Debug)]
pub(crate) struct LeafIndex {
    state: Vec<NodeState>,
    /// Nodes in [`NodeState::GpuIdleOnly`]: while there are any, the index does not say which
    /// idle nodes a member fits on.
    gpu_idle_only: u32,
    leaf_empty: Vec<u32>,
    /// Per leaf: the model of its GPU nodes when they are all of one model.
    leaf_model: Vec<Option<u16>>,
    /// Per model: every leaf holding its nodes holds no other model.
    model_pure: Vec<bool>,
    /// Per model: (empty nodes, leaf) of its leaves with any.
    by_count: Vec<BTreeSet<(u32, u32)>>,
    model_empty: Vec<u64>,
    /// Per leaf: its GPU nodes, ascending.
    leaf_nodes: Vec<Vec<u32>>,
    /// Per model: the smallest CPU and memory of its nodes.
    min_cpu_milli: Vec<u64>,
    min_memory_mib: Vec<u64>,
}

fn state_of(fleet: &Fleet, i: usize, cap: &Capacity) -> NodeState {
    let node = &fleet.nodes[i];
    if node.gpu_model.is_none() || cap.full_gpus != node.gpu_count {
        return NodeState::Other;
    }
    if cap.cpu_milli == node.cpu_milli && cap.memory_mib == node.memory_mib {
        NodeState::Empty
    } else {
        NodeState::GpuIdleOnly
    }
}

impl LeafIndex {
    pub(crate) fn new(fleet: &Fleet, caps: &[Capacity]) -> LeafIndex {
        let models = fleet.gpu_models.len();
        let leaves = fleet.nodes.iter().map(|n| n.leaf_switch as usize + 1).max().unwrap_or(0);
        let mut index = LeafIndex {
            state: vec![NodeState::Other; fleet.nodes.len()],
            gpu_idle_only: 0,
            leaf_empty: vec![0; leaves],
            leaf_model: vec![None; leaves],
            model_pure: vec![true; models],
            by_count: vec![BTreeSet::new(); models],
            model_empty: vec![0; models],
            leaf_nodes: vec![Vec::new(); leaves],
            min_cpu_milli: vec![u64::MAX; models],
            min_memory_mib: vec![u64::MAX; models],
        };
        let mut mixed = vec![false; leaves];
        for (i, n) in fleet.nodes.iter().enumerate() {
            let Some(m) = n.gpu_model else { continue };
            let leaf = n.leaf_switch as usize;
            index.leaf_nodes[leaf].push(i as u32);
            match index.leaf_model[leaf] {
                None if !mixed[leaf] => index.leaf_model[leaf] = Some(m.0),
                Some(other) if other != m.0 => mixed[leaf] = true,
                _ => {}
            }
            let mi = m.0 as usize;
            index.min_cpu_milli[mi] = index.min_cpu_milli[mi].min(n.cpu_milli);
            index.min_memory_mib[mi] = index.min_memory_mib[mi].min(n.memory_mib);
        }
        for (leaf, nodes) in index.leaf_nodes.iter().enumerate() {
            if mixed[leaf] {
                for &i in nodes {
                    if let Some(m) = fleet.nodes[i as usize].gpu_model {
                        index.model_pure[m.0 as usize] = false;
                    }
                }
                index.leaf_model[leaf] = None;
            }
        }
        for (i, cap) in caps.iter().enumerate() {
            index.set(fleet, i, state_of(fleet, i, cap));
        }
        index
    }

    fn set(&mut self, fleet: &Fleet, i: usize, new: NodeState) {
        let old = self.state[i];
        if old == new {
            return;
        }
        self.state[i] = new;
        if old == NodeState::GpuIdleOnly {
            self.gpu_idle_only -= 1;
        }
        if new == NodeState::GpuIdleOnly {
            self.gpu_idle_only += 1;
        }
        let was_empty = old == NodeState::Empty;
        let is_empty = new == NodeState::Empty;
        if was_empty == is_empty {
            return;
        }
        let leaf = fleet.nodes[i].leaf_switch as usize;
        let count = self.leaf_empty[leaf];
        let next = if is_empty { count + 1 } else { count - 1 };
        self.leaf_empty[leaf] = next;
        if let Some(m) = fleet.nodes[i].gpu_model {
            let mi = m.0 as usize;
            if is_empty {
                self.model_empty[mi] += 1;
            } else {
                self.model_empty[mi] -= 1;
            }
            if self.leaf_model[leaf] == Some(m.0) {
                if count > 0 {
                    self.by_count[mi].remove(&(count, leaf as u32));
                }
                if next > 0 {
                    self.by_count[mi].insert((next, leaf as u32));
                }
            }
        }
    }

    /// Node `i`'s capacity changed to `cap`.
    pub(crate) fn update(&mut self, fleet: &Fleet, i: usize, cap: &Capacity) {
        let new = state_of(fleet, i, cap);
        self.set(fleet, i, new);
    }

    /// The model whose empty nodes are exactly the nodes a gang member of `per_node` whole GPUs,
    /// `cpu_milli` and `memory_mib` fits on with every GPU free, when the index can say so: one
    /// model allowed, leaves of one model, every node of it big enough, nothing holding a node
    /// whose GPUs are all free.
    pub(crate) fn exact_model(
        &self,
        allowed: impl Iterator<Item = GpuModelId>,
        per_node: u8,
        min_gpus: impl Fn(GpuModelId) -> u8,
        cpu_milli: u64,
        memory_mib: u64,
    ) -> Option<GpuModelId> {
        if self.gpu_idle_only > 0 {
            return None;
        }
        let mut allowed = allowed.filter(|m| self.min_cpu_milli.get(m.0 as usize).is_some_and(|&c| c != u64::MAX));
        let m = allowed.next()?;
        let mi = m.0 as usize;
        let fits = allowed.next().is_none()
            && self.model_pure[mi]
            && min_gpus(m) >= per_node
            && self.min_cpu_milli[mi] >= cpu_milli
            && self.min_memory_mib[mi] >= memory_mib;
        fits.then_some(m)
    }

    pub(crate) fn empty_nodes(&self, model: GpuModelId) -> u64 {
        self.model_empty.get(model.0 as usize).copied().unwrap_or(0)
    }

    /// (empty nodes, leaf) of the model's leaves with any, ascending.
    pub(crate) fn leaves(&self, model: GpuModelId) -> Option<&BTreeSet<(u32, u32)>> {
        self.by_count.get(model.0 as usize)
    }

    /// The empty nodes under `leaf`, ascending.
    pub(crate) fn empty_under(&self, leaf: u32) -> impl Iterator<Item = NodeId> + '_ {
        self.leaf_nodes
            .get(leaf as usize)
            .into_iter()
            .flatten()
            .filter(|&&i| self.state[i as usize] == NodeState::Empty)
            .map(|&i| NodeId(i))
    }

    /// Checks the index against the nodes' capacities now: it must be what a fresh index of
    /// them is.
    pub(crate) fn verify(&self, fleet: &Fleet, caps: &[Capacity]) -> Result<(), String> {
        let fresh = LeafIndex::new(fleet, caps);
        if self.state != fresh.state
            || self.leaf_empty != fresh.leaf_empty
            || self.by_count != fresh.by_count
            || self.model_empty != fresh.model_empty
            || self.gpu_idle_only != fresh.gpu_idle_only
        {
            return Err("leaf index of empty nodes out of step with the nodes' capacity".into());
        }
        Ok(())
    }
}
