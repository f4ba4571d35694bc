//! Monthly budgets through a real server on loopback, on both stores: of concurrent
//! submissions, exactly those that fit the budget are taken (each job's most: its runtime bound
//! at the price list); the others are refused with the budget, what was spent and held, and the
//! job's most; a job without a runtime bound is refused by that field; another tenant is not
//! held back; lowering the budget stops no work unless the admin asked for it; only the admin
//! sets one.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn concurrent_submissions_never_pass_the_budget(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let (lab, other) = (s.tenant("lab", None).await, s.tenant("other", None).await);
    let prices = json!({"currency": "EUR", "gpu_hour_default": 10.0});
    let (status, _) = s.call(Method::PUT, "/v1/prices", Some(ADMIN), Some(prices)).await;
    assert_eq!(status, StatusCode::OK);
    let budget = json!({"monthly": 55.0});
    let (status, v) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(&lab), Some(budget.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a tenant sets no budget: {v}");
    let (status, v) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(budget)).await;
    assert_eq!((status, v["monthly"].as_f64()), (StatusCode::OK, Some(55.0)), "{v}");

    // One GPU for at most an hour: 10 EUR at most each; 55 EUR takes five of twenty.
    let job = json!({"gpus_per_node": 1, "command": "sleep", "args": ["600"], "max_runtime_s": 3600});
    let sends = (0..20).map(|_| s.call(Method::POST, "/v1/jobs", Some(&lab), Some(job.clone())));
    let answers = futures_util::future::join_all(sends).await;
    let taken = answers.iter().filter(|(st, _)| *st == StatusCode::CREATED).count();
    let refused: Vec<_> = answers.iter().filter(|(st, _)| *st == StatusCode::FORBIDDEN).collect();
    assert_eq!((taken, refused.len()), (5, 15), "{answers:?}");
    let message = refused[0].1["error"]["message"].as_str().unwrap();
    assert!(message.contains("budget of 55.00 EUR") && message.contains("may cost up to 10.00 EUR"), "{message}");

    let (status, b) = s.call(Method::GET, "/v1/budget", Some(&lab), None).await;
    assert_eq!(status, StatusCode::OK);
    let committed = b["spent"].as_f64().unwrap() + b["held"].as_f64().unwrap();
    assert!((committed - 50.0).abs() < 1e-6, "five jobs of 10 EUR at most: {b}");

    // Room for one more; its retry under the same key is answered with it, not refused.
    let (status, _) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(json!({"monthly": 60.0}))).await;
    assert_eq!(status, StatusCode::OK);
    let keyed = || s.req(Method::POST, "/v1/jobs", Some(&lab)).header("idempotency-key", "once").json(&job);
    let first = keyed().send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = keyed().send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK, "{:?}", again.text().await);

    // No runtime bound, no cost bound: refused by that field.
    let (status, v) = s.call(Method::POST, "/v1/jobs", Some(&lab), Some(json!({"gpus_per_node": 1}))).await;
    assert_eq!(
        (status, v["error"]["field"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("max_runtime_s")),
        "{v}"
    );
    // Another tenant has no budget.
    s.submit(&other, json!({"gpus_per_node": 1, "command": "sleep", "args": ["600"]})).await;
    let (status, _) = s.call(Method::GET, "/v1/budget?tenant=lab", Some(&other), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // A lower budget refuses new work and stops none.
    let (status, _) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(json!({"monthly": 1.0}))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.call(Method::POST, "/v1/jobs", Some(&lab), Some(job.clone())).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, jobs) = s.call(Method::GET, "/v1/jobs", Some(&lab), None).await;
    let active = jobs["jobs"].as_array().unwrap().iter().filter(|j| j["state"] != "cancelled").count();
    assert_eq!(active, 6, "{jobs}");
    // The admin's choice: past the budget, running and waiting work is cancelled too (a job
    // of 10 EUR an hour spends 0.001 EUR in under a second); another tenant's goes on.
    let (status, v) =
        s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(json!({"stop_running": true}))).await;
    assert_eq!((status, v["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("stop_running")));
    let stop = json!({"monthly": 0.001, "stop_running": true});
    let (status, v) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(stop)).await;
    assert_eq!((status, v["stop_running"].as_bool()), (StatusCode::OK, Some(true)), "{v}");
    let t0 = std::time::Instant::now();
    loop {
        let (_, jobs) = s.call(Method::GET, "/v1/jobs", Some(&lab), None).await;
        let jobs = jobs["jobs"].as_array().unwrap().clone();
        if jobs.iter().all(|j| j["state"] == "cancelled") {
            let spent = jobs.iter().find(|j| j["message"].as_str().is_some_and(|m| m.contains("budget")));
            assert!(spent.is_some(), "cancelled for the budget: {jobs:?}");
            break;
        }
        assert!(t0.elapsed() < std::time::Duration::from_secs(20), "never stopped: {jobs:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (_, others) = s.call(Method::GET, "/v1/jobs", Some(&other), None).await;
    assert!(others["jobs"].as_array().unwrap().iter().all(|j| j["state"] != "cancelled"), "{others}");
    // Removed: taken again.
    let (status, v) = s.call(Method::PUT, "/v1/tenants/lab/budget", Some(ADMIN), Some(json!({}))).await;
    assert_eq!((status, v.get("monthly")), (StatusCode::OK, None), "{v}");
    s.submit(&lab, job).await;
    let (_, audit) = s.call(Method::GET, "/v1/audit", Some(ADMIN), None).await;
    assert!(audit.as_array().unwrap().iter().any(|e| e["action"] == "budget.set"), "{audit}");
    s.stop().await;
    place.cleanup().await;
}
both_backends!(budget_tests, concurrent_submissions_never_pass_the_budget);
