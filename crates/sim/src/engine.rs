//! The event loop.

use crate::metrics::{EventKind, JobRecord, SimEvent, SimReport, TimePoint, at, mean, percentile, tenant_rows};
use model::{Fleet, SimDuration, SimTime, Workload, WorkloadId};
use sched::{ClusterState, Decision, Demand, Policy, Queue, QueuedJob};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

/// Knobs of one run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Recorded in the report; policies that randomise get it when they are built.
    pub seed: u64,
    /// Keep the per-job records in the report (for CDFs and per-tenant figures).
    pub keep_records: bool,
    /// Keep every start, preemption and finish in [`SimReport::log`] (for invariant checks).
    pub keep_events: bool,
    /// A running job checkpoints after every this much work; a preempted job keeps its work up to
    /// its last checkpoint and redoes the rest. Zero: it keeps all its work.
    pub checkpoint_interval: SimDuration,
    /// A preempted job, when it starts again, holds its GPUs this long before it makes progress
    /// (reloading the checkpoint, rebuilding the process group).
    pub restart_delay: SimDuration,
}

impl Default for SimConfig {
    /// Seed 0, no records or events, a checkpoint every 5 minutes of work, a 60 s restart. With
    /// the policies' 10-minute minimum runtime, every run keeps at least 4 minutes of work, so
    /// repeated preemption cannot stall a job.
    fn default() -> Self {
        SimConfig {
            seed: 0,
            keep_records: false,
            keep_events: false,
            checkpoint_interval: SimDuration::from_secs(300),
            restart_delay: SimDuration::from_secs(60),
        }
    }
}

/// What the engine tracks for one job across its runs.
#[derive(Clone, Debug, Default)]
struct JobState {
    first_start: Option<SimTime>,
    last_start: Option<SimTime>,
    finish: Option<SimTime>,
    running: bool,
    /// Bumped at every preemption so the completion scheduled for the run before is ignored.
    generation: u32,
    progress: SimDuration,
    attained_gpu_s: f64,
    lost_gpu_s: f64,
    preemptions: u32,
    switches: u32,
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
    let mut completions: BinaryHeap<Reverse<(SimTime, u32, u32)>> = BinaryHeap::new();
    let mut jobs: Vec<JobState> = vec![JobState::default(); workloads.len()];
    let mut never_fit = 0u64;
    let total_gpu_milli = cluster.total_gpu_milli().max(1) as f64;
    let bug = |policy: &dyn Policy, detail: String| SimError::PolicyBug { policy: policy.name().to_string(), detail };

    let events_total = workloads.len() as u64 * 2;
    let mut events_done = 0u64;
    let progress_every = (events_total / 200).max(1);
    let mut series: Vec<TimePoint> = Vec::new();
    let mut log: Vec<SimEvent> = Vec::new();
    let mut allocated_integral = 0.0f64; // gpu_milli x ms
    let mut last_t: Option<SimTime> = None;
    let mut last_alloc = 0u64;
    let mut peak_queue = 0u32;
    let mut next_arrival = 0usize;
    let mut preemptions = 0u64;
    let mut gang_starts = 0u64;
    let mut gang_switches = 0u64;
    let min_runtime = policy.min_runtime();
    // Queued jobs share the workload through an Arc so a policy can keep it cheaply.
    let shared: Vec<Arc<Workload>> = workloads.iter().cloned().map(Arc::new).collect();

    loop {
        let t_arrival = order.get(next_arrival).map(|&i| workloads[i as usize].submit_time);
        let t_completion = completions.peek().map(|Reverse((t, _, _))| *t);
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

        while let Some(Reverse((t, id, generation))) = completions.peek().copied() {
            if t != now {
                break;
            }
            completions.pop();
            let job = &mut jobs[id as usize];
            if generation != job.generation || !job.running {
                continue; // the run this completion belonged to was preempted
            }
            let id = WorkloadId(id);
            if cluster.release(id).is_err() {
                return Err(bug(policy, format!("{id:?} completed without an allocation")));
            }
            let started = job.last_start.unwrap_or(now);
            job.running = false;
            job.finish = Some(now);
            job.attained_gpu_s += workloads[id.0 as usize].gpu.total_gpus() * now.since(started).as_secs_f64();
            if config.keep_events {
                log.push(SimEvent { t_ms: now.as_millis(), job: id, kind: EventKind::Finish });
            }
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
            queue.push(QueuedJob::new(shared[i as usize].clone(), demand, now));
        }

        let mut requeue: Vec<QueuedJob> = Vec::new();
        for decision in policy.schedule(now, &queue, &mut cluster) {
            match decision {
                Decision::Start { job, placement } => {
                    let Some(queued) = queue.remove(job) else {
                        return Err(bug(policy, format!("started {job:?}, which is not queued")));
                    };
                    let state = &mut jobs[job.0 as usize];
                    state.running = true;
                    state.last_start = Some(now);
                    state.first_start.get_or_insert(now);
                    if placement.members.len() > 1 {
                        state.switches = sched::switches_spanned(&fleet, &placement);
                        gang_starts += 1;
                        gang_switches += u64::from(state.switches);
                    } else {
                        state.switches = u32::from(!placement.members.is_empty());
                    }
                    if config.keep_events {
                        let gpus = placement
                            .members
                            .iter()
                            .map(|m| (m.node, m.gpus.iter().map(|g| (g.index, g.milli)).collect()))
                            .collect();
                        log.push(SimEvent { t_ms: now.as_millis(), job, kind: EventKind::Start { gpus } });
                    }
                    let delay = if queued.preemptions > 0 { config.restart_delay } else { SimDuration::ZERO };
                    state.lost_gpu_s += workloads[job.0 as usize].gpu.total_gpus() * delay.as_secs_f64();
                    match workloads[job.0 as usize].duration {
                        Some(d) => {
                            let rest = SimDuration(d.as_millis().saturating_sub(state.progress.as_millis()));
                            completions.push(Reverse((now + delay + rest, job.0, state.generation)));
                        }
                        None => {
                            if queued.preemptions == 0 {
                                events_done += 1; // runs to the end: no completion event
                            }
                        }
                    }
                }
                Decision::Preempt { job } => {
                    let Some(state) = jobs.get_mut(job.0 as usize) else {
                        return Err(bug(policy, format!("preempted {job:?}, which does not exist")));
                    };
                    if !state.running || cluster.allocation(job).is_some() {
                        return Err(bug(policy, format!("preempted {job:?}, which is not running or not released")));
                    }
                    let started = state.last_start.unwrap_or(now);
                    let ran = now.since(started);
                    if ran < min_runtime {
                        return Err(bug(policy, format!("preempted {job:?} after {ran}, under its minimum runtime")));
                    }
                    let w = &workloads[job.0 as usize];
                    let gpus = w.gpu.total_gpus();
                    let delay = if state.preemptions > 0 { config.restart_delay } else { SimDuration::ZERO };
                    let productive = ran.as_millis().saturating_sub(delay.as_millis());
                    let raw = state.progress.as_millis() + productive;
                    let ckpt = config.checkpoint_interval.as_millis();
                    let saved = raw.checked_div(ckpt).map_or(raw, |n| (n * ckpt).max(state.progress.as_millis()));
                    let kept = saved - state.progress.as_millis();
                    // Work since the last checkpoint is lost; the restart delay was charged when
                    // the run started, less what this run did not get to spend of it.
                    let unspent = delay.as_millis() - ran.as_millis().min(delay.as_millis());
                    state.lost_gpu_s += gpus * ((productive - kept) as f64 - unspent as f64) / 1000.0;
                    state.attained_gpu_s += gpus * ran.as_secs_f64();
                    state.progress = SimDuration(saved);
                    state.preemptions += 1;
                    state.generation += 1;
                    state.running = false;
                    preemptions += 1;
                    if config.keep_events {
                        log.push(SimEvent { t_ms: now.as_millis(), job, kind: EventKind::Preempt });
                    }
                    let mut q = QueuedJob::new(shared[job.0 as usize].clone(), Demand::of(w, &fleet), now);
                    q.attained_gpu_s = state.attained_gpu_s;
                    q.progress = state.progress;
                    q.preemptions = state.preemptions;
                    q.last_started = Some(started);
                    q.last_run = ran;
                    requeue.push(q);
                }
            }
        }
        for q in requeue {
            queue.push(q);
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
            progress(Progress { events_done: events_done.min(events_total), events_total });
        }
    }
    progress(Progress { events_done: events_total, events_total });

    let first_submit = order.first().map(|&i| workloads[i as usize].submit_time).unwrap_or(SimTime::ZERO);
    let end = last_t.unwrap_or(first_submit);
    let makespan_ms = (end - first_submit).as_millis();

    let mut jcts = Vec::new();
    let mut waits = Vec::new();
    let mut records = Vec::with_capacity(workloads.len());
    let mut unfinished = 0u64;
    let mut lost_gpu_s = 0.0;
    for (i, w) in workloads.iter().enumerate() {
        let submit = w.submit_time;
        let job = &jobs[i];
        if let Some(s) = job.first_start {
            waits.push((s - submit).as_secs_f64());
        }
        match job.finish {
            Some(f) => jcts.push((f - submit).as_secs_f64()),
            None if job.first_start.is_some() || queue.contains(w.id) => unfinished += 1,
            None => {}
        }
        let mut attained = job.attained_gpu_s;
        if job.running
            && let Some(s) = job.last_start
        {
            attained += w.gpu.total_gpus() * end.since(s).as_secs_f64();
        }
        lost_gpu_s += job.lost_gpu_s;
        records.push(JobRecord {
            id: w.id,
            tenant: w.tenant.0,
            gpus: w.gpu.total_gpus(),
            submit_s: at(submit),
            start_s: job.first_start.map(at),
            finish_s: job.finish.map(at),
            duration_s: w.duration.map(|d| d.as_secs_f64()),
            preemptions: job.preemptions,
            gpu_hours: attained / 3600.0,
            lost_gpu_hours: job.lost_gpu_s / 3600.0,
            switches: job.switches,
        });
    }
    let (tenants, jain_fairness) = tenant_rows(&records);
    if !config.keep_records {
        records = Vec::new();
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
        preemptions,
        lost_gpu_hours: lost_gpu_s / 3600.0,
        mean_switches_per_gang: if gang_starts == 0 { 0.0 } else { gang_switches as f64 / gang_starts as f64 },
        jain_fairness,
        tenants,
        series,
        records,
        log,
    })
}
