//! The `drome` binary: glue between the command line and drome's libraries.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod cmd;

/// drome: the control plane and digital twin of a GPU cloud.
#[derive(Parser)]
#[command(name = "drome", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Replay a trace through a scheduling policy in the digital twin.
    Sim(cmd::sim::SimArgs),
    /// Inspect fleet files and node lists.
    #[command(subcommand)]
    Fleet(cmd::fleet::FleetCommand),
    /// Inspect traces.
    #[command(subcommand)]
    Trace(cmd::trace::TraceCommand),
    /// Benchmarks: replay speed and published experiments.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
    /// A fleet's year in power, cooling, waste heat, money and carbon, per cooling type.
    Energy(cmd::energy::EnergyArgs),
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => cmd::sim::run(args),
        Command::Fleet(c) => cmd::fleet::run(c),
        Command::Trace(c) => cmd::trace::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Energy(args) => cmd::energy::run(args),
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}
