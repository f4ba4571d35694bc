//! The generic job-history importer: one row per job with a submit time, a GPU count and, when
//! known, a duration, tenant, GPU model, CPU, memory and priority. Philly and the Tiresias example
//! trace are cases of it.

use crate::csvio::CsvRows;
use crate::detect::{GPU_COLUMNS, SUBMIT_COLUMNS};
use crate::error::TraceError;
use crate::limits::{MAX_CPU_MILLI, MAX_GPUS_PER_JOB, MAX_MEMORY_MIB};
use crate::time::parse_datetime_millis;
use crate::{Tenants, TraceOptions};
use model::{GpuRequest, ModelFilter, SimDuration, SimTime, Workload, WorkloadId};
use std::io::Read;

/// How a file writes its submit times; all rows must agree.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clock {
    Seconds,
    Calendar,
}

/// Reads the rows of a jobs CSV whose header `src` has already taken. Returns the workloads in
/// file order and whether their times must be rebased (calendar times always are).
pub(crate) fn read_jobs<R: Read>(
    src: &mut CsvRows<R>,
    opts: &TraceOptions,
    tenants: &mut Tenants,
) -> Result<(Vec<Workload>, bool), TraceError> {
    let submit = src.require(SUBMIT_COLUMNS)?;
    let gpus = src.require(GPU_COLUMNS)?;
    let duration = src.find(&["duration", "run_time", "runtime"]);
    let name = src.find(&["job_id", "name", "job_name", "jobid"]);
    let tenant = src.find(&["tenant", "user", "cluster", "vc", "organization"]);
    let gpu_model = src.find(&["gpu_model", "gpu_type"]);
    let cpu = src.find(&["cpu_milli"]);
    let memory = src.find(&["memory_mib"]);
    let priority = src.find(&["priority"]);
    let deferrable = src.find(&["deferrable"]);
    let node_gpus = opts.node_gpus.max(1);

    let mut clock: Option<Clock> = None;
    let mut out = Vec::new();
    while let Some(row) = src.next_row()? {
        let text = row.get(submit);
        let (submit_ms, this_clock) = match text.parse::<f64>() {
            Ok(_) => (row.secs_millis(submit)?, Clock::Seconds),
            Err(_) => match parse_datetime_millis(text) {
                Some(ms) => (ms, Clock::Calendar),
                None => return Err(row.err(submit, "seconds or a 'YYYY-MM-DD HH:MM:SS' time")),
            },
        };
        match clock {
            None => clock = Some(this_clock),
            Some(Clock::Seconds) if this_clock == Clock::Calendar => {
                return Err(row.err(submit, "seconds, like the rows above"));
            }
            Some(Clock::Calendar) if this_clock == Clock::Seconds => {
                return Err(row.err(submit, "a 'YYYY-MM-DD HH:MM:SS' time, like the rows above"));
            }
            Some(_) => {}
        }
        let count = row.uint(gpus, MAX_GPUS_PER_JOB)? as u32;
        let duration = row.opt_secs_millis(duration)?.map(SimDuration);
        let tenant = tenants.intern(row.opt(tenant));
        let models = row.opt(gpu_model).map(ModelFilter::parse_list).unwrap_or_default();
        let cpu_milli = row.opt_uint(cpu, MAX_CPU_MILLI)?.unwrap_or(0);
        let memory_mib = row.opt_uint(memory, MAX_MEMORY_MIB)?.unwrap_or(0);
        let priority = match priority {
            Some(c) if !row.get(c).is_empty() => row.int32(c)?,
            _ => 0,
        };
        let deferrable = match row.opt(deferrable).map(str::to_ascii_lowercase).as_deref() {
            None | Some("0" | "false" | "no") => false,
            Some("1" | "true" | "yes") => true,
            Some(_) => return Err(row.err(deferrable.unwrap_or(0), "true/false, yes/no or 1/0")),
        };
        let name = match row.opt(name) {
            Some(n) => n.to_string(),
            None => format!("job-{}", row.index),
        };
        out.push(Workload {
            id: WorkloadId(0),
            name,
            tenant,
            priority,
            submit_time: SimTime(submit_ms),
            cpu_milli,
            memory_mib,
            gpu: GpuRequest::whole_gpus(count, node_gpus),
            models,
            duration,
            deferrable,
        });
    }
    let rebase = opts.rebase_submit_times || clock == Some(Clock::Calendar);
    Ok((out, rebase))
}
