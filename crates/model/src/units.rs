//! Units. Time is integer milliseconds so that simulations are exact and reproducible; GPU shares
//! are integer thousandths of one GPU (`gpu_milli`), as Kubernetes GPU-sharing schedulers count them.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::{Add, AddAssign, Sub};

/// One whole GPU in `gpu_milli`.
pub const GPU_MILLI_PER_GPU: u32 = 1000;

/// A point in virtual (or wall) time, in milliseconds since the start of the trace or epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SimTime(pub u64);

/// A span of time in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SimDuration(pub u64);

impl SimTime {
    pub const ZERO: SimTime = SimTime(0);

    pub fn from_secs(secs: u64) -> Self {
        SimTime(secs.saturating_mul(1000))
    }

    /// Rounds to the nearest millisecond; negative and non-finite values clamp to zero.
    pub fn from_secs_f64(secs: f64) -> Self {
        SimTime(secs_f64_to_millis(secs))
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: SimTime) -> SimDuration {
        SimDuration(self.0.saturating_sub(earlier.0))
    }
}

impl SimDuration {
    pub const ZERO: SimDuration = SimDuration(0);

    pub fn from_secs(secs: u64) -> Self {
        SimDuration(secs.saturating_mul(1000))
    }

    /// Rounds to the nearest millisecond; negative and non-finite values clamp to zero.
    pub fn from_secs_f64(secs: f64) -> Self {
        SimDuration(secs_f64_to_millis(secs))
    }

    pub fn as_millis(self) -> u64 {
        self.0
    }

    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / 1000.0
    }
}

fn secs_f64_to_millis(secs: f64) -> u64 {
    if secs.is_finite() && secs > 0.0 {
        let ms = (secs * 1000.0).round();
        if ms >= u64::MAX as f64 { u64::MAX } else { ms as u64 }
    } else {
        0
    }
}

impl Add<SimDuration> for SimTime {
    type Output = SimTime;
    fn add(self, rhs: SimDuration) -> SimTime {
        SimTime(self.0.saturating_add(rhs.0))
    }
}

impl AddAssign<SimDuration> for SimTime {
    fn add_assign(&mut self, rhs: SimDuration) {
        self.0 = self.0.saturating_add(rhs.0);
    }
}

impl Sub<SimTime> for SimTime {
    type Output = SimDuration;
    fn sub(self, rhs: SimTime) -> SimDuration {
        self.since(rhs)
    }
}

impl Add for SimDuration {
    type Output = SimDuration;
    fn add(self, rhs: SimDuration) -> SimDuration {
        SimDuration(self.0.saturating_add(rhs.0))
    }
}

impl fmt::Display for SimTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}

impl fmt::Display for SimDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs_f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_round_to_millis_and_clamp() {
        assert_eq!(SimTime::from_secs_f64(1.2345).as_millis(), 1235);
        assert_eq!(SimTime::from_secs_f64(-3.0), SimTime::ZERO);
        assert_eq!(SimDuration::from_secs_f64(f64::NAN), SimDuration::ZERO);
        assert_eq!(SimDuration::from_secs_f64(f64::INFINITY), SimDuration::ZERO);
        assert_eq!(SimTime(5) - SimTime(9), SimDuration::ZERO);
        assert_eq!(SimTime(5) + SimDuration(u64::MAX), SimTime(u64::MAX));
    }
}
