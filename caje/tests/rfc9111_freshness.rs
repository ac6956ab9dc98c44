//! Freshness and storability rules that the cache-tests.fyi suite checks, held by caje's own
//! tests against a scripted origin:
//! - an invalid `Age` (not a number, negative, a fraction) is ignored and the response stays
//!   fresh; the first value of a list or of several lines counts; absurd values saturate at
//!   2^31 and make the response stale (never a panic);
//! - any final status code is stored when the response has explicit freshness;
//! - an invalid `CDN-Cache-Control` is ignored as a whole (falling back to `Cache-Control`);
//! - an invalid `Expires` means already expired;
//! - `Set-Cookie` responses are stored only with `cache.store_set_cookie = true`, and then
//!   the stored cookie is replayed.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{within, Caje, CajeConfig, Resp};
use support_ext::{http_date_ago, MiniOrigin, Reply, Seen};

/// One scripted page: path, status, response headers.
type Page = (&'static str, u16, Vec<(&'static str, String)>);

/// The response for `/<name>` is looked up in `table`; its body names the request count.
async fn scripted(table: Vec<Page>) -> MiniOrigin {
    let mut n = 0u64;
    MiniOrigin::start(move |req: &Seen| {
        n += 1;
        let path = req.target.split('?').next().unwrap_or("");
        match table.iter().find(|(p, _, _)| *p == path) {
            Some((_, status, headers)) => {
                let hs: Vec<(&str, &str)> = headers.iter().map(|(a, b)| (*a, b.as_str())).collect();
                Reply::new(*status, &hs, &format!("{path} n={n}\n"))
            }
            None => Reply::new(404, &[("Cache-Control", "no-store")], "unknown\n"),
        }
    })
    .await
}

fn cc(v: &str) -> (&'static str, String) {
    ("Cache-Control", v.to_owned())
}

fn h(name: &'static str, v: &str) -> (&'static str, String) {
    (name, v.to_owned())
}

/// Two GETs of `path`, waiting for the first to be committed when it was stored.
async fn twice(caje: &Caje, path: &str) -> (Resp, Resp) {
    let first = caje.get(path).await;
    if first.cache_status().is_stored() {
        caje.settle(path).await;
    }
    let second = caje.get(path).await;
    (first, second)
}

#[track_caller]
fn assert_reused(path: &str, first: &Resp, second: &Resp) {
    assert!(
        second.cache_status().is_hit() && second.body == first.body,
        "{path}: second response should be the stored one: `{}` / {:?}",
        second.cache_status().raw,
        second.text()
    );
}

#[track_caller]
fn assert_not_reused(path: &str, first: &Resp, second: &Resp) {
    assert!(
        !second.cache_status().is_hit() && second.body != first.body,
        "{path}: second response should come from the origin: `{}` / {:?}",
        second.cache_status().raw,
        second.text()
    );
}

#[tokio::test]
async fn invalid_age_is_ignored_and_absurd_age_saturates() {
    within(60, async {
        let max = || cc("max-age=3600");
        let origin = scripted(vec![
            ("/nonnumeric", 200, vec![max(), h("Age", "abc")]),
            ("/negative", 200, vec![max(), h("Age", "-7200")]),
            ("/float", 200, vec![max(), h("Age", "7200.0")]),
            ("/prefix", 200, vec![max(), h("Age", "0, 7200")]),
            ("/suffix", 200, vec![max(), h("Age", "7200, 0")]),
            ("/param", 200, vec![max(), h("Age", "7200;foo=bar")]),
            (
                "/huge",
                200,
                vec![max(), h("Age", "99999999999999999999999999")],
            ),
            ("/max", 200, vec![max(), h("Age", "2147483648")]),
            ("/young", 200, vec![max(), h("Age", "10")]),
        ])
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for path in ["/nonnumeric", "/negative", "/float", "/prefix", "/young"] {
            let (a, b) = twice(&caje, path).await;
            assert_reused(path, &a, &b);
        }
        for path in ["/suffix", "/param", "/huge", "/max"] {
            let (a, b) = twice(&caje, path).await;
            assert_eq!(a.status, 200, "{path}");
            assert_not_reused(path, &a, &b);
        }
        // The huge value did not crash caje.
        assert_eq!(caje.get("/young").await.status, 200);
    })
    .await
}

#[tokio::test]
async fn any_status_with_explicit_freshness_is_stored() {
    within(60, async {
        let statuses: &[(&'static str, u16)] = &[
            ("/s299", 299),
            ("/s400", 400),
            ("/s499", 499),
            ("/s500", 500),
            ("/s502", 502),
            ("/s503", 503),
            ("/s599", 599),
        ];
        let mut table: Vec<Page> = statuses
            .iter()
            .map(|(p, s)| (*p, *s, vec![cc("max-age=3600")]))
            .collect();
        table.push(("/s500-plain", 500, vec![]));
        table.push((
            "/s599-mu",
            599,
            vec![cc("max-age=3600, no-store, must-understand")],
        ));
        table.push((
            "/s200-mu",
            200,
            vec![cc("max-age=3600, no-store, must-understand")],
        ));
        let origin = scripted(table).await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for (path, status) in statuses {
            let (a, b) = twice(&caje, path).await;
            assert_eq!((a.status, b.status), (*status, *status), "{path}");
            assert_reused(path, &a, &b);
        }
        for path in ["/s500-plain", "/s599-mu"] {
            let (a, b) = twice(&caje, path).await;
            assert_not_reused(path, &a, &b);
        }
        // must-understand with a status caje knows: `no-store` is for other caches.
        let (a, b) = twice(&caje, "/s200-mu").await;
        assert_reused("/s200-mu", &a, &b);
    })
    .await
}

#[tokio::test]
async fn invalid_cdn_cache_control_is_ignored_as_a_whole() {
    within(60, async {
        let origin = scripted(vec![
            (
                "/unknown-type",
                200,
                vec![
                    h("CDN-Cache-Control", "max-age=10000, &&&&&"),
                    cc("no-store"),
                ],
            ),
            (
                "/wrong-type",
                200,
                vec![h("CDN-Cache-Control", "max-age=\"10000\""), cc("no-store")],
            ),
            (
                "/space",
                200,
                vec![h("CDN-Cache-Control", "max-age =100"), cc("no-store")],
            ),
            (
                "/valid",
                200,
                vec![h("CDN-Cache-Control", "max-age=10000"), cc("no-store")],
            ),
            (
                "/valid-params",
                200,
                vec![
                    h("CDN-Cache-Control", "foobar;x=1, max-age=10000, private=?0"),
                    cc("no-store"),
                ],
            ),
        ])
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for path in ["/unknown-type", "/wrong-type", "/space"] {
            let (a, b) = twice(&caje, path).await;
            a.cache_status().assert_not_stored("no-store");
            assert_not_reused(path, &a, &b);
        }
        for path in ["/valid", "/valid-params"] {
            let (a, b) = twice(&caje, path).await;
            assert_reused(path, &a, &b);
        }
    })
    .await
}

#[tokio::test]
async fn invalid_expires_means_already_expired() {
    within(60, async {
        let origin = scripted(vec![
            (
                "/spaces",
                200,
                vec![
                    h("Expires", "Thu, 18  Aug  2050 02:01:18 GMT"),
                    h("Date", &http_date_ago(0)),
                ],
            ),
            (
                "/dashes",
                200,
                vec![
                    h("Expires", "Thu, 18-Aug-2050 02:01:18 GMT"),
                    h("Date", &http_date_ago(0)),
                ],
            ),
            (
                "/valid",
                200,
                vec![
                    h("Expires", "Thu, 18 Aug 2050 02:01:18 GMT"),
                    h("Date", &http_date_ago(0)),
                ],
            ),
        ])
        .await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        for path in ["/spaces", "/dashes"] {
            let (a, b) = twice(&caje, path).await;
            assert_not_reused(path, &a, &b);
        }
        let (a, b) = twice(&caje, "/valid").await;
        assert_reused("/valid", &a, &b);
    })
    .await
}

#[tokio::test]
async fn set_cookie_responses_are_stored_only_when_the_operator_opts_in() {
    within(60, async {
        let origin = scripted(vec![(
            "/cookie",
            200,
            vec![cc("max-age=3600"), h("Set-Cookie", "bucket=b")],
        )])
        .await;
        let off = Caje::start_with(CajeConfig::for_origin(&origin.base(), ""));
        let (a, b) = twice(&off, "/cookie").await;
        a.cache_status().assert_not_stored("set-cookie");
        assert_not_reused("/cookie", &a, &b);

        let on = Caje::start_with(CajeConfig::for_origin(
            &origin.base(),
            "[cache]\nstore_set_cookie = true\n",
        ));
        let (a, b) = twice(&on, "/cookie").await;
        assert_reused("/cookie", &a, &b);
        // The operator chose to share the cookie: the stored one is replayed.
        assert_eq!(b.header("set-cookie"), Some("bucket=b"));
    })
    .await
}
