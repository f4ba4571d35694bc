//! Hour-by-hour energy accounting of a fleet under a utilisation time series, and the site-power
//! queries a power-capped scheduler calls on every decision.
//!
//! Per site and hour: IT power at the hour's mean allocation ([`crate::it_power`]); the facility
//! around it ([`crate::facility`]); recoverable heat sold to the heat network through a heat pump
//! ([`crate::heat`]), the heat pump held within the site's grid connection; grid energy priced and
//! carbon-counted at that hour ([`crate::grid`]).
//!
//! Terms: `it` is the servers at the wall; `facility` is `it` plus everything that keeps them
//! running (PUE = facility / it, The Green Grid's definition); `site` is what the grid meter
//! sees: facility plus the heat pump that serves the heat network (kept out of PUE, as The Green
//! Grid keeps reuse equipment out of it).

use crate::EnergyError;
use crate::climate::{HOURS_PER_YEAR, TemperatureYear};
use crate::facility::{CoolingDesign, FacilityPower, facility_power};
use crate::gpu_power::GpuPowerProfile;
use crate::grid::GridYear;
use crate::heat::{HeatNetwork, RecoverableHeat, export_heat};
use crate::it_power::{FleetPower, HOST_BUSY_FRACTION, SiteItPower, wall_factor};
use model::{Cooling, Fleet, SiteId};
use serde::Serialize;

/// Longest series accounted hour by hour (ten years).
pub const MAX_HOURS: usize = 10 * HOURS_PER_YEAR;

/// The heat networks next to the sites.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HeatOptions {
    /// Price the networks pay for heat, EUR/MWh.
    pub price_eur_per_mwh: f64,
    /// Supply temperature the networks need, °C.
    pub supply_celsius: f64,
    /// Scale of each network's demand relative to [`HeatNetwork::sized_for`] the site (0 = no
    /// network).
    pub demand_scale: f64,
}

impl Default for HeatOptions {
    fn default() -> Self {
        HeatOptions { price_eur_per_mwh: 40.0, supply_celsius: 65.0, demand_scale: 1.0 }
    }
}

/// One site as the accounting sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteModel {
    pub name: String,
    pub cooling: Cooling,
    pub design: CoolingDesign,
    pub recoverable: RecoverableHeat,
    pub it: SiteItPower,
    pub grid_power_cap_watts: Option<f64>,
    pub network: HeatNetwork,
    /// DC -> wall factor of the site's servers under its cooling.
    wall_factor: f64,
}

/// A site's draw at one moment, watts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SitePower {
    pub it_watts: f64,
    pub facility: FacilityPower,
    /// IT plus facility overhead (heat pump excluded).
    pub total_watts: f64,
}

/// A fleet's energy model: per-node and per-site power figures, cooling designs and heat networks,
/// built once and queried cheaply.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnergyModel {
    pub power: FleetPower,
    pub sites: Vec<SiteModel>,
    /// The cooling every site was given, `None` when each keeps the fleet file's.
    pub cooling_override: Option<Cooling>,
}

impl EnergyModel {
    /// Builds the model of `fleet`, every site cooled by `cooling` (or by its own when `None`).
    pub fn new(fleet: &Fleet, cooling: Option<Cooling>, heat: &HeatOptions) -> EnergyModel {
        let power = FleetPower::new(fleet);
        let sites = fleet
            .sites
            .iter()
            .zip(&power.sites)
            .map(|(site, it)| {
                let cooling = cooling.unwrap_or(site.cooling);
                // A network the fleet file describes is the site's own; otherwise one sized to it.
                let network = match &site.env.heat_network {
                    Some(spec) => HeatNetwork::declared(spec, heat),
                    None => {
                        let mut network = HeatNetwork::sized_for(it.busy_watts);
                        network.price_eur_per_mwh = heat.price_eur_per_mwh;
                        network.base_load_watts *= heat.demand_scale.max(0.0);
                        network.heating_watts_per_kelvin *= heat.demand_scale.max(0.0);
                        network.supply_celsius = heat.supply_celsius;
                        network
                    }
                };
                SiteModel {
                    name: site.name.clone(),
                    cooling,
                    design: CoolingDesign::of(cooling),
                    recoverable: RecoverableHeat::of(cooling),
                    it: *it,
                    grid_power_cap_watts: site.grid_power_cap_watts,
                    network,
                    wall_factor: wall_factor(cooling),
                }
            })
            .collect();
        EnergyModel { power, sites, cooling_override: cooling }
    }

    /// IT and facility draw of `site` at `allocation` (0..1 of its GPUs, typical work) and outdoor
    /// temperature `outdoor_c`, no heat exported. A few dozen flops.
    pub fn site_power(&self, site: SiteId, allocation: f64, outdoor_c: f64) -> SitePower {
        let s = &self.sites[site.index()];
        self.power_at(s, s.it.dc_watts(allocation) * s.wall_factor, outdoor_c)
    }

    /// [`EnergyModel::site_power`]'s total, watts.
    pub fn site_power_watts(&self, site: SiteId, allocation: f64, outdoor_c: f64) -> f64 {
        self.site_power(site, allocation, outdoor_c).total_watts
    }

    /// Worst case of `site` at `outdoor_c`: every GPU at its board limit, every host at full load.
    pub fn site_worst_case_watts(&self, site: SiteId, outdoor_c: f64) -> f64 {
        let s = &self.sites[site.index()];
        self.power_at(s, s.it.max_watts * s.wall_factor, outdoor_c).total_watts
    }

    /// Extra site draw per additional allocated GPU at `site`, watts (site power is linear in the
    /// allocation at a given temperature, up to the small fixed building load).
    pub fn site_watts_per_gpu(&self, site: SiteId, outdoor_c: f64) -> f64 {
        let s = &self.sites[site.index()];
        if s.it.gpus == 0 {
            return 0.0;
        }
        (self.site_power_watts(site, 1.0, outdoor_c) - self.site_power_watts(site, 0.0, outdoor_c)) / s.it.gpus as f64
    }

    /// Sum over sites of [`EnergyModel::site_power_watts`], all at `allocation`.
    pub fn fleet_power_watts(&self, allocation: f64, outdoor_c: f64) -> f64 {
        (0..self.sites.len()).map(|i| self.site_power_watts(SiteId(i as u32), allocation, outdoor_c)).sum()
    }

    /// Sum over sites of [`EnergyModel::site_worst_case_watts`].
    pub fn fleet_worst_case_watts(&self, outdoor_c: f64) -> f64 {
        (0..self.sites.len()).map(|i| self.site_worst_case_watts(SiteId(i as u32), outdoor_c)).sum()
    }

    /// The heat `site` sells to its network when its servers take `it_watts` at the wall at
    /// `outdoor_c` (the heat pump held within the grid connection), as the hourly account
    /// reckons it; `None` for a site the model does not have.
    pub fn site_heat_at_it(&self, site: SiteId, it_watts: f64, outdoor_c: f64) -> Option<crate::heat::HeatExport> {
        let s = self.sites.get(site.index())?;
        let plain = self.power_at(s, it_watts, outdoor_c);
        let budget = s.grid_power_cap_watts.map_or(f64::INFINITY, |cap| cap - plain.total_watts);
        let demand = s.network.demand_watts(outdoor_c);
        Some(export_heat(s.recoverable.share * it_watts, s.recoverable.celsius, &s.network, demand, budget))
    }

    /// Draw of `site` when its servers take `it_watts` at the wall, no heat exported: the query
    /// a power-capped scheduler makes when its GPUs run under power caps. Linear in `it_watts` at
    /// a given temperature.
    pub fn site_power_at_it(&self, site: SiteId, it_watts: f64, outdoor_c: f64) -> SitePower {
        self.power_at(&self.sites[site.index()], it_watts, outdoor_c)
    }

    /// What a power-cap guard needs, as plain numbers at outdoor temperature `outdoor_c`: per
    /// site, the draw with every GPU idle; per node, the site watts each allocated GPU adds at
    /// worst (GPU at its board limit, the host's whole span charged to its GPUs) and the part of
    /// it the GPU's power cap scales. Site draw is linear in IT power at a given temperature, so
    /// these figures are exact for that temperature; callers pass the hottest hour they will meet.
    pub fn guard_figures(&self, fleet: &Fleet, outdoor_c: f64) -> GuardFigures {
        let slope: Vec<f64> = (0..self.sites.len())
            .map(|s| {
                let id = SiteId(s as u32);
                let x = self.sites[s].it.max_watts.max(1.0);
                let p0 = self.site_power_at_it(id, 0.0, outdoor_c).total_watts;
                let p1 = self.site_power_at_it(id, x, outdoor_c).total_watts;
                (p1 - p0) / x
            })
            .collect();
        let site_idle_watts = (0..self.sites.len())
            .map(|s| {
                let id = SiteId(s as u32);
                let idle_it = self.sites[s].it.idle_watts * self.site_wall_factor(id);
                self.site_power_at_it(id, idle_it, outdoor_c).total_watts
            })
            .collect();
        let nodes = fleet
            .node_ids()
            .map(|id| {
                let site = fleet.node(id).site;
                let p = &self.power.nodes[id.index()];
                if p.gpus == 0 {
                    return GuardNode {
                        site: site.0,
                        full_watts_per_gpu: 0.0,
                        board_watts_per_gpu: 0.0,
                        free_cap: 1.0,
                        host_cut_watts_per_gpu: 0.0,
                    };
                }
                let k = self.site_wall_factor(site) * slope[site.index()];
                let gpu = fleet.node_gpu_model(id);
                let board = gpu.map_or(0.0, |m| m.board_power_watts);
                let free_cap = gpu.map_or(1.0, |m| GpuPowerProfile::of(m.family).busy_fraction);
                let n = f64::from(p.gpus);
                let full = (p.max_watts - p.idle_watts) / n;
                let host_cut = (1.0 - HOST_BUSY_FRACTION) * p.host_span_watts / n;
                GuardNode {
                    site: site.0,
                    full_watts_per_gpu: full * k,
                    board_watts_per_gpu: board * k,
                    free_cap,
                    host_cut_watts_per_gpu: host_cut * k,
                }
            })
            .collect();
        GuardFigures { site_idle_watts, nodes }
    }

    /// DC -> wall factor of `site`'s servers under its cooling (power supplies, server fans).
    pub fn site_wall_factor(&self, site: SiteId) -> f64 {
        self.sites[site.index()].wall_factor
    }

    fn power_at(&self, s: &SiteModel, it_watts: f64, outdoor_c: f64) -> SitePower {
        let facility = facility_power(&s.design, it_watts, outdoor_c, 0.0, s.it.max_watts * s.wall_factor);
        SitePower { it_watts, facility, total_watts: it_watts + facility.overhead_watts() }
    }
}

/// A power-cap guard's figures, from [`EnergyModel::guard_figures`].
#[derive(Clone, Debug, PartialEq)]
pub struct GuardFigures {
    /// By site index: site watts with every GPU idle.
    pub site_idle_watts: Vec<f64>,
    /// By node id.
    pub nodes: Vec<GuardNode>,
}

/// One node's worst-case site watts per allocated GPU.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GuardNode {
    pub site: u32,
    pub full_watts_per_gpu: f64,
    pub board_watts_per_gpu: f64,
    /// Caps at or above this fraction of the board limit do not slow typical work: its draw
    /// ([`GpuPowerProfile::busy_fraction`]).
    pub free_cap: f64,
    /// What a CPU package power limit at the host's typical draw takes off `full_watts_per_gpu`
    /// (the host's CPU span above [`crate::it_power::HOST_BUSY_FRACTION`], per GPU).
    pub host_cut_watts_per_gpu: f64,
}

/// Site power of all of `fleet`'s sites under `cooling` at `allocation` and `outdoor_c`, watts.
/// Builds the fleet's figures on every call (O(nodes)); callers asking repeatedly keep an
/// [`EnergyModel`] and call [`EnergyModel::site_power_watts`].
pub fn site_power_watts(fleet: &Fleet, cooling: Cooling, allocation: f64, outdoor_c: f64) -> f64 {
    EnergyModel::new(fleet, Some(cooling), &HeatOptions::default()).fleet_power_watts(allocation, outdoor_c)
}

/// [`site_power_watts`]'s worst case: every GPU at its board limit.
pub fn worst_case_site_power_watts(fleet: &Fleet, cooling: Cooling, outdoor_c: f64) -> f64 {
    EnergyModel::new(fleet, Some(cooling), &HeatOptions::default()).fleet_worst_case_watts(outdoor_c)
}

/// Energy, heat, money and carbon over a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    /// Servers at the wall.
    pub it_mwh: f64,
    /// IT plus cooling, distribution losses and building (what PUE divides by IT).
    pub facility_mwh: f64,
    /// Heat pump electricity serving the heat network.
    pub heat_pump_mwh: f64,
    /// Grid energy: facility plus heat pump.
    pub site_mwh: f64,
    /// facility / IT over the run.
    pub pue: f64,
    /// Highest hourly mean grid draw, MW.
    pub peak_site_mw: f64,
    /// Sum of the grid connections, MW; `None` if any site has none.
    pub grid_cap_mw: Option<f64>,
    /// Hours whose mean draw exceeded the grid cap (fleet: of any site).
    pub hours_over_cap: f64,
    /// Heat the cooling system offered for reuse.
    pub heat_recoverable_mwh: f64,
    /// Data-centre heat taken by the heat network.
    pub heat_recovered_mwh: f64,
    /// Heat sold at the network's supply temperature (recovered heat plus heat-pump work).
    pub heat_exported_mwh: f64,
    /// What the heat network asked for.
    pub heat_demand_mwh: f64,
    pub heat_revenue_eur: f64,
    pub energy_cost_eur: f64,
    pub co2_t: f64,
}

impl Totals {
    fn add_hour(&mut self, h: &HourFlows, hours: f64, price: f64, co2: f64) {
        let one = SiteHour::of(h, hours, price, co2);
        self.it_mwh += one.it_mwh;
        self.facility_mwh += one.facility_mwh;
        self.heat_pump_mwh += h.heat_pump_watts * hours / 1e6;
        self.site_mwh += one.site_mwh;
        self.heat_recoverable_mwh += h.recoverable_watts * hours / 1e6;
        self.heat_recovered_mwh += h.recovered_watts * hours / 1e6;
        self.heat_exported_mwh += one.heat_exported_mwh;
        self.heat_demand_mwh += h.demand_watts * hours / 1e6;
        self.heat_revenue_eur += one.heat_revenue_eur;
        self.energy_cost_eur += one.energy_cost_eur;
        self.co2_t += one.co2_t;
    }

    fn finish(&mut self) {
        self.pue = if self.it_mwh > 0.0 { self.facility_mwh / self.it_mwh } else { 0.0 };
    }
}

/// One site's totals.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteEnergy {
    pub name: String,
    pub cooling: Cooling,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The fleet at one hour, summed over sites.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HourPoint {
    /// Start of the hour, seconds from the series' start.
    pub t_s: f64,
    pub hour_of_year: usize,
    /// Length of the hour covered by the series (the last one may be partial), hours.
    pub hours: f64,
    pub allocation: f64,
    pub outdoor_celsius: f64,
    pub it_mw: f64,
    pub site_mw: f64,
    pub grid_cap_mw: Option<f64>,
    pub heat_recovered_mw: f64,
    pub heat_exported_mw: f64,
    pub heat_demand_mw: f64,
    pub price_eur_per_mwh: f64,
    pub co2_g_per_kwh: f64,
}

/// One site over one hour of a run: what it drew, paid, emitted and sold, to be shared among the
/// work that ran there then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SiteHour {
    pub it_mwh: f64,
    pub facility_mwh: f64,
    /// Grid energy: facility plus heat pump.
    pub site_mwh: f64,
    pub energy_cost_eur: f64,
    pub co2_t: f64,
    pub heat_exported_mwh: f64,
    pub heat_revenue_eur: f64,
}

impl SiteHour {
    /// Adds `share` (0 to 1) of `other`.
    pub fn add_share(&mut self, other: &SiteHour, share: f64) {
        self.it_mwh += other.it_mwh * share;
        self.facility_mwh += other.facility_mwh * share;
        self.site_mwh += other.site_mwh * share;
        self.energy_cost_eur += other.energy_cost_eur * share;
        self.co2_t += other.co2_t * share;
        self.heat_exported_mwh += other.heat_exported_mwh * share;
        self.heat_revenue_eur += other.heat_revenue_eur * share;
    }

    fn of(h: &HourFlows, hours: f64, price: f64, co2: f64) -> SiteHour {
        let site_mwh = (h.facility_watts + h.heat_pump_watts) * hours / 1e6;
        SiteHour {
            it_mwh: h.it_watts * hours / 1e6,
            facility_mwh: h.facility_watts * hours / 1e6,
            site_mwh,
            energy_cost_eur: site_mwh * price,
            // g/kWh = t/GWh
            co2_t: site_mwh * co2 / 1e3,
            heat_exported_mwh: h.exported_watts * hours / 1e6,
            heat_revenue_eur: h.exported_watts * hours / 1e6 * h.heat_price,
        }
    }
}

/// A run's energy account.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EnergyReport {
    /// The cooling every site was given, or `per-site` when each kept its own.
    pub cooling: String,
    pub hours: f64,
    pub start_hour_of_year: usize,
    pub mean_allocation: f64,
    pub mean_outdoor_celsius: f64,
    #[serde(flatten)]
    pub totals: Totals,
    pub sites: Vec<SiteEnergy>,
    #[serde(skip)]
    pub hourly: Vec<HourPoint>,
    /// Each site's hours (`site_hours[site][hour]`), for sharing them among tenants.
    #[serde(skip)]
    pub site_hours: Vec<Vec<SiteHour>>,
}

struct HourFlows {
    it_watts: f64,
    facility_watts: f64,
    heat_pump_watts: f64,
    recoverable_watts: f64,
    recovered_watts: f64,
    exported_watts: f64,
    demand_watts: f64,
    heat_price: f64,
}

/// Mean allocation of each hour of a step series `(t_s, allocation)` (each value holds until the
/// next point), with each hour's covered length; the series ends at its last point.
pub fn hourly_allocation(series: &[(f64, f64)]) -> Result<Vec<(f64, f64)>, EnergyError> {
    if series.len() < 2 {
        return Err(EnergyError::Invalid("a utilisation series needs at least two points".into()));
    }
    for (i, &(t, a)) in series.iter().enumerate() {
        if !t.is_finite() || !a.is_finite() || !(0.0..=1.0 + 1e-9).contains(&a) {
            return Err(EnergyError::Invalid(format!(
                "point {}: ({t} s, {a}) is not a finite time with an allocation in 0..1",
                i + 1
            )));
        }
    }
    for (i, w) in series.windows(2).enumerate() {
        if w[1].0 < w[0].0 {
            return Err(EnergyError::Invalid(format!(
                "point {}: time {} s is before the previous point's {} s",
                i + 2,
                w[1].0,
                w[0].0
            )));
        }
    }
    let t0 = series[0].0;
    let span = series[series.len() - 1].0 - t0;
    if span <= 0.0 {
        return Err(EnergyError::Invalid("the utilisation series spans no time".into()));
    }
    let n = (span / 3600.0).ceil() as usize;
    if n > MAX_HOURS {
        return Err(EnergyError::Invalid(format!("the series spans {n} hours, more than the {MAX_HOURS} accounted")));
    }
    let mut integral = vec![0.0; n];
    for w in series.windows(2) {
        let (a, b, v) = (w[0].0 - t0, w[1].0 - t0, w[0].1.min(1.0));
        let mut t = a;
        while t < b {
            let k = ((t / 3600.0).floor() as usize).min(n - 1);
            let end = (((k + 1) as f64) * 3600.0).min(b);
            integral[k] += v * (end - t);
            if end <= t {
                break;
            }
            t = end;
        }
    }
    Ok((0..n)
        .map(|k| {
            let len_s = (span - k as f64 * 3600.0).min(3600.0);
            (integral[k] / len_s, len_s / 3600.0)
        })
        .collect())
}

/// Accounts `series` (`(t_s, gpu_allocation)` points, as `drome sim --csv` writes them) on
/// `model`, the first point at hour-of-year `start_hour`, under `temperature` and `grid`.
pub fn account(
    model: &EnergyModel,
    temperature: &TemperatureYear,
    grid: &GridYear,
    series: &[(f64, f64)],
    start_hour: usize,
) -> Result<EnergyReport, EnergyError> {
    let by_site = vec![series.to_vec(); model.sites.len().max(1)];
    account_by_site(model, temperature, grid, &by_site, start_hour)
}

/// [`account`] with one allocation series per site (by site index), so that a busy site and an
/// idle one are each accounted at their own load, cooling and heat demand. The series must share
/// their first and last times.
pub fn account_by_site(
    model: &EnergyModel,
    temperature: &TemperatureYear,
    grid: &GridYear,
    series: &[Vec<(f64, f64)>],
    start_hour: usize,
) -> Result<EnergyReport, EnergyError> {
    if series.len() != model.sites.len().max(1) {
        return Err(EnergyError::Invalid(format!(
            "{} allocation series for {} sites",
            series.len(),
            model.sites.len()
        )));
    }
    let per_site: Vec<Vec<(f64, f64)>> = series.iter().map(|s| hourly_allocation(s)).collect::<Result<_, _>>()?;
    let hourly = &per_site[0];
    if per_site.iter().any(|h| h.len() != hourly.len()) {
        return Err(EnergyError::Invalid("the sites' allocation series span different hours".into()));
    }
    // The fleet's allocation of an hour, weighted by the sites' GPUs, for the hourly points.
    let gpus: Vec<f64> = model.sites.iter().map(|s| s.it.gpus as f64).collect();
    let all_gpus: f64 = gpus.iter().sum();
    let same = series.windows(2).all(|w| w[0] == w[1]);
    let fleet_allocation = |k: usize| {
        if same || all_gpus <= 0.0 {
            return per_site[0][k].0;
        }
        per_site.iter().zip(&gpus).map(|(h, g)| h[k].0 * g).sum::<f64>() / all_gpus
    };
    let caps: Option<f64> = model.sites.iter().map(|s| s.grid_power_cap_watts).sum();
    let mut totals = Totals { grid_cap_mw: caps.map(|w| w / 1e6), ..Totals::default() };
    let mut sites: Vec<SiteEnergy> = model
        .sites
        .iter()
        .map(|s| SiteEnergy {
            name: s.name.clone(),
            cooling: s.cooling,
            totals: Totals { grid_cap_mw: s.grid_power_cap_watts.map(|w| w / 1e6), ..Totals::default() },
        })
        .collect();
    let mut points = Vec::with_capacity(hourly.len());
    let mut site_hours: Vec<Vec<SiteHour>> = model.sites.iter().map(|_| Vec::with_capacity(hourly.len())).collect();
    let (mut hours_total, mut alloc_sum, mut temp_sum) = (0.0, 0.0, 0.0);
    for (k, &(_, hours)) in hourly.iter().enumerate() {
        let allocation = fleet_allocation(k);
        let hour_of_year = (start_hour + k) % HOURS_PER_YEAR;
        let outdoor_c = temperature.at_hour(hour_of_year);
        let price = grid.price_eur_per_mwh(start_hour + k);
        let co2 = grid.co2_g_per_kwh(start_hour + k);
        let mut point = HourPoint {
            t_s: k as f64 * 3600.0,
            hour_of_year,
            hours,
            allocation,
            outdoor_celsius: outdoor_c,
            grid_cap_mw: totals.grid_cap_mw,
            price_eur_per_mwh: price,
            co2_g_per_kwh: co2,
            ..HourPoint::default()
        };
        let mut fleet_site_watts = 0.0;
        let mut any_over_cap = false;
        for (i, s) in model.sites.iter().enumerate() {
            let plain = model.site_power(SiteId(i as u32), per_site[i][k].0, outdoor_c);
            let it_max = s.it.max_watts * s.wall_factor;
            let budget = s.grid_power_cap_watts.map_or(f64::INFINITY, |cap| cap - plain.total_watts);
            let demand = s.network.demand_watts(outdoor_c);
            let heat =
                export_heat(s.recoverable.share * plain.it_watts, s.recoverable.celsius, &s.network, demand, budget);
            let facility = facility_power(&s.design, plain.it_watts, outdoor_c, heat.recovered_watts, it_max);
            let flows = HourFlows {
                it_watts: plain.it_watts,
                facility_watts: plain.it_watts + facility.overhead_watts(),
                heat_pump_watts: heat.heat_pump_watts,
                recoverable_watts: heat.recoverable_watts,
                recovered_watts: heat.recovered_watts,
                exported_watts: heat.exported_watts,
                demand_watts: heat.demand_watts,
                heat_price: s.network.price_eur_per_mwh,
            };
            let site_watts = flows.facility_watts + flows.heat_pump_watts;
            site_hours[i].push(SiteHour::of(&flows, hours, price, co2));
            let st = &mut sites[i].totals;
            st.add_hour(&flows, hours, price, co2);
            st.peak_site_mw = st.peak_site_mw.max(site_watts / 1e6);
            if s.grid_power_cap_watts.is_some_and(|cap| site_watts > cap * (1.0 + 1e-9)) {
                st.hours_over_cap += hours;
                any_over_cap = true;
            }
            totals.add_hour(&flows, hours, price, co2);
            fleet_site_watts += site_watts;
            point.it_mw += flows.it_watts / 1e6;
            point.site_mw += site_watts / 1e6;
            point.heat_recovered_mw += flows.recovered_watts / 1e6;
            point.heat_exported_mw += flows.exported_watts / 1e6;
            point.heat_demand_mw += flows.demand_watts / 1e6;
        }
        totals.peak_site_mw = totals.peak_site_mw.max(fleet_site_watts / 1e6);
        if any_over_cap {
            totals.hours_over_cap += hours;
        }
        hours_total += hours;
        alloc_sum += allocation * hours;
        temp_sum += outdoor_c * hours;
        points.push(point);
    }
    totals.finish();
    for s in &mut sites {
        s.totals.finish();
    }
    Ok(EnergyReport {
        cooling: model.cooling_override.map_or_else(|| "per-site".to_string(), |c| c.to_string()),
        hours: hours_total,
        start_hour_of_year: start_hour % HOURS_PER_YEAR,
        mean_allocation: alloc_sum / hours_total,
        mean_outdoor_celsius: temp_sum / hours_total,
        totals,
        sites,
        hourly: points,
        site_hours,
    })
}

/// Parses a utilisation series CSV: a header with `t_s` and `gpu_allocation` columns among others
/// (as `drome sim --csv` writes them), then one row per point. Errors name the line and column.
pub fn parse_allocation_csv(text: &str) -> Result<Vec<(f64, f64)>, EnergyError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    let Some((header_line, header)) = lines.next() else {
        return Err(EnergyError::Csv {
            line: 1,
            column: 1,
            message: "empty file; expected a header with t_s,gpu_allocation".into(),
        });
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let find = |want: &str| names.iter().position(|n| n.eq_ignore_ascii_case(want));
    let (Some(t_col), Some(a_col)) = (find("t_s"), find("gpu_allocation")) else {
        return Err(EnergyError::Csv {
            line: header_line + 1,
            column: 1,
            message: format!("expected columns t_s and gpu_allocation in the header, found `{}`", header.trim()),
        });
    };
    let mut points = Vec::new();
    for (i, line) in lines {
        let fields: Vec<&str> = line.split(',').map(str::trim).collect();
        if fields.len() != names.len() {
            return Err(EnergyError::Csv {
                line: i + 1,
                column: fields.len().min(names.len()) + 1,
                message: format!("expected {} fields, found {}", names.len(), fields.len()),
            });
        }
        let num = |col: usize| match fields[col].parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(EnergyError::Csv {
                line: i + 1,
                column: col + 1,
                message: format!("`{}` must be a finite number, found `{}`", names[col], fields[col]),
            }),
        };
        points.push((num(t_col)?, num(a_col)?));
    }
    Ok(points)
}
