//! drome's scheduler core, shared unchanged by the live server and the digital twin.
//!
//! - [`ClusterState`] holds what is free on every node and GPU, with indexes that find a node for a
//!   request in logarithmic time, and refuses any allocation that would over-commit a GPU (fractions
//!   included), split a gang or break a constraint.
//! - A [`Placer`] chooses where one request goes (first fit, best fit, ...).
//! - A [`Policy`] decides, given the pending [`Queue`] and the cluster, what starts now.
//!
//! This crate knows nothing about HTTP, SQL, tokio or the clock: time is passed in as
//! [`model::SimTime`], randomness as a seed.

pub mod backfill;
pub mod cluster;
pub mod defer;
pub mod demand;
pub mod frag;
mod leaves;
pub mod placer;
pub mod policy;
pub mod power;
pub mod prio;
pub mod queue;
pub mod quota;
pub mod rankers;
pub mod topo;
mod tree;

pub use cluster::{ClusterState, GpuPick, GpuShare, MemberPlacement, Placement, SchedError};
pub use demand::{Demand, ModelSet};
pub use placer::{BestFit, FirstFit, Placer, ScanFirstFit};
pub use policy::{Decision, Fifo, Policy, PolicyError, policy_by_name, policy_names, policy_preempting_after};
pub use prio::{PreemptConfig, PriorityPolicy, Ranker, RunningJob};
pub use queue::{Queue, QueuedJob};
pub use topo::{TopoPlacer, switches_spanned};
