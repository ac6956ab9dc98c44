//! The cache survives a restart: after SIGTERM (exit 0) a new caje on the same cache dir and
//! manifest serves the page as a hit without asking the origin.

mod support;

use support::{gen, within, Caje, Origin};

#[tokio::test]
async fn entry_is_a_hit_after_restart() {
    within(40, async {
        let origin = Origin::start();
        let caje = Caje::start(&origin, "");
        let path = gen("r", "cc=max-age%3D300&bytes=5000");

        let first = caje.get_site(&path).await;
        first.cache_status().assert_fwd("uri-miss", 200, true);
        caje.settle(&path).await;

        let caje = caje.restart(); // asserts exit code 0

        let again = caje.get_site(&path).await;
        assert_eq!(again.status, 200);
        let cs = again.cache_status();
        assert!(
            cs.is_hit(),
            "after restart: `{}` (expected a hit); new caje's stderr:\n{}",
            cs.raw,
            caje.stderr()
        );
        support::assert_same_body(&again.body, &first.body, "body");
        assert_eq!(origin.requests("/gen/r").await, 1, "restart lost the entry");
        let entries = caje.list_entries("/gen/r").await;
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0]["on_disk"], true);
    })
    .await
}
