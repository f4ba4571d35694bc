//! The Philly job list (the generic jobs importer with Philly's header): ordering, rebasing,
//! tenants, gang shapes and the errors malformed rows give.

use model::{GpuRequest, SimDuration, SimTime, TenantId, WorkloadId};
use std::fs::File;
use trace::{Trace, TraceError, TraceFormat, TraceOptions};

fn load_with(name: &str, format: Option<TraceFormat>, opts: &TraceOptions) -> Result<Trace, TraceError> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name;
    match File::open(&path) {
        Ok(file) => trace::read_workloads(file, name, format, opts),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn load(name: &str) -> Result<Trace, TraceError> {
    load_with(name, None, &TraceOptions::default())
}

fn error(name: &str) -> String {
    match load(name) {
        Ok(t) => panic!("{name} loaded {} workloads, expected an error", t.workloads.len()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn sorts_by_submit_time_rebases_and_renumbers() {
    let t = load("philly_small.csv").unwrap();
    assert_eq!(t.format, TraceFormat::Philly);
    let names: Vec<&str> = t.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["job-1", "job-2", "job-0", "job-3"], "stable sort: equal times keep file order");
    for (i, w) in t.workloads.iter().enumerate() {
        assert_eq!(w.id, WorkloadId(i as u32));
    }
    let submits: Vec<u64> = t.workloads.iter().map(|w| w.submit_time.as_millis()).collect();
    assert_eq!(submits, [0, 0, 2_932_000, 6_417_000]);
    assert_eq!(t.workloads[1].duration, Some(SimDuration(10_500)));
    assert_eq!(t.workloads[0].duration, Some(SimDuration::from_secs(2951)));
}

#[test]
fn virtual_clusters_are_tenants_in_order_of_appearance() {
    let t = load("philly_small.csv").unwrap();
    assert_eq!(t.tenants, ["11cb48", "6214e9", "6c71a0"]);
    let tenants: Vec<TenantId> = t.workloads.iter().map(|w| w.tenant).collect();
    assert_eq!(tenants, [TenantId(1), TenantId(0), TenantId(0), TenantId(2)]);
}

#[test]
fn gpu_counts_become_gangs_on_configurable_nodes() {
    let t = load("philly_small.csv").unwrap();
    assert_eq!(t.workloads[0].gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 2 });
    assert_eq!(t.workloads[1].gpu, GpuRequest::Gang { nodes: 2, gpus_per_node: 8 });
    assert_eq!(t.workloads[3].gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 8 });
    let opts = TraceOptions { node_gpus: 4, ..TraceOptions::default() };
    let t = load_with("philly_small.csv", Some(TraceFormat::Philly), &opts).unwrap();
    assert_eq!(t.workloads[1].gpu, GpuRequest::Gang { nodes: 4, gpus_per_node: 4 });
    assert_eq!(t.workloads[3].gpu, GpuRequest::Gang { nodes: 2, gpus_per_node: 4 });
}

#[test]
fn explicit_jobs_format_reads_the_same_workloads() {
    let philly = load("philly_small.csv").unwrap();
    let jobs = load_with("philly_small.csv", Some(TraceFormat::Jobs), &TraceOptions::default()).unwrap();
    assert_eq!(jobs.format, TraceFormat::Jobs);
    assert_eq!(jobs.workloads, philly.workloads);
    assert_eq!(philly.workloads[2].submit_time, SimTime::from_secs(2932));
}

#[test]
fn a_non_numeric_gpu_count_names_line_and_column() {
    assert_eq!(
        error("philly_bad_gpus.csv"),
        r#"philly_bad_gpus.csv:3: column 3 'num_gpus': expected a non-negative integer, got "x""#
    );
}

#[test]
fn nan_durations_are_rejected() {
    assert_eq!(
        error("philly_nan_duration.csv"),
        r#"philly_nan_duration.csv:3: column 2 'duration': expected a non-negative number of seconds, got "NaN""#
    );
}

#[test]
fn absurd_gpu_counts_are_rejected() {
    assert_eq!(
        error("philly_absurd_gpus.csv"),
        r#"philly_absurd_gpus.csv:4: column 3 'num_gpus': expected an integer at most 100000, got "200000""#
    );
}

#[test]
fn impossible_calendar_times_are_rejected() {
    assert_eq!(
        error("philly_bad_time.csv"),
        r#"philly_bad_time.csv:3: column 1 'timestamp': expected seconds or a 'YYYY-MM-DD HH:MM:SS' time, got "2017-10-09 25:01:55""#
    );
}

#[test]
fn typed_error_carries_location() {
    let e = load("philly_bad_gpus.csv").unwrap_err();
    assert_eq!(e.file, "philly_bad_gpus.csv");
    assert_eq!(e.line, Some(3));
    assert_eq!(e.column(), Some(3));
    assert!(matches!(e.kind, trace::TraceErrorKind::Field { ref name, .. } if name == "num_gpus"));
}
