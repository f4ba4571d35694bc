//! The twin on the real traces in ../shared/traces.

use sim::{LoadFleetShape, SimConfig, fleet_for_load, offered_load, simulate};
use std::sync::Arc;

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");

#[test]
fn philly_at_load_085_completes_every_job_and_repeats_exactly() {
    let path = format!("{TRACES}/philly-pollux-sia/philly.csv");
    let trace = trace::load_workloads(&path, None, &trace::TraceOptions::default()).unwrap();
    assert_eq!(trace.workloads.len(), 82_247);
    let fleet = Arc::new(fleet_for_load(&trace.workloads, 0.85, &LoadFleetShape::default()));
    let load = offered_load(&trace.workloads, fleet.total_gpus());
    assert!((load - 0.85).abs() < 0.02, "offered load {load}");
    let run = || {
        let mut policy = sched::policy_by_name("fifo", 42).unwrap();
        simulate(
            fleet.clone(),
            &trace.workloads,
            policy.as_mut(),
            &SimConfig { seed: 42, ..SimConfig::default() },
            &mut |_| {},
        )
        .unwrap()
    };
    let a = run();
    assert_eq!(a.completed, 82_247);
    assert_eq!(a.never_fit, 0);
    assert!(a.gpu_utilization > 0.5 && a.gpu_utilization <= 1.0, "{}", a.gpu_utilization);
    assert!(a.p99_jct_s >= a.p50_jct_s && a.mean_jct_s > a.mean_wait_s);
    let b = run();
    assert_eq!(a, b, "same inputs, same result");
}

#[test]
fn openb_default_on_its_own_nodes_places_every_pod() {
    let dir = format!("{TRACES}/alibaba-openb-v2023");
    let fleet = Arc::new(trace::load_node_list(format!("{dir}/openb_node_list_all_node.csv")).unwrap());
    let pods =
        trace::load_workloads(format!("{dir}/openb_pod_list_default.csv"), None, &trace::TraceOptions::default())
            .unwrap();
    let mut policy = sched::policy_by_name("fifo-bestfit", 42).unwrap();
    let r = simulate(fleet, &pods.workloads, policy.as_mut(), &SimConfig::default(), &mut |_| {}).unwrap();
    assert_eq!(r.jobs, 8_152);
    assert_eq!(r.fleet_gpus, 6_212);
    assert_eq!(r.completed + r.never_fit + r.unfinished, r.jobs);
    assert!(r.completed > 8_000, "{r:?}");
}
