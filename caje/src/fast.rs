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

use std::fs::File;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use nix::sys::sendfile::sendfile64;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::access_log::Line;
use crate::admin;
use crate::app::App;
use crate::cache::key::{self, CacheKey};
use crate::cache::policy::Freshness;
use crate::cache::store::FastLookup;
use crate::cache_status::Outcome;
use crate::file_body;
use crate::headers;
use crate::host::Host;
use crate::stats::Stats;
use crate::telemetry::{CacheOutcome, Finished};

/// How a connection's time on the fast path ended.
#[derive(Debug)]
pub enum Ended {
    /// The connection is done: closed by the client, timed out, failed, or shut down.
    Closed,
    /// The rest of the connection goes to hyper: these bytes, already read, first.
    Handover(Bytes),
}

/// Most request fields the fast path parses; a request with more is handed over.
const MAX_FIELDS: usize = 48;

/// Fields that make a request's end unknown to the fast path (a body, an upgrade, an
/// interim answer): the request and the rest of the connection go to hyper.
const UNBOUNDED: &[&str] = &["content-length", "transfer-encoding", "expect", "upgrade"];

/// Fields that can change a hit's answer: the request goes to the full path.
const NOT_PLAIN: &[&str] = &[
    "authorization",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// Stored fields the full path replaces in a hit's answer ([`crate::hit::respond`]).
const REPLACED: &[&str] = &["age", "cache-status", "accept-ranges", "content-length"];

/// A request the fast path may answer, parsed in place.
struct Plain<'a> {
    head: bool,
    target: &'a str,
    host: &'a str,
    /// The whole request head (parsed again for a page stored with `Vary`).
    raw: &'a [u8],
}

/// What the head at the start of the buffer is.
enum Parsed<'a> {
    /// Not all of it has arrived.
    Partial,
    /// A request whose end the fast path does not know, or bytes hyper will refuse: the
    /// connection goes to hyper.
    Other,
    /// A complete request without a body, `len` bytes long; `plain` when the fast path may
    /// answer it, else the full path serves it alone ([`crate::one_request`]).
    Request {
        plain: Option<Plain<'a>>,
        len: usize,
    },
}

fn parse<'a>(buf: &'a [u8], app: &App) -> Parsed<'a> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let limits = &app.config.limits;
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    // What hyper or the full path would refuse, and close the connection for, stays theirs.
    if method == "CONNECT"
        || !target.starts_with('/')
        || method.len() + target.len() > limits.max_request_line_bytes
        || req.headers.len() > limits.max_headers
        || http::uri::PathAndQuery::try_from(target).is_err()
    {
        return Parsed::Other;
    }
    let mut plain = method == "GET" || method == "HEAD";
    let mut host = None;
    let mut hosts = 0;
    let mut field_bytes = 0;
    for f in req.headers.iter() {
        field_bytes += f.name.len() + f.value.len() + 4;
        if f.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("connection") {
            if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::Other;
            }
        } else if UNBOUNDED.iter().any(|h| f.name.eq_ignore_ascii_case(h)) {
            return Parsed::Other;
        } else if NOT_PLAIN.iter().any(|h| f.name.eq_ignore_ascii_case(h)) {
            plain = false;
        }
    }
    if field_bytes > limits.max_header_bytes {
        return Parsed::Other;
    }
    let host = match host.map(std::str::from_utf8) {
        Some(Ok(h)) if hosts == 1 => h,
        _ => return Parsed::Request { plain: None, len },
    };
    let plain = (plain && !admin::is_admin_path(target)).then_some(Plain {
        head: method == "HEAD",
        target,
        host,
        raw: &buf[..len],
    });
    Parsed::Request { plain, len }
}

/// A hit ready to be written: its head and where its body comes from.
struct Answer {
    status: u16,
    body: Source,
    cache_status: http::HeaderValue,
}

/// Where a hit's body comes from.
enum Source {
    /// Nothing is sent (HEAD).
    Empty,
    /// From memory: the memory tier, or just read and checked.
    Memory(Bytes),
    /// Sent by the kernel from a kept, checked entry file (`sendfile`).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

impl Source {
    fn len(&self) -> u64 {
        match self {
            Source::Empty => 0,
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }
}

/// Writes the answer's head into `out` if `req` is a fresh hit the fast path may serve.
fn answer(
    app: &App,
    req: &Plain<'_>,
    peer: SocketAddr,
    now: SystemTime,
    out: &mut Vec<u8>,
) -> Option<Answer> {
    let host = Host::parse(req.host, "http").ok()?;
    app.origins.route(host.as_str())?;
    let key = CacheKey::new(&host, req.target);
    let store = &app.store;
    let hot = match store.lookup_plain(&key) {
        FastLookup::Hot(hot) => hot,
        FastLookup::Varies => store.lookup_varied(&key, &origin_headers(app, req, &host, peer)?)?,
        FastLookup::Other => return None,
    };
    let Freshness::Fresh { age, ttl } = hot.fresh(now, &app.policy)? else {
        return None;
    };
    let status = hot.status();
    let reason = status.canonical_reason()?;
    let len = hot.body_len();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || len == 0
    {
        return None;
    }
    // As the full path: a HEAD does not read the body; a GET takes it from memory, else
    // sends a kept file as it is, else reads and checks it now.
    let body = if req.head {
        Source::Empty
    } else if let Some(b) = store.hot().get(&hot.body_file) {
        Source::Memory(b)
    } else if let Some(file) = file_body::sendable(store, &hot) {
        Source::File {
            file,
            offset: hot.body_offset,
            len,
        }
    } else {
        Source::Memory(file_body::inline_hit(store, &hot)?)
    };
    let cache_status = Outcome::hit(ttl.as_secs() as i64).header_value();

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in hot.fields() {
        if REPLACED.iter().any(|r| r.as_bytes() == name) {
            continue;
        }
        dated |= name == b"date";
        field(out, name, value);
    }
    let mut n = itoa::Buffer::new();
    field(out, b"age", n.format(age.as_secs()).as_bytes());
    field(out, b"cache-status", cache_status.as_bytes());
    if status == StatusCode::OK {
        field(out, b"accept-ranges", b"bytes");
    }
    field(out, b"content-length", n.format(len).as_bytes());
    if !dated {
        // hyper adds one to a response without it; so does this path.
        field(out, b"date", httpdate::fmt_http_date(now).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Some(Answer {
        status: status.as_u16(),
        body,
        cache_status,
    })
}

/// The request's headers as the origin would see them, from which the key's `Vary` values
/// are read: what `fill::Ctx::new` makes of a request on the full path (hop-by-hop and
/// stripped fields out, forwarding fields set, `Accept-Encoding` normalised, the canonical
/// `Host`). `None` for a field hyper would not have accepted.
fn origin_headers(app: &App, req: &Plain<'_>, host: &Host, peer: SocketAddr) -> Option<HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(req.raw).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 6);
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(f.value).ok()?);
    }
    headers::prepare_for_origin(
        &mut headers,
        peer.ip(),
        host.as_str(),
        app.config.server.trust_forwarded,
        &app.strip_request_headers,
    );
    key::normalize_accept_encoding(&mut headers);
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(host.as_str()).ok()?,
    );
    Some(headers)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
            let (len, answered) = match parse(&buf, app) {
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

/// Sends a hit: head and body from memory in one `writev`; a file's head held back with
/// `MSG_MORE` and its body sent by `sendfile`, so both leave in full segments.
async fn send(stream: &TcpStream, head: &[u8], body: &Source, timeout: Duration) -> io::Result<()> {
    match body {
        Source::Empty => write_all(stream, head, &[], timeout).await,
        Source::Memory(b) => write_all(stream, head, b, timeout).await,
        Source::File { file, offset, len } => {
            let mut done = 0;
            while done < head.len() {
                let sent = stream.try_io(Interest::WRITABLE, || send_more(stream, &head[done..]));
                match sent {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        writable(stream, timeout).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            let end = offset + len;
            let mut at = *offset as i64;
            while (at as u64) < end {
                let count = (end - at as u64) as usize;
                let sent = stream.try_io(Interest::WRITABLE, || {
                    sendfile64(stream, &**file, Some(&mut at), count).map_err(io::Error::from)
                });
                match sent {
                    // Shorter than checked: the client gets a cut connection, never a short
                    // body presented as whole.
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        writable(stream, timeout).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// `send(2)` with `MSG_MORE`: the kernel holds the bytes until the body that follows.
fn send_more(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    // SAFETY: the pointer and length are those of a live slice, and the descriptor is the
    // stream's own, open for as long as `stream` is borrowed.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits until the socket takes more, for at most `timeout` (`server.send_timeout_ms`).
async fn writable(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, stream.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `head` and `body`, waiting at most `timeout` each time the socket is full.
async fn write_all(
    stream: &TcpStream,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let mut done = 0;
    let total = head.len() + body.len();
    while done < total {
        let slices = if done < head.len() {
            [IoSlice::new(&head[done..]), IoSlice::new(body)]
        } else {
            [IoSlice::new(&body[done - head.len()..]), IoSlice::new(&[])]
        };
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, timeout).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
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

/// A connection handed over by the fast path: the bytes it read but did not serve come first,
/// then the socket. Writes go straight to the socket.
#[derive(Debug)]
pub struct Resumed<IO> {
    read: Bytes,
    io: IO,
}

impl<IO> Resumed<IO> {
    /// `io`, whose next bytes are `read`.
    pub fn new(read: Bytes, io: IO) -> Self {
        Resumed { read, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Resumed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Resumed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
