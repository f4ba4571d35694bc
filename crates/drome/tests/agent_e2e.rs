//! Node agents end to end on loopback: the real `drome server --agents` and three `drome agent`
//! processes. A 2-node gang checks its rank, world size and GPU variables; cancel kills the whole
//! process tree; `kill -9` of an agent requeues its job within the lease expiry + 5 s; a
//! restarted controller lets running jobs finish; and over many jobs none ever runs twice at once
//! (every run leaves marker files that are checked here).

mod common;

use common::{Procs, create_tenant, free_port, join_token, wait_healthy};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

const ADMIN: &str = "agent-e2e-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const NODES: [&str; 3] = ["hall-a-r001-n01", "hall-a-r001-n02", "hall-a-r002-n01"];
const LEASE_MS: u64 = 1000;

fn server(db: &str, port: u16, dir: &Path) -> Child {
    let lease = LEASE_MS.to_string();
    let args = ["--fleet", FLEET, "--agents", "--heartbeat-ms", "200", "--lease-ms", &lease];
    common::server(db, port, ADMIN, &args, dir, None)
}

/// An agent keeping at most 1 MiB of each output of a run.
fn agent(base: &str, join: &str, name: &str, dir: &Path) -> Child {
    common::agent_with(None, base, join, name, dir, &["--max-output-mib", "1"])
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn submit(&self, spec: Value) -> i64 {
        let r = self.http.post(format!("{}/v1/jobs", self.base)).bearer_auth(&self.token).json(&spec).send().await;
        let v: Value = r.unwrap().json().await.unwrap();
        v["id"].as_i64().unwrap_or_else(|| panic!("submit failed: {v}"))
    }

    async fn job(&self, id: i64) -> Value {
        loop {
            let r = self.http.get(format!("{}/v1/jobs/{id}", self.base)).bearer_auth(&self.token).send().await;
            if let Ok(r) = r
                && let Ok(v) = r.json::<Value>().await
            {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_state(&self, id: i64, states: &[&str], within: Duration) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.job(id).await;
            if states.contains(&v["state"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(t0.elapsed() < within, "job {id} not {states:?} after {within:?}: {v}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn cancel(&self, id: i64) {
        self.http.post(format!("{}/v1/jobs/{id}/cancel", self.base)).bearer_auth(&self.token).send().await.unwrap();
    }
}

/// The fleet's nodes by name.
async fn nodes(http: &reqwest::Client, base: &str, token: &str) -> serde_json::Map<String, Value> {
    let v: Value = http.get(format!("{base}/v1/nodes")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
    v.as_array().unwrap().iter().map(|n| (n["name"].as_str().unwrap().to_string(), n.clone())).collect()
}

/// What `drome logs ID ARGS` prints.
fn drome_logs(base: &str, token: &str, id: i64, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["logs", &id.to_string()])
        .args(args)
        .env("DROME_URL", base)
        .env("DROME_TOKEN", token)
        .output()
        .unwrap();
    assert!(out.status.success(), "drome logs {id} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn sh(script: &str) -> Value {
    json!(["-c", script])
}

/// Whether a process is gone (or a zombie nobody reaped yet).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_gangs_cancel_survive_and_never_double_run_sqlite() {
    let dir: PathBuf = std::env::temp_dir().join(format!("drome-agent-e2e-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    end_to_end(&dir, &db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_run_gangs_cancel_survive_and_never_double_run_postgres() {
    let pg = store::testing::TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let dir: PathBuf = std::env::temp_dir().join(format!("drome-agent-e2e-pg-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    end_to_end(&dir, &pg.url).await;
    pg.drop_database().await.unwrap();
}

async fn end_to_end(dir: &Path, db: &str) {
    let dir = dir.to_path_buf();
    let marks = dir.join("marks");
    common::shared_dir(&marks);
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut procs = Procs(vec![server(db, port, &dir)]);
    let mut api = Api { http: http.clone(), base: base.clone(), token: String::new() };
    wait_healthy(&http, &base).await;
    api.token = create_tenant(&http, &base, ADMIN, "e2e").await;
    let join = join_token(&http, &base, ADMIN).await;
    // A tenant's token is no join token, and no node credential.
    let bad =
        http.post(format!("{base}/v1/agent/heartbeat")).bearer_auth(&api.token).json(&json!({})).send().await.unwrap();
    assert_eq!(bad.status(), 401);
    let mut agents: Vec<usize> = Vec::new();
    for name in NODES {
        agents.push(procs.0.len());
        procs.0.push(agent(&base, &join, name, &dir));
    }
    let t0 = Instant::now();
    while !NODES.iter().all(|n| dir.join(n).join("credential").exists()) {
        assert!(t0.elapsed() < Duration::from_secs(20), "agents never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for n in NODES {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join(n).join("credential")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "a node's credential is its owner's only");
    }

    // A 2-node gang checks its variables; each rank leaves a marker.
    let m = marks.display();
    let script = format!(
        "test \"$DROME_WORLD_SIZE\" = 2 && test -n \"$DROME_MASTER_ADDR\" && test -n \"$DROME_MASTER_PORT\" \
         && test -n \"$DROME_JOB_ID\" && test \"$(echo $CUDA_VISIBLE_DEVICES | tr , ' ' | wc -w)\" = 4 \
         && echo \"$DROME_MASTER_ADDR:$DROME_MASTER_PORT\" > {m}/gang-rank-$DROME_RANK"
    );
    let gang = api.submit(json!({"command": "sh", "args": sh(&script), "gpus_per_node": 4, "nodes": 2})).await;
    let v = api.wait_state(gang, &["succeeded", "failed"], Duration::from_secs(15)).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let r0 = std::fs::read_to_string(marks.join("gang-rank-0")).unwrap();
    let r1 = std::fs::read_to_string(marks.join("gang-rank-1")).unwrap();
    assert_eq!(r0, r1, "both ranks meet at one master");

    // Output comes back through `drome logs`: each stream of each member, and --follow reads
    // on until the job ends.
    let script = "echo out-$DROME_RANK; echo err-$DROME_RANK >&2";
    let logged = api.submit(json!({"command": "sh", "args": sh(script), "gpus_per_node": 1, "nodes": 2})).await;
    api.wait_state(logged, &["succeeded"], Duration::from_secs(15)).await;
    assert_eq!(drome_logs(&base, &api.token, logged, &[]), "out-0\n");
    assert_eq!(drome_logs(&base, &api.token, logged, &["--member", "1"]), "out-1\n");
    assert_eq!(drome_logs(&base, &api.token, logged, &["--member", "1", "--stderr"]), "err-1\n");
    let slow =
        api.submit(json!({"command": "sh", "args": sh("echo one; sleep 1; echo two"), "gpus_per_node": 1})).await;
    api.wait_state(slow, &["running"], Duration::from_secs(10)).await;
    let followed = drome_logs(&base, &api.token, slow, &["--follow"]);
    assert_eq!(followed, "one\ntwo\n", "{}", api.job(slow).await);
    // --follow on a job just submitted waits for it to be placed, then reads it to the end.
    let fresh = api.submit(json!({"command": "sh", "args": sh("echo fresh"), "gpus_per_node": 1})).await;
    assert_eq!(drome_logs(&base, &api.token, fresh, &["--follow"]), "fresh\n");
    // Output larger than one piece comes back whole.
    let big = api
        .submit(json!({"command": "sh", "args": sh("head -c 600000 /dev/zero | tr '\\0' x"), "gpus_per_node": 1}))
        .await;
    api.wait_state(big, &["succeeded"], Duration::from_secs(15)).await;
    let out = drome_logs(&base, &api.token, big, &["--follow"]);
    assert_eq!(out.len(), 600_000);
    assert!(out.bytes().all(|b| b == b'x'));
    // Output past the node's limit (1 MiB here) is read and dropped: the run goes on to its end,
    // and its output says what was dropped.
    let flood = api
        .submit(json!({"command": "sh", "args": sh("head -c 3145728 /dev/zero | tr '\\0' z; echo done >&2"), "gpus_per_node": 1}))
        .await;
    let v = api.wait_state(flood, &["succeeded", "failed"], Duration::from_secs(20)).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let out = drome_logs(&base, &api.token, flood, &["--follow"]);
    assert!(out.starts_with(&"z".repeat(1 << 20)), "the first MiB is kept");
    let tail = &out[1 << 20..];
    assert!(!tail.contains('z'), "nothing past the limit is kept: {}", &tail[..tail.len().min(200)]);
    assert!(tail.contains("output past this node's limit of 1048576 bytes is dropped"), "{tail}");
    assert!(tail.contains("[drome: 2097152 bytes of output dropped]"), "{tail}");
    assert_eq!(drome_logs(&base, &api.token, flood, &["--stderr"]), "done\n");
    let r = http.get(format!("{base}/v1/jobs/{slow}/logs?member=5")).bearer_auth(&api.token).send().await.unwrap();
    assert_eq!(r.status(), 404, "no member 5");

    // A GPU power cap for the site reaches every node's agent, which reports its draw under it.
    let r = http
        .put(format!("{base}/v1/sites/lab-oil/gpu-power-cap"))
        .bearer_auth(&api.token)
        .json(&json!({"gpu_power_cap_watts": 300.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a tenant sets no caps");
    for (site, watts, status) in
        [("lab-oil", json!(-5.0), 422), ("lab-oil", json!("300"), 422), ("nowhere", json!(300.0), 404)]
    {
        let r = http
            .put(format!("{base}/v1/sites/{site}/gpu-power-cap"))
            .bearer_auth(ADMIN)
            .json(&json!({"gpu_power_cap_watts": watts}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{site} {watts}");
    }
    let r = http
        .put(format!("{base}/v1/sites/lab-oil/gpu-power-cap"))
        .bearer_auth(ADMIN)
        .json(&json!({"gpu_power_cap_watts": 300.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    loop {
        let nodes = nodes(&http, &base, &api.token).await;
        let capped = NODES.iter().filter(|n| nodes[**n]["gpu_power_cap_watts"].as_f64() == Some(300.0)).count();
        if capped == NODES.len() {
            // Idle H200 boards: about 75 W each.
            for n in NODES {
                let w = nodes[n]["power_watts"].as_f64().unwrap();
                assert!((w - 600.0).abs() < 1.0, "{n} idle at {w} W");
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the cap never reached the agents: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Cancel kills the whole tree: the shell and its background child.
    let script = format!("sleep 300 & echo $! > {m}/child.pid; wait");
    let tree = api.submit(json!({"command": "sh", "args": sh(&script), "gpus_per_node": 1})).await;
    api.wait_state(tree, &["running"], Duration::from_secs(10)).await;
    let t0 = Instant::now();
    let pid = loop {
        if let Ok(s) = std::fs::read_to_string(marks.join("child.pid"))
            && let Ok(p) = s.trim().parse::<i32>()
        {
            break p;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the tree never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!gone(pid));
    api.cancel(tree).await;
    let t0 = Instant::now();
    while !gone(pid) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the background child of a cancelled job survived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // kill -9 of the agent that runs a job: the job is requeued within the lease expiry + 5 s
    // and runs on another node.
    let job = api
        .submit(json!({"command": "sleep", "args": ["300"], "gpus_per_node": 8, "restart_policy": "on-failure"}))
        .await;
    let v = api.wait_state(job, &["running"], Duration::from_secs(10)).await;
    let first = v["placement"][0]["node"].as_str().unwrap().to_string();
    // Eight busy GPUs held to 300 W each; the site shows the live draw against its cap.
    let t0 = Instant::now();
    loop {
        let w = nodes(&http, &base, &api.token).await[first.as_str()]["power_watts"].as_f64().unwrap();
        if (w - 2400.0).abs() < 1e-6 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{first} draws {w} W busy under a 300 W cap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sites: Value =
        http.get(format!("{base}/v1/sites")).bearer_auth(&api.token).send().await.unwrap().json().await.unwrap();
    let site = sites.as_array().unwrap().iter().find(|s| s["name"] == "lab-oil").unwrap();
    assert_eq!(site["power_reporting_nodes"], 3, "{site}");
    assert_eq!(site["gpu_power_cap_watts"], 300.0, "{site}");
    let draw = site["power_watts"].as_f64().unwrap();
    assert!((draw - (2400.0 + 2.0 * 600.0)).abs() < 1.0, "{site}");
    assert!(draw < site["power_cap_watts"].as_f64().unwrap(), "{site}");
    let k = NODES.iter().position(|n| *n == first).unwrap();
    procs.0[agents[k]].kill().unwrap();
    let _ = procs.0[agents[k]].wait();
    let killed = Instant::now();
    let t0 = Instant::now();
    loop {
        let v = api.job(job).await;
        if v["attempts"].as_i64() == Some(2) && v["state"] == "running" {
            assert_ne!(v["placement"][0]["node"].as_str().unwrap(), first, "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_millis(LEASE_MS + 5000), "job {job} not requeued in time: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("requeued {:?} after kill -9 (lease {LEASE_MS} ms)", killed.elapsed());
    api.cancel(job).await;
    // The agent comes back with its credential and kills what its predecessor left.
    procs.0[agents[k]] = agent(&base, &join, NODES[k], &dir);

    // Many jobs, a controller restart in the middle: every job runs once, never twice at once.
    let script = format!(
        "mkdir {m}/run-$DROME_JOB_ID || touch {m}/double-$DROME_JOB_ID; \
         echo $DROME_NODE >> {m}/ran-$DROME_JOB_ID; sleep 0.6; rmdir {m}/run-$DROME_JOB_ID"
    );
    let mut ids = Vec::new();
    for _ in 0..24 {
        ids.push(api.submit(json!({"command": "sh", "args": sh(&script), "gpus_per_node": 2})).await);
    }
    api.wait_state(ids[0], &["running", "succeeded"], Duration::from_secs(10)).await;
    procs.0[0].kill().unwrap();
    let _ = procs.0[0].wait();
    tokio::time::sleep(Duration::from_millis(300)).await;
    procs.0[0] = server(db, port, &dir);
    wait_healthy(&http, &base).await;
    for id in &ids {
        let v = api.wait_state(*id, &["succeeded", "failed", "cancelled"], Duration::from_secs(30)).await;
        assert_eq!(v["state"], "succeeded", "{v}");
        assert_eq!(v["attempts"], 1, "{v}");
    }
    for id in &ids {
        assert!(!marks.join(format!("double-{id}")).exists(), "job {id} ran twice at once");
        let ran = std::fs::read_to_string(marks.join(format!("ran-{id}"))).unwrap();
        assert_eq!(ran.lines().count(), 1, "job {id} ran more than once: {ran}");
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
