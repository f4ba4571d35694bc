//! `drome bench openb`: the FGD paper's workload-inflation experiment on the Alibaba openb trace.
//!
//! For every pod list, policy and seed: the pod list inflated to `--tune` times the cluster's GPU
//! capacity (seeded, shuffled), pods placed one at a time with no queue and no departures, the GPU
//! allocation ratio recorded as the arrived demand crosses each percent of capacity. Prints the
//! paper-style table (mean of seeds) beside the paper's own numbers and an LP upper bound.
//!
//! The cluster is the 1,213 GPU nodes (`openb_node_list_gpu_node.csv`), as in the paper's runs:
//! its input preparation (`data/prepare_input.sh` of the paper's simulator) copies the GPU-node
//! list into every workload directory, so CPU-only pods compete for the GPU nodes' CPU. With it
//! Random, DotProd, BestFit and FGD land within 0.25 points of the paper's numbers; with all
//! 1,523 nodes (`--nodes .../openb_node_list_all_node.csv`) Random and DotProd run 1.3-1.5
//! points above. Pod order: the paper's simulator shuffles the pod list and appends the inflation
//! pods; its later stable sort by creation time keeps that order, as its pod files carry no
//! creation-time annotation.

use super::{Output, print_json, progress_bar};
use anyhow::{Context, bail};
use model::{Fleet, Workload};
use report::{AxisFormat, Chart, Legend, Panel, Series, Table, fmt_num};
use sched::Demand;
use sched::frag::{
    DEFAULT_POPULARITY, FragMeter, POLICY_NAMES, STUDY_POLICY_NAMES, TypicalPods, display_name, placer_by_name,
};
use serde::Serialize;
use sim::openb::{RunOutcome, allocation_bound, inflate, run_inflation};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

const DEFAULT_DIR: &str = "../shared/traces/alibaba-openb-v2023";

/// Arguments of `drome bench openb`.
#[derive(clap::Args, Debug)]
pub struct OpenbArgs {
    /// Node list (the paper's runs use the 1,213 GPU nodes; `openb_node_list_all_node.csv` adds
    /// the 310 CPU-only nodes).
    #[arg(long, default_value = "../shared/traces/alibaba-openb-v2023/openb_node_list_gpu_node.csv")]
    pub nodes: PathBuf,
    /// Pod lists, one workload each (repeat the flag); default: the default pod list.
    #[arg(long = "pods")]
    pub pods: Vec<PathBuf>,
    /// Policies, comma-separated, or `all`: random, dotprod, gpuclustering, gpupacking, bestfit,
    /// fgd, drome. For study, not in `all`: drome-hold, drome's placer refusing shares that would
    /// leave a dead leftover on a whole GPU once 70% of the GPUs are allocated (it gains at 130%
    /// arrived and loses until demand nears the capacity; compare the curves with --plot).
    #[arg(long, default_value = "all")]
    pub policies: String,
    /// Seeds: a range `42-51` or a list `42,43`.
    #[arg(long, default_value = "42-51")]
    pub seeds: String,
    /// Inflation target, as a multiple of the cluster's GPU capacity.
    #[arg(long, default_value_t = sim::openb::PAPER_TUNE)]
    pub tune: f64,
    /// Runs in parallel (default: the machine's available parallelism).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// The paper's saved results (`analysis_allo_discrete.csv`); default: the one in
    /// `fgd_expected_results/` next to the first pod list, when present.
    #[arg(long)]
    pub expected: Option<PathBuf>,
    /// Skip the LP upper bound.
    #[arg(long)]
    pub no_bound: bool,
    /// Write the curves (allocation, fragmentation vs arrived demand; mean of seeds) as CSV here.
    #[arg(long)]
    pub csv_dir: Option<PathBuf>,
    /// Draw allocation vs arrived demand (the paper's Figure 9(a)) to this PNG or SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize, Clone)]
struct RunRow {
    workload: String,
    policy: String,
    seed: u64,
    allocation_pct: f64,
    frag_ratio_pct_at_90: f64,
    frag_pct_at_90: f64,
    pods_arrived: usize,
    pods_placed: usize,
    wall_ms: f64,
}

#[derive(Serialize)]
struct SummaryRow {
    workload: String,
    policy: String,
    allocation_pct_mean: f64,
    paper_allocation_pct_mean: Option<f64>,
    delta_vs_paper: Option<f64>,
    frag_ratio_pct_at_90_mean: f64,
    wall_ms_mean: f64,
    seeds: usize,
}

#[derive(Serialize)]
struct BoundRow {
    workload: String,
    bound_pct_mean: f64,
    bound_pct_min: f64,
}

#[derive(Serialize)]
struct Report {
    tune: f64,
    runs: Vec<RunRow>,
    summary: Vec<SummaryRow>,
    bounds: Vec<BoundRow>,
}

struct Workload_ {
    name: String,
    demands: Vec<Demand>,
    typical: TypicalPods,
    meter: FragMeter,
}

fn parse_seeds(s: &str) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        if let Some((a, b)) = part.split_once('-') {
            let a: u64 = a.trim().parse().with_context(|| format!("bad seed range '{part}'"))?;
            let b: u64 = b.trim().parse().with_context(|| format!("bad seed range '{part}'"))?;
            if b < a {
                bail!("seed range '{part}' is empty");
            }
            out.extend(a..=b);
        } else {
            out.push(part.parse().with_context(|| format!("bad seed '{part}'"))?);
        }
    }
    if out.is_empty() {
        bail!("no seeds given");
    }
    Ok(out)
}

fn parse_policies(s: &str) -> anyhow::Result<Vec<String>> {
    if s.trim().eq_ignore_ascii_case("all") {
        return Ok(POLICY_NAMES.iter().map(|p| p.to_string()).collect());
    }
    let mut out = Vec::new();
    for p in s.split(',').map(|p| p.trim().to_ascii_lowercase()).filter(|p| !p.is_empty()) {
        if !POLICY_NAMES.contains(&p.as_str()) && !STUDY_POLICY_NAMES.contains(&p.as_str()) {
            bail!(
                "unknown policy '{p}' (expected one of {}, all, or for study {})",
                POLICY_NAMES.join(", "),
                STUDY_POLICY_NAMES.join(", ")
            );
        }
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        bail!("no policies given");
    }
    Ok(out)
}

/// The pod file's stem without the `openb_pod_list_` prefix.
fn workload_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("openb_pod_list_").map(str::to_string).unwrap_or(stem)
}

/// Paper's mean allocation at the tune point, by (workload, policy), from
/// `analysis_allo_discrete.csv` (columns workload, sc_policy, tune, seed, total_gpus, 0..130).
fn read_expected(path: &Path, tune: f64) -> anyhow::Result<BTreeMap<(String, String), f64>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| h.trim() == name);
    let (Some(w), Some(p), Some(t)) = (col("workload"), col("sc_policy"), col("tune")) else {
        bail!("{}: missing workload, sc_policy or tune column", path.display());
    };
    let k = format!("{}", (tune * 100.0).round() as i64);
    let Some(v) = col(&k) else { bail!("{}: no column for {k}%", path.display()) };
    let mut acc: BTreeMap<(String, String), (f64, usize)> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let (Some(wl), Some(pol), Some(tv), Some(val)) = (f.get(w), f.get(p), f.get(t), f.get(v)) else { continue };
        if tv.parse::<f64>().ok().is_none_or(|x| (x - tune).abs() > 1e-9) {
            continue;
        }
        let Ok(val) = val.parse::<f64>() else { continue };
        let policy = pol.split_once('-').map_or(*pol, |(_, n)| n).to_ascii_lowercase();
        let wl = wl.strip_prefix("openb_pod_list_").unwrap_or(wl).to_string();
        let e = acc.entry((wl, policy)).or_default();
        e.0 += val;
        e.1 += 1;
    }
    Ok(acc.into_iter().map(|(k, (s, n))| (k, s / n as f64)).collect())
}

fn load_workload(path: &Path, fleet: &Fleet) -> anyhow::Result<Workload_> {
    let trace = ::trace::load_workloads(path, Some(::trace::TraceFormat::Openb), &::trace::TraceOptions::default())
        .with_context(|| format!("cannot load pod list {}", path.display()))?;
    let demands: Vec<Demand> = trace.workloads.iter().map(|w: &Workload| Demand::of(w, fleet)).collect();
    let typical = TypicalPods::from_demands(&demands);
    let meter = FragMeter::new(&typical.distribution(DEFAULT_POPULARITY), fleet);
    Ok(Workload_ { name: workload_name(path), demands, typical, meter })
}

fn mean(v: impl IntoIterator<Item = f64>) -> f64 {
    let (s, n) = v.into_iter().fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { f64::NAN } else { s / n as f64 }
}

enum Task {
    Run { w: usize, policy: String, seed: u64 },
    Bound { w: usize, seed: u64 },
}

enum Done {
    Run(RunRow, RunOutcome),
    Bound { w: usize, pct: f64 },
}

pub fn run(args: OpenbArgs) -> anyhow::Result<()> {
    let seeds = parse_seeds(&args.seeds)?;
    let policies = parse_policies(&args.policies)?;
    if !(args.tune > 0.0 && args.tune <= 10.0) {
        bail!("--tune must be in (0, 10], got {}", args.tune);
    }
    let pod_paths = if args.pods.is_empty() {
        vec![Path::new(DEFAULT_DIR).join("openb_pod_list_default.csv")]
    } else {
        args.pods.clone()
    };
    let fleet = Arc::new(
        ::trace::load_node_list(&args.nodes)
            .with_context(|| format!("cannot load node list {}", args.nodes.display()))?,
    );
    let capacity = fleet.total_gpus() * u64::from(model::GPU_MILLI_PER_GPU);
    if capacity == 0 {
        bail!("{} has no GPUs", args.nodes.display());
    }
    let workloads: Vec<Workload_> =
        pod_paths.iter().map(|p| load_workload(p, &fleet)).collect::<anyhow::Result<_>>()?;
    let expected_path = args.expected.clone().or_else(|| {
        let p = pod_paths[0].parent()?.join("fgd_expected_results").join("analysis_allo_discrete.csv");
        p.exists().then_some(p)
    });
    let expected = match &expected_path {
        Some(p) => read_expected(p, args.tune)?,
        None => BTreeMap::new(),
    };
    let max_pct = (args.tune * 100.0).round() as usize;

    let mut tasks = Vec::new();
    for w in 0..workloads.len() {
        if !args.no_bound {
            for &seed in &seeds {
                tasks.push(Task::Bound { w, seed });
            }
        }
        for policy in &policies {
            for &seed in &seeds {
                tasks.push(Task::Run { w, policy: policy.clone(), seed });
            }
        }
    }
    // Slow policies first, so that the last jobs to finish are short.
    tasks.sort_by_key(|t| match t {
        Task::Run { policy, .. } if policy == "fgd" || policy == "drome" => 0,
        Task::Run { .. } => 1,
        Task::Bound { .. } => 2,
    });
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let bar = progress_bar(tasks.len() as u64, "openb", args.quiet);
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<Done>> = Mutex::new(Vec::new());
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.min(tasks.len()) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(task) = tasks.get(i) else { break };
                    if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                        break;
                    }
                    let result = run_task(task, &workloads, &fleet, capacity, args.tune, max_pct);
                    match result {
                        Ok(d) => {
                            if let Ok(mut v) = done.lock() {
                                v.push(d);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                        }
                    }
                    bar.inc(1);
                }
            });
        }
    });
    bar.finish_and_clear();
    if let Some(e) = failure.into_inner().map_err(|_| anyhow::anyhow!("a worker panicked"))? {
        return Err(e);
    }
    let done = done.into_inner().map_err(|_| anyhow::anyhow!("a worker panicked"))?;

    let mut runs: Vec<RunRow> = Vec::new();
    let mut curves: BTreeMap<(String, String), Vec<RunOutcome>> = BTreeMap::new();
    let mut bounds: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    for d in done {
        match d {
            Done::Run(row, outcome) => {
                curves.entry((row.workload.clone(), row.policy.clone())).or_default().push(outcome);
                runs.push(row);
            }
            Done::Bound { w, pct } => bounds.entry(w).or_default().push(pct),
        }
    }
    let order_of = |p: &str| POLICY_NAMES.iter().position(|n| *n == p).unwrap_or(usize::MAX);
    let workload_index = |name: &str| workloads.iter().position(|w| w.name == name).unwrap_or(usize::MAX);
    runs.sort_by(|a, b| {
        (workload_index(&a.workload), order_of(&a.policy), a.seed).cmp(&(
            workload_index(&b.workload),
            order_of(&b.policy),
            b.seed,
        ))
    });
    let mut summary = Vec::new();
    for w in &workloads {
        for p in &policies {
            let rs: Vec<&RunRow> = runs.iter().filter(|r| r.workload == w.name && &r.policy == p).collect();
            let m = mean(rs.iter().map(|r| r.allocation_pct));
            let paper = expected.get(&(w.name.clone(), p.clone())).copied();
            summary.push(SummaryRow {
                workload: w.name.clone(),
                policy: p.clone(),
                allocation_pct_mean: m,
                paper_allocation_pct_mean: paper,
                delta_vs_paper: paper.map(|x| m - x),
                frag_ratio_pct_at_90_mean: mean(rs.iter().map(|r| r.frag_ratio_pct_at_90)),
                wall_ms_mean: mean(rs.iter().map(|r| r.wall_ms)),
                seeds: rs.len(),
            });
        }
    }
    let bound_rows: Vec<BoundRow> = bounds
        .iter()
        .map(|(&w, v)| BoundRow {
            workload: workloads[w].name.clone(),
            bound_pct_mean: mean(v.iter().copied()),
            bound_pct_min: v.iter().copied().fold(f64::INFINITY, f64::min),
        })
        .collect();

    if let Some(dir) = &args.csv_dir {
        write_curves(dir, &workloads, &policies, &curves)?;
    }
    if let Some(path) = &args.plot {
        plot_curves(path, &workloads, &policies, &curves, &bound_rows, max_pct)?;
    }
    match args.output {
        Output::Json => print_json(&Report { tune: args.tune, runs, summary, bounds: bound_rows }),
        Output::Table => {
            print_tables(&workloads, &policies, &summary, &bound_rows, args.tune, seeds.len());
            Ok(())
        }
    }
}

fn run_task(
    task: &Task,
    workloads: &[Workload_],
    fleet: &Arc<Fleet>,
    capacity: u64,
    tune: f64,
    max_pct: usize,
) -> anyhow::Result<Done> {
    match task {
        Task::Bound { w, seed } => {
            let wl = &workloads[*w];
            let order = inflate(&wl.demands, capacity, tune, *seed)?;
            let pods: Vec<Demand> = order.iter().map(|&i| wl.demands[i].clone()).collect();
            let pct = allocation_bound(fleet, &pods)?;
            let arrived: u64 = pods.iter().map(sim::openb::gpu_milli).sum();
            Ok(Done::Bound { w: *w, pct: pct.min(100.0 * arrived as f64 / capacity as f64) })
        }
        Task::Run { w, policy, seed } => {
            let wl = &workloads[*w];
            let order = inflate(&wl.demands, capacity, tune, *seed)?;
            let mut placer = placer_by_name(policy, &wl.typical, seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD0)
                .with_context(|| format!("unknown policy {policy}"))?;
            let start = Instant::now();
            let outcome = run_inflation(fleet, &wl.demands, &order, placer.as_mut(), &wl.meter, max_pct)?;
            let wall_ms = start.elapsed().as_secs_f64() * 1000.0;
            let row = RunRow {
                workload: wl.name.clone(),
                policy: policy.clone(),
                seed: *seed,
                allocation_pct: outcome.final_allocation_pct(),
                frag_ratio_pct_at_90: RunOutcome::at(&outcome.frag_ratio_pct, 90),
                frag_pct_at_90: RunOutcome::at(&outcome.frag_pct, 90),
                pods_arrived: outcome.pods_arrived,
                pods_placed: outcome.pods_placed,
                wall_ms,
            };
            Ok(Done::Run(row, outcome))
        }
    }
}

/// Mean over seeds of one curve, point by point.
fn mean_curve(runs: &[RunOutcome], pick: impl Fn(&RunOutcome) -> &Vec<f64>) -> Vec<f64> {
    let len = runs.iter().map(|r| pick(r).len()).max().unwrap_or(0);
    (0..len).map(|k| mean(runs.iter().map(|r| RunOutcome::at(pick(r), k)))).collect()
}

fn write_curves(
    dir: &Path,
    workloads: &[Workload_],
    policies: &[String],
    curves: &BTreeMap<(String, String), Vec<RunOutcome>>,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for w in workloads {
        let mut alloc = Vec::new();
        let mut frag = Vec::new();
        let mut ratio = Vec::new();
        for p in policies {
            let Some(rs) = curves.get(&(w.name.clone(), p.clone())) else { continue };
            let pts = |c: Vec<f64>| c.into_iter().enumerate().map(|(k, v)| (k as f64, v)).collect::<Vec<_>>();
            alloc.push(Series::new(p.clone(), pts(mean_curve(rs, |r| &r.allocation_pct))));
            frag.push(Series::new(p.clone(), pts(mean_curve(rs, |r| &r.frag_pct))));
            ratio.push(Series::new(p.clone(), pts(mean_curve(rs, |r| &r.frag_ratio_pct))));
        }
        let base = dir.join(format!("openb_{}", w.name));
        report::csv_out::write_series(
            base.with_file_name(format!("openb_{}_allocation.csv", w.name)),
            "arrived_pct",
            "allocation_pct",
            &alloc,
        )?;
        report::csv_out::write_series(
            base.with_file_name(format!("openb_{}_frag.csv", w.name)),
            "arrived_pct",
            "frag_pct",
            &frag,
        )?;
        report::csv_out::write_series(
            base.with_file_name(format!("openb_{}_frag_ratio.csv", w.name)),
            "arrived_pct",
            "frag_ratio_pct",
            &ratio,
        )?;
    }
    Ok(())
}

fn plot_curves(
    path: &Path,
    workloads: &[Workload_],
    policies: &[String],
    curves: &BTreeMap<(String, String), Vec<RunOutcome>>,
    bounds: &[BoundRow],
    max_pct: usize,
) -> anyhow::Result<()> {
    let mut chart = Chart::new("GPU allocation vs arrived GPU demand (openb, mean of seeds)")
        .x_label("Arrived workloads, % of cluster GPU capacity")
        .x_range(0.0, max_pct as f64);
    for w in workloads {
        let mut panel = Panel::new("GPU allocation ratio (%)").title(w.name.clone()).legend(Legend::default());
        for p in policies {
            let Some(rs) = curves.get(&(w.name.clone(), p.clone())) else { continue };
            let c = mean_curve(rs, |r| &r.allocation_pct);
            // The paper's Figure 9(a) zooms on the part where policies differ.
            let pts: Vec<(f64, f64)> = c.into_iter().enumerate().map(|(k, v)| (k as f64, v)).collect();
            panel = panel.series(Series::new(display_name(p).to_string(), pts));
        }
        if let Some(b) = bounds.iter().find(|b| b.workload == w.name) {
            let pts = vec![(0.0, 0.0), (b.bound_pct_mean, b.bound_pct_mean), (max_pct as f64, b.bound_pct_mean)];
            panel = panel.series(Series::new("LP bound", pts));
        }
        chart = chart.panel(panel.y_format(AxisFormat::default()));
    }
    let height = 360 * workloads.len().max(1) as u32;
    chart.size(900, height.min(4000)).render(path).with_context(|| format!("cannot draw {}", path.display()))?;
    Ok(())
}

fn print_tables(
    workloads: &[Workload_],
    policies: &[String],
    summary: &[SummaryRow],
    bounds: &[BoundRow],
    tune: f64,
    seeds: usize,
) {
    let tty = report::table::stdout_is_tty();
    println!(
        "GPU allocation ratio (%) at {:.0}% arrived GPU demand, mean of {seeds} seeds; in brackets: the paper's number and the difference",
        tune * 100.0
    );
    let mut headers: Vec<String> = vec!["workload".into()];
    headers.extend(policies.iter().map(|p| display_name(p).to_string()));
    headers.push("LP bound".into());
    let mut t = Table::new(headers).utf8(tty);
    for w in workloads {
        let mut row = vec![w.name.clone()];
        for p in policies {
            let cell = summary.iter().find(|s| s.workload == w.name && &s.policy == p).map(|s| {
                match s.paper_allocation_pct_mean {
                    Some(paper) => {
                        format!(
                            "{} ({}, {:+.2})",
                            fmt_num(s.allocation_pct_mean, 2),
                            fmt_num(paper, 2),
                            s.allocation_pct_mean - paper
                        )
                    }
                    None => fmt_num(s.allocation_pct_mean, 2),
                }
            });
            row.push(cell.unwrap_or_default());
        }
        row.push(
            bounds.iter().find(|b| b.workload == w.name).map(|b| fmt_num(b.bound_pct_mean, 2)).unwrap_or_default(),
        );
        t.row(row);
    }
    println!("{}", t.render());
    println!();
    println!("Fragmented share of idle GPUs (%) at 90% arrived, and wall time per run (ms), mean of seeds");
    let mut headers: Vec<String> = vec!["workload".into()];
    for p in policies {
        headers.push(format!("{} frag", display_name(p)));
        headers.push(format!("{} ms", display_name(p)));
    }
    let mut t = Table::new(headers).utf8(tty);
    for w in workloads {
        let mut row = vec![w.name.clone()];
        for p in policies {
            match summary.iter().find(|s| s.workload == w.name && &s.policy == p) {
                Some(s) => {
                    row.push(fmt_num(s.frag_ratio_pct_at_90_mean, 1));
                    row.push(fmt_num(s.wall_ms_mean, 0));
                }
                None => {
                    row.push(String::new());
                    row.push(String::new());
                }
            }
        }
        t.row(row);
    }
    println!("{}", t.render());
}
