//! Nodes' identity and reports. Join tokens admit as many nodes as they allow, expire, may be
//! bound to a node and can be revoked; nobody joins under a live node's name. Agents are input
//! too: a join whose address or GPUs do not hold against the fleet is refused with the field at
//! fault, and so is a heartbeat with a draw or caps no node can have, single or batched. A
//! refused report renews nothing, the node shows why in `/v1/nodes`, and the site's power stays
//! what the nodes that told the truth drew.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

const NODE: &str = "hall-a-r001-n01";
const OTHER: &str = "hall-a-r001-n02";

fn gpus(n: u32) -> Vec<Value> {
    (0..n).map(|i| json!({"index": i, "model": "H200", "memory_mib": 143360, "power_limit_watts": 700.0})).collect()
}

async fn try_join(s: &TestServer, token: &str, node: &str, address: &str, gpus: Vec<Value>) -> (StatusCode, Value) {
    let body = json!({"join_token": token, "node": node, "address": address, "gpus": gpus});
    s.call(Method::POST, "/v1/agent/join", None, Some(body)).await
}

fn node<'a>(nodes: &'a Value, name: &str) -> &'a Value {
    nodes.as_array().unwrap().iter().find(|n| n["name"] == name).unwrap()
}

async fn reports(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), |c| {
        c.agents = Some(server::LeaseConfig::new(Duration::from_millis(2000), Duration::from_millis(10_000)));
    })
    .await;
    let (_, j) = s.call(Method::POST, "/v1/join-tokens", Some(ADMIN), Some(json!({"uses": 4}))).await;
    let token = j["token"].as_str().unwrap().to_string();

    // Joins that do not hold: named field, clear reason, nothing stored.
    for (address, g, field) in [
        ("../../etc/passwd", gpus(8), "address"),
        ("10.0.0.1\n2026-12-06 INFO forged", gpus(8), "address"),
        ("", gpus(8), "address"),
        ("10.0.0.1", gpus(1), "gpus"),
        ("10.0.0.1", Vec::new(), "gpus"),
        ("10.0.0.1", (0..8).map(|_| gpus(1).remove(0)).collect(), "gpus"),
    ] {
        let (status, v) = try_join(&s, &token, NODE, address, g).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{address:?}: {v}");
        assert_eq!(v["error"]["field"], field, "{v}");
    }
    let (_, nodes) = s.call(Method::GET, "/v1/nodes", Some(ADMIN), None).await;
    assert!(node(&nodes, NODE)["problem"].as_str().unwrap().starts_with("join refused"), "{nodes}");

    // Honest joins and reports.
    let (status, a) = try_join(&s, &token, NODE, "10.0.0.1", gpus(8)).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    let a = a["credential"].as_str().unwrap().to_string();
    let (_, b) = try_join(&s, &token, OTHER, "node-2.example:7000", gpus(8)).await;
    let b = b["credential"].as_str().unwrap().to_string();
    let beat = |power: f64| json!({"running": [], "exited": [], "power_watts": power, "gpu_power_cap_watts": 500.0});
    for (cred, w) in [(&a, 1_500.0), (&b, 2_000.0)] {
        let (status, v) = s.call(Method::POST, "/v1/agent/heartbeat", Some(cred), Some(beat(w))).await;
        assert_eq!(status, StatusCode::OK, "{v}");
    }
    let site_power = || async {
        let (_, sites) = s.call(Method::GET, "/v1/sites", Some(ADMIN), None).await;
        sites.as_array().unwrap().iter().find(|x| x["name"] == "lab-oil").unwrap()["power_watts"].as_f64().unwrap()
    };
    assert_eq!(site_power().await, 3_500.0);

    // A lie, alone or in a batch: refused, the node marked, the site's load still right.
    for lie in [-5_000_000.0, 1e308, 1e7] {
        let (status, v) = s.call(Method::POST, "/v1/agent/heartbeat", Some(&a), Some(beat(lie))).await;
        assert_eq!(
            (status, v["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("power_watts")),
            "{v}"
        );
    }
    let caps = json!({"running": [], "exited": [], "gpu_power_cap_watts": -1.0});
    let (status, _) = s.call(Method::POST, "/v1/agent/heartbeat", Some(&a), Some(caps)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let batch = json!({"agent_id": "liar", "wait_ms": 0, "last_answer": 0, "nodes": [
        {"node": OTHER, "credential": b, "heartbeat": {"running": [], "exited": [], "power_watts": -1e9}}]});
    let (status, v) = s.call(Method::POST, "/v1/agent/heartbeats", None, Some(batch)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["nodes"][0]["error"].as_str().unwrap().contains("power_watts"), "{v}");
    let (_, nodes) = s.call(Method::GET, "/v1/nodes", Some(ADMIN), None).await;
    for name in [NODE, OTHER] {
        let n = node(&nodes, name);
        assert!(n["problem"].as_str().unwrap().starts_with("report refused"), "{n}");
        assert!(n["power_watts"].is_null(), "a refused draw is not shown: {n}");
        assert!(n["gpu_power_cap_watts"].is_null(), "caps a refused node claimed are believed: {n}");
    }
    // Nothing reported: the site's figure falls back to the model's for GPUs in use (none).
    assert_eq!(site_power().await, 0.0);

    // A true report again clears the mark.
    let (status, _) = s.call(Method::POST, "/v1/agent/heartbeat", Some(&a), Some(beat(1_200.0))).await;
    assert_eq!(status, StatusCode::OK);
    let (_, nodes) = s.call(Method::GET, "/v1/nodes", Some(ADMIN), None).await;
    assert!(node(&nodes, NODE)["problem"].is_null(), "{nodes}");
    assert_eq!(node(&nodes, NODE)["gpu_power_cap_watts"], 500.0, "{nodes}");
    assert_eq!(site_power().await, 1_200.0);
    s.stop().await;
    place.cleanup().await;
}

async fn new_token(s: &TestServer, body: Option<Value>) -> (String, String) {
    let (status, j) = s.call(Method::POST, "/v1/join-tokens", Some(ADMIN), body).await;
    assert_eq!(status, StatusCode::CREATED, "{j}");
    (j["token"].as_str().unwrap().to_string(), j["id"].as_str().unwrap().to_string())
}

async fn join_tokens(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), |c| {
        c.agents = Some(server::LeaseConfig::new(Duration::from_millis(2000), Duration::from_millis(10_000)));
    })
    .await;
    let status_of = |r: (StatusCode, Value)| (r.0, r.1["error"]["message"].as_str().unwrap_or_default().to_string());

    // Single-use by default: the second node is refused, and says why.
    let (once, _) = new_token(&s, None).await;
    assert_eq!(try_join(&s, &once, NODE, "10.0.0.1", gpus(8)).await.0, StatusCode::OK);
    let (status, why) = status_of(try_join(&s, &once, OTHER, "10.0.0.2", gpus(8)).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(why.contains("used as many times"), "{why}");

    // Nobody joins under a live node's name, whatever the token.
    let (many, many_id) = new_token(&s, Some(json!({"uses": 10}))).await;
    let (status, why) = status_of(try_join(&s, &many, NODE, "10.6.6.6", gpus(8)).await);
    assert_eq!(status, StatusCode::CONFLICT, "{why}");
    assert!(why.contains("is live"), "{why}");

    // Bound to a node; expired; revoked.
    let (bound, _) = new_token(&s, Some(json!({"node": OTHER}))).await;
    assert_eq!(try_join(&s, &bound, "hall-a-r002-n01", "10.0.0.3", gpus(8)).await.0, StatusCode::FORBIDDEN);
    assert_eq!(try_join(&s, &bound, OTHER, "10.0.0.2", gpus(8)).await.0, StatusCode::OK);
    let (short, _) = new_token(&s, Some(json!({"ttl_s": 1}))).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, why) = status_of(try_join(&s, &short, "hall-a-r002-n01", "10.0.0.3", gpus(8)).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(why.contains("expired"), "{why}");
    let (status, _) = s.call(Method::DELETE, &format!("/v1/join-tokens/{many_id}"), Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.call(Method::DELETE, &format!("/v1/join-tokens/{many_id}"), Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "revoked once");
    let (status, why) = status_of(try_join(&s, &many, "hall-a-r002-n01", "10.0.0.3", gpus(8)).await);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(why.contains("revoked"), "{why}");

    // The admin sees what is left of each; limits out of range are refused.
    let (_, list) = s.call(Method::GET, "/v1/join-tokens", Some(ADMIN), None).await;
    let states: Vec<&str> = list.as_array().unwrap().iter().map(|t| t["state"].as_str().unwrap()).collect();
    for state in ["used_up", "revoked", "expired"] {
        assert!(states.contains(&state), "{list}");
    }
    assert!(list.as_array().unwrap().iter().all(|t| t.get("token").is_none()), "tokens are never listed");
    for (body, field) in
        [(json!({"uses": 0}), "uses"), (json!({"ttl_s": 0}), "ttl_s"), (json!({"node": "nowhere"}), "node")]
    {
        let (status, v) = s.call(Method::POST, "/v1/join-tokens", Some(ADMIN), Some(body)).await;
        assert_eq!((status, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some(field)), "{v}");
    }
    s.stop().await;
    place.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_sqlite() {
    join_tokens(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_postgres() {
    join_tokens(Db::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_are_checked_sqlite() {
    reports(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_reports_are_checked_postgres() {
    reports(Db::Postgres).await;
}

/// A node's credential is rotated once it is due: the new one comes in a heartbeat's answer,
/// again and again until the node uses it; then the old one is refused. Batched heartbeats
/// carry it too.
async fn rotation(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), |c| {
        let mut lease = server::LeaseConfig::new(Duration::from_millis(200), Duration::from_millis(10_000));
        lease.credential_rotation = Duration::from_millis(300);
        c.agents = Some(lease);
    })
    .await;
    let (_, j) = s.call(Method::POST, "/v1/join-tokens", Some(ADMIN), Some(json!({"uses": 2}))).await;
    let token = j["token"].as_str().unwrap().to_string();
    let (_, a) = try_join(&s, &token, NODE, "10.0.0.1", gpus(8)).await;
    let old = a["credential"].as_str().unwrap().to_string();
    let beat = json!({"running": [], "exited": [], "wait_ms": 0});
    let call = |cred: String| {
        let s = &s;
        let beat = beat.clone();
        async move { s.call(Method::POST, "/v1/agent/heartbeat", Some(&cred), Some(beat)).await }
    };
    let (status, v) = call(old.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["credential"].is_null(), "rotated before it was due: {v}");

    tokio::time::sleep(Duration::from_millis(400)).await;
    let (status, v) = call(old.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let new = v["credential"].as_str().expect("a due credential is rotated").to_string();
    assert_ne!(new, old);
    // The answer was lost: the old one still works and the same new one comes again.
    let (status, v) = call(old.clone()).await;
    assert_eq!((status, v["credential"].as_str()), (StatusCode::OK, Some(new.as_str())), "{v}");
    // The node takes it up: the old one is refused from then on.
    let (status, v) = call(new.clone()).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["credential"].is_null(), "{v}");
    let (status, _) = call(old.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a replaced credential still works");

    // Batched: the node's answer carries its new credential.
    let (_, b) = try_join(&s, &token, OTHER, "10.0.0.2", gpus(8)).await;
    let b_old = b["credential"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let batch = json!({"agent_id": "rotating", "wait_ms": 0, "last_answer": 0, "nodes": [
        {"node": OTHER, "credential": b_old, "heartbeat": {"running": [], "exited": []}}]});
    let (status, v) = s.call(Method::POST, "/v1/agent/heartbeats", None, Some(batch)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let b_new = v["nodes"][0]["reply"]["credential"].as_str().unwrap_or_else(|| panic!("no new credential: {v}"));
    assert_ne!(b_new, b_old);
    s.stop().await;
    place.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_sqlite() {
    rotation(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_rotate_postgres() {
    rotation(Db::Postgres).await;
}
