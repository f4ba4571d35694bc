//! The fragmentation measure of the FGD paper (Weng et al., ATC'23, section 3): the GPU capacity of
//! a node that a request drawn from the typical distribution could not use, in expectation.
//!
//! For one typical request `t` and a node with free GPU shares `f_1..f_G` (total `F`):
//! - if `t` is CPU-only, or the node's model is not one `t` accepts, all of `F` is fragmented;
//! - if `t` fits (enough GPUs with a free share of at least `t`'s, and enough free CPU), the GPUs
//!   whose free share is smaller than `t`'s are fragmented;
//! - otherwise (short of GPU or CPU) all of `F` is fragmented.
//!
//! The node's fragmentation is the probability-weighted sum over the distribution. Memory is not
//! part of the measure, as in the paper.

use super::typical::TypicalPod;
use model::{Fleet, GPU_MILLI_PER_GPU, GpuModelId};

/// (share of each GPU, GPUs per member).
type GroupKey = (u16, u8);
/// (CPU ask, probability).
type CpuProb = (u64, f64);

#[derive(Clone, Debug)]
struct Group {
    gpu_milli: u16,
    gpus: u8,
    /// CPU asks of the group's shapes, ascending.
    cpus: Vec<u64>,
    /// `prefix[i]`: probability of the first `i` shapes of `cpus`.
    prefix: Vec<f64>,
}

impl Group {
    /// Probability of the group's shapes asking at most `cpu` CPU.
    fn fitting_cpu(&self, cpu: u64) -> f64 {
        self.prefix[self.cpus.partition_point(|&c| c <= cpu)]
    }
}

/// The fragmentation measure against one typical distribution, precomputed per GPU model.
#[derive(Clone, Debug, Default)]
pub struct FragMeter {
    /// Per model id: the GPU shapes that accept the model, grouped by (share, count).
    groups: Vec<Vec<Group>>,
}

impl FragMeter {
    pub fn new(typical: &[TypicalPod], fleet: &Fleet) -> Self {
        let mut groups = Vec::with_capacity(fleet.gpu_models.len());
        for m in 0..fleet.gpu_models.len() {
            let model = GpuModelId(m as u16);
            let mut by: Vec<(GroupKey, Vec<CpuProb>)> = Vec::new();
            for t in typical.iter().filter(|t| !t.key.is_cpu_only() && t.demand.models.allows(model)) {
                let k = (t.key.gpu_milli.min(GPU_MILLI_PER_GPU) as u16, t.key.gpus.min(255) as u8);
                match by.iter_mut().find(|(g, _)| *g == k) {
                    Some((_, v)) => v.push((t.key.cpu_milli, t.probability)),
                    None => by.push((k, vec![(t.key.cpu_milli, t.probability)])),
                }
            }
            let gs = by
                .into_iter()
                .map(|((gpu_milli, gpus), mut v)| {
                    v.sort_by_key(|&(c, _)| c);
                    let mut prefix = Vec::with_capacity(v.len() + 1);
                    prefix.push(0.0);
                    let mut acc = 0.0;
                    for &(_, p) in &v {
                        acc += p;
                        prefix.push(acc);
                    }
                    Group { gpu_milli, gpus, cpus: v.into_iter().map(|(c, _)| c).collect(), prefix }
                })
                .collect();
            groups.push(gs);
        }
        FragMeter { groups }
    }

    /// Expected fragmented GPU share (in `gpu_milli`) of a node of `model` with `cpu_left` CPU and
    /// free GPU shares `free`.
    pub fn node_frag(&self, model: Option<GpuModelId>, cpu_left: u64, free: &[u16]) -> f64 {
        let total: u32 = free.iter().map(|&f| u32::from(f)).sum();
        if total == 0 {
            return 0.0;
        }
        let Some(groups) = model.and_then(|m| self.groups.get(m.0 as usize)) else {
            return f64::from(total);
        };
        let total = f64::from(total);
        let mut usable = 0.0;
        for g in groups {
            let mut count = 0u32;
            let mut fitting = 0u32;
            for &f in free {
                if f >= g.gpu_milli {
                    count += 1;
                    fitting += u32::from(f);
                }
            }
            if count >= u32::from(g.gpus) {
                let p = g.fitting_cpu(cpu_left);
                if p > 0.0 {
                    usable += p * f64::from(fitting);
                }
            }
        }
        (total - usable).max(0.0)
    }
}

/// Cluster-wide fragmentation at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ClusterFrag {
    /// Expected fragmented GPU share, in `gpu_milli`.
    pub frag_milli: f64,
    /// Unallocated GPU share, in `gpu_milli`.
    pub idle_milli: f64,
}

impl ClusterFrag {
    /// Fragmented share of the idle GPUs, in percent.
    pub fn ratio_pct(&self) -> f64 {
        if self.idle_milli > 0.0 { 100.0 * self.frag_milli / self.idle_milli } else { 0.0 }
    }
}

impl FragMeter {
    /// Fragmentation of the whole cluster now.
    pub fn cluster(&self, cluster: &crate::ClusterState) -> ClusterFrag {
        let mut out = ClusterFrag::default();
        for i in 0..cluster.node_count() {
            let n = model::NodeId(i as u32);
            let free = cluster.gpu_free_milli(n);
            out.idle_milli += free.iter().map(|&f| f64::from(f)).sum::<f64>();
            out.frag_milli += self.node_frag(cluster.node_model(n), cluster.free_cpu_milli(n), free);
        }
        out
    }
}
