//! An agent's reported exit survives the server's crash: the real `drome server --agents` aborts
//! (as under `kill -9`) right after a run's end reached it and before it recorded the end
//! (`DROME_FAILPOINT=before-exit-recorded`). Started again on the same store, without the
//! failpoint, it must learn the end from the agent, which keeps reporting an end until the server
//! acknowledges it durable: the job ends with its real exit code, never stuck running.

mod common;

use common::{Procs, agent, create_tenant, free_port, join_token, submit, wait_aborted, wait_healthy, wait_state};
use serde_json::json;
use std::path::Path;
use std::process::Child;
use std::time::Duration;

const ADMIN: &str = "exit-crash-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const NODE: &str = "hall-a-r001-n01";

fn server(db: &str, port: u16, dir: &Path, failpoint: bool) -> Child {
    let args = ["--fleet", FLEET, "--agents", "--heartbeat-ms", "200", "--lease-ms", "5000"];
    common::server(db, port, ADMIN, &args, dir, failpoint.then_some("before-exit-recorded"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_reported_before_a_crash_is_recorded_after_it() {
    let dir = std::env::temp_dir().join(format!("drome-exit-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let mut procs = Procs(vec![server(&db, port, &dir, true)]);
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let join = join_token(&http, &base, ADMIN).await;
    procs.0.push(agent(None, &base, &join, NODE, &dir));
    let spec = json!({"command": "sh", "args": ["-c", "sleep 0.5; exit 3"], "gpus_per_node": 1});
    let id = submit(&http, &base, &token, &spec).await;

    // The run ends, the agent reports it, the server aborts before recording it.
    wait_aborted(&mut procs.0[0]).await;

    // Back on the same store: the job was left running; the agent's report must end it.
    procs.0[0] = server(&db, port, &dir, false);
    wait_healthy(&http, &base).await;
    let v = wait_state(&http, &base, &token, id, "failed").await;
    assert_eq!(v["exit_code"], 3, "{v}");
    assert_eq!(v["attempts"], 1, "the job did not run again: {v}");
    // And the node's GPU is free again: a whole-node job fits.
    let spec = json!({"command": "true", "gpus_per_node": 8});
    let next = submit(&http, &base, &token, &spec).await;
    wait_state(&http, &base, &token, next, "succeeded").await;
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
