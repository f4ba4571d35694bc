//! drome's trace importers: the I/O edge that turns published cluster traces (job histories and
//! node lists) into drome's [`model`] types, so that the simulator can replay them.
//!
//! Files are read record by record with one reused CSV record; columns are found by header name
//! (case-insensitive, in any order, unknown ones ignored). Malformed input of any kind gives a
//! [`TraceError`] naming the file, line and column; nothing here panics on input.
//!
//! Workloads come back in submit order (stable: ties keep file order) with `WorkloadId == index`;
//! rows without a name are called `job-N`, `pod-N` or `instance-N` after their 0-based data row.
//!
//! | format | file | mapping choices |
//! |---|---|---|
//! | [`TraceFormat::Jobs`] | any job history with a header | submit from `submit_time`/`submission_time`/`timestamp`/`time` (seconds or `YYYY-MM-DD HH:MM:SS`), rebased to 0; GPUs from `num_gpu`/`num_gpus`/`gpus`/`num_replicas` shaped by [`model::GpuRequest::whole_gpus`]; tenant from `tenant`/`user`/`cluster`/`vc`/`organization` |
//! | [`TraceFormat::Philly`] | Philly `philly.csv` | the jobs importer; the virtual cluster is the tenant |
//! | [`TraceFormat::Openb`] | Alibaba openb pod list | one tenant (`default`); QoS becomes priority ([`qos_priority`]: LS, Guaranteed 2 > Burstable 1 > BE 0); duration = deletion - scheduled (or creation) time |
//! | [`TraceFormat::Dlrm`] | Alibaba DLRM instances | the service (`app_name`) is the tenant; empty creation = time 0; duration = deletion - creation (creation 0 when empty), `None` without a deletion |
//! | [`NodeListFormat::Openb`] | openb node list | as given |
//! | [`NodeListFormat::Pai`] | PAI machine spec (headerless) | cores x 1000, GB read as GiB, `CPU` = no GPU |
//! | [`NodeListFormat::Spot`] | spot-GPU node list | memory unknown: [`NodeListOptions::spot_memory_mib_per_cpu`] (8 GiB per vCPU) |

#![warn(missing_docs)]

mod csvio;
mod detect;
mod dlrm;
mod error;
mod jobs;
mod nodes;
mod openb;
mod stats;
pub mod time;

pub use detect::{DetectedFormat, NodeListFormat, TraceFormat, detect_format};
pub use error::{TraceError, TraceErrorKind};
pub use openb::qos_priority;
pub use stats::{GpuCountBucket, TraceStats};

use csvio::CsvRows;
use model::{Fleet, SimTime, TenantId, Workload, WorkloadId, fleet::flat_fleet};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bounds past which a value is taken as corrupt rather than as a very large cluster.
pub mod limits {
    /// GPUs one job may ask for.
    pub const MAX_GPUS_PER_JOB: u64 = 100_000;
    /// GPUs one node may hold (the fleet model counts them in a `u8`).
    pub const MAX_GPUS_PER_NODE: u64 = 255;
    /// CPU cores of one node or job.
    pub const MAX_CPUS: f64 = 1_000_000.0;
    /// [`MAX_CPUS`] in thousandths of a core.
    pub const MAX_CPU_MILLI: u64 = 1_000_000_000;
    /// Memory of one node or job, in GiB (1 PiB).
    pub const MAX_MEMORY_GIB: f64 = 1_048_576.0;
    /// [`MAX_MEMORY_GIB`] in MiB.
    pub const MAX_MEMORY_MIB: u64 = 1 << 30;
    /// Times and durations in seconds: 100 years.
    pub const MAX_SECONDS: f64 = 3_155_760_000.0;
}

/// Tenant name given to workloads whose trace names none.
pub const DEFAULT_TENANT: &str = "default";

/// Choices an import cannot read from the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceOptions {
    /// GPUs per node assumed when shaping whole-GPU requests into gangs
    /// ([`model::GpuRequest::whole_gpus`]); Philly's large servers had 8.
    pub node_gpus: u32,
    /// Shift numeric submit times of jobs-format traces so that the first is 0. Calendar times
    /// are always shifted; openb and DLRM times are already relative to the trace start and kept.
    pub rebase_submit_times: bool,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions { node_gpus: 8, rebase_submit_times: true }
    }
}

/// Choices a node-list import cannot read from the file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeListOptions {
    /// Consecutive nodes put in one rack (under one leaf switch) of the flat fleet.
    pub nodes_per_rack: usize,
    /// Memory per vCPU given to nodes of the spot-GPU list, which records none: 8 GiB, the ratio of
    /// Alibaba Cloud's GPU bare-metal instances (e.g. 128 vCPU / 1 TiB).
    pub spot_memory_mib_per_cpu: u64,
}

impl Default for NodeListOptions {
    fn default() -> Self {
        NodeListOptions { nodes_per_rack: 8, spot_memory_mib_per_cpu: 8 * 1024 }
    }
}

/// An imported workload trace: the workloads in submit order, the tenant table their
/// [`TenantId`]s index, and where they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// Workloads sorted by submit time (ties in file order), `workloads[i].id == WorkloadId(i)`.
    pub workloads: Vec<Workload>,
    /// Tenant names in order of first appearance in the file; `TenantId(i)` is `tenants[i]`.
    pub tenants: Vec<String>,
    /// The format the file was read as.
    pub format: TraceFormat,
    /// The file (or the display name given for a reader).
    pub source: PathBuf,
}

impl Trace {
    /// The trace's summary figures.
    pub fn stats(&self) -> TraceStats {
        TraceStats::of(self)
    }
}

/// Interns tenant names into the trace's tenant table, allocating only for names not seen before.
#[derive(Default)]
pub(crate) struct Tenants {
    names: Vec<String>,
    index: HashMap<String, u32>,
}

impl Tenants {
    /// The id of `name` (or of [`DEFAULT_TENANT`] when `None` or empty).
    pub fn intern(&mut self, name: Option<&str>) -> TenantId {
        let name = name.filter(|n| !n.is_empty()).unwrap_or(DEFAULT_TENANT);
        if let Some(&id) = self.index.get(name) {
            return TenantId(id);
        }
        let id = self.names.len() as u32;
        self.names.push(name.to_string());
        self.index.insert(name.to_string(), id);
        TenantId(id)
    }
}

fn display_name(path: &Path) -> String {
    path.display().to_string()
}

fn open(path: &Path) -> Result<File, TraceError> {
    File::open(path).map_err(|e| TraceError::new(&display_name(path), None, TraceErrorKind::Io(e)))
}

/// Reads the first row of `path` and tells its format, for callers (the CLI) that accept either a
/// trace or a node list.
pub fn sniff_format(path: impl AsRef<Path>) -> Result<DetectedFormat, TraceError> {
    let path = path.as_ref();
    let name = display_name(path);
    let src = CsvRows::open(open(path)?, &name)?;
    let fields = src.first_fields();
    detect_format(path, &fields).ok_or_else(|| unknown_format(&name, &fields, "a workload trace or a node list"))
}

fn unknown_format(file: &str, fields: &[&str], expected: &'static str) -> TraceError {
    let header = error::shorten(&fields.join(","));
    TraceError::new(file, Some(1), TraceErrorKind::UnknownFormat { header, expected })
}

const WORKLOAD_FORMATS: &str = "an openb pod list, a Philly or jobs CSV, or a DLRM instance list";
const NODE_LIST_FORMATS: &str = "an openb, PAI or spot-GPU node list";

/// Imports the workload trace at `path`; `format` `None` detects it from the header.
pub fn load_workloads(
    path: impl AsRef<Path>,
    format: Option<TraceFormat>,
    opts: &TraceOptions,
) -> Result<Trace, TraceError> {
    let path = path.as_ref();
    read_workloads(open(path)?, &display_name(path), format, opts)
}

/// Imports a workload trace from any reader; `name` stands for the file in errors and in
/// [`Trace::source`] (and its file name helps detection).
pub fn read_workloads<R: Read>(
    reader: R,
    name: &str,
    format: Option<TraceFormat>,
    opts: &TraceOptions,
) -> Result<Trace, TraceError> {
    let mut src = CsvRows::open(reader, name)?;
    let format = match format {
        Some(f) => f,
        None => {
            let fields = src.first_fields();
            match detect_format(Path::new(name), &fields) {
                Some(DetectedFormat::Workloads(f)) => f,
                _ => return Err(unknown_format(name, &fields, WORKLOAD_FORMATS)),
            }
        }
    };
    src.use_first_as_header();
    let mut tenants = Tenants::default();
    let (mut workloads, rebase) = match format {
        TraceFormat::Philly | TraceFormat::Jobs => jobs::read_jobs(&mut src, opts, &mut tenants)?,
        TraceFormat::Openb => (openb::read_pods(&mut src, opts, &mut tenants)?, false),
        TraceFormat::Dlrm => (dlrm::read_instances(&mut src, opts, &mut tenants)?, false),
    };
    if rebase && let Some(first) = workloads.iter().map(|w| w.submit_time).min() {
        for w in &mut workloads {
            w.submit_time = SimTime(w.submit_time.0 - first.0);
        }
    }
    workloads.sort_by_key(|w| w.submit_time);
    for (i, w) in workloads.iter_mut().enumerate() {
        w.id = WorkloadId(i as u32);
    }
    Ok(Trace { workloads, tenants: tenants.names, format, source: PathBuf::from(name) })
}

/// Imports the node list at `path` as a one-site, air-cooled, uncapped fleet named after the
/// file, detecting its format and using default [`NodeListOptions`].
pub fn load_node_list(path: impl AsRef<Path>) -> Result<Fleet, TraceError> {
    load_node_list_with(path, None, &NodeListOptions::default())
}

/// Like [`load_node_list`], with the format (`None`: detect) and options given.
pub fn load_node_list_with(
    path: impl AsRef<Path>,
    format: Option<NodeListFormat>,
    opts: &NodeListOptions,
) -> Result<Fleet, TraceError> {
    let path = path.as_ref();
    read_node_list(open(path)?, &display_name(path), format, opts)
}

/// Imports a node list from any reader; `name` stands for the file in errors, names the fleet
/// (its file stem) and helps detection (the headerless PAI list is told by its file name).
pub fn read_node_list<R: Read>(
    reader: R,
    name: &str,
    format: Option<NodeListFormat>,
    opts: &NodeListOptions,
) -> Result<Fleet, TraceError> {
    let mut src = CsvRows::open(reader, name)?;
    let fields = src.first_fields();
    let format = match format {
        Some(f) => f,
        None => match detect_format(Path::new(name), &fields) {
            Some(DetectedFormat::NodeList(f)) => f,
            _ => return Err(unknown_format(name, &fields, NODE_LIST_FORMATS)),
        },
    };
    let pai_header = fields.len() == detect::PAI_COLUMNS.len()
        && fields.iter().zip(detect::PAI_COLUMNS).all(|(f, c)| f.eq_ignore_ascii_case(c));
    if format == NodeListFormat::Pai && !pai_header {
        src.use_fixed_header(&detect::PAI_COLUMNS);
    } else {
        src.use_first_as_header();
    }
    let specs = nodes::read_nodes(&mut src, format, opts)?;
    let fleet_name = Path::new(name).file_stem().and_then(|s| s.to_str()).unwrap_or(name);
    Ok(flat_fleet(fleet_name, specs, opts.nodes_per_rack))
}
