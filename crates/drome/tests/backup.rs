//! `drome backup` copies the embedded store while a real server runs; `drome restore` puts the
//! copy in place of a store (refusing to replace one without `--force`, and a file that is not a
//! drome store); a server started on it has every job the copy held. PostgreSQL is refused with
//! the tool to use instead.

mod common;

use common::{Procs, create_tenant, free_port, server, submit, wait_healthy};
use serde_json::{Value, json};
use std::process::Command;
use std::time::Duration;

const ADMIN: &str = "backup-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

fn drome(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drome")).args(args).env_remove("DROME_DB").output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_copied_while_serving_comes_back_whole() {
    let dir = std::env::temp_dir().join(format!("drome-backup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut procs = Procs(vec![server(&db, port, ADMIN, &["--fleet", FLEET], &dir, None)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(
            submit(&http, &base, &token, &json!({"name": format!("j{i}"), "command": "true", "gpus_per_node": 0}))
                .await,
        );
    }

    // Copied while the server serves.
    let copy = dir.join("copy.db");
    let (ok, out) = drome(&["backup", "--db", &db, copy.to_str().unwrap()]);
    assert!(ok, "{out}");
    let (ok, out) = drome(&["backup", "--db", &db, copy.to_str().unwrap()]);
    assert!(!ok && out.contains("exists already"), "{out}");
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();

    // Restored in place of another store; a bad file never replaces one.
    let restored_db = format!("sqlite://{}", dir.join("restored").join("drome.db").display());
    let junk = dir.join("junk.db");
    std::fs::write(&junk, b"not a database").unwrap();
    let (ok, out) = drome(&["restore", junk.to_str().unwrap(), "--db", &restored_db]);
    assert!(!ok && out.contains("not a drome store"), "{out}");
    let (ok, out) = drome(&["restore", copy.to_str().unwrap(), "--db", &restored_db]);
    assert!(ok && out.contains("50 jobs"), "{out}");
    let (ok, out) = drome(&["restore", copy.to_str().unwrap(), "--db", &restored_db]);
    assert!(!ok && out.contains("--force"), "{out}");
    let (ok, out) = drome(&["restore", copy.to_str().unwrap(), "--db", &restored_db, "--force"]);
    assert!(ok && out.contains("before-restore"), "{out}");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    procs.0[0] = server(&restored_db, port, ADMIN, &["--fleet", FLEET], &dir, None);
    wait_healthy(&http, &base).await;
    for id in &ids {
        let v: Value =
            http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        assert_eq!(v["id"].as_i64(), Some(*id), "job {id} missing after restore: {v}");
    }

    let (ok, out) = drome(&["backup", "--db", "postgres://postgres@127.0.0.1/test", "x.db"]);
    assert!(!ok && out.contains("pg_dump"), "{out}");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
