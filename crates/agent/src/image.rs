//! Runs in OCI images, through the node's container runtime (podman, as root).
//!
//! A run that names an image is sandboxed as any other (a uid of its own claimed from the
//! machine's range, a private work directory), and podman holds it to the same limits: the
//! CPUs, memory (swap included) and processes the job holds, no capabilities, no new
//! privileges, only its own GPUs' device files, the job's environment (from a file only the
//! agent reads, never on a command line other users can list), the node's network (gangs meet
//! as they do outside images) and the work directory mounted at `/work`. Images come from the
//! node's own store: nothing is pulled.
//!
//! Podman runs with a configuration of drome's (`CONTAINERS_CONF`): the cgroupfs manager, and
//! no resource limits of its own on the run's processes (some kernels' sandboxes refuse a
//! process setting another's limits). A run's container is named after its node and run
//! (`drome-SCOPE-RUN`), so a run stopped, or left by an agent that died, is removed by name.
//!
//! Knows nothing about the server: it turns a run into a command and removes containers.

use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Where podman is and where its images are.
#[derive(Clone, Debug)]
pub struct ImageOptions {
    /// The podman program.
    pub podman: PathBuf,
    /// The image store (`--root`; its run state in `run/` under it); `None`: podman's own.
    pub store: Option<PathBuf>,
    /// Where drome's configuration for podman is written.
    pub config_file: PathBuf,
}

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions {
            podman: PathBuf::from("podman"),
            store: None,
            config_file: PathBuf::from("/run/drome/containers.conf"),
        }
    }
}

/// Why images cannot run on this node.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{program}: {why}")]
    NoRuntime { program: String, why: String },
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// The node's container runtime, found and configured.
#[derive(Debug)]
pub struct ImageRuntime {
    opts: ImageOptions,
    version: String,
}

/// What podman is told beside its flags: drome's configuration, and a `PATH` for its helpers
/// (`conmon`, `runc`).
fn podman_env(config_file: &Path) -> Vec<(String, String)> {
    vec![
        ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ("CONTAINERS_CONF".into(), config_file.display().to_string()),
        ("HOME".into(), "/root".into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// drome's podman configuration: cgroups by cgroupfs (no systemd needed), runc where it is
/// installed (crun refuses hybrid cgroup layouts), no default limits set on the run's
/// processes (the cgroup holds them), no event log.
fn config_text(runc: bool) -> String {
    let mut text = String::from(
        "[containers]\ndefault_ulimits = []\n\n[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"none\"\n",
    );
    if runc {
        text.push_str("runtime = \"runc\"\n");
    }
    text
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p).chain(["/usr/sbin".into(), "/sbin".into()]).any(|d| d.join(program).is_file())
        })
        .unwrap_or(false)
}

impl ImageRuntime {
    /// Finds podman and writes drome's configuration for it. Blocks (runs `podman --version`).
    pub fn detect(opts: ImageOptions) -> Result<ImageRuntime, ImageError> {
        let program = opts.podman.display().to_string();
        if let Some(dir) = opts.config_file.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|source| ImageError::Io { path: dir.display().to_string(), source })?;
        }
        let path = &opts.config_file;
        std::fs::write(path, config_text(on_path("runc")))
            .map_err(|source| ImageError::Io { path: path.display().to_string(), source })?;
        let out = std::process::Command::new(&opts.podman)
            .arg("--version")
            .env_clear()
            .envs(podman_env(&opts.config_file))
            .stdin(Stdio::null())
            .output()
            .map_err(|e| ImageError::NoRuntime { program: program.clone(), why: e.to_string() })?;
        if !out.status.success() {
            let why = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ImageError::NoRuntime { program, why });
        }
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok(ImageRuntime { opts, version })
    }

    /// `podman version 4.3.1`, for the agent's log.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The runtime's name as the node reports it.
    pub fn name(&self) -> &'static str {
        "podman"
    }

    /// podman with drome's configuration and the node's store, ready for a subcommand.
    fn podman(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.opts.podman);
        cmd.env_clear().envs(podman_env(&self.opts.config_file)).stdin(Stdio::null());
        if let Some(store) = &self.opts.store {
            cmd.arg("--root").arg(store).arg("--runroot").arg(store.join("run"));
        }
        cmd.args(["--cgroup-manager", "cgroupfs"]);
        cmd
    }

    /// The command that runs `run` in its image, as the sandbox's `uid`, in the foreground: its
    /// output is podman's, its exit code podman's (125 when podman itself fails, e.g. an image
    /// not in the node's store). The job's environment is read from `env_file` (the agent's,
    /// 0600).
    pub fn command(&self, run: &ImageRun<'_>) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::from(self.podman());
        cmd.args(["run", "--rm", "--pull", "never", "--name", run.name])
            .args(["--user", &format!("{0}:{0}", run.uid)])
            .args(["--cap-drop", "all", "--security-opt", "no-new-privileges"])
            .args(["--network", "host", "--http-proxy=false"])
            .args(["--pids-limit", &run.pids_max.to_string()]);
        if run.memory_mib > 0 {
            let limit = format!("{}m", run.memory_mib);
            cmd.args(["--memory", &limit, "--memory-swap", &limit]);
        }
        if run.cpu_milli > 0 {
            cmd.args(["--cpus", &format!("{:.3}", run.cpu_milli as f64 / 1000.0)]);
        }
        for device in run.devices {
            let name = device.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            cmd.arg("--device").arg(format!("{}:/dev/{name}", device.display()));
        }
        cmd.arg("--volume").arg(format!("{}:/work", run.work.display())).args(["--workdir", "/work"]);
        cmd.arg("--env-file").arg(run.env_file);
        // `--` ends podman's options: the image and the command are never taken for one.
        cmd.arg("--").arg(run.image).arg(run.program).args(run.args);
        cmd
    }

    /// Removes the container `name` at once (killed, not asked to stop), if it is there.
    /// Blocks (about 0.2 s).
    pub fn remove(&self, name: &str) {
        let out = self.podman().args(["rm", "--force", "--ignore", "--time", "0", name]).output();
        if let Ok(out) = out
            && !out.status.success()
        {
            tracing::warn!(container = name, error = %String::from_utf8_lossy(&out.stderr).trim(), "cannot remove a run's container");
        }
    }

    /// Removes every container of the node `scope` (left by an agent that died). Returns how
    /// many it found. Blocks.
    pub fn reap(&self, scope: &str) -> usize {
        let prefix = container_name(scope, "");
        let Ok(out) = self.podman().args(["ps", "--all", "--format", "{{.Names}}"]).output() else { return 0 };
        let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|n| n.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        for name in &names {
            self.remove(name);
        }
        names.len()
    }
}

/// One run in an image, as [`ImageRuntime::command`] takes it.
#[derive(Debug)]
pub struct ImageRun<'a> {
    /// The container's name ([`container_name`]).
    pub name: &'a str,
    pub image: &'a str,
    pub program: &'a str,
    pub args: &'a [String],
    pub uid: u32,
    pub cpu_milli: u64,
    pub memory_mib: u64,
    pub pids_max: u64,
    /// Device files of the run's GPUs (and the GPUs' shared ones), passed as they are named.
    pub devices: &'a [PathBuf],
    /// The run's private directory, mounted at `/work`.
    pub work: &'a Path,
    pub env_file: &'a Path,
}

/// The container of run `run` of node `scope`: `drome-SCOPE-RUN`, in the characters container
/// names allow.
pub fn container_name(scope: &str, run: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c } else { '_' }).collect()
    };
    format!("drome-{}-{}", clean(scope), clean(run))
}

/// The environment file of a run: `KEY=VALUE` lines. A value with a newline cannot be written
/// in one: such variables are left out (and named in the returned list).
pub fn env_file_text(env: &[(String, String)]) -> (String, Vec<String>) {
    let mut text = String::new();
    let mut left_out = Vec::new();
    for (k, v) in env {
        if v.contains('\n') || v.contains('\r') || k.contains('=') {
            left_out.push(k.clone());
            continue;
        }
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('\n');
    }
    (text, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_in_an_image_is_confined_by_podman_flags() {
        let rt = ImageRuntime {
            opts: ImageOptions { store: Some(PathBuf::from("/s")), ..ImageOptions::default() },
            version: String::new(),
        };
        let args = vec!["-c".to_string(), "id".to_string()];
        let devices = vec![PathBuf::from("/dev/nvidia3"), PathBuf::from("/dev/nvidiactl")];
        let run = ImageRun {
            name: "drome-n1.ab-7-1-0",
            image: "localhost/train:3",
            program: "sh",
            args: &args,
            uid: 200_123,
            cpu_milli: 2500,
            memory_mib: 4096,
            pids_max: 100,
            devices: &devices,
            work: Path::new("/w/runs/7-1-0/work"),
            env_file: Path::new("/w/runs/7-1-0/env"),
        };
        let cmd = rt.command(&run);
        let argv: Vec<String> = cmd.as_std().get_args().map(|a| a.to_string_lossy().to_string()).collect();
        let line = argv.join(" ");
        for part in [
            "--root /s --runroot /s/run --cgroup-manager cgroupfs run --rm --pull never --name drome-n1.ab-7-1-0",
            "--user 200123:200123",
            "--cap-drop all --security-opt no-new-privileges",
            "--network host --http-proxy=false --pids-limit 100",
            "--memory 4096m --memory-swap 4096m --cpus 2.500",
            "--device /dev/nvidia3:/dev/nvidia3 --device /dev/nvidiactl:/dev/nvidiactl",
            "--volume /w/runs/7-1-0/work:/work --workdir /work --env-file /w/runs/7-1-0/env",
            "-- localhost/train:3 sh -c id",
        ] {
            assert!(line.contains(part), "{part:?} missing from {line}");
        }
        let env: Vec<(String, String)> = cmd
            .as_std()
            .get_envs()
            .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
            .collect();
        assert!(env.iter().any(|(k, _)| k == "CONTAINERS_CONF"), "{env:?}");
    }

    #[test]
    fn the_environment_file_leaves_out_what_it_cannot_hold() {
        let env = vec![("A".to_string(), "1 2".to_string()), ("B".to_string(), "x\ny".to_string())];
        let (text, left_out) = env_file_text(&env);
        assert_eq!(text, "A=1 2\n");
        assert_eq!(left_out, vec!["B".to_string()]);
        assert_eq!(container_name("n/1", "7-1-0"), "drome-n_1-7-1-0");
    }
}
