//! The event loop.

use crate::metrics::{EventKind, JobRecord, SimEvent, SimReport, TimePoint, at, mean, percentile, tenant_rows};
use crate::power::PowerOptions;
use crate::power::{Meter, PowerSummary, TenantDraw, TenantUse, summarize};
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
    /// Measure power, energy and heat; with caps, hold every site under its grid cap.
    pub power: Option<Arc<PowerOptions>>,
    /// Hold deferrable jobs for better hours (price, carbon, heat demand).
    pub deferral: Option<Arc<sched::defer::DeferralGate>>,
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
            power: None,
            deferral: None,
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
    /// Work done since the last start before the current rate segment, ms.
    accrued_ms: u64,
    /// Throughput of the current run (1 = uncapped) and when its current segment began.
    rate: f64,
    seg_start: SimTime,
    attained_gpu_s: f64,
    lost_gpu_s: f64,
    preemptions: u32,
    switches: u32,
    /// What the running job adds to its sites' DC draw, nW per site, as last metered.
    dc_nw: Vec<i64>,
    /// The GPU model of its last placement's first node (a gang's nodes share one in practice).
    gpu_model: Option<model::GpuModelId>,
    /// GPUs' worth of throughput its caps take, billionths, as last metered.
    lost_ngpu: i64,
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
    #[error("energy accounting failed: {0}")]
    Energy(String),
    #[error(
        "the power cap of site {site} ({cap_mw:.3} MW) is below what the site draws with every GPU idle \
         ({idle_mw:.3} MW at its hottest hour): no work could ever run; raise the cap"
    )]
    CapBelowIdle { site: String, cap_mw: f64, idle_mw: f64 },
}

/// Work done in `wall_ms` at `rate`, ms (exact at rate 1).
fn work_in(wall_ms: u64, rate: f64) -> u64 {
    if rate >= 1.0 { wall_ms } else { (wall_ms as f64 * rate).floor() as u64 }
}

/// Wall time to do `work_ms` at `rate`, ms (exact at rate 1).
const HOUR_MS: u64 = 3_600_000;

fn wall_for(work_ms: u64, rate: f64) -> u64 {
    if rate >= 1.0 { work_ms } else { (work_ms as f64 / rate.max(1e-6)).ceil() as u64 }
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
    let mut engine = Engine::new(fleet, policy, config)?;
    // When each job enters the queue: its submit time, or for a deferrable job the hour the gate
    // holds it for. Waits and JCTs still count from the submit time.
    for w in workloads {
        let entry = match (&config.deferral, w.deferrable) {
            (Some(gate), true) => gate.release_time(w.submit_time),
            _ => w.submit_time,
        };
        engine.push_arrival(Arc::new(w.clone()), entry);
    }
    let events_total = engine.events_total();
    let progress_every = (events_total / 200).max(1);
    loop {
        let before = engine.events_done;
        if !engine.step()? {
            break;
        }
        if engine.events_done / progress_every != before / progress_every {
            progress(Progress { events_done: engine.events_done.min(events_total), events_total });
        }
    }
    progress(Progress { events_done: events_total, events_total });
    engine.report()
}

/// One scheduler over one fleet in virtual time: [`simulate`] feeds it a whole trace, the
/// multi-site twin one engine per site, fed by the dispatch as jobs arrive.
pub(crate) struct Engine<'a> {
    fleet: Arc<Fleet>,
    policy: &'a mut dyn Policy,
    config: &'a SimConfig,
    /// Every job pushed, by id (`0..`, in push order); queued jobs share it through the Arc.
    shared: Vec<Arc<Workload>>,
    /// When each job enters the queue.
    entry: Vec<SimTime>,
    arrivals: BinaryHeap<Reverse<(SimTime, u32)>>,
    cluster: ClusterState,
    queue: Queue,
    completions: BinaryHeap<Reverse<(SimTime, u32, u32)>>,
    jobs: Vec<JobState>,
    never_fit: u64,
    total_gpu_milli: f64,
    pub(crate) events_done: u64,
    series: Vec<TimePoint>,
    log: Vec<SimEvent>,
    allocated_integral: f64, // gpu_milli x ms
    last_t: Option<SimTime>,
    last_alloc: u64,
    peak_queue: u32,
    preemptions: u64,
    gang_starts: u64,
    gang_switches: u64,
    min_runtime: SimDuration,
    guard: Option<sched::power::PowerGuard>,
    meter: Option<Meter>,
    caps: Vec<f64>,
    caps_epoch: u64,
    site_caps_w: Option<Vec<f64>>,
    /// Each site's IT draw at the wall now, watts.
    site_w: Vec<f64>,
    // (t_s, equivalent allocation of each site) at every event, for the hourly accounting.
    energy_series: Vec<(f64, Vec<f64>)>,
    site_mw_series: Vec<(f64, f64)>,
    cap_violations: u64,
    peak_site_w: f64,
    cap_integral: f64,
    // GPUs' worth of throughput the caps take from running work, and its integral, GPU-s.
    cap_lost_gpus: f64,
    cap_lost_gpu_s: f64,
    worst_case_violations: u64,
    // The hour whose conditions the guard's caps (and the price ceiling) were last set for.
    weather_hour: Option<u64>,
    // No GPU runs above this fraction of its board limit this hour (price caps).
    ceiling: f64,
    rates_ceiling: f64,
    /// GPU thousandths asked by the jobs queued or yet to enter the queue.
    waiting_gpu_milli: u64,
    /// Jobs started, finished or preempted since the meter last looked: the meter updates its
    /// sums by them alone (in integers, so the order of updates does not matter) unless caps
    /// moved, when it measures every running job again.
    touched: Vec<WorkloadId>,
    /// Per site, the running jobs' DC draw above idle, nW (i64 holds 9 GW a site); and their
    /// capped-away GPUs, billionths.
    dc_nw: Vec<i64>,
    lost_ngpu: i64,
    /// The span the report covers when the caller sets one (a federation's sites all report over
    /// the federation's span, idle time included); otherwise first submission to last event.
    span: Option<(SimTime, SimTime)>,
    /// Each tenant's share of the sites' draw, hour by hour, for its part of the energy bill.
    tenant_meter: TenantMeter,
}

/// Integrates each tenant's DC draw per site into hours counted from the report's first hour, so
/// that each hour's energy, cost, carbon and heat can be shared among the tenants that drew it.
/// An entry is integrated only when it changes (and at the end), so the cost follows the starts
/// and ends, not the number of tenants. Ordered maps: the sums are made in the same order on
/// every run (bit-for-bit results).
#[derive(Debug, Default)]
struct TenantMeter {
    /// The tenants' draw above idle, nW by (tenant, site), and since when it has held; no zero
    /// entries.
    nw: std::collections::BTreeMap<(u32, u32), (i64, f64)>,
    /// DC joules by (tenant, site, hour since `origin_s`).
    joules: std::collections::BTreeMap<(u32, u32, u32), f64>,
    origin_s: Option<f64>,
}

impl TenantMeter {
    /// Adds (`sign` 1) or removes (-1) a job's draw per site to its tenant's at `t_s`.
    fn add(&mut self, tenant: u32, dc_nw: &[i64], sign: i64, t_s: f64, origin_s: impl FnOnce() -> f64) {
        let origin = *self.origin_s.get_or_insert_with(origin_s);
        for (site, &nw) in dc_nw.iter().enumerate() {
            if nw == 0 {
                continue;
            }
            let key = (tenant, site as u32);
            let (sum, since) = self.nw.entry(key).or_insert((0, t_s));
            accrue(&mut self.joules, origin, key, *sum, *since, t_s);
            *sum += sign * nw;
            *since = t_s;
            if *sum == 0 {
                self.nw.remove(&key);
            }
        }
    }

    /// Counts every entry's draw up to `t_s`.
    fn flush(&mut self, t_s: f64) {
        let Some(origin) = self.origin_s else { return };
        for (&key, (nw, since)) in &mut self.nw {
            accrue(&mut self.joules, origin, key, *nw, *since, t_s);
            *since = t_s;
        }
    }
}

/// Adds `nw` held by `key` over `[from, to)` to its hours (counted from `origin`). Times are taken
/// relative to `origin` first, so that hour boundaries are whole multiples of an hour and an
/// interval is never cut short by rounding at one.
fn accrue(
    joules: &mut std::collections::BTreeMap<(u32, u32, u32), f64>,
    origin: f64,
    key: (u32, u32),
    nw: i64,
    from: f64,
    to: f64,
) {
    if nw == 0 {
        return;
    }
    let (mut t, end_rel) = ((from - origin).max(0.0), to - origin);
    while t < end_rel {
        let mut hour = (t / 3600.0).floor();
        if (hour + 1.0) * 3600.0 <= t {
            hour += 1.0;
        }
        let end = ((hour + 1.0) * 3600.0).min(end_rel);
        *joules.entry((key.0, key.1, hour as u32)).or_insert(0.0) += nw as f64 / 1e9 * (end - t);
        t = end;
    }
}

impl<'a> Engine<'a> {
    pub(crate) fn new(fleet: Arc<Fleet>, policy: &'a mut dyn Policy, config: &'a SimConfig) -> Result<Self, SimError> {
        if let Some(budget) = config.power.as_deref().and_then(|p| p.budget(&fleet)) {
            for (s, b) in budget.sites.iter().enumerate() {
                if b.cap_watts < b.base_watts {
                    let site = fleet.sites.get(s).map_or_else(|| s.to_string(), |x| x.name.clone());
                    return Err(SimError::CapBelowIdle {
                        site,
                        cap_mw: b.cap_watts / 1e6,
                        idle_mw: b.base_watts / 1e6,
                    });
                }
            }
        }
        let cluster = ClusterState::new(fleet.clone());
        let total_gpu_milli = cluster.total_gpu_milli().max(1) as f64;
        let power = config.power.as_deref();
        let guard = power.and_then(|p| p.budget(&fleet)).map(sched::power::PowerGuard::new);
        let meter = power.map(|p| Meter::new(&fleet, &p.model));
        let caps = caps_of(&guard, fleet.sites.len());
        let caps_epoch = guard.as_ref().map_or(0, |g| g.caps_epoch());
        let site_caps_w: Option<Vec<f64>> = power.and_then(|p| p.cap_watts.clone());
        let min_runtime = policy.min_runtime();
        Ok(Engine {
            fleet,
            policy,
            config,
            shared: Vec::new(),
            entry: Vec::new(),
            arrivals: BinaryHeap::new(),
            cluster,
            queue: Queue::new(),
            completions: BinaryHeap::new(),
            jobs: Vec::new(),
            never_fit: 0,
            total_gpu_milli,
            events_done: 0,
            series: Vec::new(),
            log: Vec::new(),
            allocated_integral: 0.0,
            last_t: None,
            last_alloc: 0,
            peak_queue: 0,
            preemptions: 0,
            gang_starts: 0,
            gang_switches: 0,
            min_runtime,
            guard,
            meter,
            caps,
            caps_epoch,
            site_caps_w,
            site_w: Vec::new(),
            energy_series: Vec::new(),
            site_mw_series: Vec::new(),
            cap_violations: 0,
            peak_site_w: 0.0,
            cap_integral: 0.0,
            cap_lost_gpus: 0.0,
            cap_lost_gpu_s: 0.0,
            worst_case_violations: 0,
            weather_hour: None,
            ceiling: 1.0,
            rates_ceiling: 1.0,
            waiting_gpu_milli: 0,
            touched: Vec::new(),
            dc_nw: Vec::new(),
            lost_ngpu: 0,
            span: None,
            tenant_meter: TenantMeter::default(),
        })
    }

    /// Adds a job, entering the queue at `entry`; its id must be the number of jobs pushed so far.
    pub(crate) fn push_arrival(&mut self, workload: Arc<Workload>, entry: SimTime) {
        let id = self.shared.len() as u32;
        debug_assert_eq!(workload.id.0, id);
        self.waiting_gpu_milli += workload.gpu.total_gpu_milli();
        self.shared.push(workload);
        self.entry.push(entry);
        self.jobs.push(JobState::default());
        self.arrivals.push(Reverse((entry, id)));
    }

    /// Events a run of the jobs pushed so far will count: an arrival and a completion each.
    pub(crate) fn events_total(&self) -> u64 {
        self.shared.len() as u64 * 2
    }

    pub(crate) fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    pub(crate) fn cluster(&self) -> &ClusterState {
        &self.cluster
    }

    pub(crate) fn guard(&self) -> Option<&sched::power::PowerGuard> {
        self.guard.as_ref()
    }

    /// GPU thousandths asked by the jobs queued or yet to enter the queue.
    pub(crate) fn waiting_gpu_milli(&self) -> u64 {
        self.waiting_gpu_milli
    }

    /// Makes the report cover `start..end` (widened to the engine's own events): utilization and
    /// energy count the idle time before the first job and after the last.
    pub(crate) fn set_span(&mut self, start: SimTime, end: SimTime) {
        self.span = Some((start, end));
    }

    /// Each site's IT draw at the wall after the last event, watts (empty without power).
    pub(crate) fn site_it_watts(&self) -> &[f64] {
        &self.site_w
    }

    /// Drops completions of runs that were preempted or re-timed by a cap change: they would
    /// cost a scheduling round each.
    fn drop_stale_completions(&mut self) {
        while let Some(&Reverse((_, id, generation))) = self.completions.peek() {
            let job = &self.jobs[id as usize];
            if generation == job.generation && job.running {
                break;
            }
            self.completions.pop();
        }
    }

    /// When the next event happens, `None` when nothing is left to happen.
    pub(crate) fn next_time(&mut self) -> Option<SimTime> {
        self.drop_stale_completions();
        let t_arrival = self.arrivals.peek().map(|Reverse((t, _))| *t);
        let t_completion = self.completions.peek().map(|Reverse((t, _, _))| *t);
        let now = match (t_arrival, t_completion) {
            (None, None) => return None,
            (Some(a), None) => a,
            (None, Some(c)) => c,
            (Some(a), Some(c)) => a.min(c),
        };
        // Caps that follow the weather are re-set at every hour boundary while anything runs.
        Some(match (self.weather_hour, self.config.power.as_deref()) {
            (Some(h), Some(_)) if self.cluster.running_count() > 0 => now.min(SimTime((h + 1) * HOUR_MS)),
            _ => now,
        })
    }

    /// Processes the next moment: completions, arrivals, a policy round. `false` when nothing
    /// was left to happen.
    pub(crate) fn step(&mut self) -> Result<bool, SimError> {
        let Some(now) = self.next_time() else { return Ok(false) };
        let t_arrival = self.arrivals.peek().map(|Reverse((t, _))| *t);
        let t_completion = self.completions.peek().map(|Reverse((t, _, _))| *t);
        let config = self.config;
        let power = config.power.as_deref();
        let fleet = self.fleet.clone();
        if let Some(p) = power.filter(|p| p.is_hourly()) {
            let hour = now.as_millis() / HOUR_MS;
            if self.weather_hour != Some(hour) {
                if p.follows_weather()
                    && let Some(g) = self.guard.as_mut()
                    && let Some((sites, nodes)) = p.figures_at(&fleet, p.hour_celsius(hour))
                {
                    g.set_conditions(&self.cluster, sites, nodes);
                }
                self.ceiling = p.price_ceiling(hour);
                self.weather_hour = Some(hour);
            }
        }
        if let Some(prev) = self.last_t {
            self.allocated_integral += self.last_alloc as f64 * (now - prev).as_millis() as f64;
            if let Some(p) = power {
                // The interval [prev, now) at its hottest hour: the draw must fit the cap.
                let (a, b) = (at(prev), at(now));
                let hours = ((b / 3600.0).floor() - (a / 3600.0).floor()) as usize;
                let temps: Vec<f64> = if hours > 48 {
                    vec![p.design_celsius()]
                } else {
                    (0..=hours).map(|k| p.outdoor_c(a + k as f64 * 3600.0)).collect()
                };
                for (s, &w) in self.site_w.iter().enumerate() {
                    let over = temps.iter().any(|&t| {
                        let total = p.model.site_power_at_it(model::SiteId(s as u32), w, t).total_watts;
                        self.peak_site_w = self.peak_site_w.max(total);
                        self.site_caps_w.as_ref().and_then(|c| c.get(s)).is_some_and(|&c| total > c * (1.0 + 1e-9))
                    });
                    if over {
                        self.cap_violations += 1;
                    }
                }
                self.cap_integral += self.caps.iter().sum::<f64>() / self.caps.len().max(1) as f64 * (b - a);
                self.cap_lost_gpu_s += self.cap_lost_gpus * (b - a);
            }
        }

        while let Some(Reverse((t, id, generation))) = self.completions.peek().copied() {
            if t != now {
                break;
            }
            self.completions.pop();
            let job = &mut self.jobs[id as usize];
            if generation != job.generation || !job.running {
                continue; // the run this completion belonged to was preempted
            }
            let id = WorkloadId(id);
            if self.cluster.release(id).is_err() {
                return Err(bug(self.policy, format!("{id:?} completed without an allocation")));
            }
            let started = job.last_start.unwrap_or(now);
            job.running = false;
            job.finish = Some(now);
            self.touched.push(id);
            let w = &self.shared[id.0 as usize];
            job.attained_gpu_s += w.gpu.total_gpus() * now.since(started).as_secs_f64();
            if config.keep_events {
                self.log.push(SimEvent { t_ms: now.as_millis(), job: id, kind: EventKind::Finish });
            }
            self.policy.on_finished(w, started, now);
            self.events_done += 1;
        }
        while let Some(&Reverse((t, i))) = self.arrivals.peek() {
            if t != now {
                break;
            }
            self.arrivals.pop();
            self.events_done += 1;
            let w = self.shared[i as usize].clone();
            let demand = Demand::of(&w, &fleet);
            if !self.cluster.could_ever_fit(&demand) || self.guard.as_ref().is_some_and(|g| !g.could_ever_fit(&demand))
            {
                self.never_fit += 1;
                self.events_done += 1; // it will never complete either
                self.waiting_gpu_milli -= w.gpu.total_gpu_milli();
                continue;
            }
            self.queue.push(QueuedJob::new(w, demand, now));
        }

        let mut requeue: Vec<QueuedJob> = Vec::new();
        // An hour boundary with nothing arriving or ending only re-sets caps: the policy gets no
        // round it would not get in an uncapped run.
        let weather_only = t_arrival.is_none_or(|a| now < a) && t_completion.is_none_or(|c| now < c);
        if let Some(g) = self.guard.as_mut().filter(|_| !weather_only) {
            g.before(&mut self.cluster);
        }
        let decisions =
            if weather_only { Vec::new() } else { self.policy.schedule(now, &self.queue, &mut self.cluster) };
        let decisions = match self.guard.as_mut().filter(|_| !weather_only) {
            Some(g) => {
                if g.wants_shed_order() {
                    g.set_shed_order(self.policy.shed_order(now));
                }
                let kept = g.after(&mut self.cluster, decisions);
                for id in g.take_undone() {
                    if let (Some(job), Some(seq)) = (self.queue.get(id), self.queue.seq(id)) {
                        self.policy.start_undone(job, seq, now);
                    }
                }
                kept
            }
            None => decisions,
        };
        let new_caps: Vec<f64> =
            caps_of(&self.guard, fleet.sites.len()).into_iter().map(|c| c.min(self.ceiling)).collect();
        for decision in decisions {
            match decision {
                Decision::Start { job, placement } => {
                    let Some(queued) = self.queue.remove(job) else {
                        return Err(bug(self.policy, format!("started {job:?}, which is not queued")));
                    };
                    let w = &self.shared[job.0 as usize];
                    self.waiting_gpu_milli -= w.gpu.total_gpu_milli();
                    self.touched.push(job);
                    let state = &mut self.jobs[job.0 as usize];
                    state.running = true;
                    state.last_start = Some(now);
                    state.first_start.get_or_insert(now);
                    state.gpu_model = placement.members.first().and_then(|m| fleet.node(m.node).gpu_model);
                    if placement.members.len() > 1 {
                        state.switches = sched::switches_spanned(&fleet, &placement);
                        self.gang_starts += 1;
                        self.gang_switches += u64::from(state.switches);
                    } else {
                        state.switches = u32::from(!placement.members.is_empty());
                    }
                    if config.keep_events {
                        let gpus = placement
                            .members
                            .iter()
                            .map(|m| (m.node, m.gpus.iter().map(|g| (g.index, g.milli)).collect()))
                            .collect();
                        self.log.push(SimEvent { t_ms: now.as_millis(), job, kind: EventKind::Start { gpus } });
                    }
                    let delay = if queued.preemptions > 0 { config.restart_delay } else { SimDuration::ZERO };
                    state.lost_gpu_s += w.gpu.total_gpus() * delay.as_secs_f64();
                    state.accrued_ms = 0;
                    state.seg_start = now + delay;
                    let cap = self.guard.as_ref().map_or(1.0, |g| g.job_cap(job)).min(self.ceiling);
                    state.rate = self.meter.as_ref().map_or(1.0, |m| m.rate(&placement, cap));
                    match w.duration {
                        Some(d) => {
                            let rest = d.as_millis().saturating_sub(state.progress.as_millis());
                            let t = state.seg_start + SimDuration(wall_for(rest, state.rate));
                            self.completions.push(Reverse((t, job.0, state.generation)));
                        }
                        None => {
                            if queued.preemptions == 0 {
                                self.events_done += 1; // runs to the end: no completion event
                            }
                        }
                    }
                }
                Decision::Preempt { job } => {
                    let Some(state) = self.jobs.get_mut(job.0 as usize) else {
                        return Err(bug(self.policy, format!("preempted {job:?}, which does not exist")));
                    };
                    if !state.running || self.cluster.allocation(job).is_some() {
                        return Err(bug(
                            self.policy,
                            format!("preempted {job:?}, which is not running or not released"),
                        ));
                    }
                    let started = state.last_start.unwrap_or(now);
                    let ran = now.since(started);
                    if ran < self.min_runtime {
                        return Err(bug(
                            self.policy,
                            format!("preempted {job:?} after {ran}, under its minimum runtime"),
                        ));
                    }
                    let w = &self.shared[job.0 as usize];
                    let gpus = w.gpu.total_gpus();
                    let delay = if state.preemptions > 0 { config.restart_delay } else { SimDuration::ZERO };
                    let productive = ran.as_millis().saturating_sub(delay.as_millis());
                    let seg = if now > state.seg_start { (now - state.seg_start).as_millis() } else { 0 };
                    let worked = state.accrued_ms + work_in(seg, state.rate);
                    let productive = if state.rate >= 1.0 && state.accrued_ms == 0 { productive } else { worked };
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
                    self.touched.push(job);
                    self.preemptions += 1;
                    if config.keep_events {
                        self.log.push(SimEvent { t_ms: now.as_millis(), job, kind: EventKind::Preempt });
                    }
                    let mut q = QueuedJob::new(w.clone(), Demand::of(w, &fleet), now);
                    q.attained_gpu_s = state.attained_gpu_s;
                    q.progress = state.progress;
                    q.preemptions = state.preemptions;
                    q.last_started = Some(started);
                    q.last_run = ran;
                    self.waiting_gpu_milli += w.gpu.total_gpu_milli();
                    requeue.push(q);
                }
            }
        }
        for q in requeue {
            self.queue.push(q);
        }
        if let Some(m) = &self.meter {
            let epoch = self.guard.as_ref().map_or(0, |g| g.caps_epoch());
            let caps_moved = epoch != self.caps_epoch || self.ceiling != self.rates_ceiling;
            if caps_moved {
                self.caps_epoch = epoch;
                self.rates_ceiling = self.ceiling;
                // Caps moved: every running job's completion moves with its new throughput.
                let (guard, ceiling) = (&self.guard, self.ceiling);
                let cap_of = |id: WorkloadId| guard.as_ref().map_or(1.0, |g| g.job_cap(id)).min(ceiling);
                let running: Vec<(WorkloadId, f64)> =
                    self.cluster.allocations().map(|(id, p)| (*id, m.rate(p, cap_of(*id)))).collect();
                for (id, rate) in running {
                    let Some(state) = self.jobs.get_mut(id.0 as usize) else { continue };
                    if !state.running || rate == state.rate {
                        continue;
                    }
                    if now > state.seg_start {
                        state.accrued_ms += work_in((now - state.seg_start).as_millis(), state.rate);
                        state.seg_start = now;
                    }
                    state.rate = rate;
                    if let Some(d) = self.shared[id.0 as usize].duration {
                        state.generation += 1;
                        let done = state.progress.as_millis() + state.accrued_ms;
                        let rest = d.as_millis().saturating_sub(done);
                        let t = state.seg_start + SimDuration(wall_for(rest, rate));
                        self.completions.push(Reverse((t, id.0, state.generation)));
                    }
                }
            }
            self.caps = new_caps;
            // The guarantee itself: whatever the work draws, the worst case at the caps now set
            // fits every site's cap.
            if let (Some(g), Some(limits)) = (self.guard.as_ref(), self.site_caps_w.as_ref()) {
                for (s, &limit) in limits.iter().enumerate() {
                    if g.site_worst_watts(&self.cluster, s) > limit * (1.0 + 1e-9) + 1e-6 {
                        self.worst_case_violations += 1;
                    }
                }
            }
            let (shared, span, t_now) = (&self.shared, self.span, at(now));
            let (guard, ceiling) = (&self.guard, self.ceiling);
            let cap_of = |id: WorkloadId| guard.as_ref().map_or(1.0, |g| g.job_cap(id)).min(ceiling);
            let sites = fleet.sites.len();
            if self.dc_nw.len() != sites {
                self.dc_nw = vec![0; sites];
            }
            let meter_job =
                |id: WorkloadId, state: &mut JobState, dc_nw: &mut [i64], lost_ngpu: &mut i64, p: &sched::Placement| {
                    state.dc_nw = m.job_dc_nw(p, cap_of(id), sites);
                    let gpus = p.members.iter().flat_map(|m| &m.gpus).map(|g| f64::from(g.milli)).sum::<f64>();
                    state.lost_ngpu = (gpus / 1000.0 * (1.0 - state.rate) * 1e9).round() as i64;
                    for (sum, nw) in dc_nw.iter_mut().zip(&state.dc_nw) {
                        *sum += nw;
                    }
                    *lost_ngpu += state.lost_ngpu;
                };
            if caps_moved {
                // Every running job at its new cap.
                self.dc_nw.iter_mut().for_each(|x| *x = 0);
                self.lost_ngpu = 0;
                self.tenant_meter.flush(t_now);
                self.tenant_meter.nw.clear();
                for id in self.touched.drain(..) {
                    if let Some(state) = self.jobs.get_mut(id.0 as usize) {
                        state.dc_nw.clear();
                        state.lost_ngpu = 0;
                    }
                }
                for (id, p) in self.cluster.allocations() {
                    let Some(state) = self.jobs.get_mut(id.0 as usize).filter(|s| s.running) else { continue };
                    meter_job(*id, state, &mut self.dc_nw, &mut self.lost_ngpu, p);
                    if let Some(w) = shared.get(id.0 as usize) {
                        self.tenant_meter.add(w.tenant.0, &state.dc_nw, 1, t_now, || report_origin_s(shared, span));
                    }
                }
            } else {
                for id in self.touched.drain(..) {
                    let Some(state) = self.jobs.get_mut(id.0 as usize) else { continue };
                    let tenant = shared.get(id.0 as usize).map(|w| w.tenant.0);
                    for (sum, nw) in self.dc_nw.iter_mut().zip(&state.dc_nw) {
                        *sum -= nw;
                    }
                    if let Some(t) = tenant {
                        self.tenant_meter.add(t, &state.dc_nw, -1, t_now, || report_origin_s(shared, span));
                    }
                    self.lost_ngpu -= state.lost_ngpu;
                    state.dc_nw.clear();
                    state.lost_ngpu = 0;
                    if state.running
                        && let Some(p) = self.cluster.allocation(id)
                    {
                        meter_job(id, state, &mut self.dc_nw, &mut self.lost_ngpu, p);
                        if let Some(t) = tenant {
                            self.tenant_meter.add(t, &state.dc_nw, 1, t_now, || report_origin_s(shared, span));
                        }
                    }
                }
            }
            self.cap_lost_gpus = self.lost_ngpu as f64 / 1e9;
            let dc: Vec<f64> =
                m.site_idle_dc().iter().zip(&self.dc_nw).map(|(idle, nw)| idle + *nw as f64 / 1e9).collect();
            self.site_w = dc
                .iter()
                .enumerate()
                .map(|(s, dc)| dc * power.map_or(1.0, |p| p.model.site_wall_factor(model::SiteId(s as u32))))
                .collect();
            let eq = m.equivalent_allocations(&dc);
            match self.energy_series.last_mut() {
                Some(p) if p.0 == at(now) => p.1 = eq,
                _ => self.energy_series.push((at(now), eq)),
            }
            let t_now = power.map_or(0.0, |p| p.outdoor_c(at(now)));
            let mw: f64 = self
                .site_w
                .iter()
                .enumerate()
                .filter_map(|(s, &w)| {
                    power.map(|p| p.model.site_power_at_it(model::SiteId(s as u32), w, t_now).total_watts)
                })
                .sum::<f64>()
                / 1e6;
            match self.site_mw_series.last_mut() {
                Some(p) if p.0 == at(now) => p.1 = mw,
                _ => self.site_mw_series.push((at(now), mw)),
            }
        }

        self.last_t = Some(now);
        self.last_alloc = self.cluster.allocated_gpu_milli();
        self.peak_queue = self.peak_queue.max(self.queue.len() as u32);
        let point = TimePoint {
            t_s: at(now),
            gpu_allocation: self.last_alloc as f64 / self.total_gpu_milli,
            queue_len: self.queue.len() as u32,
            running: self.cluster.running_count() as u32,
        };
        match self.series.last_mut() {
            Some(p) if p.t_s == point.t_s => *p = point,
            _ => self.series.push(point),
        }
        Ok(true)
    }

    /// The run's report, once no event is left.
    pub(crate) fn report(mut self) -> Result<SimReport, SimError> {
        let config = self.config;
        let power = config.power.as_deref();
        let mut first_submit = self.shared.iter().map(|w| w.submit_time).min().unwrap_or(SimTime::ZERO);
        if let Some((start, end)) = self.span {
            first_submit = if self.shared.is_empty() { start } else { first_submit.min(start) };
            self.last_t = Some(self.last_t.map_or(end, |t| t.max(end)));
            let sites = self.fleet.sites.len();
            if self.energy_series.first().is_none_or(|p| p.0 > at(first_submit)) && config.power.is_some() {
                self.energy_series.insert(0, (at(first_submit), vec![0.0; sites]));
            }
        }
        let deferrals: Vec<f64> = self
            .shared
            .iter()
            .zip(&self.entry)
            .filter(|(w, _)| w.deferrable && config.deferral.is_some())
            .map(|(w, e)| e.since(w.submit_time).as_secs_f64())
            .collect();
        let end = self.last_t.unwrap_or(first_submit);
        let makespan_ms = (end - first_submit).as_millis();

        let mut jcts = Vec::new();
        let mut waits = Vec::new();
        let mut records = Vec::with_capacity(self.shared.len());
        let mut unfinished = 0u64;
        let mut lost_gpu_s = 0.0;
        // GPU-hours (all, deferrable) by tenant and the GPU model of each job's last placement.
        let mut use_by_model: std::collections::BTreeMap<(u32, String), (f64, f64)> = Default::default();
        for (w, job) in self.shared.iter().zip(&self.jobs) {
            let submit = w.submit_time;
            if let Some(s) = job.first_start {
                waits.push((s - submit).as_secs_f64());
            }
            match job.finish {
                Some(f) => jcts.push((f - submit).as_secs_f64()),
                None if job.first_start.is_some() || self.queue.contains(w.id) => unfinished += 1,
                None => {}
            }
            let mut attained = job.attained_gpu_s;
            if job.running
                && let Some(s) = job.last_start
            {
                attained += w.gpu.total_gpus() * end.since(s).as_secs_f64();
            }
            lost_gpu_s += job.lost_gpu_s;
            let gh = attained / 3600.0;
            if gh > 0.0 {
                let model = job.gpu_model.map_or_else(|| "none".to_string(), |m| self.fleet.gpu_model(m).name.clone());
                let e = use_by_model.entry((w.tenant.0, model)).or_insert((0.0, 0.0));
                e.0 += gh;
                if w.deferrable {
                    e.1 += gh;
                }
            }
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
        let power_summary = match power {
            None => None,
            Some(p) => {
                if let Some((t, eq)) = self.energy_series.last()
                    && at(end) > *t
                {
                    let idle = vec![0.0; eq.len()];
                    self.energy_series.push((at(end), idle));
                }
                let (shared, span) = (&self.shared, self.span);
                self.tenant_meter.flush(at(end));
                let uses: Vec<TenantUse> = tenants
                    .iter()
                    .map(|t| TenantUse {
                        tenant: t.tenant,
                        gpu_hours: t.gpu_hours,
                        by_model: use_by_model
                            .range((t.tenant, String::new())..)
                            .take_while(|((tenant, _), _)| *tenant == t.tenant)
                            .map(|((_, model), &(gh, deferrable))| (model.clone(), gh, deferrable))
                            .collect(),
                    })
                    .collect();
                let drawn = TenantDraw {
                    joules: &self.tenant_meter.joules,
                    origin_s: self.tenant_meter.origin_s.unwrap_or_else(|| report_origin_s(shared, span)),
                };
                let mut summary =
                    summarize(p, &self.energy_series, &uses, &drawn).map_err(|e| SimError::Energy(e.to_string()))?;
                let span =
                    self.energy_series.last().map_or(0.0, |l| l.0) - self.energy_series.first().map_or(0.0, |f| f.0);
                summary.peak_site_mw = self.peak_site_w / 1e6;
                summary.cap_violations = self.cap_violations;
                summary.refused_starts = self.guard.as_ref().map_or(0, |g| g.refused_starts);
                summary.mean_gpu_cap = if span > 0.0 { self.cap_integral / span } else { 1.0 };
                summary.cap_lost_gpu_hours = self.cap_lost_gpu_s / 3600.0;
                summary.worst_case_violations = self.worst_case_violations;
                summary.site_mw = std::mem::take(&mut self.site_mw_series);
                Some(summary)
            }
        };
        let _: Option<&PowerSummary> = power_summary.as_ref();
        if !config.keep_records {
            records = Vec::new();
        }
        jcts.sort_by(f64::total_cmp);
        waits.sort_by(f64::total_cmp);
        let total_gpu_milli = self.total_gpu_milli;
        let utilization =
            if makespan_ms == 0 { 0.0 } else { self.allocated_integral / (total_gpu_milli * makespan_ms as f64) };

        Ok(SimReport {
            policy: self.policy.name().to_string(),
            seed: config.seed,
            fleet_gpus: self.fleet.total_gpus(),
            fleet_nodes: self.fleet.nodes.len() as u64,
            jobs: self.shared.len() as u64,
            completed: jcts.len() as u64,
            never_fit: self.never_fit,
            unfinished,
            mean_jct_s: mean(&jcts),
            p50_jct_s: percentile(&jcts, 0.5),
            p99_jct_s: percentile(&jcts, 0.99),
            mean_wait_s: mean(&waits),
            p50_wait_s: percentile(&waits, 0.5),
            p99_wait_s: percentile(&waits, 0.99),
            makespan_s: makespan_ms as f64 / 1000.0,
            gpu_utilization: utilization,
            peak_queue_len: self.peak_queue,
            events: self.events_done,
            preemptions: self.preemptions,
            lost_gpu_hours: lost_gpu_s / 3600.0,
            mean_switches_per_gang: if self.gang_starts == 0 {
                0.0
            } else {
                self.gang_switches as f64 / self.gang_starts as f64
            },
            jain_fairness,
            deferrable_jobs: deferrals.len() as u64,
            deferred_jobs: deferrals.iter().filter(|&&d| d > 0.0).count() as u64,
            mean_deferral_s: mean(&deferrals),
            tenants,
            series: self.series,
            records,
            log: self.log,
            power: power_summary,
        })
    }
}

/// Where the report's hours start, seconds: the first submission, or the span's start if earlier.
fn report_origin_s(shared: &[Arc<Workload>], span: Option<(SimTime, SimTime)>) -> f64 {
    let first = shared.iter().map(|w| w.submit_time).min();
    let origin = match (first, span) {
        (Some(f), Some((start, _))) => f.min(start),
        (Some(f), None) => f,
        (None, Some((start, _))) => start,
        (None, None) => SimTime::ZERO,
    };
    at(origin)
}

fn caps_of(guard: &Option<sched::power::PowerGuard>, sites: usize) -> Vec<f64> {
    guard.as_ref().map_or_else(|| vec![1.0; sites], |g| g.site_caps().to_vec())
}

fn bug(policy: &dyn Policy, detail: String) -> SimError {
    SimError::PolicyBug { policy: policy.name().to_string(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenants_draw_is_counted_whole_from_any_origin() {
        // Origins with a fraction of a second put hour boundaries where rounding bites.
        for origin in [0.0, 1234.567, 0.001, 98_765.432_1, 3599.999] {
            let mut joules = std::collections::BTreeMap::new();
            let span = 100.0 * 3600.0 + 17.25;
            accrue(&mut joules, origin, (1, 0), 2_000_000_000, origin + 0.5, origin + 0.5 + span);
            let total: f64 = joules.values().sum();
            assert!((total - 2.0 * span).abs() < 1e-6, "origin {origin}: {total} J of {}", 2.0 * span);
            assert_eq!(joules.len(), 101, "origin {origin}");
            assert!((joules[&(1, 0, 0)] - 2.0 * 3599.5).abs() < 1e-6);
        }
    }
}
