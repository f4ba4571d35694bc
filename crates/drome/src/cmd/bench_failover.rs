//! `drome bench failover`: replicas of the control plane on one PostgreSQL database, their
//! leader killed with SIGKILL again and again under a storm of submissions. Prints how long each
//! failover took (the kill to a new leader answering in a newer epoch), the acknowledged jobs
//! lost and the jobs that ran twice (both must be 0), and the submissions acknowledged per second.

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
    /// Where the servers' logs go; a temporary directory (removed at the end) when unset. The
    /// database is a fresh one on the local PostgreSQL (127.0.0.1:5432, or DROME_TEST_POSTGRES).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    replicas: u32,
    lease_s: f64,
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
    let temp = args.work_dir.is_none();
    let dir = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("drome-bench-failover-{}", std::process::id())));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = super::server::runtime()?.block_on(async {
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
            println!(
                "drome failover: {} replicas on PostgreSQL, lease {} s, the leader killed {} times under {} submitting clients",
                r.replicas,
                r.lease_s,
                r.failover_s.len(),
                args.clients
            );
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
    dir: PathBuf,
    ports: Vec<u16>,
    procs: Vec<Option<Child>>,
    /// Times each replica was started: every start logs to a file of its own.
    starts: Vec<u32>,
}

impl Replicas {
    fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let child = Command::new(&self.exe)
            .args(["server", "--db", &self.db, "--listen", &format!("127.0.0.1:{}", self.ports[i])])
            .args(["--admin-token", ADMIN, "--in-process-seconds", "1"])
            .args(["--leader-lease-s", &self.lease_s.to_string()])
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
    let mut replicas = Replicas {
        exe,
        db: db.to_string(),
        lease_s: args.lease_s,
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

    // The storm: each client submits with idempotency keys, and on any failure moves to the next
    // replica and sends the same key again, until it is acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let storm_started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..args.clients {
        let (http, bases, token, stop) = (http.clone(), bases.clone(), token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut acked: Vec<(String, i64)> = Vec::new();
            let mut at = c as usize % bases.len();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("c{c}-{i}");
                let spec = json!({"name": key, "command": "sleep", "args": ["0.2"], "gpus_per_node": 1});
                let sent = http
                    .post(format!("{}/v1/jobs", bases[at]))
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
                        at = (at + 1) % bases.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            acked
        }));
    }

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
    let mut acked: Vec<(String, i64)> = Vec::new();
    for c in clients {
        acked.extend(c.await?);
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
    let median = quantile(&failover_s, 0.5);
    Ok(Report {
        replicas: args.replicas,
        lease_s: args.lease_s,
        failover_min_s: failover_s.iter().copied().fold(f64::INFINITY, f64::min),
        failover_median_s: median,
        failover_max_s: failover_s.iter().copied().fold(0.0, f64::max),
        failover_s,
        acknowledged: acked.len(),
        lost,
        run_twice,
        submits_per_s: acked.len() as f64 / storm_s.max(1e-9),
    })
}
