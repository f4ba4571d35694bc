//! Every policy in the live server: the scheduler builds a new queue each round, so a policy
//! that keeps an index of its queue must read each new one whole, and it must hear of every run
//! that ends. Three jobs that each need the same four nodes run one after the other to the end,
//! under every policy. And shares of one GPU run live, two halves on one GPU.

mod common;

use common::{Db, Place, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn jobs_queued_behind_others_all_run(db: Db) {
    for policy in ["fifo", "backfill", "fairshare", "quota", "tiresias", "drome"] {
        let place = Place::new(db).await;
        let s = TestServer::start_tuned(&place, common::fleet(), |c| c.policy = policy.into()).await;
        let acme = s.tenant("acme", None).await;
        let spec = json!({"command": "sleep", "args": ["0.2"], "nodes": 4, "gpus_per_node": 8, "gpu_model": "H200"});
        let mut ids = Vec::new();
        for _ in 0..3 {
            let v = s.submit(&acme, spec.clone()).await;
            ids.push(v["id"].as_i64().unwrap_or_else(|| panic!("{policy}: submit refused: {v}")));
        }
        for id in ids {
            let v = s.wait_state(&acme, id, "succeeded").await;
            assert_eq!(v["state"], "succeeded", "{policy}: job {id}: {v}");
        }
        s.stop().await;
        place.cleanup().await;
    }
}
both_backends!(policy_tests, jobs_queued_behind_others_all_run);

async fn gpu_shares_run_side_by_side_on_one_gpu(db: Db) {
    let place = Place::new(db).await;
    let s = TestServer::start_tuned(&place, common::fleet(), |c| c.policy = "drome".into()).await;
    let acme = s.tenant("acme", None).await;
    // Out of range, or spread over GPUs or nodes: refused, naming the field.
    for bad in [
        json!({"command": "x", "gpu_milli": 1500}),
        json!({"command": "x", "gpu_milli": 0}),
        json!({"command": "x", "gpu_milli": 500, "nodes": 2}),
        json!({"command": "x", "gpu_milli": 500, "gpus_per_node": 2}),
    ] {
        let (status, err) = s.call(Method::POST, "/v1/jobs", Some(&acme), Some(bad.clone())).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {err}");
        assert_eq!(err["error"]["field"], "gpu_milli", "{bad}: {err}");
    }
    // Two halves of an H200: both run at once, on the same GPU of the same node.
    let spec = json!({"command": "sleep", "args": ["2"], "gpu_milli": 500, "gpu_model": "H200"});
    let a = s.submit(&acme, spec.clone()).await["id"].as_i64().unwrap();
    let b = s.submit(&acme, spec).await["id"].as_i64().unwrap();
    let ja = s.wait_state(&acme, a, "running").await;
    let jb = s.wait_state(&acme, b, "running").await;
    assert_eq!(ja["spec"]["gpu_milli"], 500, "{ja}");
    assert_eq!(ja["placement"], jb["placement"], "{ja} {jb}");
    assert_eq!(ja["placement"][0]["gpus"].as_array().map(Vec::len), Some(1), "{ja}");
    s.wait_state(&acme, a, "succeeded").await;
    s.wait_state(&acme, b, "succeeded").await;
    s.stop().await;
    place.cleanup().await;
}
both_backends!(share_tests, gpu_shares_run_side_by_side_on_one_gpu);
