//! The cache survives a restart: after SIGTERM (exit 0) a new caje on the same cache dir and
//! manifest serves the page as a hit without asking the origin.

mod support;

use std::time::Duration;

use support::{eventually, gen, within, Caje, Origin, SITE_HOST};

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

/// A start reads the index snapshot the previous clean shutdown wrote, and serves from it at
/// once. After a kill -9 the snapshot is stale: a page stored after it, one purged after it.
/// The purged page is never served from the stale snapshot, and the page stored after it is
/// found by the background check and served as a hit without asking the origin again.
#[tokio::test]
async fn a_kill_9_after_the_snapshot_keeps_what_was_stored_and_never_serves_what_was_purged() {
    within(60, async {
        let origin = Origin::start();
        // Without edge warming, which could fetch b from the origin before the check finds it.
        let caje = Caje::start(&origin, "[populate]\nenabled = false\n");
        let a = gen("snap-a", "cc=max-age%3D300&bytes=5000");
        let b = gen("snap-b", "cc=max-age%3D300&bytes=5000");
        let c = gen("snap-c", "cc=max-age%3D300&bytes=5000");
        for p in [&a, &c] {
            caje.get_site(p)
                .await
                .cache_status()
                .assert_fwd("uri-miss", 200, true);
            caje.settle(p).await;
        }
        // SIGTERM: the snapshot lists a and c.
        let mut caje = caje.restart();
        assert!(
            caje.stderr()
                .contains("cache index loaded from its snapshot"),
            "{}",
            caje.stderr()
        );
        assert!(caje.get_site(&a).await.cache_status().is_hit());
        // After the snapshot: b stored, c purged; then a kill -9 (no new snapshot).
        caje.get_site(&b)
            .await
            .cache_status()
            .assert_fwd("uri-miss", 200, true);
        caje.settle(&b).await;
        let r = support::request("PURGE", &caje.url(&c), &[("host", SITE_HOST)], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        // SAFETY: kill(2) on the pid of a child this test started.
        unsafe {
            libc::kill(caje.pid(), libc::SIGKILL);
        }
        assert!(caje.wait_exit(Duration::from_secs(10)).is_some());
        let caje = Caje::start_in(caje.dir.clone(), caje.cfg.clone());
        assert!(
            caje.stderr()
                .contains("cache index loaded from its snapshot"),
            "{}",
            caje.stderr()
        );
        let again = caje.get_site(&c).await;
        assert_eq!(again.status, 200);
        assert!(
            !again.cache_status().is_hit(),
            "a page purged after the snapshot was served from it: {}",
            again.cache_status().raw
        );
        assert_eq!(origin.requests("/gen/snap-c").await, 2);
        eventually(10, "the background check of the directory", || async {
            caje.stderr()
                .contains("cache directory checked against the index snapshot")
        })
        .await;
        for (p, name) in [(&a, "/gen/snap-a"), (&b, "/gen/snap-b")] {
            let r = caje.get_site(p).await;
            assert!(
                r.cache_status().is_hit(),
                "{p}: `{}`; stderr:\n{}",
                r.cache_status().raw,
                caje.stderr()
            );
            assert_eq!(origin.requests(name).await, 1, "{p} fetched again");
        }
    })
    .await
}
