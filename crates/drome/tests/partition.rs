//! A network partition between a node and the control plane, for real: the test makes a network
//! namespace joined to this host by a veth pair, runs one `drome agent` inside it and one outside,
//! and cuts the link while the inside node runs a job that restarts on failure. The agent that
//! can no longer renew its lease must stop the job before the server starts it again on the other
//! node: every copy of the job checks, as it starts, that no earlier copy still lives, and the
//! test fails if one does. Healing the link must not bring a second copy back either.
//!
//! Needs root and `ip netns` (as CI has); elsewhere it says so and passes without asserting.

mod common;

use common::{Netns, Procs, agent, create_tenant, get_job, join_token, submit, wait_healthy};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "partition-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const INSIDE: &str = "hall-a-r001-n01";
const OUTSIDE: &str = "hall-a-r001-n02";
const LEASE_MS: u64 = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_agent_stops_its_work_before_the_job_runs_elsewhere() {
    let Some(netns) = Netns::create() else {
        eprintln!("SKIPPED: cannot make a network namespace here (needs root and `ip netns`)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("drome-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = std::net::TcpListener::bind(format!("{}:0", netns.host_addr)).unwrap().local_addr().unwrap().port();
    let base = format!("http://{}:{port}", netns.host_addr);
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let log = std::fs::File::create(dir.join("server.log")).unwrap();
    let mut procs = Procs(vec![
        Command::new(env!("CARGO_BIN_EXE_drome"))
            .args(["server", "--db", &db, "--listen", &format!("{}:{port}", netns.host_addr)])
            .args(["--admin-token", ADMIN, "--fleet", FLEET, "--agents", "--heartbeat-ms", "200"])
            .args(["--lease-ms", &LEASE_MS.to_string(), "--lease-grace-ms", "1000"])
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    ]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let join = join_token(&http, &base, ADMIN).await;

    // Only the node inside the namespace at first, so the job lands there.
    procs.0.push(agent(Some(&netns.name), &base, &join, INSIDE, &dir));
    let marks = dir.join("marks");
    common::shared_dir(&marks);
    let m = marks.display();
    // Each copy records an overlap if an earlier copy is still alive as it starts (each runs as
    // a uid of its own: it looks in /proc, it could not signal the other).
    let script = format!(
        "umask 000; for p in $(cat {m}/pids 2>/dev/null); do test -d /proc/$p && echo \"$p alive\" >> {m}/overlaps; done; \
         echo $$ >> {m}/pids; exec sleep 600"
    );
    let spec = json!({"command": "sh", "args": ["-c", script], "gpus_per_node": 8,
                      "restart_policy": "on-failure", "max_restarts": 3});
    let id = submit(&http, &base, &token, &spec).await;
    let t0 = Instant::now();
    loop {
        let v = get_job(&http, &base, &token, id).await.expect("the server answers");
        if v["state"] == "running" && std::fs::read_to_string(marks.join("pids")).is_ok_and(|p| !p.trim().is_empty()) {
            assert_eq!(v["placement"][0]["node"], INSIDE, "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the job never ran inside: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    procs.0.push(agent(None, &base, &join, OUTSIDE, &dir));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Cut the link: the inside agent cannot renew, the server loses the node.
    netns.link(false);
    let cut = Instant::now();
    let t0 = Instant::now();
    let moved = loop {
        let v = get_job(&http, &base, &token, id).await.expect("the server answers");
        if v["state"] == "running" && v["attempts"].as_i64() == Some(2) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "job {id} was not restarted elsewhere: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(moved["placement"][0]["node"], OUTSIDE, "{moved}");
    eprintln!("restarted outside {:?} after the cut (lease {LEASE_MS} ms)", cut.elapsed());
    let t0 = Instant::now();
    while std::fs::read_to_string(marks.join("pids")).unwrap_or_default().lines().count() < 2 {
        assert!(t0.elapsed() < Duration::from_secs(10), "the second copy never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Heal it: the inside agent comes back; its old copy stays dead, nothing runs twice.
    netns.link(true);
    tokio::time::sleep(Duration::from_millis(3 * LEASE_MS)).await;
    let v = get_job(&http, &base, &token, id).await.expect("the server answers");
    assert_eq!((v["state"].as_str(), v["attempts"].as_i64()), (Some("running"), Some(2)), "{v}");
    let pids = std::fs::read_to_string(marks.join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 2, "copies started: {pids}");
    let overlaps = std::fs::read_to_string(marks.join("overlaps")).unwrap_or_default();
    assert!(overlaps.is_empty(), "a copy started while an earlier one lived: {overlaps}");
    let first: i32 = pids.lines().next().unwrap().trim().parse().unwrap();
    assert!(!Path::new(&format!("/proc/{first}")).exists(), "the partitioned copy {first} still runs");
    let log = std::fs::read_to_string(dir.join(format!("{INSIDE}.log"))).unwrap_or_default();
    assert!(log.contains("lease not renewed in time"), "the inside agent never fenced itself:\n{log}");

    let _ = http.post(format!("{base}/v1/jobs/{id}/cancel")).bearer_auth(&token).send().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
