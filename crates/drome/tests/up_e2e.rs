//! `drome up` serves its fleet with the node agent's code in process: a job runs as a real
//! process on a virtual node, its output comes back through the logs API, and the nodes report
//! their draw.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

struct Up(Child);

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `drome up` on `dir`, listening on `port`; it and the demo token it printed.
fn up(dir: &std::path::Path, port: u16) -> (Up, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["up", "--listen", &format!("127.0.0.1:{port}"), "--fleet", FLEET])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let guard = Up(child);
    // Read what it prints to the end (a closed pipe would fail its later lines).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(t) = line.trim().strip_prefix("token") {
                let _ = tx.send(t.trim().to_string());
            }
        }
    });
    let token = rx.recv_timeout(Duration::from_secs(60)).expect("drome up printed no token");
    (guard, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_jobs_on_in_process_agents() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("drome-up-e2e-{}-{port}", std::process::id()));
    let (_up, token) = up(&dir, port);
    // HTTPS by default, with a certificate made under the data directory; its CA is printed
    // for the CLI to trust.
    let base = format!("https://127.0.0.1:{port}");
    let ca = std::fs::read(dir.join("tls").join("ca.pem")).expect("drome up made its CA");
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let key_mode = std::fs::metadata(dir.join("tls").join("key.pem")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600, "the server's key is its own");

    let spec = json!({"command": "sh", "args": ["-c", "echo rank $DROME_RANK on $DROME_NODE"], "gpus_per_node": 4});
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec).send().await.unwrap();
    let job: Value = r.json().await.unwrap();
    let id = job["id"].as_i64().unwrap_or_else(|| panic!("submit failed: {job}"));
    let t0 = Instant::now();
    let job = loop {
        let v: Value =
            http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if matches!(v["state"].as_str(), Some("succeeded" | "failed")) {
            break v;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "job {id} never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "succeeded", "{job}");
    let node = job["placement"][0]["node"].as_str().unwrap();
    let logs: Value =
        http.get(format!("{base}/v1/jobs/{id}/logs")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    assert_eq!(logs["data"], format!("rank 0 on {node}\n"), "{logs}");
    assert_eq!(logs["complete"], true, "{logs}");
    // The run's files are under the data directory, on the node's own work directory.
    assert!(dir.join("nodes").join(node).join("runs").exists());

    // Every job holds CPUs and memory: by default the fleet's share per GPU (small.toml: 28
    // CPUs and 256 GiB per H200 or A100).
    assert_eq!(
        (job["spec"]["cpu_milli"].as_u64(), job["spec"]["memory_mib"].as_u64()),
        (Some(112_000), Some(1_048_576))
    );

    // A job as a stranger would write it: who am I, what is around me, the node's secrets.
    let credential = std::fs::read_to_string(dir.join("nodes").join(node).join("credential")).unwrap();
    let probe = format!(
        "id -u; env; cat ../../../credential; echo 1 > ../pgid; ls ../..; cat ../../../../../drome.db | head -c 16; \
         cat ../../../../{node}/runs/{id}-1-0/stdout; true"
    );
    let spec = json!({"command": "sh", "args": ["-c", probe], "gpus_per_node": 1, "memory_mib": 512});
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec).send().await.unwrap();
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().expect("the probe is accepted");
    let t0 = Instant::now();
    loop {
        let v: Value =
            http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if matches!(v["state"].as_str(), Some("succeeded" | "failed")) {
            assert_eq!(v["state"], "succeeded", "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "job {id} never ended: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out: Value =
        http.get(format!("{base}/v1/jobs/{id}/logs")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let out = out["data"].as_str().unwrap_or_default().to_string();
    let err: Value = http
        .get(format!("{base}/v1/jobs/{id}/logs?stream=stderr"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let err = err["data"].as_str().unwrap_or_default().to_string();
    // Nothing of the agent's environment (this test gave `drome up` RUST_LOG).
    assert!(!out.contains("RUST_LOG") && !out.contains("CARGO"), "the agent's environment leaked: {out}");
    assert!(out.contains("DROME_RANK=0") && out.contains("CUDA_VISIBLE_DEVICES="), "{out}");
    if nix::unistd::geteuid().is_root() {
        // Sandboxed: a uid of its own, no read of the node's credential, its bookkeeping or the
        // database; the runs of the node cannot be listed.
        let uid: u32 = out.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
        assert!(uid >= 200_000, "the job ran as uid {uid}: {out}");
        assert!(!out.contains(credential.trim()), "the job read the node's credential: {out}");
        assert!(!out.contains("SQLite format"), "the job read the database: {out}");
        assert!(!out.contains("rank 0 on"), "the job read another run's output: {out}");
        assert!(err.matches("Permission denied").count() >= 5, "{err}");
    }
    assert!(
        !dir.join("nodes").join(node).join("runs").join(format!("{id}-1-0")).join("work").exists(),
        "the run's directory outlived it"
    );

    let nodes: Value =
        http.get(format!("{base}/v1/nodes")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
    let reporting = nodes.as_array().unwrap().iter().filter(|n| n["power_watts"].as_f64().is_some()).count();
    assert_eq!(reporting, nodes.as_array().unwrap().len(), "every virtual node reports its draw: {nodes}");
    drop(_up);

    // Started again on the same data directory: the same demo token, which still works.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let (_again, same) = up(&dir, port);
    assert_eq!(same, token, "a second drome up gave the demo tenant a new token");
    let r = http.get(format!("https://127.0.0.1:{port}/v1/jobs")).bearer_auth(&token).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let mode = std::fs::metadata(dir.join("demo-token")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    drop(_again);
    let _ = std::fs::remove_dir_all(&dir);
}
