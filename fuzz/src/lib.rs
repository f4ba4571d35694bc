//! A real drome server on loopback for the API and agent protocol targets: SQLite in a temporary
//! directory, nodes run by agents (none joined unless a target joins one: nothing a fuzzed job
//! asks for ever runs), an admin and two tenants.

use std::sync::OnceLock;
use std::time::Duration;

pub const ADMIN: &str = "fuzz-admin-token";
pub const FLEET: &str = include_str!("../../fleets/small.toml");

pub struct Harness {
    pub rt: tokio::runtime::Runtime,
    pub base: String,
    pub http: reqwest::Client,
    /// The tenant `acme`'s token.
    pub tenant: String,
    _server: server::Running,
}

/// What a request came back with.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Harness {
    /// The process's one server, started on first use.
    pub fn get() -> &'static Harness {
        static HARNESS: OnceLock<Harness> = OnceLock::new();
        HARNESS.get_or_init(Harness::start)
    }

    fn start() -> Harness {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
        let dir = std::env::temp_dir().join(format!("drome-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fleet = model::fleet_toml::parse_fleet(FLEET).expect("the small fleet parses");
        let mut config = server::Config::new(
            format!("sqlite://{}/drome.db", dir.display()),
            "127.0.0.1:0".parse().expect("an address"),
            fleet,
        );
        config.admin_token = Some(ADMIN.into());
        config.tick = Duration::from_millis(20);
        config.agents = Some(server::LeaseConfig::new(Duration::from_millis(50), Duration::from_secs(2)));
        let running = rt.block_on(server::start(config)).expect("the server starts");
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().expect("a client");
        let mut h = Harness { rt, base, http, tenant: String::new(), _server: running };
        for name in ["acme", "other"] {
            let a = h.call(
                "POST",
                "/v1/tenants",
                Some(ADMIN),
                Some(format!(r#"{{"name":"{name}","gpu_quota":16}}"#).into()),
            );
            assert_eq!(a.status, 201, "tenant {name}: {}", String::from_utf8_lossy(&a.body));
            if name == "acme" {
                let v: serde_json::Value = serde_json::from_slice(&a.body).expect("json");
                h.tenant = v["token"].as_str().expect("a token").to_string();
            }
        }
        let tenant = h.tenant.clone();
        let a = h.call("POST", "/v1/jobs", Some(&tenant), Some(br#"{"command":"true","gpus_per_node":1}"#.to_vec()));
        assert_eq!(a.status, 201, "a job: {}", String::from_utf8_lossy(&a.body));
        h
    }

    /// Sends one request; `None` when the server did not answer (closed, timed out).
    pub fn try_call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Option<Answer> {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("a method");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        self.rt.block_on(async move {
            let resp = req.send().await.ok()?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.ok()?.to_vec();
            Some(Answer { status, body })
        })
    }

    pub fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Answer {
        self.try_call(method, path, token, body).expect("the server answers")
    }

    /// Sends a fuzzed request: the server answers it, never with a 5xx, and a refusal says why.
    pub fn check(&self, method: &str, path: &str, token: Option<&str>, body: Option<Vec<u8>>) -> Answer {
        let shown = body.as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
        let Some(a) = self.try_call(method, path, token, body) else {
            panic!("no answer to {method} {path} {shown:?}");
        };
        assert!(a.status < 500, "{method} {path} {shown:?} -> {}: {}", a.status, String::from_utf8_lossy(&a.body));
        if (400..500).contains(&a.status) && a.status != 405 {
            let error: Result<serde_json::Value, _> = serde_json::from_slice(&a.body);
            let message = error.as_ref().ok().and_then(|v| v["error"]["message"].as_str().map(str::to_string));
            assert!(
                message.is_some_and(|m| !m.is_empty()),
                "{method} {path} {shown:?} -> {} without an error message: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        a
    }
}

/// `bytes` as one percent-encoded path segment or query (everything but unreserved characters
/// encoded; `keep` characters kept, such as `=&` for a query).
pub fn encode(bytes: &[u8], keep: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
