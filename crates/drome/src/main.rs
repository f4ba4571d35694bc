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
    Sim(Box<cmd::sim::SimArgs>),
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
    /// Start a server, a fleet of virtual nodes and a demo tenant on this machine: the first step.
    Up(cmd::up::UpArgs),
    /// Run the control plane: REST API, scheduler and nodes over SQLite or PostgreSQL.
    Server(cmd::server::ServerArgs),
    /// Serve one API over many sites, each its own `drome server`: jobs go to a site by
    /// constraints, fit, power, price, carbon, heat demand and data, and move off a lost site.
    Federation(Box<cmd::federation::FederationArgs>),
    /// Copy the embedded store while the server runs (PostgreSQL: pg_dump).
    Backup(cmd::backup::BackupArgs),
    /// Put a copy made by `drome backup` in place of the embedded store (no server running).
    Restore(cmd::backup::RestoreArgs),
    /// Run a node agent: join a server and run its work on this machine's GPUs (or declared ones).
    Agent(cmd::agent::AgentArgs),
    /// Submit a job (or a GPU instance): drome submit --gpus 8 [--nodes 2] -- CMD ARGS.
    Submit(cmd::client::SubmitArgs),
    /// List your jobs.
    Jobs(cmd::client::JobsArgs),
    /// Show one job and its state history.
    Job(cmd::client::JobArgs),
    /// Print a job member's output (stdout, or --stderr); --follow reads on until the job ends.
    Logs(cmd::client::LogsArgs),
    /// Cancel a job, or release a GPU instance.
    Cancel(cmd::client::JobArgs),
    /// List the fleet's nodes (or --sites) and their free GPUs.
    Nodes(cmd::client::NodesArgs),
    /// List tenants, create or remove one, rotate or revoke its token (admin).
    Tenants(cmd::client::TenantsArgs),
    /// What the admin changed, newest first (admin).
    Audit(cmd::client::AuditArgs),
    /// What was used: GPU-, CPU-, memory-hours and energy by tenant, job, day, month or GPU model.
    Usage(cmd::client::UsageArgs),
    /// Finished jobs, like sacct: how each ended, exit code, times, GPUs, energy and cost.
    History(cmd::client::HistoryArgs),
    /// A tenant's invoice for a month: its use by the price list, line by line (CSV or JSON too).
    Invoice(cmd::client::InvoiceArgs),
    /// Show the price list usage is charged by, or set it (admin).
    Prices(cmd::client::PricesArgs),
    /// Show a tenant's monthly budget and what it spent and holds, or set it (admin).
    Budget(cmd::client::BudgetArgs),
    /// Show your quota and usage, or set a tenant's (admin).
    Quota(cmd::client::QuotaArgs),
    /// List join tokens for node agents, make one or revoke one (admin).
    JoinTokens(cmd::client::JoinTokensArgs),
    /// Show the control plane's replicas: which server leads, in which epoch, since when.
    Status(cmd::client::StatusArgs),
}

fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => cmd::sim::run(*args),
        Command::Fleet(c) => cmd::fleet::run(c),
        Command::Trace(c) => cmd::trace::run(c),
        Command::Bench(c) => cmd::bench::run(c),
        Command::Energy(args) => cmd::energy::run(args),
        Command::Up(args) => cmd::up::run(args),
        Command::Server(args) => cmd::server::run(args),
        Command::Federation(args) => cmd::federation::run(*args),
        Command::Backup(args) => cmd::backup::backup(args),
        Command::Restore(args) => cmd::backup::restore(args),
        Command::Agent(args) => cmd::agent::run(args),
        Command::Submit(args) => cmd::client::submit(args),
        Command::Jobs(args) => cmd::client::jobs(args),
        Command::Job(args) => cmd::client::job(args),
        Command::Logs(args) => cmd::client::logs(args),
        Command::Cancel(args) => cmd::client::cancel(args),
        Command::Nodes(args) => cmd::client::nodes(args),
        Command::Tenants(args) => cmd::client::tenants(args),
        Command::Audit(args) => cmd::client::audit(args),
        Command::JoinTokens(args) => cmd::client::join_tokens(args),
        Command::Quota(args) => cmd::client::quota(args),
        Command::Usage(args) => cmd::client::usage(args),
        Command::Prices(args) => cmd::client::prices(args),
        Command::Invoice(args) => cmd::client::invoice(args),
        Command::History(args) => cmd::client::history(args),
        Command::Budget(args) => cmd::client::budget(args),
        Command::Status(args) => cmd::client::status(args),
    }
}

fn main() -> ExitCode {
    // The node agent's sandbox launcher: no parsing, no logging, straight to the run (it is on
    // every sandboxed run's start path).
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|a| a == "sandbox-exec") {
        let rest: Vec<std::ffi::OsString> = args.collect();
        let e = agent::sandbox::enter_and_exec(&rest);
        eprintln!("drome sandbox-exec: {e}");
        return ExitCode::from(127);
    }
    // `drome jobs | head`: a reader that stops early is no error. println! panics on a closed
    // stdout; that one panic ends the program quietly, as a shell tool would.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
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
