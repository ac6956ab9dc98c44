//! The fill: one origin request whose answer is streamed to its client (if it has one) while
//! it is written to the disk cache, published to the URL's flight and, once committed,
//! announced to the manifest (through the store's events). The proxy's misses and forwards
//! and populate's fetches without a client ([`fill_page`]) all go through here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::App;
use crate::body::{self, Body, Tee};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{self, CacheKey, Variant};
use crate::cache::policy::{self, Freshness, NotStorable};
use crate::cache::store::{Entry, Fill, FillProgress, Lookup};
use crate::cache_status::{Forward, Outcome};
use crate::client_body::ClientFault;
use crate::flight::{Join, Leader, SharedHead};
use crate::headers;
use crate::host::Host;
use crate::interim::InterimSink;
use crate::origin::Origin;
use crate::spool::Spool;
use crate::stats::Stats;
use crate::time::unix_now;

/// One request on its way through caje, with what routing found out about it.
pub(crate) struct Ctx {
    pub(crate) app: Arc<App>,
    pub(crate) origin: Arc<Origin>,
    pub(crate) host: String,
    pub(crate) key: CacheKey,
    pub(crate) parts: request::Parts,
    pub(crate) peer: SocketAddr,
    /// Record what this request stores in the manifest (false for populate fetches of pages
    /// the manifest already lists).
    pub(crate) announce: bool,
    /// [`crate::cache::store::Store::purge_epoch`] when this request arrived, before anything
    /// was sent to the origin: a purge after it drops what this request would store.
    pub(crate) purge_epoch: u64,
    /// The length and CRC-32 the body must have (a peer's answer, [`crate::peer`]).
    pub(crate) expect_body: Option<(u64, u32)>,
}

impl Ctx {
    /// A request ready for the cache and the origin. Its headers become exactly what the
    /// origin will see ([`headers::prepare_for_origin`]: hop-by-hop and `Connection`-named
    /// fields out, rewrite fields out, forwarding fields set; `Accept-Encoding` normalised;
    /// `Host` the canonical host), so that the key's `Vary` values are the ones the origin
    /// answered to, and the key's host is the one routing used.
    pub(crate) fn new(
        app: &Arc<App>,
        origin: Arc<Origin>,
        host: Host,
        mut parts: request::Parts,
        peer: SocketAddr,
        announce: bool,
    ) -> Ctx {
        headers::prepare_for_origin(
            &mut parts.headers,
            peer.ip(),
            host.as_str(),
            app.config.server.trust_forwarded,
            &app.strip_request_headers,
        );
        if parts.method == Method::GET || parts.method == Method::HEAD {
            key::normalize_accept_encoding(&mut parts.headers);
        }
        if let Ok(v) = HeaderValue::from_str(host.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        Ctx {
            app: app.clone(),
            origin,
            key: CacheKey::new(&host, path),
            host: host.into_string(),
            parts,
            peer,
            announce,
            purge_epoch: app.store.purge_epoch(),
            expect_body: None,
        }
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
    /// A purge applied on this node since the listing covers the page: not fetched, or its
    /// copy was dropped at the commit. Not to be retried: fetching it again would be an
    /// origin request no client asked for, for a page nothing lists any more.
    Purged,
}

/// Where [`fill_page`] may get a page before asking the origin: the node that stored the
/// version a manifest row describes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromPeer {
    /// The node's `cluster.advertise_url`.
    pub url: String,
    /// The row's `stored_at`: an older copy is not an answer.
    pub stored_at: i64,
}

/// Fetches one page into the cache without a client (edge warming), through the same path
/// as a miss: the same origin request, policy and tee, coalesced with client misses for the
/// same URL. `headers` are the request headers to send (the values a Vary variant recorded).
/// With `peer`, the page is asked from that node first ([`crate::peer::ask`]), and from the
/// origin only when it has no usable answer in time.
///
/// `listed_at` is [`crate::cache::store::Store::purge_epoch`] read before the manifest was
/// listed, and `tags` the tags the row lists: a purge applied here since then (the row may be
/// gone already) drops the copy at its commit, so a page is never stored again from a listing
/// older than its purge. Such a page is not fetched at all when the purge is known before
/// the request goes out (before the peer is asked, and again before the origin is), and a
/// copy dropped for it is reported as [`FillResult::Purged`], which populate does not retry.
pub async fn fill_page(
    app: &Arc<App>,
    host: &str,
    path: &str,
    headers: http::HeaderMap,
    peer: Option<&FromPeer>,
    listed_at: u64,
    tags: &[String],
) -> FillResult {
    let host = match Host::parse(host, "http") {
        Ok(h) => h,
        Err(e) => return FillResult::Failed(format!("the host {host:?} is not valid: {e}")),
    };
    let Some(origin) = app.origins.route(host.as_str()).cloned() else {
        return FillResult::Failed(format!("no origin is configured for host {host:?}"));
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = Method::GET;
    parts.uri = match path.parse() {
        Ok(u) => u,
        Err(e) => return FillResult::Failed(format!("bad path {path:?}: {e}")),
    };
    parts.headers = headers;
    let client = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut ctx = Ctx::new(app, origin, host, parts, client, false);
    ctx.purge_epoch = ctx.purge_epoch.min(listed_at);
    let purged = |ctx: &Ctx| app.store.purged_since(ctx.purge_epoch, &ctx.key, tags);
    if purged(&ctx) {
        return FillResult::Purged;
    }
    // A look, not a client's use: warming must not lift a page in the eviction policy.
    if let Lookup::Found(entry) = app.store.peek(&ctx.key, &ctx.parts.headers).await {
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
    // After `Ctx::new` read the purge epoch: `ask` sends the tombstones applied by now, and a
    // purge applied later drops this fill at its commit.
    let answer = match peer {
        Some(p) => {
            let path = ctx.key.path.clone();
            let answer = crate::peer::ask(
                app,
                &p.url,
                &ctx.host,
                &path,
                &ctx.parts.headers,
                p.stored_at,
            )
            .await;
            if answer.is_none() {
                Stats::incr(&app.stats.peer_fallbacks);
            }
            answer
        }
        None => None,
    };
    let res = match answer {
        Some(answer) => {
            Stats::incr(&app.stats.peer_fills);
            ctx.expect_body = Some((answer.len, answer.crc32));
            answer.response
        }
        // The peer may have taken a while, and refused: a purge applied meanwhile means the
        // origin would be asked for a page nothing lists any more.
        None if purged(&ctx) => return FillResult::Purged,
        None => {
            let oreq = match origin_request(&ctx, body::empty(), true, None) {
                Ok(r) => r,
                Err(msg) => return FillResult::Failed(msg),
            };
            match app.client.send(&ctx.origin, oreq).await {
                Ok(r) => r,
                Err(e) => return FillResult::Failed(e.to_string()),
            }
        }
    };
    let (mut rparts, rbody) = res.into_parts();
    headers::strip_hop_by_hop(&mut rparts.headers);
    let Answer {
        response,
        stored,
        progress,
        ..
    } = respond_from_origin(&ctx, rparts, rbody, Forward::UriMiss, Some(leader));
    // The spool's pump stores the body without a reader.
    drop(response);
    if let Err(why) = stored {
        return FillResult::NotStored(why.as_str());
    }
    // Report only what is committed (the writer finishes after the body is drained).
    let Some(mut progress) = progress else {
        return FillResult::Failed("no fill".into());
    };
    let committed = progress
        .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
        .await
        .map(|p| matches!(*p, FillProgress::Committed(..)))
        .unwrap_or(false);
    if committed {
        FillResult::Stored
    } else if purged(&ctx) {
        FillResult::Purged
    } else {
        FillResult::Failed("the body could not be stored (origin body failed or disk error)".into())
    }
}

/// Builds the request to the origin. `for_cache`: the response may be stored, so the
/// client's own validators are not passed on (the stored response must be a full one that
/// any later client can use). With a stale `entry`, its validators make the request
/// conditional.
pub(crate) fn origin_request(
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
    // Already what the origin may see (`Ctx::new`); only `Host` and validators change here.
    let mut headers = parts.headers.clone();
    let host_value = match ctx.origin.host_header {
        crate::config::HostHeader::Origin => ctx.origin.authority.as_str().to_owned(),
        crate::config::HostHeader::Client => ctx.host.clone(),
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

/// An origin response turned into the client's response.
pub(crate) struct Answer {
    /// The response, with its body attached.
    pub(crate) response: Response<Body>,
    /// Whether it is being stored, or why not.
    pub(crate) stored: Result<(), NotStorable>,
    /// The fill's progress, when it is being stored.
    pub(crate) progress: Option<tokio::sync::watch::Receiver<FillProgress>>,
    /// The spool the body is pumped into, when it is being stored.
    pub(crate) spool: Option<Arc<Spool>>,
}

impl Answer {
    /// The response for a client, once its first body bytes are in (or the body ended).
    ///
    /// Returned at once, hyper would write the head alone (the pump that reads the body is a
    /// task that has not run yet) and the body in a second write: two sends to the client and
    /// two wake-ups of it per miss instead of one, the same cost the waiters avoid by
    /// [`Spool::first_bytes`]. A small body then leaves with its head in one `writev`.
    pub(crate) async fn ready(self) -> Response<Body> {
        if let Some(spool) = &self.spool {
            spool.first_bytes().await;
        }
        self.response
    }
}

/// Turns an origin response into the client's response: decides whether to store it,
/// starts the fill, and publishes the result to the flight's waiters.
pub(crate) fn respond_from_origin(
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
    // The waiters are told after the pump has started (below).
    let mut publish = None;
    let (fill, spool) = match decision {
        Ok(storable) => {
            let variant = Variant::from_request(&storable.vary_names, &ctx.parts.headers);
            // The flight's waiters judge the response by it (only a leader has waiters).
            let shared_policy = leader.as_ref().map(|_| storable.policy.clone());
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
            let fill = app.store.begin_fill(
                meta,
                app.config.cache.max_object_bytes,
                ctx.announce,
                ctx.purge_epoch,
            );
            if let Some((len, crc32)) = ctx.expect_body {
                fill.expect(len, crc32);
            }
            let spool = Spool::new(content_length);
            if let (Some(leader), Some(policy)) = (leader, shared_policy) {
                let mut shared = rparts.headers.clone();
                shared.remove("surrogate-key");
                shared.remove("surrogate-control");
                headers::append_via(&mut shared);
                let head = SharedHead {
                    status: rparts.status,
                    headers: shared,
                    variant,
                    content_length,
                    body_complete: fill.finished_flag(),
                    spool: spool.clone(),
                    policy,
                };
                publish = Some((leader, head, fill.progress()));
            }
            (Some(fill), Some(spool))
        }
        Err(why) => {
            Stats::incr(&app.stats.not_stored);
            tracing::debug!(host = %ctx.host, path = %ctx.key.path, reason = why.as_str(), "not storing");
            if let Some(leader) = leader {
                leader.uncacheable(Duration::from_secs(app.config.cache.hit_for_miss_secs));
            }
            (None, None)
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
    // A storable body is read from the origin at the origin's pace by the spool's pump, and
    // this client reads it from the spool like any coalesced one; anything else streams
    // straight through.
    let body = match (&spool, &progress) {
        (Some(spool), Some(progress)) => spool.start(tee, progress.clone()).boxed(),
        _ => tee.boxed(),
    };
    // Only now, so that the pump is scheduled ahead of the waiters this wakes: it usually
    // finds the first bytes already read with the head, and a herd of waiters then answers
    // head and body in one go instead of each waiting once more for the pump's turn.
    if let Some((leader, head, progress)) = publish {
        leader.streaming(head, progress);
    }
    Answer {
        response: Response::from_parts(rparts, body),
        stored,
        progress,
        spool,
    }
}

/// An origin response relayed without caching (hop-by-hop headers already removed).
pub(crate) fn pass_through(
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

/// A client request body, bounded by `limits.max_request_body_bytes`, and where its failure
/// is recorded: a send error with a recorded fault is the client's, not the origin's
/// ([`ClientFault::failed`]).
pub(crate) fn client_body(app: &App, body: Incoming) -> (Body, Arc<ClientFault>) {
    let limit = usize::try_from(app.config.limits.max_request_body_bytes).unwrap_or(usize::MAX);
    crate::client_body::client_body(body, limit)
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
