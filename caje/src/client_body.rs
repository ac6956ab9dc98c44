//! A client's request body on its way to the origin, bounded by
//! `limits.max_request_body_bytes`, remembering why it failed.
//!
//! When a request body fails while it is being sent (malformed chunked framing, more bytes
//! than the limit, the client going away), hyper's client reports a send error that looks like
//! an origin failure. The fault is the client's: the proxy checks [`ClientFault`] first and
//! answers 400 (or 413) with `Connection: close` instead of 502, without counting an origin
//! error. hyper aborts the upstream request when the body errors, so the origin never
//! receives such a body as a complete request.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;

use crate::body::{Body, BodyError};
use crate::request::local;

/// Why a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// Malformed framing (e.g. an invalid chunk size), or the client stopped sending.
    #[error("malformed or incomplete request body")]
    Malformed,
    /// More bytes than `limits.max_request_body_bytes`.
    #[error("request body larger than limits.max_request_body_bytes")]
    TooLarge,
}

/// Set once when the client's body fails; shared between the body and the proxy.
#[derive(Debug, Default)]
pub struct ClientFault(OnceLock<ClientBodyError>);

impl ClientFault {
    /// Why the body failed, if it did.
    pub fn get(&self) -> Option<ClientBodyError> {
        self.0.get().copied()
    }

    /// The answer when the body failed (checked first when sending to the origin fails).
    pub fn failed(&self) -> Option<Response<Body>> {
        self.get().map(ClientFault::response)
    }

    /// The answer for a request whose body failed: 400 or 413, and the connection is closed
    /// (its remaining bytes cannot be framed reliably).
    pub fn response(err: ClientBodyError) -> Response<Body> {
        let status = match err {
            ClientBodyError::Malformed => StatusCode::BAD_REQUEST,
            ClientBodyError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        };
        let mut res = local(status, format!("caje: {err}\n"));
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        res
    }
}

/// The client body, limited to `limit` bytes, and the fault it records.
pub fn client_body(body: Incoming, limit: usize) -> (Body, Arc<ClientFault>) {
    let fault = Arc::new(ClientFault::default());
    let body = Recording {
        inner: Limited::new(body, limit),
        fault: fault.clone(),
    };
    (body.boxed(), fault)
}

struct Recording {
    inner: Limited<Incoming>,
    fault: Arc<ClientFault>,
}

impl HttpBody for Recording {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Err(e))) = &polled {
            let why = if e.downcast_ref::<LengthLimitError>().is_some() {
                ClientBodyError::TooLarge
            } else {
                ClientBodyError::Malformed
            };
            let _ = self.fault.0.set(why);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
