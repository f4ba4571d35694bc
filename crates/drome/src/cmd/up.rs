//! `drome up`: everything a newcomer needs on a fresh machine, in one command. The server on the
//! embedded SQLite, the Valence fleet served by in-process virtual nodes, a demo tenant, and the
//! first commands to try.

use super::server::{DEFAULT_LISTEN, init_logging, load_fleet, runtime};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Where the embedded database lives.
    #[arg(long, default_value = "drome-data")]
    pub data_dir: PathBuf,
    /// Fleet TOML; the built-in Valence fleet when unset.
    #[arg(long)]
    pub fleet: Option<PathBuf>,
    /// Seconds a virtual node runs a command that declares no duration.
    #[arg(long, default_value_t = 10.0)]
    pub virtual_seconds: f64,
    /// Name of the demo tenant.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    init_logging();
    let fleet = load_fleet(args.fleet.as_deref())?;
    let (fleet_name, nodes, gpus) = (fleet.name.clone(), fleet.nodes.len(), fleet.total_gpus());
    let db = format!("sqlite://{}", args.data_dir.join("drome.db").display());
    let mut config = server::Config::new(db.clone(), args.listen, fleet);
    let secs =
        if args.virtual_seconds.is_finite() && args.virtual_seconds >= 0.0 { args.virtual_seconds } else { 10.0 };
    config.executor = std::sync::Arc::new(server::VirtualNodes { default_duration: Duration::from_secs_f64(secs) });
    runtime()?.block_on(async move {
        let running = server::start(config).await?;
        let store = running.store().clone();
        // A demo tenant; on a later `drome up` it gets a fresh token (the old one is only a hash).
        let token = match store.tenant_by_name(&args.tenant).await? {
            Some(t) => server::rotate_token(&store, t.id).await.map_err(|e| anyhow::anyhow!("{e}"))?,
            None => server::create_tenant(&store, &args.tenant, None).await.map_err(|e| anyhow::anyhow!("{e}"))?.1,
        };
        let url = format!("http://{}", running.addr);
        println!();
        println!("drome is up: {fleet_name} fleet, {nodes} virtual nodes, {gpus} GPUs, store {db}");
        println!();
        println!("  API       {url}/v1   (docs: {url}/v1/docs)");
        println!("  metrics   {url}/metrics");
        println!("  tenant    {}", args.tenant);
        println!("  token     {token}");
        if let Some(admin) = &running.generated_admin_token {
            println!("  admin     {admin}   (shown once)");
        }
        println!();
        println!("In another terminal:");
        println!();
        println!("  export DROME_URL={url} DROME_TOKEN={token}");
        println!("  drome submit --gpus 8 --nodes 2 --gpu-model H200 -- sleep 30");
        println!("  drome jobs");
        println!("  drome nodes --sites");
        println!();
        println!("Ctrl-C stops the server; the jobs stay in {}.", args.data_dir.display());
        tokio::select! {
            _ = running.wait() => {}
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); }
        }
        Ok(())
    })
}
