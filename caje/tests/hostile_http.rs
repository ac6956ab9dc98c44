//! Hostile or malformed HTTP sent over a raw socket: oversized request lines and headers,
//! request-smuggling framing, absolute-form targets and unknown hosts.

mod support;

use std::time::Duration;

use support::http::raw;
use support::{within, Caje, CajeConfig, Origin};

/// Small limits so the hostile requests stay small (and fully read by caje).
const LIMITS: &str =
    "[limits]\nmax_request_line_bytes = 1024\nmax_header_bytes = 4096\nmax_headers = 20\n";
const CLOSE_WAIT: Duration = Duration::from_secs(5);

fn cacheable(name: &str) -> String {
    format!("/gen/{name}?cc=max-age%3D60")
}

#[tokio::test]
async fn request_line_too_long_is_414() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMITS);
        // Just under the limit: served.
        let ok_target = format!("/gen/ok?cc=max-age%3D60&pad={}", "a".repeat(900));
        let req = format!("GET {ok_target} HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(
            out.status,
            Some(200),
            "request line under the limit: {out:?}"
        );

        let long = format!("/gen/long?pad={}", "a".repeat(1100));
        let req = format!("GET {long} HTTP/1.1\r\nHost: x\r\n\r\n");
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(out.status, Some(414), "{out:?}");
        assert_eq!(origin.requests("/gen/long").await, 0);
    })
    .await
}

#[tokio::test]
async fn too_many_headers_is_431() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMITS);
        let mut req = format!("GET {} HTTP/1.1\r\nHost: x\r\n", cacheable("many"));
        for i in 0..30 {
            req.push_str(&format!("X-H-{i}: v\r\n"));
        }
        req.push_str("\r\n");
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(out.status, Some(431), "{out:?}");
        assert_eq!(origin.requests("/gen/many").await, 0);
    })
    .await
}

#[tokio::test]
async fn header_section_too_large_is_431() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, LIMITS);
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            cacheable("big"),
            "b".repeat(5000)
        );
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(out.status, Some(431), "{:?} {:?}", out.status, out.headers);
        assert_eq!(origin.requests("/gen/big").await, 0);
    })
    .await
}

#[tokio::test]
async fn header_section_over_the_default_limit_is_431() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // Default max_header_bytes = 65536.
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            cacheable("big"),
            "b".repeat(70_000)
        );
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(out.status, Some(431), "{:?} {:?}", out.status, out.headers);
        assert_eq!(origin.requests("/gen/big").await, 0);
    })
    .await
}

#[tokio::test]
async fn two_content_lengths_are_400_and_close() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // If caje honoured either length, the rest would be parsed as a second request.
        let req =
            "POST /gen/cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 44\r\n\r\n\
                   helloGET /gen/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = raw(caje.addr(), req.as_bytes(), CLOSE_WAIT).await;
        assert_eq!(out.status, Some(400), "{:?} {:?}", out.status, out.headers);
        assert!(
            out.closed,
            "connection left open after a 400 for ambiguous framing"
        );
        let stats = origin.stats().await;
        assert_eq!(stats["total"], 0, "request reached the origin: {stats}");
    })
    .await
}

#[tokio::test]
async fn transfer_encoding_with_content_length_is_400_and_close() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let req = "POST /gen/te HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
                   0\r\n\r\nGET /gen/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
        let out = raw(caje.addr(), req.as_bytes(), CLOSE_WAIT).await;
        assert_eq!(out.status, Some(400), "{:?} {:?}", out.status, out.headers);
        assert!(out.closed, "connection left open after a 400 for ambiguous framing");
        let stats = origin.stats().await;
        assert_eq!(stats["total"], 0, "request reached the origin: {stats}");
    })
    .await
}

#[tokio::test]
async fn absolute_form_for_unconfigured_host_is_421() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let req = "GET http://evil.example/gen/abs?cc=max-age%3D60 HTTP/1.1\r\nHost: evil.example\r\n\r\n";
        let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
        assert_eq!(out.status, Some(421), "{out:?}");
        assert_eq!(origin.stats().await["total"], 0, "the origin saw the request");
    })
    .await
}

#[tokio::test]
async fn unknown_host_without_wildcard_origin_is_421() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start_with(CajeConfig {
            origins: vec![("known.example".into(), origin.base())],
            ..CajeConfig::default()
        });
        let out = raw(
            caje.addr(),
            b"GET /gen/u?cc=max-age%3D60 HTTP/1.1\r\nHost: other.example\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        assert_eq!(out.status, Some(421), "{out:?}");
        assert_eq!(
            origin.stats().await["total"],
            0,
            "the origin saw the request"
        );

        // The configured host is served (also with an explicit default port).
        for host in ["known.example", "KNOWN.example:80"] {
            let req = format!("GET /gen/k?cc=max-age%3D60 HTTP/1.1\r\nHost: {host}\r\n\r\n");
            let out = raw(caje.addr(), req.as_bytes(), Duration::ZERO).await;
            assert_eq!(out.status, Some(200), "Host {host}: {out:?}");
        }
    })
    .await
}

#[tokio::test]
async fn missing_host_is_400() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let out = raw(
            caje.addr(),
            b"GET /gen/nohost HTTP/1.1\r\n\r\n",
            Duration::ZERO,
        )
        .await;
        assert_eq!(out.status, Some(400), "{:?} {:?}", out.status, out.headers);
        assert_eq!(origin.stats().await["total"], 0);
    })
    .await
}
