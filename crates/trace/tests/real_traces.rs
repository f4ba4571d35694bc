//! The real traces drome ships beside the code (`shared/traces`), imported whole and checked
//! against the counts their publishers report (each folder's SOURCE.md).

use model::Fleet;
use std::path::Path;
use trace::{DetectedFormat, GpuCountBucket, NodeListFormat, Trace, TraceFormat, TraceOptions};

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/traces");

/// The traces live outside the repository; a checkout without them skips these checks.
fn available() -> bool {
    let there = Path::new(TRACES).is_dir();
    if !there {
        eprintln!("skipping: {TRACES} not found");
    }
    there
}

fn workloads(rel: &str) -> Trace {
    let path = format!("{TRACES}/{rel}");
    trace::load_workloads(&path, None, &TraceOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

fn nodes(rel: &str) -> Fleet {
    let path = format!("{TRACES}/{rel}");
    trace::load_node_list(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn philly() {
    if !available() {
        return;
    }
    let t = workloads("philly-pollux-sia/philly.csv");
    assert_eq!(t.format, TraceFormat::Philly);
    assert_eq!(t.workloads.len(), 82_247);
    assert_eq!(t.tenants.len(), 15);
    assert!(t.workloads.windows(2).all(|w| w[0].submit_time <= w[1].submit_time));
    assert!(t.workloads.iter().enumerate().all(|(i, w)| w.id.0 as usize == i));
    let s = t.stats();
    assert_eq!(s.first_submit_s, 0.0);
    // 2017-09-04 10:30:41 .. 2017-12-22 08:02:11.
    assert_eq!(s.span_s, 9_408_690.0);
    let expected =
        [(1, 76_627), (2, 1818), (4, 1870), (8, 1643), (12, 7), (16, 199), (24, 7), (32, 67), (64, 6), (128, 3)];
    let expected: Vec<GpuCountBucket> = expected.iter().map(|&(gpus, jobs)| GpuCountBucket { gpus, jobs }).collect();
    assert_eq!(s.gpus_per_job, expected);
    assert_eq!((s.gpu_seconds / 3600.0).round(), 978_078.0);
    assert_eq!(s.duration_p50_s, Some(1144.0));
    assert_eq!(s.jobs_with_duration, 82_247);
}

#[test]
fn tiresias_example() {
    if !available() {
        return;
    }
    let t = workloads("tiresias/60_job.csv");
    assert_eq!(t.format, TraceFormat::Jobs);
    assert_eq!(t.workloads.len(), 60);
    assert!(t.workloads.iter().all(|w| w.duration.is_some()));
}

#[test]
fn openb_pod_lists() {
    if !available() {
        return;
    }
    let t = workloads("alibaba-openb-v2023/openb_pod_list_default.csv");
    assert_eq!(t.format, TraceFormat::Openb);
    assert_eq!(t.workloads.len(), 8152);
    let s = t.stats();
    assert_eq!((s.cpu_only_jobs, s.fractional_jobs), (1088, 3078));
    let expected = [(1, 6989 - 3078), (2, 16), (4, 15), (8, 44)];
    let expected: Vec<GpuCountBucket> = expected.iter().map(|&(gpus, jobs)| GpuCountBucket { gpus, jobs }).collect();
    assert_eq!(s.gpus_per_job, expected);
    for variant in ["cpu050", "gpushare40", "gpuspec10", "multigpu20"] {
        let t = workloads(&format!("alibaba-openb-v2023/openb_pod_list_{variant}.csv"));
        assert!(t.workloads.len() > 7000, "{variant}");
    }
}

#[test]
fn dlrm_instances() {
    if !available() {
        return;
    }
    let t = workloads("alibaba-dlrm-v2025/disaggregated_DLRM_trace.csv");
    assert_eq!(t.format, TraceFormat::Dlrm);
    assert_eq!(t.workloads.len(), 23_871);
    assert_eq!(t.tenants.len(), 156);
    let s = t.stats();
    assert_eq!(s.cpu_only_jobs, 16_485);
    assert_eq!(s.gpus_per_job, [GpuCountBucket { gpus: 1, jobs: 7386 }]);
    assert_eq!(s.last_submit_s, 2_676_636.0);
}

#[test]
fn node_lists() {
    if !available() {
        return;
    }
    let all = nodes("alibaba-openb-v2023/openb_node_list_all_node.csv");
    assert_eq!((all.nodes.len(), all.total_gpus()), (1523, 6212));
    assert_eq!(all.nodes.iter().filter(|n| n.gpu_count == 0).count(), 310);
    let gpu = nodes("alibaba-openb-v2023/openb_node_list_gpu_node.csv");
    assert_eq!((gpu.nodes.len(), gpu.total_gpus()), (1213, 6212));
    let spot = nodes("alibaba-spot-gpu-v2026/node_info_df.csv");
    assert_eq!((spot.nodes.len(), spot.total_gpus()), (4278, 10_412));
    let pai = nodes("alibaba-pai-v2020/pai_machine_spec.csv");
    assert_eq!((pai.nodes.len(), pai.total_gpus()), (1897, 6742));
    assert_eq!(pai.nodes.iter().filter(|n| n.gpu_count == 0).count(), 83);
}

#[test]
fn every_trace_is_detected() {
    if !available() {
        return;
    }
    let cases = [
        ("philly-pollux-sia/philly.csv", DetectedFormat::Workloads(TraceFormat::Philly)),
        ("tiresias/60_job.csv", DetectedFormat::Workloads(TraceFormat::Jobs)),
        ("alibaba-openb-v2023/openb_pod_list_multigpu20.csv", DetectedFormat::Workloads(TraceFormat::Openb)),
        ("alibaba-dlrm-v2025/disaggregated_DLRM_trace.csv", DetectedFormat::Workloads(TraceFormat::Dlrm)),
        ("alibaba-openb-v2023/openb_node_list_all_node.csv", DetectedFormat::NodeList(NodeListFormat::Openb)),
        ("alibaba-pai-v2020/pai_machine_spec.csv", DetectedFormat::NodeList(NodeListFormat::Pai)),
        ("alibaba-spot-gpu-v2026/node_info_df.csv", DetectedFormat::NodeList(NodeListFormat::Spot)),
    ];
    for (rel, expected) in cases {
        assert_eq!(trace::sniff_format(format!("{TRACES}/{rel}")).unwrap(), expected, "{rel}");
    }
}
