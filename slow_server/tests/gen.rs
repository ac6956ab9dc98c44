//! `/gen/*`: every scripted parameter, checked over real HTTP.

mod support;

use std::time::{Duration, Instant, SystemTime};

use http_body_util::BodyExt;
use hyper::Method;
use support::{bounded, build, client, get, raw_get_until_close, request, Origin};

#[tokio::test]
async fn caching_headers_are_sent_as_asked() {
    let origin = Origin::start();
    let url = origin.url(
        "/gen/h?cc=private,max-age%3D60&set_cookie=a=1&set_cookie=b=2\
         &header=Surrogate-Key:k1%20k2&header=CDN-Cache-Control:max-age=600&expires=%2B60",
    );
    let reply = bounded(get(&url)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("cache-control"), Some("private,max-age=60"));
    assert_eq!(reply.header_all("set-cookie"), ["a=1", "b=2"]);
    assert_eq!(reply.header("surrogate-key"), Some("k1 k2"));
    assert_eq!(reply.header("cdn-cache-control"), Some("max-age=600"));
    assert_eq!(reply.header("x-origin-version"), Some("0"));
    let expires = httpdate::parse_http_date(reply.header("expires").unwrap()).unwrap();
    let ahead = expires.duration_since(SystemTime::now()).unwrap();
    assert!(ahead > Duration::from_secs(50) && ahead <= Duration::from_secs(60));
    assert!(reply.header("etag").is_none() && reply.header("vary").is_none());
}

#[tokio::test]
async fn status_and_extra_headers() {
    let origin = Origin::start();
    bounded(async {
        let reply = get(&origin.url("/gen/r?status=301&header=Location:/gen/b")).await;
        assert_eq!(reply.status, 301);
        assert_eq!(reply.header("location"), Some("/gen/b"));
        for status in [404, 500, 503] {
            let reply = get(&origin.url(&format!("/gen/s?status={status}"))).await;
            assert_eq!(reply.status, status);
            assert!(reply.text().starts_with("path=/gen/s?status="));
        }
        let reply = get(&origin.url("/gen/t?header=Content-Type:application/json")).await;
        assert_eq!(reply.header_all("content-type"), ["application/json"]);
    })
    .await;
}

#[tokio::test]
async fn etag_answers_if_none_match_with_304() {
    let origin = Origin::start();
    let url = origin.url("/gen/e?etag=v1&cc=max-age%3D60");
    bounded(async {
        let full = get(&url).await;
        assert_eq!(full.header("etag"), Some("\"v1\""));
        for inm in ["\"v1\"", "W/\"v1\"", "\"x\", \"v1\"", "*"] {
            let reply = request(Method::GET, &url, &[("if-none-match", inm)]).await;
            assert_eq!(reply.status, 304, "If-None-Match: {inm}");
            assert!(reply.body.is_empty());
            assert_eq!(reply.header("etag"), Some("\"v1\""));
            assert_eq!(reply.header("cache-control"), Some("max-age=60"));
        }
        let reply = request(Method::GET, &url, &[("if-none-match", "\"v2\"")]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, full.body);

        let weak = get(&origin.url("/gen/e?etag=W/%22x%22")).await;
        assert_eq!(weak.header("etag"), Some("W/\"x\""));
        // Preconditions on unsafe methods fail instead of answering 304.
        let reply = request(Method::POST, &url, &[("if-none-match", "\"v1\"")]).await;
        assert_eq!(reply.status, 412);
    })
    .await;
}

#[tokio::test]
async fn last_modified_answers_if_modified_since_with_304() {
    let origin = Origin::start();
    let url = origin.url("/gen/lm?last_modified=784111777&etag=v1");
    bounded(async {
        let full = get(&url).await;
        assert_eq!(
            full.header("last-modified"),
            Some("Sun, 06 Nov 1994 08:49:37 GMT")
        );
        let same = [("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT")];
        assert_eq!(request(Method::GET, &url, &same).await.status, 304);
        let before = [("if-modified-since", "Sun, 06 Nov 1994 08:49:36 GMT")];
        assert_eq!(request(Method::GET, &url, &before).await.status, 200);
        // If-None-Match wins over If-Modified-Since (RFC 9110 §13.2.2).
        let both = [
            ("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("if-none-match", "\"other\""),
        ];
        assert_eq!(request(Method::GET, &url, &both).await.status, 200);

        let http_date =
            origin.url("/gen/lm2?last_modified=Sun,%2006%20Nov%201994%2008:49:37%20GMT");
        assert_eq!(request(Method::GET, &http_date, &same).await.status, 304);
    })
    .await;
}

#[tokio::test]
async fn vary_echoes_the_named_request_headers_in_the_body() {
    let origin = Origin::start();
    let url = origin.url("/gen/v?vary=Accept-Encoding,%20Accept-Language");
    bounded(async {
        let gzip = request(Method::GET, &url, &[("accept-encoding", "gzip")]).await;
        let br = request(Method::GET, &url, &[("accept-encoding", "br")]).await;
        assert_eq!(
            gzip.header("vary"),
            Some("Accept-Encoding, Accept-Language")
        );
        let lines: Vec<_> = gzip.text().lines().map(str::to_owned).collect();
        assert_eq!(
            lines,
            [
                "path=/gen/v?vary=Accept-Encoding,%20Accept-Language version=0",
                "vary: accept-encoding=gzip; accept-language=(none)",
            ]
        );
        assert_ne!(gzip.body, br.body);
    })
    .await;
}

#[tokio::test]
async fn bytes_gives_an_exact_deterministic_body() {
    let origin = Origin::start();
    bounded(async {
        let url = origin.url("/gen/b?bytes=100000");
        let first = get(&url).await;
        let second = get(&url).await;
        assert_eq!(first.header("content-length"), Some("100000"));
        assert_eq!(first.body.len(), 100_000);
        assert_eq!(first.body, second.body);
        let line = "path=/gen/b?bytes=100000 version=0\n";
        let expected: Vec<u8> = line.bytes().cycle().take(100_000).collect();
        assert_eq!(first.body, expected);

        let short = get(&origin.url("/gen/b?bytes=5")).await;
        assert_eq!(short.text(), "path=");
        let empty = get(&origin.url("/gen/b?bytes=0")).await;
        assert_eq!(empty.header("content-length"), Some("0"));
        assert!(empty.body.is_empty());
        let default = get(&origin.url("/gen/b")).await;
        assert_eq!(default.text(), "path=/gen/b version=0\n");
    })
    .await;
}

#[tokio::test]
async fn large_bodies_are_streamed() {
    let origin = Origin::start();
    bounded(async {
        let url = origin.url("/gen/big?bytes=20000000");
        let response = client()
            .request(build(Method::GET, &url, &[]))
            .await
            .unwrap();
        assert_eq!(response.headers()["content-length"], "20000000");
        let mut body = response.into_body();
        let (mut total, mut frames) = (0, 0);
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
                frames += 1;
            }
        }
        assert_eq!(total, 20_000_000);
        assert!(frames > 1, "the body arrived in {frames} frame(s)");
    })
    .await;
}

#[tokio::test]
async fn head_announces_the_get_length() {
    let origin = Origin::start();
    let reply = bounded(request(
        Method::HEAD,
        &origin.url("/gen/h?bytes=12345"),
        &[],
    ))
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-length"), Some("12345"));
    assert!(reply.body.is_empty());
}

#[tokio::test]
async fn chunked_omits_content_length() {
    let origin = Origin::start();
    bounded(async {
        for bytes in [0, 10, 200_000] {
            let reply = get(&origin.url(&format!("/gen/c?chunked=1&bytes={bytes}"))).await;
            assert!(reply.header("content-length").is_none());
            assert_eq!(reply.header("transfer-encoding"), Some("chunked"));
            assert_eq!(reply.body.len(), bytes);
        }
    })
    .await;
}

#[tokio::test]
async fn stream_delay_lets_the_first_bytes_arrive_early() {
    let origin = Origin::start();
    let url = origin.url("/gen/s?bytes=30&chunk_bytes=10&stream_delay_ms=400");
    bounded(async {
        let started = Instant::now();
        let mut body = client()
            .request(build(Method::GET, &url, &[]))
            .await
            .unwrap()
            .into_body();
        let mut first = None;
        let mut total = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                first.get_or_insert(started.elapsed());
                total += data.len();
            }
        }
        let (first, last) = (first.unwrap(), started.elapsed());
        assert_eq!(total, 30);
        // Two pauses of 400 ms separate the three chunks.
        assert!(last >= Duration::from_millis(800), "took {last:?}");
        assert!(
            first + Duration::from_millis(600) <= last,
            "first {first:?} last {last:?}"
        );
    })
    .await;
}

#[tokio::test]
async fn abort_after_cuts_the_body_and_the_connection() {
    let origin = Origin::start();
    bounded(async {
        let (head, body) =
            raw_get_until_close(origin.addr(), "/gen/a?bytes=100000&abort_after=1000").await;
        assert!(head.contains("content-length: 100000"), "{head}");
        assert_eq!(body.len(), 1000);

        let (head, body) =
            raw_get_until_close(origin.addr(), "/gen/a?bytes=100000&abort_after=0").await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body.is_empty());

        // A client sees an error, not a short success; chunked bodies are cut the same way.
        for query in [
            "bytes=100000&abort_after=1000",
            "bytes=100000&abort_after=10&chunked=1",
        ] {
            let response = client()
                .request(build(
                    Method::GET,
                    &origin.url(&format!("/gen/a?{query}")),
                    &[],
                ))
                .await
                .unwrap();
            assert!(response.into_body().collect().await.is_err(), "{query}");
        }
    })
    .await;
}

#[tokio::test]
async fn lie_length_declares_more_than_it_sends() {
    let origin = Origin::start();
    let (head, body) = bounded(raw_get_until_close(
        origin.addr(),
        "/gen/l?bytes=1000&lie_length=5000",
    ))
    .await;
    assert!(head.contains("content-length: 5000"), "{head}");
    assert_eq!(body.len(), 1000);
}

#[tokio::test]
async fn other_methods_are_answered_like_get() {
    let origin = Origin::start();
    let url = origin.url("/gen/m?bytes=100&cc=max-age%3D5");
    bounded(async {
        let get_reply = get(&url).await;
        for method in [Method::POST, Method::PUT, Method::DELETE, Method::PATCH] {
            let reply = request(method.clone(), &url, &[]).await;
            assert_eq!(reply.status, 200, "{method}");
            assert_eq!(reply.body, get_reply.body, "{method}");
            assert_eq!(reply.header("cache-control"), Some("max-age=5"));
        }
    })
    .await;
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_message() {
    let origin = Origin::start();
    let cases = [
        ("bytes=abc", "bytes"),
        ("bytes=-1", "bytes"),
        ("status=99", "status"),
        ("status=1000", "status"),
        ("delay_ms=soon", "delay_ms"),
        ("etag=a%22b", "etag"),
        ("last_modified=yesterday", "last_modified"),
        ("header=NoColon", "header"),
        ("header=Content-Length:5", "header"),
        ("chunked=maybe", "chunked"),
        ("chunk_bytes=0", "chunk_bytes"),
        ("bytes=10&abort_after=10", "abort_after"),
        ("bytes=10&lie_length=10", "lie_length"),
        ("cc=a&cc=b", "cc"),
        ("cc=%zz", "percent"),
        ("cc=%0A", "cc"),
    ];
    bounded(async {
        for (query, mentions) in cases {
            let reply = get(&origin.url(&format!("/gen/x?{query}"))).await;
            assert_eq!(reply.status, 400, "{query}");
            assert!(reply.text().contains(mentions), "{query}: {}", reply.text());
        }
        // The server is still fine afterwards.
        assert_eq!(get(&origin.url("/gen/x")).await.status, 200);
    })
    .await;
}
