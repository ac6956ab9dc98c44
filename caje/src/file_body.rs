//! A pull-based body over a file: each frame is one bounded positional read on the blocking
//! pool, started only when hyper asks for the next frame.
//!
//! Between frames no thread is held, so a client that stops reading costs a socket and a
//! file descriptor, never one of the blocking threads that every disk hit and fill needs
//! (the model of Varnish's and nginx's event-driven senders). A stalled client is then cut
//! off by `server.send_timeout_ms` ([`crate::send_timeout`]).

use std::fs::File;
use std::future::Future;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tokio::task::JoinHandle;

use crate::body::{empty, full, Body, BodyError, StreamError, SMALL_BODY};
use crate::cache::store::format;
use crate::cache::store::{HitMeta, Stamp, Store};

/// Largest single read.
pub const CHUNK: usize = 256 * 1024;

/// Reads `len` bytes at `pos` from `file` (blocking). A file shorter than that is an
/// `UnexpectedEof` error: the caller never sends a short chunk as if it were whole.
pub fn pread(file: &File, pos: u64, len: usize) -> std::io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, pos)?;
    Ok(buf.freeze())
}

/// The whole-body checksum of a stored entry, carried from read to read.
struct Check {
    crc: crc32fast::Hasher,
    store: Store,
    entry: Arc<HitMeta>,
}

type Read = JoinHandle<(Result<Bytes, StreamError>, Option<Check>)>;

/// Streams bytes `pos..end` of a file (offsets in the file: a stored body starts after the
/// entry file's header), one read per frame.
pub struct FileBody {
    file: Arc<File>,
    pos: u64,
    end: u64,
    /// Set for a whole stored body: its CRC is checked as it streams.
    check: Option<Check>,
    pending: Option<Read>,
    failed: bool,
}

impl FileBody {
    /// A whole stored body, verified against the entry's checksum as it streams: the last
    /// chunk is withheld on a mismatch (the client connection is aborted, never handed a
    /// complete-looking corrupt body), and the entry is removed and counted as corrupt.
    /// `body_offset`: where the body starts in the file.
    pub fn verified(file: File, body_offset: u64, store: Store, entry: Arc<HitMeta>) -> Self {
        let start = body_offset;
        let end = start + entry.body_len();
        FileBody {
            file: Arc::new(file),
            pos: start,
            end,
            check: Some(Check {
                crc: crc32fast::Hasher::new(),
                store,
                entry,
            }),
            pending: None,
            failed: false,
        }
    }

    /// Bytes `start..start + len` of a file (offsets in the file), unverified (a range of a
    /// stored body: the checksum covers the whole body only).
    pub fn range(file: File, start: u64, len: u64) -> Self {
        FileBody {
            file: Arc::new(file),
            pos: start,
            end: start.saturating_add(len),
            check: None,
            pending: None,
            failed: false,
        }
    }

    fn start_read(&mut self) -> Read {
        let file = self.file.clone();
        let pos = self.pos;
        let len = (self.end - pos).min(CHUNK as u64) as usize;
        let last = pos + len as u64 == self.end;
        let check = self.check.take();
        tokio::task::spawn_blocking(move || read_chunk(&file, pos, len, last, check))
    }
}

/// One read, with the checksum update (and, for the last chunk, its verdict).
fn read_chunk(
    file: &File,
    pos: u64,
    len: usize,
    last: bool,
    mut check: Option<Check>,
) -> (Result<Bytes, StreamError>, Option<Check>) {
    let data = match pread(file, pos, len) {
        Ok(d) => d,
        Err(e) => {
            if let Some(c) = &check {
                let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    "body shorter than its metadata".to_owned()
                } else {
                    format!("reading body: {e}")
                };
                c.store.remove_corrupt(&c.entry, &why);
                return (Err(StreamError::Corrupt), None);
            }
            return (Err(StreamError::Io(e)), None);
        }
    };
    if let Some(c) = &mut check {
        c.crc.update(&data);
        if last && c.crc.clone().finalize() != c.entry.body_crc32 {
            // Withhold the last chunk so the client never receives a complete-looking body.
            c.store
                .remove_corrupt(&c.entry, &"body checksum mismatch while serving");
            return (Err(StreamError::Corrupt), None);
        }
    }
    (Ok(data), check)
}

impl HttpBody for FileBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.failed || (this.pos >= this.end && this.pending.is_none()) {
            return Poll::Ready(None);
        }
        if this.pending.is_none() {
            this.pending = Some(this.start_read());
        }
        let Some(read) = this.pending.as_mut() else {
            return Poll::Ready(None);
        };
        let joined = ready!(Pin::new(read).poll(cx));
        this.pending = None;
        let (result, check) = match joined {
            Ok(r) => r,
            Err(e) => (Err(StreamError::Io(std::io::Error::other(e))), None),
        };
        this.check = check;
        match result {
            Ok(data) => {
                this.pos += data.len() as u64;
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Err(e) => {
                this.failed = true;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pos >= self.end && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.end.saturating_sub(self.pos))
    }
}

/// Why a stored entry could not be served.
#[derive(Debug)]
pub enum HitError {
    /// The entry was replaced or removed after the lookup; treat as a miss.
    Gone,
    /// The entry is corrupt; it has been removed and counted.
    Corrupt,
}

/// Opens a stored body for serving. Small bodies are read and verified now; large ones are
/// verified as they stream, and a mismatch aborts the client connection and removes the entry.
pub async fn hit_body(store: &Store, entry: &Arc<HitMeta>) -> Result<Body, HitError> {
    // The memory tier answers without a trip to the blocking pool.
    if let Some(body) = store.hot().get(&entry.body_file) {
        return Ok(full(body));
    }
    if let Some(body) = inline_hit(store, entry) {
        return Ok(full(body));
    }
    let store = store.clone();
    let entry = entry.clone();
    let opened = tokio::task::spawn_blocking(move || open_body(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(opened)
}

/// Largest body [`inline_hit`] reads on the async worker.
const INLINE_MAX: u64 = format::INLINE_MAX;

/// Serves a small body straight from the page cache, on the async worker, when it is there.
///
/// A hop to the blocking pool costs two context switches, which on a busy node cost more than
/// the read (perf on the `many` bench: a fifth of the CPU in `finish_task_switch`). Like
/// nginx, which reads cached files on its event loop, this reads on the worker, but only with
/// `RWF_NOWAIT`: the kernel copies what the page cache holds and refuses (`EAGAIN`) rather than
/// wait for the disk. On tmpfs, which does not support that flag but never waits for a disk
/// either, it is a plain read. Anything unusual (not cached, a short or failed read, another
/// version in the file, a length or checksum mismatch) returns `None`, and the caller takes
/// the blocking path, which decides and reports exactly as before; nothing is removed here.
pub(crate) fn inline_hit(store: &Store, entry: &Arc<HitMeta>) -> Option<Bytes> {
    let len = entry.body_len();
    if len == 0 || len > INLINE_MAX {
        return None;
    }
    let memory = store.on_memory_fs();
    // `open` does not wait for data; on a warm dentry cache it is a few microseconds, and a
    // hot entry's file is kept open after its first hit.
    // A kept descriptor reads the version it was opened on whatever replaced it since, so
    // it answers only while the index still serves that version (as an `open` by path
    // would find out from the header).
    let kept = entry.kept_file().filter(|_| store.serves(entry));
    let (file, stamp) = match &kept {
        Some(f) => (f.clone(), None),
        // The stamp before the read: a write after it changes it, so a kept file whose
        // stamp still matches holds what this read checks.
        None => {
            let file = File::open(entry.path()).ok()?;
            let stamp = Stamp::of(&file).ok()?;
            (Arc::new(file), Some(stamp))
        }
    };
    let offset = entry.body_offset;
    // Header and body in one read, and one byte more than the file should hold, so a longer
    // file shows too.
    let mut buf = vec![0u8; (offset + len + 1) as usize];
    let done = format::read_all_cached(&file, &mut buf, memory)?;
    if done as u64 != offset + len {
        return None;
    }
    let fixed = format::check_header(&buf[..offset as usize]).ok()?;
    let want = (entry.tag(), len, entry.body_crc32, offset);
    if (
        fixed.tag,
        fixed.body_len,
        fixed.body_crc,
        fixed.body_offset(),
    ) != want
    {
        return None;
    }
    let body = &buf[offset as usize..done];
    if crc32fast::hash(body) != entry.body_crc32 {
        return None;
    }
    if let Some(stamp) = stamp {
        // It holds this version, checked: later hits may read it without an `open`.
        entry.keep_file(&file, stamp, store.fd_budget());
    }
    let body = Bytes::copy_from_slice(body);
    store.hot().insert(&entry.body_file, body.clone());
    Some(body)
}

/// A kept entry file a hit may send as it is (`sendfile`), without reading it into memory:
/// only while the index still serves this version, only while the file's [`Stamp`] is the
/// one taken before the read that checked its CRC (a write to the file since changes it),
/// and only where the send cannot wait for the disk: on a memory file system, or when the
/// page cache holds every page of the body (`cachestat(2)`, Linux 6.5; without it, never on
/// a disk). `sendfile` cannot refuse to wait as [`inline_hit`]'s read does, so a page evicted
/// between the check and the send costs the worker one disk read (nginx takes that risk on
/// every `sendfile`).
pub(crate) fn sendable(store: &Store, entry: &Arc<HitMeta>) -> Option<Arc<File>> {
    let len = entry.body_len();
    if len == 0 {
        return None;
    }
    let (file, stamp) = entry.kept()?;
    if !store.serves(entry) || Stamp::of(file).ok()? != stamp {
        return None;
    }
    if !store.on_memory_fs() && !in_page_cache(file, entry.body_offset, len) {
        return None;
    }
    Some(file.clone())
}

/// Whether the page cache holds every page of `len` bytes at `offset` of `file`, by
/// `cachestat(2)`; `false` where the kernel lacks it (then never asked again).
fn in_page_cache(file: &File, offset: u64, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicBool, Ordering};
    /// `cachestat` has the same number on every architecture (the common syscall table).
    const SYS_CACHESTAT: libc::c_long = 451;
    static MISSING: AtomicBool = AtomicBool::new(false);
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Stat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    if MISSING.load(Ordering::Relaxed) {
        return false;
    }
    let range = Range { off: offset, len };
    let mut stat = Stat::default();
    // SAFETY: `cachestat(fd, range, cstat, flags)` reads `range` and writes `stat`, both
    // live `repr(C)` structs of the kernel's layout; the descriptor is open while `file` is
    // borrowed.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc != 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
            MISSING.store(true, Ordering::Relaxed);
        }
        return false;
    }
    let page = page_size();
    let pages = (offset + len).div_ceil(page) - offset / page;
    stat.nr_cache >= pages
}

/// The system's page size.
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf reads a constant of the system.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// A stored entry's file was not what the entry says: `Gone` if the entry was replaced or
/// removed meanwhile (the file may be the newer version), else the entry is removed as
/// corrupt. Blocking.
fn mismatch(store: &Store, entry: &Arc<HitMeta>, why: &dyn std::fmt::Display) -> HitError {
    if !store.is_current_committed(entry) {
        return HitError::Gone;
    }
    store.remove_corrupt(entry, why);
    HitError::Corrupt
}

/// Reads the start of an entry file: its header and then `extra` bytes (fewer at its end),
/// and checks that it holds the version `entry` describes: same tag, body length and CRC,
/// intact header checksum. The header's length may differ from the entry's (a metadata-only
/// update since the lookup wrote a new header before the same body). Returns the bytes read
/// and where the body starts in them.
fn read_head(
    store: &Store,
    entry: &Arc<HitMeta>,
    file: &File,
    extra: u64,
) -> Result<(Vec<u8>, u64), HitError> {
    let read = |offset: u64| {
        format::read_up_to(file, 0, (offset + extra) as usize)
            .map_err(|e| mismatch(store, entry, &format_args!("reading entry file: {e}")))
    };
    let mut buf = read(entry.body_offset)?;
    let fixed = format::parse_fixed(&buf).map_err(|e| mismatch(store, entry, &e))?;
    let want = (entry.tag(), entry.body_len(), entry.body_crc32);
    if (fixed.tag, fixed.body_len, fixed.body_crc) != want {
        return Err(mismatch(
            store,
            entry,
            &"the entry file holds another version",
        ));
    }
    let offset = fixed.body_offset();
    if offset != entry.body_offset {
        buf = read(offset)?;
    }
    format::check_header(&buf).map_err(|e| mismatch(store, entry, &e))?;
    Ok((buf, offset))
}

/// Opens an entry's file. A file missing because the entry was just removed is `Gone`.
fn open_entry(store: &Store, entry: &Arc<HitMeta>) -> Result<File, HitError> {
    File::open(entry.path())
        .map_err(|e| mismatch(store, entry, &format_args!("cannot open entry file: {e}")))
}

/// Opens a stored body and checks its header and the file's length against the entry, for
/// streaming. Returns the file and where the body starts in it. A replaced entry is `Gone`;
/// any other mismatch removes the entry.
fn open_checked(store: &Store, entry: &Arc<HitMeta>) -> Result<(File, u64), HitError> {
    let file = open_entry(store, entry)?;
    let (_, offset) = read_head(store, entry, &file, 0)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let want = offset + entry.body_len();
    if len != want {
        return Err(mismatch(
            store,
            entry,
            &format_args!("entry file is {len} bytes, its header says {want}"),
        ));
    }
    Ok((file, offset))
}

fn open_body(store: &Store, entry: &Arc<HitMeta>) -> Result<Body, HitError> {
    let len = entry.body_len();
    if len > SMALL_BODY {
        let (file, offset) = open_checked(store, entry)?;
        return Ok(BoxBody::new(FileBody::verified(
            file,
            offset,
            store.clone(),
            entry.clone(),
        )));
    }
    // One read for the header and the body: an open and a pread per small hit. One byte more
    // than the file should hold, so a longer file shows too.
    let file = open_entry(store, entry)?;
    let (buf, offset) = read_head(store, entry, &file, len + 1)?;
    let want = offset + len;
    if buf.len() as u64 != want {
        return Err(mismatch(
            store,
            entry,
            &format_args!("entry file is {} bytes, its header says {want}", buf.len()),
        ));
    }
    let body = &buf[offset as usize..];
    if crc32fast::hash(body) != entry.body_crc32 {
        return Err(mismatch(store, entry, &"body checksum mismatch"));
    }
    if body.is_empty() {
        return Ok(empty());
    }
    // A copy without the header: the memory tier counts what it holds.
    let body = Bytes::copy_from_slice(body);
    store.hot().insert(&entry.body_file, body.clone());
    Ok(full(body))
}

/// Opens `len` bytes of a stored body from `start`, for a 206. The checksum covers the whole
/// body, so a range is checked only against the stored length.
pub async fn hit_range_body(
    store: &Store,
    entry: &Arc<HitMeta>,
    start: u64,
    len: u64,
) -> Result<Body, HitError> {
    if let Some(body) = store.hot().get(&entry.body_file) {
        let end = start.saturating_add(len).min(body.len() as u64);
        return Ok(full(body.slice(start as usize..end as usize)));
    }
    let store = store.clone();
    let entry = entry.clone();
    // Only the open and its checks happen here; the reads happen as the client pulls.
    let (file, offset) = tokio::task::spawn_blocking(move || open_checked(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(BoxBody::new(FileBody::range(file, offset + start, len)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::store::{DiskLimits, Entry, FillProgress};
    use crate::stats::Stats;
    use http_body_util::BodyExt;

    /// A store without a memory tier: every hit reads the file.
    fn open(dir: &std::path::Path) -> (Store, Arc<Stats>) {
        let stats = Arc::new(Stats::default());
        // The last fill's job may hold a previous store (and its lock) for a moment.
        for _ in 0..100 {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            match Store::open(dir, 8, 0, DiskLimits::UNLIMITED, stats.clone(), tx) {
                Ok(store) => return (store, stats),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        panic!("cannot open the store in {}", dir.display())
    }

    async fn fill(store: &Store, body: &[u8]) -> Arc<Entry> {
        let mut f = store.begin_fill(sample(), u64::MAX, true, store.purge_epoch());
        let mut progress = f.progress();
        for c in body.chunks(16 * 1024) {
            f.push(&Bytes::copy_from_slice(c));
        }
        f.finish();
        let p = progress
            .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
            .await
            .unwrap()
            .clone();
        match p {
            FillProgress::Committed(entry, _) => entry,
            _ => panic!("fill not committed"),
        }
    }

    fn body_of(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    async fn read_rest(mut body: Body, mut got: Vec<u8>) -> Vec<u8> {
        while let Some(frame) = body.frame().await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        got
    }

    /// Entry files are replaced by a rename over the same name. A hit that opened the old
    /// file reads the old version to its end; a hit that looked the old entry up but opens
    /// after the rename is `Gone` (a miss), never the new bytes under the old head, and
    /// never counted as corrupt. Streamed (large) and one-read (small) bodies alike.
    #[tokio::test]
    async fn a_replacement_committed_mid_read_does_not_change_the_bytes_served() {
        for len in [3 * CHUNK + 5, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let (store, stats) = open(dir.path());
            let old = body_of(len, 1);
            let a = fill(&store, &old).await;
            let mut reading = hit_body(&store, &a.hit).await.ok().unwrap();
            let first = reading.frame().await.unwrap().unwrap().into_data().unwrap();

            let new = body_of(len, 2);
            let b = fill(&store, &new).await;
            assert_eq!(a.path(), b.path(), "same name, one file");
            assert!(
                read_rest(reading, first.to_vec()).await == old,
                "len {len}: torn"
            );
            assert!(
                matches!(hit_body(&store, &a.hit).await, Err(HitError::Gone)),
                "len {len}: the replaced entry must be a miss"
            );
            let now = hit_body(&store, &b.hit).await.ok().unwrap();
            assert!(
                read_rest(now, Vec::new()).await == new,
                "len {len}: new version"
            );
            assert_eq!(Stats::get(&stats.corrupt_entries), 0, "len {len}");
        }
    }

    /// A metadata-only update (a 304 refresh, a soft purge) writes a new file with the same
    /// body: readers of the old file, and hits that looked up the entry before the update,
    /// still get the whole body.
    #[tokio::test]
    async fn a_metadata_update_mid_read_keeps_every_reader_whole() {
        for len in [3 * CHUNK + 5, 1000] {
            let dir = tempfile::tempdir().unwrap();
            let (store, stats) = open(dir.path());
            let want = body_of(len, 3);
            let a = fill(&store, &want).await;
            let mut reading = hit_body(&store, &a.hit).await.ok().unwrap();
            let first = reading.frame().await.unwrap().unwrap().into_data().unwrap();

            let mut meta = a.meta.clone();
            meta.invalidated = true;
            meta.headers.push(("x-refreshed".into(), b"yes".to_vec()));
            let b = store.update_meta(&a, meta, false).unwrap().unwrap();
            assert!(b.body_offset > a.body_offset, "the header grew");
            assert!(
                read_rest(reading, first.to_vec()).await == want,
                "len {len}"
            );
            for e in [&a, &b] {
                let body = hit_body(&store, &e.hit).await.ok().unwrap();
                assert!(read_rest(body, Vec::new()).await == want, "len {len}");
            }
            // The update is on disk: a reopened store reads the new metadata.
            drop(store);
            let (store, _) = open(dir.path());
            let e = store.entries().pop().unwrap();
            assert!(e.meta.invalidated && e.meta.body_len == len as u64);
            assert_eq!(Stats::get(&stats.corrupt_entries), 0, "len {len}");
        }
    }
}

#[cfg(test)]
mod inline_tests {
    use super::*;
    use crate::cache::store::tests::{fill, open};
    use http_body_util::BodyExt;

    async fn collect(body: Body) -> Vec<u8> {
        body.collect().await.unwrap().to_bytes().to_vec()
    }

    #[tokio::test]
    async fn a_small_body_in_the_page_cache_is_read_on_the_worker() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut rx) = open(dir.path());
        fill(&store, &mut rx, &[7u8; 3000]).await;
        let entry = store.entries().pop().unwrap();
        // Just written, so in the page cache: the inline read succeeds (on tmpfs, plainly).
        let body = inline_hit(&store, &entry.hit).expect("served inline");
        assert_eq!(&body[..], &[7u8; 3000][..]);
        // It went to the memory tier, as a blocking-pool hit does.
        assert!(store.hot().get(&entry.meta.body_file).is_some());
    }

    #[tokio::test]
    async fn a_corrupt_body_is_left_to_the_checked_path() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut rx) = open(dir.path());
        fill(&store, &mut rx, &[7u8; 3000]).await;
        let entry = store.entries().pop().unwrap();
        let path = entry.path();
        let good = std::fs::read(&path).unwrap();
        let at = entry.body_offset as usize;
        let mut flipped = good.clone();
        flipped[at + 1000] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        assert!(
            inline_hit(&store, &entry.hit).is_none(),
            "flipped body byte"
        );
        let mut header = good.clone();
        header[at - 1] ^= 1;
        std::fs::write(&path, &header).unwrap();
        assert!(
            inline_hit(&store, &entry.hit).is_none(),
            "flipped header byte"
        );
        std::fs::write(&path, &good[..good.len() - 1]).unwrap();
        assert!(inline_hit(&store, &entry.hit).is_none(), "short body");
        let mut longer = good.clone();
        longer.push(7);
        std::fs::write(&path, &longer).unwrap();
        assert!(inline_hit(&store, &entry.hit).is_none(), "long body");
        std::fs::write(&path, &good).unwrap();
        assert!(inline_hit(&store, &entry.hit).is_some(), "restored");
        std::fs::write(&path, &flipped).unwrap();
        store.hot().clear();
        // The checked path then removes the entry and reports it corrupt.
        assert!(matches!(
            hit_body(&store, &entry.hit).await,
            Err(HitError::Corrupt)
        ));
        assert!(store.entries().is_empty());
    }

    #[test]
    fn tmpfs_is_told_apart() {
        let on_shm = std::path::Path::new("/dev/shm");
        if !on_shm.is_dir() {
            eprintln!("SKIP: no /dev/shm on this machine");
            return;
        }
        let dir = tempfile::tempdir_in(on_shm).unwrap();
        let (store, _rx) = open(dir.path());
        assert!(store.on_memory_fs());
    }

    /// Waits (at most 2 s) for the kept descriptors to be down to `want` free slots.
    async fn settle(store: &Store, want: usize) {
        for _ in 0..200 {
            if store.fd_budget().left() == want {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// A hot entry's file is kept open after a checked hit and read again without an `open`,
    /// within the descriptor budget; a purged or replaced entry's kept file never answers
    /// (its metadata is no longer returned), and its descriptor is closed with it.
    #[tokio::test]
    async fn a_kept_file_serves_only_its_current_version_within_the_budget() {
        use crate::cache::store::lookup::hot_tests::{fill_path, key, open};
        use crate::cache::store::{HotLookup, Lookup};
        let dir = tempfile::tempdir().unwrap();
        let (store, mut rx) = open(dir.path(), 1 << 20);
        fill_path(&store, &mut rx, "/k", &[1u8; 5000]).await;
        let hot = |store: Store| async move {
            match store.lookup_hot(&key("/k"), &http::HeaderMap::new()).await {
                HotLookup::Hot(h) => Some(h),
                HotLookup::Full(Lookup::Found(e)) => Some(e.hit.clone()),
                HotLookup::Full(_) => None,
            }
        };
        let left = store.fd_budget().left();
        let a = hot(store.clone()).await.unwrap();
        assert!(a.kept_file().is_none());
        assert_eq!(
            collect(full(inline_hit(&store, &a).unwrap())).await,
            vec![1u8; 5000]
        );
        let kept = a.kept_file().expect("kept after a checked hit");
        assert_eq!(store.fd_budget().left(), left - 1);
        // Served through the kept descriptor even with the path gone from the directory.
        let path = a.path().to_owned();
        let moved = path.with_extension("moved");
        std::fs::rename(&path, &moved).unwrap();
        assert_eq!(
            collect(full(inline_hit(&store, &a).unwrap())).await,
            vec![1u8; 5000]
        );
        std::fs::rename(&moved, &path).unwrap();
        drop(kept);

        // Replaced: the new version is served, never the kept old one.
        fill_path(&store, &mut rx, "/k", &[2u8; 5000]).await;
        let b = hot(store.clone()).await.unwrap();
        assert!(!Arc::ptr_eq(&a, &b) && b.kept_file().is_none());
        assert_eq!(
            collect(full(inline_hit(&store, &b).unwrap())).await,
            vec![2u8; 5000]
        );
        assert!(
            inline_hit(&store, &a).is_none(),
            "the replaced version never answers"
        );
        drop(a);
        // The fill's progress channel may hold the metadata for a moment after its commit.
        settle(&store, left - 1).await;
        assert_eq!(store.fd_budget().left(), left - 1, "the old one is closed");
        // Purged: no lookup returns it; its descriptor closes with its last user.
        assert!(!store.remove_page(&key("/k")).is_empty());
        assert!(hot(store.clone()).await.is_none());
        drop(b);
        settle(&store, left).await;
        assert_eq!(store.fd_budget().left(), left);

        // The budget bounds what is kept.
        let one = crate::cache::store::FdBudget::new(1);
        let file = Arc::new(File::open(dir.path().join(".lock")).unwrap());
        let stamp = Stamp::of(&file).unwrap();
        fill_path(&store, &mut rx, "/x", b"x").await;
        fill_path(&store, &mut rx, "/y", b"y").await;
        let Lookup::Found(x) = store.peek(&key("/x"), &http::HeaderMap::new()).await else {
            panic!()
        };
        let Lookup::Found(y) = store.peek(&key("/y"), &http::HeaderMap::new()).await else {
            panic!()
        };
        x.hit.keep_file(&file, stamp, &one);
        y.hit.keep_file(&file, stamp, &one);
        assert!(x.hit.kept_file().is_some() && y.hit.kept_file().is_none());
        drop(x);
        y.hit.keep_file(&file, stamp, &one);
        assert!(y.hit.kept_file().is_some());
    }
}
