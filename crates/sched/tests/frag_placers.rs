//! The fragmentation-aware placers never over-commit a GPU, CPU or memory, and place whatever the
//! empty cluster can take.

use model::{Fleet, FleetBuilder, GpuRequest, ModelFilter, NodeSpec, SimTime, Workload, WorkloadId};
use proptest::prelude::*;
use sched::Placer;
use sched::frag::{DromeFit, DromeParams, FragMeter, HoleWaste, POLICY_NAMES, TypicalPods, placer_by_name};
use sched::{ClusterState, Demand};
use std::sync::Arc;

fn fleet(nodes: &[(u64, u64, u8, Option<&str>)]) -> Arc<Fleet> {
    let mut b = FleetBuilder::new("test");
    let site = b.add_site("s", model::Cooling::Air, None);
    let hall = b.add_hall(site, "h", None);
    let rack = b.add_rack(hall, "r", None);
    for (i, &(cpu, mem, gpus, model)) in nodes.iter().enumerate() {
        b.add_node(
            rack,
            NodeSpec {
                name: format!("n{i}"),
                cpu_milli: cpu,
                memory_mib: mem,
                gpu_count: gpus,
                gpu_model: model.map(str::to_string),
                nvlink_domain: None,
                leaf_switch: None,
            },
        );
    }
    Arc::new(b.build())
}

fn pod(id: u32, cpu: u64, mem: u64, gpu: GpuRequest, models: &str) -> Workload {
    Workload {
        cpu_milli: cpu,
        memory_mib: mem,
        models: ModelFilter::parse_list(models),
        ..Workload::gpu_job(id, SimTime(0), gpu, None)
    }
}

fn run_all(fleet: &Arc<Fleet>, pods: &[Workload]) -> Vec<(String, usize, u64)> {
    let demands: Vec<Demand> = pods.iter().map(|w| Demand::of(w, fleet)).collect();
    let typical = TypicalPods::from_demands(&demands);
    let mut out = Vec::new();
    for name in POLICY_NAMES {
        let mut placer = placer_by_name(name, &typical, 1).expect("known policy");
        let mut cluster = ClusterState::new(Arc::clone(fleet));
        let mut placed = 0;
        for (i, d) in demands.iter().enumerate() {
            if let Some(p) = placer.place(&cluster, d) {
                cluster.allocate(WorkloadId(i as u32), d, p).expect("placers only return valid placements");
                placed += 1;
            }
        }
        cluster.verify().expect("state consistent");
        out.push((name.to_string(), placed, cluster.allocated_gpu_milli()));
    }
    out
}

#[test]
fn every_policy_fills_a_small_cluster_exactly() {
    let f = fleet(&[(32_000, 64_000, 2, Some("T4")), (32_000, 64_000, 0, None)]);
    let pods = vec![
        pod(0, 1000, 1000, GpuRequest::fraction(500), ""),
        pod(1, 1000, 1000, GpuRequest::fraction(500), ""),
        pod(2, 1000, 1000, GpuRequest::fraction(1000), ""),
        pod(3, 1000, 1000, GpuRequest::None, ""),
    ];
    for (name, placed, milli) in run_all(&f, &pods) {
        assert_eq!(placed, 4, "{name}");
        assert_eq!(milli, 2000, "{name}");
    }
}

#[test]
fn model_constraints_are_respected() {
    let f = fleet(&[(32_000, 64_000, 1, Some("T4")), (32_000, 64_000, 1, Some("P100"))]);
    let pods = vec![
        pod(0, 1000, 1000, GpuRequest::fraction(1000), "P100"),
        pod(1, 1000, 1000, GpuRequest::fraction(1000), "P100"),
    ];
    for (name, placed, _) in run_all(&f, &pods) {
        assert_eq!(placed, 1, "{name}");
    }
}

#[test]
fn frag_measure_counts_unusable_slivers() {
    let f = fleet(&[(32_000, 64_000, 2, Some("T4"))]);
    let whole = Demand::of(&pod(0, 1000, 0, GpuRequest::fraction(1000), ""), &f);
    let typical = TypicalPods::from_demands([&whole]);
    let meter = FragMeter::new(&typical.distribution(1.0), &f);
    let t4 = Some(model::GpuModelId(0));
    assert_eq!(meter.node_frag(t4, 32_000, &[1000, 1000]), 0.0);
    assert_eq!(meter.node_frag(t4, 32_000, &[400, 1000]), 400.0);
    // Short of CPU: everything idle is fragmented.
    assert_eq!(meter.node_frag(t4, 500, &[400, 1000]), 1400.0);
}

#[test]
fn hole_waste_counts_what_common_shares_cannot_fill_with_the_cpu_left() {
    let f = fleet(&[(96_000, 256_000, 8, Some("G2"))]);
    // 470s ask 8 cores, 810s 3; the one 160 is rare (under 4% of the shares).
    let mut pods: Vec<Workload> = (0..30).map(|i| pod(i, 8000, 1000, GpuRequest::fraction(470), "")).collect();
    pods.extend((30..60).map(|i| pod(i, 3000, 1000, GpuRequest::fraction(810), "")));
    pods.push(pod(60, 1000, 1000, GpuRequest::fraction(160), ""));
    let demands: Vec<Demand> = pods.iter().map(|w| Demand::of(w, &f)).collect();
    let waste = HoleWaste::new(&TypicalPods::from_demands(&demands), 0.04);
    assert_eq!(waste.node(&[1000, 0], 0), 0.0, "whole free or full GPUs are no holes");
    assert_eq!(waste.node(&[530], 20_000), 60.0, "a 470 fills 470 of it");
    assert_eq!(waste.node(&[530], 7_999), 530.0, "no CPU for a 470");
    assert_eq!(waste.node(&[190], 20_000), 190.0, "the rare 160 does not count");
    // The two holes share 10 cores: the larger takes a 470 (8 cores), the other gets 2.
    assert_eq!(waste.node(&[530, 1000, 530], 10_000), 590.0);
    assert_eq!(waste.node(&[530, 530], 16_000), 120.0);
}

#[test]
fn the_study_hold_keeps_whole_gpus_for_whole_gpu_work_only_when_asked() {
    // n0 has CPU for a typical whole-GPU request (11 cores) beside its one free GPU; n1 does not.
    let f = fleet(&[(40_000, 256_000, 2, Some("G2")), (16_000, 256_000, 1, Some("G2"))]);
    let mut pods: Vec<Workload> = (0..10).map(|i| pod(i, 11_000, 1000, GpuRequest::fraction(1000), "")).collect();
    pods.extend((10..20).map(|i| pod(i, 8000, 1000, GpuRequest::fraction(470), "")));
    pods.extend((20..30).map(|i| pod(i, 3000, 1000, GpuRequest::fraction(810), "")));
    let demands: Vec<Demand> = pods.iter().map(|w| Demand::of(w, &f)).collect();
    let typical = TypicalPods::from_demands(&demands);
    let (whole, share_470, share_810) = (&demands[0], &demands[10], &demands[20]);
    let mut cluster = ClusterState::new(Arc::clone(&f));
    // One GPU of three taken on n0; n1's CPU down to 5 cores, short of a whole-GPU request's 11.
    let cpu_hog = Demand::of(&pod(99, 11_000, 1000, GpuRequest::None, ""), &f);
    for (job, node, d) in [(0, 0, whole), (1, 1, &cpu_hog)] {
        let member = cluster.member_on(model::NodeId(node), d, sched::GpuPick::First).expect("fits");
        cluster.allocate(WorkloadId(job), d, sched::Placement { members: vec![member] }).expect("valid");
    }

    let mut held = DromeParams::default();
    held.set("hold_above", 0.3).expect("known parameter");
    let mut default = DromeFit::new(typical.clone(), DromeParams::default(), 1);
    let mut holding = DromeFit::new(typical, held, 1);
    assert!(default.place(&cluster, share_810).is_some(), "the default never refuses what fits");
    // Holding, the 810 (a 190 leftover no common share fills) is kept off n0's whole GPU, and
    // goes to n1's, whose node could not run whole-GPU work anyway.
    let p = holding.place(&cluster, share_810).expect("n1 takes it");
    assert_eq!(p.members[0].node, model::NodeId(1));
    let mut busy = cluster.clone();
    busy.allocate(WorkloadId(2), share_810, p).expect("valid");
    assert!(holding.place(&busy, share_810).is_none(), "only n0's whole GPU is left");
    // A 470 leaves 530, which another 470 fills: not held.
    assert!(holding.place(&busy, share_470).is_some());
}

type NodeCase = (u64, u64, u8, Option<&'static str>);
type PodCase = (u64, u64, u32, u8, &'static str);

fn arb_case() -> impl Strategy<Value = (Vec<NodeCase>, Vec<PodCase>)> {
    let node = (
        prop::sample::select(vec![4_000u64, 16_000, 64_000]),
        prop::sample::select(vec![8_000u64, 64_000]),
        0u8..=8,
        prop::sample::select(vec![Some("T4"), Some("P100"), None]),
    );
    let pod = (
        prop::sample::select(vec![0u64, 1_000, 4_000, 12_000]),
        prop::sample::select(vec![0u64, 2_000, 16_000]),
        prop::sample::select(vec![0u32, 100, 250, 500, 700, 1000]),
        prop::sample::select(vec![1u8, 2, 4, 8]),
        prop::sample::select(vec!["", "T4", "P100", "T4|P100"]),
    );
    (prop::collection::vec(node, 1..8), prop::collection::vec(pod, 1..60))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn no_gpu_is_over_committed((nodes, pods) in arb_case()) {
        let nodes: Vec<_> = nodes.into_iter().map(|(c, m, g, model)| (c, m, g, if g == 0 { None } else { model.or(Some("T4")) })).collect();
        let f = fleet(&nodes);
        let pods: Vec<Workload> = pods
            .into_iter()
            .enumerate()
            .map(|(i, (cpu, mem, milli, n, spec))| {
                let gpu = match (milli, n) {
                    (0, _) => GpuRequest::None,
                    (1000, n) => GpuRequest::Gang { nodes: 1, gpus_per_node: u32::from(n) },
                    (m, _) => GpuRequest::fraction(m),
                };
                pod(i as u32, cpu, mem, gpu, spec)
            })
            .collect();
        // run_all checks every allocation and the final state.
        let results = run_all(&f, &pods);
        let cap = f.total_gpus() * 1000;
        for (_, _, milli) in results {
            prop_assert!(milli <= cap);
        }
    }
}
