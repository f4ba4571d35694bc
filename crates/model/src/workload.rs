//! Workloads: what a tenant asks the fleet for. Training jobs, GPU instances, inference replicas and
//! trace records are all a [`Workload`]; the scheduler sees only the request.

use crate::gpu::GpuModel;
use crate::units::{GPU_MILLI_PER_GPU, SimDuration, SimTime};
use serde::{Deserialize, Serialize};

/// Index of a workload in its trace or queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkloadId(pub u32);

/// A tenant (customer, team, Philly virtual cluster), by index in the trace's tenant table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct TenantId(pub u32);

/// How many GPUs a workload wants, and in what shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GpuRequest {
    /// CPU-only.
    None,
    /// A share of one GPU, `1..1000` thousandths (GPU sharing, as in Alibaba's openb trace).
    Fraction { gpu_milli: u32 },
    /// A gang: `nodes` members, each with `gpus_per_node` whole GPUs on one node. All start
    /// together or none does.
    Gang { nodes: u32, gpus_per_node: u32 },
}

impl GpuRequest {
    /// A request for `gpus` whole GPUs, shaped as a gang on nodes of `node_gpus` GPUs: on one node
    /// when it fits, otherwise on as few nodes as split it evenly (12 GPUs on 8-GPU nodes: 2 x 6).
    pub fn whole_gpus(gpus: u32, node_gpus: u32) -> GpuRequest {
        let node_gpus = node_gpus.max(1);
        if gpus == 0 {
            return GpuRequest::None;
        }
        if gpus <= node_gpus {
            return GpuRequest::Gang { nodes: 1, gpus_per_node: gpus };
        }
        let min_nodes = gpus.div_ceil(node_gpus);
        for nodes in min_nodes..=gpus {
            if gpus.is_multiple_of(nodes) {
                return GpuRequest::Gang { nodes, gpus_per_node: gpus / nodes };
            }
        }
        GpuRequest::Gang { nodes: gpus, gpus_per_node: 1 }
    }

    /// A fractional share; 1000 or more becomes one whole GPU, 0 becomes CPU-only.
    pub fn fraction(gpu_milli: u32) -> GpuRequest {
        match gpu_milli {
            0 => GpuRequest::None,
            m if m >= GPU_MILLI_PER_GPU => GpuRequest::Gang { nodes: 1, gpus_per_node: 1 },
            m => GpuRequest::Fraction { gpu_milli: m },
        }
    }

    /// Total GPU demand in `gpu_milli`.
    pub fn total_gpu_milli(&self) -> u64 {
        match *self {
            GpuRequest::None => 0,
            GpuRequest::Fraction { gpu_milli } => u64::from(gpu_milli),
            GpuRequest::Gang { nodes, gpus_per_node } => {
                u64::from(nodes) * u64::from(gpus_per_node) * u64::from(GPU_MILLI_PER_GPU)
            }
        }
    }

    /// Total GPUs, fractions counted as their share.
    pub fn total_gpus(&self) -> f64 {
        self.total_gpu_milli() as f64 / f64::from(GPU_MILLI_PER_GPU)
    }

    /// Number of nodes the request spans (1 for CPU-only and fractional requests).
    pub fn nodes(&self) -> u32 {
        match *self {
            GpuRequest::Gang { nodes, .. } => nodes.max(1),
            _ => 1,
        }
    }
}

/// Which GPU models a workload accepts. Empty means any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ModelFilter {
    /// Model or family names (`H200`, `V100`, `V100M32`), matched as [`GpuModel::answers_to`] does.
    pub allowed: Vec<String>,
}

impl ModelFilter {
    pub fn any() -> Self {
        ModelFilter::default()
    }

    /// Parses a `|`- or `,`-separated list (`A10|T4|V100M32`); blanks and duplicates are dropped.
    pub fn parse_list(list: &str) -> Self {
        let mut allowed: Vec<String> = Vec::new();
        for name in list.split(['|', ',']).map(str::trim).filter(|s| !s.is_empty()) {
            if !allowed.iter().any(|a| a.eq_ignore_ascii_case(name)) {
                allowed.push(name.to_string());
            }
        }
        ModelFilter { allowed }
    }

    pub fn is_any(&self) -> bool {
        self.allowed.is_empty()
    }

    pub fn accepts(&self, model: &GpuModel) -> bool {
        self.is_any() || self.allowed.iter().any(|a| model.answers_to(a))
    }
}

/// A unit of work a tenant submits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub id: WorkloadId,
    pub name: String,
    pub tenant: TenantId,
    /// Higher runs first under priority-aware policies.
    pub priority: i32,
    pub submit_time: SimTime,
    /// CPU per gang member (per node), in thousandths of a core.
    pub cpu_milli: u64,
    /// Memory per gang member (per node), in MiB.
    pub memory_mib: u64,
    pub gpu: GpuRequest,
    pub models: ModelFilter,
    /// How long the work runs once started, known only in traces. Only clairvoyant policies (and
    /// the simulator, to schedule the completion) may read it.
    pub duration: Option<SimDuration>,
    /// The tenant lets drome start this work later, in hours of cheaper, cleaner power or higher
    /// heat demand (batch training, evaluation sweeps). Only energy-aware admission reads it.
    #[serde(default)]
    pub deferrable: bool,
}

impl Workload {
    /// A workload with no CPU, memory or model constraints: the shape of a trace row that only
    /// records GPUs.
    pub fn gpu_job(id: u32, submit_time: SimTime, gpu: GpuRequest, duration: Option<SimDuration>) -> Workload {
        Workload {
            id: WorkloadId(id),
            name: format!("job-{id}"),
            tenant: TenantId(0),
            priority: 0,
            submit_time,
            cpu_milli: 0,
            memory_mib: 0,
            gpu,
            models: ModelFilter::any(),
            duration,
            deferrable: false,
        }
    }

    /// GPU-seconds this workload asks for, if its duration is known.
    pub fn gpu_seconds(&self) -> Option<f64> {
        self.duration.map(|d| d.as_secs_f64() * self.gpu.total_gpus())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gangs_split_evenly_over_few_nodes() {
        let shape = |g| match GpuRequest::whole_gpus(g, 8) {
            GpuRequest::Gang { nodes, gpus_per_node } => (nodes, gpus_per_node),
            other => panic!("{other:?}"),
        };
        assert_eq!(shape(1), (1, 1));
        assert_eq!(shape(8), (1, 8));
        assert_eq!(shape(12), (2, 6));
        assert_eq!(shape(16), (2, 8));
        assert_eq!(shape(24), (3, 8));
        assert_eq!(shape(128), (16, 8));
        assert_eq!(shape(13), (13, 1));
        assert_eq!(GpuRequest::whole_gpus(0, 8), GpuRequest::None);
    }

    #[test]
    fn fractions_normalise() {
        assert_eq!(GpuRequest::fraction(0), GpuRequest::None);
        assert_eq!(GpuRequest::fraction(1000), GpuRequest::Gang { nodes: 1, gpus_per_node: 1 });
        assert_eq!(GpuRequest::fraction(460).total_gpu_milli(), 460);
    }

    #[test]
    fn model_filter_matches_names_and_families() {
        let f = ModelFilter::parse_list("V100M16| V100M32|V100M32|");
        assert_eq!(f.allowed, vec!["V100M16", "V100M32"]);
        assert!(f.accepts(&GpuModel::from_name("v100m32")));
        assert!(!f.accepts(&GpuModel::from_name("T4")));
        assert!(ModelFilter::parse_list("V100").accepts(&GpuModel::from_name("V100M16")));
        assert!(ModelFilter::any().accepts(&GpuModel::from_name("G2")));
    }
}
