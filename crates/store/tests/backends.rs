//! The store's behaviour, checked on both backends: SQLite in a temporary file and PostgreSQL in
//! a fresh database (which must be reachable: these tests fail, they do not skip, without it).

use store::testing::TempPostgres;
use store::{Change, JobFilter, JobState, NewJob, Store, Transition};

fn new_job(tenant_id: i64, key: Option<&str>) -> NewJob {
    NewJob {
        tenant_id,
        name: "train".into(),
        command: Some("sleep".into()),
        args_json: "[\"1\"]".into(),
        env_json: "{}".into(),
        gpus_per_node: 8,
        nodes: 2,
        gpu_milli: None,
        gpu_model: Some("H200".into()),
        priority: 0,
        deferrable: false,
        max_runtime_s: None,
        restart_policy: "never".into(),
        max_restarts: 0,
        idempotency_key: key.map(str::to_string),
        request_hash: "h".into(),
    }
}

async fn exercise(store: Store) {
    agents(&store).await;
    store.ping().await.unwrap();
    assert_eq!(store.setting("admin").await.unwrap(), None);
    store.set_setting("admin", "a").await.unwrap();
    store.set_setting("admin", "b").await.unwrap();
    assert_eq!(store.setting("admin").await.unwrap().as_deref(), Some("b"));

    let acme = store.create_tenant("acme", "hash-a", Some(16), 1).await.unwrap();
    let other = store.create_tenant("other", "hash-b", None, 2).await.unwrap();
    assert!(matches!(store.create_tenant("acme", "hash-c", None, 3).await, Err(store::StoreError::Conflict { .. })));
    assert_eq!(store.tenant_by_token_hash("hash-a").await.unwrap().map(|t| t.id), Some(acme.id));
    assert_eq!(store.tenant_by_token_hash("nope").await.unwrap(), None);
    assert_eq!(store.set_quota(other.id, Some(4)).await.unwrap().and_then(|t| t.gpu_quota), Some(4));
    assert_eq!(store.tenants().await.unwrap().len(), 2);

    let first = store.insert_job(&new_job(acme.id, Some("k1")), 10).await.unwrap();
    assert!(first.created);
    let again = store.insert_job(&new_job(acme.id, Some("k1")), 11).await.unwrap();
    assert!(!again.created, "a reused key stores nothing");
    assert_eq!(again.job, first.job);
    let theirs = store.insert_job(&new_job(other.id, Some("k1")), 12).await.unwrap();
    assert!(theirs.created, "keys are per tenant");
    let no_key_a = store.insert_job(&new_job(acme.id, None), 13).await.unwrap();
    let no_key_b = store.insert_job(&new_job(acme.id, None), 14).await.unwrap();
    assert_ne!(no_key_a.job.id, no_key_b.job.id, "jobs without keys never collide");

    let id = first.job.id;
    assert_eq!(store.job(other.id, id).await.unwrap(), None, "another tenant's job is invisible");
    let listed = store.jobs(acme.id, &JobFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.iter().map(|j| j.id).collect::<Vec<_>>(), vec![no_key_b.job.id, no_key_a.job.id, id]);

    let placement = Change { placement_json: Some(Some("[]".into())), ..Default::default() };
    assert!(store.transition(id, &[JobState::Pending], JobState::Scheduled, 20, &placement).await.unwrap());
    assert!(!store.transition(id, &[JobState::Pending], JobState::Scheduled, 21, &placement).await.unwrap());
    let start = Change { started: true, ..Default::default() };
    assert!(store.transition(id, &[JobState::Scheduled], JobState::Running, 22, &start).await.unwrap());
    let done = Change { finished: true, exit_code: Some(0), message: Some("done".into()), ..Default::default() };
    assert!(store.transition(id, &[JobState::Running], JobState::Succeeded, 30, &done).await.unwrap());
    assert!(!store.transition(id, &JobState::ACTIVE, JobState::Cancelled, 31, &Change::default()).await.unwrap());

    let job = store.job(acme.id, id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.started_ms, job.finished_ms, job.attempts, job.exit_code), (Some(22), Some(30), 1, Some(0)));
    assert_eq!(job.placement_json.as_deref(), Some("[]"));
    let history: Vec<JobState> = store.history(id).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, vec![JobState::Pending, JobState::Scheduled, JobState::Running, JobState::Succeeded]);

    let active: Vec<i64> = store.active_jobs().await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(active, vec![theirs.job.id, no_key_a.job.id, no_key_b.job.id]);
    let succeeded = JobFilter { state: Some(JobState::Succeeded), limit: 10, ..Default::default() };
    assert_eq!(store.jobs(acme.id, &succeeded).await.unwrap().len(), 1);

    let events = store.events_after(acme.id, 0, 100).await.unwrap();
    assert!(events.iter().all(|e| e.tenant_id == acme.id));
    assert_eq!(events.len(), 6);
    let later = store.events_after(acme.id, events[2].id, 100).await.unwrap();
    assert_eq!(later.len(), 3);
    let counts = store.state_counts().await.unwrap();
    assert!(counts.contains(&(JobState::Pending, 3)));

    // A batch of transitions commits together; each one is conditional on its own.
    let (a, b) = (no_key_a.job.id, no_key_b.job.id);
    let step =
        |job_id, from: &[JobState], to| Transition { job_id, from: from.to_vec(), to, change: Change::default() };
    let steps = [
        step(a, &[JobState::Pending], JobState::Scheduled),
        step(b, &[JobState::Running], JobState::Failed),
        step(a, &[JobState::Scheduled], JobState::Running),
    ];
    assert_eq!(store.transitions(&steps, 40).await.unwrap(), vec![true, false, true]);
    assert_eq!(store.job_by_id(a).await.unwrap().unwrap().state, JobState::Running);
    assert_eq!(store.job_by_id(b).await.unwrap().unwrap().state, JobState::Pending);
    let history: Vec<JobState> = store.history(a).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, vec![JobState::Pending, JobState::Scheduled, JobState::Running]);
    assert!(store.transitions(&[], 41).await.unwrap().is_empty());
    let got: Vec<i64> = store.jobs_by_ids(&[b, 999_999, a]).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(got, vec![a, b]);
    gpu_shares(&store).await;
}

#[tokio::test]
async fn sqlite_store() {
    let dir = std::env::temp_dir().join(format!("drome-store-test-{}", std::process::id()));
    let url = format!("sqlite://{}/nested/drome.db", dir.display());
    let store = Store::connect(&url).await.unwrap();
    exercise(store.clone()).await;
    store.close().await;
    // Migrations run once: reopening keeps the data.
    let reopened = Store::connect(&url).await.unwrap();
    assert_eq!(reopened.tenants().await.unwrap().len(), 3, "acme, other and shares");
    reopened.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_store() {
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let store = Store::connect(&db.url).await.unwrap();
    exercise(store.clone()).await;
    store.close().await;
    let reopened = Store::connect(&db.url).await.unwrap();
    assert_eq!(reopened.tenants().await.unwrap().len(), 3, "acme, other and shares");
    reopened.close().await;
    db.drop_database().await.unwrap();
}

#[tokio::test]
async fn bad_urls_are_refused() {
    assert!(matches!(Store::connect("mysql://x").await, Err(store::StoreError::BadUrl(_))));
    assert!(matches!(Store::connect("sqlite://").await, Err(store::StoreError::BadUrl(_))));
}

/// Join tokens and joined nodes: a second join replaces the node's credential.
async fn agents(store: &Store) {
    assert!(!store.join_token_exists("h1").await.unwrap());
    store.add_join_token("h1", 1).await.unwrap();
    store.add_join_token("h1", 2).await.unwrap();
    assert!(store.join_token_exists("h1").await.unwrap());
    let mut node = store::AgentNode {
        name: "n1".into(),
        token_hash: "c1".into(),
        inventory_json: "[]".into(),
        address: "127.0.0.1".into(),
        joined_ms: 5,
    };
    store.upsert_agent_node(&node).await.unwrap();
    node.token_hash = "c2".into();
    store.upsert_agent_node(&node).await.unwrap();
    assert_eq!(store.agent_nodes().await.unwrap(), vec![node]);
}

/// A share of one GPU is kept as asked; whole-GPU jobs have none. Runs last: it adds a job.
async fn gpu_shares(store: &Store) {
    let t = store.create_tenant("shares", "hash-shares", None, 99).await.unwrap();
    let share = NewJob { gpu_milli: Some(250), gpus_per_node: 1, nodes: 1, ..new_job(t.id, Some("share")) };
    let stored = store.insert_job(&share, 15).await.unwrap().job;
    assert_eq!(stored.spec.gpu_milli, Some(250));
    assert_eq!(store.job_by_id(stored.id).await.unwrap().unwrap().spec.gpu_milli, Some(250));
    let whole = store.insert_job(&new_job(t.id, None), 16).await.unwrap().job;
    assert_eq!(store.job_by_id(whole.id).await.unwrap().unwrap().spec.gpu_milli, None);
}
