//! Replicas on one PostgreSQL database: one leads (holds the lease, schedules), every one serves
//! the API. A standby takes submissions, cancels and quotas (the leader acts on them), streams
//! events, and forwards to the leader what only it knows; agents are sent on to the leader. A
//! leader killed with SIGKILL is replaced within the lease and nothing acknowledged is lost or
//! run twice, also under 2,000 submissions to three replicas; a leader paused past its lease
//! (SIGSTOP) steps down when it wakes; an agent given every replica's address follows the new
//! leader, and the end of a run it reports there counts.

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
        // The storms here are one tenant's on purpose: no per-tenant rate limit.
        &["--fleet", FLEET, "--in-process-seconds", "1", "--leader-lease-s", "1", "--tenant-rate", "0"],
        dir,
        None,
    )
}

/// A replica whose work runs on node agents.
fn agents_replica(db: &str, port: u16, dir: &std::path::Path) -> Child {
    let args = [
        "--fleet",
        FLEET,
        "--agents",
        "--heartbeat-ms",
        "200",
        "--lease-ms",
        "5000",
        "--leader-lease-s",
        "1",
        "--tenant-rate",
        "0",
    ];
    common::server(db, port, ADMIN, &args, dir, None)
}

/// `GET /v1/cluster` of the replica at `base`.
async fn cluster(http: &reqwest::Client, base: &str) -> Value {
    common::json_of(http.get(format!("{base}/v1/cluster")).bearer_auth(ADMIN)).await
}

/// Waits until the replica at `base` leads; how long that took.
async fn wait_leads(http: &reqwest::Client, base: &str) -> Duration {
    let t0 = Instant::now();
    loop {
        if let Ok(r) = http.get(format!("{base}/v1/cluster")).bearer_auth(ADMIN).send().await
            && let Ok(v) = r.json::<Value>().await
            && v["leads"] == true
        {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "{base} never took the lead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    wait_healthy(&http, &b).await;
    let standby = cluster(&http, &b).await;
    assert_eq!(standby["leads"], false, "the standby serves but does not lead: {standby}");

    // Submissions to either replica: the leader schedules them all.
    let token = create_tenant(&http, &a, ADMIN, "t").await;
    let spec = json!({"command": "sleep", "args": ["0.5"], "gpus_per_node": 1});
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(submit(&http, if i % 2 == 0 { &a } else { &b }, &token, &spec).await);
    }
    p.procs.0[0].kill().unwrap();
    p.procs.0[0].wait().unwrap();
    let t0 = Instant::now();
    let takeover = wait_leads(&http, &b).await;
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
    wait_leads(&http, &b).await;
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
    wait_leads(&http, &b).await;

    // The run ends while the agent moves over: the new leader records its real end, once.
    let v = wait_state(&http, &b, &token, id, "failed").await;
    assert_eq!((v["exit_code"].as_i64(), v["attempts"].as_i64()), (Some(3), Some(1)), "{v}");
    // The node takes new work from the new leader.
    let next = submit(&http, &b, &token, &json!({"command": "true", "gpus_per_node": 8})).await;
    wait_state(&http, &b, &token, next, "succeeded").await;
    p.end().await;
}

/// Reads the event stream of `base` until it has seen `job` reach `state`.
async fn stream_until(base: &str, token: &str, job: i64, state: &str) {
    // From the tenant's first event: the one looked for may have come before the stream opened.
    // A client without a timeout: a stream is a long answer.
    let http = reqwest::Client::new();
    let mut stream = http.get(format!("{base}/v1/events?after=0")).bearer_auth(token).send().await.unwrap();
    let wanted = format!("\"job_id\":{job},");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let chunk = tokio::time::timeout_at(deadline.into(), stream.chunk()).await;
        let chunk = chunk.unwrap_or_else(|_| panic!("no '{state}' event of job {job} from {base}: {seen}"));
        seen.push_str(&String::from_utf8_lossy(&chunk.unwrap().expect("the stream stays open")));
        if seen.lines().any(|l| l.contains(&wanted) && l.contains(&format!("\"state\":\"{state}\""))) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_the_api() {
    let mut p = leader_started("serve", true).await;
    let (http, a, b) = (p.http.clone(), p.a.clone(), p.b.clone());
    let join = join_token(&http, &a, ADMIN).await;
    p.procs.0.push(agents_replica(&p.db.url, p.pb, &p.dir));
    wait_healthy(&http, &b).await;
    let status = cluster(&http, &b).await;
    assert_eq!((status["leads"].as_bool(), status["leader"]["address"].as_str()), (Some(false), Some(a.as_str())));
    // Every replica lists both, and which leads.
    let listed: Vec<(String, bool)> = status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["address"].as_str().unwrap().to_string(), r["leads"].as_bool().unwrap()))
        .collect();
    let mut want = vec![(a.clone(), true), (b.clone(), false)];
    let mut got = listed.clone();
    want.sort();
    got.sort();
    assert_eq!(got, want, "{status}");

    // The CLI at the standby: the replicas, and join tokens made and revoked there.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
            .args(args)
            .env("DROME_URL", &b)
            .env("DROME_TOKEN", ADMIN)
            .output()
            .unwrap();
        assert!(out.status.success(), "drome {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let out = cli(&["status"]);
    assert!(out.contains("standby") && out.contains("leader") && out.contains(&a), "{out}");
    let made: Value =
        serde_json::from_str(&cli(&["join-tokens", "--output", "json", "create", "--uses", "3"])).unwrap();
    let id = made["id"].as_str().unwrap();
    assert!(cli(&["join-tokens"]).lines().any(|l| l.contains(id) && l.contains("active")));
    cli(&["join-tokens", "revoke", id]);
    assert!(cli(&["join-tokens"]).lines().any(|l| l.contains(id) && l.contains("revoked")));

    // Agents asking the standby are sent on; given both addresses they settle on the leader.
    let refused = http.post(format!("{b}/v1/agent/join")).json(&json!({})).send().await.unwrap();
    assert_eq!(refused.status(), 503, "a standby does not take agents");
    p.procs.0.push(agent(None, &format!("{b},{a}"), &join, "hall-a-r001-n01", &p.dir));

    // Tenants, submissions, reads and the event stream at the standby; the leader runs the work.
    let token = create_tenant(&http, &b, ADMIN, "lab").await;
    let events = tokio::spawn({
        let (http, b, token) = (reqwest::Client::new(), b.clone(), token.clone());
        async move {
            // The first job submitted is the tenant's first: id unknown yet, so any job's end.
            let mut stream = http.get(format!("{b}/v1/events")).bearer_auth(&token).send().await.unwrap();
            let mut seen = String::new();
            while !seen.contains("\"state\":\"succeeded\"") {
                let chunk = tokio::time::timeout(Duration::from_secs(30), stream.chunk()).await;
                seen.push_str(&String::from_utf8_lossy(
                    &chunk.expect("events reach the standby's clients").unwrap().unwrap(),
                ));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let echo = json!({"command": "sh", "args": ["-c", "echo hello from the node"], "gpus_per_node": 1});
    let id = submit(&http, &b, &token, &echo).await;
    let done = wait_state(&http, &b, &token, id, "succeeded").await;
    assert_eq!(runs(&done), 1, "{done}");
    events.await.unwrap();

    // What only the leader knows, the standby asks it: the node's figures and the job's output.
    let nodes = http.get(format!("{b}/v1/nodes")).bearer_auth(&token).send().await.unwrap();
    assert_eq!(nodes.headers().get("x-drome-served-by").map(|v| v.to_str().unwrap()), Some("leader"));
    let nodes: Value = nodes.json().await.unwrap();
    assert_eq!(nodes.as_array().map(Vec::len), Some(8), "the fleet's nodes, from the leader: {nodes}");
    let logs: Value = common::json_of(http.get(format!("{b}/v1/jobs/{id}/logs")).bearer_auth(&token)).await;
    assert_eq!(logs["data"], "hello from the node\n", "{logs}");

    // A quota set at the standby holds at the leader; a cancel at the standby stops the run.
    let quota = http.put(format!("{b}/v1/tenants/lab/quota")).bearer_auth(ADMIN).json(&json!({"gpu_quota": 1}));
    assert!(quota.send().await.unwrap().status().is_success());
    let long = json!({"command": "sleep", "args": ["60"], "gpus_per_node": 1});
    let first = submit(&http, &b, &token, &long).await;
    let second = submit(&http, &b, &token, &long).await;
    wait_state(&http, &b, &token, first, "running").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = common::get_job(&http, &b, &token, second).await.unwrap();
    assert_eq!(waiting["state"], "pending", "the quota of 1 GPU holds the second job: {waiting}");
    let cancelled = http.post(format!("{b}/v1/jobs/{first}/cancel")).bearer_auth(&token).send().await.unwrap();
    assert!(cancelled.status().is_success());
    wait_state(&http, &b, &token, first, "cancelled").await;
    stream_until(&b, &token, second, "running").await;

    // A token revoked at the standby is refused at the leader at once, though the leader had
    // just taken it (and keeps a token it checked for 2 s): the revocation's notice reaches it.
    let status = |base: &str| {
        let (http, url, token) = (http.clone(), format!("{base}/v1/jobs"), token.clone());
        async move { http.get(url).bearer_auth(token).send().await.unwrap().status() }
    };
    assert_eq!(status(&a).await, 200);
    let revoked = http.delete(format!("{b}/v1/tenants/lab/token")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(revoked.status(), 204);
    let t0 = std::time::Instant::now();
    while status(&a).await != 401 {
        assert!(t0.elapsed() < Duration::from_millis(500), "the leader still takes a token revoked at the standby");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(status(&b).await, 401);
    p.end().await;
}

/// The test: three replicas, the leader killed with SIGKILL during 2,000 submissions
/// spread over all of them. Every acknowledged job exists afterwards and runs exactly once (a
/// job running at the kill is not started again), and a new leader schedules within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_nothing_when_the_leader_dies_mid_storm() {
    let mut p = leader_started("storm", false).await;
    let http = p.http.clone();
    let pc = free_port();
    let c = format!("http://127.0.0.1:{pc}");
    p.procs.0.push(replica(&p.db.url, p.pb, &p.dir));
    p.procs.0.push(replica(&p.db.url, pc, &p.dir));
    let bases = vec![p.a.clone(), p.b.clone(), c];
    for b in &bases {
        wait_healthy(&http, b).await;
    }
    let token = create_tenant(&http, &bases[0], ADMIN, "storm").await;
    const JOBS: usize = 2_000;
    const CLIENTS: usize = 8;
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut clients = Vec::new();
    for k in 0..CLIENTS {
        let (http, bases, token, acked) = (http.clone(), bases.clone(), token.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut at = k % bases.len();
            let mut i = k;
            while i < JOBS {
                let key = format!("job-{i}");
                let spec = json!({"name": key, "command": "sleep", "args": ["0.3"], "gpus_per_node": 1});
                let sent = http
                    .post(format!("{}/v1/jobs", bases[at]))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", &key)
                    .json(&spec)
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {
                        let v: Value = r.json().await.unwrap();
                        mine.push((key, v["id"].as_i64().unwrap()));
                        acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        i += CLIENTS;
                        at = (at + 1) % bases.len();
                    }
                    // The same key again, at the next replica.
                    _ => at = (at + 1) % bases.len(),
                }
            }
            mine
        }));
    }
    while acked.load(std::sync::atomic::Ordering::Relaxed) < JOBS / 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Jobs running now must not run again under the next leader.
    let running_at_kill: Vec<i64> = {
        let page: Value =
            common::json_of(http.get(format!("{}/v1/jobs?state=running&limit=1000", bases[1])).bearer_auth(&token))
                .await;
        page["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect()
    };
    assert!(!running_at_kill.is_empty(), "jobs run while the storm goes on");
    p.procs.0[0].kill().unwrap();
    p.procs.0[0].wait().unwrap();
    let killed = Instant::now();
    let new_leader = loop {
        let mut found = None;
        for b in &bases[1..] {
            if let Ok(r) = http.get(format!("{b}/v1/cluster")).bearer_auth(ADMIN).send().await
                && let Ok(v) = r.json::<Value>().await
                && v["leads"] == true
            {
                found = Some(b.clone());
            }
        }
        if let Some(b) = found {
            break b;
        }
        assert!(killed.elapsed() < Duration::from_secs(10), "no replica led within 10 s of the kill");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // The new leader schedules: a job submitted now runs.
    let probe = submit(&http, &new_leader, &token, &json!({"command": "true", "gpus_per_node": 1})).await;
    wait_state(&http, &new_leader, &token, probe, "succeeded").await;
    let scheduled_after = killed.elapsed();

    let mut acked_jobs = Vec::new();
    for c in clients {
        acked_jobs.extend(c.await.unwrap());
    }
    assert_eq!(acked_jobs.len(), JOBS);
    let deadline = Instant::now() + Duration::from_secs(240);
    let jobs: std::collections::HashMap<i64, Value> = loop {
        let mut all = std::collections::HashMap::new();
        let mut before: Option<i64> = None;
        loop {
            let mut url = format!("{new_leader}/v1/jobs?limit=1000");
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Value = common::json_of(http.get(url).bearer_auth(&token)).await;
            for j in page["jobs"].as_array().unwrap() {
                all.insert(j["id"].as_i64().unwrap(), j.clone());
            }
            match page["next_before"].as_i64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        if all.values().all(|j| j["state"] == "succeeded") {
            break all;
        }
        assert!(Instant::now() < deadline, "jobs still unfinished after 240 s");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for (key, id) in &acked_jobs {
        let job = jobs.get(id).unwrap_or_else(|| panic!("acknowledged job {id} ({key}) is lost"));
        assert_eq!(job["name"].as_str(), Some(key.as_str()), "job {id} is another submission's");
    }
    assert_eq!(jobs.len(), JOBS + 1, "one job per key, and the probe");
    for &id in jobs.keys() {
        let v = common::get_job(&http, &new_leader, &token, id).await.unwrap();
        let at_kill = if running_at_kill.contains(&id) { " (running at the kill)" } else { "" };
        assert_eq!(runs(&v), 1, "job {id}{at_kill} started {} times", runs(&v));
    }
    eprintln!(
        "3 replicas, {JOBS} submissions, leader killed: a new leader scheduled {scheduled_after:?} after the kill"
    );
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
