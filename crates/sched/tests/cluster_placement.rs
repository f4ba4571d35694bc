mod common;

use common::{fleet, job, job_on};
use model::{GpuRequest, NodeId};
use sched::{BestFit, ClusterState, Demand, FirstFit, Placer, SchedError};

fn whole(n: u32) -> GpuRequest {
    GpuRequest::whole_gpus(n, 8)
}

/// Places `jobs` in order with `placer` and returns the nodes each landed on (empty if refused).
fn check(placer: &mut dyn Placer, nodes: &[(u8, &str)], jobs: &[model::Workload]) -> Vec<Vec<u32>> {
    let mut cluster = ClusterState::new(fleet(nodes));
    let mut out = Vec::new();
    for w in jobs {
        let demand = Demand::of(w, cluster.fleet());
        match placer.place(&cluster, &demand) {
            Some(p) => {
                out.push(p.nodes().map(|n| n.0).collect());
                cluster.allocate(w.id, &demand, p).unwrap();
            }
            None => out.push(vec![]),
        }
        cluster.verify().unwrap();
    }
    out
}

#[test]
fn first_fit_takes_the_lowest_numbered_node() {
    let got = check(
        &mut FirstFit,
        &[(8, "H200"), (8, "H200"), (4, "H200")],
        &[job(0, whole(4)), job(1, whole(4)), job(2, whole(4)), job(3, whole(8))],
    );
    assert_eq!(got, vec![vec![0], vec![0], vec![1], vec![]]);
}

#[test]
fn best_fit_takes_the_tightest_node() {
    let got = check(
        &mut BestFit,
        &[(8, "H200"), (8, "H200"), (4, "H200")],
        &[job(0, whole(4)), job(1, whole(2)), job(2, whole(8)), job(3, whole(2))],
    );
    assert_eq!(got, vec![vec![2], vec![0], vec![1], vec![0]]);
}

#[test]
fn gangs_take_distinct_nodes_or_nothing() {
    let got = check(
        &mut FirstFit,
        &[(8, "H200"), (8, "H200"), (8, "H200")],
        &[job(0, whole(4)), job(1, whole(16)), job(2, whole(24)), job(3, whole(4))],
    );
    assert_eq!(got, vec![vec![0], vec![1, 2], vec![], vec![0]]);
}

#[test]
fn fractions_share_a_gpu_without_overcommit() {
    let frac = |id, m| job(id, GpuRequest::fraction(m));
    let got = check(&mut FirstFit, &[(1, "T4")], &[frac(0, 600), frac(1, 400), frac(2, 100)]);
    assert_eq!(got, vec![vec![0], vec![0], vec![]]);
    let got = check(&mut BestFit, &[(2, "T4")], &[frac(0, 600), frac(1, 500), frac(2, 400), frac(3, 500)]);
    // 0 -> gpu0 (400 left); 1 -> gpu1 (500 left); 2 -> gpu0 tightest (0 left); 3 -> gpu1.
    assert_eq!(got, vec![vec![0], vec![0], vec![0], vec![0]]);
}

#[test]
fn model_constraints_are_respected() {
    let got = check(
        &mut FirstFit,
        &[(8, "T4"), (8, "V100M32"), (8, "V100M16")],
        &[
            job_on(0, whole(8), "V100M16"),
            job_on(1, whole(8), "V100"),
            job_on(2, whole(8), "V100"),
            job_on(3, whole(1), "A100"),
        ],
    );
    assert_eq!(got, vec![vec![2], vec![1], vec![], vec![]]);
}

#[test]
fn cpu_only_work_may_use_any_node() {
    let cpu_job = |id| {
        let mut w = job(id, GpuRequest::None);
        w.cpu_milli = 64_000;
        w
    };
    let got = check(&mut FirstFit, &[(8, "H200"), (0, "")], &[cpu_job(0), cpu_job(1), cpu_job(2)]);
    assert_eq!(got, vec![vec![0], vec![1], vec![]]);
}

#[test]
fn never_fit_is_told_apart_from_not_now() {
    let cluster = ClusterState::new(fleet(&[(8, "H200"), (8, "H200")]));
    let can = |w: model::Workload| cluster.could_ever_fit(&Demand::of(&w, cluster.fleet()));
    assert!(can(job(0, whole(16))));
    assert!(!can(job(0, whole(24))));
    assert!(!can(job_on(0, whole(1), "B200")));
    let mut big = job(0, whole(1));
    big.memory_mib = 1 << 40;
    assert!(!can(big));
}

#[test]
fn the_cluster_refuses_bad_allocations() {
    let mut cluster = ClusterState::new(fleet(&[(2, "H200"), (2, "H200")]));
    let w = job(0, whole(2));
    let d = Demand::of(&w, cluster.fleet());
    let p = FirstFit.place(&cluster, &d).unwrap();
    cluster.allocate(w.id, &d, p.clone()).unwrap();
    assert_eq!(cluster.allocate(w.id, &d, p.clone()), Err(SchedError::AlreadyAllocated(w.id)));
    let w1 = job(1, whole(2));
    assert!(matches!(cluster.allocate(w1.id, &d, p.clone()), Err(SchedError::Overcommit { .. })));
    let gang = job(2, GpuRequest::Gang { nodes: 2, gpus_per_node: 2 });
    let gd = Demand::of(&gang, cluster.fleet());
    let mut two = p.clone();
    two.members.push(p.members[0].clone());
    assert_eq!(cluster.release(w1.id), Err(SchedError::NotAllocated(w1.id)));
    cluster.release(w.id).unwrap();
    assert_eq!(cluster.allocate(gang.id, &gd, two), Err(SchedError::SharedNode(NodeId(0))));
    assert_eq!(cluster.allocated_gpu_milli(), 0);
    cluster.verify().unwrap();
}
