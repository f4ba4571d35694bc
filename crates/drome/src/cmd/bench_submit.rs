//! `drome bench submit`: durable submissions alone. A real `drome server` (SQLite in a temporary
//! directory, or `--db`) on loopback takes `--jobs` submissions from `--clients` concurrent
//! clients; each `201` comes once its job is durable. The tenant's quota of one GPU holds every
//! job after the first, so the scheduler does next to nothing and what is timed is the
//! submission path: HTTP, authentication, validation, the group commit.

use super::bench_agents::{cpu_seconds, quantile, start_server};
use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SubmitBenchArgs {
    /// Submissions timed.
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u32,
    /// Submissions in flight at once (concurrent clients).
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Database; a fresh SQLite file in a temporary directory when unset.
    #[arg(long)]
    pub db: Option<String>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    database: String,
    jobs: u32,
    clients: u32,
    seconds: f64,
    submits_per_s: f64,
    /// Request to `201` (the job durable), milliseconds.
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// CPU the server used per submission, milliseconds.
    server_cpu_ms_per_submit: f64,
}

const ADMIN: &str = "bench-submit-admin";

pub fn run(args: SubmitBenchArgs) -> anyhow::Result<()> {
    if args.jobs == 0 || args.clients == 0 {
        bail!("--jobs and --clients must be at least 1");
    }
    let r = super::bench_agents::in_scratch_dir("submit", |dir| {
        let args = &args;
        async move { bench(args, &dir).await }
    })?;
    match args.output {
        Output::Json => print_json(&r),
        Output::Table => {
            println!("drome durable submissions: a real server on loopback, {}", r.database);
            let mut t = Table::new([
                "jobs",
                "clients",
                "time (s)",
                "submits/s",
                "p50 / p99 / max (ms)",
                "server CPU ms per submit",
            ]);
            t.row(vec![
                r.jobs.to_string(),
                r.clients.to_string(),
                format!("{:.2}", r.seconds),
                format!("{:.0}", r.submits_per_s),
                format!("{:.1} / {:.1} / {:.1}", r.p50_ms, r.p99_ms, r.max_ms),
                format!("{:.3}", r.server_cpu_ms_per_submit),
            ]);
            print!("{}", t.render());
            Ok(())
        }
    }
}

async fn bench(args: &SubmitBenchArgs, dir: &Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let db = args.db.clone().unwrap_or_else(|| format!("sqlite://{}", dir.join("drome.db").display()));
    let fleet: PathBuf = dir.join("fleet.toml");
    std::fs::write(&fleet, super::server::VALENCE_TOML)?;
    // One tenant floods on purpose: no per-tenant limits.
    let no_limits = ["--tenant-rate", "0", "--tenant-pending-jobs", "0", "--tenant-concurrency", "0"];
    let (process, c) = start_server(&exe, &db, &fleet, ADMIN, &no_limits, dir).await?;
    let process = super::bench_agents::ServerProcess(process);
    // A fresh tenant each run (a --db may hold earlier ones), held to one GPU.
    let name = format!("bench-{}-{}", std::process::id(), server::now_ms());
    let tenant = c.post("/v1/tenants", ADMIN, &json!({"name": name, "gpu_quota": 1})).await?;
    let token = tenant["token"].as_str().context("no tenant token")?.to_string();
    let spec = json!({"name": "held", "command": "sleep", "args": ["600"], "gpus_per_node": 1});
    // Warm the connections and the server's caches.
    c.submit_many(&token, &spec, args.clients, args.clients).await?;
    let cpu0 = cpu_seconds(process.0.id()).unwrap_or(0.0);
    let t = Instant::now();
    let (_, mut latencies) = c.submit_many(&token, &spec, args.jobs, args.clients).await?;
    let seconds = t.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(process.0.id()).unwrap_or(0.0);
    latencies.sort_by(f64::total_cmp);
    let database = if db.starts_with("sqlite") { "SQLite (WAL, synchronous FULL)" } else { "PostgreSQL" };
    Ok(Report {
        database: database.into(),
        jobs: args.jobs,
        clients: args.clients,
        seconds,
        submits_per_s: f64::from(args.jobs) / seconds.max(1e-9),
        p50_ms: quantile(&latencies, 0.5),
        p99_ms: quantile(&latencies, 0.99),
        max_ms: latencies.last().copied().unwrap_or(0.0),
        server_cpu_ms_per_submit: (cpu1 - cpu0) * 1000.0 / f64::from(args.jobs),
    })
}
