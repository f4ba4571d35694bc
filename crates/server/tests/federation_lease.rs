//! A site's federation lease and per-job grants: a federated job starts only while the lease
//! holds and once the federation has granted it, so a job the federation moved away from a
//! site cut off from it never starts there, and the federation knows which of its jobs may
//! have started; other jobs wait for neither.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// Renews the lease for `lease_ms`, granting `grant`, and returns the answer.
async fn renew_granting(s: &TestServer, lease_ms: u64, grant: &[i64]) -> Value {
    let body = json!({"lease_ms": lease_ms, "grant": grant});
    let (status, v) = s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert!(v["until_ms"].is_i64(), "{v}");
    v
}

/// Renews the lease for `lease_ms`, granting nothing, and returns its end, Unix ms.
async fn renew(s: &TestServer, lease_ms: u64) -> i64 {
    let (status, v) =
        s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(json!({"lease_ms": lease_ms}))).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    v["until_ms"].as_i64().expect("until_ms")
}

fn waiting_ids(lease: &Value) -> Vec<i64> {
    lease["waiting_for_grant"].as_array().expect("waiting_for_grant").iter().map(|v| v.as_i64().unwrap()).collect()
}

/// Polls the lease until `job` is (or is not) among the jobs waiting for a grant.
async fn wait_waiting(s: &TestServer, job: i64, waits: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
        assert_eq!(status, StatusCode::OK, "{lease}");
        if waiting_ids(&lease).contains(&job) == waits {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "job {job} waiting for a grant should be {waits}: {lease}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn federated_jobs_start_only_under_the_lease_once_granted(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let acme = s.tenant("acme", None).await;
    let sleeper = |federated: bool| json!({"command": "sleep", "args": ["600"], "federated": federated});

    // No lease given: none held, no job waits for a grant, and a federated job waits.
    let (status, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
    assert_eq!((status, lease), (StatusCode::OK, json!({"until_ms": 0, "waiting_for_grant": []})));
    let first = s.submit(&acme, sleeper(true)).await;
    assert_eq!(first["spec"]["federated"], true);
    let first = first["id"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&acme, first).await["state"], "pending");
    wait_waiting(&s, first, false).await;

    // Under a lease but not granted: it waits, and the site asks for its grant.
    let before = now_ms();
    let until = renew(&s, 60_000).await;
    assert!((before + 60_000..=now_ms() + 60_000).contains(&until), "the lease runs from the site's now: {until}");
    wait_waiting(&s, first, true).await;
    assert_eq!(s.job(&acme, first).await["state"], "pending", "no start without its grant");

    // Granted: it starts at once and waits no more.
    let answer = renew_granting(&s, 2_000, &[first]).await;
    let until = answer["until_ms"].as_i64().unwrap();
    assert!(!waiting_ids(&answer).contains(&first), "granted, not waiting: {answer}");
    let (_, lease) = s.call(Method::GET, "/v1/federation/lease", Some(ADMIN), None).await;
    assert_eq!(lease["until_ms"], until);
    s.wait_state(&acme, first, "running").await;
    assert!(now_ms() < until, "started within the lease");
    wait_waiting(&s, first, false).await;

    // Lapsed: a new federated job waits (for the lease, not asking for a grant), a plain one
    // starts with neither.
    tokio::time::sleep(Duration::from_millis((until - now_ms()).max(0) as u64 + 500)).await;
    let second = s.submit(&acme, sleeper(true)).await["id"].as_i64().unwrap();
    let plain = s.submit(&acme, sleeper(false)).await;
    assert!(plain["spec"].get("federated").is_none_or(|f| f == false), "{plain}");
    s.wait_state(&acme, plain["id"].as_i64().unwrap(), "running").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&acme, second).await["state"], "pending");
    assert_eq!(s.job(&acme, first).await["state"], "running", "what runs goes on");
    wait_waiting(&s, second, false).await;

    // Renewed: the waiting one asks for its grant and starts once given it; renewed again while
    // the lease holds.
    renew(&s, 60_000).await;
    wait_waiting(&s, second, true).await;
    renew_granting(&s, 60_000, &[second]).await;
    s.wait_state(&acme, second, "running").await;
    wait_waiting(&s, second, false).await;

    // A grant does not stand for the lease: a job granted while its tenant's quota keeps it
    // from starting stays pending once the lease has lapsed, then starts under the next lease
    // with no new grant (a grant lasts until the job starts).
    let beta = s.tenant("beta", Some(1)).await;
    let hog =
        s.submit(&beta, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 1})).await["id"].as_i64().unwrap();
    s.wait_state(&beta, hog, "running").await;
    let third =
        s.submit(&beta, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 1, "federated": true})).await;
    let third = third["id"].as_i64().unwrap();
    let until = renew_granting(&s, 300, &[third]).await["until_ms"].as_i64().unwrap();
    tokio::time::sleep(Duration::from_millis((until - now_ms()).max(0) as u64 + 200)).await;
    let (status, _) = s.call(Method::POST, &format!("/v1/jobs/{hog}/cancel"), Some(&beta), None).await;
    assert_eq!(status, StatusCode::OK);
    s.wait_state(&beta, hog, "cancelled").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(s.job(&beta, third).await["state"], "pending", "granted, but the lease lapsed");
    renew(&s, 60_000).await;
    s.wait_state(&beta, third, "running").await;

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
    let too_many: Vec<i64> = (1..=10_001).collect();
    let body = json!({"lease_ms": 60_000, "grant": too_many});
    let (status, err) = s.call(Method::PUT, "/v1/federation/lease", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    assert_eq!(err["error"]["field"], "grant", "{err}");
    // Ids of no job here are granted harmlessly, up to the bound.
    let unknown: Vec<i64> = (-10_000..0).collect();
    renew_granting(&s, 60_000, &unknown).await;

    // A lease taken anew is on the audit log (three times here), its renewals while it holds
    // are not.
    let (_, audit) = s.call(Method::GET, "/v1/audit", Some(ADMIN), None).await;
    let renewals = audit.as_array().unwrap().iter().filter(|e| e["action"] == "federation.lease").count();
    assert_eq!(renewals, 3, "{audit}");
    s.stop().await;
    place.cleanup().await;
}
both_backends!(lease_tests, federated_jobs_start_only_under_the_lease_once_granted);

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

/// A restarted server reads the lease from its store: a lapsed one still holds federated jobs;
/// under one that holds they ask for their grants again (grants live in memory only) and start
/// once given them.
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

    // A renewal recorded just before a restart: the next server asks for the job's grant.
    let store = store::Store::connect(&place.url).await.expect("store opens");
    store.set_setting("federation_lease_until_ms", &(now_ms() + 60_000).to_string()).await.unwrap();
    store.close().await;
    let s = start_quick(&place).await;
    lease_once_leading(&s).await;
    wait_waiting(&s, held, true).await;
    assert_eq!(s.job(&acme, held).await["state"], "pending");
    renew_granting(&s, 60_000, &[held]).await;
    s.wait_state(&acme, held, "running").await;
    s.stop().await;
    place.cleanup().await;
}
both_backends!(restart_tests, a_restart_reads_the_lease);

/// A site cut off from its federation for as long again as its lease stops its federated runs
/// that restart on failure, as a cancellation does (the federation restarts them elsewhere);
/// federated runs that never restart go on (reported lost meanwhile), as do jobs not federated.
async fn a_long_lapse_stops_federated_runs_that_restart_elsewhere(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let acme = s.tenant("acme", None).await;
    let sleeper = |federated: bool, policy: &str| json!({"command": "sleep", "args": ["600"], "federated": federated, "restart_policy": policy});
    let moves = s.submit(&acme, sleeper(true, "on-failure")).await["id"].as_i64().unwrap();
    let stays = s.submit(&acme, sleeper(true, "never")).await["id"].as_i64().unwrap();
    let plain = s.submit(&acme, sleeper(false, "on-failure")).await["id"].as_i64().unwrap();
    let lease_ms = 1_500;
    let until = renew_granting(&s, lease_ms as u64, &[moves, stays]).await["until_ms"].as_i64().unwrap();
    for id in [moves, stays, plain] {
        s.wait_state(&acme, id, "running").await;
    }

    // Lapsed, but not yet for as long again: everything runs on.
    tokio::time::sleep(Duration::from_millis((until + lease_ms / 2 - now_ms()).max(0) as u64)).await;
    assert_eq!(s.job(&acme, moves).await["state"], "running", "lapsed for less than the lease");

    // Lapsed for as long again: the one that restarts elsewhere is cancelled, its run stopped.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let stopped = loop {
        let job = s.job(&acme, moves).await;
        if job["finished_at_ms"].is_i64() {
            break job;
        }
        assert!(std::time::Instant::now() < deadline, "never stopped: {job}");
        tokio::time::sleep(Duration::from_millis(30)).await;
    };
    assert_eq!(stopped["state"], "cancelled", "{stopped}");
    assert_eq!(
        stopped["message"],
        "stopped: this site lost its federation for longer than its lease; the federation restarts it elsewhere"
    );
    let history = stopped["history"].as_array().unwrap();
    let cancelled = history.iter().find(|c| c["state"] == "cancelled").expect("cancelled in its history");
    let stopped_at = cancelled["at_ms"].as_i64().unwrap();
    assert!(stopped_at >= until + lease_ms, "stopped {}ms after the lease's end", stopped_at - until);
    for id in [stays, plain] {
        assert_eq!(s.job(&acme, id).await["state"], "running", "job {id} runs on");
    }

    // A renewal re-opens the lease; the stopped job stays ended, the others run on.
    renew(&s, 60_000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.job(&acme, moves).await["state"], "cancelled");
    for id in [stays, plain] {
        assert_eq!(s.job(&acme, id).await["state"], "running", "job {id} runs on");
    }
    s.stop().await;
    place.cleanup().await;
}
both_backends!(long_lapse_tests, a_long_lapse_stops_federated_runs_that_restart_elsewhere);
