//! The power guard: admission within the cap, per-job GPU caps oldest run first, undone starts.

mod common;

use common::{fleet, job};
use model::{GpuRequest, SimTime};
use sched::power::{CapShare, NodeWatts, PowerBudget, PowerCapped, PowerMode, SiteBudget};
use sched::{ClusterState, Decision, Demand, Fifo, FirstFit, Policy, Queue, QueuedJob};
use std::sync::Arc;

/// Two 8-GPU nodes; each allocated GPU adds 1,000 W at full power, 700 W of it the GPU's board.
fn budget(cap_watts: f64, mode: PowerMode) -> PowerBudget {
    let node = NodeWatts { site: 0, full_watts_per_gpu: 1000.0, board_watts_per_gpu: 700.0 };
    PowerBudget { sites: vec![SiteBudget { cap_watts, base_watts: 1000.0 }], nodes: vec![node; 2], mode }
}

fn queue_of(cluster: &ClusterState, jobs: &[(u32, u32)]) -> Queue {
    let mut q = Queue::new();
    for &(id, gpus) in jobs {
        let w = Arc::new(job(id, GpuRequest::whole_gpus(gpus, 8)));
        let d = Demand::of(&w, cluster.fleet());
        q.push(QueuedJob::new(w, d, SimTime::ZERO));
    }
    q
}

fn started(decisions: &[Decision]) -> Vec<u32> {
    decisions.iter().filter_map(|d| if let Decision::Start { job, .. } = d { Some(job.0) } else { None }).collect()
}

#[test]
fn admission_starts_only_what_the_worst_case_fits() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let mut cluster = ClusterState::new(f);
    // 1,000 W base + 8 GPUs x 1,000 W = 9,000 W fits 10,000 W; a second 8-GPU job does not.
    let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), budget(10_000.0, PowerMode::Admission));
    let q = queue_of(&cluster, &[(0, 8), (1, 8)]);
    let d = p.schedule(SimTime::ZERO, &q, &mut cluster);
    assert_eq!(started(&d), [0]);
    assert_eq!(cluster.running_count(), 1);
    cluster.verify().unwrap();
}

#[test]
fn dynamic_mode_caps_the_oldest_run_first_and_only_as_deep_as_needed() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let mut cluster = ClusterState::new(f);
    // Full power for 16 GPUs: 17,000 W. Cap 15,000 W: 2,000 W must go; at the 0.5 floor each
    // 8-GPU job can give back 8 x 350 = 2,800 W, so the older job alone is capped, to
    // 1 - 2000 / 5600 of its board limit.
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::OldestFirst };
    let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), budget(15_000.0, mode));
    let q = queue_of(&cluster, &[(0, 8)]);
    let d = p.schedule(SimTime::ZERO, &q, &mut cluster);
    assert_eq!(started(&d), [0]);
    assert_eq!(p.guard.job_cap(model::WorkloadId(0)), 1.0);
    let q = queue_of(&cluster, &[(1, 8)]);
    let d = p.schedule(SimTime(1000), &q, &mut cluster);
    assert_eq!(started(&d), [1]);
    let old = p.guard.job_cap(model::WorkloadId(0));
    assert!((old - (1.0 - 2000.0 / 5600.0)).abs() < 1e-9, "{old}");
    assert_eq!(p.guard.job_cap(model::WorkloadId(1)), 1.0);
    // The worst case at these caps fits the cap exactly.
    assert!(p.guard.site_worst_watts(&cluster, 0) <= 15_000.0 + 1e-6);
}

#[test]
fn dynamic_mode_with_even_shares_caps_every_run_alike() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let mut cluster = ClusterState::new(f);
    // As above, 2,000 W must go, now from both jobs' 16 x 700 W of board limit alike.
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::Even };
    let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), budget(15_000.0, mode));
    let q = queue_of(&cluster, &[(0, 8)]);
    p.schedule(SimTime::ZERO, &q, &mut cluster);
    let q = queue_of(&cluster, &[(1, 8)]);
    let d = p.schedule(SimTime(1000), &q, &mut cluster);
    assert_eq!(started(&d), [1]);
    let want = 1.0 - 2000.0 / 11_200.0;
    for id in [0, 1] {
        let cap = p.guard.job_cap(model::WorkloadId(id));
        assert!((cap - want).abs() < 1e-9, "job {id}: {cap}");
    }
    assert!((p.guard.site_worst_watts(&cluster, 0) - 15_000.0).abs() < 1e-6);
    // One job ends: the other fits at full power again.
    cluster.release(model::WorkloadId(0)).unwrap();
    let q = queue_of(&cluster, &[]);
    p.schedule(SimTime(2000), &q, &mut cluster);
    assert_eq!(p.guard.job_cap(model::WorkloadId(1)), 1.0);
}

#[test]
fn a_job_no_gpu_node_can_power_is_refused_even_beside_cpu_nodes() {
    // A GPU node and a CPU-only node (no watts per GPU): the CPU node must not make every job
    // look as if it fitted the cap.
    let gpu = NodeWatts { site: 0, full_watts_per_gpu: 1000.0, board_watts_per_gpu: 700.0 };
    let cpu = NodeWatts { site: 0, full_watts_per_gpu: 0.0, board_watts_per_gpu: 0.0 };
    let budget = PowerBudget {
        sites: vec![SiteBudget { cap_watts: 5_500.0, base_watts: 1000.0 }],
        nodes: vec![gpu, cpu],
        mode: PowerMode::Admission,
    };
    let guard = sched::power::PowerGuard::new(budget);
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let demand = |gpus| Demand::of(&job(0, GpuRequest::whole_gpus(gpus, 8)), &f);
    assert!(guard.could_ever_fit(&demand(4)));
    assert!(!guard.could_ever_fit(&demand(8)));
    assert!(guard.could_ever_fit(&Demand::of(&job(1, GpuRequest::None), &f)));
}
