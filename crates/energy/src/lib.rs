//! drome's data-centre twin: what a fleet draws from the grid, what its cooling costs, and what its
//! waste heat is worth.
//!
//! - [`gpu_power`]: a GPU's draw from idle to its board limit, and its throughput under a power
//!   cap;
//! - [`it_power`]: nodes (GPUs, CPUs, memory, NICs, power supplies, fans) and sites, precomputed per
//!   fleet;
//! - [`facility`]: distribution losses, fans, pumps, dry coolers and chillers per cooling type, as a
//!   function of IT load and outdoor temperature: PUE is an output;
//! - [`heat`]: recoverable heat and its temperature, the heat pump, the heat network's demand;
//! - [`climate`] and [`grid`]: hourly temperature, price and carbon years (shipped for Valence and
//!   France, or read from a user's CSV text);
//! - [`account`]: the hour-by-hour accounting of a utilisation time series, and the cheap
//!   site-power queries a power-capped scheduler needs;
//! - [`site_hour`]: one site's grid price, carbon, outdoor temperature and heat demand at an hour,
//!   as a federation's dispatch compares sites.
//!
//! The crate is pure and deterministic: no I/O (the shipped data files are compiled in), no clock,
//! no global state.

pub mod account;
pub mod climate;
pub mod facility;
pub mod gpu_power;
pub mod grid;
pub mod heat;
mod hourly_csv;
pub mod it_power;
mod rng;
pub mod site_hour;

pub use account::{
    EnergyModel, EnergyReport, GuardFigures, GuardNode, HeatOptions, HourPoint, SiteEnergy, SiteHour, SitePower,
    Totals, account, account_by_site, parse_allocation_csv, site_power_watts, worst_case_site_power_watts,
};
pub use climate::{HOURS_PER_YEAR, MonthlyNormals, TemperatureYear, VALENCE_NORMALS};
pub use facility::{CoolingDesign, FacilityPower};
pub use gpu_power::{GpuPowerProfile, throughput_at_cap};
pub use grid::GridYear;
pub use heat::{HeatNetwork, RecoverableHeat, heat_pump_cop};
pub use it_power::FleetPower;
pub use site_hour::{SiteHourFacts, site_hour_facts, site_temperature_year};

/// Why energy inputs were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnergyError {
    /// A CSV file's row or header is malformed; `line` and `column` are 1-based.
    #[error("line {line}, column {column}: {message}")]
    Csv { line: usize, column: usize, message: String },
    /// Values that parse but make no sense.
    #[error("{0}")]
    Invalid(String),
}
