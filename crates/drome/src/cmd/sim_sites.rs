//! `drome sim --dispatch ...`: the fleet's sites replayed as a federation, each site with its own
//! scheduler, weather, grid and heat network, and the federation's dispatch choosing each job's
//! site. Several dispatch policies are compared on the same trace.

use super::sim::{SimArgs, build_policy, parse_price_cap, read_text};
use super::{Output, print_json, progress_bar};
use anyhow::Context;
use dispatch::{Dataset, DispatchPolicy, JobNeeds};
use model::{Fleet, SiteId};
use report::{AxisFormat, Chart, Panel, Series, Table, fmt_duration_s, fmt_pct, fmt_thousands};
use sim::{FederationConfig, FederationReport, SimConfig, SiteRun};
use std::path::Path;
use std::sync::Arc;

/// The dispatch policies `--dispatch` names.
pub fn parse_dispatch(list: &str) -> anyhow::Result<Vec<DispatchPolicy>> {
    let mut out = Vec::new();
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let p: DispatchPolicy = name.parse().map_err(|e: String| anyhow::anyhow!("--dispatch: {e}"))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        anyhow::bail!("--dispatch names no policy (known: capacity, price-carbon, heat, data)");
    }
    Ok(out)
}

/// Each tenant's home site (where its data lives), drawn by `seed` in proportion to the sites'
/// GPUs, and whether it is bound to its home's region.
fn tenant_homes(fleet: &Fleet, tenants: usize, bound_share: f64, seed: u64) -> Vec<(usize, bool)> {
    let gpus: Vec<f64> = (0..fleet.sites.len())
        .map(|s| fleet.nodes.iter().filter(|n| n.site.index() == s).map(|n| f64::from(n.gpu_count)).sum())
        .collect();
    let total: f64 = gpus.iter().sum::<f64>().max(1.0);
    (0..tenants)
        .map(|t| {
            let h = sim::reshape::splitmix64(seed ^ sim::reshape::splitmix64(t as u64));
            let x = (h >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut acc = 0.0;
            let mut home = gpus.len().saturating_sub(1);
            for (s, g) in gpus.iter().enumerate() {
                acc += g;
                if x < acc {
                    home = s;
                    break;
                }
            }
            let b = sim::reshape::splitmix64(h) as f64 / u64::MAX as f64;
            (home, b < bound_share)
        })
        .collect()
}

/// One site's run: its own fleet, climate, grid (with its price adder), heat network and cap.
fn site_run(args: &SimArgs, fleet: &Fleet, s: usize, policy: &str, trace: &trace::Trace) -> anyhow::Result<SiteRun> {
    let site_fleet = fleet.site_fleet(SiteId(s as u32));
    let site = &fleet.sites[s];
    let cooling = args.cooling.as_deref().map(super::sim::parse_cooling).transpose()?;
    let model = energy::EnergyModel::new(&site_fleet, cooling, &energy::HeatOptions::default());
    let temperature = match (&args.temperature, &site.env.climate) {
        (Some(path), _) => {
            energy::TemperatureYear::parse(&read_text(path)?).with_context(|| format!("in {}", path.display()))?
        }
        // The same year a live site reports its outdoor temperature and heat demand from.
        (None, _) => energy::site_temperature_year(site)?,
    };
    let grid = match &args.grid {
        Some(path) => energy::GridYear::parse(&read_text(path)?).with_context(|| format!("in {}", path.display()))?,
        None => energy::GridYear::france()?,
    }
    .with_price_adder(site.env.price_adder_eur_per_mwh);
    let mut opts = sim::PowerOptions {
        model,
        temperature,
        grid,
        start_hour: args.start_hour % energy::HOURS_PER_YEAR,
        cap_watts: None,
        mode: args.power.mode()?,
        price_cap: args.price_cap.as_deref().map(parse_price_cap).transpose()?,
    };
    let nameplate = opts.nameplate_watts();
    opts.cap_watts = match (args.power_cap_frac, site.grid_power_cap_watts) {
        (Some(f), _) => {
            if !(f.is_finite() && f > 0.0) {
                anyhow::bail!("--power-cap-frac must be a positive number, got {f}");
            }
            Some(nameplate.iter().map(|w| w * f).collect())
        }
        (None, Some(cap)) => Some(vec![cap]),
        (None, None) => None,
    };
    let power = Arc::new(opts);
    let deferral = super::sim::deferral_gate(args, Some(&power))?;
    Ok(SiteRun {
        fleet: Arc::new(site_fleet),
        policy: build_policy(policy, args, trace)?,
        config: SimConfig {
            power: Some(power),
            deferral,
            seed: args.seed,
            checkpoint_interval: model::SimDuration::from_secs_f64(args.checkpoint_interval),
            restart_delay: model::SimDuration::from_secs_f64(args.restart_delay),
            ..SimConfig::default()
        },
    })
}

pub fn run(args: &SimArgs, trace: &trace::Trace, fleet: Arc<Fleet>, policies: &[DispatchPolicy]) -> anyhow::Result<()> {
    if args.power_cap_mw.is_some() {
        anyhow::bail!(
            "--power-cap-mw is one figure for the fleet; with --dispatch each site keeps its own grid cap (or use --power-cap-frac)"
        );
    }
    if args.compare_cooling.is_some() {
        anyhow::bail!("--compare-cooling takes no --dispatch");
    }
    let names: Vec<&str> = args.policy.split(',').map(str::trim).filter(|n| !n.is_empty()).collect();
    let [policy] = names.as_slice() else {
        anyhow::bail!("--dispatch takes one --policy: the scheduler every site runs");
    };
    for (what, v) in [("--data-gb-per-gpu", args.data_gb_per_gpu), ("--bound-share", args.bound_share)] {
        if !(v.is_finite() && v >= 0.0) {
            anyhow::bail!("{what} must be a non-negative number, got {v}");
        }
    }
    if args.bound_share > 1.0 {
        anyhow::bail!("--bound-share must be in 0..1, got {}", args.bound_share);
    }
    let homes = tenant_homes(&fleet, trace.tenants.len().max(1), args.bound_share, args.seed);
    let needs: Vec<JobNeeds> = trace
        .workloads
        .iter()
        .map(|w| {
            let (home, bound) = homes.get(w.tenant.0 as usize).copied().unwrap_or((0, false));
            let site = &fleet.sites[home];
            let bytes = (w.gpu.total_gpus() * args.data_gb_per_gpu * 1e9) as u64;
            JobNeeds {
                gpus: w.gpu.total_gpus(),
                site: None,
                region: if bound { site.env.region.clone().or_else(|| Some(site.name.clone())) } else { None },
                dataset: (bytes > 0).then(|| Dataset { site: site.name.clone(), bytes }),
            }
        })
        .collect();
    let mut reports: Vec<FederationReport> = Vec::with_capacity(policies.len());
    for &dispatch in policies {
        let mut sites = Vec::with_capacity(fleet.sites.len());
        for s in 0..fleet.sites.len() {
            sites.push(site_run(args, &fleet, s, policy, trace)?);
        }
        let bar = progress_bar(trace.workloads.len() as u64 * 3, dispatch.as_str(), args.quiet);
        let config = FederationConfig { dispatch, ..FederationConfig::default() };
        let report = sim::simulate_federation(sites, &trace.workloads, &needs, &config, &mut |p| {
            bar.set_length(p.events_total);
            bar.set_position(p.events_done);
        })?;
        bar.finish_and_clear();
        reports.push(report);
    }
    if let Some(path) = &args.plot {
        plot(path, &reports, &args.trace)?;
    }
    match args.output {
        Output::Json => print_json(&serde_json::json!({ "policy": policy, "federation": reports })),
        Output::Table => {
            print_tables(&reports, policy);
            Ok(())
        }
    }
}

fn print_tables(reports: &[FederationReport], policy: &str) {
    let tty = report::table::stdout_is_tty();
    let mut t = Table::new([
        "dispatch",
        "jobs",
        "refused",
        "mean JCT",
        "p99 JCT",
        "mean wait",
        "GPU util",
        "data moved",
        "site MWh",
        "energy cost",
        "CO2",
        "heat sold",
        "heat revenue",
        "over cap",
    ])
    .utf8(tty);
    for r in reports {
        t.row([
            r.dispatch.clone(),
            fmt_thousands(r.jobs),
            fmt_thousands(r.refused),
            fmt_duration_s(r.mean_jct_s),
            fmt_duration_s(r.p99_jct_s),
            fmt_duration_s(r.mean_wait_s),
            fmt_pct(r.gpu_utilization),
            format!("{:.1} TB", r.moved_tb),
            format!("{:.0}", r.site_mwh),
            format!("{:.0} kEUR", r.energy_cost_eur / 1e3),
            format!("{:.1} t", r.co2_t),
            format!("{:.0} MWh", r.heat_exported_mwh),
            format!("{:.0} kEUR", r.heat_revenue_eur / 1e3),
            fmt_thousands(r.cap_violations),
        ]);
    }
    println!("federation, each site scheduling with {policy}:");
    println!("{}", t.render());
    let mut s = Table::new([
        "dispatch",
        "site",
        "GPUs",
        "jobs sent",
        "GPU util",
        "mean JCT",
        "mean wait",
        "site MWh",
        "PUE",
        "heat sold",
        "heat asked",
    ])
    .utf8(tty);
    for r in reports {
        for site in &r.sites {
            let p = site.report.power.as_ref();
            s.row([
                r.dispatch.clone(),
                site.site.clone(),
                fmt_thousands(site.report.fleet_gpus),
                fmt_thousands(site.jobs_sent),
                fmt_pct(site.report.gpu_utilization),
                fmt_duration_s(site.report.mean_jct_s),
                fmt_duration_s(site.report.mean_wait_s),
                format!("{:.0}", p.map_or(0.0, |p| p.site_mwh)),
                format!("{:.3}", p.map_or(0.0, |p| p.pue)),
                format!("{:.0} MWh", p.map_or(0.0, |p| p.heat_exported_mwh)),
                format!("{:.0} MWh", p.map_or(0.0, |p| p.heat_demand_mwh)),
            ]);
        }
    }
    println!("{}", s.render());
    if let Some(r) = reports.first() {
        let reasons: Vec<String> = reports
            .iter()
            .map(|r| {
                let parts: Vec<String> = r.reasons.iter().map(|(k, v)| format!("{k} {}", fmt_thousands(*v))).collect();
                format!("{}: {}", r.dispatch, parts.join(", "))
            })
            .collect();
        println!("choices by reason: {}", reasons.join("; "));
        println!(
            "{} jobs over {} sites; a job's JCT counts from its submission, data transfer included",
            fmt_thousands(r.jobs),
            r.sites.len()
        );
    }
}

/// Heat sold across the sites day by day per dispatch policy to `path`, and the JCT CDF of each
/// beside it (`NAME-jct.EXT`).
fn plot(path: &Path, reports: &[FederationReport], trace: &Path) -> anyhow::Result<()> {
    let name = trace.file_name().map_or_else(|| trace.display().to_string(), |n| n.to_string_lossy().into_owned());
    let mut jct = Panel::new("fraction of jobs").y_range(0.0, 1.0).y_format(AxisFormat::Percent);
    let mut heat = Panel::new("heat sold, MW (daily mean, all sites)");
    for r in reports {
        let jcts: Vec<f64> = r
            .sites
            .iter()
            .flat_map(|s| &s.report.records)
            .filter_map(|j| j.jct_s())
            .map(|s| s.max(1.0) / 3600.0)
            .collect();
        jct = jct.series(Series::cdf(r.dispatch.clone(), &jcts));
        // Each site's hourly heat, summed by day: MWh a day / 24 h.
        let mut days: std::collections::BTreeMap<i64, f64> = std::collections::BTreeMap::new();
        for s in &r.sites {
            for h in s.report.power.iter().flat_map(|p| &p.hourly) {
                *days.entry((h.t_s / 86_400.0).floor() as i64).or_insert(0.0) += h.heat_exported_mw * h.hours;
            }
        }
        let points: Vec<(f64, f64)> = days.iter().map(|(d, mwh)| (*d as f64, mwh / 24.0)).collect();
        heat = heat.series(Series::new(r.dispatch.clone(), points));
    }
    Chart::new(format!("{name}: heat sold by dispatch policy"))
        .x_label("day")
        .panel(heat)
        .render(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    let stem = path.file_stem().map_or_else(|| "federation".into(), |s| s.to_string_lossy().into_owned());
    let ext = path.extension().map_or_else(|| "png".into(), |e| e.to_string_lossy().into_owned());
    let jct_path = path.with_file_name(format!("{stem}-jct.{ext}"));
    Chart::new(format!("{name}: JCT by dispatch policy"))
        .x_label("job completion time (hours)")
        .x_log()
        .panel(jct)
        .render(&jct_path)
        .with_context(|| format!("cannot write the plot to {}", jct_path.display()))?;
    eprintln!("plots: {} and {}", path.display(), jct_path.display());
    Ok(())
}
