//! Forwarding 1xx interim responses (`102 Processing`, `103 Early Hints`) from the origin to
//! the client. They are never cached: hyper's client hands them to a callback and returns only
//! the final response, which is what the cache sees.
//!
//! hyper's HTTP/1 server has no API to send an interim response, so caje writes it itself: the
//! connection wrapper ([`crate::framing::Watched`]) owns an [`InterimSink`], the proxy queues
//! the serialised 1xx head there, and the wrapper writes the queued bytes before anything
//! hyper writes next. While a request is being served hyper writes nothing on its
//! connection, so the queued bytes always precede the final response's head. They are written
//! together with that head, so a client gets the hints' headers but not their head start.

use std::sync::{Arc, Mutex};

use http::{StatusCode, Version};

/// 1xx heads waiting to be written to one client connection.
#[derive(Debug, Default)]
pub struct InterimSink {
    pending: Mutex<Vec<u8>>,
}

/// Heads queued beyond this are dropped: a hostile origin cannot grow a connection's memory
/// with endless 1xx responses.
const MAX_PENDING: usize = 64 * 1024;

impl InterimSink {
    /// A sink for one connection.
    pub fn new() -> Arc<InterimSink> {
        Arc::new(InterimSink::default())
    }

    /// Queues one interim response for a client that speaks `client_version`. `100 Continue`
    /// and `101` are hyper's own business, and HTTP/1.0 clients never get 1xx (RFC 9110
    /// §15.2).
    pub fn push(&self, client_version: Version, status: StatusCode, headers: &http::HeaderMap) {
        if client_version < Version::HTTP_11
            || !status.is_informational()
            || status == StatusCode::CONTINUE
            || status == StatusCode::SWITCHING_PROTOCOLS
        {
            return;
        }
        let mut headers = headers.clone();
        crate::headers::strip_hop_by_hop(&mut headers);
        let mut head = format!("HTTP/1.1 {status}\r\n").into_bytes();
        for (name, value) in &headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() + head.len() <= MAX_PENDING {
            pending.extend_from_slice(&head);
        }
    }

    /// Takes the queued bytes (empty when none).
    pub fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts back the unwritten tail of what [`InterimSink::take`] returned.
    pub fn put_back(&self, rest: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = rest.to_vec();
        out.extend_from_slice(&pending);
        *pending = out;
    }
}
