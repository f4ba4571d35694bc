//! Every node list importer (openb, PAI, spot-GPU), by detection and by each format given, on any
//! bytes: an import ends in a fleet the scheduler can hold, or an error naming the file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let (name, format) = match choice % 5 {
        0 => ("fuzz.csv", None),
        1 => ("pai_machine_spec.csv", None),
        n => ("fuzz.csv", Some(trace::NodeListFormat::ALL[usize::from(n - 2)])),
    };
    let opts = trace::NodeListOptions {
        nodes_per_rack: usize::from(choice / 5 % 9),
        spot_memory_mib_per_cpu: u64::from(choice) << 10,
    };
    match trace::read_node_list(bytes, name, format, &opts) {
        Err(e) => assert!(e.to_string().contains(name), "an import error names its file: {e}"),
        Ok(fleet) => {
            let _ = (fleet.total_gpus(), fleet.total_cpu_milli(), fleet.total_memory_mib(), fleet.gpus_by_model());
            for id in fleet.node_ids() {
                let _ = fleet.node_gpu_model(id);
            }
            let _ = sched::ClusterState::new(Arc::new(fleet));
        }
    }
});
