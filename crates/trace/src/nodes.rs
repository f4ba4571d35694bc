//! Node-list importers: the machine lists published with cluster traces, turned into a one-site
//! [`Fleet`] so that a trace can be replayed on the fleet it ran on.

use crate::NodeListOptions;
use crate::csvio::CsvRows;
use crate::detect::NodeListFormat;
use crate::error::{TraceError, TraceErrorKind};
use crate::limits::{MAX_CPU_MILLI, MAX_CPUS, MAX_GPUS_PER_NODE, MAX_MEMORY_GIB, MAX_MEMORY_MIB};
use model::NodeSpec;
use std::collections::HashSet;
use std::io::Read;

/// Reads the node rows of a node list whose header (or fixed header) `src` has already taken.
pub(crate) fn read_nodes<R: Read>(
    src: &mut CsvRows<R>,
    format: NodeListFormat,
    opts: &NodeListOptions,
) -> Result<Vec<NodeSpec>, TraceError> {
    let mut nodes = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    match format {
        NodeListFormat::Openb => {
            let name = src.require(&["sn", "name"])?;
            let cpu = src.require(&["cpu_milli"])?;
            let memory = src.require(&["memory_mib"])?;
            let gpus = src.require(&["gpu", "num_gpu"])?;
            let model = src.find(&["model", "gpu_model"]);
            while let Some(row) = src.next_row()? {
                let spec = NodeSpec {
                    name: node_name(&row, name)?,
                    cpu_milli: row.uint(cpu, MAX_CPU_MILLI)?,
                    memory_mib: row.uint(memory, MAX_MEMORY_MIB)?,
                    gpu_count: row.uint(gpus, MAX_GPUS_PER_NODE)? as u8,
                    gpu_model: row.opt(model).map(str::to_string),
                    nvlink_domain: None,
                    leaf_switch: None,
                };
                push(&mut nodes, &mut seen, spec, row.file, row.line)?;
            }
        }
        NodeListFormat::Pai => {
            let name = src.require(&["machine"])?;
            let gpu_type = src.require(&["gpu_type"])?;
            let cpu = src.require(&["cap_cpu"])?;
            let memory = src.require(&["cap_mem"])?;
            let gpus = src.require(&["cap_gpu"])?;
            while let Some(row) = src.next_row()? {
                let model = row.get(gpu_type);
                let count = row.uint(gpus, MAX_GPUS_PER_NODE)? as u8;
                let cpu_only = model.is_empty() || model.eq_ignore_ascii_case("CPU");
                if cpu_only && count > 0 {
                    return Err(row.err(gpus, format!("0 GPUs on a machine of gpu_type {model:?}")));
                }
                let spec = NodeSpec {
                    name: node_name(&row, name)?,
                    cpu_milli: (row.number(cpu, MAX_CPUS)? * 1000.0).round() as u64,
                    memory_mib: (row.number(memory, MAX_MEMORY_GIB)? * 1024.0).round() as u64,
                    gpu_count: count,
                    gpu_model: (!cpu_only).then(|| model.to_string()),
                    nvlink_domain: None,
                    leaf_switch: None,
                };
                push(&mut nodes, &mut seen, spec, row.file, row.line)?;
            }
        }
        NodeListFormat::Spot => {
            let name = src.require(&["node_name"])?;
            let model = src.require(&["gpu_model"])?;
            let gpus = src.require(&["gpu_capacity_num"])?;
            let cpu = src.require(&["cpu_num"])?;
            while let Some(row) = src.next_row()? {
                let cpus = row.number(cpu, MAX_CPUS)?;
                let spec = NodeSpec {
                    name: node_name(&row, name)?,
                    cpu_milli: (cpus * 1000.0).round() as u64,
                    memory_mib: (cpus * opts.spot_memory_mib_per_cpu as f64).round().min(MAX_MEMORY_MIB as f64) as u64,
                    gpu_count: row.uint(gpus, MAX_GPUS_PER_NODE)? as u8,
                    gpu_model: row.opt(Some(model)).map(str::to_string),
                    nvlink_domain: None,
                    leaf_switch: None,
                };
                push(&mut nodes, &mut seen, spec, row.file, row.line)?;
            }
        }
    }
    Ok(nodes)
}

fn node_name(row: &crate::csvio::Row<'_>, col: usize) -> Result<String, TraceError> {
    match row.get(col) {
        "" => Err(row.err(col, "a node name")),
        n => Ok(n.to_string()),
    }
}

fn push(
    nodes: &mut Vec<NodeSpec>,
    seen: &mut HashSet<String>,
    spec: NodeSpec,
    file: &str,
    line: u64,
) -> Result<(), TraceError> {
    if !seen.insert(spec.name.clone()) {
        return Err(TraceError::new(file, Some(line), TraceErrorKind::DuplicateNode(spec.name)));
    }
    nodes.push(spec);
    Ok(())
}
