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
    drome sim --fleet fleets/valence.toml --trace jobs.csv --plot out/valence.png --csv out/valence.csv\n  \
    drome sim --fleet fleets/france.toml --trace ../shared/traces/philly-pollux-sia/philly.csv --policy drome \\\n    \
    --dispatch capacity,heat --copies 3 --loop-days 365 --plot out/federation.png")]
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
    /// Cooling of every site (air, liquid, immersion); turns on power, energy and heat figures.
    /// Default with any power option: each site's own cooling.
    #[arg(long)]
    pub cooling: Option<String>,
    /// Compare coolings on the same trace and fleet (e.g. air,liquid,immersion): one table, and
    /// with --plot, site power against the cap and heat exported against demand over time.
    #[arg(long, conflicts_with = "cooling")]
    pub compare_cooling: Option<String>,
    /// Grid cap of the fleet's site(s), MW (split over sites by nameplate).
    #[arg(long, conflicts_with = "power_cap_frac")]
    pub power_cap_mw: Option<f64>,
    /// Grid cap as a fraction of nameplate IT power (every GPU at its board limit, hosts at full
    /// load, at the wall); the cooling must fit under the same cap.
    #[arg(long)]
    pub power_cap_frac: Option<f64>,
    #[command(flatten)]
    pub power: PowerModeArgs,
    /// Price-following GPU caps, EUR_PER_MWH:CAP (e.g. 120:0.7): in hours whose grid price is above
    /// EUR_PER_MWH, no GPU runs above CAP of its board limit (less energy per unit of work in dear
    /// hours, a few percent slower). Works with or without a grid cap; turns on power accounting.
    #[arg(long)]
    pub price_cap: Option<String>,
    /// Hour of the year sim time 0 falls on (temperature and prices).
    #[arg(long, default_value_t = 0)]
    pub start_hour: usize,
    /// Repeat the trace back to back until its submits cover this many days (a year of operation
    /// from a few months of history: --loop-days 365).
    #[arg(long)]
    pub loop_days: Option<f64>,
    /// Lay this many copies of the trace over each other (shifted in time, tenants kept apart),
    /// to load a fleet this many times bigger than the trace's own.
    #[arg(long, default_value_t = 1)]
    pub copies: u32,
    /// Mark this share of the jobs deferrable (chosen by --seed), for traces that carry no
    /// `deferrable` column. Turns on the deferral gate.
    #[arg(long)]
    pub deferrable_share: Option<f64>,
    /// What deferrable jobs wait for: price (EUR/MWh), carbon (gCO2/kWh) or heat (the heat
    /// network's demand). Turns on power accounting.
    #[arg(long)]
    pub defer_for: Option<String>,
    /// Hourly outdoor temperature CSV (hour,outdoor_celsius) instead of the shipped Valence year.
    #[arg(long)]
    pub temperature: Option<PathBuf>,
    /// Hourly grid CSV (hour,price_eur_per_mwh,co2_g_per_kwh) instead of the shipped French year:
    /// the prices and carbon the energy figures and the deferral gate use.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Guaranteed GPUs per tenant for the `quota` policy, as TENANT=GPUS pairs separated by
    /// commas (`--quota 6214e9=64,b436b2=32`); tenants not listed share what is left equally.
    #[arg(long)]
    pub quota: Option<String>,
    /// Longest a deferrable job waits past its submit time, hours (capped by the 24 h day-ahead
    /// horizon of the prices).
    #[arg(long, default_value_t = 24.0)]
    pub max_defer_hours: f64,
    /// Replay the fleet's sites as a federation: every site runs --policy on its own nodes under
    /// its own weather, grid price and heat network (from the fleet file), and each arriving job
    /// is sent to one site by this dispatch policy: capacity (most free), price-carbon (cheapest
    /// power for the hours ahead, carbon at 80 EUR/t), heat (the site whose heat network wants
    /// most), data (nearest its data). Several separated by commas are compared side by side.
    #[arg(long)]
    pub dispatch: Option<String>,
    /// With --dispatch: each job reads a dataset of this many GB per GPU, kept at its tenant's home
    /// site (drawn by --seed in proportion to the sites' GPUs); run elsewhere, the job waits for it
    /// to cross the fiber (`fiber_gbps` of both sites).
    #[arg(long, default_value_t = 0.0)]
    pub data_gb_per_gpu: f64,
    /// Multiply every job's GPUs by this factor (gangs of the fleet's nodes; a GPU share grows
    /// into whole GPUs): a small cluster's history as the work of a fleet of a million GPUs, with
    /// --copies and --loop-days.
    #[arg(long, default_value_t = 1)]
    pub scale_gpus: u32,
    /// With --dispatch: this share of tenants (drawn by --seed) is bound to its home site's region.
    #[arg(long, default_value_t = 0.0)]
    pub bound_share: f64,
    /// A price list (JSON, as `drome prices --output json` prints it and `PUT /v1/prices` takes
    /// it): each tenant's bill for the replay: GPU-hours by model, energy per kWh, the grid's cost
    /// passed through, the heat credit, the deferrable discount (traces carry no CPU or memory).
    /// Turns on power accounting.
    #[arg(long)]
    pub prices: Option<PathBuf>,
}

/// The policy `name`, with `--quota`'s shares when it is the quota policy.
pub(super) fn build_policy(name: &str, args: &SimArgs, trace: &trace::Trace) -> anyhow::Result<Box<dyn sched::Policy>> {
    match (name.to_ascii_lowercase().as_str(), &args.quota) {
        ("quota", Some(spec)) => Ok(Box::new(sched::quota::Quota::new(quota_config(spec, trace)?))),
        _ => Ok(sched::policy_by_name(name, args.seed)?),
    }
}

/// `--quota NAME=GPUS,...` as the quota policy's nominal shares, by the trace's tenant names.
fn quota_config(spec: &str, trace: &trace::Trace) -> anyhow::Result<sched::quota::QuotaConfig> {
    let mut config = sched::quota::QuotaConfig::default();
    for pair in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, gpus)) = pair.split_once('=') else {
            anyhow::bail!("--quota: expected TENANT=GPUS, got '{pair}'");
        };
        let (name, gpus) = (name.trim(), gpus.trim());
        let gpus: f64 = match gpus.parse() {
            Ok(g) if f64::is_finite(g) && g >= 0.0 => g,
            _ => anyhow::bail!("--quota: GPUs of tenant '{name}' must be a non-negative number, got '{gpus}'"),
        };
        let Some(id) = trace.tenants.iter().position(|t| t == name) else {
            let known: Vec<&str> = trace.tenants.iter().take(20).map(String::as_str).collect();
            anyhow::bail!("--quota: the trace has no tenant '{name}' (tenants: {})", known.join(", "));
        };
        config.nominal.insert(id as u32, gpus);
    }
    Ok(config)
}

/// Loops, overlays and marks the trace as the flags ask.
fn reshape_trace(args: &SimArgs, trace: &mut trace::Trace) -> anyhow::Result<()> {
    if let Some(days) = args.loop_days {
        if !(days.is_finite() && days > 0.0 && days <= 3660.0) {
            anyhow::bail!("--loop-days must be a number of days in (0, 3660], got {days}");
        }
        trace.workloads = sim::reshape::loop_to(&trace.workloads, SimDuration::from_secs_f64(days * 86_400.0));
    }
    if args.copies == 0 || args.copies > 1000 {
        anyhow::bail!("--copies must be 1..1000, got {}", args.copies);
    }
    if args.copies > 1 {
        trace.workloads = sim::reshape::overlay(&trace.workloads, args.copies);
        let base = trace.tenants.clone();
        for c in 1..args.copies {
            trace.tenants.extend(base.iter().map(|t| format!("{t}#{c}")));
        }
    }
    if args.scale_gpus == 0 || args.scale_gpus > 65_536 {
        anyhow::bail!("--scale-gpus must be 1..65536, got {}", args.scale_gpus);
    }
    if let Some(share) = args.deferrable_share {
        if !(share.is_finite() && (0.0..=1.0).contains(&share)) {
            anyhow::bail!("--deferrable-share must be in 0..1, got {share}");
        }
        sim::reshape::mark_deferrable(&mut trace.workloads, share, args.seed);
    }
    Ok(())
}

/// The deferral gate the flags ask for (with `power`'s grid and climate), if any.
pub(super) fn deferral_gate(
    args: &SimArgs,
    power: Option<&sim::PowerOptions>,
) -> anyhow::Result<Option<Arc<sched::defer::DeferralGate>>> {
    if args.defer_for.is_none() && args.deferrable_share.is_none() {
        return Ok(None);
    }
    let by_name = args.defer_for.as_deref().unwrap_or("price");
    let Some(by) = sched::defer::DeferFor::parse(by_name) else {
        anyhow::bail!("unknown --defer-for '{by_name}' (known: price, carbon, heat)");
    };
    let h = args.max_defer_hours;
    if !(h.is_finite() && (0.0..=168.0).contains(&h)) {
        anyhow::bail!("--max-defer-hours must be in 0..168, got {h}");
    }
    let Some(p) = power else { return Ok(None) };
    let mut gate = sched::defer::DeferralGate::new(p.deferral_costs(by), p.start_hour);
    gate.max_delay = SimDuration::from_secs_f64(h * 3600.0);
    Ok(Some(Arc::new(gate)))
}

pub(super) fn read_text(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

pub(super) fn parse_cooling(name: &str) -> anyhow::Result<model::Cooling> {
    match name.trim().to_ascii_lowercase().as_str() {
        "air" => Ok(model::Cooling::Air),
        "liquid" | "dlc" => Ok(model::Cooling::Liquid),
        "immersion" => Ok(model::Cooling::Immersion),
        other => anyhow::bail!("unknown cooling '{other}' (known: air, liquid, immersion)"),
    }
}

/// The power mode's flags, shared by `drome sim` and `drome server`.
#[derive(clap::Args, Clone, Debug)]
pub struct PowerModeArgs {
    /// admission: admit work only while the worst case fits the grid cap; dynamic: also lower the
    /// GPU power caps of running jobs (and hold the CPUs of a shedding site's GPU nodes to their
    /// typical draw), slowing them along the DVFS curve, to run more work under the same cap
    /// (`drome server` needs --agents for it: the node agents apply the caps).
    #[arg(long, default_value = "admission")]
    pub power_mode: String,
    /// dynamic: lowest GPU power cap, fraction of the board limit.
    #[arg(long, default_value_t = 0.5)]
    pub min_gpu_cap: f64,
    /// dynamic: whose GPU caps are lowered when a site's worst case exceeds its cap. After every
    /// job is brought down to what its work draws anyway (free): lowest-rank-first (the jobs the
    /// policy would preempt first, down to --min-gpu-cap one by one: slowing them delays no one
    /// else; jobs the policy does not rank go widest first), widest-first (jobs with the most GPUs
    /// first: a cap delays a job by about the same time whatever its size, a wide job gives back
    /// more watts), even (every job to the same cap, the least throughput lost) or oldest-first
    /// (the fewest jobs slowed, each to --min-gpu-cap in turn, no free step).
    #[arg(long, default_value = "lowest-rank-first")]
    pub cap_share: String,
    /// dynamic: leave hosts' CPUs uncapped. By default a site that sheds watts also holds the CPU
    /// packages of its GPU nodes to their typical draw (RAPL), so the worst case no longer counts
    /// every CPU at full load and GPUs keep more of the budget.
    #[arg(long)]
    pub no_host_caps: bool,
}

impl PowerModeArgs {
    /// The power mode these flags name.
    pub fn mode(&self) -> anyhow::Result<sched::power::PowerMode> {
        let min_gpu_cap = self.min_gpu_cap;
        Ok(match self.power_mode.trim().to_ascii_lowercase().as_str() {
            "admission" => sched::power::PowerMode::Admission,
            "dynamic" => {
                if !(min_gpu_cap.is_finite() && (0.3..=1.0).contains(&min_gpu_cap)) {
                    anyhow::bail!("--min-gpu-cap must be in 0.3..1, got {min_gpu_cap}");
                }
                let share = match self.cap_share.trim().to_ascii_lowercase().as_str() {
                    "even" => sched::power::CapShare::Even,
                    "oldest-first" | "oldest" => sched::power::CapShare::OldestFirst,
                    "widest-first" | "widest" => sched::power::CapShare::WidestFirst,
                    "lowest-rank-first" | "lowest-rank" => sched::power::CapShare::LowestRankFirst,
                    other => anyhow::bail!(
                        "unknown --cap-share '{other}' (known: even, oldest-first, widest-first, lowest-rank-first)"
                    ),
                };
                sched::power::PowerMode::Dynamic { min_cap: min_gpu_cap, share, cap_hosts: !self.no_host_caps }
            }
            other => anyhow::bail!("unknown --power-mode '{other}' (known: admission, dynamic)"),
        })
    }
}

/// `EUR_PER_MWH:CAP` of `--price-cap`.
pub fn parse_price_cap(text: &str) -> anyhow::Result<sim::PriceCap> {
    let bad = || anyhow::anyhow!("--price-cap takes EUR_PER_MWH:CAP with CAP in 0.3..1 (e.g. 120:0.7), got '{text}'");
    let (eur, cap) = text.split_once(':').ok_or_else(bad)?;
    let above_eur_per_mwh: f64 = eur.trim().parse().map_err(|_| bad())?;
    let gpu_cap: f64 = cap.trim().parse().map_err(|_| bad())?;
    if !above_eur_per_mwh.is_finite() || !(0.3..=1.0).contains(&gpu_cap) {
        return Err(bad());
    }
    Ok(sim::PriceCap { above_eur_per_mwh, gpu_cap })
}

/// Power options of a run under `cooling` (`None`: each site's own).
fn power_options(
    args: &SimArgs,
    fleet: &model::Fleet,
    cooling: Option<model::Cooling>,
) -> anyhow::Result<Arc<sim::PowerOptions>> {
    let model = energy::EnergyModel::new(fleet, cooling, &energy::HeatOptions::default());
    let mode = args.power.mode()?;
    let mut opts = sim::PowerOptions {
        model,
        temperature: match &args.temperature {
            Some(path) => {
                energy::TemperatureYear::parse(&read_text(path)?).with_context(|| format!("in {}", path.display()))?
            }
            None => energy::TemperatureYear::valence()?,
        },
        grid: match &args.grid {
            Some(path) => {
                energy::GridYear::parse(&read_text(path)?).with_context(|| format!("in {}", path.display()))?
            }
            None => energy::GridYear::france()?,
        },
        start_hour: args.start_hour % energy::HOURS_PER_YEAR,
        cap_watts: None,
        mode,
        price_cap: args.price_cap.as_deref().map(parse_price_cap).transpose()?,
    };
    let nameplate = opts.nameplate_watts();
    let total: f64 = nameplate.iter().sum();
    opts.cap_watts = match (args.power_cap_mw, args.power_cap_frac) {
        (Some(mw), _) => {
            if !(mw.is_finite() && mw > 0.0) {
                anyhow::bail!("--power-cap-mw must be a positive number, got {mw}");
            }
            Some(nameplate.iter().map(|w| mw * 1e6 * w / total.max(1.0)).collect())
        }
        (None, Some(f)) => {
            if !(f.is_finite() && f > 0.0) {
                anyhow::bail!("--power-cap-frac must be a positive number, got {f}");
            }
            Some(nameplate.iter().map(|w| w * f).collect())
        }
        (None, None) => None,
    };
    Ok(Arc::new(opts))
}

pub fn run(args: SimArgs) -> anyhow::Result<()> {
    let mut trace = load_trace(&args.trace, args.format)?;
    reshape_trace(&args, &mut trace)?;
    let file_fleet = args.fleet.as_deref().map(load_fleet).transpose()?;
    // GPUs scale before a fleet is sized for the load: gangs of the fleet's nodes, else of 8.
    let node_gpus = file_fleet.as_ref().map_or(8, |f| u32::from(f.max_gpus_per_node().max(1)));
    sim::reshape::scale_gpus(&mut trace.workloads, args.scale_gpus, node_gpus);
    let fleet = match (file_fleet, args.load) {
        (Some(fleet), _) => fleet,
        (None, Some(load)) => {
            if !(load.is_finite() && load > 0.0) {
                anyhow::bail!("--load must be a positive number, got {load}");
            }
            sim::fleet_for_load(&trace.workloads, load, &LoadFleetShape::default())
        }
        (None, None) => anyhow::bail!("give --fleet FILE or --load X"),
    };
    let fleet = Arc::new(fleet);
    if let Some(list) = &args.dispatch {
        let policies = super::sim_sites::parse_dispatch(list)?;
        return super::sim_sites::run(&args, &trace, fleet, &policies);
    }
    let names: Vec<&str> = args.policy.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    if names.is_empty() {
        anyhow::bail!("--policy names no policy");
    }
    for (what, v) in [("--checkpoint-interval", args.checkpoint_interval), ("--restart-delay", args.restart_delay)] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{what} must be a non-negative number of seconds, got {v}");
        }
    }
    let mut policies: Vec<Box<dyn sched::Policy>> = Vec::with_capacity(names.len());
    for name in &names {
        policies.push(build_policy(name, &args, &trace)?);
    }
    if args.quota.is_some() && !names.iter().any(|n| n.eq_ignore_ascii_case("quota")) {
        anyhow::bail!("--quota applies to the quota policy; add it to --policy");
    }
    let coolings: Vec<Option<model::Cooling>> = match (&args.compare_cooling, &args.cooling) {
        (Some(list), _) => {
            let mut v = Vec::new();
            for c in list.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                v.push(Some(parse_cooling(c)?));
            }
            if v.is_empty() {
                anyhow::bail!("--compare-cooling names no cooling");
            }
            v
        }
        (None, Some(c)) => vec![Some(parse_cooling(c)?)],
        (None, None) => vec![None],
    };
    let wants_power = args.cooling.is_some()
        || args.grid.is_some()
        || args.temperature.is_some()
        || args.compare_cooling.is_some()
        || args.power_cap_mw.is_some()
        || args.power_cap_frac.is_some()
        || args.defer_for.is_some()
        || args.price_cap.is_some()
        || args.prices.is_some()
        || args.deferrable_share.is_some();
    if args.compare_cooling.is_some() && policies.len() > 1 {
        anyhow::bail!("--compare-cooling takes one --policy");
    }
    if coolings.len() > 1 {
        return compare_cooling(&args, &trace, fleet, &coolings);
    }
    let power = if wants_power { Some(power_options(&args, &fleet, coolings[0])?) } else { None };
    let deferral = deferral_gate(&args, power.as_deref())?;
    let compare = policies.len() > 1;
    let config = SimConfig {
        power,
        deferral,
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
    let prices = args.prices.as_deref().map(read_prices).transpose()?;
    match args.output {
        Output::Json => {
            let mut runs = Vec::with_capacity(reports.len());
            for r in &reports {
                let mut value = serde_json::to_value(r)?;
                if let Some(obj) = value.as_object_mut() {
                    obj.insert("trace".into(), args.trace.display().to_string().into());
                    obj.insert("offered_load".into(), load.into());
                    if let (Some(prices), Some(rows)) =
                        (&prices, obj.get_mut("tenant_energy").and_then(|t| t.as_array_mut()))
                    {
                        let bills = r.power.as_ref().map(|p| p.tenant_energy.as_slice()).unwrap_or_default();
                        for (row, te) in rows.iter_mut().zip(bills) {
                            if let Some(o) = row.as_object_mut() {
                                o.insert("cost".into(), tenant_cost(prices, te).into());
                                o.insert("currency".into(), prices.currency.clone().into());
                            }
                        }
                    }
                    for key in ["tenants", "tenant_energy"] {
                        let Some(rows) = obj.get_mut(key).and_then(|t| t.as_array_mut()) else { continue };
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
            if reports.iter().any(|r| r.power.is_some()) {
                print_power(&reports.iter().map(|r| (r.policy.clone(), r)).collect::<Vec<_>>());
            }
            if !compare {
                print_tenants(&reports[0], &trace.tenants);
                if let Some(p) = &reports[0].power {
                    print_bills(p, &trace.tenants, prices.as_ref());
                }
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

/// The price list of `--prices` (JSON).
fn read_prices(path: &Path) -> anyhow::Result<api::Prices> {
    let text = read_text(path)?;
    let prices: api::Prices = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let figures = [
        ("gpu_hour_default", prices.gpu_hour_default),
        ("energy_kwh", prices.energy_kwh),
        ("deferrable_discount", prices.deferrable_discount),
        ("heat_credit_share", prices.heat_credit_share),
    ];
    for (field, v) in figures.into_iter().chain(prices.gpu_hour.iter().map(|(m, v)| (m.as_str(), *v))) {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{}: {field} must be a non-negative number, got {v}", path.display());
        }
    }
    for (field, v) in
        [("deferrable_discount", prices.deferrable_discount), ("heat_credit_share", prices.heat_credit_share)]
    {
        if v > 1.0 {
            anyhow::bail!("{}: {field} is a share from 0 to 1, got {v}", path.display());
        }
    }
    if prices.currency != "EUR" && (prices.energy_pass_through || prices.heat_credit_share > 0.0) {
        anyhow::bail!(
            "{}: the grid's and the heat network's prices are in EUR: pass-through and heat credit need currency EUR",
            path.display()
        );
    }
    Ok(prices)
}

/// A tenant's bill for a replay, by the price list: its GPU-hours by model, its IT energy per kWh,
/// the grid's cost of its part of each site-hour when passed through, less its share of the heat
/// revenue (never below zero); the deferrable discount on the part of it its deferrable GPU-hours
/// are. Traces carry no CPU or memory, so their prices do not apply.
pub(super) fn tenant_cost(prices: &api::Prices, t: &sim::TenantEnergy) -> f64 {
    let gpus: f64 = t.gpu_hours_by_model.iter().map(|(model, gh, _)| prices.gpu_hour_of(model) * gh).sum();
    let mut cost = gpus + t.energy.it_mwh * 1000.0 * prices.energy_kwh;
    if prices.energy_pass_through {
        cost += t.energy.energy_cost_eur;
    }
    cost = (cost - t.energy.heat_revenue_eur * prices.heat_credit_share).max(0.0);
    let deferrable: f64 = t.gpu_hours_by_model.iter().map(|m| m.2).sum();
    let share = if t.gpu_hours > 0.0 { (deferrable / t.gpu_hours).min(1.0) } else { 0.0 };
    cost * (1.0 - share * prices.deferrable_discount)
}

/// Each tenant's share of the replay's energy, carbon and heat, and its bill under `prices`.
fn print_bills(p: &sim::PowerSummary, names: &[String], prices: Option<&api::Prices>) {
    let tty = report::table::stdout_is_tty();
    let mut head =
        vec!["tenant", "GPU-hours", "IT MWh", "facility MWh", "grid EUR", "CO2 t", "heat sold MWh", "heat EUR"];
    let currency = prices.map(|p| format!("cost {}", p.currency));
    if let Some(c) = &currency {
        head.push(c);
    }
    let mut t = Table::new(head).utf8(tty);
    let (mut it, mut total_cost) = (0.0, 0.0);
    for row in &p.tenant_energy {
        it += row.energy.it_mwh;
        let mut cells = vec![
            names.get(row.tenant as usize).cloned().unwrap_or_else(|| row.tenant.to_string()),
            format!("{:.0}", row.gpu_hours),
            format!("{:.1}", row.energy.it_mwh),
            format!("{:.1}", row.energy.facility_mwh),
            format!("{:.0}", row.energy.energy_cost_eur),
            format!("{:.2}", row.energy.co2_t),
            format!("{:.1}", row.energy.heat_exported_mwh),
            format!("{:.0}", row.energy.heat_revenue_eur),
        ];
        if let Some(prices) = prices {
            let cost = tenant_cost(prices, row);
            total_cost += cost;
            cells.push(format!("{cost:.0}"));
        }
        t.row(cells);
    }
    println!("{}", t.render());
    println!(
        "a tenant's part of each site-hour (energy, cost, carbon, heat sold) is its work's draw above idle over the hour's IT energy; idle draw ({:.1} MWh of IT energy) is no one's",
        (p.it_mwh - it).max(0.0)
    );
    if let Some(prices) = prices {
        println!("billed: {total_cost:.0} {} in all", prices.currency);
    }
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

fn print_power(rows: &[(String, &SimReport)]) {
    let tty = report::table::stdout_is_tty();
    let mut t = Table::new([
        "run",
        "mean JCT",
        "IT MWh",
        "facility MWh",
        "PUE",
        "peak MW",
        "cap MW",
        "violations",
        "mean GPU cap",
        "GPU-h lost to caps",
        "heat MWh",
        "heat EUR",
        "energy EUR",
        "CO2 t",
    ])
    .utf8(tty);
    for (name, r) in rows {
        let Some(p) = &r.power else { continue };
        // Metered draw over the cap, and (with a guard) its worst case over the cap: both 0.
        let violations = match p.power_mode {
            Some(_) => format!("{} / {}", fmt_thousands(p.cap_violations), fmt_thousands(p.worst_case_violations)),
            None => fmt_thousands(p.cap_violations),
        };
        t.row([
            name.clone(),
            fmt_duration_s(r.mean_jct_s),
            format!("{:.0}", p.it_mwh),
            format!("{:.0}", p.facility_mwh),
            format!("{:.3}", p.pue),
            format!("{:.2}", p.peak_site_mw),
            p.power_cap_mw.map_or_else(|| "-".to_string(), |c| format!("{c:.2}")),
            violations,
            format!("{:.3}", p.mean_gpu_cap),
            format!("{:.0}", p.cap_lost_gpu_hours),
            format!("{:.0}", p.heat_exported_mwh),
            format!("{:.0}", p.heat_revenue_eur),
            format!("{:.0}", p.energy_cost_eur),
            format!("{:.1}", p.co2_t),
        ]);
    }
    println!("{}", t.render());
    // A fleet of several sites: each site at its own load.
    for (name, r) in rows {
        let Some(p) = r.power.as_ref().filter(|p| p.site_energy.len() > 1) else { continue };
        let mut t = Table::new([
            "run",
            "site",
            "cooling",
            "IT MWh",
            "facility MWh",
            "PUE",
            "peak MW",
            "cap MW",
            "heat MWh",
            "energy EUR",
            "CO2 t",
        ])
        .utf8(tty);
        for site in &p.site_energy {
            let x = &site.totals;
            t.row([
                name.clone(),
                site.name.clone(),
                site.cooling.to_string(),
                format!("{:.1}", x.it_mwh),
                format!("{:.1}", x.facility_mwh),
                format!("{:.3}", x.pue),
                format!("{:.3}", x.peak_site_mw),
                x.grid_cap_mw.map_or_else(|| "-".to_string(), |c| format!("{c:.3}")),
                format!("{:.1}", x.heat_exported_mwh),
                format!("{:.0}", x.energy_cost_eur),
                format!("{:.2}", x.co2_t),
            ]);
        }
        println!("{}", t.render());
    }
    for (name, r) in rows {
        if r.deferrable_jobs > 0 {
            println!(
                "{name}: {} deferrable jobs, {} held for a better hour, mean hold {}",
                fmt_thousands(r.deferrable_jobs),
                fmt_thousands(r.deferred_jobs),
                fmt_duration_s(r.mean_deferral_s)
            );
        }
    }
}

fn compare_cooling(
    args: &SimArgs,
    trace: &trace::Trace,
    fleet: Arc<model::Fleet>,
    coolings: &[Option<model::Cooling>],
) -> anyhow::Result<()> {
    let mut reports = Vec::with_capacity(coolings.len());
    for &cooling in coolings {
        let mut policy = build_policy(args.policy.trim(), args, trace)?;
        let power = power_options(args, &fleet, cooling)?;
        let config = SimConfig {
            seed: args.seed,
            checkpoint_interval: SimDuration::from_secs_f64(args.checkpoint_interval),
            restart_delay: SimDuration::from_secs_f64(args.restart_delay),
            deferral: deferral_gate(args, Some(&power))?,
            power: Some(power),
            ..SimConfig::default()
        };
        let label = cooling.map_or_else(|| "fleet".to_string(), |c| c.to_string());
        let bar = progress_bar(trace.workloads.len() as u64 * 2, &label, args.quiet);
        let report = sim::simulate(fleet.clone(), &trace.workloads, policy.as_mut(), &config, &mut |p| {
            bar.set_length(p.events_total);
            bar.set_position(p.events_done);
        })?;
        bar.finish_and_clear();
        reports.push((label, report));
    }
    if let Some(path) = &args.plot {
        plot_power(path, &reports, &args.trace)?;
    }
    match args.output {
        Output::Json => {
            let mut runs = Vec::new();
            for (label, r) in &reports {
                let mut v = serde_json::to_value(r)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("cooling".into(), label.clone().into());
                    o.insert("trace".into(), args.trace.display().to_string().into());
                }
                runs.push(v);
            }
            print_json(&serde_json::json!({ "runs": runs }))
        }
        Output::Table => {
            print_power(&reports.iter().map(|(l, r)| (l.clone(), r)).collect::<Vec<_>>());
            Ok(())
        }
    }
}

fn plot_power(path: &Path, reports: &[(String, SimReport)], trace: &Path) -> anyhow::Result<()> {
    let name = trace.file_name().map_or_else(|| trace.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut site = Panel::new("site power (MW)");
    let mut heat = Panel::new("heat (MW)");
    for (label, r) in reports {
        let Some(p) = &r.power else { continue };
        site = site.series(
            Series::new(format!("{label} site"), p.site_mw.iter().map(|&(t, w)| (t / 3600.0, w)).collect()).steps(),
        );
        if let Some(cap) = p.power_cap_mw {
            let (a, b) = (p.site_mw.first().map_or(0.0, |x| x.0), p.site_mw.last().map_or(0.0, |x| x.0));
            site = site.series(Series::new(format!("{label} cap"), vec![(a / 3600.0, cap), (b / 3600.0, cap)]));
        }
        let t0 = p.site_mw.first().map_or(0.0, |x| x.0);
        heat = heat.series(
            Series::new(
                format!("{label} exported"),
                p.hourly.iter().map(|h| ((t0 + h.t_s) / 3600.0, h.heat_exported_mw)).collect(),
            )
            .steps(),
        );
        heat = heat.series(
            Series::new(
                format!("{label} demand"),
                p.hourly.iter().map(|h| ((t0 + h.t_s) / 3600.0, h.heat_demand_mw)).collect(),
            )
            .steps(),
        );
    }
    Chart::new(format!("power and heat on {name}"))
        .x_label("time (hours)")
        .panel(site)
        .panel(heat)
        .render(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
}
