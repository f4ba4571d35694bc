//! Sandboxed runs. Each run executes as an unprivileged uid of its own (claimed from a range,
//! machine-wide, for as long as the run lives), inside cgroups that hold its CPUs, memory,
//! process count and device access, in a mount namespace with a private `/dev/shm` (and `/tmp`),
//! with no capabilities and no way to gain any (`no_new_privs`). Stopping a run kills its whole
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
        }
    }
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
            _lock: lock,
            groups: Vec::new(),
            join: Vec::new(),
            private_tmp: !work.starts_with("/tmp") && !work.starts_with("/var/tmp"),
            work: work.to_path_buf(),
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
            let procs = dir.join("cgroup.procs");
            let file = std::fs::OpenOptions::new().write(true).open(&procs).map_err(io(&procs))?;
            run_box.join.push(file);
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
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let pids = procs(dir);
        if pids.is_empty() || Instant::now() > deadline {
            break;
        }
        let frozen = freezer.is_some_and(|f| write(&f.join("freezer.state"), "FROZEN").is_ok());
        for pid in &pids {
            if kill(Pid::from_raw(*pid), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
        if frozen && let Some(f) = freezer {
            let _ = write(&f.join("freezer.state"), "THAWED");
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
    /// Holds the uid for this run while it lives.
    _lock: File,
    groups: Vec<(Controller, PathBuf)>,
    /// `cgroup.procs` of each group, opened by the agent: the child writes itself into them
    /// before it drops root.
    join: Vec<File>,
    /// Whether the run gets a `/tmp` and `/var/tmp` of its own (not when its directory lies
    /// under them: the mount would hide it).
    private_tmp: bool,
    work: PathBuf,
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

    /// Makes `cmd` enter this sandbox between fork and exec: into the cgroups, a mount
    /// namespace with private temporary directories, no supplementary groups, the run's gid and
    /// uid, `no_new_privs`.
    ///
    /// The one place drome uses `unsafe`: what a child does between fork and exec can only be
    /// given as a `pre_exec` closure, which must make async-signal-safe calls only (the
    /// closure below: raw system calls on values made before the fork).
    #[allow(unsafe_code)]
    pub fn confine(&self, cmd: &mut tokio::process::Command) {
        use std::ffi::CString;
        use std::os::fd::AsRawFd;
        let fds: Vec<i32> = self.join.iter().map(|f| f.as_raw_fd()).collect();
        let uid = self.uid;
        let cstr = |s: &str| CString::new(s).unwrap_or_default();
        let mut tmpfs: Vec<(CString, CString)> = vec![(cstr("/dev/shm"), cstr("mode=1777,size=50%"))];
        if self.private_tmp {
            tmpfs.push((cstr("/tmp"), cstr("mode=1777")));
            tmpfs.push((cstr("/var/tmp"), cstr("mode=1777")));
        }
        let (root, fstype) = (cstr("/"), cstr("tmpfs"));
        // Only async-signal-safe calls (raw system calls, nothing that allocates) between fork
        // and exec.
        let enter = move || -> std::io::Result<()> {
            use nix::libc;
            let last = || Err(std::io::Error::last_os_error());
            for fd in &fds {
                // SAFETY: `fd` is open in the child (inherited) and the buffer lives.
                if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } != 1 {
                    return last();
                }
            }
            // SAFETY: plain system calls on values made before the fork.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return last();
                }
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return last();
                }
                for (target, data) in &tmpfs {
                    if libc::access(target.as_ptr(), libc::F_OK) == 0
                        && libc::mount(
                            fstype.as_ptr(),
                            target.as_ptr(),
                            fstype.as_ptr(),
                            libc::MS_NOSUID | libc::MS_NODEV,
                            data.as_ptr().cast(),
                        ) != 0
                    {
                        return last();
                    }
                }
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
                    return last();
                }
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    return last();
                }
            }
            Ok(())
        };
        // SAFETY: `enter` makes only async-signal-safe calls.
        unsafe {
            cmd.pre_exec(enter);
        }
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
        for (_, dir) in &self.groups {
            remove_group(dir);
        }
        // The uid goes to another run next: nothing of this one may stay readable to it.
        let _ = std::fs::remove_dir_all(&self.work);
    }
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
