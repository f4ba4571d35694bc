//! A tenant's limits, through a real server on loopback: a flooding tenant gets 429 with
//! `Retry-After` while another tenant's requests go through; past its pending jobs or its open
//! event streams a tenant is refused, and gets its place back as they go.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

fn limited(rate: f64, burst: f64, streams: u32, pending: u64) -> impl FnOnce(&mut server::Config) {
    move |c: &mut server::Config| {
        c.tenant_limits = server::limits::TenantLimits {
            requests_per_s: rate,
            burst,
            streams,
            pending_jobs: pending,
            concurrency: 0,
        };
    }
}

async fn a_flood_is_slowed_and_others_go_on(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), limited(20.0, 20.0, 0, 0)).await;
    let (flood, quiet) = (s.tenant("flood", None).await, s.tenant("quiet", None).await);
    let (mut ok, mut limited_at) = (0, None);
    for i in 0..60 {
        let r = s.req(Method::GET, "/v1/jobs", Some(&flood)).send().await.unwrap();
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
                let body: serde_json::Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited_at.get_or_insert(i);
            }
            other => panic!("unexpected {other}"),
        }
        // The other tenant, all along at a quarter of the pace: never refused.
        if i % 4 == 0 {
            let (status, _) = s.call(Method::GET, "/v1/jobs", Some(&quiet), None).await;
            assert_eq!(status, StatusCode::OK, "the quiet tenant was refused at request {i}");
        }
    }
    assert!(limited_at.is_some_and(|i| i >= 19), "the burst of 20 passed first: limited from {limited_at:?}");
    assert!(ok < 60, "nothing was refused");
    // The admin is not limited.
    for _ in 0..40 {
        assert_eq!(s.call(Method::GET, "/v1/tenants", Some(ADMIN), None).await.0, StatusCode::OK);
    }
    // After a pause, the flooding tenant gets in again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&flood), None).await.0, StatusCode::OK);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(flood_tests, a_flood_is_slowed_and_others_go_on);

async fn pending_jobs_and_streams_are_capped(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), limited(0.0, 0.0, 2, 3)).await;
    let lab = s.tenant("lab", Some(8)).await;
    // One job holds the quota; the next three wait; a fourth waiting one is refused.
    let running = s.submit(&lab, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8})).await;
    s.wait_state(&lab, running["id"].as_i64().unwrap(), "running").await;
    // Pending jobs are read from the store every second, those queued since counted on top.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..3 {
        s.submit(&lab, json!({"command": "sleep", "args": ["1"], "gpus_per_node": 8})).await;
    }
    let (status, body) =
        s.call(Method::POST, "/v1/jobs", Some(&lab), Some(json!({"command": "x", "gpus_per_node": 8}))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("3 jobs"), "{body}");
    // Another tenant is not held by it.
    let other = s.tenant("other", None).await;
    s.submit(&other, json!({"command": "true", "gpus_per_node": 1})).await;

    // Event streams: two at once; a third is refused until one closes.
    let open = |token: String| {
        let req = s.req(Method::GET, "/v1/events", Some(&token));
        async move { req.send().await.unwrap() }
    };
    let first = open(lab.clone()).await;
    let second = open(lab.clone()).await;
    assert_eq!((first.status(), second.status()), (StatusCode::OK, StatusCode::OK));
    let third = open(lab.clone()).await;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(open(other.clone()).await.status(), StatusCode::OK, "another tenant's streams count apart");
    drop(first);
    let t0 = std::time::Instant::now();
    loop {
        let again = open(lab.clone()).await;
        if again.status() == StatusCode::OK {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "a closed stream never gave its place back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(second);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(cap_tests, pending_jobs_and_streams_are_capped);
