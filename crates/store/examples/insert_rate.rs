//! How many durable submissions a store takes per second, and how long each waits: N inserts
//! (each a committed `insert_job` with its own idempotency key) from many concurrent tasks, as
//! the API server's submission handlers issue them.
//!
//! ```text
//! cargo run -p store --release --example insert_rate -- sqlite:///tmp/rate.db [N] [TASKS]
//! cargo run -p store --release --example insert_rate -- postgres://postgres@127.0.0.1:5432/drome_rate
//! ```
//!
//! Every run adds a tenant of its own, so it may be repeated on the same database.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::{NewJob, Store, TenantQuota};

const DEFAULT_INSERTS: usize = 20_000;
const DEFAULT_TASKS: usize = 64;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn job(tenant_id: i64, key: String) -> NewJob {
    NewJob {
        tenant_id,
        name: "train".into(),
        command: Some("python".into()),
        args_json: "[\"train.py\",\"--epochs\",\"3\"]".into(),
        env_json: "{\"SEED\":\"1\"}".into(),
        gpus_per_node: 8,
        nodes: 1,
        gpu_milli: None,
        cpu_milli: 0,
        memory_mib: 0,
        image: None,
        gpu_model: Some("H100".into()),
        priority: 0,
        deferrable: false,
        federated: false,
        max_runtime_s: Some(3600),
        restart_policy: "never".into(),
        max_restarts: 0,
        idempotency_key: Some(key),
        request_hash: "0f3a9c".into(),
    }
}

/// The latency at quantile `q` of sorted samples.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let at = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted.get(at).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let Some(url) = args.next() else {
        return Err("usage: insert_rate DATABASE_URL [INSERTS] [TASKS]".into());
    };
    let inserts: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(DEFAULT_INSERTS);
    let tasks: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(DEFAULT_TASKS).max(1);

    let store = Store::connect(&url).await?;
    let run = format!("insert-rate-{}-{}", std::process::id(), now_ms());
    let tenant = store.create_tenant(&run, &run, TenantQuota::default(), now_ms()).await?;

    let started = Instant::now();
    let mut workers = Vec::with_capacity(tasks);
    for task in 0..tasks {
        let (store, run, tenant_id) = (store.clone(), run.clone(), tenant.id);
        // Task t takes inserts t, t + tasks, t + 2 * tasks...
        let mine: Vec<usize> = (task..inserts).step_by(tasks).collect();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(mine.len());
            for i in mine {
                let asked = Instant::now();
                let done = store.insert_job(&job(tenant_id, format!("{run}-{i}")), now_ms()).await?;
                latencies.push(asked.elapsed());
                if !done.created {
                    return Err(format!("insert {i} was not created").into());
                }
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(inserts);
    for worker in workers {
        latencies.extend(worker.await?.map_err(|e| e.to_string())?);
    }
    let elapsed = started.elapsed();
    store.close().await;

    latencies.sort_unstable();
    println!(
        "{:?}: {} inserts from {} tasks in {:.2} s: {:.0} inserts/s, latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        store.backend(),
        latencies.len(),
        tasks,
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        ms(quantile(&latencies, 0.50)),
        ms(quantile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
    );
    Ok(())
}
