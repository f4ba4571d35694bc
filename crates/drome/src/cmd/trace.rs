//! `drome trace stats`: what a trace holds, at a glance.

use super::{FormatArg, Output, load_trace, print_json};
use report::{Table, fmt_duration_s, fmt_thousands};
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum TraceCommand {
    /// Summarise a workload trace: jobs, tenants, span, GPU demand, job shapes, durations.
    ///
    /// The format (openb, philly, jobs, dlrm) is detected from the header unless --format says.
    Stats {
        file: PathBuf,
        #[arg(long, value_enum)]
        format: Option<FormatArg>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

pub fn run(cmd: TraceCommand) -> anyhow::Result<()> {
    match cmd {
        TraceCommand::Stats { file, format, output } => stats(&file, format, output),
    }
}

fn stats(file: &std::path::Path, format: Option<FormatArg>, output: Output) -> anyhow::Result<()> {
    let trace = load_trace(file, format)?;
    let s = trace.stats();
    if output == Output::Json {
        return print_json(&s);
    }
    let tty = report::table::stdout_is_tty();
    let opt = |v: Option<f64>| v.map_or("-".to_string(), fmt_duration_s);
    let mut t = Table::new(["", ""]).utf8(tty).align_right(1);
    t.row(["file".to_string(), file.display().to_string()]);
    t.row(["format".to_string(), s.format.as_str().to_string()]);
    t.row(["jobs".to_string(), fmt_thousands(s.jobs)]);
    t.row(["tenants".to_string(), fmt_thousands(s.tenants)]);
    t.row(["span".to_string(), fmt_duration_s(s.span_s)]);
    t.row(["CPU-only jobs".to_string(), fmt_thousands(s.cpu_only_jobs)]);
    t.row(["fractional-GPU jobs".to_string(), fmt_thousands(s.fractional_jobs)]);
    t.row(["multi-node gangs".to_string(), fmt_thousands(s.multi_node_jobs)]);
    t.row(["largest job (GPUs)".to_string(), s.max_gpus_per_job.to_string()]);
    t.row(["jobs with a duration".to_string(), fmt_thousands(s.jobs_with_duration)]);
    t.row(["GPU-hours asked".to_string(), fmt_thousands((s.gpu_seconds / 3600.0).round() as u64)]);
    t.row(["duration mean".to_string(), opt(s.duration_mean_s)]);
    t.row(["duration p50".to_string(), opt(s.duration_p50_s)]);
    t.row(["duration p99".to_string(), opt(s.duration_p99_s)]);
    println!("{}", t.render());
    if !s.gpus_per_job.is_empty() {
        let mut h = Table::new(["GPUs per job", "jobs", "share"]).utf8(tty);
        let whole: u64 = s.gpus_per_job.iter().map(|b| b.jobs).sum();
        for b in &s.gpus_per_job {
            h.row([
                b.gpus.to_string(),
                fmt_thousands(b.jobs),
                format!("{:.1}%", 100.0 * b.jobs as f64 / whole.max(1) as f64),
            ]);
        }
        println!("{}", h.render());
    }
    Ok(())
}
