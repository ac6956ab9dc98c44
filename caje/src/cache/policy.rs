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

use std::time::{Duration, SystemTime};

use http::header::HeaderName;
use http::{request, response, HeaderMap, HeaderValue, Method, StatusCode};
use http_cache_semantics::{AfterResponse, BeforeRequest, CacheOptions, CachePolicy};

use super::key::vary_names;

use super::directives::parse_http_date;
pub use super::directives::{detach, effective_headers, CDN_CACHE_CONTROL, SURROGATE_CONTROL};

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
        // `is_stale(now)` is `max_age() <= age(now)`, which is `time_to_live(now)` being zero:
        // one computation of the lifetime instead of two (it re-reads the stored headers, and
        // runs on every hit).
        let ttl = policy.time_to_live(now);
        return if ttl.is_zero() {
            Freshness::Stale
        } else {
            Freshness::Fresh {
                age: policy.age(now),
                ttl,
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

/// What [`freshness`] needs of a stored policy when the client's directives are not honoured
/// (`cache.honor_client_no_cache = false`, the default), taken once when the entry is read so
/// that a hit on a hot entry needs neither the policy nor its header maps: `http-cache-semantics`
/// computes the age as the stored `Age` plus the time since the response was received, and the
/// freshness lifetime (`max_age`) from the stored headers alone, independent of `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetime {
    /// The stored `Age` header's value.
    age_header: Duration,
    /// When the response was received.
    response_time: SystemTime,
    /// The freshness lifetime; zero when it is no longer than `age_header` (stale at once).
    max_age: Duration,
}

impl Lifetime {
    /// The lifetime of `policy`. The crate does not expose its inputs, so they are read back
    /// through its own functions: before the response time (the epoch) the age is the `Age`
    /// header alone, and long after it the age grows by exactly the time since.
    pub fn of(policy: &CachePolicy) -> Lifetime {
        let epoch = SystemTime::UNIX_EPOCH;
        let age_header = policy.age(epoch);
        let ttl = policy.time_to_live(epoch);
        // `time_to_live` saturates: a zero means `max_age <= age_header`, stale for good.
        let max_age = if ttl.is_zero() {
            Duration::ZERO
        } else {
            ttl + age_header
        };
        let far = epoch + Duration::from_secs(1 << 40);
        let resident = policy.age(far).saturating_sub(age_header);
        Lifetime {
            age_header,
            response_time: far - resident,
            max_age,
        }
    }

    /// `CachePolicy::age` at `now`.
    pub fn age(&self, now: SystemTime) -> Duration {
        self.age_header + now.duration_since(self.response_time).unwrap_or_default()
    }

    /// Freshness at `now`, as [`freshness`] decides it when the client's directives are not
    /// honoured; `None` when they are (the full policy decides then).
    pub fn freshness(&self, now: SystemTime, opts: &PolicyOptions) -> Option<Freshness> {
        if opts.honor_client_no_cache {
            return None;
        }
        let age = self.age(now);
        let ttl = self.max_age.checked_sub(age).unwrap_or_default();
        Some(if ttl.is_zero() {
            Freshness::Stale
        } else {
            Freshness::Fresh { age, ttl }
        })
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
    use crate::cache::directives::normalized_age;

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

    /// The compact freshness summary a hot entry keeps decides exactly as the full policy
    /// does, with the same `Age` and remaining lifetime, at every time around its expiry, for
    /// every source of the lifetime (also after the policy's round trip through the entry
    /// file's encoding).
    #[test]
    fn the_lifetime_summary_decides_as_the_full_policy() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::new(1_790_000_000, 123_456_789);
        let date = httpdate::fmt_http_date(t0 - Duration::from_secs(30));
        let old = httpdate::fmt_http_date(t0 - Duration::from_secs(1000));
        let later = httpdate::fmt_http_date(t0 + Duration::from_secs(45));
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![("cache-control", "max-age=60")],
            vec![("cache-control", "max-age=60"), ("age", "20")],
            vec![("cache-control", "max-age=60"), ("age", "60")],
            vec![("cache-control", "max-age=60"), ("age", "90")],
            vec![("cache-control", "s-maxage=10, max-age=600")],
            vec![("cache-control", "max-age=0"), ("etag", "\"e\"")],
            vec![("cache-control", "no-cache"), ("etag", "\"e\"")],
            vec![("expires", &later), ("date", &date)],
            vec![("last-modified", &old), ("date", &date)],
            vec![("last-modified", &old)],
            vec![("cache-control", "max-age=31536000, immutable")],
        ];
        let opts = PolicyOptions {
            heuristic_freshness: true,
            ..OPTS
        };
        let q = req(&[]);
        let (mut fresh, mut stale) = (0, 0);
        for headers in &cases {
            // An `Age` past the lifetime is not stored at all.
            let Ok(stored) = decide(&q, "example.com", &res(headers), t0, &opts) else {
                continue;
            };
            let bytes = postcard::to_allocvec(&stored.policy).unwrap();
            let decoded: CachePolicy = postcard::from_bytes(&bytes).unwrap();
            for policy in [&stored.policy, &decoded] {
                let summary = Lifetime::of(policy);
                for offset in [
                    -5.0, 0.0, 0.5, 9.9, 10.0, 29.999, 40.0, 59.5, 60.0, 61.0, 99.0,
                ] {
                    let now = if offset < 0.0 {
                        t0 - Duration::from_secs_f64(-offset)
                    } else {
                        t0 + Duration::from_secs_f64(offset)
                    };
                    let full = freshness(policy, &q, "example.com", now, &opts);
                    match full {
                        Freshness::Fresh { .. } => fresh += 1,
                        Freshness::Stale => stale += 1,
                    }
                    assert_eq!(
                        summary.freshness(now, &opts),
                        Some(full),
                        "{headers:?} at {offset}"
                    );
                    assert_eq!(summary.age(now), policy.age(now), "{headers:?} at {offset}");
                }
            }
        }
        assert!(
            fresh > 20 && stale > 20,
            "both decisions covered: {fresh} {stale}"
        );
        // With the client's directives honoured the summary does not decide.
        let stored = decide(&q, "example.com", &res(&cases[0]), t0, &opts).unwrap();
        let honour = PolicyOptions {
            honor_client_no_cache: true,
            ..opts
        };
        assert_eq!(Lifetime::of(&stored.policy).freshness(t0, &honour), None);
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
