//! One site's grid and heat network at one hour of the year, as a federation's dispatch compares
//! sites: the grid's mean price (with the site's adder) and carbon intensity over the hours ahead,
//! the outdoor temperature, and what the site's declared heat network asks for.
//!
//! The formulas are the multi-site twin's (`sim::multisite`), so a live federation and its twin
//! rank sites alike: the site's climate year is synthesised from its normals with the seed its
//! station's name gives, the Valence year standing in when it declares none, and a declared heat
//! network is built as [`crate::EnergyModel`] builds it.

use crate::EnergyError;
use crate::account::HeatOptions;
use crate::climate::{MonthlyNormals, TemperatureYear, synthesize};
use crate::grid::GridYear;
use crate::heat::HeatNetwork;
use serde::Serialize;

/// A site's figures at one hour.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct SiteHourFacts {
    /// Mean grid price over the hours ahead, the site's adder included, EUR/MWh.
    pub price_eur_per_mwh: f64,
    /// Mean grid carbon intensity over the hours ahead, gCO2/kWh.
    pub co2_g_per_kwh: f64,
    pub outdoor_celsius: f64,
    /// What the site's heat network asks for at this hour; `None` when the fleet declares none.
    pub heat_demand_watts: Option<f64>,
}

impl SiteHourFacts {
    /// The waste heat a site drawing `gpu_watts` gives its heat network: its draw, at most what
    /// the network asks for; `None` without a network.
    pub fn heat_supplied_watts(&self, gpu_watts: f64) -> Option<f64> {
        self.heat_demand_watts.map(|demand| gpu_watts.max(0.0).min(demand))
    }
}

/// Seed of the climate year synthesised for a weather station: FNV-1a of its name, so a station
/// gets the same year in every run.
pub fn station_seed(station: &str) -> u64 {
    station.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3))
}

/// The temperature year of `site`: synthesised from its climate normals, or the shipped Valence
/// year when it declares none. Costs a few milliseconds: build it once per site.
pub fn site_temperature_year(site: &model::Site) -> Result<TemperatureYear, EnergyError> {
    match &site.env.climate {
        Some(c) => {
            let normals = MonthlyNormals { station: "", min_celsius: c.min_celsius, max_celsius: c.max_celsius };
            Ok(synthesize(&normals, station_seed(&c.station)))
        }
        None => TemperatureYear::valence(),
    }
}

/// `site`'s figures at `hour_of_year` (wrapped), on the wholesale `grid` (the site's price adder
/// is added here) and the site's `temperature` year ([`site_temperature_year`]), price and carbon
/// averaged over `lookahead_hours` from that hour (at least one).
pub fn site_hour_facts(
    site: &model::Site,
    grid: &GridYear,
    temperature: &TemperatureYear,
    hour_of_year: usize,
    lookahead_hours: usize,
) -> SiteHourFacts {
    let n = lookahead_hours.max(1);
    let adder = site.env.price_adder_eur_per_mwh;
    // Summed hour by hour with the adder on each, as the twin's grid carries it.
    let price = (0..n).map(|k| grid.price_eur_per_mwh(hour_of_year + k) + adder).sum::<f64>() / n as f64;
    let co2 = (0..n).map(|k| grid.co2_g_per_kwh(hour_of_year + k)).sum::<f64>() / n as f64;
    let outdoor = temperature.at_hour(hour_of_year);
    let heat_demand = site
        .env
        .heat_network
        .as_ref()
        .map(|spec| HeatNetwork::declared(spec, &HeatOptions::default()).demand_watts(outdoor));
    SiteHourFacts {
        price_eur_per_mwh: price,
        co2_g_per_kwh: co2,
        outdoor_celsius: outdoor,
        heat_demand_watts: heat_demand,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{Cooling, HeatNetworkSpec, SiteClimate, SiteEnv};

    fn site(env: SiteEnv) -> model::Site {
        model::Site { name: "s".into(), grid_power_cap_watts: None, cooling: Cooling::Liquid, halls: Vec::new(), env }
    }

    #[test]
    fn price_and_carbon_are_means_of_the_hours_ahead_with_the_adder() {
        let grid = GridYear::france().unwrap();
        let s = site(SiteEnv { price_adder_eur_per_mwh: 10.0, ..SiteEnv::default() });
        let t = TemperatureYear::constant(5.0);
        let f = site_hour_facts(&s, &grid, &t, 100, 4);
        let with_adder = grid.with_price_adder(10.0);
        let price = (100..104).map(|h| with_adder.price_eur_per_mwh(h)).sum::<f64>() / 4.0;
        let co2 = (100..104).map(|h| grid.co2_g_per_kwh(h)).sum::<f64>() / 4.0;
        assert_eq!(f.price_eur_per_mwh, price, "the same sums as over the site's own grid year");
        assert_eq!(f.co2_g_per_kwh, co2);
        assert_eq!(f.outdoor_celsius, 5.0);
        assert_eq!(f.heat_demand_watts, None, "no declared network, no demand");
        assert_eq!(f.heat_supplied_watts(1e6), None);
        // The last hours of the year look ahead into the next one's first.
        let end = site_hour_facts(&s, &grid, &t, crate::HOURS_PER_YEAR - 1, 2);
        let wrap = (with_adder.price_eur_per_mwh(crate::HOURS_PER_YEAR - 1) + with_adder.price_eur_per_mwh(0)) / 2.0;
        assert_eq!(end.price_eur_per_mwh, wrap);
    }

    #[test]
    fn a_declared_network_asks_for_its_base_and_heating_below_18_celsius() {
        let spec = HeatNetworkSpec { base_watts: 2e6, heating_watts_per_kelvin: 1e5, price_eur_per_mwh: None };
        let s = site(SiteEnv { heat_network: Some(spec), ..SiteEnv::default() });
        let grid = GridYear::constant(50.0, 20.0);
        let cold = site_hour_facts(&s, &grid, &TemperatureYear::constant(8.0), 0, 4);
        assert_eq!(cold.heat_demand_watts, Some(2e6 + 10.0 * 1e5));
        assert_eq!(cold.heat_supplied_watts(1e6), Some(1e6), "all the site's heat is wanted");
        assert_eq!(cold.heat_supplied_watts(5e6), Some(3e6), "no more than the network asks for");
        let warm = site_hour_facts(&s, &grid, &TemperatureYear::constant(25.0), 0, 4);
        assert_eq!(warm.heat_demand_watts, Some(2e6), "process heat only");
        assert_eq!(warm.price_eur_per_mwh, 50.0);
    }

    #[test]
    fn a_site_climate_gives_its_station_year_else_valence() {
        let climate = SiteClimate {
            station: "Dunkerque".into(),
            min_celsius: [2.0, 2.0, 4.0, 6.0, 9.0, 12.0, 14.0, 14.0, 12.0, 9.0, 6.0, 3.0],
            max_celsius: [7.0, 8.0, 10.0, 13.0, 16.0, 19.0, 21.0, 22.0, 19.0, 16.0, 11.0, 8.0],
        };
        let own = site_temperature_year(&site(SiteEnv { climate: Some(climate.clone()), ..SiteEnv::default() }));
        let normals =
            MonthlyNormals { station: "", min_celsius: climate.min_celsius, max_celsius: climate.max_celsius };
        assert_eq!(own, Ok(synthesize(&normals, station_seed("Dunkerque"))));
        assert_eq!(site_temperature_year(&site(SiteEnv::default())), TemperatureYear::valence());
    }
}
