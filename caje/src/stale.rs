//! Serving what the cache holds once it is no longer fresh: stale-while-revalidate with one
//! background revalidation per URL, stale-if-error (and `cache.stale_if_unreachable_secs`)
//! when the origin fails, and applying a 304 to a stored entry.

use std::sync::Arc;
use std::time::SystemTime;

use http::{request, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::entry::EntryMeta;
use crate::cache::policy;
use crate::cache::store::Entry;
use crate::cache_status::{Forward, Outcome};
use crate::fill::{origin_request, respond_from_origin, Ctx};
use crate::flight::Leader;
use crate::headers;
use crate::hit;
use crate::origin::OriginError;
use crate::request::local;
use crate::stats::Stats;
use crate::time::unix_now;

/// Answers from a stored entry with its current `Age`; `None` if the entry vanished or is
/// corrupt (the caller goes to the origin).
pub(crate) async fn respond_stored(
    ctx: &Ctx,
    entry: &Arc<Entry>,
    outcome: Outcome,
) -> Option<Response<Body>> {
    let age = policy::age(&entry.meta.policy, SystemTime::now()).as_secs();
    hit::respond(&ctx.app.store, &entry.hit, &ctx.parts, age, outcome)
        .await
        .ok()
}

/// Serves a stale entry at once when `stale-while-revalidate` allows, starting exactly one
/// background revalidation for it.
pub(crate) async fn stale_while_revalidate(
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
            purge_epoch: ctx.app.store.purge_epoch(),
            expect_body: None,
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
    // A storable body is pumped into the cache by its spool whether or not anyone reads it.
    drop(respond_from_origin(
        ctx,
        rparts,
        rbody,
        Forward::Stale,
        Some(leader),
    ));
}

/// Applies a 304 to a stored entry; returns the refreshed entry.
pub(crate) async fn apply_304(
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
pub(crate) async fn serve_stale_on_error(
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
pub(crate) async fn origin_failed(
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
