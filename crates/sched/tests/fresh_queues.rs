//! Policies fed a fresh queue every round, as the live server builds one: each must read a new
//! queue whole, so a job queued after the first round is not lost behind sequence numbers that
//! belonged to the queue before. And the priority policies' placement of GPU shares is drome's
//! fragmentation-aware placer, learning from the arrivals.

mod common;

use common::{fleet, job, queue_of, started};
use model::{GpuRequest, SimTime, WorkloadId};
use sched::frag::{DromeFit, DromeParams, TypicalPods};
use sched::{ClusterState, Decision, Demand, Placer, Queue, QueuedJob, policy_by_name};
use std::sync::Arc;

#[test]
fn every_policy_reads_a_new_queue_whole() {
    for name in ["fifo", "fifo-bestfit", "backfill", "fairshare", "quota", "tiresias", "drome"] {
        let mut policy = policy_by_name(name, 0).unwrap();
        let mut cluster = ClusterState::new(fleet(&[(8, "H200")]));
        let whole = GpuRequest::whole_gpus(8, 8);
        // Round 1: job 0 takes the node; job 1 waits.
        let q = queue_of(&cluster, 1, &[(0, whole), (1, whole)]);
        assert_eq!(started(&policy.schedule(SimTime(0), &q, &mut cluster)), [0], "{name}");
        // Job 0 ends. Round 2, a new queue: job 1 is its first job, job 2 its second.
        let w0 = job(0, whole);
        cluster.release(WorkloadId(0)).unwrap();
        policy.on_finished(&w0, SimTime(0), SimTime(1000));
        let q = queue_of(&cluster, 2, &[(1, whole), (2, whole)]);
        assert_eq!(started(&policy.schedule(SimTime(1000), &q, &mut cluster)), [1], "{name}");
        cluster.release(WorkloadId(1)).unwrap();
        policy.on_finished(&job(1, whole), SimTime(1000), SimTime(2000));
        // Round 3: only job 2 is left, at sequence number 0 of a new queue.
        let q = queue_of(&cluster, 3, &[(2, whole)]);
        assert_eq!(started(&policy.schedule(SimTime(2000), &q, &mut cluster)), [2], "{name}");
    }
}

#[test]
fn the_drome_policy_places_gpu_shares_as_drome_placer_does() {
    let f = fleet(&[(8, "H200"), (8, "H200"), (4, "H200")]);
    // A mix of shares and whole GPUs, arriving over several rounds.
    let gpus: Vec<GpuRequest> =
        [300u32, 700, 500, 1000, 810, 250, 2000, 470, 470, 650, 160, 1000, 320, 900]
            .iter()
            .map(|&m| {
                if m % 1000 == 0 { GpuRequest::whole_gpus(m / 1000, 8) } else { GpuRequest::Fraction { gpu_milli: m } }
            })
            .collect();
    let mut policy = policy_by_name("drome", 0).unwrap();
    let mut live = ClusterState::new(f.clone());
    let mut reference = ClusterState::new(f.clone());
    let mut placer = DromeFit::new(TypicalPods::new(), DromeParams::default(), 0);
    placer.learn = false;
    let mut queue = Queue::new();
    for (k, gpu) in gpus.iter().enumerate() {
        let w = Arc::new(job(k as u32, *gpu));
        let d = Demand::of(&w, &f);
        placer.observe(&d);
        queue.push(QueuedJob::new(w, d.clone(), SimTime(k as u64)));
        let decisions = policy.schedule(SimTime(k as u64), &queue, &mut live);
        let Some(Decision::Start { placement, .. }) = decisions.first() else { panic!("job {k} did not start") };
        queue.remove(WorkloadId(k as u32));
        let want = placer.place(&reference, &d).unwrap();
        reference.allocate(WorkloadId(k as u32), &d, want.clone()).unwrap();
        // Shares were seen from the first arrival on, so whole GPUs go through it as well.
        assert_eq!(placement, &want, "job {k} ({gpu:?})");
    }
    live.verify().unwrap();
}
