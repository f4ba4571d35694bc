//! Format detection: which importer a file needs, told from its header row (and, for the headerless
//! PAI machine list, its file name), so that users can hand drome any trace without a flag.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// The workload-trace formats drome imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceFormat {
    /// Alibaba cluster-trace-gpu-v2023 ("openb") pod list: fractional GPUs and model constraints.
    Openb,
    /// Microsoft Philly job list as processed by Pollux/Sia (a case of [`TraceFormat::Jobs`]).
    Philly,
    /// A generic job history: submit time, duration, GPUs and optional tenant, model, CPU, memory.
    Jobs,
    /// Alibaba cluster-trace-gpu-v2025 DLRM inference instances.
    Dlrm,
}

/// The node-list (fleet) formats drome imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeListFormat {
    /// Alibaba openb node list: `sn,cpu_milli,memory_mib,gpu,model`.
    Openb,
    /// Alibaba PAI 2020 machine spec, headerless: `machine,gpu_type,cap_cpu,cap_mem,cap_gpu`.
    Pai,
    /// Alibaba spot-GPU 2026 node list: `gpu_model,gpu_capacity_num,cpu_num,node_name`.
    Spot,
}

/// What [`detect_format`] found: a workload trace or a node list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetectedFormat {
    /// A file of workloads, for [`crate::load_workloads`].
    Workloads(TraceFormat),
    /// A file of nodes, for [`crate::load_node_list`].
    NodeList(NodeListFormat),
}

impl TraceFormat {
    /// Every workload format, for help texts and tests.
    pub const ALL: [TraceFormat; 4] = [TraceFormat::Openb, TraceFormat::Philly, TraceFormat::Jobs, TraceFormat::Dlrm];

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TraceFormat::Openb => "openb",
            TraceFormat::Philly => "philly",
            TraceFormat::Jobs => "jobs",
            TraceFormat::Dlrm => "dlrm",
        }
    }
}

impl NodeListFormat {
    /// Every node-list format, for help texts and tests.
    pub const ALL: [NodeListFormat; 3] = [NodeListFormat::Openb, NodeListFormat::Pai, NodeListFormat::Spot];

    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeListFormat::Openb => "openb",
            NodeListFormat::Pai => "pai",
            NodeListFormat::Spot => "spot",
        }
    }
}

impl fmt::Display for TraceFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for NodeListFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DetectedFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DetectedFormat::Workloads(t) => write!(f, "{t} workload trace"),
            DetectedFormat::NodeList(n) => write!(f, "{n} node list"),
        }
    }
}

impl std::str::FromStr for TraceFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TraceFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown trace format '{s}' (expected openb, philly, jobs or dlrm)"))
    }
}

impl std::str::FromStr for NodeListFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeListFormat::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown node-list format '{s}' (expected openb, pai or spot)"))
    }
}

/// Column names of the PAI machine spec, which ships without a header row.
pub(crate) const PAI_COLUMNS: [&str; 5] = ["machine", "gpu_type", "cap_cpu", "cap_mem", "cap_gpu"];

/// Accepted names of the generic jobs format's submit-time column.
pub(crate) const SUBMIT_COLUMNS: &[&str] = &["submit_time", "submission_time", "timestamp", "time"];
/// Accepted names of the generic jobs format's GPU-count column.
pub(crate) const GPU_COLUMNS: &[&str] = &["num_gpu", "num_gpus", "gpus", "num_replicas"];

/// Tells the format of a file from its first row (`header`, as read) and its path. The PAI
/// machine spec has no header; it is recognised by a file name containing `machine_spec`, or by a
/// first row of five fields whose last three are numbers. `None` when nothing fits.
pub fn detect_format(path: &Path, header: &[&str]) -> Option<DetectedFormat> {
    let cols: Vec<String> = header
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 { h.trim_start_matches('\u{feff}') } else { h };
            h.trim().to_ascii_lowercase()
        })
        .collect();
    let has = |name: &str| cols.iter().any(|c| c == name);
    let has_all = |names: &[&str]| names.iter().all(|n| has(n));
    let has_any = |names: &[&str]| names.iter().any(|n| has(n));

    if has_all(&["sn", "cpu_milli", "memory_mib", "gpu"]) {
        return Some(DetectedFormat::NodeList(NodeListFormat::Openb));
    }
    if has_all(&["gpu_model", "gpu_capacity_num", "cpu_num"]) {
        return Some(DetectedFormat::NodeList(NodeListFormat::Spot));
    }
    if has_all(&PAI_COLUMNS) {
        return Some(DetectedFormat::NodeList(NodeListFormat::Pai));
    }
    if has_all(&["cpu_milli", "memory_mib", "num_gpu", "gpu_milli"]) {
        return Some(DetectedFormat::Workloads(TraceFormat::Openb));
    }
    if has_all(&["app_name", "cpu_request", "gpu_request", "memory_request"]) {
        return Some(DetectedFormat::Workloads(TraceFormat::Dlrm));
    }
    if has_all(&["timestamp", "duration", "num_gpus", "gpu_time", "cluster"]) {
        return Some(DetectedFormat::Workloads(TraceFormat::Philly));
    }
    if has_any(SUBMIT_COLUMNS) && has_any(GPU_COLUMNS) {
        return Some(DetectedFormat::Workloads(TraceFormat::Jobs));
    }
    let named_pai = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.contains("machine_spec"));
    let shaped_pai =
        cols.len() == 5 && cols[2..].iter().all(|c| c.parse::<f64>().is_ok()) && cols[1].parse::<f64>().is_err();
    if cols.len() == 5 && (named_pai || shaped_pai) {
        return Some(DetectedFormat::NodeList(NodeListFormat::Pai));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detect(name: &str, header: &str) -> Option<DetectedFormat> {
        let fields: Vec<&str> = header.split(',').collect();
        detect_format(Path::new(name), &fields)
    }

    #[test]
    fn recognises_every_shipped_header() {
        use DetectedFormat::*;
        assert_eq!(detect("a.csv", "sn,cpu_milli,memory_mib,gpu,model"), Some(NodeList(NodeListFormat::Openb)));
        assert_eq!(
            detect("a.csv", "gpu_model,gpu_capacity_num,cpu_num,node_name"),
            Some(NodeList(NodeListFormat::Spot))
        );
        assert_eq!(detect("pai_machine_spec.csv", "7399a7,CPU,96,512,0"), Some(NodeList(NodeListFormat::Pai)));
        assert_eq!(detect("x.csv", "7399a7,T4,96,512,2"), Some(NodeList(NodeListFormat::Pai)));
        assert_eq!(
            detect("a.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos"),
            Some(Workloads(TraceFormat::Openb))
        );
        assert_eq!(detect("a.csv", "NAME,CPU_MILLI,MEMORY_MIB,NUM_GPU,GPU_MILLI"), Some(Workloads(TraceFormat::Openb)));
        assert_eq!(
            detect("a.csv", "instance_sn,role,app_name,cpu_request,gpu_request,memory_request"),
            Some(Workloads(TraceFormat::Dlrm))
        );
        assert_eq!(
            detect("a.csv", "\u{feff}timestamp,duration,num_gpus,gpu_time,cluster"),
            Some(Workloads(TraceFormat::Philly))
        );
        assert_eq!(detect("a.csv", "job_id,num_gpu,submit_time,iterations"), Some(Workloads(TraceFormat::Jobs)));
        assert_eq!(detect("a.csv", "foo,bar"), None);
        assert_eq!(detect("a.csv", "a,b,c,d,e"), None);
    }

    #[test]
    fn format_names_round_trip() {
        for f in TraceFormat::ALL {
            assert_eq!(f.as_str().parse::<TraceFormat>(), Ok(f));
        }
        for f in NodeListFormat::ALL {
            assert_eq!(f.as_str().to_uppercase().parse::<NodeListFormat>(), Ok(f));
        }
        assert!("yarn".parse::<TraceFormat>().is_err());
    }
}
