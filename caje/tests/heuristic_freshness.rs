//! `cache.heuristic_freshness = true`: a 200 without explicit freshness but with a
//! Last-Modified 10 days ago is stored for 10% of that age (RFC 9111 §4.2.2); off (the
//! default), it is not stored (`detail=no-explicit-freshness`).

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use support::{gen, within, Caje, Origin};
use support_ext::{body_version, ttl, unix_ago};

const TEN_DAYS: u64 = 10 * 86_400;

#[tokio::test]
async fn last_modified_ten_days_ago_is_stored_when_enabled() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "[cache]\nheuristic_freshness = true\n");
        let path = gen("heur", &format!("last_modified={}", unix_ago(TEN_DAYS)));

        caje.store(&path).await;
        origin.bump("/gen/heur").await;
        let r = caje.get(&path).await;
        let cs = r.cache_status();
        cs.assert_hit();
        // 10% of 10 days is one day.
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
async fn last_modified_alone_is_not_stored_by_default() {
    within(30, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
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
