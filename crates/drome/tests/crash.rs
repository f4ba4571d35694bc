//! Crash test: under a storm of concurrent submissions the real `drome server` is killed with
//! SIGKILL and started again on the same store. Every job that got a `201` is there, none twice,
//! idempotency keys hold across the restart, and no job runs twice. On SQLite and PostgreSQL.

mod common;

use common::{free_port, wait_healthy};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN: &str = "crash-admin-token";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const WORKERS: usize = 12;

fn spawn(db: &str, port: u16, log: &std::path::Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["server", "--db", db, "--listen", &format!("127.0.0.1:{port}"), "--admin-token", ADMIN])
        .args(["--fleet", FLEET, "--in-process-seconds", "1"])
        // One tenant's storm, on purpose: no per-tenant rate limit.
        .args(["--tenant-rate", "0"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("drome server starts")
}

fn body(key: &str) -> Value {
    json!({"name": key, "command": "sleep", "args": ["0.3"], "gpus_per_node": 1})
}

async fn submit(http: &reqwest::Client, base: &str, token: &str, key: &str) -> Result<(StatusCode, Value), String> {
    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(token)
        .header("Idempotency-Key", key)
        .json(&body(key))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    let v: Value = r.json().await.map_err(|e| e.to_string())?;
    Ok((status, v))
}

async fn storm(db_url: String) {
    let dir = std::env::temp_dir().join(format!("drome-crash-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("server.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    let mut child = spawn(&db_url, port, &log);
    wait_healthy(&http, &base).await;
    let r = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "storm"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.unwrap()["token"].as_str().unwrap().to_string();

    // The storm: workers submit as fast as they can; each records the keys acknowledged with a
    // 201 (and their ids), and the keys whose fate it never learnt.
    let acked: Arc<Mutex<BTreeMap<String, i64>>> = Arc::default();
    let unknown: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let (http, base, token, acked, unknown) =
            (http.clone(), base.clone(), token.clone(), acked.clone(), unknown.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..400 {
                let key = format!("w{w}-{i}");
                match submit(&http, &base, &token, &key).await {
                    Ok((StatusCode::CREATED, v)) => {
                        acked.lock().unwrap().insert(key, v["id"].as_i64().unwrap());
                    }
                    Ok((status, v)) => panic!("{key}: unexpected {status} {v}"),
                    Err(_) => {
                        unknown.lock().unwrap().push(key);
                        return;
                    }
                }
            }
        }));
    }
    // Kill the server mid-storm, once a good number of jobs are in and some are running.
    let t0 = Instant::now();
    while acked.lock().unwrap().len() < 150 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().expect("SIGKILL the server");
    child.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let unknown = unknown.lock().unwrap().clone();
    let rate = acked.len() as f64 / t0.elapsed().as_secs_f64();
    assert!(acked.len() >= 150, "the storm got only {} acknowledgements", acked.len());

    // Restart on the same store.
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut child = spawn(&db_url, port, &log);
    let restart = wait_healthy(&http, &base).await;

    // Retrying every acknowledged key returns the job stored the first time; the keys in flight
    // at the crash are stored at most once.
    for (key, id) in &acked {
        let (status, v) = submit(&http, &base, &token, key).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{key} after the restart: {v}");
        assert_eq!(v["id"].as_i64(), Some(*id), "{key} kept its job");
    }
    for key in &unknown {
        let (status, v) = submit(&http, &base, &token, key).await.unwrap();
        assert!(status == StatusCode::CREATED || status == StatusCode::OK, "{key}: {status} {v}");
        let (again, v2) = submit(&http, &base, &token, key).await.unwrap();
        assert_eq!((again, v2["id"].clone()), (StatusCode::OK, v["id"].clone()));
    }

    // Every job once, by key.
    let mut jobs: Vec<Value> = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?limit=1000");
        if let Some(b) = before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = http.get(url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_before"].as_i64() {
            Some(b) => before = Some(b),
            None => break,
        }
    }
    let mut by_key: HashMap<String, Vec<i64>> = HashMap::new();
    for j in &jobs {
        by_key.entry(j["idempotency_key"].as_str().unwrap().to_string()).or_default().push(j["id"].as_i64().unwrap());
    }
    assert!(by_key.values().all(|ids| ids.len() == 1), "a key with two jobs");
    for (key, id) in &acked {
        assert_eq!(by_key.get(key), Some(&vec![*id]), "acknowledged job {key} lost");
    }
    assert_eq!(jobs.len(), acked.len() + unknown.len(), "no job beyond the keys submitted");

    // The scheduler carries on: everything finishes, and no job started twice.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let page: Value = http
            .get(format!("{base}/v1/jobs?limit=1000&state=succeeded"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = page["jobs"].as_array().unwrap().len();
        if done == jobs.len().min(1000) {
            break;
        }
        assert!(Instant::now() < deadline, "only {done} of {} jobs finished after the restart", jobs.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for j in &jobs {
        let id = j["id"].as_i64().unwrap();
        let v: Value =
            http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        let states: Vec<&str> = v["history"].as_array().unwrap().iter().map(|h| h["state"].as_str().unwrap()).collect();
        assert_eq!(states.iter().filter(|s| **s == "running").count(), 1, "job {id} ran {states:?}");
        assert_eq!(states.last(), Some(&"succeeded"), "job {id}: {states:?}");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "crash test ({}): {} jobs acknowledged before SIGKILL ({rate:.0}/s over {WORKERS} clients), {} in flight, restart to healthy {:?}",
        db_url.split(':').next().unwrap_or(""),
        acked.len(),
        unknown.len(),
        restart
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_a_submission_storm_sqlite() {
    let dir = std::env::temp_dir().join(format!("drome-crash-db-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    storm(format!("sqlite://{}/drome.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_a_submission_storm_postgres() {
    let db = store::testing::TempPostgres::create()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is required for this test (CI starts it): {e}"));
    storm(db.url.clone()).await;
    db.drop_database().await.unwrap();
}
