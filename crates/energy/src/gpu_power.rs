//! IT power of one GPU: idle draw, board power limit, draw as a function of utilisation, and
//! throughput under a power cap (DVFS).
//!
//! Figures, per family (board power limits are the fleet's [`model::GpuModel::board_power_watts`],
//! whose defaults come from the vendor data sheets: H200/H100 SXM 700 W, B200 1,000 W, A100 SXM
//! 400 W, V100 SXM2 300 W, T4 70 W, P100 PCIe 250 W, A10 150 W):
//!
//! - **Idle**: what `nvidia-smi` reports for a GPU with no work and its clocks parked, roughly
//!   10% of the board limit on SXM parts (H100/H200 SXM ~70-80 W, A100 SXM ~50-60 W, B200
//!   ~130-150 W) and 10-20% on PCIe cards (T4 ~10 W, A10 ~20 W, P100/V100 ~30-40 W). Sources:
//!   NVIDIA data-centre GPU data sheets and idle readings reported in Patel et al., "Characterizing
//!   Power Management Opportunities for LLMs in the Cloud" (ASPLOS 2024).
//! - **Busy**: the mean draw of an allocated GPU running typical work, as a fraction of the board
//!   limit. Training rarely sits at the limit: Latif et al., "Empirical Measurements of AI Training
//!   Power Demand on a GPU-Accelerated Node" (2024, arXiv:2412.08602) measured an 8x H100 node
//!   peaking at ~8.4 kW against its 10.2 kW rating, and fleet studies (Patel et al. 2024; the MIT
//!   Lincoln Laboratory study below) report LLM training averaging 70-85% of TDP, so whole 8-GPU
//!   nodes draw ~60-75% of nameplate. drome uses 0.80 for the SXM training parts, 0.75 for older
//!   training parts, 0.70 for the inference cards (T4, A10).
//! - **Power cap**: Zhao et al., "Sustainable Supercomputing for AI: GPU Power Capping at HPC
//!   Scale" (ACM SoCC 2023, MIT Lincoln Laboratory) capped V100/A100 training at 60-80% of TDP for
//!   ~12-15% less energy and ~3% more time; Patel et al. (ASPLOS 2024) found LLM training loses
//!   only a few percent of throughput at 70-80% caps on A100/H100. The model in
//!   [`throughput_at_cap`] reproduces that: dynamic power goes as frequency cubed (`P ~ f V^2`,
//!   voltage tracking frequency) and only the compute-bound half of the work slows with frequency.

use model::GpuFamily;
use serde::Serialize;

/// Power figures of one GPU family.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct GpuPowerProfile {
    /// Idle draw as a fraction of the board power limit.
    pub idle_fraction: f64,
    /// Mean draw of an allocated GPU under typical work, as a fraction of the board power limit.
    pub busy_fraction: f64,
    /// Share of the work whose speed follows the SM clock (the rest waits on memory or network).
    pub compute_bound_share: f64,
}

/// Exponent of dynamic power in clock frequency under DVFS (`P ~ f V^2` with `V ~ f`).
pub const DVFS_POWER_EXPONENT: f64 = 3.0;

/// Lowest cap drivers accept, as a fraction of the board limit (H100 SXM: 200 W of 700 W; the
/// `nvidia-smi -pl` minimum of most parts is 25-40% of the limit).
pub const MIN_CAP_FRACTION: f64 = 0.3;

impl GpuPowerProfile {
    /// The figures drome uses for `family` (see the module documentation for sources).
    pub fn of(family: GpuFamily) -> GpuPowerProfile {
        // (idle W at the default board limit, busy fraction, compute-bound share)
        let (idle_watts, busy_fraction, compute_bound_share) = match family {
            GpuFamily::H200 => (75.0, 0.80, 0.5),
            GpuFamily::H100 => (70.0, 0.80, 0.5),
            GpuFamily::B200 => (140.0, 0.80, 0.5),
            GpuFamily::A100 => (55.0, 0.80, 0.5),
            GpuFamily::V100 => (40.0, 0.75, 0.6),
            GpuFamily::P100 => (30.0, 0.75, 0.6),
            GpuFamily::T4 => (10.0, 0.70, 0.6),
            GpuFamily::A10 => (20.0, 0.70, 0.6),
            GpuFamily::Other => (36.0, 0.75, 0.5),
        };
        GpuPowerProfile {
            idle_fraction: idle_watts / family.default_board_power_watts(),
            busy_fraction,
            compute_bound_share,
        }
    }

    /// Draw at `utilization` (0 = idle, 1 = at the board limit), in watts of a `board_watts` part.
    /// Board power of modern GPUs is close to linear in SM activity between idle and the limit.
    pub fn power_watts(&self, board_watts: f64, utilization: f64) -> f64 {
        let idle = self.idle_fraction * board_watts;
        idle + (board_watts - idle) * utilization.clamp(0.0, 1.0)
    }

    /// Mean draw of an allocated GPU under typical work, in watts.
    pub fn busy_watts(&self, board_watts: f64) -> f64 {
        self.busy_fraction * board_watts
    }
}

/// Throughput (1 = uncapped) of work that would draw `demand_fraction` of the board limit when
/// capped at `cap_fraction` of it. A cap above the demand costs nothing; below it, the clock falls
/// until dynamic power fits, and the compute-bound share of the work slows with the clock.
///
/// With the default profile (idle 10%, half the work compute-bound), work at the board limit keeps
/// ~96% of its throughput at an 80% cap and ~94% at 70%: "a few percent" as measured.
pub fn throughput_at_cap(profile: &GpuPowerProfile, cap_fraction: f64, demand_fraction: f64) -> f64 {
    let demand = demand_fraction.clamp(profile.idle_fraction, 1.0);
    let cap = cap_fraction.clamp(MIN_CAP_FRACTION, 1.0);
    if cap >= demand {
        return 1.0;
    }
    let dynamic_demand = demand - profile.idle_fraction;
    let dynamic_cap = (cap - profile.idle_fraction).max(0.0);
    if dynamic_demand <= 0.0 {
        return 1.0;
    }
    let clock = (dynamic_cap / dynamic_demand).powf(1.0 / DVFS_POWER_EXPONENT);
    1.0 - profile.compute_bound_share * (1.0 - clock)
}

/// [`throughput_at_cap`] for work at the board limit, the case capping studies report.
pub fn family_throughput_at_cap(family: GpuFamily, cap_fraction: f64) -> f64 {
    throughput_at_cap(&GpuPowerProfile::of(family), cap_fraction, 1.0)
}
