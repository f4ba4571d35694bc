//! One node's agent loop: join, heartbeat, start and kill runs.

use crate::AgentError;
use crate::sandbox::{Limits, RunSandbox};
use api::{
    AgentJoin, AgentJoined, Assignment, GpuInfo, Heartbeat, HeartbeatReply, LogChunk, LogRequest, RunExit, RunKey,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::mpsc;

const SPAWNING: i32 = 0;
const KILL_ON_SPAWN: i32 = -1;

/// One node an agent serves.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The server's base URL, `http://HOST:PORT`, or the replicas' URLs separated by commas.
    pub server: String,
    pub join_token: String,
    /// The node's name in the fleet.
    pub name: String,
    /// Where gang members reach this node.
    pub address: String,
    pub gpus: Vec<GpuInfo>,
    /// Runs live under `work_dir/runs/`; the credential is kept in `work_dir/credential`.
    pub work_dir: PathBuf,
    /// SIGTERM, then SIGKILL after this long.
    pub kill_grace: Duration,
    /// Ask NVML for power draw and apply caps with it (false: recorded and estimated).
    pub use_nvml: bool,
    /// Runs are sandboxed with it; without it they run as the agent's user (its environment
    /// is still not theirs).
    pub sandbox: Option<Arc<crate::Sandbox>>,
    /// The node's container runtime: jobs naming an image run with it (sandboxed nodes only).
    pub images: Option<Arc<crate::ImageRuntime>>,
    /// How the server is trusted over HTTPS (a CA file or its certificate's fingerprint).
    pub trust: Option<tls::Trust>,
    /// How long an ended run's output is kept for `drome logs` (`None`: for good).
    pub keep_output: Option<Duration>,
    /// The most of each output (stdout, stderr) of a run kept on the node (`None`: all of it);
    /// past it the rest is read and dropped, and the file says so.
    pub max_output_bytes: Option<u64>,
}

/// Removes the directories of ended runs under `runs` whose output was last written before
/// `keep` ago, but none of `live`. Returns how many it removed. Blocks (a directory walk).
pub fn prune_runs(runs: &std::path::Path, live: &HashSet<String>, keep: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(runs) else { return 0 };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if live.contains(&name) {
            continue;
        }
        let dir = e.path();
        // The last write of its output (or the directory itself when it has none).
        let written = ["stdout", "stderr"]
            .iter()
            .filter_map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok())
            .chain(std::fs::metadata(&dir).and_then(|m| m.modified()).ok())
            .max();
        let old = written.and_then(|t| t.elapsed().ok()).is_some_and(|age| age > keep);
        if old && std::fs::remove_dir_all(&dir).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// The agent's HTTP client: a minute at most a call, over TLS trusting the server as `trust`
/// says.
pub fn http_client(trust: Option<&tls::Trust>) -> Result<reqwest::Client, AgentError> {
    let builder = reqwest::Client::builder().timeout(Duration::from_secs(60));
    let builder = match trust {
        Some(trust) => builder.use_preconfigured_tls(tls::client_config(trust)?),
        None => builder,
    };
    Ok(builder.build()?)
}

struct Live {
    /// The run's process group once spawned; `SPAWNING` until then, `KILL_ON_SPAWN` when it was
    /// asked to stop before it was spawned (the spawner then kills it at once).
    pgid: Arc<AtomicI32>,
    /// The run's sandbox once spawned (sandboxed runs only): stopping it kills its cgroup.
    sandbox: Arc<OnceLock<Arc<RunSandbox>>>,
    gpus: usize,
    /// The run's container, for a run in an image.
    container: Option<(Arc<crate::ImageRuntime>, String)>,
}

/// Stops a run: SIGTERM to its process group and, sandboxed, to everything in its cgroup
/// (podman passes it on to a container); SIGKILL to all of it after `grace`, and its container
/// removed.
fn stop_run(
    pgid: i32,
    sandbox: Option<Arc<RunSandbox>>,
    container: Option<(Arc<crate::ImageRuntime>, String)>,
    grace: Duration,
) {
    signal_group(pgid, Signal::SIGTERM);
    if let Some(s) = &sandbox {
        s.signal(Signal::SIGTERM);
    }
    tokio::spawn(async move {
        tokio::time::sleep(grace).await;
        signal_group(pgid, Signal::SIGKILL);
        if let Some(s) = sandbox {
            let _ = tokio::task::spawn_blocking(move || s.kill_all()).await;
        }
        if let Some((images, name)) = container {
            let _ = tokio::task::spawn_blocking(move || images.remove(&name)).await;
        }
    });
}

/// The environment a run starts with: nothing of the agent's, only what the job set, drome's
/// documented variables and a few sane defaults the job may override.
fn run_environment(
    a: &Assignment,
    node: &str,
    gpus: &[GpuInfo],
    work: &std::path::Path,
    tmp: &str,
) -> Vec<(String, String)> {
    let visible: Vec<String> = a.gpus.iter().map(u32::to_string).collect();
    let work = work.display().to_string();
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
        ("HOME".into(), work.clone()),
        ("TMPDIR".into(), tmp.to_string()),
        ("LANG".into(), "C.UTF-8".into()),
    ];
    env.extend(a.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env.push(("CUDA_VISIBLE_DEVICES".into(), visible.join(",")));
    if let (Some(milli), [index]) = (a.gpu_milli, a.gpus.as_slice()) {
        // A share of one GPU: MPS (where its control daemon runs on the node) holds the run to
        // that share of the GPU's threads and memory. The run sees its GPU as device 0.
        env.push(("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), milli.div_ceil(10).clamp(1, 100).to_string()));
        if let Some(g) = gpus.iter().find(|g| g.index == *index) {
            let mib = (g.memory_mib * u64::from(milli) / 1000).max(1);
            env.push(("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), format!("0={mib}M")));
        }
    }
    env.push(("DROME_NODE".into(), node.to_string()));
    env.push(("DROME_WORK_DIR".into(), work));
    env
}

/// Where `command` is found, as `execvp` in the run would find it: a name with a `/` as it is,
/// else the first executable file of that name in the run's `PATH` (the last `PATH` of `env`; an
/// empty entry is the run's directory `cwd`). A name found nowhere is left as it is, so the
/// spawn fails as it would have.
fn program_path(command: &str, env: &[(String, String)], cwd: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if command.contains('/') || command.is_empty() {
        return command.into();
    }
    let Some((_, path)) = env.iter().rev().find(|(k, _)| k == "PATH") else {
        return command.into();
    };
    path.split(':')
        .map(|dir| if dir.is_empty() { cwd.join(command) } else { Path::new(dir).join(command) })
        .find(|candidate| {
            std::fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| command.into())
}

/// Copies a run's output from its pipe into the file at `path` (made already, the agent's
/// only): the first `max_bytes` of it (all without a limit). Past that the rest is still read,
/// so the run never blocks on a full pipe, and dropped; the file says where and, at the end,
/// how much. Output the disk cannot take is dropped too, never the run. Returns the bytes
/// dropped. The file is opened at the first output only: a quiet run holds no file open, and
/// every file the agent holds is copied into each process it spawns.
pub async fn keep_output<R: tokio::io::AsyncRead + Unpin>(mut from: R, path: PathBuf, max_bytes: Option<u64>) -> u64 {
    use std::io::Write;
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let (mut kept, mut dropped) = (0u64, 0u64);
    let mut opened: Option<std::io::Result<std::fs::File>> = None;
    loop {
        // Read one byte's worth first: a run that never writes costs no buffer either.
        if buf.is_empty() {
            buf.resize(1, 0);
        } else if buf.len() < 64 * 1024 {
            buf.resize(64 * 1024, 0);
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let Ok(file) = opened.get_or_insert_with(|| std::fs::OpenOptions::new().append(true).open(&path)) else {
            dropped += n as u64;
            continue;
        };
        let room = max_bytes.map_or(n, |max| max.saturating_sub(kept).min(n as u64) as usize);
        if room > 0 {
            match file.write_all(&buf[..room]) {
                Ok(()) => kept += room as u64,
                Err(_) => dropped += room as u64,
            }
        }
        if room < n {
            if dropped == 0
                && let Some(max) = max_bytes
            {
                let _ = write!(file, "\n[drome: output past this node's limit of {max} bytes is dropped]\n");
            }
            dropped += (n - room) as u64;
        }
    }
    if dropped > 0
        && let Some(Ok(file)) = &mut opened
    {
        let _ = writeln!(file, "[drome: {dropped} bytes of output dropped]");
    }
    dropped
}

/// A file of the agent's only (0600), created or emptied.
fn private_file(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// A directory of the agent's that others may pass through but not list (0711), made so if
/// the agent makes it; one that was there keeps its mode (`--work-dir /srv` is not the agent's
/// to change).
fn agent_dir(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if path.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))
}

/// The agent of one node.
pub struct NodeAgent {
    cfg: NodeConfig,
    /// The name of the node's cgroups ([`sandbox_scope`]), worked out once.
    scope: String,
    http: reqwest::Client,
    /// The replicas; shared by every node of a host.
    servers: Arc<crate::Servers>,
    credential: Option<String>,
    heartbeat: Duration,
    /// The server's lease: past it without a renewal, the node's runs may be started elsewhere.
    lease: Duration,
    /// When the last heartbeat that renewed the lease was sent: the server's lease runs from
    /// its receipt, later, so the agent's own count never ends after the server's.
    renewed_at: Option<tokio::time::Instant>,
    live: HashMap<RunKey, Live>,
    /// Ended runs not yet acknowledged by the server, and how many of them (the first) it has
    /// been sent at least once: only news makes a heartbeat go out at once.
    exited: Vec<RunExit>,
    exits_sent: usize,
    /// Runs this agent started, so an assignment repeated after it ended does not run again.
    seen: HashSet<RunKey>,
    seen_order: VecDeque<RunKey>,
    power_cap: Option<f64>,
    /// CPU package power limit of the node, watts for all packages, as last asked for.
    cpu_cap: Option<f64>,
    /// Where this node's run ends go, tagged with `index` (its place in a host's node list).
    exit_tx: mpsc::UnboundedSender<(usize, RunExit)>,
    /// Its own end of the channel when it runs alone; a host holds the shared one.
    exit_rx: Option<mpsc::UnboundedReceiver<(usize, RunExit)>>,
    index: usize,
    /// When ended runs' output was last pruned.
    pruned_at: Option<tokio::time::Instant>,
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io { path: path.display().to_string(), source }
}

/// How long to wait before trying the server again: from 100 ms, doubling to 2 s; back to the
/// start after a success.
pub(crate) struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(2));
    }

    pub(crate) fn reset(&mut self) {
        *self = Backoff::default();
    }
}

/// Spawning a run (fork, exec, its files) blocks: one thread per agent process does it, in
/// order, so neither the heartbeat loop stalls nor a burst of runs makes a thread each.
mod spawner {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc::{Sender, channel};

    type Spawn = Box<dyn FnOnce() + Send>;
    type Queue = std::sync::Mutex<Sender<Spawn>>;

    /// Spawner threads: a few, so a burst of short runs is not spawned one at a time.
    const THREADS: usize = 4;

    fn queues() -> &'static [Queue] {
        static QUEUES: OnceLock<Vec<Queue>> = OnceLock::new();
        QUEUES.get_or_init(|| {
            let Ok(runtime) = tokio::runtime::Handle::try_current() else { return Vec::new() };
            (0..THREADS)
                .filter_map(|i| {
                    let (tx, rx) = channel::<Spawn>();
                    let runtime = runtime.clone();
                    std::thread::Builder::new()
                        .name(format!("drome-spawner-{i}"))
                        .spawn(move || {
                            // Children are watched by the runtime that asked for them.
                            let _inside = runtime.enter();
                            while let Ok(spawn) = rx.recv() {
                                spawn();
                            }
                        })
                        .ok()?;
                    Some(std::sync::Mutex::new(tx))
                })
                .collect()
        })
    }

    /// Runs `spawn` on a spawner thread and waits for its answer.
    pub async fn run<T: Send + 'static>(
        spawn: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Spawn = Box::new(move || {
            let _ = tx.send(spawn());
        });
        let queues = queues();
        let sent = !queues.is_empty()
            && queues[NEXT.fetch_add(1, Ordering::Relaxed) % queues.len()]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .send(job)
                .is_ok();
        if !sent {
            return Err(std::io::Error::other("no spawner thread"));
        }
        rx.await.unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread dropped the run")))
    }
}

/// A number unlikely to repeat between processes (clock and address-space noise), to name an
/// agent process to the server.
pub(crate) fn random_suffix() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let local = 0u8;
    (nanos as u64) ^ ((&local as *const u8 as u64) << 16)
}

/// Signals a run's process group; a group already gone is fine.
fn signal_group(pgid: i32, sig: Signal) {
    if pgid > 1 {
        let _ = killpg(Pid::from_raw(pgid), sig);
    }
}

/// The GPU draw of a node whose first `busy` GPUs run work, in watts, from the energy model:
/// an idle GPU draws its idle figure, a busy one its typical draw, at most `cap` (per GPU).
pub fn estimate_watts(gpus: &[GpuInfo], busy: usize, cap: Option<f64>) -> f64 {
    gpus.iter()
        .enumerate()
        .map(|(i, g)| {
            let profile = energy::gpu_power::GpuPowerProfile::of(model::GpuModel::from_name(&g.model).family);
            let board = g.power_limit_watts;
            let idle = profile.power_watts(board, 0.0);
            if i < busy { profile.busy_watts(board).min(cap.unwrap_or(f64::INFINITY)).max(idle) } else { idle }
        })
        .sum()
}

/// Reads a piece of a run's output for a [`LogRequest`]: at most `limit` bytes from `offset`,
/// cut before an incomplete UTF-8 character at the end.
pub fn read_chunk(path: &std::path::Path, req: &LogRequest) -> LogChunk {
    use std::io::{Read, Seek, SeekFrom};
    let fail =
        |e: String| LogChunk { id: req.id, data: String::new(), next_offset: req.offset, size: 0, error: Some(e) };
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return fail(format!("no output at {}: {e}", path.display())),
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let offset = req.offset.min(size);
    let mut buf = Vec::new();
    let read =
        file.seek(SeekFrom::Start(offset)).and_then(|_| file.take(req.limit.min(256 * 1024)).read_to_end(&mut buf));
    if let Err(e) = read {
        return fail(format!("cannot read {}: {e}", path.display()));
    }
    // An incomplete character at the end waits for the next read.
    let keep = match std::str::from_utf8(&buf) {
        Ok(_) => buf.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => buf.len(),
    };
    buf.truncate(keep);
    let data = String::from_utf8_lossy(&buf).into_owned();
    LogChunk { id: req.id, data, next_offset: offset + keep as u64, size, error: None }
}

/// Kills (SIGKILL) every run recorded under a node's work directory, as an agent stops or
/// starts: a run never outlives the agent that watches it. Returns how many it found.
pub fn kill_runs(work_dir: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(work_dir.join("runs")) else { return 0 };
    let mut killed = 0;
    for e in entries.flatten() {
        let pidfile = e.path().join("pgid");
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            if let Ok(pgid) = text.trim().parse::<i32>() {
                signal_group(pgid, Signal::SIGKILL);
                killed += 1;
            }
            let _ = std::fs::remove_file(&pidfile);
        }
    }
    killed
}

/// The name of a node's cgroups: its name and its work directory's, so two agents serving
/// nodes of the same name on one machine (two control planes, tests) never share one.
pub fn sandbox_scope(node: &str, work_dir: &std::path::Path) -> String {
    let dir = std::fs::canonicalize(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    // FNV-1a: stable across runs and builds, unlike the standard library's hasher.
    let hash = dir
        .as_os_str()
        .as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{node}.{:08x}", hash as u32)
}

/// Kills every run a node's agent left (by process group, and by cgroup where sandboxed), as
/// an agent starts or stops, and removes their private directories. Returns how many it found.
pub fn stop_node_runs(node: &str, work_dir: &std::path::Path, sandbox: Option<&crate::Sandbox>) -> usize {
    let by_group = kill_runs(work_dir);
    let by_cgroup = sandbox.map_or(0, |s| s.reap(&sandbox_scope(node, work_dir)));
    // Their private directories go too, once they are dead: their uids will be other runs'.
    if let Ok(entries) = std::fs::read_dir(work_dir.join("runs")) {
        for e in entries.flatten() {
            let _ = std::fs::remove_dir_all(e.path().join("work"));
        }
    }
    by_group.max(by_cgroup)
}

impl NodeAgent {
    pub fn new(cfg: NodeConfig) -> Result<NodeAgent, AgentError> {
        let http = http_client(cfg.trust.as_ref())?;
        let (exit_tx, exit_rx) = mpsc::unbounded_channel();
        let servers = crate::Servers::parse(&cfg.server);
        let mut agent = NodeAgent::in_host(cfg, http, 0, exit_tx, servers)?;
        agent.exit_rx = Some(exit_rx);
        Ok(agent)
    }

    /// A node served by a host ([`crate::host::AgentHost`]): it shares the host's HTTP client and
    /// sends its run ends, tagged `index`, to the host's channel.
    pub(crate) fn in_host(
        cfg: NodeConfig,
        http: reqwest::Client,
        index: usize,
        exit_tx: mpsc::UnboundedSender<(usize, RunExit)>,
        servers: Arc<crate::Servers>,
    ) -> Result<NodeAgent, AgentError> {
        let mut cfg = cfg;
        // Absolute: runs are told where they work, and a run's private /tmp must not hide it.
        cfg.work_dir = std::path::absolute(&cfg.work_dir).map_err(io(&cfg.work_dir))?;
        // The credential and every run's output are the agent's; runs pass through to their
        // own directories only.
        agent_dir(&cfg.work_dir).map_err(io(&cfg.work_dir))?;
        let runs = cfg.work_dir.join("runs");
        agent_dir(&runs).map_err(io(&runs))?;
        {
            // The agent's own, whatever made it: runs may pass, not list.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&runs, std::fs::Permissions::from_mode(0o711)).map_err(io(&runs))?;
        }
        let credential = std::fs::read_to_string(cfg.work_dir.join("credential")).ok().map(|s| s.trim().to_string());
        let scope = sandbox_scope(&cfg.name, &cfg.work_dir);
        let agent = NodeAgent {
            scope,
            cfg,
            http,
            servers,
            credential: credential.filter(|c| !c.is_empty()),
            heartbeat: Duration::from_secs(5),
            lease: Duration::from_secs(20),
            renewed_at: None,
            live: HashMap::new(),
            exited: Vec::new(),
            exits_sent: 0,
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            power_cap: None,
            cpu_cap: None,
            exit_tx,
            exit_rx: None,
            index,
            pruned_at: None,
        };
        agent.reap_leftovers();
        Ok(agent)
    }

    /// Kills process groups an earlier agent of this node left (it was killed itself).
    fn reap_leftovers(&self) {
        let killed = stop_node_runs(&self.cfg.name, &self.cfg.work_dir, self.cfg.sandbox.as_deref());
        if killed > 0 {
            tracing::info!(node = %self.cfg.name, runs = killed, "killed runs left by an earlier agent");
        }
        if let Some(images) = self.images() {
            let removed = images.reap(&self.scope);
            if removed > 0 {
                tracing::info!(node = %self.cfg.name, containers = removed, "removed containers left by an earlier agent");
            }
        }
    }

    /// The container runtime, where runs are sandboxed (an image's run needs a uid of its own).
    fn images(&self) -> Option<&Arc<crate::ImageRuntime>> {
        self.cfg.images.as_ref().filter(|_| self.cfg.sandbox.is_some())
    }

    pub(crate) async fn join(&mut self) -> Result<String, AgentError> {
        let body = AgentJoin {
            join_token: self.cfg.join_token.clone(),
            node: self.cfg.name.clone(),
            address: self.cfg.address.clone(),
            gpus: self.cfg.gpus.clone(),
            runtimes: self.images().map(|i| vec![i.name().to_string()]).unwrap_or_default(),
        };
        let (at, server) = self.servers.current();
        let r = match self.http.post(format!("{server}/v1/agent/join")).json(&body).send().await {
            Ok(r) => r,
            Err(e) => {
                self.servers.failed(at);
                return Err(e.into());
            }
        };
        if crate::Servers::not_leading(r.status()) {
            self.servers.failed(at);
            return Err(AgentError::NotLeading(format!("{server} answered {}", r.status())));
        }
        if r.status() == reqwest::StatusCode::CONFLICT {
            // This node's lease still runs at the server (its old credential was dropped): the
            // join is taken once it runs out.
            return Err(AgentError::NodeHeld(r.text().await.unwrap_or_default()));
        }
        if !r.status().is_success() {
            let status = r.status();
            let text = r.text().await.unwrap_or_default();
            return Err(AgentError::Refused(format!("{status}: {text}")));
        }
        let joined: AgentJoined = r.json().await?;
        let path = self.cfg.work_dir.join("credential");
        write_secret(&path, &joined.credential).map_err(io(&path))?;
        self.heartbeat = Duration::from_millis(joined.heartbeat_ms.max(50));
        self.lease = Duration::from_millis(joined.lease_ms.max(100));
        tracing::debug!(node = %self.cfg.name, heartbeat_ms = joined.heartbeat_ms, lease_ms = joined.lease_ms, "node joined");
        self.credential = Some(joined.credential.clone());
        Ok(joined.credential)
    }

    /// An estimate of the node's draw when NVML cannot measure it: the energy model's figures
    /// for the GPU model, idle GPUs at their idle draw and busy ones at their typical draw, held
    /// under the power cap.
    fn power_estimate(&self) -> f64 {
        let busy: usize = self.live.values().map(|l| l.gpus).sum();
        estimate_watts(&self.cfg.gpus, busy, self.power_cap)
    }

    fn power(&self) -> f64 {
        if self.cfg.use_nvml
            && let Ok(w) = crate::inventory::power_draw()
        {
            return w;
        }
        self.power_estimate()
    }

    fn start(&mut self, a: &Assignment) {
        let key = a.run;
        if self.live.contains_key(&key) || self.seen.contains(&key) {
            return;
        }
        self.seen.insert(key);
        self.seen_order.push_back(key);
        while self.seen_order.len() > 4096 {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        let dir = self.run_dir(&key);
        let tx = self.exit_tx.clone();
        let index = self.index;
        let pgid = Arc::new(AtomicI32::new(SPAWNING));
        let run_sandbox: Arc<OnceLock<Arc<RunSandbox>>> = Arc::default();
        let run_name = format!("{}-{}-{}", key.job_id, key.generation, key.member);
        let images = self.images().cloned();
        let container = match (&a.image, &images) {
            (Some(_), Some(images)) => Some((images.clone(), crate::image::container_name(&self.scope, &run_name))),
            _ => None,
        };
        self.live.insert(
            key,
            Live { pgid: pgid.clone(), sandbox: run_sandbox.clone(), gpus: a.gpus.len(), container: container.clone() },
        );
        let (a, node, sandbox) = (a.clone(), self.cfg.name.clone(), self.cfg.sandbox.clone());
        let scope = self.scope.clone();
        let spawn_container = container.clone();
        let gpus = self.cfg.gpus.clone();
        let max_output = self.cfg.max_output_bytes;
        // Spawning (fork, exec, the run's files) blocks: off the heartbeat loop, so a node given
        // many runs at once keeps renewing its lease.
        tokio::spawn(async move {
            let spawn_dir = dir.clone();
            let command = a.command.clone();
            let spawn_node = node.clone();
            type Spawned = (tokio::process::Child, Option<RunSandbox>, [PathBuf; 2]);
            let spawned = spawner::run(move || -> std::io::Result<Spawned> {
                let node = spawn_node;
                let dir = spawn_dir;
                if a.image.is_some() && spawn_container.is_none() {
                    return Err(std::io::Error::other("this node runs no images (no container runtime, or not sandboxed)"));
                }
                // The run's directory is the agent's: its output and bookkeeping, which the run
                // cannot replace; the run works in `work/`, its own.
                agent_dir(&dir)?;
                // The agent's alone (0600): other runs pass through this directory.
                let (stdout, stderr) = (dir.join("stdout"), dir.join("stderr"));
                private_file(&stdout)?;
                private_file(&stderr)?;
                let work = dir.join("work");
                let boxed = match &sandbox {
                    Some(sandbox) => {
                        let limits = Limits {
                            cpu_milli: a.cpu_milli,
                            memory_mib: a.memory_mib,
                            gpus: a.gpus.clone(),
                            gpu_share: a.gpu_milli.is_some(),
                        };
                        Some(sandbox.prepare(&scope, &run_name, &limits, &work).map_err(std::io::Error::other)?)
                    }
                    None => {
                        std::fs::create_dir_all(&work)?;
                        None
                    }
                };
                let tmp = match &boxed {
                    Some(b) if b.private_tmp() => "/tmp".to_string(),
                    _ => work.display().to_string(),
                };
                let mut cmd = match (&boxed, &spawn_container, &a.image, &sandbox) {
                    (Some(b), Some((images, name)), Some(image), Some(sandbox)) => {
                        // In its image: podman (root) starts it as the run's uid, with the run's
                        // limits; the environment goes by a file only the agent reads.
                        let mut env = run_environment(&a, &node, &gpus, Path::new("/work"), "/tmp");
                        if !a.env.contains_key("PATH") {
                            // The image's own PATH holds.
                            env.retain(|(k, _)| k != "PATH");
                        }
                        let (text, left_out) = crate::image::env_file_text(&env);
                        if !left_out.is_empty() {
                            tracing::warn!(node = %node, job = key.job_id, variables = ?left_out, "variables with line breaks cannot reach a run in an image");
                        }
                        let env_file = dir.join("env");
                        std::io::Write::write_all(&mut private_file(&env_file)?, text.as_bytes())?;
                        let devices = sandbox.gpu_device_files(&a.gpus);
                        let run = crate::image::ImageRun {
                            name,
                            image,
                            program: &a.command,
                            args: &a.args,
                            uid: b.uid(),
                            cpu_milli: a.cpu_milli,
                            memory_mib: a.memory_mib,
                            pids_max: sandbox.pids_max(),
                            devices: &devices,
                            work: &work,
                            env_file: &env_file,
                        };
                        let mut cmd = images.command(&run);
                        cmd.process_group(0);
                        cmd
                    }
                    // The launcher makes the run a session (and process group) of its own.
                    (Some(b), ..) => {
                        let mut cmd = b.command(&a.command, &a.args);
                        cmd.env_clear().envs(run_environment(&a, &node, &gpus, &work, &tmp));
                        cmd
                    }
                    (None, ..) => {
                        let env = run_environment(&a, &node, &gpus, &work, &tmp);
                        // Found here as the run's PATH says: a bare name under a PATH of the run's
                        // own would make the spawn fork the whole agent (to search in the child)
                        // instead of a cheap posix_spawn. The run still sees its name as given.
                        let mut cmd = tokio::process::Command::new(program_path(&a.command, &env, &work));
                        cmd.arg0(&a.command).args(&a.args).process_group(0);
                        cmd.env_clear().envs(env);
                        cmd
                    }
                };
                // Through the agent, which keeps at most `max_output_bytes` of each.
                cmd.current_dir(&work).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
                let child = match cmd.spawn() {
                    Ok(child) => child,
                    Err(e) => {
                        if let Some(b) = boxed {
                            b.release();
                        }
                        return Err(e);
                    }
                };
                if let Some(pid) = child.id() {
                    let _ = std::fs::write(dir.join("pgid"), pid.to_string());
                }
                Ok((child, boxed, [stdout, stderr]))
            })
            .await;
            let (mut child, boxed, [stdout, stderr]) = match spawned {
                Ok(spawned) => spawned,
                Err(e) => {
                    tracing::warn!(node = %node, job = key.job_id, error = %e, "run cannot start");
                    let _ = std::fs::write(dir.join("stderr"), format!("drome: cannot start {command}: {e}\n"));
                    let _ = tx.send((index, RunExit { run: key, code: 127 }));
                    return;
                }
            };
            let boxed = boxed.map(Arc::new);
            if let Some(b) = &boxed {
                let _ = run_sandbox.set(b.clone());
            }
            let group = child.id().map(|p| p as i32).unwrap_or(SPAWNING);
            if pgid.compare_exchange(SPAWNING, group, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                // Stopped while it was being spawned.
                signal_group(group, Signal::SIGKILL);
                if let Some(b) = &boxed {
                    b.signal(Signal::SIGKILL);
                }
            }
            let copiers = [
                child.stdout.take().map(|pipe| tokio::spawn(keep_output(pipe, stdout, max_output))),
                child.stderr.take().map(|pipe| tokio::spawn(keep_output(pipe, stderr, max_output))),
            ];
            tracing::debug!(node = %node, job = key.job_id, member = key.member, generation = key.generation, pgid = group, "run started");
            let (code, exited) = match child.wait().await {
                Ok(status) => {
                    use std::os::unix::process::ExitStatusExt;
                    (status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)), status.code().is_some())
                }
                Err(_) => (255, false),
            };
            // Whatever the leader left behind goes with it: its process group and, sandboxed,
            // everything in its cgroup, before the end is reported.
            signal_group(group, Signal::SIGKILL);
            if let Some((images, name)) = container
                && !exited
            {
                // podman that ended by itself took its container (`--rm`); one killed leaves it.
                let _ = tokio::task::spawn_blocking(move || images.remove(&name)).await;
            }
            drop(run_sandbox);
            if let Some(b) = boxed {
                // Its uid is let go when the last holder (the live run's entry) drops it.
                let _ = tokio::task::spawn_blocking(move || b.release()).await;
            }
            // Its output is on disk before its end is reported; a process that left the run's
            // group and holds the pipes open is not waited for long.
            for copier in copiers.into_iter().flatten() {
                let abort = copier.abort_handle();
                if tokio::time::timeout(Duration::from_secs(2), copier).await.is_err() {
                    abort.abort();
                }
            }
            let _ = std::fs::remove_file(dir.join("pgid"));
            let _ = tx.send((index, RunExit { run: key, code }));
        });
    }

    fn kill(&self, key: &RunKey) {
        let Some(live) = self.live.get(key) else { return };
        // Not spawned yet: the spawner kills it as soon as it is.
        if live.pgid.compare_exchange(SPAWNING, KILL_ON_SPAWN, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            return;
        }
        let pgid = live.pgid.load(Ordering::SeqCst);
        tracing::debug!(node = %self.cfg.name, job = key.job_id, member = key.member, pgid, "killing run");
        stop_run(pgid, live.sandbox.get().cloned(), live.container.clone(), self.cfg.kill_grace);
    }

    fn run_dir(&self, key: &RunKey) -> PathBuf {
        self.cfg.work_dir.join("runs").join(format!("{}-{}-{}", key.job_id, key.generation, key.member))
    }

    /// Answers a log request from the run's output file, in a task of its own.
    fn send_log(&self, credential: &str, req: LogRequest) {
        let path = self.run_dir(&req.run).join(req.stream.as_str());
        let (http, url, credential) =
            (self.http.clone(), format!("{}/v1/agent/logs", self.servers.current().1), credential.to_string());
        tokio::spawn(async move {
            let chunk = read_chunk(&path, &req);
            if let Err(e) = http.post(url).bearer_auth(credential).json(&chunk).send().await {
                tracing::warn!(job = req.run.job_id, error = %e, "cannot send run output");
            }
        });
    }

    /// Applies the GPU power cap the server asks for: through NVML on real GPUs (where the agent
    /// has the right), recorded for declared ones (the draw estimate follows it).
    fn apply_cap(&mut self, cap: Option<f64>) {
        if cap == self.power_cap {
            return;
        }
        self.power_cap = cap;
        if self.cfg.use_nvml
            && let Err(e) = crate::inventory::set_power_limit(cap)
        {
            tracing::warn!(node = %self.cfg.name, watts = ?cap, error = %e, "cannot apply the power cap; recorded only");
            return;
        }
        tracing::debug!(node = %self.cfg.name, watts = ?cap, "gpu power cap set");
    }

    /// Applies the CPU package power limit the server asks for: through RAPL on real hardware
    /// (where the agent has the right), recorded for declared nodes.
    fn apply_cpu_cap(&mut self, cap: Option<f64>) {
        if cap == self.cpu_cap {
            return;
        }
        self.cpu_cap = cap;
        if self.cfg.use_nvml
            && let Err(e) = crate::rapl::set_package_limit(std::path::Path::new(crate::rapl::POWERCAP_ROOT), cap)
        {
            tracing::warn!(node = %self.cfg.name, watts = ?cap, error = %e, "cannot apply the cpu power cap; recorded only");
            return;
        }
        tracing::debug!(node = %self.cfg.name, watts = ?cap, "cpu power cap set");
    }

    /// When the lease runs out without a renewal while runs are live.
    pub(crate) fn fence_at(&self) -> Option<tokio::time::Instant> {
        if self.live.is_empty() {
            return None;
        }
        self.renewed_at.map(|t| t + self.lease)
    }

    /// The lease ran out: the server may start this node's runs elsewhere after its grace, so
    /// they stop now (SIGKILL), never to run twice at once. Their exits are reported later.
    pub(crate) fn fence(&mut self) {
        let mut pgids = Vec::new();
        for l in self.live.values() {
            if l.pgid.compare_exchange(SPAWNING, KILL_ON_SPAWN, Ordering::SeqCst, Ordering::SeqCst).is_err() {
                pgids.push((l.pgid.load(Ordering::SeqCst), l.sandbox.get().cloned()));
            }
        }
        pgids.retain(|&(p, _)| p > 1);
        tracing::warn!(node = %self.cfg.name, runs = pgids.len(), "lease not renewed in time: runs stopped");
        for (pgid, sandbox) in pgids {
            signal_group(pgid, Signal::SIGKILL);
            if let Some(s) = sandbox {
                s.signal(Signal::SIGKILL);
                tokio::task::spawn_blocking(move || s.kill_all());
            }
        }
        // Fenced once per lapse: a renewal arms it again.
        self.renewed_at = None;
    }

    pub(crate) fn name(&self) -> &str {
        &self.cfg.name
    }

    pub(crate) fn credential(&self) -> Option<&str> {
        self.credential.as_deref()
    }

    /// Forgets the credential (the server refused it): the node joins again.
    pub(crate) fn drop_credential(&mut self) {
        tracing::warn!(node = %self.cfg.name, "credential refused; joining again");
        self.credential = None;
    }

    /// A run of this node ended: reported with the next heartbeat, and every one after until the
    /// server acknowledges it.
    pub(crate) fn take_exit(&mut self, e: RunExit) {
        self.live.remove(&e.run);
        self.exited.push(e);
    }

    pub(crate) fn has_live_runs(&self) -> bool {
        !self.live.is_empty()
    }

    /// Whether ends wait that the server has not seen once.
    pub(crate) fn has_news(&self) -> bool {
        self.exited.len() > self.exits_sent
    }

    /// The node's heartbeat now.
    pub(crate) fn heartbeat_body(&self) -> Heartbeat {
        Heartbeat {
            running: self.live.keys().copied().collect(),
            exited: self.exited.clone(),
            power_watts: Some(self.power()),
            gpu_power_cap_watts: self.power_cap,
            cpu_power_cap_watts: self.cpu_cap,
            wait_ms: if self.has_news() { 0 } else { self.heartbeat.as_millis() as u64 },
        }
    }

    pub(crate) fn heartbeat_period(&self) -> Duration {
        self.heartbeat
    }

    /// A heartbeat sent at `sent_at` with `sent_exits` ends was answered: the lease runs from
    /// then.
    pub(crate) fn renewed(&mut self, sent_at: tokio::time::Instant, lease_ms: u64, sent_exits: usize) {
        self.renewed_at = Some(sent_at);
        self.lease = Duration::from_millis(lease_ms.max(100));
        self.exits_sent = self.exits_sent.max(sent_exits).min(self.exited.len());
        self.prune_output();
    }

    /// Every ten minutes, ended runs' output past its keeping goes (off the heartbeat loop).
    fn prune_output(&mut self) {
        const EVERY: Duration = Duration::from_secs(600);
        let Some(keep) = self.cfg.keep_output else { return };
        if self.pruned_at.is_some_and(|t| t.elapsed() < EVERY) {
            return;
        }
        self.pruned_at = Some(tokio::time::Instant::now());
        let live: HashSet<String> =
            self.live.keys().map(|k| format!("{}-{}-{}", k.job_id, k.generation, k.member)).collect();
        let (runs, node) = (self.cfg.work_dir.join("runs"), self.cfg.name.clone());
        tokio::task::spawn_blocking(move || {
            let removed = prune_runs(&runs, &live, keep);
            if removed > 0 {
                tracing::info!(node = %node, runs = removed, "removed ended runs' output past its keeping");
            }
        });
    }

    /// Does what the server's answer says: forgets acknowledged ends, kills, starts, applies
    /// caps, sends output asked for.
    pub(crate) fn apply(&mut self, reply: HeartbeatReply) {
        // Ends are forgotten only once the server says it recorded them; until then they go out
        // again with every heartbeat, without making it go out at once.
        if !reply.acked.is_empty() {
            let acked: HashSet<RunKey> = reply.acked.iter().copied().collect();
            let sent_kept = self.exited[..self.exits_sent].iter().filter(|e| !acked.contains(&e.run)).count();
            self.exited.retain(|e| !acked.contains(&e.run));
            self.exits_sent = sent_kept;
        }
        for k in &reply.kill {
            self.kill(k);
        }
        for a in &reply.assign {
            self.start(a);
        }
        if let Some(credential) = reply.credential {
            // A rotation: used only once kept (0600), so a restarted agent has what the server
            // will take; until then the old one works, and the server sends the new one again.
            let path = self.cfg.work_dir.join("credential");
            match write_secret(&path, &credential) {
                Ok(()) => {
                    tracing::debug!(node = %self.cfg.name, "node credential rotated");
                    self.credential = Some(credential);
                }
                Err(e) => {
                    tracing::warn!(node = %self.cfg.name, error = %e, "cannot keep the node's new credential; keeping the old")
                }
            }
        }
        self.apply_cap(reply.gpu_power_cap_watts);
        self.apply_cpu_cap(reply.cpu_power_cap_watts);
        if let Some(credential) = self.credential.clone() {
            for req in reply.logs {
                self.send_log(&credential, req);
            }
        }
    }

    /// Stops the runs if the lease ran out; when it will, if runs are live.
    pub(crate) fn check_fence(&mut self, now: tokio::time::Instant) -> Option<tokio::time::Instant> {
        if self.fence_at().is_some_and(|t| t <= now) {
            self.fence();
        }
        self.fence_at()
    }

    /// Joins (unless it holds a credential) and heartbeats until the process ends.
    pub async fn run(mut self) -> Result<(), AgentError> {
        let mut backoff = Backoff::default();
        let Some(mut exit_rx) = self.exit_rx.take() else {
            return Err(AgentError::Refused("this node is served by a host".into()));
        };
        loop {
            let credential = match self.credential.clone() {
                Some(c) => c,
                None => match self.join().await {
                    Ok(c) => c,
                    Err(AgentError::Refused(m)) => return Err(AgentError::Refused(m)),
                    Err(e) => {
                        tracing::warn!(node = %self.cfg.name, error = %e, "join failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                },
            };
            while let Ok((_, e)) = exit_rx.try_recv() {
                self.take_exit(e);
            }
            let beat = self.heartbeat_body();
            let sent_at = tokio::time::Instant::now();
            let fence_at = self.check_fence(sent_at);
            let sent_exits = beat.exited.len();
            let (at, server) = self.servers.current();
            let request =
                self.http.post(format!("{server}/v1/agent/heartbeat")).bearer_auth(&credential).json(&beat).send();
            let response = tokio::select! {
                r = request => r,
                Some((_, e)) = exit_rx.recv() => {
                    // Report an exit at once: the held heartbeat is dropped (the server resends
                    // anything it carried).
                    self.take_exit(e);
                    continue;
                }
                _ = tokio::time::sleep_until(fence_at.unwrap_or(sent_at)), if fence_at.is_some() => {
                    // The server has not answered within the lease: it may already count the
                    // node as lost.
                    self.fence();
                    continue;
                }
            };
            let reply = match response {
                Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => {
                    self.drop_credential();
                    continue;
                }
                Ok(r) if r.status().is_success() => r.json::<HeartbeatReply>().await,
                Ok(r) => {
                    if crate::Servers::not_leading(r.status()) {
                        self.servers.failed(at);
                    }
                    tracing::warn!(node = %self.cfg.name, status = %r.status(), "heartbeat refused; retrying");
                    backoff.wait().await;
                    continue;
                }
                Err(e) => {
                    self.servers.failed(at);
                    Err(e)
                }
            };
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(node = %self.cfg.name, error = %e, "heartbeat failed; retrying");
                    backoff.wait().await;
                    continue;
                }
            };
            backoff.reset();
            self.renewed(sent_at, reply.lease_ms, sent_exits);
            self.apply(reply);
        }
    }
}

/// Writes `secret` to `path` readable by its owner only (0600), replacing what was there: a
/// node's credential is nobody else's to read, a job's included.
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    // Written aside and renamed over: a crash leaves the old secret or the new, never half.
    let aside = path.with_extension("new");
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&aside)?;
    // A file made before (with wider rights) keeps its mode on open: narrow it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(secret.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&aside, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_name_is_found_in_the_runs_own_path() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("drome-program-path-{}", std::process::id()));
        let (bin, work) = (dir.join("bin"), dir.join("work"));
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        for (name, mode) in [("tool", 0o755), ("data", 0o644)] {
            std::fs::write(bin.join(name), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(bin.join(name), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        std::fs::write(work.join("local"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(work.join("local"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let env =
            |path: &str| vec![("PATH".to_string(), "/nowhere".to_string()), ("PATH".to_string(), path.to_string())];
        let on_path = format!("/nowhere:{}", bin.display());
        // The last PATH holds, as it does for the run.
        assert_eq!(program_path("tool", &env(&on_path), &work), bin.join("tool"));
        // Not executable, or found nowhere: left as given, so the spawn fails as before.
        assert_eq!(program_path("data", &env(&on_path), &work), PathBuf::from("data"));
        assert_eq!(program_path("absent", &env(&on_path), &work), PathBuf::from("absent"));
        // An empty entry is the run's own directory; a path is never searched.
        assert_eq!(program_path("local", &env(&format!("{on_path}:")), &work), work.join("local"));
        assert_eq!(program_path("./tool", &env(&on_path), &work), PathBuf::from("./tool"));
        assert_eq!(program_path("tool", &[], &work), PathBuf::from("tool"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn output_past_the_limit_is_read_and_dropped() {
        let dir = std::env::temp_dir().join(format!("drome-keep-output-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        let input = vec![b'x'; 200_000];
        private_file(&path).unwrap();
        let dropped = keep_output(&input[..], path.clone(), Some(70_000)).await;
        assert_eq!(dropped, 130_000);
        let kept = std::fs::read_to_string(&path).unwrap();
        assert!(kept.starts_with(&"x".repeat(70_000)) && !kept[70_000..].contains('x'), "{}", &kept[70_000..]);
        assert!(kept.ends_with("[drome: 130000 bytes of output dropped]\n"), "{}", &kept[70_000..]);
        // Without a limit, all of it.
        private_file(&path).unwrap();
        assert_eq!(keep_output(&input[..], path.clone(), None).await, 0);
        assert_eq!(std::fs::read(&path).unwrap(), input);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ended_runs_output_goes_after_its_keeping_live_runs_stay() {
        let dir = std::env::temp_dir().join(format!("drome-prune-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = std::time::SystemTime::now() - Duration::from_secs(3 * 86_400);
        for run in ["1-1-0", "2-1-0", "3-1-0"] {
            std::fs::create_dir_all(dir.join(run)).unwrap();
            let f = std::fs::File::create(dir.join(run).join("stdout")).unwrap();
            if run != "3-1-0" {
                f.set_modified(old).unwrap();
                std::fs::File::open(dir.join(run)).unwrap().set_modified(old).unwrap();
            }
        }
        let live: HashSet<String> = ["2-1-0".to_string()].into_iter().collect();
        assert_eq!(prune_runs(&dir, &live, Duration::from_secs(86_400)), 1);
        assert!(!dir.join("1-1-0").exists(), "an old ended run's output goes");
        assert!(dir.join("2-1-0").exists(), "a live run stays, however old");
        assert!(dir.join("3-1-0").exists(), "recent output stays");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_estimate_follows_busy_gpus_and_the_cap() {
        let gpus = crate::inventory::declared_gpus(8, "H200");
        let idle = estimate_watts(&gpus, 0, None);
        let busy = estimate_watts(&gpus, 8, None);
        // H200: ~75 W idle, 80% of its 700 W limit busy.
        assert!((idle - 8.0 * 75.0).abs() < 1.0, "{idle}");
        assert!((busy - 8.0 * 560.0).abs() < 1.0, "{busy}");
        let half = estimate_watts(&gpus, 4, None);
        assert!((half - (idle + busy) / 2.0).abs() < 1.0, "{half}");
        let capped = estimate_watts(&gpus, 8, Some(300.0));
        assert!((capped - 8.0 * 300.0).abs() < 1e-9, "{capped}");
        // A cap under the idle draw does not make an idle GPU draw less.
        assert_eq!(estimate_watts(&gpus, 0, Some(10.0)), idle);
    }

    #[test]
    fn a_run_gets_only_its_environment_and_a_share_its_mps_limits() {
        let gpus = crate::inventory::declared_gpus(8, "H200");
        let mut a = Assignment {
            run: RunKey { job_id: 7, member: 0, generation: 1 },
            members: 1,
            command: "python".into(),
            args: Vec::new(),
            env: [("DROME_RANK".to_string(), "0".to_string()), ("PATH".to_string(), "/opt/bin".to_string())]
                .into_iter()
                .collect(),
            gpus: vec![3],
            gpu_milli: Some(250),
            cpu_milli: 4_000,
            memory_mib: 8_192,
            image: None,
        };
        let env: HashMap<String, String> =
            run_environment(&a, "n1", &gpus, std::path::Path::new("/w"), "/tmp").into_iter().collect();
        assert_eq!(env["CUDA_VISIBLE_DEVICES"], "3");
        assert_eq!(env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "25");
        // A quarter of an H200's 141 GiB.
        let mib = gpus[3].memory_mib / 4;
        assert_eq!(env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], format!("0={mib}M"));
        assert_eq!(
            (env["HOME"].as_str(), env["DROME_WORK_DIR"].as_str(), env["PATH"].as_str()),
            ("/w", "/w", "/opt/bin")
        );
        assert!(!env.contains_key("DROME_JOIN_TOKEN") && !env.contains_key("CARGO"));
        a.gpu_milli = None;
        let env: HashMap<String, String> =
            run_environment(&a, "n1", &gpus, std::path::Path::new("/w"), "/tmp").into_iter().collect();
        assert!(!env.contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    }

    #[test]
    fn chunks_of_output_stop_before_a_cut_character() {
        let dir = std::env::temp_dir().join(format!("drome-agent-chunk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stdout");
        std::fs::write(&path, "ab\u{e9}cd").unwrap(); // é is 2 bytes: offsets 2 and 3
        let req = |offset, limit| LogRequest {
            id: 7,
            run: RunKey { job_id: 1, member: 0, generation: 1 },
            stream: api::LogStream::Stdout,
            offset,
            limit,
        };
        let c = read_chunk(&path, &req(0, 3));
        assert_eq!((c.data.as_str(), c.next_offset, c.size, c.id), ("ab", 2, 6, 7));
        let c = read_chunk(&path, &req(2, 100));
        assert_eq!((c.data.as_str(), c.next_offset), ("\u{e9}cd", 6));
        let c = read_chunk(&path, &req(60, 100));
        assert_eq!((c.data.as_str(), c.next_offset), ("", 6));
        let missing = read_chunk(&dir.join("nope"), &req(0, 10));
        assert!(missing.error.is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
