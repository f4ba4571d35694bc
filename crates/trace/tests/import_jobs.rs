//! The generic jobs CSV: alias column names in any order and case, optional columns, the Tiresias
//! example trace, and its errors.

use model::{GpuRequest, SimDuration, SimTime, TenantId};
use std::fs::File;
use trace::{Trace, TraceError, TraceErrorKind, TraceFormat, TraceOptions};

fn load_with(name: &str, opts: &TraceOptions) -> Result<Trace, TraceError> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name;
    match File::open(&path) {
        Ok(file) => trace::read_workloads(file, name, None, opts),
        Err(e) => panic!("{path}: {e}"),
    }
}

fn load(name: &str) -> Result<Trace, TraceError> {
    load_with(name, &TraceOptions::default())
}

#[test]
fn tiresias_example_loads_through_the_generic_importer() {
    let t = load("tiresias_small.csv").unwrap();
    assert_eq!(t.format, TraceFormat::Jobs);
    let names: Vec<&str> = t.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["0", "1", "3", "2"]);
    assert_eq!(t.workloads[1].gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 8 });
    assert_eq!(t.workloads[2].submit_time, SimTime::from_secs(40));
    assert_eq!(t.workloads[3].duration, Some(SimDuration::from_secs(127)));
    assert_eq!(t.tenants, ["default"]);
}

#[test]
fn columns_are_found_by_name_in_any_order_and_case() {
    let t = load("jobs_generic.csv").unwrap();
    assert_eq!(t.tenants, ["alice", "bob"]);
    let [prep, train, big] = &t.workloads[..] else { panic!("{:?}", t.workloads) };
    assert_eq!(prep.name, "prep-b");
    assert_eq!(prep.submit_time, SimTime::ZERO);
    assert_eq!(prep.gpu, GpuRequest::None);
    assert_eq!(prep.duration, None);
    assert_eq!(prep.priority, -1);
    assert_eq!(prep.tenant, TenantId(1));
    assert_eq!((prep.cpu_milli, prep.memory_mib), (2000, 4096));

    assert_eq!(train.submit_time, SimTime(10_500));
    assert_eq!(train.gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 4 });
    assert_eq!(train.models.allowed, ["A100", "H100"]);
    assert_eq!(train.priority, 5);
    assert_eq!(train.duration, Some(SimDuration::from_secs(3600)));

    assert_eq!(big.gpu, GpuRequest::Gang { nodes: 2, gpus_per_node: 8 });
    assert_eq!((big.cpu_milli, big.memory_mib), (0, 0));
    assert!(big.models.is_any());
}

#[test]
fn numeric_times_can_be_kept_as_they_are() {
    let opts = TraceOptions { rebase_submit_times: false, ..TraceOptions::default() };
    let t = load_with("jobs_generic.csv", &opts).unwrap();
    let submits: Vec<u64> = t.workloads.iter().map(|w| w.submit_time.as_millis()).collect();
    assert_eq!(submits, [90_000, 100_500, 200_000]);
}

#[test]
fn negative_durations_are_rejected() {
    let e = load("tiresias_negative.csv").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"tiresias_negative.csv:5: column 6 'duration': expected a non-negative number of seconds, got "-5""#
    );
}

#[test]
fn seconds_and_calendar_times_do_not_mix() {
    let e = load("jobs_mixed_clock.csv").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"jobs_mixed_clock.csv:3: column 1 'submit_time': expected seconds, like the rows above, got "2017-10-09 07:01:55""#
    );
}

#[test]
fn a_missing_gpu_column_is_named() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jobs_no_gpu_column.csv");
    let e = trace::load_workloads(path, Some(TraceFormat::Jobs), &TraceOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::MissingColumn { .. }), "{e}");
    assert!(
        e.to_string()
            .ends_with("jobs_no_gpu_column.csv:1: missing column 'num_gpu' (or 'num_gpus', 'gpus', 'num_replicas')"),
        "{e}"
    );
    // Without a format, the header is not recognised at all.
    let e = trace::load_workloads(path, None, &TraceOptions::default()).unwrap_err();
    assert!(matches!(e.kind, TraceErrorKind::UnknownFormat { .. }), "{e}");
}

#[test]
fn a_deferrable_column_marks_jobs_and_bad_values_are_named() {
    let text = "submit_time,num_gpus,duration,deferrable\n0,8,3600,true\n10,1,60,\n20,2,60,0\n30,4,60,YES\n";
    let t = trace::read_workloads(text.as_bytes(), "d.csv", None, &TraceOptions::default()).unwrap();
    let flags: Vec<bool> = t.workloads.iter().map(|w| w.deferrable).collect();
    assert_eq!(flags, [true, false, false, true]);
    let bad = "submit_time,num_gpus,deferrable\n0,8,maybe\n";
    let e = trace::read_workloads(bad.as_bytes(), "d.csv", None, &TraceOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("d.csv:2") && msg.contains("deferrable") && msg.contains("maybe"), "{msg}");
}
