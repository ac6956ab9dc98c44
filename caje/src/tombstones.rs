//! Purges from the other nodes: applying the tombstones this node has not seen, in id order,
//! before it serves or announces anything, and remembering how far it got.
//!
//! - **Ordering by sequence, not by clock.** A tombstone covers every copy this node holds
//!   when it applies it: whatever it holds was stored before it applied the purge. A fill still
//!   running is dropped at its commit by the store's purge log (see
//!   [`crate::cache::store`]'s `purge.rs`). A copy fetched after the node applied a purge is
//!   never touched by it, whatever the clocks say; a copy fetched between the purge and its
//!   application here (one poll, plus replication lag) is dropped, which only costs a refetch.
//! - **The cursor.** Every tombstone up to [`Tombstones::cursor`] has been applied. It is kept
//!   in `cache_dir/tombstones.cursor` (written atomically), so a start applies only what it
//!   missed, not every tombstone from id 0. Purges this node made itself are applied when made
//!   (before their tombstone exists) and are not applied again.
//! - **Gaps.** Tombstones expire after `cache.tombstone_ttl_secs`. A node whose cursor is
//!   older than the tombstones still kept (or that has no cursor but holds copies) cannot know
//!   what it missed: it drops every copy the manifest no longer lists, or lists in a newer
//!   version.
//! - **Announcing.** [`Tombstones::guard`] says which tombstones this node has applied, for
//!   [`Manifest::announce`]: a copy that may predate a purge never puts its row back.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::cache::entry::EntryMeta;
use crate::cache::key::{CacheKey, Variant};
use crate::cache::store::Store;
use crate::manifest::{Manifest, ManifestError, PageRow, Purge, PurgeGuard, VARY_ABSENT};

/// The cursor file, in the cache directory (it describes what that directory holds).
const CURSOR_FILE: &str = "tombstones.cursor";
/// First line of the cursor file.
const CURSOR_MAGIC: &str = "caje tombstone cursor 1";
/// `cursor` value while the node does not know it (no file, or an unreadable one).
const UNKNOWN: i64 = -1;

/// What one [`Tombstones::catch_up`] did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchUp {
    /// Tombstones applied to this node's disk (its own purges excluded).
    pub applied: usize,
    /// Local entries they removed or marked stale.
    pub affected: usize,
    /// Whether some purges could not be known (expired before this node read them, or no
    /// cursor): then copies the manifest no longer lists were dropped.
    pub gap: bool,
    /// Entries dropped because of a gap.
    pub dropped: usize,
    /// The cursor afterwards.
    pub cursor: i64,
}

/// This node's progress through the manifest's tombstones.
#[derive(Debug)]
pub struct Tombstones {
    path: PathBuf,
    /// Every tombstone up to this id is applied; [`UNKNOWN`] before the first catch-up when
    /// there was no cursor file.
    cursor: AtomicI64,
    /// Ids above the cursor already applied: this node's own purges.
    own: Mutex<Vec<i64>>,
    /// One catch-up at a time.
    running: tokio::sync::Mutex<()>,
    /// Tombstones applied since start that affected at least one entry.
    applied: AtomicU64,
    /// Gaps found since start.
    gaps: AtomicU64,
}

impl Tombstones {
    /// Reads the cursor file of `cache_dir`. Blocking. A missing or unreadable file is not an
    /// error: the node then does not know what it applied, and the first catch-up treats that
    /// as a gap (unless it holds nothing).
    pub fn load(cache_dir: &Path) -> Tombstones {
        let path = cache_dir.join(CURSOR_FILE);
        let cursor = match fs::read_to_string(&path) {
            Ok(text) => parse_cursor(&text).unwrap_or_else(|| {
                tracing::warn!(path = %path.display(), "unreadable tombstone cursor: treating it as unknown");
                UNKNOWN
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => UNKNOWN,
            Err(e) => {
                tracing::warn!(path = %path.display(), "cannot read the tombstone cursor ({e}): treating it as unknown");
                UNKNOWN
            }
        };
        Tombstones {
            path,
            cursor: AtomicI64::new(cursor),
            own: Mutex::new(Vec::new()),
            running: tokio::sync::Mutex::new(()),
            applied: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
        }
    }

    /// Every tombstone up to this id is applied (-1: not known yet).
    pub fn cursor(&self) -> i64 {
        self.cursor.load(Ordering::SeqCst)
    }

    /// Tombstones applied since start that affected an entry, and gaps found.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.applied.load(Ordering::Relaxed),
            self.gaps.load(Ordering::Relaxed),
        )
    }

    /// The tombstones this node has applied, for [`Manifest::announce`]. Read it before
    /// checking that the copy to announce is still held: a tombstone applied later removed it
    /// first.
    pub fn guard(&self) -> PurgeGuard {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        PurgeGuard {
            applied: self.cursor().max(0),
            also: own.clone(),
        }
    }

    /// Records that this node made (and so applied) the purge whose tombstone is `id`.
    pub fn purged_here(&self, id: i64) {
        if id > self.cursor() {
            self.own.lock().unwrap_or_else(|e| e.into_inner()).push(id);
        }
    }

    /// Applies every tombstone above the cursor to `store`, handles a gap, and saves the
    /// cursor. Call it before serving, and whenever the manifest changes.
    pub async fn catch_up(
        &self,
        store: &Store,
        manifest: &Manifest,
    ) -> Result<CatchUp, ManifestError> {
        let _running = self.running.lock().await;
        let known = Some(self.cursor()).filter(|&c| c != UNKNOWN);
        let after = known.unwrap_or(0);
        let log = manifest.tombstone_log(after).await?;
        let mut report = CatchUp::default();
        if log.missed || known.is_none() {
            // A gap compares every copy this node holds with the manifest: after a start from
            // an index snapshot, the copies the background check has still to find too.
            // (Without a gap, the purges below are logged in the store, and the check never
            // adds back a copy one covers.)
            store.checked().await;
        }
        let held = store.usage().0;
        // A node that holds nothing has nothing a purge could cover.
        let gap = (log.missed || known.is_none()) && held > 0;
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for (id, t) in &log.tombstones {
            if own.contains(id) {
                continue;
            }
            let affected = apply(store, &t.kind, t.soft).await;
            report.applied += 1;
            report.affected += affected;
            if affected > 0 {
                self.applied.fetch_add(1, Ordering::Relaxed);
                tracing::info!(id, affected, "applied a purge from the manifest");
            }
        }
        if gap {
            self.gaps.fetch_add(1, Ordering::Relaxed);
            let rows = manifest.list().await?;
            report.dropped = drop_unlisted(store, rows).await;
            tracing::warn!(
                cursor = known,
                last_id = log.last_id,
                dropped = report.dropped,
                "some purges are no longer in the manifest (down longer than tombstone_ttl_secs, or no cursor): dropped the copies it no longer lists"
            );
        }
        report.gap = gap;
        // Past a gap (or without a cursor, or with one from another manifest), every id issued
        // so far is either applied above or covered by the drop: go on from the last one.
        let base = if log.missed || known.is_none() {
            log.last_id
        } else {
            after
        };
        let next = log.tombstones.last().map_or(base, |(id, _)| base.max(*id));
        report.cursor = next;
        // After the store work: a reader of the cursor may assume those purges are applied.
        self.cursor.store(next, Ordering::SeqCst);
        self.own
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&id| id > next);
        if known != Some(next) {
            // Not fatal: a node that cannot save its cursor applies these purges again at its
            // next start, which only costs refetches.
            let path = self.path.clone();
            let saved = tokio::task::spawn_blocking(move || write_atomically(&path, next)).await;
            if let Err(e) = saved.map_err(io::Error::other).and_then(|r| r) {
                tracing::warn!(path = %self.path.display(), "cannot save the tombstone cursor: {e}");
            }
        }
        Ok(report)
    }
}

fn parse_cursor(text: &str) -> Option<i64> {
    let mut lines = text.lines();
    if lines.next()? != CURSOR_MAGIC {
        return None;
    }
    lines.next()?.trim().parse().ok().filter(|&c: &i64| c >= 0)
}

/// Writes the cursor to a temp file, syncs it, renames it over the old one, syncs the
/// directory: a crash leaves the old cursor or the new one, never a torn file.
fn write_atomically(path: &Path, cursor: i64) -> io::Result<()> {
    let tmp = path.with_extension("cursor.tmp");
    {
        let mut f = File::create(&tmp)?;
        write!(f, "{CURSOR_MAGIC}\n{cursor}\n")?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Applies one purge to the store; returns how many entries it affected.
async fn apply(store: &Store, kind: &Purge, soft: bool) -> usize {
    let store = store.clone();
    let kind = kind.clone();
    tokio::task::spawn_blocking(move || match &kind {
        Purge::Url { host, path } => store.apply_purge(
            Some(&CacheKey {
                host: host.clone(),
                path: path.clone(),
            }),
            None,
            soft,
        ),
        Purge::Tag(tag) => store.apply_purge(None, Some(tag), soft),
        Purge::All => store.apply_purge(None, None, soft),
    })
    .await
    .unwrap_or(0)
}

/// Drops every entry the manifest does not list, or lists in another version stored no
/// earlier than this one (a purge this node missed, then a refetch elsewhere).
async fn drop_unlisted(store: &Store, rows: Vec<PageRow>) -> usize {
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
    let store = store.clone();
    // The index keeps none of what the comparison needs: every entry's metadata is read from
    // disk, one at a time, on the blocking pool.
    tokio::task::spawn_blocking(move || {
        let mut doomed = Vec::new();
        for r in store.refs() {
            let Some(e) = store.load(&r) else { continue };
            let row = listed
                .get(&e.meta.key())
                .and_then(|rows| rows.iter().find(|r| variant_of(r) == e.meta.variant));
            let drop = match row {
                None => true,
                Some(row) => {
                    !same_version(row, &e.meta) && row.stored_at >= e.meta.stored_at as i64
                }
            };
            if drop {
                doomed.push((e.meta.key(), r));
            }
        }
        store.remove_entries(&doomed)
    })
    .await
    .unwrap_or(0)
}

/// The store variant a manifest row describes (the inverse of the encoding in
/// [`crate::app::page_row`]).
pub fn variant_of(row: &PageRow) -> Variant {
    Variant(
        row.vary
            .iter()
            .map(|(n, v)| (n.clone(), (v != VARY_ABSENT).then(|| v.clone())))
            .collect(),
    )
}

/// Whether a manifest row describes the same response as a stored entry: same status, size
/// and validators. Copies of one page fetched by different nodes at different times are the
/// same version when these agree, whatever their times.
pub fn same_version(row: &PageRow, meta: &EntryMeta) -> bool {
    row.status == meta.status
        && row.size == meta.body_len
        && row.etag == meta.etag()
        && row.last_modified == meta.last_modified()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn cursor_file_round_trips_and_rejects_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let t = Tombstones::load(dir.path());
        assert_eq!(t.cursor(), UNKNOWN);
        write_atomically(&dir.path().join(CURSOR_FILE), 42).unwrap();
        assert_eq!(Tombstones::load(dir.path()).cursor(), 42);
        for bad in [
            "",
            "42\n",
            "caje tombstone cursor 1\n-3\n",
            "caje tombstone cursor 2\n4\n",
        ] {
            fs::write(dir.path().join(CURSOR_FILE), bad).unwrap();
            assert_eq!(Tombstones::load(dir.path()).cursor(), UNKNOWN, "{bad:?}");
        }
        // No temp file is left behind.
        write_atomically(&dir.path().join(CURSOR_FILE), 7).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CURSOR_FILE]);
    }

    async fn fill(store: &Store) {
        let mut f = store.begin_fill(
            crate::cache::entry::tests::sample(),
            u64::MAX,
            false,
            store.purge_epoch(),
        );
        f.push(&bytes::Bytes::from_static(b"abc"));
        let mut progress = f.progress();
        f.finish();
        progress
            .wait_for(|p| {
                !matches!(
                    p,
                    crate::cache::store::FillProgress::Starting
                        | crate::cache::store::FillProgress::Writing { .. }
                )
            })
            .await
            .unwrap();
    }

    /// A node whose unread tombstones expired drops the copies the manifest does not list,
    /// once: its cursor then moves past the gap, and is saved.
    #[tokio::test]
    async fn a_gap_drops_unlisted_copies_once() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let store = Store::open(
            &cache,
            8,
            1 << 20,
            crate::cache::store::DiskLimits::UNLIMITED,
            Arc::default(),
            tx,
        )
        .unwrap();
        let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
        let t = Tombstones::load(&cache);
        // A new node holds nothing: no gap, whatever the manifest's past.
        let first = t.catch_up(&store, &m).await.unwrap();
        assert_eq!((first.gap, first.cursor), (false, 0));
        fill(&store).await;
        let id = m
            .add_tombstone(crate::manifest::Tombstone {
                kind: Purge::Tag("elsewhere".into()),
                soft: false,
                created_at: 1,
                expires_at: 2,
            })
            .await
            .unwrap();
        assert_eq!(m.expire_tombstones(10).await.unwrap(), 1);
        let gap = t.catch_up(&store, &m).await.unwrap();
        assert_eq!((gap.gap, gap.dropped, gap.cursor), (true, 1, id));
        assert_eq!(store.usage().0, 0);
        fill(&store).await;
        let after = t.catch_up(&store, &m).await.unwrap();
        assert_eq!((after.gap, after.dropped, after.cursor), (false, 0, id));
        assert_eq!(store.usage().0, 1);
        assert_eq!(Tombstones::load(&cache).cursor(), id);
    }

    #[test]
    fn guard_names_own_purges_above_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        write_atomically(&dir.path().join(CURSOR_FILE), 5).unwrap();
        let t = Tombstones::load(dir.path());
        t.purged_here(4);
        t.purged_here(9);
        assert_eq!(
            t.guard(),
            PurgeGuard {
                applied: 5,
                also: vec![9]
            }
        );
    }
}
