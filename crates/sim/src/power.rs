//! Power in the twin: the numbers the [`sched::power`] guard works on, computed from the
//! [`energy`] model, and the meter that measures site draw at every event.
//!
//! Measurement follows the reports: an allocated GPU runs typical work (its family's busy
//! fraction of the board limit), or its power cap if that is lower. The guard budgets the worst
//! case (board limit, host at full load) at the hottest hour of the year, so measured draw stays
//! under the cap by construction; [`PowerSummary::cap_violations`] checks it at every event
//! interval.

use energy::{EnergyModel, GpuPowerProfile, GridYear, HourPoint, TemperatureYear, account_by_site, throughput_at_cap};
use model::{Fleet, SiteId};
use sched::Placement;
use sched::power::{NodeWatts, PowerBudget, PowerMode, SiteBudget};
use serde::Serialize;

/// What a run knows about power: the site model, the year and, when capped, the caps.
#[derive(Clone, Debug)]
pub struct PowerOptions {
    /// The fleet's energy model (cooling chosen by the caller).
    pub model: EnergyModel,
    pub temperature: TemperatureYear,
    pub grid: GridYear,
    /// Hour of the year sim time 0 falls on.
    pub start_hour: usize,
    /// Grid cap per site (by site index), watts; `None`: measure only.
    pub cap_watts: Option<Vec<f64>>,
    pub mode: PowerMode,
    /// Lower every running GPU's cap in dear hours (with or without a grid cap).
    pub price_cap: Option<PriceCap>,
}

/// In hours whose grid price is above `above_eur_per_mwh`, no GPU runs above `gpu_cap` of its
/// board limit: energy costs less per unit of work at a lower cap (dynamic power falls faster
/// than throughput along the DVFS curve), so dear hours buy less power per job.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PriceCap {
    pub above_eur_per_mwh: f64,
    /// Fraction of the board limit.
    pub gpu_cap: f64,
}

impl PowerOptions {
    /// Outdoor temperature `t_s` seconds after sim time 0.
    pub fn outdoor_c(&self, t_s: f64) -> f64 {
        self.temperature.at_hour(self.hour_of(t_s))
    }

    fn hour_of(&self, t_s: f64) -> usize {
        (self.start_hour + (t_s.max(0.0) / 3600.0) as usize) % energy::HOURS_PER_YEAR
    }

    /// The hottest hour of the year, °C: the design point the guard budgets at.
    pub fn design_celsius(&self) -> f64 {
        self.temperature.hottest_celsius()
    }

    /// Nameplate IT power of every site at the wall: every GPU at its board limit and every host
    /// at full load, cooling not included. Caps given as a fraction of nameplate are fractions of
    /// it, so a cap of 1.0 must still carry the cooling out of the same connection.
    pub fn nameplate_watts(&self) -> Vec<f64> {
        (0..self.model.sites.len())
            .map(|s| self.model.sites[s].it.max_watts * self.model.site_wall_factor(SiteId(s as u32)))
            .collect()
    }

    /// Worst-case draw of every site at the design temperature, cooling included: the grid
    /// connection that runs every GPU at its board limit on the hottest hour.
    pub fn worst_case_watts(&self) -> Vec<f64> {
        let t = self.design_celsius();
        (0..self.model.sites.len()).map(|s| self.model.site_worst_case_watts(SiteId(s as u32), t)).collect()
    }

    /// The hourly series a deferral gate minimises, one value per hour of the year: the grid's
    /// price or carbon intensity, or the heat networks' demand with its sign turned.
    pub fn deferral_costs(&self, by: sched::defer::DeferFor) -> Vec<f64> {
        use sched::defer::DeferFor;
        (0..energy::HOURS_PER_YEAR)
            .map(|h| match by {
                DeferFor::Price => self.grid.price_eur_per_mwh(h),
                DeferFor::Carbon => self.grid.co2_g_per_kwh(h),
                DeferFor::Heat => {
                    let t = self.temperature.at_hour(h);
                    -self.model.sites.iter().map(|s| s.network.demand_watts(t)).sum::<f64>()
                }
            })
            .collect()
    }

    /// The guard's numbers for `fleet` at the design point, `None` when uncapped.
    pub fn budget(&self, fleet: &Fleet) -> Option<PowerBudget> {
        let (sites, nodes) = self.figures_at(fleet, self.design_celsius())?;
        Some(PowerBudget { sites, nodes, mode: self.mode })
    }

    /// The guard's per-site and per-node figures for `fleet` at `outdoor_c`, `None` when uncapped.
    pub fn figures_at(&self, fleet: &Fleet, outdoor_c: f64) -> Option<(Vec<SiteBudget>, Vec<NodeWatts>)> {
        let caps = self.cap_watts.as_ref()?;
        let f = self.model.guard_figures(fleet, outdoor_c);
        let sites = f
            .site_idle_watts
            .iter()
            .enumerate()
            .map(|(s, &base)| SiteBudget { cap_watts: caps.get(s).copied().unwrap_or(f64::INFINITY), base_watts: base })
            .collect();
        let nodes = f
            .nodes
            .iter()
            .map(|n| NodeWatts {
                site: n.site,
                full_watts_per_gpu: n.full_watts_per_gpu,
                board_watts_per_gpu: n.board_watts_per_gpu,
                free_cap: n.free_cap,
                host_cut_watts_per_gpu: n.host_cut_watts_per_gpu,
            })
            .collect();
        Some((sites, nodes))
    }

    /// Whether caps are re-set at every hour boundary (weather-following or price caps).
    pub fn is_hourly(&self) -> bool {
        self.follows_weather() || self.price_cap.is_some()
    }

    /// The price cap's ceiling on GPU caps in hour `hour` (counted from sim time 0): its cap in a
    /// dear hour, 1 otherwise.
    pub fn price_ceiling(&self, hour: u64) -> f64 {
        match self.price_cap {
            Some(pc) if self.grid.price_eur_per_mwh(self.start_hour + hour as usize) > pc.above_eur_per_mwh => {
                pc.gpu_cap.clamp(0.0, 1.0)
            }
            _ => 1.0,
        }
    }

    /// Whether the guard follows the weather: in the dynamic mode, caps are set hour by hour
    /// against that hour's cooling, while admission holds to the hottest hour.
    pub fn follows_weather(&self) -> bool {
        self.cap_watts.is_some() && matches!(self.mode, PowerMode::Dynamic { .. })
    }

    /// The temperature the caps of hour `hour` (counted from sim time 0) are set for: the
    /// warmer of that hour and the next, so the figures hold across the whole hour.
    pub fn hour_celsius(&self, hour: u64) -> f64 {
        let h = (self.start_hour as u64 + hour) as usize % energy::HOURS_PER_YEAR;
        self.temperature.at_hour(h).max(self.temperature.at_hour((h + 1) % energy::HOURS_PER_YEAR))
    }
}

#[derive(Clone, Copy, Debug)]
struct NodeMeter {
    site: usize,
    busy_per_gpu: f64,
    board: f64,
    profile: GpuPowerProfile,
}

/// Measures site draw from the cluster's allocations and the sites' GPU caps.
pub(crate) struct Meter {
    nodes: Vec<NodeMeter>,
    site_idle_dc: Vec<f64>,
    site_busy_span_dc: Vec<f64>,
}

impl Meter {
    pub(crate) fn new(fleet: &Fleet, model: &EnergyModel) -> Meter {
        let nodes = fleet
            .node_ids()
            .map(|id| {
                let p = &model.power.nodes[id.index()];
                let (board, profile) = match fleet.node_gpu_model(id) {
                    Some(m) => (m.board_power_watts, GpuPowerProfile::of(m.family)),
                    None => (0.0, GpuPowerProfile::of(model::GpuFamily::Other)),
                };
                NodeMeter { site: fleet.node(id).site.index(), busy_per_gpu: p.busy_watts_per_gpu, board, profile }
            })
            .collect();
        let site_idle_dc: Vec<f64> = model.sites.iter().map(|s| s.it.idle_watts).collect();
        let site_busy_span_dc = model.sites.iter().map(|s| s.it.busy_watts - s.it.idle_watts).collect();
        Meter { nodes, site_idle_dc, site_busy_span_dc }
    }

    fn gpu_dc(&self, n: &NodeMeter, cap: f64) -> f64 {
        let cut = (n.profile.busy_fraction - cap).max(0.0) * n.board;
        n.busy_per_gpu - cut
    }

    /// Each site's DC IT power with nothing allocated, watts.
    pub(crate) fn site_idle_dc(&self) -> &[f64] {
        &self.site_idle_dc
    }

    /// What a job on `placement` with its GPUs at `cap` adds to each of `sites` sites' DC IT
    /// power, nW: integers, so that sums kept by adding and removing jobs are exact, and fine
    /// enough that a site run at its cap by the guard stays within a billionth of it.
    pub(crate) fn job_dc_nw(&self, placement: &Placement, cap: f64, sites: usize) -> Vec<i64> {
        let mut nw = vec![0i64; sites];
        for m in &placement.members {
            let Some(n) = self.nodes.get(m.node.index()) else { continue };
            let gpus = m.gpus.iter().map(|g| f64::from(g.milli)).sum::<f64>() / 1000.0;
            if let Some(x) = nw.get_mut(n.site) {
                *x += (gpus * self.gpu_dc(n, cap) * 1e9).round() as i64;
            }
        }
        nw
    }

    /// Per site, the allocation (0..1) at which typical uncapped work would draw the site's `dc`:
    /// what the hourly accounting is fed.
    pub(crate) fn equivalent_allocations(&self, dc: &[f64]) -> Vec<f64> {
        dc.iter()
            .zip(self.site_idle_dc.iter().zip(&self.site_busy_span_dc))
            .map(|(&w, (&idle, &span))| if span > 0.0 { ((w - idle) / span).clamp(0.0, 1.0) } else { 0.0 })
            .collect()
    }

    /// Throughput (1 = uncapped) of a job on `placement` with its GPUs at `cap`: its slowest member.
    pub(crate) fn rate(&self, placement: &Placement, cap: f64) -> f64 {
        placement
            .members
            .iter()
            .filter_map(|m| self.nodes.get(m.node.index()))
            .filter(|n| n.board > 0.0)
            .map(|n| throughput_at_cap(&n.profile, cap, n.profile.busy_fraction))
            .fold(1.0, f64::min)
    }
}

/// One tenant's share of the energy: of each site's hour (its IT, facility and heat-pump energy,
/// its cost and carbon, the heat it sold), the part its work's draw above idle is of the hour's IT
/// energy. Idle power is no one's.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TenantEnergy {
    pub tenant: u32,
    pub gpu_hours: f64,
    /// `(GPU model, GPU-hours, of which deferrable)`, by the model of each job's last placement.
    pub gpu_hours_by_model: Vec<(String, f64, f64)>,
    /// Its part of the sites' hours: IT, facility and grid energy, the grid's cost, carbon, heat
    /// sold and its revenue.
    #[serde(flatten)]
    pub energy: energy::SiteHour,
}

/// What a tenant held over a run, for [`summarize`].
#[derive(Clone, Debug)]
pub(crate) struct TenantUse {
    pub tenant: u32,
    pub gpu_hours: f64,
    pub by_model: Vec<(String, f64, f64)>,
}

/// The tenants' DC energy by (tenant, site, hour since `origin_s`), joules.
pub(crate) struct TenantDraw<'a> {
    pub joules: &'a std::collections::BTreeMap<(u32, u32, u32), f64>,
    pub origin_s: f64,
}

/// Energy, power and heat of a run (flattened into the JSON report).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PowerSummary {
    pub cooling: String,
    pub start_hour: usize,
    pub it_mwh: f64,
    pub facility_mwh: f64,
    pub site_mwh: f64,
    pub pue: f64,
    /// Highest draw at any event interval, MW (summed over sites).
    pub peak_site_mw: f64,
    /// Sum of the sites' caps, MW; `None` when uncapped.
    pub power_cap_mw: Option<f64>,
    /// Nameplate IT power at the wall (every GPU at its board limit, hosts at full load), MW.
    pub nameplate_mw: f64,
    /// Worst-case site draw at the hottest hour, cooling included, MW.
    pub worst_case_mw: f64,
    pub power_mode: Option<String>,
    /// Event intervals in which a site drew more than its cap.
    pub cap_violations: u64,
    /// Events after which a site's worst case at the caps then set (every allocated GPU at its
    /// cap, hosts at full load or at their limit) was above its cap: the guarantee, checked.
    pub worst_case_violations: u64,
    /// Starts the guard rolled back.
    pub refused_starts: u64,
    /// Time-mean GPU power cap over the run (1 = uncapped), fraction of the board limit.
    pub mean_gpu_cap: f64,
    /// GPU-hours of work the caps cost: running GPUs times the throughput they lost, over time.
    pub cap_lost_gpu_hours: f64,
    pub heat_exported_mwh: f64,
    pub heat_demand_mwh: f64,
    pub heat_revenue_eur: f64,
    pub energy_cost_eur: f64,
    pub co2_t: f64,
    pub tenant_energy: Vec<TenantEnergy>,
    /// Each site's totals, accounted at its own load.
    pub site_energy: Vec<energy::SiteEnergy>,
    /// Hour by hour, for plots.
    #[serde(skip)]
    pub hourly: Vec<HourPoint>,
    /// `(t_s, site MW)` at every event, for plots.
    #[serde(skip)]
    pub site_mw: Vec<(f64, f64)>,
}

/// Gives each tenant its part of each site-hour of `site_hours` (hour 0 starting at `t0_s`): its
/// work's draw above idle at the wall over the site's IT energy of the hour, of the hour's IT,
/// facility and heat-pump energy, cost, carbon and heat sold. Idle draw, of held GPUs and hosts as
/// of free ones, is no one's: the twin knows each job's draw above idle, where the live meter
/// shares a node's whole reported draw among the runs holding its GPUs.
fn share_among_tenants(
    tenants: &[TenantUse],
    drawn: &TenantDraw<'_>,
    t0_s: f64,
    site_hours: &[Vec<energy::SiteHour>],
    wall_factor: &[f64],
) -> Vec<TenantEnergy> {
    use std::collections::BTreeMap;
    // The meter's hours start at `origin_s`; the accounting's at `t0_s`. They are the same
    // instant in practice; when not, a meter hour is split over the two it overlaps.
    let offset_h = (drawn.origin_s - t0_s) / 3600.0;
    let mut by_hour: BTreeMap<(u32, u32, usize), f64> = BTreeMap::new();
    for (&(tenant, site, hour), &j) in drawn.joules {
        let start = f64::from(hour) + offset_h;
        let k = start.floor();
        let first = (k + 1.0 - start).clamp(0.0, 1.0);
        for (kk, part) in [(k, first), (k + 1.0, 1.0 - first)] {
            if part > 0.0 && kk >= 0.0 {
                *by_hour.entry((tenant, site, kk as usize)).or_insert(0.0) += j * part;
            }
        }
    }
    let mut rows: BTreeMap<u32, TenantEnergy> = tenants
        .iter()
        .map(|t| {
            let row = TenantEnergy {
                tenant: t.tenant,
                gpu_hours: t.gpu_hours,
                gpu_hours_by_model: t.by_model.clone(),
                ..TenantEnergy::default()
            };
            (t.tenant, row)
        })
        .collect();
    for (&(tenant, site, k), &dc_joules) in &by_hour {
        let Some(h) = site_hours.get(site as usize).and_then(|s| s.get(k)) else { continue };
        let wall_joules = dc_joules * wall_factor.get(site as usize).copied().unwrap_or(1.0);
        if h.it_mwh <= 0.0 || wall_joules <= 0.0 {
            continue;
        }
        let share = (wall_joules / (h.it_mwh * 3.6e9)).min(1.0);
        let row = rows.entry(tenant).or_insert_with(|| TenantEnergy { tenant, ..TenantEnergy::default() });
        row.energy.add_share(h, share);
    }
    rows.into_values().collect()
}

/// Accounts `series` (`(t_s, equivalent allocation of each site)`) hour by hour, each site at
/// its own load.
pub(crate) fn summarize(
    opts: &PowerOptions,
    series: &[(f64, Vec<f64>)],
    tenants: &[TenantUse],
    drawn: &TenantDraw<'_>,
) -> Result<PowerSummary, energy::EnergyError> {
    let mut model = opts.model.clone();
    if let Some(caps) = &opts.cap_watts {
        for (s, c) in model.sites.iter_mut().zip(caps) {
            s.grid_power_cap_watts = Some(*c);
        }
    }
    let sites = model.sites.len().max(1);
    let mut points: Vec<(f64, Vec<f64>)> = series.to_vec();
    if points.len() < 2 {
        let t = points.first().map_or(0.0, |p| p.0);
        let first = points.first().map_or_else(|| vec![0.0; sites], |p| p.1.clone());
        points = vec![(t, first), (t + 1.0, vec![0.0; sites])];
    }
    if let (Some(a), Some(b)) = (points.first(), points.last())
        && b.0 <= a.0
    {
        let t = a.0;
        points.push((t + 1.0, vec![0.0; sites]));
    }
    let by_site: Vec<Vec<(f64, f64)>> =
        (0..sites).map(|s| points.iter().map(|(t, a)| (*t, a.get(s).copied().unwrap_or(0.0))).collect()).collect();
    // Sim time 0 is the start hour; the series starts at the first event.
    let first = points.first().map_or(0.0, |p| p.0);
    let start = opts.hour_of(first);
    let r = account_by_site(&model, &opts.temperature, &opts.grid, &by_site, start)?;
    let wall: Vec<f64> = (0..model.sites.len()).map(|s| model.site_wall_factor(SiteId(s as u32))).collect();
    let tenant_energy = share_among_tenants(tenants, drawn, first, &r.site_hours, &wall);
    Ok(PowerSummary {
        cooling: r.cooling.clone(),
        start_hour: opts.start_hour,
        it_mwh: r.totals.it_mwh,
        facility_mwh: r.totals.facility_mwh,
        site_mwh: r.totals.site_mwh,
        pue: r.totals.pue,
        power_cap_mw: opts.cap_watts.as_ref().map(|c| c.iter().sum::<f64>() / 1e6),
        nameplate_mw: opts.nameplate_watts().iter().sum::<f64>() / 1e6,
        worst_case_mw: opts.worst_case_watts().iter().sum::<f64>() / 1e6,
        power_mode: opts.cap_watts.as_ref().map(|_| match opts.mode {
            PowerMode::Admission => "admission".to_string(),
            PowerMode::Dynamic { .. } => "dynamic".to_string(),
        }),
        heat_exported_mwh: r.totals.heat_exported_mwh,
        heat_demand_mwh: r.totals.heat_demand_mwh,
        heat_revenue_eur: r.totals.heat_revenue_eur,
        energy_cost_eur: r.totals.energy_cost_eur,
        co2_t: r.totals.co2_t,
        tenant_energy,
        site_energy: r.sites,
        hourly: r.hourly,
        ..PowerSummary::default()
    })
}
