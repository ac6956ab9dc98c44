//! The metadata of one stored response. It is stored (postcard-encoded, versioned and
//! checksummed) in the header of the entry's file: see `cache::store::format`.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};

use super::key::{CacheKey, Variant};

/// Everything about a stored response except its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryMeta {
    /// Page host (normalised).
    pub host: String,
    /// Page path and query.
    pub path: String,
    /// The variant this entry answers.
    pub variant: Variant,
    /// Response status.
    pub status: u16,
    /// Response headers as served (hop-by-hop removed), in order, repeated names kept.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The RFC 9111 policy (built from a sanitised request: no cookies or credentials).
    pub policy: CachePolicy,
    /// The name of this stored version: `<entry name>.<16 hex tag>`, the tag unique to the
    /// fill that wrote it (a metadata-only update keeps it: same body). The memory tier's
    /// key, and how a reader tells which version an entry file it opened holds.
    pub body_file: String,
    /// Body length in bytes.
    pub body_len: u64,
    /// CRC-32 of the body.
    pub body_crc32: u32,
    /// When the response was received, unix seconds.
    pub stored_at: u64,
    /// Purge tags from the response's `Surrogate-Key` header.
    pub tags: Vec<String>,
    /// Set by a soft purge: the entry is treated as stale (it may still be revalidated or
    /// served stale where allowed) until it is refreshed.
    pub invalidated: bool,
}

impl EntryMeta {
    /// The page key of this entry.
    pub fn key(&self) -> CacheKey {
        CacheKey {
            host: self.host.clone(),
            path: self.path.clone(),
        }
    }

    /// The stored response head as a status and header map (invalid stored headers skipped).
    pub fn response_head(&self) -> (StatusCode, HeaderMap) {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 2);
        for (name, value) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        (status, headers)
    }

    /// Header pairs to persist from a response header map.
    pub fn headers_from(map: &HeaderMap) -> Vec<(String, Vec<u8>)> {
        map.iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    /// `ETag` of the stored response, if any.
    pub fn etag(&self) -> Option<String> {
        self.header_str("etag")
    }

    /// `Last-Modified` of the stored response, if any.
    pub fn last_modified(&self) -> Option<String> {
        self.header_str("last-modified")
    }

    fn header_str(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| String::from_utf8(v.clone()).ok())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::SystemTime;

    pub(crate) fn sample() -> EntryMeta {
        let req = http::Request::get("/x?y=1")
            .header("host", "example.com")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let res = http::Response::builder()
            .header("cache-control", "max-age=60")
            .header("etag", "\"v1\"")
            .header("link", "</a>; rel=preload")
            .header("link", "</b>; rel=preload")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let policy = CachePolicy::new(&req, &res);
        EntryMeta {
            host: "example.com".into(),
            path: "/x?y=1".into(),
            variant: Variant(vec![("accept-encoding".into(), None)]),
            status: 200,
            headers: EntryMeta::headers_from(&res.headers),
            policy,
            body_file: "ab.body".into(),
            body_len: 3,
            body_crc32: crc32fast::hash(b"abc"),
            stored_at: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            tags: vec!["t1".into()],
            invalidated: false,
        }
    }
}
