//! Sandboxed runs, with real processes, uids, cgroups and mount namespaces. They need root (as
//! the agent does to sandbox); run elsewhere, each test says so and checks nothing.

use agent::sandbox::{Limits, RunSandbox, Sandbox, SandboxOptions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn root() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        eprintln!("not root: sandboxing cannot be tried here");
    }
    root
}

/// A directory others may pass through (as a node's work directory is).
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drome-sandbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

fn sandbox(device_dir: &Path) -> Sandbox {
    let opts =
        SandboxOptions { device_dir: device_dir.to_path_buf(), launcher: launcher(), ..SandboxOptions::default() };
    Sandbox::detect(opts).expect("root with cgroups: the sandbox works")
}

/// The launcher built with this crate.
fn launcher() -> (PathBuf, Vec<String>) {
    (PathBuf::from(env!("CARGO_BIN_EXE_drome-sandbox-exec")), Vec::new())
}

struct Ran {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: String,
    stderr: String,
}

fn spawn(run: &RunSandbox, script: &str) -> tokio::process::Child {
    let mut cmd = run.command("/bin/sh", &["-c".to_string(), script.to_string()]);
    cmd.env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir(run.work_dir())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd.spawn().expect("the sandboxed run starts")
}

async fn run_to_end(run: &RunSandbox, script: &str) -> Ran {
    use std::os::unix::process::ExitStatusExt;
    let out = tokio::time::timeout(Duration::from_secs(30), spawn(run, script).wait_with_output())
        .await
        .expect("the run ends")
        .expect("its output is read");
    Ran {
        code: out.status.code(),
        signal: out.status.signal(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_run_is_an_unprivileged_user_of_its_own_that_reads_nothing_of_others() {
    if !root() {
        return;
    }
    let dir = scratch("users");
    let sandbox = sandbox(Path::new("/dev"));
    let scope = format!("test-users-{}", std::process::id());
    // The node's credential, as the agent keeps it.
    std::fs::write(dir.join("credential"), "node-secret").unwrap();
    std::fs::set_permissions(dir.join("credential"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let a = sandbox.prepare(&scope, "1-1-0", &Limits::default(), &dir.join("a")).unwrap();
    let b = sandbox.prepare(&scope, "2-1-0", &Limits::default(), &dir.join("b")).unwrap();
    assert_ne!(a.uid(), 0);
    assert_ne!(a.uid(), b.uid(), "two live runs never share a uid");

    let wrote = run_to_end(&a, "echo tenant-a-secret > secret; echo shm > /dev/shm/a-was-here; id -u").await;
    assert_eq!(wrote.code, Some(0), "{}", wrote.stderr);
    assert_eq!(wrote.stdout.trim(), a.uid().to_string());

    let b_sees = run_to_end(
        &b,
        &format!(
            "id -u; cat {a}/secret && echo READ-A; cat {cred} && echo READ-CREDENTIAL; ls /dev/shm; \
             grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; env",
            a = a.work_dir().display(),
            cred = dir.join("credential").display()
        ),
    )
    .await;
    let out = &b_sees.stdout;
    assert!(out.starts_with(&format!("{}\n", b.uid())), "{out}");
    assert!(!out.contains("READ-A") && !out.contains("tenant-a-secret"), "another run's files were read: {out}");
    assert!(!out.contains("READ-CREDENTIAL") && !out.contains("node-secret"), "the credential was read: {out}");
    assert!(!out.contains("a-was-here"), "/dev/shm is shared between runs: {out}");
    assert!(out.contains("CapEff:\t0000000000000000"), "the run holds capabilities: {out}");
    assert!(out.contains("NoNewPrivs:\t1"), "the run may gain privileges: {out}");
    assert!(b_sees.stderr.contains("Permission denied"), "{}", b_sees.stderr);
    // The environment is what the run was given, nothing of the test's (the agent's).
    assert!(!out.contains("HOME=") && !out.contains("CARGO"), "{out}");

    // Released, a run's directory goes with it (its uid will be another run's).
    a.release();
    assert!(!a.work_dir().exists());
    b.release();
    drop((a, b));
    assert_eq!(sandbox.reap(&scope), 0, "released runs leave no group behind");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_run_cannot_signal_another() {
    if !root() {
        return;
    }
    let dir = scratch("signals");
    let sandbox = sandbox(Path::new("/dev"));
    let scope = format!("test-signals-{}", std::process::id());
    let victim = sandbox.prepare(&scope, "1-1-0", &Limits::default(), &dir.join("victim")).unwrap();
    let attacker = sandbox.prepare(&scope, "2-1-0", &Limits::default(), &dir.join("attacker")).unwrap();
    let mut child = spawn(&victim, "sleep 60");
    let pid = child.id().expect("the victim runs");
    let tried =
        run_to_end(&attacker, &format!("kill -9 {pid} && echo KILLED; kill -9 -{pid} && echo KILLED-GROUP")).await;
    assert!(!tried.stdout.contains("KILLED"), "{}", tried.stdout);
    assert!(
        tried.stderr.contains("Operation not permitted") || tried.stderr.contains("not permitted"),
        "{}",
        tried.stderr
    );
    assert!(child.try_wait().unwrap().is_none(), "the victim was killed by another run");
    let _ = child.start_kill();
    let _ = child.wait().await;
    victim.release();
    attacker.release();
    drop((victim, attacker));
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_run_cannot_exceed_its_memory() {
    if !root() {
        return;
    }
    let dir = scratch("memory");
    let sandbox = sandbox(Path::new("/dev"));
    let scope = format!("test-memory-{}", std::process::id());
    let limits = Limits { memory_mib: 48, ..Limits::default() };
    let run = sandbox.prepare(&scope, "1-1-0", &limits, &dir.join("run")).unwrap();
    // Within its memory: fine.
    let small = run_to_end(&run, "dd if=/dev/zero of=/dev/null bs=16M count=2 2>/dev/null && echo small-ok").await;
    assert!(small.stdout.contains("small-ok"), "{} {}", small.stdout, small.stderr);
    // Past it: killed by the kernel.
    let big = run_to_end(&run, "dd if=/dev/zero of=/dev/null bs=256M count=1 2>/dev/null && echo big-ok").await;
    assert!(!big.stdout.contains("big-ok"), "a 256 MiB buffer fit in 48 MiB");
    // Killed by the kernel: dd (the shell says 137) or the shell itself (SIGKILL).
    assert!(big.code == Some(137) || big.signal == Some(9), "{:?} {:?} {}", big.code, big.signal, big.stderr);
    run.release();
    drop(run);
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Its own `/dev`: the basic devices, its terminals and its own GPUs' files, nothing else,
/// whatever cgroup hierarchy the node has.
#[tokio::test]
async fn a_run_sees_only_its_own_devices_in_dev() {
    if !root() {
        return;
    }
    let dir = scratch("own-dev");
    let devices = dir.join("dev");
    std::fs::create_dir_all(&devices).unwrap();
    std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, minor) in [("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)] {
        let path = devices.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(195, minor),
        )
        .unwrap();
    }
    let sandbox = sandbox(&devices);
    let scope = format!("test-own-dev-{}", std::process::id());
    let run =
        sandbox.prepare(&scope, "1-1-0", &Limits { gpus: vec![1], ..Limits::default() }, &dir.join("run")).unwrap();
    let seen = run_to_end(&run, "ls /dev; echo hi > /dev/null && echo null-ok; cat /dev/nvidia0; cat /dev/sda").await;
    let names: Vec<&str> = seen.stdout.lines().collect();
    assert_eq!(
        names,
        [
            "fd",
            "full",
            "null",
            "nvidia1",
            "nvidiactl",
            "ptmx",
            "pts",
            "random",
            "shm",
            "stderr",
            "stdin",
            "stdout",
            "tty",
            "urandom",
            "zero",
            "null-ok"
        ],
        "stderr: {}",
        seen.stderr
    );
    assert!(seen.stderr.contains("/dev/nvidia0: No such file"), "{}", seen.stderr);
    let cpu_only = sandbox.prepare(&scope, "2-1-0", &Limits::default(), &dir.join("cpu")).unwrap();
    let seen = run_to_end(&cpu_only, "ls /dev | grep -c nvidia; true").await;
    assert_eq!(seen.stdout.trim(), "0", "a run without GPUs sees none: {}", seen.stderr);
    run.release();
    cpu_only.release();
    drop((run, cpu_only));
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_run_opens_only_its_own_gpus_device_files() {
    if !root() {
        return;
    }
    let dir = scratch("devices");
    // Stand-ins for a node's GPU device files, with the NVIDIA driver's numbers (major 195):
    // without the driver, opening one the cgroup allows fails with ENXIO, one it does not
    // allow with EPERM.
    let devices = dir.join("dev");
    std::fs::create_dir_all(&devices).unwrap();
    std::fs::set_permissions(&devices, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, minor) in [("nvidia0", 0), ("nvidia1", 1), ("nvidiactl", 255)] {
        let path = devices.join(name);
        nix::sys::stat::mknod(
            &path,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(195, minor),
        )
        .unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let sandbox = sandbox(&devices);
    if !sandbox.confines_devices() {
        eprintln!("no devices controller here: {}", sandbox.describe());
        return;
    }
    let scope = format!("test-devices-{}", std::process::id());
    let limits = Limits { gpus: vec![1], ..Limits::default() };
    let run = sandbox.prepare(&scope, "1-1-0", &limits, &dir.join("run")).unwrap();
    let d = devices.display();
    let tried = run_to_end(&run, &format!("for f in nvidia0 nvidia1 nvidiactl; do cat {d}/$f; done")).await;
    let lines: Vec<&str> = tried.stderr.lines().collect();
    assert_eq!(lines.len(), 3, "{}", tried.stderr);
    assert!(lines[0].contains("nvidia0") && lines[0].contains("not permitted"), "another GPU was opened: {}", lines[0]);
    assert!(
        lines[1].contains("nvidia1") && lines[1].contains("No such device"),
        "its own GPU was refused: {}",
        lines[1]
    );
    assert!(lines[2].contains("nvidiactl") && lines[2].contains("No such device"), "{}", lines[2]);
    // A run without GPUs opens none.
    let cpu_only = sandbox.prepare(&scope, "2-1-0", &Limits::default(), &dir.join("cpu")).unwrap();
    let tried = run_to_end(&cpu_only, &format!("cat {d}/nvidia1")).await;
    assert!(tried.stderr.contains("not permitted"), "{}", tried.stderr);
    run.release();
    cpu_only.release();
    drop((run, cpu_only));
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn killing_a_run_kills_all_it_forked_even_in_a_session_of_its_own() {
    if !root() {
        return;
    }
    let dir = scratch("kill");
    let sandbox = sandbox(Path::new("/dev"));
    let scope = format!("test-kill-{}", std::process::id());
    let run = sandbox.prepare(&scope, "1-1-0", &Limits::default(), &dir.join("run")).unwrap();
    let mut child = spawn(&run, "setsid sleep 300 & (sleep 300 &) ; sleep 300");
    let mut pids = Vec::new();
    for _ in 0..200 {
        pids = run.pids();
        if pids.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(pids.len() >= 4, "the run's processes: {pids:?}");
    let killed = tokio::task::spawn_blocking({
        let run = std::sync::Arc::new(run);
        move || (run.kill_all(), run)
    })
    .await
    .unwrap();
    let (count, run) = killed;
    assert!(count >= 4, "{count}");
    let _ = child.wait().await;
    assert!(run.pids().is_empty(), "left alive: {:?}", run.pids());
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default().contains(") Z");
        assert!(!alive, "process {pid} outlived its run");
    }
    run.release();
    drop(run);
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_agent_that_died_leaves_nothing_running_once_reaped() {
    if !root() {
        return;
    }
    let dir = scratch("reap");
    let sandbox = sandbox(Path::new("/dev"));
    let scope = format!("test-reap-{}", std::process::id());
    let run = sandbox.prepare(&scope, "1-1-0", &Limits::default(), &dir.join("run")).unwrap();
    let mut child = spawn(&run, "setsid sleep 300 & sleep 300");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A new agent on the node (the sandbox made afresh) finds the run and kills it.
    let again = Sandbox::detect(SandboxOptions { launcher: launcher(), ..SandboxOptions::default() }).unwrap();
    let found = tokio::task::spawn_blocking({
        let scope = scope.clone();
        move || again.reap(&scope)
    })
    .await
    .unwrap();
    assert_eq!(found, 1);
    let _ = child.wait().await;
    assert!(run.pids().is_empty());
    drop(run);
    let _ = std::fs::remove_dir_all(&dir);
}
