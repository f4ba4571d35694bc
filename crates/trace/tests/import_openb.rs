//! The openb pod list: fractional and multi-GPU shapes, model constraints, QoS priorities,
//! durations from the pod timestamps, the short multigpu variant, and errors.

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

fn error(name: &str) -> String {
    load(name).map(|t| t.workloads.len()).unwrap_err().to_string()
}

#[test]
fn pods_become_workloads_in_creation_order() {
    let t = load("openb_pods_small.csv").unwrap();
    assert_eq!(t.format, TraceFormat::Openb);
    assert_eq!(t.tenants, ["default"]);
    let names: Vec<&str> = t.workloads.iter().map(|w| w.name.as_str()).collect();
    assert_eq!(names, ["openb-pod-0000", "openb-pod-0003", "openb-pod-0001", "openb-pod-0002"]);
    assert!(t.workloads.iter().all(|w| w.tenant == TenantId(0)));
}

#[test]
fn gpu_shapes_priorities_and_durations() {
    let t = load("openb_pods_small.csv").unwrap();
    let [whole, eight, share, cpu] = &t.workloads[..] else { panic!("{:?}", t.workloads) };

    assert_eq!(whole.gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 1 });
    assert_eq!(whole.priority, 2, "LS");
    assert_eq!(whole.duration, Some(SimDuration::from_secs(12_537_496)));
    assert_eq!((whole.cpu_milli, whole.memory_mib), (12_000, 16_384));

    assert_eq!(eight.gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 8 });
    assert_eq!(eight.priority, 2, "Guaranteed");
    assert_eq!(eight.submit_time, SimTime::from_secs(100));
    assert_eq!(eight.duration, None, "no deletion time: runs past the trace");

    assert_eq!(share.gpu, GpuRequest::Fraction { gpu_milli: 460 });
    assert_eq!(share.priority, 0, "BE");
    assert_eq!(share.models.allowed, ["V100M16", "V100M32"]);
    assert_eq!(share.duration, Some(SimDuration::from_secs(12_902_960 - 427_061)));

    assert_eq!(cpu.gpu, GpuRequest::None);
    assert_eq!(cpu.priority, 1, "Burstable");
    assert_eq!(cpu.duration, Some(SimDuration::from_secs(100_000)), "unscheduled: from creation");
}

#[test]
fn multigpu_variant_without_times_loads() {
    let t = load("openb_pods_multigpu.csv").unwrap();
    assert_eq!(t.workloads.len(), 3);
    assert!(t.workloads.iter().all(|w| w.submit_time == SimTime::ZERO && w.duration.is_none()));
    assert_eq!(t.workloads[1].gpu, GpuRequest::Fraction { gpu_milli: 460 });
    assert_eq!(t.workloads[2].gpu, GpuRequest::Gang { nodes: 1, gpus_per_node: 4 });
}

#[test]
fn gpu_shares_above_one_gpu_are_rejected() {
    assert_eq!(
        error("openb_pods_bad_milli.csv"),
        r#"openb_pods_bad_milli.csv:2: column 5 'gpu_milli': expected an integer at most 1000, got "1500""#
    );
}

#[test]
fn deletion_before_scheduling_is_rejected() {
    assert_eq!(
        error("openb_pods_end_before_start.csv"),
        r#"openb_pods_end_before_start.csv:3: column 10 'deletion_time': expected a time not before scheduled_time, got "100""#
    );
}

#[test]
fn unknown_qos_classes_are_rejected() {
    assert_eq!(
        error("openb_pods_bad_qos.csv"),
        r#"openb_pods_bad_qos.csv:3: column 7 'qos': expected a QoS class (LS, BE, Burstable, Guaranteed, BestEffort), got "VIP""#
    );
}

#[test]
fn qos_priority_table() {
    assert_eq!(trace::qos_priority("ls"), Some(2));
    assert_eq!(trace::qos_priority("Guaranteed"), Some(2));
    assert_eq!(trace::qos_priority("Burstable"), Some(1));
    assert_eq!(trace::qos_priority("BE"), Some(0));
    assert_eq!(trace::qos_priority(""), Some(0));
    assert_eq!(trace::qos_priority("gold"), None);
}
