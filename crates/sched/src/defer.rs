//! Deferrable work: a job the tenant marked deferrable may wait for a better hour (cheaper or
//! cleaner power, or more heat demand on the network next door), within a delay it tolerates.
//!
//! The gate works on a plain hourly cost series the caller fills in (EUR/MWh, gCO2/kWh, or the
//! heat network's unmet demand with its sign turned): this crate knows no physics and no market.
//! Day-ahead markets publish tomorrow's prices by early afternoon, so a scheduler can know the
//! series `lookahead` hours ahead; it never looks further.
//!
//! The rule is the one a person would apply by hand: when a deferrable job arrives, find the
//! cheapest hour among the coming ones it may wait for (its delay budget, capped by the
//! lookahead); if that hour is clearly cheaper than now (by more than `min_saving`, relative),
//! hold the job until it begins, else queue it at once. Ties go to the earliest hour, so a job
//! never waits for nothing. Durations are never read: the rule shifts starts, not whole runs, and
//! a start in the cheapest hour moves most of a short job's energy there.

use model::{SimDuration, SimTime};

const HOUR_MS: u64 = 3_600_000;

/// Which hourly signal a deferrable job waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeferFor {
    /// The grid's energy price.
    Price,
    /// The grid's carbon intensity.
    Carbon,
    /// The heat network's demand (the gate minimises its negative).
    Heat,
}

impl DeferFor {
    pub fn parse(name: &str) -> Option<DeferFor> {
        match name.trim().to_ascii_lowercase().as_str() {
            "price" | "cost" => Some(DeferFor::Price),
            "carbon" | "co2" => Some(DeferFor::Carbon),
            "heat" => Some(DeferFor::Heat),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DeferFor::Price => "price",
            DeferFor::Carbon => "carbon",
            DeferFor::Heat => "heat",
        }
    }
}

/// The gate's settings and the series it reads.
#[derive(Clone, Debug, PartialEq)]
pub struct DeferralGate {
    /// Cost of each hour of the year (lower is better); read cyclically.
    pub hourly_cost: Vec<f64>,
    /// Hour of the year that sim time 0 falls in.
    pub start_hour: usize,
    /// Longest a deferrable job waits past its submit time.
    pub max_delay: SimDuration,
    /// Hours ahead the series is known.
    pub lookahead_hours: u64,
    /// A later hour must be cheaper than now by more than this share of now's cost (or, when
    /// costs are near zero or negative, by this share of the series' mean magnitude).
    pub min_saving: f64,
}

impl DeferralGate {
    /// 24 hours' delay at most, the day-ahead horizon (24 h), and a 5% saving at least.
    pub fn new(hourly_cost: Vec<f64>, start_hour: usize) -> DeferralGate {
        DeferralGate {
            hourly_cost,
            start_hour,
            max_delay: SimDuration::from_secs(24 * 3600),
            lookahead_hours: 24,
            min_saving: 0.05,
        }
    }

    fn cost_at_hour(&self, sim_hour: u64) -> f64 {
        let n = self.hourly_cost.len();
        if n == 0 {
            return 0.0;
        }
        let h = (self.start_hour as u64 + sim_hour) % n as u64;
        self.hourly_cost[h as usize]
    }

    fn scale(&self) -> f64 {
        let n = self.hourly_cost.len().max(1) as f64;
        self.hourly_cost.iter().map(|c| c.abs()).sum::<f64>() / n
    }

    /// When a deferrable job submitted at `submit` should enter the queue: `submit` itself, or
    /// the start of a clearly cheaper hour within its delay budget and the lookahead.
    pub fn release_time(&self, submit: SimTime) -> SimTime {
        if self.hourly_cost.is_empty() {
            return submit;
        }
        let now_hour = submit.as_millis() / HOUR_MS;
        let budget_ms = submit.as_millis().saturating_add(self.max_delay.as_millis());
        let last_hour = (budget_ms / HOUR_MS).min(now_hour + self.lookahead_hours);
        let now_cost = self.cost_at_hour(now_hour);
        let (mut best_hour, mut best_cost) = (now_hour, now_cost);
        for h in now_hour + 1..=last_hour {
            let c = self.cost_at_hour(h);
            if c < best_cost {
                (best_hour, best_cost) = (h, c);
            }
        }
        let margin = self.min_saving * now_cost.abs().max(self.scale() * 0.1);
        if best_hour == now_hour || now_cost - best_cost <= margin {
            return submit;
        }
        SimTime(best_hour * HOUR_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(costs: &[f64]) -> DeferralGate {
        DeferralGate::new(costs.to_vec(), 0)
    }

    #[test]
    fn waits_for_the_cheapest_hour_within_its_budget() {
        let mut costs = vec![100.0; 48];
        costs[5] = 40.0;
        costs[30] = 10.0; // beyond the 24 h budget of a job submitted at hour 0
        let g = gate(&costs);
        assert_eq!(g.release_time(SimTime(0)), SimTime(5 * HOUR_MS));
        // Submitted at 2:30: hour 5 still ahead.
        assert_eq!(g.release_time(SimTime(2 * HOUR_MS + HOUR_MS / 2)), SimTime(5 * HOUR_MS));
        // Submitted at hour 10: hour 30 is within 24 h.
        assert_eq!(g.release_time(SimTime(10 * HOUR_MS)), SimTime(30 * HOUR_MS));
    }

    #[test]
    fn does_not_wait_for_a_small_saving_or_a_tie() {
        let mut costs = vec![100.0; 48];
        costs[3] = 97.0;
        let g = gate(&costs);
        assert_eq!(g.release_time(SimTime(1000)), SimTime(1000));
        let flat = gate(&[50.0; 24]);
        assert_eq!(flat.release_time(SimTime(7)), SimTime(7));
    }

    #[test]
    fn reads_the_year_cyclically_from_the_start_hour() {
        let mut costs = vec![100.0; 24];
        costs[1] = 0.0;
        let mut g = gate(&costs);
        g.start_hour = 23; // sim hour 0 is hour 23; hour 1 of the next day is sim hour 2
        assert_eq!(g.release_time(SimTime(0)), SimTime(2 * HOUR_MS));
    }

    #[test]
    fn the_lookahead_bounds_the_wait() {
        let mut costs = vec![100.0; 100];
        costs[40] = 1.0;
        let mut g = gate(&costs);
        g.max_delay = SimDuration::from_secs(72 * 3600);
        assert_eq!(g.release_time(SimTime(0)), SimTime(0));
        g.lookahead_hours = 48;
        assert_eq!(g.release_time(SimTime(0)), SimTime(40 * HOUR_MS));
    }
}
