//! The one place a finished request is recorded: [`handle`] runs [`proxy::handle`] and wraps
//! the response body so that, when the body ends (or the client goes away), the request is
//! counted in [`crate::telemetry`] and written to the access log.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderValue, Method, Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access_log::Line;
use crate::admin;
use crate::app::App;
use crate::body::{Body, BodyError};
use crate::origin::{OriginTrace, TRACE};
use crate::proxy;
use crate::telemetry::{CacheOutcome, Finished, Telemetry};

/// [`proxy::handle`], recorded.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    ambiguous_framing: bool,
) -> Response<Body> {
    let started = Instant::now();
    let admin = admin::is_admin_path(req.uri().path()) || req.method().as_str() == "PURGE";
    let telemetry = app.telemetry.clone();
    // Admin requests (the dashboard polls every second) are not traffic: only logged.
    if admin && telemetry.access_log.is_none() {
        return proxy::handle(app, req, peer, ambiguous_framing).await;
    }
    // Clones of the parsed request's own bytes (reference counts, not copies).
    let method = req.method().clone();
    let path = req.uri().path_and_query().cloned();
    // As sent; bytes that are not UTF-8 (obs-text a client may put in `Host`) become U+FFFD.
    let host = match req.uri().authority() {
        Some(a) => a.as_str().to_owned(),
        None => req
            .headers()
            .get(http::header::HOST)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
    };
    let trace = Arc::new(OriginTrace::default());
    let res = TRACE
        .scope(
            trace.clone(),
            proxy::handle(app, req, peer, ambiguous_framing),
        )
        .await;
    let (parts, body) = res.into_parts();
    let cache_status = parts.headers.get("cache-status").cloned();
    let status = parts.status.as_u16();
    let outcome =
        CacheOutcome::classify(cache_status.as_ref().and_then(|v| v.to_str().ok()), status);
    let record = Record {
        telemetry,
        started,
        admin,
        peer,
        method,
        host,
        path,
        status,
        outcome,
        cache_status,
        trace,
        bytes: 0,
    };
    Response::from_parts(
        parts,
        Observed {
            inner: body,
            record: Some(record),
        }
        .boxed(),
    )
}

/// What is known of a request until its body ends.
struct Record {
    telemetry: Arc<Telemetry>,
    started: Instant,
    admin: bool,
    peer: SocketAddr,
    method: Method,
    host: String,
    path: Option<PathAndQuery>,
    status: u16,
    outcome: CacheOutcome,
    cache_status: Option<HeaderValue>,
    trace: Arc<OriginTrace>,
    bytes: u64,
}

impl Record {
    fn finish(self) {
        let duration = self.started.elapsed();
        let t = &self.telemetry;
        let path = self.path.as_ref().map_or("/", PathAndQuery::as_str);
        if !self.admin {
            let url = format!("{}{path}", self.host);
            t.record(&Finished {
                method: self.method.as_str(),
                status: self.status,
                outcome: self.outcome,
                bytes: self.bytes,
                duration,
                url: &url,
            });
        }
        if let Some(log) = &t.access_log {
            let origin_micros = self.trace.micros.load(Ordering::Relaxed);
            let origin_addr = *self.trace.addr.lock().unwrap_or_else(|e| e.into_inner());
            log.log(&Line {
                time: SystemTime::now(),
                client: self.peer,
                method: self.method.as_str(),
                host: &self.host,
                path,
                status: self.status,
                bytes: self.bytes,
                duration,
                origin: (origin_micros > 0).then(|| Duration::from_micros(origin_micros)),
                cache: if self.admin {
                    "admin"
                } else {
                    self.outcome.as_str()
                },
                cache_status: self.cache_status.as_ref().and_then(|v| v.to_str().ok()),
                origin_addr,
            });
        }
    }
}

/// A response body that counts its bytes and records the request when it is dropped.
struct Observed {
    inner: Body,
    record: Option<Record>,
}

impl HttpBody for Observed {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let (Some(data), Some(r)) = (frame.data_ref(), self.record.as_mut()) {
                r.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        if let Some(r) = self.record.take() {
            r.finish();
        }
    }
}
