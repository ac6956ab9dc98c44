//! Response bodies. `/gen` bodies are generated chunk by chunk from a repeating pattern, so a
//! 200 MB response costs one chunk of memory, and they can be paced or cut off on purpose.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Sleep;

/// The body type of every response.
pub type ResponseBody = http_body_util::combinators::BoxBody<Bytes, BodyError>;

/// Why a body stopped early. The only cause is a scripted cut (`abort_after`, `lie_length`):
/// returning an error makes hyper drop the connection mid-body, which is the point.
#[derive(Debug)]
pub struct BodyError;

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("body cut short on purpose (abort_after / lie_length)")
    }
}

impl Error for BodyError {}

/// How long a scripted cut waits after the last byte before failing the body. hyper flushes its
/// write buffer while the body is pending but not after a body error, so without this pause the
/// last bytes (or even the head) could be lost with the connection.
const FLUSH_BEFORE_CUT: Duration = Duration::from_millis(50);

pub fn full(data: impl Into<Bytes>) -> ResponseBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// Reads and discards a request body. Leaving it unread would make hyper give up keep-alive,
/// and what a client uploads never matters here; a broken upload simply ends the reading.
pub async fn discard(mut body: Incoming) {
    while let Some(Ok(_)) = body.frame().await {}
}

/// `unit` repeated often enough that any `len <= max_len` window starting anywhere in the
/// cycle is one contiguous slice, so chunks are zero-copy `Bytes::slice`s.
#[derive(Debug)]
struct Pattern {
    buf: Bytes,
    period: usize,
}

impl Pattern {
    fn new(unit: &[u8], max_len: usize) -> Self {
        debug_assert!(
            !unit.is_empty(),
            "the pattern always starts with a path line"
        );
        let period = unit.len().max(1);
        let want = max_len + period;
        let mut buf = BytesMut::with_capacity(want + period);
        while buf.len() < want {
            buf.extend_from_slice(unit);
        }
        Self {
            buf: buf.freeze(),
            period,
        }
    }

    /// Bytes `offset .. offset + len` of the infinite repetition of the unit.
    fn window(&self, offset: u64, len: usize) -> Bytes {
        // The remainder is < period, which is a usize.
        let start = (offset % self.period as u64) as usize;
        self.buf.slice(start..start + len)
    }
}

/// How a generated body is framed and where it stops.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Content-Length to declare; `None` for chunked encoding.
    pub declared: Option<u64>,
    /// Bytes actually sent.
    pub send: u64,
    /// Drop the connection after `send` bytes instead of ending the message.
    pub cut: bool,
    pub chunk: usize,
    /// Pause between chunks.
    pub pace: Option<Duration>,
}

/// A body that yields `plan.send` bytes of the repeating `unit`, in `plan.chunk`-sized frames.
pub struct Generated {
    pattern: Pattern,
    plan: Plan,
    sent: u64,
    /// Pending pause (between chunks, or before the scripted cut).
    sleep: Option<Pin<Box<Sleep>>>,
    cut_armed: bool,
}

impl Generated {
    pub fn new(unit: &[u8], plan: Plan) -> Self {
        let max_len = usize::try_from(plan.send).map_or(plan.chunk, |send| send.min(plan.chunk));
        Self {
            pattern: Pattern::new(unit, max_len),
            plan,
            sent: 0,
            sleep: None,
            cut_armed: false,
        }
    }

    pub fn boxed(self) -> ResponseBody {
        BodyExt::boxed(self)
    }
}

impl Body for Generated {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if this.sent >= this.plan.send {
            if !this.plan.cut {
                return Poll::Ready(None);
            }
            if !this.cut_armed {
                this.cut_armed = true;
                let mut sleep = Box::pin(tokio::time::sleep(FLUSH_BEFORE_CUT));
                // Registers the waker; the pause has only just started, so this is Pending.
                if sleep.as_mut().poll(cx).is_pending() {
                    this.sleep = Some(sleep);
                    return Poll::Pending;
                }
            }
            return Poll::Ready(Some(Err(BodyError)));
        }
        let left = this.plan.send - this.sent;
        let len = usize::try_from(left).map_or(this.plan.chunk, |left| left.min(this.plan.chunk));
        let data = this.pattern.window(this.sent, len);
        this.sent += len as u64;
        if let Some(pace) = this.plan.pace {
            if this.sent < this.plan.send {
                this.sleep = Some(Box::pin(tokio::time::sleep(pace)));
            }
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        // A chunked body must not claim to be over early, or hyper would send Content-Length: 0.
        self.plan.declared.is_some() && !self.plan.cut && self.sent >= self.plan.send
    }

    fn size_hint(&self) -> SizeHint {
        // hyper reads this once, before the first frame, to write Content-Length; for a scripted
        // lie it is the declared length, not what will really be sent.
        match self.plan.declared {
            Some(declared) => SizeHint::with_exact(declared.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Generated) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        let mut body = std::pin::pin!(body);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame?.into_data() {
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    fn plan(send: u64, chunk: usize) -> Plan {
        Plan {
            declared: Some(send),
            send,
            cut: false,
            chunk,
            pace: None,
        }
    }

    #[tokio::test]
    async fn repeats_the_unit_across_chunks() {
        let got = collect(Generated::new(b"abc\n", plan(10, 3)))
            .await
            .unwrap();
        assert_eq!(got, b"abc\nabc\nab");
    }

    #[tokio::test]
    async fn truncates_and_allows_empty() {
        let got = collect(Generated::new(b"abcdef", plan(2, 64)))
            .await
            .unwrap();
        assert_eq!(got, b"ab");
        let got = collect(Generated::new(b"abcdef", plan(0, 64)))
            .await
            .unwrap();
        assert!(got.is_empty());
    }

    #[tokio::test]
    async fn cut_fails_after_the_bytes() {
        let p = Plan {
            declared: Some(100),
            send: 5,
            cut: true,
            ..plan(5, 2)
        };
        let mut body = std::pin::pin!(Generated::new(b"xyz", p));
        let mut got = Vec::new();
        loop {
            match body.frame().await {
                Some(Ok(frame)) => got.extend_from_slice(&frame.into_data().unwrap()),
                Some(Err(BodyError)) => break,
                None => panic!("a cut body must end with an error"),
            }
        }
        assert_eq!(got, b"xyzxy");
    }

    #[test]
    fn size_hint_is_the_declared_length() {
        let p = Plan {
            declared: Some(100),
            cut: true,
            ..plan(5, 2)
        };
        assert_eq!(Generated::new(b"x", p).size_hint().exact(), Some(100));
        let p = Plan {
            declared: None,
            ..plan(5, 2)
        };
        let body = Generated::new(b"x", p);
        assert_eq!(body.size_hint().exact(), None);
        assert!(!body.is_end_stream());
    }
}
