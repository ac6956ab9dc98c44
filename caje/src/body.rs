//! Response bodies: the tee that streams a miss to the client while filling the cache, the
//! reader that serves a hit from disk, and the error type both use.
//!
//! Both paths stream in bounded chunks: no body is ever held whole in memory, except a hit
//! small enough to be one read (≤ [`SMALL_BODY`]), which is verified before the first byte
//! is sent so that a corrupt small entry becomes a clean miss.

use std::future::Future;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, Sleep};

use crate::cache::store::{Entry, Fill, FillProgress, Store};
use crate::stats::Stats;

/// Error of a streamed body; hyper aborts the client connection when it sees one.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response caje sends.
pub type Body = BoxBody<Bytes, BodyError>;

/// Hits up to this size are read and verified in one go before responding.
pub const SMALL_BODY: u64 = 256 * 1024;
/// Read size for large hits.
const CHUNK: usize = 256 * 1024;

/// A complete in-memory body.
pub fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A body error with a message.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The origin stopped sending for longer than the body idle timeout.
    #[error("origin sent no body data for {0:?}")]
    Idle(Duration),
    /// The origin closed the body before its declared length.
    #[error("origin body ended after {got} of {want} bytes")]
    Short {
        /// Bytes received.
        got: u64,
        /// Bytes declared.
        want: u64,
    },
    /// A stored body failed its checksum while being served.
    #[error("cached body failed its checksum")]
    Corrupt,
    /// Reading a stored body failed.
    #[error("reading cached body: {0}")]
    Io(#[from] std::io::Error),
}

/// Streams an origin body to the client and, while a [`Fill`] is attached, into the cache.
///
/// The fill is finished only when the body ends cleanly with the declared length; any error
/// or early end drops it (the partial entry is discarded) and is passed on to the client, so
/// the client connection is aborted rather than ending as a short 200.
///
/// If the client goes away while the fill is still active, the rest of the body is drained
/// into the cache in the background: the origin fetch is not wasted, and requests coalesced
/// onto this fill still get their copy.
pub struct Tee {
    inner: Option<Incoming>,
    fill: Option<Fill>,
    expected: Option<u64>,
    seen: u64,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    stats: Arc<Stats>,
    /// Since when the tee has been waiting for the disk writer (backpressure).
    waiting_for_disk: Option<Instant>,
}

impl Tee {
    /// Wraps `inner`; `expected` is the origin's Content-Length if any.
    pub fn new(
        inner: Incoming,
        fill: Option<Fill>,
        expected: Option<u64>,
        idle: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Tee {
            inner: Some(inner),
            fill,
            expected,
            seen: 0,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stats,
            waiting_for_disk: None,
        }
    }

    fn fail(&mut self) {
        self.fill = None;
        Stats::incr(&self.stats.origin_errors);
    }

    /// Reads the whole body into the fill without a client (background refreshes, and the
    /// rest of a body whose client went away). Returns whether the body completed.
    pub async fn drain(mut self) -> bool {
        loop {
            match self.frame().await {
                Some(Ok(_)) => {}
                Some(Err(_)) => return false,
                None => return true,
            }
        }
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        let active = self.fill.as_ref().is_some_and(Fill::is_active);
        if !active {
            return;
        }
        let (Some(inner), Some(fill)) = (self.inner.take(), self.fill.take()) else {
            return;
        };
        let rest = Tee {
            inner: Some(inner),
            fill: Some(fill),
            expected: self.expected,
            seen: self.seen,
            idle: self.idle,
            timer: Box::pin(tokio::time::sleep(self.idle)),
            stats: self.stats.clone(),
            waiting_for_disk: None,
        };
        // Drop can run outside a runtime (at shutdown); then the partial fill is discarded.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(rest.drain());
        }
    }
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // Backpressure: while the disk writer is far behind, stop reading from the origin
        // (memory stays bounded). A disk stuck for longer than the body idle timeout loses
        // the fill instead of the client losing the response.
        if let Some(fill) = &this.fill {
            if fill.poll_ready(cx).is_pending() {
                let since = *this.waiting_for_disk.get_or_insert_with(Instant::now);
                if since.elapsed() < this.idle && this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.stats
                    .store_failed("writer", &"the disk fell behind the origin for too long");
                this.fill = None;
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
            }
        }
        this.waiting_for_disk = None;
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if let Some(fill) = &mut this.fill {
                        fill.push(data);
                    }
                    // hyper stops polling a body once its declared length is written, so
                    // the end of a sized body is seen here, not as a final `None`.
                    if this.expected == Some(this.seen) {
                        if let Some(fill) = this.fill.take() {
                            fill.finish();
                        }
                    }
                }
                let deadline = Instant::now() + this.idle;
                this.timer.as_mut().reset(deadline);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.fail();
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                if let Some(want) = this.expected.filter(|&w| w != this.seen) {
                    let got = this.seen;
                    this.fail();
                    return Poll::Ready(Some(Err(StreamError::Short { got, want }.into())));
                }
                if let Some(fill) = this.fill.take() {
                    fill.finish();
                }
                Poll::Ready(None)
            }
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.fail();
                    return Poll::Ready(Some(Err(StreamError::Idle(this.idle).into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // Report the end only after poll_frame saw it, so the fill is always finished.
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Streams the body of a fill in progress, for a request coalesced onto it: reads the temp
/// file as the writer extends it, then the committed body. Fails (aborting the client
/// connection) if the fill fails.
pub fn follow_fill(progress: watch::Receiver<FillProgress>, expected: Option<u64>) -> Body {
    let (tx, rx) = mpsc::channel(2);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || follow(progress, &handle, tx));
    BoxBody::new(ChannelBody {
        rx,
        remaining: expected.unwrap_or(0),
        exact: expected.is_some(),
    })
}

fn follow(
    mut progress: watch::Receiver<FillProgress>,
    handle: &tokio::runtime::Handle,
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
) {
    let mut sent = 0u64;
    loop {
        let state = progress.borrow_and_update().clone();
        // The writer's own descriptor: no path is opened, so neither the commit's rename nor
        // an eviction's unlink can make the body disappear mid-stream.
        let (available, done, file) = match &state {
            FillProgress::Starting => (0, false, None),
            FillProgress::Writing { file, written, .. } => (*written, false, Some(file)),
            FillProgress::Committed(entry, file) => (entry.meta.body_len, true, Some(file)),
            FillProgress::Failed => {
                let _ = tx.blocking_send(Err("the coalesced origin fetch failed".into()));
                return;
            }
        };
        if let Some(f) = file {
            use std::os::unix::fs::FileExt;
            while sent < available {
                let want = (available - sent).min(CHUNK as u64) as usize;
                let mut buf = BytesMut::zeroed(want);
                if let Err(e) = f.read_exact_at(&mut buf, sent) {
                    let _ = tx.blocking_send(Err(StreamError::Io(e).into()));
                    return;
                }
                sent += want as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return; // client went away
                }
            }
        }
        if done {
            return;
        }
        if handle.block_on(progress.changed()).is_err() {
            // The writer is gone without a final state.
            let _ = tx.blocking_send(Err("the coalesced origin fetch ended early".into()));
            return;
        }
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
    let store = store.clone();
    let entry = entry.clone();
    let opened = tokio::task::spawn_blocking(move || open_body(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(opened)
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
    // Two chunks in flight: the reader stays just ahead of the client.
    let (tx, rx) = mpsc::channel(2);
    let store = store.clone();
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || stream_file(file, &store, &entry, tx));
    Ok(BoxBody::new(ChannelBody {
        rx,
        remaining: len,
        exact: true,
    }))
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
    tokio::task::spawn_blocking(move || {
        use std::io::{Seek, SeekFrom};
        let mut file = open_checked(&store, &entry)?;
        if file.seek(SeekFrom::Start(start)).is_err() {
            return Err(HitError::Gone);
        }
        let (tx, rx) = mpsc::channel(2);
        tokio::task::spawn_blocking(move || {
            let mut left = len;
            while left > 0 {
                let mut buf = BytesMut::zeroed(left.min(CHUNK as u64) as usize);
                if let Err(e) = file.read_exact(&mut buf) {
                    let _ = tx.blocking_send(Err(StreamError::Io(e).into()));
                    return;
                }
                left -= buf.len() as u64;
                if tx.blocking_send(Ok(buf.freeze())).is_err() {
                    return;
                }
            }
        });
        Ok(BoxBody::new(ChannelBody {
            rx,
            remaining: len,
            exact: true,
        }))
    })
    .await
    .map_err(|_| HitError::Gone)?
}

/// Reads a large body in chunks into `tx`, verifying the checksum at the end.
fn stream_file(
    mut file: std::fs::File,
    store: &Store,
    entry: &Arc<Entry>,
    tx: mpsc::Sender<Result<Bytes, BodyError>>,
) {
    let mut crc = crc32fast::Hasher::new();
    let mut total = 0u64;
    loop {
        let mut buf = BytesMut::zeroed(CHUNK);
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                let _ = tx.blocking_send(Err(StreamError::Io(e).into()));
                return;
            }
        };
        if n == 0 {
            break;
        }
        buf.truncate(n);
        total += n as u64;
        crc.update(&buf);
        if total == entry.meta.body_len && crc.clone().finalize() != entry.meta.body_crc32 {
            // Withhold the last chunk so the client never receives a complete-looking body.
            store.remove_corrupt(entry, &"body checksum mismatch while serving");
            let _ = tx.blocking_send(Err(StreamError::Corrupt.into()));
            return;
        }
        if tx.blocking_send(Ok(buf.freeze())).is_err() {
            return; // client went away
        }
    }
    if total != entry.meta.body_len {
        store.remove_corrupt(entry, &"body shorter than its metadata");
        let _ = tx.blocking_send(Err(StreamError::Corrupt.into()));
    }
}

/// A body fed by a channel of chunks.
struct ChannelBody {
    rx: mpsc::Receiver<Result<Bytes, BodyError>>,
    /// Bytes still expected, when the length is known (`exact`).
    remaining: u64,
    exact: bool,
}

impl HttpBody for ChannelBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(data))) => {
                self.remaining = self.remaining.saturating_sub(data.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) if self.exact && self.remaining > 0 => {
                Poll::Ready(Some(Err(StreamError::Corrupt.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        if self.exact {
            SizeHint::with_exact(self.remaining)
        } else {
            SizeHint::default()
        }
    }
}
