//! Cacheability and freshness: the only module that talks to `http-cache-semantics`.
//!
//! `http-cache-semantics` implements RFC 9111 for a shared cache. caje adds the rules a CDN
//! operator expects on top of it:
//! - explicit freshness (`s-maxage`, `max-age`, `Expires`) makes any status code storable
//!   (RFC 9111 §3); without it, heuristic freshness (on by default, RFC 9111 §4.2.2) gives
//!   heuristically cacheable statuses with `Last-Modified` 10% of their age, capped by
//!   `cache.heuristic_max_secs`;
//! - a response that sets a cookie is not stored (it is meant for one user) unless the
//!   operator opts in with `cache.store_set_cookie`;
//! - a request with `Authorization` is answered from the cache only by a response that allows
//!   shared reuse for authenticated requests (`public`, `s-maxage`, `must-revalidate`);
//! - a `Vary` on `Cookie` or `Authorization` is never stored, because storing it would write
//!   those credentials to disk;
//! - the request recorded in the policy keeps only `Host` and the `Vary`-named headers, so no
//!   cookie or credential reaches the disk;
//! - targeted cache control (RFC 9213): the first of caje's own field (configurable, default
//!   `Caje-Cache-Control`) and `CDN-Cache-Control` that has a valid, non-empty value replaces
//!   `Cache-Control` and `Expires` for caje's decisions. The response keeps its original
//!   `Cache-Control` for browsers.
//! - a response with a zero freshness lifetime (`no-cache`, `max-age=0`) is stored when it
//!   has a validator, and revalidated on every use.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{request, response, HeaderMap, HeaderValue, Method, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use super::key::vary_names;

/// Options from `[cache]` that affect decisions.
#[derive(Debug, Clone)]
pub struct PolicyOptions {
    /// RFC 9111 §4.2.2 heuristic freshness for responses without explicit freshness.
    pub heuristic_freshness: bool,
    /// The longest heuristic freshness lifetime.
    pub heuristic_max: Duration,
    /// Store responses that carry `Set-Cookie` (and replay the cookie to every client).
    pub store_set_cookie: bool,
    /// Whether a client's `no-cache` / `max-age=0` may force a fetch.
    pub honor_client_no_cache: bool,
    /// caje's own targeted field (RFC 9213), checked before `CDN-Cache-Control`.
    pub targeted: Option<HeaderName>,
}

/// The RFC 9213 field every CDN honours.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Whether a `Surrogate-Control` value is usable: non-empty and every directive a token with
/// an optional token or quoted-string argument.
fn valid_directives(value: &str) -> bool {
    let mut any = false;
    for d in value.split(',') {
        let d = d.trim();
        if d.is_empty() {
            continue;
        }
        let (name, arg) = match d.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim())),
            None => (d, None),
        };
        if !is_token(name) {
            return false;
        }
        if let Some(a) = arg {
            let quoted = a.len() >= 2 && a.starts_with('"') && a.ends_with('"');
            if !quoted && !is_token(a) {
                return false;
            }
        }
        any = true;
    }
    any
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn is_token(t: &str) -> bool {
    !t.is_empty() && t.bytes().all(is_tchar)
}

/// Directives whose value must be a non-negative integer (delta-seconds).
const SECONDS_DIRECTIVES: &[&str] = &[
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Parses a targeted field (RFC 9213 §2.1: a Structured Field Dictionary, RFC 8941 §3.2)
/// into `Cache-Control` syntax. `None` when the value is not a valid dictionary, or a
/// delta-seconds directive has a value of another type: the whole field is then ignored.
/// Keys are compared case-insensitively (caje accepted `MAX-AGE` before, and no valid
/// dictionary key can mean anything else).
fn targeted_directives(value: &str) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    let mut rest = value.trim_matches(|c| c == ' ' || c == '\t');
    if rest.is_empty() {
        return None;
    }
    loop {
        // key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )
        let key_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'*'))
            .count();
        let key = rest[..key_len].to_ascii_lowercase();
        if !key.starts_with(|c: char| c.is_ascii_lowercase() || c == '*') {
            return None;
        }
        rest = &rest[key_len..];
        let item = if let Some(r) = rest.strip_prefix('=') {
            let (item, r) = bare_item(r)?;
            rest = r;
            Some(item)
        } else {
            None
        };
        // Parameters (`;name[=value]`) are allowed and ignored.
        while let Some(r) = rest.strip_prefix(';') {
            let r = r.trim_start_matches(' ');
            let n = r
                .bytes()
                .take_while(|b| {
                    b.is_ascii_lowercase()
                        || b.is_ascii_digit()
                        || matches!(b, b'_' | b'-' | b'.' | b'*')
                })
                .count();
            if n == 0 {
                return None;
            }
            rest = &r[n..];
            if let Some(r) = rest.strip_prefix('=') {
                rest = bare_item(r)?.1;
            }
        }
        let numeric = SECONDS_DIRECTIVES.contains(&key.as_str());
        match item {
            Some(BareItem::Integer(n)) => out.push(format!("{key}={n}")),
            _ if numeric => return None,
            None | Some(BareItem::True) => out.push(key),
            Some(BareItem::False) => {}
            Some(BareItem::Other(text)) => out.push(format!("{key}={text}")),
        }
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            // A trailing comma is invalid.
            return None;
        }
    }
    if out.is_empty() {
        return None;
    }
    Some(out.join(", "))
}

enum BareItem {
    Integer(u64),
    True,
    False,
    /// A string, token, decimal or byte sequence, as written.
    Other(String),
}

/// One RFC 8941 bare item at the start of `s`, and what follows it.
fn bare_item(s: &str) -> Option<(BareItem, &str)> {
    let b = s.as_bytes();
    match b.first()? {
        b'-' | b'0'..=b'9' => {
            let n = 1 + b[1..]
                .iter()
                .take_while(|c| c.is_ascii_digit() || **c == b'.')
                .count();
            let text = &s[..n];
            if let Ok(v) = text.parse::<u64>() {
                // RFC 8941 integers have at most 15 digits; larger ones are invalid.
                return (text.len() <= 15).then_some((BareItem::Integer(v), &s[n..]));
            }
            text.parse::<f64>()
                .ok()
                .map(|_| (BareItem::Other(text.to_owned()), &s[n..]))
        }
        b'"' => {
            let mut i = 1;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() && matches!(b[i + 1], b'"' | b'\\') => i += 2,
                    b'"' => return Some((BareItem::Other(s[..=i].to_owned()), &s[i + 1..])),
                    c if (0x20..0x7f).contains(&c) && c != b'\\' => i += 1,
                    _ => return None,
                }
            }
            None
        }
        b'?' => match b.get(1)? {
            b'1' => Some((BareItem::True, &s[2..])),
            b'0' => Some((BareItem::False, &s[2..])),
            _ => None,
        },
        b':' => {
            let end = s[1..].find(':')? + 1;
            Some((BareItem::Other(s[..=end].to_owned()), &s[end + 1..]))
        }
        c if c.is_ascii_alphabetic() || *c == b'*' => {
            let n = s
                .bytes()
                .take_while(|c| is_tchar(*c) || matches!(c, b':' | b'/'))
                .count();
            Some((BareItem::Other(s[..n].to_owned()), &s[n..]))
        }
        _ => None,
    }
}

/// The older CDN field (Akamai, Fastly), honoured after `CDN-Cache-Control`.
pub const SURROGATE_CONTROL: &str = "surrogate-control";

/// The response headers caje's decisions use:
/// - with a valid targeted field (caje's own, then `CDN-Cache-Control`, then
///   `Surrogate-Control`), its value becomes the only `Cache-Control`, and `Expires`/`Pragma`
///   are ignored (RFC 9213 §2.1);
/// - directive names are lower-cased (`NO-CACHE` is `no-cache`: RFC 9111 §5.2, directives are
///   case-insensitive; `http-cache-semantics` compares them exactly);
/// - `Age` is read as cache-tests.fyi expects: the first value of the first line, without
///   parameters; a value that is not a non-negative integer is ignored, and a larger one
///   than 2^31 saturates to 2^31 (RFC 9111 §1.2.2);
/// - an invalid `Expires` becomes "0" (already expired, RFC 9111 §5.3).
pub fn effective_headers<'a>(headers: &'a HeaderMap, opts: &PolicyOptions) -> Cow<'a, HeaderMap> {
    let fields = opts
        .targeted
        .iter()
        .map(|n| n.as_str())
        .chain([CDN_CACHE_CONTROL, SURROGATE_CONTROL]);
    let mut out: Option<HeaderMap> = None;
    for field in fields {
        let values: Vec<&str> = headers
            .get_all(field)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if values.is_empty() {
            continue;
        }
        let joined = values.join(", ");
        let directives = if field == SURROGATE_CONTROL {
            // Surrogate-Control directives may name their target (`max-age=60;edge`);
            // caje is every target. It predates structured fields.
            let plain = joined
                .split(',')
                .map(|d| d.split(';').next().unwrap_or("").trim())
                .collect::<Vec<_>>()
                .join(", ");
            valid_directives(&plain).then_some(plain)
        } else {
            targeted_directives(&joined)
        };
        let Some(value) = directives.and_then(|d| HeaderValue::from_str(&d).ok()) else {
            continue;
        };
        let mut h = headers.clone();
        h.remove(http::header::CACHE_CONTROL);
        h.remove(http::header::EXPIRES);
        h.remove(http::header::PRAGMA);
        h.insert(http::header::CACHE_CONTROL, value);
        out = Some(h);
        break;
    }
    let current = out.as_ref().unwrap_or(headers);
    let cc: Vec<&str> = current
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if cc.iter().any(|v| v.bytes().any(|b| b.is_ascii_uppercase())) {
        let lowered = cc
            .iter()
            .flat_map(|v| v.split(','))
            .map(|d| match d.split_once('=') {
                Some((n, a)) => format!("{}={}", n.trim().to_ascii_lowercase(), a.trim()),
                None => d.trim().to_ascii_lowercase(),
            })
            .filter(|d| !d.is_empty())
            .collect::<Vec<_>>()
            .join(", ");
        if let Ok(v) = HeaderValue::from_str(&lowered) {
            out.get_or_insert_with(|| headers.clone())
                .insert(http::header::CACHE_CONTROL, v);
        }
    }
    let current = out.as_ref().unwrap_or(headers);
    let age = normalized_age(current);
    if age.as_ref() != current.get(http::header::AGE)
        || current.get_all(http::header::AGE).iter().nth(1).is_some()
    {
        let h = out.get_or_insert_with(|| headers.clone());
        h.remove(http::header::AGE);
        if let Some(age) = age {
            h.insert(http::header::AGE, age);
        }
    }
    let current = out.as_ref().unwrap_or(headers);
    if let Some(expires) = current.get(http::header::EXPIRES) {
        // RFC 9111 §5.3: an invalid date means "already expired". `http-cache-semantics`
        // parses dates leniently (RFC 2822 allows runs of spaces), so caje decides validity
        // (RFC 9110 §5.6.7: IMF-fixdate and the two obsolete formats) and hands it a
        // canonical IMF-fixdate, or "0".
        let canonical = expires
            .to_str()
            .ok()
            .and_then(parse_http_date)
            .map(httpdate::fmt_http_date);
        let value = canonical
            .and_then(|v| HeaderValue::from_str(&v).ok())
            .unwrap_or(HeaderValue::from_static("0"));
        if current
            .get_all(http::header::EXPIRES)
            .iter()
            .nth(1)
            .is_some()
            || value != expires
        {
            out.get_or_insert_with(|| headers.clone())
                .insert(http::header::EXPIRES, value);
        }
    }
    if opts.store_set_cookie
        && out
            .as_ref()
            .unwrap_or(headers)
            .contains_key(http::header::SET_COOKIE)
    {
        // The operator opted in: the cookie does not make the response private.
        out.get_or_insert_with(|| headers.clone())
            .remove(http::header::SET_COOKIE);
    }
    match out {
        Some(h) => Cow::Owned(h),
        None => Cow::Borrowed(headers),
    }
}

/// An HTTP-date in any of the three formats of RFC 9110 §5.6.7, with the names of days,
/// months and the zone in any case (`THU`, `AUG`, `gmt`: many origins get the case wrong,
/// and such a date means the same). Anything else, such as runs of spaces, is invalid.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    let value = value.trim();
    if let Ok(t) = httpdate::parse_http_date(value) {
        return Some(t);
    }
    let mut fixed = String::with_capacity(value.len());
    let mut word_start = true;
    for c in value.chars() {
        if c.is_ascii_alphabetic() {
            fixed.push(if word_start {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            });
            word_start = false;
        } else {
            fixed.push(c);
            word_start = true;
        }
    }
    let fixed = fixed.replace("Gmt", "GMT");
    httpdate::parse_http_date(&fixed).ok()
}

/// The one `Age` value caje uses, or `None` to ignore the field: the first member of the
/// first field line, its parameters dropped. Too large saturates to 2^31, the same bound
/// [`super::clamp`] applies to every delta-seconds before `http-cache-semantics` sees it.
fn normalized_age(headers: &HeaderMap) -> Option<HeaderValue> {
    let first = headers.get(http::header::AGE)?.to_str().ok()?;
    let item = first.split(',').next()?.split(';').next()?.trim();
    if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Digits only: a parse failure can only be overflow, which saturates.
    let secs = item
        .parse::<u64>()
        .unwrap_or(super::clamp::MAX_DELTA_SECONDS)
        .min(super::clamp::MAX_DELTA_SECONDS);
    Some(HeaderValue::from(secs))
}

/// A copy of `headers` that owns its bytes. hyper parses header values as slices of the
/// connection's read buffer: keeping such a value in a stored policy would pin that whole
/// buffer (tens of KiB) in memory for as long as the entry lives.
pub fn detach(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let mut v = HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
        v.set_sensitive(value.is_sensitive());
        out.append(name.clone(), v);
    }
    out
}

/// The response head `http-cache-semantics` sees: `res`'s status with `headers`, whose
/// delta-seconds are clamped (an unchecked huge `Age` made it panic).
fn with_headers(res: &response::Parts, mut headers: HeaderMap) -> response::Parts {
    super::clamp::clamp_delta_seconds(&mut headers, None);
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = res.status;
    parts.version = res.version;
    parts.headers = headers;
    parts
}

/// Why a response was not stored. `as_str` is the `detail` of `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotStorable {
    /// `no-store` in the request or response.
    NoStore,
    /// `private` in the response.
    Private,
    /// The response sets a cookie.
    SetCookie,
    /// The request carried credentials and the response did not allow sharing.
    Authorization,
    /// No `max-age`/`s-maxage`/`Expires` and heuristics are off.
    NoExplicitFreshness,
    /// The status code or method is not cacheable.
    Status,
    /// `Vary: *`.
    VaryStar,
    /// `Vary` names `Cookie` or `Authorization`.
    VaryPrivate,
    /// Larger than `max_object_bytes`.
    TooLarge,
    /// Freshness lifetime is zero and there is no validator to revalidate with.
    ZeroTtl,
}

impl NotStorable {
    /// The token used in `Cache-Status: ...; detail=<token>`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotStorable::NoStore => "no-store",
            NotStorable::Private => "private",
            NotStorable::SetCookie => "set-cookie",
            NotStorable::Authorization => "authorization",
            NotStorable::NoExplicitFreshness => "no-explicit-freshness",
            NotStorable::Status => "status",
            NotStorable::VaryStar => "vary-star",
            NotStorable::VaryPrivate => "vary-private",
            NotStorable::TooLarge => "too-large",
            NotStorable::ZeroTtl => "zero-ttl",
        }
    }
}

/// A storable response's policy, with the `Vary` names it was stored under.
pub struct Storable {
    /// The policy to persist (built from a sanitised request).
    pub policy: CachePolicy,
    /// Lower-case `Vary` field names.
    pub vary_names: Vec<String>,
}

/// Headers kept from the request in the persisted policy, besides the Vary-named ones.
fn sanitized_request(req: &request::Parts, host: &str, vary: &[String]) -> request::Parts {
    let mut headers = HeaderMap::new();
    if let Ok(h) = HeaderValue::from_str(host) {
        headers.insert(http::header::HOST, h);
    }
    for name in vary {
        for v in req.headers.get_all(name.as_str()) {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(v.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = Method::GET;
    // An owned copy, for the same reason as `detach`: a parsed URI may share the client
    // connection's read buffer.
    parts.uri = http::Uri::try_from(req.uri.to_string()).unwrap_or_else(|_| req.uri.clone());
    parts.headers = headers;
    parts
}

/// The request `http-cache-semantics` sees when answering: our normalised host, and without
/// the client's cache directives unless the operator lets clients force fetches.
fn lookup_request(req: &request::Parts, host: &str, opts: &PolicyOptions) -> request::Parts {
    let mut parts = sanitized_request(req, host, &[]);
    for (name, value) in &req.headers {
        if name == http::header::HOST {
            continue;
        }
        if !opts.honor_client_no_cache
            && (name == http::header::CACHE_CONTROL || name == http::header::PRAGMA)
        {
            continue;
        }
        parts.headers.append(name.clone(), value.clone());
    }
    // A client's `max-stale=99999999999` must not overflow the freshness arithmetic either.
    super::clamp::clamp_delta_seconds(&mut parts.headers, None);
    parts
}

fn cache_options() -> CacheOptions {
    CacheOptions {
        shared: true,
        // caje computes heuristic freshness itself ([`apply_heuristic`]), with a cap.
        cache_heuristic: 0.0,
        ..CacheOptions::default()
    }
}

/// The status codes whose caching rules `http-cache-semantics` (and so caje) implements.
const UNDERSTOOD_STATUSES: &[u16] = &[
    200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501,
];

/// Heuristically cacheable status codes (RFC 9110 §15.1); 206 is left out because caje does
/// not store partial content.
const HEURISTICALLY_CACHEABLE: &[u16] = &[200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

/// Final status codes that explicit freshness can make storable: all but partial content
/// (caje does not combine ranges) and 304 (a validation answer, never a response to store).
fn storable_status(status: StatusCode) -> bool {
    status.as_u16() >= 200
        && status != StatusCode::PARTIAL_CONTENT
        && status != StatusCode::NOT_MODIFIED
}

/// RFC 9111 §4.2.2: a response without explicit freshness but with `Last-Modified` is fresh
/// for 10% of the time since it was last modified, at most `heuristic_max`. The lifetime is
/// written into the effective `Cache-Control` as `max-age`. Returns whether it applied.
fn apply_heuristic(
    headers: &mut HeaderMap,
    response_time: SystemTime,
    opts: &PolicyOptions,
) -> bool {
    if !opts.heuristic_freshness {
        return false;
    }
    let date = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_http_date)
    };
    let Some(last_modified) = date(http::header::LAST_MODIFIED) else {
        return false;
    };
    let now = date(http::header::DATE).unwrap_or(response_time);
    let Ok(since) = now.duration_since(last_modified) else {
        return false;
    };
    let lifetime = (since / 10).min(opts.heuristic_max).as_secs();
    let Ok(directive) = HeaderValue::from_str(&format!("max-age={lifetime}")) else {
        return false;
    };
    headers.append(http::header::CACHE_CONTROL, directive);
    true
}

/// Removes one directive from every `Cache-Control` line.
fn remove_directive(headers: &mut HeaderMap, directive: &str) {
    let kept: Vec<String> = headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            !d.is_empty() && !name.eq_ignore_ascii_case(directive)
        })
        .map(str::to_owned)
        .collect();
    headers.remove(http::header::CACHE_CONTROL);
    if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
        if !v.is_empty() {
            headers.insert(http::header::CACHE_CONTROL, v);
        }
    }
}

fn has_directive(headers: &HeaderMap, directive: &str) -> bool {
    headers
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let name = d.split('=').next().unwrap_or("").trim();
            name.eq_ignore_ascii_case(directive)
        })
}

/// Decides whether a response to `req` may be stored, and builds the policy to persist.
pub fn decide(
    req: &request::Parts,
    host: &str,
    res: &response::Parts,
    response_time: SystemTime,
    opts: &PolicyOptions,
) -> Result<Storable, NotStorable> {
    if req.method != Method::GET {
        return Err(NotStorable::Status);
    }
    let vary = vary_names(&res.headers);
    if vary.iter().any(|n| n == "*") {
        return Err(NotStorable::VaryStar);
    }
    if vary
        .iter()
        .any(|n| n == "cookie" || n == "authorization" || n == "proxy-authorization")
    {
        return Err(NotStorable::VaryPrivate);
    }
    if res.headers.contains_key(http::header::SET_COOKIE) && !opts.store_set_cookie {
        return Err(NotStorable::SetCookie);
    }
    let mut effective = with_headers(res, detach(&effective_headers(&res.headers, opts)));
    let explicit = has_directive(&effective.headers, "max-age")
        || has_directive(&effective.headers, "s-maxage")
        || effective.headers.contains_key(http::header::EXPIRES);
    let public = has_directive(&effective.headers, "public");
    if has_directive(&effective.headers, "must-understand") {
        // RFC 9111 §5.2.2.3: store only when the status code's caching rules are known to
        // caje, and then `no-store` (sent for caches that do not know `must-understand`) does
        // not apply.
        if !UNDERSTOOD_STATUSES.contains(&res.status.as_u16()) {
            return Err(NotStorable::Status);
        }
        remove_directive(&mut effective.headers, "no-store");
    }
    if storable_status(res.status)
        && !UNDERSTOOD_STATUSES.contains(&res.status.as_u16())
        && (explicit || public)
    {
        // RFC 9111 §3: any final status code may be stored with explicit freshness (or
        // `public`). `http-cache-semantics` stores only the statuses it knows; it sees 200
        // here, while the entry keeps the real status.
        effective.status = StatusCode::OK;
    }
    let heuristic = !explicit
        && !has_directive(&effective.headers, "no-cache")
        && (public || HEURISTICALLY_CACHEABLE.contains(&res.status.as_u16()))
        && apply_heuristic(&mut effective.headers, response_time, opts);
    let eh = &effective.headers;
    // Decide with the request as the client sent it (credentials included), so the RFC's
    // rule about Authorization applies; persist a sanitised copy.
    let full = CachePolicy::new_options(req, &effective, response_time, cache_options());
    if !full.is_storable() {
        return Err(
            if has_directive(eh, "no-store") || has_directive(&req.headers, "no-store") {
                NotStorable::NoStore
            } else if has_directive(eh, "private") {
                NotStorable::Private
            } else if req.headers.contains_key(http::header::AUTHORIZATION) {
                NotStorable::Authorization
            } else {
                NotStorable::Status
            },
        );
    }
    let revalidate_always = has_directive(eh, "no-cache");
    if !explicit && !revalidate_always && !heuristic {
        return Err(NotStorable::NoExplicitFreshness);
    }
    let sanitized = sanitized_request(req, host, &vary);
    let policy = CachePolicy::new_options(&sanitized, &effective, response_time, cache_options());
    let has_validator =
        eh.contains_key(http::header::ETAG) || eh.contains_key(http::header::LAST_MODIFIED);
    if policy.time_to_live(response_time).is_zero() && !has_validator {
        // Never fresh and nothing to revalidate with: the entry could never be used.
        return Err(NotStorable::ZeroTtl);
    }
    Ok(Storable {
        policy,
        vary_names: vary,
    })
}

/// Whether a stored response may answer a request that carries `Authorization` (RFC 9111
/// §3.5): only when it explicitly allows shared reuse for authenticated requests with
/// `public`, `s-maxage` or `must-revalidate`. Otherwise the request goes to the origin, so
/// that no user gets a copy made for someone else (or for an anonymous client).
pub fn answers_authenticated(stored: &HeaderMap, opts: &PolicyOptions) -> bool {
    let eh = effective_headers(stored, opts);
    ["public", "s-maxage", "must-revalidate"]
        .iter()
        .any(|d| has_directive(&eh, d))
}

/// Whether a request carries credentials that keep it away from shared copies.
pub fn is_authenticated(req: &HeaderMap) -> bool {
    req.contains_key(http::header::AUTHORIZATION)
}

/// Freshness of a stored response for a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Usable as is; `age` for the `Age` header, `ttl` remaining.
    Fresh {
        /// Current age.
        age: Duration,
        /// Remaining freshness lifetime.
        ttl: Duration,
    },
    /// Must not be used without going to the origin (or a stale-serving rule).
    Stale,
}

/// Whether `policy` lets a stored response answer `req` now.
pub fn freshness(
    policy: &CachePolicy,
    req: &request::Parts,
    host: &str,
    now: SystemTime,
    opts: &PolicyOptions,
) -> Freshness {
    if !opts.honor_client_no_cache {
        // Without the client's directives, `before_request` reduces to "not stale" (the
        // caller matched URL, host and Vary variant already), and skips building a whole
        // response head per hit.
        return if policy.is_stale(now) {
            Freshness::Stale
        } else {
            Freshness::Fresh {
                age: policy.age(now),
                ttl: policy.time_to_live(now),
            }
        };
    }
    let lookup = lookup_request(req, host, opts);
    match policy.before_request(&lookup, now) {
        BeforeRequest::Fresh(_) => Freshness::Fresh {
            age: policy.age(now),
            ttl: policy.time_to_live(now),
        },
        BeforeRequest::Stale { .. } => Freshness::Stale,
    }
}

/// Remaining lifetime at `now` (zero when stale).
pub fn time_to_live(policy: &CachePolicy, now: SystemTime) -> Duration {
    policy.time_to_live(now)
}

/// Current age at `now`.
pub fn age(policy: &CachePolicy, now: SystemTime) -> Duration {
    policy.age(now)
}

/// How long past its freshness lifetime a response stored at `stored_at` is at `now`.
pub fn staleness(policy: &CachePolicy, stored_at: SystemTime, now: SystemTime) -> Duration {
    let lifetime = policy.time_to_live(stored_at) + policy.age(stored_at);
    policy.age(now).saturating_sub(lifetime)
}

/// What a response allows once it is stale, from its effective cache directives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StaleRules {
    /// `stale-while-revalidate=N`.
    pub while_revalidate: Option<Duration>,
    /// `stale-if-error=N`.
    pub if_error: Option<Duration>,
    /// `must-revalidate`, `proxy-revalidate`, `no-cache` or `s-maxage` (which implies
    /// proxy-revalidate for shared caches): no stale serving at all.
    pub forbidden: bool,
}

/// Reads the stale-serving directives of a stored response.
pub fn stale_rules(stored: &HeaderMap, opts: &PolicyOptions) -> StaleRules {
    let eh = effective_headers(stored, opts);
    let arg = |name: &str| -> Option<Duration> {
        eh.get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|d| d.split_once('='))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.trim().trim_matches('"').parse::<u64>().ok())
            .map(Duration::from_secs)
    };
    StaleRules {
        while_revalidate: arg("stale-while-revalidate"),
        if_error: arg("stale-if-error"),
        forbidden: has_directive(&eh, "must-revalidate")
            || has_directive(&eh, "proxy-revalidate")
            || has_directive(&eh, "no-cache")
            || has_directive(&eh, "s-maxage"),
    }
}

/// Headers excluded from a 304's update of the stored head (RFC 9111 §3.2): they describe
/// the body that is being kept.
const NOT_UPDATED_BY_304: &[&str] = &[
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "content-range",
    "cache-status",
    "age",
];

/// The result of merging a 304 into a stored response (RFC 9111 §4.3.4).
pub struct Refreshed {
    /// The new policy.
    pub policy: CachePolicy,
    /// The stored head with the 304's fields applied.
    pub headers: HeaderMap,
}

/// Merges a 304 into the stored head and policy, or `None` when the 304's validators do not
/// match the stored response (the body must then be fetched again).
pub fn refresh(
    stored: &super::entry::EntryMeta,
    req: &request::Parts,
    host: &str,
    not_modified: &response::Parts,
    response_time: SystemTime,
    opts: &PolicyOptions,
) -> Option<Refreshed> {
    if not_modified.status != StatusCode::NOT_MODIFIED {
        return None;
    }
    let (_, mut headers) = stored.response_head();
    let names: Vec<&HeaderName> = not_modified.headers.keys().collect();
    for name in names {
        if NOT_UPDATED_BY_304.contains(&name.as_str()) {
            continue;
        }
        headers.remove(name);
        for v in not_modified.headers.get_all(name) {
            if let Ok(v) = HeaderValue::from_bytes(v.as_bytes()) {
                headers.append(name.clone(), v);
            }
        }
    }
    let sanitized = sanitized_request(req, host, &stored.variant.names());
    let mut h304 = detach(&effective_headers(&not_modified.headers, opts));
    if !h304.contains_key(http::header::ETAG) && !h304.contains_key(http::header::LAST_MODIFIED) {
        // A 304 without validators answers the conditional request caje built from this
        // very entry's validators, so it selects this entry (RFC 9111 §4.3.4 leaves the
        // choice to the cache when only one response is stored). Without this, such a 304
        // would be refused and the body fetched a second time.
        let (_, stored_head) = stored.response_head();
        for name in [http::header::ETAG, http::header::LAST_MODIFIED] {
            if let Some(v) = stored_head.get(&name) {
                h304.insert(name, v.clone());
            }
        }
    }
    let effective_304 = with_headers(not_modified, h304);
    match stored
        .policy
        .after_response(&sanitized, &effective_304, response_time)
    {
        AfterResponse::NotModified(policy, _) => Some(Refreshed { policy, headers }),
        AfterResponse::Modified(..) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: PolicyOptions = PolicyOptions {
        heuristic_freshness: false,
        heuristic_max: Duration::from_secs(86_400),
        store_set_cookie: false,
        honor_client_no_cache: false,
        targeted: None,
    };

    fn req(headers: &[(&str, &str)]) -> request::Parts {
        let mut b = http::Request::get("/p?q=1").header("host", "example.com");
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn res(headers: &[(&str, &str)]) -> response::Parts {
        let mut b = http::Response::builder().status(200);
        for (n, v) in headers {
            b = b.header(*n, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn decide_now(
        q: &request::Parts,
        r: &response::Parts,
        opts: PolicyOptions,
    ) -> Result<Storable, NotStorable> {
        decide(q, "example.com", r, SystemTime::now(), &opts)
    }

    #[test]
    fn explicit_max_age_is_stored() {
        let s = decide_now(&req(&[]), &res(&[("cache-control", "max-age=60")]), OPTS);
        assert!(s.is_ok());
    }

    #[test]
    fn refusals_name_their_reason() {
        type Case<'a> = (
            &'a [(&'a str, &'a str)],
            &'a [(&'a str, &'a str)],
            NotStorable,
        );
        let cases: &[Case] = &[
            (&[], &[("cache-control", "no-store")], NotStorable::NoStore),
            (
                &[],
                &[("cache-control", "private, max-age=60")],
                NotStorable::Private,
            ),
            (
                &[],
                &[("cache-control", "max-age=60"), ("set-cookie", "a=b")],
                NotStorable::SetCookie,
            ),
            (
                &[("authorization", "Bearer x")],
                &[("cache-control", "max-age=60")],
                NotStorable::Authorization,
            ),
            (
                &[],
                &[("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT")],
                NotStorable::NoExplicitFreshness,
            ),
            (
                &[],
                &[("cache-control", "max-age=60"), ("vary", "*")],
                NotStorable::VaryStar,
            ),
            (
                &[],
                &[("cache-control", "max-age=60"), ("vary", "Cookie")],
                NotStorable::VaryPrivate,
            ),
        ];
        for (q, r, want) in cases {
            let got = decide_now(&req(q), &res(r), OPTS).err();
            assert_eq!(got, Some(*want), "req {q:?} res {r:?}");
        }
    }

    #[test]
    fn authorization_with_public_may_be_shared_but_is_not_persisted() {
        let q = req(&[("authorization", "Bearer secret"), ("cookie", "sid=1")]);
        let s = decide_now(&q, &res(&[("cache-control", "public, max-age=60")]), OPTS)
            .unwrap_or_else(|e| panic!("public allows sharing, got {e:?}"));
        let bytes = postcard::to_stdvec(&s.policy).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("secret"), "credentials persisted");
        assert!(!text.contains("sid=1"), "cookie persisted");
    }

    #[test]
    fn directive_names_are_case_insensitive() {
        let r = decide_now(
            &req(&[]),
            &res(&[("cache-control", "MAX-AGE=60, NO-STORE")]),
            OPTS,
        );
        assert_eq!(r.err(), Some(NotStorable::NoStore));
        assert!(decide_now(&req(&[]), &res(&[("cache-control", "Max-Age=60")]), OPTS).is_ok());
    }

    #[test]
    fn invalid_age_is_ignored_and_huge_age_saturates() {
        // Not a non-negative integer: ignored, the response is fresh for its max-age.
        for ignored in ["abc", "-10", "1.5", "0, 7200", "", "99abc"] {
            let r = res(&[("cache-control", "max-age=3600"), ("age", ignored)]);
            let s = decide_now(&req(&[]), &r, OPTS)
                .unwrap_or_else(|e| panic!("Age: {ignored:?}: {e:?}"));
            assert!(s.policy.time_to_live(SystemTime::now()) > Duration::from_secs(3500));
        }
        // The first member counts, parameters are dropped; too large saturates to 2^31.
        for old in [
            "7200, 0",
            "7200; x=1",
            "99999999999999999999999999999",
            "2147483648",
        ] {
            let r = res(&[("cache-control", "max-age=3600"), ("age", old)]);
            assert_eq!(
                decide_now(&req(&[]), &r, OPTS).err(),
                Some(NotStorable::ZeroTtl),
                "Age: {old}"
            );
        }
        let mut h = HeaderMap::new();
        h.append("age", HeaderValue::from_static("99999999999999999999999"));
        assert_eq!(
            normalized_age(&h),
            Some(HeaderValue::from(crate::cache::clamp::MAX_DELTA_SECONDS))
        );
        h.insert("age", HeaderValue::from_static("0"));
        h.append("age", HeaderValue::from_static("7200"));
        assert_eq!(normalized_age(&h), Some(HeaderValue::from(0u64)));
    }

    #[test]
    fn targeted_fields_are_structured_dictionaries() {
        assert_eq!(
            targeted_directives("max-age=60, no-transform;x=1, private=?0").as_deref(),
            Some("max-age=60, no-transform")
        );
        assert_eq!(
            targeted_directives("MAX-AGE=60").as_deref(),
            Some("max-age=60")
        );
        for bad in [
            "max-age=10000, &&&&&",
            "max-age=\"10000\"",
            "max-age =100",
            "max-age= 100",
            "max-age=60,",
            "max-age=1.5",
            "max-age=9999999999999999",
            "",
        ] {
            assert_eq!(targeted_directives(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn http_dates_are_strict_about_spaces_but_not_about_case() {
        assert!(parse_http_date("Thu, 18 Aug 2050 02:01:18 GMT").is_some());
        assert!(parse_http_date("THU, 18 AUG 2050 02:01:18 gmt").is_some());
        assert!(parse_http_date("Thursday, 18-Aug-50 02:01:18 GMT").is_some());
        assert!(parse_http_date("Thu, 18  Aug  2050 02:01:18 GMT").is_none());
        assert!(parse_http_date("Thu, 18-Aug-2050 02:01:18 GMT").is_none());
        assert!(parse_http_date("0").is_none());
    }

    #[test]
    fn surrogate_control_is_a_targeted_field() {
        let r = res(&[
            ("cache-control", "no-store"),
            ("surrogate-control", "max-age=60;edge"),
        ]);
        assert!(decide_now(&req(&[]), &r, OPTS).is_ok());
        let cdn_wins = res(&[
            ("cdn-cache-control", "no-store"),
            ("surrogate-control", "max-age=60"),
        ]);
        assert_eq!(
            decide_now(&req(&[]), &cdn_wins, OPTS).err(),
            Some(NotStorable::NoStore)
        );
    }

    #[test]
    fn heuristic_freshness_is_opt_in() {
        let r = res(&[
            ("last-modified", "Mon, 01 Jan 2024 00:00:00 GMT"),
            ("date", &httpdate::fmt_http_date(SystemTime::now())),
        ]);
        let on = PolicyOptions {
            heuristic_freshness: true,
            ..OPTS
        };
        assert!(decide_now(&req(&[]), &r, on).is_ok());
        assert!(decide_now(&req(&[]), &r, OPTS).is_err());
    }

    #[test]
    fn client_no_cache_is_ignored_by_default() {
        let now = SystemTime::now();
        let s = decide_now(&req(&[]), &res(&[("cache-control", "max-age=60")]), OPTS)
            .ok()
            .unwrap();
        let reload = req(&[("cache-control", "no-cache"), ("pragma", "no-cache")]);
        assert!(matches!(
            freshness(&s.policy, &reload, "example.com", now, &OPTS),
            Freshness::Fresh { .. }
        ));
        let honor = PolicyOptions {
            honor_client_no_cache: true,
            ..OPTS
        };
        assert_eq!(
            freshness(&s.policy, &reload, "example.com", now, &honor),
            Freshness::Stale
        );
    }

    #[test]
    fn expired_is_stale_and_age_counts_resident_time() {
        let then = SystemTime::now() - Duration::from_secs(120);
        let s = decide(
            &req(&[]),
            "example.com",
            &res(&[("cache-control", "max-age=60")]),
            then,
            &OPTS,
        )
        .ok()
        .unwrap();
        let now = SystemTime::now();
        assert_eq!(
            freshness(&s.policy, &req(&[]), "example.com", now, &OPTS),
            Freshness::Stale
        );
        assert!(age(&s.policy, now) >= Duration::from_secs(120));
    }
}
