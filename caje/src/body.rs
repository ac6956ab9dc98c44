//! Response bodies: the tee that streams a miss to the client while filling the cache, the
//! reader that serves a hit from disk, and the error type both use.
//!
//! Both paths stream in bounded chunks: no body is ever held whole in memory, except a hit
//! small enough to be one read (≤ [`SMALL_BODY`]), which is verified before the first byte
//! is sent so that a corrupt small entry becomes a clean miss.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::cache::store::Fill;
use crate::stats::Stats;

/// Error of a streamed body; hyper aborts the client connection when it sees one.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response caje sends.
pub type Body = BoxBody<Bytes, BodyError>;

/// Hits up to this size are read and verified in one go before responding.
pub const SMALL_BODY: u64 = 256 * 1024;

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
    /// Whether a fill was attached at the start.
    had_fill: bool,
    /// Whether the fill received the whole body.
    finished: bool,
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
            had_fill: fill.is_some(),
            fill,
            expected,
            seen: 0,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stats,
            waiting_for_disk: None,
            finished: false,
        }
    }

    /// Whether the fill attached at the start was given up before the whole body reached it
    /// (too large, the disk failed or fell behind, or the origin body failed).
    pub fn abandoned(&self) -> bool {
        self.had_fill && !self.finished && !self.fill.as_ref().is_some_and(Fill::is_active)
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
        // Drop can run outside a runtime (at shutdown); then the partial fill is discarded
        // (dropped with this tee's fields).
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // A runtime that is shutting down drops every task still running on its workers,
        // and drops a task spawned meanwhile at once, inside `spawn`: that drop is the
        // drain's own tee, which would spawn again, and so on until the stack overflows (a
        // SIGTERM in the middle of a fill aborted the process). A drop nested in this spawn
        // discards its partial fill instead. Checked before the rest is taken out: whatever
        // is returned here must not be an active tee, or its drop would start over.
        if DRAIN_SPAWNING.with(|spawning| spawning.get()) {
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
            had_fill: true,
            finished: false,
        };
        DRAIN_SPAWNING.with(|spawning| spawning.set(true));
        handle.spawn(rest.drain());
        DRAIN_SPAWNING.with(|spawning| spawning.set(false));
    }
}

thread_local! {
    /// Set while [`Tee`]'s drop spawns the drain of the rest of a body on this thread.
    static DRAIN_SPAWNING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
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
                    this.stats
                        .origin_body_bytes
                        .fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    if let Some(fill) = &mut this.fill {
                        fill.push(data);
                    }
                    // hyper stops polling a body once its declared length is written, so
                    // the end of a sized body is seen here, not as a final `None`.
                    if this.expected == Some(this.seen) {
                        if let Some(fill) = this.fill.take() {
                            this.finished = fill.is_active();
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
                    this.finished = fill.is_active();
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
