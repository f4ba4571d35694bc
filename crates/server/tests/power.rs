//! The live scheduler holds a site to its grid cap: work the connection could not carry at the
//! worst case waits, and starts when the power comes back.

mod common;

use common::{Db, Place, TestServer};
use model::{Cooling, FleetBuilder, NodeSpec};
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

/// Two 8-GPU H200 nodes, air-cooled, under a cap that carries one busy node at the worst case
/// (hottest hour, GPUs at their board limit) but not two.
fn capped_fleet() -> model::Fleet {
    let mut b = FleetBuilder::new("capped");
    let s = b.add_site("site", Cooling::Air, None);
    let h = b.add_hall(s, "hall", None);
    let r = b.add_rack(h, "rack", None);
    for i in 0..2 {
        let spec = NodeSpec {
            name: format!("n{i}"),
            cpu_milli: 112_000,
            memory_mib: 2 * 1024 * 1024,
            gpu_count: 8,
            gpu_model: Some("H200".into()),
            nvlink_domain: None,
            leaf_switch: None,
        };
        b.add_node(r, spec);
    }
    let mut fleet = b.build();
    let model = energy::EnergyModel::new(&fleet, None, &energy::HeatOptions::default());
    let hottest = energy::TemperatureYear::valence().unwrap().hottest_celsius();
    let f = model.guard_figures(&fleet, hottest);
    let one_node = 8.0 * f.nodes[0].full_watts_per_gpu;
    fleet.sites[0].grid_power_cap_watts = Some(f.site_idle_watts[0] + 1.5 * one_node);
    fleet
}

async fn cap_holds(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_with(&place, capped_fleet()).await;
    let acme = s.tenant("acme", None).await;
    let first = s.submit(&acme, json!({"command": "sleep", "args": ["1"], "gpus_per_node": 8})).await;
    let second = s.submit(&acme, json!({"command": "sleep", "args": ["1"], "gpus_per_node": 8})).await;
    let (a, b) = (first["id"].as_i64().unwrap(), second["id"].as_i64().unwrap());
    s.wait_state(&acme, a, "running").await;
    // GPUs are free for the second job, but power is not: it stays pending while the first runs.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, sites) = s.call(Method::GET, "/v1/sites", Some(&acme), None).await;
    let first_now = s.job(&acme, a).await;
    if first_now["state"] == "running" {
        assert_eq!(s.job(&acme, b).await["state"], "pending");
        assert_eq!(sites[0]["gpus_used"], 8);
    }
    // Once the first ends, the second runs.
    s.wait_state(&acme, a, "succeeded").await;
    s.wait_state(&acme, b, "succeeded").await;
    s.stop().await;
    place.cleanup().await;
}
both_backends!(cap_tests, cap_holds);
