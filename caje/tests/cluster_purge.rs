//! Cluster-wide purge: a purge on one node removes the manifest rows and records a tombstone;
//! every node applies it to its own disk.

mod support;

use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin};

const FAST: &str = "[populate]\npoll_ms = 100\n[manifest]\nflush_interval_ms = 20\n";

fn cluster(origin: &Origin) -> Vec<Caje> {
    let first = NodeDir::new();
    let db = first.db();
    let cfg = |db| CajeConfig {
        db,
        ..CajeConfig::for_origin(&origin.base(), FAST)
    };
    vec![
        Caje::start_in(first, cfg(None)),
        Caje::start_with(cfg(Some(db.clone()))),
        Caje::start_with(cfg(Some(db))),
    ]
}

async fn on_disk(node: &Caje, path: &str) -> bool {
    node.list_entries(path)
        .await
        .iter()
        .any(|e| e["on_disk"] == true)
}

async fn holds_locally(node: &Caje) -> u64 {
    node.stat("entries").await
}

#[tokio::test]
async fn purge_on_one_node_removes_the_page_everywhere() {
    within(60, async {
        let origin = Origin::start();
        let nodes = cluster(&origin);
        let page = gen("doomed", "cc=max-age%3D300");
        let keep = gen("kept", "cc=max-age%3D300");
        nodes[0].get_site(&page).await;
        nodes[0].get_site(&keep).await;
        for node in &nodes {
            eventually(15, "warmed", || async {
                on_disk(node, "/gen/doomed").await && on_disk(node, "/gen/kept").await
            })
            .await;
        }
        origin.bump("/gen/doomed").await;
        let escaped = "/gen/doomed%3Fcc%3Dmax-age%253D300";
        let url = nodes[1].url(&format!("/_caje/purge?url={escaped}"));
        let r = support::request("POST", &url, &[("host", support::SITE_HOST)], b"").await;
        assert_eq!(r.status, 200, "{}", r.text());
        let out = r.json();
        assert_eq!(out["entries"], 1, "{out}");
        assert_eq!(out["rows"], 1, "{out}");

        for (i, node) in nodes.iter().enumerate() {
            eventually(10, &format!("node {i} dropped the page"), || async {
                holds_locally(node).await == 1
            })
            .await;
        }
        // Every node now serves the new version (fetched again by itself, or warmed again
        // from the row a refetch recorded), never the purged one.
        for (i, node) in nodes.iter().enumerate() {
            let r = node.get_site(&page).await;
            assert_eq!(
                r.origin_version(),
                Some(1),
                "node {i}: {:?}",
                r.cache_status()
            );
            assert!(
                r.first_line().ends_with("version=1"),
                "node {i}: {}",
                r.first_line()
            );
            node.get_site(&keep).await.cache_status().assert_hit();
        }
    })
    .await
}

#[tokio::test]
async fn purge_by_tag_reaches_every_node_and_spares_other_tags() {
    within(60, async {
        let origin = Origin::start();
        let nodes = cluster(&origin);
        let tagged = gen(
            "tagged",
            "cc=max-age%3D300&header=Surrogate-Key:news%20sport",
        );
        let near = gen("near", "cc=max-age%3D300&header=Surrogate-Key:newsletter");
        nodes[2].get_site(&tagged).await;
        nodes[2].get_site(&near).await;
        for node in &nodes {
            eventually(15, "warmed", || async { holds_locally(node).await == 2 }).await;
        }
        let r = nodes[0].admin("POST", "/_caje/purge?tag=news").await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["rows"], 1);
        for (i, node) in nodes.iter().enumerate() {
            eventually(10, &format!("node {i} applied the tag purge"), || async {
                holds_locally(node).await == 1
            })
            .await;
            node.get_site(&near).await.cache_status().assert_hit();
        }
        // The rows are gone, so nobody warms the page back.
        assert!(nodes[1].list_entries("/gen/tagged").await.is_empty());
    })
    .await
}
