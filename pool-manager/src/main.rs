//! `pool-manager` binary: flags, logging, wiring, serving, graceful shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use pool_manager::admin::cluster::ClusterState;
use pool_manager::admin::{self, AppState};
use pool_manager::config::{self, ReplicaConfig};
use pool_manager::election::Election;
use pool_manager::metrics::Metrics;
use pool_manager::placement::{Resources, Watermarks};
use pool_manager::pool::{Intervals, Pool, Replica, ScaleSettings, Settings};
use pool_manager::replica::triton::{Timeouts, TritonClient};
use pool_manager::replica::ReplicaClient;
use pool_manager::repository::ModelRepository;
use pool_manager::resolve::Resolver;
use pool_manager::spec::StoragePolicy;
use pool_manager::storage::{FileTransfer, Storage};
use pool_manager::store::config::StoreArgs;
use pool_manager::store::etcd::EtcdBackend;
use pool_manager::store::{Opened, Store};

/// Control plane of the multi-model gateway.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the admin API (and the filter's internal calls). Loopback by default; set
    /// an admin token before listening anywhere else.
    #[arg(long, env = "MM_LISTEN", default_value = "127.0.0.1:9090")]
    listen: SocketAddr,
    /// Triton model repository shared with the replicas; models are staged here by name.
    #[arg(long, env = "MM_MODEL_REPOSITORY")]
    model_repository: PathBuf,
    /// A replica: name=NAME,url=http://HOST:PORT,memory=QUANTITY (repeatable).
    #[arg(long = "replica")]
    replicas: Vec<ReplicaConfig>,
    /// Replicas from DNS, one name per pod of a StatefulSet behind a headless Service:
    /// prefix=triton,service=triton.mm.svc,port=8000,memory=16Gi,count=8[,grpcPort=8001]
    /// [,gpuMemory=..] means triton-0.triton.mm.svc .. triton-7.triton.mm.svc; names that do
    /// not resolve (yet, or any more) are unhealthy, so scaling up to `count` and down is
    /// followed without a restart (repeatable).
    #[arg(long = "replica-dns")]
    replica_dns: Vec<config::DnsReplicas>,
    /// A hosts-format file consulted before the system resolver, re-read on every lookup.
    #[arg(long, env = "MM_HOSTS_FILE")]
    hosts_file: Option<PathBuf>,
    /// TOML file with [[replica]] tables (name, url, memory); adds to --replica.
    #[arg(long, env = "MM_CONFIG")]
    config: Option<PathBuf>,
    /// Only accept file:// storage URIs below these directories (repeatable).
    #[arg(long = "allowed-storage-root")]
    allowed_storage_roots: Vec<PathBuf>,
    /// How long a request for a cold model waits for its load.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    route_wait: Duration,
    /// Bound on one Triton load call.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    load_timeout: Duration,
    /// Bound on every other Triton call (unload, index, ready).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    call_timeout: Duration,
    /// How often replicas' readiness is probed.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// The victim order and GDSF's tuning.
    #[command(flatten)]
    eviction: pool_manager::eviction::EvictionArgs,
    /// Placing a model above this fraction of a replica's memory evicts models...
    #[arg(long, default_value_t = 0.8)]
    high_watermark: f64,
    /// ...until the replica is under this fraction (with the new model).
    #[arg(long, default_value_t = 0.6)]
    low_watermark: f64,
    /// Models loaded or used more recently than this are never evicted.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    min_age: Duration,
    /// Bound on waiting for a replica to finish unloading before reusing the memory.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    unload_wait: Duration,
    /// How long the gateway's workers take to apply a new routing table (the filter's
    /// table_refresh_ms and a margin): an evicted copy leaves the table this long before it
    /// is unloaded, so no worker still routes to it.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    table_propagation: Duration,
    /// How long the version an update replaced stays loaded once nothing is in flight on
    /// it, before it is unloaded: 100ms to 1h, and longer than the gateway's usage report
    /// period (`usage_report_ms`, 1s by default), so that a request routed to it just
    /// before the switch is seen in flight first.
    #[arg(long, env = "MM_RETIRE_GRACE", default_value = "2s", value_parser = retire_grace)]
    retire_grace: Duration,
    /// How often the scaler looks at traffic, copies and pinned models.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    scale_tick: Duration,
    /// Add a copy when each copy sees more requests per second than this...
    #[arg(long, default_value_t = 50.0)]
    scale_up_rate: f64,
    /// ...or more requests in flight than this...
    #[arg(long, default_value_t = 4.0)]
    scale_up_in_flight: f64,
    /// ...for this many scaler ticks in a row.
    #[arg(long, default_value_t = 3)]
    scale_up_ticks: u32,
    /// Remove an extra copy after this many quiet ticks in a row.
    #[arg(long, default_value_t = 30)]
    scale_down_ticks: u32,
    /// Most distinct models that get their own label in mm_model_requests_total.
    #[arg(long, default_value_t = 100)]
    model_metrics_limit: usize,
    /// Where the durable registry lives (created if missing).
    #[arg(long, env = "MM_DATA_DIR", default_value = "mm-data")]
    data_dir: PathBuf,
    /// How often every replica's index is reconciled with the table.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    reconcile_interval: Duration,
    /// Leave models a replica has loaded but the registry does not know (default: unload).
    #[arg(long)]
    keep_unknown_models: bool,
    /// Failed probes in a row before a replica is taken out.
    #[arg(long, default_value_t = 2)]
    unhealthy_after: u32,
    /// Most requests held waiting for model loads at once; past it: 503 at once.
    #[arg(long, default_value_t = 1000)]
    max_waiting: usize,
    /// File holding the bearer token that PUT and DELETE on the admin API require (or
    /// set MM_ADMIN_TOKEN). Unset: no token (keep the admin API on loopback).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// File holding the shared secret the gateway's filter sends in `x-mm-gateway-token`
    /// on every `/internal/v1/*` call (or set MM_GATEWAY_TOKEN). Unset: the internal routes
    /// are open to anything that reaches the port (a warning is logged).
    #[arg(long)]
    gateway_token_file: Option<PathBuf>,
    /// A host name the admin API answers to besides IP literals and `localhost`, e.g. the
    /// pool-manager Service's names in Kubernetes (repeatable, or comma-separated in
    /// MM_ALLOWED_HOSTS). Other `Host` headers get 403 (DNS rebinding).
    #[arg(long = "allowed-host", env = "MM_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// Log format.
    #[arg(long, env = "MM_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Where the registry lives (embedded, or etcd shared by several instances).
    #[command(flatten)]
    cluster: StoreArgs,
    /// Model storage: the cache of pulled files and how files reach replicas.
    #[command(flatten)]
    storage: pool_manager::storage::StorageArgs,
    /// Recent events kept for `GET /api/v1/events` (a ring buffer; the oldest go first).
    #[arg(long = "events", default_value_t = pool_manager::events::DEFAULT_CAPACITY)]
    events_capacity: usize,
}

/// Parses `--retire-grace`: a duration in the accepted range.
fn retire_grace(text: &str) -> anyhow::Result<Duration> {
    let grace = humantime::parse_duration(text)?;
    Ok(pool_manager::pool::check_retire_grace(grace)?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(&args.log_format);

    let mut replicas = args.replicas.clone();
    for dns in &args.replica_dns {
        replicas.extend(dns.expand()?);
    }
    if let Some(path) = &args.config {
        replicas.extend(config::replicas_from_file(path)?);
    }
    let replicas = config::check_replicas(replicas)?;
    let timeouts = Timeouts {
        connect: Duration::from_secs(2),
        load: args.load_timeout,
        call: args.call_timeout,
    };
    let mut pool_replicas = Vec::with_capacity(replicas.len());
    let resolver = Resolver {
        hosts_file: args.hosts_file.clone(),
    };
    for r in replicas {
        // A name that does not resolve yet (a StatefulSet pod not created yet) is not an
        // error: the replica is unhealthy until the probes resolve it.
        let host = r.url.host_str().unwrap_or_default().to_owned();
        let port = r.url.port_or_known_default().unwrap_or(80);
        let address = match resolver.resolve(&host, port).await {
            Ok(a) => Some(a),
            Err(e) => {
                tracing::warn!(replica = %r.name, error = %e, "replica does not resolve yet");
                None
            }
        };
        let client = TritonClient::new(&r.url, timeouts)?
            .with_file_loads(args.storage.file_transfer == FileTransfer::LoadRequest);
        if let Some(a) = address {
            client.set_address(a);
        }
        tracing::info!(replica = %r.name, url = %r.url, address = ?address, memory = r.memory,
                       gpu_memory = r.gpu_memory, "replica configured");
        pool_replicas.push(Replica {
            id: r.name,
            url: r.url,
            address,
            grpc_port: r.grpc_port,
            capacity: Resources::new(r.memory, r.gpu_memory),
            client: Arc::new(client),
        });
    }
    let repository = ModelRepository::open(&args.model_repository)?;
    let mut allowed_roots = Vec::new();
    for root in &args.allowed_storage_roots {
        allowed_roots.push(
            root.canonicalize()
                .with_context(|| format!("--allowed-storage-root {}", root.display()))?,
        );
    }
    let mut registry = prometheus_client::registry::Registry::with_prefix("mm");
    let metrics = Arc::new(Metrics::register(&mut registry, args.model_metrics_limit));
    let watermarks = Watermarks::new(args.high_watermark, args.low_watermark)
        .map_err(|e| anyhow::anyhow!("watermarks: {e}"))?;
    if args.scale_tick.is_zero() || args.probe_interval.is_zero() {
        anyhow::bail!("--scale-tick and --probe-interval must be greater than zero");
    }
    let settings = Settings {
        route_wait: args.route_wait,
        probe_timeout: args.call_timeout.min(Duration::from_secs(2)),
        watermarks,
        min_age: args.min_age,
        eviction: args.eviction.eviction,
        gdsf: args.eviction.gdsf(),
        unload_wait: args.unload_wait,
        table_propagation: args.table_propagation,
        retire_grace: args.retire_grace,
        scale: ScaleSettings {
            tick: args.scale_tick,
            up_rate: args.scale_up_rate,
            up_in_flight: args.scale_up_in_flight,
            up_ticks: args.scale_up_ticks.max(1),
            down_ticks: args.scale_down_ticks.max(1),
        },
        max_waiting: args.max_waiting.max(1),
        unhealthy_after: args.unhealthy_after.max(1),
        unload_unknown: !args.keep_unknown_models,
        events_capacity: args.events_capacity.max(1),
        resolver: Resolver {
            hosts_file: args.hosts_file.clone(),
        },
        ..Settings::default()
    };
    let ignored = args.eviction.ignored();
    if !ignored.is_empty() {
        tracing::warn!(flags = ?ignored, eviction = %settings.eviction,
                       "GDSF tuning given without --eviction gdsf: it has no effect");
    }
    tracing::info!(order = %settings.order_in_force(), "victim order in force");
    let admin_token = secret(
        "admin token",
        "--admin-token-file",
        args.admin_token_file.as_deref(),
        "MM_ADMIN_TOKEN",
    )?;
    if admin_token.is_some() {
        tracing::info!("admin API: writes require the bearer token");
    }
    let gateway_token = secret(
        "gateway token",
        "--gateway-token-file",
        args.gateway_token_file.as_deref(),
        "MM_GATEWAY_TOKEN",
    )?;
    if gateway_token.is_some() {
        tracing::info!("internal routes: the gateway token is required");
    } else {
        tracing::warn!("no gateway token (--gateway-token-file / MM_GATEWAY_TOKEN): /internal/v1/* accepts reports and route calls from anything that reaches this port");
    }
    let (
        Opened {
            store,
            models,
            unreadable,
            events_reserved,
            metadata,
            revision,
            versions,
            aliases,
            ..
        },
        election,
    ) = open_store(&args).await?;
    let cluster = match &election {
        Some(e) => ClusterState::shared(store.backend().describe(), e.clone()),
        None => ClusterState::sole(store.backend().describe()),
    };
    for bad in &unreadable {
        tracing::error!(model = %bad.name, reason = %bad.reason, "a stored model could not be read; it is not served");
    }
    let mut storage = Storage::open(&args.storage, &args.data_dir, &mut registry)?;
    tracing::info!(file_transfer = ?args.storage.file_transfer, cache = %storage.cache().root().display(),
                   "model storage ready");
    if let Some(watcher) = storage.take_watcher() {
        tokio::spawn(watcher.run());
    }
    let policy = StoragePolicy {
        allowed_roots,
        stores: storage.catalog().clone(),
    };
    let store_for_pool = store.clone();
    let pool = Pool::with_store(
        pool_replicas,
        repository,
        policy,
        metrics,
        settings,
        Some(store.clone()),
    );
    // Number events above anything an earlier run may have used, so that a reader's
    // `after` / Last-Event-ID still means "newer than what I saw" after a restart.
    let block = pool_manager::events::SEQ_BLOCK;
    let reserved = events_reserved.saturating_add(block);
    store
        .reserve_events(reserved)
        .await
        .context("reserving event sequence numbers")?;
    pool.events().resume(
        events_reserved.saturating_add(1),
        reserved,
        block,
        Box::new(move |upto| store.reserve_events_later(upto)),
    );
    pool.attach_storage(storage);
    tracing::info!(models = models.len(), "registry restored");
    let interrupted = pool.restore_with_versions(models, &versions);
    if interrupted > 0 {
        tracing::info!(
            updates = interrupted,
            "updates under way when the store was last written; resumed by the leader"
        );
    }
    pool.restore_metadata(metadata);
    pool.restore_aliases(&aliases);
    let every = Intervals {
        probe: args.probe_interval,
        reconcile: args.reconcile_interval,
    };
    // Held to the end of `main`: dropping the set would stop the loops.
    let mut loops = tokio::task::JoinSet::new();
    match &election {
        None => {
            // Know which replicas are up, and what they have loaded, before the first
            // request is placed: a restarted pool-manager adopts what is loaded instead of
            // loading it twice.
            // Updates a restart interrupted go on from there.
            pool.take_lead(None).await?;
            pool.start_loops(every, &mut loops);
        }
        Some(election) => {
            // Shared: the registry and the leader's table follow the store; the pool is
            // acted on only while this instance leads (it then rebuilds its view first).
            pool.attach_role(election.role());
            loops.spawn(
                pool.clone()
                    .follow_store(store_for_pool.backend().clone(), revision),
            );
            loops.spawn(pool.clone().run_leadership(store_for_pool.clone(), every));
        }
    }

    let closing = pool.clone();
    let app = admin::app(AppState {
        pool,
        metrics: Arc::new(registry),
        admin_token,
        gateway_token,
        allowed_hosts: args
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_owned())
            .collect(),
        cluster,
    });
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(listen = %args.listen, "pool-manager serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            if let Some(election) = &election {
                // Hand leadership over now rather than when the lease expires.
                election.resign(Duration::from_secs(2)).await;
            }
            // Open event streams would hold the graceful shutdown open forever.
            closing.events().close();
        })
        .await?;
    tracing::info!("pool-manager stopped");
    Ok(())
}

/// The store the flags name and, with etcd, this instance's campaign for leadership.
async fn open_store(args: &Args) -> anyhow::Result<(Opened, Option<Arc<Election>>)> {
    let Some(options) = args.cluster.etcd_options()? else {
        return Ok((Store::open(&args.data_dir)?, None));
    };
    let me = args.cluster.member(args.listen)?;
    tracing::info!(etcd = ?options, member = %me.id, url = %me.url, ttl = ?args.cluster.lease_ttl,
                   "store: etcd; campaigning for leadership");
    let backend = Arc::new(EtcdBackend::connect(options).await?);
    let election = Arc::new(Election::start(backend.clone(), me, args.cluster.lease_ttl));
    // Nothing can be served before the registry is read: wait for etcd, saying why.
    let mut retry = Duration::from_millis(200);
    loop {
        match Store::open_with(backend.clone(), election.role()).await {
            Ok(opened) => return Ok((opened, Some(election))),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?retry, "cannot read the registry from etcd yet");
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// A shared secret from `flag`'s file or the environment variable `env`, trimmed; never
/// logged. An empty one is an error (it would be a token anyone has).
fn secret(
    what: &str,
    flag: &str,
    file: Option<&std::path::Path>,
    env: &str,
) -> anyhow::Result<Option<Arc<str>>> {
    let raw = match file {
        Some(path) => Some(
            std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))?,
        ),
        None => std::env::var(env).ok(),
    };
    match raw.map(|t| t.trim().to_owned()) {
        Some(t) if t.is_empty() => anyhow::bail!("the {what} is empty"),
        Some(t) => Ok(Some(Arc::from(t))),
        None => Ok(None),
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested; draining");
}
