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

/// The small fleet with a cold climate, a heat network and a price adder on its immersion site;
/// its air-cooled site declares none of them.
fn fleet_with_a_heat_network() -> model::Fleet {
    let toml = common::SMALL_FLEET.replace(
        "name = \"lab-oil\"\ncooling = \"immersion\"",
        "name = \"lab-oil\"\ncooling = \"immersion\"\n\
         price_adder_eur_per_mwh = 12.5\n\
         climate = { station = \"cold\", min_celsius = [-4,-4,-4,-4,-4,-4,-4,-4,-4,-4,-4,-4], max_celsius = [0,0,0,0,0,0,0,0,0,0,0,0] }\n\
         heat_network = { base_mw = 0.001, heating_mw_per_kelvin = 0.0001 }",
    );
    assert_ne!(toml, common::SMALL_FLEET, "the heat network went in");
    model::fleet_toml::parse_fleet(&toml).expect("fleet parses")
}

fn number(site: &Value, field: &str) -> f64 {
    site[field].as_f64().unwrap_or_else(|| panic!("no {field} in {site}"))
}

async fn sites_report_price_carbon_and_heat(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_with(&place, fleet_with_a_heat_network()).await;
    let acme = s.tenant("acme", None).await;

    let idle = sites(&s, ADMIN).await;
    let (oil, air) = (site(&idle, "lab-oil"), site(&idle, "lab-air"));
    // Both on the shipped grid year: the same carbon, the oil site's adder on its price.
    assert!(number(oil, "co2_g_per_kwh") > 0.0, "{oil}");
    assert_eq!(number(oil, "co2_g_per_kwh"), number(air, "co2_g_per_kwh"));
    let adder = number(oil, "price_eur_per_mwh") - number(air, "price_eur_per_mwh");
    assert!((adder - 12.5).abs() < 1e-9, "adder {adder}: {oil} {air}");
    assert!(number(air, "outdoor_celsius").is_finite(), "the Valence year stands in: {air}");
    // Base load plus heating below 18 °C in a climate that never nears it.
    let outdoor = number(oil, "outdoor_celsius");
    assert!(outdoor < 18.0, "{oil}");
    let demand = number(oil, "heat_demand_watts");
    assert!((demand - (1000.0 + 100.0 * (18.0 - outdoor))).abs() < 1e-6, "{oil}");
    assert_eq!(number(oil, "heat_supplied_watts"), 0.0, "no GPU busy, no heat given: {oil}");
    for field in ["heat_demand_watts", "heat_supplied_watts"] {
        assert!(air.get(field).is_none(), "no heat network declared, no {field}: {air}");
    }

    // A whole H200 node busy draws more than the network asks for: it gets all it asks.
    let job = json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8, "gpu_model": "H200"});
    let id = s.submit(&acme, job).await["id"].as_i64().unwrap();
    s.wait_state(&acme, id, "running").await;
    let busy = sites(&s, &acme).await;
    let oil = site(&busy, "lab-oil");
    assert!(number(oil, "power_watts") > number(oil, "heat_demand_watts"), "{oil}");
    assert_eq!(number(oil, "heat_supplied_watts"), number(oil, "heat_demand_watts"), "{oil}");
    s.stop().await;
    place.cleanup().await;
}
both_backends!(heat_tests, sites_report_price_carbon_and_heat);
