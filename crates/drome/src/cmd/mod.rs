//! One module per subcommand, plus the loaders they share.

pub mod agent;
pub mod backup;
pub mod bench;
pub mod bench_agents;
pub mod bench_failover;
pub mod bench_federation;
pub mod bench_flood;
pub mod bench_openb;
pub mod bench_sandbox;
pub mod bench_submit;
pub mod client;
pub mod energy;
pub mod federation;
pub mod fleet;
pub mod server;
pub mod sim;
pub mod sim_sites;
pub mod trace;
pub mod up;

use ::trace::{DetectedFormat, TraceFormat};
use anyhow::Context;
use model::Fleet;
use std::path::Path;

/// How results are printed.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Output {
    /// Tables a person reads.
    #[default]
    Table,
    /// One JSON document on stdout, for scripts.
    Json,
}

/// Workload trace formats as the command line names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FormatArg {
    /// Alibaba openb pod list (fractional GPUs, model constraints).
    Openb,
    /// Microsoft Philly jobs (virtual cluster = tenant).
    Philly,
    /// Generic jobs CSV: submit_time|submission_time|timestamp, duration, num_gpu|num_gpus|gpus.
    Jobs,
    /// Alibaba DLRM inference instances.
    Dlrm,
}

impl From<FormatArg> for TraceFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Openb => TraceFormat::Openb,
            FormatArg::Philly => TraceFormat::Philly,
            FormatArg::Jobs => TraceFormat::Jobs,
            FormatArg::Dlrm => TraceFormat::Dlrm,
        }
    }
}

/// Loads a fleet from a fleet TOML file or a node-list CSV (openb, PAI, spot-GPU).
pub fn load_fleet(path: &Path) -> anyhow::Result<Fleet> {
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read fleet file {}", path.display()))?;
        return model::fleet_toml::parse_fleet(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()));
    }
    match ::trace::sniff_format(path)? {
        DetectedFormat::NodeList(_) => Ok(::trace::load_node_list(path)?),
        DetectedFormat::Workloads(f) => anyhow::bail!(
            "{} looks like a workload trace ({}), not a fleet: pass it with --trace, and a fleet TOML or node list with --fleet",
            path.display(),
            f.as_str()
        ),
    }
}

/// Loads a workload trace, detecting its format unless `format` is given.
pub fn load_trace(path: &Path, format: Option<FormatArg>) -> anyhow::Result<::trace::Trace> {
    Ok(::trace::load_workloads(path, format.map(Into::into), &::trace::TraceOptions::default())?)
}

/// A progress bar on stderr; hidden when stderr is not a terminal or `quiet` is set.
pub fn progress_bar(len: u64, message: &str, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(Some(len), indicatif::ProgressDrawTarget::stderr());
    let style =
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:40}] {percent:>3}% {elapsed_precise} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}
