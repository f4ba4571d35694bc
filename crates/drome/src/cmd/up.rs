//! `drome up`: everything a newcomer needs on a fresh machine, in one command. The server on the
//! embedded SQLite, the Valence fleet served by nodes with declared GPUs, a demo tenant, and the first
//! commands to try. The nodes are node agents run in this process: the same code as
//! `drome agent --declared-gpus`, joined over loopback, running the work as real processes under
//! the data directory.

use super::server::{DEFAULT_LISTEN, init_logging, load_fleet, runtime};
use anyhow::Context;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
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
    /// Name of the demo tenant.
    #[arg(long, default_value = "demo")]
    pub tenant: String,
    #[command(flatten)]
    pub sandbox: super::agent::SandboxArgs,
    /// Serve plain HTTP: tokens and jobs then travel in clear (loopback experiments only). By
    /// default the API is HTTPS with a certificate made once under the data directory's `tls/`,
    /// signed by a CA of its own that the CLI is told to trust.
    #[arg(long)]
    pub plain_http: bool,
    #[command(flatten)]
    pub limits: super::server::TenantLimitArgs,
}

/// The names the self-made certificate holds: loopback, the listen address, this host.
fn certificate_names(listen: SocketAddr) -> Vec<String> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    if !host.trim().is_empty() {
        names.push(host.trim().to_string());
    }
    names.sort();
    names.dedup();
    names
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    init_logging();
    let fleet = load_fleet(args.fleet.as_deref())?;
    let (fleet_name, nodes, gpus) = (fleet.name.clone(), fleet.nodes.len(), fleet.total_gpus());
    let db = format!("sqlite://{}", args.data_dir.join("drome.db").display());
    let node_gpus: Vec<(String, u32, String)> = fleet
        .node_ids()
        .map(|id| {
            let n = fleet.node(id);
            let model = fleet.node_gpu_model(id).map(|m| m.name.clone()).unwrap_or_else(|| "H200".into());
            (n.name.clone(), u32::from(n.gpu_count), model)
        })
        .collect();
    let sandbox = args.sandbox.sandbox()?;
    // Runs pass through the data directory to their own; they list nothing and read no database.
    // (A directory given that was there keeps its mode.)
    if !args.data_dir.is_dir() {
        std::fs::create_dir_all(&args.data_dir).with_context(|| format!("cannot make {}", args.data_dir.display()))?;
        std::fs::set_permissions(&args.data_dir, std::fs::Permissions::from_mode(0o711))
            .with_context(|| format!("cannot restrict {}", args.data_dir.display()))?;
    }
    let images = args.sandbox.images(sandbox.as_ref(), &std::path::absolute(&args.data_dir)?);
    let mut config = server::Config::new(db.clone(), args.listen, fleet);
    config.agents = Some(server::LeaseConfig::default());
    config.tenant_limits = args.limits.limits()?;
    let identity = if args.plain_http {
        None
    } else {
        let tls_dir = std::path::absolute(args.data_dir.join("tls"))?;
        let made = tls::self_signed(&tls_dir, &certificate_names(args.listen))?;
        if made.made {
            tracing::info!(dir = %tls_dir.display(), "made the server's certificate and its CA");
        }
        config.tls = Some(tls::server_config(&made.cert, &made.key)?);
        config.peer_tls = Some(tls::client_config(&tls::Trust::CaFile(made.ca.clone()))?);
        Some(made)
    };
    let trust = identity.as_ref().map(|m| tls::Trust::CaFile(m.ca.clone()));
    let scheme = if identity.is_some() { "https" } else { "http" };
    runtime()?.block_on(async move {
        let running = server::start(config).await?;
        let store = running.store().clone();
        for file in ["drome.db", "drome.db-wal", "drome.db-shm"] {
            let path = args.data_dir.join(file);
            if path.exists() {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("cannot restrict {}", path.display()))?;
            }
        }
        // A demo tenant, and its token kept in the data directory (0600): a later `drome up`
        // gives the same one back while it still works (the store keeps only its hash).
        let token_file = args.data_dir.join("demo-token");
        let kept = std::fs::read_to_string(&token_file).ok().map(|s| s.trim().to_string());
        let token = match store.tenant_by_name(&args.tenant).await?.filter(|t| t.removed_ms.is_none()) {
            Some(t) => {
                let still_good = match &kept {
                    Some(k) => store
                        .tenant_by_token_hash(&server::auth::hash_token(k))
                        .await?
                        .is_some_and(|found| found.id == t.id && found.token_expires_ms.is_none()),
                    None => false,
                };
                match kept.filter(|_| still_good) {
                    Some(k) => k,
                    None => server::rotate_token(&store, t.id).await.map_err(|e| anyhow::anyhow!("{e}"))?,
                }
            }
            None => {
                server::create_tenant(&store, &args.tenant, store::TenantQuota::default())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .1
            }
        };
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&token_file)
                .with_context(|| format!("cannot keep the demo token in {}", token_file.display()))?;
            f.write_all(token.as_bytes())?;
        }
        // The nodes' agents, in process: one join token, then each node its own credential.
        let join = server::auth::new_token().map_err(|e| anyhow::anyhow!("{e}"))?;
        // Good for this start's nodes only: once each, within the hour.
        let now = server::now_ms();
        let limits = store::JoinTokenLimits {
            uses: Some(node_gpus.len() as i64),
            expires_ms: Some(now + 3_600_000),
            node: None,
        };
        store.create_join_token(&server::auth::hash_token(&join), now, &limits).await?;
        let base = format!("{scheme}://{}", running.addr);
        // One batched heartbeat for the whole fleet, as one agent process would send.
        let mut configs = Vec::with_capacity(node_gpus.len());
        for (name, gpus, model) in node_gpus {
            configs.push(agent::NodeConfig {
                server: base.clone(),
                join_token: join.clone(),
                name: name.clone(),
                address: "127.0.0.1".into(),
                gpus: agent::inventory::declared_gpus(gpus, &model),
                work_dir: args.data_dir.join("nodes").join(&name),
                kill_grace: Duration::from_secs(10),
                use_nvml: false,
                sandbox: sandbox.clone(),
                images: images.clone(),
                trust: trust.clone(),
                // A week of ended runs' output, as `drome agent` keeps by default.
                keep_output: Some(Duration::from_secs(7 * 86_400)),
                max_output_bytes: Some(1 << 30),
            });
        }
        let host = agent::AgentHost::new(configs)?;
        tokio::spawn(async move {
            if let Err(e) = host.run().await {
                tracing::error!(error = %e, "nodes stopped");
            }
        });
        let url = format!("{scheme}://{}", running.addr);
        println!();
        println!("drome is up: {fleet_name} fleet, {nodes} nodes (declared GPUs), {gpus} GPUs, store {db}");
        println!();
        println!("  API       {url}/v1   (docs: {url}/v1/docs)");
        println!("  metrics   {url}/metrics");
        if let Some(made) = &identity {
            println!("  tls       CA {}, certificate {}", made.ca.display(), tls::fingerprint_of_file(&made.cert)?);
        }
        println!("  tenant    {}", args.tenant);
        println!("  token     {token}");
        if let Some(admin) = &running.generated_admin_token {
            println!("  admin     {admin}   (shown once)");
        }
        println!();
        println!("In another terminal:");
        println!();
        match &identity {
            Some(made) => {
                println!("  export DROME_URL={url} DROME_TOKEN={token} DROME_CA_FILE={}", made.ca.display())
            }
            None => println!("  export DROME_URL={url} DROME_TOKEN={token}"),
        }
        println!("  drome submit --gpus 8 --nodes 2 --gpu-model H200 -- sleep 30");
        println!("  drome jobs");
        println!("  drome nodes --sites");
        println!();
        println!("Ctrl-C stops the server; the jobs stay in {}.", args.data_dir.display());
        tokio::select! {
            r = running.wait() => r?,
            _ = tokio::signal::ctrl_c() => { tracing::info!("interrupted; stopping"); }
        }
        // Nothing the nodes started outlives them.
        let killed: usize = node_dirs(&args.data_dir.join("nodes"))
            .iter()
            .map(|d| {
                let name = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                agent::runner::stop_node_runs(&name, d, sandbox.as_deref())
            })
            .sum();
        if killed > 0 {
            tracing::info!(runs = killed, "runs killed as drome stops");
        }
        Ok(())
    })
}

fn node_dirs(dir: &std::path::Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default()
}
