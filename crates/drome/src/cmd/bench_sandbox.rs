//! `drome bench sandbox`: what sandboxing costs a trivial run (`/bin/true`) from "start it" to
//! "it has ended and nothing of it is left", on this machine. The unsandboxed path (a directory
//! of its own, a clean environment, a process group) and the sandboxed one (besides: a uid
//! claimed, cgroups made and limited, a mount namespace with private temporary directories, the
//! cgroups and directory removed after) alternate, so drift hits both alike. With `--image`, a
//! third path runs `/bin/true` in that OCI image through podman as the agent does (sandboxed,
//! its container removed after).

use super::bench_agents::quantile;
use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use std::path::Path;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct SandboxBenchArgs {
    /// Runs timed on each path.
    #[arg(long, default_value_t = 200)]
    pub runs: u32,
    /// Also time runs in this OCI image (it needs `/bin/true`), from `--image-store`.
    #[arg(long)]
    pub image: Option<String>,
    /// The podman store the image is in (podman's own when unset).
    #[arg(long)]
    pub image_store: Option<std::path::PathBuf>,
    /// Runs timed in the image (each takes a podman start).
    #[arg(long, default_value_t = 20)]
    pub image_runs: u32,
    #[arg(long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Serialize)]
struct PathReport {
    path: &'static str,
    runs: u32,
    mean_ms: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Serialize)]
struct Report {
    sandbox: String,
    plain: PathReport,
    sandboxed: PathReport,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<PathReport>,
    /// Sandboxed p50 minus plain p50.
    overhead_p50_ms: f64,
    /// Sandboxed mean over plain mean.
    ratio: f64,
}

pub fn run(args: SandboxBenchArgs) -> anyhow::Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let sandbox = agent::Sandbox::detect(agent::SandboxOptions::default())
        .context("the sandboxed path cannot be measured here")?;
    let dir = std::env::temp_dir().join(format!("drome-bench-sandbox-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))?;
    }
    let scope = format!("bench-{}", std::process::id());
    let result = super::server::runtime()?.block_on(bench(&args, &sandbox, &scope, &dir));
    sandbox.reap(&scope);
    let _ = std::fs::remove_dir_all(&dir);
    let r = result?;
    match args.output {
        Output::Json => print_json(&r),
        Output::Table => {
            println!("drome run start to end, /bin/true, {} runs on each path ({})", args.runs, r.sandbox);
            let mut t = Table::new(["path", "mean (ms)", "p50 (ms)", "p99 (ms)"]);
            for p in [Some(&r.plain), Some(&r.sandboxed), r.image.as_ref()].into_iter().flatten() {
                t.row(vec![
                    format!("{} ({} runs)", p.path, p.runs),
                    format!("{:.2}", p.mean_ms),
                    format!("{:.2}", p.p50_ms),
                    format!("{:.2}", p.p99_ms),
                ]);
            }
            println!("{}", t.render());
            println!("sandboxing adds {:.2} ms at the median ({:.2}x the mean)", r.overhead_p50_ms, r.ratio);
            Ok(())
        }
    }
}

fn command(work: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("/bin/true");
    set_up(&mut cmd, work);
    // As the agent starts an unsandboxed run (the launcher makes a sandboxed one a session).
    cmd.process_group(0);
    cmd
}

/// A run's environment, directory and output, as the agent gives them.
fn set_up(cmd: &mut tokio::process::Command, work: &Path) {
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", work)
        .current_dir(work)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
}

async fn bench(args: &SandboxBenchArgs, sandbox: &agent::Sandbox, scope: &str, dir: &Path) -> anyhow::Result<Report> {
    let limits = agent::sandbox::Limits { cpu_milli: 1_000, memory_mib: 512, gpus: Vec::new(), gpu_share: false };
    let (mut plain, mut boxed) = (Vec::new(), Vec::new());
    for i in 0..args.runs {
        let work = dir.join(format!("plain-{i}"));
        let t0 = Instant::now();
        std::fs::create_dir_all(&work)?;
        let status = command(&work).status().await?;
        std::fs::remove_dir_all(&work)?;
        plain.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(status.success(), "/bin/true failed unsandboxed: {status}");

        let work = dir.join(format!("boxed-{i}"));
        let t0 = Instant::now();
        let run = sandbox.prepare(scope, &format!("{i}-1-0"), &limits, &work)?;
        let mut cmd = run.command("/bin/true", &[]);
        set_up(&mut cmd, &work);
        let status = cmd.status().await?;
        run.release();
        drop(run);
        boxed.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(status.success(), "/bin/true failed sandboxed: {status}");
    }
    let report = |path, v: &[f64]| PathReport {
        path,
        runs: args.runs,
        mean_ms: v.iter().sum::<f64>() / v.len() as f64,
        p50_ms: quantile(v, 0.5),
        p99_ms: quantile(v, 0.99),
    };
    let (plain, sandboxed) = (report("plain", &plain), report("sandboxed", &boxed));
    let image = match &args.image {
        Some(image) => {
            let v = bench_image(args, image, sandbox, scope, dir, &limits).await?;
            Some(PathReport { runs: v.len() as u32, ..report("in an image", &v) })
        }
        None => None,
    };
    Ok(Report {
        image,
        sandbox: sandbox.describe(),
        overhead_p50_ms: sandboxed.p50_ms - plain.p50_ms,
        ratio: sandboxed.mean_ms / plain.mean_ms.max(1e-9),
        plain,
        sandboxed,
    })
}

/// Times `/bin/true` in `image` as the agent runs it: a sandbox prepared (uid, private
/// directory), podman run in the foreground, the container removed after.
async fn bench_image(
    args: &SandboxBenchArgs,
    image: &str,
    sandbox: &agent::Sandbox,
    scope: &str,
    dir: &Path,
    limits: &agent::sandbox::Limits,
) -> anyhow::Result<Vec<f64>> {
    let opts = agent::ImageOptions {
        store: args.image_store.clone(),
        config_file: dir.join("containers.conf"),
        ..agent::ImageOptions::default()
    };
    let images = agent::ImageRuntime::detect(opts).context("runs in images cannot be measured here")?;
    let env_file = dir.join("env");
    std::fs::write(&env_file, "HOME=/work\n")?;
    let mut times = Vec::new();
    for i in 0..args.image_runs.max(1) {
        let work = dir.join(format!("image-{i}"));
        let name = agent::image::container_name(scope, &format!("{i}-1-0"));
        let t0 = Instant::now();
        let run = sandbox.prepare(scope, &format!("image-{i}-1-0"), limits, &work)?;
        let spec = agent::image::ImageRun {
            name: &name,
            image,
            program: "/bin/true",
            args: &[],
            uid: run.uid(),
            cpu_milli: limits.cpu_milli,
            memory_mib: limits.memory_mib,
            pids_max: sandbox.pids_max(),
            devices: &[],
            work: &work,
            env_file: &env_file,
        };
        // As the agent: podman that ends by itself has removed its container (`--rm`).
        let out = images.command(&spec).output().await?;
        run.release();
        drop(run);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        anyhow::ensure!(
            out.status.success(),
            "/bin/true failed in {image}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(times)
}
