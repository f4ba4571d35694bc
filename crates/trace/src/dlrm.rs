//! The Alibaba cluster-trace-gpu-v2025 importer: long-running DLRM inference instances, the
//! packing problem of CPU-heavy and GPU nodes serving one recommendation model.

use crate::csvio::CsvRows;
use crate::error::TraceError;
use crate::limits::{MAX_CPUS, MAX_GPUS_PER_JOB, MAX_MEMORY_GIB};
use crate::{Tenants, TraceOptions};
use model::{GpuRequest, ModelFilter, SimDuration, SimTime, Workload, WorkloadId};
use std::io::Read;

/// Reads the rows of a DLRM instance list whose header `src` has already taken. The service
/// (`app_name`) is the tenant; an empty `creation_time` means the instance was there when the trace
/// began (time 0); the duration runs to `deletion_time` when there is one, else it is `None` (the
/// instance outlives the trace).
pub(crate) fn read_instances<R: Read>(
    src: &mut CsvRows<R>,
    opts: &TraceOptions,
    tenants: &mut Tenants,
) -> Result<Vec<Workload>, TraceError> {
    let name = src.find(&["instance_sn", "name"]);
    let app = src.require(&["app_name"])?;
    let cpu = src.require(&["cpu_request"])?;
    let gpu = src.require(&["gpu_request"])?;
    let memory = src.require(&["memory_request"])?;
    let creation = src.find(&["creation_time"]);
    let deletion = src.find(&["deletion_time"]);
    let node_gpus = opts.node_gpus.max(1);

    let mut out = Vec::new();
    while let Some(row) = src.next_row()? {
        let cpu_milli = (row.number(cpu, MAX_CPUS)? * 1000.0).round() as u64;
        let memory_mib = (row.number(memory, MAX_MEMORY_GIB)? * 1024.0).round() as u64;
        let gpus = row.uint(gpu, MAX_GPUS_PER_JOB)? as u32;
        let tenant = tenants.intern(row.opt(Some(app)));
        let start = row.opt_secs_millis(creation)?.unwrap_or(0);
        let duration = match row.opt_secs_millis(deletion)? {
            Some(end) if end < start => return Err(row.err(deletion.unwrap_or(0), "a time not before creation_time")),
            Some(end) => Some(SimDuration(end - start)),
            None => None,
        };
        let name = match row.opt(name) {
            Some(n) => n.to_string(),
            None => format!("instance-{}", row.index),
        };
        out.push(Workload {
            id: WorkloadId(0),
            name,
            tenant,
            priority: 0,
            submit_time: SimTime(start),
            cpu_milli,
            memory_mib,
            gpu: GpuRequest::whole_gpus(gpus, node_gpus),
            models: ModelFilter::any(),
            duration,
            deferrable: false,
        });
    }
    Ok(out)
}
