//! The runs of jobs, the record usage and billing read: what each run held, from when to when,
//! and the energy its nodes reported while it ran.
//!
//! Knows nothing about prices, fleets or HTTP: rows in, rows out. Runs are written by
//! [`Store::transitions`] (a start opens one, leaving `running` closes it), never here.

use crate::{Result, Store};
use sqlx::Row;
use sqlx::any::AnyRow;

/// One run of a job: one start, its generation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobRun {
    pub job_id: i64,
    pub generation: i64,
    pub tenant_id: i64,
    pub job_name: String,
    pub nodes: i64,
    pub gpus_per_node: i64,
    /// A share of one GPU in thousandths, for a fractional job.
    pub gpu_milli: Option<i64>,
    /// CPUs (thousandths) and memory on each node.
    pub cpu_milli: i64,
    pub memory_mib: i64,
    pub placement_json: Option<String>,
    pub started_ms: i64,
    /// `None` while it runs.
    pub ended_ms: Option<i64>,
    /// The state it left `running` for.
    pub end_state: Option<String>,
    /// Its share of its nodes' reported draw, integrated, and over how long a draw was reported.
    pub energy_joules: i64,
    pub energy_measured_ms: i64,
    /// The job may wait for cheaper power (priced at a discount).
    pub deferrable: bool,
}

impl JobRun {
    /// Thousandths of a GPU it held on all its nodes together.
    pub fn gpu_milli_held(&self) -> i64 {
        self.gpu_milli.unwrap_or(self.gpus_per_node * 1000) * self.nodes
    }

    /// The milliseconds of it within `[since_ms, until_ms)`, counting a run still going up to
    /// `now_ms`.
    pub fn ms_within(&self, since_ms: i64, until_ms: i64, now_ms: i64) -> i64 {
        let end = self.ended_ms.unwrap_or(now_ms).min(until_ms);
        (end - self.started_ms.max(since_ms)).max(0)
    }
}

/// Energy measured for one run since the last write, to add to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunEnergy {
    pub job_id: i64,
    pub generation: i64,
    pub joules: i64,
    pub measured_ms: i64,
}

const RUN_COLUMNS: &str = "r.job_id, r.generation, r.tenant_id, j.name, r.nodes, r.gpus_per_node, r.gpu_milli, \
     r.cpu_milli, r.memory_mib, r.placement_json, r.started_ms, r.ended_ms, r.end_state, r.energy_joules, \
     r.energy_measured_ms, j.is_deferrable";

fn run_of(r: &AnyRow) -> Result<JobRun> {
    Ok(JobRun {
        job_id: r.try_get(0)?,
        generation: r.try_get(1)?,
        tenant_id: r.try_get(2)?,
        job_name: r.try_get(3)?,
        nodes: r.try_get(4)?,
        gpus_per_node: r.try_get(5)?,
        gpu_milli: r.try_get(6)?,
        cpu_milli: r.try_get(7)?,
        memory_mib: r.try_get(8)?,
        placement_json: r.try_get(9)?,
        started_ms: r.try_get(10)?,
        ended_ms: r.try_get(11)?,
        end_state: r.try_get(12)?,
        energy_joules: r.try_get(13)?,
        energy_measured_ms: r.try_get(14)?,
        deferrable: r.try_get::<i64, _>(15)? != 0,
    })
}

impl Store {
    /// The runs that overlap `[since_ms, until_ms)`, of one tenant or of all, oldest first.
    pub async fn job_runs(&self, tenant_id: Option<i64>, since_ms: i64, until_ms: i64) -> Result<Vec<JobRun>> {
        // PostgreSQL cannot type a NULL parameter it only compares: two statements.
        let tenant_clause = if tenant_id.is_some() { " AND r.tenant_id = $3" } else { "" };
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM job_runs r JOIN jobs j ON j.id = r.job_id \
             WHERE r.started_ms < $1 AND (r.ended_ms IS NULL OR r.ended_ms > $2){tenant_clause} \
             ORDER BY r.started_ms, r.job_id, r.generation"
        );
        let mut query = sqlx::query(&sql).bind(until_ms).bind(since_ms);
        if let Some(t) = tenant_id {
            query = query.bind(t);
        }
        let rows = query.fetch_all(&self.reader).await?;
        rows.iter().map(run_of).collect()
    }

    /// The job a tenant's idempotency key made, if any.
    pub async fn job_id_by_idempotency_key(&self, tenant_id: i64, key: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT id FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2")
            .bind(tenant_id)
            .bind(key)
            .fetch_optional(&self.reader)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// A tenant's jobs waiting or running.
    pub async fn active_jobs_of(&self, tenant_id: i64) -> Result<Vec<crate::Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {} FROM jobs WHERE tenant_id = $1 AND state IN ('pending', 'scheduled', 'running', 'preempted') \
             ORDER BY id",
            crate::JOB_COLUMNS
        ))
        .bind(tenant_id)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(Store::job_of).collect()
    }

    /// A job's runs, first first.
    pub async fn runs_of_job(&self, job_id: i64) -> Result<Vec<JobRun>> {
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM job_runs r JOIN jobs j ON j.id = r.job_id WHERE r.job_id = $1 ORDER BY r.generation"
        );
        let rows = sqlx::query(&sql).bind(job_id).fetch_all(&self.reader).await?;
        rows.iter().map(run_of).collect()
    }

    /// The runs of the jobs `ids`, by job and generation.
    pub async fn runs_of_jobs(&self, ids: &[i64]) -> Result<Vec<JobRun>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT {RUN_COLUMNS} FROM job_runs r JOIN jobs j ON j.id = r.job_id WHERE r.job_id IN ({}) \
                 ORDER BY r.job_id, r.generation",
                params.join(", ")
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.reader).await? {
                out.push(run_of(&r)?);
            }
        }
        out.sort_by_key(|r| (r.job_id, r.generation));
        Ok(out)
    }

    /// Adds measured energy to runs, in one transaction. A run that is not there is skipped.
    pub async fn add_run_energy(&self, adds: &[RunEnergy]) -> Result<()> {
        if adds.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        for a in adds {
            sqlx::query(
                "UPDATE job_runs SET energy_joules = energy_joules + $1, energy_measured_ms = energy_measured_ms + $2 \
                 WHERE job_id = $3 AND generation = $4",
            )
            .bind(a.joules)
            .bind(a.measured_ms)
            .bind(a.job_id)
            .bind(a.generation)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
