//! A stale entry with a validator is revalidated with a conditional request: a 304 keeps the
//! stored body and refreshes the stored head and freshness (`fwd=stale; fwd-status=304`), a
//! 200 replaces the entry. `no-cache` responses with a validator are stored and revalidated
//! on every use; `must-revalidate` and `s-maxage` forbid serving them stale.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{gen, within, Caje, Origin};
use support_ext::{body_version, unix_ago, MiniOrigin, Reply};

/// Long enough after a `max-age=1` store for the entry to be stale by any rounding.
const PAST_MAX_AGE_1: Duration = Duration::from_millis(2200);

#[tokio::test]
async fn stale_etag_entry_is_revalidated_and_304_keeps_the_body() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("rv-etag", "cc=max-age%3D1&etag=v1");

        let first = caje.store(&path).await;
        assert_eq!(body_version(&first), 0);
        // The origin's body changes, but the ETag in the URL does not: it will answer 304,
        // and its 304 carries `X-Origin-Version: 1`.
        origin.bump("/gen/rv-etag").await;
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(&path).await;
        assert_eq!(
            r.status, 200,
            "a revalidated GET is a full 200 to the client"
        );
        let cs = r.cache_status();
        cs.assert_fwd("stale", 304, false);
        assert_eq!(body_version(&r), 0, "304 must keep the stored body");
        support::assert_same_body(&r.body, &first.body, "revalidated body");
        assert_eq!(
            r.origin_version(),
            Some(1),
            "the 304's headers must update the stored head (RFC 9111 4.3.4): {:?}",
            r.headers
        );
        assert!(
            r.age().unwrap_or(0) <= 1,
            "Age must restart at revalidation, got {:?}",
            r.header("age")
        );
        assert_eq!(origin.requests("/gen/rv-etag").await, 2);
        assert_eq!(origin.path_stat("/gen/rv-etag", "conditional").await, 1);
        assert_eq!(origin.path_stat("/gen/rv-etag", "not_modified").await, 1);
        let seen = origin.last_headers("/gen/rv-etag").await;
        assert_eq!(
            seen.get("if-none-match").and_then(|v| v.as_str()),
            Some("\"v1\""),
            "{seen:?}"
        );

        // Fresh again: a hit with the kept body and the updated head.
        let hit = caje.get(&path).await;
        hit.cache_status().assert_hit();
        assert!(hit.age().unwrap_or(99) <= 1, "Age {:?}", hit.header("age"));
        assert_eq!(body_version(&hit), 0);
        assert_eq!(hit.origin_version(), Some(1));
        assert_eq!(origin.requests("/gen/rv-etag").await, 2);
    })
    .await
}

#[tokio::test]
async fn stale_last_modified_entry_is_revalidated_with_if_modified_since() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let lm = unix_ago(3600);
        let path = gen("rv-lm", &format!("cc=max-age%3D1&last_modified={lm}"));

        caje.store(&path).await;
        origin.bump("/gen/rv-lm").await;
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(&path).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_fwd("stale", 304, false);
        assert_eq!(body_version(&r), 0, "304 must keep the stored body");
        assert_eq!(origin.path_stat("/gen/rv-lm", "conditional").await, 1);
        assert_eq!(origin.path_stat("/gen/rv-lm", "not_modified").await, 1);
        let seen = origin.last_headers("/gen/rv-lm").await;
        assert!(
            seen.contains_key("if-modified-since") && !seen.contains_key("if-none-match"),
            "expected If-Modified-Since only: {seen:?}"
        );

        caje.get(&path).await.cache_status().assert_hit();
        assert_eq!(origin.requests("/gen/rv-lm").await, 2);
    })
    .await
}

#[tokio::test]
async fn changed_resource_answers_200_to_revalidation_and_replaces_the_entry() {
    within(30, async {
        // slow_server's ETag is fixed by the URL, so a changed ETag for the same URL needs an
        // origin whose answer changes between requests.
        let version = Arc::new(AtomicU64::new(0));
        let v = version.clone();
        let origin = MiniOrigin::start(move |req| {
            let n = v.load(Ordering::SeqCst);
            let etag = format!("\"e{n}\"");
            if req.header("if-none-match") == Some(etag.as_str()) {
                return Reply::new(304, &[("Cache-Control", "max-age=1"), ("ETag", &etag)], "");
            }
            Reply::new(
                200,
                &[("Cache-Control", "max-age=1"), ("ETag", &etag)],
                &format!("path={} version={n}\n", req.target),
            )
        })
        .await;
        let caje = Caje::start_with(support::CajeConfig::for_origin(&origin.base(), ""));
        let path = "/changed";

        let first = caje.store(path).await;
        assert_eq!(body_version(&first), 0);
        version.store(1, Ordering::SeqCst);
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get(path).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_fwd("stale", 200, true);
        assert_eq!(body_version(&r), 1, "the 200 must be served");
        assert_eq!(r.header("etag"), Some("\"e1\""));
        let seen = origin.seen();
        assert_eq!(seen.len(), 2);
        assert_eq!(
            seen[1].header("if-none-match"),
            Some("\"e0\""),
            "the refetch must be conditional on the stored ETag"
        );

        // The new version replaced the old one.
        support::eventually(10, "the new version is served from cache", || async {
            let r = caje.get(path).await;
            r.cache_status().is_hit() && body_version(&r) == 1
        })
        .await;
        assert_eq!(origin.requests(), 2);
    })
    .await
}

#[tokio::test]
async fn no_cache_response_with_etag_is_stored_and_revalidated_on_every_use() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("rv-nc", "cc=no-cache&etag=nc1");

        let first = caje.get(&path).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        caje.settle("/gen/rv-nc").await;
        origin.bump("/gen/rv-nc").await;

        for n in 1..=3u64 {
            let r = caje.get(&path).await;
            assert_eq!(r.status, 200);
            r.cache_status().assert_fwd("stale", 304, false);
            assert_eq!(
                body_version(&r),
                0,
                "use {n}: body must come from the cache"
            );
            assert_eq!(origin.path_stat("/gen/rv-nc", "conditional").await, n);
            assert_eq!(origin.path_stat("/gen/rv-nc", "not_modified").await, n);
        }
        assert_eq!(origin.requests("/gen/rv-nc").await, 4);
    })
    .await
}

/// `must-revalidate` and `s-maxage` both forbid serving stale, even with generous
/// `stale-while-revalidate`: the expired entry is refetched synchronously.
#[tokio::test]
async fn must_revalidate_and_s_maxage_are_never_served_stale() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let cases = [
            (
                "rv-mr",
                "cc=max-age%3D1,must-revalidate,stale-while-revalidate%3D60",
            ),
            ("rv-sm", "cc=s-maxage%3D1,stale-while-revalidate%3D60"),
        ];
        for (name, q) in cases {
            caje.store(&gen(name, q)).await;
            origin.bump(&format!("/gen/{name}")).await;
        }
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        for (name, q) in cases {
            let r = caje.get(&gen(name, q)).await;
            assert_eq!(r.status, 200);
            let cs = r.cache_status();
            assert!(
                cs.detail() != Some("stale-while-revalidate") && !cs.is_hit(),
                "{name}: served stale: `{}`",
                cs.raw
            );
            cs.assert_fwd("stale", 200, true);
            assert_eq!(
                body_version(&r),
                1,
                "{name}: the refetched version is served"
            );
            assert_eq!(origin.requests(&format!("/gen/{name}")).await, 2);
        }
    })
    .await
}
