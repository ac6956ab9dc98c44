//! Accept loop: one hyper HTTP/1.1 connection task per socket, all watched by a
//! `GracefulShutdown` so a signal lets in-flight responses finish.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::router::{self, App};

/// How long in-flight responses may take to finish after a shutdown signal. Bounded because a
/// scripted response can be arbitrarily slow (`delay_ms`, `stream_delay_ms`), and an exit that
/// hangs would stall the tests and demos that stop us.
const GRACE: Duration = Duration::from_secs(3);

/// Serves `listener` until `shutdown` completes, then drains connections for at most [`GRACE`].
pub async fn run(listener: TcpListener, app: App, shutdown: impl Future<Output = ()>) {
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(err) => {
                        // Typically EMFILE: back off instead of spinning on the error.
                        warn!(%err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Small scripted chunks (stream_delay_ms) must leave at once, not wait for Nagle.
                if let Err(err) = stream.set_nodelay(true) {
                    debug!(%err, "set_nodelay failed");
                }
                let app = app.clone();
                let service = service_fn(move |req| {
                    let app = app.clone();
                    async move { Ok::<_, Infallible>(router::handle(&app, req).await) }
                });
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    // abort_after / lie_length end connections with an error on purpose.
                    if let Err(err) = conn.await {
                        debug!(%peer, %err, "connection ended with an error");
                    }
                });
            }
            () = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => info!("all connections closed"),
        () = tokio::time::sleep(GRACE) => warn!("grace period elapsed, dropping open connections"),
    }
}
