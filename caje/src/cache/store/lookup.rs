//! Reading the store: finding the entry a request selects in the index, and its metadata,
//! read from disk ([`Store::read_meta`], one small read the page cache usually answers) or
//! taken from the decoded copies kept for hot entries (`metas.rs`).
//!
//! The index is updated only after the files it describes are in place (a fill renames its
//! body and metadata first; a refresh renames its metadata first), so the metadata read for
//! an entry is never older than the index's view of it. It may be newer: a reader then finds
//! another body file named than the index's, and looks again.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;

use super::index::Selected;
use super::{body_suffix, shard_dir, Entry, EntryRef, Lookup, Store};
use crate::cache::entry::{DecodeError, EntryMeta};
use crate::cache::evict::WarmRefused;
use crate::cache::key::{entry_digest, CacheKey, Variant};
use crate::stats::Stats;

/// Why an entry's metadata could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The file could not be read (`NotFound`: removed or replaced meanwhile).
    #[error("reading metadata: {0}")]
    Io(#[from] io::Error),
    /// It does not decode (damaged, or another format).
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// What reading an entry for a hit found.
enum Loaded {
    Entry(Arc<Entry>),
    /// The files on disk are newer than the index's view: look again.
    Changed,
    /// Removed (or found corrupt and removed).
    Gone,
}

/// Times a lookup looks again when the files it read were replaced under it.
const LOOKUP_TRIES: usize = 3;

impl Store {
    /// Number of entries and their body bytes.
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.entries, idx.bytes)
    }

    /// Bytes the entries occupy on disk as the eviction policy counts them (bodies in whole
    /// 4 KiB blocks plus one block of metadata each), and the cap (`cache.max_disk_bytes`).
    pub fn disk_usage(&self) -> (u64, u64) {
        self.index().disk_usage()
    }

    /// Bytes on disk (whole blocks, as the cap counts them) of pages edge warming brought in
    /// that no client of this node has asked for yet, and the most they may take
    /// (`populate.max_fraction` of the cap).
    pub fn warm_usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.warm_bytes(), idx.limits.max_warm_bytes)
    }

    /// Heap bytes of the in-memory index (its tables and the eviction policy's), and the
    /// number of decoded entries kept for hot entries.
    pub fn index_memory(&self) -> (usize, usize) {
        (self.index().heap_bytes(), self.inner.metas.len())
    }

    /// Whether edge warming may bring in a page of `body_len` bytes now: it fits in the free
    /// room and in the warming share (`populate.max_fraction`). Warming never evicts.
    pub fn warm_fits(&self, body_len: u64) -> Result<(), WarmRefused> {
        // A key no entry has: the check for a new page.
        self.index().warm_check(u128::MAX, body_len)
    }

    /// Finds the entry that may answer a request for `key` with these headers, and counts it
    /// as a client's use. Its metadata comes from the hot entries' decoded copies or from disk
    /// (on the blocking pool).
    pub async fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        self.find(key, headers, true).await
    }

    /// Like [`Store::lookup`], but not a client's use: the eviction policy is not told (edge
    /// warming looks before it fetches).
    pub async fn peek(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        self.find(key, headers, false).await
    }

    async fn find(&self, key: &CacheKey, headers: &HeaderMap, client: bool) -> Lookup {
        for attempt in 0..LOOKUP_TRIES {
            let r = {
                let mut idx = self.index();
                match idx.select(key, headers) {
                    Selected::Miss => return Lookup::Miss,
                    Selected::VaryMiss => return Lookup::VaryMiss,
                    Selected::Found(r) => {
                        if client && attempt == 0 {
                            idx.touch(&r);
                        }
                        r
                    }
                }
            };
            let loaded = match self.inner.metas.get(&r) {
                Some(e) => Loaded::Entry(e),
                None => {
                    let store = self.clone();
                    let Ok(loaded) = tokio::task::spawn_blocking(move || {
                        let loaded = store.read_entry(&r);
                        if let (Loaded::Entry(e), true) = (&loaded, client) {
                            store.inner.metas.insert(e.clone());
                        }
                        loaded
                    })
                    .await
                    else {
                        return Lookup::Miss;
                    };
                    loaded
                }
            };
            match loaded {
                // The name covers host and path; comparing them too costs little and keeps a
                // damaged file that still decodes from answering for another page.
                Loaded::Entry(e) if e.meta.host == key.host && e.meta.path == key.path => {
                    return Lookup::Found(e)
                }
                Loaded::Entry(_) | Loaded::Gone => return Lookup::Miss,
                Loaded::Changed => tokio::task::yield_now().await,
            }
        }
        Lookup::Miss
    }

    /// Reads entry `r` for a hit. Blocking.
    fn read_entry(&self, r: &EntryRef) -> Loaded {
        match self.read_meta(r) {
            Ok(meta) if body_suffix(&r.name(), &meta.body_file) == Some(r.file) => {
                Loaded::Entry(Arc::new(Entry::new(meta, *r, &self.inner.root)))
            }
            // Another fill's metadata: the index is about to move on (or has).
            Ok(_) => Loaded::Changed,
            Err(MetaError::Io(e))
                if e.kind() == io::ErrorKind::NotFound && !self.index().is_current(r) =>
            {
                Loaded::Changed
            }
            Err(e) => {
                self.remove_corrupt_ref(r, &e);
                Loaded::Gone
            }
        }
    }

    /// Reads the metadata of entry `r` from disk. Blocking. The one place metadata is read
    /// for an entry the index holds.
    pub(crate) fn read_meta(&self, r: &EntryRef) -> Result<EntryMeta, MetaError> {
        let bytes = fs::read(self.meta_path_of(r))?;
        Ok(EntryMeta::decode(&bytes)?)
    }

    /// Reads entry `r` from disk for a background reader (reconcile, soft purges), without
    /// keeping it among the hot entries. `None` if it is gone, changed or unreadable.
    /// Blocking.
    pub fn load(&self, r: &EntryRef) -> Option<Arc<Entry>> {
        match self.read_meta(r) {
            Ok(meta) if body_suffix(&r.name(), &meta.body_file) == Some(r.file) => {
                Some(Arc::new(Entry::new(meta, *r, &self.inner.root)))
            }
            _ => None,
        }
    }

    /// Every entry the index holds, compactly (read one with [`Store::load`]).
    pub fn refs(&self) -> Vec<EntryRef> {
        self.index().all()
    }

    /// Every entry, read from disk. Blocking, and one decoded entry per stored one: for tests.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.refs().iter().filter_map(|r| self.load(r)).collect()
    }

    pub(super) fn meta_path_of(&self, r: &EntryRef) -> PathBuf {
        let name = r.name();
        shard_dir(&self.inner.root, &name).join(format!("{name}.meta"))
    }

    pub(super) fn body_path_of(&self, r: &EntryRef) -> PathBuf {
        let name = r.name();
        shard_dir(&self.inner.root, &name).join(r.body_file())
    }

    /// Whether `entry` is still the one the index serves (not replaced or removed).
    pub fn is_current(&self, entry: &Arc<Entry>) -> bool {
        self.index().is_current(&entry.r)
    }

    /// Whether this node evicted its copy of the page variant to stay within the cap, and the
    /// manifest row has not changed since: the row was stored (`row_stored_at`, unix seconds)
    /// no later than the copy that was evicted. Edge warming skips such rows.
    pub fn evicted_unchanged(&self, key: &CacheKey, variant: &Variant, row_stored_at: i64) -> bool {
        let name = entry_digest(key, variant);
        self.index().evicted_unchanged(&name, row_stored_at)
    }

    /// Whether this node holds the given page variant.
    pub fn holds(&self, key: &CacheKey, variant: &Variant) -> bool {
        let name = entry_digest(key, variant);
        self.index().get(&name).is_some()
    }

    /// Removes an entry found corrupt, and counts it. Blocking (unlinks files).
    pub fn remove_corrupt(&self, entry: &Arc<Entry>, why: &dyn std::fmt::Display) {
        tracing::warn!(
            host = %entry.meta.host,
            path = %entry.meta.path,
            "corrupt cache entry {}", entry.name
        );
        self.remove_corrupt_ref(&entry.r, why);
    }

    fn remove_corrupt_ref(&self, r: &EntryRef, why: &dyn std::fmt::Display) {
        Stats::incr(&self.inner.stats.corrupt_entries);
        tracing::warn!("removing corrupt cache entry {}: {why}", r.name());
        self.inner.hot.remove(&r.body_file());
        self.inner.metas.remove(r.id());
        if self.index().remove(r) {
            let _ = fs::remove_file(self.meta_path_of(r));
            let _ = fs::remove_file(self.body_path_of(r));
        }
    }
}
