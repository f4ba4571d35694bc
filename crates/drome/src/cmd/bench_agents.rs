//! `drome bench agents`: the control plane end to end, as Slurm's peer benchmark measures it. A
//! real `drome server --agents` (SQLite in a temporary directory, on loopback) and agent
//! processes that serve 8-GPU nodes with declared GPUs, all started from this binary. Two tests:
//!
//! 1. trivial 1-GPU jobs (`true`): jobs per second from the first submission to the last job
//!    finished (submissions included, where Slurm's figure starts at the release of jobs
//!    submitted held);
//! 2. one 8-GPU `sleep` job per node: allocations per second from the first submission until
//!    every one of them runs.
//!
//! Times come from the server's own records (`started_at_ms`, `finished_at_ms`), so the polling
//! that waits for the end does not blur them.

use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct AgentsBenchArgs {
    /// Virtual 8-GPU nodes, served by the agent processes.
    #[arg(long, default_value_t = 512)]
    pub nodes: u32,
    /// Trivial 1-GPU jobs of the throughput test.
    #[arg(long, default_value_t = 1000)]
    pub jobs: u32,
    /// Agent processes; the nodes are shared out among them.
    #[arg(long, default_value_t = 8)]
    pub agents: u32,
    /// Submissions in flight at once (concurrent clients).
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Database; a fresh SQLite file in the work directory when unset.
    #[arg(long)]
    pub db: Option<String>,
    /// Where the server's and agents' files go; a temporary directory (removed at the end)
    /// when unset.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Where the agents keep their nodes' run directories (a fresh folder inside it, removed at
    /// the end); the work directory when unset. Every simulated node shares this machine's one
    /// disk where a real node has its own: on a tmpfs (`/dev/shm`) the runs' files of 20,000
    /// nodes stay out of the figures while the database stays on disk.
    #[arg(long)]
    pub node_dir: Option<PathBuf>,
    /// How the agents run the jobs (`drome agent --sandbox`): `auto` sandboxes them where the
    /// agents are root; `off` measures the unsandboxed path beside it.
    #[arg(long, value_enum, default_value = "auto")]
    pub sandbox: super::agent::SandboxMode,
    /// Control-plane replicas on one PostgreSQL database (`--db postgres://...`, or a fresh
    /// local database): with more than one, or with --kill-leader, this runs the failover
    /// benchmark (`drome bench failover`) with the nodes served by an agent process.
    #[arg(long, default_value_t = 1)]
    pub replicas: u32,
    /// Kill the leader with SIGKILL this many times during a submission storm; prints failover
    /// times, acknowledged jobs lost and jobs run twice.
    #[arg(long, default_value_t = 0)]
    pub kill_leader: u32,
    /// Seconds the leader's lease runs unrenewed, with replicas.
    #[arg(long, default_value_t = 2.0)]
    pub lease_s: f64,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    nodes: u32,
    gpus: u64,
    agent_processes: u32,
    database: String,
    /// From the agents' start to every node joined (each join durable), seconds.
    joined_s: f64,
    trivial: Trivial,
    allocation: Allocation,
}

#[derive(Serialize)]
struct Trivial {
    jobs: u32,
    succeeded: u64,
    submit_s: f64,
    submits_per_s: f64,
    /// Latency of one submission (request to its 201, the job durable), milliseconds.
    submit_p50_ms: f64,
    submit_p99_ms: f64,
    /// First submission to the last job finished.
    drained_s: f64,
    jobs_per_s: f64,
    /// CPU the server and the agent processes used over the test, per job, milliseconds: what
    /// the control plane itself costs on this machine, apart from the clients and the runs.
    server_cpu_ms_per_job: f64,
    agents_cpu_ms_per_job: f64,
    /// Every core of the machine, busy, per job: the control plane, the runs, the clients, the
    /// kernel.
    machine_cpu_ms_per_job: f64,
}

#[derive(Serialize)]
struct Allocation {
    jobs: u32,
    submit_s: f64,
    submit_p50_ms: f64,
    submit_p99_ms: f64,
    /// First submission to the last job running.
    all_running_s: f64,
    allocations_per_s: f64,
    server_cpu_ms_per_job: f64,
    agents_cpu_ms_per_job: f64,
    machine_cpu_ms_per_job: f64,
}

/// CPU seconds (user and system) process `pid` has used, from `/proc/PID/stat`.
pub(super) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: the fields start after its closing parenthesis.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // In USER_HZ, which Linux's user-facing ABI fixes at 100 per second.
    Some(ticks / 100.0)
}

/// A benchmark's server process, killed (and reaped) when dropped.
pub(super) struct ServerProcess(pub(super) Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `bench` on a fresh runtime in a new temporary directory named after `name` and this
/// process, removed afterwards whatever `bench` did.
pub(super) fn in_scratch_dir<T, F: std::future::Future<Output = anyhow::Result<T>>>(
    name: &str,
    bench: impl FnOnce(std::path::PathBuf) -> F,
) -> anyhow::Result<T> {
    let dir = std::env::temp_dir().join(format!("drome-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let result = super::server::runtime().and_then(|rt| rt.block_on(bench(dir.clone())));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// Starts `drome server` on a free loopback port over `db` and `fleet` with `admin` as its admin
/// token and `extra` arguments, its log in `dir/server.log`, and waits (up to a minute) until it
/// answers: the process and a client of it.
pub(super) async fn start_server(
    exe: &Path,
    db: &str,
    fleet: &Path,
    admin: &str,
    extra: &[&str],
    dir: &Path,
) -> anyhow::Result<(Child, Client)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let base = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(exe)
        .args(["server", "--db", db, "--listen", &format!("127.0.0.1:{port}"), "--admin-token", admin])
        .arg("--fleet")
        .arg(fleet)
        .args(extra)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(log_file(dir, "server.log")?)
        .spawn()
        .context("cannot start the server")?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(256).build()?;
    let c = Client { http, base: base.clone() };
    let t0 = Instant::now();
    while !matches!(c.http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success()) {
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = server.kill();
            let _ = server.wait();
            bail!("the server never answered; see {}", dir.join("server.log").display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((server, c))
}

/// CPU seconds used by the server and by all the agent processes.
fn control_plane_cpu(procs: &Procs) -> (f64, f64, f64) {
    let server = procs.server.as_ref().and_then(|s| cpu_seconds(s.id())).unwrap_or(0.0);
    let agents = procs.agents.iter().filter_map(|a| cpu_seconds(a.id())).sum();
    (server, agents, machine_busy_seconds().unwrap_or(0.0))
}

/// CPU seconds every core of this machine has spent busy since boot, from `/proc/stat`: beside
/// the control plane's own, what the runs' processes, the clients and the kernel took.
fn machine_busy_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<f64> = line.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    Some(busy / 100.0)
}

const ADMIN: &str = "bench-agents-admin";

/// The processes started here; killed (and reaped) when dropped.
struct Procs {
    server: Option<Child>,
    agents: Vec<Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        // SIGTERM first: an agent stops its runs before it exits.
        for c in &self.agents {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        let t0 = Instant::now();
        for c in &mut self.agents {
            while t0.elapsed() < Duration::from_secs(5) && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(s) = &mut self.server {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
}

pub(super) fn fleet_toml(nodes: u32) -> String {
    format!(
        "name = \"bench\"\n\n[node_types.hgx-h200]\ncpu_milli = 224000\nmemory_mib = 2097152\ngpus = 8\n\
         gpu_model = \"H200\"\n\n[[sites]]\nname = \"bench\"\ncooling = \"immersion\"\n\n[[sites.halls]]\n\
         name = \"hall-a\"\n[[sites.halls.racks]]\ncount = {nodes}\nnodes_per_rack = 1\nnode_type = \"hgx-h200\"\n"
    )
}

pub(super) fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(name);
    std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))
}

pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let r = req.send().await.with_context(|| format!("{path}: no answer"))?;
        let status = r.status();
        let text = r.text().await?;
        if !status.is_success() {
            bail!("{path}: {status}: {text}");
        }
        serde_json::from_str(&text).with_context(|| format!("{path}: not JSON: {text}"))
    }

    pub(super) async fn get(&self, path: &str, token: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    pub(super) async fn post(&self, path: &str, token: &str, body: &Value) -> anyhow::Result<Value> {
        self.call(reqwest::Method::POST, path, token, Some(body)).await
    }

    /// Whether the tenant has a job in `state`.
    async fn any_in(&self, token: &str, state: &str) -> anyhow::Result<bool> {
        let v = self.get(&format!("/v1/jobs?state={state}&limit=1"), token).await?;
        Ok(v["jobs"].as_array().is_some_and(|a| !a.is_empty()))
    }

    /// Every job of the tenant, newest first.
    async fn all_jobs(&self, token: &str) -> anyhow::Result<Vec<api::Job>> {
        let mut out = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let path = match before {
                Some(b) => format!("/v1/jobs?limit=1000&before={b}"),
                None => "/v1/jobs?limit=1000".to_string(),
            };
            let list: api::JobList = serde_json::from_value(self.get(&path, token).await?)?;
            out.extend(list.jobs);
            match list.next_before {
                Some(b) => before = Some(b),
                None => return Ok(out),
            }
        }
    }

    /// Submits `n` copies of `spec` from `clients` concurrent submitters; returns the ids and
    /// each submission's latency in milliseconds.
    pub(super) async fn submit_many(
        &self,
        token: &str,
        spec: &Value,
        n: u32,
        clients: u32,
    ) -> anyhow::Result<(Vec<i64>, Vec<f64>)> {
        let clients = clients.clamp(1, n.max(1));
        let mut tasks = Vec::new();
        for c in 0..clients {
            let share = n / clients + u32::from(c < n % clients);
            let me = Client { http: self.http.clone(), base: self.base.clone() };
            let (token, spec) = (token.to_string(), spec.clone());
            tasks.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut latencies = Vec::new();
                for _ in 0..share {
                    let t = Instant::now();
                    let v = me.post("/v1/jobs", &token, &spec).await?;
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                    ids.push(v["id"].as_i64().context("a submission's answer has no id")?);
                }
                anyhow::Ok((ids, latencies))
            }));
        }
        let (mut ids, mut latencies) = (Vec::new(), Vec::new());
        for t in tasks {
            let (i, l) = t.await??;
            ids.extend(i);
            latencies.extend(l);
        }
        Ok((ids, latencies))
    }
}

fn now_ms() -> i64 {
    server::now_ms()
}

/// The `q` quantile (0 to 1) of `values`, nearest rank; 0 when empty.
pub(super) fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

pub fn run(args: AgentsBenchArgs) -> anyhow::Result<()> {
    if args.replicas > 1 || args.kill_leader > 0 {
        return super::bench_failover::run(super::bench_failover::FailoverBenchArgs {
            replicas: args.replicas.max(2),
            kills: args.kill_leader.max(1),
            lease_s: args.lease_s,
            clients: args.clients,
            nodes: args.nodes,
            throughput_s: 5.0,
            work_dir: args.work_dir,
            db: args.db,
            output: args.output,
        });
    }
    if args.nodes == 0 || args.agents == 0 || args.jobs == 0 {
        bail!("--nodes, --agents and --jobs must be at least 1");
    }
    let agents = args.agents.min(args.nodes);
    let temp = args.work_dir.is_none();
    let dir = match &args.work_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("drome-bench-agents-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let nodes = match &args.node_dir {
        Some(d) => d.join(format!("drome-bench-nodes-{}", std::process::id())),
        None => dir.clone(),
    };
    std::fs::create_dir_all(&nodes).with_context(|| format!("cannot create {}", nodes.display()))?;
    let result = super::server::runtime()?.block_on(bench(&args, agents, &dir, &nodes));
    if args.node_dir.is_some() {
        let _ = std::fs::remove_dir_all(&nodes);
    }
    if temp {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let report = result?;
    match args.output {
        Output::Json => print_json(&report),
        Output::Table => {
            print_table(&report);
            Ok(())
        }
    }
}

fn print_table(r: &Report) {
    println!(
        "drome end to end: server + {} agent processes, {} 8-GPU nodes ({} GPUs), {}",
        r.agent_processes, r.nodes, r.gpus, r.database
    );
    let mut t = Table::new([
        "test",
        "jobs",
        "submit/s",
        "submit p50/p99 (ms)",
        "time (s)",
        "rate",
        "unit",
        "CPU ms per job: server / agents / machine",
    ]);
    t.row(vec![
        "trivial 1-GPU jobs, submit -> drained".to_string(),
        format!("{} ({} ok)", r.trivial.jobs, r.trivial.succeeded),
        format!("{:.0}", r.trivial.submits_per_s),
        format!("{:.1} / {:.1}", r.trivial.submit_p50_ms, r.trivial.submit_p99_ms),
        format!("{:.2}", r.trivial.drained_s),
        format!("{:.0}", r.trivial.jobs_per_s),
        "jobs/s".into(),
        format!(
            "{:.2} / {:.2} / {:.2}",
            r.trivial.server_cpu_ms_per_job, r.trivial.agents_cpu_ms_per_job, r.trivial.machine_cpu_ms_per_job
        ),
    ]);
    t.row(vec![
        "8-GPU sleep jobs, submit -> all running".to_string(),
        r.allocation.jobs.to_string(),
        format!("{:.0}", f64::from(r.allocation.jobs) / r.allocation.submit_s.max(1e-9)),
        format!("{:.1} / {:.1}", r.allocation.submit_p50_ms, r.allocation.submit_p99_ms),
        format!("{:.2}", r.allocation.all_running_s),
        format!("{:.0}", r.allocation.allocations_per_s),
        "allocations/s".into(),
        format!(
            "{:.2} / {:.2} / {:.2}",
            r.allocation.server_cpu_ms_per_job, r.allocation.agents_cpu_ms_per_job, r.allocation.machine_cpu_ms_per_job
        ),
    ]);
    println!("{}", t.render());
    println!(
        "{} nodes joined in {:.1} s ({:.0} joins/s)",
        r.nodes,
        r.joined_s,
        f64::from(r.nodes) / r.joined_s.max(1e-9)
    );
}

async fn bench(args: &AgentsBenchArgs, agents: u32, dir: &Path, node_dir: &Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, fleet_toml(args.nodes)).with_context(|| format!("cannot write {}", fleet.display()))?;
    let db = args.db.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("drome.db").display()));
    let mut procs = Procs { server: None, agents: Vec::new() };
    // The benchmark floods on purpose: no per-tenant limits.
    let extra = ["--agents", "--tenant-rate", "0", "--tenant-pending-jobs", "0", "--tenant-concurrency", "0"];
    let (server, c) = start_server(&exe, &db, &fleet, ADMIN, &extra, dir).await?;
    procs.server = Some(server);
    let base = c.base.clone();
    let tenant = c.post("/v1/tenants", ADMIN, &json!({"name": "bench"})).await?;
    let token = tenant["token"].as_str().context("no tenant token")?.to_string();
    let join = c.post("/v1/join-tokens", ADMIN, &json!({"uses": args.nodes})).await?;
    let join = join["token"].as_str().context("no join token")?.to_string();
    let nodes: Vec<api::Node> = serde_json::from_value(c.get("/v1/nodes", ADMIN).await?)?;
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();

    // The agents: each serves its share of the nodes.
    let sandbox_mode = match args.sandbox {
        super::agent::SandboxMode::Auto => "auto",
        super::agent::SandboxMode::On => "on",
        super::agent::SandboxMode::Off => "off",
    };
    let per = names.len().div_ceil(agents as usize);
    let mut credentials = Vec::new();
    for (i, chunk) in names.chunks(per).enumerate() {
        let work = node_dir.join(format!("agent-{i}"));
        let mut cmd = Command::new(&exe);
        cmd.args(["agent", "--server", &base, "--join-token", &join, "--name", &chunk.join(",")])
            .args(["--node-count", &chunk.len().to_string(), "--declared-gpus", "8", "--gpu-model", "H200"])
            .args(["--kill-grace", "1"])
            .args(["--sandbox", sandbox_mode])
            .arg("--work-dir")
            .arg(&work)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::null())
            .stderr(log_file(dir, &format!("agent-{i}.log"))?);
        procs.agents.push(cmd.spawn().context("cannot start an agent")?);
        for n in chunk {
            credentials.push(if chunk.len() > 1 { work.join(n) } else { work.clone() }.join("credential"));
        }
    }
    let t0 = Instant::now();
    // Each node's credential file, looked for until it is there: not the whole list each time.
    let mut waiting = credentials.iter().peekable();
    while let Some(next) = waiting.peek() {
        if next.exists() {
            waiting.next();
            continue;
        }
        // Joins are one durable write each: allow for the fleet's size.
        if t0.elapsed() > Duration::from_secs(120) + Duration::from_millis(10 * u64::from(args.nodes)) {
            bail!("agents did not all join; see the agent logs in {}", dir.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let joined_s = t0.elapsed().as_secs_f64();
    tracing::info!(nodes = names.len(), agents, secs = joined_s, "all nodes joined");

    // 1. Trivial jobs, submit to drained.
    let cpu0 = control_plane_cpu(&procs);
    let spec = json!({"name": "trivial", "command": "true", "gpus_per_node": 1});
    let release_ms = now_ms();
    let t = Instant::now();
    let (ids, latencies) = c.submit_many(&token, &spec, args.jobs, args.clients).await?;
    let submit_s = t.elapsed().as_secs_f64();
    wait_for(&c, &token, &["pending", "scheduled", "running"], Duration::from_secs(600)).await?;
    let jobs = c.all_jobs(&token).await?;
    let mine: Vec<&api::Job> = jobs.iter().filter(|j| ids.contains(&j.id)).collect();
    let succeeded = mine.iter().filter(|j| j.state == api::JobState::Succeeded).count() as u64;
    let last = mine.iter().filter_map(|j| j.finished_at_ms).max().context("no job finished")?;
    let drained_s = ((last - release_ms).max(1) as f64) / 1000.0;
    let trivial = Trivial {
        jobs: args.jobs,
        succeeded,
        submit_s,
        submits_per_s: f64::from(args.jobs) / submit_s.max(1e-9),
        submit_p50_ms: quantile(&latencies, 0.5),
        submit_p99_ms: quantile(&latencies, 0.99),
        drained_s,
        jobs_per_s: f64::from(args.jobs) / drained_s,
        server_cpu_ms_per_job: 0.0,
        agents_cpu_ms_per_job: 0.0,
        machine_cpu_ms_per_job: 0.0,
    };
    let cpu1 = control_plane_cpu(&procs);
    let per_job = |a: f64, b: f64, jobs: u32| (b - a) * 1000.0 / f64::from(jobs.max(1));
    let trivial = Trivial {
        server_cpu_ms_per_job: per_job(cpu0.0, cpu1.0, args.jobs),
        agents_cpu_ms_per_job: per_job(cpu0.1, cpu1.1, args.jobs),
        machine_cpu_ms_per_job: per_job(cpu0.2, cpu1.2, args.jobs),
        ..trivial
    };

    // 2. One 8-GPU sleep job per node, submit to all running.
    let spec = json!({"name": "whole-node", "command": "sleep", "args": ["600"], "gpus_per_node": 8});
    let release_ms = now_ms();
    let t = Instant::now();
    let (ids, latencies) = c.submit_many(&token, &spec, args.nodes, args.clients).await?;
    let alloc_submit_s = t.elapsed().as_secs_f64();
    wait_for(&c, &token, &["pending", "scheduled"], Duration::from_secs(600)).await?;
    let jobs = c.all_jobs(&token).await?;
    let mine: Vec<&api::Job> = jobs.iter().filter(|j| ids.contains(&j.id)).collect();
    let running = mine.iter().filter(|j| j.state == api::JobState::Running).count();
    if running != ids.len() {
        bail!("{running} of {} whole-node jobs run; see {}", ids.len(), dir.display());
    }
    let last = mine.iter().filter_map(|j| j.started_at_ms).max().context("no job started")?;
    let all_running_s = ((last - release_ms).max(1) as f64) / 1000.0;
    let allocation = Allocation {
        jobs: args.nodes,
        submit_s: alloc_submit_s,
        submit_p50_ms: quantile(&latencies, 0.5),
        submit_p99_ms: quantile(&latencies, 0.99),
        all_running_s,
        allocations_per_s: f64::from(args.nodes) / all_running_s,
        server_cpu_ms_per_job: 0.0,
        agents_cpu_ms_per_job: 0.0,
        machine_cpu_ms_per_job: 0.0,
    };
    let cpu2 = control_plane_cpu(&procs);
    let allocation = Allocation {
        server_cpu_ms_per_job: per_job(cpu1.0, cpu2.0, args.nodes),
        agents_cpu_ms_per_job: per_job(cpu1.1, cpu2.1, args.nodes),
        machine_cpu_ms_per_job: per_job(cpu1.2, cpu2.2, args.nodes),
        ..allocation
    };

    // Clean up through the API: every sleep is cancelled and its process group killed.
    for id in &ids {
        c.post(&format!("/v1/jobs/{id}/cancel"), &token, &json!({})).await?;
    }
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) && has_pgid(node_dir) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(procs);
    let database = if db.starts_with("sqlite") { "SQLite (WAL, synchronous FULL)" } else { "PostgreSQL" };
    Ok(Report {
        nodes: args.nodes,
        gpus: u64::from(args.nodes) * 8,
        agent_processes: agents,
        database: database.into(),
        joined_s,
        trivial,
        allocation,
    })
}

/// Waits until the tenant has no job in any of `states`.
async fn wait_for(c: &Client, token: &str, states: &[&str], within: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let mut busy = false;
        for s in states {
            if c.any_in(token, s).await? {
                busy = true;
                break;
            }
        }
        if !busy {
            return Ok(());
        }
        if t0.elapsed() > within {
            bail!("jobs still {states:?} after {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a run's process group is still recorded under the agents' work directories.
fn has_pgid(dir: &Path) -> bool {
    let Ok(agents) = std::fs::read_dir(dir) else { return false };
    for a in agents.flatten() {
        let Ok(nodes) = std::fs::read_dir(a.path()) else { continue };
        for n in nodes.flatten() {
            let Ok(runs) = std::fs::read_dir(n.path().join("runs")) else { continue };
            if runs.flatten().any(|r| r.path().join("pgid").exists()) {
                return true;
            }
        }
    }
    false
}
