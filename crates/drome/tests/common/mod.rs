//! Helpers shared by the tests that run the real `drome` binary as processes.
#![allow(dead_code)]

use std::process::Child;

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Child processes killed and reaped when the test ends, pass or fail.
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Sends `request` and reads its JSON answer.
pub async fn json_of(request: reqwest::RequestBuilder) -> serde_json::Value {
    request.send().await.expect("request sent").json().await.expect("a JSON answer")
}

/// Waits until the server at `base` answers `/healthz` (at most 60 s); how long that took.
pub async fn wait_healthy(http: &reqwest::Client, base: &str) -> std::time::Duration {
    let t0 = std::time::Instant::now();
    while !matches!(http.get(format!("{base}/healthz")).send().await, Ok(r) if r.status().is_success()) {
        assert!(t0.elapsed() < std::time::Duration::from_secs(60), "server at {base} never became healthy");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    t0.elapsed()
}

/// Creates the tenant `name` with the admin token; its token.
pub async fn create_tenant(http: &reqwest::Client, base: &str, admin: &str, name: &str) -> String {
    let t =
        json_of(http.post(format!("{base}/v1/tenants")).bearer_auth(admin).json(&serde_json::json!({"name": name})))
            .await;
    t["token"].as_str().unwrap_or_else(|| panic!("no tenant token in {t}")).to_string()
}

/// A node join token good for 16 joins, made with the admin token.
pub async fn join_token(http: &reqwest::Client, base: &str, admin: &str) -> String {
    let j =
        json_of(http.post(format!("{base}/v1/join-tokens")).bearer_auth(admin).json(&serde_json::json!({"uses": 16})))
            .await;
    j["token"].as_str().unwrap_or_else(|| panic!("no join token in {j}")).to_string()
}

/// `drome agent` serving the virtual 8-GPU H200 node `name`, with its work under `dir/name` and
/// its log appended to `dir/name.log`; run inside network namespace `netns` when given.
pub fn agent(netns: Option<&str>, base: &str, join: &str, name: &str, dir: &std::path::Path) -> Child {
    agent_with(netns, base, join, name, dir, &[])
}

/// [`agent`] with `extra` arguments after the usual ones.
pub fn agent_with(
    netns: Option<&str>,
    base: &str,
    join: &str,
    name: &str,
    dir: &std::path::Path,
    extra: &[&str],
) -> Child {
    use std::process::{Command, Stdio};
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{name}.log"))).unwrap();
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_drome")]);
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_drome")),
    };
    cmd.args(["agent", "--server", base, "--join-token", join, "--name", name]);
    if netns.is_some() {
        // `ip netns exec` mounts a /sys of the namespace's, without the cgroup hierarchies:
        // there the agent cannot sandbox, and refuses to run jobs as root unless told to.
        cmd.args(["--sandbox", "off"]);
    }
    cmd.args(["--declared-gpus", "8", "--gpu-model", "H200", "--kill-grace", "1"])
        .arg("--work-dir")
        .arg(dir.join(name))
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// `drome server` listening on `port` over `db`, with `admin` as its admin token and `args`
/// after, its log appended to `dir/server.log`; `failpoint` sets `DROME_FAILPOINT`.
pub fn server(
    db: &str,
    port: u16,
    admin: &str,
    args: &[&str],
    dir: &std::path::Path,
    failpoint: Option<&str>,
) -> Child {
    use std::process::{Command, Stdio};
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("server.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drome"));
    cmd.args(["server", "--db", db, "--listen", &format!("127.0.0.1:{port}"), "--admin-token", admin])
        .args(args)
        .env("RUST_LOG", "info,sqlx=warn")
        .stdout(Stdio::null())
        .stderr(log);
    if let Some(f) = failpoint {
        cmd.env("DROME_FAILPOINT", f);
    }
    cmd.spawn().unwrap()
}

/// Waits (at most 30 s) until `child`, a server with a failpoint, has aborted; fails the test if
/// it never does or exits cleanly.
pub async fn wait_aborted(child: &mut Child) {
    let t0 = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(30), "the failpoint never fired");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "the server aborted: {status:?}");
}

/// Submits `spec` as the tenant of `token`; the new job's id.
pub async fn submit(http: &reqwest::Client, base: &str, token: &str, spec: &serde_json::Value) -> i64 {
    let v = json_of(http.post(format!("{base}/v1/jobs")).bearer_auth(token).json(spec)).await;
    v["id"].as_i64().unwrap_or_else(|| panic!("submit failed: {v}"))
}

/// A job as the API shows it; `None` while the server does not answer.
pub async fn get_job(http: &reqwest::Client, base: &str, token: &str, id: i64) -> Option<serde_json::Value> {
    let r = http.get(format!("{base}/v1/jobs/{id}")).bearer_auth(token).send().await.ok()?;
    r.json().await.ok()
}

/// Waits (at most 30 s) until job `id` is in `state`; the job as the API then shows it.
pub async fn wait_state(http: &reqwest::Client, base: &str, token: &str, id: i64, state: &str) -> serde_json::Value {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(v) = get_job(http, base, token, id).await
            && v["state"] == state
        {
            return v;
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "job {id} never became {state}: {:?}",
            get_job(http, base, token, id).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A directory test jobs write marks into: jobs run as uids of their own (sandboxed), so it is
/// open to all, as a shared scratch file system would be.
pub fn shared_dir(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
}

pub fn ip(args: &[&str]) -> bool {
    std::process::Command::new("ip")
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A network namespace with a veth pair to this host, deleted when dropped.
pub struct Netns {
    pub name: String,
    pub host_if: String,
    pub host_addr: String,
    pub ns_addr: String,
}

impl Netns {
    /// `None` where namespaces cannot be made (needs root and `ip netns`).
    pub fn create() -> Option<Netns> {
        let k = std::process::id() % 50_000;
        let (name, host_if, ns_if) = (format!("drome-p{k}"), format!("dph{k}"), format!("dpn{k}"));
        let net = format!("10.213.{}", k % 250);
        let (host_addr, ns_addr) = (format!("{net}.1"), format!("{net}.2"));
        let _ =
            std::process::Command::new("ip").args(["netns", "del", &name]).stderr(std::process::Stdio::null()).status();
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &host_if])
            .stderr(std::process::Stdio::null())
            .status();
        if !ip(&["netns", "add", &name]) {
            return None;
        }
        let made = Netns {
            name: name.clone(),
            host_if: host_if.clone(),
            host_addr: host_addr.clone(),
            ns_addr: ns_addr.clone(),
        };
        let ok = ip(&["link", "add", &host_if, "type", "veth", "peer", "name", &ns_if])
            && ip(&["link", "set", &ns_if, "netns", &name])
            && ip(&["addr", "add", &format!("{host_addr}/30"), "dev", &host_if])
            && ip(&["link", "set", &host_if, "up"])
            && ip(&["netns", "exec", &name, "ip", "addr", "add", &format!("{ns_addr}/30"), "dev", &ns_if])
            && ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])
            && ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        ok.then_some(made)
    }

    /// Cuts (`false`) or heals (`true`) the link.
    pub fn link(&self, up: bool) {
        assert!(ip(&["link", "set", &self.host_if, if up { "up" } else { "down" }]), "cannot set the veth link");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.host_if])
            .stderr(std::process::Stdio::null())
            .status();
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
