//! The fleet: sites -> halls -> racks -> nodes -> GPUs, held as flat arenas indexed by typed ids so
//! that the scheduler can keep per-node state in plain vectors.

use crate::gpu::{GpuModel, GpuModelId};
use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub u32);

        impl $name {
            pub fn index(self) -> usize {
                self.0 as usize
            }
        }
    };
}

id_type!(
    /// Index of a site in [`Fleet::sites`].
    SiteId
);
id_type!(
    /// Index of a hall in [`Fleet::halls`].
    HallId
);
id_type!(
    /// Index of a rack in [`Fleet::racks`].
    RackId
);
id_type!(
    /// Index of a node in [`Fleet::nodes`].
    NodeId
);

/// How a site takes heat away from its IT equipment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Cooling {
    /// Air through the servers, chillers or dry coolers outside.
    #[default]
    Air,
    /// Direct-to-chip liquid cooling (cold plates), air for the rest.
    Liquid,
    /// Single-phase immersion in dielectric oil.
    Immersion,
}

impl Cooling {
    pub fn as_str(self) -> &'static str {
        match self {
            Cooling::Air => "air",
            Cooling::Liquid => "liquid",
            Cooling::Immersion => "immersion",
        }
    }
}

impl fmt::Display for Cooling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Cooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "air" => Ok(Cooling::Air),
            "liquid" | "dlc" | "direct-to-chip" => Ok(Cooling::Liquid),
            "immersion" | "oil" => Ok(Cooling::Immersion),
            other => Err(format!("unknown cooling type '{other}' (expected air, liquid or immersion)")),
        }
    }
}

/// A data-centre site with its own grid connection.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    /// Power the site may draw from the grid, all loads included; `None` when unknown or uncapped.
    pub grid_power_cap_watts: Option<f64>,
    pub cooling: Cooling,
    pub halls: Vec<HallId>,
    /// Where the site stands and what surrounds it: region, weather, grid contract, heat network,
    /// fiber. Defaults say nothing, and the energy model then assumes its own.
    #[serde(default)]
    pub env: SiteEnv,
}

/// What a site is beyond its hardware, for the federation's dispatch and the twin's energy
/// figures. Every field is optional: a one-site fleet needs none of them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SiteEnv {
    /// Region the site stands in (an ISO 3166-2 code such as `FR-ARA`); work bound to a region
    /// stays in it.
    pub region: Option<String>,
    /// The site's climate normals; `None`: the twin's default year (Valence).
    pub climate: Option<SiteClimate>,
    /// Added to the grid's hourly price at this site, EUR/MWh: what its connection's voltage level
    /// (network tariff) or its supply contract adds to or takes from the wholesale price.
    pub price_adder_eur_per_mwh: f64,
    /// The heat network next to the site; `None`: one sized to the site by the energy model.
    pub heat_network: Option<HeatNetworkSpec>,
    /// The site's link to the other sites, Gbit/s; `None`: no figure (data is not moved).
    pub fiber_gbps: Option<f64>,
}

/// Monthly normal temperatures of the weather station nearest a site, °C.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SiteClimate {
    pub station: String,
    pub min_celsius: [f64; 12],
    pub max_celsius: [f64; 12],
}

/// The demand of the heat network a site sells to.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeatNetworkSpec {
    /// Steady process-heat demand (industry, greenhouses), watts.
    pub base_watts: f64,
    /// Space-heating demand per kelvin below 18 °C outside (the heating base of degree-days), watts.
    pub heating_watts_per_kelvin: f64,
    /// What the network pays, EUR/MWh; `None`: the run's heat price.
    pub price_eur_per_mwh: Option<f64>,
}

/// A hall (data room) inside a site.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hall {
    pub name: String,
    pub site: SiteId,
    /// Heat the hall's cooling loop can reject, in watts of IT load; `None` when not limited.
    pub cooling_capacity_watts: Option<f64>,
    pub racks: Vec<RackId>,
}

/// A rack: a power feed and a top-of-rack (leaf) switch's worth of nodes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rack {
    pub name: String,
    pub hall: HallId,
    pub site: SiteId,
    /// Power the rack's feed allows, in watts; `None` when not limited.
    pub power_limit_watts: Option<f64>,
    pub nodes: Vec<NodeId>,
}

/// A server. Its GPUs are all of one model, as in every GPU server sold today.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub site: SiteId,
    pub hall: HallId,
    pub rack: RackId,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpu_count: u8,
    /// `None` for CPU-only nodes.
    pub gpu_model: Option<GpuModelId>,
    /// GPUs in one NVLink domain talk at NVLink speed; an 8-GPU HGX board is one domain, a
    /// GB200 NVL72 rack is one domain spanning many nodes.
    pub nvlink_domain: u32,
    /// The leaf (top-of-rack) switch the node's scale-out NICs plug into; fleet-wide numbering.
    pub leaf_switch: u32,
    /// The spine above that leaf; fleet-wide numbering.
    pub spine: u32,
}

/// What a caller gives [`FleetBuilder::add_node`].
#[derive(Clone, Debug, PartialEq)]
pub struct NodeSpec {
    pub name: String,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub gpu_count: u8,
    /// Model name; ignored when `gpu_count` is 0.
    pub gpu_model: Option<String>,
    /// Shared NVLink domain; `None` gives the node a domain of its own.
    pub nvlink_domain: Option<u32>,
    /// Leaf switch; `None` puts the node under its rack's own leaf.
    pub leaf_switch: Option<u32>,
}

/// A whole fleet. Built with [`FleetBuilder`], from TOML with [`crate::fleet_toml::parse_fleet`],
/// or from a node list by the trace importers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fleet {
    pub name: String,
    pub sites: Vec<Site>,
    pub halls: Vec<Hall>,
    pub racks: Vec<Rack>,
    pub nodes: Vec<Node>,
    pub gpu_models: Vec<GpuModel>,
    /// Number of distinct leaf switches (ids `0..leaf_switches`).
    pub leaf_switches: u32,
    /// Number of distinct spines (ids `0..spines`).
    pub spines: u32,
}

impl Fleet {
    pub fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.index()]
    }

    pub fn node_ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        (0..self.nodes.len() as u32).map(NodeId)
    }

    pub fn gpu_model(&self, id: GpuModelId) -> &GpuModel {
        &self.gpu_models[id.0 as usize]
    }

    /// The model of a node's GPUs, if it has any.
    pub fn node_gpu_model(&self, id: NodeId) -> Option<&GpuModel> {
        self.node(id).gpu_model.map(|m| self.gpu_model(m))
    }

    pub fn gpu_model_id(&self, name: &str) -> Option<GpuModelId> {
        self.gpu_models.iter().position(|m| m.name.eq_ignore_ascii_case(name)).map(|i| GpuModelId(i as u16))
    }

    pub fn total_gpus(&self) -> u64 {
        self.nodes.iter().map(|n| u64::from(n.gpu_count)).sum()
    }

    pub fn total_cpu_milli(&self) -> u64 {
        self.nodes.iter().map(|n| n.cpu_milli).sum()
    }

    pub fn total_memory_mib(&self) -> u64 {
        self.nodes.iter().map(|n| n.memory_mib).sum()
    }

    /// Largest GPU count on one node.
    pub fn max_gpus_per_node(&self) -> u8 {
        self.nodes.iter().map(|n| n.gpu_count).max().unwrap_or(0)
    }

    /// GPUs per model, in model-table order.
    pub fn gpus_by_model(&self) -> Vec<(GpuModelId, u64)> {
        let mut counts = vec![0u64; self.gpu_models.len()];
        for n in &self.nodes {
            if let Some(m) = n.gpu_model {
                counts[m.0 as usize] += u64::from(n.gpu_count);
            }
        }
        counts.into_iter().enumerate().map(|(i, c)| (GpuModelId(i as u16), c)).collect()
    }

    /// The fleet of one site alone, as that site's own control plane holds it: its halls, racks
    /// and nodes in the same order, renumbered from 0, with the whole fleet's GPU model table (so a
    /// model's id is the same in both). Leaf switches and NVLink domains keep their numbers.
    pub fn site_fleet(&self, site: SiteId) -> Fleet {
        let mut b = FleetBuilder::new(self.name.clone());
        for m in &self.gpu_models {
            b.add_gpu_model(m.clone());
        }
        let Some(s) = self.sites.get(site.index()) else { return b.build() };
        let id = b.add_site(s.name.clone(), s.cooling, s.grid_power_cap_watts);
        b.set_site_env(id, s.env.clone());
        for &h in &s.halls {
            let hall = &self.halls[h.index()];
            let hall_id = b.add_hall(id, hall.name.clone(), hall.cooling_capacity_watts);
            for &r in &hall.racks {
                let rack = &self.racks[r.index()];
                let rack_id = b.add_rack(hall_id, rack.name.clone(), rack.power_limit_watts);
                for &n in &rack.nodes {
                    let node = &self.nodes[n.index()];
                    b.add_node(
                        rack_id,
                        NodeSpec {
                            name: node.name.clone(),
                            cpu_milli: node.cpu_milli,
                            memory_mib: node.memory_mib,
                            gpu_count: node.gpu_count,
                            gpu_model: node.gpu_model.map(|m| self.gpu_model(m).name.clone()),
                            nvlink_domain: Some(node.nvlink_domain),
                            leaf_switch: Some(node.leaf_switch),
                        },
                    );
                }
            }
        }
        b.build()
    }

    /// Sum of the GPUs' board power, in watts: the nameplate the power-cap fractions refer to.
    pub fn gpu_board_power_watts(&self) -> f64 {
        self.nodes
            .iter()
            .filter_map(|n| n.gpu_model.map(|m| self.gpu_model(m).board_power_watts * f64::from(n.gpu_count)))
            .sum()
    }
}

/// Builds a [`Fleet`] site by site, keeping the id arenas and the cross references consistent.
#[derive(Debug)]
pub struct FleetBuilder {
    fleet: Fleet,
}

impl FleetBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        FleetBuilder {
            fleet: Fleet {
                name: name.into(),
                sites: Vec::new(),
                halls: Vec::new(),
                racks: Vec::new(),
                nodes: Vec::new(),
                gpu_models: Vec::new(),
                leaf_switches: 0,
                spines: 0,
            },
        }
    }

    pub fn add_site(&mut self, name: impl Into<String>, cooling: Cooling, grid_power_cap_watts: Option<f64>) -> SiteId {
        let id = SiteId(self.fleet.sites.len() as u32);
        self.fleet.sites.push(Site {
            name: name.into(),
            grid_power_cap_watts,
            cooling,
            halls: Vec::new(),
            env: SiteEnv::default(),
        });
        id
    }

    /// Adds a hall to `site`; each hall gets a spine of its own.
    /// Sets what the fleet file says of a site beyond its hardware.
    pub fn set_site_env(&mut self, site: SiteId, env: SiteEnv) {
        if let Some(s) = self.fleet.sites.get_mut(site.index()) {
            s.env = env;
        }
    }

    pub fn add_hall(&mut self, site: SiteId, name: impl Into<String>, cooling_capacity_watts: Option<f64>) -> HallId {
        let id = HallId(self.fleet.halls.len() as u32);
        self.fleet.halls.push(Hall { name: name.into(), site, cooling_capacity_watts, racks: Vec::new() });
        self.fleet.sites[site.index()].halls.push(id);
        self.fleet.spines += 1;
        id
    }

    pub fn add_rack(&mut self, hall: HallId, name: impl Into<String>, power_limit_watts: Option<f64>) -> RackId {
        let id = RackId(self.fleet.racks.len() as u32);
        let site = self.fleet.halls[hall.index()].site;
        self.fleet.racks.push(Rack { name: name.into(), hall, site, power_limit_watts, nodes: Vec::new() });
        self.fleet.halls[hall.index()].racks.push(id);
        id
    }

    /// A fresh leaf switch id, for callers that put several racks under one leaf.
    pub fn new_leaf_switch(&mut self) -> u32 {
        self.fleet.leaf_switches += 1;
        self.fleet.leaf_switches - 1
    }

    /// Returns the model's id, adding it to the table the first time its name is seen.
    pub fn intern_gpu_model(&mut self, name: &str) -> GpuModelId {
        if let Some(id) = self.fleet.gpu_model_id(name.trim()) {
            return id;
        }
        self.add_gpu_model(GpuModel::from_name(name))
    }

    /// Adds a model with figures of the caller's (overriding what [`GpuModel::from_name`] knows).
    pub fn add_gpu_model(&mut self, model: GpuModel) -> GpuModelId {
        if let Some(id) = self.fleet.gpu_model_id(&model.name) {
            self.fleet.gpu_models[id.0 as usize] = model;
            return id;
        }
        self.fleet.gpu_models.push(model);
        GpuModelId((self.fleet.gpu_models.len() - 1) as u16)
    }

    pub fn add_node(&mut self, rack: RackId, spec: NodeSpec) -> NodeId {
        let id = NodeId(self.fleet.nodes.len() as u32);
        let gpu_model = match (&spec.gpu_model, spec.gpu_count) {
            (Some(name), n) if n > 0 && !name.trim().is_empty() => Some(self.intern_gpu_model(name)),
            (None, n) if n > 0 => Some(self.intern_gpu_model("unknown")),
            _ => None,
        };
        let rack_ref = &self.fleet.racks[rack.index()];
        let (site, hall) = (rack_ref.site, rack_ref.hall);
        let leaf_switch = match spec.leaf_switch {
            Some(leaf) => {
                self.fleet.leaf_switches = self.fleet.leaf_switches.max(leaf + 1);
                leaf
            }
            None => self.rack_leaf(rack),
        };
        // One spine per hall: halls are the scale-out network's pods.
        let spine = hall.0;
        let nvlink_domain = spec.nvlink_domain.unwrap_or(id.0);
        self.fleet.nodes.push(Node {
            name: spec.name,
            site,
            hall,
            rack,
            cpu_milli: spec.cpu_milli,
            memory_mib: spec.memory_mib,
            gpu_count: spec.gpu_count,
            gpu_model,
            nvlink_domain,
            leaf_switch,
            spine,
        });
        self.fleet.racks[rack.index()].nodes.push(id);
        id
    }

    /// The leaf of the rack's first node, or a new leaf for an empty rack.
    fn rack_leaf(&mut self, rack: RackId) -> u32 {
        match self.fleet.racks[rack.index()].nodes.first() {
            Some(first) => self.fleet.nodes[first.index()].leaf_switch,
            None => self.new_leaf_switch(),
        }
    }

    pub fn build(self) -> Fleet {
        self.fleet
    }
}

/// Builds a one-site, one-hall fleet from a flat list of nodes (a node-list trace), putting
/// `nodes_per_rack` consecutive nodes in each rack under a leaf of its own.
pub fn flat_fleet(name: &str, nodes: impl IntoIterator<Item = NodeSpec>, nodes_per_rack: usize) -> Fleet {
    let nodes_per_rack = nodes_per_rack.max(1);
    let mut b = FleetBuilder::new(name);
    let site = b.add_site(name, Cooling::Air, None);
    let hall = b.add_hall(site, "hall-1", None);
    let mut rack = None;
    let mut in_rack = 0usize;
    for spec in nodes {
        let r = match rack {
            Some(r) if in_rack < nodes_per_rack => r,
            _ => {
                let r = b.add_rack(hall, format!("rack-{}", b.fleet.racks.len() + 1), None);
                rack = Some(r);
                in_rack = 0;
                r
            }
        };
        b.add_node(r, spec);
        in_rack += 1;
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, gpus: u8, model: &str) -> NodeSpec {
        NodeSpec {
            name: name.into(),
            cpu_milli: 64_000,
            memory_mib: 512 * 1024,
            gpu_count: gpus,
            gpu_model: Some(model.into()),
            nvlink_domain: None,
            leaf_switch: None,
        }
    }

    #[test]
    fn builder_keeps_references_consistent() {
        let mut b = FleetBuilder::new("t");
        let s = b.add_site("s", Cooling::Immersion, Some(1e6));
        let h = b.add_hall(s, "h", None);
        let r1 = b.add_rack(h, "r1", None);
        let r2 = b.add_rack(h, "r2", None);
        let n0 = b.add_node(r1, spec("a", 8, "H200"));
        let n1 = b.add_node(r1, spec("b", 8, "h200"));
        let n2 = b.add_node(r2, spec("c", 0, "H200"));
        let f = b.build();
        assert_eq!(f.gpu_models.len(), 1, "model names are interned case-insensitively");
        assert_eq!(f.node(n0).leaf_switch, f.node(n1).leaf_switch);
        assert_ne!(f.node(n0).leaf_switch, f.node(n2).leaf_switch);
        assert_eq!(f.node(n2).gpu_model, None);
        assert_ne!(f.node(n0).nvlink_domain, f.node(n1).nvlink_domain);
        assert_eq!(f.racks[r1.index()].nodes, vec![n0, n1]);
        assert_eq!(f.total_gpus(), 16);
        assert_eq!(f.leaf_switches, 2);
        assert_eq!(f.spines, 1);
        assert_eq!(f.gpu_board_power_watts(), 16.0 * 700.0);
    }

    #[test]
    fn flat_fleet_racks_nodes_in_order() {
        let f = flat_fleet("list", (0..10).map(|i| spec(&format!("n{i}"), 2, "T4")), 4);
        assert_eq!(f.racks.len(), 3);
        assert_eq!(f.racks[2].nodes.len(), 2);
        assert_eq!(f.leaf_switches, 3);
    }
}
