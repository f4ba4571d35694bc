//! Sandboxed runs. Each run executes as an unprivileged uid of its own (claimed from a range,
//! machine-wide, for as long as the run lives), inside cgroups that hold its CPUs, memory,
//! process count and device access, in a session, a mount namespace with a private `/dev/shm`
//! (and `/tmp`) and an IPC namespace of its own, with no capabilities and no way to gain any
//! (`no_new_privs`). Stopping a run kills its whole
//! cgroup, so nothing it forked survives, whatever process group or session it made.
//!
//! cgroup v1 (one hierarchy per controller) and v2 (one unified hierarchy) are both handled.
//! Device access is confined under v1 (the `devices` controller); v2 confines devices only
//! through eBPF programs, which drome does not load: there a run's GPUs are its
//! `CUDA_VISIBLE_DEVICES` only, and the agent says so when it starts.
//!
//! Knows nothing about the server: it turns a run's limits into kernel objects.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Why a run cannot be sandboxed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("sandboxing runs needs root (the agent runs as uid {0})")]
    NotRoot(u32),
    #[error("no cgroup hierarchy with the {0} controller is mounted")]
    NoController(&'static str),
    #[error("runs' uids must be {{first}} >= 1000 and {{count}} >= 1 below 2^32 - 1, not {first} and {count}")]
    UidRange { first: u32, count: u32 },
    #[error("every uid of {first}..{last} is held by a live run")]
    NoFreeUid { first: u32, last: u32 },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io { path: path.display().to_string(), source }
}

/// Where runs' uids come from and where the GPUs' device files are.
#[derive(Clone, Debug)]
pub struct SandboxOptions {
    /// The first uid (and gid) runs get; `uid_count` of them in a row are drome's.
    pub uid_first: u32,
    pub uid_count: u32,
    /// Lock files, one per uid in use, shared by every agent process of the machine.
    pub lock_dir: PathBuf,
    /// Where the GPU device files are (`nvidia0`, `nvidiactl`, ...).
    pub device_dir: PathBuf,
    /// Where the cgroup hierarchies are mounted.
    pub cgroup_mount: PathBuf,
    /// Processes and threads a run may hold at once.
    pub pids_max: u64,
    /// The program that enters a run's sandbox and execs the run ([`enter_and_exec`]), with
    /// the arguments before its own: `drome sandbox-exec` by default.
    pub launcher: (PathBuf, Vec<String>),
}

impl Default for SandboxOptions {
    fn default() -> Self {
        SandboxOptions {
            uid_first: 200_000,
            uid_count: 65_536,
            lock_dir: PathBuf::from("/run/drome/uids"),
            device_dir: PathBuf::from("/dev"),
            cgroup_mount: PathBuf::from("/sys/fs/cgroup"),
            pids_max: 16_384,
            launcher: default_launcher(),
        }
    }
}

/// `drome-sandbox-exec` where it lies beside this program (a small program: quick to start on
/// every run's path), else this program's `sandbox-exec` (`drome sandbox-exec`).
fn default_launcher() -> (PathBuf, Vec<String>) {
    let this = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("drome"));
    let small = this.with_file_name("drome-sandbox-exec");
    if small.is_file() { (small, Vec::new()) } else { (this, vec!["sandbox-exec".to_string()]) }
}

/// What one run may use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPU time, in thousandths of a CPU (0: not limited).
    pub cpu_milli: u64,
    /// Memory, swap included where the kernel counts it (0: not limited).
    pub memory_mib: u64,
    /// GPU indexes on the node: the only GPU device files the run may open.
    pub gpus: Vec<u32>,
    /// A share of a GPU: the run reaches the node's MPS daemon, whose pipes are under /tmp, so
    /// its /tmp stays the node's.
    pub gpu_share: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    Pids,
    Devices,
    Freezer,
}

impl Controller {
    fn name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::Pids => "pids",
            Controller::Devices => "devices",
            Controller::Freezer => "freezer",
        }
    }
}

#[derive(Clone, Debug)]
enum Hierarchy {
    /// One hierarchy: drome's groups under `base`.
    V2 { base: PathBuf },
    /// A hierarchy per controller, drome's groups under each `base`.
    V1 { bases: Vec<(Controller, PathBuf)> },
}

/// The machine's sandbox: its cgroup layout and its range of uids.
#[derive(Debug)]
pub struct Sandbox {
    opts: SandboxOptions,
    hierarchy: Hierarchy,
    next_uid: AtomicU32,
}

/// Device numbers every run may use: null, zero, full, random, urandom, tty, ptmx, ptys.
const BASIC_DEVICES: &[&str] =
    &["c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm", "c 5:0 rwm", "c 5:2 rwm", "c 136:* rwm"];

/// Device files every run finds in its own `/dev`, as the node has them.
const BASIC_DEVICE_FILES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

/// GPU device files every GPU run needs besides its own `nvidiaN`.
const GPU_SHARED_DEVICES: &[&str] = &["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset"];

/// A path component from a name: what is not `[A-Za-z0-9._-]` becomes `_`.
fn component(name: &str) -> String {
    let s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect();
    if s.is_empty() || s == "." || s == ".." { format!("_{s}") } else { s }
}

fn write(path: &Path, value: &str) -> Result<(), SandboxError> {
    std::fs::OpenOptions::new().write(true).open(path).and_then(|mut f| f.write_all(value.as_bytes())).map_err(io(path))
}

/// The cgroup mounts listed in `/proc/self/mounts`: v2 mount points, and v1 ones with their
/// controllers.
fn cgroup_mounts(under: &Path) -> (Vec<PathBuf>, Vec<(PathBuf, Vec<String>)>) {
    let text = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let (mut v2, mut v1) = (Vec::new(), Vec::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 || !Path::new(f[1]).starts_with(under) {
            continue;
        }
        match f[2] {
            "cgroup2" => v2.push(PathBuf::from(f[1])),
            "cgroup" => v1.push((PathBuf::from(f[1]), f[3].split(',').map(str::to_string).collect())),
            _ => {}
        }
    }
    (v2, v1)
}

impl Sandbox {
    /// The machine's sandbox: needs root and cgroups with the memory, cpu and pids controllers
    /// (v2 where it holds them, v1 otherwise).
    pub fn detect(opts: SandboxOptions) -> Result<Sandbox, SandboxError> {
        let euid = nix::unistd::geteuid().as_raw();
        if euid != 0 {
            return Err(SandboxError::NotRoot(euid));
        }
        if opts.uid_first < 1000
            || opts.uid_count == 0
            || opts.uid_first.checked_add(opts.uid_count).is_none_or(|end| end == u32::MAX)
        {
            return Err(SandboxError::UidRange { first: opts.uid_first, count: opts.uid_count });
        }
        std::fs::create_dir_all(&opts.lock_dir).map_err(io(&opts.lock_dir))?;
        // Root's alone: a run that could open a lock file could hold it, and keep a uid from use.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&opts.lock_dir, std::fs::Permissions::from_mode(0o700))
                .map_err(io(&opts.lock_dir))?;
        }
        let (v2, v1) = cgroup_mounts(&opts.cgroup_mount);
        let needed = [Controller::Memory, Controller::Cpu, Controller::Pids];
        let v2_with = v2.into_iter().find(|m| {
            let have = std::fs::read_to_string(m.join("cgroup.controllers")).unwrap_or_default();
            needed.iter().all(|c| have.split_whitespace().any(|h| h == c.name()))
        });
        let hierarchy = if let Some(root) = v2_with {
            let base = root.join("drome");
            std::fs::create_dir_all(&base).map_err(io(&base))?;
            let enable = "+memory +cpu +pids";
            write(&root.join("cgroup.subtree_control"), enable)?;
            write(&base.join("cgroup.subtree_control"), enable)?;
            Hierarchy::V2 { base }
        } else {
            let mut bases = Vec::new();
            for c in [Controller::Memory, Controller::Cpu, Controller::Pids, Controller::Devices, Controller::Freezer] {
                let Some((mount, _)) = v1.iter().find(|(_, opts)| opts.iter().any(|o| o == c.name())) else {
                    if needed.contains(&c) {
                        return Err(SandboxError::NoController(c.name()));
                    }
                    continue;
                };
                let base = mount.join("drome");
                std::fs::create_dir_all(&base).map_err(io(&base))?;
                bases.push((c, base));
            }
            Hierarchy::V1 { bases }
        };
        let next_uid = AtomicU32::new(opts.uid_first);
        Ok(Sandbox { opts, hierarchy, next_uid })
    }

    /// What the sandbox holds, for the agent's log: `cgroup v1 (memory, cpu, pids, devices,
    /// freezer)`.
    pub fn describe(&self) -> String {
        match &self.hierarchy {
            Hierarchy::V2 { base } => {
                format!("cgroup v2 at {} (memory, cpu, pids; devices not confined)", base.display())
            }
            Hierarchy::V1 { bases } => {
                let names: Vec<&str> = bases.iter().map(|(c, _)| c.name()).collect();
                format!("cgroup v1 ({})", names.join(", "))
            }
        }
    }

    /// The device files a run of `gpus` needs: each GPU's `nvidiaN` and the GPUs' shared ones,
    /// those the node has.
    pub fn gpu_device_files(&self, gpus: &[u32]) -> Vec<PathBuf> {
        if gpus.is_empty() {
            return Vec::new();
        }
        let own = gpus.iter().map(|i| format!("nvidia{i}"));
        own.chain(GPU_SHARED_DEVICES.iter().map(|s| s.to_string()))
            .map(|name| self.opts.device_dir.join(name))
            .filter(|path| char_device_rule(path).is_some())
            .collect()
    }

    /// Processes and threads a run may hold at once.
    pub fn pids_max(&self) -> u64 {
        self.opts.pids_max
    }

    /// Whether runs' device access is confined.
    pub fn confines_devices(&self) -> bool {
        matches!(&self.hierarchy, Hierarchy::V1 { bases } if bases.iter().any(|(c, _)| *c == Controller::Devices))
    }

    /// The cgroup directories of `scope` (a node), one per hierarchy.
    fn scope_dirs(&self, scope: &str) -> Vec<(Controller, PathBuf)> {
        let scope = component(scope);
        match &self.hierarchy {
            Hierarchy::V2 { base } => vec![(Controller::Memory, base.join(scope))],
            Hierarchy::V1 { bases } => bases.iter().map(|(c, b)| (*c, b.join(&scope))).collect(),
        }
    }

    fn claim_uid(&self) -> Result<(u32, File), SandboxError> {
        let count = self.opts.uid_count.max(1);
        for _ in 0..count {
            let offset = self.next_uid.fetch_add(1, Ordering::Relaxed).wrapping_sub(self.opts.uid_first) % count;
            let uid = self.opts.uid_first + offset;
            let path = self.opts.lock_dir.join(uid.to_string());
            let file =
                std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(io(&path))?;
            // Held while the run lives; the kernel lets go if the agent dies.
            if file.try_lock().is_ok() {
                return Ok((uid, file));
            }
        }
        Err(SandboxError::NoFreeUid { first: self.opts.uid_first, last: self.opts.uid_first + count - 1 })
    }

    /// Makes a run's uid, cgroups and private directory `work` (mode 0700, the run's own).
    /// Blocks (file system work).
    pub fn prepare(&self, scope: &str, run: &str, limits: &Limits, work: &Path) -> Result<RunSandbox, SandboxError> {
        let (uid, lock) = self.claim_uid()?;
        let mut run_box = RunSandbox {
            uid,
            v2: self.is_v2(),
            lock: std::sync::Mutex::new(Some(lock)),
            groups: Vec::new(),
            launcher: self.opts.launcher.clone(),
            private_tmp: !limits.gpu_share && !work.starts_with("/tmp") && !work.starts_with("/var/tmp"),
            work: work.to_path_buf(),
            devices: BASIC_DEVICE_FILES
                .iter()
                .map(|name| Path::new("/dev").join(name))
                .chain(self.gpu_device_files(&limits.gpus))
                .collect(),
        };
        for (controller, scope_dir) in self.scope_dirs(scope) {
            let dir = scope_dir.join(component(run));
            if dir.exists() {
                // Left by a run of the same name that was not cleaned up: it goes first.
                kill_group_dir(&dir, self.is_v2(), freezer_of(&self.hierarchy, scope, run).as_deref());
                let _ = std::fs::remove_dir(&dir);
            }
            if self.is_v2() {
                std::fs::create_dir_all(&scope_dir).map_err(io(&scope_dir))?;
                let _ = write(&scope_dir.join("cgroup.subtree_control"), "+memory +cpu +pids");
            }
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            run_box.groups.push((controller, dir.clone()));
            self.limit(controller, &dir, limits)?;
        }
        make_private_dir(work, uid)?;
        Ok(run_box)
    }

    fn is_v2(&self) -> bool {
        matches!(self.hierarchy, Hierarchy::V2 { .. })
    }

    fn limit(&self, controller: Controller, dir: &Path, limits: &Limits) -> Result<(), SandboxError> {
        let bytes = limits.memory_mib.saturating_mul(1 << 20);
        // CPU time per 100 ms period; at least 1 ms, as the kernel asks.
        let quota_us = limits.cpu_milli.saturating_mul(100).max(1000);
        if self.is_v2() {
            if limits.memory_mib > 0 {
                write(&dir.join("memory.max"), &bytes.to_string())?;
                let _ = write(&dir.join("memory.swap.max"), "0");
            }
            if limits.cpu_milli > 0 {
                write(&dir.join("cpu.max"), &format!("{quota_us} 100000"))?;
            }
            write(&dir.join("pids.max"), &self.opts.pids_max.to_string())?;
            return Ok(());
        }
        match controller {
            Controller::Memory if limits.memory_mib > 0 => {
                write(&dir.join("memory.limit_in_bytes"), &bytes.to_string())?;
                // Where swap is counted, it counts too (absent when the kernel does not).
                let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
            }
            Controller::Cpu if limits.cpu_milli > 0 => {
                write(&dir.join("cpu.cfs_period_us"), "100000")?;
                write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
            }
            Controller::Pids => write(&dir.join("pids.max"), &self.opts.pids_max.to_string())?,
            Controller::Devices => {
                write(&dir.join("devices.deny"), "a")?;
                let mut allow: Vec<String> = BASIC_DEVICES.iter().map(|s| s.to_string()).collect();
                if !limits.gpus.is_empty() {
                    let own = limits.gpus.iter().map(|i| format!("nvidia{i}"));
                    let names = own.chain(GPU_SHARED_DEVICES.iter().map(|s| s.to_string()));
                    for name in names {
                        if let Some(rule) = char_device_rule(&self.opts.device_dir.join(&name)) {
                            allow.push(rule);
                        }
                    }
                }
                for rule in allow {
                    write(&dir.join("devices.allow"), &rule)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Kills every run of `scope` (left by an agent that died) and removes their groups.
    /// Returns how many it found.
    pub fn reap(&self, scope: &str) -> usize {
        let mut found = 0;
        for (i, (_, scope_dir)) in self.scope_dirs(scope).into_iter().enumerate() {
            let Ok(entries) = std::fs::read_dir(&scope_dir) else { continue };
            for e in entries.flatten() {
                let dir = e.path();
                if !dir.is_dir() {
                    continue;
                }
                // Everything dies in the first hierarchy; the others are empty by then.
                let freezer = freezer_of(&self.hierarchy, scope, &e.file_name().to_string_lossy());
                kill_group_dir(&dir, self.is_v2(), freezer.as_deref());
                remove_group(&dir);
                found += usize::from(i == 0);
            }
            let _ = std::fs::remove_dir(&scope_dir);
        }
        found
    }
}

/// The run's freezer group under v1, if the freezer is mounted.
fn freezer_of(h: &Hierarchy, scope: &str, run: &str) -> Option<PathBuf> {
    match h {
        Hierarchy::V1 { bases } => bases
            .iter()
            .find(|(c, _)| *c == Controller::Freezer)
            .map(|(_, b)| b.join(component(scope)).join(component(run))),
        Hierarchy::V2 { .. } => None,
    }
}

/// `c MAJOR:MINOR rwm` for a character device file, if `path` is one.
fn char_device_rule(path: &Path) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::metadata(path).ok()?;
    if !m.file_type().is_char_device() {
        return None;
    }
    let dev = m.rdev();
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    Some(format!("c {major}:{minor} rwm"))
}

/// `work` made afresh, owned by `uid`, mode 0700; its parent is the agent's (0711: others
/// may pass, not list).
fn make_private_dir(work: &Path, uid: u32) -> Result<(), SandboxError> {
    use std::os::unix::fs::PermissionsExt;
    if work.exists() {
        std::fs::remove_dir_all(work).map_err(io(work))?;
    }
    std::fs::create_dir_all(work).map_err(io(work))?;
    std::os::unix::fs::chown(work, Some(uid), Some(uid)).map_err(io(work))?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o700)).map_err(io(work))?;
    Ok(())
}

/// The pids in a group.
fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .filter(|&p: &i32| p > 1)
        .collect()
}

/// SIGKILLs everything in the group at `dir` until it is empty (at most 2 s): through
/// `cgroup.kill` under v2, frozen first under v1 when the freezer is there (so nothing forks
/// between the listing and the kill). Returns how many processes it killed.
fn kill_group_dir(dir: &Path, v2: bool, freezer: Option<&Path>) -> usize {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let mut killed = 0;
    if v2 && dir.join("cgroup.kill").exists() {
        killed = procs(dir).len();
        let _ = write(&dir.join("cgroup.kill"), "1");
    }
    // v2 without cgroup.kill (kernels before 5.14) freezes through the group's own file.
    let v2_freeze = dir.join("cgroup.freeze");
    let freezer_file = match freezer {
        Some(f) => Some((f.join("freezer.state"), "FROZEN", "THAWED")),
        None if v2 && v2_freeze.exists() => Some((v2_freeze, "1", "0")),
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = procs(dir);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        let frozen = freezer_file.as_ref().is_some_and(|(f, on, _)| write(f, on).is_ok());
        for pid in &pids {
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        if frozen && let Some((f, _, off)) = &freezer_file {
            let _ = write(f, off);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    killed
}

/// Removes an emptied group, waiting a little for its last processes to be reaped.
fn remove_group(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One run's sandbox: its uid (held while this lives), its cgroups, its private directory.
#[derive(Debug)]
pub struct RunSandbox {
    uid: u32,
    v2: bool,
    /// Holds the uid for this run while it lives (and for good if its processes could not all
    /// be killed: the uid is then never handed to another run).
    lock: std::sync::Mutex<Option<File>>,
    groups: Vec<(Controller, PathBuf)>,
    /// The launcher and the arguments before its own (`drome`, `sandbox-exec`).
    launcher: (PathBuf, Vec<String>),
    /// Whether the run gets a `/tmp` and `/var/tmp` of its own (not when its directory lies
    /// under them: the mount would hide it).
    private_tmp: bool,
    work: PathBuf,
    /// The device files the run's own `/dev` holds: the basic ones and its GPUs'.
    devices: Vec<PathBuf>,
}

impl RunSandbox {
    pub fn uid(&self) -> u32 {
        self.uid
    }

    pub fn work_dir(&self) -> &Path {
        &self.work
    }

    /// Whether the run has a `/tmp` of its own.
    pub fn private_tmp(&self) -> bool {
        self.private_tmp
    }

    /// The command that runs `program` with `args` inside this sandbox: the launcher
    /// ([`SandboxOptions::launcher`], `drome sandbox-exec`) enters the run's cgroups and a
    /// mount namespace with private temporary directories, drops to the run's uid with no
    /// groups and `no_new_privs`, and execs the program in its own place ([`enter_and_exec`]).
    /// Starting a small program and letting it confine itself spares the agent a fork of its
    /// whole address space: the command is spawned the cheap way (`posix_spawn`).
    pub fn command(&self, program: &str, args: &[String]) -> tokio::process::Command {
        let (launcher, launcher_args) = &self.launcher;
        let mut cmd = tokio::process::Command::new(launcher);
        cmd.args(launcher_args);
        for (_, dir) in &self.groups {
            cmd.arg("--cgroup").arg(dir.join("cgroup.procs"));
        }
        cmd.arg("--uid").arg(self.uid.to_string());
        for device in &self.devices {
            cmd.arg("--device").arg(device);
        }
        let mut private = vec!["/dev/shm"];
        if self.private_tmp {
            private.extend(["/tmp", "/var/tmp"]);
        }
        for dir in private {
            cmd.arg("--tmpfs").arg(dir);
        }
        cmd.arg("--").arg(program).args(args);
        cmd
    }

    /// The processes of the run now.
    pub fn pids(&self) -> Vec<i32> {
        self.groups.first().map(|(_, dir)| procs(dir)).unwrap_or_default()
    }

    /// Sends `sig` to every process of the run.
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some((_, dir)) = self.groups.first() {
            for pid in procs(dir) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
        }
    }

    /// Kills every process of the run. Blocks (at most about 2 s).
    pub fn kill_all(&self) -> usize {
        let freezer = self.groups.iter().find(|(c, _)| *c == Controller::Freezer).map(|(_, d)| d.clone());
        match self.groups.first() {
            Some((_, dir)) => kill_group_dir(dir, self.v2, freezer.as_deref()),
            None => 0,
        }
    }

    /// Kills what is left of the run and removes its groups and private directory. Blocks.
    /// The uid is let go when this is dropped.
    pub fn release(&self) {
        self.kill_all();
        let left = self.pids();
        if !left.is_empty() {
            // Something of the run outlived every kill: its uid stays claimed by this agent, so
            // no other run ever shares it with what is left.
            tracing::error!(uid = self.uid, pids = ?left, "a run's processes survived its end; its uid is retired");
            if let Some(lock) = self.lock.lock().unwrap_or_else(|e| e.into_inner()).take() {
                std::mem::forget(lock);
            }
        }
        for (_, dir) in &self.groups {
            remove_group(dir);
        }
        // The uid goes to another run next: nothing of this one may stay readable to it.
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Why the launcher could not start a run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("usage: sandbox-exec [--cgroup PROCS_FILE]... --uid UID [--tmpfs DIR]... -- PROGRAM [ARGS]...: {0}")]
    Usage(String),
    #[error("{step}: {source}")]
    Step { step: String, source: std::io::Error },
}

fn step(step: impl Into<String>) -> impl FnOnce(nix::Error) -> LaunchError {
    let step = step.into();
    move |e| LaunchError::Step { step, source: std::io::Error::from(e) }
}

/// The launcher's work, as root, in the process that becomes the run: joins the cgroups whose
/// `cgroup.procs` files it is given, makes a mount namespace with a fresh tmpfs on each
/// `--tmpfs` directory, drops every group and root for `--uid` (as gid too), forbids gaining
/// privileges again, and execs the program with the environment and directory it was given.
/// Returns only if something failed: the run then never starts unconfined.
pub fn enter_and_exec(args: &[std::ffi::OsString]) -> LaunchError {
    match enter(args) {
        Ok(program) => {
            use std::os::unix::process::CommandExt;
            let (program, rest) = program;
            let e = std::process::Command::new(&program).args(rest).exec();
            LaunchError::Step { step: format!("exec {}", program.to_string_lossy()), source: e }
        }
        Err(e) => e,
    }
}

type Program = (std::ffi::OsString, Vec<std::ffi::OsString>);

fn enter(args: &[std::ffi::OsString]) -> Result<Program, LaunchError> {
    use nix::mount::{MsFlags, mount};
    let mut cgroups = Vec::new();
    let mut tmpfs = Vec::new();
    let mut devices = Vec::new();
    let mut uid = None;
    let mut it = args.iter();
    let program = loop {
        let Some(a) = it.next() else { return Err(LaunchError::Usage("no program after --".into())) };
        let value = |it: &mut std::slice::Iter<'_, std::ffi::OsString>| {
            it.next().cloned().ok_or_else(|| LaunchError::Usage(format!("{} needs a value", a.to_string_lossy())))
        };
        match a.to_str() {
            Some("--cgroup") => cgroups.push(PathBuf::from(value(&mut it)?)),
            Some("--tmpfs") => tmpfs.push(PathBuf::from(value(&mut it)?)),
            Some("--device") => devices.push(PathBuf::from(value(&mut it)?)),
            Some("--uid") => {
                let v = value(&mut it)?;
                let n: u32 =
                    v.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| LaunchError::Usage("--uid".into()))?;
                uid = Some(n);
            }
            Some("--") => break it.next().cloned().ok_or_else(|| LaunchError::Usage("no program after --".into()))?,
            _ => return Err(LaunchError::Usage(format!("unknown argument {}", a.to_string_lossy()))),
        }
    };
    let uid = uid.ok_or_else(|| LaunchError::Usage("--uid is required".into()))?;
    if uid == 0 {
        return Err(LaunchError::Usage("a run never gets uid 0".into()));
    }
    for procs in &cgroups {
        std::fs::OpenOptions::new()
            .write(true)
            .open(procs)
            .and_then(|mut f| f.write_all(b"0"))
            .map_err(|source| LaunchError::Step { step: format!("join {}", procs.display()), source })?;
    }
    // A session of its own: no controlling terminal of the agent's, a process group the agent
    // signals as a whole.
    nix::unistd::setsid().map_err(step("start a session"))?;
    // Mounts and System V IPC of its own.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS | nix::sched::CloneFlags::CLONE_NEWIPC)
        .map_err(step("unshare the mount and IPC namespaces"))?;
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(step("make mounts private"))?;
    private_dev(&devices)?;
    for dir in &tmpfs {
        if dir.is_dir() {
            mount(Some("tmpfs"), dir, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=1777"))
                .map_err(step(format!("mount a tmpfs on {}", dir.display())))?;
        }
    }
    let id = nix::unistd::Uid::from_raw(uid);
    let gid = nix::unistd::Gid::from_raw(uid);
    nix::unistd::setgroups(&[]).map_err(step("drop groups"))?;
    nix::unistd::setgid(gid).map_err(step("set the gid"))?;
    nix::unistd::setuid(id).map_err(step("set the uid"))?;
    nix::sys::prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    Ok((program, it.cloned().collect()))
}

/// Gives the run a `/dev` of its own: a small tmpfs holding only `devices` (each bound from the
/// node's file of that name, named as its file is named), its terminals (`pts`, `ptmx`), the usual
/// links and an empty `shm`. Other device files, other GPUs' among them, do not exist for it:
/// this confines devices where the cgroup cannot (cgroup v2 without a device filter), and doubles
/// the cgroup's rule where it can.
fn private_dev(devices: &[PathBuf]) -> Result<(), LaunchError> {
    use nix::fcntl::{OFlag, open};
    use nix::mount::{MsFlags, mount};
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;
    // Held open (O_PATH) before /dev is covered, bound in from /proc/self/fd after.
    let mut held = Vec::new();
    let terminals = Path::new("/dev/pts");
    for path in devices.iter().map(PathBuf::as_path).chain([terminals]) {
        let Some(name) = path.file_name() else { continue };
        match open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()) {
            Ok(fd) => held.push((PathBuf::from("/dev").join(name), fd, path.is_dir())),
            // A device the node lacks is one the run lacks.
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(step(format!("open {}", path.display()))(e)),
        }
    }
    mount(Some("tmpfs"), "/dev", Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC, Some("mode=755,size=1m"))
        .map_err(step("mount a private /dev"))?;
    let io_step = |what: String| move |source: std::io::Error| LaunchError::Step { step: what, source };
    for (target, fd, is_dir) in &held {
        if *is_dir {
            std::fs::create_dir(target).map_err(io_step(format!("make {}", target.display())))?;
        } else {
            std::fs::File::create(target).map_err(io_step(format!("make {}", target.display())))?;
        }
        let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
        mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
            .map_err(step(format!("bind {}", target.display())))?;
    }
    drop(held);
    for (link, to) in [
        ("/dev/fd", "/proc/self/fd"),
        ("/dev/stdin", "/proc/self/fd/0"),
        ("/dev/stdout", "/proc/self/fd/1"),
        ("/dev/stderr", "/proc/self/fd/2"),
        ("/dev/ptmx", "pts/ptmx"),
    ] {
        std::os::unix::fs::symlink(to, link).map_err(io_step(format!("link {link}")))?;
    }
    std::fs::create_dir("/dev/shm").map_err(io_step("make /dev/shm".into()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_become_single_path_components() {
        assert_eq!(component("node-1.valence"), "node-1.valence");
        assert_eq!(component("../../etc"), ".._.._etc");
        assert_eq!(component(".."), "_..");
        assert_eq!(component(""), "_");
        assert_eq!(component("a/b c"), "a_b_c");
    }
}
