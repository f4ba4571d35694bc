//! The Alibaba openb (cluster-trace-gpu-v2023) pod-list importer: GPU-sharing pods with fractional
//! GPU requests and GPU-model constraints, drome's reference workload for packing policies.

use crate::csvio::CsvRows;
use crate::error::TraceError;
use crate::limits::{MAX_CPU_MILLI, MAX_GPUS_PER_NODE, MAX_MEMORY_MIB};
use crate::{Tenants, TraceOptions};
use model::{GPU_MILLI_PER_GPU, GpuRequest, ModelFilter, SimDuration, SimTime, Workload, WorkloadId};
use std::io::Read;

/// Priority given to pods by QoS class: latency-sensitive (`LS`) and Kubernetes `Guaranteed` pods
/// outrank `Burstable`, which outranks best-effort (`BE`, `BestEffort`) and pods with no class.
pub fn qos_priority(qos: &str) -> Option<i32> {
    let q = qos.trim();
    if q.is_empty() {
        return Some(0);
    }
    let table: [(&str, i32); 5] = [("LS", 2), ("Guaranteed", 2), ("Burstable", 1), ("BE", 0), ("BestEffort", 0)];
    table.iter().find(|(name, _)| name.eq_ignore_ascii_case(q)).map(|&(_, p)| p)
}

/// Reads the rows of an openb pod list whose header `src` has already taken. All pods belong to
/// tenant 0 (the trace has no tenants; its QoS class becomes the priority, see [`qos_priority`]).
pub(crate) fn read_pods<R: Read>(
    src: &mut CsvRows<R>,
    _opts: &TraceOptions,
    tenants: &mut Tenants,
) -> Result<Vec<Workload>, TraceError> {
    let name = src.find(&["name"]);
    let cpu = src.require(&["cpu_milli"])?;
    let memory = src.require(&["memory_mib"])?;
    let num_gpu = src.require(&["num_gpu"])?;
    let gpu_milli = src.require(&["gpu_milli"])?;
    let gpu_spec = src.find(&["gpu_spec"]);
    let qos = src.find(&["qos"]);
    let creation = src.find(&["creation_time"]);
    let deletion = src.find(&["deletion_time"]);
    let scheduled = src.find(&["scheduled_time"]);
    let tenant = tenants.intern(None);

    let mut out = Vec::new();
    while let Some(row) = src.next_row()? {
        let cpu_milli = row.uint(cpu, MAX_CPU_MILLI)?;
        let memory_mib = row.uint(memory, MAX_MEMORY_MIB)?;
        let gpus = row.uint(num_gpu, MAX_GPUS_PER_NODE)? as u32;
        let milli = match row.get(gpu_milli) {
            "" => None,
            _ => Some(row.uint(gpu_milli, u64::from(GPU_MILLI_PER_GPU))? as u32),
        };
        let gpu = match (gpus, milli) {
            (0, _) => GpuRequest::None,
            (1, Some(0)) => return Err(row.err(gpu_milli, "1..=1000 thousandths of a GPU when num_gpu is 1")),
            (1, Some(m)) => GpuRequest::fraction(m),
            (n, _) => GpuRequest::Gang { nodes: 1, gpus_per_node: n },
        };
        let priority = match qos {
            Some(c) => qos_priority(row.get(c))
                .ok_or_else(|| row.err(c, "a QoS class (LS, BE, Burstable, Guaranteed, BestEffort)"))?,
            None => 0,
        };
        let created = row.opt_secs_millis(creation)?;
        let started = row.opt_secs_millis(scheduled)?.or(created);
        let duration = match (row.opt_secs_millis(deletion)?, started) {
            (Some(end), Some(start)) if end < start => {
                let from = if row.opt(scheduled).is_some() { "scheduled_time" } else { "creation_time" };
                return Err(row.err(deletion.unwrap_or(0), format!("a time not before {from}")));
            }
            (Some(end), Some(start)) => Some(SimDuration(end - start)),
            _ => None,
        };
        let name = match row.opt(name) {
            Some(n) => n.to_string(),
            None => format!("pod-{}", row.index),
        };
        out.push(Workload {
            id: WorkloadId(0),
            name,
            tenant,
            priority,
            submit_time: SimTime(created.unwrap_or(0)),
            cpu_milli,
            memory_mib,
            gpu,
            models: row.opt(gpu_spec).map(ModelFilter::parse_list).unwrap_or_default(),
            duration,
            deferrable: false,
        });
    }
    Ok(out)
}
