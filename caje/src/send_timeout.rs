//! Disconnecting clients that stop reading (nginx's `send_timeout`).
//!
//! A client that opens a response and never reads it holds its connection, and whatever
//! feeds that connection, for as long as it likes. [`SendTimeout`] wraps a connection's
//! socket: when a write has made no progress for `server.send_timeout_ms`, the write fails
//! with `TimedOut`, hyper drops the connection, and everything streaming into it (a disk
//! read, a coalesced fill) is released. The timer runs only while a write is blocked, so a
//! client that reads slowly but steadily is never cut off.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A socket whose writes fail after `timeout` without progress.
pub struct SendTimeout<IO> {
    io: IO,
    timeout: Duration,
    /// Armed while a write is blocked; `None` while writes make progress.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<IO> SendTimeout<IO> {
    /// Wraps `io`.
    pub fn new(io: IO, timeout: Duration) -> Self {
        SendTimeout {
            io,
            timeout,
            stalled: None,
        }
    }

    /// Passes a write's result through, arming the stall timer while it is pending and
    /// failing it once the timer fires.
    fn watch<T>(&mut self, cx: &mut Context<'_>, res: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match res {
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the client read nothing for {timeout:?} (server.send_timeout_ms)"),
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SendTimeout<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SendTimeout<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, res)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, res)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let res = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, res)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let res = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, res)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_reader_that_stops_is_cut_off() {
        // A 1 KiB duplex pipe whose other end never reads: the second write blocks.
        let (a, _b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_millis(100));
        let start = Instant::now();
        let err = async {
            loop {
                w.write_all(&[0u8; 4096]).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), io::Error>(())
        }
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
    }

    #[tokio::test]
    async fn a_slow_but_steady_reader_is_kept() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(1024);
        let mut w = SendTimeout::new(a, Duration::from_millis(150));
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut total = 0;
            while total < 16 * 1024 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                total += b.read(&mut buf).await.unwrap();
            }
            total
        });
        // 16 KiB through a 1 KiB pipe at 512 B / 20 ms takes ~640 ms, far longer than the
        // timeout, but no single write waits more than ~20 ms.
        w.write_all(&[1u8; 16 * 1024]).await.unwrap();
        assert!(reader.await.unwrap() >= 16 * 1024);
    }
}
