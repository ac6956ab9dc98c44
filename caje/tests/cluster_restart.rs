//! Restarts in a cluster (several caje processes on one shared manifest file, as on LiteFS):
//! purges made while a node was down stay purged when it comes back, a start does not apply
//! old purges again, and restarts of nodes whose manifest is complete write no rows.

mod support;

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

const FAST: &str = "[populate]\npoll_ms = 100\n[manifest]\nflush_interval_ms = 20\n";

fn config(origin: &Origin, db: Option<PathBuf>, extra: &str) -> CajeConfig {
    CajeConfig {
        db,
        ..CajeConfig::for_origin(&origin.base(), extra)
    }
}

/// `n` nodes on the first node's manifest.
fn cluster(origin: &Origin, n: usize, extra: &str) -> Vec<Caje> {
    let first = NodeDir::new();
    let db = first.db();
    let mut nodes = vec![Caje::start_in(first, config(origin, None, extra))];
    for _ in 1..n {
        nodes.push(Caje::start_with(config(origin, Some(db.clone()), extra)));
    }
    nodes
}

/// Whether `node` holds the page at `path` on its disk (by `/_caje/list`).
async fn holds(node: &Caje, path: &str) -> bool {
    node.list_entries(path)
        .await
        .iter()
        .any(|e| e["on_disk"] == true)
}

/// Whether the manifest lists the page at `path` (as `node` reads it).
async fn listed(node: &Caje, path: &str) -> bool {
    !node.list_entries(path).await.is_empty()
}

/// Stops `node` (SIGTERM, exit 0) and returns what starting it again needs.
fn stop(mut node: Caje) -> (std::sync::Arc<NodeDir>, CajeConfig) {
    let status = node.stop();
    assert_eq!(status.code(), Some(0), "stderr:\n{}", node.stderr());
    (node.dir.clone(), node.cfg.clone())
}

/// `POST /_caje/purge?url=` for the site page at `path_and_query` through `node`.
async fn purge_url(node: &Caje, path_and_query: &str) -> serde_json::Value {
    let escaped = path_and_query
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('=', "%3D")
        .replace('&', "%26");
    let url = node.url(&format!("/_caje/purge?url={escaped}"));
    let r = support::request("POST", &url, &[("host", SITE_HOST)], b"").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

async fn purge_tag(node: &Caje, tag: &str) -> serde_json::Value {
    let r = node.admin("POST", &format!("/_caje/purge?tag={tag}")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// `/_caje/status` of `node`.
async fn status(node: &Caje) -> serde_json::Value {
    let r = node.admin("GET", "/_caje/status").await;
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// Waits until `node`'s background task has run its start-up work and at least one pass
/// (reconcile comes before the first pass), then a little longer for anything it queued.
async fn settled_after_start(node: &Caje) {
    eventually(15, "first populate pass after start", || async {
        status(node).await["populate"]["passes"]
            .as_u64()
            .is_some_and(|p| p >= 1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
}

/// Rows this process's manifest handle has written since it started.
async fn rows_written(node: &Caje) -> u64 {
    let s = status(node).await;
    s["manifest"]["queue"]["rows_written"]
        .as_u64()
        .unwrap_or_else(|| panic!("no manifest.queue.rows_written in {s}"))
}

/// The first defect: B is down while A purges a page; when B comes back it must not
/// re-announce its copy (the row stays gone), must not fetch it again on its own, and must
/// not keep it.
#[tokio::test]
async fn restart_after_a_url_purge_does_not_bring_the_page_back() {
    within(90, async {
        let origin = Origin::start();
        let mut nodes = cluster(&origin, 2, FAST);
        let page = gen("w030", "cc=max-age%3D300");
        let kept = gen("w031", "cc=max-age%3D300");
        nodes[0].get_site(&page).await;
        nodes[0].get_site(&kept).await;
        for node in &nodes {
            eventually(15, "warmed", || async {
                holds(node, "/gen/w030").await && holds(node, "/gen/w031").await
            })
            .await;
        }
        let fetched = origin.requests("/gen/w030").await;
        assert_eq!(fetched, 2, "each node fetched it once");

        let (dir, cfg) = stop(nodes.pop().unwrap());
        origin.bump("/gen/w030").await;
        let out = purge_url(&nodes[0], &page).await;
        assert_eq!(out["rows"], 1, "{out}");
        let b = Caje::start_in(dir, cfg);
        settled_after_start(&b).await;

        for (name, node) in [("A", &nodes[0]), ("B", &b)] {
            assert!(
                !listed(node, "/gen/w030").await,
                "{name}: the purged page is in the manifest again"
            );
        }
        assert!(!holds(&b, "/gen/w030").await, "B kept the purged copy");
        assert_eq!(
            origin.requests("/gen/w030").await,
            fetched,
            "the purged page was fetched again without a client asking"
        );
        assert!(
            holds(&b, "/gen/w031").await,
            "B dropped a page nobody purged"
        );
        // A client now gets the new version from B.
        let r = b.get_site(&page).await;
        assert_eq!(r.origin_version(), Some(1), "{:?}", r.cache_status());
    })
    .await
}

/// The same with a tag purge: every page carrying the tag stays gone.
#[tokio::test]
async fn restart_after_a_tag_purge_does_not_bring_the_pages_back() {
    within(90, async {
        let origin = Origin::start();
        let mut nodes = cluster(&origin, 2, FAST);
        let tagged: Vec<String> = (0..4)
            .map(|i| {
                gen(
                    &format!("t{i}"),
                    "cc=max-age%3D300&header=Surrogate-Key:news%20x",
                )
            })
            .collect();
        let other = gen("u0", "cc=max-age%3D300&header=Surrogate-Key:sport");
        for p in tagged.iter().chain([&other]) {
            nodes[0].get_site(p).await;
        }
        eventually(15, "B warmed all five", || async {
            nodes[1].stat("entries").await == 5
        })
        .await;
        let before = origin.total().await;

        let (dir, cfg) = stop(nodes.pop().unwrap());
        for i in 0..4 {
            origin.bump(&format!("/gen/t{i}")).await;
        }
        let out = purge_tag(&nodes[0], "news").await;
        assert_eq!(out["rows"], 4, "{out}");
        let b = Caje::start_in(dir, cfg);
        settled_after_start(&b).await;

        for i in 0..4 {
            let path = format!("/gen/t{i}");
            assert!(!listed(&nodes[0], &path).await, "{path} listed again");
            assert!(!holds(&b, &path).await, "B kept {path}");
        }
        assert_eq!(
            origin.total().await,
            before,
            "purged pages were fetched again without a client asking"
        );
        assert!(
            holds(&b, "/gen/u0").await,
            "B dropped a page of another tag"
        );
        b.get_site(&other).await.cache_status().assert_hit();
    })
    .await
}

/// The fourth defect: a node that comes back serves purged copies until its
/// background task applies the purges it missed. Read right after the start.
#[tokio::test]
async fn a_restarted_node_never_serves_a_purged_version() {
    within(90, async {
        let origin = Origin::start();
        let mut nodes = cluster(&origin, 2, FAST);
        let pages: Vec<String> = (0..5)
            .map(|i| {
                gen(
                    &format!("r{i}"),
                    "cc=max-age%3D300&header=Surrogate-Key:gone",
                )
            })
            .collect();
        for p in &pages {
            nodes[0].get_site(p).await;
        }
        eventually(15, "B warmed all five", || async {
            nodes[1].stat("entries").await == 5
        })
        .await;
        let (dir, cfg) = stop(nodes.pop().unwrap());
        for i in 0..5 {
            origin.bump(&format!("/gen/r{i}")).await;
        }
        purge_tag(&nodes[0], "gone").await;
        let b = Caje::start_in(dir, cfg);
        // The first requests B ever answers.
        for p in &pages {
            let r = b.get_site(p).await;
            assert_eq!(
                r.origin_version(),
                Some(1),
                "{p}: a purged version served right after the restart ({:?})",
                r.cache_status()
            );
        }
    })
    .await
}

/// A node down for longer than `tombstone_ttl_secs` missed purges whose tombstones are gone.
/// It must notice, and drop every copy the manifest no longer lists, before serving.
#[tokio::test]
async fn a_gap_longer_than_the_tombstone_ttl_drops_unlisted_copies() {
    within(90, async {
        let origin = Origin::start();
        let extra = format!("{FAST}[cache]\ntombstone_ttl_secs = 1\n");
        let mut nodes = cluster(&origin, 2, &extra);
        let db = nodes[0].dir.db();
        let page = gen("g0", "cc=max-age%3D300");
        let kept = gen("g1", "cc=max-age%3D300");
        nodes[0].get_site(&page).await;
        nodes[0].get_site(&kept).await;
        eventually(15, "B warmed both", || async {
            nodes[1].stat("entries").await == 2
        })
        .await;
        let (dir, cfg) = stop(nodes.pop().unwrap());
        origin.bump("/gen/g0").await;
        assert_eq!(purge_url(&nodes[0], &page).await["rows"], 1);
        // Past the TTL, the nodes' periodic expiry deletes the tombstone; do it now, as
        // `Manifest::expire_tombstones` does.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        conn.execute("DELETE FROM tombstones WHERE expires_at <= ?1", [now])
            .unwrap();
        let left: i64 = conn
            .query_row("SELECT count(*) FROM tombstones", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0, "the tombstone outlived its TTL");
        drop(conn);

        let b = Caje::start_in(dir, cfg);
        let r = b.get_site(&page).await;
        assert_eq!(
            r.origin_version(),
            Some(1),
            "a purge whose tombstone expired while B was down was not applied ({:?})",
            r.cache_status()
        );
        // What the manifest still lists is kept.
        b.get_site(&kept).await.cache_status().assert_hit();
    })
    .await
}

/// The third defect: tombstones are not applied again at every start. A copy fetched
/// in the same second as a purge (after it) survives the node's restart.
#[tokio::test]
async fn a_start_does_not_apply_old_tombstones_again() {
    within(90, async {
        let origin = Origin::start();
        let mut nodes = cluster(&origin, 1, FAST);
        let mut chosen = None;
        for attempt in 0..6 {
            // Start just after a second boundary, so that the purge and the fetch share it.
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            tokio::time::sleep(Duration::from_nanos(
                1_000_000_000 - u64::from(now.subsec_nanos()) + 20_000_000,
            ))
            .await;
            let second = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            let page = gen(&format!("s{attempt}"), "cc=max-age%3D300");
            purge_url(&nodes[0], &page).await;
            nodes[0].get_site(&page).await;
            nodes[0].settle(&format!("/gen/s{attempt}")).await;
            let after = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs();
            if after == second {
                chosen = Some((attempt, page));
                break;
            }
        }
        let (attempt, page) = chosen.expect("no purge and fetch within one second in 6 tries");
        let path = format!("/gen/s{attempt}");
        // Let the background task see the tombstone.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            holds(&nodes[0], &path).await,
            "the copy fetched after the purge was deleted"
        );

        let (dir, cfg) = stop(nodes.pop().unwrap());
        let a = Caje::start_in(dir, cfg);
        settled_after_start(&a).await;
        a.get_site(&page).await.cache_status().assert_hit();
        assert_eq!(origin.requests(&path).await, 1, "fetched again");
    })
    .await
}

/// The second defect: reconcile rewrote the rows of copies a node got by warming. M=3
/// nodes restarted N=2 times each, with a complete manifest, write no row.
#[tokio::test]
async fn restarts_with_a_complete_manifest_write_no_rows() {
    within(150, async {
        let origin = Origin::start();
        // Warming paced (4 pages a second per node) so that the copies of one page are
        // stored in different seconds on different nodes, as in a real cluster.
        let paced =
            "[populate]\npoll_ms = 100\nrate_per_origin = 4\n[manifest]\nflush_interval_ms = 20\n";
        let mut nodes = cluster(&origin, 3, paced);
        let pages = 12;
        for i in 0..pages {
            nodes[i % 3]
                .get_site(&gen(&format!("k{i}"), "cc=max-age%3D600"))
                .await;
        }
        for (i, node) in nodes.iter().enumerate() {
            eventually(20, &format!("node {i} holds every page"), || async {
                node.stat("entries").await == pages as u64
            })
            .await;
        }
        let mut written = Vec::new();
        for round in 0..2 {
            for i in 0..3 {
                let node = nodes.remove(i);
                let (dir, cfg) = stop(node);
                let node = Caje::start_in(dir, cfg);
                settled_after_start(&node).await;
                let rows = rows_written(&node).await;
                println!("round {round}, node {i}: {rows} rows written after the restart");
                written.push(rows);
                nodes.insert(i, node);
            }
        }
        assert_eq!(nodes[0].list().await["count"], pages);
        assert!(
            written.iter().all(|&n| n == 0),
            "restarts wrote rows: {written:?}"
        );
    })
    .await
}
