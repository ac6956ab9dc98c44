//! Client for the LiteFS HTTP API (feature `http`): `/info`, `/events`, `/promote`, and a
//! [`PrimaryMonitor`] built on `/events`.
//!
//! The API listens on port 20202 by default and must not be public; point the client at the
//! node's own LiteFS (`http://localhost:20202`). Node-to-node endpoints (`/halt`, `/tx`,
//! `/stream`, `/handoff`) are deliberately absent: clients halt through the lock file.

mod client;
mod events;
mod monitor;

pub use client::{Client, NodeInfo};
pub use events::{Backoff, Event, EventStream, TxEvent};
pub use monitor::PrimaryMonitor;

use std::time::Duration;

/// A boxed source error, so that hyper's error types do not leak into this crate's API.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A failed call to the LiteFS HTTP API.
///
/// ```
/// use litefs::{http::HttpError, Error};
/// let e = litefs::http::Client::new("not a url").unwrap_err();
/// assert!(matches!(e, Error::Http(HttpError::InvalidUrl { .. })));
/// assert!(!e.is_retryable());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The base URL is not an absolute `http://host:port` URL.
    #[error("invalid LiteFS API URL {url:?}: expected http://host[:port]")]
    InvalidUrl {
        /// The rejected URL.
        url: String,
    },
    /// The request could not be sent (connection refused, reset, DNS).
    #[error("request {path} failed: {source}")]
    Request {
        /// The API path.
        path: &'static str,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// The response body could not be read.
    #[error("reading the response of {path}: {source}")]
    Body {
        /// The API path.
        path: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },
    /// LiteFS answered with an unexpected status.
    #[error("{path} answered {status}: {body}")]
    Status {
        /// The API path.
        path: &'static str,
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (LiteFS puts its error message there).
        body: String,
    },
    /// The response was not the documented JSON.
    #[error("decoding the response of {path}: {source}")]
    Decode {
        /// The API path.
        path: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// No response within the client's request timeout.
    #[error("{path} timed out after {after:?}")]
    Timeout {
        /// The API path.
        path: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The `/events` stream ended or broke; the [`EventStream`] reconnects by itself.
    #[error("the /events stream disconnected{}", source.as_ref().map(|e| format!(": {e}")).unwrap_or_default())]
    Disconnected {
        /// The transport error, if the stream broke rather than ended.
        #[source]
        source: Option<BoxError>,
    },
    /// An `/events` line exceeded the size limit; the connection is dropped and reopened.
    #[error("an /events line exceeded {limit} bytes")]
    LineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
}

impl HttpError {
    /// Whether retrying later may succeed: transport failures, timeouts, disconnections,
    /// `429` and `5xx` answers.
    ///
    /// ```
    /// let e = litefs::http::HttpError::Status { path: "/info", status: 503, body: String::new() };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Request { .. }
            | HttpError::Body { .. }
            | HttpError::Timeout { .. }
            | HttpError::Disconnected { .. }
            | HttpError::LineTooLong { .. } => true,
            HttpError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether this is a request timeout.
    ///
    /// ```
    /// let e = litefs::http::HttpError::Timeout { path: "/info", after: std::time::Duration::from_secs(1) };
    /// assert!(e.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        matches!(self, HttpError::Timeout { .. })
    }
}
