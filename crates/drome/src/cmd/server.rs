//! `drome server`: the control plane on SQLite or PostgreSQL.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The Valence fleet, built in so that `drome server` and `drome up` work from any directory.
pub const VALENCE_TOML: &str = include_str!("../../../../fleets/valence.toml");

/// Where the embedded database lives by default.
pub const DEFAULT_DB: &str = "sqlite://drome-data/drome.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8420";

#[derive(clap::Args, Debug)]
pub struct ServerArgs {
    /// Database: sqlite://PATH (embedded, WAL) or postgres://USER@HOST/DB.
    #[arg(long, env = "DROME_DB", default_value = DEFAULT_DB)]
    pub db: String,
    /// Address to listen on.
    #[arg(long, env = "DROME_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The admin token; when unset, the one stored earlier is kept, or a new one is made and
    /// printed once.
    #[arg(long, env = "DROME_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Fleet TOML; the built-in Valence fleet when unset.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Scheduling policy.
    #[arg(long, default_value = "fifo")]
    pub policy: String,
    /// A preempting policy (tiresias, srpt, drome, quota) leaves a running job alone until it
    /// has run this many seconds (Slurm's PreemptExemptTime).
    #[arg(long, default_value_t = 600.0)]
    pub preempt_exempt_s: f64,
    /// Seconds the leader's lease runs unrenewed. Several servers on one PostgreSQL database
    /// are replicas: each serves the API, one leads (schedules, talks to agents), and another
    /// takes over this long after the leader stops renewing. On SQLite a starting server takes
    /// the lease at once.
    #[arg(long, default_value_t = 5.0)]
    pub leader_lease_s: f64,
    /// The URL other replicas reach this server's API at, to forward what only the leader
    /// answers (node figures, job output, power caps). Default: the listen address, or this
    /// host's name with its port when listening on every interface.
    #[arg(long, env = "DROME_ADVERTISE", value_name = "URL")]
    pub advertise: Option<String>,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub limits: TenantLimitArgs,
    /// Days the state changes of ended jobs are kept (their rows stay); 0 keeps them for good.
    #[arg(long, default_value_t = 90)]
    pub keep_events_days: u32,
    /// Days used-up, expired or revoked join tokens are kept; 0 keeps them for good.
    #[arg(long, default_value_t = 7)]
    pub keep_spent_tokens_days: u32,
    /// Without --agents, the work runs on in-process nodes that only wait: seconds such a node
    /// runs a command that declares no duration.
    #[arg(long, alias = "virtual-seconds", default_value_t = 10.0)]
    pub in_process_seconds: f64,
    /// Run the work on node agents (`drome agent`) instead of in-process virtual nodes.
    #[arg(long)]
    pub agents: bool,
    /// Agents heartbeat this often, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    pub heartbeat_ms: u64,
    /// A node whose agent is silent this long, in milliseconds, is lost: it takes no new work.
    /// Its agent, unable to renew, kills the node's runs by itself after the same time.
    #[arg(long, default_value_t = 20000)]
    pub lease_ms: u64,
    /// After a node is lost, its runs end as lost (requeued or failed, their GPUs freed) this
    /// many milliseconds later, unless the node is back: time for its agent to have stopped them.
    #[arg(long, default_value_t = 2000)]
    pub lease_grace_ms: u64,
    /// Seconds a node's credential serves before the server hands it a new one in a heartbeat's
    /// answer (the old one works until the node uses the new one).
    #[arg(long, default_value_t = 86_400)]
    pub credential_rotation_s: u64,
    // For sites with a grid cap (`grid_power_cap_mw` in the fleet).
    #[command(flatten)]
    pub power: super::sim::PowerModeArgs,
    /// Hold jobs submitted as deferrable for a clearly better hour within the day-ahead horizon:
    /// price (EUR/MWh), carbon (gCO2/kWh) of the shipped French grid year, or heat (the heat
    /// network's demand in the shipped Valence climate year), by UTC hour of the year.
    #[arg(long)]
    pub defer_for: Option<String>,
    /// Price-following GPU caps, EUR_PER_MWH:CAP (e.g. 73:0.7; needs --agents): in UTC hours whose
    /// price in the shipped French grid year is above EUR_PER_MWH, no GPU runs above CAP of its
    /// board limit (less energy per unit of work in dear hours, a few percent slower).
    #[arg(long)]
    pub price_cap: Option<String>,
    /// Longest a deferrable job waits past its submit time, hours.
    #[arg(long, default_value_t = 24.0)]
    pub max_defer_hours: f64,
}

/// Logs to stderr, `info` unless `RUST_LOG` says otherwise.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

pub fn load_fleet(path: Option<&std::path::Path>) -> anyhow::Result<model::Fleet> {
    match path {
        Some(p) => super::load_fleet(p),
        None => {
            model::fleet_toml::parse_fleet(VALENCE_TOML).map_err(|e| anyhow::anyhow!("built-in valence fleet: {e}"))
        }
    }
}

/// What one tenant may ask of the API; past a limit it gets 429 with Retry-After. 0 turns a
/// limit off.
#[derive(clap::Args, Debug, Clone)]
pub struct TenantLimitArgs {
    /// Requests a second each tenant may make, on average.
    #[arg(long, default_value_t = 200.0)]
    pub tenant_rate: f64,
    /// Requests a tenant may make at once after a quiet while.
    #[arg(long, default_value_t = 1000.0)]
    pub tenant_burst: f64,
    /// Event streams a tenant may hold open at once.
    #[arg(long, default_value_t = 16)]
    pub tenant_streams: u32,
    /// Jobs a tenant may have waiting at once.
    #[arg(long, default_value_t = 100_000)]
    pub tenant_pending_jobs: u64,
    /// Requests of one tenant served at once; the others wait their turn, so a tenant with
    /// many connections takes no more of the server than one with a few (event streams and
    /// output follows are counted by --tenant-streams instead).
    #[arg(long, default_value_t = 4)]
    pub tenant_concurrency: u32,
}

impl TenantLimitArgs {
    pub fn limits(&self) -> anyhow::Result<server::limits::TenantLimits> {
        for (name, v) in [("--tenant-rate", self.tenant_rate), ("--tenant-burst", self.tenant_burst)] {
            anyhow::ensure!(v.is_finite() && (0.0..=1e9).contains(&v), "{name} must be between 0 and 1e9");
        }
        Ok(server::limits::TenantLimits {
            requests_per_s: self.tenant_rate,
            burst: self.tenant_burst,
            streams: self.tenant_streams,
            pending_jobs: self.tenant_pending_jobs,
            concurrency: self.tenant_concurrency,
        })
    }
}

/// How the server speaks HTTPS, and how long clients may take.
#[derive(clap::Args, Debug, Clone)]
pub struct TlsArgs {
    /// Serve HTTPS with this certificate chain (PEM, the server's own certificate first).
    #[arg(long, env = "DROME_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "DROME_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The CA(s) other replicas' certificates are signed by, trusted when this replica forwards
    /// to the leader; by default the certificates of --tls-cert.
    #[arg(long, value_name = "PEM")]
    pub tls_peer_ca: Option<PathBuf>,
    /// Seconds a client may take to send a request's headers, or leave its connection idle
    /// between requests; longer, it is cut off.
    #[arg(long, default_value_t = 30.0)]
    pub header_timeout_s: f64,
    /// Seconds a request may take from its headers to its answer, its body included (event
    /// streams and output aside); longer, it is answered 408.
    #[arg(long, default_value_t = 60.0)]
    pub request_timeout_s: f64,
}

impl TlsArgs {
    /// Sets the server's TLS and timeouts from these options.
    pub fn apply(&self, config: &mut server::Config) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.header_timeout_s.is_finite() && (0.1..=3600.0).contains(&self.header_timeout_s),
            "--header-timeout-s must be between 0.1 and 3600 seconds"
        );
        config.timeouts.header = Duration::from_secs_f64(self.header_timeout_s);
        anyhow::ensure!(
            self.request_timeout_s.is_finite() && (0.1..=3600.0).contains(&self.request_timeout_s),
            "--request-timeout-s must be between 0.1 and 3600 seconds"
        );
        config.timeouts.request = Duration::from_secs_f64(self.request_timeout_s);
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls = Some(tls::server_config(cert, key)?);
            let peers = self.tls_peer_ca.as_ref().unwrap_or(cert);
            config.peer_tls = Some(tls::client_config(&tls::Trust::CaFile(peers.clone()))?);
        }
        Ok(())
    }
}

pub fn config(args: &ServerArgs) -> anyhow::Result<server::Config> {
    let fleet = load_fleet(args.fleet.as_deref())?;
    let mut config = server::Config::new(args.db.clone(), args.listen, fleet);
    args.tls.apply(&mut config)?;
    config.tenant_limits = args.limits.limits()?;
    let days = |d: u32| (d > 0).then(|| Duration::from_secs(u64::from(d) * 86_400));
    config.keep_events = days(args.keep_events_days);
    config.keep_spent_tokens = days(args.keep_spent_tokens_days);
    config.admin_token = args.admin_token.clone().filter(|t| !t.trim().is_empty());
    config.policy = args.policy.clone();
    anyhow::ensure!(
        args.preempt_exempt_s.is_finite() && (0.0..=1e9).contains(&args.preempt_exempt_s),
        "--preempt-exempt-s must be between 0 and 1e9 seconds"
    );
    config.preempt_exempt = Duration::from_secs_f64(args.preempt_exempt_s);
    anyhow::ensure!(
        args.leader_lease_s.is_finite() && (0.3..=3600.0).contains(&args.leader_lease_s),
        "--leader-lease-s must be between 0.3 and 3600 seconds"
    );
    config.leader_lease = Duration::from_secs_f64(args.leader_lease_s);
    if let Some(url) = &args.advertise {
        anyhow::ensure!(
            url.starts_with("http://") || url.starts_with("https://"),
            "--advertise must be an http:// or https:// URL, not '{url}'"
        );
        config.advertise = Some(url.trim_end_matches('/').to_string());
    }
    config.power_mode = args.power.mode()?;
    anyhow::ensure!(
        args.agents || config.power_mode == sched::power::PowerMode::Admission,
        "--power-mode dynamic needs --agents: node agents apply the GPU caps"
    );
    if let Some(text) = &args.price_cap {
        let pc = super::sim::parse_price_cap(text)?;
        anyhow::ensure!(args.agents, "--price-cap needs --agents: node agents apply the GPU caps");
        let grid = energy::GridYear::france()?;
        let caps = (0..energy::HOURS_PER_YEAR)
            .map(|h| if grid.price_eur_per_mwh(h) > pc.above_eur_per_mwh { pc.gpu_cap } else { 1.0 })
            .collect();
        config.gpu_cap_by_hour = Some(caps);
    }
    if let Some(name) = &args.defer_for {
        let Some(by) = sched::defer::DeferFor::parse(name) else {
            anyhow::bail!("unknown --defer-for '{name}' (known: price, carbon, heat)");
        };
        let h = args.max_defer_hours;
        anyhow::ensure!(h.is_finite() && (0.0..=168.0).contains(&h), "--max-defer-hours must be in 0..168, got {h}");
        let power = sim::PowerOptions {
            model: energy::EnergyModel::new(&config.fleet, None, &energy::HeatOptions::default()),
            temperature: energy::TemperatureYear::valence()?,
            grid: energy::GridYear::france()?,
            start_hour: 0,
            cap_watts: None,
            mode: sched::power::PowerMode::Admission,
            price_cap: None,
        };
        let mut gate = sched::defer::DeferralGate::new(power.deferral_costs(by), 0);
        gate.max_delay = model::SimDuration::from_secs_f64(h * 3600.0);
        config.deferral = Some(gate);
    }
    let secs = if args.in_process_seconds.is_finite() && args.in_process_seconds >= 0.0 {
        args.in_process_seconds
    } else {
        10.0
    };
    config.executor = std::sync::Arc::new(server::InProcessNodes { default_duration: Duration::from_secs_f64(secs) });
    if args.agents {
        anyhow::ensure!(
            args.heartbeat_ms > 0 && args.lease_ms > args.heartbeat_ms,
            "--lease-ms must exceed --heartbeat-ms"
        );
        let mut lease =
            server::LeaseConfig::new(Duration::from_millis(args.heartbeat_ms), Duration::from_millis(args.lease_ms));
        lease.grace = Duration::from_millis(args.lease_grace_ms);
        lease.credential_rotation = Duration::from_secs(args.credential_rotation_s.max(1));
        config.agents = Some(lease);
    }
    Ok(config)
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

pub fn run(args: ServerArgs) -> anyhow::Result<()> {
    init_logging();
    let config = config(&args)?;
    runtime()?.block_on(async move {
        let running = server::start(config).await?;
        let role = if running.epoch.is_some() { "leading" } else { "standby: another replica leads" };
        println!("drome server listening on http://{} ({role})", running.addr);
        if let Some(token) = &running.generated_admin_token {
            println!("admin token (shown once, stored hashed): {token}");
        }
        tokio::select! {
            r = running.wait() => r?,
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); }
        }
        Ok(())
    })
}
