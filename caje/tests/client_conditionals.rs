//! A cached 200 answers clients' conditional, HEAD and Range requests itself, without
//! contacting the origin: `If-None-Match` / `If-Modified-Since` → 304, HEAD → the GET's head
//! without a body, one range → 206 (or 416 with `Content-Range: bytes */len`), several ranges
//! → the full 200.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, get, request, within, Caje, Origin};
use support_ext::{body_version, http_date_ago, unix_ago};

const LEN: usize = 1000;

/// Stores a 1000-byte response with an ETag and a Last-Modified one day ago.
async fn stored(origin: &Origin, caje: &Caje, name: &str) -> (String, support::Resp) {
    let lm = unix_ago(86_400);
    let path = gen(
        name,
        &format!("cc=max-age%3D60&etag=c1&last_modified={lm}&bytes={LEN}"),
    );
    let full = caje.store(&path).await;
    assert_eq!(full.body.len(), LEN);
    assert_eq!(origin.requests(&format!("/gen/{name}")).await, 1);
    (caje.url(&path), full)
}

#[tokio::test]
async fn if_none_match_is_answered_304_from_cache() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, full) = stored(&origin, &caje, "cc-inm").await;

        let r = get(&url, &[("If-None-Match", "\"other\", \"c1\"")]).await;
        assert_eq!(r.status, 304, "{:?}", r.headers);
        assert!(r.body.is_empty());
        r.cache_status().assert_hit();
        assert_eq!(r.header("etag"), Some("\"c1\""));
        assert!(r.age().is_some(), "304 from cache without Age");

        let r = get(&url, &[("If-None-Match", "\"nope\"")]).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_hit();
        support::assert_same_body(&r.body, &full.body, "non-matching If-None-Match");
        assert_eq!(body_version(&r), 0);

        assert_eq!(origin.requests("/gen/cc-inm").await, 1, "origin contacted");
        assert_eq!(origin.path_stat("/gen/cc-inm", "conditional").await, 0);
    })
    .await
}

#[tokio::test]
async fn if_modified_since_is_answered_304_from_cache() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, full) = stored(&origin, &caje, "cc-ims").await;

        let later = http_date_ago(60);
        let r = get(&url, &[("If-Modified-Since", &later)]).await;
        assert_eq!(r.status, 304, "{:?}", r.headers);
        assert!(r.body.is_empty());
        r.cache_status().assert_hit();

        let earlier = http_date_ago(10 * 86_400);
        let r = get(&url, &[("If-Modified-Since", &earlier)]).await;
        assert_eq!(r.status, 200, "modified since 10 days ago");
        support::assert_same_body(&r.body, &full.body, "If-Modified-Since earlier");

        assert_eq!(origin.requests("/gen/cc-ims").await, 1, "origin contacted");
    })
    .await
}

#[tokio::test]
async fn head_is_answered_from_the_cached_get() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, _) = stored(&origin, &caje, "cc-head").await;

        let r = request("HEAD", &url, &[], b"").await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_hit();
        assert_eq!(
            r.header("content-length"),
            Some(LEN.to_string().as_str()),
            "HEAD from cache must carry the GET's Content-Length: {:?}",
            r.headers
        );
        assert!(r.body.is_empty());
        assert!(r.age().is_some());
        assert_eq!(origin.requests("/gen/cc-head").await, 1);
        let by_method = &origin.stats().await["paths"]["/gen/cc-head"]["by_method"];
        assert!(
            by_method.get("HEAD").is_none(),
            "HEAD reached the origin: {by_method}"
        );
    })
    .await
}

#[tokio::test]
async fn single_ranges_are_answered_206_from_cache() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, full) = stored(&origin, &caje, "cc-range").await;

        let r = get(&url, &[("Range", "bytes=10-19")]).await;
        assert_eq!(r.status, 206, "{:?}", r.headers);
        r.cache_status().assert_hit();
        assert_eq!(r.header("content-range"), Some("bytes 10-19/1000"));
        assert_eq!(r.body, full.body[10..20].to_vec());
        assert_eq!(r.header("content-length"), Some("10"));

        let r = get(&url, &[("Range", "bytes=-5")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 995-999/1000"));
        assert_eq!(r.body, full.body[995..].to_vec());

        let r = get(&url, &[("Range", "bytes=990-")]).await;
        assert_eq!(r.status, 206);
        assert_eq!(r.header("content-range"), Some("bytes 990-999/1000"));
        assert_eq!(r.body, full.body[990..].to_vec());

        assert_eq!(
            origin.requests("/gen/cc-range").await,
            1,
            "origin contacted"
        );
    })
    .await
}

#[tokio::test]
async fn unsatisfiable_range_is_416_with_the_length() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, _) = stored(&origin, &caje, "cc-416").await;

        let r = get(&url, &[("Range", "bytes=5000-6000")]).await;
        assert_eq!(r.status, 416, "{:?}", r.headers);
        assert_eq!(r.header("content-range"), Some("bytes */1000"));
        r.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/cc-416").await, 1);
    })
    .await
}

#[tokio::test]
async fn multiple_ranges_get_the_full_200() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let (url, full) = stored(&origin, &caje, "cc-multi").await;

        let r = get(&url, &[("Range", "bytes=0-1,5-6")]).await;
        assert_eq!(r.status, 200, "{:?}", r.headers);
        assert!(r.header("content-range").is_none());
        r.cache_status().assert_hit();
        support::assert_same_body(&r.body, &full.body, "multi-range");
        assert_eq!(origin.requests("/gen/cc-multi").await, 1);
    })
    .await
}

/// A client that read a whole response and at once asks for a range of it gets the range from
/// the cache, even when the fill it read is still being committed (fsync, rename): the range
/// waits for that commit instead of going to the origin (cache-tests.fyi
/// `partial-store-complete-reuse-partial`, which the required `partial-use-*` tests need).
#[tokio::test]
async fn range_right_after_the_full_response_is_served_from_cache() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // Several URLs: the race between the last body byte and the commit is short, and any
        // one of them going to the origin fails the test.
        for i in 0..20 {
            let name = format!("cc-range-now-{i}");
            let path = gen(&name, &format!("cc=max-age%3D600&bytes={LEN}"));
            let url = caje.url(&path);
            let full = get(&url, &[]).await;
            assert_eq!(full.status, 200);
            assert_eq!(full.body.len(), LEN);
            let r = get(&url, &[("Range", "bytes=0-1")]).await;
            assert_eq!(r.status, 206, "{name}: {:?}", r.headers);
            assert_eq!(r.body, full.body[..2], "{name}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes 0-1/{LEN}").as_str())
            );
            r.cache_status().assert_hit();
            assert_eq!(origin.requests(&format!("/gen/{name}")).await, 1, "{name}");
        }
    })
    .await
}
