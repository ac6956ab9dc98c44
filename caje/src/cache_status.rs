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
    /// A stored response exists but is stale (or must be revalidated).
    Stale,
    /// The method is not served from cache.
    Method,
    /// The request asked for something the cache does not serve from storage (a `Range` on
    /// a miss, or client `no-cache` when honoured).
    Request,
    /// A stored response existed but could not be used (corrupt or vanished), or the URL was
    /// recently found uncacheable (hit-for-miss).
    Miss,
    /// The cache was bypassed on purpose.
    Bypass,
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
            Forward::Bypass => "bypass",
        }
    }
}

/// What the cache did for one response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Served from storage without going forward (also for stale-while-revalidate).
    pub hit: bool,
    /// Why the request went forward, if it did.
    pub fwd: Option<Forward>,
    /// The status the origin answered the forwarded request with.
    pub fwd_status: Option<u16>,
    /// Freshness left in seconds; negative when a stale response is served.
    pub ttl: Option<i64>,
    /// The response was (or is being) written to the cache.
    pub stored: bool,
    /// The request was collapsed onto another request's origin fetch.
    pub collapsed: bool,
    /// A short token explaining a refusal, a failure or a stale response.
    pub detail: Option<&'static str>,
}

impl Outcome {
    /// A fresh hit.
    pub fn hit(ttl: i64) -> Outcome {
        Outcome {
            hit: true,
            ttl: Some(ttl),
            ..Outcome::default()
        }
    }

    /// A forward that got a response, stored or not.
    pub fn forwarded(fwd: Forward, status: u16, stored: Result<(), NotStorable>) -> Outcome {
        Outcome {
            fwd: Some(fwd),
            fwd_status: Some(status),
            stored: stored.is_ok(),
            detail: stored.err().map(NotStorable::as_str),
            ..Outcome::default()
        }
    }

    /// A forward that failed before a response arrived.
    pub fn failed(fwd: Forward, detail: &'static str) -> Outcome {
        Outcome {
            fwd: Some(fwd),
            detail: Some(detail),
            ..Outcome::default()
        }
    }

    /// Answered by caje itself (admin API, errors before routing).
    pub fn local() -> Outcome {
        Outcome {
            detail: Some("local"),
            ..Outcome::default()
        }
    }

    /// The header value, e.g. `caje; fwd=uri-miss; fwd-status=200; stored`.
    pub fn header_value(&self) -> HeaderValue {
        let mut s = String::from(CACHE_NAME);
        if self.hit {
            s.push_str("; hit");
        }
        if let Some(fwd) = self.fwd {
            s.push_str("; fwd=");
            s.push_str(fwd.as_str());
        }
        if let Some(st) = self.fwd_status {
            s.push_str(&format!("; fwd-status={st}"));
        }
        if let Some(ttl) = self.ttl {
            s.push_str(&format!("; ttl={ttl}"));
        }
        if self.stored {
            s.push_str("; stored");
        }
        if self.collapsed {
            s.push_str("; collapsed");
        }
        if let Some(d) = self.detail {
            s.push_str("; detail=");
            s.push_str(d);
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
        assert_eq!(Outcome::hit(5).header_value(), "caje; hit; ttl=5");
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
        let swr = Outcome {
            detail: Some("stale-while-revalidate"),
            ..Outcome::hit(-3)
        };
        assert_eq!(
            swr.header_value(),
            "caje; hit; ttl=-3; detail=stale-while-revalidate"
        );
        let collapsed = Outcome {
            collapsed: true,
            ..Outcome::forwarded(Forward::UriMiss, 200, Ok(()))
        };
        assert_eq!(
            collapsed.header_value(),
            "caje; fwd=uri-miss; fwd-status=200; stored; collapsed"
        );
    }
}
