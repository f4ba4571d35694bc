//! The embedded store on a full disk: a real `drome server` whose SQLite file lies on a small
//! tmpfs is fed submissions until the disk is full. It then refuses new work with a clear 503 and
//! `/healthz` says so; killed with SIGKILL and started again with room, it still has every job it
//! acknowledged, and takes new ones.
//!
//! Needs root (it mounts the tmpfs): skipped otherwise.

mod common;

use common::{Procs, create_tenant, free_port, server, wait_healthy};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const ADMIN: &str = "disk-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success())
}

struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_new_work_and_loses_nothing_acknowledged() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: needs root to mount a tmpfs");
        return;
    }
    let dir = std::env::temp_dir().join(format!("drome-full-disk-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let disk = dir.join("disk");
    std::fs::create_dir_all(&disk).unwrap();
    assert!(mount_tmpfs(&disk, "6m"), "cannot mount a tmpfs as root");
    let _unmount = Unmount(&disk);
    let db = format!("sqlite://{}", disk.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = ["--fleet", FLEET, "--tenant-rate", "0", "--tenant-pending-jobs", "0"];
    let mut procs = Procs(vec![server(&db, port, ADMIN, &args, &dir, None)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "filler").await;

    // Submissions of about 4 KiB each until the disk is full.
    let padding = "x".repeat(4000);
    let mut acked = Vec::new();
    let refusal = loop {
        assert!(acked.len() < 10_000, "6 MiB never filled up");
        let spec = json!({"command": "sleep", "args": ["600"], "gpus_per_node": 0, "env": {"PAD": padding}});
        let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec).send().await.unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap();
        if status == StatusCode::CREATED {
            acked.push(body["id"].as_i64().unwrap());
        } else {
            break (status, body);
        }
    };
    assert!(acked.len() > 100, "only {} jobs before the disk filled", acked.len());
    assert_eq!(refusal.0, StatusCode::SERVICE_UNAVAILABLE, "{refusal:?}");
    let message = refusal.1["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("disk is full"), "{message}");
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::SERVICE_UNAVAILABLE, "healthz says ok on a full disk");
    let health: Value = health.json().await.unwrap();
    assert!(health["error"]["message"].as_str().unwrap_or_default().contains("disk"), "{health}");
    // Reads still work.
    let r = http.get(format!("{base}/v1/jobs/{}", acked[0])).bearer_auth(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // SIGKILL, room made, started again: every acknowledged job is there.
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    let grown = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&disk).status().unwrap();
    assert!(grown.success());
    procs.0[0] = server(&db, port, ADMIN, &args, &dir, None);
    wait_healthy(&http, &base).await;
    for id in &acked {
        let r = http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "acknowledged job {id} was lost");
    }
    let spec = json!({"command": "true", "gpus_per_node": 0});
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "new work is taken once there is room");
    drop(procs);
    drop(_unmount);
    let _ = std::fs::remove_dir_all(&dir);
}
