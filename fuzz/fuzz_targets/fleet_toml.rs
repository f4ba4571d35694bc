//! The fleet TOML on any text: a fleet the scheduler and the energy model can hold, or an error
//! (never a panic, whatever the numbers).
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(fleet) = model::fleet_toml::parse_fleet(text) else { return };
    let _ = (fleet.total_gpus(), fleet.total_cpu_milli(), fleet.total_memory_mib(), fleet.max_gpus_per_node());
    let _ = (fleet.gpus_by_model(), fleet.gpu_board_power_watts());
    for id in fleet.node_ids() {
        let _ = fleet.node_gpu_model(id);
    }
    let cluster = sched::ClusterState::new(Arc::new(fleet));
    assert_eq!(cluster.allocated_gpu_milli(), 0, "a new cluster holds nothing");
    let _ = cluster.total_gpu_milli();
});
