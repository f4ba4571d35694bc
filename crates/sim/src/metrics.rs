//! What a simulation measures.

use model::{NodeId, SimTime, WorkloadId};
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
    /// Its run time in the trace, if known.
    pub duration_s: Option<f64>,
    pub preemptions: u32,
    /// GPU-hours it held, over all its runs (work lost to preemption included).
    pub gpu_hours: f64,
    /// GPU-hours held that preemption threw away: work since the last checkpoint, and restarts.
    pub lost_gpu_hours: f64,
    /// Leaf switches its last placement spanned (0 if it never ran).
    pub switches: u32,
}

impl JobRecord {
    pub fn wait_s(&self) -> Option<f64> {
        self.start_s.map(|s| s - self.submit_s)
    }

    pub fn jct_s(&self) -> Option<f64> {
        self.finish_s.map(|f| f - self.submit_s)
    }

    /// Bounded slowdown: JCT over run time, run times under [`SLOWDOWN_FLOOR_S`] counted as
    /// that, and never below 1. `None` unless it finished with a known duration.
    pub fn slowdown(&self) -> Option<f64> {
        let jct = self.jct_s()?;
        let d = self.duration_s?;
        Some((jct / d.max(SLOWDOWN_FLOOR_S)).max(1.0))
    }
}

/// Run times below this count as this in [`JobRecord::slowdown`], so that a 1-second job that
/// waited a minute does not dominate a tenant's figure.
pub const SLOWDOWN_FLOOR_S: f64 = 10.0;

/// One tenant's figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TenantRow {
    pub tenant: u32,
    pub jobs: u64,
    pub completed: u64,
    pub mean_wait_s: f64,
    pub mean_jct_s: f64,
    pub gpu_hours: f64,
    pub mean_slowdown: f64,
    pub preemptions: u64,
}

/// Per-tenant rows, and Jain's fairness index over the tenants' mean slowdowns
/// (`(sum x)^2 / (n sum x^2)`, 1 when every tenant is slowed down alike).
pub fn tenant_rows(records: &[JobRecord]) -> (Vec<TenantRow>, f64) {
    let tenants = records.iter().map(|r| r.tenant as usize + 1).max().unwrap_or(0);
    let mut rows: Vec<TenantRow> = (0..tenants as u32)
        .map(|tenant| TenantRow {
            tenant,
            jobs: 0,
            completed: 0,
            mean_wait_s: 0.0,
            mean_jct_s: 0.0,
            gpu_hours: 0.0,
            mean_slowdown: 0.0,
            preemptions: 0,
        })
        .collect();
    let mut started = vec![0u64; tenants];
    let mut slowed = vec![0u64; tenants];
    for r in records {
        let t = r.tenant as usize;
        let row = &mut rows[t];
        row.jobs += 1;
        row.gpu_hours += r.gpu_hours;
        row.preemptions += u64::from(r.preemptions);
        if let Some(w) = r.wait_s() {
            row.mean_wait_s += w;
            started[t] += 1;
        }
        if let Some(j) = r.jct_s() {
            row.mean_jct_s += j;
            row.completed += 1;
        }
        if let Some(s) = r.slowdown() {
            row.mean_slowdown += s;
            slowed[t] += 1;
        }
    }
    for (t, row) in rows.iter_mut().enumerate() {
        row.mean_wait_s /= started[t].max(1) as f64;
        row.mean_jct_s /= row.completed.max(1) as f64;
        row.mean_slowdown /= slowed[t].max(1) as f64;
    }
    rows.retain(|r| r.jobs > 0);
    let xs: Vec<f64> = rows.iter().filter(|r| r.completed > 0).map(|r| r.mean_slowdown).collect();
    let sum: f64 = xs.iter().sum();
    let sq: f64 = xs.iter().map(|x| x * x).sum();
    let jain = if xs.is_empty() || sq == 0.0 { 1.0 } else { sum * sum / (xs.len() as f64 * sq) };
    (rows, jain)
}

/// What happened to a job at one moment, for invariant checks on a run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SimEvent {
    pub t_ms: u64,
    pub job: WorkloadId,
    pub kind: EventKind,
}

/// The kinds of [`SimEvent`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EventKind {
    /// Started, holding these GPU shares `(index, milli)` on these nodes.
    Start {
        gpus: Vec<(NodeId, Vec<(u8, u16)>)>,
    },
    Preempt,
    Finish,
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
    /// Preemptions over the run.
    pub preemptions: u64,
    /// GPU-hours preemption threw away (work since the last checkpoint, and restart delays).
    pub lost_gpu_hours: f64,
    /// Leaf switches a multi-node gang's placement spans, averaged over every gang start.
    pub mean_switches_per_gang: f64,
    /// Jain's index over tenants' mean bounded slowdown (1 = even).
    pub jain_fairness: f64,
    /// Jobs marked deferrable (counted only when a deferral gate is set).
    pub deferrable_jobs: u64,
    /// Of those, the ones the gate held for a better hour.
    pub deferred_jobs: u64,
    /// Mean hold of the deferrable jobs, seconds (0 for those not held).
    pub mean_deferral_s: f64,
    /// Per-tenant figures, by tenant id.
    pub tenants: Vec<TenantRow>,
    #[serde(skip)]
    pub series: Vec<TimePoint>,
    #[serde(skip)]
    pub records: Vec<JobRecord>,
    /// Every start, preemption and finish, when [`crate::SimConfig::keep_events`] is set.
    #[serde(skip)]
    pub log: Vec<SimEvent>,
    /// Energy, power and heat, when [`crate::SimConfig::power`] is set.
    #[serde(flatten)]
    pub power: Option<crate::power::PowerSummary>,
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
