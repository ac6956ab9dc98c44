//! The disk store: files under `cache_dir`, and the in-memory index of what they hold.
//!
//! Layout: `cache_dir/v1/<2 hex>/<2 hex>/<64 hex>.meta` and, beside it, the body
//! `<64 hex>.<16 hex>.body`. The meta file names its body; every fill writes a body under a
//! new name, so a reader that opened the previous body keeps reading consistent bytes while
//! a replacement is committed. Names come only from SHA-256 hashes and counters: nothing in
//! a request can choose a path.
//!
//! Writes are atomic: body and meta are written to temp files in the same directory, fsynced,
//! then renamed (body first, meta last: an entry exists once its meta does). At start-up the
//! directory is scanned: temp files and bodies no meta names are removed, metas that fail to
//! decode are removed and counted.
//!
//! The index maps each page to its variants and is the authority on what this node serves;
//! it lives behind a `std::sync::Mutex` because no code holds it across an `.await`.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderMap;
use tokio::sync::{mpsc, watch};

use super::entry::EntryMeta;
use super::hot::HotTier;
use super::key::{entry_name, CacheKey, Variant};
use crate::stats::Stats;

/// Top-level directory of the current layout inside `cache_dir`.
const LAYOUT_DIR: &str = "v1";
/// Bytes a fill may have queued for its writer before the tee waits for the disk: memory stays
/// bounded, and a client is slowed to the disk's speed (as nginx's temp-file writes do) only
/// while the disk is behind.
const MAX_INFLIGHT_BYTES: usize = 8 * 1024 * 1024;

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The cache directory could not be created or read.
    #[error("cache directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another caje process already uses this cache directory.
    #[error(
        "cache directory {0} is in use by another caje process (each node needs its own cache_dir)"
    )]
    Locked(PathBuf),
}

/// One stored response.
#[derive(Debug)]
pub struct Entry {
    /// Its metadata.
    pub meta: EntryMeta,
    /// 64-hex name (hash of page + variant).
    pub name: String,
    /// Directory holding the meta and body files.
    dir: PathBuf,
    /// The response head decoded once, so a hit does not rebuild it from bytes.
    head: (http::StatusCode, HeaderMap),
}

impl Entry {
    fn new(meta: EntryMeta, name: String, dir: PathBuf) -> Entry {
        let mut head = meta.response_head();
        // Prepared once for every hit: tags are for caje, `Via` names this hop.
        head.1.remove("surrogate-key");
        head.1.remove("surrogate-control");
        crate::headers::append_via(&mut head.1);
        Entry {
            meta,
            name,
            dir,
            head,
        }
    }

    /// The stored status and headers, as served.
    pub fn head(&self) -> &(http::StatusCode, HeaderMap) {
        &self.head
    }

    /// Path of the body file.
    pub fn body_path(&self) -> PathBuf {
        self.dir.join(&self.meta.body_file)
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join(format!("{}.meta", self.name))
    }
}

/// What the index holds for a request.
pub enum Lookup {
    /// A stored variant matches the request.
    Found(Arc<Entry>),
    /// The page is stored, but no variant matches the request's headers.
    VaryMiss,
    /// Nothing is stored for this page.
    Miss,
}

/// How a fill is getting on, for requests coalesced onto it (they stream the body from the
/// file being written).
#[derive(Debug, Clone)]
pub enum FillProgress {
    /// The writer has not created its file yet.
    Starting,
    /// `written` bytes of the body are in the temp file at `path`.
    Writing {
        /// The temp file.
        path: Arc<PathBuf>,
        /// Bytes written so far.
        written: u64,
    },
    /// The entry is committed; its body is complete at `entry.body_path()`.
    Committed(Arc<Entry>),
    /// The fill was abandoned or failed; the body will not be completed.
    Failed,
}

/// What happened in the store, for the manifest.
#[derive(Debug)]
pub enum StoreEvent {
    /// A new or replaced entry is committed. `announce`: record it in the manifest (false for
    /// copies fetched because the manifest already lists them, and for local-only changes).
    Stored {
        /// The committed entry.
        entry: Arc<Entry>,
        /// Whether the manifest should learn about it.
        announce: bool,
    },
    /// An entry was removed locally (evicted as an old variant, or purged).
    Removed(Arc<Entry>),
}

#[derive(Default)]
struct Index {
    pages: HashMap<CacheKey, Vec<Arc<Entry>>>,
    entries: u64,
    bytes: u64,
}

impl Index {
    /// Inserts or replaces the entry with the same name. When the page then has more than
    /// `max_variants` variants, the oldest are evicted. Returns the replaced and evicted
    /// entries, whose files the caller removes.
    fn insert(&mut self, entry: Arc<Entry>, max_variants: usize) -> Vec<Arc<Entry>> {
        let variants = self.pages.entry(entry.meta.key()).or_default();
        self.entries += 1;
        self.bytes += entry.meta.body_len;
        let mut gone = Vec::new();
        match variants.iter().position(|e| e.name == entry.name) {
            Some(i) => gone.push(std::mem::replace(&mut variants[i], entry)),
            None => variants.push(entry),
        }
        while variants.len() > max_variants.max(1) {
            let oldest = variants
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.meta.stored_at)
                .map_or(0, |(i, _)| i);
            gone.push(variants.remove(oldest));
        }
        for old in &gone {
            self.entries -= 1;
            self.bytes -= old.meta.body_len;
        }
        gone
    }

    /// Swaps `old` for `new` (same page and name) if `old` is still current.
    fn replace(&mut self, old: &Arc<Entry>, new: Arc<Entry>) -> bool {
        let Some(variants) = self.pages.get_mut(&old.meta.key()) else {
            return false;
        };
        let Some(slot) = variants.iter_mut().find(|e| Arc::ptr_eq(e, old)) else {
            return false;
        };
        self.bytes = self.bytes - old.meta.body_len + new.meta.body_len;
        *slot = new;
        true
    }

    /// Removes exactly this entry (not a newer one with the same name).
    fn remove(&mut self, entry: &Arc<Entry>) -> bool {
        let key = entry.meta.key();
        let Some(variants) = self.pages.get_mut(&key) else {
            return false;
        };
        let Some(i) = variants.iter().position(|e| Arc::ptr_eq(e, entry)) else {
            return false;
        };
        variants.swap_remove(i);
        if variants.is_empty() {
            self.pages.remove(&key);
        }
        self.entries -= 1;
        self.bytes -= entry.meta.body_len;
        true
    }

    /// Removes every variant of a page.
    fn remove_page(&mut self, key: &CacheKey) -> Vec<Arc<Entry>> {
        let removed = self.pages.remove(key).unwrap_or_default();
        for e in &removed {
            self.entries -= 1;
            self.bytes -= e.meta.body_len;
        }
        removed
    }
}

struct Inner {
    root: PathBuf,
    index: Mutex<Index>,
    /// Serialises the rename + index update of commits, so the index and the meta files on
    /// disk agree on which fill of a name won.
    commit: Mutex<()>,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<StoreEvent>,
    /// Most variants kept per page (`cache.max_variants`).
    max_variants: usize,
    /// Small bodies served recently, in memory.
    hot: HotTier,
    /// Makes body and temp file names unique within this process.
    counter: AtomicU64,
    /// Keeps the exclusive lock on `cache_dir/.lock` for the life of the store.
    _lock: nix::fcntl::Flock<File>,
}

/// Handle to the disk store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the store in `dir`, takes its lock and scans it.
    /// Blocking: call at start-up or from `spawn_blocking`.
    pub fn open(
        dir: &Path,
        max_variants: usize,
        memory_bytes: usize,
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> Result<Store, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let root = dir.join(LAYOUT_DIR);
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let lock_path = dir.join(".lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StoreError::Locked(dir.to_owned()))?;
        let inner = Arc::new(Inner {
            root,
            index: Mutex::new(Index::default()),
            commit: Mutex::new(()),
            max_variants,
            hot: HotTier::new(memory_bytes),
            stats,
            events,
            counter: AtomicU64::new(0),
            _lock: lock,
        });
        let store = Store { inner };
        store.scan()?;
        Ok(store)
    }

    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        // A panic while holding the lock cannot leave the index half-updated in a way that
        // matters more than losing the whole cache would, so keep serving.
        self.inner.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The memory tier of small bodies.
    pub fn hot(&self) -> &HotTier {
        &self.inner.hot
    }

    /// Number of entries and their body bytes.
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.entries, idx.bytes)
    }

    /// Finds the entry that may answer a request for `key` with these headers.
    pub fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        let idx = self.index();
        match idx.pages.get(key) {
            None => Lookup::Miss,
            Some(variants) => variants
                .iter()
                .find(|e| e.meta.variant.matches(headers))
                .map_or(Lookup::VaryMiss, |e| Lookup::Found(e.clone())),
        }
    }

    /// Whether `entry` is still the one the index serves (not replaced or removed).
    pub fn is_current(&self, entry: &Arc<Entry>) -> bool {
        let idx = self.index();
        idx.pages
            .get(&entry.meta.key())
            .is_some_and(|v| v.iter().any(|e| Arc::ptr_eq(e, entry)))
    }

    /// Whether this node holds the given page variant.
    pub fn holds(&self, key: &CacheKey, variant: &Variant) -> bool {
        let idx = self.index();
        idx.pages
            .get(key)
            .is_some_and(|v| v.iter().any(|e| &e.meta.variant == variant))
    }

    /// Removes an entry found corrupt, and counts it. Blocking (unlinks files).
    pub fn remove_corrupt(&self, entry: &Arc<Entry>, why: &dyn std::fmt::Display) {
        Stats::incr(&self.inner.stats.corrupt_entries);
        tracing::warn!(
            host = %entry.meta.host,
            path = %entry.meta.path,
            "removing corrupt cache entry {}: {why}",
            entry.name
        );
        self.inner.hot.remove(&entry.meta.body_file);
        if self.index().remove(entry) {
            let _ = fs::remove_file(entry.meta_path());
            let _ = fs::remove_file(entry.body_path());
        }
    }

    /// Removes every entry; returns (entries, bytes) removed. Blocking.
    pub fn clear(&self) -> (u64, u64) {
        let removed: Vec<Arc<Entry>> = {
            let mut idx = self.index();
            let all = std::mem::take(&mut idx.pages);
            idx.entries = 0;
            idx.bytes = 0;
            all.into_values().flatten().collect()
        };
        self.inner.hot.clear();
        let bytes = removed.iter().map(|e| e.meta.body_len).sum();
        for e in &removed {
            let _ = fs::remove_file(e.meta_path());
            let _ = fs::remove_file(e.body_path());
        }
        (removed.len() as u64, bytes)
    }

    /// Every entry, for listings.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.index().pages.values().flatten().cloned().collect()
    }

    /// Starts writing a response into the cache. `meta` is complete except for the body
    /// fields, which the writer fills in. The returned [`Fill`] receives the body as it
    /// streams; nothing is visible to readers until [`Fill::finish`] is called and the write
    /// is committed.
    pub fn begin_fill(&self, meta: EntryMeta, max_bytes: u64, announce: bool) -> Fill {
        let (tx, rx) = mpsc::unbounded_channel();
        let inflight = Arc::new(Inflight::default());
        let store = self.clone();
        let writer_inflight = inflight.clone();
        let (progress, progress_rx) = watch::channel(FillProgress::Starting);
        let progress = Arc::new(progress);
        let writer_progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let committed =
                store.write_entry(meta, rx, &writer_inflight, &writer_progress, announce);
            advance(
                &writer_progress,
                committed.map_or(FillProgress::Failed, FillProgress::Committed),
            );
        });
        Fill {
            progress: progress_rx,
            progress_tx: progress,
            tx: Some(tx),
            inflight,
            bytes: 0,
            max_bytes,
            stats: self.inner.stats.clone(),
        }
    }

    fn unique(&self) -> u64 {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        // Mix in the pid and time so names stay unique across restarts too.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 48) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    fn shard_dir(&self, name: &str) -> PathBuf {
        self.inner.root.join(&name[0..2]).join(&name[2..4])
    }

    /// The writer: runs on a blocking thread, receives the body, commits the entry.
    fn write_entry(
        &self,
        mut meta: EntryMeta,
        mut rx: mpsc::UnboundedReceiver<FillMsg>,
        inflight: &Inflight,
        progress: &watch::Sender<FillProgress>,
        announce: bool,
    ) -> Option<Arc<Entry>> {
        let name = entry_name(&meta.key(), &meta.variant);
        let dir = self.shard_dir(&name);
        let tmp_body = dir.join(format!(".{name}.{:016x}.tmp", self.unique()));
        let result = (|| -> io::Result<Option<(u64, u32)>> {
            fs::create_dir_all(&dir)?;
            let mut file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_body)?;
            let path = Arc::new(tmp_body.clone());
            advance(
                progress,
                FillProgress::Writing {
                    path: path.clone(),
                    written: 0,
                },
            );
            let mut crc = crc32fast::Hasher::new();
            let mut len = 0u64;
            loop {
                match rx.blocking_recv() {
                    Some(FillMsg::Chunk(data)) => {
                        inflight.written(data.len());
                        file.write_all(&data)?;
                        crc.update(&data);
                        len += data.len() as u64;
                        advance(
                            progress,
                            FillProgress::Writing {
                                path: path.clone(),
                                written: len,
                            },
                        );
                    }
                    Some(FillMsg::Finish) => break,
                    // The fill was dropped or abandoned: the body is incomplete.
                    None => return Ok(None),
                }
            }
            file.sync_all()?;
            Ok(Some((len, crc.finalize())))
        })();
        let (len, crc) = match result {
            Ok(Some(done)) => done,
            Ok(None) => {
                let _ = fs::remove_file(&tmp_body);
                return None;
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp_body);
                self.inner.stats.store_failed("writing body", &e);
                return None;
            }
        };
        meta.body_file = format!("{name}.{:016x}.body", self.unique());
        meta.body_len = len;
        meta.body_crc32 = crc;
        match self.commit(&dir, &name, &tmp_body, meta, announce) {
            Ok(entry) => Some(entry),
            Err(e) => {
                let _ = fs::remove_file(&tmp_body);
                self.inner.stats.store_failed("committing entry", &e);
                None
            }
        }
    }

    fn commit(
        &self,
        dir: &Path,
        name: &str,
        tmp_body: &Path,
        meta: EntryMeta,
        announce: bool,
    ) -> io::Result<Arc<Entry>> {
        let tmp_meta = self.write_temp_meta(dir, name, &meta)?;
        let entry = Arc::new(Entry::new(meta, name.to_owned(), dir.to_owned()));
        let evicted = {
            let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            fs::rename(tmp_body, entry.body_path())?;
            if let Err(e) = fs::rename(&tmp_meta, entry.meta_path()) {
                let _ = fs::remove_file(entry.body_path());
                let _ = fs::remove_file(&tmp_meta);
                return Err(e);
            }
            self.index().insert(entry.clone(), self.inner.max_variants)
        };
        // Make the renames durable; a failure here only risks losing the entry in a crash.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        for old in evicted {
            self.inner.hot.remove(&old.meta.body_file);
            if old.name != entry.name {
                let _ = fs::remove_file(old.meta_path());
            }
            if old.meta.body_file != entry.meta.body_file {
                let _ = fs::remove_file(old.body_path());
            }
            if old.name != entry.name {
                let _ = self.inner.events.send(StoreEvent::Removed(old));
            }
        }
        Stats::incr(&self.inner.stats.stored);
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: entry.clone(),
            announce,
        });
        Ok(entry)
    }

    /// Writes `meta` to a new fsynced temp file in `dir`, ready to be renamed into place.
    fn write_temp_meta(&self, dir: &Path, name: &str, meta: &EntryMeta) -> io::Result<PathBuf> {
        let encoded = meta.encode().map_err(io::Error::other)?;
        let tmp_meta = dir.join(format!(".{name}.{:016x}.tmp", self.unique()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_meta)?;
            f.write_all(&encoded)?;
            f.sync_all()
        })();
        match written {
            Ok(()) => Ok(tmp_meta),
            Err(e) => {
                let _ = fs::remove_file(&tmp_meta);
                Err(e)
            }
        }
    }

    /// Replaces the metadata of an entry whose body stays the same (after a 304, or a soft
    /// purge), atomically. Returns the new entry; `None` if the entry is no longer current.
    /// Blocking.
    pub fn update_meta(
        &self,
        entry: &Arc<Entry>,
        meta: EntryMeta,
        announce: bool,
    ) -> io::Result<Option<Arc<Entry>>> {
        let tmp_meta = self.write_temp_meta(&entry.dir, &entry.name, &meta)?;
        let updated = Arc::new(Entry::new(meta, entry.name.clone(), entry.dir.clone()));
        {
            let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            let mut idx = self.index();
            if !idx.replace(entry, updated.clone()) {
                drop(idx);
                let _ = fs::remove_file(&tmp_meta);
                return Ok(None);
            }
            drop(idx);
            if let Err(e) = fs::rename(&tmp_meta, updated.meta_path()) {
                let _ = fs::remove_file(&tmp_meta);
                // Put the old entry back: its meta file is still the one on disk.
                self.index().replace(&updated, entry.clone());
                return Err(e);
            }
        }
        if let Ok(d) = File::open(&entry.dir) {
            let _ = d.sync_all();
        }
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: updated.clone(),
            announce,
        });
        Ok(Some(updated))
    }

    /// Removes every variant of a page; returns the removed entries. Blocking.
    pub fn remove_page(&self, key: &CacheKey) -> Vec<Arc<Entry>> {
        let removed = self.index().remove_page(key);
        self.forget(&removed);
        removed
    }

    /// Removes every entry carrying `tag`; returns them. Blocking.
    pub fn remove_tag(&self, tag: &str) -> Vec<Arc<Entry>> {
        let tagged: Vec<Arc<Entry>> = self
            .index()
            .pages
            .values()
            .flatten()
            .filter(|e| e.meta.tags.iter().any(|t| t == tag))
            .cloned()
            .collect();
        let removed: Vec<Arc<Entry>> = {
            let mut idx = self.index();
            tagged.into_iter().filter(|e| idx.remove(e)).collect()
        };
        self.forget(&removed);
        removed
    }

    /// Soft purge: marks every variant of a page, or every entry carrying `tag`, as
    /// invalidated (stale until refreshed; still usable for revalidation). Returns how many
    /// were marked. Blocking.
    pub fn invalidate(&self, key: Option<&CacheKey>, tag: Option<&str>) -> usize {
        let targets: Vec<Arc<Entry>> = {
            let idx = self.index();
            match (key, tag) {
                (Some(k), _) => idx.pages.get(k).cloned().unwrap_or_default(),
                (None, Some(t)) => idx
                    .pages
                    .values()
                    .flatten()
                    .filter(|e| e.meta.tags.iter().any(|x| x == t))
                    .cloned()
                    .collect(),
                (None, None) => idx.pages.values().flatten().cloned().collect(),
            }
        };
        let mut marked = 0;
        for e in targets.iter().filter(|e| !e.meta.invalidated) {
            let mut meta = e.meta.clone();
            meta.invalidated = true;
            match self.update_meta(e, meta, false) {
                Ok(Some(_)) => marked += 1,
                Ok(None) => {}
                Err(err) => self
                    .inner
                    .stats
                    .store_failed("marking an entry stale", &err),
            }
        }
        marked + targets.iter().filter(|e| e.meta.invalidated).count()
    }

    /// Applies a purge recorded by another node: entries stored at or before `before` (unix
    /// seconds) that match are removed, or marked stale when `soft`. `key`/`tag` `None` for
    /// both means every entry. Returns how many were affected. Blocking.
    pub fn apply_purge(
        &self,
        key: Option<&CacheKey>,
        tag: Option<&str>,
        soft: bool,
        before: u64,
    ) -> usize {
        let targets: Vec<Arc<Entry>> = {
            let idx = self.index();
            let candidates: Vec<&Arc<Entry>> = match (key, tag) {
                (Some(k), _) => idx
                    .pages
                    .get(k)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                (None, Some(t)) => idx
                    .pages
                    .values()
                    .flatten()
                    .filter(|e| e.meta.tags.iter().any(|x| x == t))
                    .collect(),
                (None, None) => idx.pages.values().flatten().collect(),
            };
            candidates
                .into_iter()
                .filter(|e| e.meta.stored_at <= before)
                .cloned()
                .collect()
        };
        if soft {
            let mut marked = 0;
            for e in targets.iter().filter(|e| !e.meta.invalidated) {
                let mut meta = e.meta.clone();
                meta.invalidated = true;
                if let Ok(Some(_)) = self.update_meta(e, meta, false) {
                    marked += 1;
                }
            }
            return marked;
        }
        let removed: Vec<Arc<Entry>> = {
            let mut idx = self.index();
            targets.into_iter().filter(|e| idx.remove(e)).collect()
        };
        self.forget(&removed);
        removed.len()
    }

    /// Unlinks the files of entries already taken out of the index.
    fn forget(&self, removed: &[Arc<Entry>]) {
        for e in removed {
            self.inner.hot.remove(&e.meta.body_file);
            let _ = fs::remove_file(e.meta_path());
            let _ = fs::remove_file(e.body_path());
        }
        for e in removed {
            let _ = self.inner.events.send(StoreEvent::Removed(e.clone()));
        }
    }

    /// Rebuilds the index from disk, removing leftovers of interrupted writes.
    fn scan(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut loaded = 0u64;
        let root = self.inner.root.clone();
        let read_dir = |p: &Path| {
            fs::read_dir(p).map_err(|source| StoreError::Io {
                path: p.to_owned(),
                source,
            })
        };
        for l1 in read_dir(&root)? {
            let Ok(l1) = l1 else { continue };
            if !l1.path().is_dir() {
                continue;
            }
            for l2 in read_dir(&l1.path())? {
                let Ok(l2) = l2 else { continue };
                let dir = l2.path();
                if !dir.is_dir() {
                    continue;
                }
                loaded += self.scan_shard(&dir);
                if loaded > 0 && loaded % 10_000 == 0 {
                    tracing::info!(entries = loaded, "loading cache index");
                }
            }
        }
        let (entries, bytes) = self.usage();
        tracing::info!(
            entries,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %root.display(),
            "cache index loaded"
        );
        Ok(())
    }

    /// Loads one shard directory; returns the number of entries loaded.
    fn scan_shard(&self, dir: &Path) -> u64 {
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        let mut bodies = Vec::new();
        let mut referenced = HashSet::new();
        let mut loaded = 0;
        for f in rd.flatten() {
            let path = f.path();
            let file_name = f.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            } else if file_name.ends_with(".body") {
                bodies.push((file_name, path));
            } else if let Some(name) = file_name.strip_suffix(".meta") {
                match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| EntryMeta::decode(&b).map_err(|e| e.to_string()))
                {
                    Ok(meta) if entry_name(&meta.key(), &meta.variant) == name => {
                        referenced.insert(meta.body_file.clone());
                        self.index().insert(
                            Arc::new(Entry::new(meta, name.to_owned(), dir.to_owned())),
                            usize::MAX,
                        );
                        loaded += 1;
                    }
                    Ok(_) => {
                        Stats::incr(&self.inner.stats.corrupt_entries);
                        tracing::warn!("removing {}: name does not match its key", path.display());
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        Stats::incr(&self.inner.stats.corrupt_entries);
                        tracing::warn!("removing undecodable {}: {e}", path.display());
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        for (file_name, path) in bodies {
            if !referenced.contains(&file_name) {
                let _ = fs::remove_file(&path);
            }
        }
        // Metas whose body is missing are dropped when a hit fails to open the body.
        loaded
    }
}

/// Bytes handed to a fill's writer and not yet written, with the tee's waker for when the
/// writer catches up.
#[derive(Default)]
struct Inflight {
    bytes: AtomicUsize,
    waker: Mutex<Option<std::task::Waker>>,
    /// Set when the whole body has been handed to the writer (before it is written).
    finished: Arc<std::sync::atomic::AtomicBool>,
}

impl Inflight {
    /// The writer wrote `n` bytes; wakes the tee once the backlog is small again.
    fn written(&self, n: usize) {
        let left = self.bytes.fetch_sub(n, Ordering::AcqRel) - n;
        if left <= MAX_INFLIGHT_BYTES / 2 {
            if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        }
    }
}

/// Moves a fill's progress forward; `Failed` is final.
fn advance(progress: &watch::Sender<FillProgress>, next: FillProgress) {
    progress.send_if_modified(|p| {
        if matches!(p, FillProgress::Failed) {
            return false;
        }
        *p = next;
        true
    });
}

impl Drop for Fill {
    fn drop(&mut self) {
        if self.tx.is_some() {
            // Dropped before `finish`: the body will never be complete.
            advance(&self.progress_tx, FillProgress::Failed);
        }
        // A tee waiting on this fill must not wait forever once it is gone.
        if let Some(w) = self
            .inflight
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            w.wake();
        }
    }
}

enum FillMsg {
    Chunk(Bytes),
    Finish,
}

/// The sending side of a cache fill: the tee feeds it the body as the client receives it.
///
/// Dropping a `Fill` without calling [`Fill::finish`] discards the partial entry, which is
/// what happens when the origin body fails or the client goes away.
pub struct Fill {
    progress: watch::Receiver<FillProgress>,
    /// Shared with the writer, so dropping an unfinished fill marks it failed at once (the
    /// writer notices only when it next reads its channel).
    progress_tx: Arc<watch::Sender<FillProgress>>,
    tx: Option<mpsc::UnboundedSender<FillMsg>>,
    inflight: Arc<Inflight>,
    bytes: u64,
    max_bytes: u64,
    stats: Arc<Stats>,
}

impl Fill {
    /// Queues a chunk for the writer. Never blocks (the tee waits on [`Fill::poll_ready`]
    /// first); abandons the fill when the object grows beyond `max_bytes` or the writer failed.
    pub fn push(&mut self, data: &Bytes) {
        let Some(tx) = &self.tx else { return };
        self.bytes += data.len() as u64;
        if self.bytes > self.max_bytes {
            Stats::incr(&self.stats.not_stored);
            self.abandon();
            return;
        }
        self.inflight.bytes.fetch_add(data.len(), Ordering::Relaxed);
        if tx.send(FillMsg::Chunk(data.clone())).is_err() {
            // The writer failed (and counted it); stop feeding it.
            self.abandon();
        }
    }

    /// Whether the writer can take more: `Pending` (with `cx` woken later) while more than
    /// `MAX_INFLIGHT_BYTES` (8 MiB) wait to be written. Always ready once the fill is abandoned.
    pub fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        if self.tx.is_none() || self.inflight.bytes.load(Ordering::Acquire) <= MAX_INFLIGHT_BYTES {
            return std::task::Poll::Ready(());
        }
        *self
            .inflight
            .waker
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // Re-check after registering, so a wake between the load and the store is not lost.
        if self.inflight.bytes.load(Ordering::Acquire) <= MAX_INFLIGHT_BYTES {
            return std::task::Poll::Ready(());
        }
        std::task::Poll::Pending
    }

    /// Follows the writer's progress (for coalesced requests).
    pub fn progress(&self) -> watch::Receiver<FillProgress> {
        self.progress.clone()
    }

    /// Whether the fill is still going to be stored.
    pub fn is_active(&self) -> bool {
        self.tx.is_some()
    }

    /// Marks the body complete; the writer commits the entry.
    pub fn finish(mut self) {
        if let Some(tx) = self.tx.take() {
            if tx.send(FillMsg::Finish).is_ok() {
                self.inflight.finished.store(true, Ordering::Release);
            }
        }
    }

    /// A flag that becomes true once the whole body has been handed to the writer: from then
    /// on the entry is only waiting for its commit (for requests that arrive just after a
    /// client received the last byte).
    pub fn finished_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.inflight.finished.clone()
    }

    /// Gives up on storing this response.
    pub fn abandon(&mut self) {
        if self.tx.take().is_some() {
            advance(&self.progress_tx, FillProgress::Failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;

    fn open(dir: &Path) -> (Store, mpsc::UnboundedReceiver<StoreEvent>) {
        // A writer thread of the previous store may still hold its handle (and so the
        // directory lock) for a moment after its last event.
        for _ in 0..100 {
            let (tx, rx) = mpsc::unbounded_channel();
            match Store::open(dir, 8, 1 << 20, Arc::new(Stats::default()), tx) {
                Ok(store) => return (store, rx),
                Err(StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("cache dir still locked after 1 s");
    }

    async fn fill(store: &Store, rx: &mut mpsc::UnboundedReceiver<StoreEvent>, body: &[u8]) {
        let mut f = store.begin_fill(sample(), u64::MAX, true);
        f.push(&Bytes::copy_from_slice(body));
        f.finish();
        match rx.recv().await.unwrap() {
            StoreEvent::Stored { entry, .. } => {
                assert_eq!(entry.meta.body_len, body.len() as u64)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn fill_commit_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, mut rx) = open(dir.path());
            fill(&store, &mut rx, b"hello").await;
            fill(&store, &mut rx, b"hello again").await;
            assert_eq!(store.usage(), (1, 11));
        }
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage(), (1, 11));
        let e = store.entries().pop().unwrap();
        assert_eq!(fs::read(e.body_path()).unwrap(), b"hello again");
        // The replaced body was removed: one meta and one body remain.
        let mut files = 0;
        for l1 in fs::read_dir(dir.path().join(LAYOUT_DIR)).unwrap() {
            for l2 in fs::read_dir(l1.unwrap().path()).unwrap() {
                files += fs::read_dir(l2.unwrap().path()).unwrap().count();
            }
        }
        assert_eq!(files, 2);
    }

    #[tokio::test]
    async fn dropped_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        let mut f = store.begin_fill(sample(), u64::MAX, true);
        f.push(&Bytes::from_static(b"partial"));
        drop(f);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(store.usage(), (0, 0));
        drop(store);
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage(), (0, 0));
    }

    #[tokio::test]
    async fn second_process_cannot_share_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _rx) = open(dir.path());
        let (tx, _rx2) = mpsc::unbounded_channel();
        let err = Store::open(dir.path(), 8, 1 << 20, Arc::new(Stats::default()), tx)
            .err()
            .unwrap();
        assert!(matches!(err, StoreError::Locked(_)));
    }

    #[tokio::test]
    async fn corrupt_meta_is_removed_at_scan() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        {
            let (store, mut rx) = open(dir.path());
            fill(&store, &mut rx, b"x").await;
            let e = store.entries().pop().unwrap();
            let mut bytes = fs::read(e.meta_path()).unwrap();
            bytes[10] ^= 1;
            fs::write(e.meta_path(), bytes).unwrap();
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        let store = Store::open(dir.path(), 8, 1 << 20, stats.clone(), tx).unwrap();
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(Stats::get(&stats.corrupt_entries), 1);
    }
}
