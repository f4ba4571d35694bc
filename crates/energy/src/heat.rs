//! Waste-heat reuse: how much of the IT heat can be recovered and at what temperature, a heat pump
//! lifting it to the heat network's supply temperature, and the network's hourly demand.
//!
//! Recoverable heat, per cooling type (share of the IT load, temperature of the recovered stream):
//! - **air**: 70% at 32 °C. Hot-aisle exhaust of air-cooled servers is 30-35 °C (ASHRAE TC 9.9,
//!   inlet 18-27 °C plus a 10-15 K server rise); coils in the return air catch most but not all of
//!   it.
//! - **liquid** (direct-to-chip): 80% at 55 °C, the cold plates' share of the heat (see
//!   [`crate::facility`]); cold-plate return water runs at 45-60 °C (ASHRAE W45 class and above;
//!   e.g. HPE Cray EX and Lenovo Neptune systems are sold for 40-60 °C return water for reuse).
//! - **immersion** (single-phase oil): 95% at 45 °C. Oil leaves the tanks at 40-50 °C (Submer and
//!   GRC product sheets, which quote 45-50 °C oil for heat reuse); the tank walls lose a few percent.
//!
//! Heat pump: COP = 0.5 x Carnot between an evaporator 5 K under the recovered stream and a
//! condenser 3 K over the network's supply temperature, at most 10 (large industrial water-to-water
//! heat pumps reach 45-55% of Carnot; IEA Heat Pumping Technologies, Annex 58). When the stream is
//! already warm enough, heat passes through a plate exchanger and costs nothing.
//!
//! Network demand, per hour: a steady industrial base load (process heat of the neighbouring food
//! and chemical plants of the Rhône valley) plus space heating proportional to heating degrees
//! below 18 °C (the base Météo-France and French heat-network operators use for degree-days).

use crate::account::HeatOptions;
use crate::facility::ZERO_CELSIUS_KELVIN;
use model::{Cooling, HeatNetworkSpec};
use serde::Serialize;

/// Heat pump COP as a fraction of Carnot.
pub const HEAT_PUMP_CARNOT_FRACTION: f64 = 0.5;
/// Highest heat pump COP used.
pub const HEAT_PUMP_MAX_COP: f64 = 10.0;
/// Base temperature of heating degree-days, °C.
pub const HEATING_BASE_CELSIUS: f64 = 18.0;

/// The heat a cooling type offers for reuse.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct RecoverableHeat {
    /// Share of the IT load recovered.
    pub share: f64,
    /// Temperature of the recovered stream, °C.
    pub celsius: f64,
}

impl RecoverableHeat {
    pub fn of(cooling: Cooling) -> RecoverableHeat {
        match cooling {
            Cooling::Air => RecoverableHeat { share: 0.70, celsius: 32.0 },
            Cooling::Liquid => RecoverableHeat { share: 0.80, celsius: 55.0 },
            Cooling::Immersion => RecoverableHeat { share: 0.95, celsius: 45.0 },
        }
    }
}

/// Heat pump COP lifting heat from a stream at `source_c` to a network supplied at `supply_c`;
/// `None` when no lift is needed (a plate exchanger suffices).
pub fn heat_pump_cop(source_c: f64, supply_c: f64) -> Option<f64> {
    let evaporator_k = source_c - 5.0 + ZERO_CELSIUS_KELVIN;
    let condenser_k = supply_c + 3.0 + ZERO_CELSIUS_KELVIN;
    if source_c - 5.0 >= supply_c {
        return None;
    }
    let lift = (condenser_k - evaporator_k).max(1e-9);
    Some((HEAT_PUMP_CARNOT_FRACTION * condenser_k / lift).clamp(1.5, HEAT_PUMP_MAX_COP))
}

/// A district or industrial heat network next to a site.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct HeatNetwork {
    /// Supply temperature the network needs, °C.
    pub supply_celsius: f64,
    /// Steady process-heat demand, watts.
    pub base_load_watts: f64,
    /// Space-heating demand per kelvin below [`HEATING_BASE_CELSIUS`], watts.
    pub heating_watts_per_kelvin: f64,
    /// Price the network pays for heat, EUR per MWh.
    pub price_eur_per_mwh: f64,
}

impl HeatNetwork {
    /// A network sized to a site: base load 35% of the site's typical full-load IT power, space
    /// heating 4% of it per kelvin (so a 0 °C hour asks for 107%, more than an air-cooled site
    /// recovers), 65 °C supply (a
    /// fourth-generation district network or low-pressure process hot water), 40 EUR/MWh (the
    /// order of French heat-network wholesale prices for recovered heat).
    pub fn sized_for(it_watts: f64) -> HeatNetwork {
        HeatNetwork {
            supply_celsius: 65.0,
            base_load_watts: 0.35 * it_watts,
            heating_watts_per_kelvin: 0.04 * it_watts,
            price_eur_per_mwh: 40.0,
        }
    }

    /// The network a fleet file declares next to a site, its demand scaled by
    /// `heat.demand_scale`, supplied at `heat.supply_celsius` and paid at the file's price, else
    /// `heat.price_eur_per_mwh`.
    pub fn declared(spec: &HeatNetworkSpec, heat: &HeatOptions) -> HeatNetwork {
        let scale = heat.demand_scale.max(0.0);
        HeatNetwork {
            supply_celsius: heat.supply_celsius,
            base_load_watts: spec.base_watts * scale,
            heating_watts_per_kelvin: spec.heating_watts_per_kelvin * scale,
            price_eur_per_mwh: spec.price_eur_per_mwh.unwrap_or(heat.price_eur_per_mwh),
        }
    }

    /// Demand at outdoor temperature `outdoor_c`, watts.
    pub fn demand_watts(&self, outdoor_c: f64) -> f64 {
        self.base_load_watts + self.heating_watts_per_kelvin * (HEATING_BASE_CELSIUS - outdoor_c).max(0.0)
    }
}

/// Heat flows of one hour, watts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct HeatExport {
    /// Heat the cooling system offers.
    pub recoverable_watts: f64,
    /// Data-centre heat taken by the network (at most `recoverable_watts`).
    pub recovered_watts: f64,
    /// Heat delivered to the network: recovered heat plus the heat pump's work (at most demand).
    pub exported_watts: f64,
    /// Heat pump electricity.
    pub heat_pump_watts: f64,
    pub demand_watts: f64,
}

/// Serves `demand_watts` from `recoverable` watts of heat at `source_c`, with at most
/// `heat_pump_budget_watts` of electricity for the heat pump (the grid headroom).
pub fn export_heat(
    recoverable_watts: f64,
    source_c: f64,
    network: &HeatNetwork,
    demand_watts: f64,
    heat_pump_budget_watts: f64,
) -> HeatExport {
    let recoverable = recoverable_watts.max(0.0);
    let demand = demand_watts.max(0.0);
    let budget = heat_pump_budget_watts.max(0.0);
    let (exported, work) = match heat_pump_cop(source_c, network.supply_celsius) {
        None => (recoverable.min(demand), 0.0),
        Some(cop) => {
            // Output Q = source + work, work = Q / COP, so Q = source * COP / (COP - 1).
            let from_source = recoverable * cop / (cop - 1.0);
            let q = from_source.min(demand).min(budget * cop);
            (q, q / cop)
        }
    };
    HeatExport {
        recoverable_watts: recoverable,
        recovered_watts: (exported - work).max(0.0),
        exported_watts: exported,
        heat_pump_watts: work,
        demand_watts: demand,
    }
}
