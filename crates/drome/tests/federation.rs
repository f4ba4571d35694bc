//! A federation over three real site servers on loopback, each its own `drome server` process
//! with its own store: jobs land where their constraints allow, a bound tenant's job never
//! leaves its site, killing a site (`kill -9`) moves its waiting jobs within 30 s, the site
//! started again drops them, and every acknowledged job is accounted for.

mod common;

use common::{Procs, free_port, json_of, wait_healthy};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const SITE_ADMIN: &str = "site-admin-token";
const FED_ADMIN: &str = "federation-admin-token";

fn fleet(site: &str, region: &str, model: &str) -> String {
    format!(
        r#"name = "{site}"
[node_types.gpu]
cpu_milli = 128000
memory_mib = 1048576
gpus = 8
gpu_model = "{model}"

[[sites]]
name = "{site}"
cooling = "immersion"
region = "{region}"
[[sites.halls]]
name = "hall"
[[sites.halls.racks]]
count = 1
nodes_per_rack = 2
node_type = "gpu"
"#
    )
}

fn federation(sites_toml: &std::path::Path, db: &str, port: u16, dir: &std::path::Path) -> std::process::Child {
    use std::process::{Command, Stdio};
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("federation.log")).unwrap();
    Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["federation", "--sites"])
        .arg(sites_toml)
        .args(["--db", db, "--listen", &format!("127.0.0.1:{port}"), "--admin-token", FED_ADMIN])
        .args(["--poll-ms", "200", "--loss-after-ms", "1500", "--lease-ms", "2000", "--request-timeout-ms", "500"])
        // In-process nodes die with their server: nothing to wait for but the cut site's own stop.
        .args(["--restart-after-ms", "4000"])
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn job(model: &str, seconds: u32) -> Value {
    json!({"command": "sleep", "args": [seconds.to_string()], "gpus_per_node": 8, "gpu_model": model})
}

/// Submits through the federation: the job as answered, and whether it was acknowledged.
async fn submit(http: &reqwest::Client, base: &str, token: &str, spec: &Value) -> Value {
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(token).json(spec).send().await.unwrap();
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(status == 201 || status == 202, "submission not acknowledged ({status}): {v}");
    v
}

async fn jobs(http: &reqwest::Client, base: &str, token: &str) -> Vec<Value> {
    let v = json_of(http.get(format!("{base}/v1/jobs?limit=1000")).bearer_auth(token)).await;
    v["jobs"].as_array().cloned().unwrap_or_default()
}

fn site_of(j: &Value) -> &str {
    j["federation"]["site"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sites_one_api_a_lost_site_moves_its_waiting_jobs() {
    let dir = std::env::temp_dir().join(format!("drome-federation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let sites = [("north", "FR-HDF", "H200"), ("valence", "FR-ARA", "H200"), ("south", "FR-PAC", "A100")];
    let mut procs = Procs(Vec::new());
    let mut ports = Vec::new();
    let mut sites_toml = String::new();
    for (name, region, model) in sites {
        let site_dir = dir.join(name);
        std::fs::create_dir_all(&site_dir).unwrap();
        let fleet_path = site_dir.join("fleet.toml");
        std::fs::write(&fleet_path, fleet(name, region, model)).unwrap();
        let port = free_port();
        let db = format!("sqlite://{}/site.db", site_dir.display());
        let fleet_arg = fleet_path.display().to_string();
        procs.0.push(common::server(&db, port, SITE_ADMIN, &["--fleet", &fleet_arg], &site_dir, None));
        ports.push(port);
        sites_toml.push_str(&format!(
            "[[site]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{port}\"\nadmin_token = \"{SITE_ADMIN}\"\n\n"
        ));
    }
    sites_toml.push_str("[[tenant]]\nname = \"anchored\"\nsite = \"north\"\n");
    let sites_path = dir.join("sites.toml");
    std::fs::write(&sites_path, &sites_toml).unwrap();
    for port in &ports {
        wait_healthy(&http, &format!("http://127.0.0.1:{port}")).await;
    }
    let fed_port = free_port();
    let fed_db = format!("sqlite://{}/federation.db", dir.display());
    procs.0.push(federation(&sites_path, &fed_db, fed_port, &dir));
    let base = format!("http://127.0.0.1:{fed_port}");
    wait_healthy(&http, &base).await;
    // The federation has heard from every site (their regions and models) before jobs come.
    let t0 = Instant::now();
    loop {
        let s = json_of(http.get(format!("{base}/v1/federation/sites")).bearer_auth(FED_ADMIN)).await;
        let all = s.as_array().is_some_and(|a| a.len() == 3 && a.iter().all(|x| x["reachable"] == true));
        if all {
            assert_eq!(s[0]["region"], "FR-HDF", "{s}");
            assert_eq!(s[2]["gpus"], 16, "{s}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "sites never all answered: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lab = common::create_tenant(&http, &base, FED_ADMIN, "lab").await;
    let anchored = common::create_tenant(&http, &base, FED_ADMIN, "anchored").await;
    // A tenant is the federation's: the admin has no jobs, a stranger no access.
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(FED_ADMIN).json(&job("H200", 1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    for path in ["/v1/jobs", "/v1/sites", "/v1/federation/sites"] {
        let r = http.get(format!("{base}{path}")).bearer_auth("nobody").send().await.unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path}");
    }
    let r = http.get(format!("{base}/v1/sites")).bearer_auth(&lab).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200, "a tenant sees the sites");

    let mut acknowledged: Vec<(String, i64)> = Vec::new();
    // Constraints: the only A100 site gets the A100 job; a model no site holds is refused.
    let a100 = submit(&http, &base, &lab, &job("A100", 600)).await;
    assert_eq!(site_of(&a100), "south", "{a100}");
    acknowledged.push(("lab".into(), a100["id"].as_i64().unwrap()));
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&lab).json(&job("B200", 1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 422, "no site holds a B200: {:?}", r.text().await);
    // A dataset must be at a site of the federation.
    let mut at_nowhere = job("H200", 1);
    at_nowhere["dataset"] = json!({"site": "atlantis", "size_gb": 800});
    let r = http.post(format!("{base}/v1/jobs")).bearer_auth(&lab).json(&at_nowhere).send().await.unwrap();
    let status = r.status().as_u16();
    let err: Value = r.json().await.unwrap();
    assert_eq!((status, err["error"]["field"].as_str()), (422, Some("dataset.site")), "{err}");
    // A site's own validation is the answer, and nothing is kept.
    let r = http
        .post(format!("{base}/v1/jobs"))
        .bearer_auth(&lab)
        .json(&json!({"command": "sleep", "gpus_per_node": 8, "nodes": 0}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "a bad job is refused: {}", r.status());
    // The bound tenant's jobs go to its site, whatever is free elsewhere.
    let first = submit(&http, &base, &anchored, &job("H200", 600)).await;
    assert_eq!(site_of(&first), "north", "{first}");
    acknowledged.push(("anchored".into(), first["id"].as_i64().unwrap()));
    // Fill both H200 sites, then queue more: capacity dispatch spreads them.
    for _ in 0..5 {
        let mut restartable = job("H200", 600);
        restartable["restart_policy"] = json!("on-failure");
        let j = submit(&http, &base, &lab, &restartable).await;
        assert!(["north", "valence"].contains(&site_of(&j)), "{j}");
        assert!(!j["federation"]["reason"].as_str().unwrap_or("").is_empty(), "{j}");
        acknowledged.push(("lab".into(), j["id"].as_i64().unwrap()));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let second = submit(&http, &base, &anchored, &job("H200", 600)).await;
    assert_eq!(site_of(&second), "north", "{second}");
    acknowledged.push(("anchored".into(), second["id"].as_i64().unwrap()));
    // `drome job` shows the site and why.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_drome"))
        .args(["job", &second["id"].to_string(), "--url", &base, "--token", &anchored])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("site       north") && text.contains("why"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait until the sites' states are known: what waits at north, what runs there.
    let t0 = Instant::now();
    let (waiting_at_north, running_at_north) = loop {
        let all = jobs(&http, &base, &lab).await;
        let at_north: Vec<&Value> = all.iter().filter(|j| site_of(j) == "north").collect();
        let waiting: Vec<i64> =
            at_north.iter().filter(|j| j["state"] == "pending").filter_map(|j| j["id"].as_i64()).collect();
        let running: Vec<i64> =
            at_north.iter().filter(|j| j["state"] == "running").filter_map(|j| j["id"].as_i64()).collect();
        if !waiting.is_empty() && !running.is_empty() {
            break (waiting, running);
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "north never held waiting and running jobs: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // kill -9 north: its waiting jobs move within 30 s; the bound tenant's stay.
    let north = &mut procs.0[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(north.id() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let _ = north.wait();
    let killed = Instant::now();
    // Tenants keep submitting while north is gone; the job goes to a site that answers.
    let during = submit(&http, &base, &lab, &job("H200", 600)).await;
    acknowledged.push(("lab".into(), during["id"].as_i64().unwrap()));
    let moved_after = loop {
        let all = jobs(&http, &base, &lab).await;
        let moved = waiting_at_north.iter().all(|id| {
            all.iter().any(|j| {
                j["id"].as_i64() == Some(*id)
                    && site_of(j) == "valence"
                    && j["federation"]["moves"][0]["site"] == "north"
            })
        });
        if moved {
            break killed.elapsed();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "north's waiting jobs did not move within 30 s: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("north's waiting jobs moved {:.1} s after it was killed", moved_after.as_secs_f64());
    // The lab's jobs that ran at north restart on failure: once north has been silent for a lease
    // past its lease's end (a north cut off, not dead, would have stopped them), they restart at
    // valence. The bound tenant's run is reported lost.
    loop {
        let all = jobs(&http, &base, &lab).await;
        let restarted = running_at_north.iter().all(|id| {
            all.iter().any(|j| {
                j["id"].as_i64() == Some(*id)
                    && site_of(j) == "valence"
                    && j["federation"]["moves"][0]["why"].as_str().unwrap_or("").contains("restarted")
            })
        });
        if restarted {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "north's runs did not restart within 30 s: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("north's runs restarted elsewhere {:.1} s after it was killed", killed.elapsed().as_secs_f64());
    let anchored_jobs = jobs(&http, &base, &anchored).await;
    assert!(
        anchored_jobs.iter().any(|j| j["message"].as_str().unwrap_or("").contains("lost")),
        "the bound tenant's run at north is reported lost: {anchored_jobs:?}"
    );
    assert_ne!(site_of(&during), "north", "{during}");
    for j in jobs(&http, &base, &anchored).await {
        assert_eq!(site_of(&j), "north", "a bound tenant's job left its site: {j}");
        assert!(j["federation"]["moves"].as_array().is_none_or(|m| m.is_empty()), "{j}");
    }

    // north comes back on its own store: it is told to drop the moved jobs before it may start
    // federated work again, so only the bound tenant's job waits there.
    let north_dir = dir.join("north");
    let fleet_arg = north_dir.join("fleet.toml").display().to_string();
    let db = format!("sqlite://{}/site.db", north_dir.display());
    procs.0[0] = common::server(&db, ports[0], SITE_ADMIN, &["--fleet", &fleet_arg], &north_dir, None);
    let north_base = format!("http://127.0.0.1:{}", ports[0]);
    wait_healthy(&http, &north_base).await;
    let t0 = Instant::now();
    loop {
        let s = json_of(http.get(format!("{north_base}/v1/sites")).bearer_auth(SITE_ADMIN)).await;
        let pending = s[0]["gpus_pending"].as_f64().unwrap_or(-1.0);
        let f = json_of(http.get(format!("{base}/v1/federation/sites")).bearer_auth(FED_ADMIN)).await;
        if pending == 8.0 && f[0]["lost"] == false && f[0]["reachable"] == true {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "north never dropped the moved jobs: {s} {f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every acknowledged job is accounted for, once.
    let lab_jobs = jobs(&http, &base, &lab).await;
    let anchored_jobs = jobs(&http, &base, &anchored).await;
    for (tenant, id) in &acknowledged {
        let list = if tenant == "lab" { &lab_jobs } else { &anchored_jobs };
        assert_eq!(list.iter().filter(|j| j["id"].as_i64() == Some(*id)).count(), 1, "job {id} of {tenant}");
    }
    assert_eq!(lab_jobs.len() + anchored_jobs.len(), acknowledged.len());
}

/// A site cut off by a real partition (its server in a network namespace, the link down), alive
/// all along: its waiting jobs move, its runs that restart on failure are stopped there and
/// restart at the other site, and once the link is back nothing runs at the cut site any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_site_stops_what_the_federation_runs_elsewhere() {
    let Some(netns) = common::Netns::create() else {
        eprintln!("SKIPPED: cannot make a network namespace here (needs root and `ip netns`)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("drome-federation-cut-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let mut procs = Procs(Vec::new());
    // The cut site, in the namespace.
    let cut_dir = dir.join("cut");
    std::fs::create_dir_all(&cut_dir).unwrap();
    std::fs::write(cut_dir.join("fleet.toml"), fleet("cut", "FR-ARA", "H200")).unwrap();
    let cut_port = free_port();
    let log = std::fs::File::create(cut_dir.join("server.log")).unwrap();
    procs.0.push(
        std::process::Command::new("ip")
            .args(["netns", "exec", &netns.name, env!("CARGO_BIN_EXE_drome"), "server"])
            .args(["--db", &format!("sqlite://{}/site.db", cut_dir.display())])
            .args(["--listen", &format!("{}:{cut_port}", netns.ns_addr), "--admin-token", SITE_ADMIN])
            .arg("--fleet")
            .arg(cut_dir.join("fleet.toml"))
            .env("RUST_LOG", "info,sqlx=warn")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let cut_base = format!("http://{}:{cut_port}", netns.ns_addr);
    // The other site and the federation, on this host.
    let other_dir = dir.join("valence");
    std::fs::create_dir_all(&other_dir).unwrap();
    std::fs::write(other_dir.join("fleet.toml"), fleet("valence", "FR-ARA", "H200")).unwrap();
    let other_port = free_port();
    let other_fleet = other_dir.join("fleet.toml").display().to_string();
    let other_db = format!("sqlite://{}/site.db", other_dir.display());
    procs.0.push(common::server(&other_db, other_port, SITE_ADMIN, &["--fleet", &other_fleet], &other_dir, None));
    wait_healthy(&http, &cut_base).await;
    wait_healthy(&http, &format!("http://127.0.0.1:{other_port}")).await;
    let sites_toml = format!(
        "[[site]]\nname = \"cut\"\nurl = \"{cut_base}\"\nadmin_token = \"{SITE_ADMIN}\"\n\n\
         [[site]]\nname = \"valence\"\nurl = \"http://127.0.0.1:{other_port}\"\nadmin_token = \"{SITE_ADMIN}\"\n"
    );
    let sites_path = dir.join("sites.toml");
    std::fs::write(&sites_path, sites_toml).unwrap();
    let fed_port = free_port();
    procs.0.push(federation(&sites_path, &format!("sqlite://{}/federation.db", dir.display()), fed_port, &dir));
    let base = format!("http://127.0.0.1:{fed_port}");
    wait_healthy(&http, &base).await;
    let t0 = Instant::now();
    loop {
        let s = json_of(http.get(format!("{base}/v1/federation/sites")).bearer_auth(FED_ADMIN)).await;
        if s.as_array().is_some_and(|a| a.len() == 2 && a.iter().all(|x| x["reachable"] == true)) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "sites never answered: {s}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let lab = common::create_tenant(&http, &base, FED_ADMIN, "lab").await;
    // Six 8-GPU jobs that restart on failure over two sites of 16 GPUs: four run, two wait.
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut spec = job("H200", 600);
        spec["restart_policy"] = json!("on-failure");
        ids.push(submit(&http, &base, &lab, &spec).await["id"].as_i64().unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let t0 = Instant::now();
    let at_cut = loop {
        let all = jobs(&http, &base, &lab).await;
        let at_cut: Vec<(i64, String)> = all
            .iter()
            .filter(|j| site_of(j) == "cut")
            .map(|j| (j["id"].as_i64().unwrap(), j["state"].as_str().unwrap_or("").to_string()))
            .collect();
        let running = at_cut.iter().filter(|(_, s)| s == "running").count();
        if running == 2 && at_cut.iter().any(|(_, s)| s == "pending") {
            break at_cut;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the cut site never ran two jobs with one waiting: {all:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    netns.link(false);
    let cut_at = Instant::now();
    // Every job that was at the cut site goes to valence: the waiting one moved, the running
    // ones restarted once the cut site has stopped them.
    loop {
        let all = jobs(&http, &base, &lab).await;
        let all_moved = at_cut.iter().all(|(id, _)| {
            all.iter().any(|j| {
                j["id"].as_i64() == Some(*id) && site_of(j) == "valence" && j["federation"]["moves"][0]["site"] == "cut"
            })
        });
        if all_moved {
            break;
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(30),
            "the cut site's jobs did not all move within 30 s: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!("the cut site's jobs all at valence {:.1} s after the cut", cut_at.elapsed().as_secs_f64());

    // The link back: the cut site had stopped its runs itself and is told to drop what moved;
    // nothing of the federation's runs or waits there.
    netns.link(true);
    let t0 = Instant::now();
    loop {
        let s = json_of(http.get(format!("{cut_base}/v1/sites")).bearer_auth(SITE_ADMIN)).await;
        let f = json_of(http.get(format!("{base}/v1/federation/sites")).bearer_auth(FED_ADMIN)).await;
        if s[0]["gpus_used"] == 0 && s[0]["gpus_pending"].as_f64() == Some(0.0) && f[0]["lost"] == false {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "the cut site still holds the federation's work: {s} {f}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all = jobs(&http, &base, &lab).await;
    assert_eq!(all.len(), ids.len());
    assert!(all.iter().all(|j| site_of(j) == "valence"), "{all:?}");
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
