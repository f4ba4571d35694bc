//! `drome bench openb` through the real binary: one seed, two cheap policies on the default pod
//! list, the documented JSON shape, and a clean error for an unknown policy.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

const TRACES: &str = "../shared/traces/alibaba-openb-v2023";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn drome(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("cannot run drome: {e}"));
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

fn traces_present() -> bool {
    let ok = root().join(TRACES).join("openb_pod_list_default.csv").exists();
    if !ok {
        eprintln!("skipping: {TRACES} not found");
    }
    ok
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn bench_openb_reports_runs_and_summary() {
    if !traces_present() {
        return;
    }
    let (code, out, err) = drome(&[
        "bench",
        "openb",
        "--policies",
        "random,gpupacking",
        "--seeds",
        "42",
        "--no-bound",
        "--jobs",
        "2",
        "-q",
        "--output",
        "json",
    ]);
    assert_eq!(code, Some(0), "drome bench openb failed: {err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    let runs = v["runs"].as_array().unwrap_or_else(|| panic!("no runs array: {v}"));
    assert_eq!(runs.len(), 2);
    for r in runs {
        assert_eq!(r["workload"], "default");
        assert_eq!(r["seed"], 42);
        assert!(r["policy"] == "random" || r["policy"] == "gpupacking", "{r}");
        let alloc = num(r, "allocation_pct");
        // The paper reports 87-92% for these two; anything far off means a broken run.
        assert!((80.0..=100.0).contains(&alloc), "{r}");
        assert!((0.0..=100.0).contains(&num(r, "frag_ratio_pct_at_90")), "{r}");
        assert!(num(r, "wall_ms") >= 0.0, "{r}");
    }
    let summary = v["summary"].as_array().unwrap_or_else(|| panic!("no summary array: {v}"));
    assert_eq!(summary.len(), 2);
    for s in summary {
        assert_eq!(s["workload"], "default");
        let mean = num(s, "allocation_pct_mean");
        let run = runs.iter().find(|r| r["policy"] == s["policy"]).unwrap_or_else(|| panic!("no run for {s}"));
        assert!((mean - num(run, "allocation_pct")).abs() < 1e-9, "{s}");
    }
    // GpuPacking beats Random on this trace, as in the paper.
    let of = |p: &str| summary.iter().find(|s| s["policy"] == p).map(|s| num(s, "allocation_pct_mean"));
    assert!(of("gpupacking") > of("random"), "{summary:?}");
}

#[test]
fn bench_openb_rejects_an_unknown_policy() {
    let (code, out, err) = drome(&["bench", "openb", "--policies", "nope", "--seeds", "42", "-q"]);
    assert_eq!(code, Some(1), "stdout: {out}\nstderr: {err}");
    assert!(err.contains("unknown policy 'nope'"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn the_study_hold_gains_at_the_end_and_loses_before() {
    if !traces_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("drome-bench-hold-{}", std::process::id()));
    let csv = dir.to_string_lossy().into_owned();
    let (code, out, err) = drome(&[
        "bench",
        "openb",
        "--policies",
        "drome,drome-hold",
        "--seeds",
        "42",
        "--no-bound",
        "-q",
        "--csv-dir",
        &csv,
    ]);
    assert_eq!(code, Some(0), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("drome (hold 70%)"), "{out}");
    let text = std::fs::read_to_string(dir.join("openb_default_allocation.csv")).expect("allocation curves written");
    let at = |policy: &str, pct: &str| -> f64 {
        text.lines()
            .map(|l| l.split(',').collect::<Vec<_>>())
            .find(|f| f.len() == 3 && f[0] == policy && f[1] == pct)
            .and_then(|f| f[2].parse().ok())
            .unwrap_or_else(|| panic!("no {policy} point at {pct}% in {text}"))
    };
    // Refusing requests that fit costs allocation while the cluster could still take them, and
    // pays only once more demand than the cluster holds has come.
    assert!(at("drome-hold", "90") < at("drome", "90") - 1.0, "at 90%: {text}");
    assert!(at("drome-hold", "130") > at("drome", "130") + 0.2, "at 130%: {text}");
    let _ = std::fs::remove_dir_all(&dir);
}
