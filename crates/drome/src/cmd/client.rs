//! The CLI client: `drome submit`, `jobs`, `job`, `cancel`, `nodes`, `tenants`, `quota`. It talks
//! to a server's REST API; `DROME_URL` and `DROME_TOKEN` say which server and as whom.

use super::{Output, print_json};
use anyhow::{Context, bail};
use report::Table;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// Which server, as whom, and how to print.
#[derive(clap::Args, Debug, Clone)]
pub struct Conn {
    /// Server URL.
    #[arg(long, env = "DROME_URL", default_value = "http://127.0.0.1:8420", global = true)]
    pub url: String,
    /// Bearer token (a tenant's, or the admin's for `tenants`, `quota set` and `join-tokens`).
    #[arg(long, env = "DROME_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// `table` or `json`. These options may come before or after a subcommand.
    #[arg(long, value_enum, default_value_t, global = true)]
    pub output: Output,
    #[command(flatten)]
    pub trust: TrustArgs,
}

/// How an https:// server is trusted: by the CA that signed its certificate, or by its
/// certificate's fingerprint (pinned). `drome up` prints the first.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TrustArgs {
    /// A PEM file of the CA(s) that sign the server's certificate.
    #[arg(long, env = "DROME_CA_FILE", global = true, value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Trust only the server whose certificate has this SHA-256 fingerprint (sha256:HEX).
    #[arg(long, env = "DROME_SERVER_FINGERPRINT", global = true, value_name = "SHA256")]
    pub server_fingerprint: Option<String>,
}

impl TrustArgs {
    pub fn trust(&self) -> anyhow::Result<Option<tls::Trust>> {
        Ok(tls::Trust::from_options(self.ca_file.as_deref(), self.server_fingerprint.as_deref())?)
    }
}

#[derive(clap::Args, Debug)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// GPUs on each node.
    #[arg(long, default_value_t = 1)]
    pub gpus: u32,
    /// Nodes; all start together.
    #[arg(long, default_value_t = 1)]
    pub nodes: u32,
    /// A share of one GPU instead of whole GPUs, thousandths (e.g. 250 for a quarter): the GPU is
    /// shared with other work.
    #[arg(long)]
    pub gpu_milli: Option<u32>,
    /// GPU model or family (H200).
    #[arg(long)]
    pub gpu_model: Option<String>,
    /// CPUs on each node (0.5, 4, ...); by default the fleet's share per GPU asked for (one
    /// CPU for CPU-only work). The job is confined to them.
    #[arg(long, value_parser = parse_cpus)]
    pub cpus: Option<u64>,
    /// Memory on each node: 512M, 16G, 1T (a bare number is MiB); by default the fleet's share
    /// per GPU asked for (2G for CPU-only work). A job that goes past it is killed.
    #[arg(long, value_parser = parse_memory_mib)]
    pub memory: Option<u64>,
    /// Run the command in this OCI image (localhost/train:3), from the nodes' own image store:
    /// the job goes only to nodes with a container runtime.
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// The job may wait for cheaper or cleaner power.
    #[arg(long)]
    pub deferrable: bool,
    /// Stop the job after this many seconds of running.
    #[arg(long)]
    pub max_runtime: Option<u64>,
    /// Where the job's input data lives, SITE:GB: a federation weighs moving it when it picks
    /// a site (a site alone ignores it).
    #[arg(long, value_name = "SITE:GB", value_parser = parse_dataset)]
    pub dataset: Option<api::Dataset>,
    /// Restart a failed job (up to --max-restarts times): `on-failure` whatever failed,
    /// `on-node-loss` only when its node (or site) was lost, not when its program failed (for
    /// work that checkpoints).
    #[arg(long, value_parser = ["never", "on-failure", "on-node-loss"], default_value = "never")]
    pub restart: String,
    #[arg(long, default_value_t = 3)]
    pub max_restarts: u32,
    /// Environment variable for the job, KEY=VALUE; repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// A GPU instance: no command, holds its GPUs until cancelled or --max-runtime passes.
    #[arg(long)]
    pub instance: bool,
    /// Idempotency key; a fresh one is made for each submission, so retries are safe.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Only jobs in this state (pending, scheduled, running, succeeded, failed, cancelled).
    #[arg(long)]
    pub state: Option<String>,
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

#[derive(clap::Args, Debug)]
pub struct JobArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub id: i64,
}

#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    #[command(flatten)]
    pub conn: Conn,
    pub id: i64,
    /// The gang member (rank) whose output to show.
    #[arg(long, default_value_t = 0)]
    pub member: u32,
    /// Standard error instead of standard output.
    #[arg(long)]
    pub stderr: bool,
    /// Keep printing as the job writes, until it ends.
    #[arg(long, short)]
    pub follow: bool,
}

#[derive(clap::Args, Debug)]
pub struct NodesArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Sites instead of nodes.
    #[arg(long)]
    pub sites: bool,
    #[command(subcommand)]
    pub action: Option<NodesAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum NodesAction {
    /// Take a node out of placement (admin): it gets no new work, what runs there goes on.
    Drain {
        node: String,
        /// Why, shown with the node (`drome nodes`).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Put a drained node back into placement (admin).
    Resume { node: String },
    /// Take a drained node with nothing running out of service (admin): its credential is
    /// revoked; its agent needs a new join token to come back.
    Remove { node: String },
}

#[derive(clap::Args, Debug)]
pub struct TenantsArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub action: Option<TenantsAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum TenantsAction {
    /// Create a tenant (admin) and print its token.
    Create {
        name: String,
        /// GPUs it may hold at once.
        #[arg(long)]
        gpu_quota: Option<u32>,
        /// CPUs its jobs may hold at once, over all their nodes (e.g. 64, 0.5).
        #[arg(long, value_parser = parse_cpus)]
        cpu_quota: Option<u64>,
        /// Memory its jobs may hold at once, over all their nodes (e.g. 512G).
        #[arg(long, value_parser = parse_memory_mib)]
        memory_quota: Option<u64>,
        /// Seconds its token works (it never expires by default).
        #[arg(long)]
        token_ttl_s: Option<u64>,
        /// The highest priority its jobs may ask for (0 by default: priority orders every
        /// tenant's jobs, so a tenant may only put its own jobs behind others).
        #[arg(long, allow_negative_numbers = true)]
        max_priority: Option<i32>,
    },
    /// Remove a tenant with no work waiting or running: its token stops working, its finished
    /// jobs stay on record.
    Remove { name: String },
    /// A tenant's token.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
}

#[derive(clap::Subcommand, Debug)]
pub enum TokenAction {
    /// A new token for the tenant, printed once; the old one stops working at once.
    Rotate {
        name: String,
        /// Seconds the new token works (it never expires by default).
        #[arg(long)]
        ttl_s: Option<u64>,
    },
    /// The tenant's token stops working at once; `rotate` gives it a new one.
    Revoke { name: String },
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Entries to show, newest first.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
}

/// `drome usage --by day --since 2026-12-01`: what runs used within a window. A tenant sees its
/// own; the admin sees every tenant's, or one's with `--tenant`. A run counts for the part of it
/// inside the window; one still going counts up to now.
#[derive(clap::Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Rows by `tenant`, `job`, `day`, `month`, `model` (GPU model), `site`, or `site-month` (each
    /// site's monthly report: energy, PUE, carbon, heat sold).
    #[arg(long, default_value = "tenant", value_parser = clap::builder::ValueParser::new(str::parse::<api::UsageBy>))]
    pub by: api::UsageBy,
    /// Window start: `2026-12-01`, `2026-12` (UTC), `7d` or `12h` ago, or Unix ms (default: 30 days
    /// before its end).
    #[arg(long)]
    pub since: Option<String>,
    /// Window end, as `--since` (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this tenant's (admin).
    #[arg(long)]
    pub tenant: Option<String>,
    /// CSV on stdout, for a spreadsheet or an invoice run.
    #[arg(long, conflicts_with = "output")]
    pub csv: bool,
}

/// `drome prices` shows the price list; `drome prices set --gpu-hour H200=3.10 --cpu-core-hour 0.02`
/// replaces it (admin): figures not given are 0.
#[derive(clap::Args, Debug)]
pub struct PricesArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub action: Option<PricesAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum PricesAction {
    /// Replace the price list (admin).
    Set {
        /// Three capital letters.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Per GPU-hour of a model: `H200=3.10` (repeat for each model).
        #[arg(long = "gpu-hour", value_name = "MODEL=PRICE")]
        gpu_hour: Vec<String>,
        /// Per GPU-hour of a model not named.
        #[arg(long, default_value_t = 0.0)]
        gpu_hour_default: f64,
        /// Per CPU core held an hour.
        #[arg(long, default_value_t = 0.0)]
        cpu_core_hour: f64,
        /// Per GiB of memory held an hour.
        #[arg(long, default_value_t = 0.0)]
        memory_gib_hour: f64,
        /// Per kWh the job's GPUs drew (0: included in the GPU-hour).
        #[arg(long, default_value_t = 0.0)]
        energy_kwh: f64,
        /// Share taken off a deferrable job's cost, 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        deferrable_discount: f64,
        /// Also charge each run's energy and the facility's at the hour's grid price (EUR only).
        #[arg(long)]
        energy_pass_through: bool,
        /// Share of the heat revenue a run's energy earned taken off its cost, 0 to 1 (EUR only).
        #[arg(long, default_value_t = 0.0)]
        heat_credit_share: f64,
    },
}

/// `drome budget` shows your monthly budget; `drome budget --tenant lab` a tenant's (admin);
/// `drome budget set lab --monthly 5000` sets it, `--remove` takes it away (admin). Past it, new
/// submissions are refused; running work goes on, unless it was set with `--stop-running`.
#[derive(clap::Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The tenant (admin).
    #[arg(long)]
    pub tenant: Option<String>,
    #[command(subcommand)]
    pub action: Option<BudgetAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum BudgetAction {
    /// Set or remove a tenant's monthly budget (admin).
    Set {
        tenant: String,
        /// The most it may spend in a calendar month (UTC), in the price list's currency.
        #[arg(long, required_unless_present = "remove")]
        monthly: Option<f64>,
        /// No budget: its submissions are never refused for cost.
        #[arg(long, conflicts_with = "monthly")]
        remove: bool,
        /// Once the month's spending reaches the budget, cancel the tenant's running and waiting
        /// jobs too (default: they go on; only new submissions are refused).
        #[arg(long, conflicts_with = "remove")]
        stop_running: bool,
    },
}

/// `drome history --since 7d`: finished jobs, like `sacct`: how each ended, its exit code, when
/// it was submitted, started and finished, how long it ran, its GPUs, energy and cost. A tenant
/// sees its own; the admin sees all, or one tenant's with `--tenant`.
#[derive(clap::Args, Debug)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// Jobs that finished from then: `2026-12-01`, `2026-12`, `7d` or `12h` ago, or Unix ms
    /// (default: 7 days before --until).
    #[arg(long)]
    pub since: Option<String>,
    /// ... up to then, as `--since` (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Only this tenant's (admin).
    #[arg(long)]
    pub tenant: Option<String>,
    /// At most this many (1 to 10,000).
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Of the jobs that finished at --since (Unix ms), only those with a greater id: the next page.
    #[arg(long)]
    pub after_id: Option<i64>,
    /// CSV on stdout.
    #[arg(long, conflicts_with = "output")]
    pub csv: bool,
}

/// `drome invoice --month 2026-11`: your invoice for a calendar month (UTC), by the price list in
/// force; the admin names the tenant (`--tenant lab`).
#[derive(clap::Args, Debug)]
pub struct InvoiceArgs {
    #[command(flatten)]
    pub conn: Conn,
    /// The tenant (admin).
    #[arg(long)]
    pub tenant: Option<String>,
    /// The month, `2026-11` (default: this month, so far).
    #[arg(long)]
    pub month: Option<String>,
    /// CSV on stdout.
    #[arg(long, conflicts_with = "output")]
    pub csv: bool,
}

/// One line of an invoice.
#[derive(Serialize, Debug)]
pub struct InvoiceLine {
    pub item: String,
    pub quantity: f64,
    pub unit: String,
    pub unit_price: f64,
    pub amount: f64,
}

/// A tenant's invoice for a month, as `drome invoice --output json` prints it.
#[derive(Serialize, Debug)]
pub struct Invoice {
    pub tenant: Option<String>,
    pub month: String,
    pub currency: String,
    pub lines: Vec<InvoiceLine>,
    pub total: f64,
}

#[derive(clap::Args, Debug)]
pub struct JoinTokensArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub action: Option<JoinTokensAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum JoinTokensAction {
    /// Make a join token for node agents (admin) and print it, once.
    Create {
        /// Nodes it may join: an agent serving N nodes needs N.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Seconds it stays valid.
        #[arg(long, default_value_t = 86_400)]
        ttl_s: u64,
        /// The only node it may join.
        #[arg(long)]
        node: Option<String>,
    },
    /// Revoke a join token by its id (nodes that joined with it keep their credentials).
    Revoke { id: String },
}

#[derive(clap::Args, Debug)]
pub struct QuotaArgs {
    #[command(flatten)]
    pub conn: Conn,
    #[command(subcommand)]
    pub action: Option<QuotaAction>,
}

#[derive(clap::Subcommand, Debug)]
pub enum QuotaAction {
    /// Set a tenant's quota (admin); what is not given stays as it was.
    ///
    /// `drome quota set lab 64 --cpus 512 --memory 4T`; each limit is a number or `unlimited`.
    Set {
        tenant: String,
        /// GPUs it may hold at once, or `unlimited`.
        gpus: Option<String>,
        /// CPUs its jobs may hold at once over all their nodes (e.g. 512, 0.5), or `unlimited`.
        #[arg(long)]
        cpus: Option<String>,
        /// Memory its jobs may hold at once over all their nodes (e.g. 4T, 512G), or `unlimited`.
        #[arg(long)]
        memory: Option<String>,
        /// The highest priority its jobs may ask for (0 by default).
        #[arg(long, allow_negative_numbers = true)]
        max_priority: Option<i32>,
    },
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub conn: Conn,
}

/// A small REST client over reqwest.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

fn random_key() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("cli-{}-{nanos:x}", std::process::id())
}

impl Client {
    pub fn new(conn: &Conn) -> anyhow::Result<Client> {
        let builder =
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(60));
        let builder = match conn.trust.trust()? {
            Some(trust) => builder.use_preconfigured_tls(tls::client_config(&trust)?),
            None => builder,
        };
        let http = builder.build().context("cannot build the HTTP client")?;
        Ok(Client {
            http,
            base: conn.url.trim_end_matches('/').to_string(),
            token: conn.token.clone().filter(|t| !t.is_empty()),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> anyhow::Result<reqwest::RequestBuilder> {
        let Some(token) = &self.token else {
            bail!("no token: set DROME_TOKEN (or pass --token); `drome up` prints one")
        };
        Ok(self.http.request(method, format!("{}{path}", self.base)).bearer_auth(token))
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let resp = req.send().await.with_context(|| format!("cannot reach the drome server at {}", self.base))?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("cannot read the server's answer")?;
        if !status.is_success() {
            if let Ok(e) = serde_json::from_slice::<api::ErrorBody>(&bytes) {
                match e.error.field {
                    Some(f) => bail!("{} ({status}): {}: {}", e.error.code, f, e.error.message),
                    None => bail!("{} ({status}): {}", e.error.code, e.error.message),
                }
            }
            bail!("server answered {status}: {}", String::from_utf8_lossy(&bytes));
        }
        // An answer without a body (204) reads as JSON null.
        let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(bytes).context("unexpected answer from the server")
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::GET, path)?).await
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::POST, path)?.json(body)).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send::<()>(self.request(reqwest::Method::DELETE, path)?).await
    }

    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.request(reqwest::Method::PUT, path)?.json(body)).await
    }

    /// Submits with an idempotency key, retrying on connection failures: the job is stored once.
    pub async fn submit(&self, spec: &api::JobSpec, key: &str) -> anyhow::Result<api::Job> {
        let mut last = None;
        for attempt in 0..4u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
            }
            let req = self.request(reqwest::Method::POST, "/v1/jobs")?.header("Idempotency-Key", key).json(spec);
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let bytes = resp.bytes().await.context("cannot read the server's answer")?;
                    if status.is_success() {
                        return serde_json::from_slice(&bytes).context("unexpected answer from the server");
                    }
                    if let Ok(e) = serde_json::from_slice::<api::ErrorBody>(&bytes) {
                        match e.error.field {
                            Some(f) => bail!("{} ({status}): {}: {}", e.error.code, f, e.error.message),
                            None => bail!("{} ({status}): {}", e.error.code, e.error.message),
                        }
                    }
                    bail!("server answered {status}: {}", String::from_utf8_lossy(&bytes));
                }
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() => last = Some(e),
                Err(e) => return Err(e).context("submission failed"),
            }
        }
        Err(anyhow::anyhow!(
            "cannot reach the drome server at {}: {}",
            self.base,
            last.map(|e| e.to_string()).unwrap_or_default()
        ))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// `1712345678901` ms as `2024-04-05 19:34:38Z`-style UTC text.
pub fn fmt_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = api::utc_date(ms);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

fn gpus_of(job: &api::Job) -> String {
    if let Some(m) = job.spec.gpu_milli {
        let share = format!("{:.3}", f64::from(m) / 1000.0);
        return job.spec.gpu_model.as_ref().map_or(share.clone(), |model| format!("{share} {model}"));
    }
    let total = u64::from(job.spec.gpus_per_node) * u64::from(job.spec.nodes);
    match (&job.spec.gpu_model, job.spec.nodes) {
        (Some(m), 1) => format!("{total} {m}"),
        (Some(m), n) => format!("{total} {m} ({n}x{})", job.spec.gpus_per_node),
        (None, 1) => total.to_string(),
        (None, n) => format!("{total} ({n}x{})", job.spec.gpus_per_node),
    }
}

fn command_of(job: &api::Job) -> String {
    match &job.spec.command {
        None => "(GPU instance)".into(),
        Some(c) => {
            let mut s = std::iter::once(c.as_str())
                .chain(job.spec.args.iter().map(String::as_str))
                .collect::<Vec<_>>()
                .join(" ");
            if s.len() > 60 {
                s = format!("{}...", s.chars().take(57).collect::<String>());
            }
            s
        }
    }
}

/// `--cpus 2.5` in thousandths of a CPU.
fn parse_cpus(s: &str) -> Result<u64, String> {
    let cpus: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of CPUs (e.g. 0.5, 4)"))?;
    if !(cpus > 0.0 && cpus <= 1e6) {
        return Err(format!("'{s}': CPUs must be above 0"));
    }
    Ok((cpus * 1000.0).round() as u64)
}

/// `--memory 16G` in MiB: K, M, G, T suffixes (powers of 1024), a bare number in MiB.
fn parse_memory_mib(s: &str) -> Result<u64, String> {
    let t = s.trim().trim_end_matches(['b', 'B']).trim_end_matches(['i']);
    let (number, factor) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1.0 / 1024.0),
        Some((i, 'm' | 'M')) => (&t[..i], 1.0),
        Some((i, 'g' | 'G')) => (&t[..i], 1024.0),
        Some((i, 't' | 'T')) => (&t[..i], 1024.0 * 1024.0),
        _ => (t, 1.0),
    };
    let value: f64 = number.trim().parse().map_err(|_| format!("'{s}' is not a size (e.g. 512M, 16G)"))?;
    let mib = value * factor;
    if !(1.0..=1e12).contains(&mib) {
        return Err(format!("'{s}': at least 1M"));
    }
    Ok(mib.round() as u64)
}

pub fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv.split_once('=').with_context(|| format!("--env {kv}: expected KEY=VALUE"))?;
        env.insert(k.to_string(), v.to_string());
    }
    let (command, cmd_args) = match (args.command.split_first(), args.instance) {
        (Some(_), true) => bail!("a GPU instance (--instance) takes no command"),
        (Some((c, rest)), false) => (Some(c.clone()), rest.to_vec()),
        (None, true) => (None, Vec::new()),
        (None, false) => bail!("give the command after `--` (drome submit --gpus 8 -- python train.py), or --instance"),
    };
    let spec = api::JobSpec {
        name: args.name,
        command,
        args: cmd_args,
        env,
        gpus_per_node: args.gpus,
        nodes: args.nodes,
        gpu_milli: args.gpu_milli,
        gpu_model: args.gpu_model,
        cpu_milli: args.cpus,
        memory_mib: args.memory,
        image: args.image,
        priority: args.priority,
        deferrable: args.deferrable,
        federated: false,
        dataset: args.dataset,
        max_runtime_s: args.max_runtime,
        restart_policy: api::RestartPolicy::from_name(&args.restart),
        max_restarts: args.max_restarts,
    };
    let client = Client::new(&args.conn)?;
    let key = args.idempotency_key.unwrap_or_else(random_key);
    let job = runtime()?.block_on(client.submit(&spec, &key))?;
    match args.conn.output {
        Output::Json => print_json(&job),
        Output::Table => {
            println!("job {} submitted: {} ({} GPUs), {}", job.id, job.name, gpus_of(&job), job.state.as_str());
            println!("follow it with: drome job {}", job.id);
            Ok(())
        }
    }
}

pub fn jobs(args: JobsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let mut path = format!("/v1/jobs?limit={}", args.limit);
    if let Some(s) = &args.state {
        path.push_str(&format!("&state={s}"));
    }
    let list: api::JobList = runtime()?.block_on(client.get(&path))?;
    match args.conn.output {
        Output::Json => print_json(&list),
        Output::Table => {
            let mut t = Table::new(["ID", "NAME", "STATE", "GPUS", "COMMAND", "SUBMITTED"]);
            for j in &list.jobs {
                t.row([
                    j.id.to_string(),
                    j.name.clone(),
                    j.state.as_str().to_string(),
                    gpus_of(j),
                    command_of(j),
                    fmt_time(j.submitted_at_ms),
                ]);
            }
            if t.is_empty() {
                println!("no jobs yet: try `drome submit --gpus 8 -- sleep 30`");
            } else {
                println!("{}", t.render());
            }
            Ok(())
        }
    }
}

fn parse_dataset(s: &str) -> Result<api::Dataset, String> {
    let (site, gb) = s.rsplit_once(':').ok_or("SITE:GB, e.g. valence:800")?;
    let size_gb: f64 = gb.parse().map_err(|_| format!("'{gb}' is not a size in GB"))?;
    if site.is_empty() || !size_gb.is_finite() || size_gb < 0.0 {
        return Err("SITE:GB with a site name and a size of 0 GB or more".into());
    }
    Ok(api::Dataset { site: site.to_string(), size_gb })
}

fn print_job(job: &api::Job, output: Output) -> anyhow::Result<()> {
    if output == Output::Json {
        return print_json(job);
    }
    println!("job {}  {}  [{}]", job.id, job.name, job.state.as_str());
    println!("  tenant     {}", job.tenant);
    println!("  command    {}", command_of(job));
    if let Some(image) = &job.spec.image {
        println!("  image      {image}");
    }
    println!("  gpus       {}", gpus_of(job));
    if let Some(f) = &job.federation {
        let there = f.site_job_id.map(|id| format!(" (its job {id} there)")).unwrap_or_default();
        println!("  site       {}{there}", f.site);
        println!("  why        {}", f.reason);
        for m in &f.moves {
            println!("  left       {} at {}: {}", m.site, fmt_time(m.left_at_ms), m.why);
        }
    }
    let cpus = job.spec.cpu_milli.map_or_else(|| "-".to_string(), fmt_cpus);
    let memory = job.spec.memory_mib.map_or_else(|| "-".to_string(), fmt_mib);
    println!("  per node   {cpus} CPUs, {memory} of memory");
    if !job.placement.is_empty() {
        let nodes: Vec<String> = job.placement.iter().map(|m| format!("{} {:?}", m.node, m.gpus)).collect();
        println!("  placement  {}", nodes.join(", "));
    }
    if let Some(code) = job.exit_code {
        println!("  exit code  {code}");
    }
    if let Some(m) = &job.message {
        println!("  message    {m}");
    }
    let mut t = Table::new(["STATE", "AT", "MESSAGE"]);
    for h in &job.history {
        t.row([h.state.as_str().to_string(), fmt_time(h.at_ms), h.message.clone().unwrap_or_default()]);
    }
    println!("{}", t.render());
    Ok(())
}

pub fn job(args: JobArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let job: api::Job = runtime()?.block_on(client.get(&format!("/v1/jobs/{}", args.id)))?;
    print_job(&job, args.conn.output)
}

pub fn cancel(args: JobArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let job: api::Job =
        runtime()?.block_on(client.post(&format!("/v1/jobs/{}/cancel", args.id), &serde_json::json!({})))?;
    print_job(&job, args.conn.output)
}

/// `drome logs`: a job member's output, fetched from its node; `--follow` reads on until the
/// job has ended and all of it is printed.
pub fn logs(args: LogsArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let client = Client::new(&args.conn)?;
    let stream = if args.stderr { "stderr" } else { "stdout" };
    runtime()?.block_on(async move {
        if args.follow {
            // A job still waiting in the queue has no output yet: wait for it to be placed.
            loop {
                let job: api::Job = client.get(&format!("/v1/jobs/{}", args.id)).await?;
                if !matches!(job.state, api::JobState::Pending | api::JobState::Scheduled | api::JobState::Preempted) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        let mut offset = 0u64;
        loop {
            let path = format!("/v1/jobs/{}/logs?member={}&stream={stream}&offset={offset}", args.id, args.member);
            let chunk: api::JobLogs = client.get(&path).await?;
            if args.conn.output == Output::Json {
                print_json(&chunk)?;
            } else {
                let mut out = std::io::stdout().lock();
                out.write_all(chunk.data.as_bytes())?;
                out.flush()?;
            }
            let moved = chunk.next_offset > offset;
            offset = chunk.next_offset;
            if !args.follow || chunk.complete {
                return Ok(());
            }
            if !moved {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    })
}

pub fn nodes(args: NodesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    if let Some(action) = args.action {
        let (node, what): (api::Node, &str) = match &action {
            NodesAction::Drain { node, reason } => {
                let body = api::Drain { reason: reason.clone() };
                (rt.block_on(client.put(&format!("/v1/nodes/{node}/drain"), &body))?, "drained")
            }
            NodesAction::Resume { node } => {
                rt.block_on(client.delete(&format!("/v1/nodes/{node}/drain")))?;
                let nodes: Vec<api::Node> = rt.block_on(client.get("/v1/nodes"))?;
                let n = nodes.into_iter().find(|n| &n.name == node).with_context(|| format!("no node {node}"))?;
                (n, "resumed: it takes work again")
            }
            NodesAction::Remove { node } => (
                rt.block_on(client.post(&format!("/v1/nodes/{node}/remove"), &serde_json::json!({})))?,
                "removed: its credential is revoked",
            ),
        };
        if args.conn.output == Output::Json {
            return print_json(&node);
        }
        match (&action, &node.drained) {
            (NodesAction::Drain { .. }, Some(reason)) => println!(
                "node {} drained ({reason}): it takes no new work; {} GPUs in use go on",
                node.name, node.gpus_used
            ),
            _ => println!("node {} {what}", node.name),
        }
        return Ok(());
    }
    if args.sites {
        let sites: Vec<api::Site> = rt.block_on(client.get("/v1/sites"))?;
        if args.conn.output == Output::Json {
            return print_json(&sites);
        }
        let mut t = Table::new(["SITE", "COOLING", "NODES", "GPUS", "USED", "FREE", "GPU POWER", "CAP"]);
        for s in &sites {
            t.row([
                s.name.clone(),
                s.cooling.clone(),
                s.nodes.to_string(),
                s.gpus.to_string(),
                s.gpus_used.to_string(),
                s.gpus_free.to_string(),
                report::fmt_si(s.power_watts, "W"),
                s.power_cap_watts.map(|w| report::fmt_si(w, "W")).unwrap_or_else(|| "-".into()),
            ]);
        }
        println!("{}", t.render());
        return Ok(());
    }
    let nodes: Vec<api::Node> = rt.block_on(client.get("/v1/nodes"))?;
    if args.conn.output == Output::Json {
        return print_json(&nodes);
    }
    let mut t = Table::new(["NODE", "SITE", "HALL", "RACK", "MODEL", "GPUS", "USED", "FREE", "STATE"]);
    for n in &nodes {
        let state = match (&n.drained, n.agent) {
            (Some(_), _) => "drained",
            (None, Some(false)) => "no agent",
            (None, _) => "up",
        };
        t.row([
            n.name.clone(),
            n.site.clone(),
            n.hall.clone(),
            n.rack.clone(),
            n.gpu_model.clone().unwrap_or_else(|| "-".into()),
            n.gpus.to_string(),
            n.gpus_used.to_string(),
            n.gpus_free.to_string(),
            state.to_string(),
        ]);
    }
    println!("{}", t.render());
    let drained: Vec<&api::Node> = nodes.iter().filter(|n| n.drained.is_some()).collect();
    if !drained.is_empty() {
        let mut d = Table::new(["NODE", "DRAINED BECAUSE"]);
        for n in drained {
            d.row([n.name.clone(), n.drained.clone().unwrap_or_default()]);
        }
        println!("{}", d.render());
    }
    // Nodes whose agent was refused, and why: an operator's first look when a node takes no work.
    let refused: Vec<&api::Node> = nodes.iter().filter(|n| n.problem.is_some()).collect();
    if !refused.is_empty() {
        let mut p = Table::new(["NODE", "PROBLEM"]);
        for n in refused {
            p.row([n.name.clone(), n.problem.clone().unwrap_or_default()]);
        }
        println!("{}", p.render());
    }
    Ok(())
}

pub fn tenants(args: TenantsArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    match args.action {
        Some(TenantsAction::Remove { name }) => {
            rt.block_on(client.delete(&format!("/v1/tenants/{name}")))?;
            println!("tenant {name} removed");
            Ok(())
        }
        Some(TenantsAction::Token { action: TokenAction::Revoke { name } }) => {
            rt.block_on(client.delete(&format!("/v1/tenants/{name}/token")))?;
            println!("tenant {name}: token revoked (`drome tenants token rotate {name}` gives it a new one)");
            Ok(())
        }
        Some(TenantsAction::Token { action: TokenAction::Rotate { name, ttl_s } }) => {
            let made: api::TenantCreated =
                rt.block_on(client.post(&format!("/v1/tenants/{name}/token"), &api::TokenRotation { ttl_s }))?;
            if args.conn.output == Output::Json {
                return print_json(&made);
            }
            let until = made.tenant.token_expires_at_ms.map(fmt_time).unwrap_or_else(|| "never expires".into());
            println!("tenant {}: new token ({until}); the old one no longer works", made.tenant.name);
            println!("token (shown once): {}", made.token);
            Ok(())
        }
        Some(TenantsAction::Create { name, gpu_quota, cpu_quota, memory_quota, token_ttl_s, max_priority }) => {
            let body = api::NewTenant {
                name,
                gpu_quota,
                cpu_milli_quota: cpu_quota,
                memory_mib_quota: memory_quota,
                token_ttl_s,
                max_priority,
            };
            let created: api::TenantCreated = rt.block_on(client.post("/v1/tenants", &body))?;
            if args.conn.output == Output::Json {
                return print_json(&created);
            }
            println!("tenant {} created", created.tenant.name);
            println!("token (shown once): {}", created.token);
            Ok(())
        }
        None => {
            let tenants: Vec<api::Tenant> = rt.block_on(client.get("/v1/tenants"))?;
            if args.conn.output == Output::Json {
                return print_json(&tenants);
            }
            let mut t = Table::new(["ID", "TENANT", "GPU QUOTA", "CPU QUOTA", "MEMORY QUOTA", "CREATED"]);
            for x in &tenants {
                t.row([
                    x.id.to_string(),
                    x.name.clone(),
                    x.gpu_quota.map(|q| q.to_string()).unwrap_or_else(|| "unlimited".into()),
                    limit_text(x.cpu_milli_quota, fmt_cpus),
                    limit_text(x.memory_mib_quota, fmt_mib),
                    fmt_time(x.created_at_ms),
                ]);
            }
            println!("{}", t.render());
            Ok(())
        }
    }
}

pub fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let entries: Vec<api::AuditEntry> =
        runtime()?.block_on(client.get(&format!("/v1/audit?limit={}", args.limit.clamp(1, 1000))))?;
    if args.conn.output == Output::Json {
        return print_json(&entries);
    }
    let mut t = Table::new(["AT", "WHO", "ACTION", "TARGET", "DETAIL"]);
    for e in &entries {
        t.row([fmt_time(e.at_ms), e.actor.clone(), e.action.clone(), e.target.clone(), e.detail.clone()]);
    }
    println!("{}", t.render());
    Ok(())
}

/// This machine's clock, Unix ms.
fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `2026-12-01`, `2026-12` (UTC), `7d`/`12h`/`30m` before `now_ms`, or Unix ms.
pub fn parse_when(text: &str, now_ms: i64) -> anyhow::Result<i64> {
    let text = text.trim();
    let bad = || anyhow::anyhow!("'{text}' is not a time: give 2026-12-01, 2026-12, 7d, 12h, 30m or Unix ms");
    for (suffix, unit_ms) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000)] {
        if let Some(n) = text.strip_suffix(suffix).filter(|n| !n.contains('-'))
            && let Ok(n) = n.parse::<i64>()
        {
            return now_ms.checked_sub(n.checked_mul(unit_ms).ok_or_else(bad)?).ok_or_else(bad);
        }
    }
    let parts: Vec<&str> = text.split('-').collect();
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    match parts.as_slice() {
        [ms] => num(ms),
        [y, m] | [y, m, _] if y.len() == 4 => {
            let (year, month) = (num(y)?, num(m)?);
            if !(1..=12).contains(&month) {
                return Err(bad());
            }
            let day = if let [_, _, d] = parts.as_slice() { num(d)? } else { 1 };
            if !(1..=31).contains(&day) {
                return Err(bad());
            }
            Ok(api::utc_month_start_ms(year, month as u32) + (day - 1) * 86_400_000)
        }
        _ => Err(bad()),
    }
}

/// Adds a report's window (`--since`, `--until`, read at `now`) and tenant to `query`.
fn window_query(
    query: &mut String,
    since: Option<&str>,
    until: Option<&str>,
    tenant: Option<&str>,
    now: i64,
) -> anyhow::Result<()> {
    if let Some(s) = since {
        query.push_str(&format!("&since_ms={}", parse_when(s, now).context("--since")?));
    }
    if let Some(u) = until {
        query.push_str(&format!("&until_ms={}", parse_when(u, now).context("--until")?));
    }
    if let Some(t) = tenant {
        query.push_str(&format!("&tenant={t}"));
    }
    Ok(())
}

pub fn usage(args: UsageArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let now = now_ms();
    let by = args.by;
    let mut query = format!("/v1/usage?by={}", by.as_str());
    window_query(&mut query, args.since.as_deref(), args.until.as_deref(), args.tenant.as_deref(), now)?;
    let report: api::UsageReport = runtime()?.block_on(client.get(&query))?;
    if args.conn.output == Output::Json {
        return print_json(&report);
    }
    let key = by.as_str().to_uppercase();
    if args.csv {
        let mut out = csv::Writer::from_writer(std::io::stdout());
        out.write_record([
            key.to_lowercase().as_str(),
            "tenant",
            "runs",
            "running",
            "gpu_hours",
            "cpu_core_hours",
            "memory_gib_hours",
            "energy_kwh_measured",
            "energy_kwh_estimated",
            "measured_share",
            "facility_kwh",
            "co2_kg",
            "grid_cost_eur",
            "heat_sold_kwh",
            "heat_revenue_eur",
            "cost",
            "currency",
        ])?;
        for r in report.rows.iter().chain(std::iter::once(&report.total)) {
            out.write_record([
                r.key.clone(),
                r.tenant.clone().unwrap_or_default(),
                r.runs.to_string(),
                r.running.to_string(),
                format!("{:.6}", r.gpu_hours),
                format!("{:.6}", r.cpu_core_hours),
                format!("{:.6}", r.memory_gib_hours),
                format!("{:.6}", r.energy_kwh_measured),
                format!("{:.6}", r.energy_kwh_estimated),
                format!("{:.4}", r.measured_share),
                format!("{:.6}", r.facility_kwh),
                format!("{:.6}", r.co2_kg),
                format!("{:.4}", r.grid_cost_eur),
                format!("{:.6}", r.heat_sold_kwh),
                format!("{:.4}", r.heat_revenue_eur),
                format!("{:.4}", r.cost),
                report.currency.clone(),
            ])?;
        }
        out.flush()?;
        return Ok(());
    }
    println!("usage from {} to {}", fmt_time(report.since_ms), fmt_time(report.until_ms));
    let mut t = Table::new([
        key.as_str(),
        "TENANT",
        "RUNS",
        "GPU-H",
        "CPU-CORE-H",
        "MEM-GIB-H",
        "KWH MEASURED",
        "KWH ESTIMATED",
        "MEASURED",
        "FACILITY KWH",
        "PUE",
        "CO2 KG",
        "HEAT SOLD KWH",
        "COST",
    ]);
    for r in report.rows.iter().chain(std::iter::once(&report.total)) {
        let runs = if r.running > 0 { format!("{} ({} running)", r.runs, r.running) } else { r.runs.to_string() };
        let it_kwh = r.energy_kwh_measured + r.energy_kwh_estimated;
        let pue = if it_kwh > 0.0 && r.facility_kwh > 0.0 {
            format!("{:.3}", (it_kwh + r.facility_kwh) / it_kwh)
        } else {
            "-".to_string()
        };
        t.row([
            r.key.clone(),
            r.tenant.clone().unwrap_or_default(),
            runs,
            format!("{:.2}", r.gpu_hours),
            format!("{:.2}", r.cpu_core_hours),
            format!("{:.2}", r.memory_gib_hours),
            format!("{:.3}", r.energy_kwh_measured),
            format!("{:.3}", r.energy_kwh_estimated),
            format!("{:.0}%", r.measured_share * 100.0),
            format!("{:.3}", r.facility_kwh),
            pue,
            format!("{:.3}", r.co2_kg),
            format!("{:.3} ({:.2} EUR)", r.heat_sold_kwh, r.heat_revenue_eur),
            format!("{:.2} {}", r.cost, report.currency),
        ]);
    }
    println!("{}", t.render());
    Ok(())
}

pub fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let now = now_ms();
    let mut query = format!("/v1/history?limit={}", args.limit);
    if let Some(id) = args.after_id {
        query.push_str(&format!("&after_id={id}"));
    }
    window_query(&mut query, args.since.as_deref(), args.until.as_deref(), args.tenant.as_deref(), now)?;
    let h: api::History = runtime()?.block_on(client.get(&query))?;
    if args.conn.output == Output::Json {
        return print_json(&h);
    }
    if args.csv {
        let mut out = csv::Writer::from_writer(std::io::stdout());
        out.write_record([
            "job_id",
            "name",
            "tenant",
            "state",
            "exit_code",
            "submitted",
            "started",
            "finished",
            "elapsed_s",
            "runs",
            "nodes",
            "gpus",
            "node_list",
            "gpu_hours",
            "energy_kwh",
            "cost",
            "currency",
        ])?;
        for r in &h.rows {
            out.write_record([
                r.job_id.to_string(),
                r.name.clone(),
                r.tenant.clone(),
                r.state.as_str().to_string(),
                r.exit_code.map(|c| c.to_string()).unwrap_or_default(),
                fmt_time(r.submitted_ms),
                r.started_ms.map(fmt_time).unwrap_or_default(),
                fmt_time(r.finished_ms),
                format!("{:.3}", r.elapsed_s),
                r.runs.to_string(),
                r.nodes.to_string(),
                format!("{}", r.gpus),
                r.node_list.join(","),
                format!("{:.6}", r.gpu_hours),
                format!("{:.6}", r.energy_kwh),
                format!("{:.4}", r.cost),
                h.currency.clone(),
            ])?;
        }
        out.flush()?;
        return Ok(());
    }
    let mut t = Table::new([
        "JOB", "NAME", "TENANT", "STATE", "EXIT", "START", "END", "ELAPSED", "RUNS", "GPUS", "NODES", "KWH", "COST",
    ]);
    for r in &h.rows {
        t.row([
            r.job_id.to_string(),
            r.name.clone(),
            r.tenant.clone(),
            r.state.as_str().to_string(),
            r.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            r.started_ms.map(fmt_time).unwrap_or_else(|| "-".into()),
            fmt_time(r.finished_ms),
            report::format::fmt_duration_s(r.elapsed_s),
            r.runs.to_string(),
            format!("{}", r.gpus),
            if r.node_list.is_empty() { "-".into() } else { r.node_list.join(",") },
            format!("{:.3}", r.energy_kwh),
            format!("{:.2} {}", r.cost, h.currency),
        ]);
    }
    println!("{}", t.render());
    if h.truncated
        && let Some(last) = h.rows.last()
    {
        println!(
            "(more jobs finished in the window: raise --limit, or go on with --since {} --after-id {})",
            last.finished_ms, last.job_id
        );
    }
    Ok(())
}

pub fn invoice(args: InvoiceArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    let now = now_ms();
    let (year, month) = match &args.month {
        Some(m) => {
            let (y, mo) = m.split_once('-').ok_or_else(|| anyhow::anyhow!("--month {m}: give YEAR-MONTH, 2026-11"))?;
            let (y, mo): (i64, u32) =
                (y.parse().context("--month: the year")?, mo.parse().context("--month: the month")?);
            if !(1..=12).contains(&mo) {
                bail!("--month {m}: the month is 1 to 12");
            }
            (y, mo)
        }
        None => {
            let (y, mo, _) = api::utc_date(now);
            (y, mo)
        }
    };
    let since = api::utc_month_start_ms(year, month);
    let next =
        if month == 12 { api::utc_month_start_ms(year + 1, 1) } else { api::utc_month_start_ms(year, month + 1) };
    let until = next.min(now.max(since + 1));
    let mut query = format!("/v1/usage?by=model&since_ms={since}&until_ms={until}");
    if let Some(t) = &args.tenant {
        query.push_str(&format!("&tenant={t}"));
    }
    let usage: api::UsageReport = rt.block_on(client.get(&query))?;
    let prices: api::Prices = rt.block_on(client.get("/v1/prices"))?;
    let line = |item: String, quantity: f64, unit: &str, unit_price: f64| InvoiceLine {
        item,
        quantity,
        unit: unit.to_string(),
        unit_price,
        amount: quantity * unit_price,
    };
    let mut lines = Vec::new();
    for r in usage.rows.iter().filter(|r| r.gpu_hours > 0.0) {
        let price = prices.gpu_hour_of(&r.key);
        lines.push(line(format!("{} GPUs", r.key), r.gpu_hours, "GPU-hour", price));
    }
    let t = &usage.total;
    lines.push(line("CPUs".into(), t.cpu_core_hours, "core-hour", prices.cpu_core_hour));
    lines.push(line("memory".into(), t.memory_gib_hours, "GiB-hour", prices.memory_gib_hour));
    lines.push(line("energy".into(), t.energy_kwh_measured + t.energy_kwh_estimated, "kWh", prices.energy_kwh));
    if prices.energy_pass_through {
        lines.push(line("energy and facility at the hour's grid price".into(), 1.0, "", t.grid_cost_eur));
    }
    if prices.heat_credit_share > 0.0 {
        let credit = -t.heat_revenue_eur * prices.heat_credit_share;
        lines.push(line(format!("heat credit ({:.1} kWh sold)", t.heat_sold_kwh), 1.0, "", credit));
    }
    let listed: f64 = lines.iter().map(|l| l.amount).sum();
    if (listed - t.cost).abs() > 1e-9 {
        lines.push(line("deferrable jobs' discount".into(), 1.0, "", t.cost - listed));
    }
    let invoice = Invoice {
        tenant: args.tenant.clone(),
        month: format!("{year:04}-{month:02}"),
        currency: usage.currency.clone(),
        lines,
        total: t.cost,
    };
    if args.conn.output == Output::Json {
        return print_json(&invoice);
    }
    if args.csv {
        let mut out = csv::Writer::from_writer(std::io::stdout());
        out.write_record(["item", "quantity", "unit", "unit_price", "amount", "currency"])?;
        for l in &invoice.lines {
            let (q, p, a) = (format!("{:.6}", l.quantity), format!("{:.6}", l.unit_price), format!("{:.4}", l.amount));
            out.write_record([l.item.as_str(), &q, &l.unit, &p, &a, &invoice.currency])?;
        }
        out.write_record(["total", "", "", "", &format!("{:.4}", invoice.total), &invoice.currency])?;
        out.flush()?;
        return Ok(());
    }
    let c = &invoice.currency;
    println!(
        "invoice for {}, {} (UTC), by the price list in force",
        invoice.tenant.as_deref().unwrap_or("you"),
        invoice.month
    );
    let mut table = Table::new(["ITEM", "QUANTITY", "UNIT", "UNIT PRICE", "AMOUNT"]);
    for l in &invoice.lines {
        table.row([
            l.item.clone(),
            format!("{:.3}", l.quantity),
            l.unit.clone(),
            format!("{:.4} {c}", l.unit_price),
            format!("{:.2} {c}", l.amount),
        ]);
    }
    table.row(["total".into(), String::new(), String::new(), String::new(), format!("{:.2} {c}", invoice.total)]);
    println!("{}", table.render());
    Ok(())
}

pub fn prices(args: PricesArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    let prices: api::Prices = match args.action {
        None => rt.block_on(client.get("/v1/prices"))?,
        Some(PricesAction::Set {
            currency,
            gpu_hour,
            gpu_hour_default,
            cpu_core_hour,
            memory_gib_hour,
            energy_kwh,
            deferrable_discount,
            energy_pass_through,
            heat_credit_share,
        }) => {
            let mut by_model = BTreeMap::new();
            for item in &gpu_hour {
                let (model, price) =
                    item.split_once('=').ok_or_else(|| anyhow::anyhow!("--gpu-hour {item}: give MODEL=PRICE"))?;
                let price: f64 = price.trim().parse().with_context(|| format!("--gpu-hour {item}: not a price"))?;
                by_model.insert(model.trim().to_string(), price);
            }
            let body = api::Prices {
                currency,
                gpu_hour: by_model,
                gpu_hour_default,
                cpu_core_hour,
                memory_gib_hour,
                energy_kwh,
                deferrable_discount,
                energy_pass_through,
                heat_credit_share,
            };
            rt.block_on(client.put("/v1/prices", &body))?
        }
    };
    if args.conn.output == Output::Json {
        return print_json(&prices);
    }
    let c = &prices.currency;
    let mut t = Table::new(["ITEM", "PRICE"]);
    for (model, p) in &prices.gpu_hour {
        t.row([format!("{model} GPU-hour"), format!("{p:.4} {c}")]);
    }
    t.row(["other GPU-hour".to_string(), format!("{:.4} {c}", prices.gpu_hour_default)]);
    t.row(["CPU core-hour".to_string(), format!("{:.4} {c}", prices.cpu_core_hour)]);
    t.row(["memory GiB-hour".to_string(), format!("{:.4} {c}", prices.memory_gib_hour)]);
    t.row(["energy kWh".to_string(), format!("{:.4} {c}", prices.energy_kwh)]);
    t.row(["deferrable discount".to_string(), format!("{:.0}%", prices.deferrable_discount * 100.0)]);
    let pass = if prices.energy_pass_through { "charged at the hour's grid price" } else { "no" };
    t.row(["energy pass-through".to_string(), pass.to_string()]);
    t.row(["heat credit".to_string(), format!("{:.0}% of the heat revenue", prices.heat_credit_share * 100.0)]);
    println!("{}", t.render());
    Ok(())
}

pub fn budget(args: BudgetArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    let b: api::Budget = match args.action {
        Some(BudgetAction::Set { tenant, monthly, remove, stop_running }) => {
            let body = api::BudgetUpdate { monthly: if remove { None } else { monthly }, stop_running };
            rt.block_on(client.put(&format!("/v1/tenants/{tenant}/budget"), &body))?
        }
        None => match &args.tenant {
            Some(t) => rt.block_on(client.get(&format!("/v1/budget?tenant={t}")))?,
            None => rt.block_on(client.get("/v1/budget"))?,
        },
    };
    if args.conn.output == Output::Json {
        return print_json(&b);
    }
    let c = &b.currency;
    let limit = match b.monthly {
        None => "none".to_string(),
        Some(m) if b.stop_running => format!("{m:.2} {c} (stops running work)"),
        Some(m) => format!("{m:.2} {c}"),
    };
    let mut t = Table::new(["TENANT", "MONTH", "BUDGET", "SPENT", "HELD", "LEFT"]);
    let left = b.monthly.map_or_else(|| "-".to_string(), |m| format!("{:.2} {c}", m - b.spent - b.held));
    t.row([
        b.tenant.clone(),
        b.month.clone(),
        limit,
        format!("{:.2} {c}", b.spent),
        format!("{:.2} {c}", b.held),
        left,
    ]);
    println!("{}", t.render());
    Ok(())
}

pub fn join_tokens(args: JoinTokensArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    match args.action {
        Some(JoinTokensAction::Create { uses, ttl_s, node }) => {
            let body = api::NewJoinToken { uses: Some(uses), ttl_s: Some(ttl_s), node };
            let made: api::JoinToken = rt.block_on(client.post("/v1/join-tokens", &body))?;
            if args.conn.output == Output::Json {
                return print_json(&made);
            }
            let until = made.expires_at_ms.map(fmt_time).unwrap_or_else(|| "never".into());
            println!("join token {} created: {uses} join(s), valid until {until}", made.id);
            println!("token (shown once): {}", made.token);
            Ok(())
        }
        Some(JoinTokensAction::Revoke { id }) => {
            rt.block_on(client.delete(&format!("/v1/join-tokens/{id}")))?;
            println!("join token {id} revoked");
            Ok(())
        }
        None => {
            let tokens: Vec<api::JoinTokenInfo> = rt.block_on(client.get("/v1/join-tokens"))?;
            if args.conn.output == Output::Json {
                return print_json(&tokens);
            }
            let mut t = Table::new(["ID", "STATE", "USES LEFT", "NODE", "CREATED", "EXPIRES"]);
            for x in &tokens {
                t.row([
                    x.id.clone(),
                    x.state.clone(),
                    x.uses_left.map(|u| u.to_string()).unwrap_or_else(|| "any".into()),
                    x.node.clone().unwrap_or_else(|| "any".into()),
                    fmt_time(x.created_at_ms),
                    x.expires_at_ms.map(fmt_time).unwrap_or_else(|| "never".into()),
                ]);
            }
            println!("{}", t.render());
            Ok(())
        }
    }
}

pub fn quota(args: QuotaArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let rt = runtime()?;
    match args.action {
        Some(QuotaAction::Set { tenant, gpus, cpus, memory, max_priority }) => {
            if gpus.is_none() && cpus.is_none() && memory.is_none() && max_priority.is_none() {
                bail!("nothing to set: give GPUs, --cpus, --memory (each a number or `unlimited`) or --max-priority");
            }
            let tenants: Vec<api::Tenant> = rt.block_on(client.get("/v1/tenants"))?;
            let current =
                tenants.into_iter().find(|t| t.name == tenant).with_context(|| format!("no tenant '{tenant}'"))?;
            let limit = |given: Option<String>, kept: Option<u64>, parse: fn(&str) -> Result<u64, String>| match given
                .as_deref()
            {
                None => Ok(kept),
                Some("unlimited" | "none") => Ok(None),
                Some(v) => parse(v).map(Some).map_err(anyhow::Error::msg),
            };
            let parse_gpus = |v: &str| v.parse::<u32>().map(u64::from).map_err(|_| format!("'{v}': a number of GPUs"));
            let update = api::QuotaUpdate {
                gpu_quota: limit(gpus, current.gpu_quota.map(u64::from), parse_gpus)?
                    .map(|g| u32::try_from(g).unwrap_or(u32::MAX)),
                cpu_milli_quota: limit(cpus, current.cpu_milli_quota, parse_cpus)?,
                memory_mib_quota: limit(memory, current.memory_mib_quota, parse_memory_mib)?,
                max_priority: Some(max_priority.unwrap_or(current.max_priority)),
            };
            let t: api::Tenant = rt.block_on(client.put(&format!("/v1/tenants/{tenant}/quota"), &update))?;
            if args.conn.output == Output::Json {
                return print_json(&t);
            }
            println!(
                "tenant {}: {} GPUs, {} CPUs, {} of memory",
                t.name,
                t.gpu_quota.map(|q| q.to_string()).unwrap_or_else(|| "unlimited".into()),
                limit_text(t.cpu_milli_quota, fmt_cpus),
                limit_text(t.memory_mib_quota, fmt_mib),
            );
            Ok(())
        }
        None => {
            let q: api::Quota = rt.block_on(client.get("/v1/quota"))?;
            if args.conn.output == Output::Json {
                return print_json(&q);
            }
            println!("tenant {}", q.tenant);
            let mut t = Table::new(["RESOURCE", "QUOTA", "USED", "PENDING"]);
            t.row([
                "GPUs".to_string(),
                limit_text(q.gpu_quota.map(u64::from), |g| g.to_string()),
                q.gpus_used.to_string(),
                q.gpus_pending.to_string(),
            ]);
            t.row([
                "CPUs".to_string(),
                limit_text(q.cpu_milli_quota, fmt_cpus),
                fmt_cpus(q.cpu_milli_used),
                fmt_cpus(q.cpu_milli_pending),
            ]);
            t.row([
                "memory".to_string(),
                limit_text(q.memory_mib_quota, fmt_mib),
                fmt_mib(q.memory_mib_used),
                fmt_mib(q.memory_mib_pending),
            ]);
            println!("{}", t.render());
            Ok(())
        }
    }
}

/// A limit for people: its amount, or `unlimited`.
fn limit_text(limit: Option<u64>, show: fn(u64) -> String) -> String {
    limit.map(show).unwrap_or_else(|| "unlimited".into())
}

/// Thousandths of a CPU as CPUs (`2.5`).
fn fmt_cpus(milli: u64) -> String {
    if milli.is_multiple_of(1000) {
        (milli / 1000).to_string()
    } else {
        format!("{:.3}", milli as f64 / 1000.0).trim_end_matches('0').to_string()
    }
}

/// MiB as people read sizes (`512M`, `16G`, `1.5T`).
fn fmt_mib(mib: u64) -> String {
    let (value, unit) = if mib >= 1 << 20 {
        (mib as f64 / f64::from(1u32 << 20), "T")
    } else if mib >= 1 << 10 {
        (mib as f64 / 1024.0, "G")
    } else {
        (mib as f64, "M")
    };
    let text = format!("{value:.1}");
    format!("{}{unit}", text.trim_end_matches(".0"))
}

pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let client = Client::new(&args.conn)?;
    let c: api::ClusterStatus = runtime()?.block_on(client.get("/v1/cluster"))?;
    if args.conn.output == Output::Json {
        return print_json(&c);
    }
    let mut t = Table::new(["LEADER", "ADDRESS", "EPOCH", "SINCE", "LEASE RENEWED", "LEASE ENDS"]);
    match &c.leader {
        Some(l) => t.row([
            l.replica.clone(),
            l.address.clone().unwrap_or_else(|| "-".into()),
            l.epoch.to_string(),
            fmt_time(l.since_ms),
            fmt_time(l.renewed_ms),
            fmt_time(l.expires_ms),
        ]),
        None => t.row(["(none)".to_string(), "-".into(), "-".into(), "-".into(), "-".into(), "-".into()]),
    };
    println!("{}", t.render().trim_end());
    if !c.replicas.is_empty() {
        let mut r = Table::new(["REPLICA", "ADDRESS", "ROLE", "STARTED", "LAST SEEN"]);
        for x in &c.replicas {
            let role = if x.leads { "leader" } else { "standby" };
            r.row([x.name.clone(), x.address.clone(), role.to_string(), fmt_time(x.started_ms), fmt_time(x.seen_ms)]);
        }
        println!("{}", r.render().trim_end());
    }
    println!("answered by {} ({}), on {}", c.replica, if c.leads { "the leader" } else { "a standby" }, c.database);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_print_in_utc() {
        assert_eq!(super::fmt_time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::fmt_time(1_709_251_199_000), "2024-02-29 23:59:59Z");
    }

    #[test]
    fn cpus_and_sizes_print_as_they_are_typed() {
        assert_eq!(super::fmt_cpus(2000), "2");
        assert_eq!(super::fmt_cpus(2500), "2.5");
        assert_eq!(super::fmt_cpus(125), "0.125");
        assert_eq!(super::fmt_mib(512), "512M");
        assert_eq!(super::fmt_mib(16 * 1024), "16G");
        assert_eq!(super::fmt_mib(1536 * 1024), "1.5T");
        for typed in ["512M", "16G", "1.5T"] {
            assert_eq!(super::fmt_mib(super::parse_memory_mib(typed).unwrap()), typed);
        }
    }
}
