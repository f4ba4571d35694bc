//! The admin sets tenants' GPU, CPU and memory quotas with the CLI against a real `drome server`:
//! each limit is typed as people type them (`4`, `0.5`, `64G`), what is not given stays as it
//! was, and the tenant reads its quota and usage back.

mod common;

use common::{Procs, free_port, server, wait_healthy};
use serde_json::Value;
use std::process::Command;

const ADMIN: &str = "quota-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

fn drome(base: &str, token: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(args)
        .env("DROME_URL", base)
        .env("DROME_TOKEN", token)
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn json(base: &str, token: &str, args: &[&str]) -> Value {
    let (ok, out, err) = drome(base, token, args);
    assert!(ok, "drome {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("drome {args:?} printed no JSON ({e}): {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_set_piece_by_piece_and_read_back() {
    let dir = std::env::temp_dir().join(format!("drome-cli-quota-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _procs = Procs(vec![server(&db, port, ADMIN, &["--fleet", FLEET], &dir, None)]);
    let http = reqwest::Client::new();
    wait_healthy(&http, &base).await;

    let created = json(&base, ADMIN, &["tenants", "create", "lab", "--cpu-quota", "4", "--output", "json"]);
    assert_eq!(created["tenant"]["cpu_milli_quota"], 4000);
    let lab = created["token"].as_str().unwrap().to_string();
    // Memory, then GPUs: the CPU quota set at creation stays.
    json(&base, ADMIN, &["quota", "set", "lab", "--memory", "64G", "--output", "json"]);
    let t = json(&base, ADMIN, &["quota", "set", "lab", "16", "--output", "json"]);
    assert_eq!(
        (t["gpu_quota"].as_u64(), t["cpu_milli_quota"].as_u64(), t["memory_mib_quota"].as_u64()),
        (Some(16), Some(4000), Some(65_536)),
        "{t}"
    );
    let t = json(&base, ADMIN, &["quota", "set", "lab", "--cpus", "unlimited", "--output", "json"]);
    assert_eq!(
        (t["gpu_quota"].as_u64(), t.get("cpu_milli_quota"), t["memory_mib_quota"].as_u64()),
        (Some(16), None, Some(65_536)),
        "{t}"
    );

    // Bad input is named; nothing to set is said so.
    let (ok, _, err) = drome(&base, ADMIN, &["quota", "set", "lab", "--memory", "lots"]);
    assert!(!ok && err.contains("'lots' is not a size"), "{err}");
    let (ok, _, err) = drome(&base, ADMIN, &["quota", "set", "lab"]);
    assert!(!ok && err.contains("nothing to set"), "{err}");
    let (ok, _, err) = drome(&base, ADMIN, &["quota", "set", "nobody", "--cpus", "2"]);
    assert!(!ok && err.contains("no tenant 'nobody'"), "{err}");

    // The tenant sees its limits, in a table and as JSON.
    let (ok, table, err) = drome(&base, &lab, &["quota"]);
    assert!(ok, "{err}");
    for line in ["GPUs", "CPUs", "memory", "64G", "unlimited"] {
        assert!(table.contains(line), "{line} missing from:\n{table}");
    }
    let q = json(&base, &lab, &["quota", "--output", "json"]);
    assert_eq!((q["memory_mib_quota"].as_u64(), q["cpu_milli_used"].as_u64()), (Some(65_536), Some(0)), "{q}");

    // The token: rotated (the old one then fails), revoked; every admin step is audited.
    let rotated = json(&base, ADMIN, &["tenants", "token", "rotate", "lab", "--ttl-s", "3600", "--output", "json"]);
    let new = rotated["token"].as_str().unwrap().to_string();
    assert!(rotated["tenant"]["token_expires_at_ms"].as_i64().is_some(), "{rotated}");
    let (ok, _, err) = drome(&base, &lab, &["quota"]);
    assert!(!ok && err.contains("unknown token"), "the old token still works: {err}");
    json(&base, &new, &["quota", "--output", "json"]);
    let (ok, out, err) = drome(&base, ADMIN, &["tenants", "token", "revoke", "lab"]);
    assert!(ok && out.contains("revoked"), "{err}");
    let (ok, _, _) = drome(&base, &new, &["quota"]);
    assert!(!ok, "a revoked token still works");
    let (ok, out, err) = drome(&base, ADMIN, &["tenants", "remove", "lab"]);
    assert!(ok && out.contains("removed"), "{err}");
    let log = json(&base, ADMIN, &["audit", "--output", "json"]);
    let actions: Vec<&str> = log.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "tenant.remove",
            "tenant.token.revoke",
            "tenant.token.rotate",
            "quota.set",
            "quota.set",
            "quota.set",
            "tenant.create"
        ]
    );
    let (ok, table, _) = drome(&base, ADMIN, &["audit"]);
    assert!(ok && table.contains("tenant.remove") && table.contains("ACTION"), "{table}");
    let _ = std::fs::remove_dir_all(&dir);
}
