//! `drome sim`: replay a trace through a policy in the digital twin.

use super::{FormatArg, Output, load_fleet, load_trace, print_json, progress_bar};
use anyhow::Context;
use report::{AxisFormat, Chart, Panel, Series, Table, fmt_duration_s, fmt_pct, fmt_thousands};
use sim::{LoadFleetShape, SimConfig, SimReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `drome sim`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    drome sim --load 0.85 --trace ../shared/traces/philly-pollux-sia/philly.csv --policy fifo\n  \
    drome sim --fleet ../shared/traces/alibaba-openb-v2023/openb_node_list_all_node.csv \\\n    \
    --trace ../shared/traces/alibaba-openb-v2023/openb_pod_list_default.csv --policy fifo-bestfit --output json\n  \
    drome sim --fleet fleets/valence.toml --trace jobs.csv --plot out/valence.png --csv out/valence.csv")]
pub struct SimArgs {
    /// Fleet: a fleet TOML (fleets/valence.toml) or a node list CSV (openb, PAI, spot-GPU).
    #[arg(long, required_unless_present = "load", conflicts_with = "load")]
    pub fleet: Option<PathBuf>,
    /// Instead of --fleet: generate a fleet of 8-GPU nodes sized so the trace's offered load
    /// (GPU-seconds asked / GPU-seconds available over the trace's span) is this value.
    #[arg(long)]
    pub load: Option<f64>,
    /// Workload trace CSV.
    #[arg(long)]
    pub trace: PathBuf,
    /// Trace format; detected from the header when omitted.
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Scheduling policy (see `--list-policies`).
    #[arg(long, default_value = "fifo")]
    pub policy: String,
    /// Seed for policies that randomise; same seed, same result.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Write the time series (time, GPU allocation, queue length, running jobs) to this CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Plot GPU allocation and queue length over time to this PNG or SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let trace = load_trace(&args.trace, args.format)?;
    let fleet = match (&args.fleet, args.load) {
        (Some(path), _) => load_fleet(path)?,
        (None, Some(load)) => {
            if !(load.is_finite() && load > 0.0) {
                anyhow::bail!("--load must be a positive number, got {load}");
            }
            sim::fleet_for_load(&trace.workloads, load, &LoadFleetShape::default())
        }
        (None, None) => anyhow::bail!("give --fleet FILE or --load X"),
    };
    let fleet = Arc::new(fleet);
    let mut policy = sched::policy_by_name(&args.policy, args.seed)?;
    let bar = progress_bar(trace.workloads.len() as u64 * 2, "simulating", args.quiet);
    let config = SimConfig { seed: args.seed, keep_records: false };
    let report = sim::simulate(fleet.clone(), &trace.workloads, policy.as_mut(), &config, &mut |p| {
        bar.set_length(p.events_total);
        bar.set_position(p.events_done);
    })?;
    bar.finish_and_clear();

    if let Some(path) = &args.csv {
        write_series_csv(path, &report)?;
    }
    if let Some(path) = &args.plot {
        plot(path, &report, &args.trace)?;
    }
    let load = sim::offered_load(&trace.workloads, fleet.total_gpus());
    match args.output {
        Output::Json => {
            let mut value = serde_json::to_value(&report)?;
            if let Some(obj) = value.as_object_mut() {
                obj.insert("trace".into(), args.trace.display().to_string().into());
                obj.insert("offered_load".into(), load.into());
            }
            print_json(&value)
        }
        Output::Table => {
            print_table(&report, load);
            Ok(())
        }
    }
}

fn print_table(r: &SimReport, load: f64) {
    let tty = report::table::stdout_is_tty();
    let mut t = Table::new([
        "policy",
        "jobs",
        "done",
        "never fit",
        "mean JCT",
        "p50 JCT",
        "p99 JCT",
        "mean wait",
        "makespan",
        "GPU util",
    ])
    .utf8(tty);
    t.row([
        r.policy.clone(),
        fmt_thousands(r.jobs),
        fmt_thousands(r.completed),
        fmt_thousands(r.never_fit),
        fmt_duration_s(r.mean_jct_s),
        fmt_duration_s(r.p50_jct_s),
        fmt_duration_s(r.p99_jct_s),
        fmt_duration_s(r.mean_wait_s),
        fmt_duration_s(r.makespan_s),
        fmt_pct(r.gpu_utilization),
    ]);
    println!("{}", t.render());
    println!(
        "fleet: {} GPUs on {} nodes, offered load {:.2}; peak queue {} jobs; {} unfinished",
        fmt_thousands(r.fleet_gpus),
        fmt_thousands(r.fleet_nodes),
        load,
        fmt_thousands(u64::from(r.peak_queue_len)),
        fmt_thousands(r.unfinished)
    );
}

fn write_series_csv(path: &Path, r: &SimReport) -> anyhow::Result<()> {
    let rows = r.series.iter().map(|p| [p.t_s, p.gpu_allocation, f64::from(p.queue_len), f64::from(p.running)]);
    report::csv_out::write_columns(path, &["t_s", "gpu_allocation", "queue_len", "running"], rows)
        .with_context(|| format!("cannot write the time series to {}", path.display()))?;
    Ok(())
}

fn plot(path: &Path, r: &SimReport, trace: &Path) -> anyhow::Result<()> {
    let hours = |t: f64| t / 3600.0;
    let alloc: Vec<(f64, f64)> = r.series.iter().map(|p| (hours(p.t_s), p.gpu_allocation)).collect();
    let queue: Vec<(f64, f64)> = r.series.iter().map(|p| (hours(p.t_s), f64::from(p.queue_len))).collect();
    let name = trace.file_name().map_or_else(|| trace.display().to_string(), |n| n.to_string_lossy().into_owned());
    Chart::new(format!("{} on {} GPUs, policy {}", name, r.fleet_gpus, r.policy))
        .x_label("time (hours)")
        .panel(
            Panel::new("GPU allocation")
                .series(Series::new("allocated", alloc).steps())
                .y_range(0.0, 1.0)
                .y_format(AxisFormat::Percent),
        )
        .panel(Panel::new("jobs queued").series(Series::new("queue", queue).steps()))
        .render(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
}
