//! Edge warming within the disk cap (issue 9, item 9), on real caje nodes sharing one
//! manifest: warming never evicts a page a client of the node asked for, takes at most
//! `populate.max_fraction` of the cap, and does not bring back a page this node evicted
//! until its manifest row changes.

mod support;

use std::time::Duration;

use support::{eventually, gen, request, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

const FAST: &str = "[populate]\npoll_ms = 100\n[manifest]\nflush_interval_ms = 20\n";

/// Node A (no cap) and node B (`b_extra`), one manifest.
fn pair(origin: &Origin, b_extra: &str) -> (Caje, Caje) {
    let first = NodeDir::new();
    let db = first.db();
    let a = Caje::start_in(first, CajeConfig::for_origin(&origin.base(), FAST));
    let b = Caje::start_with(CajeConfig {
        db: Some(db),
        ..CajeConfig::for_origin(&origin.base(), &format!("{FAST}{b_extra}"))
    });
    (a, b)
}

/// 20,000-byte pages: 20,000 bytes and a header of several hundred bytes in one file = 6
/// blocks (24 KiB) under the cap.
fn page(name: &str) -> String {
    gen(name, "cc=max-age%3D600&bytes=20000")
}

async fn holds(node: &Caje, path: &str) -> bool {
    node.list_entries(path)
        .await
        .iter()
        .any(|e| e["on_disk"] == true)
}

async fn fetch(node: &Caje, path: &str) {
    let r = node.get_site(path).await;
    assert_eq!(r.status, 200, "{path}");
    assert_eq!(r.body.len(), 20_000, "{path}");
}

/// `POST /_caje/populate`: one pass now, its report.
async fn pass(node: &Caje) -> serde_json::Value {
    let r = node.admin("POST", "/_caje/populate").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn purge_url(node: &Caje, path: &str) {
    let escaped = path
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('=', "%3D")
        .replace('&', "%26");
    let url = node.url(&format!("/_caje/purge?url={escaped}"));
    let r = request("POST", &url, &[("host", SITE_HOST)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test]
async fn warming_stays_within_its_share_and_never_evicts_a_client_page() {
    within(90, async {
        let origin = Origin::start();
        // B: 512 KiB = 128 blocks; warming may take half: 64 blocks, i.e. 10 pages of 6.
        let (a, b) = pair(
            &origin,
            "[cache]\nmax_disk_bytes = 524288\nmemory_bytes = 0\n",
        );
        let clients: Vec<String> = (0..4).map(|i| page(&format!("client{i}"))).collect();
        for p in &clients {
            fetch(&b, p).await;
        }
        for i in 0..20 {
            fetch(&a, &page(&format!("warm{i}"))).await;
        }
        // B warms until its share is used up, then refuses the rest (no fetch at all once
        // the row's size does not fit).
        eventually(30, "B warmed its share", || async {
            let s = b.stats().await;
            s["warm_bytes"].as_u64().unwrap() == 60 * 4096
        })
        .await;
        // B can fill its share before A's last rows reach the manifest; the pass below must
        // list all 24. A node's own listing returns once every page it stored is in the
        // manifest (read-your-writes).
        b.admin("GET", "/_caje/list?limit=100").await;
        let listed = a.admin("GET", "/_caje/list?limit=100").await;
        assert_eq!(listed.json()["count"], 24, "{}", listed.text());
        let report = pass(&b).await;
        let stats = b.stats().await;
        assert_eq!(stats["max_warm_bytes"], 262_144, "{stats}");
        assert!(
            report["no_room"].as_u64().unwrap() >= 10,
            "the pages past the share are refused: {report}"
        );
        assert_eq!(stats["evictions"], 0, "warming evicted something: {stats}");
        assert!(stats["disk_bytes"].as_u64().unwrap() <= 524_288, "{stats}");
        let mut warmed = 0;
        for i in 0..20 {
            // The whole path with its query: a bare `/gen/warm1` is also the prefix of
            // `/gen/warm10`..`/gen/warm19` (the listing filters by prefix).
            warmed += usize::from(holds(&b, &page(&format!("warm{i}"))).await);
        }
        assert_eq!(warmed, 10, "{stats}");
        // Every page B's clients asked for is still a hit there.
        for p in &clients {
            let r = b.get_site(p).await;
            r.cache_status().assert_hit();
        }
    })
    .await
}

#[tokio::test]
async fn a_page_evicted_here_is_not_warmed_again_until_its_row_changes() {
    within(120, async {
        let origin = Origin::start();
        // B: 256 KiB = 64 blocks (10 pages of 6 blocks).
        let (a, b) = pair(
            &origin,
            "[cache]\nmax_disk_bytes = 262144\nmemory_bytes = 0\n",
        );
        let w = page("evicted-w");
        fetch(&a, &w).await;
        eventually(15, "B warmed W", || holds(&b, "/gen/evicted-w")).await;
        assert_eq!(origin.requests("/gen/evicted-w").await, 2);

        // B's clients need more than the cap: the warmed page, which no client of B asked
        // for, goes first. (Their pages expire in 2 s, so warming leaves their rows alone
        // below.)
        let clients: Vec<String> = (0..11)
            .map(|i| gen(&format!("evicted-c{i}"), "cc=max-age%3D2&bytes=20000"))
            .collect();
        for p in &clients {
            fetch(&b, p).await;
        }
        eventually(10, "W evicted on B", || async {
            !holds(&b, "/gen/evicted-w").await && b.stat("evictions").await >= 1
        })
        .await;
        // Room again, W's row untouched: B drops its files (its memory of what it evicted
        // stays).
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let r = b.admin("POST", "/_caje/clear/fs").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(b.stats().await["disk_bytes"], 0);
        let report = pass(&b).await;
        assert_eq!(report["evicted"], 1, "W is skipped: {report}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!holds(&b, "/gen/evicted-w").await);
        assert_eq!(
            origin.requests("/gen/evicted-w").await,
            2,
            "B fetched W again although its row did not change"
        );

        // A new version of W (a later `stored_at`): B warms it again.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        purge_url(&a, &w).await;
        fetch(&a, &w).await;
        eventually(15, "B warmed the new W", || holds(&b, "/gen/evicted-w")).await;
        assert_eq!(origin.requests("/gen/evicted-w").await, 4);
    })
    .await
}
