//! A plain fresh hit's answer: the entry, the head written from its packed metadata, and
//! where its body comes from.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::parse::{Plain, MAX_FIELDS};
use crate::app::App;
use crate::cache::key::{self, CacheKey};
use crate::cache::policy::Freshness;
use crate::cache::store::FastLookup;
use crate::cache_status::Outcome;
use crate::file_body;
use crate::headers;
use crate::host::Host;

/// Stored fields the full path replaces in a hit's answer ([`crate::hit::respond`]).
const REPLACED: &[&str] = &["age", "cache-status", "accept-ranges", "content-length"];

/// A hit ready to be written: its head and where its body comes from.
pub(super) struct Answer {
    pub(super) status: u16,
    pub(super) body: Source,
    pub(super) cache_status: http::HeaderValue,
}

/// Where a hit's body comes from.
pub(super) enum Source {
    /// Nothing is sent (HEAD).
    Empty,
    /// From memory: the memory tier, or just read and checked.
    Memory(Bytes),
    /// Sent by the kernel from a kept, checked entry file (`sendfile`).
    File {
        file: Arc<File>,
        offset: u64,
        len: u64,
    },
}

impl Source {
    pub(super) fn len(&self) -> u64 {
        match self {
            Source::Empty => 0,
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }
}

/// Writes the answer's head into `out` if `req` is a fresh hit the fast path may serve.
pub(super) fn answer(
    app: &App,
    req: &Plain<'_>,
    peer: SocketAddr,
    now: SystemTime,
    out: &mut Vec<u8>,
) -> Option<Answer> {
    let host = Host::parse(req.host, "http").ok()?;
    app.origins.route(host.as_str())?;
    let key = CacheKey::new(&host, req.target);
    let store = &app.store;
    let hot = match store.lookup_plain(&key) {
        FastLookup::Hot(hot) => hot,
        FastLookup::Varies => store.lookup_varied(&key, &origin_headers(app, req, &host, peer)?)?,
        FastLookup::Other => return None,
    };
    let Freshness::Fresh { age, ttl } = hot.fresh(now, &app.policy)? else {
        return None;
    };
    let status = hot.status();
    let reason = status.canonical_reason()?;
    let len = hot.body_len();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || len == 0
    {
        return None;
    }
    // As the full path: a HEAD does not read the body; a GET takes it from memory, else
    // sends a kept file as it is, else reads and checks it now.
    let body = if req.head {
        Source::Empty
    } else if let Some(b) = store.hot().get(&hot.body_file) {
        Source::Memory(b)
    } else if let Some(file) = file_body::sendable(store, &hot) {
        Source::File {
            file,
            offset: hot.body_offset,
            len,
        }
    } else {
        Source::Memory(file_body::inline_hit(store, &hot)?)
    };
    let cache_status = Outcome::hit(ttl.as_secs() as i64).header_value();

    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut dated = false;
    for (name, value) in hot.fields() {
        if REPLACED.iter().any(|r| r.as_bytes() == name) {
            continue;
        }
        dated |= name == b"date";
        field(out, name, value);
    }
    let mut n = itoa::Buffer::new();
    field(out, b"age", n.format(age.as_secs()).as_bytes());
    field(out, b"cache-status", cache_status.as_bytes());
    if status == StatusCode::OK {
        field(out, b"accept-ranges", b"bytes");
    }
    field(out, b"content-length", n.format(len).as_bytes());
    if !dated {
        // hyper adds one to a response without it; so does this path.
        field(out, b"date", httpdate::fmt_http_date(now).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Some(Answer {
        status: status.as_u16(),
        body,
        cache_status,
    })
}

/// The request's headers as the origin would see them, from which the key's `Vary` values
/// are read: what `fill::Ctx::new` makes of a request on the full path (hop-by-hop and
/// stripped fields out, forwarding fields set, `Accept-Encoding` normalised, the canonical
/// `Host`). `None` for a field hyper would not have accepted.
fn origin_headers(app: &App, req: &Plain<'_>, host: &Host, peer: SocketAddr) -> Option<HeaderMap> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut parsed = httparse::Request::new(&mut fields);
    parsed.parse(req.raw).ok()?;
    let mut headers = HeaderMap::with_capacity(parsed.headers.len() + 6);
    for f in parsed.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_bytes(f.value).ok()?);
    }
    headers::prepare_for_origin(
        &mut headers,
        peer.ip(),
        host.as_str(),
        app.config.server.trust_forwarded,
        &app.strip_request_headers,
    );
    key::normalize_accept_encoding(&mut headers);
    headers.insert(
        http::header::HOST,
        HeaderValue::from_str(host.as_str()).ok()?,
    );
    Some(headers)
}

fn field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}
