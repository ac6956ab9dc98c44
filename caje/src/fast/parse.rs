//! Reading a request head in place: what the fast path may answer, pass to the full path
//! alone, or hand to hyper.

use crate::admin;
use crate::config::Limits;

/// Most request fields the fast path parses; a request with more is handed over.
pub(super) const MAX_FIELDS: usize = 48;

/// Fields that make a request's end unknown to the fast path (a body, an upgrade, an
/// interim answer): the request and the rest of the connection go to hyper.
const UNBOUNDED: &[&str] = &["content-length", "transfer-encoding", "expect", "upgrade"];

/// Fields that can change a hit's answer: the request goes to the full path.
const NOT_PLAIN: &[&str] = &[
    "authorization",
    "range",
    "if-range",
    "if-none-match",
    "if-modified-since",
    "if-match",
    "if-unmodified-since",
];

/// A request the fast path may answer, parsed in place.
pub(super) struct Plain<'a> {
    pub(super) head: bool,
    pub(super) target: &'a str,
    pub(super) host: &'a str,
    /// The whole request head (parsed again for a page stored with `Vary`).
    pub(super) raw: &'a [u8],
}

/// What the head at the start of the buffer is.
pub(super) enum Parsed<'a> {
    /// Not all of it has arrived.
    Partial,
    /// A request whose end the fast path does not know, or bytes hyper will refuse: the
    /// connection goes to hyper.
    Other,
    /// A complete request without a body, `len` bytes long; `plain` when the fast path may
    /// answer it, else the full path serves it alone ([`crate::one_request`]).
    Request {
        plain: Option<Plain<'a>>,
        len: usize,
    },
}

pub(super) fn parse<'a>(buf: &'a [u8], limits: &Limits) -> Parsed<'a> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else {
        return Parsed::Other;
    };
    // What hyper or the full path would refuse, and close the connection for, stays theirs.
    if method == "CONNECT"
        || !target.starts_with('/')
        || method.len() + target.len() > limits.max_request_line_bytes
        || req.headers.len() > limits.max_headers
        || http::uri::PathAndQuery::try_from(target).is_err()
    {
        return Parsed::Other;
    }
    let mut plain = method == "GET" || method == "HEAD";
    let mut host = None;
    let mut hosts = 0;
    let mut field_bytes = 0;
    for f in req.headers.iter() {
        field_bytes += f.name.len() + f.value.len() + 4;
        if f.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(f.value);
        } else if f.name.eq_ignore_ascii_case("connection") {
            if !f.value.eq_ignore_ascii_case(b"keep-alive") {
                return Parsed::Other;
            }
        } else if UNBOUNDED.iter().any(|h| f.name.eq_ignore_ascii_case(h)) {
            return Parsed::Other;
        } else if NOT_PLAIN.iter().any(|h| f.name.eq_ignore_ascii_case(h)) {
            plain = false;
        }
    }
    if field_bytes > limits.max_header_bytes {
        return Parsed::Other;
    }
    let host = match host.map(std::str::from_utf8) {
        Some(Ok(h)) if hosts == 1 => h,
        _ => return Parsed::Request { plain: None, len },
    };
    let plain = (plain && !admin::is_admin_path(target)).then_some(Plain {
        head: method == "HEAD",
        target,
        host,
        raw: &buf[..len],
    });
    Parsed::Request { plain, len }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `plain` (answerable), `one` (the full path alone), `other` (hand over), `partial`.
    fn kind(head: &str) -> &'static str {
        let limits = Limits {
            max_request_line_bytes: 100,
            max_header_bytes: 200,
            max_headers: 5,
            ..Limits::default()
        };
        match parse(head.as_bytes(), &limits) {
            Parsed::Partial => "partial",
            Parsed::Other => "other",
            Parsed::Request {
                plain: Some(p),
                len,
            } => {
                assert_eq!(len, head.find("\r\n\r\n").unwrap() + 4);
                assert_eq!(p.raw.len(), len);
                "plain"
            }
            Parsed::Request { plain: None, .. } => "one",
        }
    }

    #[test]
    fn heads_are_sorted_before_anything_is_answered() {
        let h = |s: &str| format!("{s}\r\n\r\n");
        assert_eq!(kind(&h("GET /a HTTP/1.1\r\nHost: x")), "plain");
        assert_eq!(
            kind(&h(
                "HEAD /a?b=c HTTP/1.1\r\nhost: x\r\nConnection: Keep-Alive"
            )),
            "plain"
        );
        // Bodiless requests the full path answers alone.
        for head in [
            "POST /a HTTP/1.1\r\nHost: x",
            "GET /a HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1",
            "GET /a HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"v\"",
            "GET /a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t",
            "GET /_caje/stats HTTP/1.1\r\nHost: x",
            "GET /%5Fcaje/stats HTTP/1.1\r\nHost: x",
            "GET /a HTTP/1.1",
            "GET /a HTTP/1.1\r\nHost: x\r\nHost: y",
            "get /a HTTP/1.1\r\nHost: x",
        ] {
            assert_eq!(kind(&h(head)), "one", "{head}");
        }
        // Bodies, upgrades, framing the fast path does not know, and what hyper refuses.
        for head in [
            "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1",
            "GET /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked",
            "GET /a HTTP/1.1\r\nHost: x\r\nContent-Length: 0",
            "GET /a HTTP/1.1\r\nHost: x\r\nExpect: 100-continue",
            "GET /a HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade",
            "GET /a HTTP/1.1\r\nHost: x\r\nConnection: close",
            "GET /a HTTP/1.0\r\nHost: x",
            "GET http://x/a HTTP/1.1\r\nHost: x",
            "CONNECT x:443 HTTP/1.1\r\nHost: x",
            "OPTIONS * HTTP/1.1\r\nHost: x",
            "GET /a b HTTP/1.1\r\nHost: x",
            "GET /a HTTP/1.1\r\nHost: x\r\nFolded: a\r\n b",
            "GET /a HTTP/1.1\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\nE: 1\r\nF: 1",
        ] {
            assert_eq!(kind(&h(head)), "other", "{head}");
        }
        let long = format!("GET /{} HTTP/1.1\r\nHost: x", "a".repeat(100));
        assert_eq!(kind(&h(&long)), "other", "request line over the limit");
        let big = format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Big: {}", "v".repeat(200));
        assert_eq!(kind(&h(&big)), "other", "header section over the limit");
        assert_eq!(kind("GET /a HTTP/1.1\r\nHost: x\r\n"), "partial");
    }
}
