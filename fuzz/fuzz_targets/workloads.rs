//! Every workload trace importer (openb pods, Philly and generic job lists, DLRM instances), by
//! detection and by each format given, on any bytes: an import ends in a trace or an error naming
//! the file, and what it accepts is sorted, numbered, and placeable by the scheduler's checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn fleet() -> &'static (Arc<model::Fleet>, sched::ClusterState) {
    static FLEET: OnceLock<(Arc<model::Fleet>, sched::ClusterState)> = OnceLock::new();
    FLEET.get_or_init(|| {
        let fleet = Arc::new(
            model::fleet_toml::parse_fleet(include_str!("../../fleets/small.toml")).expect("the small fleet parses"),
        );
        let cluster = sched::ClusterState::new(fleet.clone());
        (fleet, cluster)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, bytes)) = data.split_first() else { return };
    let format = match choice % 5 {
        0 => None,
        n => Some(trace::TraceFormat::ALL[usize::from(n - 1)]),
    };
    let opts = trace::TraceOptions { node_gpus: u32::from(choice / 5 % 17), rebase_submit_times: choice & 0x80 != 0 };
    match trace::read_workloads(bytes, "fuzz.csv", format, &opts) {
        Err(e) => assert!(e.to_string().contains("fuzz.csv"), "an import error names its file: {e}"),
        Ok(t) => {
            let (fleet, cluster) = fleet();
            for (i, w) in t.workloads.iter().enumerate() {
                assert_eq!(w.id.0 as usize, i, "workloads are numbered in order");
                assert!((w.tenant.0 as usize) < t.tenants.len(), "a workload's tenant is in the table");
                let _ = cluster.could_ever_fit(&sched::Demand::of(w, fleet));
            }
            assert!(t.workloads.windows(2).all(|p| p[0].submit_time <= p[1].submit_time), "sorted by submit time");
            let _ = t.stats();
        }
    }
});
