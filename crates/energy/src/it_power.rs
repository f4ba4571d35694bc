//! IT power of nodes and sites, precomputed once per fleet so that a scheduler can ask "what would
//! this site draw at this allocation?" in a handful of flops.
//!
//! A node's draw is its GPUs (see [`crate::gpu_power`]) plus the host: CPUs, memory, NICs, the
//! NVSwitch baseboard, storage and BMC, turned into wall power by the power supplies and, where air
//! moves through the chassis, the server fans.
//!
//! Host figures (per node):
//! - CPUs: 3.1 W per hardware thread at full load, 0.9 W idle. An Intel Xeon Platinum 8480+ is
//!   350 W TDP for 112 threads (Intel ark); idle package power is ~25-30% of TDP.
//! - Memory: 0.12 W per GiB (a 64 GB DDR5 RDIMM draws ~6-10 W under load; JEDEC/vendor sheets).
//! - NICs: 25 W per 400 Gb/s ConnectX-7 (NVIDIA ConnectX-7 product brief), one per GPU on SXM
//!   boards (rail-optimised HGX), one per node otherwise.
//! - NVSwitch and HGX baseboard: 40 W per SXM GPU (4 NVSwitch chips on an 8-GPU HGX board, plus
//!   retimers and VRM losses).
//! - Storage, BMC, board: 150 W per node (8 NVMe drives at ~10-25 W in a DGX, less elsewhere).
//! - Power supplies: 94% efficient (80 PLUS Titanium at typical load).
//! - Server fans: 9% of DC power in air-cooled servers (commonly quoted at 5-15% of server draw;
//!   high-density GPU servers at the top of that range), 3% with direct-to-chip liquid cooling
//!   (fans for memory, NICs and drives only), none in immersion, where fans are removed.
//!
//! Check against measurements: an 8x H200 HGX node in air comes out at ~8.4 kW with every GPU at
//! 700 W and ~6.8 kW under typical training (80% of the limit), against the DGX H200's 10.2 kW
//! nameplate: Latif et al. (arXiv:2412.08602) measured ~8.4 kW peak on an 8x H100 node of the
//! same 10.2 kW rating.
//!
//! Within a site, allocation is spread uniformly: a site at allocation `a` has a fraction `a` of
//! each node's GPUs busy, so site power is linear in `a` and [`FleetPower`] keeps two numbers per
//! site. CPU-only nodes follow the site's GPU allocation (they feed the GPU jobs).

use crate::gpu_power::GpuPowerProfile;
use model::{Cooling, Fleet, GpuFamily, NodeId, SiteId};
use serde::Serialize;

/// CPU draw per hardware thread at full load, watts.
pub const CPU_WATTS_PER_THREAD_MAX: f64 = 3.1;
/// CPU draw per hardware thread when idle, watts.
pub const CPU_WATTS_PER_THREAD_IDLE: f64 = 0.9;
/// Memory draw per GiB, watts.
pub const MEMORY_WATTS_PER_GIB: f64 = 0.12;
/// One 400 Gb/s NIC, watts.
pub const NIC_WATTS: f64 = 25.0;
/// NVSwitch and baseboard share per SXM GPU, watts.
pub const NVSWITCH_WATTS_PER_GPU: f64 = 40.0;
/// Storage, BMC and board per node, watts.
pub const NODE_BASE_WATTS: f64 = 150.0;
/// Power-supply efficiency, AC in to DC out.
pub const PSU_EFFICIENCY: f64 = 0.94;
/// Share of the host's span (idle to full) in use while its GPUs are busy: data loading,
/// preprocessing and collectives keep CPUs partly loaded.
pub const HOST_BUSY_FRACTION: f64 = 0.6;

/// Server fans as a fraction of the node's DC power, by cooling type.
pub fn server_fan_fraction(cooling: Cooling) -> f64 {
    match cooling {
        Cooling::Air => 0.09,
        Cooling::Liquid => 0.03,
        Cooling::Immersion => 0.0,
    }
}

/// DC power -> wall power for a cooling type: power-supply losses and server fans.
pub fn wall_factor(cooling: Cooling) -> f64 {
    (1.0 + server_fan_fraction(cooling)) / PSU_EFFICIENCY
}

fn is_sxm(family: GpuFamily) -> bool {
    matches!(family, GpuFamily::H200 | GpuFamily::H100 | GpuFamily::B200 | GpuFamily::A100)
}

/// DC power figures of one node, in watts, before power supplies and fans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct NodePower {
    /// Nothing allocated.
    pub idle_watts: f64,
    /// Added per allocated GPU under typical work (the GPU's rise plus its share of the host's).
    pub busy_watts_per_gpu: f64,
    /// Every GPU at its board limit and the host at full load.
    pub max_watts: f64,
    /// Added by the whole host going from idle to busy, for CPU-only nodes (which have no GPUs
    /// to carry it).
    pub host_busy_watts: f64,
    /// What the CPUs add going from idle to full load (a CPU package power limit set at the
    /// host's typical draw takes `1 - HOST_BUSY_FRACTION` of it off the worst case).
    pub host_span_watts: f64,
    /// The CPU packages' draw under typical work (idle plus [`HOST_BUSY_FRACTION`] of the span):
    /// the package power limit a host cap sets (RAPL).
    pub cpu_typical_watts: f64,
    pub gpus: u8,
}

impl NodePower {
    /// Figures for node `id` of `fleet`.
    pub fn of(fleet: &Fleet, id: NodeId) -> NodePower {
        let node = fleet.node(id);
        let threads = node.cpu_milli as f64 / 1000.0;
        let gib = node.memory_mib as f64 / 1024.0;
        let model = fleet.node_gpu_model(id).filter(|_| node.gpu_count > 0);
        let gpus = if model.is_some() { node.gpu_count } else { 0 };
        let n = f64::from(gpus);
        let (sxm, board, profile) = match model {
            Some(m) => (is_sxm(m.family), m.board_power_watts, GpuPowerProfile::of(m.family)),
            None => (false, 0.0, GpuPowerProfile::of(GpuFamily::Other)),
        };
        let nics = if sxm { n } else { 1.0 };
        let fixed = MEMORY_WATTS_PER_GIB * gib
            + NIC_WATTS * nics
            + if sxm { NVSWITCH_WATTS_PER_GPU * n } else { 0.0 }
            + NODE_BASE_WATTS;
        let cpu_idle = CPU_WATTS_PER_THREAD_IDLE * threads;
        let cpu_span = (CPU_WATTS_PER_THREAD_MAX - CPU_WATTS_PER_THREAD_IDLE) * threads;
        let gpu_idle = profile.power_watts(board, 0.0);
        let idle_watts = fixed + cpu_idle + n * gpu_idle;
        let host_busy_watts = HOST_BUSY_FRACTION * cpu_span;
        let busy_watts_per_gpu =
            if gpus > 0 { profile.busy_watts(board) - gpu_idle + host_busy_watts / n } else { 0.0 };
        let max_watts = fixed + cpu_idle + cpu_span + n * board;
        let cpu_typical_watts = cpu_idle + host_busy_watts;
        NodePower {
            idle_watts,
            busy_watts_per_gpu,
            max_watts,
            host_busy_watts,
            host_span_watts: cpu_span,
            cpu_typical_watts,
            gpus,
        }
    }

    /// DC power with `allocated_gpus` of the node's GPUs busy (fractional shares allowed).
    pub fn dc_watts(&self, allocated_gpus: f64) -> f64 {
        if self.gpus == 0 {
            return self.idle_watts;
        }
        self.idle_watts + self.busy_watts_per_gpu * allocated_gpus.clamp(0.0, f64::from(self.gpus))
    }
}

/// IT power figures of one site, DC side, in watts (see [`wall_factor`] for the wall side).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SiteItPower {
    /// Nothing allocated.
    pub idle_watts: f64,
    /// Everything allocated, typical work.
    pub busy_watts: f64,
    /// Every GPU at its board limit, every host at full load.
    pub max_watts: f64,
    /// Sum of the site's GPU board limits.
    pub gpu_board_watts: f64,
    pub gpus: u64,
}

impl SiteItPower {
    /// DC power at allocation `a` (0..1 of the site's GPUs), typical work.
    pub fn dc_watts(&self, allocation: f64) -> f64 {
        self.idle_watts + (self.busy_watts - self.idle_watts) * allocation.clamp(0.0, 1.0)
    }
}

/// Per-node and per-site IT power of a fleet, computed once.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FleetPower {
    pub nodes: Vec<NodePower>,
    pub sites: Vec<SiteItPower>,
}

impl FleetPower {
    pub fn new(fleet: &Fleet) -> FleetPower {
        let mut sites = vec![SiteItPower::default(); fleet.sites.len()];
        let mut nodes = Vec::with_capacity(fleet.nodes.len());
        for id in fleet.node_ids() {
            let p = NodePower::of(fleet, id);
            let node = fleet.node(id);
            let s = &mut sites[node.site.index()];
            s.idle_watts += p.idle_watts;
            s.busy_watts += if p.gpus > 0 {
                p.idle_watts + p.busy_watts_per_gpu * f64::from(p.gpus)
            } else {
                p.idle_watts + p.host_busy_watts
            };
            s.max_watts += p.max_watts;
            s.gpus += u64::from(p.gpus);
            if let Some(m) = fleet.node_gpu_model(id).filter(|_| p.gpus > 0) {
                s.gpu_board_watts += m.board_power_watts * f64::from(p.gpus);
            }
            nodes.push(p);
        }
        FleetPower { nodes, sites }
    }

    /// Wall power of node `id` with `allocated_gpus` busy, watts.
    pub fn node_watts(&self, id: NodeId, cooling: Cooling, allocated_gpus: f64) -> f64 {
        self.nodes[id.index()].dc_watts(allocated_gpus) * wall_factor(cooling)
    }

    /// Wall power of node `id` at its worst case (every GPU at its board limit), watts.
    pub fn node_max_watts(&self, id: NodeId, cooling: Cooling) -> f64 {
        self.nodes[id.index()].max_watts * wall_factor(cooling)
    }

    /// IT wall power of `site` at `allocation` (0..1), typical work, watts.
    pub fn site_it_watts(&self, site: SiteId, cooling: Cooling, allocation: f64) -> f64 {
        self.sites[site.index()].dc_watts(allocation) * wall_factor(cooling)
    }

    /// IT wall power of `site` with every GPU at its board limit, watts.
    pub fn site_it_max_watts(&self, site: SiteId, cooling: Cooling) -> f64 {
        self.sites[site.index()].max_watts * wall_factor(cooling)
    }
}
