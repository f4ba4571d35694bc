//! The API and the agents over TLS, with a real `drome server`, real agents and the CLI: a client
//! that trusts the server's CA or pins its certificate gets in, one that trusts another CA or
//! pins another certificate is refused in the handshake, and so is an agent; plain HTTP to the
//! TLS port gets nothing. And the listener's timeouts: a client that sends half its headers, or
//! leaves its connection idle, is cut off.

mod common;

use common::{Procs, agent_with, create_tenant, free_port, join_token, server, submit, wait_healthy, wait_state};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const ADMIN: &str = "tls-admin";
const FLEET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fleets/small.toml");

fn https_client(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).unwrap();
    reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn pinned_client(fingerprint: &str) -> reqwest::Client {
    let trust = tls::Trust::Pinned(fingerprint.to_string());
    reqwest::Client::builder()
        .use_preconfigured_tls(tls::client_config(&trust).unwrap())
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

async fn node_has_agent(http: &reqwest::Client, base: &str, name: &str) -> bool {
    let nodes: Value =
        http.get(format!("{base}/v1/nodes")).bearer_auth(ADMIN).send().await.unwrap().json().await.unwrap();
    nodes.as_array().unwrap().iter().any(|n| n["name"] == name && n["agent"] == true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_and_agents_reach_the_api_over_tls_only_when_they_trust_it() {
    let dir = std::env::temp_dir().join(format!("drome-tls-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let ours = tls::self_signed(&dir.join("tls"), &names).unwrap();
    let other = tls::self_signed(&dir.join("other-tls"), &names).unwrap();
    let (cert, key) = (ours.cert.display().to_string(), ours.key.display().to_string());
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("https://127.0.0.1:{port}");
    let args = [
        "--fleet",
        FLEET,
        "--agents",
        "--heartbeat-ms",
        "200",
        "--lease-ms",
        "2000",
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
    ];
    let mut procs = Procs(vec![server(&db, port, ADMIN, &args, &dir, None)]);
    let http = https_client(&ours.ca);
    wait_healthy(&http, &base).await;

    // Trusted by its CA, or by its pinned certificate; refused by another CA or another pin.
    let fingerprint = tls::fingerprint_of_file(&ours.cert).unwrap();
    let wrong_pin = tls::fingerprint_of_file(&other.cert).unwrap();
    assert!(pinned_client(&fingerprint).get(format!("{base}/healthz")).send().await.unwrap().status().is_success());
    let refused = https_client(&other.ca).get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "a client trusting another CA got in: {refused:?}");
    let refused = pinned_client(&wrong_pin).get(format!("{base}/healthz")).send().await;
    assert!(refused.is_err(), "a client pinning another certificate got in: {refused:?}");
    // Plain HTTP to the TLS port: no answer.
    let plain = reqwest::Client::new().get(format!("http://127.0.0.1:{port}/healthz")).send().await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success(), "plain http was answered");

    // Agents: the one that trusts the server runs work; the one that does not never joins.
    let join = join_token(&http, &base, ADMIN).await;
    let ca = ours.ca.display().to_string();
    let other_ca = other.ca.display().to_string();
    // Unsandboxed: this test is about the wire, and runs where the agent may not be root.
    let trusting = ["--sandbox", "off", "--ca-file", &ca];
    let distrusting = ["--sandbox", "off", "--ca-file", &other_ca];
    procs.0.push(agent_with(None, &base, &join, "hall-a-r001-n01", &dir, &trusting));
    procs.0.push(agent_with(None, &base, &join, "hall-a-r001-n02", &dir, &distrusting));
    let token = create_tenant(&http, &base, ADMIN, "lab").await;
    let id = submit(&http, &base, &token, &json!({"command": "echo", "args": ["over tls"], "gpus_per_node": 8})).await;
    let job = wait_state(&http, &base, &token, id, "succeeded").await;
    assert_eq!(job["placement"][0]["node"], "hall-a-r001-n01");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!node_has_agent(&http, &base, "hall-a-r001-n02").await, "an agent trusting another CA joined");
    let log = std::fs::read_to_string(dir.join("hall-a-r001-n02.log")).unwrap_or_default();
    assert!(log.to_lowercase().contains("certificate") || log.contains("tls"), "the refused agent says why: {log}");

    // The CLI: in with the CA file or the fingerprint, out with another pin.
    let cli = |env: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_drome"));
        cmd.args(["jobs", "--output", "json"]).env("DROME_URL", &base).env("DROME_TOKEN", &token);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let out = cli(&[("DROME_CA_FILE", &ca)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("over tls")
            || String::from_utf8_lossy(&out.stdout).contains("echo")
    );
    let out = cli(&[("DROME_SERVER_FINGERPRINT", &fingerprint)]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&[("DROME_SERVER_FINGERPRINT", &wrong_pin)]);
    assert!(!out.status.success(), "the CLI trusted a server it was not pinned to");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads until the server closes the connection; how long that took (`None`: still open after
/// `limit`).
fn closed_within(stream: &mut std::net::TcpStream, limit: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = [0u8; 4096];
    while t0.elapsed() < limit {
        match stream.read(&mut buf) {
            Ok(0) => return Some(t0.elapsed()),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(t0.elapsed()),
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_cut_off() {
    let dir = std::env::temp_dir().join(format!("drome-timeouts-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("drome.db").display());
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let _procs = Procs(vec![server(
        &db,
        port,
        ADMIN,
        &["--fleet", FLEET, "--header-timeout-s", "1", "--request-timeout-s", "1"],
        &dir,
        None,
    )]);
    wait_healthy(&reqwest::Client::new(), &base).await;
    let limit = Duration::from_secs(10);

    // Half a request's headers, then nothing.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").unwrap();
    let took = closed_within(&mut slow, limit).expect("a half-sent request kept its connection");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");

    // A whole request answered, then an idle connection.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let took = closed_within(&mut idle, limit).expect("an idle connection stayed open");
    assert!(took < Duration::from_secs(5), "cut off after {took:?}");

    // Whole headers, then half the body they announce: answered 408, JSON saying why.
    let mut half = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    half.write_all(
        format!("POST /v1/tenants HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\"").as_bytes(),
    )
    .unwrap();
    half.set_read_timeout(Some(limit)).unwrap();
    let t0 = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut half, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("\"timeout\""), "{answer}");
    assert!(t0.elapsed() < Duration::from_secs(5), "answered after {:?}", t0.elapsed());

    // Nothing sent at all.
    let mut silent = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(closed_within(&mut silent, limit).is_some(), "a silent connection stayed open");
    let _ = std::fs::remove_dir_all(&dir);
}
