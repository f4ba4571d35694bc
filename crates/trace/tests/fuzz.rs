//! Property tests: no input bytes make an importer panic, and well-formed generated job lists
//! import in full, sorted and renumbered.

use proptest::prelude::*;
use trace::{NodeListFormat, NodeListOptions, TraceFormat, TraceOptions};

const HEADERS: [&str; 7] = [
    "timestamp,duration,num_gpus,gpu_time,cluster\n",
    "job_id,num_gpu,submit_time,duration,priority,cpu_milli,memory_mib,gpu_model\n",
    "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time\n",
    "instance_sn,app_name,cpu_request,gpu_request,memory_request,creation_time,deletion_time\n",
    "sn,cpu_milli,memory_mib,gpu,model\n",
    "gpu_model,gpu_capacity_num,cpu_num,node_name\n",
    "",
];

fn feed_everything(bytes: &[u8]) {
    let opts = TraceOptions::default();
    let nopts = NodeListOptions::default();
    let _ = trace::read_workloads(bytes, "x.csv", None, &opts);
    for f in TraceFormat::ALL {
        let _ = trace::read_workloads(bytes, "x.csv", Some(f), &opts);
    }
    let _ = trace::read_node_list(bytes, "x.csv", None, &nopts);
    let _ = trace::read_node_list(bytes, "pai_machine_spec.csv", None, &nopts);
    for f in NodeListFormat::ALL {
        let _ = trace::read_node_list(bytes, "x.csv", Some(f), &nopts);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        feed_everything(&bytes);
    }

    #[test]
    fn arbitrary_rows_under_real_headers_never_panic(
        header in 0..HEADERS.len(),
        body in proptest::collection::vec(
            prop_oneof![
                Just(b','), Just(b'\n'), Just(b'"'), Just(b'-'), Just(b'.'), Just(b' '), Just(b'|'),
                b'0'..=b'9', b'a'..=b'z', any::<u8>()
            ],
            0..400,
        ),
    ) {
        let mut bytes = HEADERS[header].as_bytes().to_vec();
        bytes.extend_from_slice(&body);
        feed_everything(&bytes);
    }

    #[test]
    fn generated_job_lists_import_sorted(
        rows in proptest::collection::vec((0u64..1_000_000, 0u32..256, 0u32..100_000, 0usize..5), 1..60),
    ) {
        let mut text = String::from("submit_time,num_gpus,duration,tenant\n");
        for (submit, gpus, duration, tenant) in &rows {
            text.push_str(&format!("{submit},{gpus},{duration},t{tenant}\n"));
        }
        let t = trace::read_workloads(text.as_bytes(), "g.csv", None, &TraceOptions::default()).unwrap();
        prop_assert_eq!(t.workloads.len(), rows.len());
        let first = rows.iter().map(|r| r.0).min().unwrap_or(0);
        prop_assert_eq!(t.workloads[0].submit_time.as_millis(), 0);
        prop_assert!(t.workloads.windows(2).all(|w| w[0].submit_time <= w[1].submit_time));
        for (i, w) in t.workloads.iter().enumerate() {
            prop_assert_eq!(w.id.0 as usize, i);
            let row: usize = w.name.trim_start_matches("job-").parse().unwrap();
            prop_assert_eq!(w.submit_time.as_millis(), (rows[row].0 - first) * 1000);
            prop_assert_eq!(w.gpu.total_gpu_milli(), u64::from(rows[row].1) * 1000);
        }
        prop_assert!(t.tenants.len() <= 5);
    }
}
