//! Checking what a client sent before caje does anything with it, and the responses caje
//! makes itself: over-long targets (414), oversized header sections (431), ambiguous framing
//! (400 and close), CONNECT (405), bodies over the limit (413), and the request's host.

use http::header::{self, HeaderValue};
use http::{request, Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::cache_status::Outcome;
use crate::config::Limits;
use crate::host::Host;

/// The canonical host a request is for, and whether it came from an absolute-form target.
///
/// An absolute-form target's authority wins over `Host` (RFC 9112 §3.2.2); otherwise there
/// must be exactly one `Host`. Either is parsed strictly ([`Host::parse`]): a malformed host
/// is refused here, before routing, so nothing downstream ever sees a raw host.
pub fn request_host(parts: &request::Parts) -> Result<(Host, bool), String> {
    if let Some(auth) = parts.uri.authority() {
        let scheme = parts.uri.scheme_str().unwrap_or("http");
        return Host::parse(auth.as_str(), scheme)
            .map(|h| (h, true))
            .map_err(|e| {
                format!(
                    "caje: the request target's host {:?} is not valid: {e}\n",
                    auth.as_str()
                )
            });
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(h), None) => {
            let text = h
                .to_str()
                .map_err(|_| "caje: the Host header is not valid text\n".to_owned())?;
            Host::parse(text, "http")
                .map(|h| (h, false))
                .map_err(|e| format!("caje: the Host header {text:?} is not valid: {e}\n"))
        }
        (None, _) => Err("caje: the request has no Host header\n".to_owned()),
        (Some(_), Some(_)) => Err("caje: the request has more than one Host header\n".to_owned()),
    }
}

/// Rejects requests caje will not process: over-long targets, ambiguous framing, CONNECT,
/// bodies over the limit, all as `limits` (the `[limits]` config) sets them. Framing errors
/// also close the connection, because the next request's boundary on it cannot be trusted.
pub fn check_request<B>(
    limits: &Limits,
    req: &Request<B>,
    ambiguous_framing: bool,
) -> Option<Response<Body>> {
    let target_len = req.uri().path_and_query().map_or(0, |pq| pq.as_str().len())
        + req.uri().authority().map_or(0, |a| a.as_str().len() + 8);
    if req.method().as_str().len() + target_len > limits.max_request_line_bytes {
        return Some(local(
            StatusCode::URI_TOO_LONG,
            format!(
                "caje: the request target is longer than {} bytes\n",
                limits.max_request_line_bytes
            ),
        ));
    }
    // hyper's own limit covers request line and headers together; this one is the header
    // section alone, as configured (name, ": ", value, CRLF per field).
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > limits.max_header_bytes {
        return Some(local_close(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "caje: the request headers are larger than {} bytes\n",
                limits.max_header_bytes
            ),
        ));
    }
    let cls: Vec<&HeaderValue> = req
        .headers()
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .collect();
    let te = req.headers().contains_key(header::TRANSFER_ENCODING);
    let ambiguous = ambiguous_framing
        || cls.len() > 1
        || cls.iter().any(|v| v.as_bytes().contains(&b','))
        || (te && !cls.is_empty());
    if ambiguous {
        return Some(local_close(
            StatusCode::BAD_REQUEST,
            "caje: conflicting or repeated Content-Length / Transfer-Encoding headers\n".into(),
        ));
    }
    if req.method() == Method::CONNECT {
        return Some(local(
            StatusCode::METHOD_NOT_ALLOWED,
            "caje: CONNECT is not supported; caje is a reverse proxy\n".into(),
        ));
    }
    let declared = cls
        .first()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limits.max_request_body_bytes) {
        return Some(local_close(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "caje: request body larger than {} bytes\n",
                limits.max_request_body_bytes
            ),
        ));
    }
    None
}

/// [`local`], closing the connection afterwards (the rest of its bytes cannot be trusted).
fn local_close(status: StatusCode, text: String) -> Response<Body> {
    let mut res = local(status, text);
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// A plain-text response generated by caje.
pub fn local(status: StatusCode, text: String) -> Response<Body> {
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("cache-status", Outcome::local().header_value());
    res
}
