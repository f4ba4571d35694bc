//! Trace statistics: counts, span, demand, shape histogram and duration percentiles, and their JSON.

use trace::{GpuCountBucket, TraceOptions, TraceStats};

fn fixture(name: &str) -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name
}

#[test]
fn philly_fixture_stats() {
    let t = trace::load_workloads(fixture("philly_small.csv"), None, &TraceOptions::default()).unwrap();
    let s = t.stats();
    assert_eq!(s.jobs, 4);
    assert_eq!(s.tenants, 3);
    assert_eq!((s.first_submit_s, s.last_submit_s, s.span_s), (0.0, 6417.0, 6417.0));
    assert_eq!(
        s.gpus_per_job,
        [
            GpuCountBucket { gpus: 1, jobs: 1 },
            GpuCountBucket { gpus: 2, jobs: 1 },
            GpuCountBucket { gpus: 8, jobs: 1 },
            GpuCountBucket { gpus: 16, jobs: 1 }
        ]
    );
    assert_eq!((s.cpu_only_jobs, s.fractional_jobs, s.multi_node_jobs, s.max_gpus_per_job), (0, 0, 1, 16));
    assert_eq!(s.gpu_seconds, 66.0 + 2.0 * 2951.0 + 16.0 * 10.5 + 8.0 * 100.0);
    assert_eq!(s.duration_p50_s, Some(66.0));
    assert_eq!(s.duration_p99_s, Some(2951.0));
    assert_eq!(s.duration_mean_s, Some((66.0 + 2951.0 + 10.5 + 100.0) / 4.0));
}

#[test]
fn openb_fixture_counts_shares_and_cpu_only() {
    let t = trace::load_workloads(fixture("openb_pods_small.csv"), None, &TraceOptions::default()).unwrap();
    let s = TraceStats::of(&t);
    assert_eq!((s.cpu_only_jobs, s.fractional_jobs, s.jobs_with_duration), (1, 1, 3));
    assert_eq!(s.gpus_per_job, [GpuCountBucket { gpus: 1, jobs: 1 }, GpuCountBucket { gpus: 8, jobs: 1 }]);
}

#[test]
fn stats_round_trip_through_json() {
    let t = trace::load_workloads(fixture("dlrm_small.csv"), None, &TraceOptions::default()).unwrap();
    let s = t.stats();
    let json = serde_json::to_string(&s).unwrap();
    assert!(json.contains(r#""format":"dlrm""#), "{json}");
    let back: TraceStats = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
}
