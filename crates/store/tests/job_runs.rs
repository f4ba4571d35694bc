//! The run records usage is read from, on both backends: a start opens a run in the transition's
//! own transaction, leaving `running` closes it, a restart opens another under the next
//! generation, a step repeated changes nothing, and a window query finds the runs overlapping it.

use store::testing::TempPostgres;
use store::{Change, JobState, NewJob, RunEnergy, Store, TenantQuota, Transition};

fn new_job(tenant_id: i64, gpu_milli: Option<i64>) -> NewJob {
    NewJob {
        tenant_id,
        name: "train".into(),
        command: Some("sleep".into()),
        args_json: "[\"1\"]".into(),
        env_json: "{}".into(),
        gpus_per_node: if gpu_milli.is_some() { 1 } else { 8 },
        nodes: if gpu_milli.is_some() { 1 } else { 2 },
        gpu_milli,
        cpu_milli: 4_000,
        memory_mib: 8_192,
        image: None,
        gpu_model: None,
        priority: 0,
        deferrable: false,
        federated: false,
        max_runtime_s: None,
        restart_policy: "on-failure".into(),
        max_restarts: 3,
        idempotency_key: None,
        request_hash: "h".into(),
    }
}

fn step(job_id: i64, from: JobState, to: JobState, change: Change) -> Transition {
    Transition { job_id, from: vec![from], to, change }
}

/// Pending -> scheduled (placed) -> running at `at`.
async fn start(store: &Store, id: i64, at: i64) {
    let placed = Change { placement_json: Some(Some("[{\"node\":\"n1\"}]".into())), ..Default::default() };
    assert!(store.transition(id, &[JobState::Pending], JobState::Scheduled, at, &placed).await.unwrap());
    let started = Change { started: true, ..Default::default() };
    assert!(store.transition(id, &[JobState::Scheduled], JobState::Assigned, at, &started).await.unwrap());
}

async fn exercise(store: &Store) {
    let lab = store.create_tenant("lab", "hash-lab", TenantQuota::default(), 1).await.unwrap();
    let other = store.create_tenant("other", "hash-other", TenantQuota::default(), 1).await.unwrap();
    let gang = store.insert_job(&new_job(lab.id, None), 1_000).await.unwrap().job;
    let share = store.insert_job(&new_job(other.id, Some(250)), 1_000).await.unwrap().job;
    assert!(store.job_runs(None, 0, i64::MAX / 2).await.unwrap().is_empty(), "no run before a start");

    start(store, gang.id, 2_000).await;
    start(store, share.id, 2_500).await;
    let open = store.runs_of_job(gang.id).await.unwrap();
    assert_eq!(open.len(), 1);
    let run = &open[0];
    assert_eq!((run.generation, run.started_ms, run.ended_ms), (1, 2_000, None));
    assert_eq!((run.nodes, run.gpus_per_node, run.gpu_milli_held()), (2, 8, 16_000));
    assert_eq!((run.cpu_milli, run.memory_mib, run.tenant_id), (4_000, 8_192, lab.id));
    assert_eq!(run.placement_json.as_deref(), Some("[{\"node\":\"n1\"}]"));
    assert_eq!(run.ms_within(0, 10_000, 5_000), 3_000, "a run still going counts up to now");
    assert_eq!(store.runs_of_job(share.id).await.unwrap()[0].gpu_milli_held(), 250);

    // Its member failed: back to the queue (restart policy), the run closed with the state left for.
    let requeue = Change { placement_json: Some(None), reset_times: true, ..Default::default() };
    assert!(store.transition(gang.id, &[JobState::Assigned], JobState::Pending, 5_000, &requeue).await.unwrap());
    // The same step again (a retry) applies to nothing and closes nothing twice.
    assert!(!store.transition(gang.id, &[JobState::Assigned], JobState::Pending, 6_000, &requeue).await.unwrap());
    let runs = store.runs_of_job(gang.id).await.unwrap();
    assert_eq!((runs[0].ended_ms, runs[0].end_state.as_deref()), (Some(5_000), Some("pending")));

    // Started again: a second run under the next generation; then it succeeds.
    start(store, gang.id, 7_000).await;
    let done = Change { finished: true, exit_code: Some(0), ..Default::default() };
    let steps = [step(gang.id, JobState::Assigned, JobState::Succeeded, done)];
    assert_eq!(store.transitions(&steps, 9_000).await.unwrap(), vec![true]);
    let runs = store.runs_of_job(gang.id).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[1].generation, runs[1].started_ms, runs[1].ended_ms), (2, 7_000, Some(9_000)));
    assert_eq!(runs[1].end_state.as_deref(), Some("succeeded"));

    // A cancel of a job that never ran closes nothing; of a running one, closes its run.
    let cancel = Change { message: Some("cancelled by the tenant".into()), ..Default::default() };
    let from = vec![JobState::Pending, JobState::Scheduled, JobState::Assigned];
    let steps = [Transition { job_id: share.id, from, to: JobState::Cancelled, change: cancel }];
    assert_eq!(store.transitions(&steps, 8_000).await.unwrap(), vec![true]);
    assert_eq!(store.runs_of_job(share.id).await.unwrap()[0].ended_ms, Some(8_000));

    // Windows: runs overlapping [since, until), of one tenant or of all.
    let ids = |runs: Vec<store::JobRun>| runs.iter().map(|r| (r.job_id, r.generation)).collect::<Vec<_>>();
    assert_eq!(ids(store.job_runs(None, 0, 100_000).await.unwrap()), vec![(gang.id, 1), (share.id, 1), (gang.id, 2)]);
    assert_eq!(ids(store.job_runs(None, 5_000, 7_000).await.unwrap()), vec![(share.id, 1)], "ends and starts excluded");
    assert_eq!(ids(store.job_runs(Some(lab.id), 0, 100_000).await.unwrap()), vec![(gang.id, 1), (gang.id, 2)]);
    assert_eq!(ids(store.job_runs(None, 9_000, 100_000).await.unwrap()), Vec::<(i64, i64)>::new());

    // Measured energy adds up per run; a run that is not there is skipped.
    let adds = [
        RunEnergy { job_id: gang.id, generation: 2, joules: 1_500, measured_ms: 1_000 },
        RunEnergy { job_id: gang.id, generation: 2, joules: 500, measured_ms: 500 },
        RunEnergy { job_id: gang.id, generation: 9, joules: 7, measured_ms: 7 },
    ];
    store.add_run_energy(&adds).await.unwrap();
    let runs = store.runs_of_job(gang.id).await.unwrap();
    assert_eq!((runs[1].energy_joules, runs[1].energy_measured_ms), (2_000, 1_500));
    assert_eq!((runs[0].energy_joules, runs[0].energy_measured_ms), (0, 0));

    // Runs stay when old state changes are pruned.
    store.prune(i64::MAX / 2, 0, 200_000).await.unwrap();
    assert_eq!(store.job_runs(None, 0, 100_000).await.unwrap().len(), 3);
}

#[tokio::test]
async fn sqlite_job_runs() {
    let dir = std::env::temp_dir().join(format!("drome-job-runs-{}", std::process::id()));
    let store = Store::connect(&format!("sqlite://{}/runs.db", dir.display())).await.unwrap();
    exercise(&store).await;
    store.close().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn postgres_job_runs() {
    let db = TempPostgres::create().await.expect("PostgreSQL is required for this test");
    let store = Store::connect(&db.url).await.unwrap();
    exercise(&store).await;
    store.close().await;
    db.drop_database().await.unwrap();
}
