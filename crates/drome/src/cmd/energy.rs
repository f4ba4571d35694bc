//! `drome energy`: a fleet's year (or a simulated series) in power, cooling, waste heat, money and
//! carbon, per cooling type.

use super::{Output, load_fleet, print_json};
use anyhow::Context;
use energy::{EnergyModel, EnergyReport, GridYear, HeatOptions, TemperatureYear};
use model::{Cooling, Fleet};
use report::{Chart, Legend, Panel, Series, Table, fmt_num, fmt_thousands};
use std::path::{Path, PathBuf};

/// Which cooling to account.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CoolingArg {
    /// Each site as the fleet file cools it.
    #[default]
    Fleet,
    Air,
    /// Direct-to-chip liquid cooling.
    Liquid,
    /// Single-phase immersion in oil.
    Immersion,
    /// Air, liquid and immersion side by side.
    All,
}

/// Arguments of `drome energy`.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    drome energy --fleet fleets/valence.toml --cooling all --utilization 0.8\n  \
    drome energy --fleet fleets/valence.toml --series out/valence.csv --plot out/energy.png\n  \
    drome energy --fleet fleets/small.toml --heat-price-eur-mwh 55 --output json")]
pub struct EnergyArgs {
    /// Fleet: a fleet TOML (fleets/valence.toml) or a node list CSV.
    #[arg(long)]
    pub fleet: PathBuf,
    /// Cooling of every site; `fleet` keeps each site's own, `all` compares the three.
    #[arg(long, value_enum, default_value_t)]
    pub cooling: CoolingArg,
    /// Constant GPU allocation (0..1) over a whole year.
    #[arg(long, conflicts_with = "series")]
    pub utilization: Option<f64>,
    /// Allocation series CSV with t_s,gpu_allocation columns, as `drome sim --csv` writes it.
    #[arg(long)]
    pub series: Option<PathBuf>,
    /// Hour of the year (0-8759, 0 = 1 January 00:00) at which the run starts.
    #[arg(long, default_value_t = 0)]
    pub start_hour: usize,
    /// Price the heat network pays for heat, EUR/MWh.
    #[arg(long, default_value_t = 40.0)]
    pub heat_price_eur_mwh: f64,
    /// Supply temperature of the heat network, °C.
    #[arg(long, default_value_t = 65.0)]
    pub heat_supply_celsius: f64,
    /// Scale of the heat network's demand (1 = sized for the site; 0 = no heat network).
    #[arg(long, default_value_t = 1.0)]
    pub heat_demand_scale: f64,
    /// Hourly outdoor temperature CSV (hour,outdoor_celsius; 8,760 rows) instead of the shipped
    /// Valence year.
    #[arg(long)]
    pub temperature: Option<PathBuf>,
    /// Hourly grid CSV (hour,price_eur_per_mwh,co2_g_per_kwh) instead of the shipped French year.
    #[arg(long)]
    pub grid: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
    /// Plot site power against the grid cap and heat exported against demand to this PNG or SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Write the hourly series (one row per hour and cooling type) to this CSV.
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

pub fn run(args: EnergyArgs) -> anyhow::Result<()> {
    let fleet = load_fleet(&args.fleet)?;
    let temperature = match &args.temperature {
        Some(path) => TemperatureYear::parse(&read(path)?).with_context(|| format!("in {}", path.display()))?,
        None => TemperatureYear::valence()?,
    };
    let grid = match &args.grid {
        Some(path) => GridYear::parse(&read(path)?).with_context(|| format!("in {}", path.display()))?,
        None => GridYear::france()?,
    };
    let series = match (&args.series, args.utilization) {
        (Some(path), _) => {
            energy::parse_allocation_csv(&read(path)?).with_context(|| format!("in {}", path.display()))?
        }
        (None, u) => {
            let u = u.unwrap_or(0.8);
            if !(0.0..=1.0).contains(&u) {
                anyhow::bail!("--utilization must be between 0 and 1, got {u}");
            }
            vec![(0.0, u), (energy::HOURS_PER_YEAR as f64 * 3600.0, u)]
        }
    };
    if args.start_hour >= energy::HOURS_PER_YEAR {
        anyhow::bail!("--start-hour must be below {}, got {}", energy::HOURS_PER_YEAR, args.start_hour);
    }
    for (name, v) in [
        ("--heat-price-eur-mwh", args.heat_price_eur_mwh),
        ("--heat-supply-celsius", args.heat_supply_celsius),
        ("--heat-demand-scale", args.heat_demand_scale),
    ] {
        if !v.is_finite() || (name == "--heat-demand-scale" && v < 0.0) {
            anyhow::bail!("{name} must be a finite number{}, got {v}", if v < 0.0 { " not below 0" } else { "" });
        }
    }
    let heat = HeatOptions {
        price_eur_per_mwh: args.heat_price_eur_mwh,
        supply_celsius: args.heat_supply_celsius,
        demand_scale: args.heat_demand_scale,
    };
    let coolings: Vec<Option<Cooling>> = match args.cooling {
        CoolingArg::Fleet => vec![None],
        CoolingArg::Air => vec![Some(Cooling::Air)],
        CoolingArg::Liquid => vec![Some(Cooling::Liquid)],
        CoolingArg::Immersion => vec![Some(Cooling::Immersion)],
        CoolingArg::All => vec![Some(Cooling::Air), Some(Cooling::Liquid), Some(Cooling::Immersion)],
    };
    let reports = coolings
        .iter()
        .map(|&c| energy::account(&EnergyModel::new(&fleet, c, &heat), &temperature, &grid, &series, args.start_hour))
        .collect::<Result<Vec<EnergyReport>, _>>()?;

    if let Some(path) = &args.plot {
        plot(path, &fleet, &reports)?;
    }
    if let Some(path) = &args.csv {
        write_csv(path, &reports)?;
    }
    match args.output {
        Output::Json => {
            let value = serde_json::json!({
                "fleet": fleet.name,
                "gpus": fleet.total_gpus(),
                "heat_price_eur_per_mwh": heat.price_eur_per_mwh,
                "heat_supply_celsius": heat.supply_celsius,
                "reports": reports,
            });
            print_json(&round_floats(value))
        }
        Output::Table => {
            print_table(&fleet, &reports);
            Ok(())
        }
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Rounds every float to 6 significant digits, so that scripts and snapshots see the model's
/// figures rather than the last bits of floating-point sums.
fn round_floats(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let x = n.as_f64().unwrap_or(0.0);
            if x == 0.0 || !x.is_finite() {
                return Value::from(x);
            }
            let digits = 6 - 1 - x.abs().log10().floor() as i32;
            let scale = 10f64.powi(digits.clamp(-15, 15));
            Value::from((x * scale).round() / scale)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(round_floats).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, round_floats(v))).collect()),
        other => other,
    }
}

fn print_table(fleet: &Fleet, reports: &[EnergyReport]) {
    let tty = report::table::stdout_is_tty();
    let mut headers = vec!["".to_string()];
    headers.extend(reports.iter().map(|r| r.cooling.clone()));
    let mut t = Table::new(headers).utf8(tty).align_left(0);
    let mw = |x: f64| fmt_num(x, 3);
    let mwh = |x: f64| fmt_thousands(x.round() as i64);
    let eur = |x: f64| fmt_thousands(x.round() as i64);
    type Row<'a> = (&'a str, Box<dyn Fn(&EnergyReport) -> String + 'a>);
    let rows: Vec<Row> = vec![
        ("PUE", Box::new(|r| fmt_num(r.totals.pue, 3))),
        ("IT MWh", Box::new(move |r| mwh(r.totals.it_mwh))),
        ("facility MWh", Box::new(move |r| mwh(r.totals.facility_mwh))),
        ("heat pump MWh", Box::new(move |r| mwh(r.totals.heat_pump_mwh))),
        ("grid MWh", Box::new(move |r| mwh(r.totals.site_mwh))),
        ("peak MW", Box::new(move |r| mw(r.totals.peak_site_mw))),
        ("grid cap MW", Box::new(move |r| r.totals.grid_cap_mw.map_or_else(|| "none".into(), mw))),
        ("hours over cap", Box::new(move |r| fmt_thousands(r.totals.hours_over_cap.round() as i64))),
        ("heat recoverable MWh", Box::new(move |r| mwh(r.totals.heat_recoverable_mwh))),
        ("heat exported MWh", Box::new(move |r| mwh(r.totals.heat_exported_mwh))),
        ("heat demand MWh", Box::new(move |r| mwh(r.totals.heat_demand_mwh))),
        ("heat revenue EUR", Box::new(move |r| eur(r.totals.heat_revenue_eur))),
        ("energy cost EUR", Box::new(move |r| eur(r.totals.energy_cost_eur))),
        ("net cost EUR", Box::new(move |r| eur(r.totals.energy_cost_eur - r.totals.heat_revenue_eur))),
        ("CO2 t", Box::new(|r| fmt_num(r.totals.co2_t, 1))),
    ];
    for (name, f) in &rows {
        let mut cells = vec![name.to_string()];
        cells.extend(reports.iter().map(f));
        t.row(cells);
    }
    println!("{}", t.render());
    if let Some(r) = reports.first() {
        println!(
            "{}: {} GPUs on {} site(s); {} h from hour {} at mean GPU allocation {:.1}%, mean outdoor {:.1} °C",
            fleet.name,
            fmt_thousands(fleet.total_gpus()),
            fleet.sites.len(),
            fmt_thousands(r.hours.round() as i64),
            r.start_hour_of_year,
            r.mean_allocation * 100.0,
            r.mean_outdoor_celsius
        );
    }
}

fn write_csv(path: &Path, reports: &[EnergyReport]) -> anyhow::Result<()> {
    let header = [
        "cooling",
        "t_s",
        "hour_of_year",
        "allocation",
        "outdoor_celsius",
        "it_mw",
        "site_mw",
        "heat_recovered_mw",
        "heat_exported_mw",
        "heat_demand_mw",
        "price_eur_per_mwh",
        "co2_g_per_kwh",
    ];
    let rows = reports.iter().flat_map(|r| {
        r.hourly.iter().map(move |h| {
            vec![
                r.cooling.clone(),
                h.t_s.to_string(),
                h.hour_of_year.to_string(),
                h.allocation.to_string(),
                h.outdoor_celsius.to_string(),
                h.it_mw.to_string(),
                h.site_mw.to_string(),
                h.heat_recovered_mw.to_string(),
                h.heat_exported_mw.to_string(),
                h.heat_demand_mw.to_string(),
                h.price_eur_per_mwh.to_string(),
                h.co2_g_per_kwh.to_string(),
            ]
        })
    });
    report::csv_out::write_rows(path, &header, rows)
        .with_context(|| format!("cannot write the hourly series to {}", path.display()))?;
    Ok(())
}

fn plot(path: &Path, fleet: &Fleet, reports: &[EnergyReport]) -> anyhow::Result<()> {
    let days = |t_s: f64| t_s / 86_400.0;
    let mut power = Panel::new("site power (MW)").legend(Legend::LowerLeft);
    let mut heat = Panel::new("heat (MW)").legend(Legend::UpperRight);
    if let Some(r) = reports.first() {
        heat = heat.series(Series::new("demand", r.hourly.iter().map(|h| (days(h.t_s), h.heat_demand_mw)).collect()));
    }
    for r in reports {
        power =
            power.series(Series::new(r.cooling.clone(), r.hourly.iter().map(|h| (days(h.t_s), h.site_mw)).collect()));
        heat = heat.series(Series::new(
            format!("{} exported", r.cooling),
            r.hourly.iter().map(|h| (days(h.t_s), h.heat_exported_mw)).collect(),
        ));
    }
    if let Some(r) = reports.first()
        && let Some(cap) = r.totals.grid_cap_mw
    {
        let end = r.hourly.last().map_or(0.0, |h| days(h.t_s + 3600.0 * h.hours));
        power = power.series(Series::new("grid cap", vec![(0.0, cap), (end, cap)])).y_range(0.0, cap * 1.1);
    }
    Chart::new(format!("{}: site power and waste heat", fleet.name))
        .x_label("time (days)")
        .panel(power)
        .panel(heat)
        .render(path)
        .with_context(|| format!("cannot write the plot to {}", path.display()))?;
    Ok(())
}
