//! Tenants are walled off from each other, tokens are checked, and no request body, however
//! malformed or large, gets a 500 or brings the server down.

mod common;

use common::{ADMIN, Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn isolation_and_auth(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let alice = s.tenant("alice", None).await;
    let bob = s.tenant("bob", None).await;
    let job = s.submit(&alice, json!({"command": "sleep", "args": ["600"]})).await;
    let id = job["id"].as_i64().unwrap();
    // Let it reach `running` first, so the check below sees Bob's attempts and not the scheduler.
    s.wait_state(&alice, id, "running").await;

    // Bob cannot read, list, cancel or guess Alice's jobs: they do not exist for him.
    let (status, err) = s.call(Method::GET, &format!("/v1/jobs/{id}"), Some(&bob), None).await;
    assert_eq!((status, err["error"]["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")));
    let (status, missing) = s.call(Method::GET, "/v1/jobs/999999", Some(&bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        err["error"]["message"].as_str().map(|m| m.replace(&id.to_string(), "N")),
        missing["error"]["message"].as_str().map(|m| m.replace("999999", "N")),
        "a foreign job looks exactly like a missing one"
    );
    let (status, _) = s.call(Method::POST, &format!("/v1/jobs/{id}/cancel"), Some(&bob), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for guess in [id - 1, id + 1, 0, -1, i64::MAX] {
        let (status, _) = s.call(Method::GET, &format!("/v1/jobs/{guess}"), Some(&bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "guess {guess}");
    }
    for junk in ["abc", "1%20OR%201=1", "1;DROP", "%00"] {
        let (status, _) = s.call(Method::GET, &format!("/v1/jobs/{junk}"), Some(&bob), None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "path {junk}");
    }
    let (_, list) = s.call(Method::GET, "/v1/jobs", Some(&bob), None).await;
    assert_eq!(list["jobs"].as_array().unwrap().len(), 0);
    let (_, tenants) = s.call(Method::GET, "/v1/tenants", Some(&bob), None).await;
    assert_eq!(tenants.as_array().unwrap().len(), 1, "a tenant sees only itself");
    assert_eq!(s.job(&alice, id).await["state"], "running", "Bob's attempts changed nothing");

    // Missing or bad tokens: 401, before anything else.
    let bad_auth = ["", "Bearer", "Bearer ", "Basic YWxpY2U6eA==", "Bearer drome_0000", "bearer nope"];
    for path in ["/v1/jobs", "/v1/jobs/1", "/v1/nodes", "/v1/sites", "/v1/quota", "/v1/tenants", "/v1/events"] {
        let (status, _) = s.call(Method::GET, path, None, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} without a token");
        for h in bad_auth {
            let resp = s.req(Method::GET, path, None).header("authorization", h).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{path} with '{h}'");
            assert!(resp.headers().contains_key("www-authenticate"));
        }
    }
    let (status, _) = s.call(Method::POST, "/v1/jobs", Some("drome_guess"), Some(json!({"command": "x"}))).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Admin-only calls refuse tenants; tenant calls refuse the admin.
    let (status, _) = s.call(Method::POST, "/v1/tenants", Some(&alice), Some(json!({"name": "eve"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::PUT, "/v1/tenants/alice/quota", Some(&bob), Some(json!({"gpu_quota": 0}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::POST, "/v1/jobs", Some(ADMIN), Some(json!({"command": "x"}))).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(json!({"name": "alice"}))).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, err) = s.call(Method::POST, "/v1/tenants", Some(ADMIN), Some(json!({"name": "a b"}))).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")));
    s.stop().await;
    place.cleanup().await;
}
both_backends!(isolation_tests, isolation_and_auth);

async fn malformed_bodies(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start(&place).await;
    let t = s.tenant("t", None).await;
    // (body, status, field)
    let cases: Vec<(Vec<u8>, StatusCode, Option<&str>)> = vec![
        (b"".to_vec(), StatusCode::BAD_REQUEST, None),
        (b"{".to_vec(), StatusCode::BAD_REQUEST, None),
        (b"not json".to_vec(), StatusCode::BAD_REQUEST, None),
        (b"{\"command\": \"x\"} trailing".to_vec(), StatusCode::BAD_REQUEST, None),
        (vec![0xff, 0xfe, 0x00], StatusCode::BAD_REQUEST, None),
        (b"[1, 2]".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("body")),
        (b"null".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("body")),
        (b"{\"gpus_per_node\": \"eight\"}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("gpus_per_node")),
        (b"{\"gpus_per_node\": -1}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("gpus_per_node")),
        (b"{\"gpus_per_node\": 99999999999}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("gpus_per_node")),
        (
            b"{\"command\": \"x\", \"gpus_per_node\": 9}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("gpus_per_node"),
        ),
        (b"{\"command\": \"x\", \"nodes\": 0}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("nodes")),
        (
            b"{\"command\": \"x\", \"gpus_per_node\": 8, \"nodes\": 5, \"gpu_model\": \"H200\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("nodes"),
        ),
        (b"{\"command\": \"x\", \"gpu_model\": \"TPU\"}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("gpu_model")),
        (b"{\"command\": \"\"}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("command")),
        (b"{\"command\": \"x\", \"args\": [1]}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("args[0]")),
        (b"{\"command\": \"x\", \"env\": {\"A\": 1}}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("env.A")),
        (
            b"{\"command\": \"x\", \"env\": {\"1BAD\": \"v\"}}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("env.1BAD"),
        ),
        (
            b"{\"command\": \"x\", \"restart_policy\": \"always\"}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("restart_policy"),
        ),
        (
            b"{\"command\": \"x\", \"max_runtime_s\": 0}".to_vec(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("max_runtime_s"),
        ),
        (b"{\"command\": \"x\", \"priority\": 1e99}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("priority")),
        (b"{\"command\": \"x\", \"surprise\": true}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("surprise")),
        (b"{\"command\": \"x\\u0000y\"}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("command")),
        (b"{\"args\": [\"a\"]}".to_vec(), StatusCode::UNPROCESSABLE_ENTITY, Some("args")),
        (
            format!("{{\"command\": \"{}\"}}", "x".repeat(5000)).into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("command"),
        ),
        (
            format!("{{\"command\": \"x\", \"args\": [{}]}}", vec!["\"a\""; 300].join(",")).into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("args"),
        ),
        (format!("{{\"command\": \"{}\"}}", "x".repeat(100_000)).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, None),
        (format!("{}{}", "[".repeat(50_000), "]".repeat(50_000)).into_bytes(), StatusCode::PAYLOAD_TOO_LARGE, None),
        (
            format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("body"),
        ),
        (
            format!("{{\"env\": {}1{}}}", "[".repeat(5_000), "]".repeat(5_000)).into_bytes(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("env"),
        ),
    ];
    for (body, want, field) in &cases {
        let shown = String::from_utf8_lossy(&body[..body.len().min(60)]).into_owned();
        let (status, err) = s.raw("/v1/jobs", &t, body.clone()).await;
        assert_eq!(status, *want, "body {shown}: {err}");
        assert_eq!(err["error"]["field"].as_str(), *field, "body {shown}: {err}");
        assert!(err["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "body {shown}: {err}");
    }
    // Other endpoints' bodies and queries are checked the same way.
    let (status, err) = s.raw("/v1/tenants", ADMIN, b"{\"name\": 5}".to_vec()).await;
    assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::UNPROCESSABLE_ENTITY, Some("name")));
    let resp = s.req(Method::PUT, "/v1/tenants/t/quota", Some(ADMIN)).body("{\"gpu_quota\": -3}").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    for q in ["state=sleeping", "limit=0", "limit=abc", "limit=100000", "before=x"] {
        let (status, err) = s.call(Method::GET, &format!("/v1/jobs?{q}"), Some(&t), None).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "query {q}: {err}");
        assert!(err["error"]["field"].is_string(), "query {q}: {err}");
    }
    let bad_key = s
        .req(Method::POST, "/v1/jobs", Some(&t))
        .header("Idempotency-Key", "k".repeat(200))
        .json(&json!({"command": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), StatusCode::BAD_REQUEST);
    // Every integer is held to its schema type: int32 and int64 fields take no more than
    // 2^31 - 1 and 2^63 - 1, though Rust's unsigned types would.
    let out_of_range = [
        ("/v1/jobs", t.clone(), Method::POST, r#"{"command": "x", "cpu_milli": 9223372036854775808}"#, "cpu_milli"),
        ("/v1/jobs", t.clone(), Method::POST, r#"{"command": "x", "gpus_per_node": 2147483648}"#, "gpus_per_node"),
        ("/v1/tenants/t/quota", ADMIN.to_string(), Method::PUT, r#"{"gpu_quota": 2147483648}"#, "gpu_quota"),
        (
            "/v1/tenants",
            ADMIN.to_string(),
            Method::POST,
            r#"{"name": "u", "token_ttl_s": 18446744073709551615}"#,
            "token_ttl_s",
        ),
        ("/v1/join-tokens", ADMIN.to_string(), Method::POST, r#"{"uses": 4294967295}"#, "uses"),
    ];
    for (path, token, method, body, field) in out_of_range {
        let resp = s
            .req(method, path, Some(&token))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let err: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some(field)),
            "{body}: {err}"
        );
        assert!(err["error"]["message"].as_str().is_some_and(|m| m.contains("out of range")), "{body}: {err}");
    }
    let (status, err) = s.call(Method::GET, "/v1/jobs/1/logs?member=2147483648", Some(&t), None).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{err}");
    for q in ["limit=2147483648", "limit=0", "limit=1001"] {
        let (status, err) = s.call(Method::GET, &format!("/v1/audit?{q}"), Some(ADMIN), None).await;
        assert_eq!(
            (status, err["error"]["field"].as_str()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("limit")),
            "{q}: {err}"
        );
    }
    // A path segment that is not UTF-8 (found by fuzzing: it was refused in plain text).
    for path in ["/v1/sites/%AFlab-oil/gpu-power-cap", "/v1/tenants/%FF/quota", "/v1/jobs/%C3/cancel"] {
        let (method, token) =
            if path.starts_with("/v1/jobs") { (Method::POST, &t) } else { (Method::PUT, &ADMIN.to_string()) };
        let resp = s.req(method, path, Some(token)).json(&json!({"watts": 300})).send().await.unwrap();
        let status = resp.status();
        let err: serde_json::Value = resp.json().await.unwrap_or_default();
        assert_eq!((status, err["error"]["field"].as_str()), (StatusCode::BAD_REQUEST, Some("path")), "{path}: {err}");
    }

    // A few hundred random bodies: never a 5xx, and the server still answers afterwards.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let pieces = [
        "{",
        "}",
        "[",
        "]",
        "\"command\"",
        ":",
        ",",
        "\"x\"",
        "1",
        "-1",
        "null",
        "true",
        "\"gpus_per_node\"",
        "\"env\"",
        "\"args\"",
        "1e400",
        "\"\\ud800\"",
        " ",
    ];
    for _ in 0..300 {
        let n = next() % 24;
        let body: String = (0..n).map(|_| pieces[(next() % pieces.len() as u64) as usize]).collect();
        let (status, _) = s.raw("/v1/jobs", &t, body.clone().into_bytes()).await;
        assert!(!status.is_server_error(), "body {body}: {status}");
    }
    let (status, _) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!(status, StatusCode::OK);
    s.stop().await;
    place.cleanup().await;
}
both_backends!(malformed_tests, malformed_bodies);
