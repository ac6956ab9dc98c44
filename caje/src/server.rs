//! The listener: accepts connections, serves HTTP/1.1 on each, and shuts down gracefully.
//!
//! The caller owns the socket and the shutdown trigger (as in mini-redis), so tests bind
//! `127.0.0.1:0` and call the very same [`run`] as the binary.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use std::sync::atomic::{AtomicU64, Ordering};

use crate::app::App;
use crate::framing::{Scanner, Verdict, Watched};
use crate::proxy;
use crate::send_timeout::SendTimeout;

/// Runs a request handler, turning a panic inside it into `None`, so that a bug reached by
/// some input costs that request a 500 and a log line, never an empty reply or the
/// connection's other requests.
struct CatchPanic<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for CatchPanic<F> {
    type Output = Option<F::Output>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Some(v)),
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Err(_) => std::task::Poll::Ready(None),
        }
    }
}

/// Connections the kernel queues before caje accepts them. tokio's default (128) overflows
/// under a burst of new connections (a thundering herd on one cold URL), and each dropped SYN
/// costs the client a 1 s retransmit.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with `SO_REUSEADDR` and a deep accept queue.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves `listener` until `shutdown` completes, then stops accepting and waits up to
/// `server.shutdown_grace_ms` for in-flight requests to finish.
///
/// # Example
///
/// Serve on a free loopback port until a oneshot fires (the binary passes a future that
/// completes on SIGINT/SIGTERM instead):
///
/// ```
/// use caje::app::App;
/// use caje::config::{Config, OriginConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let config = Config {
///     cache_dir: dir.path().join("cache"),
///     db: dir.path().join("manifest.db"),
///     origins: vec![OriginConfig {
///         host: "*".into(),
///         url: "http://127.0.0.1:9".into(),
///         host_header: Default::default(),
///     }],
///     ..Config::default()
/// };
///
/// let runtime = tokio::runtime::Runtime::new()?;
/// runtime.block_on(async {
///     let app = App::start(config).await?;
///     let listener = caje::server::bind("127.0.0.1:0".parse()?)?;
///     let addr = listener.local_addr()?;
///     assert!(addr.ip().is_loopback() && addr.port() != 0);
///
///     let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
///     let shutdown = async {
///         let _ = stopped.await;
///     };
///     let server = tokio::spawn(caje::server::run(listener, app, shutdown));
///     stop.send(()).ok();
///     // With no connection open, run returns as soon as it sees the shutdown.
///     server.await?;
///     Ok::<_, Box<dyn std::error::Error>>(())
/// })?;
/// # Ok(())
/// # }
/// ```
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let mut builder = http1::Builder::new();
    let limits = &app.config.limits;
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        // The buffer holds the request line and headers; beyond it hyper answers 431.
        .max_buf_size((limits.max_header_bytes + limits.max_request_line_bytes).max(8192))
        .max_header_size(limits.max_header_bytes + limits.max_request_line_bytes)
        .max_headers(limits.max_headers)
        .header_read_timeout(Duration::from_millis(limits.header_read_timeout_ms));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app_send_timeout_ms = app.config.server.send_timeout_ms;
        let app = app.clone();
        let verdict = Arc::new(Verdict::default());
        let scanner = Scanner::new(
            app.config.limits.max_header_bytes + app.config.limits.max_request_line_bytes,
            app.config.limits.max_headers,
            verdict.clone(),
        );
        // hyper serves a connection's requests in order, so counting calls numbers them
        // the same way the scanner numbers the heads it reads.
        let served = Arc::new(AtomicU64::new(0));
        let service = service_fn(move |req| {
            let app = app.clone();
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            let ambiguous = verdict.rejects(n);
            async move {
                let handled = CatchPanic(Box::pin(proxy::handle(app, req, peer, ambiguous)));
                let res = handled.await.unwrap_or_else(|| {
                    tracing::error!(%peer, "a request handler panicked; answered 500");
                    crate::request::local(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "caje: internal error while handling this request (logged)\n".into(),
                    )
                });
                Ok::<_, std::convert::Infallible>(res)
            }
        });
        let send_timeout = Duration::from_millis(app_send_timeout_ms);
        let io = TokioIo::new(SendTimeout::new(
            Watched::new(stream, scanner),
            send_timeout,
        ));
        let conn = builder.serve_connection(io, service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, "connection ended with error: {e}");
            }
        });
    }
    drop(listener);
    let grace = Duration::from_millis(app.config.server.shutdown_grace_ms);
    tracing::info!("shutting down: waiting up to {grace:?} for in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}
