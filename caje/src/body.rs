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
use tokio::sync::mpsc;
use tokio::time::{Instant, Sleep};

use crate::cache::store::{Entry, Fill, Store};
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
pub struct Tee<B> {
    inner: B,
    fill: Option<Fill>,
    expected: Option<u64>,
    seen: u64,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    stats: Arc<Stats>,
}

impl<B> Tee<B> {
    /// Wraps `inner`; `expected` is the origin's Content-Length if any.
    pub fn new(
        inner: B,
        fill: Option<Fill>,
        expected: Option<u64>,
        idle: Duration,
        stats: Arc<Stats>,
    ) -> Self {
        Tee {
            inner,
            fill,
            expected,
            seen: 0,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stats,
        }
    }

    fn fail(&mut self) {
        self.fill = None;
        Stats::incr(&self.stats.origin_errors);
    }
}

impl<B> HttpBody for Tee<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
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
        self.inner.size_hint()
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
    let store = store.clone();
    let entry = entry.clone();
    let opened = tokio::task::spawn_blocking(move || open_body(&store, &entry))
        .await
        .map_err(|_| HitError::Gone)??;
    Ok(opened)
}

fn open_body(store: &Store, entry: &Arc<Entry>) -> Result<Body, HitError> {
    let path = entry.body_path();
    let mut file = match std::fs::File::open(&path) {
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
        return Ok(if buf.is_empty() { empty() } else { full(buf) });
    }
    // Two chunks in flight: the reader stays just ahead of the client.
    let (tx, rx) = mpsc::channel(2);
    let store = store.clone();
    let entry = entry.clone();
    tokio::task::spawn_blocking(move || stream_file(file, &store, &entry, tx));
    Ok(BoxBody::new(ChannelBody { rx, remaining: len }))
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
    remaining: u64,
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
            Poll::Ready(None) if self.remaining > 0 => {
                Poll::Ready(Some(Err(StreamError::Corrupt.into())))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}
