//! The disk store: files under `cache_dir`, and the in-memory index of what they hold.
//!
//! Layout: `cache_dir/v2/<2 hex>/<2 hex>/<64 hex>.entry`, one file per entry: a header (the
//! metadata, versioned and checksummed) followed by the body ([`format`]). Names come only
//! from SHA-256 hashes and counters: nothing in a request can choose a path.
//!
//! Entry files are immutable once in place. Every write (a fill, and a metadata-only update,
//! which copies the body) goes to a temp file in the same directory that is then renamed
//! over the entry's name, so a reader that opened the previous version keeps reading
//! consistent bytes through its descriptor. Which version a reader opened it tells by the tag
//! in the header ([`format::tag_of`]). Nothing is fsynced: the header's checksum and the
//! body's length and CRC reject what a crash tore, and a lost entry is a miss. At start-up
//! the index is read from its snapshot (`cache_dir/index.snapshot`, one file, written at a
//! clean shutdown, periodically, and by a process handing the directory over in a graceful
//! upgrade) and the directory is checked against it in the background while requests are
//! served; without a usable snapshot the directory is scanned
//! (headers only) before serving. Either way temp files are removed, and entries that fail
//! to decode are removed and counted. A `v1` directory (the two-file layout of earlier
//! versions) is dropped whole at start.
//!
//! The index is the authority on what this node serves. It keeps about a hundred bytes per
//! entry (the name, the body file, sizes, the eviction state, interned `Vary` names): an
//! entry's metadata (its RFC 9111 policy, head, host, path and tags) is read from disk when a
//! request finds it ([`Store::read_meta`]), or taken from the decoded copies kept for hot
//! entries. It lives behind a `std::sync::Mutex` because no code holds it across an `.await`.
//!
//! # Files
//! One reason to change each:
//! - `mod.rs`: the [`Store`] handle, opening and locking `cache_dir`, [`Entry`],
//!   [`EntryRef`], [`Lookup`], [`StoreError`] and the [`StoreEvent`]s the manifest follows;
//! - `format.rs`: the entry file's layout: writing one, reading its header, reading its body;
//! - `index.rs`: the in-memory index (a slab of compact records, tables of slab indices by
//!   name and by page, the eviction policy) and the operations on it;
//! - `slab.rs`: the index's records, in fixed-size chunks that never move;
//! - `cap.rs`: the disk cap's limits, block arithmetic, and the page versions it evicted;
//! - `interned.rs`: what the index keeps of `Vary` names and tags, shared between entries;
//! - `lookup.rs`: lookups, and reading an entry's metadata from disk for them;
//! - `metas.rs`: the compact metadata of hot entries ([`HitMeta`]), bounded in bytes;
//! - `fill.rs`: [`Fill`], which queues a body as it streams and writes it in batches on the
//!   blocking pool;
//! - `files.rs`: unique names, shard directories, a fill's commit (the rename into place and
//!   the index update), metadata-only updates, and unlinking the files of entries that left
//!   the index;
//! - `verify.rs`: the start-up scan and the removal of entries found corrupt;
//! - `snapshot.rs`: the index snapshot: its format, writing it, loading it;
//! - `index_snap.rs` (a child of `index.rs`): the index's side of the snapshot;
//! - `check.rs`: the background check of the directory after a start from a snapshot;
//! - `startup.rs`: building the index at open (snapshot or scan, ordinary start or
//!   hand-over), and the start-up state the admin API reports;
//! - `purge.rs`: purges (by page or tag, hard or soft, local or replicated) and clearing, and
//!   the log of recent purges that fills still being written are checked against;
//! - `evictor.rs`: the thread that unlinks evicted entries' files.
//!
//! Serving a hit (reading and checking a body against its header, length and CRC) is in
//! [`crate::file_body`], which calls back into [`Store::remove_corrupt`].

mod cap;
mod check;
mod evictor;
mod files;
mod fill;
pub mod format;
mod index;
mod interned;
pub(crate) mod lookup;
mod metas;
mod purge;
mod slab;
mod snapshot;
mod startup;
mod verify;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use tokio::sync::mpsc;

use super::entry::EntryMeta;
use super::hot::HotTier;
use super::key::{hex_name, Digest};
use crate::stats::Stats;
use index::Index;

pub use fill::{Fill, FillProgress};
pub use index::{DiskLimits, BLOCK};
pub use lookup::{FastLookup, HotLookup};
pub(crate) use metas::FdBudget;
pub use metas::{metas_budget, HitMeta, Stamp};
pub use startup::{CheckProgress, IndexSource, StartReport};

/// Top-level directory of the current layout inside `cache_dir`.
const LAYOUT_DIR: &str = "v2";
/// The directory of the two-file layout (`.meta` + `.body`) of earlier versions.
const OLD_LAYOUT_DIR: &str = "v1";

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

/// One stored response, with its metadata read from disk ([`Store::read_meta`]).
#[derive(Debug)]
pub struct Entry {
    /// Its metadata.
    pub meta: EntryMeta,
    /// 64-hex name (hash of page + variant).
    pub name: String,
    /// What the index knows of it (its generation tells whether it is still current).
    r: EntryRef,
    /// Where the body starts in the entry file (the header's length).
    pub(crate) body_offset: u64,
    /// What a hit needs of it (the head as served, the body's place and checksum), shared
    /// with the hot metadata kept for later hits.
    pub hit: Arc<HitMeta>,
}

/// What the index keeps of one entry: enough to find its files and to tell whether an
/// [`Entry`] read from disk is still the one served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryRef {
    name: Digest,
    /// The stored version's tag ([`format::version_name`]), unique per fill; the entry
    /// file's header carries it.
    file: u64,
    body_len: u64,
    /// Changes whenever the entry's metadata does.
    gen: u32,
    invalidated: bool,
}

impl EntryRef {
    /// The entry's key in the eviction policy: its name's first 128 bits.
    pub fn id(&self) -> u128 {
        index::id_of(&self.name)
    }

    /// The 64-hex name.
    pub fn name(&self) -> String {
        hex_name(&self.name)
    }

    /// The body's length.
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Whether a soft purge marked it stale.
    pub fn invalidated(&self) -> bool {
        self.invalidated
    }

    /// The stored version's name, `<name>.<tag>` (the memory tier's key, and
    /// `EntryMeta::body_file`).
    fn body_file(&self) -> String {
        format::version_name(&self.name(), self.file)
    }
}

/// The entry file of entry `name` under the layout root.
fn entry_path(root: &Path, name: &str) -> PathBuf {
    shard_dir(root, name).join(format!("{name}.entry"))
}

impl Entry {
    fn new(meta: EntryMeta, r: EntryRef, root: &Path, body_offset: u64) -> Entry {
        let mut head = meta.response_head();
        // Prepared once for every hit: tags are for caje, `Via` names this hop.
        head.1.remove("surrogate-key");
        head.1.remove("surrogate-control");
        crate::headers::append_via(&mut head.1);
        let name = r.name();
        let hit = HitMeta::new(
            r,
            entry_path(root, &name),
            body_offset,
            meta.body_crc32,
            &meta.body_file,
            head,
            crate::cache::policy::Lifetime::of(&meta.policy),
        );
        Entry {
            meta,
            name,
            r,
            body_offset,
            hit: Arc::new(hit),
        }
    }

    /// The stored status and headers, as served.
    pub fn head(&self) -> (http::StatusCode, HeaderMap) {
        self.hit.head()
    }

    /// Path of the entry file (header and body). The file there may be a newer version
    /// than this entry (a replacement renamed over it): check the tag after opening it.
    pub fn path(&self) -> PathBuf {
        self.hit.path().to_owned()
    }

    /// The tag of this stored version, as the entry file's header carries it.
    pub fn tag(&self) -> u64 {
        self.r.file
    }
}

/// The directory of the files of entry `name` under the layout root.
fn shard_dir(root: &Path, name: &str) -> PathBuf {
    root.join(&name[0..2]).join(&name[2..4])
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
    /// An entry was removed locally (evicted as an old variant or to stay within the disk
    /// cap, or purged).
    Removed(EntryRef),
}

struct Inner {
    root: PathBuf,
    index: Mutex<Index>,
    /// Serialises the rename + index update of commits, so the index and the meta files on
    /// disk agree on which fill of a name won. Also guards the purge log: a commit checks it
    /// and updates the index in one critical section, and a purge is logged in one.
    commit: Mutex<purge::PurgeLog>,
    stats: Arc<Stats>,
    events: mpsc::UnboundedSender<StoreEvent>,
    /// Most variants kept per page (`cache.max_variants`).
    max_variants: usize,
    /// Small bodies served recently, in memory.
    hot: HotTier,
    /// Compact metadata of entries served recently, so a fresh hit on them reads nothing but
    /// the body.
    metas: metas::Metas,
    /// Bounds the entry files kept open for hot entries ([`HitMeta::kept_file`]).
    fds: Arc<FdBudget>,
    /// Hands evicted entries to the thread that unlinks their files.
    evictor: evictor::Evictor,
    /// Makes body and temp file names unique within this process.
    counter: AtomicU64,
    /// The shard directories known to exist (a fill creates a missing one first).
    dirs: files::ShardDirs,
    /// Fills whose whole body was handed to the writer and that are not committed (or failed)
    /// yet: a client may already have its whole response.
    finishing: Arc<AtomicU64>,
    /// `StoreEvent::Stored` events sent, and those the listener has fully handled (announced
    /// in the manifest): together they give `/_caje/list` read-your-writes.
    stored_events: AtomicU64,
    recorded_events: AtomicU64,
    /// The exclusive lock on `cache_dir/.lock`, held while this process owns the directory.
    /// A graceful upgrade releases it to the new process while this one drains.
    lock: Mutex<Option<nix::fcntl::Flock<File>>>,
    /// Path of the lock file.
    lock_path: PathBuf,
    /// The cache directory is on a memory file system (tmpfs): its reads never wait for a
    /// disk, so small hits may read on the async worker (see [`crate::file_body`]).
    memory_fs: bool,
    /// `cache_dir` itself (the lock, the snapshot).
    dir: PathBuf,
    /// When this store was opened: files changed before are from earlier processes.
    opened_at: std::time::SystemTime,
    /// Whether the index agrees with the directory: false while a start from a snapshot
    /// checks it in the background (`check.rs`).
    checked: tokio::sync::watch::Sender<bool>,
    /// How the index was built at start-up, and the background check's progress.
    start: startup::StartState,
}

/// Whether `dir` is on tmpfs (false if that cannot be told).
fn on_memory_fs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// How [`Store::open_with`] opens the directory.
#[derive(Default)]
pub struct OpenOptions {
    /// A graceful upgrade: the directory belongs to a previous process that still serves.
    pub handover: Option<Handover>,
    /// Write the index snapshot this often when the index changed (`None`: only when asked,
    /// [`Store::write_snapshot`]).
    pub snapshot_every: Option<std::time::Duration>,
}

/// Taking the directory over from a previous process (see [`crate::upgrade`]).
///
/// The index is loaded first, without the lock, while the previous process serves: from the
/// index snapshot it wrote when the upgrade began, or (without a usable one) by reading the
/// directory. Then `ask` tells it to stop and release the lock. Once the lock is held, the
/// directory is checked against the snapshot in the background (what the previous process
/// stored, replaced or removed since it was written), or, after a read, only the shard
/// directories that changed since they were read (or changed too recently to tell) are read
/// again. Temp files are left alone throughout (they may be the previous process's in-flight
/// fills); the next ordinary start removes what is left of them.
pub struct Handover {
    /// How long to wait for the lock once asked.
    pub wait: std::time::Duration,
    /// Asks the previous process to release the lock.
    pub ask: Box<dyn FnOnce() -> io::Result<()> + Send>,
}

impl Store {
    /// The listener of [`StoreEvent`]s has fully handled `n` more `Stored` events.
    pub fn recorded(&self, n: u64) {
        self.inner
            .recorded_events
            .fetch_add(n, std::sync::atomic::Ordering::AcqRel);
    }

    /// Waits (at most about `limit`) until every fill whose body was complete when this was
    /// called is committed, and every entry committed by then has been handled by the events'
    /// listener (announced in the manifest). Read-your-writes for listings: a page whose
    /// response a client has received is listed after this.
    pub async fn settled(&self, limit: std::time::Duration) {
        use std::sync::atomic::Ordering::Acquire;
        let deadline = tokio::time::Instant::now() + limit;
        let step = std::time::Duration::from_millis(2);
        // Fills that finish meanwhile only delay this up to the deadline.
        while self.inner.finishing.load(Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(step).await;
        }
        let target = self.inner.stored_events.load(Acquire);
        while self.inner.recorded_events.load(Acquire) < target
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(step).await;
        }
    }
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
        limits: DiskLimits,
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
    ) -> Result<Store, StoreError> {
        Store::open_with(
            dir,
            max_variants,
            memory_bytes,
            limits,
            stats,
            events,
            OpenOptions::default(),
        )
    }

    /// [`Store::open`], with options. Blocking.
    pub fn open_with(
        dir: &Path,
        max_variants: usize,
        memory_bytes: usize,
        limits: DiskLimits,
        stats: Arc<Stats>,
        events: mpsc::UnboundedSender<StoreEvent>,
        options: OpenOptions,
    ) -> Result<Store, StoreError> {
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::Io { path, source }
        };
        let root = dir.join(LAYOUT_DIR);
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        let lock_path = dir.join(".lock");
        let lock = match options.handover {
            Some(_) => None,
            None => Some(
                take_lock(&lock_path, std::time::Duration::ZERO)?
                    .ok_or_else(|| StoreError::Locked(dir.to_owned()))?,
            ),
        };
        let evictor = evictor::Evictor::new(root.clone(), stats.clone(), events.clone());
        let inner = Arc::new(Inner {
            root,
            index: Mutex::new(Index::new(limits)),
            evictor,
            commit: Mutex::new(purge::PurgeLog::default()),
            max_variants,
            hot: HotTier::new(memory_bytes - metas::metas_budget(memory_bytes)),
            metas: metas::Metas::new(metas::metas_budget(memory_bytes)),
            fds: FdBudget::from_rlimit(),
            stats,
            events,
            counter: AtomicU64::new(0),
            dirs: files::ShardDirs::default(),
            finishing: Arc::new(AtomicU64::new(0)),
            stored_events: AtomicU64::new(0),
            recorded_events: AtomicU64::new(0),
            lock: Mutex::new(lock),
            lock_path,
            memory_fs: on_memory_fs(dir),
            dir: dir.to_owned(),
            opened_at: std::time::SystemTime::now(),
            checked: tokio::sync::watch::Sender::new(false),
            start: startup::StartState::new(),
        });
        inner
            .evictor
            .start(Arc::downgrade(&inner))
            .map_err(io_err(dir))?;
        let store = Store { inner };
        if options.handover.is_none() {
            // Not during a hand-over: the previous process may still serve from it.
            drop_old_layout(dir);
        }
        store.build_index(options.handover)?;
        store.spawn_snapshots(options.snapshot_every);
        Ok(store)
    }

    /// Whether the index agrees with the directory: true once the background check that
    /// follows a start from a snapshot is done (at once after any other start).
    pub fn is_checked(&self) -> bool {
        *self.inner.checked.borrow()
    }

    /// Waits until [`Store::is_checked`] (the check is bounded by the directory's size).
    pub async fn checked(&self) {
        let mut rx = self.inner.checked.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Whether the cache directory is on a memory file system (tmpfs), whose reads never wait
    /// for a disk.
    pub fn on_memory_fs(&self) -> bool {
        self.inner.memory_fs
    }

    /// Releases the directory's lock (a graceful upgrade hands the directory to the new
    /// process). This store keeps working with what it has open; it must not start new work.
    pub fn release_lock(&self) {
        self.lock_slot().take();
    }

    /// Takes the lock back after [`Store::release_lock`] (the new process failed), waiting up
    /// to `wait` for whoever holds it. Blocking.
    pub fn relock(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        if self.lock_slot().is_some() {
            return Ok(());
        }
        let lock = take_lock(&self.inner.lock_path, wait)?.ok_or_else(|| {
            StoreError::Locked(
                self.inner
                    .lock_path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .to_owned(),
            )
        })?;
        *self.lock_slot() = Some(lock);
        Ok(())
    }

    fn lock_slot(&self) -> std::sync::MutexGuard<'_, Option<nix::fcntl::Flock<File>>> {
        self.inner.lock.lock().unwrap_or_else(|e| e.into_inner())
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

    /// The bound on entry files kept open for hot entries.
    pub(crate) fn fd_budget(&self) -> &Arc<FdBudget> {
        &self.inner.fds
    }
}

/// Drops the two-file layout of earlier versions (`v1`) and what an interrupted drop left:
/// renamed aside at once (so nothing ever reads it), deleted on a background thread (a large
/// cache takes a while to delete, and start-up need not wait for it).
fn drop_old_layout(dir: &Path) {
    let old = dir.join(OLD_LAYOUT_DIR);
    if old.is_dir() {
        let aside = dir.join(format!(".dropping-{OLD_LAYOUT_DIR}-{}", std::process::id()));
        match fs::rename(&old, &aside) {
            Ok(()) => tracing::warn!(
                dir = %old.display(),
                "dropping the cache entries of the previous on-disk layout (two files per \
                 entry); this version stores one file per entry in {LAYOUT_DIR}/ and fills \
                 the cache again from the origin"
            ),
            Err(e) => tracing::warn!(dir = %old.display(), "cannot drop the old layout: {e}"),
        }
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    let leftovers: Vec<PathBuf> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".dropping-"))
        .map(|e| e.path())
        .collect();
    if leftovers.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("caje-drop-old".into())
        .spawn(move || {
            for d in leftovers {
                if let Err(e) = fs::remove_dir_all(&d) {
                    tracing::warn!(dir = %d.display(), "removing the old layout: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the thread that removes the old layout: {e}");
    }
}

/// Takes the exclusive lock on `path`, trying for up to `wait`; `None` if another process
/// still holds it then.
fn take_lock(
    path: &Path,
    wait: std::time::Duration,
) -> Result<Option<nix::fcntl::Flock<File>>, StoreError> {
    let deadline = std::time::Instant::now() + wait;
    loop {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| StoreError::Io {
                path: path.to_owned(),
                source,
            })?;
        match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(Some(lock)),
            Err(_) if std::time::Instant::now() < deadline => {
                // The holder releases it within moments of being asked; poll rather than
                // block, so that the wait stays bounded.
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(_) => return Ok(None),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;

    use bytes::Bytes;

    pub(crate) fn open(dir: &Path) -> (Store, mpsc::UnboundedReceiver<StoreEvent>) {
        // A writer thread of the previous store may still hold its handle (and so the
        // directory lock) for a moment after its last event.
        for _ in 0..100 {
            let (tx, rx) = mpsc::unbounded_channel();
            match Store::open(
                dir,
                8,
                1 << 20,
                DiskLimits::UNLIMITED,
                Arc::new(Stats::default()),
                tx,
            ) {
                Ok(store) => return (store, rx),
                Err(StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("cache dir still locked after 1 s");
    }

    pub(crate) async fn fill(
        store: &Store,
        rx: &mut mpsc::UnboundedReceiver<StoreEvent>,
        body: &[u8],
    ) {
        let mut f = store.begin_fill(sample(), u64::MAX, true, store.purge_epoch());
        f.push(&Bytes::copy_from_slice(body));
        f.finish();
        match rx.recv().await.unwrap() {
            StoreEvent::Stored { entry, .. } => {
                assert_eq!(entry.meta.body_len, body.len() as u64)
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A cache dir written by an earlier version (`v1/`: `.meta` + `.body` files) is dropped
    /// at start: nothing of it is loaded, and it is gone from the disk soon after.
    #[tokio::test]
    async fn the_two_file_layout_is_dropped_at_start_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join(OLD_LAYOUT_DIR).join("ab").join("cd");
        fs::create_dir_all(&old).unwrap();
        let name = "abcd".repeat(16);
        fs::write(old.join(format!("{name}.meta")), b"\x01an old meta file").unwrap();
        fs::write(old.join(format!("{name}.0123456789abcdef.body")), b"body").unwrap();
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage(), (0, 0));
        assert!(!dir.path().join(OLD_LAYOUT_DIR).exists());
        let leftovers = || {
            fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".dropping-"))
                .count()
        };
        for _ in 0..200 {
            if leftovers() == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(
            leftovers(),
            0,
            "the old layout is deleted in the background"
        );
        // A fill after it works as usual.
        let (store, mut rx) = (store, _rx);
        fill(&store, &mut rx, b"new").await;
        assert_eq!(store.usage(), (1, 3));
    }

    #[tokio::test]
    async fn second_process_cannot_share_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, _rx) = open(dir.path());
        let (tx, _rx2) = mpsc::unbounded_channel();
        let err = Store::open(
            dir.path(),
            8,
            1 << 20,
            DiskLimits::UNLIMITED,
            Arc::new(Stats::default()),
            tx,
        )
        .err()
        .unwrap();
        assert!(matches!(err, StoreError::Locked(_)));
    }
}
