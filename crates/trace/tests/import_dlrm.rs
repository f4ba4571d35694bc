//! The DLRM inference-instance list: units, services as tenants, instances present from the start
//! and instances that outlive the trace.

use model::{GpuRequest, SimDuration, SimTime, TenantId};
use std::fs::File;
use trace::{Trace, TraceError, TraceFormat, TraceOptions};

fn load(name: &str) -> Result<Trace, TraceError> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/").to_string() + name;
    match File::open(&path) {
        Ok(file) => trace::read_workloads(file, name, None, &TraceOptions::default()),
        Err(e) => panic!("{path}: {e}"),
    }
}

#[test]
fn instances_become_workloads() {
    let t = load("dlrm_small.csv").unwrap();
    assert_eq!(t.format, TraceFormat::Dlrm);
    assert_eq!(t.tenants, ["app_0", "app_1"]);
    let [hn, cn_early, cn_late] = &t.workloads[..] else { panic!("{:?}", t.workloads) };

    assert_eq!(hn.name, "instance_0");
    assert_eq!(hn.gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 1 });
    assert_eq!((hn.cpu_milli, hn.memory_mib), (12_000, 120 * 1024));
    assert_eq!(hn.submit_time, SimTime::ZERO, "empty creation_time: there from the start");
    assert_eq!(hn.duration, None, "empty deletion_time: outlives the trace");

    assert_eq!(cn_early.name, "instance_2");
    assert_eq!(cn_early.tenant, TenantId(0));
    assert_eq!((cn_early.cpu_milli, cn_early.memory_mib), (500, 1536));
    assert_eq!(cn_early.duration, Some(SimDuration::from_secs(2_044_444)));

    assert_eq!(cn_late.tenant, TenantId(1));
    assert_eq!(cn_late.gpu, GpuRequest::None);
    assert_eq!(cn_late.submit_time, SimTime::from_secs(475));
    assert_eq!(cn_late.duration, Some(SimDuration(525_500)));
}

#[test]
fn infinite_memory_is_rejected() {
    let e = load("dlrm_bad_memory.csv").unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"dlrm_bad_memory.csv:3: column 10 'memory_request': expected a non-negative number, got "inf""#
    );
}
