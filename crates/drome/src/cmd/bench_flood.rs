//! `drome bench flood`: what a flooding tenant does to the others. A real `drome server` with its
//! default per-tenant limits; a quiet tenant submits at a steady pace, first alone, then while
//! another tenant's clients submit as fast as they can. The quiet tenant's latency is compared,
//! p50 and p99, with and without the flood, measured in the same run.

use super::bench_agents::{quantile, start_server};
use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct FloodBenchArgs {
    /// Submissions the quiet tenant makes in each phase.
    #[arg(long, default_value_t = 400)]
    pub quiet_requests: u32,
    /// The quiet tenant's pace, requests a second.
    #[arg(long, default_value_t = 50.0)]
    pub quiet_rate: f64,
    /// The flooding tenant's concurrent clients.
    #[arg(long, default_value_t = 32)]
    pub flood_clients: u32,
    /// Requests of one tenant the server serves at once (its default; 0: no such limit, to
    /// see what the seats do).
    #[arg(long, default_value_t = 4)]
    pub tenant_concurrency: u32,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct Report {
    quiet_requests: u32,
    quiet_rate: f64,
    flood_clients: u32,
    tenant_concurrency: u32,
    alone_p50_ms: f64,
    alone_p99_ms: f64,
    flooded_p50_ms: f64,
    flooded_p99_ms: f64,
    /// Flooded p99 over alone p99.
    p99_ratio: f64,
    /// The quiet tenant's requests refused (any status but 201) while flooded.
    quiet_refused: u64,
    flood_accepted: u64,
    flood_refused_429: u64,
    flood_seconds: f64,
}

const ADMIN: &str = "bench-flood-admin";

pub fn run(args: FloodBenchArgs) -> anyhow::Result<()> {
    if args.quiet_requests == 0 || !(args.quiet_rate > 0.0 && args.quiet_rate <= 10_000.0) {
        bail!("--quiet-requests must be at least 1 and --quiet-rate between 0 and 10000");
    }
    let r = super::bench_agents::in_scratch_dir("flood", |dir| {
        let args = &args;
        async move { bench(args, &dir).await }
    })?;
    match args.output {
        Output::Json => print_json(&r),
        Output::Table => {
            println!(
                "a quiet tenant's submissions ({} at {}/s) alone and beside a tenant flooding with {} clients; \
                 default limits (200 requests/s, bursts of 1000, per tenant) and {} requests of a tenant served at once",
                r.quiet_requests, r.quiet_rate, r.flood_clients, r.tenant_concurrency
            );
            let mut t = Table::new(["quiet tenant", "p50 (ms)", "p99 (ms)", "refused"]);
            t.row(vec!["alone".into(), format!("{:.2}", r.alone_p50_ms), format!("{:.2}", r.alone_p99_ms), "0".into()]);
            t.row(vec![
                "flooded".into(),
                format!("{:.2}", r.flooded_p50_ms),
                format!("{:.2}", r.flooded_p99_ms),
                r.quiet_refused.to_string(),
            ]);
            println!("{}", t.render());
            println!(
                "p99 flooded / alone: {:.2}x; the flood: {} accepted, {} refused with 429 in {:.1} s",
                r.p99_ratio, r.flood_accepted, r.flood_refused_429, r.flood_seconds
            );
            Ok(())
        }
    }
}

/// The quiet tenant's latencies at its pace, and how many of its requests were refused.
async fn quiet(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    args: &FloodBenchArgs,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let spec = json!({"command": "true", "gpus_per_node": 0, "cpu_milli": 100, "memory_mib": 64});
    let period = Duration::from_secs_f64(1.0 / args.quiet_rate);
    let mut next = tokio::time::Instant::now();
    let (mut latencies, mut refused) = (Vec::new(), 0);
    for _ in 0..args.quiet_requests {
        tokio::time::sleep_until(next).await;
        next += period;
        let t = Instant::now();
        let r = http.post(format!("{base}/v1/jobs")).bearer_auth(token).json(&spec).send().await?;
        let ok = r.status() == reqwest::StatusCode::CREATED;
        let _ = r.bytes().await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
        refused += u64::from(!ok);
    }
    Ok((latencies, refused))
}

async fn bench(args: &FloodBenchArgs, dir: &Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let fleet: PathBuf = dir.join("fleet.toml");
    std::fs::write(&fleet, super::server::VALENCE_TOML)?;
    let concurrency = args.tenant_concurrency.to_string();
    let extra = ["--tenant-concurrency", concurrency.as_str()];
    let (process, c) = start_server(&exe, &db, &fleet, ADMIN, &extra, dir).await?;
    let _process = super::bench_agents::ServerProcess(process);
    let token = |v: serde_json::Value| v["token"].as_str().map(str::to_string).context("no tenant token");
    let quiet_token = token(c.post("/v1/tenants", ADMIN, &json!({"name": "quiet"})).await?)?;
    let flood_token = token(c.post("/v1/tenants", ADMIN, &json!({"name": "flood"})).await?)?;
    let http = c.http.clone();
    let base = c.base.clone();

    let (alone, _) = quiet(&http, &base, &quiet_token, args).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let (accepted, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut flooders = Vec::new();
    for _ in 0..args.flood_clients.max(1) {
        let (http, base, token) = (http.clone(), base.clone(), flood_token.clone());
        let (stop, accepted, limited) = (stop.clone(), accepted.clone(), limited.clone());
        flooders.push(tokio::spawn(async move {
            let spec = json!({"command": "true", "gpus_per_node": 0, "cpu_milli": 100, "memory_mib": 64});
            while !stop.load(Ordering::Relaxed) {
                let Ok(r) = http.post(format!("{base}/v1/jobs")).bearer_auth(&token).json(&spec).send().await else {
                    continue;
                };
                match r.status() {
                    reqwest::StatusCode::CREATED => accepted.fetch_add(1, Ordering::Relaxed),
                    reqwest::StatusCode::TOO_MANY_REQUESTS => limited.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                let _ = r.bytes().await;
            }
        }));
    }
    // Past the flood's first burst, into its steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let t0 = Instant::now();
    let (flooded, quiet_refused) = quiet(&http, &base, &quiet_token, args).await?;
    let flood_seconds = t0.elapsed().as_secs_f64() + 2.0;
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        let _ = f.await;
    }
    let (alone_p99, flooded_p99) = (quantile(&alone, 0.99), quantile(&flooded, 0.99));
    Ok(Report {
        quiet_requests: args.quiet_requests,
        quiet_rate: args.quiet_rate,
        flood_clients: args.flood_clients,
        tenant_concurrency: args.tenant_concurrency,
        alone_p50_ms: quantile(&alone, 0.5),
        alone_p99_ms: alone_p99,
        flooded_p50_ms: quantile(&flooded, 0.5),
        flooded_p99_ms: flooded_p99,
        p99_ratio: flooded_p99 / alone_p99.max(1e-9),
        quiet_refused,
        flood_accepted: accepted.load(Ordering::Relaxed),
        flood_refused_429: limited.load(Ordering::Relaxed),
        flood_seconds,
    })
}
