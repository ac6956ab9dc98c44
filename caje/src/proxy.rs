//! The request path. This is the only module that knows the order of the steps:
//!
//! 1. reject malformed or hostile requests ([`check_request`]);
//! 2. hand `/_caje/` to the admin API;
//! 3. route the client host to an origin (421 when there is none);
//! 4. look the page up in the store and serve a fresh hit from disk;
//! 5. otherwise forward to the origin and stream the response back, teeing it into the cache
//!    when the policy allows.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::admin;
use crate::app::App;
use crate::body::{self, Body, HitError, Tee};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{normalize_host, CacheKey, Variant};
use crate::cache::policy::{self, Freshness, NotStorable};
use crate::cache::store::{Entry, Lookup};
use crate::cache_status::{Forward, Outcome};
use crate::headers;
use crate::origin::Origin;
use crate::stats::Stats;

/// Handles one client request. Never fails: every error becomes a response.
///
/// `ambiguous_framing` is set when the connection scanner saw repeated `Content-Length` or
/// `Transfer-Encoding` with `Content-Length` on this request (see [`crate::framing`]).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
    ambiguous_framing: bool,
) -> Response<Body> {
    if let Some(rejection) = check_request(&app, &req, ambiguous_framing) {
        return rejection;
    }
    if admin::is_admin_path(req.uri().path()) {
        return admin::handle(&app, req, peer).await;
    }
    Stats::incr(&app.stats.requests);
    let (parts, body) = req.into_parts();
    let (host, absolute) = match request_host(&parts) {
        Ok(h) => h,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    if absolute && !app.origins.is_explicit(&host) {
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            format!("caje: refusing absolute-form request for {host}: caje is a reverse proxy, not a forward proxy\n"),
        );
    }
    let Some(origin) = app.origins.route(&host) else {
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            format!("caje: no origin is configured for host {host:?}; add an [[origins]] entry for it or a \"*\" origin\n"),
        );
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let key = CacheKey::new(&host, &path);

    let fwd = if parts.method != Method::GET && parts.method != Method::HEAD {
        Forward::Method
    } else if parts.headers.contains_key(header::RANGE) {
        Forward::Request
    } else {
        match lookup(&app, &key, &parts, &host).await {
            Ok(hit) => return hit,
            Err(fwd) => fwd,
        }
    };
    forward(&app, origin, parts, body, &host, key, fwd, peer).await
}

/// Serves a fresh stored response, or says why the request must go forward.
async fn lookup(
    app: &App,
    key: &CacheKey,
    parts: &request::Parts,
    host: &str,
) -> Result<Response<Body>, Forward> {
    let entry = match app.store.lookup(key, &parts.headers) {
        Lookup::Found(e) => e,
        Lookup::VaryMiss => return Err(Forward::VaryMiss),
        Lookup::Miss => return Err(Forward::UriMiss),
    };
    let now = SystemTime::now();
    let (age, ttl) = match policy::freshness(&entry.meta.policy, parts, host, now, app.policy) {
        Freshness::Fresh { age, ttl } => (age, ttl),
        Freshness::Stale => return Err(Forward::Stale),
    };
    let body = if parts.method == Method::HEAD {
        body::empty()
    } else {
        match body::hit_body(&app.store, &entry).await {
            Ok(b) => b,
            Err(HitError::Gone) | Err(HitError::Corrupt) => return Err(Forward::Miss),
        }
    };
    Stats::incr(&app.stats.hits);
    Ok(hit_response(&entry, age.as_secs(), ttl.as_secs(), body))
}

fn hit_response(entry: &Entry, age: u64, ttl: u64, body: Body) -> Response<Body> {
    let (status, mut headers) = entry.meta.response_head();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(entry.meta.body_len),
    );
    headers::append_via(&mut headers);
    headers.insert("cache-status", Outcome::Hit { ttl }.header_value());
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    res
}

/// Forwards the request to the origin and streams the answer back, storing it if allowed.
#[allow(clippy::too_many_arguments)]
async fn forward(
    app: &App,
    origin: &Origin,
    parts: request::Parts,
    body: Incoming,
    host: &str,
    key: CacheKey,
    fwd: Forward,
    peer: SocketAddr,
) -> Response<Body> {
    Stats::incr(&app.stats.misses);
    let may_store =
        parts.method == Method::GET && fwd != Forward::Method && fwd != Forward::Request;
    let oreq = match origin_request(app, origin, &parts, body, host, peer, may_store) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(origin, oreq).await {
        Ok(r) => r,
        Err(e) => {
            Stats::incr(&app.stats.origin_errors);
            tracing::warn!(%host, path = %key.path, "origin request failed: {e}");
            let mut res = local(e.status(), format!("caje: {e}\n"));
            res.headers_mut().insert(
                "cache-status",
                Outcome::failed(fwd, e.detail()).header_value(),
            );
            return res;
        }
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let content_length = rparts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());

    let decision = if may_store {
        policy::decide(&parts, host, &rparts, SystemTime::now(), app.policy).and_then(|s| {
            match content_length {
                Some(len) if len > app.config.cache.max_object_bytes => Err(NotStorable::TooLarge),
                _ => Ok(s),
            }
        })
    } else {
        Err(NotStorable::Status)
    };
    let status = rparts.status.as_u16();
    let outcome = match (&decision, fwd) {
        (_, Forward::Method | Forward::Request) => Outcome::Forward {
            fwd,
            status: Some(status),
            stored: false,
            detail: None,
        },
        (Ok(_), _) => Outcome::forwarded(fwd, status, Ok(())),
        (Err(why), _) => Outcome::forwarded(fwd, status, Err(*why)),
    };
    let fill = match decision {
        Ok(storable) => {
            let meta = EntryMeta {
                host: key.host.clone(),
                path: key.path.clone(),
                variant: Variant::from_request(&storable.vary_names, &parts.headers),
                status,
                headers: EntryMeta::headers_from(&rparts.headers),
                policy: storable.policy,
                body_file: String::new(),
                body_len: 0,
                body_crc32: 0,
                stored_at: unix_now(),
            };
            Some(
                app.store
                    .begin_fill(meta, app.config.cache.max_object_bytes),
            )
        }
        Err(why) => {
            if may_store {
                Stats::incr(&app.stats.not_stored);
                tracing::debug!(%host, path = %key.path, reason = why.as_str(), "not storing");
            }
            None
        }
    };
    rparts
        .headers
        .insert("cache-status", outcome.header_value());
    headers::append_via(&mut rparts.headers);
    let tee = Tee::new(
        rbody,
        fill,
        content_length,
        app.config.origin_timeouts.body_idle(),
        app.stats.clone(),
    );
    Response::from_parts(rparts, tee.boxed())
}

/// Builds the request to the origin.
fn origin_request(
    app: &App,
    origin: &Origin,
    parts: &request::Parts,
    body: Incoming,
    host: &str,
    peer: SocketAddr,
    for_cache: bool,
) -> Result<Request<Body>, String> {
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = origin
        .uri_for(pq)
        .map_err(|e| format!("caje: cannot build origin URL for {pq:?}: {e}\n"))?;
    let mut headers = parts.headers.clone();
    headers::strip_hop_by_hop(&mut headers);
    let client_host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(host)
        .to_owned();
    headers::set_forwarded(
        &mut headers,
        peer.ip(),
        &client_host,
        app.config.server.trust_forwarded,
    );
    let host_value = match origin.host_header {
        crate::config::HostHeader::Origin => origin.authority.as_str().to_owned(),
        crate::config::HostHeader::Client => client_host,
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        headers.insert(header::HOST, v);
    }
    if for_cache {
        // The stored response must be a full one that any later client can use, so the
        // client's own validators are not passed on.
        headers.remove(header::IF_NONE_MATCH);
        headers.remove(header::IF_MODIFIED_SINCE);
    }
    let limit = app.config.limits.max_request_body_bytes as usize;
    let body = Limited::new(body, limit).boxed();
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    Ok(req)
}

/// The host a request is for, and whether it came from an absolute-form target.
fn request_host(parts: &request::Parts) -> Result<(String, bool), String> {
    if let Some(auth) = parts.uri.authority() {
        return Ok((normalize_host(auth.as_str()), true));
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => h
            .to_str()
            .ok()
            .filter(|h| !h.is_empty())
            .map(|h| (normalize_host(h), false))
            .ok_or_else(|| "caje: the Host header is empty or not valid text\n".to_owned()),
        (None, _) => Err("caje: the request has no Host header\n".to_owned()),
        (Some(_), Some(_)) => Err("caje: the request has more than one Host header\n".to_owned()),
    }
}

/// Rejects requests caje will not process: over-long targets, ambiguous framing, CONNECT,
/// bodies over the limit. Framing errors also close the connection, because the next
/// request's boundary on it cannot be trusted.
pub fn check_request<B>(
    app: &App,
    req: &Request<B>,
    ambiguous_framing: bool,
) -> Option<Response<Body>> {
    let limits = &app.config.limits;
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len() + 8);
    if req.method().as_str().len() + target_len > limits.max_request_line_bytes {
        return Some(local(
            StatusCode::URI_TOO_LONG,
            format!(
                "caje: the request target is longer than {} bytes\n",
                limits.max_request_line_bytes
            ),
        ));
    }
    let cls: Vec<&HeaderValue> = req
        .headers()
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    let te = req.headers().contains_key(header::TRANSFER_ENCODING);
    let ambiguous = ambiguous_framing
        || cls.len() > 1
        || cls.iter().any(|v| v.as_bytes().contains(&b','))
        || (te && !cls.is_empty());
    if ambiguous {
        let mut res = local(
            StatusCode::BAD_REQUEST,
            "caje: conflicting or repeated Content-Length / Transfer-Encoding headers\n".into(),
        );
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    if req.method() == Method::CONNECT {
        return Some(local(
            StatusCode::METHOD_NOT_ALLOWED,
            "caje: CONNECT is not supported; caje is a reverse proxy\n".into(),
        ));
    }
    let declared = cls
        .first()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body_bytes) {
        let mut res = local(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "caje: request body larger than {} bytes\n",
                limits.max_request_body_bytes
            ),
        );
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Some(res);
    }
    None
}

/// A plain-text response generated by caje.
pub fn local(status: StatusCode, text: String) -> Response<Body> {
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cache-status", Outcome::Local.header_value());
    res
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
