//! Property tests: whatever a client or an origin sends, parsing and the caching decision
//! never panic, and their results stay within bounds.
//!
//! These run on every CI build with a fixed number of cases (`PROPTEST_CASES` overrides it
//! for a longer local run, e.g. `PROPTEST_CASES=20000 cargo nextest run --test prop_input`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use caje::cache::policy::{self, PolicyOptions};
use caje::framing::{Scanner, Verdict};
use caje::hit::{parse_range, RangeSpec};
use caje::host::Host;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Numbers an attacker or a broken origin would send: small, at the i32/u32/u64 edges, and
/// past u64.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..100_000).prop_map(|n| n.to_string()),
        Just("2147483647".to_owned()),
        Just("2147483648".to_owned()),
        Just("4294967296".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("99999999999999999999999999".to_owned()),
        Just("-1".to_owned()),
        Just("1.5".to_owned()),
        Just("".to_owned()),
        any::<u64>().prop_map(|n| n.to_string()),
    ]
}

/// HTTP dates, including ones at the edges of what a `SystemTime` can hold.
fn date() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..4_000_000_000)
            .prop_map(|s| httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + Duration::from_secs(s))),
        Just("Thu, 01 Jan 1970 00:00:00 GMT".to_owned()),
        Just("Fri, 31 Dec 9999 23:59:59 GMT".to_owned()),
        Just("Mon, 01 Jan 0001 00:00:00 GMT".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        "[ -~]{0,40}",
    ]
}

fn directive() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        Just("max-age"),
        Just("s-maxage"),
        Just("stale-while-revalidate"),
        Just("stale-if-error"),
        Just("no-cache"),
        Just("no-store"),
        Just("private"),
        Just("public"),
        Just("must-revalidate"),
        Just("proxy-revalidate"),
        Just("immutable"),
        Just("MAX-AGE"),
    ];
    (name, proptest::option::of(number())).prop_map(|(n, v)| match v {
        Some(v) => format!("{n}={v}"),
        None => n.to_owned(),
    })
}

fn cache_control() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(directive(), 0..4).prop_map(|d| d.join(", ")),
        "[ -~]{0,30}",
    ]
}

/// A response header section as an origin might send it.
fn response_headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let field = prop_oneof![
        cache_control().prop_map(|v| ("cache-control", v)),
        cache_control().prop_map(|v| ("cdn-cache-control", v)),
        cache_control().prop_map(|v| ("caje-cache-control", v)),
        cache_control().prop_map(|v| ("surrogate-control", v)),
        number().prop_map(|v| ("age", v)),
        date().prop_map(|v| ("date", v)),
        date().prop_map(|v| ("expires", v)),
        date().prop_map(|v| ("last-modified", v)),
        "\"[a-z0-9]{0,8}\"".prop_map(|v| ("etag", v)),
        prop_oneof![
            Just("accept-encoding".to_owned()),
            Just("*".to_owned()),
            "[ -~]{0,20}"
        ]
        .prop_map(|v| ("vary", v)),
        Just(("pragma", "no-cache".to_owned())),
    ];
    proptest::collection::vec(field, 0..8)
}

fn header_map(fields: &[(&'static str, String)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in fields {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.append(HeaderName::from_static(name), v);
        }
    }
    h
}

fn options(heuristic: bool, honor: bool) -> PolicyOptions {
    PolicyOptions {
        heuristic_freshness: heuristic,
        honor_client_no_cache: honor,
        targeted: Some(HeaderName::from_static("caje-cache-control")),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Any response head, any clock: deciding, judging freshness and stale rules never
    /// panic, and an `Age` the origin sends never makes a fresh entry older than 2^31 s.
    #[test]
    fn policy_never_panics(
        fields in response_headers(),
        status in prop_oneof![Just(200u16), Just(203), Just(301), Just(404), Just(500), 100u16..600],
        req_cc in proptest::option::of(cache_control()),
        heuristic in any::<bool>(),
        honor in any::<bool>(),
        response_secs in 0u64..4_000_000_000,
        later in prop_oneof![0u64..100, 0u64..4_000_000_000, Just(u32::MAX as u64 * 4)],
    ) {
        let opts = options(heuristic, honor);
        let mut req = Request::get("/p").header("host", "a.example");
        if let Some(cc) = &req_cc {
            if HeaderValue::from_str(cc).is_ok() {
                req = req.header("cache-control", cc.as_str());
            }
        }
        let (req, ()) = req.body(()).unwrap().into_parts();
        let mut res = Response::builder().status(status);
        *res.headers_mut().unwrap() = header_map(&fields);
        let (res, ()) = res.body(()).unwrap().into_parts();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(response_secs);
        let _ = policy::stale_rules(&res.headers, &opts);
        if let Ok(stored) = policy::decide(&req, "a.example", &res, t0, &opts) {
            for now in [t0, t0 + Duration::from_secs(later)] {
                match policy::freshness(&stored.policy, &req, "a.example", now, &opts) {
                    policy::Freshness::Fresh { age, ttl } => {
                        prop_assert!(age <= Duration::from_secs(1 << 31) + Duration::from_secs(later));
                        let _ = ttl;
                    }
                    policy::Freshness::Stale => {}
                }
                let _ = policy::time_to_live(&stored.policy, now);
                let _ = policy::age(&stored.policy, now);
                let _ = policy::staleness(&stored.policy, t0, now);
            }
        }
    }

    /// Any bytes on a connection, cut anywhere: the framing scanner never panics.
    #[test]
    fn framing_scanner_never_panics(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
    ) {
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(8192, 100, verdict.clone());
        for c in &chunks {
            s.feed(c);
        }
        let _ = verdict.rejects(1);
    }

    /// Well-formed requests with one Content-Length, cut anywhere, are never rejected.
    #[test]
    fn framing_accepts_plain_requests_however_cut(
        n in 1usize..4,
        body_len in 0usize..50,
        cuts in proptest::collection::vec(0usize..400, 0..6),
    ) {
        let mut bytes = Vec::new();
        for i in 0..n {
            bytes.extend_from_slice(
                format!("POST /r{i} HTTP/1.1\r\nHost: a\r\nContent-Length: {body_len}\r\n\r\n").as_bytes(),
            );
            bytes.extend(std::iter::repeat_n(b'x', body_len));
        }
        let verdict = Arc::new(Verdict::default());
        let mut s = Scanner::new(8192, 100, verdict.clone());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            s.feed(&bytes[at..c]);
            at = c;
        }
        for i in 1..=n as u64 {
            prop_assert!(!verdict.rejects(i), "request {i} rejected");
        }
    }

    /// Any Range value against any length: a partial range lies inside the body.
    #[test]
    fn ranges_stay_inside_the_body(
        value in prop_oneof![
            "bytes=[0-9]{0,21}-[0-9]{0,21}",
            "bytes=-[0-9]{0,21}",
            "[ -~]{0,30}",
        ],
        len in prop_oneof![0u64..10, 0u64..100_000, Just(u64::MAX)],
    ) {
        match parse_range(&value, len) {
            RangeSpec::Partial { start, end } => {
                prop_assert!(start <= end, "{value} / {len}: {start}..={end}");
                prop_assert!(end < len, "{value} / {len}: end {end}");
            }
            RangeSpec::Full | RangeSpec::Unsatisfiable => {}
        }
    }

    /// Any Host text: parsing never panics, and the canonical form is a fixed point.
    #[test]
    fn canonical_host_is_stable(raw in prop_oneof![
        "[a-zA-Z0-9.:\\-_\\[\\]]{0,40}",
        "[ -~]{0,40}",
    ]) {
        if let Ok(h) = Host::parse(&raw, "http") {
            let again = Host::parse(h.as_str(), "http");
            prop_assert_eq!(again.as_ref(), Ok(&h), "{:?}", raw);
            prop_assert!(!h.as_str().ends_with(":80"));
            prop_assert_eq!(h.as_str(), h.as_str().to_ascii_lowercase());
        }
    }
}
