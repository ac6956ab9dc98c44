//! Cacheability and freshness: the only module that talks to `http-cache-semantics`.
//!
//! `http-cache-semantics` implements RFC 9111 for a shared cache. caje adds the rules a CDN
//! operator expects on top of it:
//! - only explicit freshness (`s-maxage`, `max-age`, `Expires`) is cached unless heuristic
//!   freshness is enabled in config;
//! - a response that sets a cookie is never stored (it is meant for one user);
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
    /// Whether a client's `no-cache` / `max-age=0` may force a fetch.
    pub honor_client_no_cache: bool,
    /// caje's own targeted field (RFC 9213), checked before `CDN-Cache-Control`.
    pub targeted: Option<HeaderName>,
}

/// The RFC 9213 field every CDN honours.
pub const CDN_CACHE_CONTROL: &str = "cdn-cache-control";

/// Whether a targeted field value is usable: non-empty and every directive a token with an
/// optional token or quoted-string argument.
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
        let token = |t: &str| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        if !token(name) {
            return false;
        }
        if let Some(a) = arg {
            let quoted = a.len() >= 2 && a.starts_with('"') && a.ends_with('"');
            if !quoted && !token(a) {
                return false;
            }
        }
        any = true;
    }
    any
}

/// The older CDN field (Akamai, Fastly), honoured after `CDN-Cache-Control`.
pub const SURROGATE_CONTROL: &str = "surrogate-control";

/// The response headers caje's decisions use:
/// - with a valid targeted field (caje's own, then `CDN-Cache-Control`, then
///   `Surrogate-Control`), its value becomes the only `Cache-Control`, and `Expires`/`Pragma`
///   are ignored (RFC 9213 §2.1);
/// - directive names are lower-cased (`NO-CACHE` is `no-cache`: RFC 9111 §5.2, directives are
///   case-insensitive; `http-cache-semantics` compares them exactly);
/// - an `Age` that is not one non-negative integer makes the response stale (RFC 9111 §5.1:
///   a cache must not trust an invalid age to mean "young").
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
        let mut joined = values.join(", ");
        if field == SURROGATE_CONTROL {
            // Surrogate-Control directives may name their target (`max-age=60;edge`);
            // caje is every target.
            joined = joined
                .split(',')
                .map(|d| d.split(';').next().unwrap_or("").trim())
                .collect::<Vec<_>>()
                .join(", ");
        }
        if !valid_directives(&joined) {
            continue;
        }
        let Ok(value) = HeaderValue::from_str(&joined) else {
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
    let ages: Vec<&HeaderValue> = current.get_all(http::header::AGE).iter().collect();
    // Exactly one line holding one non-negative integer; anything else (lists, several lines,
    // signs, fractions, parameters) makes the response stale rather than young.
    let valid_age = match ages.as_slice() {
        [] => true,
        [one] => !one.is_empty() && one.as_bytes().iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !valid_age {
        out.get_or_insert_with(|| headers.clone())
            .insert(http::header::AGE, HeaderValue::from_static("2147483648"));
    }
    match out {
        Some(h) => Cow::Owned(h),
        None => Cow::Borrowed(headers),
    }
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

fn cache_options(opts: &PolicyOptions) -> CacheOptions {
    CacheOptions {
        shared: true,
        cache_heuristic: if opts.heuristic_freshness { 0.1 } else { 0.0 },
        ..CacheOptions::default()
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
    if res.headers.contains_key(http::header::SET_COOKIE) {
        return Err(NotStorable::SetCookie);
    }
    let effective = with_headers(res, detach(&effective_headers(&res.headers, opts)));
    let eh = &effective.headers;
    // Decide with the request as the client sent it (credentials included), so the RFC's
    // rule about Authorization applies; persist a sanitised copy.
    let full = CachePolicy::new_options(req, &effective, response_time, cache_options(opts));
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
    let explicit = has_directive(eh, "max-age")
        || has_directive(eh, "s-maxage")
        || eh.contains_key(http::header::EXPIRES);
    let revalidate_always = has_directive(eh, "no-cache");
    if !explicit && !revalidate_always && !opts.heuristic_freshness {
        return Err(NotStorable::NoExplicitFreshness);
    }
    let sanitized = sanitized_request(req, host, &vary);
    let policy =
        CachePolicy::new_options(&sanitized, &effective, response_time, cache_options(opts));
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
    let effective_304 = with_headers(
        not_modified,
        detach(&effective_headers(&not_modified.headers, opts)),
    );
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
    fn invalid_age_makes_a_response_stale() {
        for bad in ["abc", "-10", "1.5", "7200, 0", "0, 0", "7200; x=1"] {
            let r = res(&[("cache-control", "max-age=3600"), ("age", bad)]);
            assert_eq!(
                decide_now(&req(&[]), &r, OPTS).err(),
                Some(NotStorable::ZeroTtl),
                "Age: {bad}"
            );
        }
        for good in ["10", "0"] {
            let ok = res(&[("cache-control", "max-age=3600"), ("age", good)]);
            assert!(decide_now(&req(&[]), &ok, OPTS).is_ok(), "Age: {good}");
        }
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
