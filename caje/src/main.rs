//! The `caje` binary: flags, logging, signals and exit codes. The work is in the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;

use caje::app::App;
use caje::cache::store::{Handover, OpenOptions, Store};
use caje::config::{Config, HostHeader, OriginConfig};
use caje::listen::Source;
use caje::server::Server;
use caje::upgrade::{Predecessor, Successor};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};

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
    // Started by this binary's manifest as its writer helper: serve that, nothing else. See
    // `manifest/writer.rs`.
    if std::env::var_os(caje::manifest::WRITER_ENV).is_some() {
        init_logging();
        return match caje::manifest::serve_writer() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("caje manifest writer helper: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The HALT helper of earlier versions (litefs-rs's broker), still served: a process of an
    // earlier version, upgraded in place, starts its helper from this file.
    if let Some(lock) = std::env::var_os(litefs::BROKER_ENV) {
        return match litefs::serve_broker(std::path::Path::new(&lock)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("caje HALT helper for {}: {e}", lock.to_string_lossy());
                ExitCode::FAILURE
            }
        };
    }
    let args = Args::parse();
    init_logging();
    // Both change the environment: before any other thread exists.
    let predecessor = Predecessor::take_from_env();
    let inherited = match caje::listen::take_inherited() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("caje: {e}");
            return ExitCode::from(2);
        }
    };
    let mut config = match load_config(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("caje: {e:#}");
            return ExitCode::from(2);
        }
    };
    // On a real LiteFS mount the manifest's batches (HALT and COMMIT) are written by a helper
    // process, this binary again: a kill -9 of this process then never cuts a COMMIT short
    // (LiteFS exits then) nor a HALT acquisition (the primary stays halted). `/proc/self/exe`
    // is this very binary even after an upgrade replaced the file, so both sides speak the
    // same protocol. `CAJE_HALT_HELPER=off` writes in-process (to compare; docs/cluster.md).
    if std::env::var("CAJE_HALT_HELPER").as_deref() != Ok("off") {
        let this = std::path::Path::new("/proc/self/exe");
        config.manifest.halt_helper = if this.exists() {
            Some(this.to_owned())
        } else {
            std::env::current_exe().ok()
        };
    }
    limit_malloc_arenas();
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Disk reads and writes run on the blocking pool; a few dozen threads keep the disk
        // busy, while hundreds (tokio's default limit is 512) only add stacks and allocator
        // arenas to the RSS.
        .max_blocking_threads(64)
        // A margin for debug builds' large futures; stacks are reserved address space, and
        // only the pages used count in the RSS. (The stack overflow once seen at exit was not
        // depth but a recursion in `body::Tee`'s drop while the runtime shut down, fixed
        // there: no stack size would have been enough.)
        .thread_stack_size(8 << 20)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("caje: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.command {
        None | Some(Command::Serve) => runtime.block_on(serve(config, inherited, predecessor)),
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

/// Raises the soft limit on open files to the hard one (as the Go runtime does at start): a
/// node keeps entry files open for its hot pages (half the soft limit, nginx's
/// `open_file_cache`) besides its connections, and the usual soft default of 1,024 would keep
/// few. The hard limit is the operator's; it is never raised.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_err() {
            eprintln!("caje: could not raise the open files limit from {soft} to {hard}");
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

async fn serve(
    mut config: Config,
    inherited: Option<(std::net::TcpListener, Source)>,
    predecessor: Option<Predecessor>,
) -> anyhow::Result<()> {
    // First, so that an early SIGUSR2 or SIGTERM is not fatal.
    let mut signals = Signals::new().context("installing signal handlers")?;
    let listen = config.listen;
    // Bound (or inherited) before the node starts: connections queue meanwhile instead of
    // being refused, and the rows the node writes can name its real port.
    let listener = match inherited {
        Some((l, source)) => {
            let l = TcpListener::from_std(l).context("using the inherited listening socket")?;
            tracing::info!(from = %source, "serving on an inherited socket; `listen` is not used");
            l
        }
        None => caje::server::bind(listen)
            .with_context(|| format!("cannot listen on {listen} (is another process using it?)"))?,
    };
    let local = listener.local_addr().context("reading the bound address")?;
    advertise(&mut config, local.port());
    let mut store = OpenOptions::default();
    if let Some(p) = &predecessor {
        let mut ask = p.try_clone().context("using the upgrade pipe")?;
        store.handover = Some(Handover {
            wait: Duration::from_millis(config.server.upgrade_timeout_ms),
            // Once the configuration is good and the index is loaded: only then does the
            // old process stop accepting and release the cache directory.
            ask: Box::new(move || ask.prepared()),
        });
    }
    let app = App::start_with(config, store)
        .await
        .context("starting caje")?;
    if let Some(p) = predecessor {
        p.ready().context("reporting to the previous process")?;
    }
    // Tests and scripts read this line to find the port; print it only once serving.
    println!("caje listening on http://{local}");
    tracing::info!(addr = %local, pid = std::process::id(), cache_dir = %app.config.cache_dir.display(), db = %app.config.db.display(), "caje ready");
    caje::metrics::spawn(&app);
    if let Some(log) = app.telemetry.access_log.clone() {
        caje::access_log::reopen_on_sighup(log);
    }
    let mut populate = caje::populate::spawn(&app);
    let upgrade_timeout = Duration::from_millis(app.config.server.upgrade_timeout_ms);
    loop {
        let server = Server::new(app.clone());
        let stop = server
            .accept_until(
                &listener,
                signals.next_stop(&listener, &app.store, upgrade_timeout),
            )
            .await;
        let successor = match stop {
            Stop::Terminate => {
                populate.abort();
                drop(listener);
                server.drain().await;
                flush_access_log(&app).await;
                // The next start reads this instead of every entry's header.
                let store = app.store.clone();
                match tokio::task::spawn_blocking(move || store.write_snapshot(true)).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!("index snapshot not written: {e}"),
                    Err(e) => tracing::warn!("index snapshot not written: {e}"),
                }
                close_manifest(&app).await;
                return Ok(());
            }
            Stop::HandOver(successor) => successor,
        };
        // The new process has its configuration and waits for the cache directory. Stop
        // accepting (connections queue in the socket both of us hold), let the open
        // connections finish, and give it the directory.
        let pid = successor.pid();
        let paused = Instant::now();
        let drain = tokio::spawn(server.drain());
        // No new work in a directory this process is giving away.
        populate.abort();
        app.store.release_lock();
        match successor.ready(upgrade_timeout).await {
            Ok(_) => {
                tracing::info!(
                    new_pid = pid,
                    pause_ms = paused.elapsed().as_millis() as u64,
                    "upgrade: the new process serves; finishing in-flight requests, then exiting"
                );
                drop(listener);
                let _ = drain.await;
                flush_access_log(&app).await;
                close_manifest(&app).await;
                return Ok(());
            }
            Err(e) => {
                tracing::error!("upgrade failed, this process goes on serving: {e}");
                let store = app.store.clone();
                tokio::task::spawn_blocking(move || store.relock(upgrade_timeout))
                    .await
                    .context("taking the cache directory back")?
                    .context("taking the cache directory back")?;
                populate = caje::populate::spawn(&app);
                // The drain of the previous connections goes on in the background.
            }
        }
    }
}

/// Writes the access log's buffered lines (the requests just drained included) before the
/// process exits: nothing logged is lost on SIGTERM or an upgrade.
async fn flush_access_log(app: &App) {
    let Some(log) = app.telemetry.access_log.clone() else {
        return;
    };
    let counts = log.clone();
    let flushed = tokio::task::spawn_blocking(move || log.flush(Duration::from_secs(10))).await;
    if matches!(flushed, Ok(true)) {
        tracing::info!(
            written = counts.written(),
            dropped = counts.dropped(),
            "access log flushed before exit"
        );
    } else {
        tracing::warn!(
            "access log: not every line was written before exit (the disk is slow or failing)"
        );
    }
}

/// Writes the manifest's queue and stops its writer before the process exits: rows of the
/// last fills are not lost, and no COMMIT is cut in the middle (which on a LiteFS replica makes
/// LiteFS exit with a fatal error). Bounded: a manifest that cannot be written is given up.
async fn close_manifest(app: &App) {
    let limit = Duration::from_millis(app.config.manifest.halt_timeout_ms) + Duration::from_secs(5);
    match tokio::time::timeout(limit, app.manifest.close()).await {
        Ok(Ok(0)) => tracing::info!("manifest written and closed before exit"),
        Ok(Ok(left)) => tracing::warn!(
            left,
            "manifest closed before exit with writes it could not write"
        ),
        Ok(Err(e)) => tracing::warn!("closing the manifest failed: {e}"),
        Err(_) => tracing::warn!(?limit, "the manifest did not close in time; exiting anyway"),
    }
}

/// Why the accept loop stops.
enum Stop {
    /// SIGTERM or SIGINT: drain and exit.
    Terminate,
    /// SIGUSR2, and the new process is prepared: hand over.
    HandOver(Successor),
}

/// The signals the serving loop reacts to, installed once.
struct Signals {
    term: Signal,
    usr2: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            usr2: signal(SignalKind::user_defined2())?,
        })
    }

    /// Completes on SIGTERM/SIGINT, or once a new process started on SIGUSR2 is prepared. A
    /// new process that fails is logged and forgotten, and the wait goes on.
    async fn next_stop(
        &mut self,
        listener: &TcpListener,
        store: &Store,
        timeout: Duration,
    ) -> Stop {
        use std::os::fd::AsRawFd;
        loop {
            tokio::select! {
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received");
                    return Stop::Terminate;
                }
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT received");
                    return Stop::Terminate;
                }
                _ = self.usr2.recv() => {}
            }
            tracing::info!("SIGUSR2 received: starting a new caje process to take over");
            // A fresh index snapshot first, written while this process still serves: the new
            // one loads it instead of reading every entry's header, and checks the directory
            // against it for what changes before it takes over.
            handover_snapshot(store).await;
            let mut successor = match Successor::spawn(listener.as_raw_fd()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!("upgrade failed, this process goes on serving: {e}");
                    continue;
                }
            };
            tokio::select! {
                prepared = successor.prepared(timeout) => match prepared {
                    Ok(()) => {
                        tracing::info!(new_pid = successor.pid(), "upgrade: the new process has loaded its configuration; handing over");
                        return Stop::HandOver(successor);
                    }
                    Err(e) => tracing::error!("upgrade failed, this process goes on serving: {e}"),
                },
                // Dropping the successor kills it.
                _ = self.term.recv() => {
                    tracing::info!("SIGTERM received during an upgrade; abandoning it");
                    return Stop::Terminate;
                }
            }
        }
    }
}

/// Writes the index snapshot a new process started by SIGUSR2 loads. Not written (logged) if
/// the index is still being checked against the directory after this process's own start
/// from a snapshot: the new process then loads that one. A failure leaves the new process to
/// read the directory instead (slower, never wrong).
async fn handover_snapshot(store: &Store) {
    let store = store.clone();
    match tokio::task::spawn_blocking(move || store.write_snapshot(false)).await {
        Ok(Ok(Some(entries))) => {
            tracing::info!(
                entries,
                "upgrade: index snapshot written for the new process"
            )
        }
        Ok(Ok(None)) => tracing::info!(
            "upgrade: the index is still being checked; the new process loads the snapshot \
             this one started from"
        ),
        Ok(Err(e)) => tracing::warn!("upgrade: index snapshot not written: {e}"),
        Err(e) => tracing::warn!("upgrade: index snapshot not written: {e}"),
    }
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
