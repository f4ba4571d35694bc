//! The leader's lease on both backends: one holder at a time, takeover only after expiry with a
//! new epoch, and a deposed leader's writes refused by the fence. On PostgreSQL, the writes of a
//! replica that does not lead are announced to the listening leader, once committed.

use store::testing::TempPostgres;
use store::{Change, JobState, NewJob, Store, StoreError, TenantQuota, Transition};

fn job(tenant_id: i64) -> NewJob {
    NewJob {
        tenant_id,
        name: "train".into(),
        command: Some("sleep".into()),
        args_json: "[]".into(),
        env_json: "{}".into(),
        gpus_per_node: 1,
        nodes: 1,
        gpu_milli: None,
        cpu_milli: 0,
        memory_mib: 0,
        image: None,
        gpu_model: None,
        priority: 0,
        deferrable: false,
        federated: false,
        max_runtime_s: None,
        restart_policy: "never".into(),
        max_restarts: 0,
        idempotency_key: None,
        request_hash: "h".into(),
    }
}

async fn exercise(store: Store) {
    const LEASE_MS: i64 = 10_000;
    assert_eq!(store.lease().await.unwrap(), None, "nobody led yet");

    // Many replicas start at once: exactly one takes the lease.
    let tries = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move { store.acquire_lease(&format!("r{i}"), None, 1_000, LEASE_MS).await.unwrap() })
    });
    let mut won = Vec::new();
    for t in tries {
        if let Some(lease) = t.await.unwrap() {
            won.push(lease);
        }
    }
    assert_eq!(won.len(), 1, "{won:?}");
    let a = won.remove(0);
    assert_eq!((a.epoch, a.acquired_ms, a.expires_ms), (1, 1_000, 11_000));
    assert_eq!(store.lease().await.unwrap().as_ref(), Some(&a));

    // While it runs, nobody else takes it; its holder renews it.
    assert_eq!(store.acquire_lease("b", None, 10_999, LEASE_MS).await.unwrap(), None);
    assert!(store.renew_lease(&a.holder, 1, 5_000, LEASE_MS).await.unwrap());
    assert_eq!(store.acquire_lease("b", None, 14_999, LEASE_MS).await.unwrap(), None, "renewed until 15,000");

    let tenant = store.create_tenant("t", "hash-t", TenantQuota::default(), 1).await.unwrap();
    let id = store.insert_job(&job(tenant.id), 2).await.unwrap().job.id;
    let schedule = |to: JobState| Transition {
        job_id: id,
        from: vec![JobState::Pending],
        to,
        change: Change { placement_json: Some(Some("[]".into())), ..Default::default() },
    };
    let leader_a = store.fenced(a.epoch);
    assert_eq!(leader_a.fence(), Some(1));

    // A pauses past its lease; b takes over with a new epoch.
    let b =
        store.acquire_lease("b", Some("http://b:8080"), 15_001, LEASE_MS).await.unwrap().expect("expired: b takes it");
    assert_eq!((b.holder.as_str(), b.epoch, b.address.as_deref()), ("b", 2, Some("http://b:8080")));
    assert!(!store.renew_lease(&a.holder, 1, 15_002, LEASE_MS).await.unwrap(), "a is deposed");

    // A's writes are refused and change nothing; b's go through.
    let refused = leader_a.transitions(&[schedule(JobState::Scheduled)], 15_003).await;
    assert!(matches!(refused, Err(StoreError::Fenced { epoch: 1, current: Some(2) })), "{refused:?}");
    assert!(matches!(leader_a.finish_cancelled(&[id], 15_003).await, Err(StoreError::Fenced { .. })));
    assert_eq!(store.job_by_id(id).await.unwrap().unwrap().state, JobState::Pending);
    let leader_b = store.fenced(b.epoch);
    assert_eq!(leader_b.transitions(&[schedule(JobState::Scheduled)], 15_004).await.unwrap(), vec![true]);
    assert_eq!(store.job_by_id(id).await.unwrap().unwrap().state, JobState::Scheduled);
    // An unfenced store (a tool on the database) needs no lease.
    assert!(
        store.transition(id, &[JobState::Scheduled], JobState::Cancelled, 15_005, &Change::default()).await.unwrap()
    );

    // Every other write of a deposed leader is refused too: submissions (through the group
    // commit, beside an unfenced one that goes through), joins, tenants, settings, tokens.
    let submission = job(tenant.id);
    let (fenced, plain) = tokio::join!(leader_a.insert_job(&submission, 15_005), store.insert_job(&submission, 15_005));
    assert!(matches!(fenced, Err(StoreError::Fenced { .. })), "{fenced:?}");
    assert!(plain.unwrap().created, "a submission of another server in the same batch is stored");
    let node = store::AgentNode {
        name: "n1".into(),
        token_hash: "c1".into(),
        inventory_json: "[]".into(),
        address: "127.0.0.1".into(),
        joined_ms: 5,
        previous_token_hash: None,
        runtimes: vec!["podman".into()],
    };
    assert!(matches!(leader_a.upsert_agent_node(&node).await, Err(StoreError::Fenced { .. })));
    assert!(matches!(
        leader_a.create_tenant("u", "hash-u", TenantQuota::default(), 3).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(
        leader_a.set_quota(tenant.id, TenantQuota { gpus: Some(1), ..TenantQuota::default() }).await,
        Err(StoreError::Fenced { .. })
    ));
    assert!(matches!(leader_a.set_setting("k", "v").await, Err(StoreError::Fenced { .. })));
    assert!(matches!(leader_a.add_join_token("j", 1).await, Err(StoreError::Fenced { .. })));
    assert!(matches!(leader_a.insert_jobs(&[job(tenant.id)], 15_006).await, Err(StoreError::Fenced { .. })));
    assert!(store.agent_nodes().await.unwrap().is_empty() && store.tenant_by_name("u").await.unwrap().is_none());
    assert_eq!(store.setting("k").await.unwrap(), None);
    leader_b.upsert_agent_node(&node).await.unwrap();
    leader_b.set_setting("k", "v").await.unwrap();

    // Replicas record themselves (never fenced: a deposed leader still says it runs); those not
    // seen for a while are forgotten.
    leader_a.record_replica("a", "http://a:1", 100, 1_000, 0).await.unwrap();
    store.record_replica("b", "http://b:1", 200, 2_000, 0).await.unwrap();
    store.record_replica("b", "http://b:2", 999, 3_000, 1_500).await.unwrap();
    let seen = store.replicas(0).await.unwrap();
    assert_eq!(seen.len(), 1, "a, unseen since 1,000, is forgotten: {seen:?}");
    assert_eq!((seen[0].address.as_str(), seen[0].started_ms, seen[0].seen_ms), ("http://b:2", 200, 3_000));
    assert!(store.replicas(3_001).await.unwrap().is_empty());

    // A leader that stops cleanly gives the lease up: the next one needs no wait.
    assert!(!store.release_lease(&a.holder, 1).await.unwrap(), "not a's to give");
    assert!(store.release_lease("b", 2).await.unwrap());
    let c = store.acquire_lease("c", None, 15_006, LEASE_MS).await.unwrap().expect("released");
    assert_eq!((c.epoch, c.address), (3, None), "the address is the new holder's");
    assert!(matches!(
        leader_b.transitions(&[schedule(JobState::Scheduled)], 15_007).await,
        Err(StoreError::Fenced { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_leader_lease() {
    let dir = std::env::temp_dir().join(format!("drome-store-lease-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::connect(&format!("sqlite://{}/drome.db", dir.display())).await.unwrap();
    exercise(store.clone()).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_leader_lease() {
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let store = Store::connect(&db.url).await.unwrap();
    exercise(store.clone()).await;
    store.close().await;
    db.drop_database().await.unwrap();
}

/// The next notice, within a few seconds.
async fn next(listener: &mut store::Listener) -> store::Notice {
    tokio::time::timeout(std::time::Duration::from_secs(5), listener.next()).await.expect("a notice").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_announces_the_writes_of_replicas_that_do_not_lead() {
    use store::Notice;
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let store = Store::connect(&db.url).await.unwrap();
    let mut listener = store.listen().await.unwrap().expect("PostgreSQL listens");
    let standby = store.announcing();
    let tenant = store.create_tenant("t", "hash-t", TenantQuota::default(), 1).await.unwrap();

    // The leader's own writes (not announcing) are not announced; a standby's are, committed.
    let own = store.insert_job(&job(tenant.id), 2).await.unwrap().job.id;
    let theirs = standby.insert_jobs(&[job(tenant.id), job(tenant.id)], 3).await.unwrap();
    let ids: Vec<i64> = theirs.iter().map(|i| i.job.id).collect();
    assert_eq!(next(&mut listener).await, Notice::Submitted(ids.clone()), "not job {own}");
    assert!(store.job_by_id(ids[0]).await.unwrap().is_some(), "announced once stored");

    // A replayed submission (same key) stores nothing and announces nothing.
    let mut keyed = job(tenant.id);
    keyed.idempotency_key = Some("k".into());
    let first = standby.insert_job(&keyed, 4).await.unwrap();
    assert_eq!(next(&mut listener).await, Notice::Submitted(vec![first.job.id]));
    assert!(!standby.insert_job(&keyed, 5).await.unwrap().created);

    // Cancels that applied, and quotas.
    let cancel = |id: i64| Transition {
        job_id: id,
        from: vec![JobState::Pending],
        to: JobState::Cancelled,
        change: Change::default(),
    };
    let applied = standby.transitions(&[cancel(ids[0]), cancel(ids[0])], 6).await.unwrap();
    assert_eq!(applied, vec![true, false]);
    assert_eq!(next(&mut listener).await, Notice::Cancelled(vec![ids[0]]), "the replayed one is not announced");
    standby.set_quota(tenant.id, TenantQuota { gpus: Some(8), ..TenantQuota::default() }).await.unwrap();
    assert_eq!(next(&mut listener).await, Notice::QuotaSet(tenant.id));

    // A write that fails announces nothing: the notice goes with the commit.
    let mut bad = job(tenant.id);
    bad.tenant_id = 999_999;
    assert!(standby.insert_job(&bad, 7).await.is_err());
    store.announce_jobs_changed().await.unwrap();
    assert_eq!(next(&mut listener).await, Notice::JobsChanged, "nothing came of the failed insert");

    drop(listener);
    store.close().await;
    db.drop_database().await.unwrap();
}
