//! drome's domain model: the fleet (sites -> halls -> racks -> nodes -> GPUs), the workloads that ask
//! for it, and the units both are measured in.
//!
//! This crate is pure data: no I/O, no clock, no randomness. Fleets are parsed from TOML text
//! handed in by the caller (see [`fleet_toml`]).

pub mod fleet;
pub mod fleet_toml;
pub mod gpu;
pub mod units;
pub mod workload;

pub use fleet::{
    Cooling, Fleet, FleetBuilder, Hall, HallId, HeatNetworkSpec, Node, NodeId, NodeSpec, Rack, RackId, Site,
    SiteClimate, SiteEnv, SiteId,
};
pub use gpu::{GpuFamily, GpuModel, GpuModelId};
pub use units::{GPU_MILLI_PER_GPU, SimDuration, SimTime};
pub use workload::{GpuRequest, ModelFilter, TenantId, Workload, WorkloadId};
