//! Fleets sized for a target offered load, so a trace recorded on one cluster can be replayed on
//! a fleet that is as busy as the operator wants to study.

use model::{Cooling, Fleet, FleetBuilder, NodeSpec, Workload};

/// The shape of generated fleets.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadFleetShape {
    pub gpus_per_node: u8,
    pub gpu_model: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub nodes_per_rack: u32,
    pub racks_per_leaf: u32,
}

impl Default for LoadFleetShape {
    /// 8-GPU HGX-class nodes, four to a rack, four racks (128 GPUs) under each leaf switch.
    fn default() -> Self {
        LoadFleetShape {
            gpus_per_node: 8,
            gpu_model: "H200".into(),
            cpu_milli: 224_000,
            memory_mib: 2 * 1024 * 1024,
            nodes_per_rack: 4,
            racks_per_leaf: 4,
        }
    }
}

/// GPU-seconds the workloads ask for divided by the GPU-seconds `gpus` offer over the span from
/// the first to the last submission. Workloads without a duration do not count.
pub fn offered_load(workloads: &[Workload], gpus: u64) -> f64 {
    let span = submit_span_s(workloads);
    if gpus == 0 || span <= 0.0 {
        return 0.0;
    }
    let asked: f64 = workloads.iter().filter_map(Workload::gpu_seconds).sum();
    asked / (gpus as f64 * span)
}

fn submit_span_s(workloads: &[Workload]) -> f64 {
    let first = workloads.iter().map(|w| w.submit_time).min();
    let last = workloads.iter().map(|w| w.submit_time).max();
    match (first, last) {
        (Some(a), Some(b)) => (b - a).as_secs_f64(),
        _ => 0.0,
    }
}

/// A fleet of `shape` nodes sized so that [`offered_load`] of `workloads` on it is `load` (as
/// close as whole nodes allow), and never smaller than the largest job.
pub fn fleet_for_load(workloads: &[Workload], load: f64, shape: &LoadFleetShape) -> Fleet {
    let per_node = u64::from(shape.gpus_per_node.max(1));
    let span = submit_span_s(workloads);
    let asked: f64 = workloads.iter().filter_map(Workload::gpu_seconds).sum();
    let want_gpus = if load > 0.0 && span > 0.0 { (asked / (load * span)).round() as u64 } else { 0 };
    let largest = workloads.iter().map(|w| w.gpu.total_gpus().ceil() as u64).max().unwrap_or(0);
    let nodes = want_gpus.max(largest).div_ceil(per_node).max(1);

    let mut b = FleetBuilder::new(format!("load-{load}"));
    let site = b.add_site("site-1", Cooling::Air, None);
    let hall = b.add_hall(site, "hall-1", None);
    let per_rack = u64::from(shape.nodes_per_rack.max(1));
    let racks_per_leaf = u64::from(shape.racks_per_leaf.max(1));
    let mut leaf = 0;
    let mut rack = None;
    for n in 0..nodes {
        if n % per_rack == 0 {
            let r = n / per_rack;
            if r % racks_per_leaf == 0 {
                leaf = b.new_leaf_switch();
            }
            rack = Some(b.add_rack(hall, format!("r{:04}", r + 1), None));
        }
        if let Some(rack) = rack {
            b.add_node(
                rack,
                NodeSpec {
                    name: format!("node-{:05}", n + 1),
                    cpu_milli: shape.cpu_milli,
                    memory_mib: shape.memory_mib,
                    gpu_count: shape.gpus_per_node,
                    gpu_model: Some(shape.gpu_model.clone()),
                    nvlink_domain: None,
                    leaf_switch: Some(leaf),
                },
            );
        }
    }
    b.build()
}
