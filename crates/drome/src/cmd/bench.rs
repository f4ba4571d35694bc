//! `drome bench`: how fast drome replays real traces, against a baseline run in the same process.

use super::{Output, bench_openb, load_fleet, print_json};
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
struct BenchReport {
    machine: String,
    rows: Vec<BenchRow>,
}

pub fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Sim(args) => sim_bench(args),
        BenchCommand::Openb(args) => bench_openb::run(args),
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

    let report = BenchReport { machine: machine(), rows };
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
