//! The dynamic power mode end to end: the real `drome server --agents --power-mode dynamic` and
//! two `drome agent` processes on a site whose grid cap carries one busy node at the worst case
//! but not two. Both jobs run, each node's agent applies the GPU cap (and, with host caps, the
//! CPU package limit) the scheduler asks for, the site's worst case at those caps fits its cap,
//! and the caps are lifted when the work ends.

mod common;

use common::{Procs, create_tenant, free_port, join_token, json_of, wait_healthy};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ADMIN: &str = "power-e2e-admin";
const NODES: [&str; 2] = ["hall-a-r001-n01", "hall-a-r001-n02"];
const BOARD_WATTS: f64 = 700.0;

fn fleet_toml(cap_mw: Option<f64>) -> String {
    let cap = cap_mw.map(|c| format!("grid_power_cap_mw = {c}\n")).unwrap_or_default();
    format!(
        "name = \"power-e2e\"\n\n[node_types.hgx-h200]\ncpu_milli = 224000\nmemory_mib = 2097152\ngpus = 8\n\
         gpu_model = \"H200\"\n\n[[sites]]\nname = \"grid\"\ncooling = \"air\"\n{cap}\n[[sites.halls]]\n\
         name = \"hall-a\"\n[[sites.halls.racks]]\ncount = 1\nnodes_per_rack = 2\nnode_type = \"hgx-h200\"\n"
    )
}

/// The cap: idle draw plus one and a half busy nodes at the worst case of the hottest hour.
fn cap_mw() -> f64 {
    let fleet = model::fleet_toml::parse_fleet(&fleet_toml(None)).unwrap();
    let model = energy::EnergyModel::new(&fleet, None, &energy::HeatOptions::default());
    let hottest = energy::TemperatureYear::valence().unwrap().hottest_celsius();
    let f = model.guard_figures(&fleet, hottest);
    (f.site_idle_watts[0] + 1.5 * 8.0 * f.nodes[0].full_watts_per_gpu) / 1e6
}

fn spawn(args: &[&str], log: &Path) -> Child {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
    Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(args)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn get(http: &reqwest::Client, url: String, token: &str) -> Value {
    http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

async fn nodes(http: &reqwest::Client, base: &str, token: &str) -> serde_json::Map<String, Value> {
    let v = get(http, format!("{base}/v1/nodes"), token).await;
    v.as_array().unwrap().iter().map(|n| (n["name"].as_str().unwrap().to_string(), n.clone())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_mode_runs_more_work_under_a_grid_cap_with_caps_the_agents_apply() {
    let with_hosts = run_two_jobs_under_the_cap(true).await;
    // Without host caps the GPUs alone carry the cut, so they run lower.
    let gpus_alone = run_two_jobs_under_the_cap(false).await;
    for (a, b) in with_hosts.iter().zip(&gpus_alone) {
        assert!(a > b, "GPU caps with host caps {with_hosts:?}, without {gpus_alone:?}");
    }
}

/// Two whole-node jobs on the two nodes, under a cap that carries one and a half.
async fn run_two_jobs_under_the_cap(host_caps: bool) -> Vec<f64> {
    let dir: PathBuf = std::env::temp_dir().join(format!("drome-power-e2e-{}-{}", std::process::id(), free_port()));
    let cap = cap_mw();
    let mut extra = vec!["--power-mode", "dynamic"];
    if !host_caps {
        extra.push("--no-host-caps");
    }
    let (procs, base, token) = start_with_agents(&dir, Some(cap), &extra).await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();

    // Two whole-node jobs: admission alone would run one (the worst case of two busy nodes is
    // above the cap); with caps both run.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let spec = json!({"command": "sleep", "args": ["60"], "gpus_per_node": 8});
        let v = json_of(http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec)).await;
        ids.push(v["id"].as_i64().unwrap_or_else(|| panic!("submit failed: {v}")));
    }
    let t0 = Instant::now();
    loop {
        let mut running = 0;
        for id in &ids {
            running += usize::from(get(&http, format!("{base}/v1/jobs/{id}"), &token).await["state"] == "running");
        }
        if running == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "both jobs never ran at once");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Every node runs under a cap below the board limit and above the floor, and the agents say
    // they apply it; with host caps, their CPU packages are held to their typical draw too.
    let ns = nodes(&http, &base, &token).await;
    let fleet_model = model::fleet_toml::parse_fleet(&fleet_toml(None)).unwrap();
    let cpu_typical = energy::it_power::NodePower::of(&fleet_model, model::NodeId(0)).cpu_typical_watts.floor();
    let mut caps = Vec::new();
    for n in NODES {
        let w = ns[n]["gpu_power_cap_watts"].as_f64().unwrap_or_else(|| panic!("{n} runs uncapped: {}", ns[n]));
        assert!((0.5 * BOARD_WATTS..BOARD_WATTS).contains(&w), "{n}: {w} W");
        caps.push(w);
        let cpu = ns[n]["cpu_power_cap_watts"].as_f64();
        assert_eq!(cpu, host_caps.then_some(cpu_typical), "{n}: {}", ns[n]);
    }
    // The site's worst case at these caps (every GPU at its cap, hosts at full load or at their
    // package limit, the hottest hour) fits the grid cap.
    let model = energy::EnergyModel::new(&fleet_model, None, &energy::HeatOptions::default());
    let f = model.guard_figures(&fleet_model, energy::TemperatureYear::valence().unwrap().hottest_celsius());
    let host_cut = if host_caps { f.nodes[0].host_cut_watts_per_gpu } else { 0.0 };
    let per_gpu =
        |c: f64| f.nodes[0].full_watts_per_gpu - (1.0 - c / BOARD_WATTS) * f.nodes[0].board_watts_per_gpu - host_cut;
    let worst = f.site_idle_watts[0] + caps.iter().map(|&c| 8.0 * per_gpu(c)).sum::<f64>();
    assert!(worst <= cap * 1e6 + 1.0, "worst case {worst} W over the {} W cap", cap * 1e6);
    let sites = get(&http, format!("{base}/v1/sites"), &token).await;
    let draw = sites[0]["power_watts"].as_f64().unwrap();
    assert!(draw <= cap * 1e6, "{sites}");

    // One job ends: the other runs alone within the cap at full power, so the caps are lifted.
    http.post(format!("{base}/v1/jobs/{}/cancel", ids[0])).bearer_auth(&token).send().await.unwrap();
    let t0 = Instant::now();
    loop {
        let ns = nodes(&http, &base, &token).await;
        if NODES.iter().all(|n| ns[*n]["gpu_power_cap_watts"].is_null() && ns[*n]["cpu_power_cap_watts"].is_null()) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "caps never lifted: {ns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    http.post(format!("{base}/v1/jobs/{}/cancel", ids[1])).bearer_auth(&token).send().await.unwrap();
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
    caps
}

/// What `drome server ARGS` says on stderr when it refuses to start.
fn server_refusal(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["server", "--db", "sqlite::memory:", "--listen", "127.0.0.1:0"])
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "drome server {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn dynamic_mode_without_agents_is_refused_with_a_reason() {
    let err = server_refusal(&["--power-mode", "dynamic"]);
    assert!(err.contains("--agents"), "{err}");
}

#[test]
fn an_unknown_deferral_signal_is_refused_with_the_known_ones() {
    let err = server_refusal(&["--defer-for", "moon"]);
    assert!(err.contains("'moon'") && err.contains("price, carbon, heat"), "{err}");
}

/// A server with `extra` arguments and agents on both nodes, joined, on a site with grid cap
/// `cap_mw`; the processes, the base URL and a tenant token.
async fn start_with_agents(dir: &Path, cap_mw: Option<f64>, extra: &[&str]) -> (Procs, String, String) {
    std::fs::create_dir_all(dir).unwrap();
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, fleet_toml(cap_mw)).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let fleet_arg = fleet.display().to_string();
    let mut args = vec![
        "server",
        "--db",
        &db,
        "--listen",
        &listen,
        "--admin-token",
        ADMIN,
        "--fleet",
        &fleet_arg,
        "--agents",
        "--heartbeat-ms",
        "200",
        "--lease-ms",
        "2000",
    ];
    args.extend_from_slice(extra);
    let mut procs = Procs(vec![spawn(&args, &dir.join("server.log"))]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, &base).await;
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let join = join_token(&http, &base, ADMIN).await;
    for name in NODES {
        let work = dir.join(name).display().to_string();
        let args = [
            "agent",
            "--server",
            &base,
            "--join-token",
            &join,
            "--name",
            name,
            "--declared-gpus",
            "8",
            "--gpu-model",
            "H200",
            "--work-dir",
            &work,
        ];
        procs.0.push(spawn(&args, &dir.join(format!("{name}.log"))));
    }
    let t0 = Instant::now();
    while !NODES.iter().all(|n| dir.join(n).join("credential").exists()) {
        assert!(t0.elapsed() < Duration::from_secs(20), "agents never joined");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (procs, base, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn price_caps_hold_every_gpu_under_the_cap_in_dear_hours_only() {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    // Every hour of the shipped year is dearer than -1,000 EUR/MWh: the agents apply 0.7 x 700 W.
    let dir = std::env::temp_dir().join(format!("drome-price-e2e-{}-{}", std::process::id(), free_port()));
    let (procs, base, token) = start_with_agents(&dir, None, &["--price-cap=-1000:0.7"]).await;
    let t0 = Instant::now();
    loop {
        let ns = nodes(&http, &base, &token).await;
        if NODES.iter().all(|n| ns.get(*n).is_some_and(|v| v["gpu_power_cap_watts"].as_f64() == Some(490.0))) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "price caps never applied: {ns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);

    // No hour is dearer than 100,000 EUR/MWh: the agents heartbeat, and nothing is capped.
    let dir = std::env::temp_dir().join(format!("drome-price-e2e-{}-{}", std::process::id(), free_port()));
    let (procs, base, token) = start_with_agents(&dir, None, &["--price-cap=100000:0.7"]).await;
    let t0 = Instant::now();
    loop {
        let ns = nodes(&http, &base, &token).await;
        if NODES.iter().all(|n| ns.get(*n).is_some_and(|v| v["power_watts"].as_f64().is_some())) {
            assert!(NODES.iter().all(|n| ns[*n]["gpu_power_cap_watts"].is_null()), "{ns:?}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "agents never reported: {ns:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn price_caps_without_agents_are_refused_with_a_reason() {
    let err = server_refusal(&["--price-cap=73:0.7"]);
    assert!(err.contains("--agents"), "{err}");
    let err = server_refusal(&["--agents", "--price-cap", "cheap"]);
    assert!(err.contains("EUR_PER_MWH:CAP"), "{err}");
}
