//! The fleet file format (TOML). A fleet is described by node types and, per hall, groups of
//! identical racks, so a site of thousands of GPUs fits in a page:
//!
//! ```toml
//! name = "example"
//!
//! [node_types.hgx-h200]
//! cpu_milli = 224000
//! memory_mib = 2097152
//! gpus = 8
//! gpu_model = "H200"
//!
//! [[sites]]
//! name = "site-1"
//! cooling = "immersion"
//! grid_power_cap_mw = 2.0
//!
//! [[sites.halls]]
//! name = "hall-a"
//!
//! [[sites.halls.racks]]
//! count = 4
//! nodes_per_rack = 4
//! node_type = "hgx-h200"
//! ```
//!
//! Parsing is pure: the caller reads the file and adds its path to the error.

use crate::fleet::{Cooling, Fleet, FleetBuilder, HeatNetworkSpec, NodeSpec, SiteClimate, SiteEnv};
use crate::gpu::GpuModel;
use serde::Deserialize;
use std::collections::BTreeMap;

/// Why a fleet file was refused. The message names the field, and for syntax errors the line and
/// column.
#[derive(Debug, thiserror::Error)]
pub enum FleetTomlError {
    #[error("{0}")]
    Syntax(#[from] toml::de::Error),
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> FleetTomlError {
    FleetTomlError::Invalid { field: field.into(), message: message.into() }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    name: String,
    #[serde(default)]
    node_types: BTreeMap<String, NodeType>,
    #[serde(default)]
    gpu_models: Vec<GpuModelEntry>,
    sites: Vec<SiteEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeType {
    cpu_milli: u64,
    memory_mib: u64,
    #[serde(default)]
    gpus: u8,
    #[serde(default)]
    gpu_model: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GpuModelEntry {
    name: String,
    #[serde(default)]
    memory_mib: Option<u64>,
    #[serde(default)]
    board_power_watts: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteEntry {
    name: String,
    #[serde(default)]
    cooling: Option<String>,
    #[serde(default)]
    grid_power_cap_mw: Option<f64>,
    #[serde(default)]
    halls: Vec<HallEntry>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    climate: Option<ClimateEntry>,
    #[serde(default)]
    price_adder_eur_per_mwh: Option<f64>,
    #[serde(default)]
    heat_network: Option<HeatNetworkEntry>,
    #[serde(default)]
    fiber_gbps: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClimateEntry {
    station: String,
    min_celsius: [f64; 12],
    max_celsius: [f64; 12],
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeatNetworkEntry {
    base_mw: f64,
    #[serde(default)]
    heating_mw_per_kelvin: f64,
    #[serde(default)]
    price_eur_per_mwh: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HallEntry {
    name: String,
    #[serde(default)]
    cooling_capacity_mw: Option<f64>,
    #[serde(default)]
    racks: Vec<RackGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RackGroup {
    count: u32,
    nodes_per_rack: u32,
    node_type: String,
    /// Racks that share one leaf switch (default 1: a leaf per rack).
    #[serde(default)]
    racks_per_leaf: Option<u32>,
    #[serde(default)]
    rack_power_limit_kw: Option<f64>,
    /// Nodes that share one NVLink domain (default 1: each node its own, as on HGX boards).
    #[serde(default)]
    nodes_per_nvlink_domain: Option<u32>,
}

/// Largest fleet a file may expand to: far above any site planned, low enough that a typo such as
/// `count = 1000000000` is refused instead of exhausting memory.
pub const MAX_NODES: u64 = 2_000_000;

fn positive_mw(field: String, mw: Option<f64>) -> Result<Option<f64>, FleetTomlError> {
    match mw {
        None => Ok(None),
        Some(v) if v.is_finite() && v > 0.0 => Ok(Some(v * 1e6)),
        Some(v) => Err(invalid(field, format!("must be a positive number of MW, got {v}"))),
    }
}

fn site_env(si: usize, site: &SiteEntry) -> Result<SiteEnv, FleetTomlError> {
    let field = |name: &str| format!("sites[{si}].{name}");
    let finite = |name: &str, v: f64| {
        if v.is_finite() { Ok(v) } else { Err(invalid(field(name), format!("must be a finite number, got {v}"))) }
    };
    let non_negative = |name: &str, v: f64| {
        if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(invalid(field(name), format!("must be 0 or more, got {v}"))) }
    };
    let climate = match &site.climate {
        None => None,
        Some(c) => {
            for m in 0..12 {
                let (lo, hi) = (c.min_celsius[m], c.max_celsius[m]);
                if !(lo.is_finite() && hi.is_finite() && (-60.0..=60.0).contains(&lo) && (-60.0..=60.0).contains(&hi))
                    || lo > hi
                {
                    return Err(invalid(
                        field(&format!("climate.min_celsius[{m}]")),
                        format!("month {} needs -60 <= min <= max <= 60 °C, got {lo} and {hi}", m + 1),
                    ));
                }
            }
            Some(SiteClimate { station: c.station.clone(), min_celsius: c.min_celsius, max_celsius: c.max_celsius })
        }
    };
    let heat_network = match &site.heat_network {
        None => None,
        Some(h) => Some(HeatNetworkSpec {
            base_watts: non_negative("heat_network.base_mw", h.base_mw)? * 1e6,
            heating_watts_per_kelvin: non_negative("heat_network.heating_mw_per_kelvin", h.heating_mw_per_kelvin)?
                * 1e6,
            price_eur_per_mwh: h
                .price_eur_per_mwh
                .map(|p| non_negative("heat_network.price_eur_per_mwh", p))
                .transpose()?,
        }),
    };
    let fiber_gbps = match site.fiber_gbps {
        None => None,
        Some(g) if g.is_finite() && g > 0.0 => Some(g),
        Some(g) => return Err(invalid(field("fiber_gbps"), format!("must be a positive number of Gbit/s, got {g}"))),
    };
    if site.region.as_deref().is_some_and(|r| r.trim().is_empty()) {
        return Err(invalid(field("region"), "must not be empty"));
    }
    Ok(SiteEnv {
        region: site.region.as_ref().map(|r| r.trim().to_string()),
        climate,
        price_adder_eur_per_mwh: site
            .price_adder_eur_per_mwh
            .map(|p| finite("price_adder_eur_per_mwh", p))
            .transpose()?
            .unwrap_or(0.0),
        heat_network,
        fiber_gbps,
    })
}

/// Parses fleet TOML text into a [`Fleet`].
pub fn parse_fleet(text: &str) -> Result<Fleet, FleetTomlError> {
    let file: FleetFile = toml::from_str(text)?;
    let mut b = FleetBuilder::new(file.name.clone());

    for (i, m) in file.gpu_models.iter().enumerate() {
        let mut model = GpuModel::from_name(&m.name);
        if model.name.is_empty() {
            return Err(invalid(format!("gpu_models[{i}].name"), "must not be empty"));
        }
        if let Some(mem) = m.memory_mib {
            model.memory_mib = mem;
        }
        if let Some(w) = m.board_power_watts {
            if !(w.is_finite() && w > 0.0) {
                return Err(invalid(
                    format!("gpu_models[{i}].board_power_watts"),
                    format!("must be positive, got {w}"),
                ));
            }
            model.board_power_watts = w;
        }
        b.add_gpu_model(model);
    }

    for (name, t) in &file.node_types {
        if t.gpus > 0 && t.gpu_model.as_deref().is_none_or(|m| m.trim().is_empty()) {
            return Err(invalid(format!("node_types.{name}.gpu_model"), "a node type with GPUs must name their model"));
        }
    }

    if file.sites.is_empty() {
        return Err(invalid("sites", "a fleet needs at least one site"));
    }
    let mut total_nodes: u64 = 0;
    for (si, site) in file.sites.iter().enumerate() {
        let cooling = match &site.cooling {
            None => Cooling::default(),
            Some(c) => c.parse().map_err(|e: String| invalid(format!("sites[{si}].cooling"), e))?,
        };
        let cap = positive_mw(format!("sites[{si}].grid_power_cap_mw"), site.grid_power_cap_mw)?;
        let site_id = b.add_site(site.name.clone(), cooling, cap);
        b.set_site_env(site_id, site_env(si, site)?);
        for (hi, hall) in site.halls.iter().enumerate() {
            let field = format!("sites[{si}].halls[{hi}]");
            let capacity = positive_mw(format!("{field}.cooling_capacity_mw"), hall.cooling_capacity_mw)?;
            let hall_id = b.add_hall(site_id, hall.name.clone(), capacity);
            let mut rack_no = 0u32;
            for (gi, group) in hall.racks.iter().enumerate() {
                let field = format!("{field}.racks[{gi}]");
                let node_type = file.node_types.get(&group.node_type).ok_or_else(|| {
                    let known: Vec<&str> = file.node_types.keys().map(String::as_str).collect();
                    invalid(
                        format!("{field}.node_type"),
                        format!("unknown node type '{}' (defined: {})", group.node_type, known.join(", ")),
                    )
                })?;
                total_nodes += u64::from(group.count) * u64::from(group.nodes_per_rack);
                if total_nodes > MAX_NODES {
                    return Err(invalid(format!("{field}.count"), format!("the fleet would exceed {MAX_NODES} nodes")));
                }
                let racks_per_leaf = group.racks_per_leaf.unwrap_or(1);
                if racks_per_leaf == 0 {
                    return Err(invalid(format!("{field}.racks_per_leaf"), "must be at least 1"));
                }
                let per_domain = group.nodes_per_nvlink_domain.unwrap_or(1);
                if per_domain == 0 {
                    return Err(invalid(format!("{field}.nodes_per_nvlink_domain"), "must be at least 1"));
                }
                let rack_power = match group.rack_power_limit_kw {
                    None => None,
                    Some(kw) if kw.is_finite() && kw > 0.0 => Some(kw * 1e3),
                    Some(kw) => {
                        return Err(invalid(
                            format!("{field}.rack_power_limit_kw"),
                            format!("must be positive, got {kw}"),
                        ));
                    }
                };
                let mut leaf = None;
                let mut domain: Option<(u32, u32)> = None; // (id, members so far)
                let mut next_domain = u32::MAX; // allocated downwards to stay clear of node-own domains
                for r in 0..group.count {
                    if r % racks_per_leaf == 0 {
                        leaf = Some(b.new_leaf_switch());
                    }
                    rack_no += 1;
                    let rack_name = format!("{}-r{rack_no:03}", hall.name);
                    let rack = b.add_rack(hall_id, rack_name.clone(), rack_power);
                    for n in 0..group.nodes_per_rack {
                        let nvlink_domain = if per_domain > 1 {
                            let d = match domain {
                                Some((id, k)) if k < per_domain => (id, k + 1),
                                _ => {
                                    next_domain -= 1;
                                    (next_domain, 1)
                                }
                            };
                            domain = Some(d);
                            Some(d.0)
                        } else {
                            None
                        };
                        b.add_node(
                            rack,
                            NodeSpec {
                                name: format!("{rack_name}-n{:02}", n + 1),
                                cpu_milli: node_type.cpu_milli,
                                memory_mib: node_type.memory_mib,
                                gpu_count: node_type.gpus,
                                gpu_model: node_type.gpu_model.clone(),
                                nvlink_domain,
                                leaf_switch: leaf,
                            },
                        );
                    }
                }
            }
        }
    }
    Ok(b.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::SiteId;

    const SMALL: &str = r#"
name = "small"
[node_types.h]
cpu_milli = 1000
memory_mib = 1024
gpus = 8
gpu_model = "H200"
[[sites]]
name = "s"
cooling = "immersion"
grid_power_cap_mw = 1.5
[[sites.halls]]
name = "a"
[[sites.halls.racks]]
count = 3
nodes_per_rack = 2
node_type = "h"
racks_per_leaf = 2
"#;

    #[test]
    fn expands_rack_groups() {
        let f = parse_fleet(SMALL).unwrap();
        assert_eq!(f.nodes.len(), 6);
        assert_eq!(f.total_gpus(), 48);
        assert_eq!(f.racks.len(), 3);
        assert_eq!(f.leaf_switches, 2);
        assert_eq!(f.nodes[0].leaf_switch, f.nodes[3].leaf_switch);
        assert_ne!(f.nodes[0].leaf_switch, f.nodes[4].leaf_switch);
        assert_eq!(f.sites[0].grid_power_cap_watts, Some(1.5e6));
        assert_eq!(f.sites[0].cooling, Cooling::Immersion);
        assert_eq!(f.nodes[5].name, "a-r003-n02");
    }

    #[test]
    fn reads_what_surrounds_a_site() {
        let text = SMALL.replace(
            "grid_power_cap_mw = 1.5\n",
            "grid_power_cap_mw = 1.5\nregion = \"FR-ARA\"\nprice_adder_eur_per_mwh = -4.5\nfiber_gbps = 400\n\
             climate = { station = \"x\", min_celsius = [0,1,2,3,4,5,6,7,8,9,10,11], max_celsius = [5,6,7,8,9,10,11,12,13,14,15,16] }\n\
             heat_network = { base_mw = 2.0, heating_mw_per_kelvin = 0.1 }\n",
        );
        let f = parse_fleet(&text).unwrap();
        let env = &f.sites[0].env;
        assert_eq!(env.region.as_deref(), Some("FR-ARA"));
        assert_eq!(env.price_adder_eur_per_mwh, -4.5);
        assert_eq!(env.fiber_gbps, Some(400.0));
        assert_eq!(env.climate.as_ref().map(|c| c.max_celsius[11]), Some(16.0));
        let heat = env.heat_network.unwrap();
        assert_eq!((heat.base_watts, heat.heating_watts_per_kelvin, heat.price_eur_per_mwh), (2e6, 1e5, None));
        let e = error_of(&text.replace("min_celsius = [0,", "min_celsius = [9,"));
        assert!(e.contains("sites[0].climate.min_celsius[0]"), "{e}");
        let e = error_of(&text.replace("fiber_gbps = 400", "fiber_gbps = 0"));
        assert!(e.contains("sites[0].fiber_gbps"), "{e}");
        let e = error_of(&text.replace("base_mw = 2.0", "base_mw = -2.0"));
        assert!(e.contains("sites[0].heat_network.base_mw"), "{e}");
    }

    #[test]
    fn a_sites_own_fleet_holds_its_nodes_alone() {
        let text = format!(
            "{SMALL}\n[[sites]]\nname = \"t\"\nregion = \"FR-PAC\"\n[[sites.halls]]\nname = \"b\"\n[[sites.halls.racks]]\ncount = 1\nnodes_per_rack = 3\nnode_type = \"h\"\n"
        );
        let f = parse_fleet(&text).unwrap();
        let t = f.site_fleet(SiteId(1));
        assert_eq!((t.sites.len(), t.halls.len(), t.racks.len(), t.nodes.len()), (1, 1, 1, 3));
        assert_eq!(t.sites[0].name, "t");
        assert_eq!(t.sites[0].env.region.as_deref(), Some("FR-PAC"));
        assert_eq!(t.nodes[0].name, f.nodes[6].name);
        assert_eq!(t.gpu_models, f.gpu_models);
        assert_eq!(t.nodes[2].site, SiteId(0));
        assert_eq!(f.site_fleet(SiteId(0)).nodes.len(), 6);
    }

    fn error_of(text: &str) -> String {
        parse_fleet(text).unwrap_err().to_string()
    }

    #[test]
    fn errors_name_the_field() {
        let e = error_of(&SMALL.replace("node_type = \"h\"", "node_type = \"x\""));
        assert!(e.contains("sites[0].halls[0].racks[0].node_type") && e.contains("'x'"), "{e}");
        let e = error_of(&SMALL.replace("cooling = \"immersion\"", "cooling = \"ice\""));
        assert!(e.contains("sites[0].cooling"), "{e}");
        let e = error_of(&SMALL.replace("grid_power_cap_mw = 1.5", "grid_power_cap_mw = -1"));
        assert!(e.contains("grid_power_cap_mw"), "{e}");
        let e = error_of(&SMALL.replace("count = 3", "count = 3000000000"));
        assert!(e.contains("count"), "{e}");
        let e = error_of(&SMALL.replace("gpus = 8", "gpus = 8\ngpu_modle = \"H200\""));
        assert!(e.contains("gpu_modle") && e.contains("line"), "{e}");
    }
}
