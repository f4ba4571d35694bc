//! Every queueing policy on random traces: no GPU double-booked, gangs all-or-nothing, the minimum
//! runtime respected, every job completes (no starvation), same seed -> same result; plus small
//! cases worked out by hand.

use model::{Cooling, Fleet, GpuRequest, NodeId, SimDuration, SimTime, TenantId, Workload};
use proptest::prelude::*;
use sched::policy_by_name;
use sim::{EventKind, SimConfig, SimReport, simulate};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

mod common;

/// `nodes` 8-GPU nodes, two per leaf switch.
fn fleet(nodes: u32) -> Arc<Fleet> {
    common::fleet(nodes, 8, "H200", Cooling::Air, Some(2))
}

const POLICIES: &[&str] = &["fifo", "backfill", "fairshare", "quota", "tiresias", "srpt", "drome"];

fn job(id: u32, submit_s: u64, gpus: u32, secs: u64, tenant: u32) -> Workload {
    let mut w = Workload::gpu_job(
        id,
        SimTime::from_secs(submit_s),
        GpuRequest::whole_gpus(gpus, 8),
        Some(SimDuration::from_secs(secs)),
    );
    w.tenant = TenantId(tenant);
    w
}

fn run(fleet: Arc<Fleet>, jobs: &[Workload], policy: &str, config: &SimConfig) -> SimReport {
    let mut p = policy_by_name(policy, 7).unwrap();
    simulate(fleet, jobs, p.as_mut(), config, &mut |_| {}).unwrap()
}

fn checked(config: SimConfig) -> SimConfig {
    SimConfig { keep_records: true, keep_events: true, ..config }
}

/// Replays the event log: no GPU held twice, every start holds the whole gang, preemptions only
/// after the minimum runtime, and every job started, finished and never ran after finishing.
fn check_log(r: &SimReport, jobs: &[Workload], min_runtime_ms: u64) {
    let mut held: BTreeMap<(NodeId, u8), u32> = BTreeMap::new();
    let mut running: BTreeMap<u32, (u64, Vec<(NodeId, u8)>)> = BTreeMap::new();
    let mut finished: BTreeSet<u32> = BTreeSet::new();
    for e in &r.log {
        match &e.kind {
            EventKind::Start { gpus } => {
                assert!(!finished.contains(&e.job.0), "{:?} ran after finishing", e.job);
                assert!(!running.contains_key(&e.job.0), "{:?} started twice", e.job);
                let w = &jobs[e.job.0 as usize];
                assert_eq!(gpus.len() as u32, w.gpu.nodes(), "gang {:?} split", e.job);
                let n: usize = gpus.iter().map(|(_, g)| g.len()).sum();
                assert_eq!(n as f64, w.gpu.total_gpus(), "gang {:?} partly placed", e.job);
                let mut mine = Vec::new();
                for (node, gs) in gpus {
                    for (index, _) in gs {
                        if let Some(other) = held.insert((*node, *index), e.job.0) {
                            panic!("GPU {node:?}/{index} held by {other} and {}", e.job.0);
                        }
                        mine.push((*node, *index));
                    }
                }
                running.insert(e.job.0, (e.t_ms, mine));
            }
            EventKind::Preempt | EventKind::Finish => {
                let Some((since, mine)) = running.remove(&e.job.0) else { panic!("{:?} stopped, not running", e.job) };
                if e.kind == EventKind::Preempt {
                    assert!(e.t_ms - since >= min_runtime_ms, "{:?} preempted after {} ms", e.job, e.t_ms - since);
                } else {
                    finished.insert(e.job.0);
                }
                for g in mine {
                    held.remove(&g);
                }
            }
        }
    }
    assert!(running.is_empty() && held.is_empty());
    assert_eq!(finished.len(), jobs.len(), "every job completes");
}

fn arb_jobs() -> impl Strategy<Value = Vec<Workload>> {
    let one = (0u64..20_000, prop::sample::select(vec![1u32, 1, 1, 2, 4, 8, 16, 24]), 1u64..20_000, 0u32..3);
    prop::collection::vec(one, 1..50).prop_map(|v| {
        let mut v = v;
        v.sort_by_key(|j| j.0);
        v.into_iter().enumerate().map(|(i, (t, g, d, tenant))| job(i as u32, t, g, d, tenant)).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_policy_keeps_the_invariants(jobs in arb_jobs(), nodes in 3u32..6) {
        let fleet = fleet(nodes);
        for policy in POLICIES {
            let config = checked(SimConfig::default());
            let r = run(fleet.clone(), &jobs, policy, &config);
            prop_assert_eq!(r.completed, jobs.len() as u64, "{} starved a job", policy);
            let min = policy_by_name(policy, 7).unwrap().min_runtime().as_millis();
            check_log(&r, &jobs, min);
            prop_assert!(r.jain_fairness > 0.0 && r.jain_fairness <= 1.0 + 1e-9);
            // Bounded preemption: every run keeps at least min runtime - restart - checkpoint of
            // work (600 - 60 - 300 s), so a job is preempted at most once per 240 s of its work.
            let bound: u64 = jobs.iter().map(|w| w.duration.map_or(0, |d| d.as_millis()) / 240_000 + 1).sum();
            prop_assert!(r.preemptions <= bound, "{}: {} preemptions", policy, r.preemptions);
            let again = run(fleet.clone(), &jobs, policy, &config);
            prop_assert_eq!(&r, &again, "{} is not deterministic", policy);
        }
    }
}

#[test]
fn tiresias_preempts_a_long_job_for_a_new_one_and_the_victim_pays() {
    // Job 0 holds the only node; job 1 arrives after job 0 passed one GPU-hour (8 GPUs x 450 s).
    let jobs = [job(0, 0, 8, 4000, 0), job(1, 1000, 8, 100, 0)];
    let config = checked(SimConfig {
        checkpoint_interval: SimDuration::from_secs(300),
        restart_delay: SimDuration::from_secs(60),
        ..SimConfig::default()
    });
    let r = run(fleet(1), &jobs, "tiresias", &config);
    assert_eq!(r.preemptions, 1);
    // Job 1 runs 1000..1100; job 0 kept 900 s of work (last checkpoint), restarts at 1100 and
    // needs 60 s + 3100 s: it ends at 4260.
    assert_eq!(r.records[1].finish_s, Some(1100.0));
    assert_eq!(r.records[0].finish_s, Some(4260.0));
    // It lost 100 s of work on 8 GPUs, plus the 60 s restart.
    assert!((r.lost_gpu_hours - 8.0 * 160.0 / 3600.0).abs() < 1e-9, "{}", r.lost_gpu_hours);
    check_log(&r, &jobs, 600_000);
}

#[test]
fn fifo_never_preempts_and_large_gangs_take_whole_nodes_under_one_switch() {
    // Four nodes, two per switch: a 16-GPU gang fits under one switch.
    let jobs = [job(0, 0, 1, 100, 0), job(1, 0, 16, 100, 0)];
    let r = run(fleet(4), &jobs, "drome", &checked(SimConfig::default()));
    assert_eq!(r.preemptions, 0);
    assert_eq!(r.mean_switches_per_gang, 1.0);
    assert_eq!(r.records[1].switches, 1);
    for e in &r.log {
        if let (EventKind::Start { gpus }, 1) = (&e.kind, e.job.0) {
            assert!(gpus.iter().all(|(_, g)| g.len() == 8), "whole nodes");
            assert!(gpus.iter().all(|(n, _)| n.0 >= 2), "the idle pair of nodes, not the one job 0 uses");
        }
    }
}

#[test]
fn quota_reclaims_borrowed_gpus_for_a_tenant_within_its_quota() {
    // Two tenants share two nodes (8 GPUs each by quota). Tenant 0 borrows both nodes; when
    // tenant 1 asks for 8 GPUs after the minimum runtime, one of tenant 0's jobs is reclaimed.
    let jobs = [job(0, 0, 8, 5000, 0), job(1, 0, 8, 5000, 0), job(2, 700, 8, 100, 1)];
    let r = run(fleet(2), &jobs, "quota", &checked(SimConfig::default()));
    assert_eq!(r.preemptions, 1);
    assert_eq!(r.records[2].start_s, Some(700.0));
    assert_eq!(r.completed, 3);
}

#[test]
fn fairshare_favours_the_tenant_that_used_less() {
    // Tenant 0 ran a long job; then both tenants queue one job each, tenant 0's first.
    let jobs = [job(0, 0, 8, 10_000, 0), job(1, 100, 8, 100, 0), job(2, 200, 8, 100, 1)];
    let r = run(fleet(1), &jobs, "fairshare", &SimConfig { keep_records: true, ..SimConfig::default() });
    assert!(r.records[2].start_s < r.records[1].start_s, "{:?}", r.records);
    let r = run(fleet(1), &jobs, "backfill", &SimConfig { keep_records: true, ..SimConfig::default() });
    assert!(r.records[1].start_s < r.records[2].start_s, "{:?}", r.records);
}

#[test]
fn backfill_starts_a_short_job_that_does_not_delay_the_reserved_head() {
    // Nodes 0 and 1 are busy until 1000 s; the head wants two whole nodes and gets a reservation
    // on them; a 1-GPU job fits on idle node 2, outside the reservation, and starts at once.
    let jobs = [job(0, 0, 8, 1000, 0), job(1, 0, 8, 1000, 0), job(2, 10, 16, 100, 0), job(3, 20, 1, 100, 0)];
    let r = run(fleet(3), &jobs, "backfill", &SimConfig { keep_records: true, ..SimConfig::default() });
    assert_eq!(r.records[3].start_s, Some(20.0), "backfilled");
    assert_eq!(r.records[2].start_s, Some(1000.0));
    let r = run(fleet(3), &jobs, "fifo", &SimConfig { keep_records: true, ..SimConfig::default() });
    assert_eq!(r.records[3].start_s, Some(1000.0), "fifo does not overtake");
}

#[test]
fn srpt_is_the_only_clairvoyant_policy() {
    for name in POLICIES {
        let p = policy_by_name(name, 0).unwrap();
        assert_eq!(p.is_clairvoyant(), *name == "srpt", "{name}");
    }
}

/// Batches of siblings (one tenant, one GPU count, submitted seconds apart, run times within a
/// factor 2), enough of them that drome has learned tables and sibling evidence to use.
fn arb_batches() -> impl Strategy<Value = Vec<Workload>> {
    let batch = (
        0u64..200_000,
        1usize..8,
        prop::sample::select(vec![1u32, 1, 2, 8, 16]),
        60u64..30_000,
        0u32..3,
        prop::collection::vec(1.0f64..2.0, 8),
    );
    prop::collection::vec(batch, 20..40).prop_map(|v| {
        let mut jobs: Vec<(u64, u32, u64, u32)> = Vec::new();
        for (t, n, g, d, tenant, spread) in v {
            for (k, f) in spread.iter().take(n).enumerate() {
                jobs.push((t + 5 * k as u64, g, (d as f64 * f) as u64, tenant));
            }
        }
        jobs.sort_by_key(|j| j.0);
        jobs.into_iter().enumerate().map(|(i, (t, g, d, tenant))| job(i as u32, t, g, d, tenant)).collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn drome_keeps_the_invariants_when_it_learns_from_siblings(jobs in arb_batches(), nodes in 3u32..6) {
        let fleet = fleet(nodes);
        let config = checked(SimConfig::default());
        let r = run(fleet.clone(), &jobs, "drome", &config);
        prop_assert_eq!(r.completed, jobs.len() as u64, "drome starved a job");
        check_log(&r, &jobs, policy_by_name("drome", 7).unwrap().min_runtime().as_millis());
        let bound: u64 = jobs.iter().map(|w| w.duration.map_or(0, |d| d.as_millis()) / 240_000 + 1).sum();
        prop_assert!(r.preemptions <= bound, "{} preemptions", r.preemptions);
        let again = run(fleet.clone(), &jobs, "drome", &config);
        prop_assert_eq!(&r, &again, "drome is not deterministic");
    }
}
