//! Cache keys: which stored response a request may be answered with.
//!
//! A page is identified by the client's host and its path+query (GET and HEAD share the GET
//! entry). Within a page, the response's `Vary` header selects a variant by the values of the
//! named request headers. The on-disk name of an entry is a SHA-256 of that identity, so no
//! request can name a path of its choosing: whatever the URL, the file name is 64 hex digits.

use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use crate::host::Host;

/// The URL part of a cache key: normalised host and the raw path+query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey {
    /// Lower-case host, with a default port (`:80`) removed.
    pub host: String,
    /// Path and query exactly as the client sent them (`/a/b?x=1`).
    pub path: String,
}

impl CacheKey {
    /// Builds a key from the request's canonical host and its path+query. The host is
    /// taken as it is: it was canonicalised once, for routing and the key alike.
    pub fn new(host: &Host, path: &str) -> CacheKey {
        CacheKey {
            host: host.as_str().to_owned(),
            path: path.to_owned(),
        }
    }
}

/// The request header values a response's `Vary` names, in a canonical form: names lower-case
/// and sorted, `None` for a header the request did not carry (absent is not the same as empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Variant(pub Vec<(String, Option<String>)>);

impl Variant {
    /// The variant a request selects for the given `Vary` field names.
    pub fn from_request(vary_names: &[String], headers: &HeaderMap) -> Variant {
        let mut pairs: Vec<(String, Option<String>)> = vary_names
            .iter()
            .map(|name| (name.clone(), header_value(headers, name)))
            .collect();
        pairs.sort();
        pairs.dedup_by(|a, b| a.0 == b.0);
        Variant(pairs)
    }

    /// Whether a request carries this variant's header values.
    pub fn matches(&self, headers: &HeaderMap) -> bool {
        self.0
            .iter()
            .all(|(name, value)| header_value(headers, name) == *value)
    }

    /// The `Vary` names of this variant.
    pub fn names(&self) -> Vec<String> {
        self.0.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// All values of a header in a canonical form, so that spellings that mean the same select the
/// same variant: the field lines are combined into one list (`Foo: 1` + `Foo: 2` is
/// `Foo: 1, 2`, RFC 9110 §5.3), the whitespace around list members is dropped and runs of
/// whitespace inside them collapsed. Language tags are case-insensitive (RFC 5646), so
/// `Accept-Language` is lower-cased. Member order is kept: origins commonly read it as
/// preference.
fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut members: Vec<String> = Vec::new();
    let mut any = false;
    for v in headers.get_all(name) {
        any = true;
        let s = String::from_utf8_lossy(v.as_bytes());
        for member in s.split(',') {
            let member = member.split_whitespace().collect::<Vec<_>>().join(" ");
            if !member.is_empty() {
                members.push(member);
            }
        }
    }
    if !any {
        return None;
    }
    let mut joined = members.join(", ");
    if name.eq_ignore_ascii_case("accept-language") {
        joined.make_ascii_lowercase();
    }
    Some(joined)
}

/// Rewrites a request's `Accept-Encoding` to one of a few canonical values (`br, gzip`,
/// `br`, `gzip`, or absent for identity), so that `Vary: Accept-Encoding` makes at most four
/// variants instead of one per browser's spelling. The origin sees the same normalised value,
/// so the stored variant is exactly what it answered to. Codings refused with `q=0` count as
/// not accepted.
pub fn normalize_accept_encoding(headers: &mut HeaderMap) {
    let values: Vec<String> = headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase)
        .collect();
    if values.is_empty() {
        return;
    }
    let accepts = |coding: &str| {
        values.iter().flat_map(|v| v.split(',')).any(|item| {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or("").trim();
            let refused = parts.any(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|q| q.trim().parse::<f32>().ok())
                    .is_some_and(|q| q <= 0.0)
            });
            (name == coding || name == "*") && !refused
        })
    };
    let normalized = match (accepts("br"), accepts("gzip")) {
        (true, true) => Some("br, gzip"),
        (true, false) => Some("br"),
        (false, true) => Some("gzip"),
        (false, false) => None,
    };
    headers.remove(http::header::ACCEPT_ENCODING);
    if let Some(v) = normalized {
        headers.insert(
            http::header::ACCEPT_ENCODING,
            http::HeaderValue::from_static(v),
        );
    }
}

/// Field names listed by a response's `Vary` headers, lower-case, deduplicated.
pub fn vary_names(headers: &HeaderMap) -> Vec<String> {
    let mut names: Vec<String> = headers
        .get_all(http::header::VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// The fixed-length file name (64 hex digits) of one variant of one page.
pub fn entry_name(key: &CacheKey, variant: &Variant) -> String {
    hex_name(&entry_digest(key, variant))
}

/// An entry's name as bytes: the SHA-256 of its page and variant. The index keeps these 32
/// bytes instead of the 64-character name.
pub type Digest = [u8; 32];

/// The 64 hex digits of a digest (an entry's file name).
pub fn hex_name(d: &Digest) -> String {
    // By table, not `write!` per byte: every fill and every entry path names its file, and
    // 32 formatting calls per name showed in the miss path's profile.
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(64);
    for b in d {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The digest a 64-hex-digit name spells, if it is one.
pub fn parse_name(name: &str) -> Option<Digest> {
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut d = [0u8; 32];
    for (i, b) in d.iter_mut().enumerate() {
        *b = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(d)
}

/// A 64-bit hash of a page (host and path), for the index's page table: SHA-256, so nobody
/// can aim a URL at the slot of another page's (a collision of two pages found by brute
/// force only chains those two pages together; lookups still compare the full entry name and
/// the stored host and path).
pub fn page_hash(key: &CacheKey) -> u64 {
    let mut h = Sha256::new();
    for part in [key.host.as_bytes(), key.path.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    let d = h.finalize();
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The SHA-256 of one variant of one page: [`entry_name`] as bytes.
pub fn entry_digest(key: &CacheKey, variant: &Variant) -> Digest {
    let mut h = Sha256::new();
    // Length-prefix every field so that no two different identities hash the same input.
    for part in [key.host.as_bytes(), key.path.as_bytes()] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    for (name, value) in &variant.0 {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        match value {
            Some(v) => {
                h.update([1]);
                h.update((v.len() as u64).to_le_bytes());
                h.update(v.as_bytes());
            }
            None => h.update([0]),
        }
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn key(host: &str, path: &str) -> CacheKey {
        CacheKey::new(&Host::parse(host, "http").unwrap(), path)
    }

    #[test]
    fn absent_empty_and_value_are_distinct_variants() {
        let names = vec!["accept-encoding".to_string()];
        let absent = Variant::from_request(&names, &HeaderMap::new());
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", HeaderValue::from_static(""));
        let empty = Variant::from_request(&names, &h);
        h.insert("accept-encoding", HeaderValue::from_static("gzip"));
        let gzip = Variant::from_request(&names, &h);
        let key = key("a", "/");
        let n = [&absent, &empty, &gzip].map(|v| entry_name(&key, v));
        assert_ne!(n[0], n[1]);
        assert_ne!(n[1], n[2]);
        assert_ne!(n[0], n[2]);
        assert!(gzip.matches(&h));
        assert!(!absent.matches(&h));
    }

    #[test]
    fn entry_names_are_fixed_length_hex_for_hostile_paths() {
        for path in [
            "/../../etc/passwd",
            "/%2e%2e/x",
            "/\u{0}",
            &"a".repeat(10_000),
        ] {
            let name = entry_name(&key("h", path), &Variant::default());
            assert_eq!(name.len(), 64);
            assert!(name.bytes().all(|b| b.is_ascii_hexdigit()));
            assert_eq!(parse_name(&name).map(|d| hex_name(&d)), Some(name));
        }
    }

    #[test]
    fn accept_encoding_is_normalised() {
        let norm = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_str(v).unwrap());
            normalize_accept_encoding(&mut h);
            h.get("accept-encoding")
                .map(|v| v.to_str().unwrap().to_owned())
        };
        assert_eq!(norm("gzip, deflate, br, zstd").as_deref(), Some("br, gzip"));
        assert_eq!(norm("GZIP").as_deref(), Some("gzip"));
        assert_eq!(norm("gzip;q=0, br").as_deref(), Some("br"));
        assert_eq!(norm("deflate").as_deref(), None);
        assert_eq!(norm("*").as_deref(), Some("br, gzip"));
        let mut none = HeaderMap::new();
        normalize_accept_encoding(&mut none);
        assert!(none.is_empty());
    }

    #[test]
    fn variant_values_are_normalised() {
        let names = vec!["foo".to_string(), "accept-language".to_string()];
        let variant = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.append(
                    http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_str(v).unwrap(),
                );
            }
            Variant::from_request(&names, &h)
        };
        let base = variant(&[("foo", "1, 2"), ("accept-language", "en, de")]);
        assert_eq!(
            base,
            variant(&[("foo", "1"), ("foo", "2"), ("accept-language", "en, de")])
        );
        assert_eq!(
            base,
            variant(&[("foo", " 1 ,2 "), ("accept-language", " en ,   de")])
        );
        assert_eq!(
            base,
            variant(&[("foo", "1, 2"), ("accept-language", "eN, De")])
        );
        assert_ne!(
            base,
            variant(&[("foo", "1, 2"), ("accept-language", "de, en")])
        );
        assert_ne!(
            base,
            variant(&[("foo", "2, 1"), ("accept-language", "en, de")])
        );
        // Case matters outside Accept-Language.
        assert_ne!(
            base,
            variant(&[("foo", "1, 2"), ("foo", "X"), ("accept-language", "en, de")])
        );
    }

    #[test]
    fn vary_names_are_split_and_lowercased() {
        let mut h = HeaderMap::new();
        h.append("vary", HeaderValue::from_static("Accept-Encoding, X-A"));
        h.append("vary", HeaderValue::from_static("x-a"));
        assert_eq!(vary_names(&h), vec!["accept-encoding", "x-a"]);
    }
}
