//! Summary figures of a trace, for `drome trace stats` and for checking an import against what a
//! trace's publishers report.

use crate::Trace;
use crate::detect::TraceFormat;
use model::GpuRequest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How many whole-GPU jobs ask for a given number of GPUs: one bar of [`TraceStats::gpus_per_job`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuCountBucket {
    /// GPUs per job (all gang members together).
    pub gpus: u32,
    /// Jobs asking for that many.
    pub jobs: u64,
}

/// What a trace holds, in the figures trace papers report: size, span, demand and job shapes.
/// Times are in seconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceStats {
    /// The format the trace was read as.
    pub format: TraceFormat,
    /// Number of workloads.
    pub jobs: u64,
    /// Number of tenants in the trace's tenant table.
    pub tenants: u64,
    /// Earliest submit time.
    pub first_submit_s: f64,
    /// Latest submit time.
    pub last_submit_s: f64,
    /// `last_submit_s - first_submit_s`.
    pub span_s: f64,
    /// Workloads that ask for no GPU.
    pub cpu_only_jobs: u64,
    /// Workloads that ask for a share of one GPU.
    pub fractional_jobs: u64,
    /// Workloads whose gang spans more than one node.
    pub multi_node_jobs: u64,
    /// Whole-GPU workloads by GPU count, ascending.
    pub gpus_per_job: Vec<GpuCountBucket>,
    /// Largest GPU count of one workload.
    pub max_gpus_per_job: u32,
    /// Workloads whose duration the trace records.
    pub jobs_with_duration: u64,
    /// GPU-seconds of the workloads with a known duration (fractions counted as their share).
    pub gpu_seconds: f64,
    /// Mean duration of the workloads with a known duration.
    pub duration_mean_s: Option<f64>,
    /// Median duration (nearest rank).
    pub duration_p50_s: Option<f64>,
    /// 99th-percentile duration (nearest rank).
    pub duration_p99_s: Option<f64>,
}

impl TraceStats {
    /// Computes the figures of `trace` in one pass plus a sort of the durations.
    pub fn of(trace: &Trace) -> TraceStats {
        let w = &trace.workloads;
        let first = w.iter().map(|w| w.submit_time).min().unwrap_or_default();
        let last = w.iter().map(|w| w.submit_time).max().unwrap_or_default();
        let mut histogram: BTreeMap<u32, u64> = BTreeMap::new();
        let (mut cpu_only, mut fractional, mut multi_node, mut max_gpus) = (0u64, 0u64, 0u64, 0u32);
        let mut durations: Vec<u64> = Vec::with_capacity(w.len());
        let mut gpu_seconds = 0.0;
        for job in w {
            match job.gpu {
                GpuRequest::None => cpu_only += 1,
                GpuRequest::Fraction { .. } => fractional += 1,
                GpuRequest::Gang { nodes, gpus_per_node } => {
                    let gpus = nodes.saturating_mul(gpus_per_node);
                    *histogram.entry(gpus).or_default() += 1;
                    max_gpus = max_gpus.max(gpus);
                    if nodes > 1 {
                        multi_node += 1;
                    }
                }
            }
            if let Some(d) = job.duration {
                durations.push(d.as_millis());
                gpu_seconds += job.gpu_seconds().unwrap_or(0.0);
            }
        }
        durations.sort_unstable();
        let n = durations.len();
        let rank = |p: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
            Some(durations[idx] as f64 / 1000.0)
        };
        let mean = (n > 0).then(|| durations.iter().map(|&d| d as f64).sum::<f64>() / n as f64 / 1000.0);
        TraceStats {
            format: trace.format,
            jobs: w.len() as u64,
            tenants: trace.tenants.len() as u64,
            first_submit_s: first.as_secs_f64(),
            last_submit_s: last.as_secs_f64(),
            span_s: last.since(first).as_secs_f64(),
            cpu_only_jobs: cpu_only,
            fractional_jobs: fractional,
            multi_node_jobs: multi_node,
            gpus_per_job: histogram.into_iter().map(|(gpus, jobs)| GpuCountBucket { gpus, jobs }).collect(),
            max_gpus_per_job: max_gpus,
            jobs_with_duration: n as u64,
            gpu_seconds,
            duration_mean_s: mean,
            duration_p50_s: rank(0.50),
            duration_p99_s: rank(0.99),
        }
    }
}
