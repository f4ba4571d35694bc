//! The event loop.

use crate::metrics::{JobRecord, SimReport, TimePoint, at, mean, percentile};
use model::{Fleet, SimTime, Workload, WorkloadId};
use sched::{ClusterState, Decision, Demand, Policy, Queue, QueuedJob};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Knobs of one run.
#[derive(Clone, Debug, Default)]
pub struct SimConfig {
    /// Recorded in the report; policies that randomise get it when they are built.
    pub seed: u64,
    /// Keep the per-job records in the report (for CDFs and per-tenant figures).
    pub keep_records: bool,
}

/// How far a run has got, for a progress bar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub events_done: u64,
    pub events_total: u64,
}

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    #[error("workload ids must be 0..n in trace order; position {position} holds id {id}")]
    BadIds { position: usize, id: u32 },
    #[error("policy {policy} made a decision the cluster refused: {detail}")]
    PolicyBug { policy: String, detail: String },
}

/// Replays `workloads` (ids `0..n`, in any submit order) on `fleet` under `policy`.
///
/// Jobs whose request fits no node set of the empty fleet are counted as `never_fit` and never
/// queued, so they cannot block a strict queue. Jobs without a duration run until the events run
/// out and count as `unfinished`.
pub fn simulate(
    fleet: Arc<Fleet>,
    workloads: &[Workload],
    policy: &mut dyn Policy,
    config: &SimConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<SimReport, SimError> {
    for (i, w) in workloads.iter().enumerate() {
        if w.id.0 as usize != i {
            return Err(SimError::BadIds { position: i, id: w.id.0 });
        }
    }
    let mut order: Vec<u32> = (0..workloads.len() as u32).collect();
    order.sort_by_key(|&i| (workloads[i as usize].submit_time, i));

    let mut cluster = ClusterState::new(fleet.clone());
    let mut queue = Queue::new();
    let mut completions: BinaryHeap<Reverse<(SimTime, u32)>> = BinaryHeap::new();
    let mut start: Vec<Option<SimTime>> = vec![None; workloads.len()];
    let mut finish: Vec<Option<SimTime>> = vec![None; workloads.len()];
    let mut never_fit = 0u64;
    let total_gpu_milli = cluster.total_gpu_milli().max(1) as f64;

    let events_total = workloads.len() as u64 * 2;
    let mut events_done = 0u64;
    let progress_every = (events_total / 200).max(1);
    let mut series: Vec<TimePoint> = Vec::new();
    let mut allocated_integral = 0.0f64; // gpu_milli x ms
    let mut last_t: Option<SimTime> = None;
    let mut last_alloc = 0u64;
    let mut peak_queue = 0u32;
    let mut next_arrival = 0usize;
    // Queued jobs share the workload through an Arc so a policy can keep it cheaply.
    let shared: Vec<Arc<Workload>> = workloads.iter().cloned().map(Arc::new).collect();

    loop {
        let t_arrival = order.get(next_arrival).map(|&i| workloads[i as usize].submit_time);
        let t_completion = completions.peek().map(|Reverse((t, _))| *t);
        let now = match (t_arrival, t_completion) {
            (None, None) => break,
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (Some(a), Some(c)) => a.min(c),
        };
        if let Some(prev) = last_t {
            allocated_integral += last_alloc as f64 * (now - prev).as_millis() as f64;
        }
        let before = events_done;

        while let Some(Reverse((t, id))) = completions.peek().copied() {
            if t != now {
                break;
            }
            completions.pop();
            let id = WorkloadId(id);
            if cluster.release(id).is_err() {
                return Err(SimError::PolicyBug {
                    policy: policy.name().to_string(),
                    detail: format!("{id:?} completed without an allocation"),
                });
            }
            finish[id.0 as usize] = Some(now);
            let started = start[id.0 as usize].unwrap_or(now);
            policy.on_finished(&workloads[id.0 as usize], started, now);
            events_done += 1;
        }
        while let Some(&i) = order.get(next_arrival) {
            let w = &workloads[i as usize];
            if w.submit_time != now {
                break;
            }
            next_arrival += 1;
            events_done += 1;
            let demand = Demand::of(w, &fleet);
            if !cluster.could_ever_fit(&demand) {
                never_fit += 1;
                events_done += 1; // it will never complete either
                continue;
            }
            queue.push(QueuedJob { workload: shared[i as usize].clone(), demand, enqueued_at: now });
        }

        for decision in policy.schedule(now, &queue, &mut cluster) {
            match decision {
                Decision::Start { job, .. } => {
                    if queue.remove(job).is_none() {
                        return Err(SimError::PolicyBug {
                            policy: policy.name().to_string(),
                            detail: format!("started {job:?}, which is not queued"),
                        });
                    }
                    start[job.0 as usize] = Some(now);
                    match workloads[job.0 as usize].duration {
                        Some(d) => completions.push(Reverse((now + d, job.0))),
                        None => events_done += 1, // runs to the end: no completion event
                    }
                }
            }
        }

        last_t = Some(now);
        last_alloc = cluster.allocated_gpu_milli();
        peak_queue = peak_queue.max(queue.len() as u32);
        let point = TimePoint {
            t_s: at(now),
            gpu_allocation: last_alloc as f64 / total_gpu_milli,
            queue_len: queue.len() as u32,
            running: cluster.running_count() as u32,
        };
        match series.last_mut() {
            Some(p) if p.t_s == point.t_s => *p = point,
            _ => series.push(point),
        }
        if events_done / progress_every != before / progress_every {
            progress(Progress { events_done, events_total });
        }
    }
    progress(Progress { events_done: events_total, events_total });

    let first_submit = order.first().map(|&i| workloads[i as usize].submit_time).unwrap_or(SimTime::ZERO);
    let end = last_t.unwrap_or(first_submit);
    let makespan_ms = (end - first_submit).as_millis();

    let mut jcts = Vec::new();
    let mut waits = Vec::new();
    let mut records = Vec::new();
    let mut unfinished = 0u64;
    for (i, w) in workloads.iter().enumerate() {
        let submit = w.submit_time;
        if let Some(s) = start[i] {
            waits.push((s - submit).as_secs_f64());
        }
        match finish[i] {
            Some(f) => jcts.push((f - submit).as_secs_f64()),
            None if start[i].is_some() || queue.contains(w.id) => unfinished += 1,
            None => {}
        }
        if config.keep_records {
            records.push(JobRecord {
                id: w.id,
                tenant: w.tenant.0,
                gpus: w.gpu.total_gpus(),
                submit_s: at(submit),
                start_s: start[i].map(at),
                finish_s: finish[i].map(at),
            });
        }
    }
    jcts.sort_by(f64::total_cmp);
    waits.sort_by(f64::total_cmp);
    let utilization = if makespan_ms == 0 { 0.0 } else { allocated_integral / (total_gpu_milli * makespan_ms as f64) };

    Ok(SimReport {
        policy: policy.name().to_string(),
        seed: config.seed,
        fleet_gpus: fleet.total_gpus(),
        fleet_nodes: fleet.nodes.len() as u64,
        jobs: workloads.len() as u64,
        completed: jcts.len() as u64,
        never_fit,
        unfinished,
        mean_jct_s: mean(&jcts),
        p50_jct_s: percentile(&jcts, 0.5),
        p99_jct_s: percentile(&jcts, 0.99),
        mean_wait_s: mean(&waits),
        p50_wait_s: percentile(&waits, 0.5),
        p99_wait_s: percentile(&waits, 0.99),
        makespan_s: makespan_ms as f64 / 1000.0,
        gpu_utilization: utilization,
        peak_queue_len: peak_queue,
        events: events_done,
        series,
        records,
    })
}
