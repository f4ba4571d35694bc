//! The multi-site twin: one engine per site, each with its own fleet, scheduler, weather, grid
//! and heat network, and the federation's dispatch ([`dispatch::choose`]) sending each arriving job
//! to one site, as the live federation does with what its sites report.
//!
//! At each moment, jobs arriving are dispatched first, against every site's state after all
//! that happened before that moment; then each site processes the moment. A job sent away from
//! its data enters its site's queue once the data has crossed the fiber; its JCT counts from its
//! submission.

use crate::engine::Engine;
use crate::metrics::{at, mean, percentile};
use crate::{Progress, SimConfig, SimError, SimReport};
use dispatch::{DispatchPolicy, DispatchWeights, JobNeeds, Reason, SiteFacts};
use model::{Fleet, GpuRequest, SimDuration, SimTime, Workload, WorkloadId};
use sched::{ClusterState, Demand, Policy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One site of the twin's federation.
pub struct SiteRun {
    /// The site's own fleet ([`Fleet::site_fleet`]).
    pub fleet: Arc<Fleet>,
    pub policy: Box<dyn Policy>,
    /// The site's run: its power options carry its own climate, grid (with its price adder) and
    /// heat network, and are needed for the dispatch's price, carbon and heat figures.
    pub config: SimConfig,
}

/// How the federation dispatches.
#[derive(Clone, Debug)]
pub struct FederationConfig {
    pub dispatch: DispatchPolicy,
    pub weights: DispatchWeights,
    /// Hours ahead whose mean price and carbon intensity the dispatch compares.
    pub lookahead_hours: usize,
}

impl Default for FederationConfig {
    fn default() -> Self {
        FederationConfig { dispatch: DispatchPolicy::Capacity, weights: DispatchWeights::default(), lookahead_hours: 4 }
    }
}

/// One site's part of a federated replay.
#[derive(Clone, Debug, Serialize)]
pub struct SiteOutcome {
    pub site: String,
    /// Jobs the dispatch sent to the site.
    pub jobs_sent: u64,
    /// Data moved to the site for the jobs sent there, TB.
    pub moved_tb: f64,
    pub report: SimReport,
}

/// A federated replay: the federation's figures over every job, and each site's report.
#[derive(Clone, Debug, Serialize)]
pub struct FederationReport {
    pub dispatch: String,
    pub jobs: u64,
    /// Jobs no site could ever run (constraints, GPU model, size).
    pub refused: u64,
    pub completed: u64,
    pub mean_jct_s: f64,
    pub p50_jct_s: f64,
    pub p99_jct_s: f64,
    pub mean_wait_s: f64,
    /// GPU-hours held over GPU-hours the federation had, from the first submission to the last event.
    pub gpu_utilization: f64,
    pub moved_tb: f64,
    /// Mean time to move a job's data, over the jobs whose data moved, seconds.
    pub mean_transfer_s: f64,
    /// How many choices each reason made (`most-free`, `cheapest`, `heat-wanted`, `near-data`,
    /// `least-backlog`).
    pub reasons: BTreeMap<String, u64>,
    pub it_mwh: f64,
    pub site_mwh: f64,
    pub energy_cost_eur: f64,
    pub co2_t: f64,
    pub heat_exported_mwh: f64,
    pub heat_demand_mwh: f64,
    pub heat_revenue_eur: f64,
    /// Event intervals in which a site drew more than its cap, summed over sites.
    pub cap_violations: u64,
    pub sites: Vec<SiteOutcome>,
}

/// A site's facts that do not change during a run: its name, region and fiber.
fn fixed_facts(engine: &Engine<'_>) -> SiteFacts {
    let site = engine.fleet().sites.first();
    SiteFacts {
        name: site.map_or_else(String::new, |s| s.name.clone()),
        region: site.and_then(|s| s.env.region.clone()),
        reachable: true,
        fiber_gbps: site.and_then(|s| s.env.fiber_gbps),
        ..SiteFacts::default()
    }
}

/// What the dispatch knows of one site engine, for one job: sets the figures of `facts` that
/// change from job to job. `worst_watts_per_gpu`: the most watts one more GPU of the site adds in
/// the guard's worst case.
fn update_facts(
    facts: &mut SiteFacts,
    engine: &Engine<'_>,
    config: &SimConfig,
    worst_watts_per_gpu: f64,
    w: &Workload,
    now: SimTime,
    lookahead_hours: usize,
) {
    let fleet = engine.fleet();
    let cluster = engine.cluster();
    let demand = Demand::of(w, fleet);
    let guard = engine.guard();
    let ever = cluster.could_ever_fit(&demand) && guard.is_none_or(|g| g.could_ever_fit(&demand));
    let total_milli = cluster.total_gpu_milli();
    let free_milli = total_milli.saturating_sub(cluster.allocated_gpu_milli());
    let job_milli = w.gpu.total_gpu_milli();
    let room = free_milli >= engine.waiting_gpu_milli() + job_milli;
    // The guard's own worst case, every allocated GPU at its board limit and its host at full
    // load: conservative in the dynamic mode, where lower caps may make room.
    let power_ok = guard.is_none_or(|g| {
        let budget = g.budget();
        let Some(b) = budget.sites.first() else { return true };
        let milli = (cluster.allocated_gpu_milli() + job_milli) as f64 / 1000.0;
        b.base_watts + milli * worst_watts_per_gpu <= b.cap_watts
    });
    let fits_now = ever && room && power_ok && placeable_now(cluster, &demand);
    let (mut price, mut co2, mut heat_demand, mut heat_supplied) = (0.0, 0.0, 0.0, 0.0);
    if let Some(p) = config.power.as_deref() {
        let hour = p.start_hour + (at(now) / 3600.0) as usize;
        let n = lookahead_hours.max(1);
        price = (0..n).map(|k| p.grid.price_eur_per_mwh(hour + k)).sum::<f64>() / n as f64;
        co2 = (0..n).map(|k| p.grid.co2_g_per_kwh(hour + k)).sum::<f64>() / n as f64;
        if let Some(m) = p.model.sites.first() {
            let outdoor = p.outdoor_c(at(now));
            heat_demand = m.network.demand_watts(outdoor);
            let it_watts = engine.site_it_watts().first().copied().unwrap_or(0.0);
            heat_supplied = energy::heat::export_heat(
                m.recoverable.share * it_watts,
                m.recoverable.celsius,
                &m.network,
                heat_demand,
                f64::INFINITY,
            )
            .exported_watts;
        }
    }
    facts.could_ever_fit = ever;
    facts.fits_now = fits_now;
    facts.total_gpus = total_milli as f64 / 1000.0;
    facts.free_gpus = free_milli as f64 / 1000.0;
    facts.queued_gpus = engine.waiting_gpu_milli() as f64 / 1000.0;
    facts.price_eur_per_mwh = price;
    facts.co2_g_per_kwh = co2;
    facts.heat_demand_watts = heat_demand;
    facts.heat_supplied_watts = heat_supplied;
}

/// Whether GPUs for `demand` are free now on nodes of a model it accepts (CPU and memory
/// aside): a few index lookups.
fn placeable_now(cluster: &ClusterState, demand: &Demand) -> bool {
    match demand.gpu {
        GpuRequest::None => true,
        GpuRequest::Fraction { gpu_milli } => {
            let milli = u16::try_from(gpu_milli).unwrap_or(u16::MAX);
            cluster.allowed_models(demand).any(|m| cluster.nodes_by_max_share(m, milli).next().is_some())
        }
        GpuRequest::Gang { nodes, gpus_per_node } => {
            let per_node = u8::try_from(gpus_per_node).unwrap_or(u8::MAX);
            cluster.count_nodes_with_room(demand, per_node) >= u64::from(nodes)
        }
    }
}

fn reason_kind(r: &Reason) -> &'static str {
    match r {
        Reason::MostFree { .. } => "most-free",
        Reason::Cheapest { .. } => "cheapest",
        Reason::HeatWanted { .. } => "heat-wanted",
        Reason::NearData { .. } => "near-data",
        Reason::LeastBacklog { .. } => "least-backlog",
    }
}

/// Replays `workloads` (ids `0..n`) over the federation of `sites`, each job needing what
/// `needs[id]` says, dispatched by `federation`.
pub fn simulate_federation(
    sites: Vec<SiteRun>,
    workloads: &[Workload],
    needs: &[JobNeeds],
    federation: &FederationConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<FederationReport, SimError> {
    for (i, w) in workloads.iter().enumerate() {
        if w.id.0 as usize != i {
            return Err(SimError::BadIds { position: i, id: w.id.0 });
        }
    }
    let (fleets, mut policies, configs): (Vec<_>, Vec<_>, Vec<_>) =
        sites.into_iter().fold((Vec::new(), Vec::new(), Vec::new()), |(mut f, mut p, mut c), s| {
            f.push(s.fleet);
            p.push(s.policy);
            c.push(SimConfig { keep_records: true, ..s.config });
            (f, p, c)
        });
    let mut engines: Vec<Engine<'_>> = Vec::with_capacity(fleets.len());
    for ((fleet, policy), config) in fleets.iter().zip(policies.iter_mut()).zip(&configs) {
        engines.push(Engine::new(fleet.clone(), policy.as_mut(), config)?);
    }
    let worst_watts_per_gpu: Vec<f64> = engines
        .iter()
        .map(|e| e.guard().map_or(0.0, |g| g.budget().nodes.iter().map(|n| n.full_watts_per_gpu).fold(0.0, f64::max)))
        .collect();
    let mut order: Vec<u32> = (0..workloads.len() as u32).collect();
    order.sort_by_key(|&i| (workloads[i as usize].submit_time, i));
    // Per site: the global id of each of its local ids.
    let mut global_ids: Vec<Vec<u32>> = vec![Vec::new(); engines.len()];
    let mut moved_bytes = vec![0u64; engines.len()];
    let mut transfers: Vec<f64> = Vec::new();
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut refused = 0u64;
    let events_total = workloads.len() as u64 * 3;
    let progress_every = (events_total / 200).max(1);
    let mut events_done = 0u64;
    let mut reported = 0u64;
    let mut next = 0usize;
    let no_needs = JobNeeds::default();
    let mut facts_buf: Vec<SiteFacts> = engines.iter().map(fixed_facts).collect();
    let mut last_event: Option<SimTime> = None;
    loop {
        let t_arrival = order.get(next).map(|&i| workloads[i as usize].submit_time);
        let t_sites = engines.iter_mut().filter_map(|e| e.next_time()).min();
        let now = match (t_arrival, t_sites) {
            (None, None) => break,
            (Some(a), Some(s)) => a.min(s),
            (a, s) => a.or(s).unwrap_or(SimTime::ZERO),
        };
        last_event = Some(now);
        // Arrivals first: the dispatch sees every site as it stands before this moment.
        while let Some(&i) = order.get(next) {
            let w = &workloads[i as usize];
            if w.submit_time != now {
                break;
            }
            next += 1;
            events_done += 1;
            let job_needs = needs.get(i as usize).unwrap_or(&no_needs);
            for (((f, e), c), &per_gpu) in facts_buf.iter_mut().zip(&engines).zip(&configs).zip(&worst_watts_per_gpu) {
                update_facts(f, e, c, per_gpu, w, now, federation.lookahead_hours);
            }
            let needs_now = JobNeeds { gpus: w.gpu.total_gpus(), ..job_needs.clone() };
            match dispatch::choose(federation.dispatch, &federation.weights, &needs_now, &facts_buf) {
                Ok(choice) => {
                    *reasons.entry(reason_kind(&choice.reason).to_string()).or_insert(0) += 1;
                    let s = choice.site;
                    let local = global_ids[s].len() as u32;
                    global_ids[s].push(i);
                    let mut local_w = w.clone();
                    local_w.id = WorkloadId(local);
                    let delay = SimDuration((choice.transfer_s * 1000.0).ceil() as u64);
                    if choice.transfer_s > 0.0 {
                        transfers.push(choice.transfer_s);
                        moved_bytes[s] += needs_now.dataset.as_ref().map_or(0, |d| d.bytes);
                    }
                    let entry = match (&configs[s].deferral, w.deferrable) {
                        (Some(gate), true) => gate.release_time(now + delay),
                        _ => now + delay,
                    };
                    engines[s].push_arrival(Arc::new(local_w), entry);
                }
                // Every site answers in the twin: a refusal means no site can ever run the job.
                Err(_) => {
                    refused += 1;
                    events_done += 2;
                }
            }
        }
        if t_sites == Some(now) {
            for e in engines.iter_mut() {
                if e.next_time() == Some(now) {
                    let before = e.events_done;
                    e.step()?;
                    events_done += e.events_done - before;
                }
            }
        }
        if events_done / progress_every != reported / progress_every {
            reported = events_done;
            progress(Progress { events_done: events_done.min(events_total), events_total });
        }
    }
    progress(Progress { events_done: events_total, events_total });

    // Every site reports over the federation's span, from the first submission to the last event.
    let start = workloads.iter().map(|w| w.submit_time).min().unwrap_or(SimTime::ZERO);
    let end = last_event.unwrap_or(start);
    let mut outcomes = Vec::with_capacity(engines.len());
    for (s, mut e) in engines.into_iter().enumerate() {
        e.set_span(start, end);
        let mut report = e.report()?;
        for r in &mut report.records {
            r.id = WorkloadId(global_ids[s].get(r.id.0 as usize).copied().unwrap_or(r.id.0));
        }
        outcomes.push(SiteOutcome {
            site: fleets[s].sites.first().map_or_else(String::new, |x| x.name.clone()),
            jobs_sent: global_ids[s].len() as u64,
            moved_tb: moved_bytes[s] as f64 / 1e12,
            report,
        });
    }
    Ok(summarize_federation(federation.dispatch, workloads.len() as u64, refused, reasons, &transfers, outcomes))
}

fn summarize_federation(
    policy: DispatchPolicy,
    jobs: u64,
    refused: u64,
    reasons: BTreeMap<String, u64>,
    transfers: &[f64],
    sites: Vec<SiteOutcome>,
) -> FederationReport {
    let records = || sites.iter().flat_map(|s| &s.report.records);
    let mut jcts: Vec<f64> = records().filter_map(|r| Some(r.finish_s? - r.submit_s)).collect();
    let waits: Vec<f64> = records().filter_map(|r| Some(r.start_s? - r.submit_s)).collect();
    jcts.sort_by(f64::total_cmp);
    let first = records().map(|r| r.submit_s).fold(f64::INFINITY, f64::min);
    let last = sites.iter().filter_map(|s| s.report.series.last().map(|p| p.t_s)).fold(f64::NEG_INFINITY, f64::max);
    let span_h = if last > first { (last - first) / 3600.0 } else { 0.0 };
    let gpus: f64 = sites.iter().map(|s| s.report.fleet_gpus as f64).sum();
    let gpu_hours: f64 = records().map(|r| r.gpu_hours).sum();
    let power = || sites.iter().filter_map(|s| s.report.power.as_ref());
    FederationReport {
        dispatch: policy.to_string(),
        jobs,
        refused,
        completed: jcts.len() as u64,
        mean_jct_s: mean(&jcts),
        p50_jct_s: percentile(&jcts, 0.5),
        p99_jct_s: percentile(&jcts, 0.99),
        mean_wait_s: mean(&waits),
        gpu_utilization: if span_h > 0.0 && gpus > 0.0 { gpu_hours / (gpus * span_h) } else { 0.0 },
        moved_tb: sites.iter().map(|s| s.moved_tb).sum(),
        mean_transfer_s: mean(transfers),
        reasons,
        it_mwh: power().map(|p| p.it_mwh).sum(),
        site_mwh: power().map(|p| p.site_mwh).sum(),
        energy_cost_eur: power().map(|p| p.energy_cost_eur).sum(),
        co2_t: power().map(|p| p.co2_t).sum(),
        heat_exported_mwh: power().map(|p| p.heat_exported_mwh).sum(),
        heat_demand_mwh: power().map(|p| p.heat_demand_mwh).sum(),
        heat_revenue_eur: power().map(|p| p.heat_revenue_eur).sum(),
        cap_violations: power().map(|p| p.cap_violations).sum(),
        sites,
    }
}
