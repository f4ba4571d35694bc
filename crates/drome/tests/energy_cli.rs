//! `drome energy` end to end: the JSON report of the small fleet, the table, and refusals.

use std::path::Path;
use std::process::Command;

fn drome(args: &[&str]) -> std::process::Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    Command::new(env!("CARGO_BIN_EXE_drome")).args(args).current_dir(root).output().unwrap()
}

#[test]
fn small_fleet_json_report() {
    let out = drome(&["energy", "--fleet", "fleets/small.toml", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    insta::assert_json_snapshot!(value);
}

#[test]
fn all_coolings_side_by_side_and_ordered() {
    let out = drome(&["energy", "--fleet", "fleets/small.toml", "--cooling", "all", "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reports = value["reports"].as_array().unwrap();
    let pue: Vec<f64> = reports.iter().map(|r| r["pue"].as_f64().unwrap()).collect();
    let names: Vec<&str> = reports.iter().map(|r| r["cooling"].as_str().unwrap()).collect();
    assert_eq!(names, ["air", "liquid", "immersion"]);
    assert!(pue[2] < pue[1] && pue[1] < pue[0] && pue[2] > 1.0, "{pue:?}");

    let out = drome(&["energy", "--fleet", "fleets/small.toml", "--cooling", "all", "--utilization", "0.5"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for row in [
        "PUE",
        "IT MWh",
        "facility MWh",
        "peak MW",
        "grid cap MW",
        "heat exported MWh",
        "heat revenue EUR",
        "energy cost EUR",
        "CO2 t",
    ] {
        assert!(table.contains(row), "{row} missing from\n{table}");
    }
}

#[test]
fn series_file_sets_the_span_and_bad_rows_name_line_and_column() {
    let dir = std::env::temp_dir().join(format!("drome-energy-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("series.csv");
    std::fs::write(&good, "t_s,gpu_allocation,queue_len,running\n0,0.5,0,1\n3600,1.0,0,2\n7200,1.0,0,2\n").unwrap();
    let out =
        drome(&["energy", "--fleet", "fleets/small.toml", "--series", good.to_str().unwrap(), "--output", "json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["reports"][0]["hours"].as_f64(), Some(2.0));
    assert_eq!(value["reports"][0]["mean_allocation"].as_f64(), Some(0.75));

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "t_s,gpu_allocation\n0,0.5\n60,lots\n").unwrap();
    let out = drome(&["energy", "--fleet", "fleets/small.toml", "--series", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3, column 2"), "{err}");

    let out = drome(&["energy", "--fleet", "fleets/small.toml", "--utilization", "1.5"]);
    assert!(!out.status.success());
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn deferrable_work_is_held_for_cheaper_hours_and_bad_flags_are_named() {
    let trace = "crates/trace/tests/fixtures/tiresias_small.csv";
    let base = ["sim", "--fleet", "fleets/small.toml", "--trace", trace, "--loop-days", "3", "-q"];
    let run = |extra: &[&str]| {
        let out = drome(&[&base[..], extra, &["--output", "json"]].concat());
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let plain = run(&["--cooling", "immersion"]);
    let held = run(&["--deferrable-share", "0.5", "--defer-for", "price"]);
    assert_eq!(plain["deferrable_jobs"].as_u64(), Some(0));
    let jobs = held["jobs"].as_u64().unwrap();
    let deferrable = held["deferrable_jobs"].as_u64().unwrap();
    assert!(deferrable > jobs / 3 && deferrable < 2 * jobs / 3, "{deferrable} of {jobs}");
    assert!(held["deferred_jobs"].as_u64().unwrap() > 0);
    assert!(held["mean_deferral_s"].as_f64().unwrap() > 0.0);
    assert!(held["mean_wait_s"].as_f64().unwrap() > plain["mean_wait_s"].as_f64().unwrap());
    assert_eq!(held["cap_violations"].as_u64(), Some(0));

    for (flag, value, says) in [
        ("--defer-for", "moonlight", "--defer-for"),
        ("--deferrable-share", "1.5", "--deferrable-share"),
        ("--loop-days", "0", "--loop-days"),
        ("--power-cap-frac", "0.01", "below what the site draws with every GPU idle"),
    ] {
        let out = drome(&[&base[..], &[flag, value]].concat());
        assert!(!out.status.success(), "{flag} {value} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{flag} {value}: {err}");
    }
}

#[test]
fn sim_reads_a_users_grid_year_and_names_its_bad_line() {
    let dir = std::env::temp_dir().join(format!("drome-sim-grid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let trace = "crates/trace/tests/fixtures/tiresias_small.csv";
    let cheap = dir.join("cheap.csv");
    let dear = dir.join("dear.csv");
    let year = |price: u32| {
        let mut t = String::from("hour,price_eur_per_mwh,co2_g_per_kwh\n");
        for h in 0..8760 {
            t.push_str(&format!("{h},{price},50\n"));
        }
        t
    };
    std::fs::write(&cheap, year(10)).unwrap();
    std::fs::write(&dear, year(100)).unwrap();
    let cost = |grid: &std::path::Path| {
        let out = drome(&[
            "sim",
            "--fleet",
            "fleets/small.toml",
            "--trace",
            trace,
            "--grid",
            grid.to_str().unwrap(),
            "--output",
            "json",
            "-q",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["energy_cost_eur"].as_f64().unwrap()
    };
    let (c, d) = (cost(&cheap), cost(&dear));
    assert!(c > 0.0 && (d / c - 10.0).abs() < 1e-6, "{c} vs {d}");

    let bad = dir.join("bad.csv");
    std::fs::write(&bad, "hour,price_eur_per_mwh,co2_g_per_kwh\n0,50,40\n1,50,-3\n").unwrap();
    let out = drome(&["sim", "--fleet", "fleets/small.toml", "--trace", trace, "--grid", bad.to_str().unwrap(), "-q"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv") && err.contains("co2_g_per_kwh"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}
