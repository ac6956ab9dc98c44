//! Regression tests for the attacks in issue 13: a client must not be able to put one site's
//! answer under another site's key, replace a Vary variant with a response the origin gave to
//! other headers, claim another address to the origin, crash a request through an origin
//! header, or make a browser change the cache through the admin API.

mod support;

use std::time::Duration;

use serde_json::{Map, Value};
use support::http::raw;
use support::{get, request, within, Caje, CajeConfig, Origin};

fn h<'a>(seen: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    seen.get(name).and_then(Value::as_str)
}

/// `a.example` → origin A, everything else → origin B.
fn two_origins() -> (Origin, Origin, Caje) {
    let a = Origin::start();
    let b = Origin::start();
    let caje = Caje::start_with(CajeConfig {
        origins: vec![("a.example".into(), a.base()), ("*".into(), b.base())],
        ..CajeConfig::default()
    });
    (a, b, caje)
}

/// Defect 1: `a.example.:80` and `a.example:80:80` were routed to B (the routing form kept
/// the trailing dot) but keyed as `a.example`, so B's page was served to a.example's clients.
#[tokio::test]
async fn host_spellings_route_and_key_alike() {
    within(30, async {
        let (a, b, caje) = two_origins();
        let path = "/gen/host?cc=max-age%3D60";
        for host in ["a.example.:80", "A.EXAMPLE.", "a.example:80"] {
            let r = get(&caje.url(path), &[("Host", host)]).await;
            assert_eq!(r.status, 200, "{host}: {}", r.text());
        }
        // One origin fetch, from A; the other spellings were hits on A's copy.
        assert_eq!(a.requests("/gen/host").await, 1);
        assert_eq!(b.requests("/gen/host").await, 0);
        let r = get(&caje.url(path), &[("Host", "a.example")]).await;
        r.cache_status().assert_hit();

        for bad in ["a.example:80:80", "a..example", "a.example:8o", "a example"] {
            let req = format!("GET {path} HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            let out = raw(caje.addr(), req.as_bytes(), Duration::from_millis(200)).await;
            assert_eq!(out.status, Some(400), "{bad:?}: {out:?}");
        }
        assert_eq!(
            b.requests("/gen/host").await,
            0,
            "a malformed host reached B"
        );
    })
    .await
}

/// Defect 1, absolute form: the target's authority wins over `Host` (RFC 9112 §3.2.2), for
/// routing, the key and what the origin is told.
#[tokio::test]
async fn absolute_form_authority_wins_over_host() {
    within(30, async {
        let (a, b, caje) = two_origins();
        let req =
            "GET http://a.example/gen/abs?cc=max-age%3D60 HTTP/1.1\r\nHost: evil.example\r\n\r\n";
        let out = raw(caje.addr(), req.as_bytes(), Duration::from_millis(200)).await;
        assert_eq!(out.status, Some(200), "{out:?}");
        assert_eq!(a.requests("/gen/abs").await, 1);
        assert_eq!(b.requests("/gen/abs").await, 0);
        let seen = a.last_headers("/gen/abs").await;
        assert_eq!(h(&seen, "x-forwarded-host"), Some("a.example"), "{seen:?}");
        // Stored under a.example, and nothing under evil.example.
        let r = get(
            &caje.url("/gen/abs?cc=max-age%3D60"),
            &[("Host", "a.example")],
        )
        .await;
        r.cache_status().assert_hit();
        let r = get(
            &caje.url("/gen/abs?cc=max-age%3D60"),
            &[("Host", "evil.example")],
        )
        .await;
        assert!(
            !r.cache_status().is_hit(),
            "evil.example got a.example's copy"
        );
        assert_eq!(b.requests("/gen/abs").await, 1);
    })
    .await
}

/// With `host_header = "client"` the origin gets the canonical host, not the raw header.
#[tokio::test]
async fn client_host_header_is_the_canonical_host() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start_with(CajeConfig {
            origins: vec![],
            extra: format!(
                "[[origins]]\nhost = \"*\"\nurl = {:?}\nhost_header = \"client\"\n",
                origin.base()
            ),
            ..CajeConfig::default()
        });
        let r = get(
            &caje.url("/gen/ch?cc=no-store"),
            &[("Host", "Site.Example.:80")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = origin.last_headers("/gen/ch").await;
        assert_eq!(h(&seen, "host"), Some("site.example"), "{seen:?}");
        assert_eq!(
            h(&seen, "x-forwarded-host"),
            Some("site.example"),
            "{seen:?}"
        );
    })
    .await
}

/// Defect 2: a header the client names in `Connection` is stripped before the origin sees
/// it, so the variant must be keyed without it too.
#[tokio::test]
async fn connection_named_headers_do_not_pick_the_variant() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let url = caje.url("/gen/lang?cc=max-age%3D60&vary=accept-language");
        let r = get(
            &url,
            &[
                ("Accept-Language", "fr"),
                ("Connection", "keep-alive, Accept-Language"),
            ],
        )
        .await;
        assert_eq!(r.status, 200);
        assert!(r.text().contains("accept-language=(none)"), "{}", r.text());
        // A real French client must get the origin's French answer, not the one above.
        let r = get(&url, &[("Accept-Language", "fr")]).await;
        assert!(!r.cache_status().is_hit(), "{:?}", r.cache_status());
        assert!(r.text().contains("accept-language=fr"), "{}", r.text());
        assert_eq!(origin.requests("/gen/lang").await, 2);
        // And the stored no-language variant still serves clients without the header.
        let r = get(&url, &[]).await;
        r.cache_status().assert_hit();
        assert!(r.text().contains("accept-language=(none)"), "{}", r.text());
    })
    .await
}

/// Defect 5: forwarding and rewrite fields a client sends do not reach the origin.
#[tokio::test]
async fn forwarding_and_rewrite_claims_do_not_reach_the_origin() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let r = get(
            &caje.url("/gen/claims?cc=max-age%3D60"),
            &[
                ("Forwarded", "for=6.6.6.6;host=evil.example;proto=https"),
                ("X-Real-IP", "6.6.6.6"),
                ("X-Forwarded-Port", "443"),
                ("True-Client-IP", "6.6.6.6"),
                ("X-Original-URL", "/admin"),
                ("X-Rewrite-URL", "/admin"),
                ("X-HTTP-Method-Override", "DELETE"),
            ],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let seen = origin.last_headers("/gen/claims").await;
        for gone in [
            "x-forwarded-port",
            "true-client-ip",
            "x-original-url",
            "x-rewrite-url",
            "x-http-method-override",
        ] {
            assert!(
                seen.get(gone).is_none(),
                "`{gone}` reached the origin: {seen:?}"
            );
        }
        assert_eq!(h(&seen, "x-real-ip"), Some("127.0.0.1"), "{seen:?}");
        let fwd = h(&seen, "forwarded").unwrap_or_default();
        assert!(fwd.starts_with("for=127.0.0.1;"), "Forwarded: {fwd}");
        assert!(!fwd.contains("6.6.6.6") && !fwd.contains("evil"), "{fwd}");
    })
    .await
}

/// Defect 5: a GET with a body is passed through, never stored or answered from the cache
/// (the body is not part of the key, and the origin may answer it differently).
#[tokio::test]
async fn get_with_a_body_is_never_cached() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let url = caje.url("/gen/getbody?cc=max-age%3D60");
        let r = request("GET", &url, &[("Content-Type", "text/plain")], b"payload").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let cs = r.cache_status();
        assert!(!cs.is_stored(), "{cs:?}");
        assert_eq!(cs.detail(), Some("request-body"), "{cs:?}");
        // Not served from cache either, even once the page is cached without a body.
        let r = get(&url, &[]).await;
        assert!(r.cache_status().is_stored(), "{:?}", r.cache_status());
        let r = request("GET", &url, &[], b"payload").await;
        assert!(!r.cache_status().is_hit(), "{:?}", r.cache_status());
        assert_eq!(origin.requests("/gen/getbody").await, 3);
    })
    .await
}

/// Defect 4: an absurd `Age` from the origin must not panic later requests (it did, inside
/// the freshness arithmetic, and every request for the URL got an empty reply).
#[tokio::test]
async fn absurd_origin_age_never_panics() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        for age in [
            "18446744073709551615",
            "4294967296",
            "99999999999999999999999",
        ] {
            let url = caje.url(&format!("/gen/age{age}?cc=max-age%3D60&header=Age:{age}"));
            for _ in 0..3 {
                let r = get(&url, &[]).await;
                assert_eq!(r.status, 200, "Age {age}: {}", r.text());
                assert!(r.text().contains("path="), "Age {age}: empty body");
            }
        }
        let r = get(&caje.url("/gen/alive?cc=no-store"), &[]).await;
        assert_eq!(r.status, 200);
        assert!(!caje.stderr().contains("panicked"), "{}", caje.stderr());
    })
    .await
}

/// Defect 6: without a token, a web page the operator's browser loads must not be able to
/// clear or purge the cache (the browser is a loopback peer).
#[tokio::test]
async fn admin_refuses_what_a_browser_form_can_send() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let clear = caje.url("/_caje/clear/fs");
        let forged: &[&[(&str, &str)]] = &[
            &[("Origin", "http://evil.example")],
            &[("Origin", "null")],
            &[("Sec-Fetch-Site", "cross-site")],
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &[("Content-Type", "multipart/form-data; boundary=x")],
            &[("Content-Type", "text/plain")],
        ];
        for headers in forged {
            let r = request("POST", &clear, headers, b"").await;
            assert_eq!(r.status, 403, "{headers:?}: {}", r.text());
            assert!(r.text().contains("admin.token"), "{}", r.text());
        }
        let r = request(
            "PURGE",
            &caje.url("/x"),
            &[("Origin", "http://evil.example")],
            b"",
        )
        .await;
        assert_eq!(r.status, 403, "{}", r.text());
        // Scripts and curl send none of those: still allowed from loopback.
        let r = request("POST", &clear, &[], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        // A same-origin page (caje's own) may, and reads are never refused.
        let host = caje.addr().to_string();
        let origin_hdr = format!("http://{host}");
        let r = request(
            "POST",
            &clear,
            &[
                ("Origin", origin_hdr.as_str()),
                ("Sec-Fetch-Site", "same-origin"),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = get(
            &caje.url("/_caje/stats"),
            &[("Sec-Fetch-Site", "cross-site")],
        )
        .await;
        assert_eq!(r.status, 200);
    })
    .await
}

/// With a token, the bearer header (which no form can set) is what authorises.
#[tokio::test]
async fn admin_with_a_token_needs_only_the_token() {
    within(30, async {
        let origin = Origin::start();
        let caje =
            Caje::start_with(CajeConfig::for_origin(&origin.base(), "").with_admin_token("s3cret"));
        let r = request(
            "POST",
            &caje.url("/_caje/clear/fs"),
            &[
                ("Authorization", "Bearer s3cret"),
                ("Origin", "http://dashboard.example"),
            ],
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let r = request(
            "POST",
            &caje.url("/_caje/clear/fs"),
            &[("Origin", "http://evil.example")],
            b"",
        )
        .await;
        assert_eq!(r.status, 401, "{}", r.text());
    })
    .await
}
