//! The store's behaviour, checked on both backends: SQLite in a temporary file and PostgreSQL in
//! a fresh database (which must be reachable: these tests fail, they do not skip, without it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;
use store::testing::TempPostgres;
use store::{Change, JobFilter, JobState, NewJob, Store, StoreError, TenantQuota, TenantUsage, Transition};

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
        cpu_milli: 0,
        memory_mib: 0,
        image: Some("localhost/train:3".into()),
        gpu_model: Some("H200".into()),
        priority: 0,
        deferrable: false,
        federated: false,
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

    let acme = store
        .create_tenant("acme", "hash-a", TenantQuota { gpus: Some(16), ..TenantQuota::default() }, 1)
        .await
        .unwrap();
    let other = store.create_tenant("other", "hash-b", TenantQuota::default(), 2).await.unwrap();
    assert!(matches!(
        store.create_tenant("acme", "hash-c", TenantQuota::default(), 3).await,
        Err(store::StoreError::Conflict { .. })
    ));
    assert_eq!(store.tenant_by_token_hash("hash-a").await.unwrap().map(|t| t.id), Some(acme.id));
    assert_eq!(store.tenant_by_token_hash("nope").await.unwrap(), None);
    let quota = TenantQuota { gpus: Some(4), cpu_milli: Some(64_000), memory_mib: None, max_priority: 5 };
    assert_eq!(store.set_quota(other.id, quota).await.unwrap().map(|t| t.quota), Some(quota));
    assert_eq!(store.tenant(other.id).await.unwrap().map(|t| t.quota), Some(quota), "read back as set");
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
    assert!(store.transition(id, &[JobState::Scheduled], JobState::Assigned, 22, &start).await.unwrap());
    let done = Change { finished: true, exit_code: Some(0), message: Some("done".into()), ..Default::default() };
    assert!(store.transition(id, &[JobState::Assigned], JobState::Succeeded, 30, &done).await.unwrap());
    assert!(!store.transition(id, &JobState::ACTIVE, JobState::Cancelled, 31, &Change::default()).await.unwrap());

    let job = store.job(acme.id, id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!((job.started_ms, job.finished_ms, job.generation, job.exit_code), (Some(22), Some(30), 1, Some(0)));
    assert_eq!(job.placement_json.as_deref(), Some("[]"));
    let history: Vec<JobState> = store.history(id).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, vec![JobState::Pending, JobState::Scheduled, JobState::Assigned, JobState::Succeeded]);

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
        step(b, &[JobState::Assigned], JobState::Failed),
        step(a, &[JobState::Scheduled], JobState::Assigned),
    ];
    assert_eq!(store.transitions(&steps, 40).await.unwrap(), vec![true, false, true]);
    assert_eq!(store.job_by_id(a).await.unwrap().unwrap().state, JobState::Assigned);
    assert_eq!(store.job_by_id(b).await.unwrap().unwrap().state, JobState::Pending);
    let history: Vec<JobState> = store.history(a).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, vec![JobState::Pending, JobState::Scheduled, JobState::Assigned]);
    assert!(store.transitions(&[], 41).await.unwrap().is_empty());
    let got: Vec<i64> = store.jobs_by_ids(&[b, 999_999, a]).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(got, vec![a, b]);

    // A running job cancelled stays among the active ones, unfinished, until its run is known
    // gone; then it has its finish time and leaves them.
    let cancel = Change { message: Some("cancelled".into()), ..Default::default() };
    assert!(store.transition(a, &[JobState::Assigned], JobState::Cancelled, 50, &cancel).await.unwrap());
    assert!(store.active_jobs().await.unwrap().iter().any(|j| j.id == a && j.state == JobState::Cancelled));
    store.finish_cancelled(&[a, b], 60).await.unwrap();
    assert_eq!(store.job_by_id(a).await.unwrap().unwrap().finished_ms, Some(60));
    assert_eq!(store.job_by_id(b).await.unwrap().unwrap().finished_ms, None, "only cancelled jobs finish");
    assert!(!store.active_jobs().await.unwrap().iter().any(|j| j.id == a));
    store.finish_cancelled(&[a], 70).await.unwrap();
    assert_eq!(store.job_by_id(a).await.unwrap().unwrap().finished_ms, Some(60), "a finish time is kept");
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

/// Join tokens and joined nodes: a token's limits hold (uses, expiry, its node, revocation), and
/// a second join replaces the node's credential.
async fn agents(store: &Store) {
    use store::{JoinTokenLimits, JoinTokenRefusal as No};
    assert_eq!(store.use_join_token("h1", "n1", 1).await.unwrap(), Err(No::Unknown));
    store.add_join_token("h1", 1).await.unwrap();
    store.add_join_token("h1", 2).await.unwrap();
    for _ in 0..3 {
        assert_eq!(store.use_join_token("h1", "n1", 3).await.unwrap(), Ok(()), "a token without limits");
    }
    let twice = JoinTokenLimits { uses: Some(2), expires_ms: Some(100), node: None };
    store.create_join_token("h2", 10, &twice).await.unwrap();
    assert_eq!(store.use_join_token("h2", "n1", 11).await.unwrap(), Ok(()));
    assert_eq!(store.use_join_token("h2", "n2", 12).await.unwrap(), Ok(()));
    assert_eq!(store.use_join_token("h2", "n3", 13).await.unwrap(), Err(No::UsedUp));
    let bound = JoinTokenLimits { uses: Some(5), expires_ms: Some(100), node: Some("n7".into()) };
    store.create_join_token("h3", 10, &bound).await.unwrap();
    assert_eq!(store.use_join_token("h3", "n1", 11).await.unwrap(), Err(No::OtherNode("n7".into())));
    assert_eq!(store.use_join_token("h3", "n7", 100).await.unwrap(), Err(No::Expired));
    assert_eq!(store.use_join_token("h3", "n7", 99).await.unwrap(), Ok(()));
    assert_eq!(store.revoke_join_tokens("h3", 50).await.unwrap(), 1);
    assert_eq!(store.revoke_join_tokens("h3", 51).await.unwrap(), 0, "revoked once");
    assert_eq!(store.use_join_token("h3", "n7", 52).await.unwrap(), Err(No::Revoked));
    let listed = store.join_tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    let h3 = listed.iter().find(|t| t.token_hash == "h3").unwrap();
    assert_eq!((h3.uses_left, h3.revoked_ms, h3.node.as_deref()), (Some(4), Some(50), Some("n7")));
    let mut node = store::AgentNode {
        name: "n1".into(),
        token_hash: "c1".into(),
        inventory_json: "[]".into(),
        address: "127.0.0.1".into(),
        joined_ms: 5,
        previous_token_hash: None,
        runtimes: vec!["podman".into()],
    };
    store.upsert_agent_node(&node).await.unwrap();
    node.token_hash = "c2".into();
    store.upsert_agent_node(&node).await.unwrap();
    assert_eq!(store.agent_nodes().await.unwrap(), vec![node.clone()]);
    // A rotation keeps the credential it replaces until the node uses its new one.
    assert!(store.rotate_agent_credential("n1", "c3", "c2").await.unwrap());
    let rotated = store.agent_nodes().await.unwrap().remove(0);
    assert_eq!((rotated.token_hash.as_str(), rotated.previous_token_hash.as_deref()), ("c3", Some("c2")));
    store.settle_agent_credential("n1").await.unwrap();
    assert_eq!(store.agent_nodes().await.unwrap()[0].previous_token_hash, None);
    // Joining again starts afresh.
    assert!(store.rotate_agent_credential("n1", "c4", "c3").await.unwrap());
    store.upsert_agent_node(&node).await.unwrap();
    assert_eq!(store.agent_nodes().await.unwrap(), vec![node.clone()]);
    assert!(!store.rotate_agent_credential("nobody", "x", "y").await.unwrap());
    // Joins that come together share commits, and the token's uses still count one by one:
    // of five joins on a three-use token, three store their node; the others store nothing.
    let three = JoinTokenLimits { uses: Some(3), expires_ms: None, node: None };
    store.create_join_token("h4", 10, &three).await.unwrap();
    let mut joins = tokio::task::JoinSet::new();
    for i in 1..=5 {
        let node = store::AgentNode { name: format!("j{i}"), token_hash: format!("cj{i}"), ..node.clone() };
        let store = store.clone();
        joins.spawn(async move { (node.name.clone(), store.join_agent_node("h4", &node, 20).await.unwrap()) });
    }
    let answers = joins.join_all().await;
    let joined: HashSet<String> = answers.iter().filter(|(_, a)| a.is_ok()).map(|(n, _)| n.clone()).collect();
    assert_eq!(joined.len(), 3, "{answers:?}");
    assert!(answers.iter().all(|(_, a)| a.is_ok() || *a == Err(No::UsedUp)), "{answers:?}");
    let stored: HashSet<String> =
        store.agent_nodes().await.unwrap().into_iter().map(|n| n.name).filter(|n| n.starts_with('j')).collect();
    assert_eq!(stored, joined);
    assert_eq!(store.join_agent_node("nope", &node, 21).await.unwrap(), Err(No::Unknown));
}

/// A share of one GPU is kept as asked; whole-GPU jobs have none; so are the CPUs and memory a
/// job holds, and the federated mark. Runs last: it adds jobs.
async fn gpu_shares(store: &Store) {
    let t = store.create_tenant("shares", "hash-shares", TenantQuota::default(), 99).await.unwrap();
    let share = NewJob {
        gpu_milli: Some(250),
        gpus_per_node: 1,
        nodes: 1,
        cpu_milli: 3_500,
        memory_mib: 24_576,
        ..new_job(t.id, Some("share"))
    };
    let stored = store.insert_job(&share, 15).await.unwrap().job;
    assert_eq!(stored.spec.gpu_milli, Some(250));
    let read = store.job_by_id(stored.id).await.unwrap().unwrap();
    assert_eq!((read.spec.gpu_milli, read.spec.cpu_milli, read.spec.memory_mib), (Some(250), 3_500, 24_576));
    let whole = store.insert_job(&new_job(t.id, None), 16).await.unwrap().job;
    let whole = store.job_by_id(whole.id).await.unwrap().unwrap();
    assert_eq!((whole.spec.gpu_milli, whole.spec.federated), (None, false));
    // A federated job keeps its mark, which holds its starts to the site's federation lease.
    let federated = store.insert_job(&NewJob { federated: true, ..new_job(t.id, None) }, 17).await.unwrap().job;
    assert!(federated.spec.federated);
    assert!(store.job_by_id(federated.id).await.unwrap().unwrap().spec.federated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_group_commit() {
    let dir = std::env::temp_dir().join(format!("drome-store-group-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    group_commit(&format!("sqlite://{}/drome.db", dir.display())).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_group_commit() {
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    group_commit(&db.url).await;
    db.drop_database().await.unwrap();
}

/// Submissions that share transactions, a tenant's GPUs, and closing with submissions in flight.
async fn group_commit(url: &str) {
    let store = Store::connect(url).await.unwrap();
    concurrent_inserts(&store).await;
    concurrent_retries(&store).await;
    batch_with_retries(&store).await;
    large_batches(&store).await;
    failed_batches_store_nothing(&store).await;
    tenant_usage(&store).await;
    prune_old(&store).await;
    closing_answers_everyone(store, url).await;
}

fn all(limit: i64) -> JobFilter {
    JobFilter { limit, ..Default::default() }
}

/// Many submissions at once: each is stored once, with its own id, time and history entry, and
/// a read after the answer sees it.
async fn concurrent_inserts(store: &Store) {
    let tenant_id = store.create_tenant("burst", "hash-burst", TenantQuota::default(), 1).await.unwrap().id;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let key = (i % 2 == 0).then(|| format!("burst-{i}"));
                let inserted = store.insert_job(&new_job(tenant_id, key.as_deref()), 1_000 + i).await?;
                let read = store.job(tenant_id, inserted.job.id).await?;
                Ok::<_, StoreError>((i, key, inserted, read))
            })
        })
        .collect();
    let mut submitted_ms = HashMap::new();
    for task in tasks {
        let (i, key, inserted, read) = task.await.unwrap().unwrap();
        assert!(inserted.created);
        assert_eq!(inserted.job.submitted_ms, 1_000 + i, "each caller gets its own job back");
        assert_eq!(inserted.job.spec.idempotency_key, key);
        assert_eq!(inserted.job.state, JobState::Pending);
        assert_eq!(read.as_ref(), Some(&inserted.job), "a read after the answer sees the job");
        submitted_ms.insert(inserted.job.id, inserted.job.submitted_ms);
    }
    assert_eq!(submitted_ms.len(), 200, "distinct ids");
    assert_eq!(store.jobs(tenant_id, &all(1_000)).await.unwrap().len(), 200);
    let events = store.events_after(tenant_id, 0, 1_000).await.unwrap();
    assert_eq!(events.len(), 200);
    for e in &events {
        assert_eq!(e.state, JobState::Pending);
        assert_eq!(submitted_ms.get(&e.job_id), Some(&e.at_ms), "one entry per job, at its submission");
    }
}

/// The same key submitted many times at once stores one job; every other call replays it.
async fn concurrent_retries(store: &Store) {
    let tenant_id = store.create_tenant("retries", "hash-retries", TenantQuota::default(), 1).await.unwrap().id;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.insert_job(&new_job(tenant_id, Some("same")), 2_000 + i).await })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap().unwrap());
    }
    let created: Vec<_> = answers.iter().filter(|a| a.created).collect();
    assert_eq!(created.len(), 1, "exactly one call stores the job");
    assert!(answers.iter().all(|a| a.job == created[0].job), "the others get it back");
    assert_eq!(store.jobs(tenant_id, &all(100)).await.unwrap().len(), 1);
    assert_eq!(store.events_after(tenant_id, 0, 100).await.unwrap().len(), 1);
}

/// One batch behaves as its submissions one after the other, keys reused within it included.
async fn batch_with_retries(store: &Store) {
    let tenant_id = store.create_tenant("batch", "hash-batch", TenantQuota::default(), 1).await.unwrap().id;
    let before = store.insert_job(&new_job(tenant_id, Some("k0")), 1).await.unwrap();
    let batch = [
        new_job(tenant_id, Some("k0")),
        new_job(tenant_id, Some("k1")),
        new_job(tenant_id, None),
        new_job(tenant_id, Some("k1")),
        new_job(tenant_id, None),
        NewJob { name: "other".into(), ..new_job(tenant_id, Some("k2")) },
    ];
    let got = store.insert_jobs(&batch, 2).await.unwrap();
    assert_eq!(got.iter().map(|a| a.created).collect::<Vec<_>>(), vec![false, true, true, false, true, true]);
    assert_eq!(got[0].job, before.job, "a key used before replays its job");
    assert_eq!(got[3].job, got[1].job, "a key used earlier in the batch replays that job");
    let ids: Vec<i64> = [1, 2, 4, 5].iter().map(|&i| got[i].job.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "new jobs take ids in submission order: {ids:?}");
    assert_eq!(got[5].job.spec.name, "other");
    assert!(got[1..].iter().all(|a| a.job.submitted_ms == 2));
    assert_eq!(store.events_after(tenant_id, 0, 100).await.unwrap().len(), 5);
    let history: Vec<JobState> = store.history(got[1].job.id).await.unwrap().into_iter().map(|e| e.state).collect();
    assert_eq!(history, vec![JobState::Pending]);
    assert!(store.insert_jobs(&[], 3).await.unwrap().is_empty());
}

/// Batches larger than one statement takes, with keys repeated within and across them.
async fn large_batches(store: &Store) {
    let tenant_id = store.create_tenant("large", "hash-large", TenantQuota::default(), 1).await.unwrap().id;
    // Even submissions carry one of 250 keys (each twice past the 500th), odd ones none.
    let key = |i: usize| i.is_multiple_of(2).then(|| format!("big-{}", i % 500));
    let batch: Vec<NewJob> = (0..700).map(|i| new_job(tenant_id, key(i).as_deref())).collect();
    let first = store.insert_jobs(&batch, 7).await.unwrap();
    assert_eq!(first.len(), 700);
    let created: Vec<i64> = first.iter().filter(|a| a.created).map(|a| a.job.id).collect();
    assert_eq!(created.len(), 600, "350 without a key, 250 keys");
    assert!(created.windows(2).all(|w| w[0] < w[1]), "ids in submission order");
    for i in (500..700).step_by(2) {
        assert!(!first[i].created);
        assert_eq!(first[i].job, first[i - 500].job, "submission {i} replays the one with its key");
    }
    assert_eq!(store.jobs(tenant_id, &all(1_000)).await.unwrap().len(), 600);
    assert_eq!(store.events_after(tenant_id, 0, 1_000).await.unwrap().len(), 600);

    // Again: every key replays its job; submissions without one are new jobs.
    let again = store.insert_jobs(&batch, 8).await.unwrap();
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        match key(i) {
            Some(_) => assert!(!b.created && b.job == a.job, "submission {i} replays its job"),
            None => assert!(b.created && b.job.id > a.job.id && b.job.submitted_ms == 8),
        }
    }
    assert_eq!(store.jobs(tenant_id, &all(2_000)).await.unwrap().len(), 950);
}

/// A batch that fails stores none of its submissions; through the writer, only the submission
/// that fails on its own is refused.
async fn failed_batches_store_nothing(store: &Store) {
    let tenant_id = store.create_tenant("failing", "hash-failing", TenantQuota::default(), 1).await.unwrap().id;
    const NO_SUCH_TENANT: i64 = 999_999;
    let batch = [new_job(tenant_id, Some("f0")), new_job(NO_SUCH_TENANT, None), new_job(tenant_id, None)];
    assert!(store.insert_jobs(&batch, 1).await.is_err());
    assert!(store.jobs(tenant_id, &all(100)).await.unwrap().is_empty(), "nothing of a failed batch is stored");

    // Through the writer: a bad submission fails alone; those that shared its transaction are
    // tried again on their own and stored.
    let tasks: Vec<_> = (0..40)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let job =
                    if i == 20 { new_job(NO_SUCH_TENANT, None) } else { new_job(tenant_id, Some(&format!("c{i}"))) };
                (i, store.insert_job(&job, 3).await)
            })
        })
        .collect();
    let mut stored_keys = HashSet::new();
    for task in tasks {
        match task.await.unwrap() {
            (20, answer) => assert!(answer.is_err(), "a job of no tenant is refused"),
            (_, Ok(inserted)) => {
                assert!(inserted.created);
                stored_keys.insert(inserted.job.spec.idempotency_key.unwrap());
            }
            (i, Err(e)) => panic!("submission {i} failed with another's: {e}"),
        }
    }
    assert_eq!(stored_keys.len(), 39, "every good submission is stored");
    let listed: HashSet<String> =
        store.jobs(tenant_id, &all(100)).await.unwrap().into_iter().filter_map(|j| j.spec.idempotency_key).collect();
    assert_eq!(listed, stored_keys, "stored exactly what was answered as stored");
    assert!(store.insert_job(&new_job(tenant_id, Some("after")), 4).await.unwrap().created, "the writer goes on");
}

/// GPUs, CPUs and memory held (scheduled, running) and asked for (pending), counted by the
/// database over each job's nodes.
async fn tenant_usage(store: &Store) {
    let tenant_id = store.create_tenant("gpus", "hash-gpus", TenantQuota::default(), 1).await.unwrap().id;
    let other = store.create_tenant("gpus-other", "hash-gpus-other", TenantQuota::default(), 1).await.unwrap().id;
    assert_eq!(store.tenant_usage(tenant_id).await.unwrap(), TenantUsage::default());
    let shape = |gpus_per_node, nodes| NewJob {
        gpus_per_node,
        nodes,
        cpu_milli: 500,
        memory_mib: 1024,
        ..new_job(tenant_id, None)
    };
    let jobs = store
        .insert_jobs(&[shape(8, 2), shape(2, 0), shape(1, 3), shape(4, 1), shape(-1, 5), shape(3, 1)], 1)
        .await
        .unwrap();
    store.insert_job(&NewJob { gpus_per_node: 8, nodes: 8, ..new_job(other, None) }, 1).await.unwrap();
    let id = |i: usize| jobs[i].job.id;
    let step = |job_id, from, to| Transition { job_id, from: vec![from], to, change: Change::default() };
    let steps = [
        step(id(1), JobState::Pending, JobState::Scheduled),
        step(id(2), JobState::Pending, JobState::Scheduled),
        step(id(2), JobState::Scheduled, JobState::Assigned),
        step(id(3), JobState::Pending, JobState::Scheduled),
        step(id(3), JobState::Scheduled, JobState::Assigned),
        step(id(3), JobState::Assigned, JobState::Succeeded),
    ];
    assert!(store.transitions(&steps, 2).await.unwrap().into_iter().all(|applied| applied));
    // Held: 2 (scheduled, one node at least) + 3 (running); pending: 16 + 0 (no GPUs) + 3.
    // Nodes held: 1 + 3; pending: 2 + 5 + 1 (jobs 0, 4, 5), each 500 CPU-milli and 1 GiB.
    let usage = store.tenant_usage(tenant_id).await.unwrap();
    assert_eq!((usage.gpus_used, usage.gpus_pending), (5, 19));
    assert_eq!((usage.cpu_milli_used, usage.cpu_milli_pending), (2000, 4000));
    assert_eq!((usage.memory_mib_used, usage.memory_mib_pending), (4096, 8192));
}

/// Old state changes of ended jobs, and spent join tokens, are forgotten; the jobs' rows, live
/// jobs' history and good tokens stay.
async fn prune_old(store: &Store) {
    let tenant_id = store.create_tenant("prune", "hash-prune", TenantQuota::default(), 1).await.unwrap().id;
    let jobs = store.insert_jobs(&[new_job(tenant_id, None), new_job(tenant_id, None)], 1_000).await.unwrap();
    let (ended, live) = (jobs[0].job.id, jobs[1].job.id);
    let step = |job_id, from, to| Transition { job_id, from: vec![from], to, change: Change::default() };
    let finish = Transition {
        job_id: ended,
        from: vec![JobState::Assigned],
        to: JobState::Succeeded,
        change: Change { finished: true, ..Change::default() },
    };
    let steps = [
        step(ended, JobState::Pending, JobState::Scheduled),
        step(ended, JobState::Scheduled, JobState::Assigned),
        finish,
        step(live, JobState::Pending, JobState::Scheduled),
    ];
    assert!(store.transitions(&steps, 2_000).await.unwrap().into_iter().all(|applied| applied));
    let limits =
        |uses, expires_ms| store::JoinTokenLimits { uses: Some(uses), expires_ms: Some(expires_ms), node: None };
    store.create_join_token("spent", 1_000, &limits(0, 10_000_000)).await.unwrap();
    store.create_join_token("expired", 1_000, &limits(5, 1_500)).await.unwrap();
    store.create_join_token("good", 1_000, &limits(5, 10_000_000)).await.unwrap();
    let before = store.history(ended).await.unwrap().len();
    assert!(before >= 4, "{before}");
    let (events, tokens) = store.prune(3_000, 3_000, 5_000).await.unwrap();
    assert_eq!(tokens, 2, "the used-up and the expired tokens go");
    assert!(events >= before as u64, "the ended job's changes go: {events}");
    assert!(store.history(ended).await.unwrap().is_empty());
    assert!(!store.history(live).await.unwrap().is_empty(), "a live job keeps its history");
    assert_eq!(store.job(tenant_id, ended).await.unwrap().map(|j| j.state), Some(JobState::Succeeded), "its row stays");
    let left: Vec<String> = store.join_tokens().await.unwrap().into_iter().map(|t| t.token_hash).collect();
    assert!(left.contains(&"good".to_string()) && !left.contains(&"spent".to_string()), "{left:?}");
}

/// Closing answers every submission in flight (stored, or refused as closed) and never hangs;
/// what was answered as stored is there when the database is opened again.
async fn closing_answers_everyone(store: Store, url: &str) {
    let tenant_id = store.create_tenant("closing", "hash-closing", TenantQuota::default(), 1).await.unwrap().id;
    let (stored_tx, mut stored_rx) = tokio::sync::mpsc::unbounded_channel();
    let tasks: Vec<_> = (0..32)
        .map(|task| {
            let (store, stored_tx) = (store.clone(), stored_tx.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    match store.insert_job(&new_job(tenant_id, Some(&format!("x{task}-{i}"))), 5).await {
                        Ok(inserted) => stored_tx.send(inserted.job.id).unwrap(),
                        Err(StoreError::Closed) => return,
                        Err(e) => panic!("refused as closed, not with {e}"),
                    }
                }
            })
        })
        .collect();
    drop(stored_tx);
    // Close while submissions are in flight: after the first is answered.
    let mut stored: HashSet<i64> = stored_rx.recv().await.into_iter().collect();
    tokio::time::timeout(Duration::from_secs(60), store.close()).await.expect("close never hangs");
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task).await.expect("every caller is answered").unwrap();
    }
    while let Some(id) = stored_rx.recv().await {
        stored.insert(id);
    }
    assert!(matches!(store.insert_job(&new_job(tenant_id, None), 6).await, Err(StoreError::Closed)));
    store.close().await;

    let reopened = Store::connect(url).await.unwrap();
    let listed: HashSet<i64> = reopened.jobs(tenant_id, &all(1_000)).await.unwrap().into_iter().map(|j| j.id).collect();
    assert_eq!(listed, stored, "what was answered as stored is stored, nothing else");
    reopened.close().await;
}
