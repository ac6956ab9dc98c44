//! The live dashboard at `/_caje/`: one HTML page embedded in the binary (no external
//! assets) that polls `/_caje/stats` and `/_caje/status` and purges or clears through the
//! admin API. [`crate::admin`] checks access before serving it.
//!
//! CSRF: the page sends the admin token in an `Authorization` header it sets itself (kept in
//! `sessionStorage`), never in a cookie, so another site cannot make the browser send it;
//! without a token, its same-origin `fetch` calls pass caje's browser checks (`Origin` and
//! `Sec-Fetch-Site` of this same site, no form content type), while a cross-site form does not.

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use serde_json::{json, Value};

use crate::body::{self, Body};
use crate::manifest::{Manifest, Purge};

/// The page.
pub const PAGE: &str = include_str!("dashboard.html");

/// The page as a response: no caching, no framing (the buttons purge), scripts only inline.
pub fn page() -> Response<Body> {
    let mut res = Response::new(body::full(PAGE));
    *res.status_mut() = StatusCode::OK;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cache-status",
        crate::cache_status::Outcome::local().header_value(),
    );
    res
}

/// The last `n` purges recorded in the manifest by any node, newest first.
pub async fn recent_purges(manifest: &Manifest, n: i64) -> Value {
    let Ok(last) = manifest.tombstone_log(i64::MAX).await else {
        return Value::Null;
    };
    let Ok(log) = manifest.tombstone_log((last.last_id - n).max(0)).await else {
        return Value::Null;
    };
    log.tombstones
        .iter()
        .rev()
        .map(|(id, t)| {
            let what = match &t.kind {
                Purge::Url { host, path } => json!({ "url": format!("{host}{path}") }),
                Purge::Tag(tag) => json!({ "tag": tag }),
                Purge::All => json!("all"),
            };
            json!({"id": id, "purged": what, "soft": t.soft, "at": t.created_at})
        })
        .collect()
}

/// Standard base64 with padding (the page's Basic credentials); `None` if malformed.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let v: Vec<u8> = chunk.iter().map(|&c| val(c)).collect::<Option<_>>()?;
        let n = v.iter().fold(0u32, |acc, &x| acc << 6 | u32::from(x)) << (6 * (4 - v.len()));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..v.len()]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("dTpzZWNyZXQ=").unwrap(), b"u:secret");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a b").is_none());
    }

    #[test]
    fn the_page_has_no_external_assets() {
        let page = super::PAGE;
        for needle in ["http://", "https://", "src=\"//", "href=\"//", "@import"] {
            assert!(
                !page.contains(needle),
                "the dashboard must not load {needle}..."
            );
        }
        assert!(!page.contains("document.cookie"));
        assert!(page.contains("sessionStorage"));
    }
}
