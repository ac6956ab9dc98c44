//! The admin API under `/_caje/`: listing, clearing and counters, as JSON.
//!
//! Never forwarded and never cached. Access needs `Authorization: Bearer <token>` when a
//! token is configured; without one, only clients in `admin.allow_from` (loopback by default)
//! are served, so a fresh install is never open to the internet.
//!
//! Paths are matched after normalisation (percent-decoding of unreserved characters, `//`
//! collapsed, `.` and `..` resolved), so `/%5Fcaje/clear` or `/x/../_caje/clear` cannot reach
//! the origin or slip past authentication.

mod list;
mod purge;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};

use crate::app::App;
use crate::body::{self, Body};
use crate::cache_status::Outcome;
use crate::secret::constant_time_eq;

/// The admin prefix.
pub const PREFIX: &str = "/_caje";

/// Normalises a request path the way a file system or a lenient origin would read it.
pub fn normalize_path(raw: &str) -> String {
    // Every escape is decoded (so `%5F`, `%2e`, `%2F` all count) for matching purposes.
    let decoded = percent_decode(raw);
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Whether a raw request path addresses the admin API.
pub fn is_admin_path(raw: &str) -> bool {
    // Fast path for almost every request: without an escape, only a literal `_caje` segment
    // can normalise to the admin prefix.
    if !raw.contains('%') && !raw.contains("_caje") {
        return false;
    }
    let p = normalize_path(raw);
    p == PREFIX || p.starts_with("/_caje/")
}

/// Handles an admin request (the path is known to be an admin path).
pub async fn handle(app: &Arc<App>, req: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    if normalize_path(req.uri().path()) == PREFIX && *req.method() == Method::GET {
        return dashboard_page(app, &req, peer);
    }
    if let Err(res) = authorize(app, &req, peer) {
        return *res;
    }
    if req.method().as_str() == "PURGE" {
        return purge::purge_method(app, &req).await;
    }
    let path = normalize_path(req.uri().path());
    let route = path.strip_prefix(PREFIX).unwrap_or("");
    let method = req.method().clone();
    match (route, &method) {
        ("/purge", &Method::POST) => purge::purge_endpoint(app, &req).await,
        ("/purge", _) => method_not_allowed("POST"),
        ("/populate", &Method::POST) => populate(app).await,
        ("/populate", _) => method_not_allowed("POST"),
        ("/status", &Method::GET) => status(app).await,
        ("/status", _) => method_not_allowed("GET"),
        ("/list", &Method::GET) => list::list(app, req.uri().query()).await,
        ("/stats", &Method::GET) => stats(app),
        ("/clear", &Method::POST) => clear(app, true, true).await,
        ("/clear/fs", &Method::POST) => clear(app, true, false).await,
        ("/clear/db", &Method::POST) => clear(app, false, true).await,
        ("/list" | "/stats", _) => method_not_allowed("GET"),
        ("/clear" | "/clear/fs" | "/clear/db", _) => method_not_allowed("POST"),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no admin endpoint {path}; see GET /_caje/list, GET /_caje/stats, GET /_caje/status, POST /_caje/populate, POST /_caje/purge?url=|tag=, POST /_caje/clear[/fs|/db]")}),
        ),
    }
}

fn authorize<B>(app: &App, req: &Request<B>, peer: SocketAddr) -> Result<(), Box<Response<Body>>> {
    if let Some(token) = &app.admin_token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        return match given {
            Some(g) if crate::secret::constant_time_eq(g.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Box::new(unauthorized("the admin token is wrong"))),
            None => Err(Box::new(unauthorized(
                "admin endpoints need an Authorization: Bearer <token> header",
            ))),
        };
    }
    if app.admin_allow.iter().any(|n| n.contains(peer.ip())) {
        forgeable_by_browser(req).map_or(Ok(()), |why| {
            Err(Box::new(json_response(
                StatusCode::FORBIDDEN,
                &json!({"error": format!("{why}: without an admin token, state-changing admin requests must not come from a web page; set admin.token (or CAJE_ADMIN_TOKEN) and send Authorization: Bearer <token>")}),
            )))
        })
    } else {
        Err(Box::new(json_response(
            StatusCode::FORBIDDEN,
            &json!({"error": format!("admin endpoints are only open to {:?} when no admin token is set; set admin.token (or CAJE_ADMIN_TOKEN) to use them remotely", app.config.admin.allow_from)}),
        )))
    }
}

/// `GET /_caje/`: the dashboard, to whoever may use the admin API. With a token, a browser
/// cannot set `Authorization: Bearer` on a navigation, so the page alone also accepts the
/// token as a Basic password (the browser asks for it). Basic credentials open nothing else:
/// every other endpoint wants Bearer, which the page's own requests send.
fn dashboard_page<B>(app: &App, req: &Request<B>, peer: SocketAddr) -> Response<Body> {
    let denied = match authorize(app, req, peer) {
        Ok(()) => return crate::dashboard::page(),
        Err(res) => res,
    };
    let Some(token) = &app.admin_token else {
        return *denied;
    };
    let password = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b64| crate::dashboard::base64_decode(b64.trim()))
        .and_then(|creds| {
            let creds = String::from_utf8(creds).ok()?;
            creds.split_once(':').map(|(_, p)| p.to_owned())
        });
    if password.is_some_and(|p| constant_time_eq(p.as_bytes(), token.as_bytes())) {
        return crate::dashboard::page();
    }
    let mut res = *denied;
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(
            "Basic realm=\"caje dashboard: any user, the admin token as password\"",
        ),
    );
    res
}

/// Why a state-changing admin request could have been sent by a web page the operator's
/// browser loaded (cross-site request forgery), if it could.
///
/// Without a token, admin access rests on the peer address alone, and a browser on the
/// operator's machine is a loopback peer: any site it visits can make it POST a form to
/// `http://127.0.0.1:8080/_caje/clear`. A form cannot set `Authorization`, so token requests
/// are safe; for the rest caje refuses what only a browser sends: an `Origin` or
/// `Sec-Fetch-Site` that is not this same site, and the three content types a form (or a
/// "simple" cross-site `fetch`) may use. curl and scripts send none of these.
fn forgeable_by_browser<B>(req: &Request<B>) -> Option<&'static str> {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return None;
    }
    let h = req.headers();
    let text = |name: header::HeaderName| h.get(name).map(|v| v.to_str().unwrap_or("\u{fffd}"));
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site")) {
        if !matches!(site.trim(), "same-origin" | "none") {
            return Some("the request comes from another site (Sec-Fetch-Site)");
        }
    }
    if let Some(origin) = text(header::ORIGIN) {
        let origin_host = origin
            .trim()
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        let host = text(header::HOST).map(str::trim);
        if origin_host.is_none() || origin_host != host {
            return Some("the request comes from another site (Origin)");
        }
    }
    if let Some(ct) = text(header::CONTENT_TYPE) {
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if matches!(
            essence.as_str(),
            "application/x-www-form-urlencoded" | "multipart/form-data" | "text/plain"
        ) {
            return Some("the request has a form content type");
        }
    }
    None
}

fn unauthorized(why: &str) -> Response<Body> {
    let mut res = json_response(StatusCode::UNAUTHORIZED, &json!({ "error": why }));
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"caje admin\""),
    );
    res
}

fn method_not_allowed(allow: &'static str) -> Response<Body> {
    let mut res = json_response(
        StatusCode::METHOD_NOT_ALLOWED,
        &json!({ "error": format!("use {allow} for this endpoint") }),
    );
    res.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    res
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let mut text = value.to_string();
    text.push('\n');
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cache-status", Outcome::local().header_value());
    res
}

fn internal(what: &str, err: &dyn std::fmt::Display) -> Response<Body> {
    tracing::error!("admin {what} failed: {err}");
    json_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &json!({ "error": format!("{what} failed: {err}") }),
    )
}

fn stats(app: &App) -> Response<Body> {
    use crate::stats::Stats as S;
    let s = &app.stats;
    let (entries, bytes) = app.store.usage();
    let (memory_entries, memory_bytes) = app.store.hot().usage();
    let (meta_bytes, meta_cap_bytes) = app.store.metas_usage();
    let (_, meta_entries) = app.store.index_memory();
    let (disk_bytes, max_disk_bytes) = app.store.disk_usage();
    let (warm_bytes, max_warm_bytes) = app.store.warm_usage();
    json_response(
        StatusCode::OK,
        &json!({
            "memory_entries": memory_entries,
            "memory_bytes": memory_bytes,
            // The hot entries' compact metadata: its own share of `cache.memory_bytes`.
            "meta_entries": meta_entries,
            "meta_bytes": meta_bytes,
            "meta_cap_bytes": meta_cap_bytes,
            "requests": S::get(&s.requests),
            "hits": S::get(&s.hits),
            "fast_hits": S::get(&s.fast_hits),
            "fast_passed": S::get(&s.fast_passed),
            "fast_handovers": S::get(&s.fast_handovers),
            "fast_sendfile": S::get(&s.fast_sendfile),
            "misses": S::get(&s.misses),
            "stored": S::get(&s.stored),
            "not_stored": S::get(&s.not_stored),
            "store_failures": S::get(&s.store_failures),
            "corrupt_entries": S::get(&s.corrupt_entries),
            "origin_errors": S::get(&s.origin_errors),
            "collapsed": S::get(&s.collapsed),
            "revalidated": S::get(&s.revalidated),
            "stale_served": S::get(&s.stale_served),
            "background_revalidations": S::get(&s.background_revalidations),
            "purged": S::get(&s.purged),
            "evictions": S::get(&s.evictions),
            "disk_bytes": disk_bytes,
            "max_disk_bytes": max_disk_bytes,
            "warm_bytes": warm_bytes,
            "max_warm_bytes": max_warm_bytes,
            "warm_refused": S::get(&s.warm_refused),
            "peer_served": S::get(&s.peer_served),
            "peer_misses": S::get(&s.peer_misses),
            "peer_fills": S::get(&s.peer_fills),
            "peer_fallbacks": S::get(&s.peer_fallbacks),
            "entries": entries,
            "bytes": bytes,
            "index": index_json(&app.store.start_report()),
            "memory_cap_bytes": app.config.cache.memory_bytes,
            "live": app.telemetry.live_json(&app.client.latency, S::get(&s.origin_body_bytes)),
            "uptime_secs": SystemTime::now()
                .duration_since(app.started)
                .map_or(0, |d| d.as_secs()),
        }),
    )
}

async fn clear(app: &App, fs: bool, db: bool) -> Response<Body> {
    let mut out = serde_json::Map::new();
    if fs {
        let store = app.store.clone();
        match tokio::task::spawn_blocking(move || store.clear()).await {
            Ok((entries, bytes)) => {
                tracing::info!(entries, bytes, "admin: cleared the disk cache");
                out.insert("fs".into(), json!({ "entries": entries, "bytes": bytes }));
            }
            Err(e) => return internal("clearing the disk cache", &e),
        }
    }
    if db {
        match app.manifest.clear().await {
            Ok(rows) => {
                tracing::info!(rows, "admin: cleared the manifest");
                out.insert("db".into(), json!({ "rows": rows }));
            }
            Err(e) => return internal("clearing the manifest", &e),
        }
    }
    json_response(StatusCode::OK, &Value::Object(out))
}

/// `POST /_caje/populate`: one populate pass now; answers with its counts.
async fn populate(app: &Arc<App>) -> Response<Body> {
    let report = crate::populate::pass(app, &|_, _| {}).await;
    json_response(StatusCode::OK, &json!(report))
}

/// `GET /_caje/status`: role, manifest position and queues, populate progress.
async fn status(app: &App) -> Response<Body> {
    let role = app.manifest.role().await;
    let txid = app.manifest.txid().await;
    let data_version = app.manifest.data_version().await.ok();
    let manifest_stats = app.manifest.stats().await.ok();
    let (entries, bytes) = app.store.usage();
    let (disk_bytes, max_disk_bytes) = app.store.disk_usage();
    let evictions = crate::stats::Stats::get(&app.stats.evictions);
    json_response(
        StatusCode::OK,
        &json!({
            "role": role.as_str(),
            "primary": role.primary(),
            "lag_ms": app.manifest.lag().await.map(|d| d.as_millis() as u64),
            "recent_purges": crate::dashboard::recent_purges(&app.manifest, 10).await,
            "manifest": {
                "path": app.config.db.display().to_string(),
                "txid": txid,
                "data_version": data_version,
                "queue": manifest_stats.as_ref().map(|s| json!({
                    "pending": s.pending,
                    "flushes": s.flushes,
                    "failed_flushes": s.failed_flushes,
                    "write_transactions": s.write_transactions,
                    "rows_written": s.rows_written,
                    "halts": s.halts,
                    "halt_max_held_ms": s.halt_max_held_ms,
                    "overflow": s.overflow,
                    "last_error": s.last_error,
                })),
            },
            "cache": {
                "entries": entries,
                "bytes": bytes,
                "disk_bytes": disk_bytes,
                "max_disk_bytes": max_disk_bytes,
                "evictions": evictions,
                "flights": app.flights.len(),
                "index": index_json(&app.store.start_report()),
            },
            "populate": app.populate.status(),
            "tombstones": {
                "cursor": app.tombstones.cursor(),
                "applied": app.tombstones.counts().0,
                "gaps": app.tombstones.counts().1,
            },
        }),
    )
}

/// How the index was built at start-up and where its background check is: `state` is
/// `scanned` (every header read before serving), `checking` (loaded from the snapshot, the
/// directory still being checked against it) or `checked`. Until `check.admitted`, the disk
/// cap evicts only among the entries stored since the start (`disk_bytes` counts the loaded
/// ones all the same).
fn index_json(r: &crate::cache::store::StartReport) -> Value {
    let unix = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    let state = match &r.check {
        None => "scanned",
        Some(c) if c.done => "checked",
        Some(_) => "checking",
    };
    json!({
        "source": r.source.as_str(),
        "handover": r.handover,
        "state": state,
        "loaded_entries": r.loaded_entries,
        "load_ms": r.load_ms,
        "check": r.check.map(|c| json!({
            "admitted": c.admitted,
            "admit_ms": c.admit_ms,
            "shards_checked": c.shards_checked,
            "shards_total": c.shards_total,
            "files_checked": c.files_checked,
            "trusted": c.trusted,
            "reread": c.reread,
            "added": c.added,
            "dropped": c.dropped,
            "started_at": unix(c.started_at),
            "finished_at": c.finished_at.map(unix),
            "elapsed_ms": c
                .finished_at
                .unwrap_or_else(SystemTime::now)
                .duration_since(c.started_at)
                .map_or(0, |d| d.as_millis() as u64),
        })),
    })
}

/// The value of query parameter `name`, percent-decoded (`+` is kept as is: values are URLs).
pub(super) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn truthy(v: Option<String>) -> bool {
    matches!(v.as_deref(), Some("1" | "true" | "yes" | "on"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sneaky_admin_paths_are_recognised() {
        for p in [
            "/_caje/list",
            "/%5Fcaje/list",
            "/%5fcaje/list",
            "//_caje/list",
            "/x/../_caje/list",
            "/./_caje/clear",
            "/%2e%2e/_caje/clear",
            "/_caje",
            "/a/b/%2E%2E/%2E%2E/_caje/x",
            "/_caje%2Flist",
        ] {
            assert!(is_admin_path(p), "{p} should be admin");
        }
        for p in ["/", "/_cajex", "/x/_caje/list", "/_caj", "/%5"] {
            assert!(!is_admin_path(p), "{p} should not be admin");
        }
    }
}
