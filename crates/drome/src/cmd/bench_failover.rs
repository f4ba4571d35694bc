//! `drome bench failover`: replicas of the control plane on one PostgreSQL database, their
//! leader killed with SIGKILL again and again under a storm of submissions. First it measures
//! the submissions acknowledged per second with every client at the leader, then with the clients
//! spread over every replica; then the kills. Prints how long each failover took (the kill to a
//! new leader answering in a newer epoch), the acknowledged jobs lost and the jobs that ran twice
//! (both must be 0). The work runs on in-process nodes, or with `--nodes N` on N virtual 8-GPU
//! nodes of a real agent process that follows the leader (a run survives its leader).

use super::bench_agents::{log_file, quantile};
use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct FailoverBenchArgs {
    /// Servers on the database (one leads, the others wait).
    #[arg(long, default_value_t = 3)]
    pub replicas: u32,
    /// Times the leader is killed.
    #[arg(long, default_value_t = 10)]
    pub kills: u32,
    /// Seconds the leader's lease runs unrenewed (`drome server --leader-lease-s`).
    #[arg(long, default_value_t = 2.0)]
    pub lease_s: f64,
    /// Clients submitting at once; each moves to the next replica when one does not answer.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Virtual 8-GPU nodes served by one `drome agent` process given every replica's address;
    /// 0: the replicas run the work on in-process nodes.
    #[arg(long, default_value_t = 0)]
    pub nodes: u32,
    /// Seconds of each throughput phase before the kills (clients at the leader only, then
    /// spread over every replica); 0 skips them.
    #[arg(long, default_value_t = 5.0)]
    pub throughput_s: f64,
    /// Where the servers' logs go; a temporary directory (removed at the end) when unset.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// An empty PostgreSQL database for the replicas; a fresh one on the local PostgreSQL
    /// (127.0.0.1:5432, or DROME_TEST_POSTGRES), dropped at the end, when unset.
    #[arg(long)]
    pub db: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    replicas: u32,
    lease_s: f64,
    /// Virtual nodes served by an agent process (0: in-process nodes).
    agent_nodes: u32,
    /// Submissions acknowledged per second with every client at the leader.
    submits_per_s_leader_only: Option<f64>,
    /// The same, the clients spread over every replica.
    submits_per_s_all_replicas: Option<f64>,
    /// Seconds from each SIGKILL of the leader to a new leader answering.
    failover_s: Vec<f64>,
    failover_min_s: f64,
    failover_median_s: f64,
    failover_max_s: f64,
    acknowledged: usize,
    /// Acknowledged jobs missing afterwards, or stored under another id.
    lost: usize,
    /// Jobs whose history shows more than one start.
    run_twice: usize,
    submits_per_s: f64,
}

const ADMIN: &str = "bench-failover-admin";

pub fn run(args: FailoverBenchArgs) -> anyhow::Result<()> {
    if args.replicas < 2 || args.kills == 0 || args.clients == 0 {
        bail!("--replicas must be at least 2, --kills and --clients at least 1");
    }
    if !(args.lease_s.is_finite() && (0.3..=60.0).contains(&args.lease_s)) {
        bail!("--lease-s must be between 0.3 and 60 seconds");
    }
    if !(args.throughput_s.is_finite() && (0.0..=3600.0).contains(&args.throughput_s)) {
        bail!("--throughput-s must be between 0 and 3600 seconds");
    }
    let temp = args.work_dir.is_none();
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("drome-bench-failover-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if let Some(db) = &args.db
        && !(db.starts_with("postgres://") || db.starts_with("postgresql://"))
    {
        bail!("replicas share a PostgreSQL database: --db must be postgres://..., not '{db}'");
    }
    let result = super::server::runtime()?.block_on(async {
        if let Some(db) = &args.db {
            return bench(&args, db, &dir).await;
        }
        let db = store::testing::TempPostgres::create().await.context("a PostgreSQL database for the replicas")?;
        let report = bench(&args, &db.url, &dir).await;
        let _ = db.drop_database().await;
        report
    });
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let r = result?;
    match args.output {
        Output::Json => print_json(&r),
        Output::Table => {
            let nodes = match r.agent_nodes {
                0 => "in-process nodes".to_string(),
                n => format!("{n} nodes of an agent"),
            };
            println!(
                "drome failover: {} replicas on PostgreSQL, {nodes}, lease {} s, the leader killed {} times under {} submitting clients",
                r.replicas,
                r.lease_s,
                r.failover_s.len(),
                args.clients
            );
            if let (Some(one), Some(all)) = (r.submits_per_s_leader_only, r.submits_per_s_all_replicas) {
                let mut t = Table::new(["clients at", "submits/s", "ratio"]);
                t.row(vec!["the leader".into(), format!("{one:.0}"), "1.00".into()]);
                t.row(vec![format!("all {} replicas", r.replicas), format!("{all:.0}"), format!("{:.2}", all / one)]);
                println!("{}", t.render().trim_end());
            }
            let mut t = Table::new([
                "failover min (s)",
                "median (s)",
                "max (s)",
                "acknowledged",
                "lost",
                "run twice",
                "submits/s",
            ]);
            t.row(vec![
                format!("{:.2}", r.failover_min_s),
                format!("{:.2}", r.failover_median_s),
                format!("{:.2}", r.failover_max_s),
                r.acknowledged.to_string(),
                r.lost.to_string(),
                r.run_twice.to_string(),
                format!("{:.0}", r.submits_per_s),
            ]);
            print!("{}", t.render());
            Ok(())
        }
    }
}

struct Replicas {
    exe: PathBuf,
    db: String,
    lease_s: f64,
    /// The fleet file of the agent's virtual nodes, when an agent serves them.
    fleet: Option<PathBuf>,
    dir: PathBuf,
    ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    /// Times each replica was started: every start logs to a file of its own.
    starts: Vec<u32>,
}

impl Replicas {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(&self.exe);
        cmd.args(["server", "--db", &self.db, "--listen", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--tenant-rate", "0", "--tenant-pending-jobs", "0", "--tenant-concurrency", "0"])
            .args(["--admin-token", ADMIN, "--in-process-seconds", "1"])
            .args(["--leader-lease-s", &self.lease_s.to_string()]);
        if let Some(fleet) = &self.fleet {
            cmd.arg("--fleet").arg(fleet).args(["--agents", "--heartbeat-ms", "500", "--lease-ms", "5000"]);
        }
        let child = cmd
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log_file(&self.dir, &format!("replica-{i}-start-{}.log", self.starts[i]))?)
            .spawn()
            .context("cannot start a replica")?;
        self.procs[i] = Some(child);
        self.starts[i] += 1;
        Ok(())
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// The replica that leads, with its epoch, waiting up to a minute for one.
async fn wait_leader(http: &reqwest::Client, bases: &[String], dir: &std::path::Path) -> anyhow::Result<(usize, i64)> {
    let t0 = Instant::now();
    loop {
        if let Some(l) = leader(http, bases).await {
            return Ok(l);
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("no replica leads; see the logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The replica that leads now (only the leader serves), with its epoch.
async fn leader(http: &reqwest::Client, bases: &[String]) -> Option<(usize, i64)> {
    for (i, b) in bases.iter().enumerate() {
        let Ok(r) = http.get(format!("{b}/v1/cluster")).bearer_auth(ADMIN).send().await else { continue };
        let Ok(v) = r.json::<Value>().await else { continue };
        if v["leads"] == true {
            return Some((i, v["leader"]["epoch"].as_i64().unwrap_or(0)));
        }
    }
    None
}

async fn bench(args: &FailoverBenchArgs, db: &str, dir: &std::path::Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let n = args.replicas as usize;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        ports.push(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port());
    }
    let bases: Arc<Vec<String>> = Arc::new(ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect());
    let fleet = if args.nodes > 0 {
        let path = dir.join("fleet.toml");
        std::fs::write(&path, super::bench_agents::fleet_toml(args.nodes))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Some(path)
    } else {
        None
    };
    let mut replicas = Replicas {
        exe,
        db: db.to_string(),
        lease_s: args.lease_s,
        fleet,
        dir: dir.to_path_buf(),
        ports,
        procs: Vec::new(),
        starts: vec![0; n],
    };
    replicas.procs.resize_with(n, || None);
    for i in 0..n {
        replicas.start(i)?;
    }
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let (first, _) = wait_leader(&http, &bases, dir).await?;
    let tenant: Value = http
        .post(format!("{}/v1/tenants", bases[first]))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "storm"}))
        .send()
        .await?
        .json()
        .await?;
    let token = tenant["token"].as_str().context("no tenant token")?.to_string();

    // The agent, given every replica's address, serves the virtual nodes.
    let mut agent = None;
    if args.nodes > 0 {
        let join: Value = http
            .post(format!("{}/v1/join-tokens", bases[first]))
            .bearer_auth(ADMIN)
            .json(&json!({"uses": args.nodes}))
            .send()
            .await?
            .json()
            .await?;
        let join = join["token"].as_str().context("no join token")?.to_string();
        let nodes: Vec<api::Node> =
            http.get(format!("{}/v1/nodes", bases[first])).bearer_auth(ADMIN).send().await?.json().await?;
        let names: Vec<String> = nodes.into_iter().map(|n| n.name).collect();
        let work = dir.join("agent");
        let child = Command::new(&replicas.exe)
            .args(["agent", "--server", &bases.join(","), "--join-token", &join, "--name", &names.join(",")])
            .args(["--node-count", &args.nodes.to_string(), "--declared-gpus", "8", "--gpu-model", "H200"])
            .args(["--kill-grace", "1"])
            .arg("--work-dir")
            .arg(&work)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log_file(dir, "agent.log")?)
            .spawn()
            .context("cannot start the agent")?;
        agent = Some(KillOnDrop(child));
        let t0 = Instant::now();
        let credential = |n: &String| if args.nodes > 1 { work.join(n) } else { work.clone() }.join("credential");
        while !names.iter().all(|n| credential(n).exists()) {
            if t0.elapsed() > Duration::from_secs(120) {
                bail!("the agent's nodes did not all join; see {}", dir.join("agent.log").display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Submissions per second, every client at the leader, then spread over every replica.
    let mut acked: Vec<(String, i64)> = Vec::new();
    let (mut leader_only, mut all_replicas) = (None, None);
    if args.throughput_s > 0.0 {
        let phase = Duration::from_secs_f64(args.throughput_s);
        for (name, targets) in [("one", vec![first]), ("all", (0..n).collect::<Vec<_>>())] {
            let stop = Arc::new(AtomicBool::new(false));
            let t0 = Instant::now();
            let clients = storm(&http, &bases, &token, &targets, args.clients, name, &stop);
            tokio::time::sleep(phase).await;
            stop.store(true, Ordering::Relaxed);
            let mut got = Vec::new();
            for c in clients {
                got.extend(c.await?);
            }
            let rate = got.len() as f64 / t0.elapsed().as_secs_f64().max(1e-9);
            acked.extend(got);
            if name == "one" {
                leader_only = Some(rate);
            } else {
                all_replicas = Some(rate);
            }
        }
    }

    // The storm: each client submits with idempotency keys, and on any failure moves to the next
    // replica and sends the same key again, until it is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let storm_started = Instant::now();
    let clients = storm(&http, &bases, &token, &(0..n).collect::<Vec<_>>(), args.clients, "storm", &stop);

    let mut failover_s = Vec::new();
    for _ in 0..args.kills {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (old, epoch) = wait_leader(&http, &bases, dir).await?;
        replicas.kill(old);
        let killed = Instant::now();
        loop {
            if let Some((now, e)) = leader(&http, &bases).await
                && now != old
                && e > epoch
            {
                break;
            }
            if killed.elapsed() > Duration::from_secs(120) {
                bail!("no replica took over within 120 s; see the logs in {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        failover_s.push(killed.elapsed().as_secs_f64());
        // Back as a standby.
        replicas.start(old)?;
    }
    stop.store(true, Ordering::Relaxed);
    let storm_s = storm_started.elapsed().as_secs_f64();
    let mut storm_acked = 0;
    for c in clients {
        let got = c.await?;
        storm_acked += got.len();
        acked.extend(got);
    }

    // Everything ends; then every acknowledged job is there, once, and started once.
    let (l, _) = wait_leader(&http, &bases, dir).await?;
    let base = &bases[l];
    let t0 = Instant::now();
    let mut by_id: HashMap<i64, Value> = HashMap::new();
    loop {
        by_id.clear();
        let mut before: Option<i64> = None;
        loop {
            let mut url = format!("{base}/v1/jobs?limit=1000");
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: Value = http.get(url).bearer_auth(&token).send().await?.json().await?;
            for j in page["jobs"].as_array().into_iter().flatten() {
                if let Some(id) = j["id"].as_i64() {
                    by_id.insert(id, j.clone());
                }
            }
            match page["next_before"].as_i64() {
                Some(b) => before = Some(b),
                None => break,
            }
        }
        let busy = by_id
            .values()
            .filter(|j| !matches!(j["state"].as_str(), Some("succeeded" | "failed" | "cancelled")))
            .count();
        if busy == 0 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(300) {
            bail!("{busy} jobs still unfinished 300 s after the storm");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let lost = acked
        .iter()
        .filter(|(key, id)| by_id.get(id).is_none_or(|j| j["idempotency_key"].as_str() != Some(key)))
        .count();
    let mut run_twice = 0;
    for id in by_id.keys() {
        let v: Value = http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(&token).send().await?.json().await?;
        let starts = v["history"].as_array().into_iter().flatten().filter(|h| h["state"] == "running").count();
        if starts > 1 {
            run_twice += 1;
        }
    }
    drop(agent);
    let median = quantile(&failover_s, 0.5);
    Ok(Report {
        replicas: args.replicas,
        lease_s: args.lease_s,
        agent_nodes: args.nodes,
        submits_per_s_leader_only: leader_only,
        submits_per_s_all_replicas: all_replicas,
        failover_min_s: failover_s.iter().copied().fold(f64::INFINITY, f64::min),
        failover_median_s: median,
        failover_max_s: failover_s.iter().copied().fold(0.0, f64::max),
        failover_s,
        acknowledged: acked.len(),
        lost,
        run_twice,
        submits_per_s: storm_acked as f64 / storm_s.max(1e-9),
    })
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `clients` clients submitting to the replicas of `targets` until `stop`: each submits
/// with idempotency keys (`{tag}-c{client}-{i}`), and on any failure moves to the next target and
/// sends the same key again, until it is acknowledged. Each answers the keys and ids it got.
fn storm(
    http: &reqwest::Client,
    bases: &Arc<Vec<String>>,
    token: &str,
    targets: &[usize],
    clients: u32,
    tag: &str,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(String, i64)>>> {
    (0..clients as usize)
        .map(|c| {
            let (http, bases, token, stop) = (http.clone(), bases.clone(), token.to_string(), stop.clone());
            let (targets, tag) = (targets.to_vec(), tag.to_string());
            tokio::spawn(async move {
                let mut acked: Vec<(String, i64)> = Vec::new();
                let mut at = c % targets.len();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("{tag}-c{c}-{i}");
                    let spec = json!({"name": key, "command": "sleep", "args": ["0.2"], "gpus_per_node": 1});
                    let sent = http
                        .post(format!("{}/v1/jobs", bases[targets[at]]))
                        .bearer_auth(&token)
                        .header("Idempotency-Key", &key)
                        .json(&spec)
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => {
                            let v: Value = r.json().await.unwrap_or_default();
                            if let Some(id) = v["id"].as_i64() {
                                acked.push((key, id));
                                i += 1;
                            }
                        }
                        _ => {
                            at = (at + 1) % targets.len();
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                acked
            })
        })
        .collect()
}
