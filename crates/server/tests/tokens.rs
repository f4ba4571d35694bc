//! Tenants' tokens and the audit log, through a real server on loopback, on both stores: a
//! rotated token replaces the old one at once, a revoked or expired one is refused at once, a
//! removed tenant is locked out and cannot be removed while it has work; every admin action is
//! in the audit log.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

async fn tokens_and_audit(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let old = s.tenant("lab", None).await;
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&old), None).await.0, StatusCode::OK);

    // Rotated: the new token works, the old one is refused at once.
    let (status, made) = s.call(Method::POST, "/v1/tenants/lab/token", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK, "{made}");
    let new = made["token"].as_str().unwrap().to_string();
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&old), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&new), None).await.0, StatusCode::OK);
    // Only the admin rotates.
    assert_eq!(s.call(Method::POST, "/v1/tenants/lab/token", Some(&new), None).await.0, StatusCode::FORBIDDEN);

    // Revoked: refused at once, until a new one is made.
    assert_eq!(s.call(Method::DELETE, "/v1/tenants/lab/token", Some(ADMIN), None).await.0, StatusCode::NO_CONTENT);
    let (status, body) = s.call(Method::GET, "/v1/jobs", Some(&new), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");

    // A token for one second: works, then expires.
    let (_, made) = s.call(Method::POST, "/v1/tenants/lab/token", Some(ADMIN), Some(json!({"ttl_s": 1}))).await;
    let brief = made["token"].as_str().unwrap().to_string();
    assert!(made["tenant"]["token_expires_at_ms"].as_i64().is_some(), "{made}");
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&brief), None).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = s.call(Method::GET, "/v1/jobs", Some(&brief), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"), "{body}");
    let (status, _) = s.call(Method::POST, "/v1/tenants/lab/token", Some(ADMIN), Some(json!({"ttl_s": 0}))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Removal: refused while work waits or runs, then done; the tenant is locked out.
    let (_, made) = s.call(Method::POST, "/v1/tenants/lab/token", Some(ADMIN), None).await;
    let token = made["token"].as_str().unwrap().to_string();
    let job = s.submit(&token, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 1})).await;
    let id = job["id"].as_i64().unwrap();
    s.wait_state(&token, id, "running").await;
    assert_eq!(s.call(Method::DELETE, "/v1/tenants/lab", Some(ADMIN), None).await.0, StatusCode::CONFLICT);
    s.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(&token), None).await;
    // Cancelled, its run is still being stopped (and counts as running) until it has ended.
    let t0 = std::time::Instant::now();
    while s.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&token), None).await.1["finished_at_ms"].is_null() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the cancelled run never ended");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.call(Method::DELETE, "/v1/tenants/lab", Some(ADMIN), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(s.call(Method::GET, "/v1/jobs", Some(&token), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(s.call(Method::DELETE, "/v1/tenants/lab", Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call(Method::POST, "/v1/tenants/lab/token", Some(ADMIN), None).await.0, StatusCode::NOT_FOUND);

    // The audit log holds every admin action, newest first; only the admin reads it.
    s.call(Method::PUT, "/v1/tenants/other/quota", Some(ADMIN), Some(json!({"gpu_quota": 1}))).await;
    s.tenant("other", Some(4)).await;
    s.call(Method::PUT, "/v1/tenants/other/quota", Some(ADMIN), Some(json!({"gpu_quota": 2}))).await;
    let (status, log) = s.call(Method::GET, "/v1/audit", Some(ADMIN), None).await;
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["target"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        vec![
            ("quota.set", "other"),
            ("tenant.create", "other"),
            ("tenant.remove", "lab"),
            ("tenant.token.rotate", "lab"),
            ("tenant.token.rotate", "lab"),
            ("tenant.token.revoke", "lab"),
            ("tenant.token.rotate", "lab"),
            ("tenant.create", "lab"),
        ],
        "{log}"
    );
    assert!(log[0]["detail"].as_str().unwrap().contains("\"gpu_quota\":2"), "{log}");
    let other = s.tenant("third", None).await;
    assert_eq!(s.call(Method::GET, "/v1/audit", Some(&other), None).await.0, StatusCode::FORBIDDEN);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(token_tests, tokens_and_audit);
