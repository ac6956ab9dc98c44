//! Edge warming: three caje nodes on loopback share one manifest file (separate cache dirs).
//! A miss on node A makes nodes B and C hold the page within a bounded time without any client
//! asking them: from the origin (`populate.source = "origin"`, or no cluster configured), or
//! from the node that stored it (the origin shield, `populate.source = "peer"`).

mod support;

use std::time::{Duration, Instant};

use support::{eventually, gen, get, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

/// Three nodes on one manifest; `extra` TOML for each.
fn cluster(origin: &Origin, extra: &str) -> Vec<Caje> {
    let first = NodeDir::new();
    let db = first.db();
    let cfg = |db: Option<std::path::PathBuf>| CajeConfig {
        db,
        ..CajeConfig::for_origin(&origin.base(), extra)
    };
    vec![
        Caje::start_in(first, cfg(None)),
        Caje::start_with(cfg(Some(db.clone()))),
        Caje::start_with(cfg(Some(db))),
    ]
}

/// Whether `node` holds (on disk) the page at `path` (by `/_caje/list`, not by a request).
async fn holds(node: &Caje, path: &str) -> bool {
    node.list_entries(path)
        .await
        .iter()
        .any(|e| e["on_disk"] == true)
}

const FAST_POLL: &str = "[populate]\npoll_ms = 100\n[manifest]\nflush_interval_ms = 20\n";

#[tokio::test]
async fn a_miss_on_one_node_warms_the_others() {
    within(60, async {
        let origin = Origin::start();
        let nodes = cluster(&origin, FAST_POLL);
        let path = gen("warm", "cc=max-age%3D300&bytes=5000");
        let r = nodes[0].get_site(&path).await;
        r.cache_status().assert_fwd("uri-miss", 200, true);

        for (i, node) in nodes.iter().enumerate() {
            eventually(15, &format!("node {i} holds {path}"), || {
                holds(node, "/gen/warm")
            })
            .await;
        }
        // Each node fetched it from the origin itself, exactly once.
        assert_eq!(origin.requests("/gen/warm").await, 3);
        // And B and C now answer it from their own disk.
        for node in &nodes[1..] {
            let r = node.get_site(&path).await;
            r.cache_status().assert_hit();
            assert_eq!(r.body, nodes[0].get_site(&path).await.body);
        }
        assert_eq!(origin.requests("/gen/warm").await, 3);
    })
    .await
}

#[tokio::test]
async fn warming_replays_the_recorded_host_and_vary_headers() {
    within(60, async {
        let origin = Origin::start();
        let nodes = cluster(&origin, FAST_POLL);
        let path = gen("variant", "cc=max-age%3D300&vary=X-Tenant");
        let url = nodes[0].url(&path);
        let r = get(&url, &[("host", SITE_HOST), ("x-tenant", "blue")]).await;
        r.cache_status().assert_fwd("uri-miss", 200, true);
        assert!(r.text().contains("x-tenant=blue"), "{}", r.text());

        eventually(15, "node 1 holds the variant", || {
            holds(&nodes[1], "/gen/variant")
        })
        .await;
        // The origin saw node 1's request with the recorded Host and X-Tenant value.
        let seen = origin.last_headers("/gen/variant").await;
        assert_eq!(seen["x-tenant"], "blue", "{seen:?}");
        assert_eq!(seen["x-forwarded-host"], SITE_HOST, "{seen:?}");
        // A client of node 1 with the same variant gets a hit; another variant is a miss.
        let url1 = nodes[1].url(&path);
        let hit = get(&url1, &[("host", SITE_HOST), ("x-tenant", "blue")]).await;
        hit.cache_status().assert_hit();
        assert!(hit.text().contains("x-tenant=blue"));
        let other = get(&url1, &[("host", SITE_HOST), ("x-tenant", "red")]).await;
        assert_eq!(other.cache_status().fwd(), Some("vary-miss"));
    })
    .await
}

#[tokio::test]
async fn expired_rows_and_uncacheable_pages_are_not_warmed() {
    within(60, async {
        let origin = Origin::start();
        // Warming only on demand, so the short-lived row has expired when node 1 looks.
        let nodes = cluster(
            &origin,
            "[populate]\nenabled = false\n[manifest]\nflush_interval_ms = 20\n",
        );
        nodes[0].get_site(&gen("short", "cc=max-age%3D1")).await;
        nodes[0].get_site(&gen("never", "cc=no-store")).await;
        nodes[0].get_site(&gen("long", "cc=max-age%3D300")).await;
        nodes[1].settle_listed("/gen/long").await;
        nodes[1].settle_listed("/gen/short").await;
        assert!(
            nodes[1].list_entries("/gen/never").await.is_empty(),
            "no-store page listed"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let pass = nodes[1].admin("POST", "/_caje/populate").await.json();
        assert_eq!(pass["fetched"], 1, "{pass}");
        assert_eq!(pass["failed"], 0, "{pass}");
        assert!(holds(&nodes[1], "/gen/long").await);
        assert_eq!(
            origin.requests("/gen/short").await,
            1,
            "expired row was fetched"
        );
        assert_eq!(
            origin.requests("/gen/never").await,
            1,
            "no-store page was fetched"
        );
    })
    .await
}

#[tokio::test]
async fn populate_endpoint_and_status_report_counts() {
    within(60, async {
        let origin = Origin::start();
        // Background warming off: the admin endpoint does the pass.
        let nodes = cluster(
            &origin,
            "[populate]\nenabled = false\n[manifest]\nflush_interval_ms = 20\n",
        );
        for i in 0..5 {
            nodes[0]
                .get_site(&gen(&format!("p{i}"), "cc=max-age%3D300"))
                .await;
        }
        // Fills commit (and are announced) in any order: wait for every row.
        for i in 0..5 {
            nodes[1].settle_listed(&format!("/gen/p{i}?")).await;
        }
        let pass = nodes[1].admin("POST", "/_caje/populate").await.json();
        assert_eq!(pass["fetched"], 5, "{pass}");
        assert_eq!(pass["failed"], 0, "{pass}");
        let again = nodes[1].admin("POST", "/_caje/populate").await.json();
        assert_eq!(again["candidates"], 0, "second pass refetched: {again}");
        let status = nodes[1].admin("GET", "/_caje/status").await.json();
        assert_eq!(status["role"], "standalone", "{status}");
        assert_eq!(status["cache"]["entries"], 5, "{status}");
        assert!(
            status["populate"]["passes"].as_u64().unwrap() >= 2,
            "{status}"
        );
        assert!(status["manifest"]["data_version"].is_number(), "{status}");
        assert_eq!(
            nodes[2].stat("entries").await,
            0,
            "node 2 warmed with populate disabled"
        );
    })
    .await
}

/// The `[cluster]` table of a node on loopback: its own port, a shared token.
const CLUSTER: &str =
    "[cluster]\nadvertise_url = \"http://127.0.0.1:{port}\"\ntoken = \"cluster-secret-1\"\n";

/// 100 pages, each asked by a client on one of three nodes (round robin), until every node
/// holds all of them. Returns the origin's request count and the time to warm.
async fn warm_100_pages_through_three_nodes(source: &str) -> (u64, Duration, Vec<u64>) {
    let origin = Origin::start();
    let extra = format!(
        "[populate]\npoll_ms = 50\nsource = {source:?}\n[manifest]\nflush_interval_ms = 20\n{CLUSTER}"
    );
    let nodes = cluster(&origin, &extra);
    let n = 100u64;
    let paths: Vec<String> = (0..n)
        .map(|i| gen(&format!("s{i:03}"), "cc=max-age%3D300&bytes=4096"))
        .collect();
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for (i, path) in paths.iter().enumerate() {
        let url = nodes[i % 3].url(path);
        clients.spawn(async move { get(&url, &[("host", SITE_HOST)]).await });
    }
    while let Some(r) = clients.join_next().await {
        let r = r.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    for (i, node) in nodes.iter().enumerate() {
        eventually(60, &format!("node {i} holds all {n} pages"), || async {
            node.stat("entries").await >= n
        })
        .await;
    }
    let took = started.elapsed();
    let served = origin.total().await;
    // Every page is now a hit on every node, with the same body.
    for path in &paths {
        let first = nodes[0].get_site(path).await;
        first.cache_status().assert_hit();
        for node in &nodes[1..] {
            let r = node.get_site(path).await;
            r.cache_status().assert_hit();
            assert_eq!(r.body, first.body, "{path}");
        }
    }
    assert_eq!(
        origin.total().await,
        served,
        "reading the warm pages reached the origin"
    );
    let mut peer_fills = Vec::new();
    for node in &nodes {
        peer_fills.push(node.stat("peer_fills").await);
    }
    println!(
        "populate.source = {source}: {n} pages through 3 nodes warm everywhere in {:.2} s; \
         the origin served {served} requests; peer fills per node {peer_fills:?}",
        took.as_secs_f64()
    );
    (served, took, peer_fills)
}

/// The goal of the origin shield: 100 pages through A, B and C cost the origin 100 requests.
#[tokio::test]
async fn peer_fill_warms_three_nodes_with_one_origin_request_per_page() {
    within(120, async {
        let (served, _, peer_fills) = warm_100_pages_through_three_nodes("peer").await;
        assert_eq!(
            served, 100,
            "the origin served more than one request per page"
        );
        assert_eq!(peer_fills.iter().sum::<u64>(), 200, "{peer_fills:?}");
    })
    .await
}

/// The same cluster filling from the origin: 300 requests (the figure the shield saves).
#[tokio::test]
async fn origin_fill_costs_one_origin_request_per_page_and_node() {
    within(120, async {
        let (served, _, peer_fills) = warm_100_pages_through_three_nodes("origin").await;
        assert_eq!(served, 300);
        assert_eq!(peer_fills, [0, 0, 0]);
    })
    .await
}

/// Measurement (run by hand, release build): how long a fresh node takes to warm 1,000 pages
/// from the manifest. `cargo test --release -p caje --test cluster_warming -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn measure_warming_1000_pages() {
    within(300, async {
        let origin = Origin::start();
        let first = NodeDir::new();
        let db = first.db();
        let extra = "[populate]\npoll_ms = 50\nconcurrency = 32\nrate_per_origin = 0\n[manifest]\nflush_interval_ms = 20\n";
        let a = Caje::start_in(first, CajeConfig::for_origin(&origin.base(), extra));
        let n = 1000;
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let url = a.url(&gen(&format!("m{i}"), "cc=max-age%3D600&bytes=16384"));
            tasks.spawn(async move { get(&url, &[("host", SITE_HOST)]).await });
        }
        while tasks.join_next().await.is_some() {}
        eventually(60, "1000 rows listed", || async { a.list().await["count"] == n }).await;
        let started = Instant::now();
        let b = Caje::start_with(CajeConfig {
            db: Some(db),
            ..CajeConfig::for_origin(&origin.base(), extra)
        });
        eventually(120, "fresh node holds 1000 pages", || async {
            b.stat("entries").await == n
        })
        .await;
        let took = started.elapsed();
        println!(
            "fresh node warmed {n} pages of 16 KiB in {:.2} s ({:.0} pages/s), including its start-up",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
    })
    .await
}
