//! The listener: accepts connections, serves HTTP/1.1 on each, and shuts down gracefully.
//!
//! The caller owns the socket and the shutdown trigger (as in mini-redis), so tests bind
//! `127.0.0.1:0` and call the very same [`run`] as the binary.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::app::App;
use crate::fast::{self, Ended, FullPath};
use crate::framing::{Scanner, Verdict, Watched};
use crate::interim::InterimSink;
use crate::observe;
use crate::one_request::{OneRequest, Progress, Resumed, Signalled};
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
    let server = Server::new(app);
    server.accept_until(&listener, shutdown).await;
    drop(listener);
    server.drain().await;
}

/// The connections of one accepting period: [`Server::accept_until`] serves a listener until
/// a future completes, and [`Server::drain`] lets what it accepted finish. A graceful upgrade
/// drains one `Server` while the new process accepts, and starts another if that process
/// fails.
pub struct Server {
    app: Arc<App>,
    builder: http1::Builder,
    /// Turns true when the server shuts down gracefully; every connection holds a receiver
    /// until it ends, so [`Server::drain`] waits for the channel to close.
    closing: watch::Sender<bool>,
    /// Accepted connections whose first request has not arrived yet (see [`Server::drain`]).
    fresh: Arc<AtomicUsize>,
}

/// How long [`Server::drain`] waits for accepted connections to send their first request.
const FIRST_REQUEST_WAIT: Duration = Duration::from_millis(500);

/// Counts a connection in [`Server::fresh`] until its first request arrives or it ends.
struct Fresh {
    fresh: Arc<AtomicUsize>,
    counted: AtomicBool,
}

impl Fresh {
    fn new(fresh: &Arc<AtomicUsize>) -> Fresh {
        fresh.fetch_add(1, Ordering::SeqCst);
        Fresh {
            fresh: fresh.clone(),
            counted: AtomicBool::new(true),
        }
    }

    fn request_arrived(&self) {
        if self.counted.load(Ordering::Relaxed) && self.counted.swap(false, Ordering::SeqCst) {
            self.fresh.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        self.request_arrived();
    }
}

impl Server {
    /// A server for `app`'s connections.
    pub fn new(app: Arc<App>) -> Server {
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
        Server {
            app,
            builder,
            closing: watch::Sender::new(false),
            fresh: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Accepts connections on `listener` and serves them until `stop` completes; returns its
    /// output. The connections go on being served until [`Server::drain`].
    pub async fn accept_until<T>(
        &self,
        listener: &TcpListener,
        stop: impl Future<Output = T>,
    ) -> T {
        let app = &self.app;
        tokio::pin!(stop);
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
                out = &mut stop => return out,
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                app: app.clone(),
                builder: self.builder.clone(),
                closing: self.closing.subscribe(),
                fresh: Arc::new(Fresh::new(&self.fresh)),
                peer,
            };
            tokio::spawn(conn.serve(stream));
        }
    }

    /// Stops keep-alive on the connections this server accepted (each finishes the request
    /// it is serving, long streams included) and waits up to `server.shutdown_grace_ms` for
    /// them to close.
    ///
    /// hyper closes a connection with no request in progress at once, even one accepted a
    /// moment ago whose request is on its way: that client would see its connection reset.
    /// So connections get up to [`FIRST_REQUEST_WAIT`] for their first request first.
    pub async fn drain(self) {
        let grace = Duration::from_millis(self.app.config.server.shutdown_grace_ms);
        tracing::info!("shutting down: waiting up to {grace:?} for in-flight requests");
        let started = tokio::time::Instant::now();
        let first_requests = async {
            while self.fresh.load(Ordering::SeqCst) > 0
                && started.elapsed() < FIRST_REQUEST_WAIT.min(grace)
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        first_requests.await;
        self.closing.send_replace(true);
        tokio::select! {
            () = self.closing.closed() => tracing::info!("all connections closed"),
            () = tokio::time::sleep_until(started + grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
    }
}

/// One accepted connection: served on the fast path ([`crate::fast`]), which passes the
/// requests it does not answer to hyper one at a time ([`crate::one_request`]); from a
/// request with a body or an upgrade on, hyper serves the rest of the connection.
struct Connection {
    app: Arc<App>,
    builder: http1::Builder,
    closing: watch::Receiver<bool>,
    fresh: Arc<Fresh>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(mut self, stream: TcpStream) {
        let app = self.app.clone();
        let read = if app.config.server.fast_path {
            let mut closing = self.closing.clone();
            match fast::serve(&app, &stream, self.peer, &self, &mut closing).await {
                Ended::Closed => return,
                Ended::Handover(read) => read,
            }
        } else {
            Bytes::new()
        };
        let (scanner, interim, service) = self.service(None);
        let send_timeout = Duration::from_millis(app.config.server.send_timeout_ms);
        // Interim responses are written inside `Watched`, so the send timeout covers them too.
        let io = TokioIo::new(SendTimeout::new(
            Watched::new(Resumed::new(read, stream), scanner, interim),
            send_timeout,
        ));
        let mut conn = self.builder.serve_connection(io, service);
        let peer = self.peer;
        let ended = run_graceful(
            &mut self.closing,
            &mut conn,
            |c, cx| Pin::new(c).poll(cx),
            |c| Pin::new(c).graceful_shutdown(),
        )
        .await;
        if let Err(e) = ended {
            tracing::debug!(%peer, "connection ended with error: {e}");
        }
    }

    /// The request path as a hyper service for this connection, with the connection's
    /// framing scanner and interim-response sink. With `progress`, the responses report
    /// their end and whether they close the connection ([`crate::one_request`]).
    fn service(
        &self,
        progress: Option<Arc<Progress>>,
    ) -> (
        Scanner,
        Arc<InterimSink>,
        impl hyper::service::Service<
                hyper::Request<hyper::body::Incoming>,
                Response = http::Response<crate::body::Body>,
                Error = std::convert::Infallible,
                Future: Send + Unpin,
            > + Unpin,
    ) {
        let app = self.app.clone();
        let peer = self.peer;
        let verdict = Arc::new(Verdict::default());
        let scanner = Scanner::new(
            app.config.limits.max_header_bytes + app.config.limits.max_request_line_bytes,
            app.config.limits.max_headers,
            verdict.clone(),
        );
        // hyper serves a connection's requests in order, so counting calls numbers them
        // the same way the scanner numbers the heads it reads (the scanner reads the bytes
        // handed over by the fast path first, as hyper does).
        let served = Arc::new(AtomicU64::new(0));
        let fresh = self.fresh.clone();
        let interim = InterimSink::new();
        let sink = interim.clone();
        let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(sink.clone());
            fresh.request_arrived();
            let app = app.clone();
            let n = served.fetch_add(1, Ordering::Relaxed) + 1;
            let ambiguous = verdict.rejects(n);
            let progress = progress.clone();
            Box::pin(async move {
                let handled = CatchPanic(Box::pin(observe::handle(app, req, peer, ambiguous)));
                let res = handled.await.unwrap_or_else(|| {
                    tracing::error!(%peer, "a request handler panicked; answered 500");
                    crate::request::local(
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "caje: internal error while handling this request (logged)\n".into(),
                    )
                });
                let res = match progress {
                    None => res,
                    Some(progress) => {
                        let closes = res
                            .headers()
                            .get_all(http::header::CONNECTION)
                            .iter()
                            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                        if closes {
                            progress.close_after();
                        }
                        res.map(|body| Signalled::new(body, progress).boxed())
                    }
                };
                Ok::<_, std::convert::Infallible>(res)
            })
        });
        (scanner, interim, service)
    }
}

impl FullPath for Connection {
    fn arrived(&self) {
        self.fresh.request_arrived();
    }

    async fn one(
        &self,
        stream: &TcpStream,
        head: Bytes,
        closing: &mut watch::Receiver<bool>,
    ) -> bool {
        let progress = Arc::new(Progress::default());
        let (scanner, interim, service) = self.service(Some(progress.clone()));
        let send_timeout = Duration::from_millis(self.app.config.server.send_timeout_ms);
        let io = TokioIo::new(SendTimeout::new(
            Watched::new(
                OneRequest::new(head, stream, progress.clone()),
                scanner,
                interim,
            ),
            send_timeout,
        ));
        let mut conn = self.builder.serve_connection(io, service);
        let ended = run_graceful(
            closing,
            &mut conn,
            |c, cx| c.poll_without_shutdown(cx),
            |c| Pin::new(c).graceful_shutdown(),
        )
        .await;
        match ended {
            Err(e) => {
                tracing::debug!(peer = %self.peer, "connection ended with error: {e}");
                false
            }
            Ok(()) => {
                let read = conn.into_parts().read_buf;
                progress.written() && !progress.closes() && read.is_empty() && !*closing.borrow()
            }
        }
    }
}

/// Polls a hyper connection to its end, telling it to finish gracefully (its request in
/// progress, then close) when the server starts shutting down, or at once if it already has.
async fn run_graceful<C, T>(
    closing: &mut watch::Receiver<bool>,
    conn: &mut C,
    poll: impl Fn(&mut C, &mut std::task::Context<'_>) -> std::task::Poll<T>,
    shut_down: impl Fn(&mut C),
) -> T {
    use std::task::Poll;
    let mut shut = *closing.borrow_and_update();
    if shut {
        shut_down(conn);
    }
    let changed = closing.changed();
    tokio::pin!(changed);
    loop {
        let step = std::future::poll_fn(|cx| {
            if let Poll::Ready(v) = poll(conn, cx) {
                return Poll::Ready(Some(v));
            }
            if !shut && changed.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        match step {
            Some(v) => return v,
            None => {
                shut = true;
                shut_down(conn);
            }
        }
    }
}
