//! Detection of ambiguous request framing that hyper accepts silently.
//!
//! hyper follows RFC 9112 leniently: it merges repeated identical `Content-Length` lines, and
//! for a request with both `Transfer-Encoding` and `Content-Length` it drops the length and
//! closes the connection afterwards. A CDN in front of other HTTP software must be stricter,
//! because the next hop may frame the same bytes differently (request smuggling), so caje
//! answers such requests with 400 and closes the connection. hyper removes the evidence before
//! the service runs, so this wrapper watches the bytes of the connection as hyper reads them:
//! it parses each request head with `httparse`, follows the body framing to find the next
//! head, and records the number of the first request whose framing is ambiguous.
//!
//! The scanner only ever adds a rejection; when it cannot follow the stream (an unparsable
//! head, an oversized line) it stops and leaves every decision to hyper.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::interim::InterimSink;

/// Shared between a connection's reader and its service: the 1-based number of the first
/// request with ambiguous framing, or 0.
#[derive(Debug, Default)]
pub struct Verdict(AtomicU64);

impl Verdict {
    /// Whether request number `n` (1-based, in connection order) must be rejected.
    pub fn rejects(&self, n: u64) -> bool {
        self.0.load(Ordering::Acquire) == n
    }
}

#[derive(Debug)]
enum State {
    Head,
    Body(u64),
    ChunkSize,
    ChunkData(u64),
    ChunkEnd(u8),
    Trailers,
    Off,
}

/// The byte-stream scanner (separate from the I/O wrapper so it can be tested directly).
#[derive(Debug)]
pub struct Scanner {
    state: State,
    buf: Vec<u8>,
    requests: u64,
    max_head: usize,
    max_headers: usize,
    verdict: Arc<Verdict>,
}

impl Scanner {
    /// A scanner for heads of at most `max_head` bytes and `max_headers` fields.
    pub fn new(max_head: usize, max_headers: usize, verdict: Arc<Verdict>) -> Scanner {
        Scanner {
            state: State::Head,
            buf: Vec::new(),
            requests: 0,
            max_head,
            max_headers,
            verdict,
        }
    }

    /// Feeds bytes read from the client.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Off => return,
                State::Head => {
                    let searched = self.buf.len().saturating_sub(3);
                    self.buf.extend_from_slice(data);
                    match find(&self.buf[searched..], b"\r\n\r\n") {
                        Some(at) => {
                            let end = searched + at + 4;
                            let rest = self.buf.split_off(end);
                            let head = std::mem::take(&mut self.buf);
                            self.on_head(&head);
                            // `rest` holds the bytes after the head; continue with them.
                            self.buf = Vec::new();
                            self.feed_owned(rest);
                            return;
                        }
                        None if self.buf.len() > self.max_head => self.state = State::Off,
                        None => {}
                    }
                    return;
                }
                State::Body(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::Head
                    } else {
                        State::Body(n - take)
                    };
                }
                State::ChunkData(n) => {
                    let take = n.min(data.len() as u64);
                    data = &data[take as usize..];
                    self.state = if n == take {
                        State::ChunkEnd(2)
                    } else {
                        State::ChunkData(n - take)
                    };
                }
                State::ChunkEnd(k) => {
                    let take = (k as usize).min(data.len());
                    data = &data[take..];
                    self.state = if take == k as usize {
                        State::ChunkSize
                    } else {
                        State::ChunkEnd(k - take as u8)
                    };
                }
                State::ChunkSize | State::Trailers => {
                    let Some(nl) = data.iter().position(|&b| b == b'\n') else {
                        self.buf.extend_from_slice(data);
                        if self.buf.len() > 4096 {
                            self.state = State::Off;
                        }
                        return;
                    };
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    let line = std::mem::take(&mut self.buf);
                    self.on_line(&line);
                }
            }
        }
    }

    fn feed_owned(&mut self, rest: Vec<u8>) {
        if !rest.is_empty() {
            self.feed(&rest);
        }
    }

    fn on_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        match self.state {
            State::ChunkSize => {
                let size = line.split(|&b| b == b';').next().unwrap_or(b"");
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok());
                self.state = match size {
                    Some(0) => State::Trailers,
                    Some(n) => State::ChunkData(n),
                    None => State::Off,
                };
            }
            State::Trailers if line.is_empty() => self.state = State::Head,
            _ => {}
        }
    }

    fn on_head(&mut self, head: &[u8]) {
        let mut headers = vec![httparse::EMPTY_HEADER; self.max_headers.max(1)];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(head) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => {
                self.state = State::Off;
                return;
            }
        }
        self.requests += 1;
        let mut lengths = 0;
        let mut length = None;
        let mut te = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                lengths += 1;
                if h.value.contains(&b',') {
                    lengths += 1;
                }
                length = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok());
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                te = Some(h.value);
            }
        }
        if lengths > 1 || (te.is_some() && lengths > 0) {
            let _ = self.verdict.0.compare_exchange(
                0,
                self.requests,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            self.state = State::Off;
            return;
        }
        self.state = match (te, length) {
            (Some(_), _) => State::ChunkSize,
            (None, Some(0)) | (None, None) if lengths == 0 => State::Head,
            (None, Some(0)) => State::Head,
            (None, Some(n)) => State::Body(n),
            (None, None) => State::Off,
        };
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Wraps a client connection, feeding every byte hyper reads to a [`Scanner`], and writing
/// queued interim responses ([`crate::interim`]) before hyper's next write.
pub struct Watched<IO> {
    io: IO,
    scanner: Scanner,
    interim: Arc<InterimSink>,
}

impl<IO> Watched<IO> {
    /// Wraps `io`.
    pub fn new(io: IO, scanner: Scanner, interim: Arc<InterimSink>) -> Self {
        Watched {
            io,
            scanner,
            interim,
        }
    }
}

impl<IO: AsyncWrite + Unpin> Watched<IO> {
    /// Writes the queued interim responses; `Pending` until all of them are written.
    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut queued = self.interim.take();
        let mut written = 0;
        while written < queued.len() {
            match Pin::new(&mut self.io).poll_write(cx, &queued[written..]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    self.interim.put_back(&queued.split_off(written));
                    return Poll::Pending;
                }
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            this.scanner.feed(&buf.filled()[before..]);
        }
        res
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_interim(cx))?;
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_interim(cx))?;
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict_of(chunks: &[&[u8]]) -> u64 {
        let v = Arc::new(Verdict::default());
        let mut s = Scanner::new(65536, 100, v.clone());
        for c in chunks {
            s.feed(c);
        }
        v.0.load(Ordering::Acquire)
    }

    #[test]
    fn clean_pipelined_requests_pass() {
        let stream = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nPOST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloPOST /y HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\nGET /z HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(verdict_of(&[stream]), 0);
        // The same bytes split at every position give the same verdict.
        for i in 1..stream.len() {
            assert_eq!(verdict_of(&[&stream[..i], &stream[i..]]), 0, "split at {i}");
        }
    }

    #[test]
    fn duplicate_content_length_is_flagged_with_its_request_number() {
        let stream =
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(verdict_of(&[stream]), 2);
        assert_eq!(
            verdict_of(&[b"GET / HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx"]),
            1
        );
    }

    #[test]
    fn te_with_content_length_is_flagged() {
        let stream =
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(verdict_of(&[stream]), 1);
        let reversed =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n";
        assert_eq!(verdict_of(&[reversed]), 1);
    }

    #[test]
    fn a_smuggled_head_inside_a_body_is_not_parsed_as_a_request() {
        let body = b"GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let mut stream = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(body);
        assert_eq!(verdict_of(&[&stream]), 0);
    }
}
