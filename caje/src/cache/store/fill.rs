//! Fills: the [`Fill`] handle the tee feeds, the writer thread that streams the body into a
//! temp file, and the commit that renames it into place and updates the index.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::{body_suffix, index, Entry, Store, StoreEvent};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{entry_digest, entry_name};
use crate::stats::Stats;

/// Bytes a fill may have queued for its writer before the tee waits for the disk: memory stays
/// bounded, and a client is slowed to the disk's speed (as nginx's temp-file writes do) only
/// while the disk is behind.
const MAX_INFLIGHT_BYTES: usize = 8 * 1024 * 1024;

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
        /// The writer's descriptor of it, readable: followers read through it (positional
        /// reads), so a rename or an eviction's unlink cannot pull the body from under them.
        file: Arc<File>,
        /// Bytes written so far.
        written: u64,
    },
    /// The entry is committed; its body is complete at `entry.body_path()`, and readable
    /// through the descriptor even once an eviction has unlinked that path.
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
    pub fn begin_fill(&self, meta: EntryMeta, max_bytes: u64, announce: bool, since: u64) -> Fill {
        let (tx, rx) = mpsc::unbounded_channel();
        let inflight = Arc::new(Inflight::default());
        let store = self.clone();
        let writer_inflight = inflight.clone();
        let (progress, progress_rx) = watch::channel(FillProgress::Starting);
        let progress = Arc::new(progress);
        let writer_progress = progress.clone();
        tokio::task::spawn_blocking(move || {
            let committed = store.write_entry(
                meta,
                rx,
                &writer_inflight,
                &writer_progress,
                announce,
                since,
            );
            if writer_inflight.counted.swap(false, Ordering::AcqRel) {
                store.inner.finishing.fetch_sub(1, Ordering::AcqRel);
            }
            advance(
                &writer_progress,
                committed.map_or(FillProgress::Failed, |(entry, file)| {
                    FillProgress::Committed(entry, file)
                }),
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
            finishing: self.inner.finishing.clone(),
        }
    }

    /// The writer: runs on a blocking thread, receives the body, commits the entry.
    fn write_entry(
        &self,
        mut meta: EntryMeta,
        mut rx: mpsc::UnboundedReceiver<FillMsg>,
        inflight: &Inflight,
        progress: &watch::Sender<FillProgress>,
        announce: bool,
        since: u64,
    ) -> Option<(Arc<Entry>, Arc<File>)> {
        let name = entry_name(&meta.key(), &meta.variant);
        let dir = self.shard_dir(&name);
        let tmp_body = dir.join(format!(".{name}.{:016x}.tmp", self.unique()));
        let result = (|| -> io::Result<Option<(u64, u32, Arc<File>)>> {
            fs::create_dir_all(&dir)?;
            // Readable too: requests coalesced onto this fill read the body through this
            // descriptor, which stays valid after the rename and after an eviction unlinks
            // the committed body.
            let file = Arc::new(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&tmp_body)?,
            );
            let path = Arc::new(tmp_body.clone());
            advance(
                progress,
                FillProgress::Writing {
                    path: path.clone(),
                    file: file.clone(),
                    written: 0,
                },
            );
            let mut crc = crc32fast::Hasher::new();
            let mut len = 0u64;
            loop {
                match rx.blocking_recv() {
                    Some(FillMsg::Chunk(data)) => {
                        inflight.written(data.len());
                        (&*file).write_all(&data)?;
                        crc.update(&data);
                        len += data.len() as u64;
                        advance(
                            progress,
                            FillProgress::Writing {
                                path: path.clone(),
                                file: file.clone(),
                                written: len,
                            },
                        );
                    }
                    Some(FillMsg::Finish) => break,
                    // The fill was dropped or abandoned: the body is incomplete.
                    None => return Ok(None),
                }
            }
            if self.inner.fsync {
                file.sync_all()?;
            }
            Ok(Some((len, crc.finalize(), file)))
        })();
        let (len, crc, file) = match result {
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
        let expected = *inflight.expected.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((want_len, want_crc)) = expected.filter(|&want| want != (len, crc)) {
            // A body that arrived whole but is not the one its sender described (a peer's
            // copy damaged on the way): never committed.
            let _ = fs::remove_file(&tmp_body);
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
        meta.body_file = format!("{name}.{:016x}.body", self.unique());
        meta.body_len = len;
        meta.body_crc32 = crc;
        match self.commit(&dir, &name, &tmp_body, meta, announce, since) {
            Ok(Some(entry)) => Some((entry, file)),
            Ok(None) => {
                let _ = fs::remove_file(&tmp_body);
                tracing::debug!(name, "purged while filling, or no room to warm: not stored");
                None
            }
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
        since: u64,
    ) -> io::Result<Option<Arc<Entry>>> {
        let tmp_meta = self.write_temp_meta(dir, name, &meta)?;
        let digest = entry_digest(&meta.key(), &meta.variant);
        let (Some(file), id) = (body_suffix(name, &meta.body_file), index::id_of(&digest)) else {
            let _ = fs::remove_file(&tmp_meta);
            return Err(io::Error::other("a body file name not made by write_entry"));
        };
        let (body_path, meta_path) = (dir.join(&meta.body_file), dir.join(format!("{name}.meta")));
        let done = {
            let log = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            // Checked and inserted in one critical section with the purges' logging, so a
            // purge either sees this entry in the index or this check sees the purge.
            if log.covers(since, &meta) {
                let _ = fs::remove_file(&tmp_meta);
                return Ok(None);
            }
            // Edge warming's fills (the only ones not announced) only use free room within
            // the warming share. Checked before the renames, so a refusal leaves an older
            // copy's files alone; nothing else adds weight while the commit lock is held, so
            // the insert below admits it.
            if !announce {
                if let Err(why) = self.index().warm_check(id, meta.body_len) {
                    let _ = fs::remove_file(&tmp_meta);
                    tracing::debug!(name, "warming not stored: {why}");
                    Stats::incr(&self.inner.stats.warm_refused);
                    return Ok(None);
                }
            }
            fs::rename(tmp_body, &body_path)?;
            if let Err(e) = fs::rename(&tmp_meta, &meta_path) {
                let _ = fs::remove_file(&body_path);
                let _ = fs::remove_file(&tmp_meta);
                return Err(e);
            }
            // The index moves on only now that the files are in place: a reader never finds
            // metadata older than the index says (`lookup.rs`).
            match self
                .index()
                .insert(&meta, digest, file, self.inner.max_variants, !announce)
            {
                Ok(done) => done,
                Err(why) => {
                    // Not reached (checked above under the same lock); if it were, the index
                    // is unchanged and the new files go.
                    let _ = fs::remove_file(&meta_path);
                    let _ = fs::remove_file(&body_path);
                    tracing::warn!(name, "warming not stored after the check: {why}");
                    return Ok(None);
                }
            }
        };
        let entry = Arc::new(Entry::new(meta, done.entry, &self.inner.root));
        // Make the renames durable; a failure here only risks losing the entry in a crash.
        if let (true, Ok(d)) = (self.inner.fsync, File::open(dir)) {
            let _ = d.sync_all();
        }
        for e in &done.evicted {
            self.inner.hot.remove(&e.body_file());
            self.inner.metas.remove(e.id());
        }
        self.inner.evictor.evict(done.evicted);
        for old in done.gone {
            self.inner.hot.remove(&old.body_file());
            if old.name != done.entry.name {
                self.inner.metas.remove(old.id());
                let _ = fs::remove_file(self.meta_path_of(&old));
            }
            if old.file != done.entry.file {
                let _ = fs::remove_file(self.body_path_of(&old));
            }
            if old.name != done.entry.name {
                let _ = self.inner.events.send(StoreEvent::Removed(old));
            }
        }
        Stats::incr(&self.inner.stats.stored);
        self.inner
            .stored_events
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: entry.clone(),
            announce,
        });
        Ok(Some(entry))
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
    /// This fill counts in the store's `finishing` (whoever clears it takes it out).
    counted: std::sync::atomic::AtomicBool,
    /// The body's length and CRC-32 as its sender announced them ([`Fill::expect`]).
    expected: Mutex<Option<(u64, u32)>>,
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
    /// The store's count of fills waiting for their commit ([`Store::settled`]).
    finishing: Arc<std::sync::atomic::AtomicU64>,
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
            // Counted before the writer can see the end, so a listing that waits for
            // `finishing` cannot miss this fill's commit.
            self.inflight.counted.store(true, Ordering::Release);
            self.finishing.fetch_add(1, Ordering::AcqRel);
            if tx.send(FillMsg::Finish).is_ok() {
                self.inflight.finished.store(true, Ordering::Release);
            } else if self.inflight.counted.swap(false, Ordering::AcqRel) {
                self.finishing.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// A flag that becomes true once the whole body has been handed to the writer: from then
    /// on the entry is only waiting for its commit (for requests that arrive just after a
    /// client received the last byte).
    pub fn finished_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        self.inflight.finished.clone()
    }

    /// The body must be exactly `len` bytes with CRC-32 `crc32` (as a peer announced it), or
    /// the writer discards it instead of committing it.
    pub fn expect(&self, len: u64, crc32: u32) {
        *self
            .inflight
            .expected
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some((len, crc32));
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
