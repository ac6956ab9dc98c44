//! A pull-based body over a file: each frame is one bounded positional read on the blocking
//! pool, started only when hyper asks for the next frame.
//!
//! Between frames no thread is held, so a client that stops reading costs a socket and a
//! file descriptor, never one of the blocking threads that every disk hit and fill needs
//! (the model of Varnish's and nginx's event-driven senders). A stalled client is then cut
//! off by `server.send_timeout_ms` ([`crate::send_timeout`]).

use std::fs::File;
use std::future::Future;
use std::io::Read as _;
use std::os::unix::fs::FileExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use tokio::task::JoinHandle;

use crate::body::{empty, full, Body, BodyError, StreamError, SMALL_BODY};
use crate::cache::store::{Entry, Store};

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
    entry: Arc<Entry>,
}

type Read = JoinHandle<(Result<Bytes, StreamError>, Option<Check>)>;

/// Streams bytes `pos..end` of a file, one read per frame.
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
    pub fn verified(file: File, store: Store, entry: Arc<Entry>) -> Self {
        let end = entry.meta.body_len;
        FileBody {
            file: Arc::new(file),
            pos: 0,
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

    /// Bytes `start..start + len` of a file, unverified (a range of a stored body: the
    /// checksum covers the whole body only).
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
        if last && c.crc.clone().finalize() != c.entry.meta.body_crc32 {
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
pub async fn hit_body(store: &Store, entry: &Arc<Entry>) -> Result<Body, HitError> {
    // The memory tier answers without a trip to the blocking pool.
    if let Some(body) = store.hot().get(&entry.meta.body_file) {
        return Ok(full(body));
    }
    if let Some(body) = inline_hit(store, entry) {
        return Ok(body);
    }
    let store = store.clone();
    let entry = entry.clone();
    let opened = tokio::task::spawn_blocking(move || open_body(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(opened)
}

/// Largest body [`inline_hit`] reads on the async worker.
const INLINE_MAX: u64 = 64 * 1024;

/// Serves a small body straight from the page cache, on the async worker, when it is there.
///
/// A hop to the blocking pool costs two context switches, which on a busy node cost more than
/// the read (perf on the `many` bench: a fifth of the CPU in `finish_task_switch`). Like
/// nginx, which reads cached files on its event loop, this reads on the worker, but only with
/// `RWF_NOWAIT`: the kernel copies what the page cache holds and refuses (`EAGAIN`) rather than
/// wait for the disk. On tmpfs, which does not support that flag but never waits for a disk
/// either, it is a plain read. Anything unusual (not cached, a short or failed read, a length or
/// checksum mismatch, an entry replaced meanwhile) returns `None`, and the caller takes the
/// blocking path, which decides and reports exactly as before; nothing is removed here.
fn inline_hit(store: &Store, entry: &Arc<Entry>) -> Option<Body> {
    let len = entry.meta.body_len;
    if len == 0 || len > INLINE_MAX {
        return None;
    }
    let memory = store.on_memory_fs();
    // `open` does not wait for data; on a warm dentry cache it is a few microseconds.
    let file = std::fs::File::open(entry.body_path()).ok()?;
    let mut buf = vec![0u8; len as usize];
    let mut done = 0usize;
    while done < buf.len() {
        let n = pread_nowait(&file, &mut buf[done..], done as u64, memory)?;
        if n == 0 {
            return None; // shorter than its metadata: the blocking path removes it
        }
        done += n;
    }
    // One more byte would mean the file is longer than its metadata says.
    if pread_nowait(&file, &mut [0u8; 1], len, memory).is_none_or(|n| n != 0) {
        return None;
    }
    if crc32fast::hash(&buf) != entry.meta.body_crc32 {
        return None;
    }
    let body = Bytes::from(buf);
    store.hot().insert(&entry.meta.body_file, body.clone());
    Some(full(body))
}

/// `preadv2(RWF_NOWAIT)` (a plain `pread` on a memory file system): bytes read, or `None` if
/// the data is not in the page cache (or the file system does not support the flag, or any
/// other error).
fn pread_nowait(file: &File, buf: &mut [u8], pos: u64, memory_fs: bool) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let pos = libc::off_t::try_from(pos).ok()?;
    // SAFETY: `iov` points at `buf`, which is valid for writes of `buf.len()` bytes and
    // outlives the call; the fd is owned by `file`, open for the duration of the call.
    let flags = if memory_fs { 0 } else { libc::RWF_NOWAIT };
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, pos, flags) };
    usize::try_from(n).ok()
}

/// Opens a stored body and checks its length against the metadata. A body that is missing
/// because the entry was just replaced is `Gone`; any other mismatch removes the entry.
fn open_checked(store: &Store, entry: &Arc<Entry>) -> Result<std::fs::File, HitError> {
    let file = match std::fs::File::open(entry.body_path()) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !store.is_current(entry) => {
            return Err(HitError::Gone)
        }
        Err(e) => {
            store.remove_corrupt(entry, &format_args!("cannot open body: {e}"));
            return Err(HitError::Corrupt);
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    if len != entry.meta.body_len {
        store.remove_corrupt(
            entry,
            &format_args!("body is {len} bytes, metadata says {}", entry.meta.body_len),
        );
        return Err(HitError::Corrupt);
    }
    Ok(file)
}

fn open_body(store: &Store, entry: &Arc<Entry>) -> Result<Body, HitError> {
    let mut file = open_checked(store, entry)?;
    let len = entry.meta.body_len;
    if len <= SMALL_BODY {
        let mut buf = Vec::with_capacity(len as usize);
        if let Err(e) = file.read_to_end(&mut buf) {
            store.remove_corrupt(entry, &format_args!("reading body: {e}"));
            return Err(HitError::Corrupt);
        }
        if buf.len() as u64 != len || crc32fast::hash(&buf) != entry.meta.body_crc32 {
            store.remove_corrupt(entry, &"body checksum mismatch");
            return Err(HitError::Corrupt);
        }
        if buf.is_empty() {
            return Ok(empty());
        }
        let body = Bytes::from(buf);
        store.hot().insert(&entry.meta.body_file, body.clone());
        return Ok(full(body));
    }
    Ok(BoxBody::new(FileBody::verified(
        file,
        store.clone(),
        entry.clone(),
    )))
}

/// Opens `len` bytes of a stored body from `start`, for a 206. The checksum covers the whole
/// body, so a range is checked only against the stored length.
pub async fn hit_range_body(
    store: &Store,
    entry: &Arc<Entry>,
    start: u64,
    len: u64,
) -> Result<Body, HitError> {
    if let Some(body) = store.hot().get(&entry.meta.body_file) {
        let end = start.saturating_add(len).min(body.len() as u64);
        return Ok(full(body.slice(start as usize..end as usize)));
    }
    let store = store.clone();
    let entry = entry.clone();
    // Only the open and its length check happen here; the reads happen as the client pulls.
    let file = tokio::task::spawn_blocking(move || open_checked(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(BoxBody::new(FileBody::range(file, start, len)))
}

#[cfg(test)]
mod tests {
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
        let body = inline_hit(&store, &entry).expect("served inline");
        assert_eq!(collect(body).await, vec![7u8; 3000]);
        // It went to the memory tier, as a blocking-pool hit does.
        assert!(store.hot().get(&entry.meta.body_file).is_some());
    }

    #[tokio::test]
    async fn a_corrupt_body_is_left_to_the_checked_path() {
        let dir = tempfile::tempdir().unwrap();
        let (store, mut rx) = open(dir.path());
        fill(&store, &mut rx, &[7u8; 3000]).await;
        let entry = store.entries().pop().unwrap();
        let path = entry.body_path();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(inline_hit(&store, &entry).is_none(), "flipped byte");
        std::fs::write(&path, &bytes[..2999]).unwrap();
        assert!(inline_hit(&store, &entry).is_none(), "short body");
        let mut longer = vec![7u8; 3000];
        longer.push(0);
        std::fs::write(&path, &longer).unwrap();
        assert!(inline_hit(&store, &entry).is_none(), "long body");
        // The checked path then removes the entry and reports it corrupt.
        assert!(matches!(
            hit_body(&store, &entry).await,
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
}
