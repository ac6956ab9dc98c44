//! An entry past its lifetime is fetched again (`fwd=stale`), and the new version is served
//! and stored.

mod support;

use std::time::Duration;

use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn expired_entry_is_refetched_and_replaced() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("e", "cc=max-age%3D1");

        let first = caje.get(&path).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        let v1 = first.origin_version().expect("X-Origin-Version");

        origin.bump("/gen/e").await;
        // max-age=1: after two seconds the entry is stale by any rounding.
        tokio::time::sleep(Duration::from_millis(2200)).await;

        let second = caje.get(&path).await;
        assert_eq!(second.status, 200);
        second.cache_status().assert_fwd("stale", 200, true);
        let v2 = second.origin_version().expect("X-Origin-Version");
        assert_eq!(v2, v1 + 1, "refetch must return the bumped version");
        assert!(
            second.first_line().ends_with(&format!("version={v2}")),
            "body has the old version: {:?}",
            second.first_line()
        );
        assert_eq!(origin.requests("/gen/e").await, 2);

        // The new version replaced the old one.
        let third = caje.get(&path).await;
        if third.cache_status().is_hit() {
            support::assert_same_body(&third.body, &second.body, "hit serves the old body");
        }
    })
    .await
}
