//! The inflation experiment: the target is met, runs are reproducible, the bound bounds.

use model::{FleetBuilder, GpuRequest, ModelFilter, NodeSpec, SimTime, Workload};
use sched::Demand;
use sched::frag::{FragMeter, TypicalPods, placer_by_name};
use sim::openb::{allocation_bound, gpu_milli, inflate, run_inflation};
use std::sync::Arc;

fn setup() -> (Arc<model::Fleet>, Vec<Demand>) {
    let mut b = FleetBuilder::new("t");
    let site = b.add_site("s", model::Cooling::Air, None);
    let hall = b.add_hall(site, "h", None);
    let rack = b.add_rack(hall, "r", None);
    for i in 0..6 {
        b.add_node(
            rack,
            NodeSpec {
                name: format!("n{i}"),
                cpu_milli: 64_000,
                memory_mib: 256_000,
                gpu_count: if i < 5 { 4 } else { 0 },
                gpu_model: (i < 5).then(|| "T4".to_string()),
                nvlink_domain: None,
                leaf_switch: None,
            },
        );
    }
    let fleet = Arc::new(b.build());
    let shapes = [GpuRequest::fraction(500), GpuRequest::fraction(810), GpuRequest::fraction(1000), GpuRequest::None];
    let pods: Vec<Workload> = (0..20)
        .map(|i| Workload {
            cpu_milli: 2000,
            memory_mib: 4000,
            models: ModelFilter::any(),
            ..Workload::gpu_job(i, SimTime(0), shapes[i as usize % 4], None)
        })
        .collect();
    let demands = pods.iter().map(|w| Demand::of(w, &fleet)).collect();
    (fleet, demands)
}

#[test]
fn inflation_reaches_the_target_and_is_seeded() {
    let (fleet, demands) = setup();
    let cap = fleet.total_gpus() * 1000;
    let a = inflate(&demands, cap, 1.3, 42).expect("inflates");
    let b = inflate(&demands, cap, 1.3, 42).expect("inflates");
    assert_eq!(a, b);
    assert_ne!(a, inflate(&demands, cap, 1.3, 43).expect("inflates"));
    let total: u64 = a.iter().map(|&i| gpu_milli(&demands[i])).sum();
    assert!(total as f64 <= 1.3 * cap as f64 + 1000.0 && total as f64 > 1.3 * cap as f64 - 1000.0, "{total}");
    // Every pod of the list is in, once at least.
    for i in 0..demands.len() {
        assert!(a.contains(&i));
    }
}

#[test]
fn runs_are_reproducible_and_within_the_bound() {
    let (fleet, demands) = setup();
    let cap = fleet.total_gpus() * 1000;
    let order = inflate(&demands, cap, 1.3, 7).expect("inflates");
    let typical = TypicalPods::from_demands(&demands);
    let meter = FragMeter::new(&typical.distribution(0.95), &fleet);
    let pods: Vec<Demand> = order.iter().map(|&i| demands[i].clone()).collect();
    let bound = allocation_bound(&fleet, &pods).expect("LP solves");
    for name in ["random", "bestfit", "fgd", "drome"] {
        let mut p1 = placer_by_name(name, &typical, 3).expect("policy");
        let mut p2 = placer_by_name(name, &typical, 3).expect("policy");
        let r1 = run_inflation(&fleet, &demands, &order, p1.as_mut(), &meter, 130).expect("runs");
        let r2 = run_inflation(&fleet, &demands, &order, p2.as_mut(), &meter, 130).expect("runs");
        assert_eq!(r1, r2, "{name}");
        assert_eq!(r1.allocation_pct.len(), 131);
        assert!(r1.final_allocation_pct() <= bound + 1e-6, "{name}: {} > {bound}", r1.final_allocation_pct());
        assert!(r1.allocation_pct.windows(2).all(|w| w[0] <= w[1] + 1e-9));
    }
}

/// A mixed cluster (8-GPU nodes with 12 cores a GPU, 2-GPU nodes with 8) and a pod list of
/// shares, whole GPUs, gangs and CPU-only pods of varied CPU, for the snapshot.
fn mixed() -> (Arc<model::Fleet>, Vec<Demand>) {
    let mut b = FleetBuilder::new("t");
    let site = b.add_site("s", model::Cooling::Air, None);
    let hall = b.add_hall(site, "h", None);
    let rack = b.add_rack(hall, "r", None);
    for i in 0..12 {
        let big = i % 3 == 0;
        b.add_node(
            rack,
            NodeSpec {
                name: format!("n{i}"),
                cpu_milli: if big { 96_000 } else { 16_000 },
                memory_mib: 256_000,
                gpu_count: if big { 8 } else { 2 },
                gpu_model: Some(if big { "G2" } else { "P100" }.to_string()),
                nvlink_domain: None,
                leaf_switch: None,
            },
        );
    }
    let fleet = Arc::new(b.build());
    let shapes = [
        (GpuRequest::fraction(810), 4000),
        (GpuRequest::fraction(470), 6000),
        (GpuRequest::Gang { gpus_per_node: 1, nodes: 1 }, 12_000),
        (GpuRequest::fraction(320), 2000),
        (GpuRequest::None, 8000),
        (GpuRequest::fraction(650), 4000),
        (GpuRequest::Gang { gpus_per_node: 1, nodes: 1 }, 4000),
        (GpuRequest::fraction(160), 1000),
        (GpuRequest::Gang { gpus_per_node: 4, nodes: 1 }, 32_000),
        (GpuRequest::fraction(470), 2000),
    ];
    let pods: Vec<Workload> = (0..40)
        .map(|i| {
            let (gpu, cpu) = shapes[i as usize % shapes.len()];
            Workload {
                cpu_milli: cpu,
                memory_mib: 8000,
                models: ModelFilter::any(),
                ..Workload::gpu_job(i, SimTime(0), gpu, None)
            }
        })
        .collect();
    let demands = pods.iter().map(|w| Demand::of(w, &fleet)).collect();
    (fleet, demands)
}

/// Fixed-seed snapshot of a small run: pods placed and GPU share allocated by every policy. A
/// change here is a change of behaviour; update it only on purpose, and say so in the commit.
#[test]
fn small_run_snapshot() {
    let (fleet, demands) = mixed();
    let cap = fleet.total_gpus() * 1000;
    let order = inflate(&demands, cap, 1.3, 42).expect("inflates");
    let typical = TypicalPods::from_demands(&demands);
    let meter = FragMeter::new(&typical.distribution(0.95), &fleet);
    let got: Vec<(&str, usize, u64)> = sched::frag::POLICY_NAMES
        .iter()
        .map(|&name| {
            let mut p = placer_by_name(name, &typical, 42).expect("policy");
            let r = run_inflation(&fleet, &demands, &order, p.as_mut(), &meter, 130).expect("runs");
            (name, r.pods_placed, r.allocated_gpu_milli)
        })
        .collect();
    let want: Vec<(&str, usize, u64)> = vec![
        ("random", 65, 44_880),
        ("dotprod", 65, 45_190),
        ("gpuclustering", 68, 47_160),
        ("gpupacking", 67, 47_000),
        ("bestfit", 63, 44_400),
        ("fgd", 67, 46_690),
        ("drome", 66, 47_210),
    ];
    assert_eq!(got, want);
}
