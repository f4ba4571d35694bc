//! The scheduler loop. Each round rebuilds the cluster from the store, lets the policy start what
//! fits, records its decisions as conditional state changes, and launches or resumes the work on
//! the nodes. Every step reads the store first and writes through a conditional update, so a
//! round repeated after a crash does nothing twice.

use crate::convert::{decode_placement, encode_placement, total_gpus, workload_of};
use crate::node::{NodeExecutor, RunOutcome, RunSpec};
use crate::{AppState, Snapshot, now_ms};
use model::SimTime;
use sched::{ClusterState, Decision, Demand, Placement, Policy, Queue, QueuedJob};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Change, Job, JobState, StoreError, Transition};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// How a job's run ended, reported by its task.
#[derive(Debug)]
struct Done {
    job_id: i64,
    outcome: Ended,
}

#[derive(Debug)]
enum Ended {
    Exited(i32),
    Lost(String),
    /// Ran past `max_runtime_s`.
    Expired(u64),
}

pub struct Scheduler {
    st: AppState,
    policy: Box<dyn Policy>,
    /// Holds the policy to the sites' grid caps, when any site declares one.
    guard: Option<sched::power::PowerGuard>,
    /// Holds deferrable jobs out of the queue until their hour comes.
    deferral: Option<sched::defer::DeferralGate>,
    /// Price-following GPU caps by UTC hour of the year, fraction of the board limit.
    gpu_cap_by_hour: Option<Vec<f64>>,
    executor: Arc<dyn NodeExecutor>,
    tick: Duration,
    /// Jobs whose work this process runs.
    runs: HashMap<i64, JoinHandle<()>>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Ends received while waiting, recorded at the start of the next round.
    backlog: Vec<Done>,
    /// Rounds run; each round's queue is a new generation, so policies read it whole.
    rounds: u64,
}

impl Scheduler {
    pub fn new(
        st: AppState,
        policy: Box<dyn Policy>,
        guard: Option<sched::power::PowerGuard>,
        executor: Arc<dyn NodeExecutor>,
        tick: Duration,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scheduler {
            st,
            policy,
            guard,
            deferral: None,
            gpu_cap_by_hour: None,
            executor,
            tick,
            runs: HashMap::new(),
            done_tx,
            done_rx,
            backlog: Vec::new(),
            rounds: 0,
        }
    }

    /// No GPU runs above `caps[h]` of its board limit in UTC hour `h` of the year (price caps).
    pub fn cap_by_hour(&mut self, caps: Vec<f64>) {
        self.gpu_cap_by_hour = Some(caps);
    }

    /// The price caps' ceiling this hour, fraction of the board limit (1: none).
    fn hour_ceiling(&self, now_ms: i64) -> f64 {
        let Some(caps) = self.gpu_cap_by_hour.as_ref().filter(|c| !c.is_empty()) else { return 1.0 };
        let hour = ((now_ms - crate::year_start_ms(now_ms)).max(0) / 3_600_000) as usize % caps.len();
        caps[hour].clamp(0.0, 1.0)
    }

    /// Deferrable jobs enter the queue when `gate` says (its series by UTC hour of the year).
    pub fn defer_with(&mut self, gate: sched::defer::DeferralGate) {
        self.deferral = Some(gate);
    }

    /// When a deferrable job may enter the queue, Unix ms; `None` for any other job. Computed
    /// from the submit time alone, so every round (and a restarted server) agrees.
    fn release_ms(&self, job: &Job) -> Option<i64> {
        let gate = self.deferral.as_ref().filter(|_| job.spec.deferrable)?;
        let year = crate::year_start_ms(job.submitted_ms);
        let within = SimTime((job.submitted_ms - year).max(0) as u64);
        Some(year + gate.release_time(within).as_millis() as i64)
    }

    /// Dynamic power mode and price caps: asks every GPU node's agent for the lowest of the
    /// admin's cap, the guard's cap for the jobs on it and, in a dear hour, the price caps'
    /// ceiling; holds back this round's starts on a site until its agents report the guard's
    /// lowered caps applied, so new work never draws beside GPUs that are still above the caps its
    /// admission counted on. Idempotent: asking again changes nothing.
    fn ask_power_caps(
        &mut self,
        cluster: &mut ClusterState,
        queue: &Queue,
        decisions: Vec<Decision>,
        now: SimTime,
    ) -> Vec<Decision> {
        let Some(remote) = &self.st.remote else { return decisions };
        let guard = self.guard.as_ref().filter(|_| self.st.dynamic_caps);
        if guard.is_none() && self.gpu_cap_by_hour.is_none() {
            return decisions;
        }
        let ceiling = self.hour_ceiling(now.as_millis() as i64);
        let fleet = self.st.fleet.clone();
        // Per node, the lowest cap (fraction of the board limit) of the jobs on it.
        let mut fraction = vec![1.0f64; fleet.nodes.len()];
        for (id, p) in cluster.allocations().filter(|_| guard.is_some()) {
            let cap = guard.map_or(1.0, |g| g.job_cap(*id));
            for m in &p.members {
                if let Some(f) = fraction.get_mut(m.node.index()) {
                    *f = f.min(cap);
                }
            }
        }
        let admin = self.st.site_caps.read().unwrap_or_else(|e| e.into_inner()).clone();
        let applied = remote.applied_caps();
        let applied_cpu = remote.applied_cpu_caps();
        let hosts_capped = guard.map_or(&[][..], |g| g.hosts_capped());
        let mut waiting_sites: HashSet<usize> = HashSet::new();
        for id in fleet.node_ids() {
            let node = fleet.node(id);
            let Some(board) = fleet.node_gpu_model(id).filter(|_| node.gpu_count > 0).map(|m| m.board_power_watts)
            else {
                continue;
            };
            let site = node.site.index();
            let ours = Some(fraction[id.index()]).filter(|&f| f < 1.0).map(|f| (f * board).floor());
            let theirs = fleet.sites.get(site).and_then(|s| admin.get(&s.name)).copied();
            // The price caps' ceiling, in dear hours only.
            let dear = Some(ceiling).filter(|&c| c < 1.0).map(|c| (c * board).round());
            let want = [ours, theirs, dear].into_iter().flatten().reduce(f64::min);
            remote.set_gpu_power_cap(std::slice::from_ref(&node.name), want);
            let has = applied.get(&node.name).copied().unwrap_or(board);
            if let Some(w) = ours
                && has > w + 0.5
                && remote.is_live(&node.name)
            {
                waiting_sites.insert(site);
            }
            // The site's worst case counts its GPU nodes' CPUs at their typical draw: their
            // packages are held there until the site no longer needs it.
            let cpu = hosts_capped
                .get(site)
                .copied()
                .unwrap_or(false)
                .then(|| energy::it_power::NodePower::of(&fleet, id).cpu_typical_watts.floor());
            remote.set_cpu_power_cap(&node.name, cpu);
            if let Some(w) = cpu
                && applied_cpu.get(&node.name).is_none_or(|&has| has > w + 0.5)
                && remote.is_live(&node.name)
            {
                waiting_sites.insert(site);
            }
        }
        if waiting_sites.is_empty() {
            return decisions;
        }
        let mut kept = Vec::with_capacity(decisions.len());
        for d in decisions {
            let held = match &d {
                Decision::Start { job, placement } => {
                    placement.members.iter().any(|m| waiting_sites.contains(&fleet.node(m.node).site.index()))
                        && cluster.release(*job).is_ok()
                        && {
                            if let (Some(q), Some(seq)) = (queue.get(*job), queue.seq(*job)) {
                                self.policy.start_undone(q, seq, now);
                            }
                            true
                        }
                }
                Decision::Preempt { .. } => false,
            };
            if held {
                tracing::debug!(decision = ?d, "start held until the agents apply lower power caps");
            } else {
                kept.push(d);
            }
        }
        kept
    }

    /// Runs a round whenever something happens (a submission, a cancellation, a run's end, a
    /// node lost) and at least every tick. Whatever happens during a round is handled by the
    /// next one, together: a burst of events costs a few rounds, not one each.
    pub async fn run(mut self) {
        tracing::info!(policy = self.policy.name(), "scheduler started");
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "scheduling round failed; retrying");
            }
            let wake = self.st.wake.clone();
            tokio::select! {
                _ = wake.notified() => {}
                done = self.done_rx.recv() => {
                    if let Some(done) = done {
                        self.backlog.push(done);
                    }
                }
                _ = tokio::time::sleep(self.tick) => {}
            }
        }
    }

    /// Records how jobs ended: success, failure (or a restart), expiry; all in one transaction.
    async fn finish_all(&mut self) -> Result<(), StoreError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.backlog.push(done);
        }
        if self.backlog.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = self.backlog.iter().map(|d| d.job_id).collect();
        for id in &ids {
            self.runs.remove(id);
        }
        let store = self.st.store.clone();
        let jobs: HashMap<i64, Job> = store.jobs_by_ids(&ids).await?.into_iter().map(|j| (j.id, j)).collect();
        let mut steps = Vec::new();
        for done in &self.backlog {
            let Some(job) = jobs.get(&done.job_id) else { continue };
            if job.state != JobState::Running {
                continue;
            }
            let (to, change) = self.ending(job, &done.outcome);
            steps.push(Transition { job_id: job.id, from: vec![JobState::Running], to, change });
        }
        let now = now_ms();
        let applied = store.transitions(&steps, now).await?;
        self.backlog.clear();
        for (step, ok) in steps.iter().zip(applied) {
            if ok {
                tracing::info!(job = step.job_id, state = %step.to, "job ended");
                self.st.job_changed();
                // The policy forgets the run (and learns from it: durations, usage).
                if let Some(job) = jobs.get(&step.job_id)
                    && let Some(w) = workload_of(job)
                {
                    let started = SimTime(job.started_ms.unwrap_or(now).max(0) as u64);
                    self.policy.on_finished(&w, started, SimTime(now.max(0) as u64));
                }
            }
        }
        Ok(())
    }

    fn ending(&self, job: &Job, outcome: &Ended) -> (JobState, Change) {
        match outcome {
            Ended::Exited(0) => {
                (JobState::Succeeded, Change { finished: true, exit_code: Some(0), ..Default::default() })
            }
            Ended::Expired(secs) if job.spec.command.is_none() => (
                JobState::Succeeded,
                Change { finished: true, message: Some(format!("expired after {secs} s")), ..Default::default() },
            ),
            Ended::Expired(secs) => (
                JobState::Failed,
                Change {
                    finished: true,
                    message: Some(format!("ran past its maximum runtime of {secs} s")),
                    ..Default::default()
                },
            ),
            Ended::Exited(code) => self.failure(job, Some(i64::from(*code)), format!("exited with code {code}")),
            Ended::Lost(message) => self.failure(job, None, message.clone()),
        }
    }

    fn failure(&self, job: &Job, exit_code: Option<i64>, why: String) -> (JobState, Change) {
        if job.spec.restart_policy == "on-failure" && job.attempts <= job.spec.max_restarts {
            let message = format!("{why}; restarting (restart {} of {})", job.attempts, job.spec.max_restarts);
            let change = Change {
                placement_json: Some(None),
                reset_times: true,
                exit_code,
                message: Some(message),
                ..Default::default()
            };
            (JobState::Pending, change)
        } else {
            (JobState::Failed, Change { finished: true, exit_code, message: Some(why), ..Default::default() })
        }
    }

    /// One round.
    async fn round(&mut self) -> Result<(), StoreError> {
        self.finish_all().await?;
        let store = self.st.store.clone();
        let active = store.active_jobs().await?;
        let quotas: HashMap<i64, Option<i64>> =
            store.tenants().await?.into_iter().map(|t| (t.id, t.gpu_quota)).collect();

        // Work of jobs that are no longer active (cancelled, released) stops here.
        let active_ids: HashSet<i64> = active.iter().map(|j| j.id).collect();
        let mut stopped = Vec::new();
        self.runs.retain(|id, handle| {
            let keep = active_ids.contains(id);
            if !keep {
                handle.abort();
                tracing::info!(job = id, "work stopped");
                stopped.push(*id);
            }
            keep
        });
        let wall = SimTime(now_ms().max(0) as u64);
        for id in stopped {
            // Cancelled or released: the policy keeps its own record of the run, by id.
            if let Ok(id) = u32::try_from(id) {
                let w = crate::convert::request_workload(id, 0, 0, None);
                self.policy.on_finished(&w, wall, wall);
            }
        }

        let t0 = Instant::now();
        let fleet = self.st.fleet.clone();
        let mut cluster = ClusterState::new(fleet.clone());
        let mut held: HashMap<i64, u64> = HashMap::new();
        let mut placed: Vec<(&Job, Placement)> = Vec::new();
        for job in active.iter().filter(|j| matches!(j.state, JobState::Scheduled | JobState::Running)) {
            let restored = restore(&self.st, job).and_then(|(w, p)| {
                let demand = Demand::of(&w, &fleet);
                cluster.allocate(w.id, &demand, p.clone()).map_err(|e| e.to_string())?;
                Ok(p)
            });
            match restored {
                Ok(p) => {
                    *held.entry(job.spec.tenant_id).or_default() += total_gpus(job);
                    placed.push((job, p));
                }
                Err(why) => {
                    tracing::warn!(job = job.id, error = %why, "job's placement cannot be restored; failing it");
                    let change = Change {
                        finished: true,
                        message: Some(format!("lost its placement: {why}")),
                        ..Default::default()
                    };
                    if store.transition(job.id, &[job.state], JobState::Failed, now_ms(), &change).await? {
                        self.st.job_changed();
                    }
                }
            }
        }

        // Nodes without a live agent take no new work: their free GPUs are held by a blocker.
        let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
        for (k, name) in self.executor.unavailable(&names).iter().enumerate() {
            let Some(&id) = self.st.node_ids.get(name) else { continue };
            let free: Vec<sched::GpuShare> = cluster
                .gpu_free_milli(id)
                .iter()
                .enumerate()
                .filter(|(_, m)| **m >= 1000)
                .map(|(i, m)| sched::GpuShare { index: i as u8, milli: *m })
                .collect();
            if free.is_empty() {
                continue;
            }
            let blocker = model::WorkloadId(u32::MAX - k as u32);
            let w = crate::convert::request_workload(blocker.0, free.len() as i64, 1, None);
            let demand = Demand::of(&w, &fleet);
            let member = sched::MemberPlacement {
                node: id,
                cpu_milli: demand.cpu_milli,
                memory_mib: demand.memory_mib,
                gpus: free,
            };
            let _ = cluster.allocate(blocker, &demand, Placement { members: vec![member] });
        }

        // The queue: priority first, deferrable work after the rest, then arrival; a tenant's
        // jobs enter only while they fit its quota, deferrable ones once the gate lets them.
        let wall_now = now_ms();
        let mut pending: Vec<&Job> = active
            .iter()
            .filter(|j| j.state == JobState::Pending)
            .filter(|j| self.release_ms(j).is_none_or(|t| t <= wall_now))
            .collect();
        pending.sort_by_key(|j| (std::cmp::Reverse(j.spec.priority), j.spec.deferrable, j.id));
        self.rounds += 1;
        let mut queue = Queue::with_generation(self.rounds);
        let mut reserved = held.clone();
        let mut by_id: HashMap<u32, &Job> = HashMap::new();
        for job in &pending {
            let Some(w) = workload_of(job) else { continue };
            let want = total_gpus(job);
            let used = reserved.entry(job.spec.tenant_id).or_default();
            if let Some(Some(quota)) = quotas.get(&job.spec.tenant_id)
                && *used + want > quota.max(&0).unsigned_abs()
            {
                continue;
            }
            *used += want;
            by_id.insert(w.id.0, job);
            let demand = Demand::of(&w, &fleet);
            let enqueued_at = w.submit_time;
            queue.push(QueuedJob::new(Arc::new(w), demand, enqueued_at));
        }
        let sim_now = SimTime(now_ms().max(0) as u64);
        if let Some(g) = self.guard.as_mut() {
            g.before(&mut cluster);
        }
        let decisions = self.policy.schedule(sim_now, &queue, &mut cluster);
        let decisions = match self.guard.as_mut() {
            Some(g) => {
                if g.wants_shed_order() {
                    g.set_shed_order(self.policy.shed_order(sim_now));
                }
                let kept = g.after(&mut cluster, decisions);
                for id in g.take_undone() {
                    if let (Some(job), Some(seq)) = (queue.get(id), queue.seq(id)) {
                        self.policy.start_undone(job, seq, sim_now);
                    }
                }
                kept
            }
            None => decisions,
        };
        let decisions = self.ask_power_caps(&mut cluster, &queue, decisions, sim_now);
        self.st.metrics.placement_seconds.observe(t0.elapsed().as_secs_f64());

        // Starts are recorded in one transaction: pending to scheduled with the placement, then
        // scheduled to running (a job placed in an earlier round and not yet launched, after a
        // crash, takes only the second step).
        let now = now_ms();
        let mut scheduled_now = 0usize;
        let mut starts: Vec<(&Job, Placement)> = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Start { job, placement } => {
                    let Some(stored) = by_id.get(&job.0) else { continue };
                    starts.push((stored, placement));
                }
                Decision::Preempt { job } => {
                    let id = i64::from(job.0);
                    placed.retain(|(j, _)| j.id != id);
                    if let Some(handle) = self.runs.remove(&id) {
                        handle.abort();
                    }
                    let off = Change {
                        placement_json: Some(None),
                        message: Some("preempted by the scheduler".into()),
                        ..Default::default()
                    };
                    let from = [JobState::Scheduled, JobState::Running];
                    if store.transition(id, &from, JobState::Preempted, now, &off).await? {
                        let back = Change { reset_times: true, message: Some("requeued".into()), ..Default::default() };
                        store.transition(id, &[JobState::Preempted], JobState::Pending, now, &back).await?;
                        tracing::info!(job = id, "job preempted");
                        self.st.job_changed();
                    }
                }
            }
        }
        let mut steps = Vec::new();
        for (job, placement) in &starts {
            let change =
                Change { placement_json: Some(Some(encode_placement(&fleet, placement))), ..Default::default() };
            steps.push(Transition { job_id: job.id, from: vec![JobState::Pending], to: JobState::Scheduled, change });
        }
        let new_starts = steps.len();
        for (job, _) in placed.iter().filter(|(j, _)| !self.runs.contains_key(&j.id) && j.state == JobState::Scheduled)
        {
            let change = Change { started: true, ..Default::default() };
            steps.push(Transition { job_id: job.id, from: vec![JobState::Scheduled], to: JobState::Running, change });
        }
        for (job, _) in &starts {
            let change = Change { started: true, ..Default::default() };
            steps.push(Transition { job_id: job.id, from: vec![JobState::Scheduled], to: JobState::Running, change });
        }
        let applied = store.transitions(&steps, now).await?;
        let mut now_running: HashSet<i64> = HashSet::new();
        for (k, (step, ok)) in steps.iter().zip(&applied).enumerate() {
            if !*ok {
                continue;
            }
            self.st.job_changed();
            if k < new_starts {
                scheduled_now += 1;
                tracing::info!(job = step.job_id, "job scheduled");
            } else {
                now_running.insert(step.job_id);
            }
        }
        let scheduled: HashSet<i64> =
            steps[..new_starts].iter().zip(&applied).filter(|(_, ok)| **ok).map(|(s, _)| s.job_id).collect();
        placed.extend(starts.into_iter().filter(|(j, _)| scheduled.contains(&j.id)));

        // Launch what is placed and not yet running here: new work starts, work that was running
        // before a restart resumes from its recorded start.
        let mut node_used = vec![0u32; fleet.nodes.len()];
        for (job, placement) in &placed {
            for m in &placement.members {
                if let Some(slot) = node_used.get_mut(m.node.index()) {
                    *slot += m.gpus.len() as u32;
                }
            }
            if self.runs.contains_key(&job.id) {
                continue;
            }
            let (started_at, generation) = match job.started_ms {
                Some(t) if job.state == JobState::Running => (t, job.attempts),
                _ if now_running.contains(&job.id) => (now, job.attempts + 1),
                _ => continue,
            };
            self.launch(job, placement, started_at, generation);
        }

        let running = placed.len();
        let queued = active.iter().filter(|j| j.state == JobState::Pending).count();
        self.st.metrics.running_jobs.set(running as i64);
        self.st.metrics.queue_length.set(queued.saturating_sub(scheduled_now) as i64);
        self.st.metrics.allocated_gpus.set((cluster.allocated_gpu_milli() / 1000) as i64);
        let mut snap = self.st.snapshot.write().unwrap_or_else(|e| e.into_inner());
        *snap = Snapshot { node_gpus_used: node_used };
        Ok(())
    }

    fn launch(&mut self, job: &Job, placement: &Placement, started_at_ms: i64, generation: i64) {
        let (args, env) = match crate::convert::args_env(job) {
            Ok(ae) => ae,
            Err(e) => {
                let _ = self.done_tx.send(Done { job_id: job.id, outcome: Ended::Lost(e.to_string()) });
                return;
            }
        };
        let fleet = &self.st.fleet;
        let members = placement.members.len() as u32;
        let master_node = placement.members.first().map(|m| fleet.node(m.node).name.clone());
        let futures: Vec<_> = placement
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| {
                self.executor.run(RunSpec {
                    job_id: job.id,
                    node: fleet.node(m.node).name.clone(),
                    member: i as u32,
                    members,
                    command: job.spec.command.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    gpus: m.gpus.iter().map(|g| u32::from(g.index)).collect(),
                    started_at_ms,
                    generation,
                    master_node: master_node.clone(),
                })
            })
            .collect();
        let deadline = job.spec.max_runtime_s.map(|s| {
            let end_ms = started_at_ms.saturating_add(s.saturating_mul(1000));
            (s.max(0) as u64, Duration::from_millis(end_ms.saturating_sub(now_ms()).max(0) as u64))
        });
        let tx = self.done_tx.clone();
        let job_id = job.id;
        let handle = tokio::spawn(async move {
            // The gang ends when every member has exited, or at the first failure.
            let all = futures_util::future::try_join_all(futures.into_iter().map(|f| async move {
                match f.await {
                    RunOutcome::Exited { code: 0 } => Ok(()),
                    RunOutcome::Exited { code } => Err(Ended::Exited(code)),
                    RunOutcome::Lost { message } => Err(Ended::Lost(message)),
                }
            }));
            let outcome = match deadline {
                Some((secs, left)) => match tokio::time::timeout(left, all).await {
                    Ok(r) => r.err().unwrap_or(Ended::Exited(0)),
                    Err(_) => Ended::Expired(secs),
                },
                None => all.await.err().unwrap_or(Ended::Exited(0)),
            };
            let _ = tx.send(Done { job_id, outcome });
        });
        tracing::info!(job = job.id, members, "work launched");
        self.runs.insert(job.id, handle);
    }
}

/// A placed job's workload and placement, resolved against the fleet.
fn restore(st: &AppState, job: &Job) -> Result<(model::Workload, Placement), String> {
    let w = workload_of(job).ok_or_else(|| format!("job id {} out of range", job.id))?;
    let json = job.placement_json.as_deref().ok_or("no placement recorded")?;
    let p = decode_placement(json, &st.node_ids)?;
    Ok((w, p))
}
