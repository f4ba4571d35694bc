//! Small fleets and workloads shared by the scheduler tests.
#![allow(dead_code)]

use model::{Cooling, Fleet, FleetBuilder, GpuRequest, ModelFilter, NodeSpec, SimTime, Workload};
use sched::{ClusterState, Decision, Demand, Queue, QueuedJob};
use std::sync::Arc;

/// `nodes` given as (gpu count, model); all with 64 cores and 256 GiB, two nodes per rack.
pub fn fleet(nodes: &[(u8, &str)]) -> Arc<Fleet> {
    let mut b = FleetBuilder::new("test");
    let site = b.add_site("s", Cooling::Air, None);
    let hall = b.add_hall(site, "h", None);
    let mut rack = b.add_rack(hall, "r0", None);
    for (i, (gpus, model)) in nodes.iter().enumerate() {
        if i > 0 && i % 2 == 0 {
            rack = b.add_rack(hall, format!("r{}", i / 2), None);
        }
        b.add_node(
            rack,
            NodeSpec {
                name: format!("n{i}"),
                cpu_milli: 64_000,
                memory_mib: 256 * 1024,
                gpu_count: *gpus,
                gpu_model: Some(model.to_string()),
                nvlink_domain: None,
                leaf_switch: None,
            },
        );
    }
    Arc::new(b.build())
}

pub fn job(id: u32, gpu: GpuRequest) -> Workload {
    let mut w = Workload::gpu_job(id, SimTime::ZERO, gpu, None);
    w.cpu_milli = 1000;
    w.memory_mib = 1024;
    w
}

pub fn job_on(id: u32, gpu: GpuRequest, models: &str) -> Workload {
    let mut w = job(id, gpu);
    w.models = ModelFilter::parse_list(models);
    w
}

/// A queue of generation `generation` holding `jobs` (id, request), all queued at time zero.
pub fn queue_of(cluster: &ClusterState, generation: u64, jobs: &[(u32, GpuRequest)]) -> Queue {
    let mut q = Queue::with_generation(generation);
    for (id, gpu) in jobs {
        let w = Arc::new(job(*id, *gpu));
        let d = Demand::of(&w, cluster.fleet());
        q.push(QueuedJob::new(w, d, SimTime::ZERO));
    }
    q
}

/// The ids of the jobs a round started.
pub fn started(decisions: &[Decision]) -> Vec<u32> {
    decisions.iter().filter_map(|d| if let Decision::Start { job, .. } = d { Some(job.0) } else { None }).collect()
}
