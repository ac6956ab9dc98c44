//! Header hygiene between client, caje and origin: hop-by-hop removal and the forwarding
//! headers (`X-Forwarded-*`, `Via`).

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop fields (RFC 9110 §7.6.1) plus the legacy ones proxies still see.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes hop-by-hop headers, including every field named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    // The fields present are compared with the list (a request or response has a handful),
    // rather than each name of the list parsed and looked up in the map: this runs on every
    // request, hits included.
    named.extend(
        headers
            .keys()
            .filter(|k| HOP_BY_HOP.contains(&k.as_str()))
            .cloned(),
    );
    for name in named {
        headers.remove(name);
    }
}

/// Request fields through which a client could claim another address, host, port or scheme
/// (or that other proxies use for that). Unless `server.trust_forwarded` is set, caje removes
/// them all and sets its own `X-Forwarded-For`/`-Proto`/`-Host`, `X-Real-IP` and `Forwarded`.
pub const FORWARDING: &[&str] = &[
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-server",
    "x-forwarded-scheme",
    "x-forwarded-ssl",
    "x-forwarded-prefix",
    "x-real-ip",
    "x-client-ip",
    "client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-cluster-client-ip",
    "x-original-forwarded-for",
];

/// Request fields that make some frameworks rewrite the method or the URL after the cache
/// has keyed the request (`X-HTTP-Method-Override: DELETE` on a GET, `X-Original-URL:
/// /admin` on `/`): the default of `server.strip_request_headers`.
pub const REWRITE_DEFAULT: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-method",
    "x-original-url",
    "x-rewrite-url",
];

/// Turns a client's request headers into exactly what the origin will see, before the cache
/// looks at them: hop-by-hop and `Connection`-named fields out, the configured rewrite
/// fields out, forwarding fields replaced (or extended when `trust`). The cache key's `Vary`
/// values are then read from this same map, so a variant is always keyed by what the origin
/// answered to.
pub fn prepare_for_origin(
    headers: &mut HeaderMap,
    client: IpAddr,
    host: &str,
    trust: bool,
    strip: &[HeaderName],
) {
    strip_hop_by_hop(headers);
    for name in strip {
        headers.remove(name);
    }
    set_forwarded(headers, client, host, trust);
}

/// The `Via` value caje adds.
pub const VIA: &str = "1.1 caje";

/// Sets `X-Forwarded-For`/`-Proto`/`-Host`, `X-Real-IP` and `Forwarded`, and appends to `Via`
/// on a request to the origin.
///
/// With `trust` false, every client-sent forwarding field ([`FORWARDING`]) is removed first: a
/// client must not be able to claim another address, host or scheme. With `trust` true
/// (behind a proxy the operator runs), caje appends to the chains instead and keeps the rest.
pub fn set_forwarded(headers: &mut HeaderMap, client: IpAddr, client_host: &str, trust: bool) {
    // Names made once (a `&str` name is parsed on every lookup; this runs on every request).
    const XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    const XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    const XFH: HeaderName = HeaderName::from_static("x-forwarded-host");
    const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
    let previous = |headers: &HeaderMap, name: &HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (prev_xff, prev_fwd) = if trust {
        (previous(headers, &XFF), previous(headers, &FORWARDED))
    } else {
        // Only the fields present are compared with the list.
        let claimed: Vec<HeaderName> = headers
            .keys()
            .filter(|k| FORWARDING.contains(&k.as_str()))
            .cloned()
            .collect();
        for name in claimed {
            headers.remove(name);
        }
        (None, None)
    };
    let client = client.to_canonical();
    let ip = client.to_string();
    let xff = match prev_xff {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        headers.insert(XFF, v);
    }
    if !(trust && headers.contains_key(XFP)) {
        headers.insert(XFP, HeaderValue::from_static("http"));
    }
    if !(trust && headers.contains_key(X_REAL_IP)) {
        if let Ok(v) = HeaderValue::from_str(&ip) {
            headers.insert(X_REAL_IP, v);
        }
    }
    if let Ok(v) = HeaderValue::from_str(client_host) {
        headers.insert(XFH, v);
    }
    // RFC 7239: IPv6 nodes are quoted and bracketed.
    let node = if client.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    let element = format!("for={node};host={client_host};proto=http");
    let forwarded = match prev_fwd {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    if let Ok(v) = HeaderValue::from_str(&forwarded) {
        headers.insert(FORWARDED, v);
    }
    append_via(headers);
}

/// Appends caje to `Via`.
pub fn append_via(headers: &mut HeaderMap) {
    let via = match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {VIA}"),
        None => VIA.to_owned(),
    };
    if let Ok(v) = HeaderValue::from_str(&via) {
        headers.insert(header::VIA, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert("connection", HeaderValue::from_static("close, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-keep"));
    }

    #[test]
    fn forwarded_for_is_replaced_unless_trusted() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("6.6.6.6"));
        set_forwarded(&mut h, ip, "a.example", false);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, ip, "a.example", true);
        assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "1.1 caje");
    }

    #[test]
    fn untrusted_forwarding_claims_are_replaced() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "forwarded",
            HeaderValue::from_static("for=6.6.6.6;host=evil.example;proto=https"),
        );
        h.insert("x-real-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-port", HeaderValue::from_static("443"));
        h.insert("true-client-ip", HeaderValue::from_static("6.6.6.6"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(&mut h, ip, "a.example", false);
        assert_eq!(h["forwarded"], "for=127.0.0.1;host=a.example;proto=http");
        assert_eq!(h["x-real-ip"], "127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert!(!h.contains_key("x-forwarded-port"));
        assert!(!h.contains_key("true-client-ip"));
        let v6: IpAddr = "::2".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("forwarded", HeaderValue::from_static("for=10.0.0.1"));
        set_forwarded(&mut h, v6, "a.example", true);
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.1, for=\"[::2]\";host=a.example;proto=http"
        );
    }

    #[test]
    fn prepared_headers_are_what_the_origin_sees() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, accept-language"),
        );
        h.insert("accept-language", HeaderValue::from_static("fr"));
        h.insert("x-http-method-override", HeaderValue::from_static("DELETE"));
        h.insert("x-keep", HeaderValue::from_static("1"));
        let strip: Vec<HeaderName> = REWRITE_DEFAULT
            .iter()
            .map(|n| HeaderName::from_static(n))
            .collect();
        prepare_for_origin(&mut h, ip, "a.example", false, &strip);
        assert!(!h.contains_key("accept-language"));
        assert!(!h.contains_key("x-http-method-override"));
        assert_eq!(h["x-keep"], "1");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}
