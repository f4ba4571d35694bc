//! Placers: where one request goes. A placer only reads the cluster; the policy allocates what it
//! returns, so a placer can be tried and discarded freely.

use crate::cluster::{ClusterState, GpuPick, MemberPlacement, Placement};
use crate::demand::Demand;
use model::{GpuModelId, GpuRequest, NodeId};

/// Chooses nodes and GPUs for one request. Returns a whole placement (every gang member) or none.
pub trait Placer: Send {
    fn name(&self) -> &str;
    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement>;
}

/// Lowest-numbered nodes that fit, lowest-numbered GPUs on them. Cheap and predictable; packs
/// the front of the fleet.
#[derive(Debug, Default, Clone, Copy)]
pub struct FirstFit;

impl Placer for FirstFit {
    fn name(&self) -> &str {
        "first-fit"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        let mut members = Vec::with_capacity(demand.members() as usize);
        let mut from = 0usize;
        for _ in 0..demand.members() {
            let node = cluster.first_fit_from(demand, from, |_| true)?;
            members.push(cluster.member_on(node, demand, GpuPick::First)?);
            from = node.index() + 1;
        }
        Some(Placement { members })
    }
}

/// First fit by a plain scan of every node, without the placement index: the reference that
/// [`FirstFit`] must agree with, and the baseline its speed is measured against.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanFirstFit;

impl Placer for ScanFirstFit {
    fn name(&self) -> &str {
        "scan-first-fit"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        let mut members = Vec::with_capacity(demand.members() as usize);
        for n in 0..cluster.node_count() as u32 {
            if members.len() == demand.members() as usize {
                break;
            }
            if let Some(m) = cluster.member_on(NodeId(n), demand, GpuPick::First) {
                members.push(m);
            }
        }
        (members.len() == demand.members() as usize).then_some(Placement { members })
    }
}

/// The nodes left with the fewest free GPUs after placement (the tightest fit), and for a GPU
/// share the GPU with the least room that still fits, so whole nodes stay free for large gangs.
/// CPU-only requests fall back to first fit: GPU capacity is what best fit protects.
#[derive(Debug, Default, Clone, Copy)]
pub struct BestFit;

impl BestFit {
    fn allowed_models(cluster: &ClusterState, demand: &Demand) -> Vec<GpuModelId> {
        cluster.allowed_models(demand).collect()
    }
}

impl Placer for BestFit {
    fn name(&self) -> &str {
        "best-fit"
    }

    fn place(&mut self, cluster: &ClusterState, demand: &Demand) -> Option<Placement> {
        let want = demand.members() as usize;
        let mut chosen: Vec<(u16, NodeId)> = Vec::with_capacity(want);
        match demand.gpu {
            GpuRequest::None => return FirstFit.place(cluster, demand),
            GpuRequest::Gang { gpus_per_node, .. } => {
                let k = u8::try_from(gpus_per_node).ok()?;
                for model in Self::allowed_models(cluster, demand) {
                    // Each model's candidates come tightest first: keep the `want` tightest overall.
                    let mut taken = 0;
                    for (free, node) in cluster.nodes_by_full_gpus(model, k) {
                        if taken == want || chosen.len() == want && (u16::from(free), node) >= chosen[want - 1] {
                            break;
                        }
                        if cluster.member_fits(node, demand) {
                            insert_sorted(&mut chosen, (u16::from(free), node), want);
                            taken += 1;
                        }
                    }
                }
            }
            GpuRequest::Fraction { gpu_milli } => {
                let m = u16::try_from(gpu_milli).ok()?;
                for model in Self::allowed_models(cluster, demand) {
                    for (share, node) in cluster.nodes_by_max_share(model, m) {
                        if chosen.len() == want && (share, node) >= chosen[want - 1] {
                            break;
                        }
                        if cluster.member_fits(node, demand) {
                            insert_sorted(&mut chosen, (share, node), want);
                            break;
                        }
                    }
                }
            }
        }
        if chosen.len() < want {
            return None;
        }
        let members: Option<Vec<MemberPlacement>> =
            chosen.iter().map(|&(_, node)| cluster.member_on(node, demand, GpuPick::Tightest)).collect();
        Some(Placement { members: members? })
    }
}

fn insert_sorted(v: &mut Vec<(u16, NodeId)>, item: (u16, NodeId), cap: usize) {
    let pos = v.partition_point(|x| *x < item);
    v.insert(pos, item);
    v.truncate(cap);
}
