//! drome's digital twin: replays a trace through a [`sched::Policy`] in virtual time.
//!
//! Discrete-event and deterministic: arrivals, starts and completions are processed in time
//! order, ties broken by a fixed rule (completions, then arrivals in trace order), so the same
//! inputs and seed give the same result bit for bit. No clock, no I/O: the caller reads traces and
//! writes reports; progress is reported through a callback.

mod engine;
mod loadfleet;
mod metrics;
pub mod multisite;
pub mod openb;
pub mod power;
pub mod reshape;

pub use engine::{Progress, SimConfig, SimError, simulate};
pub use loadfleet::{LoadFleetShape, fleet_for_load, offered_load};
pub use metrics::{
    EventKind, JobRecord, SLOWDOWN_FLOOR_S, SimEvent, SimReport, TenantRow, TimePoint, percentile, tenant_rows,
};
pub use multisite::{FederationConfig, FederationReport, SiteOutcome, SiteRun, simulate_federation};
pub use power::{PowerOptions, PowerSummary, PriceCap, TenantEnergy};
