//! hyper on connections the fast path read first: one request served by hyper on a
//! connection that stays with the fast path ([`OneRequest`]), and a connection handed to hyper
//! for good with the bytes already read ([`Resumed`]).
//!
//! The fast path ([`crate::fast`]) answers plain fresh hits itself. A request it does not
//! answer but whose end it knows (a complete head and no body: no `Content-Length`,
//! `Transfer-Encoding`, `Expect` or `Upgrade`) is served by hyper and the full request path,
//! as one request on a connection of its own: [`OneRequest`] gives hyper exactly that head to
//! read and writes hyper's answer to the socket. Once the answer is written, hyper reads the
//! end of its input and finishes without shutting the socket down, and the fast path goes on
//! reading the connection. So a miss, a conditional request or an admin call does not take
//! a connection off the fast path for good, as handing the rest of it to hyper would.
//!
//! "Written" is exact: the response body ([`Signalled`]) reports its end when hyper drops it,
//! which hyper does once its last bytes are in its write buffer; the end of input is given
//! only after the next flush, which hyper calls once that buffer is empty.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::body::BodyError;

/// How far the one request's answer has gone.
#[derive(Debug, Default)]
pub struct Progress {
    /// The response body ended (or was dropped unsent: HEAD, 304, an error).
    body_done: AtomicBool,
    /// hyper flushed after that: every byte of the answer is with the kernel.
    written: AtomicBool,
    /// The response asked for the connection to close.
    closes: AtomicBool,
    /// hyper's read, waiting for the end of input.
    reader: Mutex<Option<Waker>>,
}

impl Progress {
    /// Whether the answer is written in full.
    pub fn written(&self) -> bool {
        self.written.load(Ordering::Acquire)
    }

    /// Whether the response said `Connection: close`.
    pub fn closes(&self) -> bool {
        self.closes.load(Ordering::Acquire)
    }

    /// Records that the response says `Connection: close`.
    pub fn close_after(&self) {
        self.closes.store(true, Ordering::Release);
    }

    fn wake_reader(&self) {
        let waker = self.reader.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The connection as hyper sees it for one request: `head`, then (once the answer is
/// written) the end of input; writes go to the socket.
#[derive(Debug)]
pub struct OneRequest<'a> {
    head: Bytes,
    stream: &'a TcpStream,
    progress: Arc<Progress>,
}

impl<'a> OneRequest<'a> {
    /// hyper's view of `stream` for the request `head`.
    pub fn new(head: Bytes, stream: &'a TcpStream, progress: Arc<Progress>) -> Self {
        OneRequest {
            head,
            stream,
            progress,
        }
    }
}

impl AsyncRead for OneRequest<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.head.is_empty() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        if self.progress.written() {
            return Poll::Ready(Ok(())); // the end of input
        }
        *self
            .progress
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        // Written meanwhile: its wake-up may have found no waker.
        if self.progress.written() {
            return Poll::Ready(Ok(()));
        }
        // A client that closes its side while its answer is on the way: hyper is told, as
        // it would be on a connection of its own, and drops the request. A pipelined next
        // request is only peeked at: it stays on the socket for the fast path.
        let mut probe = [0u8; 1];
        let mut probe = ReadBuf::new(&mut probe);
        match self.stream.poll_peek(cx, &mut probe) {
            Poll::Ready(Ok(0)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for OneRequest<'_> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                res => return Poll::Ready(res),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// hyper flushes once its write buffer is empty: after the body's end, that is the
    /// whole answer.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.progress.body_done.load(Ordering::Acquire) && !self.progress.written() {
            self.progress.written.store(true, Ordering::Release);
            self.progress.wake_reader();
        }
        Poll::Ready(Ok(()))
    }

    /// The socket stays open: the fast path goes on with it.
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A response body that reports its end (its drop) to [`Progress`].
pub struct Signalled<B> {
    inner: B,
    progress: Arc<Progress>,
}

impl<B> Signalled<B> {
    /// `inner`, reporting to `progress`.
    pub fn new(inner: B, progress: Arc<Progress>) -> Self {
        Signalled { inner, progress }
    }
}

impl<B: HttpBody<Data = Bytes, Error = BodyError> + Unpin> HttpBody for Signalled<B> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Signalled<B> {
    fn drop(&mut self) {
        self.progress.body_done.store(true, Ordering::Release);
        // hyper flushes next; a reader parked before that is woken by the flush.
        self.progress.wake_reader();
    }
}

/// A connection handed over by the fast path: the bytes it read but did not serve come first,
/// then the socket. Writes go straight to the socket.
#[derive(Debug)]
pub struct Resumed<IO> {
    read: Bytes,
    io: IO,
}

impl<IO> Resumed<IO> {
    /// `io`, whose next bytes are `read`.
    pub fn new(read: Bytes, io: IO) -> Self {
        Resumed { read, io }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Resumed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.read.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.read.len().min(buf.remaining());
        buf.put_slice(&self.read[..n]);
        self.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Resumed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
