//! Topology-aware placement. A job of up to one node's GPUs stays on one node (one NVLink domain),
//! placed best fit so whole nodes stay free; a larger gang takes whole, otherwise idle nodes under
//! as few leaf switches as possible, so its all-reduce crosses the spine as little as it can.

use crate::cluster::{ClusterState, Placement};
use crate::demand::Demand;
use crate::placer::{BestFit, Placer};
use model::{Fleet, GpuRequest, NodeId};
use std::collections::BTreeMap;

/// Best fit for single-node requests; whole nodes under the fewest leaf switches for gangs of
/// several nodes. Among leaves that can hold the whole gang, the one with the fewest idle nodes
/// (best fit at the switch level); when no single leaf can, the leaves with the most idle nodes
/// first. Ties go to the lowest leaf and node ids, so placement is deterministic.
#[derive(Debug, Default, Clone, Copy)]
pub struct TopoPlacer;

impl TopoPlacer {
    /// Idle nodes (every GPU free) where one member of `demand` fits, grouped by leaf switch.
    fn idle_nodes_by_leaf(cluster: &ClusterState, demand: &Demand, per_node: u32) -> BTreeMap<u32, Vec<NodeId>> {
        let fleet = cluster.fleet();
        let mut by_leaf: BTreeMap<u32, Vec<NodeId>> = BTreeMap::new();
        let Ok(k) = u8::try_from(per_node) else { return by_leaf };
        for model in cluster.allowed_models(demand) {
            // Idle nodes have every GPU free: none has fewer free than the model's smallest node.
            for (free, node) in cluster.nodes_by_full_gpus(model, k.max(cluster.min_node_gpus(model))) {
                let spec = fleet.node(node);
                if free == spec.gpu_count && cluster.member_fits(node, demand) {
                    by_leaf.entry(spec.leaf_switch).or_default().push(node);
                }
            }
        }
        for nodes in by_leaf.values_mut() {
            nodes.sort_unstable();
        }
        by_leaf
    }
}

impl TopoPlacer {
    /// The nodes [`Placer::place`] chooses for a gang of `nodes` members of `per_node` GPUs, from
    /// the cluster's count of empty nodes per leaf, where that count is exactly the idle nodes a
    /// member fits on (`None` otherwise, or when the gang fits nowhere): the same choice as the
    /// walk over idle nodes, in a few lookups per leaf used.
    fn from_leaf_index(cluster: &ClusterState, demand: &Demand, nodes: usize, per_node: u8) -> Option<Vec<NodeId>> {
        let index = cluster.leaf_index()?;
        if demand.node_features != 0 {
            return None;
        }
        let model = index.exact_model(
            cluster.allowed_models(demand),
            per_node,
            |m| cluster.min_node_gpus(m),
            demand.cpu_milli,
            demand.memory_mib,
        )?;
        if index.empty_nodes(model) < nodes as u64 {
            return None;
        }
        let leaves = index.leaves(model)?;
        let mut chosen: Vec<NodeId> = Vec::with_capacity(nodes);
        // Best fit at the switch: the leaf with the fewest empty nodes that holds the gang.
        if let Some(&(_, leaf)) = leaves.range((nodes as u32, 0)..).next() {
            chosen.extend(index.empty_under(leaf).take(nodes));
            return (chosen.len() == nodes).then_some(chosen);
        }
        // Else the leaves with the most empty nodes first, lower leaf first among equals.
        let mut below = u32::MAX;
        while chosen.len() < nodes {
            let &(count, _) = leaves.range(..(below, 0)).next_back()?;
            for &(_, leaf) in leaves.range((count, 0)..=(count, u32::MAX)) {
                let want = nodes - chosen.len();
                chosen.extend(index.empty_under(leaf).take(want));
                if chosen.len() == nodes {
                    break;
                }
            }
            below = count;
        }
        Some(chosen)
    }
}

impl Placer for TopoPlacer {
    fn name(&self) -> &str {
        "topology"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        let (nodes, per_node) = match demand.gpu {
            GpuRequest::Gang { nodes, gpus_per_node } if nodes > 1 => (nodes as usize, gpus_per_node),
            _ => return BestFit.place(cluster, demand),
        };
        // Too few nodes with that many GPUs free, idle or not: no walk over the idle ones.
        let Ok(k) = u8::try_from(per_node) else { return None };
        let candidates = cluster.count_nodes_with_room(demand, k);
        if candidates < nodes as u64 {
            return None;
        }
        if let Some(chosen) = Self::from_leaf_index(cluster, demand, nodes, k) {
            let members: Option<Vec<_>> =
                chosen.iter().map(|&n| cluster.member_on(n, demand, crate::cluster::GpuPick::First)).collect();
            return Some(Placement { members: members? });
        }
        let by_leaf = Self::idle_nodes_by_leaf(cluster, demand, per_node);
        if by_leaf.values().map(Vec::len).sum::<usize>() < nodes {
            return None;
        }
        let mut chosen: Vec<NodeId> = Vec::with_capacity(nodes);
        let single = by_leaf.iter().filter(|(_, v)| v.len() >= nodes).min_by_key(|(leaf, v)| (v.len(), **leaf));
        match single {
            Some((_, v)) => chosen.extend(v.iter().take(nodes)),
            None => {
                let mut leaves: Vec<(&u32, &Vec<NodeId>)> = by_leaf.iter().collect();
                leaves.sort_by_key(|(leaf, v)| (std::cmp::Reverse(v.len()), **leaf));
                for (_, v) in leaves {
                    let want = nodes - chosen.len();
                    chosen.extend(v.iter().take(want));
                    if chosen.len() == nodes {
                        break;
                    }
                }
            }
        }
        let members: Option<Vec<_>> =
            chosen.iter().map(|&n| cluster.member_on(n, demand, crate::cluster::GpuPick::First)).collect();
        Some(Placement { members: members? })
    }
}

/// Distinct leaf switches the nodes of `placement` sit under.
pub fn switches_spanned(fleet: &Fleet, placement: &Placement) -> u32 {
    let mut leaves: Vec<u32> = placement.nodes().map(|n| fleet.node(n).leaf_switch).collect();
    leaves.sort_unstable();
    leaves.dedup();
    leaves.len() as u32
}
