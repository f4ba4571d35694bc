//! The CPUs and memory a job holds on each of its nodes: what it asked for, or a default that
//! follows its GPUs (as Slurm's `DefCpuPerGPU` and `DefMemPerGPU`). Every run holds some, so
//! CPU-only work is bounded by the nodes' CPUs like GPU work by their GPUs, and the node's agent
//! confines the run to them.

use crate::error::ApiError;
use model::Fleet;

/// CPU-only work that does not say: one CPU and 2 GiB.
const CPU_ONLY_CPU_MILLI: u64 = 1_000;
const CPU_ONLY_MEMORY_MIB: u64 = 2_048;
/// The least a run may hold: a tenth of a CPU, 64 MiB.
const MIN_CPU_MILLI: u64 = 100;
const MIN_MEMORY_MIB: u64 = 64;

/// Defaults per GPU and the largest node's CPUs and memory, read once from the fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResourceDefaults {
    /// Per GPU: the smallest node share of the fleet, so a node's GPUs all fit beside their
    /// defaults on any node.
    pub cpu_milli_per_gpu: u64,
    pub memory_mib_per_gpu: u64,
    pub max_cpu_milli: u64,
    pub max_memory_mib: u64,
}

impl ResourceDefaults {
    pub fn of(fleet: &Fleet) -> ResourceDefaults {
        let gpu_nodes = fleet.nodes.iter().filter(|n| n.gpu_count > 0);
        let per_gpu =
            |f: fn(&model::Node) -> u64| gpu_nodes.clone().map(|n| f(n) / u64::from(n.gpu_count)).min().unwrap_or(0);
        ResourceDefaults {
            cpu_milli_per_gpu: per_gpu(|n| n.cpu_milli),
            memory_mib_per_gpu: per_gpu(|n| n.memory_mib),
            max_cpu_milli: fleet.nodes.iter().map(|n| n.cpu_milli).max().unwrap_or(0),
            max_memory_mib: fleet.nodes.iter().map(|n| n.memory_mib).max().unwrap_or(0),
        }
    }

    /// The CPUs (thousandths) and memory (MiB) `spec` holds on each node.
    pub fn resolve(&self, spec: &api::JobSpec) -> Result<(u64, u64), ApiError> {
        // GPUs' worth: whole GPUs per node, or the share of one.
        let gpu_milli = match spec.gpu_milli {
            Some(m) => u64::from(m),
            None => u64::from(spec.gpus_per_node) * 1000,
        };
        let default = |per_gpu: u64, cpu_only: u64, max: u64| {
            if gpu_milli == 0 { cpu_only.min(max) } else { (per_gpu * gpu_milli / 1000).min(max) }
        };
        let cpu = match spec.cpu_milli {
            Some(c) => check("cpu_milli", c, MIN_CPU_MILLI, self.max_cpu_milli, "thousandths of a CPU")?,
            None => default(self.cpu_milli_per_gpu, CPU_ONLY_CPU_MILLI, self.max_cpu_milli),
        };
        let memory = match spec.memory_mib {
            Some(m) => check("memory_mib", m, MIN_MEMORY_MIB, self.max_memory_mib, "MiB")?,
            None => default(self.memory_mib_per_gpu, CPU_ONLY_MEMORY_MIB, self.max_memory_mib),
        };
        Ok((cpu, memory))
    }
}

fn check(field: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<u64, ApiError> {
    if value < min {
        return Err(ApiError::invalid(field, format!("{value} {unit} is too little: at least {min}")));
    }
    if value > max {
        return Err(ApiError::invalid(field, format!("{value} {unit} on one node; the largest node has {max}")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ResourceDefaults {
        ResourceDefaults {
            cpu_milli_per_gpu: 28_000,
            memory_mib_per_gpu: 262_144,
            max_cpu_milli: 224_000,
            max_memory_mib: 2_097_152,
        }
    }

    #[test]
    fn defaults_follow_the_gpus() {
        let d = defaults();
        let gpus = |n| api::JobSpec { gpus_per_node: n, ..api::JobSpec::default() };
        assert_eq!(d.resolve(&gpus(8)).unwrap(), (224_000, 2_097_152));
        assert_eq!(d.resolve(&gpus(2)).unwrap(), (56_000, 524_288));
        assert_eq!(d.resolve(&gpus(0)).unwrap(), (1_000, 2_048));
        let share = api::JobSpec { gpu_milli: Some(250), ..api::JobSpec::default() };
        assert_eq!(d.resolve(&share).unwrap(), (7_000, 65_536));
    }

    #[test]
    fn what_is_asked_is_kept_within_a_node() {
        let d = defaults();
        let ask = |cpu, mem| api::JobSpec { cpu_milli: cpu, memory_mib: mem, ..api::JobSpec::default() };
        assert_eq!(d.resolve(&ask(Some(4_000), Some(8_192))).unwrap(), (4_000, 8_192));
        let e = d.resolve(&ask(Some(500_000), None)).unwrap_err().to_string();
        assert!(e.contains("largest node has 224000"), "{e}");
        assert!(d.resolve(&ask(Some(0), None)).is_err());
        assert!(d.resolve(&ask(None, Some(1))).is_err());
    }

    #[test]
    fn a_fleet_gives_its_smallest_share_per_gpu() {
        let node = |name: &str, cpu_milli, memory_mib, gpu_count| model::NodeSpec {
            name: name.into(),
            cpu_milli,
            memory_mib,
            gpu_count,
            gpu_model: Some("H200".into()),
            nvlink_domain: None,
            leaf_switch: None,
        };
        let fleet = model::fleet::flat_fleet(
            "t",
            [node("big", 224_000, 2_097_152, 8), node("small", 64_000, 524_288, 4), node("cpu", 32_000, 65_536, 0)],
            4,
        );
        let d = ResourceDefaults::of(&fleet);
        assert_eq!((d.cpu_milli_per_gpu, d.memory_mib_per_gpu), (16_000, 131_072));
        assert_eq!((d.max_cpu_milli, d.max_memory_mib), (224_000, 2_097_152));
        for n in &fleet.nodes {
            if n.gpu_count > 0 {
                assert!(d.cpu_milli_per_gpu * u64::from(n.gpu_count) <= n.cpu_milli);
                assert!(d.memory_mib_per_gpu * u64::from(n.gpu_count) <= n.memory_mib);
            }
        }
    }
}
