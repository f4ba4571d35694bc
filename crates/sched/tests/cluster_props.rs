//! Property tests of the scheduler's invariants over random fleets and job streams: no GPU
//! over-committed (fractions included), gangs all-or-nothing on distinct nodes, constraints kept,
//! a placer never refuses a request that some node set could take, and the sums kept per group
//! of nodes follow every change.

mod common;

use common::fleet;
use model::{GpuRequest, ModelFilter, NodeId, SimTime, Workload};
use proptest::prelude::*;
use sched::{BestFit, ClusterState, Demand, FirstFit, Placer, ScanFirstFit};

const MODELS: [&str; 3] = ["H200", "T4", "V100M32"];

#[derive(Clone, Debug)]
enum Op {
    Submit { gpu: GpuRequest, cpu: u64, model: Option<usize> },
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let gpu = prop_oneof![
        Just(GpuRequest::None),
        (1u32..1000).prop_map(|m| GpuRequest::Fraction { gpu_milli: m }),
        (1u32..=3, 1u32..=8).prop_map(|(n, g)| GpuRequest::Gang { nodes: n, gpus_per_node: g }),
    ];
    prop_oneof![
        3 => (gpu, 0u64..40_000, prop::option::of(0usize..3)).prop_map(|(gpu, cpu, model)| Op::Submit { gpu, cpu, model }),
        1 => (0usize..64).prop_map(Op::Release),
    ]
}

fn nodes() -> impl Strategy<Value = Vec<(u8, usize)>> {
    prop::collection::vec((prop_oneof![Just(0u8), Just(1), Just(2), Just(4), Just(8)], 0usize..3), 1..12)
}

/// Brute force: can `demand` be placed right now on some set of distinct nodes?
fn fits_somewhere(cluster: &ClusterState, demand: &Demand) -> bool {
    let fitting = (0..cluster.node_count() as u32).filter(|&n| cluster.member_fits(NodeId(n), demand)).count();
    fitting >= demand.members() as usize
}

fn run(placer: &mut dyn Placer, nodes: &[(u8, usize)], ops: &[Op]) -> Result<(), TestCaseError> {
    let spec: Vec<(u8, &str)> = nodes.iter().map(|&(g, m)| (g, MODELS[m])).collect();
    let mut cluster = ClusterState::new(fleet(&spec));
    let mut running = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        // Part way through, the nodes are grouped: the sums start from what is allocated and
        // follow every change after (`verify` recounts them).
        if i == ops.len() / 3 {
            let groups: Vec<u32> = (0..cluster.node_count() as u32).map(|n| n % 3).collect();
            cluster.set_node_groups(groups.into(), 3);
        }
        match op {
            Op::Submit { gpu, cpu, model } => {
                let mut w = Workload::gpu_job(i as u32, SimTime::ZERO, *gpu, None);
                w.cpu_milli = *cpu;
                w.memory_mib = 1024;
                if let Some(m) = model {
                    w.models = ModelFilter::parse_list(MODELS[*m]);
                }
                let demand = Demand::of(&w, cluster.fleet());
                let possible = fits_somewhere(&cluster, &demand);
                if placer.name() == "first-fit" {
                    // The index must find exactly what a scan of every node finds.
                    prop_assert_eq!(placer.place(&cluster, &demand), ScanFirstFit.place(&cluster, &demand));
                }
                match placer.place(&cluster, &demand) {
                    Some(p) => {
                        prop_assert_eq!(p.members.len(), demand.members() as usize);
                        prop_assert!(cluster.allocate(w.id, &demand, p).is_ok());
                        running.push(w.id);
                    }
                    None => prop_assert!(!possible, "{} refused {:?} that fits", placer.name(), demand),
                }
            }
            Op::Release(k) if !running.is_empty() => {
                let id = running.swap_remove(k % running.len());
                prop_assert!(cluster.release(id).is_ok());
            }
            Op::Release(_) => {}
        }
        prop_assert_eq!(cluster.verify(), Ok(()));
    }
    let total: u64 = running.iter().map(|id| cluster.allocation(*id).map_or(0, |p| p.gpu_milli())).sum();
    prop_assert_eq!(total, cluster.allocated_gpu_milli());
    prop_assert_eq!(cluster.group_allocated_milli().iter().sum::<u64>(), cluster.allocated_gpu_milli());
    prop_assert!(cluster.allocated_gpu_milli() <= cluster.total_gpu_milli());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn first_fit_keeps_the_invariants(nodes in nodes(), ops in prop::collection::vec(op(), 1..80)) {
        run(&mut FirstFit, &nodes, &ops)?;
    }

    #[test]
    fn best_fit_keeps_the_invariants(nodes in nodes(), ops in prop::collection::vec(op(), 1..80)) {
        run(&mut BestFit, &nodes, &ops)?;
    }
}
