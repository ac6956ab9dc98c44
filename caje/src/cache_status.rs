//! The RFC 9211 `Cache-Status` header: one value that says what the cache did.
//!
//! The same [`Outcome`] drives the header, the logs and the tests' assertions.

use http::HeaderValue;

use crate::cache::policy::NotStorable;

/// The name caje uses in `Cache-Status`.
pub const CACHE_NAME: &str = "caje";

/// Why a request went forward to the origin (RFC 9211 `fwd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Nothing stored for this URI.
    UriMiss,
    /// Stored variants exist but none matches the request's `Vary` headers.
    VaryMiss,
    /// A stored response exists but is stale.
    Stale,
    /// The method is not served from cache.
    Method,
    /// The request asked to bypass the cache (e.g. a Range, or client no-cache when honoured).
    Request,
    /// A stored response existed but could not be used (corrupt or vanished).
    Miss,
}

impl Forward {
    /// The RFC 9211 token.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Stale => "stale",
            Forward::Method => "method",
            Forward::Request => "request",
            Forward::Miss => "miss",
        }
    }
}

/// What the cache did for one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Served from cache; `ttl` seconds of freshness left.
    Hit {
        /// Remaining freshness lifetime in seconds.
        ttl: u64,
    },
    /// Forwarded to the origin.
    Forward {
        /// Why.
        fwd: Forward,
        /// The origin's status, if a response arrived.
        status: Option<u16>,
        /// Whether the response is being written to the cache.
        stored: bool,
        /// Why it was not stored, or what failed.
        detail: Option<&'static str>,
    },
    /// Answered by caje itself (admin API, errors before routing).
    Local,
}

impl Outcome {
    /// A forward that got a response.
    pub fn forwarded(fwd: Forward, status: u16, stored: Result<(), NotStorable>) -> Outcome {
        Outcome::Forward {
            fwd,
            status: Some(status),
            stored: stored.is_ok(),
            detail: stored.err().map(NotStorable::as_str),
        }
    }

    /// A forward that failed before a response arrived.
    pub fn failed(fwd: Forward, detail: &'static str) -> Outcome {
        Outcome::Forward {
            fwd,
            status: None,
            stored: false,
            detail: Some(detail),
        }
    }

    /// The header value, e.g. `caje; fwd=uri-miss; fwd-status=200; stored`.
    pub fn header_value(&self) -> HeaderValue {
        let mut s = String::from(CACHE_NAME);
        match self {
            Outcome::Hit { ttl } => {
                s.push_str("; hit; ttl=");
                s.push_str(&ttl.to_string());
            }
            Outcome::Forward {
                fwd,
                status,
                stored,
                detail,
            } => {
                s.push_str("; fwd=");
                s.push_str(fwd.as_str());
                if let Some(st) = status {
                    s.push_str("; fwd-status=");
                    s.push_str(&st.to_string());
                }
                if *stored {
                    s.push_str("; stored");
                }
                if let Some(d) = detail {
                    s.push_str("; detail=");
                    s.push_str(d);
                }
            }
            Outcome::Local => s.push_str("; detail=local"),
        }
        // Only ASCII tokens and digits are ever written above.
        HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("caje"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert_eq!(Outcome::Hit { ttl: 5 }.header_value(), "caje; hit; ttl=5");
        assert_eq!(
            Outcome::forwarded(Forward::UriMiss, 200, Ok(())).header_value(),
            "caje; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(
            Outcome::forwarded(Forward::Stale, 200, Err(NotStorable::Private)).header_value(),
            "caje; fwd=stale; fwd-status=200; detail=private"
        );
        assert_eq!(
            Outcome::failed(Forward::UriMiss, "origin-timeout").header_value(),
            "caje; fwd=uri-miss; detail=origin-timeout"
        );
    }
}
