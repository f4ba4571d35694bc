//! `drome bench`: how fast drome replays real traces, against a baseline run in the same process.

use super::{Output, bench_agents, bench_failover, bench_openb, bench_submit, load_fleet, print_json};
use report::{Table, fmt_thousands};
use sched::{Fifo, FirstFit, Placer, Policy, ScanFirstFit};
use serde::Serialize;
use sim::{LoadFleetShape, SimConfig};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Replay speed of the twin: the whole Philly trace at load 0.85, and the openb default pod
    /// list on its 1,523 nodes, each under FIFO with drome's indexed first fit and, as the
    /// baseline in the same process, with a first fit that scans every node.
    Sim(SimBenchArgs),
    /// The FGD paper's workload-inflation experiment on Alibaba openb.
    Openb(bench_openb::OpenbArgs),
    /// The control plane end to end: a real server and agent processes serving virtual 8-GPU
    /// nodes; trivial-job throughput and whole-node allocation rate, as Slurm's peer measures.
    Agents(bench_agents::AgentsBenchArgs),
    /// Durable submissions alone: a real server takes jobs from concurrent clients, each 201
    /// once its job is durable; submissions per second, latency, the server's CPU per submission.
    Submit(bench_submit::SubmitBenchArgs),
    /// What a flooding tenant does to the others: a quiet tenant's submission latency alone and
    /// beside a tenant submitting as fast as it can, under the default per-tenant limits.
    Flood(super::bench_flood::FloodBenchArgs),
    /// Jobs through a federation endpoint to real site servers on loopback, beside the same jobs
    /// straight to one site: jobs per second, latency, the federation's CPU per job.
    Federation(super::bench_federation::FederationBenchArgs),
    /// Replicas on one PostgreSQL database, the leader killed with SIGKILL again and again under
    /// a storm of submissions: failover times, acknowledged jobs lost, jobs run twice.
    Failover(bench_failover::FailoverBenchArgs),
    /// One placement and start in the live scheduler's path (the event into the live state,
    /// the policy's round, the start applied) on a large fleet full of running jobs, against the
    /// cluster rebuild every round used to pay, timed in the same process.
    Live(LiveBenchArgs),
    /// What sandboxing costs a trivial run, start to end: the plain path and the sandboxed one
    /// (uid, cgroups, mount namespace), alternated in the same process. Needs root.
    Sandbox(super::bench_sandbox::SandboxBenchArgs),
}

#[derive(clap::Args, Debug)]
pub struct LiveBenchArgs {
    /// 8-GPU nodes of the synthetic fleet.
    #[arg(long, default_value_t = 150_000)]
    pub nodes: u32,
    /// Whole-node jobs running when the timing starts.
    #[arg(long, default_value_t = 100_000)]
    pub running: u32,
    /// Starts timed, each a round of its own.
    #[arg(long, default_value_t = 20_000)]
    pub starts: u32,
    /// The policy the rounds run.
    #[arg(long, default_value = "fifo")]
    pub policy: String,
    /// Caps the synthetic fleet's site at this many megawatts: every round then goes through the
    /// power guard (admission mode), as a capped site's server does. A cap below the running
    /// jobs' draw leaves nothing to start; one below the full fleet's makes the guard hide GPUs.
    #[arg(long)]
    pub site_cap_mw: Option<f64>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(clap::Args, Debug)]
pub struct SimBenchArgs {
    /// Philly jobs CSV.
    #[arg(long, default_value = "../shared/traces/philly-pollux-sia/philly.csv")]
    pub philly: PathBuf,
    /// Offered load of the fleet generated for the Philly replay.
    #[arg(long, default_value_t = 0.85)]
    pub load: f64,
    /// openb node list.
    #[arg(long, default_value = "../shared/traces/alibaba-openb-v2023/openb_node_list_all_node.csv")]
    pub openb_nodes: PathBuf,
    /// openb pod list.
    #[arg(long, default_value = "../shared/traces/alibaba-openb-v2023/openb_pod_list_default.csv")]
    pub openb_pods: PathBuf,
    /// Skip the scan baseline (it is slow on large fleets).
    #[arg(long)]
    pub no_baseline: bool,
    /// Nodes of the synthetic fleet on which single placements are timed.
    #[arg(long, default_value_t = 150_000)]
    pub scale_nodes: u32,
    /// Placements timed on the synthetic fleet (the scan baseline times a tenth of them).
    #[arg(long, default_value_t = 20_000)]
    pub scale_placements: u32,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct BenchRow {
    case: String,
    jobs: u64,
    nodes: u64,
    gpus: u64,
    events: u64,
    import_ms: f64,
    sim_ms: f64,
    events_per_s: f64,
    baseline_sim_ms: Option<f64>,
    /// Baseline time over drome's time: how many times faster the indexed placer is.
    speedup: Option<f64>,
    mean_jct_s: f64,
    completed: u64,
}

#[derive(Serialize)]
struct ScaleRow {
    nodes: u32,
    gpus: u64,
    /// Share of GPU capacity held when timing starts.
    allocated_fraction: f64,
    placements: u32,
    us_per_placement: f64,
    baseline_placements: u32,
    baseline_us_per_placement: Option<f64>,
    speedup: Option<f64>,
}

#[derive(Serialize)]
struct BenchReport {
    machine: String,
    rows: Vec<BenchRow>,
    scale: ScaleRow,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Sim(args) => sim_bench(args),
        BenchCommand::Openb(args) => bench_openb::run(args),
        BenchCommand::Agents(args) => bench_agents::run(args),
        BenchCommand::Submit(args) => bench_submit::run(args),
        BenchCommand::Flood(args) => super::bench_flood::run(args),
        BenchCommand::Federation(args) => super::bench_federation::run(args),
        BenchCommand::Failover(args) => bench_failover::run(args),
        BenchCommand::Live(args) => live_bench(args),
        BenchCommand::Sandbox(args) => super::bench_sandbox::run(args),
    }
}

fn live_bench(args: LiveBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0 && args.starts > 0, "--nodes and --starts must be at least 1");
    anyhow::ensure!(args.running < args.nodes, "--running must leave free nodes (it is below --nodes)");
    let shape = LoadFleetShape::default();
    let mut fleet = synthetic_fleet(args.nodes, &shape);
    let power = match args.site_cap_mw {
        Some(mw) => {
            anyhow::ensure!(mw.is_finite() && mw > 0.0, "--site-cap-mw must be a positive number of megawatts");
            for s in &mut fleet.sites {
                s.grid_power_cap_watts = Some(mw * 1e6);
            }
            Some(sched::power::PowerMode::Admission)
        }
        None => None,
    };
    let fleet = Arc::new(fleet);
    let cost = server::live_start_cost(fleet, &args.policy, args.running as usize, args.starts as usize, power)
        .ok_or_else(|| anyhow::anyhow!("unknown policy '{}'", args.policy))?;
    match args.output {
        Output::Json => print_json(&cost),
        Output::Table => {
            println!(
                "live scheduler path: {} nodes, {} jobs running, policy {}{}",
                fmt_thousands(cost.nodes as u64),
                fmt_thousands(cost.running_jobs as u64),
                args.policy,
                args.site_cap_mw.map(|mw| format!(", site capped at {mw} MW (power guard)")).unwrap_or_default()
            );
            let mut t = Table::new(["what", "count", "us each"]);
            t.row(vec![
                "placement + start, live state".into(),
                cost.starts.to_string(),
                format!("{:.2}", cost.us_per_start),
            ]);
            t.row(vec![
                "baseline: cluster rebuilt from every running job (one round)".into(),
                "3".into(),
                format!("{:.0}", cost.baseline_us_per_round),
            ]);
            if let Some(walk) = cost.guard_walk_us {
                t.row(vec![
                    "baseline: the power guard's walk over every node and running job".into(),
                    "3".into(),
                    format!("{walk:.0}"),
                ]);
            }
            println!("{}", t.render().trim_end());
            println!(
                "the live path is {:.0}x cheaper than one rebuilt round; filling the fleet took {:.0} ms",
                cost.speedup, cost.fill_ms
            );
            Ok(())
        }
    }
}

fn replay(
    fleet: &Arc<model::Fleet>,
    workloads: &[model::Workload],
    placer: Box<dyn Placer>,
) -> anyhow::Result<(sim::SimReport, f64)> {
    let mut policy = Fifo::new("fifo", placer);
    let t = Instant::now();
    let report =
        sim::simulate(fleet.clone(), workloads, &mut policy as &mut dyn Policy, &SimConfig::default(), &mut |_| {})?;
    Ok((report, t.elapsed().as_secs_f64() * 1000.0))
}

fn case(
    name: &str,
    fleet: model::Fleet,
    workloads: &[model::Workload],
    import_ms: f64,
    baseline: bool,
) -> anyhow::Result<BenchRow> {
    let fleet = Arc::new(fleet);
    let (report, sim_ms) = replay(&fleet, workloads, Box::new(FirstFit))?;
    let baseline_sim_ms = if baseline {
        let (base, ms) = replay(&fleet, workloads, Box::new(ScanFirstFit))?;
        if base.mean_jct_s != report.mean_jct_s || base.completed != report.completed {
            anyhow::bail!("{name}: the scan baseline disagrees with the indexed first fit");
        }
        Some(ms)
    } else {
        None
    };
    Ok(BenchRow {
        case: name.to_string(),
        jobs: report.jobs,
        nodes: report.fleet_nodes,
        gpus: report.fleet_gpus,
        events: report.events,
        import_ms,
        sim_ms,
        events_per_s: report.events as f64 / (sim_ms / 1000.0).max(1e-9),
        baseline_sim_ms,
        speedup: baseline_sim_ms.map(|b| b / sim_ms.max(1e-9)),
        mean_jct_s: report.mean_jct_s,
        completed: report.completed,
    })
}

fn sim_bench(args: SimBenchArgs) -> anyhow::Result<()> {
    let mut rows = Vec::new();

    let t = Instant::now();
    let philly =
        ::trace::load_workloads(&args.philly, Some(::trace::TraceFormat::Philly), &::trace::TraceOptions::default())?;
    let import_ms = t.elapsed().as_secs_f64() * 1000.0;
    let fleet = sim::fleet_for_load(&philly.workloads, args.load, &LoadFleetShape::default());
    rows.push(case(&format!("philly load {}", args.load), fleet, &philly.workloads, import_ms, !args.no_baseline)?);

    let t = Instant::now();
    let fleet = load_fleet(&args.openb_nodes)?;
    let pods = ::trace::load_workloads(
        &args.openb_pods,
        Some(::trace::TraceFormat::Openb),
        &::trace::TraceOptions::default(),
    )?;
    let import_ms = t.elapsed().as_secs_f64() * 1000.0;
    rows.push(case("openb default", fleet, &pods.workloads, import_ms, !args.no_baseline)?);

    let scale = scale_bench(args.scale_nodes, args.scale_placements, !args.no_baseline)?;
    let report = BenchReport { machine: machine(), rows, scale };
    if args.output == Output::Json {
        return print_json(&report);
    }
    let mut t = Table::new([
        "case",
        "jobs",
        "nodes",
        "events",
        "import ms",
        "sim ms",
        "events/s",
        "scan baseline ms",
        "speedup",
    ])
    .utf8(report::table::stdout_is_tty());
    for r in &report.rows {
        t.row([
            r.case.clone(),
            fmt_thousands(r.jobs),
            fmt_thousands(r.nodes),
            fmt_thousands(r.events),
            format!("{:.1}", r.import_ms),
            format!("{:.1}", r.sim_ms),
            fmt_thousands(r.events_per_s.round() as u64),
            r.baseline_sim_ms.map_or("-".into(), |b| format!("{b:.1}")),
            r.speedup.map_or("-".into(), |s| format!("{s:.1}x")),
        ]);
    }
    println!("{}", t.render());
    let s = &report.scale;
    println!(
        "one placement on {} nodes ({} GPUs, {:.0}% allocated): {:.2} us indexed first fit{}",
        fmt_thousands(s.nodes),
        fmt_thousands(s.gpus),
        100.0 * s.allocated_fraction,
        s.us_per_placement,
        match (s.baseline_us_per_placement, s.speedup) {
            (Some(b), Some(x)) => format!(", {b:.1} us scanning every node: {x:.0}x faster"),
            _ => String::new(),
        }
    );
    println!("machine: {}", report.machine);
    Ok(())
}

/// CPU model and core count, for the record that goes with a timing.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// Times single placements (place one job, release one) on a synthetic fleet of `nodes` 8-GPU
/// nodes filled to about 85% with a seeded mix of 1-8 GPU jobs and multi-node gangs: the cost
/// the live scheduler pays per decision at hyperscale.
fn scale_bench(nodes: u32, placements: u32, baseline: bool) -> anyhow::Result<ScaleRow> {
    use model::{GpuRequest, SimTime, Workload};
    use rand::{Rng, SeedableRng};
    use sched::{ClusterState, Demand};

    let shape = LoadFleetShape::default();
    let gpus = u64::from(nodes) * 8;
    let fleet = Arc::new(synthetic_fleet(nodes, &shape));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut next_id = 0u32;
    let mut job = |rng: &mut rand_chacha::ChaCha8Rng| {
        let gpu = match rng.random_range(0..100) {
            0..40 => GpuRequest::whole_gpus(1, 8),
            40..60 => GpuRequest::whole_gpus(2, 8),
            60..75 => GpuRequest::whole_gpus(4, 8),
            75..95 => GpuRequest::whole_gpus(8, 8),
            _ => GpuRequest::whole_gpus(8 * rng.random_range(2..8), 8),
        };
        let w = Workload::gpu_job(next_id, SimTime::ZERO, gpu, None);
        next_id += 1;
        w
    };
    let mut cluster = ClusterState::new(fleet.clone());
    let mut running: Vec<model::WorkloadId> = Vec::new();
    let target = cluster.total_gpu_milli() * 85 / 100;
    let mut placer = FirstFit;
    while cluster.allocated_gpu_milli() < target {
        let w = job(&mut rng);
        let d = Demand::of(&w, &fleet);
        // Fill randomly rather than front to back, so the fleet is fragmented as a busy one is.
        let from = rng.random_range(0..nodes as usize);
        let node = cluster.first_fit_from(&d, from, |_| true).or_else(|| cluster.first_fit_from(&d, 0, |_| true));
        let placement = match (node, d.members()) {
            (Some(n), 1) => {
                cluster.member_on(n, &d, sched::GpuPick::First).map(|m| sched::Placement { members: vec![m] })
            }
            _ => placer.place(&cluster, &d),
        };
        match placement {
            Some(p) => {
                cluster.allocate(w.id, &d, p)?;
                running.push(w.id);
            }
            None => break,
        }
    }
    let allocated_fraction = cluster.allocated_gpu_milli() as f64 / cluster.total_gpu_milli() as f64;

    let mut time = |placer: &mut dyn Placer,
                    count: u32,
                    cluster: &mut ClusterState,
                    running: &mut Vec<model::WorkloadId>,
                    rng: &mut rand_chacha::ChaCha8Rng|
     -> anyhow::Result<f64> {
        let jobs: Vec<Workload> = (0..count).map(|_| job(rng)).collect();
        let t = Instant::now();
        for w in &jobs {
            let d = Demand::of(w, &fleet);
            if let Some(p) = placer.place(cluster, &d) {
                cluster.allocate(w.id, &d, p)?;
                running.push(w.id);
            }
            if !running.is_empty() {
                let victim = running.swap_remove(rng.random_range(0..running.len()));
                cluster.release(victim)?;
            }
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(count.max(1)))
    };
    let baseline_placements = (placements / 10).max(1);
    let baseline_us = if baseline {
        let mut c = cluster.clone();
        let mut r = running.clone();
        let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        Some(time(&mut ScanFirstFit, baseline_placements, &mut c, &mut r, &mut rng2)?)
    } else {
        None
    };
    let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let us = time(&mut FirstFit, placements, &mut cluster, &mut running, &mut rng2)?;
    Ok(ScaleRow {
        nodes,
        gpus,
        allocated_fraction,
        placements,
        us_per_placement: us,
        baseline_placements,
        baseline_us_per_placement: baseline_us,
        speedup: baseline_us.map(|b| b / us.max(1e-9)),
    })
}

fn synthetic_fleet(nodes: u32, shape: &LoadFleetShape) -> model::Fleet {
    let mut b = model::FleetBuilder::new(format!("synthetic-{nodes}"));
    let site = b.add_site("site-1", model::Cooling::Immersion, None);
    let mut hall = b.add_hall(site, "hall-1", None);
    let mut rack = None;
    for n in 0..nodes {
        if n > 0 && n % 8192 == 0 {
            hall = b.add_hall(site, format!("hall-{}", n / 8192 + 1), None);
        }
        if n % shape.nodes_per_rack.max(1) == 0 {
            rack = Some(b.add_rack(hall, format!("r{}", n / shape.nodes_per_rack.max(1) + 1), None));
        }
        let Some(rack) = rack else { continue };
        b.add_node(
            rack,
            model::NodeSpec {
                name: format!("n{n}"),
                cpu_milli: shape.cpu_milli,
                memory_mib: shape.memory_mib,
                gpu_count: shape.gpus_per_node,
                gpu_model: Some(shape.gpu_model.clone()),
                nvlink_domain: None,
                leaf_switch: None,
            },
        );
    }
    b.build()
}
