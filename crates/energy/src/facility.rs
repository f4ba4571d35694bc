//! The facility around the IT load: power distribution, the cooling plant, and the building. PUE
//! is not an input anywhere; it falls out of these parts at each hour's load and outdoor air.
//!
//! Every cooling type ends in a water loop at some supply temperature, cooled by dry coolers
//! (no evaporative towers: the Rhône valley restricts water use in summer) and, when the outdoor
//! air is too warm for the loop, by chillers:
//!
//! | cooling   | heat into the loop                  | loop supply | server fans |
//! |-----------|-------------------------------------|-------------|-------------|
//! | air       | 100% via CRAH coils                 | 15 °C       | yes         |
//! | liquid    | 80% cold plates, 20% via CRAH coils | 40 °C / 15 °C | residual  |
//! | immersion | 97% oil-to-water, 3% room air       | 38 °C / 15 °C | none      |
//!
//! Sources: ASHRAE TC 9.9 "Thermal Guidelines for Data Processing Environments" (5th ed.) for the
//! 18-27 °C recommended inlet air and the W32-W45 liquid classes, and a 15 °C chilled-water supply as is common for air-cooled halls; cold plates typically capture
//! 70-80% of a server's heat (the CPUs, GPUs and VRMs under plates; memory, NICs and drives stay in
//! air) per vendor figures (e.g. Lenovo Neptune, Dell DLC sheets); single-phase immersion tanks
//! capture essentially all heat in the oil (Submer, GRC product sheets), a few percent leaks through
//! tank walls to the room.
//!
//! Parts:
//! - **Electrical**: UPS and distribution lose 3% of the IT load (modern double-conversion UPS at
//!   96-97% plus ~1% in transformers and busways; The Green Grid / Uptime Institute figures).
//! - **Building**: lighting, offices, security: 0.5% of the site's IT worst case, constant.
//! - **CRAH fans**: 6% of the heat they move (fans, humidity control and controls of computer-room
//!   air handlers on a contained hot aisle).
//! - **Pumps**: 2% of the heat in chilled-water loops; 1.5% for cold-plate CDUs; 1.8% for
//!   immersion (oil pumps 1.2% plus the water loop 0.6%, GRC and Submer quote pump power of 1-3%).
//! - **Dry coolers**: fan power 1% of the heat rejected with 10 K between loop and outdoor air,
//!   rising as `(10 K / ΔT)^1.5` when the outdoor air warms (fan power goes with the cube of air
//!   flow, and the flow needed grows as the temperature difference shrinks), clamped to 0.3%-4%.
//! - **Chillers**: needed for the part of the heat the dry coolers cannot reject: none while the
//!   outdoor air is at least 6 K below the loop supply (free cooling), all once it is 2 K above,
//!   linear between (water-side economiser pre-cooling). COP = 0.45 x Carnot between an evaporator
//!   5 K under the loop supply and a condenser 12 K over the outdoor air, within 2..8 (air-cooled
//!   screw chillers reach EER 3-4 at 35 °C and 6-8 at part load in mild air, Eurovent data).

use model::Cooling;
use serde::Serialize;

/// Kelvin at 0 °C.
pub const ZERO_CELSIUS_KELVIN: f64 = 273.15;
/// UPS and distribution losses as a fraction of IT load.
pub const ELECTRICAL_LOSS_FRACTION: f64 = 0.03;
/// Building loads as a fraction of the site's IT worst case.
pub const BUILDING_FRACTION: f64 = 0.005;
/// CRAH fan power per watt of heat moved through air.
pub const CRAH_FAN_FRACTION: f64 = 0.06;
/// Chilled-water supply temperature of the air side.
pub const CHILLED_WATER_SUPPLY_CELSIUS: f64 = 15.0;
/// Chiller COP as a fraction of Carnot.
pub const CHILLER_CARNOT_FRACTION: f64 = 0.45;

/// How a cooling type's heat leaves the IT equipment.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CoolingDesign {
    pub cooling: Cooling,
    /// Share of IT heat taken by the warm loop (cold plates or oil); the rest goes to room air.
    pub warm_loop_share: f64,
    /// Supply temperature of the warm loop, °C (for air: the chilled-water loop).
    pub warm_loop_supply_celsius: f64,
    /// Pump power per watt of heat in the warm loop.
    pub warm_loop_pump_fraction: f64,
}

impl CoolingDesign {
    pub fn of(cooling: Cooling) -> CoolingDesign {
        match cooling {
            Cooling::Air => CoolingDesign {
                cooling,
                warm_loop_share: 0.0,
                warm_loop_supply_celsius: CHILLED_WATER_SUPPLY_CELSIUS,
                warm_loop_pump_fraction: 0.02,
            },
            Cooling::Liquid => CoolingDesign {
                cooling,
                warm_loop_share: 0.80,
                warm_loop_supply_celsius: 40.0,
                warm_loop_pump_fraction: 0.015,
            },
            Cooling::Immersion => CoolingDesign {
                cooling,
                warm_loop_share: 0.97,
                warm_loop_supply_celsius: 38.0,
                warm_loop_pump_fraction: 0.018,
            },
        }
    }
}

/// Dry-cooler fan power per watt of heat rejected, with the loop at `supply_c` and outdoor air at
/// `outdoor_c`.
pub fn dry_cooler_fan_fraction(supply_c: f64, outdoor_c: f64) -> f64 {
    let dt = (supply_c - outdoor_c).max(1.0);
    (0.01 * (10.0 / dt).powf(1.5)).clamp(0.003, 0.04)
}

/// Share of a loop's heat that needs chillers (0 = free cooling, 1 = all mechanical).
pub fn mechanical_share(supply_c: f64, outdoor_c: f64) -> f64 {
    ((outdoor_c - (supply_c - 6.0)) / 8.0).clamp(0.0, 1.0)
}

/// Chiller COP for a loop at `supply_c` rejecting to outdoor air at `outdoor_c`.
pub fn chiller_cop(supply_c: f64, outdoor_c: f64) -> f64 {
    let evaporator_k = supply_c - 5.0 + ZERO_CELSIUS_KELVIN;
    let condenser_k = outdoor_c + 12.0 + ZERO_CELSIUS_KELVIN;
    let lift = (condenser_k - evaporator_k).max(1.0);
    (CHILLER_CARNOT_FRACTION * evaporator_k / lift).clamp(2.0, 8.0)
}

/// The facility's draw at one moment, watts, by part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct FacilityPower {
    pub electrical_loss_watts: f64,
    pub building_watts: f64,
    pub fans_watts: f64,
    pub pumps_watts: f64,
    pub dry_cooler_watts: f64,
    pub chiller_watts: f64,
}

impl FacilityPower {
    /// Everything beyond the IT load.
    pub fn overhead_watts(&self) -> f64 {
        self.electrical_loss_watts
            + self.building_watts
            + self.fans_watts
            + self.pumps_watts
            + self.dry_cooler_watts
            + self.chiller_watts
    }
}

/// Heat rejected by one loop at `supply_c`: dry-cooler fans and chillers, watts.
fn reject(heat_watts: f64, supply_c: f64, outdoor_c: f64, out: &mut FacilityPower) {
    if heat_watts <= 0.0 {
        return;
    }
    let mech = mechanical_share(supply_c, outdoor_c);
    let chiller = heat_watts * mech / chiller_cop(supply_c, outdoor_c);
    out.chiller_watts += chiller;
    // Dry coolers reject the loop's heat plus the compressors' in mechanical mode, against a
    // condenser that runs warmer than the loop.
    let free = heat_watts * (1.0 - mech);
    out.dry_cooler_watts += free * dry_cooler_fan_fraction(supply_c, outdoor_c)
        + (heat_watts * mech + chiller) * dry_cooler_fan_fraction(outdoor_c + 12.0, outdoor_c);
}

/// Facility draw for `it_watts` of IT load (wall side) at `outdoor_c`, when `exported_heat_watts`
/// of the warm loop's heat leaves through the heat network instead of the dry coolers, and
/// `site_it_max_watts` sizes the building load.
pub fn facility_power(
    design: &CoolingDesign,
    it_watts: f64,
    outdoor_c: f64,
    exported_heat_watts: f64,
    site_it_max_watts: f64,
) -> FacilityPower {
    let it = it_watts.max(0.0);
    let mut p = FacilityPower {
        electrical_loss_watts: ELECTRICAL_LOSS_FRACTION * it,
        building_watts: BUILDING_FRACTION * site_it_max_watts.max(0.0),
        ..FacilityPower::default()
    };
    // UPS losses become heat in the electrical rooms, cooled by the air side.
    let warm_heat = design.warm_loop_share * it;
    let air_heat = it - warm_heat + p.electrical_loss_watts;
    p.fans_watts = CRAH_FAN_FRACTION * air_heat;
    let air_heat = air_heat + p.fans_watts;
    if design.warm_loop_share > 0.0 {
        p.pumps_watts += design.warm_loop_pump_fraction * warm_heat;
        p.pumps_watts += CoolingDesign::of(Cooling::Air).warm_loop_pump_fraction * air_heat;
    } else {
        p.pumps_watts += design.warm_loop_pump_fraction * air_heat;
    }
    // Heat exported leaves from the warmest loop (air-cooled sites: the chilled-water return).
    let (warm_heat, air_heat) = if design.warm_loop_share > 0.0 {
        ((warm_heat + p.pumps_watts - exported_heat_watts).max(0.0), air_heat)
    } else {
        (0.0, (air_heat + p.pumps_watts - exported_heat_watts).max(0.0))
    };
    reject(warm_heat, design.warm_loop_supply_celsius, outdoor_c, &mut p);
    reject(air_heat, CHILLED_WATER_SUPPLY_CELSIUS, outdoor_c, &mut p);
    p
}
