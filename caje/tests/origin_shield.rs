//! The origin shield: nodes on one manifest fill pages from the node that stored them
//! (`GET /_caje/peer`, authenticated by `cluster.token`) instead of from the origin. The
//! three-node goal figure (100 origin requests, not 300) is in `cluster_warming.rs`.

mod support;

use std::time::Duration;

use support::{eventually, gen, get, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

const TOKEN: &str = "cluster-secret-2";

/// Two nodes on one manifest, both advertising their loopback address; `populate` is the
/// body of the `[populate]` table.
fn pair(origin: &Origin, populate: &str) -> (Caje, Caje) {
    let extra = format!(
        "[populate]\n{populate}\n[manifest]\nflush_interval_ms = 20\n\
         [cluster]\nadvertise_url = \"http://127.0.0.1:{{port}}\"\ntoken = \"{TOKEN}\"\n"
    );
    let first = NodeDir::new();
    let db = first.db();
    let a = Caje::start_in(first, CajeConfig::for_origin(&origin.base(), &extra));
    let b = Caje::start_with(CajeConfig {
        db: Some(db),
        ..CajeConfig::for_origin(&origin.base(), &extra)
    });
    (a, b)
}

/// A peer request to `node` for `path` on the site host.
async fn ask(node: &Caje, path: &str, token: Option<&str>) -> support::Resp {
    let mut headers = vec![("caje-peer-host", SITE_HOST), ("caje-peer-path", path)];
    if let Some(t) = token {
        headers.push(("caje-peer-token", t));
    }
    get(&node.url("/_caje/peer"), &headers).await
}

#[tokio::test]
async fn rows_name_the_node_that_stored_the_page() {
    within(60, async {
        let origin = Origin::start();
        let (a, _b) = pair(&origin, "enabled = false");
        a.get_site(&gen("named", "cc=max-age%3D300")).await;
        a.settle_listed("/gen/named").await;
        let rows = a.list_entries("/gen/named").await;
        assert_eq!(rows[0]["node"], format!("http://{}", a.addr()), "{rows:?}");
    })
    .await
}

#[tokio::test]
async fn the_peer_endpoint_answers_only_with_the_token_and_only_from_the_cache() {
    within(60, async {
        let origin = Origin::start();
        let (a, _b) = pair(&origin, "enabled = false");
        let page = gen("guarded", "cc=max-age%3D300&bytes=3000");
        a.get_site(&page).await;
        a.settle("/gen/guarded").await;
        assert_eq!(origin.total().await, 1);

        for token in [None, Some("wrong"), Some("")] {
            let r = ask(&a, &page, token).await;
            assert_eq!(r.status, 401, "token {token:?}");
            assert_eq!(r.cache_status().detail(), Some("peer-unauthorized"));
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert!(r.body.is_empty());
        }
        // A page the node does not hold is a miss, not an origin request; so are paths that
        // try to leave the cache (keys are hashed, never file names).
        for path in [
            gen("never-asked", "cc=max-age%3D300"),
            "/../../../etc/passwd".to_owned(),
            "/gen/guarded/../guarded?cc=max-age%3D300&bytes=3000".to_owned(),
        ] {
            let r = ask(&a, &path, Some(TOKEN)).await;
            assert_eq!(r.status, 404, "{path}");
            assert_eq!(r.cache_status().detail(), Some("peer-miss"), "{path}");
            assert_eq!(r.header("cache-control"), Some("no-store"));
            assert!(r.header("caje-peer-crc32").is_none());
        }
        // The held page, with its length and checksum.
        let r = ask(&a, &page, Some(TOKEN)).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), 3000);
        let crc = u32::from_str_radix(r.header("caje-peer-crc32").unwrap(), 16).unwrap();
        let body = a.get_site(&page).await.body;
        assert_eq!(r.body, body);
        assert!(crc != 0);
        // A node that has applied more purges than the answering one is refused.
        let r = get(
            &a.url("/_caje/peer"),
            &[
                ("caje-peer-host", SITE_HOST),
                ("caje-peer-path", &page),
                ("caje-peer-token", TOKEN),
                ("caje-peer-applied", "1000"),
            ],
        )
        .await;
        assert_eq!(r.status, 404);
        assert_eq!(r.cache_status().detail(), Some("peer-behind"));
        // None of it reached the origin or was stored as a page.
        assert_eq!(origin.total().await, 1);
        assert!(a.list_entries("/_caje").await.is_empty());
        assert!(a.stat("peer_misses").await >= 7);
        assert_eq!(a.stat("peer_served").await, 1);
    })
    .await
}

#[tokio::test]
async fn a_peer_copy_keeps_its_age_and_expires_when_the_original_does() {
    within(60, async {
        let origin = Origin::start();
        // B warms only when asked, so the copy is old when it arrives.
        let (a, b) = pair(&origin, "enabled = false");
        let page = gen("aging", "cc=max-age%3D5");
        a.get_site(&page).await;
        b.settle_listed("/gen/aging").await;
        tokio::time::sleep(Duration::from_millis(2200)).await;
        let pass = b.admin("POST", "/_caje/populate").await.json();
        assert_eq!(pass["fetched"], 1, "{pass}");
        assert_eq!(b.stat("peer_fills").await, 1);
        assert_eq!(origin.requests("/gen/aging").await, 1, "B asked the origin");
        let hit = b.get_site(&page).await;
        hit.cache_status().assert_hit();
        let age = hit.age().unwrap();
        assert!(
            age >= 2,
            "the age at the peer was not carried forward: Age {age}"
        );
        // The copy expires with A's (5 s after the origin answered), not 5 s after B got it.
        tokio::time::sleep(Duration::from_millis(3300)).await;
        let late = b.get_site(&page).await;
        assert!(
            !late.cache_status().is_hit(),
            "B served its peer copy past the origin's max-age: {:?}",
            late.header("cache-status")
        );
        assert_eq!(origin.requests("/gen/aging").await, 2);
    })
    .await
}

#[tokio::test]
async fn a_dead_peer_falls_back_to_the_origin() {
    within(60, async {
        let origin = Origin::start();
        let (mut a, b) = pair(&origin, "enabled = false\nretries = 0");
        let page = gen("orphan", "cc=max-age%3D300");
        a.get_site(&page).await;
        b.settle_listed("/gen/orphan").await;
        a.stop();
        let pass = b.admin("POST", "/_caje/populate").await.json();
        assert_eq!(pass["fetched"], 1, "{pass}");
        assert_eq!(pass["failed"], 0, "{pass}");
        assert_eq!(b.stat("peer_fallbacks").await, 1);
        assert_eq!(b.stat("peer_fills").await, 0);
        assert_eq!(origin.requests("/gen/orphan").await, 2);
        b.get_site(&page).await.cache_status().assert_hit();
    })
    .await
}

#[tokio::test]
async fn with_source_origin_no_peer_is_asked() {
    within(60, async {
        let origin = Origin::start();
        let (a, b) = pair(&origin, "source = \"origin\"");
        a.get_site(&gen("direct", "cc=max-age%3D300")).await;
        eventually(15, "B holds the page", || async {
            b.stat("entries").await == 1
        })
        .await;
        assert_eq!(origin.requests("/gen/direct").await, 2);
        assert_eq!(a.stat("peer_served").await, 0);
    })
    .await
}

/// Regression (found by the convergence test): a peer answered with the head it serves to
/// clients, without `Surrogate-Key`, so the copy the asker stored had no tags and a tag purge
/// left it behind.
#[tokio::test]
async fn a_peer_copy_keeps_its_tags_and_a_tag_purge_removes_it() {
    within(60, async {
        let origin = Origin::start();
        let (a, b) = pair(&origin, "poll_ms = 50");
        let page = gen(
            "tagged",
            "cc=max-age%3D300&header=Surrogate-Key:%20news%20sport",
        );
        a.get_site(&page).await;
        eventually(15, "B holds the page", || async {
            b.stat("entries").await == 1
        })
        .await;
        assert_eq!(b.stat("peer_fills").await, 1);
        let r = a.admin("POST", "/_caje/purge?tag=sport").await;
        assert_eq!(r.status, 200, "{}", r.text());
        eventually(10, "B dropped its peer copy", || async {
            b.stat("entries").await == 0
        })
        .await;
        assert!(b.get_site(&page).await.header("surrogate-key").is_none());
    })
    .await
}
