//! Replicas on one PostgreSQL database: one leads (holds the lease, schedules), the others wait.
//! A leader killed with SIGKILL is replaced within the lease and nothing acknowledged is lost or
//! run twice; a leader paused past its lease (SIGSTOP) steps down when it wakes; an agent given
//! every replica's address follows the new leader, and the end of a run it reports there counts.

mod common;

use common::{Procs, agent, create_tenant, free_port, join_token, submit, wait_healthy, wait_state};
use serde_json::{Value, json};
use std::process::Child;
use std::time::{Duration, Instant};

const ADMIN: &str = "replicas-admin-token";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

fn replica(db: &str, port: u16, dir: &std::path::Path) -> Child {
    common::server(
        db,
        port,
        ADMIN,
        &["--fleet", FLEET, "--in-process-seconds", "1", "--leader-lease-s", "1"],
        dir,
        None,
    )
}

/// A replica whose work runs on node agents.
fn agents_replica(db: &str, port: u16, dir: &std::path::Path) -> Child {
    let args = ["--fleet", FLEET, "--agents", "--heartbeat-ms", "200", "--lease-ms", "5000", "--leader-lease-s", "1"];
    common::server(db, port, ADMIN, &args, dir, None)
}

async fn answers(http: &reqwest::Client, base: &str) -> bool {
    matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success())
}

/// Every job of `token` once it has ended, each with its history.
async fn all_ended(http: &reqwest::Client, base: &str, token: &str, ids: &[i64]) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut jobs = Vec::new();
        for id in ids {
            let v: Value =
                http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
            jobs.push(v);
        }
        if jobs.iter().all(|j| j["state"] == "succeeded") {
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "jobs not all done: {:?}",
            jobs.iter().map(|j| &j["state"]).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A database, a work directory, a client and the addresses of two replicas, leader `a` started.
struct Pair {
    db: store::testing::TempPostgres,
    dir: std::path::PathBuf,
    http: reqwest::Client,
    a: String,
    b: String,
    pb: u16,
    procs: Procs,
}

async fn leader_started(name: &str, agents: bool) -> Pair {
    let db = store::testing::TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let dir = std::env::temp_dir().join(format!("drome-replicas-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let (pa, pb) = (free_port(), free_port());
    let (a, b) = (format!("http://127.0.0.1:{pa}"), format!("http://127.0.0.1:{pb}"));
    let first = if agents { agents_replica(&db.url, pa, &dir) } else { replica(&db.url, pa, &dir) };
    let procs = Procs(vec![first]);
    wait_healthy(&http, &a).await;
    Pair { db, dir, http, a, b, pb, procs }
}

impl Pair {
    async fn end(self) {
        drop(self.procs);
        let _ = std::fs::remove_dir_all(&self.dir);
        self.db.drop_database().await.unwrap();
    }
}

fn runs(job: &Value) -> usize {
    job["history"].as_array().unwrap().iter().filter(|h| h["state"] == "running").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_takes_over_from_a_killed_leader() {
    let mut p = leader_started("kill", false).await;
    let (http, a, b) = (p.http.clone(), p.a.clone(), p.b.clone());
    p.procs.0.push(replica(&p.db.url, p.pb, &p.dir));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!answers(&http, &b).await, "the standby waits for the lease; it does not serve yet");

    let token = create_tenant(&http, &a, ADMIN, "t").await;
    let spec = json!({"command": "sleep", "args": ["0.5"], "gpus_per_node": 1});
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(submit(&http, &a, &token, &spec).await);
    }
    p.procs.0[0].kill().unwrap();
    p.procs.0[0].wait().unwrap();
    let t0 = Instant::now();
    let takeover = wait_healthy(&http, &b).await;
    assert!(takeover < Duration::from_secs(10), "the standby took {takeover:?} to lead");

    let status: Value = common::json_of(http.get(format!("{b}/v1/cluster")).bearer_auth(&token)).await;
    assert_eq!(status["leads"], true, "{status}");
    assert_eq!(status["leader"]["epoch"], 2, "the standby took over in a new epoch: {status}");
    assert_eq!(status["leader"]["replica"], status["replica"], "{status}");
    let metrics = http.get(format!("{b}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "drome_leader_epoch 2"), "the metrics give the epoch");

    let jobs = all_ended(&http, &b, &token, &ids).await;
    for j in &jobs {
        assert_eq!(runs(j), 1, "job {} ran {} times", j["id"], runs(j));
    }
    eprintln!(
        "takeover after SIGKILL: {:?} to healthy, all {} jobs done {:?} after the kill",
        takeover,
        ids.len(),
        t0.elapsed()
    );
    p.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_steps_down() {
    let mut p = leader_started("pause", false).await;
    let (http, a, b) = (p.http.clone(), p.a.clone(), p.b.clone());
    let token = create_tenant(&http, &a, ADMIN, "t").await;
    // Jobs that are running when the leader stops, and end while it is stopped.
    let spec = json!({"command": "sleep", "args": ["2"], "gpus_per_node": 1});
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(submit(&http, &a, &token, &spec).await);
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let v: Value =
            http.get(format!("{a}/v1/jobs/{}", ids[3])).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if v["state"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leader = p.procs.0[0].id() as i32;
    assert_eq!(send_signal(leader, "STOP"), 0);
    p.procs.0.push(replica(&p.db.url, p.pb, &p.dir));
    wait_healthy(&http, &b).await;
    // The old leader's runs would have ended by now: when it wakes it must record nothing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(send_signal(leader, "CONT"), 0);
    let t1 = Instant::now();
    let status = loop {
        if let Some(s) = p.procs.0[0].try_wait().unwrap() {
            break s;
        }
        assert!(t1.elapsed() < Duration::from_secs(10), "the paused leader did not step down when it woke");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "stepping down is an error exit: {status:?}");
    let log = std::fs::read_to_string(p.dir.join("server.log")).unwrap();
    assert!(log.contains("no longer the leader"), "the old leader says why it stopped");

    // The new leader finishes every job, each run once.
    let jobs = all_ended(&http, &b, &token, &ids).await;
    for j in &jobs {
        assert_eq!(runs(j), 1, "job {} ran {} times", j["id"], runs(j));
    }
    p.end().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_follows_the_new_leader() {
    let mut p = leader_started("agent", true).await;
    let (http, a, b) = (p.http.clone(), p.a.clone(), p.b.clone());
    let token = create_tenant(&http, &a, ADMIN, "lab").await;
    let join = join_token(&http, &a, ADMIN).await;
    p.procs.0.push(agents_replica(&p.db.url, p.pb, &p.dir));
    p.procs.0.push(agent(None, &format!("{a},{b}"), &join, "hall-a-r001-n01", &p.dir));
    let spec = json!({"command": "sh", "args": ["-c", "sleep 2; exit 3"], "gpus_per_node": 1});
    let id = submit(&http, &a, &token, &spec).await;
    wait_state(&http, &a, &token, id, "running").await;
    p.procs.0[0].kill().unwrap();
    p.procs.0[0].wait().unwrap();
    wait_healthy(&http, &b).await;

    // The run ends while the agent moves over: the new leader records its real end, once.
    let v = wait_state(&http, &b, &token, id, "failed").await;
    assert_eq!((v["exit_code"].as_i64(), v["attempts"].as_i64()), (Some(3), Some(1)), "{v}");
    // The node takes new work from the new leader.
    let next = submit(&http, &b, &token, &json!({"command": "true", "gpus_per_node": 8})).await;
    wait_state(&http, &b, &token, next, "succeeded").await;
    p.end().await;
}

/// Sends SIGSTOP or SIGCONT with `kill(1)`; its exit status.
fn send_signal(pid: i32, signal: &str) -> i32 {
    std::process::Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .map(|s| s.code().unwrap_or(-1))
        .unwrap_or(-1)
}

/// `drome bench failover`, small: two replicas, the leader killed twice under a storm of
/// submissions; nothing acknowledged is lost and nothing runs twice.
#[test]
fn the_failover_bench_loses_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["bench", "failover", "--replicas", "2", "--kills", "2", "--lease-s", "1", "--clients", "4"])
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["failover_s"].as_array().map(Vec::len), Some(2), "{r}");
    assert!(r["acknowledged"].as_u64().unwrap() > 0, "{r}");
    assert_eq!((r["lost"].as_u64(), r["run_twice"].as_u64()), (Some(0), Some(0)), "{r}");
    assert!(r["failover_max_s"].as_f64().unwrap() < 10.0, "{r}");
}
