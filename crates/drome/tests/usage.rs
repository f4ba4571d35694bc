//! Usage on real agents: a job's GPU-hours match its start and end to the millisecond, the
//! energy of its run matches its node's reported draw, a job whose node is lost and that runs
//! again counts both runs once each, and a `kill -9` of the server changes nothing of it.

mod common;

use common::{Procs, create_tenant, get_job, join_token, json_of, wait_healthy, wait_state};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const ADMIN: &str = "usage-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const NODES: [&str; 2] = ["hall-a-r001-n01", "hall-a-r001-n02"];

fn server(db: &str, port: u16, dir: &std::path::Path) -> std::process::Child {
    let args = ["--fleet", FLEET, "--agents", "--heartbeat-ms", "200", "--lease-ms", "1000"];
    common::server(db, port, ADMIN, &args, dir, None)
}

async fn usage(http: &reqwest::Client, base: &str, token: &str, query: &str) -> Value {
    json_of(http.get(format!("{base}/v1/usage?{query}")).bearer_auth(token)).await
}

fn row<'a>(report: &'a Value, key: &str) -> &'a Value {
    let rows = report["rows"].as_array().unwrap_or_else(|| panic!("not a report: {report}"));
    rows.iter().find(|r| r["key"] == key).unwrap_or_else(|| panic!("no row {key} in {report}"))
}

/// The milliseconds a job spent `running`, from its state history.
fn running_ms(job: &Value) -> i64 {
    let history = job["history"].as_array().unwrap();
    let mut total = 0;
    for (i, h) in history.iter().enumerate() {
        if h["state"] == "running" {
            let next = history.get(i + 1).unwrap_or_else(|| panic!("still running: {job}"));
            total += next["at_ms"].as_i64().unwrap() - h["at_ms"].as_i64().unwrap();
        }
    }
    total
}

#[tokio::test]
async fn usage_follows_runs_on_real_agents_and_survives_kill_9() {
    let dir = std::env::temp_dir().join(format!("drome-usage-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}/drome.db", dir.display());
    let port = common::free_port();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut procs = Procs(vec![server(&db, port, &dir)]);
    wait_healthy(&http, &base).await;
    let lab = create_tenant(&http, &base, ADMIN, "lab").await;
    let other = create_tenant(&http, &base, ADMIN, "other").await;
    let join = join_token(&http, &base, ADMIN).await;
    for node in NODES {
        procs.0.push(common::agent(None, &base, &join, node, &dir));
    }
    let t0 = Instant::now();
    loop {
        let nodes = json_of(http.get(format!("{base}/v1/nodes")).bearer_auth(ADMIN)).await;
        let up = nodes.as_array().unwrap().iter().filter(|n| n["power_watts"].as_f64().is_some()).count();
        if up == NODES.len() {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "agents never reported: {nodes}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Half a node for 3 s.
    let spec = json!({"name": "half", "gpus_per_node": 4, "command": "sleep", "args": ["3"]});
    let half = common::submit(&http, &base, &lab, &spec).await;
    let running = wait_state(&http, &base, &lab, half, "running").await;
    let node = running["placement"][0]["node"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let nodes = json_of(http.get(format!("{base}/v1/nodes")).bearer_auth(ADMIN)).await;
    let busy_watts =
        nodes.as_array().unwrap().iter().find(|n| n["name"] == node.as_str()).unwrap()["power_watts"].as_f64().unwrap();
    let done = wait_state(&http, &base, &lab, half, "succeeded").await;
    let ran_ms = done["finished_at_ms"].as_i64().unwrap() - done["started_at_ms"].as_i64().unwrap();
    assert_eq!(ran_ms, running_ms(&done));

    // The admin sets a price list with the CLI; a tenant may read it, not set it.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["prices", "set", "--url", &base, "--token", ADMIN, "--gpu-hour-default", "2.5", "--output", "json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let prices = json_of(http.get(format!("{base}/v1/prices")).bearer_auth(&lab)).await;
    assert_eq!((prices["gpu_hour_default"].as_f64(), prices["currency"].as_str()), (Some(2.5), Some("EUR")));
    let refused = http.put(format!("{base}/v1/prices")).bearer_auth(&lab).json(&prices).send().await.unwrap();
    assert_eq!(refused.status(), 403);

    // GPU-hours to the millisecond; energy as reported, once the meter's sums are written.
    let t0 = Instant::now();
    let report = loop {
        let r = usage(&http, &base, &lab, "by=job").await;
        if row(&r, &half.to_string())["measured_share"].as_f64().unwrap() > 0.8 {
            break r;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "energy never measured: {r}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let r = row(&report, &half.to_string());
    let hours = ran_ms as f64 / 3.6e6;
    assert!((r["gpu_hours"].as_f64().unwrap() - 4.0 * hours).abs() < 1e-12, "{r} against {ran_ms} ms");
    assert_eq!(r["runs"], 1);
    assert!((r["cost"].as_f64().unwrap() - 4.0 * hours * 2.5).abs() < 1e-9, "{r}");
    // Half the node's GPUs: half its draw, while it was measured (within a watt-hour).
    let measured_kwh = r["energy_kwh_measured"].as_f64().unwrap();
    let expected_kwh = busy_watts / 2.0 * hours * r["measured_share"].as_f64().unwrap() / 1000.0;
    assert!(
        (measured_kwh - expected_kwh).abs() < 0.001,
        "{measured_kwh} kWh measured, {expected_kwh} from {busy_watts} W"
    );
    assert!(measured_kwh > 0.0);
    // Its site's facility and the grid's carbon come with it (the shipped French grid year).
    let (facility, co2) = (r["facility_kwh"].as_f64().unwrap(), r["co2_kg"].as_f64().unwrap());
    let it_kwh = measured_kwh + r["energy_kwh_estimated"].as_f64().unwrap();
    assert!(facility > 0.0 && facility < it_kwh, "{r}");
    assert!(co2 > 0.0 && co2 < (it_kwh + facility) * 1.0, "under 1 kg/kWh: {r}");

    // A whole node, restarted on node loss: its node's agent is killed while it runs, it runs
    // again on the other node, under the same id; the two runs count once each.
    let spec = json!({"name": "whole", "gpus_per_node": 8, "command": "sleep", "args": ["60"],
        "restart_policy": "on-node-loss", "max_restarts": 1});
    let whole = common::submit(&http, &base, &other, &spec).await;
    let first = wait_state(&http, &base, &other, whole, "running").await;
    let first_node = first["placement"][0]["node"].as_str().unwrap().to_string();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let index = NODES.iter().position(|n| *n == first_node).unwrap();
    let agent = &mut procs.0[1 + index];
    agent.kill().unwrap();
    agent.wait().unwrap();
    let t0 = Instant::now();
    loop {
        let j = get_job(&http, &base, &other, whole).await.unwrap();
        if j["state"] == "running" && j["attempts"] == 2 {
            assert_ne!(j["placement"][0]["node"].as_str().unwrap(), first_node);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "never ran again: {j}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    http.post(format!("{base}/v1/jobs/{whole}/cancel")).bearer_auth(&other).send().await.unwrap();
    let cancelled = wait_state(&http, &base, &other, whole, "cancelled").await;
    let whole_ms = running_ms(&cancelled);

    // Everything ended: wait for the meter's last sums, then read every tenant's usage.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let now = json_of(http.get(format!("{base}/v1/jobs/{whole}")).bearer_auth(&other)).await["finished_at_ms"]
        .as_i64()
        .unwrap_or(0)
        .max(done["finished_at_ms"].as_i64().unwrap())
        + 10_000;
    let since = now - 86_400_000;
    let window = format!("since_ms={since}&until_ms={now}");
    let by_job = usage(&http, &base, ADMIN, &format!("by=job&{window}")).await;
    let w = row(&by_job, &whole.to_string());
    assert_eq!((w["runs"].as_i64(), w["running"].as_i64(), w["tenant"].as_str()), (Some(2), Some(0), Some("other")));
    let whole_hours = 8.0 * whole_ms as f64 / 3.6e6;
    assert!((w["gpu_hours"].as_f64().unwrap() - whole_hours).abs() < 1e-12, "{w} against {whole_ms} ms running");
    assert!(w["measured_share"].as_f64().unwrap() < 1.0, "the lost node's last moments were not reported: {w}");
    // A tenant sees its own only, and may not ask for another's.
    let own = usage(&http, &base, &other, &format!("by=tenant&{window}")).await;
    assert_eq!(own["rows"].as_array().unwrap().len(), 1, "{own}");
    let refused = http.get(format!("{base}/v1/usage?tenant=lab")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let bad = http.get(format!("{base}/v1/usage?by=week")).bearer_auth(&other).send().await.unwrap();
    assert_eq!(bad.status(), 422);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"]["field"], "by");

    // kill -9 the server and start it again on its store: the same usage, nothing counted twice.
    let by_tenant = usage(&http, &base, ADMIN, &format!("by=tenant&{window}")).await;
    procs.0[0].kill().unwrap();
    procs.0[0].wait().unwrap();
    procs.0[0] = server(&db, port, &dir);
    wait_healthy(&http, &base).await;
    assert_eq!(usage(&http, &base, ADMIN, &format!("by=job&{window}")).await, by_job);
    assert_eq!(usage(&http, &base, ADMIN, &format!("by=tenant&{window}")).await, by_tenant);

    // The CLI prints the same, as CSV for a spreadsheet.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["usage", "--url", &base, "--token", ADMIN, "--by", "tenant", "--csv"])
        .arg("--since")
        .arg(since.to_string())
        .arg("--until")
        .arg(now.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = String::from_utf8(out.stdout).unwrap();
    assert!(csv.starts_with("tenant,tenant,runs,running,gpu_hours"), "{csv}");
    assert_eq!(csv.lines().count(), 4, "header, lab, other, total: {csv}");
    // A budget set and read with the CLI.
    let drome = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
            .args(args)
            .args(["--url", &base, "--token", ADMIN, "--output", "json"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let set = drome(&["budget", "set", "lab", "--monthly", "100"]);
    assert_eq!((set["monthly"].as_f64(), set["tenant"].as_str()), (Some(100.0), Some("lab")), "{set}");
    let read = drome(&["budget", "--tenant", "lab"]);
    assert_eq!(read["monthly"], set["monthly"]);
    assert!(read["spent"].as_f64().unwrap() > 0.0, "its half-node job this month: {read}");
    // lab's invoice for the month: its lines add up to its cost.
    let invoice = drome(&["invoice", "--tenant", "lab"]);
    let lab_cost = row(&by_tenant, "lab")["cost"].as_f64().unwrap();
    let lines: f64 = invoice["lines"].as_array().unwrap().iter().map(|l| l["amount"].as_f64().unwrap()).sum();
    assert!((invoice["total"].as_f64().unwrap() - lab_cost).abs() < 1e-6, "{invoice} against {lab_cost}");
    assert!((lines - lab_cost).abs() < 1e-6, "{invoice}");

    // The history of finished jobs, as sacct lists it: how each ended, its runs and cost.
    let (since_arg, until_arg) = (since.to_string(), now.to_string());
    let history = drome(&["history", "--since", &since_arg, "--until", &until_arg]);
    let rows = history["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{history}");
    let h = rows.iter().find(|r| r["job_id"] == half).unwrap();
    assert_eq!(
        (h["state"].as_str(), h["exit_code"].as_i64(), h["runs"].as_u64()),
        (Some("succeeded"), Some(0), Some(1))
    );
    assert_eq!(h["tenant"], "lab");
    assert!((h["elapsed_s"].as_f64().unwrap() - ran_ms as f64 / 1000.0).abs() < 1e-9, "{h}");
    assert_eq!(h["node_list"][0].as_str(), Some(node.as_str()));
    let half_cost = row(&by_job, &half.to_string())["cost"].as_f64().unwrap();
    assert!((h["cost"].as_f64().unwrap() - half_cost).abs() < 1e-9, "{h} against {half_cost}");
    let w = rows.iter().find(|r| r["job_id"] == whole).unwrap();
    assert_eq!((w["state"].as_str(), w["runs"].as_u64(), w["gpus"].as_f64()), (Some("cancelled"), Some(2), Some(8.0)));
    // A tenant's history holds its own jobs only.
    let own = json_of(http.get(format!("{base}/v1/history?since_ms={since}&until_ms={now}")).bearer_auth(&lab)).await;
    assert_eq!(own["rows"].as_array().unwrap().len(), 1, "{own}");
    assert_eq!(own["rows"][0]["job_id"], half);
    // Paged one at a time: the first page says there is more, the next starts after it.
    let page = |q: String| {
        let http = http.clone();
        let url = format!("{base}/v1/history?until_ms={now}&limit=1&{q}");
        async move { json_of(http.get(url).bearer_auth(ADMIN)).await }
    };
    let first = page(format!("since_ms={since}")).await;
    assert_eq!((first["rows"].as_array().unwrap().len(), first["truncated"].as_bool()), (1, Some(true)), "{first}");
    let (at, id) = (first["rows"][0]["finished_ms"].as_i64().unwrap(), first["rows"][0]["job_id"].as_i64().unwrap());
    let second = page(format!("since_ms={at}&after_id={id}")).await;
    assert_eq!(second["rows"].as_array().unwrap().len(), 1, "{second}");
    assert_ne!(second["rows"][0]["job_id"], first["rows"][0]["job_id"]);
    assert_eq!(second["truncated"], false);
    let bad = http.get(format!("{base}/v1/history?limit=0")).bearer_auth(&lab).send().await.unwrap();
    assert_eq!(bad.status(), 422);

    // The site's month: one row per site and month, with its energy, facility and heat.
    let sites = usage(&http, &base, ADMIN, &format!("by=site-month&{window}")).await;
    let first = &sites["rows"][0];
    let key = first["key"].as_str().unwrap();
    let (y, m, _) = api::utc_date(since);
    assert!(
        key.ends_with(&format!(" {y:04}-{m:02}"))
            || key.ends_with(&format!(" {:04}-{:02}", api::utc_date(now).0, api::utc_date(now).1)),
        "{sites}"
    );
    assert!(
        first["heat_sold_kwh"].as_f64().unwrap() >= 0.0 && first["grid_cost_eur"].as_f64().unwrap() > 0.0,
        "{sites}"
    );
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
