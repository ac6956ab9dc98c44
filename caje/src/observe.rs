//! The one place a finished request is recorded: [`handle`] runs [`proxy::handle`] and wraps
//! the response body so that, when the body ends (or the client goes away), the request is
//! counted in [`crate::telemetry`] and written to the access log.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::access_log::{rfc3339, Line};
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
    let method = req.method().as_str().to_owned();
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let trace = Arc::new(OriginTrace::default());
    let res = TRACE
        .scope(
            trace.clone(),
            proxy::handle(app, req, peer, ambiguous_framing),
        )
        .await;
    let (parts, body) = res.into_parts();
    let cache_status = parts
        .headers
        .get("cache-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = parts.status.as_u16();
    let record = Record {
        telemetry,
        started,
        admin,
        peer,
        method,
        host,
        path,
        status,
        outcome: CacheOutcome::classify(cache_status.as_deref(), status),
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
    method: String,
    host: String,
    path: String,
    status: u16,
    outcome: CacheOutcome,
    cache_status: Option<String>,
    trace: Arc<OriginTrace>,
    bytes: u64,
}

impl Record {
    fn finish(self) {
        let duration = self.started.elapsed();
        let t = &self.telemetry;
        if !self.admin {
            let url = format!("{}{}", self.host, self.path);
            t.record(&Finished {
                method: &self.method,
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
            log.log(Line {
                time: rfc3339(SystemTime::now()),
                client: self.peer.to_string(),
                method: self.method,
                host: self.host,
                path: self.path,
                status: self.status,
                bytes: self.bytes,
                duration_ms: (duration.as_secs_f64() * 1e6).round() / 1e3,
                origin_ms: (origin_micros > 0).then(|| origin_micros as f64 / 1e3),
                cache: if self.admin {
                    "admin"
                } else {
                    self.outcome.as_str()
                },
                cache_status: self.cache_status,
                origin_addr: origin_addr.map(|a| a.to_string()),
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
