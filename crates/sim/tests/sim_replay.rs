//! The twin on small hand-made cases whose answers can be worked out on paper, and its
//! invariants on random ones.

use model::{Cooling, Fleet, GpuRequest, ModelFilter, SimDuration, SimTime, Workload};
use proptest::prelude::*;
use sched::policy_by_name;
use sim::{SimConfig, SimReport, simulate};
use std::sync::Arc;

mod common;

fn fleet(nodes: u32, gpus: u8) -> Arc<Fleet> {
    common::fleet(nodes, gpus, "H200", Cooling::Air, None)
}

fn job(id: u32, submit_s: u64, gpus: u32, secs: u64) -> Workload {
    Workload::gpu_job(
        id,
        SimTime::from_secs(submit_s),
        GpuRequest::whole_gpus(gpus, 8),
        Some(SimDuration::from_secs(secs)),
    )
}

fn run(fleet: Arc<Fleet>, jobs: &[Workload], policy: &str) -> SimReport {
    let mut p = policy_by_name(policy, 1).unwrap();
    simulate(fleet, jobs, p.as_mut(), &SimConfig { seed: 1, keep_records: true, ..SimConfig::default() }, &mut |_| {})
        .unwrap()
}

#[test]
fn fifo_on_one_node_matches_the_hand_computation() {
    // A takes the node 0..10 s; B (submitted at 1 s) waits until 10 s and ends at 15 s.
    let r = run(fleet(1, 8), &[job(0, 0, 8, 10), job(1, 1, 8, 5)], "fifo");
    assert_eq!((r.jobs, r.completed, r.never_fit, r.unfinished), (2, 2, 0, 0));
    assert_eq!(r.mean_jct_s, 12.0);
    assert_eq!(r.p99_jct_s, 14.0);
    assert_eq!(r.mean_wait_s, 4.5);
    assert_eq!(r.makespan_s, 15.0);
    assert_eq!(r.gpu_utilization, 1.0);
    assert_eq!(r.peak_queue_len, 1);
    assert_eq!(r.records[1].start_s, Some(10.0));
}

#[test]
fn strict_fifo_holds_back_smaller_jobs_behind_the_head() {
    // Node of 8: A(4 GPUs, 0..10), B(8 GPUs) must wait for A, C(4 GPUs) must wait behind B.
    let r = run(fleet(1, 8), &[job(0, 0, 4, 10), job(1, 1, 8, 10), job(2, 2, 4, 1)], "fifo");
    assert_eq!(r.records[1].start_s, Some(10.0));
    assert_eq!(r.records[2].start_s, Some(20.0));
}

#[test]
fn jobs_that_can_never_fit_are_counted_and_do_not_block() {
    let mut wrong_model = job(2, 0, 1, 5);
    wrong_model.models = ModelFilter::parse_list("B200");
    let r = run(fleet(2, 8), &[job(0, 0, 32, 10), job(1, 0, 8, 10), wrong_model, job(3, 0, 16, 1)], "fifo");
    assert_eq!(r.never_fit, 2);
    assert_eq!(r.completed, 2);
    assert_eq!(r.records[3].start_s, Some(10.0));
    assert_eq!(r.records[0].start_s, None);
}

#[test]
fn jobs_without_a_duration_run_to_the_end() {
    let mut forever = job(0, 0, 8, 1);
    forever.duration = None;
    let r = run(fleet(1, 8), &[forever, job(1, 5, 8, 1)], "fifo");
    assert_eq!(r.unfinished, 2, "the endless job holds the node, so the second never starts");
    assert_eq!(r.completed, 0);
}

#[test]
fn ids_must_follow_trace_order() {
    let mut p = policy_by_name("fifo", 0).unwrap();
    let jobs = [job(1, 0, 1, 1)];
    let err = simulate(fleet(1, 8), &jobs, p.as_mut(), &SimConfig::default(), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("position 0"), "{err}");
}

fn jobs_strategy() -> impl Strategy<Value = Vec<Workload>> {
    prop::collection::vec(
        (0u64..500, prop_oneof![Just(1u32), Just(2), Just(4), Just(8), Just(16), Just(64)], 0u64..300),
        1..120,
    )
    .prop_map(|v| v.into_iter().enumerate().map(|(i, (t, g, d))| job(i as u32, t, g, d)).collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every job that fits the empty fleet completes (no starvation), the rest are never-fit,
    /// allocation stays within the fleet, and a rerun gives the same result bit for bit.
    #[test]
    fn every_job_that_fits_completes_and_runs_repeat(jobs in jobs_strategy(), nodes in 1u32..6, policy in prop_oneof![Just("fifo"), Just("fifo-bestfit")]) {
        let f = fleet(nodes, 8);
        let a = run(f.clone(), &jobs, policy);
        let fits = jobs.iter().filter(|j| j.gpu.total_gpus() <= f64::from(nodes * 8)).count() as u64;
        prop_assert_eq!(a.completed, fits);
        prop_assert_eq!(a.never_fit, jobs.len() as u64 - fits);
        prop_assert_eq!(a.unfinished, 0);
        prop_assert!(a.series.iter().all(|p| (0.0..=1.0).contains(&p.gpu_allocation)));
        prop_assert!(a.gpu_utilization <= 1.0 + 1e-12);
        for r in &a.records {
            if let (Some(s), Some(f)) = (r.start_s, r.finish_s) {
                prop_assert!(s >= r.submit_s && f >= s);
            }
        }
        let b = run(f, &jobs, policy);
        prop_assert_eq!(a, b);
    }
}
