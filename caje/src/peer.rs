//! Origin shield: a node fills a page from the node that stored it (the manifest row's
//! `node_url`) instead of from the origin.
//!
//! The asking side is [`ask`] (called by [`crate::fill::fill_page`] for populate); the answering
//! side is [`serve`], routed by the proxy for `GET /_caje/peer`. The request names the page in
//! headers (`Caje-Peer-Host`, `Caje-Peer-Path`) and carries the page's recorded `Vary` request
//! headers, so the answer is the same variant. It is:
//!
//! - authenticated: `Caje-Peer-Token` must equal `cluster.token` (compared in constant time);
//!   without a configured token the endpoint answers nobody;
//! - answered only from the answering node's cache: a fresh, not invalidated copy at least as
//!   new as the row the asker read (`Caje-Peer-Stored-At`). Anything else is a
//!   `404` with `Cache-Status: caje; detail=peer-miss` and `Cache-Control: no-store`; the
//!   request never reaches an origin and is never stored (it does not go through the fill);
//! - purge-safe: the asker sends the highest tombstone id it has applied
//!   (`Caje-Peer-Applied`), and a node that has not applied as many answers
//!   `detail=peer-behind`, so a copy a purge removed on the asker cannot come back from a
//!   node that has not seen that purge yet. Purges applied after the asker's fill started
//!   drop the fill at its commit, as for an origin fill (`Ctx::purge_epoch`);
//! - verified: the answer carries `Content-Length` and `Caje-Peer-Crc32` (the stored body's
//!   CRC-32, hex); the fill's tee checks the length and its writer refuses to commit a body
//!   whose length or CRC differ;
//! - aged: `Age` is the copy's current age at the answering node, so the copy's freshness
//!   lifetime on the asker ends when it would have on the answering node (it does not live
//!   longer than the origin allowed).
//!
//! The page is looked up by its cache key, and files are named by a hash of the key: no
//! header can name a file outside the cache.

use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{self, Body};
use crate::cache::key::CacheKey;
use crate::cache::policy::{self, Freshness};
use crate::cache::store::Lookup;
use crate::cache_status::Outcome;
use crate::file_body::hit_body;
use crate::host::Host;
use crate::origin::Origin;
use crate::stats::Stats;

/// The route of the peer endpoint (after `admin::normalize_path`).
pub const ROUTE: &str = "/_caje/peer";
/// The cluster token.
pub const TOKEN: &str = "caje-peer-token";
/// The page's canonical host.
pub const HOST: &str = "caje-peer-host";
/// The page's path and query.
pub const PATH: &str = "caje-peer-path";
/// The highest tombstone id the asker has applied.
pub const APPLIED: &str = "caje-peer-applied";
/// `stored_at` of the manifest row the asker read: an older copy is not an answer.
pub const STORED_AT: &str = "caje-peer-stored-at";
/// CRC-32 of the body, 8 hex digits.
pub const CRC32: &str = "caje-peer-crc32";

/// Answers a peer's `GET /_caje/peer` from this node's cache only.
pub async fn serve(app: &Arc<App>, req: Request<Incoming>) -> Response<Body> {
    let answer = |status: StatusCode, detail: &'static str| {
        Stats::incr(&app.stats.peer_misses);
        refusal(status, detail)
    };
    let (parts, _) = req.into_parts();
    if parts.method != Method::GET {
        return answer(StatusCode::METHOD_NOT_ALLOWED, "peer-method");
    }
    let token = &app.config.cluster.token;
    let presented = parts.headers.get(TOKEN).map(HeaderValue::as_bytes);
    match presented {
        Some(p) if !token.is_empty() && crate::secret::constant_time_eq(p, token.as_bytes()) => {}
        _ => return answer(StatusCode::UNAUTHORIZED, "peer-unauthorized"),
    }
    let headers = &parts.headers;
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let number = |name: &str| text(name).and_then(|v| v.trim().parse::<i64>().ok());
    let (Some(host), Some(path)) = (text(HOST), text(PATH).filter(|p| p.starts_with('/'))) else {
        return answer(StatusCode::BAD_REQUEST, "peer-bad-request");
    };
    let Ok(host) = Host::parse(host, "http") else {
        return answer(StatusCode::BAD_REQUEST, "peer-bad-request");
    };
    // The guard before the lookup: a tombstone it counts has already removed its copies.
    let applied = app.tombstones.guard().applied;
    if applied < number(APPLIED).unwrap_or(0) {
        return answer(StatusCode::NOT_FOUND, "peer-behind");
    }
    let key = CacheKey::new(&host, path);
    let Lookup::Found(entry) = app.store.lookup(&key, headers).await else {
        return answer(StatusCode::NOT_FOUND, "peer-miss");
    };
    let now = SystemTime::now();
    let age = match policy::freshness(&entry.meta.policy, &parts, host.as_str(), now, &app.policy) {
        Freshness::Fresh { age, .. } => age,
        Freshness::Stale => return answer(StatusCode::NOT_FOUND, "peer-miss"),
    };
    let old = (entry.meta.stored_at as i64) < number(STORED_AT).unwrap_or(0);
    if entry.meta.invalidated || old {
        return answer(StatusCode::NOT_FOUND, "peer-miss");
    }
    let Ok(body) = hit_body(&app.store, &entry.hit).await else {
        return answer(StatusCode::NOT_FOUND, "peer-miss");
    };
    Stats::incr(&app.stats.peer_served);
    // The head as stored, not as served to clients: `Surrogate-Key` (the purge tags) and
    // `Surrogate-Control` (the freshness caje obeys) must reach the asker's copy too.
    let (status, stored) = entry.meta.response_head();
    let mut res = Response::new(body);
    *res.status_mut() = status;
    let h = res.headers_mut();
    *h = stored;
    h.insert(header::AGE, HeaderValue::from(age.as_secs()));
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(entry.meta.body_len),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("{:08x}", entry.meta.body_crc32)) {
        h.insert(CRC32, v);
    }
    res
}

/// A peer endpoint answer that is not a page.
fn refusal(status: StatusCode, detail: &'static str) -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    let outcome = Outcome {
        detail: Some(detail),
        ..Outcome::default()
    };
    h.insert("cache-status", outcome.header_value());
    res
}

/// What a peer sent for a page: the response, with the body's announced length and CRC-32
/// (already removed from its headers, as is the peer's `Cache-Status`).
pub struct PeerAnswer {
    /// The stored response as the peer holds it, `Age` its current age there.
    pub response: Response<Incoming>,
    /// `Content-Length`.
    pub len: u64,
    /// `Caje-Peer-Crc32`.
    pub crc32: u32,
}

/// Asks the node at `url` for the page `host` `path` with the request `headers` (the
/// page's `Vary` values), not older than `stored_at`. `None` when it has no usable answer
/// within `cluster.peer_timeout_ms` (the caller then asks the origin).
pub async fn ask(
    app: &App,
    url: &str,
    host: &str,
    path: &str,
    headers: &HeaderMap,
    stored_at: i64,
) -> Option<PeerAnswer> {
    let cluster = &app.config.cluster;
    let target: http::Uri = url.parse().ok()?;
    let (scheme, authority) = (target.scheme()?.clone(), target.authority()?.clone());
    let peer = Origin {
        host: None,
        scheme,
        authority: authority.clone(),
        prefix: String::new(),
        host_header: crate::config::HostHeader::Origin,
        url: url.to_owned(),
    };
    let guard = app.tombstones.guard();
    let need = guard.also.iter().copied().fold(guard.applied, i64::max);
    let mut req = Request::new(body::empty());
    *req.uri_mut() = peer.uri_for(ROUTE).ok()?;
    let h = req.headers_mut();
    *h = headers.clone();
    h.insert(
        header::HOST,
        HeaderValue::from_str(authority.as_str()).ok()?,
    );
    h.insert(TOKEN, HeaderValue::from_str(&cluster.token).ok()?);
    h.insert(HOST, HeaderValue::from_str(host).ok()?);
    h.insert(PATH, HeaderValue::from_str(path).ok()?);
    h.insert(APPLIED, HeaderValue::from(need));
    h.insert(STORED_AT, HeaderValue::from(stored_at));
    let sent = tokio::time::timeout(cluster.peer_timeout(), app.client.send(&peer, req)).await;
    let mut response = match sent {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            tracing::debug!(peer = url, path, "peer fill: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(peer = url, path, "peer fill: no answer in time");
            return None;
        }
    };
    let h = response.headers_mut();
    // A page always carries its checksum; a refusal never does (whatever its status).
    let crc32 = h
        .remove(CRC32)
        .and_then(|v| u32::from_str_radix(v.to_str().ok()?, 16).ok());
    let len = h
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let (Some(crc32), Some(len)) = (crc32, len) else {
        tracing::debug!(peer = url, path, status = %response.status(), "peer fill: no copy there");
        return None;
    };
    h.remove("cache-status");
    Some(PeerAnswer {
        response,
        len,
        crc32,
    })
}
