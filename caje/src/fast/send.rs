//! Writing a hit to the socket: `writev` from memory, `sendfile` from a kept file, each
//! wait bounded by `server.send_timeout_ms`.

use std::io::{self, IoSlice};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::sys::sendfile::sendfile64;
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::answer::Source;

/// Sends a hit: head and body from memory in one `writev`; a file's head held back with
/// `MSG_MORE` and its body sent by `sendfile`, so both leave in full segments.
pub(super) async fn send(
    stream: &TcpStream,
    head: &[u8],
    body: &Source,
    timeout: Duration,
) -> io::Result<()> {
    match body {
        Source::Empty => write_all(stream, head, &[], timeout).await,
        Source::Memory(b) => write_all(stream, head, b, timeout).await,
        Source::File { file, offset, len } => {
            let mut done = 0;
            while done < head.len() {
                let sent = stream.try_io(Interest::WRITABLE, || send_more(stream, &head[done..]));
                match sent {
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        writable(stream, timeout).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            let end = offset + len;
            let mut at = *offset as i64;
            while (at as u64) < end {
                let count = (end - at as u64) as usize;
                let sent = stream.try_io(Interest::WRITABLE, || {
                    sendfile64(stream, &**file, Some(&mut at), count).map_err(io::Error::from)
                });
                match sent {
                    // Shorter than checked: the client gets a cut connection, never a short
                    // body presented as whole.
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        writable(stream, timeout).await?
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// `send(2)` with `MSG_MORE`: the kernel holds the bytes until the body that follows.
fn send_more(stream: &TcpStream, bytes: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_MORE | libc::MSG_NOSIGNAL;
    // SAFETY: the pointer and length are those of a live slice, and the descriptor is the
    // stream's own, open for as long as `stream` is borrowed.
    let n = unsafe {
        libc::send(
            stream.as_raw_fd(),
            bytes.as_ptr().cast(),
            bytes.len(),
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Waits until the socket takes more, for at most `timeout` (`server.send_timeout_ms`).
async fn writable(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    match tokio::time::timeout(timeout, stream.writable()).await {
        Ok(ready) => ready,
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}

/// Writes `head` and `body`, waiting at most `timeout` each time the socket is full.
async fn write_all(
    stream: &TcpStream,
    head: &[u8],
    body: &[u8],
    timeout: Duration,
) -> io::Result<()> {
    let mut done = 0;
    let total = head.len() + body.len();
    while done < total {
        let slices = if done < head.len() {
            [IoSlice::new(&head[done..]), IoSlice::new(body)]
        } else {
            [IoSlice::new(&body[done - head.len()..]), IoSlice::new(&[])]
        };
        match stream.try_write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => writable(stream, timeout).await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
