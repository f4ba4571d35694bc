//! `drome agent`: a node agent. It joins a server with a join token, keeps its node's lease, and
//! runs the node's work as process groups. GPUs come from NVML where a driver is present, or are
//! declared (`--declared-gpus 8 --gpu-model H200`); `--node-count N` serves N such nodes.

use super::server::{init_logging, runtime};
use anyhow::{Context, bail};
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct AgentArgs {
    /// The server's URL; for replicas of one control plane, every replica's URL separated by
    /// commas: the agent talks to the one that leads and moves on when it stops answering.
    #[arg(long, env = "DROME_URL", default_value = "http://127.0.0.1:8420")]
    pub server: String,
    /// How an https:// server is trusted (a CA file, or its certificate's fingerprint).
    #[command(flatten)]
    pub trust: super::client::TrustArgs,
    /// A join token made by the admin (`POST /v1/join-tokens`).
    #[arg(long, env = "DROME_JOIN_TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,
    /// The node's name in the fleet (the host name when unset); with --node-count, a
    /// comma-separated list of names, or one prefix that gets -0, -1, ...
    #[arg(long, value_delimiter = ',')]
    pub name: Vec<String>,
    /// Where runs, logs and credentials live.
    #[arg(long, default_value = "drome-agent")]
    pub work_dir: PathBuf,
    /// Declare this many GPUs instead of asking NVML (a node without GPU drivers: draws come
    /// from the energy model).
    #[arg(long, alias = "virtual-gpus")]
    pub declared_gpus: Option<u32>,
    /// The model of the declared GPUs.
    #[arg(long, default_value = "H200")]
    pub gpu_model: String,
    /// Serve this many nodes from this process, each with its own identity and credential, in
    /// one batched heartbeat (needs --declared-gpus).
    #[arg(long, alias = "virtual-nodes", default_value_t = 1)]
    pub node_count: u32,
    /// Where gang members reach this machine.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: String,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped.
    #[arg(long, default_value_t = 10.0)]
    pub kill_grace: f64,
    /// Hours an ended run's output is kept for `drome logs`; 0 keeps it for good.
    #[arg(long, default_value_t = 168)]
    pub keep_output_hours: u32,
    /// MiB of each output (stdout, stderr) of a run kept on the node; past it the rest is
    /// dropped and the output says so. 0 keeps all of it.
    #[arg(long, default_value_t = 1024)]
    pub max_output_mib: u64,
    /// Print the GPUs NVML finds and exit.
    #[arg(long)]
    pub probe: bool,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

/// How runs are sandboxed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SandboxMode {
    /// Sandboxed where the agent can (root, cgroups mounted); otherwise runs go unconfined,
    /// with a warning.
    Auto,
    /// Always sandboxed: the agent does not start where it cannot.
    On,
    /// Runs go unconfined, as the agent's user (a trusted single-user machine only).
    Off,
}

/// Where runs' uids and the GPU device files are.
#[derive(clap::Args, Clone, Debug)]
pub struct SandboxArgs {
    /// Run each run as a uid of its own inside cgroups holding its CPUs, memory and GPUs.
    #[arg(long, value_enum, default_value = "auto")]
    pub sandbox: SandboxMode,
    /// The first of the uids runs get (they need no entry in /etc/passwd).
    #[arg(long, default_value_t = 200_000)]
    pub run_uid_first: u32,
    /// How many uids, from --run-uid-first, are drome's: at most that many runs at once.
    #[arg(long, default_value_t = 65_536)]
    pub run_uid_count: u32,
    /// Where the GPUs' device files are (nvidia0, nvidiactl, ...).
    #[arg(long, default_value = "/dev")]
    pub device_dir: PathBuf,
    /// Run jobs that name an OCI image: `auto` where podman is installed and runs are
    /// sandboxed; `off` refuses them (the scheduler then sends none here).
    #[arg(long, value_enum, default_value = "auto")]
    pub images: ImagesMode,
    /// Where the node's images are (podman's --root; `podman --root DIR load` fills it). Unset:
    /// podman's own store (/var/lib/containers/storage).
    #[arg(long)]
    pub image_store: Option<PathBuf>,
    /// The podman program runs in images use.
    #[arg(long, default_value = "podman")]
    pub podman: PathBuf,
}

/// Whether nodes run jobs in OCI images.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ImagesMode {
    /// Where a container runtime is found and runs are sandboxed.
    Auto,
    /// Never: jobs naming an image go to other nodes.
    Off,
}

impl SandboxArgs {
    /// The machine's sandbox, as the mode asks.
    pub fn sandbox(&self) -> anyhow::Result<Option<std::sync::Arc<agent::Sandbox>>> {
        if self.sandbox == SandboxMode::Off {
            tracing::warn!("runs are not sandboxed (--sandbox off): they run as the agent's user");
            return Ok(None);
        }
        let opts = agent::SandboxOptions {
            uid_first: self.run_uid_first,
            uid_count: self.run_uid_count.max(1),
            device_dir: self.device_dir.clone(),
            ..agent::SandboxOptions::default()
        };
        match agent::Sandbox::detect(opts) {
            Ok(sandbox) => {
                tracing::info!(
                    cgroups = %sandbox.describe(),
                    uids = %format!("{}..{}", self.run_uid_first, self.run_uid_first.saturating_add(self.run_uid_count.max(1) - 1)),
                    "runs are sandboxed"
                );
                if !sandbox.confines_devices() {
                    tracing::warn!(
                        "gpu device files are not confined (no devices controller): a run's gpus are its CUDA_VISIBLE_DEVICES only"
                    );
                }
                Ok(Some(std::sync::Arc::new(sandbox)))
            }
            // Unsandboxed runs of a root agent would be root: only where asked for (off).
            Err(e) if self.sandbox == SandboxMode::Auto && !matches!(e, agent::sandbox::SandboxError::NotRoot(_)) => {
                bail!("cannot sandbox runs, and they would run as root: {e} (--sandbox off runs them unconfined)")
            }
            Err(e) if self.sandbox == SandboxMode::Auto => {
                tracing::warn!(reason = %e, "runs are not sandboxed: they run as the agent's user");
                Ok(None)
            }
            Err(e) => bail!("cannot sandbox runs: {e}"),
        }
    }

    /// The node's container runtime, where images may run (sandboxed runs only: a run in an
    /// image needs a uid of its own). Blocks briefly (asks podman its version).
    pub fn images(
        &self,
        sandbox: Option<&std::sync::Arc<agent::Sandbox>>,
        config_dir: &std::path::Path,
    ) -> Option<std::sync::Arc<agent::ImageRuntime>> {
        if self.images == ImagesMode::Off || sandbox.is_none() {
            return None;
        }
        let opts = agent::ImageOptions {
            podman: self.podman.clone(),
            store: self.image_store.clone(),
            config_file: config_dir.join("containers.conf"),
        };
        match agent::ImageRuntime::detect(opts) {
            Ok(rt) => {
                tracing::info!(runtime = %rt.version(), store = ?self.image_store, "jobs in oci images run here");
                Some(std::sync::Arc::new(rt))
            }
            Err(e) => {
                tracing::info!(reason = %e, "no container runtime: jobs naming an image go to other nodes");
                None
            }
        }
    }
}

fn names(args: &AgentArgs) -> anyhow::Result<Vec<String>> {
    let n = args.node_count.max(1) as usize;
    let mut names = args.name.clone();
    if names.is_empty() {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
        if host.is_empty() {
            bail!("give the node's name with --name");
        }
        names.push(host);
    }
    if n > 1 && names.len() == 1 {
        let prefix = names[0].clone();
        names = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    }
    if names.len() != n {
        bail!("--node-count {n} needs {n} names (or one prefix), got {}", names.len());
    }
    Ok(names)
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    if args.probe {
        match agent::inventory::probe() {
            Ok(gpus) if gpus.is_empty() => println!("NVML answers but sees no GPUs"),
            Ok(gpus) => {
                for g in gpus {
                    println!(
                        "gpu {}: {}, {} MiB, power limit {:.0} W, nvlink peers {:?}, mig {}",
                        g.index,
                        g.model,
                        g.memory_mib,
                        g.power_limit_watts,
                        g.nvlink_peers,
                        if g.mig_enabled { "on" } else { "off" }
                    );
                }
            }
            Err(e) => println!("no GPUs discovered: {e}"),
        }
        return Ok(());
    }
    init_logging();
    let join_token = args.join_token.clone().filter(|t| !t.trim().is_empty()).context("--join-token is required")?;
    let names = names(&args)?;
    let (gpus, use_nvml) = match args.declared_gpus {
        Some(n) => (agent::inventory::declared_gpus(n, &args.gpu_model), false),
        None => match agent::inventory::probe() {
            Ok(gpus) => (gpus, true),
            Err(e) => bail!("{e}; declare the GPUs with --declared-gpus N --gpu-model MODEL"),
        },
    };
    if use_nvml && names.len() > 1 {
        bail!("--node-count needs --declared-gpus: one machine's real GPUs belong to one node");
    }
    let grace = if args.kill_grace.is_finite() && args.kill_grace >= 0.0 { args.kill_grace } else { 10.0 };
    let server = args.server.trim().to_string();
    let trust = args.trust.trust()?;
    if server.split(',').any(|s| s.trim().starts_with("https://")) && trust.is_none() {
        bail!("an https:// server needs --ca-file or --server-fingerprint: the agent trusts no server by default");
    }
    let sandbox = args.sandbox.sandbox()?;
    std::fs::create_dir_all(&args.work_dir).with_context(|| format!("cannot make {}", args.work_dir.display()))?;
    let images = args.sandbox.images(sandbox.as_ref(), &std::path::absolute(&args.work_dir)?);
    runtime()?.block_on(async move {
        let mut configs = Vec::new();
        let mut work_dirs = Vec::new();
        let node_names = names.clone();
        for name in names {
            let work_dir = if args.node_count > 1 { args.work_dir.join(&name) } else { args.work_dir.clone() };
            work_dirs.push(work_dir.clone());
            configs.push(agent::NodeConfig {
                server: server.clone(),
                join_token: join_token.clone(),
                name,
                address: args.address.clone(),
                gpus: gpus.clone(),
                work_dir,
                kill_grace: Duration::from_secs_f64(grace),
                use_nvml,
                sandbox: sandbox.clone(),
                images: images.clone(),
                trust: trust.clone(),
                keep_output: (args.keep_output_hours > 0)
                    .then(|| Duration::from_secs(u64::from(args.keep_output_hours) * 3600)),
                max_output_bytes: (args.max_output_mib > 0).then(|| args.max_output_mib.saturating_mul(1 << 20)),
            });
        }
        // One node: its own heartbeat; many: one batched heartbeat over one connection.
        let mut tasks = Vec::new();
        if configs.len() == 1 {
            for cfg in configs {
                let name = cfg.name.clone();
                let node = agent::NodeAgent::new(cfg)?;
                tasks.push(tokio::spawn(async move { (name, node.run().await) }));
            }
        } else {
            let count = configs.len();
            let host = agent::AgentHost::new(configs)?;
            tracing::info!(nodes = count, "serving nodes with batched heartbeats");
            tasks.push(tokio::spawn(async move { (format!("{count} nodes"), host.run().await) }));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch for SIGTERM")?;
        let ended = tokio::select! {
            done = futures_first(tasks) => match done {
                Some((name, Err(e))) => Err(anyhow::anyhow!("node {name}: {e}")),
                _ => Ok(()),
            },
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); Ok(()) }
            _ = term.recv() => { tracing::info!("terminated; stopping"); Ok(()) }
        };
        // Nothing runs unwatched: the server requeues or fails the runs when the leases expire.
        let killed: usize = node_names
            .iter()
            .zip(&work_dirs)
            .map(|(n, d)| agent::runner::stop_node_runs(n, d, sandbox.as_deref()))
            .sum();
        if killed > 0 {
            tracing::info!(runs = killed, "runs killed as the agent stops");
        }
        ended
    })
}

/// The first node loop to end.
async fn futures_first(
    tasks: Vec<tokio::task::JoinHandle<(String, Result<(), agent::AgentError>)>>,
) -> Option<(String, Result<(), agent::AgentError>)> {
    if tasks.is_empty() {
        return None;
    }
    let (done, _, _) = futures_util::future::select_all(tasks).await;
    done.ok()
}
