//! A real server on loopback for the API tests, on SQLite (a temporary file) or PostgreSQL (a
//! fresh database, which must be reachable: without it the PostgreSQL tests fail).
#![allow(dead_code)]

use reqwest::{Method, StatusCode};
use serde_json::Value;
use std::time::Duration;
use store::testing::TempPostgres;

pub const SMALL_FLEET: &str = include_str!("../../../../fleets/small.toml");
pub const ADMIN: &str = "test-admin-token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// Where a test's data lives; dropped (databases, files) by [`Place::cleanup`].
pub struct Place {
    pub url: String,
    pg: Option<TempPostgres>,
    dir: Option<std::path::PathBuf>,
}

impl Place {
    pub async fn new(db: Db) -> Place {
        match db {
            Db::Sqlite => {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let dir = std::env::temp_dir().join(format!("drome-server-test-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&dir);
                Place { url: format!("sqlite://{}/drome.db", dir.display()), pg: None, dir: Some(dir) }
            }
            Db::Postgres => {
                let pg = TempPostgres::create().await.unwrap_or_else(|e| {
                    panic!("PostgreSQL tests need a server on 127.0.0.1:5432 (start it; CI does): {e}")
                });
                Place { url: pg.url.clone(), pg: Some(pg), dir: None }
            }
        }
    }

    pub async fn cleanup(self) {
        if let Some(pg) = self.pg {
            pg.drop_database().await.expect("drop the test database");
        }
        if let Some(dir) = self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub struct TestServer {
    pub base: String,
    pub http: reqwest::Client,
    pub running: Option<server::Running>,
}

pub fn fleet() -> model::Fleet {
    model::fleet_toml::parse_fleet(SMALL_FLEET).expect("small fleet parses")
}

impl TestServer {
    pub async fn start(place: &Place) -> TestServer {
        TestServer::start_with(place, fleet()).await
    }

    pub async fn start_with(place: &Place, fleet: model::Fleet) -> TestServer {
        TestServer::start_tuned(place, fleet, |_| {}).await
    }

    /// A server on `fleet` with its configuration changed by `tune` first.
    pub async fn start_tuned(place: &Place, fleet: model::Fleet, tune: impl FnOnce(&mut server::Config)) -> TestServer {
        let mut config = server::Config::new(place.url.clone(), "127.0.0.1:0".parse().unwrap(), fleet);
        config.budget_every = std::time::Duration::from_millis(200);
        config.admin_token = Some(ADMIN.into());
        config.tick = Duration::from_millis(50);
        tune(&mut config);
        let running = server::start(config).await.expect("server starts");
        TestServer {
            base: format!("http://{}", running.addr),
            http: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
            running: Some(running),
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown().await;
        }
    }

    pub fn req(&self, method: Method, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// Sends and returns the status and the JSON body (`Null` when not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut r = self.req(method, path, token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.expect("request reaches the server");
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    pub async fn raw(&self, path: &str, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .req(Method::POST, path, Some(token))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the server");
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap_or_default();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Creates a tenant and returns its token.
    pub async fn tenant(&self, name: &str, quota: Option<u32>) -> String {
        let body = match quota {
            Some(q) => serde_json::json!({"name": name, "gpu_quota": q}),
            None => serde_json::json!({"name": name}),
        };
        let (status, v) = self.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v["token"].as_str().expect("token").to_string()
    }

    pub async fn submit(&self, token: &str, body: Value) -> Value {
        let (status, v) = self.call(Method::POST, "/v1/jobs", Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{v}");
        v
    }

    pub async fn job(&self, token: &str, id: i64) -> Value {
        let (status, v) = self.call(Method::GET, &format!("/v1/jobs/{id}"), Some(token), None).await;
        assert_eq!(status, StatusCode::OK, "{v}");
        v
    }

    /// Waits until the job is in `state`, returning it.
    pub async fn wait_state(&self, token: &str, id: i64, state: &str) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.job(token, id).await;
            if v["state"] == state {
                return v;
            }
            assert!(std::time::Instant::now() < deadline, "job {id} never reached {state}: {v}");
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

pub fn history(job: &Value) -> Vec<String> {
    job["history"]
        .as_array()
        .map(|h| h.iter().filter_map(|e| e["state"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

/// Runs `$body(db)` as one SQLite and one PostgreSQL test.
#[macro_export]
macro_rules! both_backends {
    ($name:ident, $body:path) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                $body(common::Db::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                $body(common::Db::Postgres).await;
            }
        }
    };
}
