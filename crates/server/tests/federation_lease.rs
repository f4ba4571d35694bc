//! A site's federation lease: federated jobs start only while it holds, so a job the federation
//! moved away from a site cut off from it never starts there; other jobs do not wait for it.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Renews the lease for `lease_ms` and returns its end, Unix ms.
async fn renew(s: &TestServer, lease_ms: u64) -> i64 {
    let (status, v) =
        s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(json!({"lease_ms": lease_ms}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["until_ms"].as_i64().expect("until_ms")
}

async fn federated_jobs_start_only_under_the_lease(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let acme = s.tenant("acme", None).await;
    let sleeper = |federated: bool| json!({"command": "sleep", "args": ["600"], "federated": federated});

    // No lease given: none held, and a federated job waits.
    let (status, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
    assert_eq!((status, lease), (StatusCode::OK, json!({"until_ms": 0})));
    let first = s.submit(&acme, sleeper(true)).await;
    assert_eq!(first["spec"]["federated"], true);
    let first = first["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&acme, first).await["state"], "pending");

    // Under a lease, it starts at once.
    let before = now_ms();
    let until = renew(&s, 2_000).await;
    assert!((before + 2_000..=now_ms() + 2_000).contains(&until), "the lease runs from the site's now: {until}");
    let (_, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
    assert_eq!(lease["until_ms"], until);
    s.wait_state(&acme, first, "running").await;
    assert!(now_ms() < until, "started within the lease");

    // Lapsed: a new federated job waits, a plain one starts.
    tokio::time::sleep(Duration::from_millis((until - now_ms()).max(0) as u64 + 500)).await;
    let second = s.submit(&acme, sleeper(true)).await["id"].as_i64().unwrap();
    let plain = s.submit(&acme, sleeper(false)).await;
    assert!(plain["spec"].get("federated").is_none_or(|f| f == false), "{plain}");
    s.wait_state(&acme, plain["id"].as_i64().unwrap(), "running").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&acme, second).await["state"], "pending");
    assert_eq!(s.job(&acme, first).await["state"], "running", "what runs goes on");

    // Renewed: the waiting one starts right away; renewed again while it holds.
    renew(&s, 60_000).await;
    s.wait_state(&acme, second, "running").await;
    renew(&s, 60_000).await;

    // Only the admin (the federation endpoint's token) renews, within bounds.
    let (status, _) = s.call(Method::PUT, "/v1/federation/lease", Some(&acme), Some(json!({"lease_ms": 2000}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::GET, "/v1/federation/lease", Some(&acme), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for lease_ms in [json!(0), json!(600_001), json!(-5), json!("soon")] {
        let (status, err) =
            s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(json!({"lease_ms": lease_ms}))).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{lease_ms}: {err}");
        assert_eq!(err["error"]["field"], "lease_ms", "{err}");
    }
    let (status, _) = s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(json!({}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A lease taken anew is on the audit log (twice here), its renewals while it holds are not.
    let (_, audit) = s.call(Method::GET, "/v1/audit", Some(ADMIN), None).await;
    let renewals = audit.as_array().unwrap().iter().filter(|e| e["action"] == "federation.lease").count();
    assert_eq!(renewals, 2, "{audit}");
    s.stop().await;
    place.cleanup().await;
}
both_backends!(lease_tests, federated_jobs_start_only_under_the_lease);

/// A server on `place` whose leader lease is short: a restart on PostgreSQL leads soon.
async fn start_quick(place: &Place) -> TestServer {
    TestServer::start_tuned(place, common::fleet(), |c| c.leader_lease = Duration::from_millis(1_000)).await
}

/// The lease as the server answers it, once it leads (on PostgreSQL a restarted server leads
/// once the stopped one's leader lease runs out).
async fn lease_once_leading(s: &TestServer) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
        if status == StatusCode::OK {
            return lease;
        }
        assert!(std::time::Instant::now() < deadline, "the restarted server never leads: {status} {lease}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A restarted server reads the lease from its store: a lapsed one still holds federated jobs,
/// one that holds lets them start with no renewal.
async fn a_restart_reads_the_lease(db: Db) {
    let place = Place::new(db).await;
    let s = start_quick(&place).await;
    let acme = s.tenant("acme", None).await;
    let until = renew(&s, 1).await;
    let held = s.submit(&acme, json!({"command": "sleep", "args": ["600"], "federated": true})).await;
    let held = held["id"].as_i64().unwrap();
    s.stop().await;

    let s = start_quick(&place).await;
    assert_eq!(lease_once_leading(&s).await["until_ms"], until);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&acme, held).await["state"], "pending");
    s.stop().await;

    // A renewal recorded just before a restart: the next server starts the job on its own.
    let store = store::Store::connect(&place.url).await.expect("store opens");
    store.set_setting("federation_lease_until_ms", &(now_ms() + 60_000).to_string()).await.unwrap();
    store.close().await;
    let s = start_quick(&place).await;
    lease_once_leading(&s).await;
    s.wait_state(&acme, held, "running").await;
    s.stop().await;
    place.cleanup().await;
}
both_backends!(restart_tests, a_restart_reads_the_lease);
