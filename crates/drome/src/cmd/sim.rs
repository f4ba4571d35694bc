//! `drome sim`: replay a trace through a policy in the digital twin.

use super::{FormatArg, Output, load_fleet, load_trace, print_json, progress_bar};
use anyhow::Context;
use model::SimDuration;
use report::{AxisFormat, Chart, Panel, Series, Table, fmt_duration_s, fmt_pct, fmt_thousands};
use sim::{LoadFleetShape, SimConfig, SimReport};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Arguments of `drome sim`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    drome sim --load 0.85 --trace ../shared/traces/philly-pollux-sia/philly.csv --policy fifo\n  \
    drome sim --load 0.85 --trace ../shared/traces/philly-pollux-sia/philly.csv \\\n    \
    --policy fifo,tiresias,drome --plot out/philly-jct.png\n  \
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
    /// Scheduling policy, or several separated by commas to compare them on the same trace and
    /// fleet (one table, one CDF plot of JCT). Known: fifo, fifo-bestfit, backfill, fairshare,
    /// quota, tiresias, srpt, drome.
    #[arg(long, default_value = "fifo")]
    pub policy: String,
    /// Preemption cost: a running job checkpoints after every this many seconds of work; a
    /// preempted job redoes the work since its last checkpoint (0: no work is lost).
    #[arg(long, default_value_t = 300.0)]
    pub checkpoint_interval: f64,
    /// Preemption cost: seconds a preempted job holds its GPUs on restart before it progresses.
    #[arg(long, default_value_t = 60.0)]
    pub restart_delay: f64,
    /// Seed for policies that randomise; same seed, same result.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Write the time series (time, GPU allocation, queue length, running jobs) to this CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Plot GPU allocation and queue length over time to this PNG or SVG; with several policies,
    /// the CDF of JCT of each.
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
    let names: Vec<&str> = args.policy.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        anyhow::bail!("--policy names no policy");
    }
    for (what, v) in [("--checkpoint-interval", args.checkpoint_interval), ("--restart-delay", args.restart_delay)] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{what} must be a non-negative number of seconds, got {v}");
        }
    }
    let mut policies = Vec::with_capacity(names.len());
    for name in &names {
        policies.push(sched::policy_by_name(name, args.seed)?);
    }
    let compare = policies.len() > 1;
    let config = SimConfig {
        seed: args.seed,
        keep_records: compare && args.plot.is_some(),
        checkpoint_interval: SimDuration::from_secs_f64(args.checkpoint_interval),
        restart_delay: SimDuration::from_secs_f64(args.restart_delay),
        ..SimConfig::default()
    };
    let mut reports = Vec::with_capacity(policies.len());
    for policy in &mut policies {
        let bar = progress_bar(trace.workloads.len() as u64 * 2, policy.name(), args.quiet);
        let report = sim::simulate(fleet.clone(), &trace.workloads, policy.as_mut(), &config, &mut |p| {
            bar.set_length(p.events_total);
            bar.set_position(p.events_done);
        })?;
        bar.finish_and_clear();
        reports.push(report);
    }

    if let (Some(path), false) = (&args.csv, compare) {
        write_series_csv(path, &reports[0])?;
    }
    if let Some(path) = &args.csv
        && compare
    {
        write_compare_csv(path, &reports)?;
    }
    if let Some(path) = &args.plot {
        if compare {
            plot_jct_cdf(path, &reports, &args.trace)?;
        } else {
            plot(path, &reports[0], &args.trace)?;
        }
    }
    let load = sim::offered_load(&trace.workloads, fleet.total_gpus());
    match args.output {
        Output::Json => {
            let mut runs = Vec::with_capacity(reports.len());
            for r in &reports {
                let mut value = serde_json::to_value(r)?;
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("trace".into(), args.trace.display().to_string().into());
                    obj.insert("offered_load".into(), load.into());
                    if let Some(rows) = obj.get_mut("tenants").and_then(|t| t.as_array_mut()) {
                        for row in rows {
                            let name = row
                                .get("tenant")
                                .and_then(serde_json::Value::as_u64)
                                .and_then(|t| trace.tenants.get(t as usize))
                                .cloned();
                            if let (Some(name), Some(o)) = (name, row.as_object_mut()) {
                                o.insert("name".into(), name.into());
                            }
                        }
                    }
                }
                runs.push(value);
            }
            if compare { print_json(&serde_json::json!({ "runs": runs })) } else { print_json(&runs[0]) }
        }
        Output::Table => {
            print_table(&reports, load);
            if !compare {
                print_tenants(&reports[0], &trace.tenants);
            }
            Ok(())
        }
    }
}

fn print_table(reports: &[SimReport], load: f64) {
    let tty = report::table::stdout_is_tty();
    let mut t = Table::new([
        "policy",
        "jobs",
        "done",
        "mean JCT",
        "p50 JCT",
        "p99 JCT",
        "mean wait",
        "preemptions",
        "lost GPU-h",
        "switches/gang",
        "Jain",
        "makespan",
        "GPU util",
    ])
    .utf8(tty);
    for r in reports {
        t.row([
            r.policy.clone(),
            fmt_thousands(r.jobs),
            fmt_thousands(r.completed),
            fmt_duration_s(r.mean_jct_s),
            fmt_duration_s(r.p50_jct_s),
            fmt_duration_s(r.p99_jct_s),
            fmt_duration_s(r.mean_wait_s),
            fmt_thousands(r.preemptions),
            format!("{:.0}", r.lost_gpu_hours),
            format!("{:.2}", r.mean_switches_per_gang),
            format!("{:.3}", r.jain_fairness),
            fmt_duration_s(r.makespan_s),
            fmt_pct(r.gpu_utilization),
        ]);
    }
    println!("{}", t.render());
    if let Some(r) = reports.first() {
        println!(
            "fleet: {} GPUs on {} nodes, offered load {:.2}; never fit {}; peak queue {} jobs ({}); {} unfinished",
            fmt_thousands(r.fleet_gpus),
            fmt_thousands(r.fleet_nodes),
            load,
            fmt_thousands(r.never_fit),
            fmt_thousands(u64::from(r.peak_queue_len)),
            r.policy,
            fmt_thousands(r.unfinished)
        );
    }
}

fn print_tenants(r: &SimReport, names: &[String]) {
    let tty = report::table::stdout_is_tty();
    let mut t =
        Table::new(["tenant", "jobs", "mean wait", "mean JCT", "GPU-hours", "mean slowdown", "preemptions"]).utf8(tty);
    for row in &r.tenants {
        t.row([
            names.get(row.tenant as usize).cloned().unwrap_or_else(|| row.tenant.to_string()),
            fmt_thousands(row.jobs),
            fmt_duration_s(row.mean_wait_s),
            fmt_duration_s(row.mean_jct_s),
            format!("{:.0}", row.gpu_hours),
            format!("{:.2}", row.mean_slowdown),
            fmt_thousands(row.preemptions),
        ]);
    }
    println!("{}", t.render());
    println!("Jain's fairness over tenants' mean slowdown: {:.3}", r.jain_fairness);
}

fn write_compare_csv(path: &Path, reports: &[SimReport]) -> anyhow::Result<()> {
    let mut text = String::from(
        "policy,mean_jct_s,p50_jct_s,p99_jct_s,mean_wait_s,preemptions,lost_gpu_hours,mean_switches_per_gang,jain_fairness\n",
    );
    for r in reports {
        text.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            r.policy,
            r.mean_jct_s,
            r.p50_jct_s,
            r.p99_jct_s,
            r.mean_wait_s,
            r.preemptions,
            r.lost_gpu_hours,
            r.mean_switches_per_gang,
            r.jain_fairness
        ));
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn plot_jct_cdf(path: &Path, reports: &[SimReport], trace: &Path) -> anyhow::Result<()> {
    let name = trace.file_name().map_or_else(|| trace.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut panel = Panel::new("fraction of jobs").y_range(0.0, 1.0).y_format(AxisFormat::Percent);
    for r in reports {
        let jcts: Vec<f64> = r.records.iter().filter_map(|j| j.jct_s()).map(|s| s.max(1.0) / 3600.0).collect();
        panel = panel.series(Series::cdf(r.policy.clone(), &jcts));
    }
    let gpus = reports.first().map_or(0, |r| r.fleet_gpus);
    Chart::new(format!("JCT on {name}, {gpus} GPUs"))
        .x_label("job completion time (hours)")
        .x_log()
        .panel(panel)
        .render(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
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
