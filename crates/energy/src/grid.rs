//! Hourly electricity price and carbon intensity of the grid a site draws from.
//!
//! drome ships a representative year for France (`data/france_grid.csv`, built by
//! [`synthesize_france`], see `data/SOURCE.md` for what is published and what is shaped); users may
//! pass their own hourly file (`hour,price_eur_per_mwh,co2_g_per_kwh`), of any number of hours up to
//! a leap year's 8,784: it repeats when a run is longer.

use crate::EnergyError;
use crate::climate::{DAYS_PER_MONTH, HOURS_PER_YEAR, month_of_hour};
use crate::hourly_csv;
use crate::rng::SplitMix64;

/// Header of grid files.
pub const GRID_COLUMNS: [&str; 3] = ["hour", "price_eur_per_mwh", "co2_g_per_kwh"];
/// Most rows a grid file may have (a leap year).
pub const MAX_GRID_HOURS: usize = 8784;

const FRANCE_CSV: &str = include_str!("../data/france_grid.csv");

/// Monthly mean day-ahead price levels of the shipped French year, EUR/MWh: the seasonal pattern of
/// the 2024 French day-ahead market (cheap spring and summer with abundant nuclear, hydro and
/// solar; dear late autumn and winter), scaled so the year averages ~58 EUR/MWh, the 2024 French
/// baseload day-ahead average (EPEX SPOT / CRE market observatory).
pub const FRANCE_PRICE_EUR_PER_MWH: [f64; 12] =
    [75.0, 60.0, 57.0, 30.0, 25.0, 35.0, 45.0, 50.0, 55.0, 65.0, 95.0, 105.0];

/// Monthly mean carbon intensity of the shipped French year, gCO2/kWh: winter months carry the gas
/// and coal peakers, summer is almost all nuclear, hydro and solar; the year averages ~22 g, the
/// French 2024 figure (RTE, Bilan électrique 2024: ~21-22 gCO2/kWh; 2023: ~32 g).
pub const FRANCE_CO2_G_PER_KWH: [f64; 12] = [38.0, 30.0, 25.0, 15.0, 12.0, 13.0, 14.0, 15.0, 17.0, 20.0, 30.0, 38.0];

/// Seed of the shipped French year.
pub const FRANCE_SEED: u64 = 2024;

/// Hourly grid price and carbon intensity.
#[derive(Clone, Debug, PartialEq)]
pub struct GridYear {
    price_eur_per_mwh: Vec<f64>,
    co2_g_per_kwh: Vec<f64>,
}

impl GridYear {
    /// The representative French year drome ships.
    pub fn france() -> Result<GridYear, EnergyError> {
        GridYear::parse(FRANCE_CSV)
    }

    /// The shipped French year's CSV text.
    pub fn france_csv() -> &'static str {
        FRANCE_CSV
    }

    /// Parses a `hour,price_eur_per_mwh,co2_g_per_kwh` CSV (prices may be negative, carbon may not).
    pub fn parse(text: &str) -> Result<GridYear, EnergyError> {
        let rows = hourly_csv::parse(text, &GRID_COLUMNS, MAX_GRID_HOURS)?;
        let mut price = Vec::with_capacity(rows.len());
        let mut co2 = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            if r[1] < 0.0 {
                return Err(EnergyError::Invalid(format!(
                    "hour {i}: co2_g_per_kwh must not be negative, got {}",
                    r[1]
                )));
            }
            price.push(r[0]);
            co2.push(r[1]);
        }
        Ok(GridYear { price_eur_per_mwh: price, co2_g_per_kwh: co2 })
    }

    /// A flat grid, for tests and what-if runs.
    pub fn constant(price_eur_per_mwh: f64, co2_g_per_kwh: f64) -> GridYear {
        GridYear { price_eur_per_mwh: vec![price_eur_per_mwh], co2_g_per_kwh: vec![co2_g_per_kwh] }
    }

    /// The same year with `adder` EUR/MWh on every hour's price: a site's network tariff or
    /// contract on top of the wholesale price.
    pub fn with_price_adder(&self, adder_eur_per_mwh: f64) -> GridYear {
        GridYear {
            price_eur_per_mwh: self.price_eur_per_mwh.iter().map(|p| p + adder_eur_per_mwh).collect(),
            co2_g_per_kwh: self.co2_g_per_kwh.clone(),
        }
    }

    pub fn hours(&self) -> usize {
        self.price_eur_per_mwh.len()
    }

    /// Price at hour `hour` (wrapped), EUR/MWh.
    pub fn price_eur_per_mwh(&self, hour: usize) -> f64 {
        self.price_eur_per_mwh[hour % self.price_eur_per_mwh.len()]
    }

    /// Carbon intensity at hour `hour` (wrapped), gCO2/kWh (= tCO2/GWh).
    pub fn co2_g_per_kwh(&self, hour: usize) -> f64 {
        self.co2_g_per_kwh[hour % self.co2_g_per_kwh.len()]
    }

    /// Mean price and carbon intensity over the file.
    pub fn means(&self) -> (f64, f64) {
        let n = self.hours().max(1) as f64;
        (self.price_eur_per_mwh.iter().sum::<f64>() / n, self.co2_g_per_kwh.iter().sum::<f64>() / n)
    }

    /// Renders the year as CSV text, the format [`GridYear::parse`] reads.
    pub fn to_csv(&self, comment: &str) -> String {
        let mut out = String::with_capacity(self.hours() * 20);
        for line in comment.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("hour,price_eur_per_mwh,co2_g_per_kwh\n");
        for (h, (p, c)) in self.price_eur_per_mwh.iter().zip(&self.co2_g_per_kwh).enumerate() {
            out.push_str(&format!("{h},{p:.2},{c:.1}\n"));
        }
        out
    }
}

/// Weekday hourly price shape (local time): night trough, morning ramp, evening peak, as in the
/// French day-ahead market's average daily profile.
const PRICE_SHAPE: [f64; 24] = [
    0.85, 0.80, 0.77, 0.75, 0.75, 0.80, 0.95, 1.12, 1.20, 1.12, 1.02, 0.95, 0.90, 0.87, 0.87, 0.92, 1.00, 1.12, 1.25,
    1.30, 1.22, 1.10, 1.00, 0.92,
];
/// Weekday hourly carbon shape: gas peakers run at the morning and evening peaks.
const CO2_SHAPE: [f64; 24] = [
    0.95, 0.92, 0.90, 0.90, 0.90, 0.93, 1.00, 1.08, 1.10, 1.05, 1.00, 0.95, 0.92, 0.90, 0.90, 0.93, 1.00, 1.10, 1.20,
    1.22, 1.15, 1.05, 1.00, 0.97,
];

/// Builds the representative French year from the monthly levels above, deterministically from
/// `seed`:
///
/// 1. each hour starts from its month's level times the weekday hourly shape;
/// 2. solar: hours around 13:00 are cut by up to 35% (price) and 20% (carbon), scaled by a seasonal
///    solar index peaking at the June solstice;
/// 3. weekends (the year starts on a Monday, as 2024 did) are 15% cheaper and 10% cleaner;
/// 4. weather: an AR(1) daily factor (persistence 0.7; spread 18% on price, 25% on carbon, the
///    same draw for both, since dear days are gas days) and 5% (price) / 4% (carbon) hourly noise;
/// 5. each month is rescaled so its mean equals its published level.
pub fn synthesize_france(seed: u64) -> GridYear {
    let mut rng = SplitMix64::new(seed);
    let mut price = Vec::with_capacity(HOURS_PER_YEAR);
    let mut co2 = Vec::with_capacity(HOURS_PER_YEAR);
    let mut z = rng.normal();
    for d in 0..365 {
        z = 0.7 * z + (1.0f64 - 0.49).sqrt() * rng.normal();
        let solar = 0.5 * (1.0 + (std::f64::consts::TAU * (d as f64 - 172.0) / 365.0).cos());
        let weekend = d % 7 >= 5;
        for h in 0..24 {
            let m = month_of_hour(d * 24 + h);
            let midday = ((std::f64::consts::PI * (h as f64 + 0.5 - 13.0) / 7.0).cos()).max(0.0);
            let midday = if (9..=16).contains(&h) { midday } else { 0.0 };
            let p = FRANCE_PRICE_EUR_PER_MWH[m]
                * PRICE_SHAPE[h]
                * (1.0 - 0.35 * solar * midday)
                * if weekend { 0.85 } else { 1.0 }
                * (0.18 * z + 0.05 * rng.normal()).exp();
            let c = FRANCE_CO2_G_PER_KWH[m]
                * CO2_SHAPE[h]
                * (1.0 - 0.20 * solar * midday)
                * if weekend { 0.90 } else { 1.0 }
                * (0.25 * z + 0.04 * rng.normal()).exp();
            price.push(p);
            co2.push(c);
        }
    }
    let mut start = 0;
    for (m, &days) in DAYS_PER_MONTH.iter().enumerate() {
        let end = start + days * 24;
        let n = (end - start) as f64;
        let pm = price[start..end].iter().sum::<f64>() / n;
        let cm = co2[start..end].iter().sum::<f64>() / n;
        for p in &mut price[start..end] {
            *p *= FRANCE_PRICE_EUR_PER_MWH[m] / pm;
        }
        for c in &mut co2[start..end] {
            *c *= FRANCE_CO2_G_PER_KWH[m] / cm;
        }
        start = end;
    }
    GridYear { price_eur_per_mwh: price, co2_g_per_kwh: co2 }
}
