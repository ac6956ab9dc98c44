//! Unsafe methods (POST, PUT, DELETE, PATCH and the rest): forwarded without caching; a
//! success invalidates the URLs they touched.

use http::header;
use http::{Method, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::Body;
use crate::cache::key::CacheKey;
use crate::cache_status::Forward;
use crate::fill::{limited, origin_request, pass_through, Ctx};
use crate::headers;
use crate::host::Host;
use crate::request::local;
use crate::stale::origin_failed;
use crate::stats::Stats;

/// POST, PUT, DELETE, PATCH and the rest: forwarded; a success invalidates the target URI
/// and same-host `Location` / `Content-Location` URIs (RFC 9111 §4.4).
pub(crate) async fn forward_unsafe(ctx: Ctx, body: Incoming) -> Response<Body> {
    let app = &ctx.app;
    Stats::incr(&app.stats.misses);
    let oreq = match origin_request(&ctx, limited(app, body), false, None) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(e) => return origin_failed(&ctx, Forward::Method, None, e).await,
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let unsafe_method = !matches!(
        ctx.parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    );
    if unsafe_method && (rparts.status.is_success() || rparts.status.is_redirection()) {
        let mut keys = vec![ctx.key.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(k) = rparts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| same_host_key(&ctx.host, v))
            {
                keys.push(k);
            }
        }
        let store = app.store.clone();
        let stats = app.stats.clone();
        let removed = tokio::task::spawn_blocking(move || {
            keys.iter()
                .map(|k| store.remove_page(k).len())
                .sum::<usize>()
        })
        .await
        .unwrap_or(0);
        if removed > 0 {
            stats
                .purged
                .fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(host = %ctx.host, path = %ctx.key.path, removed, "invalidated by {}", ctx.parts.method);
        }
    }
    pass_through(app, rparts, rbody, Forward::Method)
}

/// The cache key a `Location`-style URI names, if it is on the request's own host.
fn same_host_key(host: &str, value: &str) -> Option<CacheKey> {
    let uri: http::Uri = value.trim().parse().ok()?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    if !path.starts_with('/') {
        return None;
    }
    let scheme = uri.scheme_str().unwrap_or("http");
    let named = match uri.authority() {
        Some(a) => Host::parse(a.as_str(), scheme).ok()?,
        None => Host::parse(host, "http").ok()?,
    };
    (named.as_str() == host).then(|| CacheKey::new(&named, path))
}
