//! `drome sim`, `drome fleet show` and `drome trace stats` through the real binary.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn drome(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_drome")).args(args).current_dir(root()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn json(args: &[&str]) -> Value {
    let (code, out, err) = drome(args);
    assert_eq!(code, 0, "drome {args:?} failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

#[test]
fn sim_on_a_fleet_file_reports_the_documented_fields() {
    let trace = fixture("jobs.csv");
    let v =
        json(&["sim", "--fleet", "fleets/small.toml", "--trace", &trace, "--policy", "fifo", "--output", "json", "-q"]);
    for key in [
        "jobs",
        "completed",
        "never_fit",
        "mean_jct_s",
        "p50_jct_s",
        "p99_jct_s",
        "mean_wait_s",
        "makespan_s",
        "gpu_utilization",
        "fleet_gpus",
        "policy",
        "seed",
    ] {
        assert!(v.get(key).is_some(), "missing {key} in {v}");
    }
    assert_eq!(v["jobs"], 7);
    assert_eq!(v["fleet_gpus"], 48);
    // The 64-GPU job cannot fit 48 GPUs; the A100 job fits the A100 nodes.
    assert_eq!(v["never_fit"], 1);
    assert_eq!(v["completed"], 6);
    assert_eq!(v["policy"], "fifo");
}

#[test]
fn sim_with_load_sizes_the_fleet_and_writes_csv_and_plot() {
    let dir = std::env::temp_dir().join(format!("drome-cli-sim-{}", std::process::id()));
    let csv = dir.join("series.csv");
    let png = dir.join("plot.png");
    let trace = fixture("jobs.csv");
    let v = json(&[
        "sim",
        "--load",
        "0.5",
        "--trace",
        &trace,
        "--output",
        "json",
        "-q",
        "--csv",
        csv.to_str().unwrap(),
        "--plot",
        png.to_str().unwrap(),
    ]);
    // The generated fleet is of H200 nodes and fits the 64-GPU job; only the A100-only job never fits.
    assert_eq!(v["never_fit"], 1);
    assert_eq!(v["completed"], 6);
    assert_eq!(v["fleet_gpus"].as_u64().unwrap() % 8, 0);
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("t_s,gpu_allocation,queue_len,running"), "{text}");
    assert!(text.lines().count() > 3);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..4], b"\x89PNG");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn same_seed_same_json() {
    let trace = fixture("jobs.csv");
    let args = [
        "sim",
        "--load",
        "0.9",
        "--trace",
        &trace,
        "--policy",
        "fifo-bestfit",
        "--seed",
        "7",
        "--output",
        "json",
        "-q",
    ];
    assert_eq!(json(&args), json(&args));
}

#[test]
fn fleet_show_and_trace_stats_summarise() {
    let v = json(&["fleet", "show", "fleets/valence.toml", "--output", "json"]);
    assert_eq!(v["gpus"], 4096);
    assert_eq!(v["sites"][0]["cooling"], "immersion");
    let (code, out, _) = drome(&["fleet", "show", "fleets/valence.toml"]);
    assert_eq!(code, 0);
    assert!(out.contains("H200") && out.contains("immersion"), "{out}");
    let v = json(&["trace", "stats", &fixture("jobs.csv"), "--output", "json"]);
    assert_eq!(v["jobs"], 7);
    assert_eq!(v["tenants"], 3);
    assert_eq!(v["max_gpus_per_job"], 64);
}

#[test]
fn bad_input_gets_a_clear_error_not_a_panic() {
    let (code, _, err) = drome(&["sim", "--load", "0.8", "--trace", &fixture("bad_jobs.csv"), "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad_jobs.csv:3") && err.contains("duration"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = drome(&["sim", "--fleet", "no/such/fleet.toml", "--trace", &fixture("jobs.csv"), "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("no/such/fleet.toml"), "{err}");
    let (code, _, err) = drome(&["sim", "--fleet", &fixture("jobs.csv"), "--trace", &fixture("jobs.csv"), "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("not a fleet"), "{err}");
    let (code, _, err) = drome(&["sim", "--load", "0.8", "--trace", &fixture("jobs.csv"), "--policy", "nope", "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown policy 'nope'") && err.contains("fifo"), "{err}");
    let (code, _, err) = drome(&["sim", "--load", "0", "--trace", &fixture("jobs.csv"), "-q"]);
    assert_eq!(code, 1);
    assert!(err.contains("--load"), "{err}");
}

#[test]
fn quota_shares_are_given_by_tenant_name_and_bad_ones_are_named() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("drome-quota-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = dir.join("jobs.csv");
    let mut text = String::from("submit_time,num_gpus,duration,tenant\n");
    for i in 0..40 {
        text.push_str(&format!("{},{},{},{}\n", i * 10, 8, 3600, if i % 2 == 0 { "alice" } else { "bob" }));
    }
    std::fs::write(&trace, text).unwrap();
    let run = |quota: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
            .args(["sim", "--fleet", "fleets/small.toml", "--trace", trace.to_str().unwrap(), "--policy", "quota"])
            .args(["--quota", quota, "--output", "json", "-q"])
            .current_dir(&root)
            .output()
            .unwrap()
    };
    let wait_of = |out: &std::process::Output, tenant: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = v["tenants"].as_array().unwrap();
        rows.iter().find(|r| r["name"] == tenant).unwrap()["mean_wait_s"].as_f64().unwrap()
    };
    let alice = run("alice=40,bob=0");
    assert!(alice.status.success(), "{}", String::from_utf8_lossy(&alice.stderr));
    let bob = run("alice=0,bob=40");
    assert!(bob.status.success());
    // Whoever holds the guarantee waits less than when the other one holds it.
    assert!(wait_of(&alice, "alice") < wait_of(&bob, "alice"));
    assert!(wait_of(&bob, "bob") < wait_of(&alice, "bob"));

    let out = run("carol=8");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no tenant 'carol'") && err.contains("alice"), "{err}");
    let out = run("alice=lots");
    assert!(String::from_utf8_lossy(&out.stderr).contains("tenant 'alice'"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_fleet_of_two_sites_reports_each_sites_energy() {
    let trace = fixture("jobs.csv");
    let args =
        ["sim", "--fleet", "fleets/small.toml", "--trace", &trace, "--policy", "fifo", "--power-cap-frac", "0.9"];
    let (code, out, err) = drome(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("lab-oil") && out.contains("lab-air") && out.contains("immersion"), "{out}");
    let mut with_json = args.to_vec();
    with_json.extend(["--output", "json", "-q"]);
    let v = json(&with_json);
    let sites = v["site_energy"].as_array().unwrap_or_else(|| panic!("no site_energy in {v}"));
    assert_eq!(sites.len(), 2);
    let sum: f64 = sites.iter().map(|s| s["it_mwh"].as_f64().unwrap()).sum();
    let total = v["it_mwh"].as_f64().unwrap();
    assert!(total > 0.0 && (sum - total).abs() <= 1e-9 * total, "{sum} vs {total}");
}

#[test]
fn a_bad_price_cap_is_refused_with_its_form() {
    let trace = fixture("jobs.csv");
    for bad in ["120", "abc:0.7", "120:1.5"] {
        let (code, _, err) =
            drome(&["sim", "--fleet", "fleets/small.toml", "--trace", &trace, "--policy", "fifo", "--price-cap", bad]);
        assert_ne!(code, 0, "{bad} accepted");
        assert!(err.contains("EUR_PER_MWH:CAP") && err.contains(bad), "{err}");
    }
    let v = json(&[
        "sim",
        "--fleet",
        "fleets/small.toml",
        "--trace",
        &trace,
        "--policy",
        "fifo",
        "--price-cap",
        "0:0.7",
        "--output",
        "json",
        "-q",
    ]);
    assert!((v["mean_gpu_cap"].as_f64().unwrap() - 0.7).abs() < 1e-9, "{v}");
}

#[test]
fn sim_dispatches_over_the_example_federation_and_refuses_bad_flags() {
    let trace = fixture("jobs.csv");
    let v = json(&[
        "sim",
        "--fleet",
        "fleets/france.toml",
        "--trace",
        &trace,
        "--policy",
        "drome",
        "--dispatch",
        "capacity,heat",
        "--data-gb-per-gpu",
        "100",
        "--output",
        "json",
        "-q",
    ]);
    let runs = v["federation"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for r in runs {
        let jobs = r["jobs"].as_u64().unwrap();
        let sent: u64 = r["sites"].as_array().unwrap().iter().map(|s| s["jobs_sent"].as_u64().unwrap()).sum();
        assert_eq!(sent + r["refused"].as_u64().unwrap(), jobs, "{r}");
        assert_eq!(r["sites"].as_array().unwrap().len(), 4);
        assert_eq!(r["cap_violations"].as_u64(), Some(0));
    }
    let (code, _, err) =
        drome(&["sim", "--fleet", "fleets/france.toml", "--trace", &trace, "--dispatch", "nearest", "-q"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown dispatch policy 'nearest'"), "{err}");
    let (code, _, err) = drome(&[
        "sim",
        "--fleet",
        "fleets/france.toml",
        "--trace",
        &trace,
        "--dispatch",
        "heat",
        "--policy",
        "fifo,drome",
        "-q",
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("one --policy"), "{err}");
}
