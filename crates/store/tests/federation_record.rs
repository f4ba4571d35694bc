//! A federation endpoint's record on both backends: jobs recorded once per idempotency key,
//! sites' answers, moves off a lost site and the drops they leave to do, tokens per site.

use store::testing::TempPostgres;
use store::{FED_FORWARDING, FedInserted, FedMove, FedStateUpdate, NewFedJob, Store, StoreError, TenantQuota};

fn new_job(tenant_id: i64, key: Option<&str>, hash: &str) -> NewFedJob {
    NewFedJob {
        tenant_id,
        name: "train".into(),
        spec_json: r#"{"gpus_per_node":8}"#.into(),
        idempotency_key: key.map(str::to_string),
        request_hash: hash.into(),
        site: "north".into(),
        reason: "fits now".into(),
    }
}

async fn exercise(store: &Store) {
    let lab = store.create_tenant("lab", "hash-lab", TenantQuota::default(), 1).await.unwrap();
    let out = store
        .fed_insert_jobs(
            &[new_job(lab.id, Some("k"), "h1"), new_job(lab.id, None, "h2"), new_job(lab.id, Some("k"), "h1")],
            10,
        )
        .await
        .unwrap();
    let Ok(FedInserted::New(first)) = &out[0] else { panic!("{out:?}") };
    assert!(matches!(&out[1], Ok(FedInserted::New(_))));
    // The same key and request again, in the same transaction: the first job.
    let Ok(FedInserted::Existing(again)) = &out[2] else { panic!("{out:?}") };
    assert_eq!(again.id, first.id);
    let conflict = store.fed_insert_jobs(&[new_job(lab.id, Some("k"), "other")], 11).await.unwrap();
    assert!(matches!(conflict[0], Err(StoreError::Conflict { .. })), "{conflict:?}");
    assert_eq!(first.state, FED_FORWARDING);
    assert_eq!(store.fed_forwarding(10).await.unwrap().len(), 2);

    // The site took the first: its id there and state; the second is still being sent.
    store.fed_set_forwarded(&[(first.id, "north".into(), 77, "pending".into())], 12).await.unwrap();
    let j = store.fed_job(lab.id, first.id).await.unwrap().unwrap();
    assert_eq!((j.site_job_id, j.state.as_str()), (Some(77), "pending"));
    assert_eq!(store.fed_jobs_at("north", &["pending", FED_FORWARDING]).await.unwrap().len(), 2);
    assert_eq!(store.fed_jobs(lab.id, Some("pending"), None, 10).await.unwrap().len(), 1);
    assert_eq!(store.fed_jobs(lab.id, None, Some(first.id + 1), 10).await.unwrap().len(), 1, "paged below");
    // North asks to start 77 and a job that is not the federation's: only 77 is granted.
    assert_eq!(store.fed_grant("north", &[77, 999], 13).await.unwrap(), vec![77]);
    assert_eq!(store.fed_grant("valence", &[77], 13).await.unwrap(), Vec::<i64>::new(), "not there");
    assert_eq!(store.fed_job(lab.id, first.id).await.unwrap().unwrap().granted_ms, Some(13));
    assert_eq!(store.fed_grant("north", &[77], 14).await.unwrap(), vec![77], "granted again, noted once");
    assert_eq!(store.fed_job(lab.id, first.id).await.unwrap().unwrap().granted_ms, Some(13));

    // North is lost: both move to valence; both are left for north to drop, by the key sent.
    let second = store.fed_forwarding(10).await.unwrap()[0].clone();
    let moves: Vec<FedMove> = [&j, &second]
        .iter()
        .map(|x| FedMove {
            id: x.id,
            from_site: "north".into(),
            from_key: format!("federation-{}-0", x.id),
            to_site: "valence".into(),
            reason: "north lost".into(),
            moves_json: r#"[{"site":"north"}]"#.into(),
        })
        .collect();
    assert_eq!(store.fed_move(&moves, 20).await.unwrap(), vec![true, true]);
    // Moved already: a second move from north does nothing.
    assert_eq!(store.fed_move(&moves[..1], 21).await.unwrap(), vec![false]);
    let moved = store.fed_job(lab.id, first.id).await.unwrap().unwrap();
    assert_eq!((moved.site.as_str(), moved.site_job_id, moved.state.as_str()), ("valence", None, FED_FORWARDING));
    assert_eq!(moved.granted_ms, None, "a grant is for one site");
    let left = store.fed_left_at("north").await.unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[0].site_job_id, Some(77));
    assert_eq!(left[1].site_job_id, None, "never answered: dropped by its key");
    store.fed_left_cancelled("north", &[left[0].site_key.clone()], 30).await.unwrap();
    assert_eq!(store.fed_left_at("north").await.unwrap().len(), 1);

    let update = FedStateUpdate { id: second.id, state: "cancelled".into(), message: Some("by its tenant".into()) };
    store.fed_set_states(&[update], 31).await.unwrap();
    assert_eq!(store.fed_job(lab.id, second.id).await.unwrap().unwrap().message.as_deref(), Some("by its tenant"));
    store.fed_forget(second.id).await.unwrap();
    assert!(store.fed_job(lab.id, second.id).await.unwrap().is_some(), "only a job still being sent is forgotten");

    assert_eq!(store.fed_site_token(lab.id, "north").await.unwrap(), None);
    store.fed_set_site_token(lab.id, "north", "t1").await.unwrap();
    store.fed_set_site_token(lab.id, "north", "t2").await.unwrap();
    assert_eq!(store.fed_site_token(lab.id, "north").await.unwrap().as_deref(), Some("t2"));
}

#[tokio::test]
async fn sqlite_federation_record() {
    let dir = std::env::temp_dir().join(format!("drome-fed-record-{}", std::process::id()));
    let store = Store::connect(&format!("sqlite://{}/fed.db", dir.display())).await.unwrap();
    exercise(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_federation_record() {
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let store = Store::connect(&db.url).await.unwrap();
    exercise(&store).await;
    store.close().await;
    db.drop_database().await.unwrap();
}
