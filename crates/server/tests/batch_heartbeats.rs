//! Batched heartbeats (`POST /v1/agent/heartbeats`): each listed node is checked against its own
//! credential, a node's work reaches the agent process even when the node was not listed, a held
//! call answers as soon as work comes, and an answer the process never received is planned again.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const NODES: [&str; 2] = ["hall-a-r001-n01", "hall-a-r001-n02"];

async fn join(s: &TestServer, join: &str, node: &str) -> String {
    let body = json!({"join_token": join, "node": node, "address": "127.0.0.1",
        "gpus": (0..8).map(|i| json!({"index": i, "model": "H200", "memory_mib": 143360, "power_limit_watts": 700.0})).collect::<Vec<_>>()});
    let (status, v) = s.call(Method::POST, "/v1/agent/join", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["credential"].as_str().unwrap().to_string()
}

fn entry(node: &str, credential: &str) -> Value {
    json!({"node": node, "credential": credential, "heartbeat": {"running": [], "exited": []}})
}

async fn batch(s: &TestServer, nodes: Vec<Value>, wait_ms: u64, last_answer: u64) -> Value {
    let body = json!({"agent_id": "test-process", "nodes": nodes, "wait_ms": wait_ms, "last_answer": last_answer});
    let (status, v) = s.call(Method::POST, "/v1/agent/heartbeats", None, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

fn assigned_to(reply: &Value, node: &str) -> usize {
    reply["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["node"] == node)
        .map(|n| n["reply"]["assign"].as_array().map_or(0, Vec::len))
        .sum()
}

async fn batched(db: Db) {
    let place = Place::new(db).await;
    // No grid caps: the power guard would ask the nodes for caps, which is work of its own.
    let uncapped: String =
        common::SMALL_FLEET.lines().filter(|l| !l.starts_with("grid_power_cap")).collect::<Vec<_>>().join("\n");
    let fleet = model::fleet_toml::parse_fleet(&uncapped).expect("the small fleet parses");
    let s = TestServer::start_tuned(&place, fleet, |c| {
        c.agents = Some(server::LeaseConfig::new(Duration::from_millis(2000), Duration::from_millis(10_000)));
    })
    .await;
    let (_, j) = s.call(Method::POST, "/v1/join-tokens", Some(ADMIN), Some(json!({"uses": 4}))).await;
    let join_token = j["token"].as_str().unwrap().to_string();
    let a = join(&s, &join_token, NODES[0]).await;
    let b = join(&s, &join_token, NODES[1]).await;

    // A credential is good for its own node only.
    let v = batch(&s, vec![entry(NODES[0], &a), entry(NODES[1], &a)], 0, 0).await;
    let refused: Vec<&Value> = v["nodes"].as_array().unwrap().iter().filter(|n| n["error"].is_string()).collect();
    assert_eq!(refused.len(), 1, "{v}");
    assert_eq!(refused[0]["node"], NODES[1], "{v}");
    let v = batch(&s, vec![entry(NODES[0], &a), entry(NODES[1], &b)], 0, 0).await;
    assert!(v["nodes"].as_array().unwrap().iter().all(|n| n["error"].is_null()), "{v}");
    let last = v["answer"].as_u64().unwrap();
    // The largest answer number a process may name (found by fuzzing: u64::MAX overflowed);
    // past the schema's int64 it is refused, naming the field.
    batch(&s, vec![], 0, i64::MAX as u64).await;
    let body = json!({"agent_id": "test-process", "nodes": [], "wait_ms": 0, "last_answer": u64::MAX});
    let (status, v) = s.call(Method::POST, "/v1/agent/heartbeats", None, Some(body)).await;
    assert_eq!((status, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("last_answer")), "{v}");

    // A held call that lists no node answers as soon as one of its nodes gets work.
    let tenant = s.tenant("lab", None).await;
    let held = {
        let http = s.http.clone();
        let url = format!("{}/v1/agent/heartbeats", s.base);
        tokio::spawn(async move {
            let t0 = Instant::now();
            let body = json!({"agent_id": "test-process", "nodes": [], "wait_ms": 2000, "last_answer": last});
            let v: Value = http.post(url).json(&body).send().await.unwrap().json().await.unwrap();
            (v, t0.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.submit(&tenant, json!({"command": "sleep", "args": ["60"], "gpus_per_node": 8})).await;
    let (v, waited) = held.await.unwrap();
    let work = assigned_to(&v, NODES[0]) + assigned_to(&v, NODES[1]);
    assert_eq!(work, 1, "the held call carries the assignment: {v}");
    assert!(waited < Duration::from_millis(1900), "answered when the work came, after {waited:?}");
    let dropped = v["answer"].as_u64().unwrap();
    assert!(dropped > last);

    // That answer is treated as never received (the process names an older one): the
    // assignment comes again, though the node reports nothing new.
    let v = batch(&s, vec![], 0, last).await;
    assert_eq!(assigned_to(&v, NODES[0]) + assigned_to(&v, NODES[1]), 1, "planned again: {v}");
    // A later answer received does not cover an earlier one that never arrived.
    let received = v["answer"].as_u64().unwrap();
    assert!(received > dropped);
    let v = batch(&s, vec![], 0, received).await;
    assert_eq!(assigned_to(&v, NODES[0]) + assigned_to(&v, NODES[1]), 1, "the lost answer's node again: {v}");
    // Once the node reports its run, nothing is assigned again.
    let node = if assigned_to(&v, NODES[0]) == 1 { 0 } else { 1 };
    let run =
        v["nodes"].as_array().unwrap().iter().find(|n| n["node"] == NODES[node]).unwrap()["reply"]["assign"][0]["run"]
            .clone();
    let credential = if node == 0 { &a } else { &b };
    let report = json!({"node": NODES[node], "credential": credential, "heartbeat": {"running": [run], "exited": []}});
    let v = batch(&s, vec![report], 0, v["answer"].as_u64().unwrap()).await;
    assert_eq!(assigned_to(&v, NODES[0]) + assigned_to(&v, NODES[1]), 0, "{v}");
    s.stop().await;
    place.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_heartbeats_sqlite() {
    batched(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_heartbeats_postgres() {
    batched(Db::Postgres).await;
}
