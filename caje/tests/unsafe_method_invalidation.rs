//! POST / PUT / DELETE / PATCH answered 2xx/3xx invalidate the target URI and same-host
//! `Location` / `Content-Location` URIs (RFC 9111 §4.4); a failed one invalidates nothing.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, request, within, Caje, Origin};
use support_ext::{body_version, enc};

/// Asserts `path` is served from cache, then (after the caller's unsafe request) use
/// [`assert_refetched`].
async fn assert_hit(caje: &Caje, path: &str) {
    let r = caje.get(path).await;
    r.cache_status().assert_hit();
}

/// The next GET of `path` is a miss that fetches version `version` from the origin.
async fn assert_refetched(caje: &Caje, path: &str, version: u64, what: &str) {
    let r = caje.get(path).await;
    assert_eq!(r.status, 200);
    let cs = r.cache_status();
    assert!(
        !cs.is_hit() && cs.fwd().is_some() && cs.fwd_status() == Some(200),
        "{what}: {path} still served from cache: `{}`",
        cs.raw
    );
    assert_eq!(body_version(&r), version, "{what}: stale body for {path}");
}

#[tokio::test]
async fn successful_unsafe_methods_invalidate_the_target_uri() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        for method in ["POST", "PUT", "DELETE", "PATCH"] {
            let name = format!("inv-{}", method.to_ascii_lowercase());
            let path = gen(&name, "cc=max-age%3D60");
            let origin_path = format!("/gen/{name}");
            caje.store(&path).await;
            assert_hit(&caje, &path).await;
            origin.bump(&origin_path).await;

            let r = request(method, &caje.url(&path), &[], b"payload").await;
            assert_eq!(r.status, 200, "{method}: {}", r.text());
            r.cache_status().assert_fwd("method", 200, false);

            assert_refetched(&caje, &path, 1, method).await;
            let by_method = &origin.stats().await["paths"][&origin_path]["by_method"];
            assert_eq!(by_method["GET"], 2, "{method}: {by_method}");
            assert_eq!(by_method[method], 1, "{method}: {by_method}");
        }
    })
    .await
}

#[tokio::test]
async fn location_and_content_location_on_the_same_host_are_invalidated() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let loc = gen("inv-loc", "cc=max-age%3D60");
        let cloc = gen("inv-cloc", "cc=max-age%3D60");
        let untouched = gen("inv-keep", "cc=max-age%3D60");
        for p in [&loc, &cloc, &untouched] {
            caje.store(p).await;
            assert_hit(&caje, p).await;
        }
        origin.bump("/gen/inv-loc").await;
        origin.bump("/gen/inv-cloc").await;

        let post = gen(
            "inv-post",
            &format!(
                "status=201&header={}&header={}",
                enc(&format!("Location:{loc}")),
                enc(&format!("Content-Location:{cloc}"))
            ),
        );
        let r = request("POST", &caje.url(&post), &[], b"x").await;
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("location"), Some(loc.as_str()));

        assert_refetched(&caje, &loc, 1, "Location").await;
        assert_refetched(&caje, &cloc, 1, "Content-Location").await;
        assert_hit(&caje, &untouched).await;
        assert_eq!(origin.requests("/gen/inv-keep").await, 1);
    })
    .await
}

#[tokio::test]
async fn failed_unsafe_requests_do_not_invalidate() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // Target URI: slow_server answers a POST whose If-None-Match matches with 412.
        let target = gen("inv-fail", "cc=max-age%3D60&etag=f1");
        caje.store(&target).await;
        let r = request(
            "POST",
            &caje.url(&target),
            &[("If-None-Match", "\"f1\"")],
            b"x",
        )
        .await;
        assert_eq!(r.status, 412, "{}", r.text());
        assert_hit(&caje, &target).await;

        // Location of a 500 answer.
        let loc = gen("inv-fail-loc", "cc=max-age%3D60");
        caje.store(&loc).await;
        let post = gen(
            "inv-fail-post",
            &format!("status=500&header={}", enc(&format!("Location:{loc}"))),
        );
        let r = request("POST", &caje.url(&post), &[], b"x").await;
        assert_eq!(r.status, 500);
        assert_hit(&caje, &loc).await;

        assert_eq!(origin.requests("/gen/inv-fail").await, 2, "GET + POST");
        assert_eq!(origin.requests("/gen/inv-fail-loc").await, 1);
    })
    .await
}
