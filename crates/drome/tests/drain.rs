//! The admin drains a node, removes it from service and resumes it, with a real `drome server`
//! and real agents: a drained node takes no new work while its running work goes on; a node is
//! removed only drained and empty, its credential then refused and its agent kept out, whatever
//! join token it holds, until it is resumed; the drain survives a server restart.

mod common;

use common::{Procs, agent, create_tenant, free_port, get_job, join_token, server, submit, wait_healthy, wait_state};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN: &str = "drain-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const NODES: [&str; 2] = ["hall-a-r001-n01", "hall-a-r001-n02"];

async fn node(http: &reqwest::Client, base: &str, name: &str) -> Value {
    let nodes: Value =
        http.get(format!("{base}/v1/nodes")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no {name}: {nodes}"))
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let t0 = Instant::now();
    while !check().await {
        assert!(t0.elapsed() < Duration::from_secs(20), "{what} never happened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_takes_no_new_work_and_a_removed_one_stays_out_until_resumed() {
    let dir = std::env::temp_dir().join(format!("drome-drain-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // Credentials rotate every second, so the agents take up new ones all along.
    let args = [
        "--fleet",
        FLEET,
        "--agents",
        "--heartbeat-ms",
        "200",
        "--lease-ms",
        "2000",
        "--lease-grace-ms",
        "500",
        "--credential-rotation-s",
        "1",
    ];
    let mut procs = Procs(vec![server(&db, port, ADMIN, &args, &dir, None)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let join = join_token(&http, &base, ADMIN).await;
    for name in NODES {
        procs.0.push(agent(None, &base, &join, name, &dir));
    }
    until("both agents joining", async || {
        let mut up = 0;
        for n in NODES {
            up += usize::from(node(&http, &base, n).await["agent"] == true);
        }
        up == 2
    })
    .await;

    let first_credentials: Vec<String> =
        NODES.iter().map(|n| std::fs::read_to_string(dir.join(n).join("credential")).unwrap()).collect();
    let long = json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8});
    let a = submit(&http, &base, &token, &long).await;
    let a_job = wait_state(&http, &base, &token, a, "running").await;
    let busy = a_job["placement"][0]["node"].as_str().unwrap().to_string();
    let other = NODES.iter().find(|n| **n != busy).unwrap().to_string();

    // Drain the busy node with the CLI: its job goes on, new work goes elsewhere or waits.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["nodes", "drain", &busy, "--reason", "DIMM swap", "--url", &base, "--token", ADMIN])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("drained (DIMM swap)"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(node(&http, &base, &busy).await["drained"], "DIMM swap");
    let b = submit(&http, &base, &token, &long).await;
    let b_job = wait_state(&http, &base, &token, b, "running").await;
    assert_eq!(b_job["placement"][0]["node"], other.as_str(), "{b_job}");
    let c = submit(&http, &base, &token, &long).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get_job(&http, &base, &token, c).await.unwrap()["state"], "pending", "a drained node took new work");
    assert_eq!(get_job(&http, &base, &token, a).await.unwrap()["state"], "running", "draining stopped running work");

    // Removal needs the node drained and empty.
    let remove = |n: &str| http.post(format!("{base}/v1/nodes/{n}/remove")).bearer_auth(ADMIN).send();
    let r = remove(&other).await.unwrap();
    assert_eq!(r.status(), 409, "an undrained node was removed");
    let r = remove(&busy).await.unwrap();
    assert_eq!(r.status(), 409, "a node with running work was removed");
    assert!(r.text().await.unwrap().contains("still holds 1 runs"));
    let r = http.post(format!("{base}/v1/jobs/{a}/cancel")).bearer_auth(&token).send().await.unwrap();
    assert!(r.status().is_success());
    wait_state(&http, &base, &token, a, "cancelled").await;
    // Removed once the node has confirmed the run gone (a moment after the cancel is recorded).
    until("the node's removal", async || remove(&busy).await.unwrap().status() == 200).await;
    // Its agent's credential is refused; it joins again with its (still valid) join token and is
    // kept out.
    until("the removed node's agent losing its lease", async || node(&http, &base, &busy).await["agent"] == false)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(node(&http, &base, &busy).await["agent"], false, "a removed node's agent came back");
    assert_eq!(get_job(&http, &base, &token, c).await.unwrap()["state"], "pending");

    // The drain holds across a restart of the server.
    let _ = procs.0[0].kill();
    let _ = procs.0[0].wait();
    procs.0[0] = server(&db, port, ADMIN, &args, &dir, None);
    wait_healthy(&http, &base).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let n = node(&http, &base, &busy).await;
    assert_eq!((n["drained"].as_str(), n["agent"].as_bool()), (Some("DIMM swap"), Some(false)), "{n}");

    // Resumed: its agent joins again and the waiting job runs there.
    let r = http.delete(format!("{base}/v1/nodes/{busy}/drain")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let c_job = wait_state(&http, &base, &token, c, "running").await;
    assert_eq!(c_job["placement"][0]["node"], busy.as_str(), "{c_job}");
    assert!(node(&http, &base, &busy).await["drained"].is_null());

    // Both agents took up rotated credentials and kept their nodes all along (the removed one
    // joined again once resumed).
    for (n, first) in NODES.iter().zip(&first_credentials) {
        let now = std::fs::read_to_string(dir.join(n).join("credential")).unwrap();
        assert_ne!(&now, first, "node {n} never got a new credential");
        assert_eq!(node(&http, &base, n).await["agent"], true);
    }

    // Tenants may not drain.
    let r = http.put(format!("{base}/v1/nodes/{other}/drain")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), 403);
    let r = http.put(format!("{base}/v1/nodes/nope/drain")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(r.status(), 404);
    for id in [b, c] {
        let _ = http.post(format!("{base}/v1/jobs/{id}/cancel")).bearer_auth(&token).send().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
