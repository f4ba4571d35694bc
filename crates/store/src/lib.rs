//! drome's store: tenants, jobs and their state history, in embedded SQLite (one file, WAL) or
//! PostgreSQL. This is the only crate that speaks SQL.
//!
//! Queries are plain runtime SQL over [`sqlx::AnyPool`], written once in the subset both dialects
//! share (`$1` parameters, `RETURNING`, `ON CONFLICT`); only the migrations differ per dialect.
//! Every state change of a job is a conditional update (`WHERE state IN (...)`) committed together
//! with its history row, so the scheduler loop can repeat any step after a crash without doing it
//! twice.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, Row};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

pub mod testing;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database url '{0}' (expected sqlite://PATH or postgres://...)")]
    BadUrl(String),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{what} '{name}' already exists")]
    Conflict { what: &'static str, name: String },
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A job's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Preempted,
    ];
    /// States that hold or wait for GPUs.
    pub const ACTIVE: [JobState; 3] = [JobState::Pending, JobState::Scheduled, JobState::Running];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Preempted => "preempted",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown job state '{s}'")))
    }
}

/// A tenant as stored. The token is kept only as its hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenant {
    pub id: i64,
    pub name: String,
    /// GPUs the tenant may hold at once; `None` is unlimited.
    pub gpu_quota: Option<i64>,
    pub created_ms: i64,
}

/// What a submission asks for, as the store keeps it. Lists and maps arrive already encoded as
/// JSON text: the store does not look inside them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewJob {
    pub tenant_id: i64,
    pub name: String,
    pub command: Option<String>,
    pub args_json: String,
    pub env_json: String,
    pub gpus_per_node: i64,
    pub nodes: i64,
    /// A share of one GPU, thousandths (`None`: `gpus_per_node` whole GPUs).
    pub gpu_milli: Option<i64>,
    pub gpu_model: Option<String>,
    pub priority: i64,
    pub deferrable: bool,
    pub max_runtime_s: Option<i64>,
    pub restart_policy: String,
    pub max_restarts: i64,
    pub idempotency_key: Option<String>,
    /// Fingerprint of the request, to tell a retry from a different request reusing a key.
    pub request_hash: String,
}

/// A job as stored: what was asked for and where it stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: i64,
    /// The submission, as it was stored.
    pub spec: NewJob,
    pub state: JobState,
    /// Times the job has been started.
    pub attempts: i64,
    pub placement_json: Option<String>,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
    pub submitted_ms: i64,
    pub started_ms: Option<i64>,
    pub finished_ms: Option<i64>,
}

/// One entry of a job's state history, also the unit of the event stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobEvent {
    pub id: i64,
    pub job_id: i64,
    pub tenant_id: i64,
    pub state: JobState,
    pub at_ms: i64,
    pub message: Option<String>,
}

/// The outcome of [`Store::insert_job`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub job: Job,
    /// False when the idempotency key was already used: `job` is the one stored then.
    pub created: bool,
}

/// What a state change also writes besides the state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Change {
    /// `Some(None)` clears the placement.
    pub placement_json: Option<Option<String>>,
    /// Set `started_ms` to the change's time and count an attempt.
    pub started: bool,
    /// Clear `started_ms` and `finished_ms` (the job goes back to the queue).
    pub reset_times: bool,
    /// Set `finished_ms` to the change's time.
    pub finished: bool,
    pub exit_code: Option<i64>,
    pub message: Option<String>,
}

/// One conditional state change of [`Store::transitions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub job_id: i64,
    /// The states the job may be in; in any other, the step does nothing.
    pub from: Vec<JobState>,
    pub to: JobState,
    pub change: Change,
}

/// A node that joined through its agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentNode {
    pub name: String,
    pub token_hash: String,
    /// The node's GPUs as the agent reported them, JSON the store does not look inside.
    pub inventory_json: String,
    /// Where the node's gang members reach each other (`DROME_MASTER_ADDR`).
    pub address: String,
    pub joined_ms: i64,
}

/// Filter for [`Store::jobs`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// Only jobs with an id below this one (paging newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

const JOB_COLUMNS: &str = "id, tenant_id, name, command, args_json, env_json, gpus_per_node, nodes, gpu_model, \
     priority, is_deferrable, max_runtime_s, restart_policy, max_restarts, idempotency_key, request_hash, state, \
     attempts, placement_json, exit_code, message, submitted_ms, started_ms, finished_ms, gpu_milli";

fn migrator(backend: Backend) -> Migrator {
    let (init, agents, shares) = match backend {
        Backend::Sqlite => (
            include_str!("../migrations/sqlite/0001_init.sql"),
            include_str!("../migrations/sqlite/0002_agents.sql"),
            include_str!("../migrations/sqlite/0003_gpu_share.sql"),
        ),
        Backend::Postgres => (
            include_str!("../migrations/postgres/0001_init.sql"),
            include_str!("../migrations/postgres/0002_agents.sql"),
            include_str!("../migrations/postgres/0003_gpu_share.sql"),
        ),
    };
    let migrations = vec![
        Migration::new(1, Cow::Borrowed("init"), MigrationType::Simple, Cow::Borrowed(init), false),
        Migration::new(2, Cow::Borrowed("agents"), MigrationType::Simple, Cow::Borrowed(agents), false),
        Migration::new(3, Cow::Borrowed("gpu share"), MigrationType::Simple, Cow::Borrowed(shares), false),
    ];
    Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
}

/// The store over one database. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating the SQLite file and its
    /// directory if needed, and runs the migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url, max) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
            }
            // One connection: SQLite takes one writer at a time anyway, and a single connection
            // never meets a busy snapshot inside a transaction.
            (Backend::Sqlite, format!("sqlite://{path}?mode=rwc"), 1)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string(), 16)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Per connection: a connection the pool opens again keeps them. In WAL mode
                        // `synchronous = NORMAL` syncs at checkpoints, not on every commit: a power
                        // loss may lose the last commits, never corrupt the database.
                        for pragma in
                            ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", "PRAGMA foreign_keys = ON"]
                        {
                            sqlx::query(pragma).execute(&mut *conn).await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        migrator(backend).run(&pool).await?;
        tracing::debug!(backend = ?backend, "store ready");
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool, waiting for connections in use.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Creates a tenant; its name must be new.
    pub async fn create_tenant(
        &self,
        name: &str,
        token_hash: &str,
        gpu_quota: Option<i64>,
        now_ms: i64,
    ) -> Result<Tenant> {
        let row = sqlx::query(
            "INSERT INTO tenants (name, token_hash, gpu_quota, created_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(gpu_quota)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(r) => Ok(Tenant { id: r.try_get(0)?, name: name.to_string(), gpu_quota, created_ms: now_ms }),
            None => Err(StoreError::Conflict { what: "tenant", name: name.to_string() }),
        }
    }

    fn tenant_of(r: &AnyRow) -> Result<Tenant> {
        Ok(Tenant { id: r.try_get(0)?, name: r.try_get(1)?, gpu_quota: r.try_get(2)?, created_ms: r.try_get(3)? })
    }

    pub async fn tenant_by_token_hash(&self, token_hash: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, gpu_quota, created_ms FROM tenants WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, gpu_quota, created_ms FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenant(&self, id: i64) -> Result<Option<Tenant>> {
        let row = sqlx::query("SELECT id, name, gpu_quota, created_ms FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, gpu_quota, created_ms FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(Self::tenant_of).collect()
    }

    /// Sets a tenant's GPU quota; `None` if there is no such tenant.
    pub async fn set_quota(&self, id: i64, gpu_quota: Option<i64>) -> Result<Option<Tenant>> {
        sqlx::query("UPDATE tenants SET gpu_quota = $1 WHERE id = $2")
            .bind(gpu_quota)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.tenant(id).await
    }

    /// Replaces a tenant's token (by its hash); false if there is no such tenant.
    pub async fn set_token_hash(&self, id: i64, token_hash: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE tenants SET token_hash = $1 WHERE id = $2")
            .bind(token_hash)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    fn job_of(r: &AnyRow) -> Result<Job> {
        let state: String = r.try_get(16)?;
        let spec = NewJob {
            tenant_id: r.try_get(1)?,
            name: r.try_get(2)?,
            command: r.try_get(3)?,
            args_json: r.try_get(4)?,
            env_json: r.try_get(5)?,
            gpus_per_node: r.try_get(6)?,
            nodes: r.try_get(7)?,
            gpu_model: r.try_get(8)?,
            priority: r.try_get(9)?,
            deferrable: r.try_get::<i64, _>(10)? != 0,
            max_runtime_s: r.try_get(11)?,
            restart_policy: r.try_get(12)?,
            max_restarts: r.try_get(13)?,
            idempotency_key: r.try_get(14)?,
            request_hash: r.try_get(15)?,
            gpu_milli: r.try_get(24)?,
        };
        Ok(Job {
            id: r.try_get(0)?,
            spec,
            state: state.parse()?,
            attempts: r.try_get(17)?,
            placement_json: r.try_get(18)?,
            exit_code: r.try_get(19)?,
            message: r.try_get(20)?,
            submitted_ms: r.try_get(21)?,
            started_ms: r.try_get(22)?,
            finished_ms: r.try_get(23)?,
        })
    }

    /// Stores a new pending job and its first history entry in one transaction. With an
    /// idempotency key already used by the tenant, stores nothing and returns the earlier job.
    pub async fn insert_job(&self, job: &NewJob, now_ms: i64) -> Result<Inserted> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO jobs (tenant_id, name, command, args_json, env_json, gpus_per_node, nodes, gpu_model, \
             priority, is_deferrable, max_runtime_s, restart_policy, max_restarts, idempotency_key, request_hash, \
             state, attempts, submitted_ms, gpu_milli) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'pending', 0, $16, $17) \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id",
        )
        .bind(job.tenant_id)
        .bind(&job.name)
        .bind(job.command.as_deref())
        .bind(&job.args_json)
        .bind(&job.env_json)
        .bind(job.gpus_per_node)
        .bind(job.nodes)
        .bind(job.gpu_model.as_deref())
        .bind(job.priority)
        .bind(i64::from(job.deferrable))
        .bind(job.max_runtime_s)
        .bind(&job.restart_policy)
        .bind(job.max_restarts)
        .bind(job.idempotency_key.as_deref())
        .bind(&job.request_hash)
        .bind(now_ms)
        .bind(job.gpu_milli)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = row {
            let id: i64 = r.try_get(0)?;
            sqlx::query(
                "INSERT INTO job_events (job_id, tenant_id, state, at_ms, message) VALUES ($1, $2, 'pending', $3, NULL)",
            )
            .bind(id)
            .bind(job.tenant_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            // Exactly what was inserted: no need to read it back.
            let stored = Job {
                id,
                spec: job.clone(),
                state: JobState::Pending,
                attempts: 0,
                placement_json: None,
                exit_code: None,
                message: None,
                submitted_ms: now_ms,
                started_ms: None,
                finished_ms: None,
            };
            return Ok(Inserted { job: stored, created: true });
        }
        let r = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2"))
            .bind(job.tenant_id)
            .bind(job.idempotency_key.as_deref())
            .fetch_one(&mut *tx)
            .await?;
        let stored = Self::job_of(&r)?;
        tx.commit().await?;
        Ok(Inserted { job: stored, created: false })
    }

    /// A tenant's job; `None` if it does not exist or belongs to another tenant.
    pub async fn job(&self, tenant_id: i64, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2"))
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::job_of).transpose()
    }

    /// Any tenant's job, for the scheduler.
    pub async fn job_by_id(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Self::job_of).transpose()
    }

    /// Any tenants' jobs by id, in id order; ids that do not exist are left out.
    pub async fn jobs_by_ids(&self, ids: &[i64]) -> Result<Vec<Job>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({}) ORDER BY id", params.join(", "));
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(*id);
            }
            for r in q.fetch_all(&self.pool).await? {
                out.push(Self::job_of(&r)?);
            }
        }
        out.sort_by_key(|j| j.id);
        Ok(out)
    }

    /// A tenant's jobs, newest first.
    pub async fn jobs(&self, tenant_id: i64, filter: &JobFilter) -> Result<Vec<Job>> {
        let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1");
        let mut n = 1;
        if filter.state.is_some() {
            n += 1;
            sql.push_str(&format!(" AND state = ${n}"));
        }
        if filter.before_id.is_some() {
            n += 1;
            sql.push_str(&format!(" AND id < ${n}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
        let mut q = sqlx::query(&sql).bind(tenant_id);
        if let Some(s) = filter.state {
            q = q.bind(s.as_str());
        }
        if let Some(b) = filter.before_id {
            q = q.bind(b);
        }
        let rows = q.bind(filter.limit.max(0)).fetch_all(&self.pool).await?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Every tenant's pending, scheduled and running jobs, oldest first: what the scheduler
    /// rebuilds its state from.
    pub async fn active_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('pending', 'scheduled', 'running') ORDER BY id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Number of jobs per state, all tenants.
    pub async fn state_counts(&self) -> Result<Vec<(JobState, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                Ok((s.parse()?, r.try_get::<i64, _>(1)?))
            })
            .collect()
    }

    /// Moves `job_id` to `to` if it is in one of `from`, writing `change` and a history entry in
    /// the same transaction. Returns false (and writes nothing) if the job was not in `from`:
    /// repeating a step is harmless.
    pub async fn transition(
        &self,
        job_id: i64,
        from: &[JobState],
        to: JobState,
        now_ms: i64,
        change: &Change,
    ) -> Result<bool> {
        let step = Transition { job_id, from: from.to_vec(), to, change: change.clone() };
        Ok(self.transitions(std::slice::from_ref(&step), now_ms).await?.first().copied().unwrap_or(false))
    }

    /// Many [`Store::transition`]s in one transaction (one commit, whatever their number). Each
    /// is conditional on its own: the answer says, per step, whether it applied.
    pub async fn transitions(&self, steps: &[Transition], now_ms: i64) -> Result<Vec<bool>> {
        if steps.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.pool.begin().await?;
        let mut applied = Vec::with_capacity(steps.len());
        for step in steps {
            applied.push(Self::transition_in(&mut tx, step, now_ms).await?);
        }
        tx.commit().await?;
        Ok(applied)
    }

    async fn transition_in(conn: &mut sqlx::AnyConnection, step: &Transition, now_ms: i64) -> Result<bool> {
        let (job_id, from, to, change) = (step.job_id, &step.from, step.to, &step.change);
        if from.is_empty() {
            return Ok(false);
        }
        // Only the parameters the statement uses may be bound: PostgreSQL refuses extra ones.
        enum Val {
            Int(Option<i64>),
            Text(Option<String>),
        }
        let mut vals = vec![Val::Text(Some(to.as_str().to_string()))];
        let mut sets = vec!["state = $1".to_string()];
        let param = |vals: &mut Vec<Val>, v: Val| {
            vals.push(v);
            format!("${}", vals.len())
        };
        if let Some(p) = &change.placement_json {
            let at = param(&mut vals, Val::Text(p.clone()));
            sets.push(format!("placement_json = {at}"));
        }
        if change.started || change.finished {
            let at = param(&mut vals, Val::Int(Some(now_ms)));
            if change.started {
                sets.push(format!("started_ms = {at}"));
                sets.push("attempts = attempts + 1".into());
            }
            if change.finished {
                sets.push(format!("finished_ms = {at}"));
            }
        }
        if change.reset_times {
            sets.push("started_ms = NULL".into());
            sets.push("finished_ms = NULL".into());
        }
        if let Some(code) = change.exit_code {
            let at = param(&mut vals, Val::Int(Some(code)));
            sets.push(format!("exit_code = {at}"));
        }
        if let Some(m) = &change.message {
            let at = param(&mut vals, Val::Text(Some(m.clone())));
            sets.push(format!("message = {at}"));
        }
        let id_at = param(&mut vals, Val::Int(Some(job_id)));
        let from_list: Vec<String> =
            from.iter().map(|s| param(&mut vals, Val::Text(Some(s.as_str().to_string())))).collect();
        let sql = format!(
            "UPDATE jobs SET {} WHERE id = {id_at} AND state IN ({}) RETURNING tenant_id",
            sets.join(", "),
            from_list.join(", ")
        );
        let mut q = sqlx::query(&sql);
        for v in vals {
            q = match v {
                Val::Int(i) => q.bind(i),
                Val::Text(t) => q.bind(t),
            };
        }
        let Some(row) = q.fetch_optional(&mut *conn).await? else {
            return Ok(false);
        };
        let tenant_id: i64 = row.try_get(0)?;
        sqlx::query("INSERT INTO job_events (job_id, tenant_id, state, at_ms, message) VALUES ($1, $2, $3, $4, $5)")
            .bind(job_id)
            .bind(tenant_id)
            .bind(to.as_str())
            .bind(now_ms)
            .bind(change.message.clone())
            .execute(&mut *conn)
            .await?;
        Ok(true)
    }

    fn event_of(r: &AnyRow) -> Result<JobEvent> {
        let state: String = r.try_get(3)?;
        Ok(JobEvent {
            id: r.try_get(0)?,
            job_id: r.try_get(1)?,
            tenant_id: r.try_get(2)?,
            state: state.parse()?,
            at_ms: r.try_get(4)?,
            message: r.try_get(5)?,
        })
    }

    /// A job's state history, oldest first.
    pub async fn history(&self, job_id: i64) -> Result<Vec<JobEvent>> {
        let rows = sqlx::query(
            "SELECT id, job_id, tenant_id, state, at_ms, message FROM job_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_of).collect()
    }

    /// The id of a tenant's latest event, 0 if none.
    pub async fn last_event_id(&self, tenant_id: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM job_events WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// A tenant's events after `after_id`, oldest first, at most `limit`.
    pub async fn events_after(&self, tenant_id: i64, after_id: i64, limit: i64) -> Result<Vec<JobEvent>> {
        let rows = sqlx::query(
            "SELECT id, job_id, tenant_id, state, at_ms, message FROM job_events \
             WHERE tenant_id = $1 AND id > $2 ORDER BY id LIMIT $3",
        )
        .bind(tenant_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(Self::event_of).collect()
    }

    /// Records a join token (by its hash).
    pub async fn add_join_token(&self, token_hash: &str, now_ms: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, created_ms) VALUES ($1, $2) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Whether a join token (by its hash) was made by the admin.
    pub async fn join_token_exists(&self, token_hash: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM join_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    /// Records a node that joined, or replaces its credential, inventory and address when it
    /// joins again: the old credential stops working.
    pub async fn upsert_agent_node(&self, node: &AgentNode) -> Result<()> {
        sqlx::query(
            "INSERT INTO agent_nodes (name, token_hash, inventory_json, address, joined_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET token_hash = $2, inventory_json = $3, address = $4, joined_ms = $5",
        )
        .bind(&node.name)
        .bind(&node.token_hash)
        .bind(&node.inventory_json)
        .bind(&node.address)
        .bind(node.joined_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Every node that joined, by name.
    pub async fn agent_nodes(&self) -> Result<Vec<AgentNode>> {
        let rows =
            sqlx::query("SELECT name, token_hash, inventory_json, address, joined_ms FROM agent_nodes ORDER BY name")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentNode {
                    name: r.try_get(0)?,
                    token_hash: r.try_get(1)?,
                    inventory_json: r.try_get(2)?,
                    address: r.try_get(3)?,
                    joined_ms: r.try_get(4)?,
                })
            })
            .collect()
    }
}
