//! Concurrent misses for one URL make one origin request; the other requests wait (at most
//! `cache.lock_timeout_ms`) and stream the same response as it arrives (`collapsed`). A
//! non-storable response releases them to fetch on their own, and the URL then skips
//! coalescing for `cache.hit_for_miss_secs` (hit-for-miss, `fwd=miss`).

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use std::time::{Duration, Instant};

use support::http::open;
use support::{gen, within, Caje, Origin};
use support_ext::{body_version, burst};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_cold_requests_make_one_origin_request() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("co", "cc=max-age%3D60&delay_ms=500&bytes=5000");

        let responses = burst(200, "GET", &caje.url(&path), &[]).await;
        assert_eq!(
            origin.requests("/gen/co").await,
            1,
            "origin asked more than once"
        );

        let mut leaders = 0;
        let mut collapsed = 0;
        let mut other = Vec::new();
        for (i, r) in responses.iter().enumerate() {
            assert_eq!(r.status, 200, "request {i}: {}", r.text());
            support::assert_same_body(&r.body, &responses[0].body, "coalesced body");
            assert_eq!(body_version(r), 0);
            let cs = r.cache_status();
            let miss = !cs.is_hit()
                && cs.fwd() == Some("uri-miss")
                && cs.fwd_status() == Some(200)
                && cs.is_stored();
            match (miss, cs.has("collapsed")) {
                (true, true) => collapsed += 1,
                (true, false) => leaders += 1,
                _ => other.push(cs.raw),
            }
        }
        assert_eq!(responses[0].body.len(), 5000);
        assert_eq!(
            (leaders, collapsed),
            (1, 199),
            "expected 1 leader and 199 `collapsed` waiters; {} other answers, e.g. {:?} \
             (a hit means caje had not even accepted that concurrent request while the \
             leader's 500 ms fetch was in flight)",
            other.len(),
            other.first()
        );
    })
    .await
}

#[tokio::test]
async fn a_waiter_streams_bytes_before_the_origin_finishes() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // 10 chunks of 1000 bytes, 150 ms apart: the origin needs ~1.4 s for the body.
        let path = gen(
            "co-stream",
            "cc=max-age%3D60&bytes=10000&chunk_bytes=1000&stream_delay_ms=150",
        );
        let url = caje.url(&path);

        let mut leader = open("GET", &url, &[], b"").await.expect("leader head");
        assert_eq!(leader.status, 200);
        let first = leader.chunk().await.expect("leader body").expect("a chunk");
        assert!(!first.is_empty());

        let mut waiter = open("GET", &url, &[], b"").await.expect("waiter head");
        let cs = waiter.cache_status();
        assert!(
            cs.has("collapsed"),
            "second request not collapsed: `{}`",
            cs.raw
        );
        let waiter_first = waiter.chunk().await.expect("waiter body").expect("a chunk");
        assert!(!waiter_first.is_empty());
        let got_first_at = Instant::now();

        // The leader's body is not complete yet: the origin is still sending.
        let mut leader_total = first.len();
        while let Some(c) = leader.chunk().await.expect("leader body completes") {
            leader_total += c.len();
        }
        let leader_done_at = Instant::now();
        assert_eq!(leader_total, 10_000);
        assert!(
            leader_done_at - got_first_at >= Duration::from_millis(300),
            "the waiter's first bytes came only {:?} before the origin finished: not streamed",
            leader_done_at - got_first_at
        );
        let mut waiter_total = waiter_first.len();
        while let Some(c) = waiter.chunk().await.expect("waiter body completes") {
            waiter_total += c.len();
        }
        assert_eq!(waiter_total, 10_000);
        assert_eq!(origin.requests("/gen/co-stream").await, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_storable_response_releases_waiters_and_then_skips_coalescing() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nhit_for_miss_secs = 30\n");
        let path = gen("co-ns", "cc=no-store&delay_ms=600");
        let url = caje.url(&path);

        let responses = burst(10, "GET", &url, &[]).await;
        for r in &responses {
            assert_eq!(r.status, 200);
            let cs = r.cache_status();
            assert!(
                !cs.is_hit() && !cs.is_stored() && cs.detail() == Some("no-store"),
                "`{}`",
                cs.raw
            );
        }
        assert_eq!(
            origin.requests("/gen/co-ns").await,
            10,
            "released waiters must fetch on their own, not share a no-store body"
        );

        // Hit-for-miss: the next burst is forwarded in parallel, without coalescing.
        let started = Instant::now();
        let responses = burst(10, "GET", &url, &[]).await;
        let took = started.elapsed();
        for r in &responses {
            let cs = r.cache_status();
            assert_eq!(
                cs.fwd(),
                Some("miss"),
                "hit-for-miss expected: `{}`",
                cs.raw
            );
            assert_eq!(cs.fwd_status(), Some(200), "`{}`", cs.raw);
            assert!(!cs.has("collapsed"), "`{}`", cs.raw);
        }
        assert_eq!(origin.requests("/gen/co-ns").await, 20);
        // Serialised, 10 requests of 600 ms would take 6 s.
        assert!(
            took < Duration::from_secs(3),
            "the hit-for-miss burst took {took:?}: it was serialised"
        );
    })
    .await
}

#[tokio::test]
async fn lock_timeout_bounds_a_waiters_wait() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nlock_timeout_ms = 300\n");
        let path = gen("co-lock", "cc=max-age%3D60&delay_ms=3000");
        let url = caje.url(&path);

        let leader = tokio::spawn({
            let url = url.clone();
            async move { support::get(&url, &[]).await }
        });
        support::eventually(5, "the leader reaches the origin", || async {
            origin.requests("/gen/co-lock").await == 1
        })
        .await;
        let waiter = tokio::spawn({
            let url = url.clone();
            async move { support::get(&url, &[]).await }
        });
        // After 300 ms the waiter gives up waiting and fetches on its own, while the leader's
        // 3 s origin request is still in flight.
        support::eventually(2, "the waiter fetches on its own", || async {
            origin.requests("/gen/co-lock").await == 2
        })
        .await;
        assert!(
            !leader.is_finished(),
            "the leader finished before the check"
        );

        let w = waiter.await.expect("waiter task");
        assert_eq!(w.status, 200);
        assert!(
            !w.cache_status().has("collapsed"),
            "`{}`",
            w.cache_status().raw
        );
        let l = leader.await.expect("leader task");
        l.cache_status().assert_fwd("uri-miss", 200, true);
    })
    .await
}

/// A request that arrives right after a client has read a whole response usually finds its
/// fill still committing (the writer's fsync and rename), and joins that fill's flight. It
/// may then reuse the response only as it could reuse a stored one: a `no-cache` response
/// (fresh by `max-age`, RFC 9111 §5.2.2.4) is revalidated, never served as a hit. Large
/// bodies make the commit (fsync of a 4 MB file) long enough for the second request to land
/// in it on every round; the rounds that land after the commit take the ordinary lookup path,
/// which revalidates too.
#[tokio::test]
async fn a_request_joining_a_committing_fill_revalidates_a_no_cache_response() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        for round in 0..8 {
            let name = format!("co-nc{round}");
            let path = gen(
                &name,
                "cc=max-age%3D10000,%20no-cache&etag=abcd&bytes=4000000",
            );
            let first = caje.get(&path).await;
            first.cache_status().assert_fwd("uri-miss", 200, true);
            // At once: no settling, so that the fill is usually still being committed.
            let second = caje.get(&path).await;
            assert_eq!(second.status, 200);
            support::assert_same_body(&second.body, &first.body, "revalidated body");
            let cs = second.cache_status();
            assert!(
                !cs.is_hit(),
                "round {round}: a no-cache response was reused without revalidation: `{}`",
                cs.raw
            );
            let origin_path = format!("/gen/{name}");
            assert_eq!(
                origin.path_stat(&origin_path, "conditional").await,
                1,
                "round {round}: the second request must revalidate with the ETag (`{}`)",
                cs.raw
            );
            assert_eq!(origin.requests(&origin_path).await, 2, "round {round}");
        }
    })
    .await
}

/// The same race with a response that is fresh: the second request is a hit on the entry
/// being committed (no second origin request), with `Age` and `ttl` of its own.
#[tokio::test]
async fn a_request_joining_a_committing_fill_of_a_fresh_response_is_a_hit() {
    within(60, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        for round in 0..4 {
            let name = format!("co-fresh{round}");
            let path = gen(&name, "cc=max-age%3D10000&etag=abcd&bytes=4000000");
            let first = caje.get(&path).await;
            first.cache_status().assert_fwd("uri-miss", 200, true);
            let second = caje.get(&path).await;
            assert_eq!(second.status, 200);
            support::assert_same_body(&second.body, &first.body, "hit body");
            let cs = second.cache_status();
            assert!(cs.is_hit(), "round {round}: `{}`", cs.raw);
            assert_eq!(origin.requests(&format!("/gen/{name}")).await, 1);
        }
    })
    .await
}

/// A request that arrives while a `no-cache` response's body is still streaming in was not
/// waiting when the origin produced it: it is not collapsed onto it, and fetches on its own.
/// (Requests that were waiting for the origin's answer do share it: see the next test.)
#[tokio::test]
async fn a_late_request_does_not_share_a_no_cache_response_still_arriving() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        // 10 chunks of 1000 bytes, 150 ms apart: the origin needs ~1.4 s for the body.
        let path = gen(
            "co-nc-stream",
            "cc=max-age%3D60,%20no-cache&etag=abcd&bytes=10000&chunk_bytes=1000&stream_delay_ms=150",
        );
        let url = caje.url(&path);
        let mut leader = open("GET", &url, &[], b"").await.expect("leader head");
        assert_eq!(leader.status, 200);
        let first = leader.chunk().await.expect("leader body").expect("a chunk");
        assert!(!first.is_empty());

        let late = support::get(&url, &[]).await;
        assert_eq!(late.status, 200);
        let cs = late.cache_status();
        assert!(
            !cs.has("collapsed") && !cs.is_hit(),
            "a late request shared a no-cache response: `{}`",
            cs.raw
        );
        assert_eq!(late.body.len(), 10_000);
        assert_eq!(origin.requests("/gen/co-nc-stream").await, 2);
        while leader.chunk().await.expect("leader body completes").is_some() {}
    })
    .await
}

/// Requests that were waiting while the leader's request was at the origin share its answer
/// even when it is `no-cache`: it was produced after they arrived, so it is what their own
/// forwards would have fetched (the leader's request is the validation they needed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_share_a_no_cache_response_they_waited_for() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen(
            "co-nc-burst",
            "cc=no-cache&etag=abcd&delay_ms=500&bytes=3000",
        );
        let responses = burst(20, "GET", &caje.url(&path), &[]).await;
        let collapsed = responses
            .iter()
            .filter(|r| r.cache_status().has("collapsed"))
            .count();
        for r in &responses {
            assert_eq!(r.status, 200);
            assert_eq!(r.body.len(), 3000);
        }
        assert_eq!(origin.requests("/gen/co-nc-burst").await, 1);
        assert_eq!(collapsed, 19);
    })
    .await
}
