//! GPUs go to other work only once the work that held them is gone. The real `drome server`
//! with real agents: a cancelled or preempted run that ignores SIGTERM lives on for the agent's
//! kill grace; the job placed on its GPUs must start only after it is dead (it looks in
//! `/proc` for the process ids the old runs wrote: each run is a uid of its own and could not
//! signal them). A server aborted right after recording a
//! preemption (`DROME_FAILPOINT=after-preemption-recorded`, as under `kill -9`) and started
//! again strands nothing: the preempted job goes back to the queue once its run is gone, and the
//! job that preempted it runs. The same holds for a cancellation
//! (`DROME_FAILPOINT=cancel-recorded`): the restarted server stops the cancelled run before the
//! job waiting for its node starts.

mod common;

use common::{
    Procs, agent, create_tenant, free_port, get_job, join_token, submit, wait_aborted, wait_healthy, wait_state,
};
use serde_json::json;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "stop-confirmed-admin";

/// Two 8-GPU nodes: `hall-a-r001-n01` and `hall-a-r001-n02`.
const PAIR: &str = r#"
name = "pair"
[node_types.hgx-h200]
cpu_milli = 224000
memory_mib = 2097152
gpus = 8
gpu_model = "H200"
[[sites]]
name = "lab"
cooling = "immersion"
[[sites.halls]]
name = "hall-a"
[[sites.halls.racks]]
count = 1
nodes_per_rack = 2
node_type = "hgx-h200"
"#;
const NODES: [&str; 2] = ["hall-a-r001-n01", "hall-a-r001-n02"];

fn server(db: &str, port: u16, dir: &Path, policy: &str, failpoint: Option<&str>) -> Child {
    let fleet = dir.join("pair.toml");
    std::fs::write(&fleet, PAIR).unwrap();
    let fleet = fleet.display().to_string();
    let args = ["--fleet", &fleet, "--agents", "--heartbeat-ms", "200", "--lease-ms", "5000", "--policy", policy];
    common::server(db, port, ADMIN, &[&args[..], &["--preempt-exempt-s", "0"]].concat(), dir, failpoint)
}

/// A run that writes its shell's pid to `pid_file` and ignores SIGTERM, so it outlives the
/// agent's first signal by the kill grace.
fn stubborn(pid_file: &Path) -> serde_json::Value {
    let script = format!("echo $$ > {}; trap '' TERM; while true; do sleep 0.05; done", pid_file.display());
    json!({"command": "sh", "args": ["-c", script], "gpus_per_node": 8})
}

/// A run that writes to `out` how many of the pids in `dir`'s `*.pid` files are alive.
fn census(dir: &Path, out: &Path) -> serde_json::Value {
    let script = format!(
        "n=0; for f in {}/*.pid; do test -d /proc/$(cat $f) && n=$((n+1)); done; echo $n > {}",
        dir.display(),
        out.display()
    );
    json!({"command": "sh", "args": ["-c", script], "gpus_per_node": 8})
}

fn wait_file(path: &Path) -> String {
    let t0 = Instant::now();
    loop {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{} never written", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills, when the test ends, pass or fail, the process groups whose leaders wrote the pid files
/// in `dir`: the runs ignore SIGTERM and would outlive their agents.
struct Reaper(std::path::PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for entry in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            if let Ok(pid) = std::fs::read_to_string(entry.path())
                && let Ok(pid) = pid.trim().parse::<i32>()
                && pid > 1
            {
                let _ = Command::new("kill").args(["-9", "--", &format!("-{pid}")]).stderr(Stdio::null()).status();
            }
        }
    }
}

struct Site {
    procs: Procs,
    _reaper: Reaper,
    dir: std::path::PathBuf,
    db: String,
    port: u16,
    base: String,
    http: reqwest::Client,
}

async fn site(name: &str, policy: &str, failpoint: Option<&str>, agents: usize) -> Site {
    let dir = std::env::temp_dir().join(format!("drome-stop-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    common::shared_dir(&dir.join("pids"));
    common::shared_dir(&dir.join("out"));
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut procs = Procs(vec![server(&db, port, &dir, policy, failpoint)]);
    wait_healthy(&http, &base).await;
    let join = join_token(&http, &base, ADMIN).await;
    for node in NODES.iter().take(agents) {
        procs.0.push(agent(None, &base, &join, node, &dir));
    }
    Site { procs, _reaper: Reaper(dir.join("pids")), dir, db, port, base, http }
}

/// One node runs a run that ignores SIGTERM; the next whole-node job waits for it; the first is
/// cancelled. `crash`: the server aborts once the cancellation is stored, before it stops the run.
async fn cancellation(name: &str, crash: bool) {
    let failpoint = crash.then_some("cancel-recorded");
    let Site { mut procs, _reaper, dir, db, port, base, http } = site(name, "fifo", failpoint, 1).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let pids = dir.join("pids");
    let old = submit(&http, &base, &token, &stubborn(&pids.join("old.pid"))).await;
    wait_state(&http, &base, &token, old, "running").await;
    wait_file(&pids.join("old.pid"));
    // The one node with an agent is full: the next whole-node job waits for it.
    let out = dir.join("out").join("census");
    let next = submit(&http, &base, &token, &census(&pids, &out)).await;
    let r = http.post(format!("{base}/v1/jobs/{old}/cancel")).bearer_auth(&token).send().await;
    // With the failpoint the server may abort before its answer goes out: the cancel is stored.
    match r {
        Ok(r) => assert!(r.status().is_success(), "{:?}", r.text().await),
        Err(e) => assert!(crash, "cancel failed: {e}"),
    }
    if crash {
        wait_aborted(&mut procs.0[0]).await;
        procs.0[0] = server(&db, port, &dir, "fifo", None);
        wait_healthy(&http, &base).await;
    }
    wait_state(&http, &base, &token, next, "succeeded").await;
    assert_eq!(wait_file(&out), "0", "the next job started while the cancelled run was still alive");
    let v = get_job(&http, &base, &token, old).await.unwrap();
    assert_eq!(v["state"], "cancelled", "{v}");
    assert!(v["finished_at_ms"].as_i64().is_some(), "the cancelled job is finished once its run is gone: {v}");
    drop(procs);
    drop(_reaper);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_is_gone_before_its_gpus_take_other_work() {
    cancellation("cancel", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_a_cancellation_starts_nothing_beside_the_cancelled_run() {
    cancellation("cancel-crash", true).await;
}

/// Tenant `a` fills both nodes with runs that ignore SIGTERM; tenant `b` arrives and the quota
/// policy reclaims one node for it. `crash`: the server aborts once the preemption is recorded.
async fn preemption(name: &str, crash: bool) {
    let failpoint = crash.then_some("after-preemption-recorded");
    let Site { mut procs, _reaper, dir, db, port, base, http } = site(name, "quota", failpoint, 2).await;
    let a = create_tenant(&http, &base, ADMIN, "a").await;
    let b = create_tenant(&http, &base, ADMIN, "b").await;
    let pids = dir.join("pids");
    let mut olds = Vec::new();
    for i in 0..2 {
        let pid = pids.join(format!("a{i}.pid"));
        let id = submit(&http, &base, &a, &stubborn(&pid)).await;
        wait_state(&http, &base, &a, id, "running").await;
        wait_file(&pid);
        olds.push(id);
    }
    let out = dir.join("out").join("census");
    let new = submit(&http, &base, &b, &census(&pids, &out)).await;
    if crash {
        wait_aborted(&mut procs.0[0]).await;
        procs.0[0] = server(&db, port, &dir, "quota", None);
        wait_healthy(&http, &base).await;
    }
    wait_state(&http, &base, &b, new, "succeeded").await;
    assert_eq!(wait_file(&out), "1", "tenant b's job started while the preempted run was still alive");
    // The preempted job is back in the queue (or running again), never stranded.
    let t0 = Instant::now();
    let preempted = loop {
        let mut found = None;
        for id in &olds {
            let v = get_job(&http, &base, &a, *id).await.unwrap();
            let history = v["history"].as_array().cloned().unwrap_or_default();
            if history.iter().any(|e| e["state"] == "preempted") {
                found = Some(v);
            }
        }
        if let Some(v) = found.clone().filter(|v| v["state"] == "pending" || v["state"] == "running") {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no preempted job came back: {found:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Once tenant b's job is done, the preempted one runs again, as its next generation.
    let id = preempted["id"].as_i64().unwrap();
    let v = wait_state(&http, &base, &a, id, "running").await;
    assert_eq!(v["attempts"], 2, "{v}");
    drop(procs);
    drop(_reaper);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempted_run_is_gone_before_its_gpus_take_other_work() {
    preemption("preempt", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_a_preemption_strands_nothing() {
    preemption("crash", true).await;
}
