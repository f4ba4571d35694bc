//! `GET /v1/sites` as a federation endpoint reads it: each site's region, its GPUs by model, and
//! the GPUs the server's queue waits for.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

/// The small fleet with a region on its immersion site only.
fn fleet_with_a_region() -> model::Fleet {
    let toml = common::SMALL_FLEET.replace(
        "name = \"lab-oil\"\ncooling = \"immersion\"",
        "name = \"lab-oil\"\ncooling = \"immersion\"\nregion = \"FR-ARA\"",
    );
    assert_ne!(toml, common::SMALL_FLEET, "the region went in");
    model::fleet_toml::parse_fleet(&toml).expect("fleet parses")
}

async fn sites(s: &TestServer, token: &str) -> Vec<Value> {
    let (status, v) = s.call(Method::GET, "/v1/sites", Some(token), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v.as_array().expect("a list of sites").clone()
}

fn site<'a>(sites: &'a [Value], name: &str) -> &'a Value {
    sites.iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no site {name} in {sites:?}"))
}

async fn sites_report_region_models_and_pending_gpus(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_with(&place, fleet_with_a_region()).await;
    let acme = s.tenant("acme", None).await;

    let idle = sites(&s, ADMIN).await;
    let (oil, air) = (site(&idle, "lab-oil"), site(&idle, "lab-air"));
    assert_eq!(oil["region"], "FR-ARA");
    assert!(air.get("region").is_none(), "no region declared: none reported ({air})");
    assert_eq!(oil["gpus_pending"].as_f64(), Some(0.0));
    assert_eq!(
        oil["gpu_models"],
        json!([{"model": "H200", "nodes": 4, "gpus": 32, "gpus_per_node_max": 8, "gpus_free": 32}]),
        "the CPU node has no GPU model"
    );
    assert_eq!(
        air["gpu_models"],
        json!([{"model": "A100-SXM4-80GB", "nodes": 2, "gpus": 16, "gpus_per_node_max": 8, "gpus_free": 16}])
    );

    // Every H200 taken, then a whole node's worth and a quarter of a GPU more: they wait.
    let mut running = Vec::new();
    for _ in 0..4 {
        let job = json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8, "gpu_model": "H200"});
        running.push(s.submit(&acme, job).await["id"].as_i64().unwrap());
    }
    for id in &running {
        s.wait_state(&acme, *id, "running").await;
    }
    let whole = s.submit(&acme, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8, "gpu_model": "H200"}));
    let whole = whole.await["id"].as_i64().unwrap();
    let share = s.submit(&acme, json!({"command": "sleep", "args": ["600"], "gpu_milli": 250, "gpu_model": "H200"}));
    let share = share.await["id"].as_i64().unwrap();

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let busy = loop {
        let now = sites(&s, &acme).await;
        if site(&now, "lab-oil")["gpus_pending"].as_f64() == Some(8.25) {
            break now;
        }
        assert!(std::time::Instant::now() < deadline, "pending GPUs never reported: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (oil, air) = (site(&busy, "lab-oil"), site(&busy, "lab-air"));
    assert_eq!(oil["gpu_models"][0]["gpus_free"], 0);
    assert_eq!(oil["gpus_used"], 32);
    // One queue for the whole server: every site reports all of it.
    assert_eq!(air["gpus_pending"].as_f64(), Some(8.25));
    assert_eq!(air["gpu_models"][0]["gpus_free"], 16);
    for id in [whole, share] {
        assert_eq!(s.job(&acme, id).await["state"], "pending");
    }

    // Cancelled, the waiting jobs leave the figure.
    for id in [whole, share] {
        let (status, _) = s.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(&acme), None).await;
        assert_eq!(status, StatusCode::OK);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while site(&sites(&s, ADMIN).await, "lab-oil")["gpus_pending"].as_f64() != Some(0.0) {
        assert!(std::time::Instant::now() < deadline, "cancelled jobs still counted as pending");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.stop().await;
    place.cleanup().await;
}
both_backends!(sites_tests, sites_report_region_models_and_pending_gpus);
