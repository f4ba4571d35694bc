//! The scheduler loop: one task owns the site's live state ([`live::LiveState`]: the cluster,
//! the queue, the active jobs, the tenants' GPUs) and keeps it up to date from events — what the
//! API committed (submissions, cancellations, quotas, over a channel), how runs ended (from their
//! tasks), which nodes have an agent (from the executor) — so a round's cost grows with what
//! changed, not with the fleet or the running jobs. The store is the durable record: it is read
//! whole at start-up, and again after any failed write, and every decision is written there
//! through conditional updates before it acts, so a round repeated after a crash does nothing
//! twice.

pub mod bench;
mod grants;
mod live;
mod power;

use crate::convert::encode_placement;
use crate::node::{NodeExecutor, RunFuture, RunOutcome, RunSpec};
use crate::{AppState, now_ms};
pub(crate) use grants::MAX_GRANT_IDS;
use grants::{Gate, Grants};
use live::{LiveState, Place, is_placed_state};
use model::SimTime;
use sched::{Decision, Placement, Policy};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::{Change, Job, JobState, StoreError, Transition};
use tokio::sync::{mpsc, oneshot};

/// What the API tells the scheduler, once the store has committed it.
#[derive(Debug)]
pub(crate) enum SchedEvent {
    Submitted(Box<Job>),
    Cancelled(i64),
    QuotaSet {
        tenant_id: i64,
        quota: store::TenantQuota,
    },
    /// The site's federation lease now runs until `until_ms`, Unix ms on this server's clock,
    /// given for `lease_ms` (both stored already, under [`FEDERATION_LEASE_KEY`] and
    /// [`FEDERATION_LEASE_MS_KEY`]), and the federation grants these jobs their start (kept in
    /// memory only, see [`grants`]).
    FederationLease {
        until_ms: i64,
        lease_ms: i64,
        grant: Vec<i64>,
    },
    /// What other replicas wrote may have been missed (their notices were lost): read the
    /// whole state from the store again.
    Reload,
}

/// The settings key of the site's federation lease: until when federated jobs may start, Unix
/// ms on this server's clock.
pub(crate) const FEDERATION_LEASE_KEY: &str = "federation_lease_until_ms";

/// The settings key of the length of the last federation lease given, ms: once the lease has
/// lapsed for as long again, the federation restarts elsewhere the jobs that may restart, and
/// this site stops them first.
pub(crate) const FEDERATION_LEASE_MS_KEY: &str = "federation_lease_ms";

/// Why a federated job that restarts elsewhere was stopped on a site cut off from its federation.
const CUT_OFF_MESSAGE: &str =
    "stopped: this site lost its federation for longer than its lease; the federation restarts it elsewhere";

/// The sending side handed to the API.
pub(crate) type SchedEvents = mpsc::UnboundedSender<SchedEvent>;

/// How a job's run ended, reported by its task.
#[derive(Debug)]
struct Done {
    job_id: i64,
    /// The run's generation: an end reported by an older run of the job is stale.
    generation: i64,
    outcome: Ended,
}

#[derive(Debug)]
enum Ended {
    Exited(i32),
    Lost(String),
    /// Ran past `max_runtime_s`.
    Expired(u64),
    /// Stopped on the scheduler's request (cancelled or preempted), its nodes confirming it gone.
    Stopped,
}

/// A job's run as this process drives it, in a task that ends when every member's work is gone.
struct RunHandle {
    /// Asks the task to stop the members; it still ends only once their nodes confirm them gone.
    stop: Option<oneshot::Sender<()>>,
}

impl RunHandle {
    fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
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
    /// What the agents were last asked to cap.
    asked_caps: power::AskedCaps,
    executor: Arc<dyn NodeExecutor>,
    tick: Duration,
    /// The live state; `None` until read from the store (at start, and after a failed write).
    live: Option<LiveState>,
    /// Times the live state was read from the store: each read's queue is a new generation.
    loads: u64,
    /// Jobs whose work this process runs (or is stopping).
    runs: HashMap<i64, RunHandle>,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// Ends received, recorded at the start of the next round.
    backlog: Vec<Done>,
    events_rx: mpsc::UnboundedReceiver<SchedEvent>,
    /// Events received while waiting, applied at the start of the next round.
    inbox: Vec<SchedEvent>,
    /// Something changed since the policy last ran.
    changed: bool,
    /// Until when federated jobs may start, Unix ms (0: no lease given).
    federation_lease_until_ms: i64,
    /// Whether the last round found the federation lease held: its lapse is logged once.
    federation_open: bool,
    /// The length of the last federation lease given, ms (0: none known).
    federation_lease_ms: i64,
    /// The lease end whose lapse for as long again was acted on: each lapse stops its runs once.
    federation_cut_off_for_ms: i64,
    /// The federation's per-job start grants, and the jobs waiting for one. Kept across reads
    /// of the store, not across restarts.
    grants: Grants,
    /// Fault injection for tests (`DROME_FAILPOINT=before-exit-recorded`): the process aborts,
    /// as under `kill -9`, once runs have ended and before their ends are recorded.
    crash_before_recording_ends: bool,
    /// `DROME_FAILPOINT=after-preemption-recorded`: aborts once a preemption is recorded, before
    /// its run is asked to stop.
    crash_after_preempting: bool,
    /// `DROME_FAILPOINT=cancel-recorded`: aborts when told of a running job's cancellation (the
    /// store has it), before its run is asked to stop.
    crash_on_cancel: bool,
}

impl Scheduler {
    pub(crate) fn new(
        st: AppState,
        policy: Box<dyn Policy>,
        guard: Option<sched::power::PowerGuard>,
        executor: Arc<dyn NodeExecutor>,
        tick: Duration,
        events_rx: mpsc::UnboundedReceiver<SchedEvent>,
    ) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Scheduler {
            st,
            policy,
            guard,
            deferral: None,
            gpu_cap_by_hour: None,
            asked_caps: power::AskedCaps::default(),
            executor,
            tick,
            live: None,
            loads: 0,
            runs: HashMap::new(),
            done_tx,
            done_rx,
            backlog: Vec::new(),
            events_rx,
            inbox: Vec::new(),
            changed: true,
            federation_lease_until_ms: 0,
            federation_open: false,
            federation_lease_ms: 0,
            federation_cut_off_for_ms: 0,
            grants: Grants::default(),
            crash_before_recording_ends: std::env::var("DROME_FAILPOINT").is_ok_and(|v| v == "before-exit-recorded"),
            crash_after_preempting: std::env::var("DROME_FAILPOINT").is_ok_and(|v| v == "after-preemption-recorded"),
            crash_on_cancel: std::env::var("DROME_FAILPOINT").is_ok_and(|v| v == "cancel-recorded"),
        }
    }

    /// No GPU runs above `caps[h]` of its board limit in UTC hour `h` of the year (price caps).
    pub fn cap_by_hour(&mut self, caps: Vec<f64>) {
        self.gpu_cap_by_hour = Some(caps);
    }

    /// Deferrable jobs enter the queue when `gate` says (its series by UTC hour of the year).
    pub fn defer_with(&mut self, gate: sched::defer::DeferralGate) {
        self.deferral = Some(gate);
    }

    /// Runs a round whenever something happens (a submission, a cancellation, a run's end, a
    /// node lost) and at least every tick. Whatever happens during a round is handled by the
    /// next one, together: a burst of events costs a few rounds, not one each.
    pub async fn run(mut self) {
        tracing::info!(policy = self.policy.name(), "scheduler started");
        loop {
            if let Err(e) = self.round().await {
                tracing::warn!(error = %e, "scheduling round failed; reading the store again");
                self.live = None;
            }
            let mut wait = self.tick;
            if let Some(t) = self.live.as_ref().and_then(|l| l.next_release_ms()) {
                wait = wait.min(Duration::from_millis((t - now_ms()).clamp(1, i64::MAX) as u64));
            }
            // The lease's end takes federated jobs out of the queue: the round after it comes then.
            let lapse_in_ms = self.federation_lease_until_ms - now_ms();
            if self.federation_open && lapse_in_ms >= 0 {
                wait = wait.min(Duration::from_millis(lapse_in_ms.clamp(1, i64::MAX) as u64));
            }
            // So does its lapse for as long again, which stops the runs the federation restarts
            // elsewhere.
            if let Some(cut_off_ms) = self.federation_cut_off_ms() {
                let cut_off_in_ms = cut_off_ms - now_ms();
                if cut_off_in_ms >= 0 {
                    wait = wait.min(Duration::from_millis(cut_off_in_ms.clamp(1, i64::MAX) as u64));
                }
            }
            let wake = self.st.wake.clone();
            tokio::select! {
                _ = wake.notified() => self.changed = true,
                event = self.events_rx.recv() => {
                    if let Some(event) = event {
                        self.inbox.push(event);
                    }
                }
                done = self.done_rx.recv() => {
                    if let Some(done) = done {
                        self.backlog.push(done);
                    }
                }
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Reads the live state from the store: every active job, every tenant's quota, which nodes
    /// have an agent. Work this process runs for jobs no longer placed stops; work of placed
    /// jobs that does not run here (after a restart) resumes in this round.
    async fn load(&mut self) -> Result<(), StoreError> {
        let t0 = Instant::now();
        let store = self.st.store.clone();
        // Changes seen from here on are applied after the read, on top of it.
        let _ = self.executor.availability_changes();
        let active = store.active_jobs().await?;
        let tenants = store.tenants().await?;
        self.federation_lease_until_ms = match store.setting(FEDERATION_LEASE_KEY).await? {
            Some(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!(value = %v, error = %e, "stored federation lease unreadable; federated jobs wait");
                0
            }),
            None => 0,
        };
        self.federation_lease_ms = match store.setting(FEDERATION_LEASE_MS_KEY).await? {
            Some(v) => v.parse().unwrap_or_else(|e| {
                tracing::warn!(value = %v, error = %e, "stored federation lease length unreadable; federated runs go on");
                0
            }),
            None => 0,
        };
        self.loads += 1;
        let fleet = self.st.fleet.clone();
        let mut live = LiveState::new(fleet.clone(), self.loads);
        for t in &tenants {
            live.set_quota(t.id, t.quota);
        }
        let now = now_ms();
        let lease_open = now < self.federation_lease_until_ms;
        live.set_federation_open(lease_open);
        let (placed, rest): (Vec<Job>, Vec<Job>) = active.into_iter().partition(|j| is_placed_state(j.state));
        let (stopping, mut pending): (Vec<Job>, Vec<Job>) =
            rest.into_iter().partition(|j| matches!(j.state, JobState::Preempted | JobState::Cancelled));
        // Runs being stopped first: work placed on their nodes waits for them to be gone.
        let mut stranded = Vec::new();
        let mut never_ran = Vec::new();
        for job in stopping {
            let placement = job
                .placement_json
                .as_deref()
                .and_then(|json| crate::convert::decode_placement(json, &self.st.node_ids).ok());
            match placement {
                Some(p) => {
                    let _ = live.add_stopping(job, p);
                }
                None if job.state == JobState::Cancelled => never_ran.push(job.id),
                None => stranded.push(job),
            }
        }
        store.finish_cancelled(&never_ran, now).await?;
        if !stranded.is_empty() {
            // Preempted without a placement to stop: nothing runs, back to the queue.
            let steps: Vec<Transition> = stranded.iter().map(|j| requeue_step(j.id, JobState::Preempted)).collect();
            let applied = store.transitions(&steps, now).await?;
            for (mut job, ok) in stranded.into_iter().zip(applied) {
                if ok {
                    job.state = JobState::Pending;
                    job.placement_json = None;
                    job.started_ms = None;
                    pending.push(job);
                }
            }
        }
        // Federated jobs placed but not started (before a restart, or a failed write) start
        // only under a lease and with their grant: without them they go back to the queue,
        // where they wait for them (after a restart no grant is known: they ask again).
        let grants = &self.grants;
        let (barred, placed): (Vec<Job>, Vec<Job>) = placed.into_iter().partition(|j| {
            j.state == JobState::Scheduled && grants.gate(j.id, j.spec.federated, lease_open) != Gate::Open
        });
        if !barred.is_empty() {
            let steps: Vec<Transition> = barred.iter().map(|j| requeue_step(j.id, JobState::Scheduled)).collect();
            let applied = store.transitions(&steps, now).await?;
            for ((mut job, ok), step) in barred.into_iter().zip(applied).zip(&steps) {
                if ok {
                    if lease_open {
                        self.grants.held(job.id);
                    }
                    job = requeued(&job, &step.change);
                    pending.push(job);
                    self.st.job_changed();
                }
            }
        }
        // Placed work before the queue, so quotas count what is held first.
        let mut scheduled = Vec::new();
        for job in placed {
            let id = job.id;
            let state = job.state;
            let restored = job
                .placement_json
                .as_deref()
                .ok_or_else(|| "no placement recorded".to_string())
                .and_then(|json| crate::convert::decode_placement(json, &self.st.node_ids))
                .and_then(|p| live.add_placed(job, p).map_err(|e| e.to_string()));
            match restored {
                Ok(()) if state == JobState::Scheduled => {
                    let waits = live.job(id).is_some_and(|j| match &j.place {
                        Place::Placed(p) => live.blocks_start(p),
                        _ => false,
                    });
                    if waits {
                        live.wait_for_stops(id);
                    } else {
                        scheduled.push(id);
                    }
                }
                Ok(()) => {}
                Err(why) => {
                    tracing::warn!(job = id, error = %why, "job's placement cannot be restored; failing it");
                    let change = Change {
                        finished: true,
                        message: Some(format!("lost its placement: {why}")),
                        ..Default::default()
                    };
                    if store.transition(id, &[state], JobState::Failed, now, &change).await? {
                        self.st.job_changed();
                    }
                }
            }
        }
        pending.sort_by_key(|j| (std::cmp::Reverse(j.spec.priority), j.spec.deferrable, j.id));
        for job in pending {
            let release = release_ms(self.deferral.as_ref(), &job);
            let _ = live.add_pending(job, release, now);
        }
        let names: Vec<String> = fleet.nodes.iter().map(|n| n.name.clone()).collect();
        for name in self.executor.unavailable(&names) {
            if let Some(&id) = self.st.node_ids.get(&name) {
                live.set_available(id, false);
            }
        }
        for name in self.executor.runs_images(&names) {
            if let Some(&id) = self.st.node_ids.get(&name) {
                live.set_runs_images(id, true);
            }
        }
        // Jobs placed in an earlier round and not yet started (before a crash) start now.
        if !scheduled.is_empty() {
            let steps: Vec<Transition> = scheduled.iter().map(|&id| run_step(id)).collect();
            let applied = store.transitions(&steps, now).await?;
            for (id, ok) in scheduled.iter().zip(applied) {
                if let Some(j) = live.job_mut(*id).filter(|_| ok) {
                    j.job.state = JobState::Assigned;
                    j.job.generation += 1;
                    j.job.started_ms = Some(now);
                    self.st.job_changed();
                    self.grants.done(*id);
                }
            }
        }
        // Work of jobs no longer placed (cancelled, ended while the state was being read) stops;
        // so does that of jobs being stopped.
        self.runs.retain(|id, handle| {
            let place = live.job(*id).map(|j| &j.place);
            if !matches!(place, Some(Place::Placed(_))) {
                handle.stop();
            }
            matches!(place, Some(Place::Placed(_) | Place::Stopping(_)))
        });
        let to_stop: Vec<(Job, Placement)> = live
            .stopping()
            .filter(|(j, _)| !self.runs.contains_key(&j.job.id))
            .map(|(j, p)| (j.job.clone(), p.clone()))
            .collect();
        for (job, placement) in &to_stop {
            self.launch_stop(job, placement);
        }
        let resume: Vec<(Job, Placement)> = live
            .placed()
            .filter(|(j, _)| j.job.state == JobState::Assigned && !self.runs.contains_key(&j.job.id))
            .map(|(j, p)| (j.job.clone(), p.clone()))
            .collect();
        for (job, placement) in &resume {
            let started = job.started_ms.unwrap_or(now);
            self.launch(job, placement, started, job.generation);
        }
        {
            let mut snap = self.st.snapshot.write().unwrap_or_else(|e| e.into_inner());
            snap.node_gpus_used = live.node_gpus_used().to_vec();
            snap.gpus_pending_milli = live.pending_gpu_milli();
        }
        let _ = live.take_touched_nodes();
        self.grants.prune(None, |id| live.job(id).map(|j| j.job.state));
        tracing::info!(
            placed = live.placed_jobs(),
            pending = live.pending_jobs(),
            resumed = resume.len(),
            stopping = to_stop.len(),
            ms = t0.elapsed().as_millis() as u64,
            "live state read from the store"
        );
        self.live = Some(live);
        self.changed = true;
        Ok(())
    }

    /// Applies the API's events and the nodes' availability changes to the live state.
    async fn take_events(&mut self) -> Result<(), StoreError> {
        while let Ok(event) = self.events_rx.try_recv() {
            self.inbox.push(event);
        }
        let changed_nodes = self.executor.availability_changes();
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        if !changed_nodes.is_empty() {
            let down: HashSet<String> = self.executor.unavailable(&changed_nodes).into_iter().collect();
            let imaging: HashSet<String> = self.executor.runs_images(&changed_nodes).into_iter().collect();
            for name in &changed_nodes {
                if let Some(&id) = self.st.node_ids.get(name) {
                    live.set_available(id, !down.contains(name));
                    live.set_runs_images(id, imaging.contains(name));
                }
            }
            self.changed = true;
        }
        if self.inbox.is_empty() {
            return Ok(());
        }
        self.changed = true;
        let now = now_ms();
        let wall = SimTime(now.max(0) as u64);
        if self.inbox.iter().any(|e| matches!(e, SchedEvent::Reload)) {
            // Everything the other events say is in the store, which the next round reads; but
            // for the grants, which live in memory only.
            tracing::info!("changes of other replicas may have been missed; reading the store again");
            for event in self.inbox.drain(..) {
                if let SchedEvent::FederationLease { grant, .. } = event {
                    self.grants.grant(grant);
                }
            }
            self.live = None;
            return Ok(());
        }
        let mut unfinished = Vec::new();
        for event in std::mem::take(&mut self.inbox) {
            match event {
                SchedEvent::Submitted(job) => {
                    let tenant_id = job.spec.tenant_id;
                    if !live.knows_tenant(tenant_id) {
                        let quota = self.st.store.tenant(tenant_id).await?.map(|t| t.quota).unwrap_or_default();
                        live.set_quota(tenant_id, quota);
                    }
                    let release = release_ms(self.deferral.as_ref(), &job);
                    // A job read with the whole state already is known: nothing to do.
                    let _ = live.add_pending(*job, release, now);
                }
                SchedEvent::Cancelled(id) => {
                    self.grants.done(id);
                    let Some(j) = live.job_mut(id) else { continue };
                    let (wid, state) = (j.wid, j.job.state);
                    if self.crash_on_cancel && state == JobState::Assigned {
                        tracing::error!(job = id, "failpoint cancel-recorded: aborting");
                        std::process::abort();
                    }
                    if matches!(j.place, Place::Stopping(_)) {
                        // Preempted and being stopped: once gone, it ends instead of requeueing.
                        j.job.state = JobState::Cancelled;
                        continue;
                    }
                    let running = state == JobState::Assigned && self.runs.contains_key(&id);
                    if running && live.stop(id, JobState::Cancelled) {
                        // Its GPUs take other work once its nodes confirm it gone.
                        if let Some(handle) = self.runs.get_mut(&id) {
                            handle.stop();
                        }
                        tracing::debug!(job = id, "stopping cancelled work");
                    } else {
                        live.remove(id);
                        self.runs.remove(&id);
                        if state == JobState::Assigned {
                            // No run of it here to wait for.
                            unfinished.push(id);
                        }
                    }
                    if matches!(state, JobState::Scheduled | JobState::Assigned) {
                        // The policy keeps its own record of the run, by id.
                        let w = crate::convert::request_workload(wid, 0, 0, None);
                        self.policy.on_finished(&w, wall, wall);
                    }
                }
                SchedEvent::QuotaSet { tenant_id, quota } => live.set_quota(tenant_id, quota),
                // The next round opens the queue to federated jobs (or closes it), and starts the
                // granted ones it places.
                SchedEvent::FederationLease { until_ms, lease_ms, grant } => {
                    self.federation_lease_until_ms = until_ms;
                    self.federation_lease_ms = lease_ms;
                    self.grants.grant(grant);
                }
                SchedEvent::Reload => {}
            }
        }
        self.st.store.finish_cancelled(&unfinished, now).await
    }

    /// Records how jobs ended: success, failure (or a restart), expiry; all in one transaction.
    async fn finish_all(&mut self) -> Result<(), StoreError> {
        while let Ok(done) = self.done_rx.try_recv() {
            self.backlog.push(done);
        }
        if self.backlog.is_empty() {
            return Ok(());
        }
        let Some(live) = self.live.as_ref() else { return Ok(()) };
        let mut steps = Vec::new();
        // Cancelled jobs whose runs are gone: nothing more to record.
        let mut gone = Vec::new();
        for done in &self.backlog {
            let Some(j) = live.job(done.job_id) else { continue };
            if j.job.generation != done.generation {
                continue;
            }
            match (&j.place, j.job.state) {
                (Place::Placed(_), JobState::Assigned) => {
                    let (to, change) = ending(&j.job, &done.outcome);
                    steps.push(Transition { job_id: j.job.id, from: vec![JobState::Assigned], to, change });
                }
                (Place::Stopping(_), JobState::Preempted) => {
                    // Its run is gone: back to the queue, unless it had finished its work.
                    steps.push(match done.outcome {
                        Ended::Exited(0) => Transition {
                            job_id: j.job.id,
                            from: vec![JobState::Preempted],
                            to: JobState::Succeeded,
                            change: Change { finished: true, exit_code: Some(0), ..Default::default() },
                        },
                        _ => requeue_step(j.job.id, JobState::Preempted),
                    });
                }
                (Place::Stopping(_), _) => gone.push(j.job.id),
                _ => {}
            }
        }
        let now = now_ms();
        if self.crash_before_recording_ends {
            tracing::error!(ends = steps.len(), "failpoint before-exit-recorded: aborting");
            std::process::abort();
        }
        let applied = self.st.store.transitions(&steps, now).await?;
        self.st.store.finish_cancelled(&gone, now).await?;
        // Durable now (or moot): the nodes that reported these ends may forget them.
        for done in &self.backlog {
            self.executor.acknowledge(done.job_id, done.generation);
        }
        self.backlog.clear();
        self.changed = true;
        let Some(live) = self.live.as_mut() else { return Ok(()) };
        for id in gone {
            self.runs.remove(&id);
            live.remove(id);
            tracing::debug!(job = id, "cancelled work gone");
        }
        for (step, ok) in steps.iter().zip(applied) {
            let stopped = step.from == [JobState::Preempted];
            if stopped {
                // Gone, whatever the store took: requeued, finished, or cancelled meanwhile.
                self.runs.remove(&step.job_id);
                let Some(j) = live.job(step.job_id) else { continue };
                if ok && step.to == JobState::Pending {
                    let job = requeued(&j.job, &step.change);
                    live.requeue(job);
                } else {
                    live.remove(step.job_id);
                }
                if ok {
                    self.st.job_changed();
                    tracing::debug!(job = step.job_id, state = %step.to, "preempted work gone");
                }
                continue;
            }
            if !ok {
                continue;
            }
            tracing::debug!(job = step.job_id, state = %step.to, "job ended");
            self.st.job_changed();
            self.runs.remove(&step.job_id);
            self.grants.done(step.job_id);
            let Some(j) = live.job(step.job_id) else { continue };
            // The policy forgets the run (and learns from it: durations, usage).
            let started = SimTime(j.job.started_ms.unwrap_or(now).max(0) as u64);
            self.policy.on_finished(&j.workload, started, SimTime(now.max(0) as u64));
            if step.to == JobState::Pending {
                let job = requeued(&j.job, &step.change);
                live.requeue(job);
            } else {
                live.remove(step.job_id);
            }
        }
        Ok(())
    }

    /// One round: events in, the policy's decisions recorded (one transaction), work launched.
    async fn round(&mut self) -> Result<(), StoreError> {
        if self.live.is_none() {
            self.load().await?;
        }
        self.take_events().await?;
        self.stop_cut_off_federated().await?;
        self.finish_all().await?;
        self.start_ready().await?;
        let now = now_ms();
        let Some(mut live) = self.live.take() else { return Ok(()) };
        let result = self.decide(&mut live, now).await;
        // After a failed write the state may disagree with the store: it is read again.
        if result.is_ok() {
            self.live = Some(live);
        }
        self.publish_waiting();
        result
    }

    /// When the federation takes this site for lost, Unix ms: the lease lapsed for as long again
    /// as it was given. `None` when no lease is known, or once this lapse was acted on.
    fn federation_cut_off_ms(&self) -> Option<i64> {
        let until_ms = self.federation_lease_until_ms;
        let acted_on = self.federation_cut_off_for_ms == until_ms;
        (until_ms > 0 && self.federation_lease_ms > 0 && !acted_on)
            .then(|| until_ms.saturating_add(self.federation_lease_ms))
    }

    /// Once the federation takes this site for lost, it restarts elsewhere the federated jobs
    /// that restart on failure: they stop here first, as a tenant's cancellation stops them
    /// (recorded cancelled, their processes stopped, their GPUs freed once gone). Those that
    /// never restart run on: the federation reports them lost until the site answers again.
    /// Pending ones cannot start without the lease anyway. Once per lapse.
    async fn stop_cut_off_federated(&mut self) -> Result<(), StoreError> {
        let Some(cut_off_ms) = self.federation_cut_off_ms() else { return Ok(()) };
        let now = now_ms();
        if now < cut_off_ms {
            return Ok(());
        }
        let Some(live) = self.live.as_ref() else { return Ok(()) };
        let ids: Vec<i64> = live
            .placed()
            .filter(|(j, _)| {
                j.job.spec.federated
                    && api::RestartPolicy::from_name(&j.job.spec.restart_policy).restarts_on_node_loss()
            })
            .map(|(j, _)| j.job.id)
            .collect();
        // A run that may have processes on its nodes ends once they are gone; one placed but not
        // started ends now. One of the two steps applies.
        let cancel = |job_id: i64, from: JobState, finished: bool| Transition {
            job_id,
            from: vec![from],
            to: JobState::Cancelled,
            change: Change { finished, message: Some(CUT_OFF_MESSAGE.into()), ..Default::default() },
        };
        let steps: Vec<Transition> = ids
            .iter()
            .flat_map(|&id| [cancel(id, JobState::Assigned, false), cancel(id, JobState::Scheduled, true)])
            .collect();
        let applied = self.st.store.transitions(&steps, now).await?;
        let stopped: Vec<i64> = steps.iter().zip(applied).filter(|(_, ok)| *ok).map(|(s, _)| s.job_id).collect();
        self.federation_cut_off_for_ms = self.federation_lease_until_ms;
        tracing::warn!(
            jobs = stopped.len(),
            until_ms = self.federation_lease_until_ms,
            lease_ms = self.federation_lease_ms,
            "federation lost for longer than its lease; stopping federated runs that restart elsewhere"
        );
        if stopped.is_empty() {
            return Ok(());
        }
        self.st.job_changed();
        // Stopped as the API's cancellations are.
        self.inbox.extend(stopped.into_iter().map(SchedEvent::Cancelled));
        self.take_events().await
    }

    /// The jobs waiting for the federation's grant, for the lease's answer, when they changed.
    fn publish_waiting(&mut self) {
        if let Some(waiting) = self.grants.take_waiting() {
            let mut snap = self.st.snapshot.write().unwrap_or_else(|e| e.into_inner());
            snap.waiting_for_grant = waiting;
        }
    }

    async fn decide(&mut self, live: &mut LiveState, now: i64) -> Result<(), StoreError> {
        if live.release_deferred(now) > 0 {
            self.changed = true;
        }
        self.follow_federation_lease(live, now);
        self.grants.prune(Some(now), |id| live.job(id).map(|j| j.job.state));
        let sim_now = SimTime(now.max(0) as u64);
        // Nothing changed and nothing waits: an idle server does no work, but for the caps it
        // asks of the agents, which follow the hour (a look at what they follow, unless it moved).
        if !self.changed && live.queue.is_empty() {
            let _ = self.ask_power_caps(live, Vec::new(), sim_now);
            return Ok(());
        }
        self.changed = false;
        let t0 = Instant::now();
        live.order_queue();
        // Nothing queued, nothing to start: no GPUs to hide.
        if let Some(g) = self.guard.as_mut().filter(|_| !live.queue.is_empty()) {
            g.before(&mut live.cluster);
        }
        let decisions = self.policy.schedule(sim_now, &live.queue, &mut live.cluster);
        let decisions = match self.guard.as_mut() {
            Some(g) => {
                if g.wants_shed_order() {
                    g.set_shed_order(self.policy.shed_order(sim_now));
                }
                let kept = g.after(&mut live.cluster, decisions);
                for id in g.take_undone() {
                    if let (Some(job), Some(seq)) = (live.queue.get(id), live.queue.seq(id)) {
                        self.policy.start_undone(job, seq, sim_now);
                    }
                }
                kept
            }
            None => decisions,
        };
        let decisions = self.ask_power_caps(live, decisions, sim_now);
        self.st.metrics.placement_seconds.observe(t0.elapsed().as_secs_f64());
        if !decisions.is_empty() {
            self.record(live, decisions, now).await?;
        }
        self.publish(live);
        Ok(())
    }

    /// Opens the queue to federated jobs while the federation lease holds, and closes it once the
    /// lease lapses; each change is logged once.
    fn follow_federation_lease(&mut self, live: &mut LiveState, now: i64) {
        let open = now < self.federation_lease_until_ms;
        if live.set_federation_open(open) {
            self.changed = true;
        }
        if open == self.federation_open {
            return;
        }
        self.federation_open = open;
        let until_ms = self.federation_lease_until_ms;
        if open {
            tracing::info!(until_ms, "federation lease held; federated jobs may start");
        } else {
            tracing::info!(until_ms, lapsed_ms_ago = now - until_ms, "federation lease lapsed; federated jobs wait");
        }
    }

    /// Records the round's decisions in one transaction — each start as pending to scheduled
    /// (with its placement) to running, each preemption as running to preempted — then applies
    /// what the store took to the live state and launches the new work. A start on a node that a
    /// run being stopped still holds (a preempted one, above all) is recorded as scheduled only:
    /// it runs once that run is gone ([`Scheduler::start_ready`]). A preempted job goes back to
    /// the queue once its nodes confirm its run gone ([`Scheduler::finish_all`]).
    async fn record(&mut self, live: &mut LiveState, decisions: Vec<Decision>, now: i64) -> Result<(), StoreError> {
        let fleet = self.st.fleet.clone();
        let mut starts: Vec<(i64, Placement)> = Vec::new();
        let mut preempts: Vec<i64> = Vec::new();
        let lease_open = now < self.federation_lease_until_ms;
        let mut held_for_grants = 0usize;
        for decision in decisions {
            match decision {
                Decision::Start { job, placement } => match live.job_id_of(job) {
                    Some(id) if live.job(id).is_some_and(|j| j.place == Place::Queued) => {
                        let federated = live.job(id).is_some_and(|j| j.job.spec.federated);
                        match self.grants.gate(id, federated, lease_open) {
                            Gate::Open => {
                                starts.push((id, placement));
                                continue;
                            }
                            // The federation is told (the lease's answer) and grants it with a
                            // renewal, whose event brings the next round: no round of its own.
                            Gate::NoGrant => {
                                self.grants.held(id);
                                held_for_grants += 1;
                            }
                            Gate::NoLease => {}
                        }
                        // No start of a federated job without the lease and its grant, whatever
                        // placed it: it stays queued for a round that may start it.
                        let _ = live.cluster.release(job);
                        if let (Some(queued), Some(seq)) = (live.queue.get(job), live.queue.seq(job)) {
                            self.policy.start_undone(queued, seq, SimTime(now.max(0) as u64));
                        }
                    }
                    _ => {
                        let _ = live.cluster.release(job);
                    }
                },
                Decision::Preempt { job } => {
                    if let Some(id) = live.job_id_of(job) {
                        preempts.push(id);
                    }
                }
            }
        }
        if held_for_grants > 0 {
            tracing::debug!(jobs = held_for_grants, "federated jobs wait for the federation's grant");
        }
        // Nodes whose runs this round stops: work placed there waits for them.
        let mut stopped_nodes: HashSet<model::NodeId> = HashSet::new();
        let mut steps = Vec::with_capacity(2 * starts.len() + preempts.len());
        let mut preempt_steps = Vec::with_capacity(preempts.len());
        for id in &preempts {
            let Some(j) = live.job(*id) else { continue };
            let step = if j.job.state == JobState::Assigned {
                if let Place::Placed(p) = &j.place {
                    stopped_nodes.extend(p.members.iter().map(|m| m.node));
                }
                let message = Some("preempted by the scheduler; stopping its run".into());
                let change = Change { message, ..Default::default() };
                Transition { job_id: *id, from: vec![JobState::Assigned], to: JobState::Preempted, change }
            } else {
                // Scheduled, waiting to run: nothing runs, straight back to the queue.
                requeue_step(*id, JobState::Scheduled)
            };
            preempt_steps.push((*id, steps.len()));
            steps.push(step);
        }
        let mut start_steps = Vec::with_capacity(starts.len());
        for (id, placement) in &starts {
            let waits =
                live.blocks_start(placement) || placement.members.iter().any(|m| stopped_nodes.contains(&m.node));
            start_steps.push((steps.len(), waits));
            let change =
                Change { placement_json: Some(Some(encode_placement(&fleet, placement))), ..Default::default() };
            steps.push(Transition { job_id: *id, from: vec![JobState::Pending], to: JobState::Scheduled, change });
            if !waits {
                steps.push(run_step(*id));
            }
        }
        let applied = match self.st.store.transitions(&steps, now).await {
            Ok(a) => a,
            Err(e) => {
                // Nothing of the round was recorded: the policy's starts are undone with the state.
                for (id, _) in &starts {
                    if let Some(j) = live.job(*id) {
                        let _ = live.cluster.release(j.wid);
                    }
                }
                return Err(e);
            }
        };
        let wall = SimTime(now.max(0) as u64);
        if self.crash_after_preempting && preempt_steps.iter().any(|(_, at)| applied.get(*at).copied().unwrap_or(false))
        {
            tracing::error!("failpoint after-preemption-recorded: aborting");
            std::process::abort();
        }
        for (id, at) in preempt_steps {
            let ok = applied.get(at).copied().unwrap_or(false);
            let Some(j) = live.job(id) else { continue };
            if !ok {
                live.remove(id);
                continue;
            }
            self.st.job_changed();
            tracing::info!(job = id, "job preempted");
            if steps[at].to == JobState::Pending {
                let job = requeued(&j.job, &steps[at].change);
                live.requeue(job);
                continue;
            }
            let placement = match &j.place {
                Place::Placed(p) => p.clone(),
                _ => continue,
            };
            let job = j.job.clone();
            live.stop(id, JobState::Preempted);
            match self.runs.get_mut(&id) {
                Some(handle) => handle.stop(),
                None => self.launch_stop(&job, &placement),
            }
        }
        let mut launched = 0usize;
        for ((id, placement), (at, waits)) in starts.into_iter().zip(start_steps) {
            if applied.get(at).copied().unwrap_or(false) {
                self.st.job_changed();
                let runs_now = !waits && applied.get(at + 1).copied().unwrap_or(false);
                let Some(j) = live.job_mut(id) else { continue };
                j.job.placement_json = Some(encode_placement(&fleet, &placement));
                if runs_now {
                    j.job.state = JobState::Assigned;
                    j.job.generation += 1;
                    j.job.started_ms = Some(now);
                } else {
                    j.job.state = JobState::Scheduled;
                }
                let job = j.job.clone();
                live.started(id, placement.clone());
                if runs_now {
                    self.grants.done(id);
                    self.launch(&job, &placement, now, job.generation);
                    launched += 1;
                } else {
                    live.wait_for_stops(id);
                }
            } else if let Some(j) = live.remove(id) {
                // No longer pending in the store (cancelled meanwhile): the policy forgets it.
                let w = crate::convert::request_workload(j.wid, 0, 0, None);
                self.policy.on_finished(&w, wall, wall);
            }
        }
        if launched > 0 {
            tracing::debug!(jobs = launched, "jobs started");
        }
        Ok(())
    }

    /// Jobs scheduled on nodes that runs being stopped held, now free of them, run: one
    /// transaction, then launched.
    async fn start_ready(&mut self) -> Result<(), StoreError> {
        let now = now_ms();
        let lease_open = now < self.federation_lease_until_ms;
        let grants = &self.grants;
        let (ready, barred): (Vec<i64>, Vec<i64>) = match self.live.as_ref() {
            Some(live) => live.ready_to_run().into_iter().partition(|id| {
                let federated = live.job(*id).is_some_and(|j| j.job.spec.federated);
                grants.gate(*id, federated, lease_open) == Gate::Open
            }),
            None => return Ok(()),
        };
        if ready.is_empty() && barred.is_empty() {
            return Ok(());
        }
        // Federated jobs without the lease (it lapsed while they waited) or their grant do not
        // start: back to the queue.
        let mut steps: Vec<Transition> = ready.iter().map(|&id| run_step(id)).collect();
        steps.extend(barred.iter().map(|&id| requeue_step(id, JobState::Scheduled)));
        let applied = self.st.store.transitions(&steps, now).await?;
        let Some(mut live) = self.live.take() else { return Ok(()) };
        let wall = SimTime(now.max(0) as u64);
        for ((id, ok), step) in barred.iter().zip(&applied[ready.len()..]).zip(&steps[ready.len()..]) {
            live.runs_now(*id);
            // Not scheduled any more: cancelled meanwhile, and its event removes it.
            let Some(j) = live.job(*id).filter(|_| *ok) else { continue };
            // The policy started it: it forgets that run and sees the job queued again.
            let w = crate::convert::request_workload(j.wid, 0, 0, None);
            self.policy.on_finished(&w, wall, wall);
            let job = requeued(&j.job, &step.change);
            live.requeue(job);
            self.st.job_changed();
            if lease_open {
                self.grants.held(*id);
            }
            tracing::debug!(job = id, lease_open, "federated job requeued: no lease or grant when it was to run");
        }
        for (id, ok) in ready.into_iter().zip(applied) {
            live.runs_now(id);
            // Not scheduled any more: cancelled meanwhile, and its event removes it.
            if !ok {
                continue;
            }
            self.st.job_changed();
            self.grants.done(id);
            let Some(j) = live.job_mut(id) else { continue };
            j.job.state = JobState::Assigned;
            j.job.generation += 1;
            j.job.started_ms = Some(now);
            let job = j.job.clone();
            if let Some(Place::Placed(p)) = live.job(id).map(|j| j.place.clone()) {
                self.launch(&job, &p, now, job.generation);
            }
        }
        self.live = Some(live);
        Ok(())
    }

    /// What the API and the metrics read of the live state, for what changed.
    fn publish(&self, live: &mut LiveState) {
        let touched = live.take_touched_nodes();
        {
            let mut snap = self.st.snapshot.write().unwrap_or_else(|e| e.into_inner());
            for (node, used) in touched {
                if let Some(slot) = snap.node_gpus_used.get_mut(node.index()) {
                    *slot = used;
                }
            }
            snap.gpus_pending_milli = live.pending_gpu_milli();
        }
        self.st.metrics.running_jobs.set(live.placed_jobs() as i64);
        self.st.metrics.queue_length.set(live.pending_jobs() as i64);
        self.st.metrics.allocated_gpus.set((live.cluster.allocated_gpu_milli() / 1000) as i64);
    }

    /// Launches `job`'s run `generation` on `placement`'s nodes.
    fn launch(&mut self, job: &Job, placement: &Placement, started_at_ms: i64, generation: i64) {
        let (args, env) = match crate::convert::args_env(job) {
            Ok(ae) => ae,
            Err(e) => {
                let _ = self.done_tx.send(Done { job_id: job.id, generation, outcome: Ended::Lost(e.to_string()) });
                return;
            }
        };
        let specs = self.run_specs(job, placement, args, env, started_at_ms, generation);
        let deadline = job.spec.max_runtime_s.map(|s| {
            let end_ms = started_at_ms.saturating_add(s.saturating_mul(1000));
            (s.max(0) as u64, Duration::from_millis(end_ms.saturating_sub(now_ms()).max(0) as u64))
        });
        let members: Vec<(String, u32)> = specs.iter().map(|s| (s.node.clone(), s.member)).collect();
        let futures: Vec<RunFuture> = specs.into_iter().map(|s| self.executor.run(s)).collect();
        tracing::debug!(job = job.id, members = members.len(), "work launched");
        self.drive(job.id, generation, members, futures, deadline, false);
    }

    /// Stops whatever may still run of `job`'s current run on `placement`'s nodes (it was being
    /// stopped when this process took over); its end comes once the nodes confirm it gone.
    fn launch_stop(&mut self, job: &Job, placement: &Placement) {
        let (args, env) = crate::convert::args_env(job).unwrap_or_default();
        let started = job.started_ms.unwrap_or_else(now_ms);
        let specs = self.run_specs(job, placement, args, env, started, job.generation);
        let members: Vec<(String, u32)> = specs.iter().map(|s| (s.node.clone(), s.member)).collect();
        let futures: Vec<RunFuture> = specs.into_iter().map(|s| self.executor.stop_run(s)).collect();
        self.drive(job.id, job.generation, members, futures, None, true);
    }

    fn run_specs(
        &self,
        job: &Job,
        placement: &Placement,
        args: Vec<String>,
        env: std::collections::BTreeMap<String, String>,
        started_at_ms: i64,
        generation: i64,
    ) -> Vec<RunSpec> {
        let fleet = &self.st.fleet;
        let members = placement.members.len() as u32;
        let master_node = placement.members.first().map(|m| fleet.node(m.node).name.clone());
        placement
            .members
            .iter()
            .enumerate()
            .map(|(i, m)| RunSpec {
                job_id: job.id,
                node: fleet.node(m.node).name.clone(),
                member: i as u32,
                members,
                command: job.spec.command.clone(),
                args: args.clone(),
                env: env.clone(),
                gpus: m.gpus.iter().map(|g| u32::from(g.index)).collect(),
                gpu_milli: m.gpus.iter().map(|g| u32::from(g.milli)).find(|&milli| milli < 1000),
                cpu_milli: m.cpu_milli,
                memory_mib: m.memory_mib,
                image: job.spec.image.clone(),
                started_at_ms,
                generation,
                master_node: master_node.clone(),
            })
            .collect()
    }

    /// The task of one run: it ends when every member has exited, or at the first failure, the
    /// deadline or a stop asked for; then it stops the members left and waits until their
    /// nodes confirm them gone (or are lost), so its end frees GPUs no process still uses.
    fn drive(
        &mut self,
        job_id: i64,
        generation: i64,
        members: Vec<(String, u32)>,
        futures: Vec<RunFuture>,
        deadline: Option<(u64, Duration)>,
        stopping_already: bool,
    ) {
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let tx = self.done_tx.clone();
        let executor = self.executor.clone();
        tokio::spawn(async move {
            use futures_util::StreamExt;
            let mut pending: futures_util::stream::FuturesUnordered<_> =
                futures.into_iter().enumerate().map(|(i, f)| async move { (i, f.await) }).collect();
            let mut alive = vec![true; members.len()];
            let mut outcome = stopping_already.then_some(Ended::Stopped);
            let mut stopping = stopping_already;
            let mut stop_open = !stopping_already;
            let (expiry_secs, left) = match deadline {
                Some((secs, left)) => (Some(secs), left),
                None => (None, Duration::from_secs(100 * 365 * 86_400)),
            };
            let expiry = tokio::time::sleep(left);
            tokio::pin!(expiry);
            loop {
                if outcome.is_some() && !stopping {
                    stopping = true;
                    let mut confirmed = true;
                    for ((node, member), _) in members.iter().zip(&alive).filter(|(_, a)| **a) {
                        confirmed &= executor.stop(node, job_id, *member, generation);
                    }
                    if !confirmed {
                        // Work in this process: dropping the futures stops it.
                        break;
                    }
                }
                tokio::select! {
                    next = pending.next() => {
                        let Some((i, o)) = next else { break };
                        alive[i] = false;
                        if outcome.is_none() {
                            outcome = match o {
                                RunOutcome::Exited { code: 0 } => None,
                                RunOutcome::Exited { code } => Some(Ended::Exited(code)),
                                RunOutcome::Lost { message } => Some(Ended::Lost(message)),
                            };
                        }
                    }
                    _ = &mut expiry, if outcome.is_none() && expiry_secs.is_some() => {
                        outcome = expiry_secs.map(Ended::Expired);
                    }
                    asked = &mut stop_rx, if stop_open => {
                        stop_open = false;
                        if asked.is_ok() && outcome.is_none() {
                            outcome = Some(Ended::Stopped);
                        }
                    }
                }
            }
            let _ = tx.send(Done { job_id, generation, outcome: outcome.unwrap_or(Ended::Exited(0)) });
        });
        self.runs.insert(job_id, RunHandle { stop: Some(stop_tx) });
    }
}

/// When a deferrable job may enter the queue, Unix ms; `None` for any other job. Computed from
/// the submit time alone, so every round (and a restarted server) agrees.
fn release_ms(gate: Option<&sched::defer::DeferralGate>, job: &Job) -> Option<i64> {
    let gate = gate.filter(|_| job.spec.deferrable)?;
    let year = crate::year_start_ms(job.submitted_ms);
    let within = SimTime((job.submitted_ms - year).max(0) as u64);
    Some(year + gate.release_time(within).as_millis() as i64)
}

/// The state a run's end moves its job to, and what it records.
fn ending(job: &Job, outcome: &Ended) -> (JobState, Change) {
    match outcome {
        Ended::Exited(0) => (JobState::Succeeded, Change { finished: true, exit_code: Some(0), ..Default::default() }),
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
        Ended::Exited(code) => failure(job, Some(i64::from(*code)), format!("exited with code {code}"), false),
        Ended::Lost(message) => failure(job, None, message.clone(), true),
        Ended::Stopped => failure(job, None, "stopped".into(), false),
    }
}

/// A run that failed (`node_lost`: its node was lost) restarts as its policy says, under the same
/// id with a new generation at its next start.
fn failure(job: &Job, exit_code: Option<i64>, why: String, node_lost: bool) -> (JobState, Change) {
    let policy = api::RestartPolicy::from_name(&job.spec.restart_policy);
    let restarts = match policy {
        api::RestartPolicy::Never => false,
        api::RestartPolicy::OnFailure => true,
        api::RestartPolicy::OnNodeLoss => node_lost,
    };
    if restarts && job.generation <= job.spec.max_restarts {
        let message = format!("{why}; restarting (restart {} of {})", job.generation, job.spec.max_restarts);
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

/// The step that runs a scheduled job: its start, a new generation.
fn run_step(job_id: i64) -> Transition {
    let change = Change { started: true, ..Default::default() };
    Transition { job_id, from: vec![JobState::Scheduled], to: JobState::Assigned, change }
}

/// The step that sends a job in `from` back to the queue, its placement and times cleared.
fn requeue_step(job_id: i64, from: JobState) -> Transition {
    let change = Change {
        placement_json: Some(None),
        reset_times: true,
        message: Some("requeued".into()),
        ..Default::default()
    };
    Transition { job_id, from: vec![from], to: JobState::Pending, change }
}

/// A job's row once `change` sent it back to pending.
fn requeued(job: &Job, change: &Change) -> Job {
    let mut job = job.clone();
    job.state = JobState::Pending;
    job.placement_json = None;
    job.started_ms = None;
    job.finished_ms = None;
    job.exit_code = change.exit_code.or(job.exit_code);
    job.message = change.message.clone();
    job
}
