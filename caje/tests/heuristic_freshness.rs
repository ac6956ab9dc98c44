//! Heuristic freshness (RFC 9111 §4.2.2), on by default: a heuristically cacheable response
//! without explicit freshness but with a `Last-Modified` 10 days ago is stored for 10% of
//! that age, at most `cache.heuristic_max_secs` (default one day). `heuristic_freshness =
//! false` turns it off (`detail=no-explicit-freshness`); a status that is not heuristically
//! cacheable (403) is never stored this way.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, within, Caje, Origin};
use support_ext::{body_version, ttl, unix_ago};

const TEN_DAYS: u64 = 10 * 86_400;

#[tokio::test]
async fn last_modified_ten_days_ago_is_stored_by_default() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("heur", &format!("last_modified={}", unix_ago(TEN_DAYS)));

        caje.store(&path).await;
        origin.bump("/gen/heur").await;
        let r = caje.get(&path).await;
        let cs = r.cache_status();
        cs.assert_hit();
        // 10% of 10 days is one day, which is also the default cap.
        let t = ttl(&cs).unwrap();
        assert!(
            (86_400 - 60..=86_400).contains(&t),
            "heuristic lifetime should be ~1 day: `{}`",
            cs.raw
        );
        assert!(r.age().is_some());
        assert_eq!(body_version(&r), 0);
        assert_eq!(origin.requests("/gen/heur").await, 1);
    })
    .await
}

#[tokio::test]
async fn heuristic_lifetime_is_capped_by_heuristic_max_secs() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nheuristic_max_secs = 600\n");
        let path = gen("heur-cap", &format!("last_modified={}", unix_ago(TEN_DAYS)));

        caje.store(&path).await;
        let cs = caje.get(&path).await.cache_status();
        cs.assert_hit();
        let t = ttl(&cs).unwrap();
        assert!(
            (540..=600).contains(&t),
            "10% of 10 days capped at 600 s, got `{}`",
            cs.raw
        );
    })
    .await
}

#[tokio::test]
async fn last_modified_alone_is_not_stored_when_turned_off() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nheuristic_freshness = false\n");
        let path = gen("heur-off", &format!("last_modified={}", unix_ago(TEN_DAYS)));

        let r = caje.get(&path).await;
        assert_eq!(r.status, 200);
        r.cache_status().assert_not_stored("no-explicit-freshness");
        origin.bump("/gen/heur-off").await;
        let r = caje.get(&path).await;
        assert!(!r.cache_status().is_hit(), "`{}`", r.cache_status().raw);
        assert_eq!(body_version(&r), 1);
        assert_eq!(origin.requests("/gen/heur-off").await, 2);
        assert!(caje.list_entries("/gen/heur-off").await.is_empty());
    })
    .await
}

#[tokio::test]
async fn a_status_that_is_not_heuristically_cacheable_is_not_stored() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen(
            "heur-403",
            &format!("status=403&last_modified={}", unix_ago(TEN_DAYS)),
        );
        for _ in 0..2 {
            let r = caje.get(&path).await;
            assert_eq!(r.status, 403);
            assert!(!r.cache_status().is_hit(), "`{}`", r.cache_status().raw);
        }
        assert_eq!(origin.requests("/gen/heur-403").await, 2);
    })
    .await
}
