//! Jobs in OCI images, end to end with a real `drome server`, real agents and podman: an image
//! built here from busybox (no registry is reachable) runs sandboxed on the node that has a
//! runtime, as a uid of its own, with its GPUs' device files only (stand-in device nodes), the
//! job's environment and its limits; a node without a runtime takes no such job at placement;
//! cancelling removes the container; a missing image fails the job with podman's reason.
//!
//! Needs root and podman (with runc and busybox-static): skipped where they are missing, unless
//! `DROME_REQUIRE_PODMAN` is set (CI installs them and sets it).

mod common;

use common::{
    Procs, agent_with, create_tenant, free_port, get_job, join_token, server, submit, wait_healthy, wait_state,
};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "images-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");
const WITH_RUNTIME: &str = "hall-a-r001-n01";
const WITHOUT: &str = "hall-a-r001-n02";
const IMAGE: &str = "localhost/drome-test:1";

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).chain([PathBuf::from("/usr/sbin")]).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Whether this machine can run the test; panics where it must and cannot.
fn can_run() -> bool {
    let missing: Vec<&str> = ["podman", "busybox"].into_iter().filter(|p| which(p).is_none()).collect();
    let root = nix::unistd::geteuid().is_root();
    if root && missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("DROME_REQUIRE_PODMAN").is_none(),
        "DROME_REQUIRE_PODMAN is set but root={root}, missing={missing:?}"
    );
    eprintln!("skipped: needs root and podman, busybox (root={root}, missing={missing:?})");
    false
}

/// A busybox image imported into the podman store `store`.
fn build_image(dir: &Path, store: &Path) {
    let root = dir.join("rootfs");
    for d in ["bin", "tmp", "work", "etc", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(which("busybox").unwrap(), root.join("bin/busybox")).unwrap();
    for applet in ["sh", "id", "env", "ls", "cat", "echo", "head", "tr", "sleep", "wc", "true", "false"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    let ok = Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status().unwrap();
    assert!(ok.success());
    let out = Command::new("podman")
        .arg("--root")
        .arg(store)
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["import", "--change", "ENV=PATH=/bin"])
        .arg(&tar)
        .arg(IMAGE)
        .output()
        .unwrap();
    assert!(out.status.success(), "podman import: {}", String::from_utf8_lossy(&out.stderr));
}

/// Stand-in GPU device files: `nvidia0`..`nvidia7` and `nvidiactl`, as the driver numbers them.
fn stand_in_devices(dir: &Path) {
    use nix::sys::stat::{Mode, SFlag, makedev, mknod};
    std::fs::create_dir_all(dir).unwrap();
    let mut devices: Vec<(String, u64)> = (0..8).map(|i| (format!("nvidia{i}"), i)).collect();
    devices.push(("nvidiactl".into(), 255));
    for (name, minor) in devices {
        mknod(&dir.join(name), SFlag::S_IFCHR, Mode::from_bits_truncate(0o666), makedev(195, minor)).unwrap();
    }
}

async fn logs(http: &reqwest::Client, base: &str, token: &str, id: i64, stream: &str) -> String {
    let v: Value = http
        .get(format!("{base}/v1/jobs/{id}/logs?stream={stream}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_str().unwrap_or_default().to_string()
}

async fn wait_end(http: &reqwest::Client, base: &str, token: &str, id: i64) -> Value {
    let t0 = Instant::now();
    loop {
        if let Some(v) = get_job(http, base, token, id).await
            && matches!(v["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "job {id} never ended: {:?}",
            get_job(http, base, token, id).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn containers(store: &Path) -> Vec<String> {
    let out = Command::new("podman")
        .arg("--root")
        .arg(store)
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["ps", "--all", "--format", "{{.Names}}"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).lines().filter(|n| n.starts_with("drome-")).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_in_images_confined_and_only_where_a_runtime_is() {
    if !can_run() {
        return;
    }
    let dir = PathBuf::from(format!("/tmp/drome-images-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    build_image(&dir, &store);
    stand_in_devices(&dir.join("dev"));

    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let args = ["--fleet", FLEET, "--agents", "--heartbeat-ms", "200", "--lease-ms", "2000", "--lease-grace-ms", "500"];
    let mut procs = Procs(vec![server(&db, port, ADMIN, &args, &dir, None)]);
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    wait_healthy(&http, &base).await;
    let join = join_token(&http, &base, ADMIN).await;
    let store_arg = store.display().to_string();
    let devices = dir.join("dev").display().to_string();
    let with_runtime = ["--sandbox", "on", "--device-dir", &devices, "--image-store", &store_arg];
    let without = ["--sandbox", "on", "--device-dir", &devices, "--images", "off"];
    procs.0.push(agent_with(None, &base, &join, WITH_RUNTIME, &dir, &with_runtime));
    procs.0.push(agent_with(None, &base, &join, WITHOUT, &dir, &without));
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    // Both nodes up: a plain job on each.
    for _ in 0..2 {
        let id = submit(&http, &base, &token, &json!({"command": "true", "gpus_per_node": 8})).await;
        wait_state(&http, &base, &token, id, "succeeded").await;
    }

    // A stranger's probe, in the image: who am I, what is around me.
    let probe = "id -u; env; ls /dev; echo hi > /work/mark && cat /work/mark";
    let spec =
        json!({"command": "sh", "args": ["-c", probe], "image": IMAGE, "gpus_per_node": 1, "env": {"MODEL": "llama"}});
    let id = submit(&http, &base, &token, &spec).await;
    let job = wait_end(&http, &base, &token, id).await;
    let (out, err) = (logs(&http, &base, &token, id, "stdout").await, logs(&http, &base, &token, id, "stderr").await);
    assert_eq!(job["state"], "succeeded", "{job}\nstdout: {out}\nstderr: {err}");
    assert_eq!(job["placement"][0]["node"], WITH_RUNTIME, "only the node with a runtime runs images");
    let uid: u32 = out.lines().next().and_then(|l| l.trim().parse().ok()).unwrap_or(0);
    assert!(uid >= 200_000, "the run's uid is {uid}: {out}");
    assert!(out.contains("MODEL=llama") && out.contains("DROME_RANK=0") && out.contains("HOME=/work"), "{out}");
    assert!(out.contains("PATH=/bin"), "the image's PATH holds: {out}");
    assert!(!out.contains("RUST_LOG") && !out.contains("DROME_JOIN") && !out.contains("CONTAINERS_CONF"), "{out}");
    let gpu = job["placement"][0]["gpus"][0].as_u64().unwrap();
    let nvidia: Vec<&str> = out.lines().filter(|l| l.starts_with("nvidia")).collect();
    assert_eq!(nvidia, vec![format!("nvidia{gpu}").as_str(), "nvidiactl"], "the run sees its own GPU only: {out}");
    assert!(out.trim_end().ends_with("hi"), "the run writes its own /work: {out}");

    // Placement: a whole node's image job fills the node with a runtime; plain work goes to the
    // other node, and the next image job waits though that node is free.
    let big =
        submit(&http, &base, &token, &json!({"command": "sleep", "args": ["600"], "image": IMAGE, "gpus_per_node": 8}))
            .await;
    wait_state(&http, &base, &token, big, "running").await;
    let plain = submit(&http, &base, &token, &json!({"command": "true", "gpus_per_node": 1})).await;
    let plain = wait_state(&http, &base, &token, plain, "succeeded").await;
    assert_eq!(plain["placement"][0]["node"], WITHOUT);
    let next = submit(&http, &base, &token, &json!({"command": "true", "image": IMAGE, "gpus_per_node": 1})).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(get_job(&http, &base, &token, next).await.unwrap()["state"], "pending", "no runtime on the free node");
    let t0 = Instant::now();
    while containers(&store).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the running job has no container");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cancelled: its container goes, and the waiting image job takes the node.
    http.post(format!("{base}/v1/jobs/{big}/cancel")).bearer_auth(&token).send().await.unwrap();
    wait_state(&http, &base, &token, next, "succeeded").await;
    let t0 = Instant::now();
    while !containers(&store).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(15), "containers left: {:?}", containers(&store));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Past its memory: killed.
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let spec = json!({"command": "sh", "args": ["-c", hog], "image": IMAGE, "gpus_per_node": 0, "memory_mib": 64});
    let id = submit(&http, &base, &token, &spec).await;
    let job = wait_end(&http, &base, &token, id).await;
    assert_eq!((job["state"].as_str(), job["exit_code"].as_i64()), (Some("failed"), Some(137)), "{job}");
    assert!(!logs(&http, &base, &token, id, "stdout").await.contains("survived"));

    // An image the node does not have: the job fails with podman's reason, nothing is pulled.
    let id =
        submit(&http, &base, &token, &json!({"command": "true", "image": "localhost/absent:1", "gpus_per_node": 0}))
            .await;
    let job = wait_end(&http, &base, &token, id).await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = logs(&http, &base, &token, id, "stderr").await;
    assert!(err.contains("image not known"), "{err}");

    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);
}
