//! Edge warming: every node fetches, from the origin, the pages the shared manifest lists
//! and it does not hold, so a miss on one edge warms all the others.
//!
//! A background task watches the manifest for changes (SQLite's `data_version`, which moves
//! when another connection — another local node, or LiteFS replication — commits, and the
//! LiteFS TXID when on LiteFS), then runs a *pass*: list the rows, keep the fresh ones this
//! node lacks, and fetch them with the recorded request headers (so `Host` and `Vary`
//! variants are right) through [`crate::fill::fill_page`], which is the miss path itself and
//! is coalesced with client misses. Fetches are bounded by a concurrency limit and a
//! per-origin rate, and retried. The same task applies purge tombstones other nodes recorded.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::Semaphore;

use crate::app::{page_row, variant_of, App};
use crate::cache::key::CacheKey;
use crate::fill::{fill_page, FillResult, FromPeer};
use crate::manifest::{PageRow, Upsert};
pub use crate::populate_state::{PassReport, Populate, PopulateStatus, ReconcileReport};
use crate::time::unix_now;
use crate::tombstones::same_version;

/// The request headers a manifest row recorded (its Vary values), for refetching it.
fn row_headers(row: &PageRow) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in variant_of(row).0 {
        if let (Ok(n), Some(Ok(v))) = (
            HeaderName::from_bytes(name.as_bytes()),
            value.map(|v| HeaderValue::from_str(&v)),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// Runs one pass now: fetches every fresh manifest page this node lacks. `progress` is
/// called with (done, total) as fetches finish.
pub async fn pass(app: &Arc<App>, progress: &(dyn Fn(usize, usize) + Sync)) -> PassReport {
    let pop = &app.populate;
    let _running = pop.running.lock().await;
    let started = Instant::now();
    let mut report = PassReport::default();
    // Before the listing: a purge applied after it drops what this pass stores for it.
    let listed_at = app.store.purge_epoch();
    let rows = match app.manifest.list().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("populate: cannot read the manifest: {e}");
            return report;
        }
    };
    report.listed = rows.len();
    let now = unix_now() as i64;
    let mut evicted = 0;
    let candidates: Vec<PageRow> = rows
        .into_iter()
        .filter(|row| {
            let key = CacheKey {
                host: row.host.clone(),
                path: row.path.clone(),
            };
            let variant = variant_of(row);
            let wanted = row.method == "GET"
                && row.expires_at > now
                && !app.store.holds(&key, &variant)
                && app.origins.route(&row.host).is_some();
            // A page evicted here stays out until its row changes: warming it back would
            // only evict it (or something warmer) again.
            if wanted && app.store.evicted_unchanged(&key, &variant, row.stored_at) {
                evicted += 1;
                return false;
            }
            wanted
        })
        .collect();
    report.evicted = evicted;
    report.candidates = candidates.len();
    let total = candidates.len();
    pop.in_progress_total.store(total, Ordering::Relaxed);
    pop.in_progress_done.store(0, Ordering::Relaxed);
    let cfg = &app.config.populate;
    let limit = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for row in candidates {
        let app = app.clone();
        let limit = limit.clone();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            fetch_with_retries(&app, &row, listed_at).await
        });
    }
    let mut done = 0;
    while let Some(result) = tasks.join_next().await {
        done += 1;
        pop.in_progress_done.store(done, Ordering::Relaxed);
        progress(done, total);
        match result {
            Ok(FillResult::Stored) => report.fetched += 1,
            Ok(FillResult::NotStored(NO_ROOM)) => report.no_room += 1,
            Ok(FillResult::Failed(_)) | Err(_) => report.failed += 1,
            Ok(_) => report.skipped += 1,
        }
    }
    pop.in_progress_total.store(0, Ordering::Relaxed);
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.finished_at = unix_now();
    pop.passes.fetch_add(1, Ordering::Relaxed);
    pop.count_pages(&report);
    if report.candidates > 0 {
        tracing::info!(
            fetched = report.fetched,
            skipped = report.skipped,
            failed = report.failed,
            ms = report.duration_ms,
            "populate pass"
        );
    }
    *pop.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    report
}

/// [`FillResult::NotStored`] reason for a page warming has no room for.
const NO_ROOM: &str = "no room for warming";

async fn fetch_with_retries(app: &Arc<App>, row: &PageRow, listed_at: u64) -> FillResult {
    let cfg = &app.config.populate;
    let origin = app
        .origins
        .route(&row.host)
        .map_or_else(String::new, |o| o.url.clone());
    // The node that stored this version, unless that is this node (its copy is gone).
    let peer = (app.config.fills_from_peers()
        && !row.node.is_empty()
        && row.node != app.config.cluster.advertise_url)
        .then(|| FromPeer {
            url: row.node.clone(),
            stored_at: row.stored_at,
        });
    let mut attempt = 0;
    loop {
        // The row says how big the page is: do not fetch what warming has no room for (a
        // commit can still refuse it if other warmed pages took the room meanwhile, or the
        // page grew; that comes back as a failure, and the retry stops here).
        if app.store.warm_fits(row.size).is_err() {
            return FillResult::NotStored(NO_ROOM);
        }
        // The peer on the first attempt only: a retry goes to the origin.
        let peer = peer.as_ref().filter(|_| attempt == 0);
        if peer.is_none() {
            // The rate protects the origin; a peer's answer costs it nothing.
            app.populate.rate_limit(&origin, cfg.rate_per_origin).await;
        }
        let result = fill_page(
            app,
            &row.host,
            &row.path,
            row_headers(row),
            peer,
            listed_at,
            &row.tags,
        )
        .await;
        match &result {
            FillResult::Failed(why) if attempt < cfg.retries => {
                attempt += 1;
                tracing::debug!(host = %row.host, path = %row.path, attempt, "populate fetch failed, retrying: {why}");
                tokio::time::sleep(Duration::from_millis(200 << attempt.min(6))).await;
            }
            FillResult::Failed(why) => {
                tracing::warn!(host = %row.host, path = %row.path, "populate fetch failed: {why}");
                return result;
            }
            _ => return result,
        }
    }
}

/// Applies the tombstones this node has not applied yet (see [`crate::tombstones`]).
async fn apply_tombstones(app: &Arc<App>) {
    match app.tombstones.catch_up(&app.store, &app.manifest).await {
        Ok(done) => {
            app.stats
                .purged
                .fetch_add(done.affected as u64, Ordering::Relaxed);
            app.populate
                .tombstones_applied
                .store(app.tombstones.counts().0, Ordering::Relaxed);
        }
        Err(e) => tracing::warn!("populate: cannot read tombstones: {e}"),
    }
}

/// Announces the entries on this node's disk that the manifest lacks, or lists in an older
/// version, so rows lost (a LiteFS primary that died before replicating, a cleared manifest)
/// come back. A row for the same version is left alone, however this node got its copy (it
/// fetched it itself at another time, or warmed it): otherwise every restart would move rows
/// between nodes. Announcements are guarded by the tombstones this node has applied, so a
/// purged copy never comes back. Returns its report.
pub async fn reconcile(app: &Arc<App>) -> ReconcileReport {
    let started = Instant::now();
    let mut report = ReconcileReport::default();
    let rows = match app.manifest.list().await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!("reconcile: cannot read the manifest: {e}");
            return report;
        }
    };
    let mut listed: HashMap<CacheKey, Vec<PageRow>> = HashMap::new();
    for row in rows.into_iter().filter(|r| r.method == "GET") {
        listed
            .entry(CacheKey {
                host: row.host.clone(),
                path: row.path.clone(),
            })
            .or_default()
            .push(row);
    }
    // The guard before the entries: a tombstone applied after it was read removed its
    // entries first.
    let guard = app.tombstones.guard();
    // The index keeps none of what a row needs: every entry's metadata is read from disk, one
    // at a time, on the blocking pool (requests are served meanwhile).
    let store = app.store.clone();
    let node = app.config.cluster.advertise_url.clone();
    let (held, rows) = tokio::task::spawn_blocking(move || {
        let refs = store.refs();
        let mut rows = Vec::new();
        for r in refs.iter().filter(|r| !r.invalidated()) {
            let Some(entry) = store.load(r) else { continue };
            let row = listed
                .get(&entry.meta.key())
                .and_then(|rows| rows.iter().find(|r| variant_of(r) == entry.meta.variant));
            let newer = match row {
                None => true,
                Some(row) => {
                    !same_version(row, &entry.meta) && entry.meta.stored_at as i64 > row.stored_at
                }
            };
            if newer {
                rows.push(page_row(&entry, &node));
            }
        }
        (refs.len(), rows)
    })
    .await
    .unwrap_or_default();
    report.entries = held;
    let mut tasks = tokio::task::JoinSet::new();
    for row in rows {
        report.announced += 1;
        let manifest = app.manifest.clone();
        let guard = guard.clone();
        tasks.spawn(async move { manifest.announce(row, guard).await });
    }
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(Upsert::Inserted | Upsert::Updated)) => report.written += 1,
            Ok(Ok(Upsert::Purged)) => report.purged += 1,
            Ok(Ok(Upsert::Unchanged)) => {}
            Ok(Err(_)) | Err(_) => report.failed += 1,
        }
    }
    if report.failed > 0 {
        tracing::warn!(
            failed = report.failed,
            "reconcile: some rows could not be re-announced"
        );
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.finished_at = unix_now();
    tracing::info!(
        entries = report.entries,
        announced = report.announced,
        written = report.written,
        purged = report.purged,
        "reconciled this node's cache with the manifest"
    );
    *app.populate
        .last_reconcile
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(report.clone());
    report
}

/// Starts the node's background work: reconciling its disk with the manifest, applying
/// purges recorded by other nodes, and edge warming ([`run`] on its own task). It lives here
/// rather than on [`App`] so that `App` is built from its parts and does not depend on
/// populate.
///
/// Returns the task's handle: a process handing its cache directory to a new one (a graceful
/// upgrade) aborts it, since it must not start new work in a directory it no longer owns.
pub fn spawn(app: &Arc<App>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(app.clone()))
}

/// The background task: reconcile once (and again when the manifest's role changes, and every
/// 10 minutes), then apply tombstones and run a pass whenever the manifest changes, when
/// woken, and at least every `populate.interval_secs`. [`App::start`] has already applied the
/// tombstones recorded before it.
pub async fn run(app: Arc<App>) {
    apply_tombstones(&app).await;
    reconcile(&app).await;
    let cfg = app.config.populate.clone();
    let poll = Duration::from_millis(cfg.poll_ms.max(50));
    let full_every = Duration::from_secs(cfg.interval_secs.max(1));
    let mut last_version = None;
    let mut last_txid = None;
    let mut last_pass = Instant::now() - full_every;
    let mut last_expiry = Instant::now();
    let mut last_reconcile = Instant::now();
    // Tombstones are deleted once expired; with a short TTL that must happen sooner than every
    // 10 minutes, or the table keeps what it should not.
    let expiry_every = Duration::from_secs(app.config.cache.tombstone_ttl_secs.clamp(1, 600));
    let mut last_role = app.manifest.role().await;
    loop {
        // A new primary may have lost the last transactions of the old one (asynchronous
        // replication): announce this node's entries again.
        let role = app.manifest.role().await;
        if role != last_role {
            tracing::info!(
                from = last_role.as_str(),
                to = role.as_str(),
                "manifest role changed"
            );
            last_role = role;
            reconcile(&app).await;
        }
        let version = app.manifest.data_version().await.ok();
        let txid = app.manifest.txid().await;
        let changed = version != last_version || txid != last_txid;
        last_version = version;
        last_txid = txid;
        if changed || last_pass.elapsed() >= full_every {
            apply_tombstones(&app).await;
            if cfg.enabled {
                pass(&app, &|_, _| {}).await;
            }
            last_pass = Instant::now();
        }
        if last_reconcile.elapsed() >= Duration::from_secs(600) {
            last_reconcile = Instant::now();
            // Rows lost anywhere (a failover, a manual clear/db) come back within minutes;
            // rows that are right cost no write.
            reconcile(&app).await;
        }
        if last_expiry.elapsed() >= expiry_every {
            last_expiry = Instant::now();
            if let Err(e) = app.manifest.expire_tombstones(unix_now() as i64).await {
                tracing::debug!("expiring tombstones: {e}");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(poll) => {}
            () = app.populate.wake.notified() => {
                // Forced: treat as changed.
                last_version = None;
            }
        }
    }
}
