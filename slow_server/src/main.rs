//! `slow_server`: a deliberately slow, scriptable HTTP/1.1 origin for caje's demos, integration
//! tests and benchmarks. See `README.md` for the routes and their query parameters.
//!
//! # Layout
//! - `server`: accept loop, one hyper connection task per socket, graceful shutdown.
//! - `router`: maps a request to a handler, records it in `state`, serves the fixed pages
//!   (`/`, `/slow`, `/fast`, 404).
//! - `gen`: the scriptable `/gen/*` route, assembled from `params` (query → typed settings),
//!   `conditional` (If-None-Match / If-Modified-Since) and `body` (the streamed generated body).
//! - `admin`: `/_origin/*` (stats, bump, reset) over the shared `state`.
//! - `query`: query-string splitting and percent-decoding.

mod admin;
mod body;
mod conditional;
mod gen;
mod params;
mod query;
mod reply;
mod router;
mod server;
mod state;

use std::io::{IsTerminal as _, Write as _};
use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;

/// A deliberately slow, scriptable HTTP origin for caje's demos, tests and benchmarks.
///
/// Routes: `/` (help page), `/slow` (5 s), `/fast` (1 s), `/gen/*` (scripted by query
/// parameters, see `GET /`), `/_origin/stats`, `POST /_origin/bump?path=..`,
/// `POST /_origin/reset`. Logs go to stderr and honour RUST_LOG.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    /// Address to listen on. Port 0 lets the OS pick one; the bound address is printed on
    /// stdout as `slow_server listening on http://ADDR`.
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Multiplies the built-in delays of /slow (5 s) and /fast (1 s), e.g. 0.01 in tests.
    /// /gen's `delay_ms` and `stream_delay_ms` are literal and never scaled.
    #[arg(long, default_value_t = 1.0, value_parser = parse_delay_scale)]
    delay_scale: f64,
}

fn parse_delay_scale(raw: &str) -> Result<f64, String> {
    let scale: f64 = raw.parse().map_err(|e| format!("not a number: {e}"))?;
    // Bounded so that `Duration::from_secs_f64(5.0 * scale)` can never panic.
    if !scale.is_finite() || !(0.0..=1000.0).contains(&scale) {
        return Err("must be between 0 and 1000".to_owned());
    }
    Ok(scale)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // stdout carries exactly one machine-readable line; everything else goes to stderr.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    // Signal handlers are installed before the address is announced, so a test that sends
    // SIGTERM right after reading the line always gets a graceful exit.
    let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let shutdown = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    };

    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("binding {}", cli.listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "slow_server listening on http://{addr}").context("writing to stdout")?;
        out.flush().context("flushing stdout")?;
    }
    tracing::info!(%addr, delay_scale = cli.delay_scale, "listening");

    let app = router::App::new(cli.delay_scale);
    server::run(listener, app, shutdown).await;
    Ok(())
}
