//! The request path. This is the only module that knows the order of the steps:
//!
//! 1. reject malformed or hostile requests ([`check_request`]);
//! 2. hand `/_caje/` (and the `PURGE` method) to the admin API;
//! 3. route the client host to an origin (421 when there is none);
//! 4. for GET/HEAD, look the page up: a fresh entry is served from disk ([`crate::hit`]);
//!    a stale one within `stale-while-revalidate` is served while one background request
//!    refreshes it;
//! 5. otherwise join the URL's flight ([`crate::cache::flight`]): the leader goes to the
//!    origin (conditionally when it holds a stale entry with validators) and streams the
//!    answer back, teeing it into the cache; waiters stream the leader's fill;
//! 6. when the origin fails, a stale entry is served where `stale-if-error` (or
//!    `cache.stale_if_unreachable_secs`) allows, else 502/504;
//! 7. unsafe methods are forwarded, and a success invalidates the URLs they touched.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::admin;
use crate::app::App;
use crate::body::{self, Body, Tee};
use crate::cache::entry::EntryMeta;
use crate::cache::flight::{FlightState, Join, Leader, SharedHead};
use crate::cache::key::{self, normalize_host, CacheKey, Variant};
use crate::cache::policy::{self, Freshness, NotStorable};
use crate::cache::store::{Entry, Fill, FillProgress, Lookup};
use crate::cache_status::{Forward, Outcome};
use crate::client_body::{self, ClientBodyError, ClientFault};
use crate::headers;
use crate::hit;
use crate::interim::InterimSink;
use crate::origin::{Origin, OriginError};
use crate::request::{check_request, local, request_host};
use crate::stats::Stats;

/// One request on its way through caje, with what routing found out about it.
struct Ctx {
    app: Arc<App>,
    origin: Arc<Origin>,
    host: String,
    key: CacheKey,
    parts: request::Parts,
    peer: SocketAddr,
    /// Record what this request stores in the manifest (false for populate fetches of pages
    /// the manifest already lists).
    announce: bool,
}

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
    if admin::is_admin_path(req.uri().path()) || req.method().as_str() == "PURGE" {
        return admin::handle(&app, req, peer).await;
    }
    Stats::incr(&app.stats.requests);
    let (mut parts, body) = req.into_parts();
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
    let Some(origin) = app.origins.route(&host).cloned() else {
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
    let cacheable = parts.method == Method::GET || parts.method == Method::HEAD;
    if cacheable {
        key::normalize_accept_encoding(&mut parts.headers);
    }
    let ctx = Ctx {
        app: app.clone(),
        origin,
        key: CacheKey::new(&host, &path),
        host,
        parts,
        peer,
        announce: true,
    };
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
    let (fwd, stale) = match app.store.lookup(&ctx.key, &ctx.parts.headers) {
        Lookup::Miss => (Forward::UriMiss, None),
        Lookup::VaryMiss => (Forward::VaryMiss, None),
        // RFC 9111 §3.5: a copy that does not allow shared reuse for authenticated requests
        // never answers one; the origin does, and its answer is not stored.
        Lookup::Found(entry)
            if authenticated
                && !policy::answers_authenticated(&entry.meta.response_head().1, &app.policy) =>
        {
            return forward(&ctx, Some(body), Forward::Request, None).await;
        }
        Lookup::Found(entry) => {
            let fresh = if entry.meta.invalidated {
                Freshness::Stale
            } else {
                policy::freshness(&entry.meta.policy, &ctx.parts, &ctx.host, now, &app.policy)
            };
            match fresh {
                Freshness::Fresh { age, ttl } => {
                    let outcome = Outcome::hit(ttl.as_secs() as i64);
                    match hit::respond(&app.store, &entry, &ctx.parts, age.as_secs(), outcome).await
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
    match app.flights.join(&ctx.key) {
        Join::Leader(leader) => lead(&ctx, body, fwd, stale, leader).await,
        Join::Bypass => forward(&ctx, Some(body), Forward::Miss, stale).await,
        Join::Waiter(mut rx) => {
            // A request that arrives once the leader's response is already being written
            // may find the body complete: then it is a hit on the new entry. One that waited
            // through the origin fetch was collapsed onto it.
            let joined_late = !matches!(*rx.borrow(), FlightState::Fetching);
            let settled = tokio::time::timeout_at(deadline, async {
                // Clone inside: the watch guard must not live across an await.
                rx.wait_for(|s| !matches!(s, FlightState::Fetching))
                    .await
                    .map(|state| state.clone())
            })
            .await;
            let state = match settled {
                Ok(Ok(state)) => state,
                // Timed out, or the flight vanished: go on our own.
                _ => FlightState::Released,
            };
            match state {
                FlightState::Streaming { head, progress }
                    if head.variant.matches(&ctx.parts.headers)
                        && !matches!(*progress.borrow(), FillProgress::Failed) =>
                {
                    // The leader's body may already be complete and only being committed
                    // (fsync, rename): then this is a hit on the new entry, not a collapse.
                    let done = if joined_late {
                        committed_soon(&progress, &head, deadline).await
                    } else {
                        None
                    };
                    if let Some(entry) = done {
                        let ttl = policy::time_to_live(&entry.meta.policy, SystemTime::now());
                        let outcome = Outcome::hit(ttl.as_secs() as i64);
                        if let Some(res) = respond_stored(&ctx, &entry, outcome).await {
                            Stats::incr(&app.stats.hits);
                            return res;
                        }
                    }
                    Stats::incr(&app.stats.collapsed);
                    collapsed_response(&head, progress, fwd)
                }
                FlightState::Refreshed(entry) if entry.meta.variant.matches(&ctx.parts.headers) => {
                    let outcome = Outcome {
                        fwd: Some(Forward::Stale),
                        fwd_status: Some(304),
                        collapsed: true,
                        ..Outcome::default()
                    };
                    serve_entry(&ctx, &entry, outcome, body, fwd).await
                }
                _ => forward(&ctx, Some(body), fwd, stale).await,
            }
        }
    }
}

/// When a fill already holds the whole body (or is committed), waits for its commit and
/// returns the entry; `None` while the body is still arriving or if the commit fails.
async fn committed_soon(
    progress: &tokio::sync::watch::Receiver<FillProgress>,
    head: &SharedHead,
    deadline: tokio::time::Instant,
) -> Option<Arc<Entry>> {
    let complete = match &*progress.borrow() {
        FillProgress::Committed(e) => return Some(e.clone()),
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
        rx.wait_for(|p| matches!(p, FillProgress::Committed(_) | FillProgress::Failed))
            .await
            .map(|p| match &*p {
                FillProgress::Committed(e) => Some(e.clone()),
                _ => None,
            })
    })
    .await;
    done.ok()?.ok()?
}

/// Answers from a stored entry with its current `Age`; `None` if the entry vanished or is
/// corrupt (the caller goes to the origin).
async fn respond_stored(ctx: &Ctx, entry: &Arc<Entry>, outcome: Outcome) -> Option<Response<Body>> {
    let age = policy::age(&entry.meta.policy, SystemTime::now()).as_secs();
    hit::respond(&ctx.app.store, entry, &ctx.parts, age, outcome)
        .await
        .ok()
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
fn collapsed_response(
    head: &SharedHead,
    progress: tokio::sync::watch::Receiver<FillProgress>,
    fwd: Forward,
) -> Response<Body> {
    let mut headers = head.headers.clone();
    let outcome = Outcome {
        collapsed: true,
        ..Outcome::forwarded(fwd, head.status.as_u16(), Ok(()))
    };
    headers.insert("cache-status", outcome.header_value());
    let mut res = Response::new(body::follow_fill(progress, head.content_length));
    *res.status_mut() = head.status;
    *res.headers_mut() = headers;
    res
}

/// Serves a stale entry at once when `stale-while-revalidate` allows, starting exactly one
/// background revalidation for it.
async fn stale_while_revalidate(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    now: SystemTime,
) -> Option<Response<Body>> {
    let app = &ctx.app;
    let rules = policy::stale_rules(&entry.meta.response_head().1, &app.policy);
    let window = rules.while_revalidate?;
    let stale_for = hit::stale_secs(entry, now);
    if rules.forbidden || entry.meta.invalidated || stale_for > window.as_secs() as i64 {
        return None;
    }
    if let Some(leader) = app.flights.lead(&ctx.key) {
        Stats::incr(&app.stats.background_revalidations);
        let bg = Ctx {
            app: ctx.app.clone(),
            origin: ctx.origin.clone(),
            host: ctx.host.clone(),
            key: ctx.key.clone(),
            parts: clone_parts(&ctx.parts),
            peer: ctx.peer,
            announce: true,
        };
        let entry = entry.clone();
        tokio::spawn(async move { revalidate_in_background(&bg, entry, leader).await });
    }
    let outcome = Outcome {
        detail: Some("stale-while-revalidate"),
        ..Outcome::hit(-stale_for)
    };
    let res = respond_stored(ctx, entry, outcome).await?;
    Stats::incr(&app.stats.stale_served);
    Some(res)
}

/// The background half of stale-while-revalidate: a conditional request, then a refresh of
/// the stored head (304) or a full replacement (200) drained without a client.
async fn revalidate_in_background(ctx: &Ctx, entry: Arc<Entry>, leader: Leader) {
    let oreq = match origin_request(ctx, body::empty(), true, Some(&entry)) {
        Ok(r) => r,
        Err(_) => return,
    };
    let res = match ctx.app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(host = %ctx.host, path = %ctx.key.path, "background revalidation failed: {e}");
            return;
        }
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    if rparts.status == StatusCode::NOT_MODIFIED {
        if let Some(updated) = apply_304(ctx, &entry, &rparts).await {
            leader.refreshed(updated);
        }
        return;
    }
    let answer = respond_from_origin(ctx, rparts, rbody, Forward::Stale, Some(leader));
    drain(answer.response).await;
}

/// Reads a response body to its end without a client (background fills).
async fn drain(response: Response<Body>) -> bool {
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return false;
        }
    }
    true
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
        Err(_) if fault.get().is_some() => return client_body_failed(&fault),
        Err(e) => {
            drop(leader);
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
    respond_from_origin(ctx, rparts, rbody, fwd, Some(leader)).response
}

/// An origin response turned into the client's response.
struct Answer {
    /// The response, with its body attached.
    response: Response<Body>,
    /// Whether it is being stored, or why not.
    stored: Result<(), NotStorable>,
    /// The fill's progress, when it is being stored.
    progress: Option<tokio::sync::watch::Receiver<FillProgress>>,
}

/// Turns an origin response into the client's response: decides whether to store it,
/// starts the fill, and publishes the result to the flight's waiters.
fn respond_from_origin(
    ctx: &Ctx,
    mut rparts: http::response::Parts,
    rbody: Incoming,
    fwd: Forward,
    leader: Option<Leader>,
) -> Answer {
    let app = &ctx.app;
    let content_length = rparts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let decision = policy::decide(
        &ctx.parts,
        &ctx.host,
        &rparts,
        SystemTime::now(),
        &app.policy,
    )
    .and_then(|s| match content_length {
        Some(len) if len > app.config.cache.max_object_bytes => Err(NotStorable::TooLarge),
        _ => Ok(s),
    });
    let status = rparts.status.as_u16();
    let stored = decision.as_ref().map(|_| ()).map_err(|e| *e);
    let outcome = Outcome::forwarded(fwd, status, stored);
    let tags = surrogate_keys(&rparts.headers);
    let fill = match decision {
        Ok(storable) => {
            let variant = Variant::from_request(&storable.vary_names, &ctx.parts.headers);
            let meta = EntryMeta {
                host: ctx.key.host.clone(),
                path: ctx.key.path.clone(),
                variant: variant.clone(),
                status,
                headers: EntryMeta::headers_from(&rparts.headers),
                policy: storable.policy,
                body_file: String::new(),
                body_len: 0,
                body_crc32: 0,
                stored_at: unix_now(),
                tags,
                invalidated: false,
            };
            let fill = app
                .store
                .begin_fill(meta, app.config.cache.max_object_bytes, ctx.announce);
            if let Some(leader) = leader {
                let mut shared = rparts.headers.clone();
                shared.remove("surrogate-key");
                shared.remove("surrogate-control");
                headers::append_via(&mut shared);
                leader.streaming(
                    SharedHead {
                        status: rparts.status,
                        headers: shared,
                        variant,
                        content_length,
                        body_complete: fill.finished_flag(),
                    },
                    fill.progress(),
                );
            }
            Some(fill)
        }
        Err(why) => {
            Stats::incr(&app.stats.not_stored);
            tracing::debug!(host = %ctx.host, path = %ctx.key.path, reason = why.as_str(), "not storing");
            if let Some(leader) = leader {
                leader.uncacheable(Duration::from_secs(app.config.cache.hit_for_miss_secs));
            }
            None
        }
    };
    rparts.headers.remove("surrogate-key");
    rparts.headers.remove("surrogate-control");
    rparts
        .headers
        .insert("cache-status", outcome.header_value());
    headers::append_via(&mut rparts.headers);
    let progress = fill.as_ref().map(Fill::progress);
    let tee = Tee::new(
        rbody,
        fill,
        content_length,
        app.config.origin_timeouts.body_idle(),
        app.stats.clone(),
    );
    Answer {
        response: Response::from_parts(rparts, tee.boxed()),
        stored,
        progress,
    }
}

/// What a fill without a client ([`fill_page`]) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FillResult {
    /// Fetched and stored.
    Stored,
    /// A fresh copy is already on this node.
    AlreadyHeld,
    /// Another request is fetching it right now (the copy will arrive through it).
    InFlight,
    /// Fetched, but the response is not storable (reason).
    NotStored(&'static str),
    /// The fetch failed (reason).
    Failed(String),
}

/// Fetches one page into the cache without a client (edge warming), through the same path
/// as a miss: the same origin request, policy and tee, coalesced with client misses for the
/// same URL. `headers` are the request headers to send (the values a Vary variant recorded).
pub async fn fill_page(
    app: &Arc<App>,
    host: &str,
    path: &str,
    headers: http::HeaderMap,
) -> FillResult {
    let host = normalize_host(host);
    let Some(origin) = app.origins.route(&host).cloned() else {
        return FillResult::Failed(format!("no origin is configured for host {host:?}"));
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(e) => return FillResult::Failed(format!("bad path {path:?}: {e}")),
    };
    parts.headers = headers;
    if let Ok(v) = HeaderValue::from_str(&host) {
        parts.headers.insert(header::HOST, v);
    }
    key::normalize_accept_encoding(&mut parts.headers);
    let ctx = Ctx {
        app: app.clone(),
        origin,
        key: CacheKey::new(&host, path),
        host,
        parts,
        peer: SocketAddr::from(([127, 0, 0, 1], 0)),
        announce: false,
    };
    if let Lookup::Found(entry) = app.store.lookup(&ctx.key, &ctx.parts.headers) {
        let fresh = !entry.meta.invalidated
            && matches!(
                policy::freshness(
                    &entry.meta.policy,
                    &ctx.parts,
                    &ctx.host,
                    SystemTime::now(),
                    &app.policy
                ),
                Freshness::Fresh { .. }
            );
        if fresh {
            return FillResult::AlreadyHeld;
        }
    }
    let Join::Leader(leader) = app.flights.join(&ctx.key) else {
        return FillResult::InFlight;
    };
    let oreq = match origin_request(&ctx, body::empty(), true, None) {
        Ok(r) => r,
        Err(msg) => return FillResult::Failed(msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(e) => return FillResult::Failed(e.to_string()),
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let Answer {
        response,
        stored,
        progress,
    } = respond_from_origin(&ctx, rparts, rbody, Forward::UriMiss, Some(leader));
    drain(response).await;
    if let Err(why) = stored {
        return FillResult::NotStored(why.as_str());
    }
    // Report only what is committed (the writer finishes after the body is drained).
    let Some(mut progress) = progress else {
        return FillResult::Failed("no fill".into());
    };
    let committed = progress
        .wait_for(|p| matches!(p, FillProgress::Committed(_) | FillProgress::Failed))
        .await
        .map(|p| matches!(*p, FillProgress::Committed(_)))
        .unwrap_or(false);
    if committed {
        FillResult::Stored
    } else {
        FillResult::Failed("the body could not be stored (origin body failed or disk error)".into())
    }
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
    let for_cache = ctx.parts.method == Method::GET && fwd != Forward::Request;
    let oreq = match origin_request(ctx, req_body, for_cache, None) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(_) if fault.get().is_some() => return client_body_failed(&fault),
        Err(e) => return origin_failed(ctx, fwd, stale.as_ref(), e).await,
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
        return pass_through(app, rparts, rbody, fwd);
    }
    respond_from_origin(ctx, rparts, rbody, fwd, None).response
}

/// POST, PUT, DELETE, PATCH and the rest: forwarded; a success invalidates the target URI
/// and same-host `Location` / `Content-Location` URIs (RFC 9111 §4.4).
async fn forward_unsafe(ctx: Ctx, body: Incoming) -> Response<Body> {
    let app = &ctx.app;
    Stats::incr(&app.stats.misses);
    let (req_body, fault) = client_body(app, body);
    let oreq = match origin_request(&ctx, req_body, false, None) {
        Ok(r) => r,
        Err(msg) => return local(StatusCode::BAD_REQUEST, msg),
    };
    let res = match app.client.send(&ctx.origin, oreq).await {
        Ok(r) => r,
        Err(_) if fault.get().is_some() => return client_body_failed(&fault),
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

/// An origin response relayed without caching (hop-by-hop headers already removed).
fn pass_through(
    app: &App,
    mut rparts: http::response::Parts,
    rbody: Incoming,
    fwd: Forward,
) -> Response<Body> {
    let outcome = Outcome {
        fwd: Some(fwd),
        fwd_status: Some(rparts.status.as_u16()),
        ..Outcome::default()
    };
    rparts.headers.remove("surrogate-key");
    rparts.headers.remove("surrogate-control");
    rparts
        .headers
        .insert("cache-status", outcome.header_value());
    headers::append_via(&mut rparts.headers);
    let tee = Tee::new(
        rbody,
        None,
        None,
        app.config.origin_timeouts.body_idle(),
        app.stats.clone(),
    );
    Response::from_parts(rparts, tee.boxed())
}

/// The cache key a `Location`-style URI names, if it is on the request's own host.
fn same_host_key(host: &str, value: &str) -> Option<CacheKey> {
    let uri: http::Uri = value.trim().parse().ok()?;
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match uri.authority() {
        Some(a) if normalize_host(a.as_str()) != host => None,
        _ if !path.starts_with('/') => None,
        _ => Some(CacheKey::new(host, path)),
    }
}

/// The `Surrogate-Key` tags of a response.
fn surrogate_keys(headers: &http::HeaderMap) -> Vec<String> {
    let mut tags: Vec<String> = headers
        .get_all("surrogate-key")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_whitespace)
        .map(str::to_owned)
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// Applies a 304 to a stored entry; returns the refreshed entry.
async fn apply_304(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    not_modified: &http::response::Parts,
) -> Option<Arc<Entry>> {
    let app = &ctx.app;
    let now = SystemTime::now();
    let refreshed = policy::refresh(
        &entry.meta,
        &ctx.parts,
        &ctx.host,
        not_modified,
        now,
        &app.policy,
    )?;
    let mut meta = entry.meta.clone();
    meta.policy = refreshed.policy;
    meta.headers = EntryMeta::headers_from(&refreshed.headers);
    meta.stored_at = unix_now();
    meta.invalidated = false;
    let store = app.store.clone();
    let old = entry.clone();
    let updated = tokio::task::spawn_blocking(move || store.update_meta(&old, meta, true))
        .await
        .ok()?;
    match updated {
        Ok(Some(e)) => {
            Stats::incr(&app.stats.revalidated);
            Some(e)
        }
        Ok(None) => None,
        Err(e) => {
            app.stats.store_failed("updating metadata after 304", &e);
            None
        }
    }
}

/// Serves a stale entry after an origin failure if the response's `stale-if-error`, or for
/// unreachable origins `cache.stale_if_unreachable_secs`, allows it.
async fn serve_stale_on_error(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    status: Option<StatusCode>,
    detail: &'static str,
) -> Option<Response<Body>> {
    let app = &ctx.app;
    let now = SystemTime::now();
    let rules = policy::stale_rules(&entry.meta.response_head().1, &app.policy);
    if rules.forbidden {
        return None;
    }
    let stale_for = hit::stale_secs(entry, now);
    let mut window = rules.if_error.map_or(0, |d| d.as_secs() as i64);
    if status.is_none() {
        window = window.max(app.config.cache.stale_if_unreachable_secs as i64);
    }
    if window == 0 || stale_for > window {
        return None;
    }
    let outcome = Outcome {
        fwd: Some(Forward::Stale),
        fwd_status: status.map(|s| s.as_u16()),
        ttl: Some(-stale_for),
        detail: Some(detail),
        ..Outcome::default()
    };
    let res = respond_stored(ctx, entry, outcome).await?;
    Stats::incr(&app.stats.stale_served);
    Some(res)
}

/// 502/504 for an origin failure, or a stale entry where allowed.
async fn origin_failed(
    ctx: &Ctx,
    fwd: Forward,
    stale: Option<&Arc<Entry>>,
    e: OriginError,
) -> Response<Body> {
    let app = &ctx.app;
    Stats::incr(&app.stats.origin_errors);
    tracing::warn!(host = %ctx.host, path = %ctx.key.path, "origin request failed: {e}");
    if let Some(entry) = stale {
        if let Some(res) = serve_stale_on_error(ctx, entry, None, "stale-if-error").await {
            return res;
        }
    }
    let mut res = local(e.status(), format!("caje: {e}\n"));
    res.headers_mut().insert(
        "cache-status",
        Outcome::failed(fwd, e.detail()).header_value(),
    );
    res
}

/// A copy of a request head (extensions are not carried over; caje sets none).
fn clone_parts(parts: &request::Parts) -> request::Parts {
    let (mut out, ()) = Request::new(()).into_parts();
    out.method = parts.method.clone();
    out.uri = parts.uri.clone();
    out.version = parts.version;
    out.headers = parts.headers.clone();
    out
}

/// A client request body, bounded by `limits.max_request_body_bytes`, and where its failure
/// is recorded.
fn client_body(app: &App, body: Incoming) -> (Body, Arc<ClientFault>) {
    let limit = usize::try_from(app.config.limits.max_request_body_bytes).unwrap_or(usize::MAX);
    client_body::client_body(body, limit)
}

/// The client's body failed while it was being sent: its fault, not the origin's (400/413,
/// connection closed, no origin error counted).
fn client_body_failed(fault: &ClientFault) -> Response<Body> {
    ClientFault::response(fault.get().unwrap_or(ClientBodyError::Malformed))
}

/// Builds the request to the origin. `for_cache`: the response may be stored, so the
/// client's own validators are not passed on (the stored response must be a full one that
/// any later client can use). With a stale `entry`, its validators make the request
/// conditional.
fn origin_request(
    ctx: &Ctx,
    body: Body,
    for_cache: bool,
    entry: Option<&Entry>,
) -> Result<Request<Body>, String> {
    let parts = &ctx.parts;
    let pq = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let uri = ctx
        .origin
        .uri_for(pq)
        .map_err(|e| format!("caje: cannot build origin URL for {pq:?}: {e}\n"))?;
    let mut headers = parts.headers.clone();
    headers::strip_hop_by_hop(&mut headers);
    let client_host = parts
        .headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&ctx.host)
        .to_owned();
    headers::set_forwarded(
        &mut headers,
        ctx.peer.ip(),
        &client_host,
        ctx.app.config.server.trust_forwarded,
    );
    let host_value = match ctx.origin.host_header {
        crate::config::HostHeader::Origin => ctx.origin.authority.as_str().to_owned(),
        crate::config::HostHeader::Client => client_host,
    };
    if let Ok(v) = HeaderValue::from_str(&host_value) {
        headers.insert(header::HOST, v);
    }
    if for_cache {
        for h in [
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::RANGE,
        ] {
            headers.remove(h);
        }
        if !ctx.app.config.cache.honor_client_no_cache {
            // The client's reload must not make the origin skip its own caches either.
            headers.remove(header::PRAGMA);
        }
    }
    if let Some(entry) = entry {
        if let Some(etag) = entry
            .meta
            .etag()
            .and_then(|e| HeaderValue::from_str(&e).ok())
        {
            headers.insert(header::IF_NONE_MATCH, etag);
        }
        if let Some(lm) = entry
            .meta
            .last_modified()
            .and_then(|v| HeaderValue::from_str(&v).ok())
        {
            headers.insert(header::IF_MODIFIED_SINCE, lm);
        }
    }
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = uri;
    *req.headers_mut() = headers;
    if let Some(sink) = parts.extensions.get::<Arc<InterimSink>>() {
        // 1xx answers go to this client's connection (never to the cache).
        let sink = sink.clone();
        let version = parts.version;
        hyper::ext::on_informational(&mut req, move |res| {
            sink.push(version, res.status(), res.headers());
        });
    }
    Ok(req)
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
