//! Outdoor air temperature, hour by hour over a 365-day year (8,760 hours, local standard time,
//! hour 0 = 1 January 00:00-01:00).
//!
//! drome ships a year for a Valence-like climate (`data/valence_temperature.csv`), built by
//! [`synthesize`] from monthly climate normals (see `data/SOURCE.md`); users may pass a measured
//! year of their own with the same header.

use crate::EnergyError;
use crate::hourly_csv;
use crate::rng::SplitMix64;
use serde::Serialize;

/// Hours in the years drome models (365 days).
pub const HOURS_PER_YEAR: usize = 8760;
/// Days in each month of a 365-day year.
pub const DAYS_PER_MONTH: [usize; 12] = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/// Header of temperature files.
pub const TEMPERATURE_COLUMNS: [&str; 2] = ["hour", "outdoor_celsius"];

const VALENCE_CSV: &str = include_str!("../data/valence_temperature.csv");

/// Monthly climate normals of one station: mean daily minimum and maximum per month, °C.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct MonthlyNormals {
    pub station: &'static str,
    pub min_celsius: [f64; 12],
    pub max_celsius: [f64; 12],
}

impl MonthlyNormals {
    /// Monthly mean temperature as Météo-France defines it: (mean min + mean max) / 2.
    pub fn mean_celsius(&self, month: usize) -> f64 {
        (self.min_celsius[month] + self.max_celsius[month]) / 2.0
    }
}

/// Météo-France 1991-2020 normals for Valence-Chabeuil (Drôme, station 26198001, 160 m), as
/// transcribed into drome (see `data/SOURCE.md`): mean daily minimum and maximum, °C.
pub const VALENCE_NORMALS: MonthlyNormals = MonthlyNormals {
    station: "Valence-Chabeuil (26198001), Météo-France normals 1991-2020",
    min_celsius: [0.9, 1.4, 4.3, 7.0, 11.0, 14.6, 16.9, 16.6, 12.8, 9.5, 4.7, 1.7],
    max_celsius: [8.5, 10.4, 14.8, 18.1, 22.3, 26.6, 29.5, 29.0, 24.2, 18.9, 12.6, 8.9],
};

/// Seed of the shipped Valence year.
pub const VALENCE_SEED: u64 = 26_198_001;

/// Month (0-11) of hour-of-year `hour` (wrapped into one year).
pub fn month_of_hour(hour: usize) -> usize {
    let mut day = (hour % HOURS_PER_YEAR) / 24;
    for (m, &d) in DAYS_PER_MONTH.iter().enumerate() {
        if day < d {
            return m;
        }
        day -= d;
    }
    11
}

fn month_of_day(day: usize) -> usize {
    month_of_hour(day * 24)
}

/// An hourly outdoor temperature year.
#[derive(Clone, Debug, PartialEq)]
pub struct TemperatureYear {
    celsius: Vec<f64>,
}

impl TemperatureYear {
    /// The year drome ships for Valence.
    pub fn valence() -> Result<TemperatureYear, EnergyError> {
        TemperatureYear::parse(VALENCE_CSV)
    }

    /// The shipped Valence year's CSV text.
    pub fn valence_csv() -> &'static str {
        VALENCE_CSV
    }

    /// Parses a `hour,outdoor_celsius` CSV of exactly 8,760 rows.
    pub fn parse(text: &str) -> Result<TemperatureYear, EnergyError> {
        let rows = hourly_csv::parse(text, &TEMPERATURE_COLUMNS, HOURS_PER_YEAR)?;
        if rows.len() != HOURS_PER_YEAR {
            return Err(EnergyError::Csv {
                line: text.lines().count(),
                column: 1,
                message: format!("a temperature year has {HOURS_PER_YEAR} hourly rows, found {}", rows.len()),
            });
        }
        let celsius: Vec<f64> = rows.into_iter().map(|r| r[0]).collect();
        if let Some(i) = celsius.iter().position(|c| !(-60.0..=60.0).contains(c)) {
            return Err(EnergyError::Invalid(format!("hour {i}: {} °C is outside -60..60 °C", celsius[i])));
        }
        Ok(TemperatureYear { celsius })
    }

    /// A constant-temperature year, for tests and what-if runs.
    pub fn constant(celsius: f64) -> TemperatureYear {
        TemperatureYear { celsius: vec![celsius; HOURS_PER_YEAR] }
    }

    /// Temperature at hour-of-year `hour` (wrapped), °C.
    pub fn at_hour(&self, hour: usize) -> f64 {
        self.celsius[hour % HOURS_PER_YEAR]
    }

    pub fn hours(&self) -> &[f64] {
        &self.celsius
    }

    /// The hottest hour of the year, °C: the design point a worst-case power budget holds at.
    pub fn hottest_celsius(&self) -> f64 {
        self.celsius.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }

    /// Mean of each month, °C.
    pub fn monthly_means(&self) -> [f64; 12] {
        let mut sum = [0.0; 12];
        let mut n = [0usize; 12];
        for (h, &c) in self.celsius.iter().enumerate() {
            let m = month_of_hour(h);
            sum[m] += c;
            n[m] += 1;
        }
        std::array::from_fn(|m| sum[m] / n[m].max(1) as f64)
    }

    /// Renders the year as CSV text (0.1 °C resolution), the format [`TemperatureYear::parse`]
    /// reads.
    pub fn to_csv(&self, comment: &str) -> String {
        let mut out = String::with_capacity(HOURS_PER_YEAR * 12);
        for line in comment.lines() {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
        out.push_str("hour,outdoor_celsius\n");
        for (h, c) in self.celsius.iter().enumerate() {
            out.push_str(&format!("{h},{c:.1}\n"));
        }
        out
    }
}

/// Mid-month day index of each month.
fn mid_month_days() -> [f64; 12] {
    let mut start = 0usize;
    std::array::from_fn(|m| {
        let mid = start as f64 + (DAYS_PER_MONTH[m] as f64 - 1.0) / 2.0;
        start += DAYS_PER_MONTH[m];
        mid
    })
}

/// Cyclic linear interpolation of 12 mid-month anchors to 365 daily values.
fn daily_from_anchors(anchors: &[f64; 12]) -> Vec<f64> {
    let mids = mid_month_days();
    (0..365)
        .map(|d| {
            let d = d as f64;
            // Find the anchors around day d, wrapping December -> January.
            let (mut i0, mut i1) = (11usize, 0usize);
            for (m, &mid) in mids.iter().enumerate() {
                if mid <= d {
                    i0 = m;
                    i1 = (m + 1) % 12;
                }
            }
            let x0 = if mids[i0] <= d { mids[i0] } else { mids[i0] - 365.0 };
            let mut x1 = mids[i1];
            if x1 <= x0 {
                x1 += 365.0;
            }
            let t = ((d - x0) / (x1 - x0)).clamp(0.0, 1.0);
            anchors[i0] + (anchors[i1] - anchors[i0]) * t
        })
        .collect()
}

/// Daily values whose monthly means equal `targets`: mid-month anchors, interpolated and
/// corrected until the means match (the interpolation alone flattens the seasonal peaks).
fn daily_matching_monthly_means(targets: &[f64; 12]) -> Vec<f64> {
    let mut anchors = *targets;
    for _ in 0..50 {
        let daily = daily_from_anchors(&anchors);
        let means = monthly_mean_of_days(&daily);
        for m in 0..12 {
            anchors[m] += targets[m] - means[m];
        }
    }
    daily_from_anchors(&anchors)
}

fn monthly_mean_of_days(daily: &[f64]) -> [f64; 12] {
    let mut sum = [0.0; 12];
    for (d, v) in daily.iter().enumerate() {
        sum[month_of_day(d)] += v;
    }
    std::array::from_fn(|m| sum[m] / DAYS_PER_MONTH[m] as f64)
}

/// Hour of the daily minimum (about sunrise) and maximum (mid-afternoon), local standard time.
const HOUR_OF_MIN: f64 = 6.0;
const HOUR_OF_MAX: f64 = 15.0;
/// Day-to-day persistence and spread of daily-mean anomalies (synoptic weather).
const ANOMALY_PERSISTENCE: f64 = 0.75;
const ANOMALY_STD_CELSIUS: f64 = 2.8;
/// Day-to-day spread of the diurnal range (cloudy days have a small one), as a fraction.
const RANGE_STD_FRACTION: f64 = 0.22;

/// Builds an hourly year from monthly normals, deterministically from `seed`:
///
/// 1. daily normal mean and diurnal range follow the monthly normals, interpolated between
///    mid-month anchors corrected so each month's mean matches exactly;
/// 2. weather: an AR(1) anomaly on the daily mean (persistence 0.75, spread 2.8 °C) and a random
///    factor on the diurnal range (spread 22%, within 0.4-1.6), drawn from SplitMix64 seeded with
///    `seed`; the anomaly's mean over each month is removed so the normals still hold;
/// 3. each day runs from its minimum at 06:00 to its maximum at 15:00 and back down to the next
///    day's minimum along half-cosines;
/// 4. a last per-month shift (a few hundredths of a degree) makes each month's hourly mean equal
///    its normal mean, (min + max) / 2.
pub fn synthesize(normals: &MonthlyNormals, seed: u64) -> TemperatureYear {
    let mean_targets: [f64; 12] = std::array::from_fn(|m| normals.mean_celsius(m));
    let range_targets: [f64; 12] = std::array::from_fn(|m| normals.max_celsius[m] - normals.min_celsius[m]);
    let mean_daily = daily_matching_monthly_means(&mean_targets);
    let range_daily = daily_matching_monthly_means(&range_targets);

    let mut rng = SplitMix64::new(seed);
    let innovation = ANOMALY_STD_CELSIUS * (1.0 - ANOMALY_PERSISTENCE * ANOMALY_PERSISTENCE).sqrt();
    let mut anomaly = vec![0.0; 365];
    let mut range_factor = vec![1.0; 365];
    let mut a = ANOMALY_STD_CELSIUS * rng.normal();
    for d in 0..365 {
        a = ANOMALY_PERSISTENCE * a + innovation * rng.normal();
        anomaly[d] = a;
        range_factor[d] = (1.0 + RANGE_STD_FRACTION * rng.normal()).clamp(0.4, 1.6);
    }
    let anomaly_means = monthly_mean_of_days(&anomaly);
    let tmin: Vec<f64> = (0..365)
        .map(|d| mean_daily[d] + anomaly[d] - anomaly_means[month_of_day(d)] - range_daily[d] * range_factor[d] / 2.0)
        .collect();
    let tmax: Vec<f64> = (0..365)
        .map(|d| mean_daily[d] + anomaly[d] - anomaly_means[month_of_day(d)] + range_daily[d] * range_factor[d] / 2.0)
        .collect();

    let half_cos = |from: f64, to: f64, t: f64| from + (to - from) * (1.0 - (std::f64::consts::PI * t).cos()) / 2.0;
    let mut celsius = Vec::with_capacity(HOURS_PER_YEAR);
    for d in 0..365 {
        let prev_max = tmax[(d + 364) % 365];
        let next_min = tmin[(d + 1) % 365];
        for h in 0..24 {
            // Temperature at the middle of the hour.
            let x = h as f64 + 0.5;
            let c = if x < HOUR_OF_MIN {
                half_cos(prev_max, tmin[d], (x + 24.0 - HOUR_OF_MAX) / (24.0 - HOUR_OF_MAX + HOUR_OF_MIN))
            } else if x < HOUR_OF_MAX {
                half_cos(tmin[d], tmax[d], (x - HOUR_OF_MIN) / (HOUR_OF_MAX - HOUR_OF_MIN))
            } else {
                half_cos(tmax[d], next_min, (x - HOUR_OF_MAX) / (24.0 - HOUR_OF_MAX + HOUR_OF_MIN))
            };
            celsius.push(c);
        }
    }
    let mut year = TemperatureYear { celsius };
    let means = year.monthly_means();
    for (h, c) in year.celsius.iter_mut().enumerate() {
        let m = month_of_hour(h);
        *c += mean_targets[m] - means[m];
    }
    year
}
