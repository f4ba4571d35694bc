//! Every policy in the live server: the scheduler builds a new queue each round, so a policy
//! that keeps an index of its queue must read each new one whole, and it must hear of every run
//! that ends. Three jobs that each need the same four nodes run one after the other to the end,
//! under every policy.

mod common;

use common::{Db, Place, TestServer};
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
