//! The power guard: admission within the cap, per-job GPU caps shared out as the mode says (even,
//! oldest first, widest first, the policy's lowest-ranked first), host caps, undone starts.

mod common;

use common::{fleet, job, started};
use model::{GpuRequest, SimTime};
use sched::power::{CapShare, NodeWatts, PowerBudget, PowerCapped, PowerMode, SiteBudget};
use sched::{ClusterState, Decision, Demand, Fifo, FirstFit, Policy, Queue};

/// Two 8-GPU nodes; each allocated GPU adds 1,000 W at full power, 700 W of it the GPU's board.
fn budget(cap_watts: f64, mode: PowerMode) -> PowerBudget {
    let node = NodeWatts { site: 0, full_watts_per_gpu: 1000.0, board_watts_per_gpu: 700.0, ..NodeWatts::default() };
    PowerBudget { sites: vec![SiteBudget { cap_watts, base_watts: 1000.0 }], nodes: vec![node; 2], mode }
}

/// As [`budget`], with nodes whose typical work draws `free_cap` of the board limit and whose
/// hosts give back `host_cut` watts per GPU when capped.
fn budget_with(cap_watts: f64, mode: PowerMode, free_cap: f64, host_cut: f64) -> PowerBudget {
    let mut b = budget(cap_watts, mode);
    for n in &mut b.nodes {
        n.free_cap = free_cap;
        n.host_cut_watts_per_gpu = host_cut;
    }
    b
}

/// A queue of `jobs` given as (id, whole GPUs on one 8-GPU node).
fn queue_of(cluster: &ClusterState, jobs: &[(u32, u32)]) -> Queue {
    let jobs: Vec<(u32, GpuRequest)> = jobs.iter().map(|&(id, gpus)| (id, GpuRequest::whole_gpus(gpus, 8))).collect();
    common::queue_of(cluster, 0, &jobs)
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
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::OldestFirst, cap_hosts: false };
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
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::Even, cap_hosts: false };
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
    let gpu = NodeWatts { site: 0, full_watts_per_gpu: 1000.0, board_watts_per_gpu: 700.0, ..NodeWatts::default() };
    let cpu = NodeWatts::default();
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

#[test]
fn widest_first_takes_every_job_to_its_free_cap_then_cuts_the_widest() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let mut cluster = ClusterState::new(f);
    // An 8-GPU job and two 1-GPU jobs: 1,000 W + 10 x 1,000 W = 11,000 W at full power, cap
    // 9,000 W. Down to the 0.8 their work draws anyway, the ten GPUs give back 10 x 140 W; the
    // other 600 W come from the 8-GPU job alone: 600 / (8 x 700) below 0.8.
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::WidestFirst, cap_hosts: false };
    let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), budget_with(9_000.0, mode, 0.8, 0.0));
    let q = queue_of(&cluster, &[(0, 8), (1, 1), (2, 1)]);
    let d = p.schedule(SimTime::ZERO, &q, &mut cluster);
    assert_eq!(started(&d), [0, 1, 2]);
    let wide = p.guard.job_cap(model::WorkloadId(0));
    assert!((wide - (0.8 - 600.0 / 5600.0)).abs() < 1e-9, "{wide}");
    for id in [1, 2] {
        let cap = p.guard.job_cap(model::WorkloadId(id));
        assert!((cap - 0.8).abs() < 1e-9, "job {id}: {cap}");
    }
    assert!((p.guard.site_worst_watts(&cluster, 0) - 9_000.0).abs() < 1e-6);
}

/// A policy that ranks its running jobs as told: `order` is given up first.
struct Ranked {
    inner: Fifo,
    order: Vec<model::WorkloadId>,
}

impl Policy for Ranked {
    fn name(&self) -> &str {
        "ranked"
    }
    fn schedule(&mut self, now: SimTime, queue: &Queue, cluster: &mut ClusterState) -> Vec<Decision> {
        self.inner.schedule(now, queue, cluster)
    }
    fn shed_order(&self, _now: SimTime) -> Vec<model::WorkloadId> {
        self.order.clone()
    }
}

#[test]
fn lowest_rank_first_cuts_the_job_the_policy_gives_up_first() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    let mut cluster = ClusterState::new(f);
    // Two 8-GPU jobs, 2,000 W over the cap, no free step (work at the board limit): the policy
    // ranks job 0 lowest, so job 0 alone gives the 2,000 W, though it is neither newer nor wider.
    let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::LowestRankFirst, cap_hosts: false };
    let policy = Ranked { inner: Fifo::new("fifo", Box::new(FirstFit)), order: vec![model::WorkloadId(0)] };
    let mut p = PowerCapped::new(policy, budget(15_000.0, mode));
    let q = queue_of(&cluster, &[(0, 8), (1, 8)]);
    let d = p.schedule(SimTime::ZERO, &q, &mut cluster);
    assert_eq!(started(&d), [0, 1]);
    let low = p.guard.job_cap(model::WorkloadId(0));
    assert!((low - (1.0 - 2000.0 / 5600.0)).abs() < 1e-9, "{low}");
    assert_eq!(p.guard.job_cap(model::WorkloadId(1)), 1.0);
    // Ranked the other way round, the other job is cut.
    p.inner.order = vec![model::WorkloadId(1), model::WorkloadId(0)];
    p.schedule(SimTime(1000), &queue_of(&cluster, &[]), &mut cluster);
    assert_eq!(p.guard.job_cap(model::WorkloadId(0)), 1.0);
    assert!((p.guard.job_cap(model::WorkloadId(1)) - low).abs() < 1e-9);
}

#[test]
fn host_caps_come_first_and_only_while_the_site_needs_them() {
    let f = fleet(&[(8, "H200"), (8, "H200")]);
    // One 8-GPU job: 9,000 W at full power against a cap of 8,500 W. Capped hosts give back
    // 8 x 100 W, so the site fits with GPUs uncapped.
    let run = |cap_hosts: bool| {
        let mut cluster = ClusterState::new(f.clone());
        let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::WidestFirst, cap_hosts };
        let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), budget_with(8_500.0, mode, 1.0, 100.0));
        let d = p.schedule(SimTime::ZERO, &queue_of(&cluster, &[(0, 8)]), &mut cluster);
        assert_eq!(started(&d), [0]);
        assert!(p.guard.site_worst_watts(&cluster, 0) <= 8_500.0 + 1e-6);
        (p, cluster)
    };
    let (mut p, mut cluster) = run(true);
    assert_eq!(p.guard.hosts_capped(), [true]);
    assert_eq!(p.guard.job_cap(model::WorkloadId(0)), 1.0);
    // The job ends: nothing to shed, hosts back to full power.
    cluster.release(model::WorkloadId(0)).unwrap();
    p.schedule(SimTime(1000), &queue_of(&cluster, &[]), &mut cluster);
    assert_eq!(p.guard.hosts_capped(), [false]);
    // Without host caps the GPUs give the 500 W: 500 / (8 x 700) off their board limit.
    let (p, _) = run(false);
    assert_eq!(p.guard.hosts_capped(), [false]);
    let cap = p.guard.job_cap(model::WorkloadId(0));
    assert!((cap - (1.0 - 500.0 / 5600.0)).abs() < 1e-9, "{cap}");
}

/// Jobs that start and end in any order, ended on the cluster between rounds (as the live server
/// does): after every round each site's worst case fits its cap, and the sums the cluster keeps
/// for the guard agree with its allocations.
mod props {
    use super::common::{fleet, job};
    use model::{GpuRequest, SimTime, WorkloadId};
    use proptest::prelude::*;
    use sched::power::{CapShare, NodeWatts, PowerBudget, PowerCapped, PowerMode, SiteBudget};
    use sched::{ClusterState, Decision, Demand, Fifo, FirstFit, Policy, Queue, QueuedJob};
    use std::sync::Arc;

    #[derive(Clone, Debug)]
    enum Op {
        Submit(GpuRequest),
        End(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        let gpu = prop_oneof![
            (100u32..1000).prop_map(|m| GpuRequest::Fraction { gpu_milli: m }),
            (1u32..=8).prop_map(|g| GpuRequest::whole_gpus(g, 8)),
            (2u32..=3).prop_map(|n| GpuRequest::Gang { nodes: n, gpus_per_node: 4 }),
        ];
        prop_oneof![3 => gpu.prop_map(Op::Submit), 2 => (0usize..32).prop_map(Op::End)]
    }

    fn run(mode: PowerMode, caps: (f64, f64), ops: &[Op]) -> Result<(), TestCaseError> {
        let f = fleet(&[(8, "H200"); 6]);
        // Even nodes feed site 0, odd ones site 1, with other figures.
        let nodes = (0..6)
            .map(|i| {
                if i % 2 == 0 {
                    NodeWatts {
                        site: 0,
                        full_watts_per_gpu: 1000.0,
                        board_watts_per_gpu: 700.0,
                        ..NodeWatts::default()
                    }
                } else {
                    NodeWatts { site: 1, full_watts_per_gpu: 800.0, board_watts_per_gpu: 500.0, ..NodeWatts::default() }
                }
            })
            .collect();
        let sites = vec![
            SiteBudget { cap_watts: caps.0, base_watts: 500.0 },
            SiteBudget { cap_watts: caps.1, base_watts: 500.0 },
        ];
        let mut p = PowerCapped::new(Fifo::new("fifo", Box::new(FirstFit)), PowerBudget { sites, nodes, mode });
        let mut cluster = ClusterState::new(f);
        let mut waiting: Vec<(u32, GpuRequest)> = Vec::new();
        let mut running: Vec<u32> = Vec::new();
        for (k, op) in ops.iter().enumerate() {
            match op {
                Op::Submit(gpu) => waiting.push((k as u32, *gpu)),
                Op::End(i) if !running.is_empty() => {
                    let id = running.swap_remove(i % running.len());
                    prop_assert!(cluster.release(WorkloadId(id)).is_ok());
                }
                Op::End(_) => {}
            }
            let mut q = Queue::with_generation(k as u64);
            for (id, gpu) in &waiting {
                let w = Arc::new(job(*id, *gpu));
                let d = Demand::of(&w, cluster.fleet());
                q.push(QueuedJob::new(w, d, SimTime::ZERO));
            }
            let decisions = p.schedule(SimTime(k as u64 * 1000), &q, &mut cluster);
            for d in decisions {
                if let Decision::Start { job, .. } = d {
                    waiting.retain(|(id, _)| *id != job.0);
                    running.push(job.0);
                }
            }
            prop_assert_eq!(cluster.verify(), Ok(()));
            prop_assert_eq!(cluster.running_count(), running.len());
            for (s, cap) in [caps.0, caps.1].into_iter().enumerate() {
                let worst = p.guard.site_worst_watts(&cluster, s);
                prop_assert!(worst <= cap + 1e-6, "site {s}: {worst} W over its {cap} W cap");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn admission_holds_every_site_under_its_cap(
            caps in (5_000.0f64..40_000.0, 5_000.0f64..30_000.0),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            run(PowerMode::Admission, caps, &ops)?;
        }

        #[test]
        fn dynamic_caps_hold_every_site_under_its_cap(
            caps in (5_000.0f64..40_000.0, 5_000.0f64..30_000.0),
            ops in prop::collection::vec(op(), 1..60),
        ) {
            let mode = PowerMode::Dynamic { min_cap: 0.5, share: CapShare::WidestFirst, cap_hosts: false };
            run(mode, caps, &ops)?;
        }
    }
}
