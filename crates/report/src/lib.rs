//! drome's rendering edge: turns numbers into things a person reads.
//!
//! - [`plot`]: line charts of one or more stacked panels sharing an x axis, to PNG or SVG;
//! - [`table`]: terminal tables with one look across drome's commands;
//! - [`csv_out`]: CSV files with a header, for spreadsheets and notebooks;
//! - [`format`]: durations, percentages, thousands separators and SI prefixes.
//!
//! The crate knows nothing of schedulers or simulations: callers hand it plain numbers and
//! strings, so every drome command renders the same way.

pub mod csv_out;
mod error;
pub mod format;
pub mod plot;
pub mod table;

pub use error::ReportError;
pub use format::{fmt_duration_s, fmt_num, fmt_pct, fmt_si, fmt_thousands};
pub use plot::{AxisFormat, Chart, Legend, Panel, Scale, Series};
pub use table::Table;
