//! `drome fleet show`: what a fleet holds, at a glance.

use super::{Output, load_fleet, print_json};
use report::{Table, fmt_thousands};
use serde::Serialize;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum FleetCommand {
    /// Summarise a fleet: sites, halls, racks, nodes, GPUs by model, network.
    ///
    /// FILE is a fleet TOML (see fleets/valence.toml) or a node list CSV (Alibaba openb, PAI or
    /// spot-GPU); the format is detected.
    Show {
        file: PathBuf,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

#[derive(Serialize)]
struct SiteRow {
    name: String,
    cooling: String,
    grid_power_cap_mw: Option<f64>,
    halls: usize,
    racks: usize,
    nodes: usize,
    gpus: u64,
    gpu_board_power_mw: f64,
}

#[derive(Serialize)]
struct ModelRow {
    model: String,
    family: String,
    memory_gib: f64,
    board_power_w: f64,
    nodes: usize,
    gpus: u64,
}

#[derive(Serialize)]
struct FleetSummary {
    name: String,
    sites: Vec<SiteRow>,
    gpu_models: Vec<ModelRow>,
    nodes: usize,
    cpu_only_nodes: usize,
    gpus: u64,
    cpu_cores: f64,
    memory_tib: f64,
    racks: usize,
    leaf_switches: u32,
    spines: u32,
    nvlink_domains: usize,
}

pub fn run(cmd: FleetCommand) -> anyhow::Result<()> {
    match cmd {
        FleetCommand::Show { file, output } => show(&file, output),
    }
}

fn summarise(fleet: &model::Fleet) -> FleetSummary {
    let sites = fleet
        .sites
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let nodes: Vec<&model::Node> = fleet.nodes.iter().filter(|n| n.site.index() == i).collect();
            let gpus = nodes.iter().map(|n| u64::from(n.gpu_count)).sum();
            let power: f64 = nodes
                .iter()
                .filter_map(|n| n.gpu_model.map(|m| fleet.gpu_model(m).board_power_watts * f64::from(n.gpu_count)))
                .sum();
            SiteRow {
                name: s.name.clone(),
                cooling: s.cooling.to_string(),
                grid_power_cap_mw: s.grid_power_cap_watts.map(|w| w / 1e6),
                halls: s.halls.len(),
                racks: fleet.racks.iter().filter(|r| r.site.index() == i).count(),
                nodes: nodes.len(),
                gpus,
                gpu_board_power_mw: power / 1e6,
            }
        })
        .collect();
    let gpu_models = fleet
        .gpus_by_model()
        .into_iter()
        .map(|(id, gpus)| {
            let m = fleet.gpu_model(id);
            ModelRow {
                model: m.name.clone(),
                family: m.family.to_string(),
                memory_gib: m.memory_mib as f64 / 1024.0,
                board_power_w: m.board_power_watts,
                nodes: fleet.nodes.iter().filter(|n| n.gpu_model == Some(id)).count(),
                gpus,
            }
        })
        .collect();
    let mut domains: Vec<u32> = fleet.nodes.iter().filter(|n| n.gpu_count > 0).map(|n| n.nvlink_domain).collect();
    domains.sort_unstable();
    domains.dedup();
    FleetSummary {
        name: fleet.name.clone(),
        sites,
        gpu_models,
        nodes: fleet.nodes.len(),
        cpu_only_nodes: fleet.nodes.iter().filter(|n| n.gpu_count == 0).count(),
        gpus: fleet.total_gpus(),
        cpu_cores: fleet.total_cpu_milli() as f64 / 1000.0,
        memory_tib: fleet.total_memory_mib() as f64 / (1024.0 * 1024.0),
        racks: fleet.racks.len(),
        leaf_switches: fleet.leaf_switches,
        spines: fleet.spines,
        nvlink_domains: domains.len(),
    }
}

fn show(file: &std::path::Path, output: Output) -> anyhow::Result<()> {
    let fleet = load_fleet(file)?;
    let s = summarise(&fleet);
    if output == Output::Json {
        return print_json(&s);
    }
    let tty = report::table::stdout_is_tty();
    println!(
        "fleet {}: {} nodes ({} CPU-only), {} GPUs, {} cores, {:.1} TiB memory",
        s.name,
        fmt_thousands(s.nodes as u64),
        s.cpu_only_nodes,
        fmt_thousands(s.gpus),
        fmt_thousands(s.cpu_cores as u64),
        s.memory_tib
    );
    let mut sites =
        Table::new(["site", "cooling", "grid cap MW", "halls", "racks", "nodes", "GPUs", "GPU TDP MW"]).utf8(tty);
    for r in &s.sites {
        sites.row([
            r.name.clone(),
            r.cooling.clone(),
            r.grid_power_cap_mw.map_or("-".into(), |c| format!("{c:.1}")),
            r.halls.to_string(),
            r.racks.to_string(),
            fmt_thousands(r.nodes as u64),
            fmt_thousands(r.gpus),
            format!("{:.2}", r.gpu_board_power_mw),
        ]);
    }
    println!("{}", sites.render());
    let mut models = Table::new(["GPU model", "family", "memory GiB", "board W", "nodes", "GPUs"]).utf8(tty);
    for m in &s.gpu_models {
        models.row([
            m.model.clone(),
            m.family.clone(),
            format!("{:.0}", m.memory_gib),
            format!("{:.0}", m.board_power_w),
            fmt_thousands(m.nodes as u64),
            fmt_thousands(m.gpus),
        ]);
    }
    println!("{}", models.render());
    println!(
        "network: {} racks, {} leaf switches, {} spines, {} NVLink domains",
        fmt_thousands(s.racks as u64),
        s.leaf_switches,
        s.spines,
        fmt_thousands(s.nvlink_domains as u64)
    );
    Ok(())
}
