//! Small fleets shared by the twin's tests.
#![allow(dead_code)]

use model::{Cooling, Fleet, FleetBuilder, NodeSpec};
use std::sync::Arc;

/// `nodes` nodes of `gpus` GPUs of `model` (32 cores, 64 GiB) in one rack of one site cooled by
/// `cooling`; with `per_leaf`, that many nodes share each leaf switch.
pub fn fleet(nodes: u32, gpus: u8, model: &str, cooling: Cooling, per_leaf: Option<u32>) -> Arc<Fleet> {
    let mut b = FleetBuilder::new("t");
    let s = b.add_site("s", cooling, None);
    let h = b.add_hall(s, "h", None);
    let r = b.add_rack(h, "r", None);
    let mut leaf = None;
    for i in 0..nodes {
        if let Some(k) = per_leaf
            && i % k.max(1) == 0
        {
            leaf = Some(b.new_leaf_switch());
        }
        b.add_node(
            r,
            NodeSpec {
                name: format!("n{i}"),
                cpu_milli: 32_000,
                memory_mib: 65_536,
                gpu_count: gpus,
                gpu_model: Some(model.into()),
                nvlink_domain: None,
                leaf_switch: leaf,
            },
        );
    }
    Arc::new(b.build())
}
