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

/// Hides every free GPU share of `node` behind placeholder allocations, as the power guard
/// hid them before it withheld them: whole GPUs in one, each share of a GPU in one of its own.
fn hide_with_placeholders(cluster: &mut ClusterState, node: NodeId, next_id: &mut u32) {
    use sched::{GpuShare, MemberPlacement, Placement};
    let free: Vec<GpuShare> = cluster
        .gpu_free_milli(node)
        .iter()
        .enumerate()
        .filter(|(_, m)| **m > 0)
        .map(|(index, &milli)| GpuShare { index: index as u8, milli })
        .collect();
    let (whole, shares): (Vec<GpuShare>, Vec<GpuShare>) = free.into_iter().partition(|g| g.milli == 1000);
    let pieces = std::iter::once(whole).filter(|w| !w.is_empty()).chain(shares.into_iter().map(|s| vec![s]));
    for gpus in pieces {
        let gpu = match gpus.as_slice() {
            [one] if one.milli < 1000 => GpuRequest::Fraction { gpu_milli: u32::from(one.milli) },
            _ => GpuRequest::Gang { nodes: 1, gpus_per_node: gpus.len() as u32 },
        };
        let demand = Demand { cpu_milli: 0, memory_mib: 0, gpu, models: sched::ModelSet::any(), node_features: 0 };
        let placement = Placement { members: vec![MemberPlacement { node, cpu_milli: 0, memory_mib: 0, gpus }] };
        cluster.allocate(model::WorkloadId(*next_id), &demand, placement).expect("a placeholder takes free shares");
        *next_id -= 1;
    }
}

/// Withheld GPUs ([`ClusterState::withhold_free_gpus`]) place exactly as placeholder allocations
/// of the same shares do, for every placer and any demand, with work released in between on
/// the hidden nodes; and restoring them leaves the cluster as if nothing had been withheld.
fn withheld_like_placeholders(
    nodes: &[(u8, usize)],
    ops: &[Op],
    hide: &[usize],
    probes: &[Op],
) -> Result<(), TestCaseError> {
    let spec: Vec<(u8, &str)> = nodes.iter().map(|&(g, m)| (g, MODELS[m])).collect();
    let mut cluster = ClusterState::new(fleet(&spec));
    let mut running = Vec::new();
    let demand_of = |i: usize, gpu: &GpuRequest, cpu: u64, model: &Option<usize>, cluster: &ClusterState| {
        let mut w = Workload::gpu_job(i as u32, SimTime::ZERO, *gpu, None);
        w.cpu_milli = cpu;
        w.memory_mib = 1024;
        if let Some(m) = model {
            w.models = ModelFilter::parse_list(MODELS[*m]);
        }
        (w.id, Demand::of(&w, cluster.fleet()))
    };
    for (i, op) in ops.iter().enumerate() {
        if let Op::Submit { gpu, cpu, model } = op {
            let (id, demand) = demand_of(i, gpu, *cpu, model, &cluster);
            if let Some(p) = BestFit.place(&cluster, &demand) {
                cluster.allocate(id, &demand, p).map_err(|e| TestCaseError::fail(e.to_string()))?;
                running.push(id);
            }
        }
    }
    let before = cluster.clone();
    let mut withheld = cluster.clone();
    let mut placeholders = cluster;
    let mut next_id = u32::MAX;
    for &k in hide {
        let node = NodeId((k % withheld.node_count()) as u32);
        withheld.withhold_free_gpus(node);
        if !placeholders.gpu_free_milli(node).iter().all(|&m| m == 0) {
            hide_with_placeholders(&mut placeholders, node, &mut next_id);
        }
    }
    prop_assert_eq!(withheld.verify(), Ok(()));
    prop_assert_eq!(withheld.allocated_gpu_milli(), placeholders.allocated_gpu_milli());
    // Some work on the hidden nodes ends: what it frees is free in both.
    for id in running.iter().step_by(3) {
        prop_assert!(withheld.release(*id).is_ok() && placeholders.release(*id).is_ok());
    }
    for (i, probe) in probes.iter().enumerate() {
        let Op::Submit { gpu, cpu, model } = probe else { continue };
        let (id, demand) = demand_of(1000 + i, gpu, *cpu, model, &withheld);
        let placers: [&mut dyn Placer; 3] = [&mut FirstFit, &mut BestFit, &mut ScanFirstFit];
        for placer in placers {
            let (a, b) = (placer.place(&withheld, &demand), placer.place(&placeholders, &demand));
            prop_assert_eq!(&a, &b, "{} placed {:?} otherwise", placer.name(), demand);
        }
        if let Some(p) = BestFit.place(&withheld, &demand) {
            prop_assert!(withheld.allocate(id, &demand, p.clone()).is_ok());
            prop_assert!(placeholders.allocate(id, &demand, p).is_ok());
        }
        prop_assert_eq!(withheld.verify(), Ok(()));
        for n in 0..withheld.node_count() as u32 {
            prop_assert_eq!(withheld.gpu_free_milli(NodeId(n)), placeholders.gpu_free_milli(NodeId(n)));
        }
    }
    // Given back, the shares are free again and every index is current (`verify`): the same
    // cluster as the placeholders' once they are released.
    withheld.restore_withheld();
    prop_assert_eq!(withheld.verify(), Ok(()));
    for id in (next_id..u32::MAX).map(|i| i + 1) {
        prop_assert!(placeholders.release(model::WorkloadId(id)).is_ok());
    }
    prop_assert_eq!(placeholders.verify(), Ok(()));
    for n in 0..withheld.node_count() as u32 {
        prop_assert_eq!(withheld.gpu_free_milli(NodeId(n)), placeholders.gpu_free_milli(NodeId(n)));
    }
    prop_assert_eq!(withheld.allocated_gpu_milli(), placeholders.allocated_gpu_milli());
    let probed: u64 = (0..probes.len())
        .filter_map(|i| withheld.allocation(model::WorkloadId(1000 + i as u32)))
        .map(|p| p.gpu_milli())
        .sum();
    prop_assert_eq!(
        withheld.allocated_gpu_milli() + released_milli(&before, &running),
        before.allocated_gpu_milli() + probed
    );
    Ok(())
}

/// GPU-thousandths of every third of `running` in `cluster`: what the test released.
fn released_milli(cluster: &ClusterState, running: &[model::WorkloadId]) -> u64 {
    running.iter().step_by(3).filter_map(|id| cluster.allocation(*id)).map(|p| p.gpu_milli()).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn withheld_gpus_place_as_placeholders_do(
        nodes in nodes(),
        ops in prop::collection::vec(op(), 1..60),
        hide in prop::collection::vec(0usize..12, 0..8),
        probes in prop::collection::vec(op(), 1..20),
    ) {
        withheld_like_placeholders(&nodes, &ops, &hide, &probes)?;
    }
}
