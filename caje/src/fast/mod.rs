//! The fast path: fresh hits on plain `GET`/`HEAD` requests, answered without hyper.
//!
//! A hit on a hot entry needs little: the page's compact metadata ([`HitMeta`](crate::cache::store::HitMeta)) holds the
//! response head as served and its freshness; the body is in the memory tier or a kept file
//! in the page cache. Through hyper the same hit built a `Request` with a header map, the
//! origin request's headers (`fill::Ctx`), a `Response` with another header map, a boxed
//! body and its observer: about half of caje's CPU per 1 KiB hit, where nginx spends none of
//! it. So each connection starts here, as nginx's and Pingora's own HTTP/1 servers do: the
//! request head is parsed in place (`httparse`, hyper's own parser), and a request that is
//! exactly a fresh hit is answered with a head written from the packed metadata and the body: one `writev` from memory, or the head held with
//! `MSG_MORE` and the body sent by `sendfile` from a kept, checked entry file
//! (`file_body::sendable`).
//!
//! Nothing else is decided here, so no behaviour is written twice:
//!
//! - a request without a body that is not a plain hit is served by hyper and the full request
//!   path ([`crate::proxy`]) alone ([`FullPath::one`], [`crate::one_request`]), and the
//!   connection comes back here after its answer;
//! - a request whose end the fast path does not know (a body, an upgrade, `Expect`), or that
//!   hyper would refuse and close the connection for (malformed, over the limits, not
//!   origin-form, HTTP/1.0, `Connection` other than `keep-alive`), hands the connection, with
//!   the bytes read so far, to hyper for good ([`Ended::Handover`]).
//!
//! "Plain" is decided before anything is answered, and conservatively: `GET` or `HEAD`, not
//! an admin path, a single valid `Host` with an origin, no `Authorization`, conditionals
//! (`If-*`) or `Range`; an entry whose compact metadata is in memory and fresh by itself ([`HitMeta::fresh`](crate::cache::store::HitMeta::fresh): not stale, not soft-purged, the client's directives
//! not honoured); a body that can be had without waiting; a status hyper frames as usual (not
//! 1xx, 204 or 304). For a page stored with `Vary`, the entry is selected from the request's
//! headers as the origin would see them, built as the full path builds them
//! (`origin_headers`); a page without `Vary` needs no header map at all.
//!
//! What the client sees is what the full path sends for the same hit: the same status,
//! stored headers, `Age`, `Cache-Status`, `Accept-Ranges`, `Content-Length` and `Date`; the
//! request is counted in the stats, telemetry and access log the same way
//! (`tests/fast_path.rs` compares both paths).
//!
//! The timeouts are the full path's: `limits.header_read_timeout_ms` for a request head
//! (an idle keep-alive connection included, as hyper does), `server.send_timeout_ms` for a
//! write that makes no progress. A graceful shutdown closes an idle connection at once and
//! lets a request being answered finish.

mod answer;
mod parse;
mod send;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access_log::Line;
use crate::app::App;
use crate::stats::Stats;
use crate::telemetry::{CacheOutcome, Finished};

use answer::{answer, Answer, Source};
use parse::{parse, Parsed, Plain};
use send::send;

/// How a connection's time on the fast path ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection is done: closed by the client, timed out, failed, or shut down.
    Closed,
    /// The rest of the connection goes to hyper: these bytes, already read, first.
    Handover(Bytes),
}

/// The full request path, for the requests the fast path does not answer.
pub trait FullPath {
    /// A request arrived (counted for a graceful shutdown's wait for first requests).
    fn arrived(&self);

    /// Serves the bodiless request `head` through hyper and the full path, on `stream`
    /// ([`crate::one_request`]). Whether the connection goes on.
    fn one(
        &self,
        stream: &TcpStream,
        head: Bytes,
        closing: &mut watch::Receiver<bool>,
    ) -> impl std::future::Future<Output = bool> + Send;
}

/// Serves `stream` on the fast path until the connection ends or a request's end is unknown
/// to it (a body, an upgrade). `closing` turns true when the server shuts down gracefully.
pub async fn serve(
    app: &Arc<App>,
    stream: &TcpStream,
    peer: SocketAddr,
    full: &impl FullPath,
    closing: &mut watch::Receiver<bool>,
) -> Ended {
    let limits = &app.config.limits;
    let max_head = limits.max_header_bytes + limits.max_request_line_bytes;
    let header_timeout = Duration::from_millis(limits.header_read_timeout_ms);
    let send_timeout = Duration::from_millis(app.config.server.send_timeout_ms);
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::with_capacity(1024);
    let mut url = String::new();
    // When the current request head started to be awaited (hyper's header read timer).
    let mut waiting_since = Instant::now();
    let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        // Every complete head in the buffer, in order (pipelining).
        while !buf.is_empty() {
            let started = Instant::now();
            let now = SystemTime::now();
            let (len, answered) = match parse(&buf, limits) {
                Parsed::Partial if buf.len() < max_head => break,
                Parsed::Partial | Parsed::Other => return handover(app, buf),
                Parsed::Request { plain, len } => {
                    full.arrived();
                    let answer = plain
                        .as_ref()
                        .and_then(|p| Some((p, answer(app, p, peer, now, &mut out)?)));
                    match answer {
                        Some((req, a)) => {
                            Stats::incr(&app.stats.requests);
                            Stats::incr(&app.stats.hits);
                            Stats::incr(&app.stats.fast_hits);
                            if matches!(a.body, Source::File { .. }) {
                                Stats::incr(&app.stats.fast_sendfile);
                            }
                            let sent = send(stream, &out, &a.body, send_timeout).await;
                            let bytes = if sent.is_ok() { a.body.len() } else { 0 };
                            record(app, req, &a, peer, started, bytes, &mut url);
                            if sent.is_err() {
                                return Ended::Closed;
                            }
                            (len, true)
                        }
                        None => (len, false),
                    }
                }
            };
            if answered {
                buf.advance(len);
            } else {
                Stats::incr(&app.stats.fast_passed);
                let head = buf.split_to(len).freeze();
                if !full.one(stream, head, closing).await {
                    return Ended::Closed;
                }
            }
            waiting_since = Instant::now();
        }
        if *closing.borrow() {
            // Between requests: close. A request partly read goes to hyper, which is told to
            // finish it and close.
            return if buf.is_empty() {
                Ended::Closed
            } else {
                handover(app, buf)
            };
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match stream.try_read_buf(&mut buf) {
            Ok(0) => return Ended::Closed,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return Ended::Closed,
        }
        let deadline = tokio::time::Instant::from_std(waiting_since + header_timeout);
        // One timer per connection, moved only when it would fire more than a second early
        // (a timer reset per request would cost more than the rest of the wait).
        let sleep = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() + Duration::from_secs(1) < deadline {
            sleep.as_mut().reset(deadline);
        }
        tokio::select! {
            biased;
            ready = stream.readable() => {
                if ready.is_err() {
                    return Ended::Closed;
                }
            }
            _ = closing.changed() => {}
            () = sleep.as_mut() => {
                if tokio::time::Instant::now() >= deadline {
                    tracing::debug!(%peer, "no complete request head within the header read timeout; closing");
                    return Ended::Closed;
                }
                sleep.as_mut().reset(deadline);
            }
        }
    }
}

fn handover(app: &App, read: BytesMut) -> Ended {
    Stats::incr(&app.stats.fast_handovers);
    Ended::Handover(read.freeze())
}

/// Counts a served request where the full path does ([`crate::observe`]).
fn record(
    app: &App,
    req: &Plain<'_>,
    a: &Answer,
    peer: SocketAddr,
    started: Instant,
    bytes: u64,
    url: &mut String,
) {
    let t = &app.telemetry;
    let duration = started.elapsed();
    let method = if req.head { "HEAD" } else { "GET" };
    url.clear();
    url.push_str(req.host);
    url.push_str(req.target);
    t.record(&Finished {
        method,
        status: a.status,
        outcome: CacheOutcome::Hit,
        bytes,
        duration,
        url: url.as_str(),
    });
    if let Some(log) = &t.access_log {
        log.log(&Line {
            time: SystemTime::now(),
            client: peer,
            method,
            host: req.host,
            path: req.target,
            status: a.status,
            bytes,
            duration,
            origin: None,
            cache: CacheOutcome::Hit.as_str(),
            cache_status: a.cache_status.to_str().ok(),
            origin_addr: None,
        });
    }
}
