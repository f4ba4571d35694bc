//! The REST API end to end, through a real server on loopback, on SQLite and on PostgreSQL.

mod common;

use common::{ADMIN, Db, Place, TestServer, history};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::Duration;

async fn lifecycle(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let (status, health) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["database"], if db == Db::Sqlite { "sqlite" } else { "postgres" });
    let acme = s.tenant("acme", None).await;

    // A short job runs to the end, through every state.
    let job = s
        .submit(
            &acme,
            json!({"command": "sleep", "args": ["0.2"], "gpus_per_node": 8, "nodes": 2, "gpu_model": "H200"}),
        )
        .await;
    assert_eq!(job["state"], "pending");
    let id = job["id"].as_i64().unwrap();
    let done = s.wait_state(&acme, id, "succeeded").await;
    assert_eq!(history(&done), ["pending", "scheduled", "running", "succeeded"]);
    assert_eq!(done["placement"].as_array().unwrap().len(), 2);
    assert_eq!(done["exit_code"], 0);

    // A failing job with a restart policy runs again, then fails for good.
    let flaky = s.submit(&acme, json!({"command": "false", "restart_policy": "on-failure", "max_restarts": 1})).await;
    let failed = s.wait_state(&acme, flaky["id"].as_i64().unwrap(), "failed").await;
    assert_eq!(failed["attempts"], 2);
    assert_eq!(history(&failed), ["pending", "scheduled", "running", "pending", "scheduled", "running", "failed"]);
    // Restarting on node loss only: a program that fails is not run again.
    let spec = json!({"command": "false", "restart_policy": "on-node-loss", "max_restarts": 1});
    let checkpointed = s.submit(&acme, spec).await;
    assert_eq!(checkpointed["spec"]["restart_policy"], "on-node-loss");
    let failed = s.wait_state(&acme, checkpointed["id"].as_i64().unwrap(), "failed").await;
    assert_eq!((failed["attempts"].as_i64(), failed["exit_code"].as_i64()), (Some(1), Some(1)));

    // A long job is cancelled while running, and its GPUs come back.
    let long = s.submit(&acme, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8})).await;
    let long_id = long["id"].as_i64().unwrap();
    s.wait_state(&acme, long_id, "running").await;
    let (_, sites) = s.call(Method::GET, "/v1/sites", Some(&acme), None).await;
    let used: u64 = sites.as_array().unwrap().iter().map(|x| x["gpus_used"].as_u64().unwrap()).sum();
    assert_eq!(used, 8);
    assert!(sites[0]["power_watts"].as_f64().unwrap() > 0.0);
    let (status, cancelled) = s.call(Method::POST, &format!("/v1/jobs/{long_id}/cancel"), Some(&acme), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled["state"], "cancelled");
    let (status, again) = s.call(Method::POST, &format!("/v1/jobs/{long_id}/cancel"), Some(&acme), None).await;
    assert_eq!((status, again["state"].clone()), (StatusCode::OK, json!("cancelled")), "cancelling twice is harmless");

    // A GPU instance holds its GPUs until released; another expires at its maximum runtime.
    let inst = s.submit(&acme, json!({"gpus_per_node": 4, "gpu_model": "A100"})).await;
    assert_eq!(inst["instance"], true);
    let inst_id = inst["id"].as_i64().unwrap();
    s.wait_state(&acme, inst_id, "running").await;
    let expiring = s.submit(&acme, json!({"gpus_per_node": 1, "max_runtime_s": 1})).await;
    let expired = s.wait_state(&acme, expiring["id"].as_i64().unwrap(), "succeeded").await;
    assert!(expired["message"].as_str().unwrap().contains("expired"), "{expired}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, nodes) = s.call(Method::GET, "/v1/nodes", Some(&acme), None).await;
    let a100_used: u64 = nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["gpu_model"].as_str().is_some_and(|m| m.starts_with("A100")))
        .map(|n| n["gpus_used"].as_u64().unwrap())
        .sum();
    assert_eq!(a100_used, 4);
    let (_, released) = s.call(Method::POST, &format!("/v1/jobs/{inst_id}/cancel"), Some(&acme), None).await;
    assert_eq!(released["state"], "cancelled");

    // Listing, filtering, paging.
    let (status, list) = s.call(Method::GET, "/v1/jobs?limit=2", Some(&acme), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 2);
    let before = list["next_before"].as_i64().unwrap();
    let (_, rest) = s.call(Method::GET, &format!("/v1/jobs?before={before}"), Some(&acme), None).await;
    assert_eq!(rest["jobs"].as_array().unwrap().len(), 4);
    let (_, succeeded) = s.call(Method::GET, "/v1/jobs?state=succeeded", Some(&acme), None).await;
    assert_eq!(succeeded["jobs"].as_array().unwrap().len(), 2);

    // Idempotency: a retry returns the same job; a different body under the key is refused.
    let body = json!({"command": "sleep", "args": ["0"]});
    let first =
        s.req(Method::POST, "/v1/jobs", Some(&acme)).header("Idempotency-Key", "k-1").json(&body).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let retry =
        s.req(Method::POST, "/v1/jobs", Some(&acme)).header("Idempotency-Key", "k-1").json(&body).send().await.unwrap();
    assert_eq!(retry.status(), StatusCode::OK);
    let retry: Value = retry.json().await.unwrap();
    assert_eq!(first["id"], retry["id"]);
    let other = json!({"command": "sleep", "args": ["1"]});
    let clash = s
        .req(Method::POST, "/v1/jobs", Some(&acme))
        .header("Idempotency-Key", "k-1")
        .json(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(clash.status(), StatusCode::CONFLICT);

    // Metrics and the API document.
    let metrics = s.req(Method::GET, "/metrics", None).send().await.unwrap().text().await.unwrap();
    for name in [
        "drome_queue_length",
        "drome_running_jobs",
        "drome_allocated_gpus",
        "drome_placement_latency_seconds",
        "drome_api_latency_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let (status, doc) = s.call(Method::GET, "/v1/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/jobs"].is_object());
    let docs = s.req(Method::GET, "/v1/docs/", None).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(lifecycle_tests, lifecycle);

async fn quotas(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let small = s.tenant("small", Some(8)).await;
    // Over the quota in one job: refused, naming the field.
    let (status, err) = s
        .call(Method::POST, "/v1/jobs", Some(&small), Some(json!({"command": "x", "gpus_per_node": 8, "nodes": 2})))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(err["error"]["field"], "gpus_per_node");
    // Two jobs of 8: the second waits for the first.
    let a = s.submit(&small, json!({"command": "sleep", "args": ["600"], "gpus_per_node": 8})).await;
    let b = s.submit(&small, json!({"command": "sleep", "args": ["0"], "gpus_per_node": 8})).await;
    s.wait_state(&small, a["id"].as_i64().unwrap(), "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.job(&small, b["id"].as_i64().unwrap()).await["state"], "pending");
    let (_, q) = s.call(Method::GET, "/v1/quota", Some(&small), None).await;
    assert_eq!(
        (q["gpu_quota"].as_u64(), q["gpus_used"].as_u64(), q["gpus_pending"].as_u64()),
        (Some(8), Some(8), Some(8))
    );
    // The admin lifts the quota: the second starts.
    let (status, t) = s.call(Method::PUT, "/v1/tenants/small/quota", Some(ADMIN), Some(json!({"gpu_quota": 16}))).await;
    assert_eq!((status, t["gpu_quota"].as_u64()), (StatusCode::OK, Some(16)));
    s.wait_state(&small, b["id"].as_i64().unwrap(), "succeeded").await;
    let (status, _) = s.call(Method::PUT, "/v1/tenants/nobody/quota", Some(ADMIN), Some(json!({"gpu_quota": 1}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, tenants) = s.call(Method::GET, "/v1/tenants", Some(ADMIN), None).await;
    assert_eq!(tenants.as_array().unwrap().len(), 1);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(quota_tests, quotas);

/// CPUs and memory count against a tenant's quota as GPUs do: CPU-only jobs cannot start without
/// end, and a quota set while they wait lets them in.
async fn cpu_and_memory_quotas(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let body = json!({"name": "cpus", "cpu_milli_quota": 2000, "memory_mib_quota": 8192});
    let (status, created) = s.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (created["tenant"]["cpu_milli_quota"].as_u64(), created["tenant"]["memory_mib_quota"].as_u64()),
        (Some(2000), Some(8192))
    );
    let cpus = created["token"].as_str().unwrap().to_string();
    // Bigger than the whole quota: refused now, naming the field.
    for (field, value) in [("cpu_milli", 3000), ("memory_mib", 9000)] {
        let (status, err) = s
            .call(
                Method::POST,
                "/v1/jobs",
                Some(&cpus),
                Some(json!({"command": "x", "gpus_per_node": 0, field: value})),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
        assert_eq!(err["error"]["field"], field, "{err}");
    }
    // Three CPU-only jobs of one CPU each: two run, the third waits for the quota.
    let ids: Vec<i64> = {
        let mut ids = Vec::new();
        for _ in 0..3 {
            let job =
                json!({"command": "sleep", "args": ["600"], "gpus_per_node": 0, "cpu_milli": 1000, "memory_mib": 1024});
            ids.push(s.submit(&cpus, job).await["id"].as_i64().unwrap());
        }
        ids
    };
    s.wait_state(&cpus, ids[0], "running").await;
    s.wait_state(&cpus, ids[1], "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.job(&cpus, ids[2]).await["state"], "pending");
    let (_, q) = s.call(Method::GET, "/v1/quota", Some(&cpus), None).await;
    assert_eq!((q["cpu_milli_used"].as_u64(), q["cpu_milli_pending"].as_u64()), (Some(2000), Some(1000)), "{q}");
    assert_eq!((q["memory_mib_used"].as_u64(), q["memory_mib_pending"].as_u64()), (Some(2048), Some(1024)), "{q}");
    // Raised: the third starts. The PUT replaces the whole quota: memory is unlimited now.
    let (status, t) = s
        .call(
            Method::PUT,
            "/v1/tenants/cpus/quota",
            Some(ADMIN),
            Some(json!({"gpu_quota": null, "cpu_milli_quota": 3000})),
        )
        .await;
    assert_eq!((status, t["cpu_milli_quota"].as_u64(), t.get("memory_mib_quota")), (StatusCode::OK, Some(3000), None));
    s.wait_state(&cpus, ids[2], "running").await;
    // Lowered below what runs: nothing is killed, new work waits.
    let (status, _) = s
        .call(
            Method::PUT,
            "/v1/tenants/cpus/quota",
            Some(ADMIN),
            Some(json!({"gpu_quota": null, "cpu_milli_quota": 1000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let late = s.submit(&cpus, json!({"command": "sleep", "args": ["0"], "gpus_per_node": 0, "cpu_milli": 500})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.job(&cpus, late["id"].as_i64().unwrap()).await["state"], "pending");
    for id in &ids {
        assert_eq!(s.job(&cpus, *id).await["state"], "running", "a lowered quota kills nothing");
    }
    let (status, err) = s
        .call(
            Method::PUT,
            "/v1/tenants/cpus/quota",
            Some(ADMIN),
            Some(json!({"gpu_quota": null, "cpu_milli_quota": u64::MAX})),
        )
        .await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("cpu_milli_quota")));
    s.stop().await;
    place.cleanup().await;
}
both_backends!(cpu_memory_quota_tests, cpu_and_memory_quotas);

/// Priority orders every tenant's jobs: a tenant may put its own jobs behind others, but only
/// the admin lets it go ahead of them.
async fn priority_ceilings(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let lab = s.tenant("lab", None).await;
    let ask = |priority: i64| json!({"command": "true", "gpus_per_node": 0, "priority": priority});
    let (status, err) = s.call(Method::POST, "/v1/jobs", Some(&lab), Some(ask(1))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("priority")), "{err}");
    s.submit(&lab, ask(-5)).await;
    s.submit(&lab, ask(0)).await;
    let (status, t) = s
        .call(Method::PUT, "/v1/tenants/lab/quota", Some(ADMIN), Some(json!({"gpu_quota": null, "max_priority": 10})))
        .await;
    assert_eq!((status, t["max_priority"].as_i64()), (StatusCode::OK, Some(10)));
    s.submit(&lab, ask(10)).await;
    let (status, _) = s.call(Method::POST, "/v1/jobs", Some(&lab), Some(ask(11))).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(priority_tests, priority_ceilings);

async fn events(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let acme = s.tenant("acme", None).await;
    let other = s.tenant("other", None).await;
    let mut stream = s.req(Method::GET, "/v1/events", Some(&acme)).send().await.unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    s.submit(&other, json!({"command": "true"})).await;
    let job = s.submit(&acme, json!({"command": "true"})).await;
    let id = job["id"].as_i64().unwrap();
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !text.contains("\"succeeded\"") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk()).await.expect("events arrive in time").unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
    let events: Vec<Value> =
        text.lines().filter_map(|l| l.strip_prefix("data:")).map(|d| serde_json::from_str(d.trim()).unwrap()).collect();
    assert!(events.iter().all(|e| e["job_id"] == id), "only the tenant's own events: {events:?}");
    let states: Vec<&str> = events.iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["pending", "scheduled", "running", "succeeded"]);
    // Resuming after an event id replays what followed it.
    let first_id = events[0]["id"].as_i64().unwrap();
    let mut resumed = s
        .req(Method::GET, "/v1/events", Some(&acme))
        .header("Last-Event-ID", first_id.to_string())
        .send()
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(10), resumed.chunk()).await.unwrap().unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("\"scheduled\""));
    s.stop().await;
    place.cleanup().await;
}
both_backends!(event_tests, events);

async fn restart_carries_on(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let acme = s.tenant("acme", None).await;
    let running = s.submit(&acme, json!({"command": "sleep", "args": ["2"], "gpus_per_node": 8})).await;
    let rid = running["id"].as_i64().unwrap();
    s.wait_state(&acme, rid, "running").await;
    let inst = s.submit(&acme, json!({"gpus_per_node": 8})).await;
    let iid = inst["id"].as_i64().unwrap();
    s.wait_state(&acme, iid, "running").await;
    s.stop().await;

    // A new server on the same store: the running job finishes once, the instance still holds
    // its GPUs, the token still works.
    let s = TestServer::start(&place).await;
    let done = s.wait_state(&acme, rid, "succeeded").await;
    assert_eq!(history(&done), ["pending", "scheduled", "running", "succeeded"], "not run twice");
    assert_eq!(s.job(&acme, iid).await["state"], "running");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, sites) = s.call(Method::GET, "/v1/sites", Some(&acme), None).await;
    assert_eq!(sites[0]["gpus_used"], 8);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(restart_tests, restart_carries_on);
