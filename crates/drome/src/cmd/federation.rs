//! `drome federation`: one API over many sites, each a `drome server` of its own.

use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
#[command(after_help = "\
Example: three sites, each its own `drome server`, one API over them:

  drome federation --sites sites.toml --admin-token \"$FED_ADMIN\" --listen 127.0.0.1:8400
  DROME_URL=http://127.0.0.1:8400 DROME_TOKEN=$FED_ADMIN drome tenants create lab
  DROME_URL=http://127.0.0.1:8400 DROME_TOKEN=$LAB drome submit --gpus 8 -- python train.py
  DROME_URL=http://127.0.0.1:8400 DROME_TOKEN=$LAB drome job 1      # its site, and why

sites.toml names each site's URL and admin token, optionally its region, price, carbon,
heat network demand and fiber, and tenants bound to a site or a region:

  [[site]]
  name = \"valence\"
  url = \"http://10.0.0.1:8420\"
  admin_token_file = \"valence.admin\"
  region = \"FR-ARA\"
  heat_demand_mw = 3.0

  [[tenant]]
  name = \"sovereign-lab\"
  region = \"FR-ARA\"")]
pub struct FederationArgs {
    /// The sites file.
    #[arg(long)]
    pub sites: PathBuf,
    /// The federation's own record: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "DROME_FEDERATION_DB", default_value = "sqlite://drome-federation/federation.db")]
    pub db: String,
    #[arg(long, env = "DROME_FEDERATION_LISTEN", default_value = "127.0.0.1:8400")]
    pub listen: SocketAddr,
    /// The federation's admin token (tenants are made with it).
    #[arg(long, env = "DROME_FEDERATION_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: String,
    /// How a site is chosen among those that may run a job: capacity, price-carbon, heat, data.
    #[arg(long, default_value = "capacity")]
    pub dispatch: String,
    /// Each site is polled (its report, its lease, its jobs) this often.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// A site that has not answered for this long is lost: its waiting jobs move elsewhere.
    #[arg(long, default_value_t = 5000)]
    pub loss_after_ms: u64,
    /// How long each renewal lets a site start federated jobs; a lost site's waiting jobs move
    /// only once it has surely lapsed.
    #[arg(long, default_value_t = 6000)]
    pub lease_ms: u64,
    /// A call to a site not answered within this is no answer.
    #[arg(long, default_value_t = 2000)]
    pub request_timeout_ms: u64,
    /// A lost site's runs that restart on failure (`--restart on-failure`) restart elsewhere this
    /// long after its lease has surely lapsed (at least two leases). Keep it above the sites'
    /// agent lease and grace (`drome server --lease-ms 20000 --lease-grace-ms 2000` by default):
    /// a site whose server died has its runs stopped by its agents, a cut-off site by itself.
    #[arg(long, default_value_t = 30_000)]
    pub restart_after_ms: u64,
}

pub fn run(args: FederationArgs) -> anyhow::Result<()> {
    super::server::init_logging();
    let config = federation::config::SitesConfig::load(&args.sites)?;
    let policy: dispatch::DispatchPolicy = args.dispatch.parse().map_err(|e| anyhow::anyhow!("--dispatch: {e}"))?;
    anyhow::ensure!(!args.admin_token.trim().is_empty(), "--admin-token must not be empty");
    anyhow::ensure!(args.poll_ms >= 50 && args.lease_ms >= 500, "--poll-ms at least 50, --lease-ms at least 500");
    let mut options = federation::FederationOptions::new(args.admin_token.trim().to_string());
    options.policy = policy;
    options.poll = Duration::from_millis(args.poll_ms);
    options.loss_after = Duration::from_millis(args.loss_after_ms);
    options.lease = Duration::from_millis(args.lease_ms);
    options.request_timeout = Duration::from_millis(args.request_timeout_ms.max(100));
    options.restart_after = Duration::from_millis(args.restart_after_ms);
    super::server::runtime()?.block_on(async move {
        let store = store::Store::connect(&args.db).await.with_context(|| format!("opening {}", args.db))?;
        let sites = config.sites.len();
        let fed = federation::Federation::new(store, config, options)?;
        let _tasks = federation::spawn_tasks(&fed);
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        println!("drome federation listening on http://{} over {sites} sites ({policy} dispatch)", args.listen);
        let app = federation::router(fed);
        tokio::select! {
            r = axum::serve(listener, app) => r.context("serving")?,
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); }
        }
        Ok(())
    })
}
