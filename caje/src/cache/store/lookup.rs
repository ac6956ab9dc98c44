//! Reading the store: finding the entry a request selects in the index, and its metadata,
//! read from disk ([`Store::read_meta`], one small read the page cache usually answers) or
//! taken from the decoded copies kept for hot entries (`metas.rs`).
//!
//! The index is updated only after the entry file it describes is in place (a fill and a
//! refresh rename theirs first), so the header read for an entry is never older than the
//! index's view of it. It may be newer: a reader then finds another stored version's tag in
//! it than the index's, and looks again.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use http::HeaderMap;

use super::format::{self, DecodeError, Fixed};
use super::index::{Plain, Selected};
use super::{entry_path, Entry, EntryRef, HitMeta, Lookup, Store};
use crate::cache::entry::EntryMeta;
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

impl From<format::ReadError> for MetaError {
    fn from(e: format::ReadError) -> MetaError {
        match e {
            format::ReadError::Io(e) => MetaError::Io(e),
            format::ReadError::Decode(e) => MetaError::Decode(e),
        }
    }
}

/// What [`Store::lookup_hot`] found.
pub enum HotLookup {
    /// The compact metadata kept for a hot entry: enough for a fresh hit.
    Hot(Arc<HitMeta>),
    /// What [`Store::lookup`] finds (the full entry read from disk, or a miss).
    Full(Lookup),
}

/// What [`Store::lookup_plain`] found.
pub enum FastLookup {
    /// The kept compact metadata of the page's only response without `Vary`.
    Hot(Arc<HitMeta>),
    /// The page is stored with a `Vary`: [`Store::lookup_varied`] selects with the request's
    /// headers.
    Varies,
    /// Not held, or its metadata not in memory: for the full path.
    Other,
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
    /// number of hot entries whose compact metadata is kept.
    pub fn index_memory(&self) -> (usize, usize) {
        (self.index().heap_bytes(), self.inner.metas.len())
    }

    /// Bytes of compact metadata kept for hot entries, and their budget (a share of
    /// `cache.memory_bytes`, [`super::metas_budget`]).
    pub fn metas_usage(&self) -> (usize, usize) {
        self.inner.metas.usage()
    }

    /// Whether edge warming may bring in a page of `body_len` bytes now: it fits in the free
    /// room and in the warming share (`populate.max_fraction`). Warming never evicts.
    pub fn warm_fits(&self, body_len: u64) -> Result<(), WarmRefused> {
        // A key no entry has: the check for a new page.
        self.index()
            .warm_check(u128::MAX, super::index::estimated_blocks(body_len))
    }

    /// Finds the entry that may answer a request for `key` with these headers, and counts it
    /// as a client's use. Its metadata is read from disk (on the blocking pool, or on the
    /// worker on tmpfs); a client's hit uses [`Store::lookup_hot`] instead.
    pub async fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        self.find(key, headers, true, true).await
    }

    /// Like [`Store::lookup`], but not a client's use: the eviction policy is not told (edge
    /// warming looks before it fetches).
    pub async fn peek(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        self.find(key, headers, false, false).await
    }

    /// A client's lookup for a hit: the compact metadata kept for hot entries when there is
    /// one, which answers a fresh hit alone ([`HitMeta::fresh`]); else the full entry, read
    /// from disk as [`Store::lookup`] does, whose compact part is kept for the next hits.
    pub async fn lookup_hot(&self, key: &CacheKey, headers: &HeaderMap) -> HotLookup {
        let r = {
            let mut idx = self.index();
            match idx.select(key, headers) {
                Selected::Miss => return HotLookup::Full(Lookup::Miss),
                Selected::VaryMiss => return HotLookup::Full(Lookup::VaryMiss),
                Selected::Found(r) => {
                    idx.touch(&r);
                    r
                }
            }
        };
        match self.inner.metas.get(&r) {
            Some(m) => HotLookup::Hot(m),
            // Selected again there: the index may have moved on. The use is counted.
            None => HotLookup::Full(self.find(key, headers, true, false).await),
        }
    }

    /// [`Store::lookup_hot`] for the fast path ([`crate::fast`]), without the request's
    /// headers: the compact metadata of the entry a request selects for a page stored without
    /// `Vary`, when it is kept in memory, counted as a use.
    pub fn lookup_plain(&self, key: &CacheKey) -> FastLookup {
        let r = match self.index().select_plain(key) {
            Plain::Found(r) => r,
            Plain::Varies => return FastLookup::Varies,
            Plain::Missing => return FastLookup::Other,
        };
        match self.inner.metas.get(&r) {
            Some(m) => FastLookup::Hot(m),
            None => FastLookup::Other,
        }
    }

    /// [`Store::lookup_hot`] for the fast path with the request's headers (as prepared for
    /// the origin, as the key's `Vary` values are): the kept compact metadata of the selected
    /// entry, counted as a use; `None` when there is none (the full path then looks again).
    pub fn lookup_varied(&self, key: &CacheKey, headers: &HeaderMap) -> Option<Arc<HitMeta>> {
        let r = {
            let mut idx = self.index();
            match idx.select(key, headers) {
                Selected::Found(r) => {
                    idx.touch(&r);
                    r
                }
                Selected::Miss | Selected::VaryMiss => return None,
            }
        };
        self.inner.metas.get(&r)
    }

    /// The full entry (its RFC 9111 policy) for a request whose hot metadata cannot answer it
    /// alone: stale, soft-purged, credentials, the client's own directives. Read from disk;
    /// the use was counted by [`Store::lookup_hot`] already.
    pub async fn full(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        self.find(key, headers, true, false).await
    }

    /// `client`: a client's request (keep the compact metadata and a small body read with
    /// it); `touch`: count it as a use in the eviction policy.
    async fn find(&self, key: &CacheKey, headers: &HeaderMap, client: bool, touch: bool) -> Lookup {
        for attempt in 0..LOOKUP_TRIES {
            let r = {
                let mut idx = self.index();
                match idx.select(key, headers) {
                    Selected::Miss => return Lookup::Miss,
                    Selected::VaryMiss => return Lookup::VaryMiss,
                    Selected::Found(r) => {
                        if touch && attempt == 0 {
                            idx.touch(&r);
                        }
                        r
                    }
                }
            };
            let loaded = match self.read_entry_cached(&r, client) {
                Some(e) => Loaded::Entry(e),
                None => {
                    let store = self.clone();
                    let Ok(loaded) =
                        tokio::task::spawn_blocking(move || store.read_entry(&r)).await
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
                    if client {
                        self.inner.metas.insert(e.hit.clone());
                    }
                    return Lookup::Found(e);
                }
                Loaded::Entry(_) | Loaded::Gone => return Lookup::Miss,
                Loaded::Changed => tokio::task::yield_now().await,
            }
        }
        Lookup::Miss
    }

    /// Reads entry `r` on the calling async worker when the cache is on tmpfs: one `open` and
    /// one read of the header and, for a small body and a client's lookup, of the body too, which is checked against the header's length and CRC and put
    /// in the memory tier, where the hit that follows finds it.
    ///
    /// A lookup of an entry whose decoded metadata is not kept used to read the header on the
    /// blocking pool, then the hit opened the file again and read the body: two opens, two
    /// reads and two context switches per hit. On the bench's 10,000 x 16 KiB random hits
    /// (more entries than the decoded copies kept) that hop was a fifth of the CPU.
    ///
    /// `None` when a read would wait for the disk, or when anything is unusual (the file is
    /// gone, a header that does not decode, another version, a length or checksum mismatch):
    /// the caller then takes the blocking path, which decides and reports those as before
    /// (nothing is removed here).
    fn read_entry_cached(&self, r: &EntryRef, client: bool) -> Option<Arc<Entry>> {
        // Only on tmpfs. On a disk-backed file system the data read can refuse to wait
        // (`RWF_NOWAIT`), but the `open` cannot: an entry that is not hot may have lost its
        // directory entry from the kernel's caches, and its lookup would then stall the worker
        // (every request it serves) on a disk read. Hot entries (decoded copy kept) are read
        // on the worker by the hit itself, whose `open` finds a warm dentry.
        if !self.inner.memory_fs {
            return None;
        }
        let len = r.body_len;
        let with_body = client && len > 0 && len <= format::INLINE_MAX;
        let file = File::open(self.path_of(r)).ok()?;
        // One byte more than a whole file with a header under FIRST_READ holds, so that a
        // file longer than its header says shows too.
        let want = format::FIRST_READ + if with_body { len as usize + 1 } else { 0 };
        let mut buf = vec![0u8; want];
        let n = format::read_all_cached(&file, &mut buf, self.inner.memory_fs)?;
        let (meta, fixed) = format::decode_header(&buf[..n]).ok()?;
        if fixed.tag != r.file || fixed.body_len != len {
            return None;
        }
        let offset = fixed.body_offset();
        let entry = Arc::new(Entry::new(meta, *r, &self.inner.root, offset));
        if !with_body {
            return Some(entry);
        }
        let end = offset + len;
        if n < want || end < want as u64 {
            // The read reached the end of the file (or should have): it must end where the
            // header says.
            if n as u64 != end {
                return None;
            }
            let body = &buf[offset as usize..n];
            if crc32fast::hash(body) != fixed.body_crc {
                return None;
            }
            // A copy without the header: the memory tier counts what it holds.
            self.inner
                .hot
                .insert(&entry.meta.body_file, bytes::Bytes::copy_from_slice(body));
        }
        Some(entry)
    }

    /// Reads entry `r` for a hit. Blocking.
    fn read_entry(&self, r: &EntryRef) -> Loaded {
        match self.read_meta(r) {
            Ok((meta, fixed)) if fixed.tag == r.file => Loaded::Entry(Arc::new(Entry::new(
                meta,
                *r,
                &self.inner.root,
                fixed.body_offset(),
            ))),
            // Another fill's metadata: the index is about to move on (or has).
            Ok(_) => Loaded::Changed,
            Err(MetaError::Io(e))
                if e.kind() == io::ErrorKind::NotFound && !self.index().is_current(r) =>
            {
                Loaded::Changed
            }
            Err(MetaError::Io(e)) if e.kind() == io::ErrorKind::NotFound && !self.is_checked() => {
                // Listed by a snapshot older than the directory (removed after it was
                // written): not damage. The background check would drop it too.
                self.inner.metas.remove(r.id());
                self.index().remove(r);
                Loaded::Gone
            }
            Err(e) => {
                self.remove_corrupt_ref(r, &e);
                Loaded::Gone
            }
        }
    }

    /// Reads the metadata of entry `r` from disk. Blocking. The one place metadata is read
    /// for an entry the index holds.
    pub(crate) fn read_meta(&self, r: &EntryRef) -> Result<(EntryMeta, Fixed), MetaError> {
        let file = File::open(self.path_of(r))?;
        Ok(format::read_header(&file)?)
    }

    /// Reads entry `r` from disk for a background reader (reconcile, soft purges), without
    /// keeping it among the hot entries. `None` if it is gone, changed or unreadable.
    /// Blocking.
    pub fn load(&self, r: &EntryRef) -> Option<Arc<Entry>> {
        match self.read_meta(r) {
            Ok((meta, fixed)) if fixed.tag == r.file => Some(Arc::new(Entry::new(
                meta,
                *r,
                &self.inner.root,
                fixed.body_offset(),
            ))),
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

    /// The entry file of `r` (which may hold a newer version than `r`: check the tag).
    pub(super) fn path_of(&self, r: &EntryRef) -> PathBuf {
        entry_path(&self.inner.root, &r.name())
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
    pub fn remove_corrupt(&self, entry: &HitMeta, why: &dyn std::fmt::Display) {
        self.remove_corrupt_ref(&entry.r, why);
    }

    fn remove_corrupt_ref(&self, r: &EntryRef, why: &dyn std::fmt::Display) {
        Stats::incr(&self.inner.stats.corrupt_entries);
        tracing::warn!("removing corrupt cache entry {}: {why}", r.name());
        self.inner.hot.remove(&r.body_file());
        self.inner.metas.remove(r.id());
        if self.index().remove(r) {
            self.unlink_unheld(&[*r]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::store::tests::{fill, open};

    /// On tmpfs, a lookup of an entry whose decoded metadata is not kept (here: the first
    /// after a reopen) reads the header and a small body in one read on the worker, and leaves the
    /// checked body in the memory tier for the hit. A body that fails its checksum is never
    /// put there: the lookup still finds the entry (its header is sound), and the hit's
    /// checked path decides about it. A look that is not a client's use keeps nothing.
    #[tokio::test]
    async fn a_lookup_keeps_a_checked_small_body_and_never_a_corrupt_one() {
        // The read on the worker is for tmpfs only (see `read_entry_cached`).
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("SKIP: no /dev/shm on this machine");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let body = vec![5u8; 3000];
        {
            let (store, mut rx) = open(dir.path());
            fill(&store, &mut rx, &body).await;
        }
        let key = sample().key();
        let (store, _rx) = open(dir.path());
        let Lookup::Found(peeked) = store.peek(&key, &HeaderMap::new()).await else {
            panic!("not found by a peek")
        };
        assert!(store.hot().get(&peeked.meta.body_file).is_none());
        assert_eq!(store.index_memory().1, 0, "a peek keeps no decoded copy");
        let Lookup::Found(e) = store.lookup(&key, &HeaderMap::new()).await else {
            panic!("not found")
        };
        assert_eq!(store.hot().get(&e.meta.body_file).unwrap(), body);
        assert_eq!(store.index_memory().1, 1, "the decoded copy is kept");

        let path = e.path();
        let mut bytes = std::fs::read(&path).unwrap();
        let at = e.body_offset as usize + 100;
        bytes[at] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        drop((e, peeked, store, _rx));
        let (store, _rx) = open(dir.path());
        let Lookup::Found(e) = store.lookup(&key, &HeaderMap::new()).await else {
            panic!("the header is sound: found")
        };
        assert!(
            store.hot().get(&e.meta.body_file).is_none(),
            "a body that fails its checksum never reaches the memory tier"
        );
    }
}

#[cfg(test)]
pub(crate) mod hot_tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::store::{DiskLimits, StoreEvent};
    use tokio::sync::mpsc;

    pub(crate) fn open(
        dir: &std::path::Path,
        memory: usize,
    ) -> (Store, mpsc::UnboundedReceiver<StoreEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let store = Store::open(dir, 8, memory, DiskLimits::UNLIMITED, stats, tx).unwrap();
        (store, rx)
    }

    pub(crate) async fn fill_path(
        store: &Store,
        rx: &mut mpsc::UnboundedReceiver<StoreEvent>,
        path: &str,
        body: &[u8],
    ) -> Arc<Entry> {
        let mut meta = sample();
        meta.path = path.to_owned();
        let mut f = store.begin_fill(meta, u64::MAX, true, store.purge_epoch());
        f.push(&bytes::Bytes::copy_from_slice(body));
        f.finish();
        loop {
            match rx.recv().await.unwrap() {
                StoreEvent::Stored { entry, .. } => return entry,
                // A replaced version, an evicted one.
                StoreEvent::Removed(_) => {}
            }
        }
    }

    pub(crate) fn key(path: &str) -> CacheKey {
        CacheKey {
            host: "example.com".into(),
            path: path.into(),
        }
    }

    /// Many entries served by clients: the compact metadata kept stays within its share of
    /// `cache.memory_bytes`, counting at least the bytes of each entry's headers and path, and
    /// what does not fit is still served (read from disk).
    #[tokio::test]
    async fn hot_metadata_stays_within_its_byte_budget() {
        let dir = tempfile::tempdir().unwrap();
        let memory = 256 * 1024;
        let (store, mut rx) = open(dir.path(), memory);
        let budget = crate::cache::store::metas_budget(memory);
        let n = 300;
        for i in 0..n {
            fill_path(&store, &mut rx, &format!("/page/{i}"), b"body").await;
        }
        let mut hot = 0;
        // Every page, with a few popular ones asked for in between (a plain loop over more
        // pages than fit would keep nothing useful, by design of the policy).
        let order: Vec<usize> = (0..n).flat_map(|i| [i, i % 8]).collect();
        for round in 0..3 {
            for &i in &order {
                match store
                    .lookup_hot(&key(&format!("/page/{i}")), &HeaderMap::new())
                    .await
                {
                    HotLookup::Hot(m) => {
                        hot += 1;
                        let raw: usize = m
                            .head()
                            .1
                            .iter()
                            .map(|(n, v)| n.as_str().len() + v.len())
                            .sum();
                        assert!(m.bytes() > raw + m.path().as_os_str().len());
                    }
                    HotLookup::Full(Lookup::Found(_)) => {}
                    HotLookup::Full(_) => panic!("round {round}: /page/{i} not found"),
                }
                let (used, cap) = store.metas_usage();
                assert_eq!(cap, budget);
                assert!(used <= budget, "{used} > {budget}");
            }
        }
        let kept = store.index_memory().1;
        let (used, _) = store.metas_usage();
        assert!(kept > 10 && kept < n, "kept {kept} of {n}");
        assert!(used > budget / 2, "the budget is used: {used} of {budget}");
        assert!(hot > 0, "hot entries answer lookups");
        // No budget, nothing kept: every lookup reads the entry.
        drop((store, rx));
        let (store, _rx) = open(dir.path(), 0);
        for _ in 0..2 {
            assert!(matches!(
                store.lookup_hot(&key("/page/1"), &HeaderMap::new()).await,
                HotLookup::Full(Lookup::Found(_))
            ));
        }
        assert_eq!(store.metas_usage(), (0, 0));
    }
}
