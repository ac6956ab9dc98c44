//! The request path. This is the only module that knows the order of the steps; the steps
//! themselves live in their own modules:
//!
//! 1. reject malformed or hostile requests ([`check_request`]);
//! 2. hand `/_caje/` (and the `PURGE` method) to the admin API ([`crate::admin`]);
//! 3. route the client host to an origin (421 when there is none);
//! 4. for GET/HEAD, look the page up: a fresh entry is served from disk ([`crate::hit`]);
//!    a stale one within `stale-while-revalidate` is served while one background request
//!    refreshes it ([`crate::stale`]);
//! 5. otherwise join the URL's flight ([`crate::flight`]): the leader goes to the
//!    origin (conditionally when it holds a stale entry with validators) and streams the
//!    answer back, teeing it into the cache ([`crate::fill`]); waiters stream the leader's
//!    fill;
//! 6. when the origin fails, a stale entry is served where `stale-if-error` (or
//!    `cache.stale_if_unreachable_secs`) allows, else 502/504 ([`crate::stale`]);
//! 7. unsafe methods are forwarded, and a success invalidates the URLs they touched
//!    ([`crate::invalidate`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::admin;
use crate::app::App;
use crate::body::{self, Body};
use crate::cache::policy::{self, Freshness};
use crate::cache::store::{Entry, FillProgress, HotLookup, Lookup};
use crate::cache_status::{Forward, Outcome};
use crate::fill::{client_body, origin_request, pass_through, respond_from_origin, Ctx};
use crate::flight::{FlightState, Join, Leader, SharedHead, Waiter};
use crate::headers;
use crate::hit;
use crate::invalidate::forward_unsafe;
use crate::request::{check_request, local, request_host};
use crate::stale::{
    apply_304, origin_failed, respond_stored, serve_stale_on_error, stale_while_revalidate,
};
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
    if let Some(rejection) = check_request(&app.config.limits, &req, ambiguous_framing) {
        return rejection;
    }
    // Other nodes' page requests: authenticated by the cluster token, not the admin's.
    if admin::is_admin_path(req.uri().path())
        && admin::normalize_path(req.uri().path()) == crate::peer::ROUTE
    {
        return crate::peer::serve(&app, req).await;
    }
    if admin::is_admin_path(req.uri().path()) || req.method().as_str() == "PURGE" {
        return admin::handle(&app, req, peer).await;
    }
    Stats::incr(&app.stats.requests);
    let (parts, body) = req.into_parts();
    let (host, absolute) = match request_host(&parts) {
        Ok(h) => h,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    if absolute && !app.origins.is_explicit(host.as_str()) {
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            format!("caje: refusing absolute-form request for {host}: caje is a reverse proxy, not a forward proxy\n"),
        );
    }
    let Some(origin) = app.origins.route(host.as_str()).cloned() else {
        return local(
            StatusCode::MISDIRECTED_REQUEST,
            format!("caje: no origin is configured for host {host:?}; add an [[origins]] entry for it or a \"*\" origin\n"),
        );
    };
    let cacheable = parts.method == Method::GET || parts.method == Method::HEAD;
    let has_body = request_has_body(&parts);
    let ctx = Ctx::new(&app, origin, host, parts, peer, true);
    if cacheable && has_body {
        return forward_with_body(&ctx, body).await;
    }
    if cacheable {
        serve_cacheable(ctx, body).await
    } else {
        forward_unsafe(ctx, body).await
    }
}

/// GET and HEAD: from the cache when possible, else through the URL's flight.
async fn serve_cacheable(ctx: Ctx, body: Incoming) -> Response<Body> {
    let app = &ctx.app;
    let now = SystemTime::now();
    let authenticated = policy::is_authenticated(&ctx.parts.headers);
    let found = match app.store.lookup_hot(&ctx.key, &ctx.parts.headers).await {
        HotLookup::Hot(hot) => {
            // A fresh hot entry answers from its compact metadata alone; anything else
            // (stale, soft-purged, credentials, the client's own directives) reads the full
            // entry and decides below exactly as for an entry read from disk.
            if let (false, Some(Freshness::Fresh { age, ttl })) =
                (authenticated, hot.fresh(now, &app.policy))
            {
                let outcome = Outcome::hit(ttl.as_secs() as i64);
                match hit::respond(&app.store, &hot, &ctx.parts, age.as_secs(), outcome).await {
                    Ok(res) => {
                        Stats::incr(&app.stats.hits);
                        return res;
                    }
                    // Replaced or removed since the lookup, or corrupt (removed): a miss, as
                    // below.
                    Err(_) => None,
                }
            } else {
                Some(app.store.full(&ctx.key, &ctx.parts.headers).await)
            }
        }
        HotLookup::Full(lookup) => Some(lookup),
    };
    let (fwd, stale) = match found {
        None => (Forward::Miss, None),
        Some(Lookup::Miss) => (Forward::UriMiss, None),
        Some(Lookup::VaryMiss) => (Forward::VaryMiss, None),
        // RFC 9111 §3.5: a copy that does not allow shared reuse for authenticated requests
        // never answers one; the origin does, and its answer is not stored.
        Some(Lookup::Found(entry))
            if authenticated
                && !policy::answers_authenticated(&entry.meta.response_head().1, &app.policy) =>
        {
            return forward(&ctx, Some(body), Forward::Request, None).await;
        }
        Some(Lookup::Found(entry)) => {
            let fresh = if entry.meta.invalidated {
                Freshness::Stale
            } else {
                policy::freshness(&entry.meta.policy, &ctx.parts, &ctx.host, now, &app.policy)
            };
            match fresh {
                Freshness::Fresh { age, ttl } => {
                    let outcome = Outcome::hit(ttl.as_secs() as i64);
                    match hit::respond(&app.store, &entry.hit, &ctx.parts, age.as_secs(), outcome)
                        .await
                    {
                        Ok(res) => {
                            Stats::incr(&app.stats.hits);
                            return res;
                        }
                        Err(_) => (Forward::Miss, None),
                    }
                }
                Freshness::Stale => {
                    if let Some(res) = stale_while_revalidate(&ctx, &entry, now).await {
                        return res;
                    }
                    (Forward::Stale, Some(entry))
                }
            }
        }
    };
    if ctx.parts.headers.contains_key(header::RANGE) && stale.is_none() {
        // A fill whose whole body has arrived is only waiting for its commit: the range is
        // answered from the entry (a client that read a full response and then asks for a
        // range of it must not find it missing).
        if let Some(res) = range_of_finished_fill(&ctx).await {
            return res;
        }
        // A range of an object we do not hold: pass it through rather than make the client
        // wait for the whole object.
        return forward(&ctx, Some(body), Forward::Request, None).await;
    }
    if ctx.parts.method == Method::HEAD || authenticated {
        // An authenticated request is not collapsed onto another client's fetch: the
        // answer it would share is made for someone else.
        return forward(&ctx, Some(body), fwd, stale).await;
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(app.config.cache.lock_timeout_ms);
    let (mut fwd, mut stale) = (fwd, stale);
    let mut join = app.flights.join(&ctx.key);
    let mut rejoined = false;
    loop {
        match join {
            Join::Leader(leader) => return lead(&ctx, body, fwd, stale, leader).await,
            Join::Bypass => return forward(&ctx, Some(body), Forward::Miss, stale).await,
            Join::Waiter(waiter) => match wait_on_flight(&ctx, &waiter, fwd, deadline).await {
                Waited::Serve(res) => return res,
                Waited::Refreshed(entry) => {
                    let outcome = Outcome {
                        fwd: Some(Forward::Stale),
                        fwd_status: Some(304),
                        collapsed: true,
                        ..Outcome::default()
                    };
                    return serve_entry(&ctx, &entry, outcome, body, fwd).await;
                }
                // The entry the flight stored must be revalidated before this request may
                // use it: as any stale entry, through a flight of its own (once: a second
                // flight's answer was fetched after this request arrived).
                Waited::Revalidate(entry) if !rejoined => {
                    (fwd, stale, rejoined) = (Forward::Stale, Some(entry), true);
                    join = app.flights.rejoin(&ctx.key, &waiter);
                }
                Waited::Revalidate(_) | Waited::OnOwn => {
                    return forward(&ctx, Some(body), fwd, stale).await
                }
            },
        }
    }
}

/// What a request that joined a flight as a waiter does next.
enum Waited {
    /// Its response: the flight's response, or the entry the flight stored, fresh for it.
    Serve(Response<Body>),
    /// The leader's revalidation refreshed this entry (a 304).
    Refreshed(Arc<Entry>),
    /// The flight stored this entry, but it is not fresh for this request.
    Revalidate(Arc<Entry>),
    /// Nothing to share (released, failed, another variant, timed out): go on its own.
    OnOwn,
}

/// Waits (until `deadline`) for the flight `waiter` joined to settle, and decides what this
/// request may reuse of it (RFC 9111 §4: collapsed requests may share one response only where
/// each of them may reuse it):
///
/// - A request that joined while the leader's request was at the origin shares the response
///   that request brings back, whatever its freshness (`no-cache`, `max-age=0` included).
///   That response was produced after this request arrived, so it is exactly what forwarding
///   this request would have fetched: the forward it stands for is the validation that
///   `no-cache` (§5.2.2.4) asks for.
/// - A request that joined once the response had arrived is a later request like any other:
///   it may reuse the response only while it is fresh for it (§4.2), as if it were already
///   stored. While the body is still arriving it then streams it; once the whole body has
///   arrived it is a hit on the committed entry. A response that is not fresh for it
///   (`no-cache`, a request's `max-age=0`) is revalidated with the stored entry's validators,
///   or fetched on its own while its body is still arriving.
async fn wait_on_flight(
    ctx: &Ctx,
    waiter: &Waiter,
    fwd: Forward,
    deadline: tokio::time::Instant,
) -> Waited {
    let app = &ctx.app;
    let joined_late = !matches!(waiter.state(), FlightState::Fetching);
    let settled = tokio::time::timeout_at(deadline, waiter.settled()).await;
    let (head, progress) = match settled {
        Ok(FlightState::Streaming { head, progress })
            if head.variant.matches(&ctx.parts.headers)
                && !matches!(*progress.borrow(), FillProgress::Failed) =>
        {
            (head, progress)
        }
        Ok(FlightState::Refreshed(entry)) if entry.meta.variant.matches(&ctx.parts.headers) => {
            return Waited::Refreshed(entry)
        }
        // Timed out, released, or another variant.
        _ => return Waited::OnOwn,
    };
    if joined_late {
        let now = SystemTime::now();
        // The leader's body may already be complete and only being committed (fsync,
        // rename): then this is a lookup of the new entry, not a collapse.
        if let Some(entry) = committed_soon(&progress, &head, deadline).await {
            let fresh = if entry.meta.invalidated {
                Freshness::Stale
            } else {
                policy::freshness(&entry.meta.policy, &ctx.parts, &ctx.host, now, &app.policy)
            };
            let Freshness::Fresh { age, ttl } = fresh else {
                return Waited::Revalidate(entry);
            };
            let outcome = Outcome::hit(ttl.as_secs() as i64);
            if let Ok(res) =
                hit::respond(&app.store, &entry.hit, &ctx.parts, age.as_secs(), outcome).await
            {
                Stats::incr(&app.stats.hits);
                return Waited::Serve(res);
            }
            // The entry vanished or is corrupt: the spool still holds the body.
        } else if !matches!(
            policy::freshness(&head.policy, &ctx.parts, &ctx.host, now, &app.policy),
            Freshness::Fresh { .. }
        ) {
            return Waited::OnOwn;
        }
    }
    // Bounded: the pump ends the body (complete, failed, idle past the origin body timeout).
    head.spool.first_bytes().await;
    Stats::incr(&app.stats.collapsed);
    Waited::Serve(collapsed_response(&head, fwd))
}

/// A range request for a URL whose fill has its whole body and is being committed: the
/// range from the committed entry. `None` when there is no such fill (or it fails).
async fn range_of_finished_fill(ctx: &Ctx) -> Option<Response<Body>> {
    let app = &ctx.app;
    let FlightState::Streaming { head, progress } = app.flights.watch(&ctx.key)?.state() else {
        return None;
    };
    if !head.variant.matches(&ctx.parts.headers) {
        return None;
    }
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(app.config.cache.lock_timeout_ms);
    let entry = committed_soon(&progress, &head, deadline).await?;
    if policy::is_authenticated(&ctx.parts.headers)
        && !policy::answers_authenticated(&entry.meta.response_head().1, &app.policy)
    {
        return None;
    }
    let now = SystemTime::now();
    let Freshness::Fresh { age, ttl } =
        policy::freshness(&entry.meta.policy, &ctx.parts, &ctx.host, now, &app.policy)
    else {
        return None;
    };
    let outcome = Outcome::hit(ttl.as_secs() as i64);
    let res = hit::respond(&app.store, &entry.hit, &ctx.parts, age.as_secs(), outcome)
        .await
        .ok()?;
    Stats::incr(&app.stats.hits);
    Some(res)
}

/// When a fill already holds the whole body (or is committed), waits for its commit and
/// returns the entry; `None` while the body is still arriving or if the commit fails.
async fn committed_soon(
    progress: &tokio::sync::watch::Receiver<FillProgress>,
    head: &SharedHead,
    deadline: tokio::time::Instant,
) -> Option<Arc<Entry>> {
    let complete = match &*progress.borrow() {
        FillProgress::Committed(e, _) => return Some(e.clone()),
        FillProgress::Failed => false,
        _ => head
            .body_complete
            .load(std::sync::atomic::Ordering::Acquire),
    };
    if !complete {
        return None;
    }
    let mut rx = progress.clone();
    let done = tokio::time::timeout_at(deadline, async {
        rx.wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
            .await
            .map(|p| match &*p {
                FillProgress::Committed(e, _) => Some(e.clone()),
                _ => None,
            })
    })
    .await;
    done.ok()?.ok()?
}

/// Serves a stored entry, falling back to the origin if it vanished or is corrupt.
async fn serve_entry(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    outcome: Outcome,
    body: Incoming,
    fwd: Forward,
) -> Response<Body> {
    match respond_stored(ctx, entry, outcome).await {
        Some(res) => res,
        None => forward(ctx, Some(body), fwd, None).await,
    }
}

/// The response for a request collapsed onto another's fill.
fn collapsed_response(head: &SharedHead, fwd: Forward) -> Response<Body> {
    let mut headers = head.headers.clone();
    let outcome = Outcome {
        collapsed: true,
        ..Outcome::forwarded(fwd, head.status.as_u16(), Ok(()))
    };
    headers.insert("cache-status", outcome.header_value());
    let mut res = Response::new(head.spool.reader().boxed());
    *res.status_mut() = head.status;
    *res.headers_mut() = headers;
    res
}

/// The leader's path: one origin request for everyone waiting on this URL.
async fn lead(
    ctx: &Ctx,
    body: Incoming,
    fwd: Forward,
    stale: Option<Arc<Entry>>,
    leader: Leader,
) -> Response<Body> {
    let app = &ctx.app;
    Stats::incr(&app.stats.misses);
    let (req_body, fault) = client_body(app, body);
    let oreq = match origin_request(ctx, req_body, true, stale.as_deref()) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(e) => {
            drop(leader);
            // A request body that failed is the client's fault (400/413), not the origin's.
            if let Some(res) = fault.failed() {
                return res;
            }
            return origin_failed(ctx, fwd, stale.as_ref(), e).await;
        }
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    if let Some(entry) = &stale {
        if rparts.status == StatusCode::NOT_MODIFIED {
            if let Some(updated) = apply_304(ctx, entry, &rparts).await {
                leader.refreshed(updated.clone());
                let outcome = Outcome {
                    fwd: Some(Forward::Stale),
                    fwd_status: Some(304),
                    ..Outcome::default()
                };
                if let Some(res) = respond_stored(ctx, &updated, outcome).await {
                    return res;
                }
            }
            // The 304 did not match what we hold, or the body vanished: fetch it whole.
            return forward(ctx, None, Forward::Stale, None).await;
        }
        if rparts.status.is_server_error() {
            if let Some(res) =
                serve_stale_on_error(ctx, entry, Some(rparts.status), "stale-if-error").await
            {
                return res;
            }
        }
    }
    respond_from_origin(ctx, rparts, rbody, fwd, Some(leader))
        .ready()
        .await
}

/// Forwards a GET/HEAD without coalescing (HEAD, ranges, hit-for-miss, released waiters).
async fn forward(
    ctx: &Ctx,
    body: Option<Incoming>,
    fwd: Forward,
    stale: Option<Arc<Entry>>,
) -> Response<Body> {
    let app = &ctx.app;
    Stats::incr(&app.stats.misses);
    let (req_body, fault) = match body {
        Some(b) => client_body(app, b),
        None => (body::empty(), Default::default()),
    };
    let for_cache =
        ctx.parts.method == Method::GET && !matches!(fwd, Forward::Request | Forward::Bypass);
    let oreq = match origin_request(ctx, req_body, for_cache, None) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        // A request body that failed is the client's fault (400/413), not the origin's.
        Err(e) => match fault.failed() {
            Some(res) => return res,
            None => return origin_failed(ctx, fwd, stale.as_ref(), e).await,
        },
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    if let Some(entry) = &stale {
        if rparts.status.is_server_error() {
            if let Some(res) =
                serve_stale_on_error(ctx, entry, Some(rparts.status), "stale-if-error").await
            {
                return res;
            }
        }
    }
    if !for_cache {
        let mut res = pass_through(app, rparts, rbody, fwd);
        if fwd == Forward::Bypass {
            let outcome = Outcome {
                fwd: Some(fwd),
                fwd_status: Some(res.status().as_u16()),
                detail: Some("request-body"),
                ..Outcome::default()
            };
            res.headers_mut()
                .insert("cache-status", outcome.header_value());
        }
        return res;
    }
    respond_from_origin(ctx, rparts, rbody, fwd, None)
        .ready()
        .await
}

/// Whether a request carries a body (a `Content-Length` other than 0, or chunked).
fn request_has_body(parts: &http::request::Parts) -> bool {
    parts.headers.contains_key(header::TRANSFER_ENCODING)
        || parts
            .headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
}

/// A GET or HEAD with a body: passed through to the origin, never stored and never answered
/// from the cache. The body is not part of the cache key, and the origin may answer it
/// differently, so any copy could be the wrong one (`Cache-Status: fwd=bypass;
/// detail=request-body`).
async fn forward_with_body(ctx: &Ctx, body: Incoming) -> Response<Body> {
    forward(ctx, Some(body), Forward::Bypass, None).await
}
