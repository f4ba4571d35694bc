//! What a simulation measures.

use model::{SimTime, WorkloadId};
use serde::Serialize;

/// One job's life in the simulation.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobRecord {
    pub id: WorkloadId,
    pub tenant: u32,
    pub gpus: f64,
    pub submit_s: f64,
    /// `None` if it never started.
    pub start_s: Option<f64>,
    /// `None` if it never finished (never fit, or still running when the trace ran out).
    pub finish_s: Option<f64>,
}

impl JobRecord {
    pub fn wait_s(&self) -> Option<f64> {
        self.start_s.map(|s| s - self.submit_s)
    }

    pub fn jct_s(&self) -> Option<f64> {
        self.finish_s.map(|f| f - self.submit_s)
    }
}

/// The cluster at one moment: a step of the time series.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TimePoint {
    pub t_s: f64,
    /// Allocated GPU share of the fleet, 0..1.
    pub gpu_allocation: f64,
    pub queue_len: u32,
    pub running: u32,
}

/// The result of one simulation. Field names are the JSON keys `drome sim --output json` prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimReport {
    pub policy: String,
    pub seed: u64,
    pub fleet_gpus: u64,
    pub fleet_nodes: u64,
    pub jobs: u64,
    pub completed: u64,
    pub never_fit: u64,
    /// Started or queued but not finished when events ran out (jobs with no known duration).
    pub unfinished: u64,
    pub mean_jct_s: f64,
    pub p50_jct_s: f64,
    pub p99_jct_s: f64,
    pub mean_wait_s: f64,
    pub p50_wait_s: f64,
    pub p99_wait_s: f64,
    /// First submit to last completion.
    pub makespan_s: f64,
    /// Time-average allocated GPU share over the makespan, 0..1. Traces carry no per-GPU activity,
    /// so an allocated GPU counts as busy.
    pub gpu_utilization: f64,
    pub peak_queue_len: u32,
    /// Events processed (arrivals + completions).
    pub events: u64,
    #[serde(skip)]
    pub series: Vec<TimePoint>,
    #[serde(skip)]
    pub records: Vec<JobRecord>,
}

/// The `q`-quantile (0..=1) of `sorted` by nearest rank; 0 for an empty slice.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { 0.0 } else { v.iter().sum::<f64>() / v.len() as f64 }
}

pub(crate) fn at(t: SimTime) -> f64 {
    t.as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
