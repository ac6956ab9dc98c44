//! `POST /_caje/purge` and the `PURGE` method: drop a page (or a tag, or everything) here and
//! record it in the manifest, whose tombstone tells every other node.
//!
//! # A bounded answer
//!
//! The manifest write can wait a long time: on LiteFS, a HALT whose holder was killed in the
//! middle of its acquisition stays on the primary until LiteFS expires it (30-35 s), and every
//! write on every node waits behind it (`docs/cluster.md`, "A node killed during a HALT"). A
//! purge waits for its write at most `manifest.purge_wait_ms`:
//! - written in time: `200` with the rows it removed and its tombstone id, as always;
//! - not yet: `202 Accepted` with `"queued": true`. The local copies are dropped at once
//!   either way. The write stays in the manifest's queue (never dropped while the process
//!   lives) and lands when the manifest is writable again; then every node applies the
//!   tombstone, this one included.
//!
//! The write runs in its own task, so neither the answer nor a client that goes away cancels
//! it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Response, StatusCode};
use serde_json::json;

use super::{json_response, query_param, truthy};
use crate::app::App;
use crate::body::Body;
use crate::cache::key::CacheKey;
use crate::host::Host;
use crate::manifest::Purge;

/// `POST /_caje/purge?url=<url>[&soft=true]` or `?tag=<tag>[&soft=true]`.
pub(super) async fn purge_endpoint<B>(app: &Arc<App>, req: &Request<B>) -> Response<Body> {
    let query = req.uri().query();
    let soft = truthy(query_param(query, "soft"));
    let what = match (query_param(query, "url"), query_param(query, "tag")) {
        (Some(url), None) => match purge_target(&url, req) {
            Ok(key) => Purge::Url {
                host: key.host,
                path: key.path,
            },
            Err(msg) => return json_response(StatusCode::BAD_REQUEST, &json!({ "error": msg })),
        },
        (None, Some(tag)) if !tag.is_empty() && !tag.contains(char::is_whitespace) => {
            Purge::Tag(tag)
        }
        (None, Some(_)) => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "tag must be a non-empty token without spaces"}),
            )
        }
        _ => {
            return json_response(
                StatusCode::BAD_REQUEST,
                &json!({"error": "give exactly one of ?url=<url or /path?query> or ?tag=<tag> (add &soft=true to mark stale instead of deleting)"}),
            )
        }
    };
    purge(app, what, soft).await
}

/// `PURGE /path?query` with the request's Host: purges that URL (all variants). A
/// `Caje-Soft-Purge: 1` header makes it soft.
pub(super) async fn purge_method<B>(app: &Arc<App>, req: &Request<B>) -> Response<Body> {
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let target = match req.uri().authority() {
        Some(a) => format!("http://{a}{target}"),
        None => target,
    };
    let soft = truthy(
        req.headers()
            .get("caje-soft-purge")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase()),
    );
    match purge_target(&target, req) {
        Ok(key) => {
            purge(
                app,
                Purge::Url {
                    host: key.host,
                    path: key.path,
                },
                soft,
            )
            .await
        }
        Err(msg) => json_response(StatusCode::BAD_REQUEST, &json!({ "error": msg })),
    }
}

/// The page a purge URL names: absolute (`http://host/path?q`) or a path meaning the
/// request's own Host.
fn purge_target<B>(url: &str, req: &Request<B>) -> Result<CacheKey, String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("url {url:?} is not a URL: {e}"))?;
    let path = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    if !path.starts_with('/') {
        return Err(format!("url {url:?} must be absolute or start with /"));
    }
    let (raw, scheme) = match uri.authority() {
        Some(a) => (a.as_str(), uri.scheme_str().unwrap_or("http")),
        None => (
            req.headers()
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .ok_or("a path-only url needs the request's Host header")?,
            "http",
        ),
    };
    let host = Host::parse(raw, scheme).map_err(|e| format!("host {raw:?} is not valid: {e}"))?;
    Ok(CacheKey::new(&host, &path))
}

/// Applies a purge in the manifest (rows + tombstone, one transaction), then locally.
///
/// The manifest first: while the row exists, this node's populate may fetch the page again
/// (from a peer that still holds the old copy, or from the origin without a client asking),
/// and a copy stored after a local removal would survive it, since this node does not apply
/// its own tombstone again. Once the row is gone nothing lists the page; a fill from an
/// older listing is dropped at its commit by the local removal below (populate fills carry
/// the purge epoch of their listing). Only after the local removal does this node count the
/// tombstone as applied, so nothing it announces in between can put the row back.
///
/// When the write is not done within `manifest.purge_wait_ms` (see the module docs), the
/// local copies are dropped anyway and the answer is `202`. This node then does not count the
/// tombstone as its own: when the write lands it applies it like any other node's, so a copy
/// fetched again while the write waited (the row was still listed) is dropped then.
async fn purge(app: &Arc<App>, what: Purge, soft: bool) -> Response<Body> {
    let ttl = app.config.cache.tombstone_ttl_secs as i64;
    let wait = Duration::from_millis(app.config.manifest.purge_wait_ms);
    let manifest = app.manifest.clone();
    let purging = what.clone();
    let mut write = tokio::spawn(async move { manifest.purge(purging, soft, ttl).await });
    let landed = tokio::time::timeout(wait, &mut write).await;
    let local = drop_local(app, &what, soft).await;
    app.stats.purged.fetch_add(local as u64, Ordering::Relaxed);
    let target = match &what {
        Purge::Url { host, path } => json!({"host": host, "path": path}),
        Purge::Tag(t) => json!({ "tag": t }),
        Purge::All => json!("all"),
    };
    let written = match landed {
        // The task panicked: the write was not carried out.
        Ok(joined) => joined.unwrap_or(Err(crate::manifest::ManifestError::Closed)),
        Err(_) => {
            let app = Arc::clone(app);
            let queued = what.clone();
            tokio::spawn(async move {
                match write.await {
                    Ok(Ok(out)) => {
                        tracing::info!(what = ?queued, soft, rows = out.rows.len(), tombstone = out.tombstone_id, "a queued purge reached the manifest");
                        // Apply it here too (see above), and move the cursor past it: this
                        // node's own commit does not move its `data_version`.
                        app.populate.wake();
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(what = ?queued, "a queued purge could not be written to the manifest: {e}; other nodes keep their copies: purge again")
                    }
                    Err(e) => tracing::warn!(what = ?queued, "a queued purge's task failed: {e}"),
                }
            });
            tracing::warn!(?what, soft, local, wait_ms = wait.as_millis() as u64, "purge: the manifest is not writable now; local copies dropped, the manifest write is queued");
            return json_response(
                StatusCode::ACCEPTED,
                &json!({"purged": target, "soft": soft, "entries": local, "rows": null, "tombstone": null, "queued": true,
                        "note": format!("the manifest could not be written within {} ms: this node's copies are dropped; the rows and the tombstone that tell the other nodes are queued and land when the manifest is writable again", wait.as_millis())}),
            );
        }
    };
    let (rows, tombstone) = match written {
        Ok(out) => {
            // Applied above: not to be applied again here.
            app.tombstones.purged_here(out.tombstone_id);
            // This node's own commit does not move its `data_version`: wake the background
            // task so its cursor (saved on disk) moves past this tombstone now.
            app.populate.wake();
            (out.rows.len(), out.tombstone_id)
        }
        Err(e) => {
            tracing::warn!("purge: manifest update failed: {e}");
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": format!("removed {local} local entries, but the manifest update failed: {e}; retry the purge"), "entries": local}),
            );
        }
    };
    tracing::info!(?what, soft, local, rows, "purged");
    json_response(
        StatusCode::OK,
        &json!({"purged": target, "soft": soft, "entries": local, "rows": rows, "tombstone": tombstone, "queued": false}),
    )
}

/// Removes (or, when `soft`, marks stale) this node's copies that `what` covers; returns how
/// many entries.
async fn drop_local(app: &App, what: &Purge, soft: bool) -> usize {
    let store = app.store.clone();
    let what = what.clone();
    tokio::task::spawn_blocking(move || match (&what, soft) {
        (Purge::Url { host, path }, false) => store
            .remove_page(&CacheKey {
                host: host.clone(),
                path: path.clone(),
            })
            .len(),
        (Purge::Url { host, path }, true) => store.invalidate(
            Some(&CacheKey {
                host: host.clone(),
                path: path.clone(),
            }),
            None,
        ),
        (Purge::Tag(tag), false) => store.remove_tag(tag).len(),
        (Purge::Tag(tag), true) => store.invalidate(None, Some(tag)),
        (Purge::All, false) => store.clear().0 as usize,
        (Purge::All, true) => store.invalidate(None, None),
    })
    .await
    .unwrap_or(0)
}
