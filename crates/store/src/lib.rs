//! drome's store: tenants, jobs and their state history, in embedded SQLite (one file, WAL) or
//! PostgreSQL. This is the only crate that speaks SQL.
//!
//! Queries are plain runtime SQL over [`sqlx::AnyPool`], written once in the subset both dialects
//! share (`$1` parameters, `RETURNING`, `ON CONFLICT`); only the migrations differ per dialect.
//! Every state change of a job is a conditional update (`WHERE state IN (...)`) committed together
//! with its history row, so the scheduler loop can repeat any step after a crash without doing it
//! twice.
//!
//! Every acknowledged write is durable (SQLite syncs its log on every commit). To take many
//! submissions per second anyway, [`Store::insert_job`] hands its job to one writer task that
//! stores whatever submissions are waiting in one transaction: they share one commit, one sync.
//! Reads go to a pool of their own, so on SQLite, where only one connection writes at a time, they
//! never queue behind a burst of writes.

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyConnection, AnyPool, Row};
use std::borrow::Cow;
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod federation;
mod notice;
pub mod testing;
mod usage;

pub use federation::{FED_FORWARDING, FED_LOST, FedInserted, FedJob, FedLeft, FedMove, FedStateUpdate, NewFedJob};
use notice::WriteKind;
pub use notice::{Listener, Notice};
pub use usage::{JobRun, RunEnergy};

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
    /// The store was closed ([`Store::close`]) before the call could be done.
    #[error("the store is closed")]
    Closed,
    #[error("{0}")]
    Unsupported(&'static str),
    /// A write of a leader ([`Store::fenced`]) after another replica took the lease over.
    #[error("fenced: this replica led in epoch {epoch}, the lease is now at epoch {current:?}; it may no longer write")]
    Fenced { epoch: i64, current: Option<i64> },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Which database a [`Store`] runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A job's lifecycle state, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum JobState {
    /// Queued for GPUs.
    Pending,
    /// Placed on GPUs that a stopped run still holds until its node confirms it gone; handed
    /// to the agents then.
    Scheduled,
    /// Handed to its nodes' agents under its generation: they start it and report its end.
    /// Stored and shown as `running`, the API's word (and Slurm's and Kubernetes' users'):
    /// whether its process runs yet is the agents' report, not the store's.
    Assigned,
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Scheduled,
        JobState::Assigned,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Preempted,
    ];
    /// States that hold or wait for GPUs.
    pub const ACTIVE: [JobState; 3] = [JobState::Pending, JobState::Scheduled, JobState::Assigned];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Scheduled => "scheduled",
            JobState::Assigned => "running",
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
    pub quota: TenantQuota,
    pub created_ms: i64,
    /// When its token stops working (`None`: it does not expire).
    pub token_expires_ms: Option<i64>,
    /// When the admin removed it (its token then works no more).
    pub removed_ms: Option<i64>,
}

/// One admin action, as the audit log keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// Who did it (`admin`).
    pub actor: String,
    /// What was done (`tenant.create`, `quota.set`, `node.drain`, ...).
    pub action: String,
    /// On what (a tenant's or node's name, a site, a join token's id).
    pub target: String,
    /// The values set, as JSON.
    pub detail: String,
}

/// What a tenant may hold at once over all its placed and queued jobs (`None` is unlimited),
/// and the highest priority its jobs may ask for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantQuota {
    pub gpus: Option<i64>,
    /// Thousandths of a CPU.
    pub cpu_milli: Option<i64>,
    pub memory_mib: Option<i64>,
    /// Priority orders every tenant's jobs: 0 by default, so a tenant may only put its own
    /// jobs behind others.
    pub max_priority: i64,
}

/// What a tenant's active jobs hold and ask for ([`Store::tenant_usage`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    pub gpus_used: u64,
    pub gpus_pending: u64,
    pub cpu_milli_used: u64,
    pub cpu_milli_pending: u64,
    pub memory_mib_used: u64,
    pub memory_mib_pending: u64,
}

/// What a submission asks for, as the store keeps it. Lists and maps arrive already encoded as
/// JSON text: the store does not look inside them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
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
    /// CPU time held on each node, thousandths of a CPU (0: not limited).
    pub cpu_milli: i64,
    /// Memory held on each node, MiB (0: not limited).
    pub memory_mib: i64,
    /// The OCI image the command runs in (`None`: on the node's own system).
    pub image: Option<String>,
    pub gpu_model: Option<String>,
    pub priority: i64,
    pub deferrable: bool,
    /// Sent by a federation endpoint: it starts only while the site holds a federation lease.
    pub federated: bool,
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
    /// Times the job has been started: the generation of its current (or last) run. Each start
    /// makes a new one, and a run of any other generation is stale (fenced).
    pub generation: i64,
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
    /// Set `started_ms` to the change's time and make a new generation.
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
    /// The credential the node held before the last rotation, good until it uses the new one.
    pub previous_token_hash: Option<String>,
    /// Container runtimes its agent found (`podman`).
    pub runtimes: Vec<String>,
}

/// Filter for [`Store::jobs`].
/// The leader's lease, as stored: who holds it, in which epoch, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub holder: String,
    /// One more at every takeover: the fencing token of the leader's writes.
    pub epoch: i64,
    pub acquired_ms: i64,
    pub renewed_ms: i64,
    pub expires_ms: i64,
    /// Where the holder serves its API (`http://host:port`), if it said.
    pub address: Option<String>,
}

/// A join token's limits, as the admin set them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenLimits {
    /// Joins it allows; `None`: any number.
    pub uses: Option<i64>,
    /// When it stops working, Unix milliseconds; `None`: never.
    pub expires_ms: Option<i64>,
    /// The only node it may join; `None`: any node of the fleet.
    pub node: Option<String>,
}

/// A join token as stored (never the token itself: its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinTokenRecord {
    pub token_hash: String,
    pub created_ms: i64,
    pub uses_left: Option<i64>,
    pub expires_ms: Option<i64>,
    pub node: Option<String>,
    pub revoked_ms: Option<i64>,
}

/// Why a join token does not let a node join.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinTokenRefusal {
    #[error("unknown join token")]
    Unknown,
    #[error("the join token was revoked")]
    Revoked,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token has been used as many times as it allows")]
    UsedUp,
    #[error("the join token is for node '{0}' only")]
    OtherNode(String),
}

/// A server of the control plane as it last recorded itself ([`Store::record_replica`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub name: String,
    /// Where it serves its API.
    pub address: String,
    pub started_ms: i64,
    /// When it last recorded itself.
    pub seen_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobFilter {
    pub state: Option<JobState>,
    /// Only jobs with an id below this one (paging newest first).
    pub before_id: Option<i64>,
    pub limit: i64,
}

const TENANT_COLUMNS: &str =
    "id, name, gpu_quota, created_ms, cpu_milli_quota, memory_mib_quota, token_expires_ms, removed_ms, max_priority";

pub(crate) const JOB_COLUMNS: &str = "id, tenant_id, name, command, args_json, env_json, gpus_per_node, nodes, gpu_model, \
     priority, is_deferrable, max_runtime_s, restart_policy, max_restarts, idempotency_key, request_hash, state, \
     generation, placement_json, exit_code, message, submitted_ms, started_ms, finished_ms, gpu_milli, cpu_milli, memory_mib, image, \
     federated";

/// The store's migrations in order: (version, description, file name). Both engines have a
/// file of that name, each in its own dialect.
macro_rules! migrations {
    ($(($version:expr, $description:expr, $file:expr)),* $(,)?) => {
        fn migrator(backend: Backend) -> Migrator {
            let migrations = vec![$(
                Migration::new(
                    $version,
                    Cow::Borrowed($description),
                    MigrationType::Simple,
                    Cow::Borrowed(match backend {
                        Backend::Sqlite => include_str!(concat!("../migrations/sqlite/", $file)),
                        Backend::Postgres => include_str!(concat!("../migrations/postgres/", $file)),
                    }),
                    false,
                ),
            )*];
            Migrator { migrations: Cow::Owned(migrations), ..Migrator::DEFAULT }
        }
    };
}

migrations![
    (1, "init", "0001_init.sql"),
    (2, "agents", "0002_agents.sql"),
    (3, "gpu share", "0003_gpu_share.sql"),
    (4, "tenant usage", "0004_tenant_usage.sql"),
    (5, "generation", "0005_generation.sql"),
    (6, "leader lease", "0006_leader_lease.sql"),
    (7, "leader address", "0007_leader_address.sql"),
    (8, "replicas", "0008_replicas.sql"),
    (9, "join token limits", "0009_join_token_limits.sql"),
    (10, "job resources", "0010_job_resources.sql"),
    (11, "tenant cpu and memory quota", "0011_tenant_cpu_memory_quota.sql"),
    (12, "job image", "0012_job_image.sql"),
    (13, "tokens and audit", "0013_tokens_audit.sql"),
    (14, "tenant max priority", "0014_tenant_max_priority.sql"),
    (15, "federated jobs", "0015_federated.sql"),
    (16, "federation", "0016_federation.sql"),
    (17, "job runs", "0017_job_runs.sql"),
];

/// How long a call waits for a free connection before it fails.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections to PostgreSQL, shared by reads and writes.
const POSTGRES_CONNECTIONS: u32 = 16;
/// How long PostgreSQL lets a session sit idle inside a transaction before it ends it, in
/// milliseconds: the store's transactions last milliseconds, so only a stopped process waits
/// that long, and a takeover waits at most this long for its locks.
const IDLE_IN_TRANSACTION_MS: u64 = 3_000;
/// Read connections to SQLite beside its one writer: WAL lets each read a committed snapshot
/// while the writer writes.
const SQLITE_READERS: u32 = 4;
/// Submissions one transaction of the submission writer takes at most. One commit (one sync) pays
/// for all of them; a cap keeps a transaction, and the wait of its first caller, short.
const MAX_BATCH_JOBS: usize = 512;
/// Submissions that may wait for the writer; beyond that, callers wait to hand theirs over.
const SUBMISSION_QUEUE: usize = 4 * MAX_BATCH_JOBS;
/// Rows one multi-row insert takes at most, a power of two (see [`in_statements`]). On
/// PostgreSQL each statement is a round trip: the more rows the better, and 17 parameters a job
/// stay far below its 65,535. On SQLite a statement costs no round trip, but binding parameter
/// `$n` looks its name up from the first one, so a statement's binding grows with the square of
/// its parameters: a few hundred keep it negligible.
fn max_rows_per_insert(backend: Backend) -> usize {
    match backend {
        Backend::Sqlite => 16,
        Backend::Postgres => 512,
    }
}
/// Rows one lookup of earlier submissions by key takes at most: each row is a term of an `OR`,
/// and SQLite caps an expression's depth at 1,000.
const MAX_KEYS_PER_LOOKUP: usize = 64;

/// The store over one database. Cheap to clone: every clone shares the pools and the submission
/// writer. Must be made (by [`Store::connect`]) inside a Tokio runtime, where its writer runs.
#[derive(Clone, Debug)]
pub struct Store {
    /// Every write and every transaction. On SQLite one connection: SQLite takes one writer at a
    /// time anyway, and a single connection never meets a busy snapshot inside a transaction.
    writer: AnyPool,
    /// Reads outside transactions. On SQLite read-only connections of their own, so reads do not
    /// wait for the writer; a read sees every commit made before it began. On PostgreSQL the
    /// writer's pool.
    reader: AnyPool,
    backend: Backend,
    /// Hands submissions to the submission writer ([`write_submissions`]).
    submissions: mpsc::Sender<Submission>,
    /// The leader's epoch the scheduler's writes are fenced by ([`Store::fenced`]).
    fence: Option<i64>,
    /// Writes tell the leader of themselves ([`Store::announcing`]).
    announce: bool,
    /// The PostgreSQL address, for [`Store::listen`]'s connection of its own.
    url: Option<std::sync::Arc<str>>,
    /// The SQLite database file, whose disk [`Store::disk`] looks at.
    sqlite_path: Option<std::sync::Arc<std::path::Path>>,
    /// The admin action this store's writes carry out, recorded in their transaction
    /// ([`Store::audited`]).
    audit: Option<std::sync::Arc<AuditRecord>>,
}

/// An admin action for the audit log, written in the transaction of the write that does it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub actor: String,
    pub action: String,
    pub target: String,
    /// JSON.
    pub detail: String,
    pub at_ms: i64,
}

/// The disk an embedded store writes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskSpace {
    /// Bytes free for the store's process.
    pub free_bytes: u64,
    pub read_only: bool,
}

impl StoreError {
    /// Whether the database could not write for want of disk: full, or read-only.
    pub fn is_disk_full(&self) -> bool {
        let StoreError::Db(e) = self else { return false };
        match e {
            // SQLITE_FULL (13), SQLITE_READONLY (8), SQLITE_IOERR (10): their extended codes
            // keep the primary one in the low byte. PostgreSQL: disk_full (53100).
            sqlx::Error::Database(db) => {
                let code = db.code().unwrap_or_default();
                let primary = code.parse::<i64>().map(|c| c & 0xff).unwrap_or(-1);
                matches!(primary, 8 | 10 | 13) || code == "53100"
            }
            sqlx::Error::Io(io) => io.raw_os_error() == Some(28) || io.raw_os_error() == Some(30),
            _ => false,
        }
    }
}

/// What the submission writer is asked to do.
// Nearly every message is an insert: boxing it would cost an allocation each for nothing.
#[allow(clippy::large_enum_variant)]
enum Submission {
    Insert(PendingInsert),
    /// A node's join ([`Store::join_agent_node`], [`Store::upsert_agent_node`]): joins arriving
    /// together share a commit too.
    Node(NodeJoin),
    /// Stop: answer what was handed over before, fail what comes after, then say so.
    Close(oneshot::Sender<()>),
}

/// One caller's [`Store::insert_job`], waiting for its batch to commit.
struct PendingInsert {
    job: NewJob,
    now_ms: i64,
    /// The leader's epoch the submitting server writes under, if fenced.
    fence: Option<i64>,
    /// The job is announced to the leader ([`Store::announcing`]).
    announce: bool,
    reply: oneshot::Sender<Result<Inserted>>,
}

impl Store {
    /// Connects to `url` (`sqlite://PATH` or `postgres://...`), creating the SQLite file and its
    /// directory if needed, runs the migrations and starts the submission writer.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let mut pg_url = None;
        let mut sqlite_path = None;
        let (backend, writer, reader) = if let Some(path) = url.strip_prefix("sqlite://") {
            let path = path.split('?').next().unwrap_or(path);
            if path.is_empty() {
                return Err(StoreError::BadUrl(url.to_string()));
            }
            if let Some(dir) = std::path::Path::new(path).parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|source| StoreError::DataDir { path: dir.display().to_string(), source })?;
            }
            let writer = sqlite_pool(&format!("sqlite://{path}?mode=rwc"), 1, SqliteRole::Writer).await?;
            migrator(Backend::Sqlite).run(&writer).await?;
            // Only now: a read-only connection can neither create the file nor switch it to WAL.
            let reader = sqlite_pool(&format!("sqlite://{path}?mode=ro"), SQLITE_READERS, SqliteRole::Reader).await?;
            sqlite_path = Some(std::sync::Arc::from(std::path::Path::new(path)));
            (Backend::Sqlite, writer, reader)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = AnyPoolOptions::new()
                .max_connections(POSTGRES_CONNECTIONS)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // A server stopped (SIGSTOP, a frozen VM) inside a transaction would
                        // hold its locks, the lease row's among them, and so hold off the
                        // replica taking over: PostgreSQL ends such a session after a while.
                        let timeout = format!("SET idle_in_transaction_session_timeout = {IDLE_IN_TRANSACTION_MS}");
                        sqlx::query(&timeout).execute(conn).await?;
                        Ok(())
                    })
                })
                .connect(url)
                .await?;
            migrator(Backend::Postgres).run(&pool).await?;
            pg_url = Some(std::sync::Arc::from(url));
            (Backend::Postgres, pool.clone(), pool)
        } else {
            return Err(StoreError::BadUrl(url.to_string()));
        };
        let (submissions, queue) = mpsc::channel(SUBMISSION_QUEUE);
        tokio::spawn(write_submissions(writer.clone(), backend, queue));
        tracing::debug!(backend = ?backend, "store ready");
        Ok(Store {
            writer,
            reader,
            backend,
            submissions,
            fence: None,
            announce: false,
            url: pg_url,
            sqlite_path,
            audit: None,
        })
    }

    /// Writes a consistent copy of an embedded store to `to` (a new file) while it serves:
    /// SQLite's `VACUUM INTO`, one read transaction. PostgreSQL has its own tools (`pg_dump`).
    pub async fn backup_to(&self, to: &std::path::Path) -> Result<()> {
        if self.backend != Backend::Sqlite {
            return Err(StoreError::Unsupported(
                "a PostgreSQL store is backed up with PostgreSQL's tools: pg_dump (or pg_basebackup with WAL archiving)",
            ));
        }
        sqlx::query("VACUUM INTO $1").bind(to.display().to_string()).execute(&self.reader).await?;
        Ok(())
    }

    /// The space left on an embedded store's disk (`None` on PostgreSQL, whose disk is its
    /// server's). Blocks briefly (one `statvfs`).
    pub fn disk(&self) -> Option<DiskSpace> {
        let path = self.sqlite_path.as_deref()?;
        let at = if path.exists() { path } else { path.parent().unwrap_or(path) };
        let stat = nix::sys::statvfs::statvfs(at).ok()?;
        Some(DiskSpace {
            free_bytes: stat.blocks_available().saturating_mul(stat.fragment_size()),
            read_only: stat.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stops the submission writer, then closes the pools, waiting for connections in use.
    /// Submissions handed over before are committed and answered first; later ones, and every
    /// call after, fail with [`StoreError::Closed`].
    pub async fn close(&self) {
        let (done, stopped) = oneshot::channel();
        // A send that fails finds the writer gone already (an earlier close).
        if self.submissions.send(Submission::Close(done)).await.is_ok() {
            let _ = stopped.await;
        }
        self.reader.close().await;
        self.writer.close().await;
    }

    /// Checks that the database answers. On a read connection: a health check must not wait
    /// for a burst of writes to pass.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub async fn setting(&self, key: &str) -> Result<Option<String>> {
        let row =
            sqlx::query("SELECT value FROM settings WHERE key = $1").bind(key).fetch_optional(&self.reader).await?;
        Ok(row.map(|r| r.try_get::<String, _>(0)).transpose()?)
    }

    /// Every setting whose key starts with `prefix`, by key.
    pub async fn settings_with_prefix(&self, prefix: &str) -> Result<Vec<(String, String)>> {
        let pattern = format!("{}%", prefix.replace(['%', '_', '\\'], ""));
        let rows = sqlx::query("SELECT key, value FROM settings WHERE key LIKE $1 ORDER BY key")
            .bind(pattern)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// Removes a setting; whether there was one.
    pub async fn delete_setting(&self, key: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM settings WHERE key = $1").bind(key).execute(&mut *tx).await?;
        self.commit_admin(tx, done.rows_affected() > 0).await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn set_setting(&self, key: &str, value: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = $2")
            .bind(key)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        self.commit_admin(tx, true).await?;
        Ok(())
    }

    /// A write transaction, fenced by the leader's epoch where this store is ([`Store::fenced`]).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        let mut tx = self.writer.begin().await?;
        self.check_fence(&mut tx).await?;
        Ok(tx)
    }

    /// Creates a tenant; its name must be new.
    pub async fn create_tenant(&self, name: &str, token_hash: &str, quota: TenantQuota, now_ms: i64) -> Result<Tenant> {
        let mut tx = self.write().await?;
        let row = sqlx::query(
            "INSERT INTO tenants (name, token_hash, gpu_quota, cpu_milli_quota, memory_mib_quota, created_ms, \
             max_priority) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING RETURNING id",
        )
        .bind(name)
        .bind(token_hash)
        .bind(quota.gpus)
        .bind(quota.cpu_milli)
        .bind(quota.memory_mib)
        .bind(now_ms)
        .bind(quota.max_priority)
        .fetch_optional(&mut *tx)
        .await?;
        self.commit_admin(tx, row.is_some()).await?;
        match row {
            Some(r) => Ok(Tenant {
                id: r.try_get(0)?,
                name: name.to_string(),
                quota,
                created_ms: now_ms,
                token_expires_ms: None,
                removed_ms: None,
            }),
            None => Err(StoreError::Conflict { what: "tenant", name: name.to_string() }),
        }
    }

    fn tenant_of(r: &AnyRow) -> Result<Tenant> {
        Ok(Tenant {
            id: r.try_get(0)?,
            name: r.try_get(1)?,
            quota: TenantQuota {
                gpus: r.try_get(2)?,
                cpu_milli: r.try_get(4)?,
                memory_mib: r.try_get(5)?,
                max_priority: r.try_get(8)?,
            },
            created_ms: r.try_get(3)?,
            token_expires_ms: r.try_get(6)?,
            removed_ms: r.try_get(7)?,
        })
    }

    pub async fn tenant_by_token_hash(&self, token_hash: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE token_hash = $1"))
            .bind(token_hash)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<Tenant>> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenant(&self, id: i64) -> Result<Option<Tenant>> {
        let row = sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(Self::tenant_of).transpose()
    }

    pub async fn tenants(&self) -> Result<Vec<Tenant>> {
        let rows =
            sqlx::query(&format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY id")).fetch_all(&self.reader).await?;
        rows.iter().map(Self::tenant_of).collect()
    }

    /// Sets a tenant's quota; `None` if there is no such tenant.
    pub async fn set_quota(&self, id: i64, quota: TenantQuota) -> Result<Option<Tenant>> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE tenants SET gpu_quota = $1, cpu_milli_quota = $2, memory_mib_quota = $3, max_priority = $4 \
             WHERE id = $5",
        )
        .bind(quota.gpus)
        .bind(quota.cpu_milli)
        .bind(quota.memory_mib)
        .bind(quota.max_priority)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if self.announce {
            announce_in(&mut tx, self.backend, WriteKind::QuotaSet, &[id]).await?;
        }
        self.commit_admin(tx, done.rows_affected() == 1).await?;
        self.tenant(id).await
    }

    /// Replaces a tenant's token (by its hash); false if there is no such tenant.
    pub async fn set_token_hash(&self, id: i64, token_hash: &str) -> Result<bool> {
        self.set_token(id, token_hash, None).await
    }

    /// Gives a tenant a new token (by its hash), expiring at `expires_ms` (`None`: never); the
    /// old one stops working. False if there is no such tenant, or it was removed.
    pub async fn set_token(&self, id: i64, token_hash: &str, expires_ms: Option<i64>) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE tenants SET token_hash = $1, token_expires_ms = $2 WHERE id = $3 AND removed_ms IS NULL",
        )
        .bind(token_hash)
        .bind(expires_ms)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            // Every replica forgets the tokens it holds for this tenant, at once.
            announce_in(&mut tx, self.backend, WriteKind::TokensChanged, &[id]).await?;
        }
        self.commit_admin(tx, done.rows_affected() == 1).await?;
        Ok(done.rows_affected() == 1)
    }

    /// Removes a tenant from service: its token stops working and it can make no other; its
    /// jobs' rows stay. Refused (false) while it has jobs pending, scheduled or running, or if
    /// there is no such tenant.
    pub async fn remove_tenant(&self, id: i64, unusable_hash: &str, now_ms: i64) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query(
            "UPDATE tenants SET removed_ms = $1, token_hash = $2, token_expires_ms = $1 \
             WHERE id = $3 AND removed_ms IS NULL AND NOT EXISTS (SELECT 1 FROM jobs WHERE tenant_id = $3 \
             AND state IN ('pending', 'scheduled', 'running', 'preempted', 'cancelled') AND finished_ms IS NULL)",
        )
        .bind(now_ms)
        .bind(unusable_hash)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            announce_in(&mut tx, self.backend, WriteKind::TokensChanged, &[id]).await?;
        }
        self.commit_admin(tx, done.rows_affected() == 1).await?;
        Ok(done.rows_affected() == 1)
    }

    /// The audit log, newest first: at most `limit` entries, older than `before_id` if given.
    pub async fn audit_log(&self, limit: i64, before_id: Option<i64>) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, action, target, detail FROM audit_log WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before_id.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    action: r.try_get(3)?,
                    target: r.try_get(4)?,
                    detail: r.try_get(5)?,
                })
            })
            .collect()
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
            cpu_milli: r.try_get(25)?,
            memory_mib: r.try_get(26)?,
            image: r.try_get(27)?,
            federated: r.try_get::<i64, _>(28)? != 0,
        };
        Ok(Job {
            id: r.try_get(0)?,
            spec,
            state: state.parse()?,
            generation: r.try_get(17)?,
            placement_json: r.try_get(18)?,
            exit_code: r.try_get(19)?,
            message: r.try_get(20)?,
            submitted_ms: r.try_get(21)?,
            started_ms: r.try_get(22)?,
            finished_ms: r.try_get(23)?,
        })
    }

    /// Stores a new pending job and its first history entry. With an idempotency key already
    /// used by the tenant, stores nothing and returns the earlier job (`created: false`).
    ///
    /// Committed before it returns, in one transaction with whatever other submissions reached
    /// the submission writer meanwhile (group commit): one sync pays for all of them. Should that
    /// transaction fail, each of them is tried again in a transaction of its own, so a bad
    /// submission fails alone.
    /// A submission handed over is stored even if the caller stops waiting for the answer.
    pub async fn insert_job(&self, job: &NewJob, now_ms: i64) -> Result<Inserted> {
        let (reply, answer) = oneshot::channel();
        let insert = PendingInsert { job: job.clone(), now_ms, fence: self.fence, announce: self.announce, reply };
        self.submissions.send(Submission::Insert(insert)).await.map_err(|_| StoreError::Closed)?;
        // No answer: the writer stopped (the store closed) before it took this submission.
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores `jobs` submitted at `now_ms` in one transaction, as [`Store::insert_job`] would one
    /// after the other: a key used twice, in the batch or before, stores one job, and the later
    /// submission gets it back (`created: false`). One answer per job, in order; if anything
    /// fails, nothing is stored.
    pub async fn insert_jobs(&self, jobs: &[NewJob], now_ms: i64) -> Result<Vec<Inserted>> {
        let jobs: Vec<(&NewJob, i64)> = jobs.iter().map(|j| (j, now_ms)).collect();
        insert_batch(&self.writer, self.backend, &jobs, &[self.fence], &vec![self.announce; jobs.len()]).await
    }

    /// A tenant's job; `None` if it does not exist or belongs to another tenant.
    pub async fn job(&self, tenant_id: i64, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2"))
            .bind(id)
            .bind(tenant_id)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(Self::job_of).transpose()
    }

    /// Any tenant's job, for the scheduler.
    pub async fn job_by_id(&self, id: i64) -> Result<Option<Job>> {
        let row = sqlx::query(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.reader)
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
            for r in q.fetch_all(&self.reader).await? {
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
        let rows = q.bind(filter.limit.max(0)).fetch_all(&self.reader).await?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Jobs that finished (succeeded, failed or cancelled) in `[since_ms, until_ms)`, one
    /// tenant's or everyone's, by end then id, at most `limit`; of those that finished at
    /// `since_ms`, only the ones with an id above `after_id` (paging).
    pub async fn finished_jobs(
        &self,
        tenant_id: Option<i64>,
        since_ms: i64,
        until_ms: i64,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<Job>> {
        let by_tenant = if tenant_id.is_some() { " AND tenant_id = $5" } else { "" };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE finished_ms >= $1 AND finished_ms < $2 \
             AND (finished_ms > $1 OR id > $3){by_tenant} ORDER BY finished_ms, id LIMIT $4"
        );
        let mut q = sqlx::query(&sql).bind(since_ms).bind(until_ms).bind(after_id).bind(limit.max(0));
        if let Some(t) = tenant_id {
            q = q.bind(t);
        }
        let rows = q.fetch_all(&self.reader).await?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Every tenant's pending, scheduled, running and preempted (being stopped) jobs, and the
    /// cancelled ones whose run is not yet known to be gone (no `finished_ms`), oldest first:
    /// what the scheduler rebuilds its state from.
    pub async fn active_jobs(&self) -> Result<Vec<Job>> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('pending', 'scheduled', 'running', 'preempted') \
             OR (state = 'cancelled' AND finished_ms IS NULL) ORDER BY id"
        ))
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(Self::job_of).collect()
    }

    /// Cancelled jobs whose runs are now gone get their `finished_ms` (one transaction); a job
    /// that has one already keeps it.
    pub async fn finish_cancelled(&self, ids: &[i64], now_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await?;
        self.check_fence(&mut tx).await?;
        for id in ids {
            sqlx::query(
                "UPDATE jobs SET finished_ms = $1 WHERE id = $2 AND state = 'cancelled' AND finished_ms IS NULL",
            )
            .bind(now_ms)
            .bind(*id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// This store, its writes fenced by the leader's `epoch`: each checks, in its own
    /// transaction, that the lease is still at `epoch`, and fails with [`StoreError::Fenced`]
    /// once another replica took it over. On PostgreSQL the check holds the lease row `FOR KEY
    /// SHARE` until the commit: a takeover (`FOR UPDATE`) waits for a write already under way and
    /// never misses it, while the holder's renewals (plain updates) are not held up by its writes.
    pub fn fenced(&self, epoch: i64) -> Store {
        Store { fence: Some(epoch), ..self.clone() }
    }

    /// The epoch this store's writes are fenced by, if any.
    pub fn fence(&self) -> Option<i64> {
        self.fence
    }

    /// This store, its writes announced to the leader in their own transactions (on
    /// PostgreSQL): the jobs it stores and cancels, the quotas it sets. For a replica that
    /// serves the API without leading.
    pub fn announcing(&self) -> Store {
        Store { announce: true, ..self.clone() }
    }

    /// This store, its admin writes recording `record` in the audit log in their own
    /// transaction, when they change something: the log holds an action if and only if it was
    /// done. Meant for one write (the one that completes the action).
    pub fn audited(&self, record: AuditRecord) -> Store {
        Store { audit: Some(std::sync::Arc::new(record)), ..self.clone() }
    }

    /// Commits an admin write, with its audit record when it `changed` something.
    async fn commit_admin(&self, mut tx: sqlx::Transaction<'static, sqlx::Any>, changed: bool) -> Result<()> {
        if let Some(a) = self.audit.as_deref().filter(|_| changed) {
            sqlx::query("INSERT INTO audit_log (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5)")
                .bind(a.at_ms)
                .bind(&a.actor)
                .bind(&a.action)
                .bind(&a.target)
                .bind(&a.detail)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Receives the replicas' notices on a connection of its own; `None` on SQLite, where one
    /// server runs.
    pub async fn listen(&self) -> Result<Option<Listener>> {
        match &self.url {
            Some(url) if self.backend == Backend::Postgres => Ok(Some(Listener::connect(url).await?)),
            _ => Ok(None),
        }
    }

    /// Tells every replica's event streams that jobs changed (the leader, after it recorded
    /// changes). Nothing on SQLite.
    pub async fn announce_jobs_changed(&self) -> Result<()> {
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, '')) AS n")
                .bind(notice::EVENTS_CHANNEL)
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }

    async fn check_fence(&self, conn: &mut sqlx::AnyConnection) -> Result<()> {
        match self.fence {
            Some(epoch) => check_fence_in(conn, self.backend, epoch).await,
            None => Ok(()),
        }
    }

    /// Takes the leader's lease for `holder` until `now_ms + lease_ms`, if nobody holds it or
    /// its lease expired before `now_ms`: a new epoch, one past the last. `None` while another
    /// lease runs. Clocks of replicas should agree within a fraction of the lease: a fast one
    /// takes over early, which costs the old leader its writes (they are fenced), never safety.
    pub async fn acquire_lease(
        &self,
        holder: &str,
        address: Option<&str>,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Lease>> {
        let mut tx = self.writer.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO leader_lease (id, holder, epoch, acquired_ms, renewed_ms, expires_ms, address) \
             VALUES (1, $1, 1, $2, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
        )
        .bind(holder)
        .bind(now_ms)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(address)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            // Waits for the writes under way in the old epoch (they hold the row FOR KEY SHARE).
            if self.backend == Backend::Postgres {
                sqlx::query("SELECT epoch FROM leader_lease WHERE id = 1 FOR UPDATE").execute(&mut *tx).await?;
            }
            let taken = sqlx::query(
                "UPDATE leader_lease SET holder = $1, epoch = epoch + 1, acquired_ms = $2, renewed_ms = $2, \
                 expires_ms = $3, address = $4 WHERE id = 1 AND expires_ms < $2",
            )
            .bind(holder)
            .bind(now_ms)
            .bind(now_ms.saturating_add(lease_ms))
            .bind(address)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if taken == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        let lease = Self::lease_in(&mut tx).await?;
        tx.commit().await?;
        Ok(lease)
    }

    /// Takes the lease for `holder` whoever holds it, with a new epoch: for a store only one
    /// server uses (SQLite), where an earlier holder can only be a server that died holding it.
    pub async fn take_lease(&self, holder: &str, address: Option<&str>, now_ms: i64, lease_ms: i64) -> Result<Lease> {
        let mut tx = self.writer.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT epoch FROM leader_lease WHERE id = 1 FOR UPDATE").execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO leader_lease (id, holder, epoch, acquired_ms, renewed_ms, expires_ms, address) \
             VALUES (1, $1, 1, $2, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET holder = $1, epoch = leader_lease.epoch + 1, acquired_ms = $2, \
             renewed_ms = $2, expires_ms = $3, address = $4",
        )
        .bind(holder)
        .bind(now_ms)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(address)
        .execute(&mut *tx)
        .await?;
        let lease = Self::lease_in(&mut tx).await?;
        tx.commit().await?;
        lease.ok_or_else(|| StoreError::Corrupt("the lease row is missing after it was written".into()))
    }

    /// Extends `holder`'s lease of `epoch` to `now_ms + lease_ms`. False once another replica
    /// took the lease over: the caller has stopped leading.
    pub async fn renew_lease(&self, holder: &str, epoch: i64, now_ms: i64, lease_ms: i64) -> Result<bool> {
        let renewed = sqlx::query(
            "UPDATE leader_lease SET renewed_ms = $1, expires_ms = $2 WHERE id = 1 AND epoch = $3 AND holder = $4",
        )
        .bind(now_ms)
        .bind(now_ms.saturating_add(lease_ms))
        .bind(epoch)
        .bind(holder)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(renewed == 1)
    }

    /// Gives the lease up (a leader that stops cleanly): another replica may take it at once.
    pub async fn release_lease(&self, holder: &str, epoch: i64) -> Result<bool> {
        let released =
            sqlx::query("UPDATE leader_lease SET expires_ms = 0 WHERE id = 1 AND epoch = $1 AND holder = $2")
                .bind(epoch)
                .bind(holder)
                .execute(&self.writer)
                .await?
                .rows_affected();
        Ok(released == 1)
    }

    /// Records that the server `name` runs and serves at `address` (a replica's presence, not
    /// a leader's write: never fenced), and forgets servers not seen since `forget_before_ms`.
    pub async fn record_replica(
        &self,
        name: &str,
        address: &str,
        started_ms: i64,
        now_ms: i64,
        forget_before_ms: i64,
    ) -> Result<()> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO replicas (name, address, started_ms, seen_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET address = $2, seen_ms = $4",
        )
        .bind(name)
        .bind(address)
        .bind(started_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE seen_ms < $1").bind(forget_before_ms).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The servers seen since `seen_after_ms`, by name.
    pub async fn replicas(&self, seen_after_ms: i64) -> Result<Vec<Replica>> {
        let rows =
            sqlx::query("SELECT name, address, started_ms, seen_ms FROM replicas WHERE seen_ms >= $1 ORDER BY name")
                .bind(seen_after_ms)
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(Replica {
                    name: r.try_get(0)?,
                    address: r.try_get(1)?,
                    started_ms: r.try_get(2)?,
                    seen_ms: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The lease as stored, if anybody ever held it.
    pub async fn lease(&self) -> Result<Option<Lease>> {
        let mut conn = self.reader.acquire().await?;
        Self::lease_in(&mut conn).await
    }

    async fn lease_in(conn: &mut sqlx::AnyConnection) -> Result<Option<Lease>> {
        let row = sqlx::query(
            "SELECT holder, epoch, acquired_ms, renewed_ms, expires_ms, address FROM leader_lease WHERE id = 1",
        )
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| {
            Ok(Lease {
                holder: r.try_get(0)?,
                epoch: r.try_get(1)?,
                acquired_ms: r.try_get(2)?,
                renewed_ms: r.try_get(3)?,
                expires_ms: r.try_get(4)?,
                address: r.try_get(5)?,
            })
        })
        .transpose()
    }

    /// Number of jobs per state, all tenants.
    pub async fn state_counts(&self) -> Result<Vec<(JobState, i64)>> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetch_all(&self.reader).await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get(0)?;
                Ok((s.parse()?, r.try_get::<i64, _>(1)?))
            })
            .collect()
    }

    /// What a tenant's active jobs hold (scheduled and running) and ask for (pending), over all
    /// their nodes.
    pub async fn tenant_usage(&self, tenant_id: i64) -> Result<TenantUsage> {
        // SUM of BIGINT is NUMERIC on PostgreSQL, which the Any driver does not decode: cast back.
        let row = sqlx::query(
            "SELECT \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN 0 ELSE gpus END) AS BIGINT), 0), \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN gpus ELSE 0 END) AS BIGINT), 0), \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN 0 ELSE cpu_milli END) AS BIGINT), 0), \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN cpu_milli ELSE 0 END) AS BIGINT), 0), \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN 0 ELSE memory_mib END) AS BIGINT), 0), \
               COALESCE(CAST(SUM(CASE WHEN state = 'pending' THEN memory_mib ELSE 0 END) AS BIGINT), 0) \
             FROM (SELECT state, \
                          (CASE WHEN gpus_per_node > 0 THEN gpus_per_node ELSE 0 END) * n AS gpus, \
                          (CASE WHEN cpu_milli > 0 THEN cpu_milli ELSE 0 END) * n AS cpu_milli, \
                          (CASE WHEN memory_mib > 0 THEN memory_mib ELSE 0 END) * n AS memory_mib \
                   FROM (SELECT state, gpus_per_node, cpu_milli, memory_mib, \
                                CASE WHEN nodes > 1 THEN nodes ELSE 1 END AS n \
                         FROM jobs WHERE tenant_id = $1 AND state IN ('pending', 'scheduled', 'running')) AS j \
                  ) AS active",
        )
        .bind(tenant_id)
        .fetch_one(&self.reader)
        .await?;
        let amount = |at: usize| -> Result<u64> {
            let n: i64 = row.try_get(at)?;
            u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("tenant {tenant_id} holds {n} of something")))
        };
        Ok(TenantUsage {
            gpus_used: amount(0)?,
            gpus_pending: amount(1)?,
            cpu_milli_used: amount(2)?,
            cpu_milli_pending: amount(3)?,
            memory_mib_used: amount(4)?,
            memory_mib_pending: amount(5)?,
        })
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
        let mut tx = self.writer.begin().await?;
        self.check_fence(&mut tx).await?;
        let mut applied = Vec::with_capacity(steps.len());
        for step in steps {
            applied.push(Self::transition_in(&mut tx, step, now_ms).await?);
        }
        if self.announce {
            let cancelled: Vec<i64> = steps
                .iter()
                .zip(&applied)
                .filter(|(s, ok)| **ok && s.to == JobState::Cancelled)
                .map(|(s, _)| s.job_id)
                .collect();
            announce_in(&mut tx, self.backend, WriteKind::Cancelled, &cancelled).await?;
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
                sets.push("generation = generation + 1".into());
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
        if to != JobState::Assigned && from.contains(&JobState::Assigned) {
            // The run ends as the job leaves `running` (a job not running has none open).
            sqlx::query("UPDATE job_runs SET ended_ms = $1, end_state = $2 WHERE job_id = $3 AND ended_ms IS NULL")
                .bind(now_ms)
                .bind(to.as_str())
                .bind(job_id)
                .execute(&mut *conn)
                .await?;
        }
        if change.started && to == JobState::Assigned {
            sqlx::query(
                "INSERT INTO job_runs (job_id, generation, tenant_id, nodes, gpus_per_node, gpu_milli, cpu_milli, \
                 memory_mib, placement_json, started_ms) SELECT id, generation, tenant_id, nodes, gpus_per_node, \
                 gpu_milli, cpu_milli, memory_mib, placement_json, $1 FROM jobs WHERE id = $2",
            )
            .bind(now_ms)
            .bind(job_id)
            .execute(&mut *conn)
            .await?;
        }
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
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(Self::event_of).collect()
    }

    /// Forgets what is kept only for a while: the state changes of jobs that ended before
    /// `events_before_ms` (their rows stay, with their final state and times), and join tokens
    /// spent (used up, expired or revoked) before `tokens_before_ms`. Returns how many of each.
    pub async fn prune(&self, events_before_ms: i64, tokens_before_ms: i64, now_ms: i64) -> Result<(u64, u64)> {
        let mut tx = self.write().await?;
        let events = sqlx::query(
            "DELETE FROM job_events WHERE at_ms < $1 AND job_id IN \
             (SELECT id FROM jobs WHERE finished_ms IS NOT NULL AND finished_ms < $1 \
              AND state IN ('succeeded', 'failed', 'cancelled'))",
        )
        .bind(events_before_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let tokens = sqlx::query(
            "DELETE FROM join_tokens WHERE (revoked_ms IS NOT NULL AND revoked_ms < $1) \
             OR (expires_ms IS NOT NULL AND expires_ms < $1 AND expires_ms < $2) \
             OR (uses_left IS NOT NULL AND uses_left <= 0 AND created_ms < $1)",
        )
        .bind(tokens_before_ms)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((events, tokens))
    }

    /// Pending jobs per tenant (tenants with none are left out).
    pub async fn pending_by_tenant(&self) -> Result<HashMap<i64, u64>> {
        let rows = sqlx::query("SELECT tenant_id, COUNT(*) FROM jobs WHERE state = 'pending' GROUP BY tenant_id")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get(1)?;
                Ok((r.try_get(0)?, n.max(0).unsigned_abs()))
            })
            .collect()
    }

    /// The id of a tenant's latest event, 0 if none.
    pub async fn last_event_id(&self, tenant_id: i64) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(id), 0) FROM job_events WHERE tenant_id = $1")
            .bind(tenant_id)
            .fetch_one(&self.reader)
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
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(Self::event_of).collect()
    }

    /// Records a join token (by its hash) without limits: any number of joins, never expiring.
    pub async fn add_join_token(&self, token_hash: &str, now_ms: i64) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, created_ms) VALUES ($1, $2) ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(token_hash)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores a join token (by its hash) with limits.
    pub async fn create_join_token(&self, token_hash: &str, now_ms: i64, limits: &JoinTokenLimits) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO join_tokens (token_hash, created_ms, uses_left, expires_ms, node) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(token_hash)
        .bind(now_ms)
        .bind(limits.uses)
        .bind(limits.expires_ms)
        .bind(limits.node.as_deref())
        .execute(&mut *tx)
        .await?;
        self.commit_admin(tx, true).await?;
        Ok(())
    }

    /// Takes one join of the token (by its hash) for `node` at `now_ms`, if it still allows one:
    /// known, not revoked, not expired, uses left, and for this node. The check and the count
    /// are one transaction, so a single-use token admits one node however many try at once.
    pub async fn use_join_token(
        &self,
        token_hash: &str,
        node: &str,
        now_ms: i64,
    ) -> Result<std::result::Result<(), JoinTokenRefusal>> {
        let mut tx = self.write().await?;
        let used = take_join_token(&mut tx, self.backend, token_hash, node, now_ms).await?;
        if used.is_ok() {
            tx.commit().await?;
        }
        Ok(used)
    }

    /// Every join token, newest first.
    pub async fn join_tokens(&self) -> Result<Vec<JoinTokenRecord>> {
        let rows = sqlx::query(
            "SELECT token_hash, created_ms, uses_left, expires_ms, node, revoked_ms FROM join_tokens \
             ORDER BY created_ms DESC, token_hash",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(JoinTokenRecord {
                    token_hash: r.try_get(0)?,
                    created_ms: r.try_get(1)?,
                    uses_left: r.try_get(2)?,
                    expires_ms: r.try_get(3)?,
                    node: r.try_get(4)?,
                    revoked_ms: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Revokes the join tokens whose hash starts with `hash_prefix` (and are not revoked yet);
    /// how many.
    pub async fn revoke_join_tokens(&self, hash_prefix: &str, now_ms: i64) -> Result<u64> {
        let mut tx = self.write().await?;
        let pattern = format!("{}%", hash_prefix.replace(['%', '_', '\\'], ""));
        let done =
            sqlx::query("UPDATE join_tokens SET revoked_ms = $1 WHERE token_hash LIKE $2 AND revoked_ms IS NULL")
                .bind(now_ms)
                .bind(pattern)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        self.commit_admin(tx, done > 0).await?;
        Ok(done)
    }

    /// Records a node that joined, or replaces its credential, inventory and address when it
    /// joins again: the old credential stops working.
    pub async fn upsert_agent_node(&self, node: &AgentNode) -> Result<()> {
        // Without a token there is nothing to refuse: only the store's own errors come back.
        self.send_join(node, None).await.map(|_| ())
    }

    /// A node's join with the join token hashed `token_hash`: the token's use
    /// ([`Store::use_join_token`]) and the node's record ([`Store::upsert_agent_node`]) in one
    /// transaction, shared with the joins that arrive meanwhile (one commit for a fleet joining
    /// at once, not two a node). A refused token stores nothing.
    pub async fn join_agent_node(
        &self,
        token_hash: &str,
        node: &AgentNode,
        now_ms: i64,
    ) -> Result<std::result::Result<(), JoinTokenRefusal>> {
        self.send_join(node, Some((token_hash.to_string(), now_ms))).await
    }

    async fn send_join(
        &self,
        node: &AgentNode,
        token: Option<(String, i64)>,
    ) -> Result<std::result::Result<(), JoinTokenRefusal>> {
        let (reply, answer) = oneshot::channel();
        let join = NodeJoin { node: node.clone(), token, fence: self.fence, reply };
        self.submissions.send(Submission::Node(join)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Gives a node the credential hashed `new_hash`; with `previous_hash`, the one it held
    /// stays good until it uses the new one ([`Store::settle_agent_credential`]). Whether the
    /// node is known.
    pub async fn rotate_agent_credential(&self, name: &str, new_hash: &str, previous_hash: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query("UPDATE agent_nodes SET token_hash = $1, previous_token_hash = $2 WHERE name = $3")
            .bind(new_hash)
            .bind(previous_hash)
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    /// The node used its new credential: the previous one stops working.
    pub async fn settle_agent_credential(&self, name: &str) -> Result<()> {
        let mut tx = self.write().await?;
        sqlx::query("UPDATE agent_nodes SET previous_token_hash = NULL WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Forgets a node that joined: its credential stops working. Whether it was known.
    pub async fn remove_agent_node(&self, name: &str) -> Result<bool> {
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM agent_nodes WHERE name = $1").bind(name).execute(&mut *tx).await?;
        self.commit_admin(tx, done.rows_affected() > 0).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Every node that joined, by name.
    pub async fn agent_nodes(&self) -> Result<Vec<AgentNode>> {
        let rows =
            sqlx::query("SELECT name, token_hash, inventory_json, address, joined_ms, previous_token_hash, runtimes FROM agent_nodes ORDER BY name")
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(AgentNode {
                    name: r.try_get(0)?,
                    token_hash: r.try_get(1)?,
                    inventory_json: r.try_get(2)?,
                    address: r.try_get(3)?,
                    joined_ms: r.try_get(4)?,
                    previous_token_hash: r.try_get(5)?,
                    runtimes: r
                        .try_get::<String, _>(6)?
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect(),
                })
            })
            .collect()
    }
}

/// What a SQLite pool's connections are for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SqliteRole {
    Writer,
    Reader,
}

/// A pool of `connections` to the SQLite database at `url`.
async fn sqlite_pool(url: &str, connections: u32, role: SqliteRole) -> Result<AnyPool> {
    let pool = AnyPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .after_connect(move |conn, _| {
            Box::pin(async move {
                // Per connection: a connection the pool opens again keeps them. Readers (opened
                // read-only) have nothing to set: the file is in WAL mode for good.
                if role == SqliteRole::Writer {
                    // In WAL mode `synchronous = FULL` syncs the log on every commit, so a commit
                    // that returned survives a power loss; group commit (`Store::insert_job`)
                    // shares that sync among the submissions that arrive together.
                    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = FULL", "PRAGMA foreign_keys = ON"]
                    {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// The submission writer: takes whatever submissions wait (up to [`MAX_BATCH_JOBS`]), stores
/// them in one transaction and answers each caller once it committed. It waits for no timer:
/// while one batch commits, the next gathers in the queue. Ends when the store is closed or every
/// clone of it is dropped.
async fn write_submissions(writer: AnyPool, backend: Backend, mut queue: mpsc::Receiver<Submission>) {
    let mut waiting = Vec::with_capacity(MAX_BATCH_JOBS);
    let mut closers = Vec::new();
    while closers.is_empty() {
        // Zero: every sender (every clone of the store) is gone.
        if queue.recv_many(&mut waiting, MAX_BATCH_JOBS).await == 0 {
            break;
        }
        let mut batch = Vec::with_capacity(waiting.len());
        let mut nodes = Vec::new();
        for submission in waiting.drain(..) {
            match submission {
                Submission::Insert(insert) if closers.is_empty() => batch.push(insert),
                Submission::Node(join) if closers.is_empty() => nodes.push(join),
                // Handed over after the store began to close.
                Submission::Insert(insert) => {
                    let _ = insert.reply.send(Err(StoreError::Closed));
                }
                Submission::Node(join) => {
                    let _ = join.reply.send(Err(StoreError::Closed));
                }
                Submission::Close(done) => closers.push(done),
            }
        }
        if !nodes.is_empty() {
            commit_nodes(&writer, backend, nodes).await;
        }
        if !batch.is_empty() {
            commit_batch(&writer, backend, batch).await;
            // Let the callers just answered run before the next batch is taken: those with more
            // to submit join it. Without this the few submissions that came during the commit go
            // alone, and batches alternate between nearly everyone and almost no one.
            tokio::task::yield_now().await;
        }
    }
    if !closers.is_empty() {
        // Refuse new submissions, fail those already queued, then tell the closers.
        queue.close();
        while let Some(submission) = queue.recv().await {
            match submission {
                Submission::Insert(insert) => {
                    let _ = insert.reply.send(Err(StoreError::Closed));
                }
                Submission::Node(join) => {
                    let _ = join.reply.send(Err(StoreError::Closed));
                }
                Submission::Close(done) => closers.push(done),
            }
        }
    }
    tracing::debug!("submission writer stopped");
    for done in closers {
        let _ = done.send(());
    }
}

/// A node's join, the leader's epoch it is written under (if fenced), and its caller's answer.
/// One caller's node join, waiting for its batch to commit.
struct NodeJoin {
    node: AgentNode,
    /// The join token's hash and the time of the join, when the join uses one.
    token: Option<(String, i64)>,
    /// The leader's epoch the joining server writes under, if fenced.
    fence: Option<i64>,
    reply: oneshot::Sender<Result<std::result::Result<(), JoinTokenRefusal>>>,
}

/// Stores the joins of `nodes` in one transaction and answers each; if it fails, each is tried
/// alone, so a bad one fails by itself.
async fn commit_nodes(writer: &AnyPool, backend: Backend, nodes: Vec<NodeJoin>) {
    let all: Vec<&NodeJoin> = nodes.iter().collect();
    match upsert_nodes(writer, backend, &all).await {
        Ok(answers) => {
            for (join, answer) in nodes.into_iter().zip(answers) {
                let _ = join.reply.send(Ok(answer));
            }
        }
        Err(error) if nodes.len() == 1 => {
            if let Some(join) = nodes.into_iter().next() {
                let _ = join.reply.send(Err(error));
            }
        }
        Err(_) => {
            for join in nodes {
                let answer = upsert_nodes(writer, backend, &[&join]).await;
                let _ = join.reply.send(answer.map(|a| a.into_iter().next().unwrap_or(Ok(()))));
            }
        }
    }
}

/// Stores the joins of `nodes` in one transaction; each node's answer, in order: a join whose
/// token is refused stores nothing.
async fn upsert_nodes(
    writer: &AnyPool,
    backend: Backend,
    nodes: &[&NodeJoin],
) -> Result<Vec<std::result::Result<(), JoinTokenRefusal>>> {
    let mut tx = writer.begin().await?;
    check_fences(&mut tx, backend, nodes.iter().map(|j| j.fence)).await?;
    let mut answers = Vec::with_capacity(nodes.len());
    for join in nodes {
        let node = &join.node;
        if let Some((token_hash, now_ms)) = &join.token
            && let Err(refusal) = take_join_token(&mut tx, backend, token_hash, &node.name, *now_ms).await?
        {
            answers.push(Err(refusal));
            continue;
        }
        sqlx::query(
            "INSERT INTO agent_nodes (name, token_hash, inventory_json, address, joined_ms, runtimes) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (name) DO UPDATE SET token_hash = $2, inventory_json = $3, address = $4, joined_ms = $5, \
             runtimes = $6, previous_token_hash = NULL",
        )
        .bind(&node.name)
        .bind(&node.token_hash)
        .bind(&node.inventory_json)
        .bind(&node.address)
        .bind(node.joined_ms)
        .bind(node.runtimes.join(","))
        .execute(&mut *tx)
        .await?;
        answers.push(Ok(()));
    }
    tx.commit().await?;
    Ok(answers)
}

/// Uses join token `token_hash` for `node` inside `tx`: one use fewer where it counts them, or
/// why it is refused (and then nothing is written).
async fn take_join_token(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: Backend,
    token_hash: &str,
    node: &str,
    now_ms: i64,
) -> Result<std::result::Result<(), JoinTokenRefusal>> {
    let lock = if backend == Backend::Postgres { " FOR UPDATE" } else { "" };
    let row = sqlx::query(&format!(
        "SELECT uses_left, expires_ms, node, revoked_ms FROM join_tokens WHERE token_hash = $1{lock}"
    ))
    .bind(token_hash)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(row) = row else { return Ok(Err(JoinTokenRefusal::Unknown)) };
    let (uses_left, expires_ms, bound, revoked_ms): (Option<i64>, Option<i64>, Option<String>, Option<i64>) =
        (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
    let refusal = if revoked_ms.is_some() {
        Some(JoinTokenRefusal::Revoked)
    } else if expires_ms.is_some_and(|e| e <= now_ms) {
        Some(JoinTokenRefusal::Expired)
    } else if uses_left.is_some_and(|u| u <= 0) {
        Some(JoinTokenRefusal::UsedUp)
    } else {
        bound.filter(|b| b != node).map(JoinTokenRefusal::OtherNode)
    };
    if let Some(r) = refusal {
        return Ok(Err(r));
    }
    if uses_left.is_some() {
        sqlx::query("UPDATE join_tokens SET uses_left = uses_left - 1 WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&mut **tx)
            .await?;
    }
    Ok(Ok(()))
}

/// Checks, inside a transaction, that the lease is still at `epoch` ([`Store::fenced`]): on
/// PostgreSQL the lease row stays locked `FOR KEY SHARE` until the commit, so a takeover (which
/// locks it `FOR UPDATE`) waits for
/// the write and never misses it.
async fn check_fence_in(conn: &mut sqlx::AnyConnection, backend: Backend, epoch: i64) -> Result<()> {
    let sql = match backend {
        // KEY SHARE: the holder's renewals (plain updates) go by; a takeover's FOR UPDATE waits.
        Backend::Postgres => "SELECT epoch FROM leader_lease WHERE id = 1 FOR KEY SHARE",
        Backend::Sqlite => "SELECT epoch FROM leader_lease WHERE id = 1",
    };
    let current: Option<i64> = sqlx::query_scalar(sql).fetch_optional(&mut *conn).await?;
    if current != Some(epoch) {
        return Err(StoreError::Fenced { epoch, current });
    }
    Ok(())
}

/// [`check_fence_in`] for every distinct epoch among `fences`.
async fn check_fences(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    fences: impl Iterator<Item = Option<i64>>,
) -> Result<()> {
    let mut epochs: Vec<i64> = fences.flatten().collect();
    epochs.sort_unstable();
    epochs.dedup();
    for epoch in epochs {
        check_fence_in(conn, backend, epoch).await?;
    }
    Ok(())
}

/// Announces `ids` to the leader inside the transaction that wrote them (PostgreSQL only).
async fn announce_in(conn: &mut AnyConnection, backend: Backend, kind: WriteKind, ids: &[i64]) -> Result<()> {
    if backend != Backend::Postgres {
        return Ok(());
    }
    for payload in notice::payloads(kind, ids) {
        // `pg_notify` returns void, which the driver cannot decode: count its one row instead.
        sqlx::query("SELECT COUNT(*) FROM (SELECT pg_notify($1, $2)) AS n")
            .bind(notice::WRITES_CHANNEL)
            .bind(payload)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Stores one batch of submissions in one transaction and answers each caller.
async fn commit_batch(writer: &AnyPool, backend: Backend, batch: Vec<PendingInsert>) {
    let started = Instant::now();
    let jobs: Vec<(&NewJob, i64)> = batch.iter().map(|p| (&p.job, p.now_ms)).collect();
    let fences: Vec<Option<i64>> = batch.iter().map(|p| p.fence).collect();
    let announce: Vec<bool> = batch.iter().map(|p| p.announce).collect();
    match insert_batch(writer, backend, &jobs, &fences, &announce).await {
        Ok(stored) => {
            tracing::trace!(
                jobs = batch.len(),
                elapsed_us = started.elapsed().as_micros(),
                "submission batch committed"
            );
            // A caller that stopped waiting drops its answer; its job is stored all the same.
            for (pending, inserted) in batch.into_iter().zip(stored) {
                let _ = pending.reply.send(Ok(inserted));
            }
        }
        Err(error) => {
            tracing::warn!(jobs = batch.len(), error = %error, "submission batch failed");
            let mut callers = batch.into_iter();
            if callers.len() == 1 {
                if let Some(alone) = callers.next() {
                    let _ = alone.reply.send(Err(error));
                }
                return;
            }
            // One bad submission must not fail the others that shared its transaction: each
            // is tried again alone, and only what fails alone fails.
            drop(error);
            for pending in callers {
                let job = [(&pending.job, pending.now_ms)];
                let alone = insert_batch(writer, backend, &job, &[pending.fence], &[pending.announce]).await;
                let answer = alone.and_then(|mut v| v.pop().ok_or(StoreError::Closed));
                let _ = pending.reply.send(answer);
            }
        }
    }
}

/// Stores `jobs` (each with its submission time) in one transaction: all of them or none.
async fn insert_batch(
    writer: &AnyPool,
    backend: Backend,
    jobs: &[(&NewJob, i64)],
    fences: &[Option<i64>],
    announce: &[bool],
) -> Result<Vec<Inserted>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    let mut tx = writer.begin().await?;
    check_fences(&mut tx, backend, fences.iter().copied()).await?;
    let stored = insert_in(&mut tx, backend, jobs).await?;
    let created: Vec<i64> =
        stored.iter().zip(announce).filter(|(i, a)| i.created && **a).map(|(i, _)| i.job.id).collect();
    announce_in(&mut tx, backend, WriteKind::Submitted, &created).await?;
    tx.commit().await?;
    Ok(stored)
}

/// The columns a submission fills, in the order [`insert_in`] binds them.
const INSERT_COLUMNS: &str = "tenant_id, name, command, args_json, env_json, gpus_per_node, nodes, gpu_model, \
     priority, is_deferrable, max_runtime_s, restart_policy, max_restarts, idempotency_key, request_hash, \
     state, generation, submitted_ms, gpu_milli, cpu_milli, memory_mib, image, federated";
/// Parameters a submission binds (every column of [`INSERT_COLUMNS`] but `state` and `generation`).
const INSERT_PARAMS: usize = 21;

/// Stores `jobs` and their first history entries inside a transaction, as if one after the
/// other: a key used before, or earlier in `jobs`, stores nothing and answers the job stored
/// first with it. A handful of multi-row statements, whatever the number of jobs.
async fn insert_in(conn: &mut AnyConnection, backend: Backend, jobs: &[(&NewJob, i64)]) -> Result<Vec<Inserted>> {
    // A key used earlier in the batch makes a submission a retry of that earlier one.
    let mut first_with_key: HashMap<(i64, &str), usize> = HashMap::new();
    let mut retry_of: Vec<Option<usize>> = Vec::with_capacity(jobs.len());
    let mut fresh: Vec<usize> = Vec::with_capacity(jobs.len());
    for (i, (job, _)) in jobs.iter().enumerate() {
        let earlier = job.idempotency_key.as_deref().and_then(|key| match first_with_key.entry((job.tenant_id, key)) {
            Entry::Occupied(first) => Some(*first.get()),
            Entry::Vacant(slot) => {
                slot.insert(i);
                None
            }
        });
        if earlier.is_none() {
            fresh.push(i);
        }
        retry_of.push(earlier);
    }

    // The new jobs; one whose key the tenant used before is skipped by the conflict clause.
    let mut created: Vec<Job> = Vec::with_capacity(fresh.len());
    for (rows, size) in in_statements(&fresh, max_rows_per_insert(backend)) {
        let sql = format!(
            "INSERT INTO jobs ({INSERT_COLUMNS}) \
             SELECT column1, column2, column3, column4, column5, column6, column7, column8, column9, column10, \
                    column11, column12, column13, column14, column15, 'pending', 0, column16, column17, \
                    column18, column19, column20, column21 \
             FROM (VALUES {}) AS submitted WHERE column1 IS NOT NULL \
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING {JOB_COLUMNS}",
            values_list(size, INSERT_PARAMS)
        );
        let mut q = sqlx::query(&sql);
        for &i in rows {
            let (job, now_ms) = jobs[i];
            q = q
                .bind(job.tenant_id)
                .bind(job.name.as_str())
                .bind(job.command.as_deref())
                .bind(job.args_json.as_str())
                .bind(job.env_json.as_str())
                .bind(job.gpus_per_node)
                .bind(job.nodes)
                .bind(job.gpu_model.as_deref())
                .bind(job.priority)
                .bind(i64::from(job.deferrable))
                .bind(job.max_runtime_s)
                .bind(job.restart_policy.as_str())
                .bind(job.max_restarts)
                .bind(job.idempotency_key.as_deref())
                .bind(job.request_hash.as_str())
                .bind(now_ms)
                .bind(job.gpu_milli)
                .bind(job.cpu_milli)
                .bind(job.memory_mib)
                .bind(job.image.as_deref())
                .bind(i64::from(job.federated));
        }
        // Spare rows: NULL in every column, of each column's type (PostgreSQL types the VALUES
        // columns from them too), and left out by the WHERE.
        let (no_int, no_text) = (None::<i64>, None::<&str>);
        for _ in rows.len()..size {
            q = q.bind(no_int).bind(no_text).bind(no_text).bind(no_text).bind(no_text).bind(no_int).bind(no_int);
            q = q.bind(no_text).bind(no_int).bind(no_int).bind(no_int).bind(no_text).bind(no_int).bind(no_text);
            q = q.bind(no_text).bind(no_int).bind(no_int).bind(no_int).bind(no_int).bind(no_text).bind(no_int);
        }
        for r in q.fetch_all(&mut *conn).await? {
            created.push(Store::job_of(&r)?);
        }
    }

    // RETURNING promises no order, so each stored row finds its submission by what was asked
    // and when. Submissions alike in both are alike in every answer but the id: they take the
    // ids in submission order, as the rows were inserted.
    created.sort_by_key(|j| j.id);
    let mut by_submission: HashMap<(&NewJob, i64), VecDeque<usize>> = HashMap::new();
    for &i in &fresh {
        by_submission.entry(jobs[i]).or_default().push_back(i);
    }
    let mut submission_of = Vec::with_capacity(created.len());
    for job in &created {
        let Some(i) = by_submission.get_mut(&(&job.spec, job.submitted_ms)).and_then(VecDeque::pop_front) else {
            return Err(StoreError::Corrupt(format!("job {} was stored but matches no submission", job.id)));
        };
        submission_of.push(i);
    }
    let mut answers: Vec<Option<Inserted>> = vec![None; jobs.len()];
    let mut events: Vec<(i64, i64, i64)> = Vec::with_capacity(created.len());
    for (job, i) in created.into_iter().zip(submission_of) {
        events.push((job.id, job.spec.tenant_id, job.submitted_ms));
        answers[i] = Some(Inserted { job, created: true });
    }

    // Their first history entries, in id order.
    for (rows, size) in in_statements(&events, max_rows_per_insert(backend)) {
        let sql = format!(
            "INSERT INTO job_events (job_id, tenant_id, state, at_ms, message) \
             SELECT column1, column2, 'pending', column3, NULL FROM (VALUES {}) AS created WHERE column1 IS NOT NULL",
            values_list(size, 3)
        );
        let mut q = sqlx::query(&sql);
        for &(job_id, tenant_id, at_ms) in rows {
            q = q.bind(job_id).bind(tenant_id).bind(at_ms);
        }
        for _ in rows.len()..size {
            q = q.bind(None::<i64>).bind(None::<i64>).bind(None::<i64>);
        }
        q.execute(&mut *conn).await?;
    }

    // The submissions skipped for a key used before: answer the job stored then, as it is now.
    let skipped: Vec<(i64, &str)> = fresh
        .iter()
        .filter(|&&i| answers[i].is_none())
        .filter_map(|&i| jobs[i].0.idempotency_key.as_deref().map(|key| (jobs[i].0.tenant_id, key)))
        .collect();
    for (keys, size) in in_statements(&skipped, MAX_KEYS_PER_LOOKUP) {
        let terms: Vec<String> =
            (0..size).map(|k| format!("(tenant_id = ${} AND idempotency_key = ${})", 2 * k + 1, 2 * k + 2)).collect();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE {}", terms.join(" OR "));
        let mut q = sqlx::query(&sql);
        for &(tenant_id, key) in keys {
            q = q.bind(tenant_id).bind(key);
        }
        // Spare terms compare with NULL: never true.
        for _ in keys.len()..size {
            q = q.bind(None::<i64>).bind(None::<&str>);
        }
        for r in q.fetch_all(&mut *conn).await? {
            let job = Store::job_of(&r)?;
            let first =
                job.spec.idempotency_key.as_deref().and_then(|key| first_with_key.get(&(job.spec.tenant_id, key)));
            if let Some(&i) = first {
                answers[i] = Some(Inserted { job, created: false });
            }
        }
    }

    // Retries within the batch answer what their first submission got.
    let mut out = Vec::with_capacity(jobs.len());
    for (i, earlier) in retry_of.iter().enumerate() {
        let answer = match earlier {
            Some(first) => answers[*first].as_ref().map(|a| Inserted { job: a.job.clone(), created: false }),
            None => answers[i].clone(),
        };
        out.push(answer.ok_or_else(|| {
            StoreError::Corrupt(format!("submission {i} of a batch was neither stored nor found by its key"))
        })?);
    }
    Ok(out)
}

/// `rows` cut into statements of at most `max` rows (a power of two), each with its size: the
/// power of two its rows fill at least half of. The caller pads the spare rows out. A handful of
/// statement texts then serve every batch, staying prepared in each connection's statement
/// cache, and a batch takes few statements: one up to `max` rows.
fn in_statements<T>(rows: &[T], max: usize) -> impl Iterator<Item = (&[T], usize)> {
    let mut rest = rows;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (head, tail) = rest.split_at(rest.len().min(max));
        rest = tail;
        Some((head, head.len().next_power_of_two()))
    })
}

/// `rows` rows of `columns` parameters for a VALUES list: `($1, $2), ($3, $4)`.
fn values_list(rows: usize, columns: usize) -> String {
    let row = |r: usize| {
        let params: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
        format!("({})", params.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}
