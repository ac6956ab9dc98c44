//! Conditional GET (RFC 9110 §13): If-None-Match with weak comparison, then If-Modified-Since.
//! Only these two preconditions exist here because `/gen` never sends If-Match targets.

use std::time::SystemTime;

use hyper::header::{HeaderValue, IF_MODIFIED_SINCE, IF_NONE_MATCH};
use hyper::{HeaderMap, Method};

/// What the preconditions say about the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send the normal response.
    Proceed,
    /// GET/HEAD whose cached copy is still current: 304.
    NotModified,
    /// Other methods whose If-None-Match matched: 412 (RFC 9110 §13.1.2).
    PreconditionFailed,
}

/// Evaluates the request's preconditions against the validators the response would carry.
/// Callers apply it only to 2xx responses, as RFC 9110 §13.2.1 requires.
pub fn evaluate(
    method: &Method,
    request: &HeaderMap,
    etag: Option<&HeaderValue>,
    last_modified: Option<SystemTime>,
) -> Outcome {
    let safe = method == Method::GET || method == Method::HEAD;
    if request.contains_key(IF_NONE_MATCH) {
        // Any If-None-Match, even one we cannot satisfy, disables If-Modified-Since (§13.1.3).
        let matched = request
            .get_all(IF_NONE_MATCH)
            .iter()
            .any(|list| none_match_hits(list, etag));
        return match (matched, safe) {
            (false, _) => Outcome::Proceed,
            (true, true) => Outcome::NotModified,
            (true, false) => Outcome::PreconditionFailed,
        };
    }
    if !safe {
        return Outcome::Proceed;
    }
    let (Some(modified), Some(since)) = (last_modified, request.get(IF_MODIFIED_SINCE)) else {
        return Outcome::Proceed;
    };
    // An unparsable date is ignored (§13.1.3), which means "send the full response".
    match since
        .to_str()
        .ok()
        .and_then(|s| httpdate::parse_http_date(s).ok())
    {
        Some(since) if modified <= since => Outcome::NotModified,
        _ => Outcome::Proceed,
    }
}

/// Whether one If-None-Match field value (`*` or a list of entity-tags) matches `etag` under
/// weak comparison. `*` matches any current representation, with or without an ETag.
fn none_match_hits(list: &HeaderValue, etag: Option<&HeaderValue>) -> bool {
    let Ok(list) = list.to_str() else {
        return false;
    };
    let ours = etag.and_then(|e| e.to_str().ok()).map(opaque);
    let mut rest = list;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return false;
        }
        if rest.starts_with('*') {
            return true;
        }
        let unweak = rest.strip_prefix("W/").unwrap_or(rest);
        // A malformed member ends parsing: everything after it is unreliable.
        let Some(end) = unweak.strip_prefix('"').and_then(|inner| inner.find('"')) else {
            return false;
        };
        let tag = &unweak[..end + 2];
        if ours == Some(tag) {
            return true;
        }
        rest = &unweak[end + 2..];
    }
}

/// The quoted part of an entity-tag: weak comparison ignores the `W/` prefix.
fn opaque(tag: &str) -> &str {
    tag.strip_prefix("W/").unwrap_or(tag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    fn inm(list: &'static str, ours: &'static str) -> Outcome {
        let tag = HeaderValue::from_static(ours);
        evaluate(
            &Method::GET,
            &headers(&[("if-none-match", list)]),
            Some(&tag),
            None,
        )
    }

    #[test]
    fn if_none_match_weak_comparison() {
        assert_eq!(inm("\"v1\"", "\"v1\""), Outcome::NotModified);
        assert_eq!(inm("W/\"v1\"", "\"v1\""), Outcome::NotModified);
        assert_eq!(inm("\"v1\"", "W/\"v1\""), Outcome::NotModified);
        assert_eq!(inm("\"a\", W/\"v1\"", "\"v1\""), Outcome::NotModified);
        assert_eq!(inm("\"a,b\",\"v1\"", "\"v1\""), Outcome::NotModified);
        assert_eq!(inm("*", "\"v1\""), Outcome::NotModified);
        assert_eq!(inm("\"v2\"", "\"v1\""), Outcome::Proceed);
        assert_eq!(inm("v1", "\"v1\""), Outcome::Proceed);
    }

    #[test]
    fn non_safe_methods_get_412() {
        let tag = HeaderValue::from_static("\"v1\"");
        let h = headers(&[("if-none-match", "\"v1\"")]);
        assert_eq!(
            evaluate(&Method::POST, &h, Some(&tag), None),
            Outcome::PreconditionFailed
        );
    }

    #[test]
    fn if_modified_since() {
        let lm = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let at = |date: &'static str| {
            evaluate(
                &Method::GET,
                &headers(&[("if-modified-since", date)]),
                None,
                Some(lm),
            )
        };
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Outcome::NotModified);
        assert_eq!(at("Sun, 06 Nov 1994 09:00:00 GMT"), Outcome::NotModified);
        assert_eq!(at("Sun, 06 Nov 1994 08:49:36 GMT"), Outcome::Proceed);
        assert_eq!(at("garbage"), Outcome::Proceed);
    }

    #[test]
    fn if_none_match_disables_if_modified_since() {
        let lm = UNIX_EPOCH + Duration::from_secs(784_111_777);
        let tag = HeaderValue::from_static("\"v1\"");
        let h = headers(&[
            ("if-none-match", "\"other\""),
            ("if-modified-since", "Sun, 06 Nov 1994 09:00:00 GMT"),
        ]);
        assert_eq!(
            evaluate(&Method::GET, &h, Some(&tag), Some(lm)),
            Outcome::Proceed
        );
    }
}
