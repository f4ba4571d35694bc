//! A workload's request resolved against one fleet: model names become a set of model ids, so that
//! placement never compares strings.

use model::{Fleet, GpuModelId, GpuRequest, Workload};

/// Bit used in [`ModelSet::mask`] for nodes without GPUs.
pub(crate) const CPU_NODE_BIT: u64 = 1 << 63;
/// Model ids from 62 up share the last GPU bit; the exact check at the node settles them.
const LAST_MODEL_BIT: u16 = 62;

pub(crate) fn model_bit(model: Option<GpuModelId>) -> u64 {
    match model {
        None => CPU_NODE_BIT,
        Some(m) => 1 << m.0.min(LAST_MODEL_BIT),
    }
}

/// The GPU models a request accepts, as ids of one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSet {
    /// A coarse bit set for pruning the placement index.
    pub(crate) mask: u64,
    /// Exact set, `None` meaning any model.
    allowed: Option<Vec<bool>>,
}

impl ModelSet {
    pub fn any() -> Self {
        ModelSet { mask: !CPU_NODE_BIT, allowed: None }
    }

    pub fn allows(&self, model: GpuModelId) -> bool {
        match &self.allowed {
            None => true,
            Some(v) => v.get(model.0 as usize).copied().unwrap_or(false),
        }
    }

    /// True if no model of the fleet is accepted: such a request can never be placed.
    pub fn is_empty(&self) -> bool {
        self.mask & !CPU_NODE_BIT == 0
    }
}

/// What one gang member (or a single-node workload) needs from a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpu: GpuRequest,
    pub models: ModelSet,
    /// Features each member's node must offer ([`crate::ClusterState::set_node_features`]), as
    /// bits whose meaning is the caller's; 0 for none. Checked when work is placed, not when a
    /// placement is restored or checked.
    pub node_features: u64,
}

impl Demand {
    /// Resolves `workload`'s request against `fleet`.
    pub fn of(workload: &Workload, fleet: &Fleet) -> Demand {
        let models = if workload.models.is_any() {
            ModelSet::any()
        } else {
            let allowed: Vec<bool> = fleet.gpu_models.iter().map(|m| workload.models.accepts(m)).collect();
            let mask = allowed
                .iter()
                .enumerate()
                .filter(|(_, ok)| **ok)
                .fold(0u64, |acc, (i, _)| acc | model_bit(Some(GpuModelId(i as u16))));
            ModelSet { mask, allowed: Some(allowed) }
        };
        Demand {
            cpu_milli: workload.cpu_milli,
            memory_mib: workload.memory_mib,
            gpu: workload.gpu,
            models,
            node_features: 0,
        }
    }

    /// Whole GPUs each member needs on its node (0 for CPU-only and fractional requests).
    pub fn whole_gpus_per_member(&self) -> u32 {
        match self.gpu {
            GpuRequest::Gang { gpus_per_node, .. } => gpus_per_node,
            _ => 0,
        }
    }

    /// Share of one GPU a fractional request needs (0 otherwise).
    pub fn fraction_milli(&self) -> u32 {
        match self.gpu {
            GpuRequest::Fraction { gpu_milli } => gpu_milli,
            _ => 0,
        }
    }

    pub fn members(&self) -> u32 {
        self.gpu.nodes()
    }

    /// Node mask this request may land on: CPU-only work goes anywhere.
    pub(crate) fn node_mask(&self) -> u64 {
        match self.gpu {
            GpuRequest::None => u64::MAX,
            _ => self.models.mask,
        }
    }
}
