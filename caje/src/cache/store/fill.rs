//! Fills: the [`Fill`] handle the tee feeds, the writes that put its body in a temp entry
//! file, and the commit that renames it into place and updates the index.
//!
//! No thread is held for a fill and no chunk crosses to another thread on its own: the tee
//! queues chunks on the async side, and a job on the blocking pool writes everything queued
//! (one `writev`) once [`FLUSH_BYTES`] wait or the body ends; while it writes, more queue up
//! and go in its next `writev`. A body that ends before [`FLUSH_BYTES`] arrived (most pages)
//! is written with its header in one `writev` and renamed into place by one job: one trip
//! to the blocking pool per fill (none on tmpfs, where the job runs on the async worker: see
//! `Shared::spawn`). Nothing is fsynced (see [`super::format`]): a cache may
//! lose its last entries in a crash, never serve a torn one.

use std::fs::{self, File};
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::watch;

use super::format::{self, EntryWriter};
use super::{Entry, Store};
use crate::cache::entry::EntryMeta;
use crate::cache::key::entry_name;
use crate::stats::Stats;

/// Bytes a fill may have queued for its writer before the tee waits for the disk: memory stays
/// bounded, and a client is slowed to the disk's speed (as nginx's temp-file writes do) only
/// while the disk is behind.
const MAX_INFLIGHT_BYTES: usize = 8 * 1024 * 1024;

/// Queued bytes that start a write. A body shorter than this is held in memory until it ends
/// and written with its header in one `writev`; a longer one is written in batches of at
/// least this much (fewer trips to the blocking pool than one per chunk).
pub const FLUSH_BYTES: usize = 64 * 1024;

/// How a fill is getting on, for requests coalesced onto it (they stream the body from the
/// file being written).
#[derive(Debug, Clone)]
pub enum FillProgress {
    /// The writer has not created its file yet (a small body is in memory until it ends).
    Starting,
    /// `written` bytes of the body are in the temp file at `path`, from `body_offset`.
    Writing {
        /// The temp file.
        path: Arc<PathBuf>,
        /// The writer's descriptor of it, readable: followers read through it (positional
        /// reads), so a rename or an eviction's unlink cannot pull the body from under them.
        file: Arc<File>,
        /// Where the body starts in the file (after the header).
        body_offset: u64,
        /// Bytes written so far.
        written: u64,
    },
    /// The entry is committed; its body is complete in `entry.path()` from
    /// `entry.body_offset`, and readable through the descriptor even once an eviction has
    /// unlinked that path.
    Committed(Arc<Entry>, Arc<File>),
    /// The fill was abandoned or failed; the body will not be completed.
    Failed,
}

impl Store {
    /// Starts writing a response into the cache. `meta` is complete except for the body
    /// fields, which the writer fills in. The returned [`Fill`] receives the body as it
    /// streams; nothing is visible to readers until [`Fill::finish`] is called and the write
    /// is committed.
    ///
    /// `since` is [`Store::purge_epoch`] read before the origin request was sent: a purge of
    /// this page logged after it (the response may predate the purge) makes the commit drop
    /// the entry instead of storing it.
    ///
    /// `announce` is false only for edge warming (populate fetches of pages the manifest
    /// already lists): such a fill is admitted at the lowest priority, only into free room
    /// within `populate.max_fraction` of the cap, and dropped at commit if it does not fit.
    pub fn begin_fill(
        &self,
        mut meta: EntryMeta,
        max_bytes: u64,
        announce: bool,
        since: u64,
    ) -> Fill {
        let name = entry_name(&meta.key(), &meta.variant);
        let dir = self.shard_dir(&name);
        let tag = self.unique();
        meta.body_file = format::version_name(&name, tag);
        let (progress, progress_rx) = watch::channel(FillProgress::Starting);
        let shared = Arc::new(Shared {
            store: self.clone(),
            job: Mutex::new(Job {
                queue: Vec::new(),
                queued: 0,
                end: End::Open,
                running: false,
                failed: false,
                disk: Some(Disk {
                    meta,
                    tmp: self.temp_path(&dir, &name),
                    name,
                    tag,
                    writer: None,
                }),
            }),
            progress,
            waker: Mutex::new(None),
            inflight: AtomicUsize::new(0),
            finished: Arc::new(AtomicBool::new(false)),
            counted: AtomicBool::new(false),
            expected: Mutex::new(None),
            announce,
            since,
        });
        Fill {
            progress: progress_rx,
            shared,
            active: true,
            bytes: 0,
            max_bytes,
            stats: self.inner.stats.clone(),
            finishing: self.inner.finishing.clone(),
        }
    }
}

/// How the body ended, as the writer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Open,
    Finished,
    Abandoned,
}

/// What is on disk of a fill, owned by whichever write job runs (there is at most one).
struct Disk {
    meta: EntryMeta,
    name: String,
    tmp: PathBuf,
    tag: u64,
    /// The temp file, once the body outgrew [`FLUSH_BYTES`].
    writer: Option<EntryWriter>,
}

impl Disk {
    /// The shard directory the temp file (and the entry) goes in.
    fn tmp_dir(&self) -> &std::path::Path {
        self.tmp.parent().unwrap_or(std::path::Path::new("."))
    }
}

struct Job {
    /// Chunks not yet written, in order.
    queue: Vec<Bytes>,
    queued: usize,
    end: End,
    /// A write job is on the blocking pool: at most one at a time, so writes stay in order.
    running: bool,
    /// Writing failed: the tee stops feeding this fill.
    failed: bool,
    /// Taken by the running job while it writes; `None` once the fill is over.
    disk: Option<Disk>,
}

/// A fill's state, shared by its [`Fill`] and its write jobs.
struct Shared {
    store: Store,
    job: Mutex<Job>,
    progress: watch::Sender<FillProgress>,
    /// The tee waiting for the writer to catch up.
    waker: Mutex<Option<std::task::Waker>>,
    /// Bytes queued and not yet written.
    inflight: AtomicUsize,
    /// Set when the whole body has been handed to the writer (before it is written).
    finished: Arc<AtomicBool>,
    /// This fill counts in the store's `finishing` (whoever clears it takes it out).
    counted: AtomicBool,
    /// The body's length and CRC-32 as its sender announced them ([`Fill::expect`]).
    expected: Mutex<Option<(u64, u32)>>,
    announce: bool,
    since: u64,
}

impl Shared {
    fn job(&self) -> MutexGuard<'_, Job> {
        // Nothing panics while holding it; recover rather than lose the fill.
        self.job.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_tee(&self) {
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }

    /// `n` queued bytes are written (or dropped); wakes the tee once the backlog is small.
    fn written(&self, n: usize) {
        let left = self
            .inflight
            .fetch_sub(n, Ordering::AcqRel)
            .saturating_sub(n);
        if left <= MAX_INFLIGHT_BYTES / 2 {
            self.wake_tee();
        }
    }

    /// Starts a write job on the blocking pool; the caller set `running`. Outside a runtime
    /// (a fill dropped at shutdown) the job runs here, and so it does when the cache directory
    /// is on a memory file system (tmpfs).
    ///
    /// On tmpfs a write, a rename and a commit are memory operations that never wait for a
    /// disk (as the inline reads in [`crate::file_body`]), and the hop to the blocking pool
    /// cost more than they do: a wake-up of a pool thread and two context switches per fill,
    /// about a sixth of the miss path's CPU in `perf` (`finish_task_switch`, futex waits).
    /// On a disk-backed file system the writes stay on the blocking pool: there `open`,
    /// `rename` and a write may wait for the journal or for memory to be written back.
    fn spawn(self: &Arc<Self>) {
        let shared = self.clone();
        if self.store.inner.memory_fs {
            return shared.run();
        }
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(move || shared.run())),
            Err(_) => shared.run(),
        }
    }

    /// The write job: writes what is queued until less than [`FLUSH_BYTES`] is (the push
    /// that queues enough starts the next job); at the end of the body, commits.
    fn run(self: Arc<Self>) {
        loop {
            let (batch, end, disk) = {
                let mut job = self.job();
                let batch = std::mem::take(&mut job.queue);
                job.queued = 0;
                (batch, job.end, job.disk.take())
            };
            let Some(mut disk) = disk else { return };
            let n: usize = batch.iter().map(Bytes::len).sum();
            match end {
                End::Abandoned => {
                    self.written(n);
                    if disk.writer.is_some() {
                        let _ = fs::remove_file(&disk.tmp);
                    }
                    return;
                }
                End::Finished => return self.complete(disk, batch),
                End::Open => {}
            }
            let result = self.append(&mut disk, &batch);
            self.written(n);
            if let Err(e) = result {
                self.fail(&disk, "writing body", &e);
                return;
            }
            let mut job = self.job();
            job.disk = Some(disk);
            if job.end == End::Open && job.queued < FLUSH_BYTES {
                job.running = false;
                return;
            }
        }
    }

    /// Writes a batch of the body, creating the temp file (header first) on the first one.
    fn append(&self, disk: &mut Disk, batch: &[Bytes]) -> io::Result<()> {
        match disk.writer.as_mut() {
            Some(w) => w.append(batch)?,
            None => {
                let meta = format::encode_meta(&mut disk.meta)?;
                self.store.ensure_shard_dir(disk.tmp_dir(), &disk.name)?;
                disk.writer = Some(EntryWriter::create(&disk.tmp, meta, disk.tag, batch)?);
            }
        }
        if let Some(w) = &disk.writer {
            advance(
                &self.progress,
                FillProgress::Writing {
                    path: Arc::new(disk.tmp.clone()),
                    file: w.file().clone(),
                    body_offset: w.body_offset(),
                    written: w.written(),
                },
            );
        }
        Ok(())
    }

    /// The writer failed: counted, the temp file removed, the fill marked failed (the tee
    /// stops feeding it at its next chunk, and coalesced readers are told).
    fn fail(&self, disk: &Disk, what: &str, e: &dyn std::fmt::Display) {
        let _ = fs::remove_file(&disk.tmp);
        self.store.inner.stats.store_failed(what, e);
        let dropped = {
            let mut job = self.job();
            job.failed = true;
            job.queued = 0;
            std::mem::take(&mut job.queue)
        };
        self.written(dropped.iter().map(Bytes::len).sum());
        advance(&self.progress, FillProgress::Failed);
        self.wake_tee();
    }

    /// The body ended: writes the rest (a small body: header and body in one `writev`), then
    /// commits. The job stays `running` (nothing follows).
    fn complete(&self, mut disk: Disk, batch: Vec<Bytes>) {
        let n: usize = batch.iter().map(Bytes::len).sum();
        let written = (|| -> io::Result<(Arc<File>, format::Fixed)> {
            if disk.writer.is_none() {
                let meta = format::encode_meta(&mut disk.meta)?;
                self.store.ensure_shard_dir(disk.tmp_dir(), &disk.name)?;
                let (file, fixed) = format::write_entry_file(&disk.tmp, &meta, disk.tag, &batch)?;
                return Ok((Arc::new(file), fixed));
            }
            let w = disk.writer.as_mut().ok_or(io::ErrorKind::NotFound)?;
            w.append(&batch)?;
            Ok((w.file().clone(), w.finish()?))
        })();
        self.written(n);
        let committed = match written {
            Ok((file, fixed)) => self.commit_body(disk, file, fixed),
            Err(e) => {
                self.fail(&disk, "writing body", &e);
                None
            }
        };
        if self.counted.swap(false, Ordering::AcqRel) {
            self.store.inner.finishing.fetch_sub(1, Ordering::AcqRel);
        }
        advance(
            &self.progress,
            committed.map_or(FillProgress::Failed, |(entry, file)| {
                FillProgress::Committed(entry, file)
            }),
        );
    }

    /// Checks the whole body against what its sender announced, and commits it. Takes the
    /// fill's metadata (no copy of its header maps and policy per fill).
    fn commit_body(
        &self,
        disk: Disk,
        file: Arc<File>,
        fixed: format::Fixed,
    ) -> Option<(Arc<Entry>, Arc<File>)> {
        let (len, crc) = (fixed.body_len, fixed.body_crc);
        let Disk {
            mut meta,
            name,
            tmp,
            tag,
            ..
        } = disk;
        let name = name.as_str();
        let expected = *self.expected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((want_len, want_crc)) = expected.filter(|&want| want != (len, crc)) {
            // A body that arrived whole but is not the one its sender described (a peer's
            // copy damaged on the way): never committed.
            let _ = fs::remove_file(&tmp);
            tracing::warn!(
                name,
                len,
                crc,
                want_len,
                want_crc,
                "a filled body does not match its announced length and checksum: not stored"
            );
            return None;
        }
        meta.body_len = len;
        meta.body_crc32 = crc;
        let store = &self.store;
        let at = (name, tag, tmp.as_path());
        match store.commit(at, meta, fixed.body_offset(), (self.announce, self.since)) {
            Ok(Some(entry)) => Some((entry, file)),
            Ok(None) => {
                let _ = fs::remove_file(&tmp);
                tracing::debug!(name, "purged while filling, or no room to warm: not stored");
                None
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                store.inner.stats.store_failed("committing entry", &e);
                None
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

/// The sending side of a cache fill: the tee feeds it the body as the client receives it.
///
/// Dropping a `Fill` without calling [`Fill::finish`] discards the partial entry, which is
/// what happens when the origin body fails or the client goes away.
pub struct Fill {
    progress: watch::Receiver<FillProgress>,
    shared: Arc<Shared>,
    /// Still taking chunks (not finished, abandoned or failed).
    active: bool,
    bytes: u64,
    max_bytes: u64,
    stats: Arc<Stats>,
    /// The store's count of fills waiting for their commit ([`Store::settled`]).
    finishing: Arc<AtomicU64>,
}

impl Fill {
    /// Queues a chunk for the writer. Never blocks (the tee waits on [`Fill::poll_ready`]
    /// first); abandons the fill when the object grows beyond `max_bytes` or the writer failed.
    pub fn push(&mut self, data: &Bytes) {
        if !self.active {
            return;
        }
        self.bytes += data.len() as u64;
        if self.bytes > self.max_bytes {
            Stats::incr(&self.stats.not_stored);
            self.abandon();
            return;
        }
        let start = {
            let mut job = self.shared.job();
            if job.failed {
                drop(job);
                // The writer failed (and counted it); stop feeding it.
                self.abandon();
                return;
            }
            job.queue.push(data.clone());
            job.queued += data.len();
            self.shared.inflight.fetch_add(data.len(), Ordering::AcqRel);
            let start = !job.running && job.queued >= FLUSH_BYTES;
            job.running |= start;
            start
        };
        if start {
            self.shared.spawn();
        }
    }

    /// Whether the writer can take more: `Pending` (with `cx` woken later) while more than
    /// `MAX_INFLIGHT_BYTES` (8 MiB) wait to be written. Always ready once the fill is abandoned.
    pub fn poll_ready(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let inflight = &self.shared.inflight;
        if !self.active || inflight.load(Ordering::Acquire) <= MAX_INFLIGHT_BYTES {
            return std::task::Poll::Ready(());
        }
        *self.shared.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // Re-check after registering, so a wake between the load and the store is not lost.
        if inflight.load(Ordering::Acquire) <= MAX_INFLIGHT_BYTES || self.shared.job().failed {
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
        self.active && !self.shared.job().failed
    }

    /// Marks the body complete; the writer commits the entry.
    pub fn finish(mut self) {
        if !std::mem::replace(&mut self.active, false) {
            return;
        }
        let shared = &self.shared;
        // Counted before the writer can see the end, so a listing that waits for
        // `finishing` cannot miss this fill's commit.
        shared.counted.store(true, Ordering::Release);
        self.finishing.fetch_add(1, Ordering::AcqRel);
        let start = {
            let mut job = shared.job();
            if job.failed {
                None
            } else {
                job.end = End::Finished;
                shared.finished.store(true, Ordering::Release);
                let start = !job.running;
                job.running = true;
                Some(start)
            }
        };
        match start {
            Some(true) => shared.spawn(),
            Some(false) => {}
            None => {
                if shared.counted.swap(false, Ordering::AcqRel) {
                    self.finishing.fetch_sub(1, Ordering::AcqRel);
                }
            }
        }
    }

    /// A flag that becomes true once the whole body has been handed to the writer: from then
    /// on the entry is only waiting for its commit (for requests that arrive just after a
    /// client received the last byte).
    pub fn finished_flag(&self) -> Arc<AtomicBool> {
        self.shared.finished.clone()
    }

    /// The body must be exactly `len` bytes with CRC-32 `crc32` (as a peer announced it), or
    /// the writer discards it instead of committing it.
    pub fn expect(&self, len: u64, crc32: u32) {
        *self
            .shared
            .expected
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((len, crc32));
    }

    /// Gives up on storing this response.
    pub fn abandon(&mut self) {
        if !std::mem::replace(&mut self.active, false) {
            return;
        }
        advance(&self.shared.progress, FillProgress::Failed);
        let (start, dropped) = {
            let mut job = self.shared.job();
            job.end = End::Abandoned;
            job.queued = 0;
            let dropped: usize = std::mem::take(&mut job.queue).iter().map(Bytes::len).sum();
            // Only a temp file needs a job to remove it; a body still in memory just goes.
            let has_file = job.disk.as_ref().is_some_and(|d| d.writer.is_some());
            let start = !job.running && has_file;
            job.running |= start;
            if !job.running {
                job.disk = None;
            }
            (start, dropped)
        };
        self.shared.written(dropped);
        if start {
            self.shared.spawn();
        }
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        // Dropped before `finish`: the body will never be complete.
        self.abandon();
        // A tee waiting on this fill must not wait forever once it is gone.
        self.shared.wake_tee();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::store::tests::{fill, open};
    use crate::cache::store::LAYOUT_DIR;

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
        let bytes = fs::read(e.path()).unwrap();
        assert_eq!(&bytes[e.body_offset as usize..], b"hello again");
        // The replacement was renamed over the old file: one file remains.
        let mut files = 0;
        for l1 in fs::read_dir(dir.path().join(LAYOUT_DIR)).unwrap() {
            for l2 in fs::read_dir(l1.unwrap().path()).unwrap() {
                files += fs::read_dir(l2.unwrap().path()).unwrap().count();
            }
        }
        assert_eq!(files, 1);
    }

    /// Bodies around [`FLUSH_BYTES`] in chunks of various sizes: the small path (one write)
    /// and the batched one store the same bytes, and a reopen reads them back.
    #[tokio::test]
    async fn small_and_batched_fills_store_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        for (len, chunk) in [
            (0, 1),
            (1, 1),
            (FLUSH_BYTES - 1, 4096),
            (FLUSH_BYTES, FLUSH_BYTES),
            (FLUSH_BYTES + 1, 1000),
            (3 * FLUSH_BYTES + 17, 16 * 1024),
            (2 << 20, 300_000),
        ] {
            let body: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
            let f = store.begin_fill(sample(), u64::MAX, true, store.purge_epoch());
            let mut progress = f.progress();
            let mut f = f;
            for c in body.chunks(chunk) {
                f.push(&Bytes::copy_from_slice(c));
            }
            f.finish();
            let p = progress
                .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
                .await
                .unwrap()
                .clone();
            let FillProgress::Committed(e, file) = p else {
                panic!("len {len}: not committed")
            };
            assert_eq!(e.meta.body_len, len as u64);
            assert_eq!(e.meta.body_crc32, crc32fast::hash(&body));
            let on_disk = fs::read(e.path()).unwrap();
            assert_eq!(
                on_disk.len() as u64,
                e.body_offset + len as u64,
                "len {len}"
            );
            assert_eq!(&on_disk[e.body_offset as usize..], &body[..], "len {len}");
            let (meta, fixed) = format::read_header(&file).unwrap();
            assert_eq!(
                (meta.body_len, fixed.body_offset()),
                (len as u64, e.body_offset)
            );
        }
    }

    /// The store remembers the shard directories it has seen, and a fill in one of them skips
    /// creating it. A directory removed behind that hint (both levels here) must still take the
    /// next fill: the create falls back to making it.
    #[tokio::test]
    async fn a_fill_recreates_a_shard_directory_removed_behind_the_hint() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut rx) = open(dir.path());
        fill(&store, &mut rx, b"first").await;
        let path = store.entries().pop().unwrap().path();
        let top = path.parent().unwrap().parent().unwrap().to_owned();
        fs::remove_dir_all(&top).unwrap();
        // A failed fill sends no event: bounded, so that failure is reported, not a hang.
        let second = fill(&store, &mut rx, b"second");
        tokio::time::timeout(std::time::Duration::from_secs(10), second)
            .await
            .expect("the second fill was not stored");
        let e = store.entries().pop().unwrap();
        let bytes = fs::read(e.path()).unwrap();
        assert_eq!(&bytes[e.body_offset as usize..], b"second");
    }

    #[tokio::test]
    async fn dropped_fill_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        let mut f = store.begin_fill(sample(), u64::MAX, true, store.purge_epoch());
        f.push(&Bytes::from_static(b"partial"));
        drop(f);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(store.usage(), (0, 0));
        drop(store);
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage(), (0, 0));
    }

    #[tokio::test]
    async fn a_body_unlike_its_announced_length_or_crc_is_not_committed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        let body = Bytes::from_static(b"peer body");
        let crc = crc32fast::hash(&body);
        for (len, crc, stored) in [(9, crc ^ 1, false), (8, crc, false), (9, crc, true)] {
            let f = store.begin_fill(sample(), u64::MAX, false, store.purge_epoch());
            f.expect(len, crc);
            let mut progress = f.progress();
            let mut f = f;
            f.push(&body);
            f.finish();
            let done = progress
                .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
                .await
                .map(|p| matches!(*p, FillProgress::Committed(..)))
                .unwrap();
            assert_eq!(done, stored, "len {len}");
            assert_eq!(store.usage().0, u64::from(stored));
        }
    }
}
