//! Answering from a stored response: client conditionals (304), single byte ranges (206 /
//! 416) and HEAD, per RFC 9110 §13 and §14.

use http::header::{self, HeaderMap, HeaderValue};
use http::{request, Method, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache::store::{Entry, HitMeta, Store};
use crate::cache_status::Outcome;
use crate::file_body::{self, HitError};
use std::sync::Arc;
use std::time::SystemTime;

/// Fields a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: &[&str] = &[
    "cache-control",
    "content-location",
    "date",
    "etag",
    "expires",
    "vary",
    "last-modified",
];

/// Whether an entity tag from `If-None-Match` matches the stored one (weak comparison).
fn etag_matches_weak(list: &str, stored: &str) -> bool {
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    let stored = strip(stored);
    list.split(',')
        .any(|t| t.trim() == "*" || strip(t) == stored)
}

/// Whether the client's conditional headers let caje answer 304 (RFC 9110 §13.2.2: only
/// If-None-Match is evaluated when present; If-Modified-Since otherwise).
pub fn not_modified(req: &request::Parts, stored: &HeaderMap) -> bool {
    if req.method != Method::GET && req.method != Method::HEAD {
        return false;
    }
    let inm: Vec<&str> = req
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if !inm.is_empty() {
        let Some(etag) = stored.get(header::ETAG).and_then(|v| v.to_str().ok()) else {
            return inm.iter().any(|l| l.trim() == "*");
        };
        return inm.iter().any(|l| etag_matches_weak(l, etag));
    }
    let ims = req
        .headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let lm = stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    matches!((ims, lm), (Some(ims), Some(lm)) if lm <= ims)
}

/// A `Range` request against a stored body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSpec {
    /// Serve the whole body (no Range, several ranges, or a Range caje ignores).
    Full,
    /// Serve bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// No byte of the range exists: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range (RFC 9110 §14.1.2). Multiple ranges and invalid syntax are
/// served as the full body, which a server may always do.
pub fn parse_range(value: &str, len: u64) -> RangeSpec {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeSpec::Full;
    };
    if spec.contains(',') {
        return RangeSpec::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeSpec::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match num(last) {
            Some(0) => RangeSpec::Unsatisfiable,
            Some(n) if len == 0 => {
                let _ = n;
                RangeSpec::Unsatisfiable
            }
            Some(n) => RangeSpec::Partial {
                start: len.saturating_sub(n),
                end: len - 1,
            },
            None => RangeSpec::Full,
        },
        // bytes=A-
        (false, true) => match num(first) {
            Some(a) if a < len => RangeSpec::Partial {
                start: a,
                end: len - 1,
            },
            Some(_) => RangeSpec::Unsatisfiable,
            None => RangeSpec::Full,
        },
        // bytes=A-B
        (false, false) => match (num(first), num(last)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= len {
                    RangeSpec::Unsatisfiable
                } else {
                    RangeSpec::Partial {
                        start: a,
                        end: b.min(len - 1),
                    }
                }
            }
            _ => RangeSpec::Full,
        },
        (true, true) => RangeSpec::Full,
    }
}

/// Whether `If-Range` (if any) lets the Range apply: a strong ETag match or an exact
/// Last-Modified date (RFC 9110 §13.1.5).
fn if_range_allows(req: &request::Parts, stored: &HeaderMap) -> bool {
    let Some(cond) = req
        .headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
    else {
        return true;
    };
    let cond = cond.trim();
    if cond.starts_with('"') {
        return stored
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|e| !e.starts_with("W/") && e.trim() == cond);
    }
    stored
        .get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|lm| lm.trim() == cond)
}

/// Builds the response for a usable stored entry: 304, 206/416, HEAD or the full body.
pub async fn respond(
    store: &Store,
    entry: &Arc<HitMeta>,
    req: &request::Parts,
    age: u64,
    outcome: Outcome,
) -> Result<Response<Body>, HitError> {
    let (status, mut headers) = entry.head();
    headers.insert(header::AGE, HeaderValue::from(age));
    headers.insert("cache-status", outcome.header_value());
    let len = entry.body_len();

    if status == StatusCode::OK && not_modified(req, &headers) {
        let mut h = HeaderMap::new();
        for name in NOT_MODIFIED_FIELDS
            .iter()
            .copied()
            .chain(["age", "via", "cache-status"])
        {
            for v in headers.get_all(name) {
                h.append(name, v.clone());
            }
        }
        let mut res = Response::new(body::empty());
        *res.status_mut() = StatusCode::NOT_MODIFIED;
        *res.headers_mut() = h;
        return Ok(res);
    }

    let range = match req.headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if status == StatusCode::OK && if_range_allows(req, &headers) => {
            parse_range(r, len)
        }
        _ => RangeSpec::Full,
    };
    if status == StatusCode::OK {
        headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    }
    let head_only = req.method == Method::HEAD;
    let (status, body, length) = match range {
        RangeSpec::Full => {
            let body = if head_only {
                body::empty()
            } else {
                file_body::hit_body(store, entry).await?
            };
            (status, body, len)
        }
        RangeSpec::Partial { start, end } => {
            let n = end - start + 1;
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            let body = if head_only {
                body::empty()
            } else {
                file_body::hit_range_body(store, entry, start, n).await?
            };
            (StatusCode::PARTIAL_CONTENT, body, n)
        }
        RangeSpec::Unsatisfiable => {
            headers.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{len}"))
                    .unwrap_or(HeaderValue::from_static("bytes */0")),
            );
            (StatusCode::RANGE_NOT_SATISFIABLE, body::empty(), 0)
        }
    };
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    let mut res = Response::new(body);
    *res.status_mut() = status;
    *res.headers_mut() = headers;
    Ok(res)
}

/// Seconds a stored entry has been stale at `now` (for negative `ttl` values).
pub fn stale_secs(entry: &Entry, now: SystemTime) -> i64 {
    let stored_at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(entry.meta.stored_at);
    crate::cache::policy::staleness(&entry.meta.policy, stored_at, now).as_secs() as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeSpec::*;
        assert_eq!(parse_range("bytes=0-9", 100), Partial { start: 0, end: 9 });
        assert_eq!(
            parse_range("bytes=90-", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=-200", 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range("bytes=50-500", 100),
            Partial { start: 50, end: 99 }
        );
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=100-200", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Full);
        assert_eq!(parse_range("bytes=9-1", 100), Full);
        assert_eq!(parse_range("items=0-1", 100), Full);
        assert_eq!(parse_range("bytes=x-1", 100), Full);
    }

    fn req(h: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::get("/");
        for (n, v) in h {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn conditionals() {
        let mut stored = HeaderMap::new();
        stored.insert("etag", HeaderValue::from_static("\"v1\""));
        stored.insert(
            "last-modified",
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        assert!(not_modified(&req(&[("if-none-match", "\"v1\"")]), &stored));
        assert!(not_modified(
            &req(&[("if-none-match", "W/\"v1\"")]),
            &stored
        ));
        assert!(not_modified(
            &req(&[("if-none-match", "\"a\", \"v1\"")]),
            &stored
        ));
        assert!(not_modified(&req(&[("if-none-match", "*")]), &stored));
        assert!(!not_modified(&req(&[("if-none-match", "\"v2\"")]), &stored));
        // If-None-Match wins over If-Modified-Since.
        assert!(!not_modified(
            &req(&[
                ("if-none-match", "\"v2\""),
                ("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")
            ]),
            &stored
        ));
        assert!(not_modified(
            &req(&[("if-modified-since", "Tue, 02 Jan 2024 00:00:00 GMT")]),
            &stored
        ));
        assert!(!not_modified(
            &req(&[("if-modified-since", "Sun, 31 Dec 2023 00:00:00 GMT")]),
            &stored
        ));
    }

    #[test]
    fn if_range() {
        let mut stored = HeaderMap::new();
        stored.insert("etag", HeaderValue::from_static("\"v1\""));
        assert!(if_range_allows(&req(&[("if-range", "\"v1\"")]), &stored));
        assert!(!if_range_allows(&req(&[("if-range", "\"v0\"")]), &stored));
        assert!(if_range_allows(&req(&[]), &stored));
    }

    mod compact {
        use super::*;
        use crate::cache::policy::{self, Freshness, PolicyOptions};
        use crate::cache::store::lookup::hot_tests::{fill_path, key, open};
        use crate::cache::store::{HitMeta, HotLookup, Lookup};
        use http_body_util::BodyExt;
        use std::time::Duration;

        const OPTS: PolicyOptions = PolicyOptions {
            heuristic_freshness: true,
            heuristic_max: Duration::from_secs(86_400),
            store_set_cookie: false,
            honor_client_no_cache: false,
            targeted: None,
        };

        async fn answer(
            store: &Store,
            hit: &Arc<HitMeta>,
            req: &http::request::Parts,
            age: u64,
            ttl: Duration,
        ) -> (http::response::Parts, Vec<u8>) {
            let outcome = Outcome::hit(ttl.as_secs() as i64);
            let res = crate::hit::respond(store, hit, req, age, outcome)
                .await
                .unwrap();
            let (parts, body) = res.into_parts();
            (parts, body.collect().await.unwrap().to_bytes().to_vec())
        }

        /// A hit answered from the compact metadata kept for a hot entry and one from the full
        /// entry read from disk decide the same freshness and send the same status, headers
        /// (`Age`, `Cache-Status`, `Date`, `Via`, validators...) and body, for a plain GET, a
        /// conditional one and a range; a stale or soft-purged entry is never answered from the
        /// compact metadata alone.
        #[tokio::test]
        async fn a_compact_hit_answers_as_the_full_entry_does() {
            let dir = tempfile::tempdir().unwrap();
            let (store, mut rx) = open(dir.path(), 1 << 20);
            let body = b"0123456789".repeat(50);
            fill_path(&store, &mut rx, "/x?y=1", &body).await;
            let k = key("/x?y=1");
            let HotLookup::Hot(hot) = store.lookup_hot(&k, &HeaderMap::new()).await else {
                panic!("a client's fill keeps its compact metadata")
            };
            let Lookup::Found(full) = store.full(&k, &HeaderMap::new()).await else {
                panic!("full entry")
            };
            assert!(!Arc::ptr_eq(&hot, &full.hit), "read again from disk");
            // The head kept compactly is the stored one as served: every header, repeated
            // ones in order, tags removed, `Via` added.
            let (status, want) = full.meta.response_head();
            let (hot_status, mut got) = hot.head();
            assert!(got.remove("via").is_some(), "this hop's Via is added");
            assert_eq!((hot_status, got), (status, want));
            assert_eq!(hot.head().1.get_all("link").iter().count(), 2);
            let requests = [
                vec![],
                vec![("if-none-match", "\"v1\"")],
                vec![("range", "bytes=5-24")],
            ];
            for headers in &requests {
                let mut b = http::Request::get("/x?y=1").header("host", "example.com");
                for (n, v) in headers {
                    b = b.header(*n, *v);
                }
                let req = b.body(()).unwrap().into_parts().0;
                for later in [0, 30, 59, 60, 61, 3600] {
                    let now = SystemTime::now() + Duration::from_secs(later);
                    let decided =
                        policy::freshness(&full.meta.policy, &req, "example.com", now, &OPTS);
                    let compact = hot.fresh(now, &OPTS);
                    match decided {
                        Freshness::Fresh { age, ttl } => {
                            assert_eq!(compact, Some(decided), "{headers:?} +{later}s");
                            let a = answer(&store, &hot, &req, age.as_secs(), ttl).await;
                            let b = answer(&store, &full.hit, &req, age.as_secs(), ttl).await;
                            assert_eq!(a.0.status, b.0.status, "{headers:?}");
                            assert_eq!(a.0.headers, b.0.headers, "{headers:?}");
                            assert_eq!(a.1, b.1, "{headers:?}");
                            for name in ["age", "cache-status", "via", "etag"] {
                                assert!(a.0.headers.contains_key(name), "{name} in {headers:?}");
                            }
                        }
                        Freshness::Stale => assert_eq!(compact, None, "stale at +{later}s"),
                    }
                }
            }
            // A soft purge: the compact metadata of the refreshed version never answers alone.
            let mut meta = full.meta.clone();
            meta.invalidated = true;
            store.update_meta(&full, meta, false).unwrap().unwrap();
            let HotLookup::Hot(purged) = store.lookup_hot(&k, &HeaderMap::new()).await else {
                panic!("the refreshed version replaces the kept one")
            };
            assert_eq!(purged.fresh(SystemTime::now(), &OPTS), None);
            // With the client's directives honoured, the full policy always decides.
            let honour = PolicyOptions {
                honor_client_no_cache: true,
                ..OPTS
            };
            assert_eq!(hot.fresh(SystemTime::now(), &honour), None);
        }
    }
}
