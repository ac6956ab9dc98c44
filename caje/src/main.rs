//! The `caje` binary: flags, logging, signals and exit codes. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use caje::app::App;
use caje::config::{Config, HostHeader, OriginConfig};

/// caje — an edge CDN node: a caching reverse proxy that stores origin responses on local
/// disk as RFC 9111 allows and records every cached page in a SQLite manifest.
///
/// Settings come from the config file (see config.toml in the repository for every key);
/// flags given on the command line override the file. Logs go to stderr; set RUST_LOG
/// (e.g. RUST_LOG=caje=debug) to change their level.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Args {
    /// What to do (default: serve).
    #[command(subcommand)]
    command: Option<Command>,

    /// Path of the TOML config file. Without it, caje runs on the built-in defaults and
    /// needs --origin.
    #[arg(global = true, long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,

    /// Address to listen on, e.g. 127.0.0.1:8080 or 0.0.0.0:8080 (port 0 picks a free port;
    /// the chosen address is printed on stdout). Default: 127.0.0.1:8080.
    #[arg(global = true, long, value_name = "ADDR")]
    listen: Option<std::net::SocketAddr>,

    /// Origin URL for every host (http:// or https://), replacing the file's [[origins]].
    #[arg(global = true, long, value_name = "URL")]
    origin: Option<String>,

    /// Directory for cached bodies and metadata (one per caje process). Default: caje-cache.
    #[arg(global = true, long, value_name = "DIR")]
    cache_dir: Option<PathBuf>,

    /// Path of the SQLite manifest (may be shared by several local caje processes).
    /// Default: caje-manifest.db.
    #[arg(global = true, long, value_name = "PATH")]
    db: Option<PathBuf>,

    /// Bearer token for the /_caje/ admin API. Without a token, the admin API only answers
    /// clients in admin.allow_from (loopback by default).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CAJE_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Serve requests (the default).
    Serve,
    /// Fetch, once, every fresh page the manifest lists that this node's cache directory
    /// lacks (edge warming for scripts and first boot), with a progress bar on stderr; then
    /// exit. Needs the cache directory to itself: stop caje first, or use
    /// `POST /_caje/populate` on the running node. Exit code 1 if any fetch failed.
    Populate,
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging();
    let config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caje: {e:#}");
            return ExitCode::from(2);
        }
    };
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Disk reads and writes run on the blocking pool; a few dozen threads keep the disk
        // busy, while hundreds (tokio's default limit is 512) only add stacks and allocator
        // arenas to the RSS.
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caje: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        None | Some(Command::Serve) => runtime.block_on(serve(config)),
        Some(Command::Populate) => runtime.block_on(populate_once(config)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("caje: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// glibc gives every thread that allocates its own arena (up to 8 per core) and keeps freed
/// memory in each; with cache writers and readers on many threads that multiplies the RSS.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(args: &Args) -> anyhow::Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(url) = &args.origin {
        config.origins = vec![OriginConfig {
            host: "*".into(),
            url: url.clone(),
            host_header: HostHeader::Origin,
        }];
    }
    if let Some(dir) = &args.cache_dir {
        config.cache_dir = dir.clone();
    }
    if let Some(db) = &args.db {
        config.db = db.clone();
    }
    if let Some(token) = &args.admin_token {
        config.admin.token = token.clone();
    }
    // A secret: from the environment rather than a file when it is not in the file.
    if config.cluster.token.is_empty() {
        if let Ok(token) = std::env::var("CAJE_CLUSTER_TOKEN") {
            config.cluster.token = token;
        }
    }
    config.validate()?;
    Ok(config)
}

/// `cluster.advertise_url` once the listen port is known (`{port}`, Fly's private address).
fn advertise(config: &mut Config, port: u16) {
    let fly = std::env::var("FLY_PRIVATE_IP").ok();
    config.cluster.advertise_url = config.cluster.resolve_advertise_url(port, fly.as_deref());
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    // Bound before the node starts, so that the rows it writes can name its real port.
    let listener = caje::server::bind(listen)
        .with_context(|| format!("cannot listen on {listen} (is another process using it?)"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    advertise(&mut config, local.port());
    let shutdown = shutdown_signal();
    let app = App::start(config).await.context("starting caje")?;
    // Tests and scripts read this line to find the port; print it only once serving.
    println!("caje listening on http://{local}");
    tracing::info!(addr = %local, cache_dir = %app.config.cache_dir.display(), db = %app.config.db.display(), "caje ready");
    caje::populate::spawn(&app);
    caje::server::run(listener, app, shutdown).await;
    Ok(())
}

async fn populate_once(mut config: Config) -> anyhow::Result<()> {
    let port = config.listen.port();
    advertise(&mut config, port);
    let app = App::start(config).await.context("starting caje")?;
    caje::populate::reconcile(&app).await;
    let progress = |done: usize, total: usize| {
        let width = 40;
        let filled = (done * width).checked_div(total).unwrap_or(width);
        eprint!(
            "\rpopulate [{}{}] {done}/{total}",
            "=".repeat(filled),
            " ".repeat(width - filled)
        );
        if done == total {
            eprintln!();
        }
    };
    let report = caje::populate::pass(&app, &progress).await;
    println!(
        "populate: {} listed, {} missing here, {} fetched, {} skipped, {} failed ({} ms)",
        report.listed,
        report.candidates,
        report.fetched,
        report.skipped,
        report.failed,
        report.duration_ms
    );
    if report.failed > 0 {
        anyhow::bail!(
            "{} page(s) could not be fetched; see the log above",
            report.failed
        );
    }
    Ok(())
}

/// The SIGTERM/SIGINT handlers, installed when called (not when the future is first polled):
/// a signal that arrives once the node has said it listens must shut it down gracefully,
/// not kill it with the default action.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (mut term, mut int) = match (term, int) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!("cannot install the SIGTERM/SIGINT handlers: {e}");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
