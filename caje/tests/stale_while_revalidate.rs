//! `stale-while-revalidate=N`: within N s of expiry, every request is answered at once from
//! the stale copy (`hit; ttl=-s; detail=stale-while-revalidate`) and exactly one background
//! request refreshes the entry; shortly after, the new version is served.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use std::time::{Duration, Instant};

use support::{gen, within, Caje, Origin};
use support_ext::{body_version, burst, ttl};

/// The origin's delay: the background revalidation is in flight this long.
const ORIGIN_DELAY_MS: u64 = 1500;

#[tokio::test]
async fn burst_after_expiry_is_served_stale_with_one_background_revalidation() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen(
            "swr",
            &format!("cc=max-age%3D1,stale-while-revalidate%3D30&delay_ms={ORIGIN_DELAY_MS}"),
        );
        let first = caje.store(&path).await;
        assert_eq!(body_version(&first), 0);
        origin.bump("/gen/swr").await;
        // Stale by at least one whole second, well inside the 30 s window.
        tokio::time::sleep(Duration::from_millis(2500)).await;

        let started = Instant::now();
        let responses = burst(20, "GET", &caje.url(&path), &[]).await;
        let took = started.elapsed();
        for (i, r) in responses.iter().enumerate() {
            assert_eq!(r.status, 200, "request {i}");
            let cs = r.cache_status();
            assert!(
                cs.is_hit() && cs.detail() == Some("stale-while-revalidate"),
                "request {i}: expected `caje; hit; ttl=-N; detail=stale-while-revalidate`, got `{}`",
                cs.raw
            );
            let t = ttl(&cs).unwrap_or_else(|| panic!("request {i}: no ttl in `{}`", cs.raw));
            assert!(t < 0, "request {i}: ttl must be negative when stale: `{}`", cs.raw);
            assert!(
                r.age().is_some_and(|a| a >= 2),
                "request {i}: Age {:?} must count the stale time",
                r.header("age")
            );
            assert_eq!(body_version(r), 0, "request {i}: the stale copy is served");
        }
        assert!(
            took < Duration::from_millis(ORIGIN_DELAY_MS),
            "the burst took {took:?}: stale responses waited for the origin"
        );

        // Exactly one background request reaches the origin...
        support::eventually(5, "the background revalidation reaches the origin", || async {
            origin.requests("/gen/swr").await == 2
        })
        .await;
        // ...and then the new version is served.
        support::eventually(10, "the refreshed version is served", || async {
            let r = caje.get(&path).await;
            body_version(&r) == 1
        })
        .await;
        let r = caje.get(&path).await;
        assert_eq!(body_version(&r), 1);
        assert_eq!(
            origin.requests("/gen/swr").await,
            2,
            "more than one revalidation reached the origin"
        );
    })
    .await
}
