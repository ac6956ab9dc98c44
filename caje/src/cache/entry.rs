//! The metadata of one stored response and its on-disk encoding.
//!
//! A `.meta` file is `[FORMAT_VERSION][postcard(EntryMeta)][crc32 of the postcard bytes, LE]`.
//! The version byte lets a future caje refuse (and drop) entries it cannot read instead of
//! misreading them; the trailing checksum catches bit flips that would still decode.

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_cache_semantics::CachePolicy;
use serde::{Deserialize, Serialize};

use super::key::{CacheKey, Variant};

/// Version of the `.meta` encoding. Bump on any change to [`EntryMeta`].
pub const FORMAT_VERSION: u8 = 1;

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
    /// File name of the body, in the same directory as the meta file.
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

/// Why a `.meta` file could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Empty or shorter than the framing.
    #[error("metadata file is truncated")]
    Truncated,
    /// Written by another format version.
    #[error("metadata format version {0} is not supported (this caje reads {FORMAT_VERSION})")]
    Version(u8),
    /// The checksum does not match.
    #[error("metadata checksum mismatch")]
    Checksum,
    /// postcard could not decode it.
    #[error("metadata does not decode: {0}")]
    Postcard(#[from] postcard::Error),
}

impl EntryMeta {
    /// The page key of this entry.
    pub fn key(&self) -> CacheKey {
        CacheKey {
            host: self.host.clone(),
            path: self.path.clone(),
        }
    }

    /// Encodes into the `.meta` file format.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let body = postcard::to_stdvec(self)?;
        let mut out = Vec::with_capacity(body.len() + 5);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        Ok(out)
    }

    /// Decodes a `.meta` file.
    pub fn decode(bytes: &[u8]) -> Result<EntryMeta, DecodeError> {
        let (&version, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::Version(version));
        }
        if rest.len() < 4 {
            return Err(DecodeError::Truncated);
        }
        let (body, crc) = rest.split_at(rest.len() - 4);
        let want = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if crc32fast::hash(body) != want {
            return Err(DecodeError::Checksum);
        }
        Ok(postcard::from_bytes(body)?)
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

    #[test]
    fn roundtrip_keeps_repeated_headers_and_policy() {
        let meta = sample();
        let bytes = meta.encode().unwrap();
        let back = EntryMeta::decode(&bytes).unwrap();
        assert_eq!(back.path, meta.path);
        let (_, headers) = back.response_head();
        assert_eq!(headers.get_all("link").iter().count(), 2);
        assert_eq!(back.etag().as_deref(), Some("\"v1\""));
        assert!(!back.policy.is_stale(SystemTime::now()));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = sample().encode().unwrap();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(EntryMeta::decode(&b).is_err(), "flip at {i} not detected");
        }
        assert!(EntryMeta::decode(&[]).is_err());
        assert!(EntryMeta::decode(&bytes[..bytes.len() - 1]).is_err());
    }
}
