//! `drome bench federation`: jobs dispatched through a federation endpoint to real site servers
//! on loopback, each a `drome server` process with its own SQLite store, beside the same jobs
//! sent straight to one site server in the same run. Each `201` through the federation comes
//! once the job is durable in the federation's record and in its site's store.

use super::bench_agents::{ServerProcess, cpu_seconds, quantile, start_server};
use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug)]
pub struct FederationBenchArgs {
    /// Site servers behind the federation.
    #[arg(long, default_value_t = 3)]
    pub sites: u32,
    /// Jobs timed, through the federation and straight to one site each.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: u32,
    /// Submissions in flight at once (concurrent clients).
    #[arg(long, default_value_t = 64)]
    pub clients: u32,
    /// Dispatch policy of the federation.
    #[arg(long, default_value = "capacity")]
    pub dispatch: String,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct TimedPath {
    path: String,
    jobs: u32,
    seconds: f64,
    jobs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// CPU the federation process used per job, milliseconds (0 for the direct path).
    federation_cpu_ms_per_job: f64,
    /// Submission to running, one job at a time on idle sites, milliseconds.
    start_p50_ms: f64,
    start_max_ms: f64,
}

#[derive(Serialize)]
struct Report {
    sites: u32,
    clients: u32,
    dispatch: String,
    paths: Vec<TimedPath>,
    /// Jobs each site took through the federation.
    per_site: Vec<(String, u64)>,
    /// Throughput through the federation over that of one site alone.
    ratio: f64,
}

const ADMIN: &str = "bench-federation-admin";
/// Jobs timed from submission to running, one at a time.
const START_SAMPLES: u32 = 20;
const FED_ADMIN: &str = "bench-federation-endpoint-admin";

pub fn run(args: FederationBenchArgs) -> anyhow::Result<()> {
    if args.jobs == 0 || args.clients == 0 || args.sites == 0 {
        bail!("--sites, --jobs and --clients must be at least 1");
    }
    let r = super::bench_agents::in_scratch_dir("federation", |dir| {
        let args = &args;
        async move { bench(args, &dir).await }
    })?;
    match args.output {
        Output::Json => print_json(&r),
        Output::Table => {
            println!(
                "drome federation dispatch: {} site servers and a federation endpoint on loopback, SQLite each, {} clients, {} dispatch",
                r.sites, r.clients, r.dispatch
            );
            let mut t = Table::new([
                "path",
                "jobs",
                "time (s)",
                "jobs/s",
                "p50 / p99 (ms)",
                "federation CPU ms/job",
                "to running p50 / max (ms)",
            ]);
            for p in &r.paths {
                t.row(vec![
                    p.path.clone(),
                    p.jobs.to_string(),
                    format!("{:.2}", p.seconds),
                    format!("{:.0}", p.jobs_per_s),
                    format!("{:.1} / {:.1}", p.p50_ms, p.p99_ms),
                    format!("{:.3}", p.federation_cpu_ms_per_job),
                    format!("{:.0} / {:.0}", p.start_p50_ms, p.start_max_ms),
                ]);
            }
            println!("{}", t.render());
            let sites: Vec<String> = r.per_site.iter().map(|(s, n)| format!("{s} {n}")).collect();
            println!("jobs per site through the federation: {}", sites.join(", "));
            println!("federation / one site alone: {:.2}x", r.ratio);
            Ok(())
        }
    }
}

async fn bench(args: &FederationBenchArgs, dir: &Path) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let fleet = dir.join("fleet.toml");
    std::fs::write(&fleet, super::server::VALENCE_TOML)?;
    let no_limits = ["--tenant-rate", "0", "--tenant-pending-jobs", "0", "--tenant-concurrency", "0"];
    let mut sites = Vec::new();
    let mut sites_toml = String::new();
    for i in 0..args.sites {
        let site_dir = dir.join(format!("site-{i}"));
        std::fs::create_dir_all(&site_dir)?;
        let db = format!("sqlite://{}", site_dir.join("drome.db").display());
        let (process, client) = start_server(&exe, &db, &fleet, ADMIN, &no_limits, &site_dir).await?;
        sites_toml.push_str(&format!(
            "[[site]]\nname = \"site-{i}\"\nurl = \"{}\"\nadmin_token = \"{ADMIN}\"\n\n",
            client.base
        ));
        sites.push((ServerProcess(process), client));
    }
    let sites_path = dir.join("sites.toml");
    std::fs::write(&sites_path, sites_toml)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let log = std::fs::File::create(dir.join("federation.log"))?;
    let federation = Command::new(&exe)
        .args(["federation", "--sites"])
        .arg(&sites_path)
        .args(["--db", &format!("sqlite://{}", dir.join("federation.db").display())])
        .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-token", FED_ADMIN, "--dispatch", &args.dispatch])
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("cannot start the federation")?;
    let federation = ServerProcess(federation);
    let fed = super::bench_agents::Client {
        http: reqwest::Client::builder().timeout(Duration::from_secs(60)).pool_max_idle_per_host(256).build()?,
        base: format!("http://127.0.0.1:{port}"),
    };
    // The federation answers once it has heard from every site.
    let t0 = Instant::now();
    loop {
        if let Ok(v) = fed.get("/v1/federation/sites", FED_ADMIN).await
            && v.as_array().is_some_and(|a| a.len() == sites.len() && a.iter().all(|s| s["reachable"] == true))
        {
            break;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!("the federation never heard from every site; see {}", dir.join("federation.log").display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spec = json!({"name": "bench", "command": "sleep", "args": ["600"], "gpus_per_node": 1});

    // Straight to one site: the baseline, measured in the same run.
    let (_, site) = &sites[0];
    let direct_tenant = site.post("/v1/tenants", ADMIN, &json!({"name": "direct"})).await?;
    let direct_token = direct_tenant["token"].as_str().context("no tenant token")?.to_string();
    let tenant = fed.post("/v1/tenants", FED_ADMIN, &json!({"name": "lab"})).await?;
    let token = tenant["token"].as_str().context("no tenant token")?.to_string();
    // Submission to running, one job at a time on idle sites: a federated start waits for its
    // grant, asked and given at the federation's polls.
    let mut direct_start = time_to_running(site, &direct_token, &spec, START_SAMPLES).await?;
    let mut fed_start = time_to_running(&fed, &token, &spec, START_SAMPLES).await?;
    direct_start.sort_by(f64::total_cmp);
    fed_start.sort_by(f64::total_cmp);
    site.submit_many(&direct_token, &spec, args.clients, args.clients).await?;
    let t = Instant::now();
    let (_, mut direct_lat) = site.submit_many(&direct_token, &spec, args.jobs, args.clients).await?;
    let direct_s = t.elapsed().as_secs_f64();
    direct_lat.sort_by(f64::total_cmp);

    // Warm: the tenant made at each site, the connections open.
    fed.submit_many(&token, &spec, args.clients.max(args.sites * 4), args.clients).await?;
    let cpu0 = cpu_seconds(federation.0.id()).unwrap_or(0.0);
    let t = Instant::now();
    let (_, mut fed_lat) = fed.submit_many(&token, &spec, args.jobs, args.clients).await?;
    let fed_s = t.elapsed().as_secs_f64();
    let cpu1 = cpu_seconds(federation.0.id()).unwrap_or(0.0);
    fed_lat.sort_by(f64::total_cmp);
    let sites_view = fed.get("/v1/federation/sites", FED_ADMIN).await?;
    let per_site = sites_view
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| (s["name"].as_str().unwrap_or("").to_string(), s["active_jobs"].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let direct_rate = f64::from(args.jobs) / direct_s.max(1e-9);
    let fed_rate = f64::from(args.jobs) / fed_s.max(1e-9);
    Ok(Report {
        sites: args.sites,
        clients: args.clients,
        dispatch: args.dispatch.clone(),
        paths: vec![
            TimedPath {
                path: "one site server, straight".into(),
                jobs: args.jobs,
                seconds: direct_s,
                jobs_per_s: direct_rate,
                p50_ms: quantile(&direct_lat, 0.5),
                p99_ms: quantile(&direct_lat, 0.99),
                federation_cpu_ms_per_job: 0.0,
                start_p50_ms: quantile(&direct_start, 0.5),
                start_max_ms: direct_start.last().copied().unwrap_or(0.0),
            },
            TimedPath {
                path: format!("federation over {} sites", args.sites),
                jobs: args.jobs,
                seconds: fed_s,
                jobs_per_s: fed_rate,
                p50_ms: quantile(&fed_lat, 0.5),
                p99_ms: quantile(&fed_lat, 0.99),
                federation_cpu_ms_per_job: (cpu1 - cpu0) * 1000.0 / f64::from(args.jobs),
                start_p50_ms: quantile(&fed_start, 0.5),
                start_max_ms: fed_start.last().copied().unwrap_or(0.0),
            },
        ],
        per_site,
        ratio: fed_rate / direct_rate.max(1e-9),
    })
}

/// Submits `n` jobs one after the other, each once the one before runs: how long each took from
/// its submission to running, milliseconds.
async fn time_to_running(
    c: &super::bench_agents::Client,
    token: &str,
    spec: &serde_json::Value,
    n: u32,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let t = Instant::now();
        let id = c.post("/v1/jobs", token, spec).await?["id"].as_i64().context("a submission's answer has no id")?;
        loop {
            let job = c.get(&format!("/v1/jobs/{id}"), token).await?;
            if job["state"] == "running" {
                break;
            }
            if t.elapsed() > Duration::from_secs(60) {
                bail!("job {id} did not run within 60 s: {job}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        out.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}
