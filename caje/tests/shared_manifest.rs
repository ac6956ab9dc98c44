//! Two caje processes sharing one manifest (separate cache dirs) see each other's entries in
//! `/_caje/list`; `on_disk` tells which bodies are local. (Edge warming is off here: with it
//! on, each node would fetch the other's page; `cluster_warming.rs` tests that.)

mod support;

use support::{gen, within, Caje, CajeConfig, NodeDir, Origin};

const NO_WARMING: &str = "[populate]\nenabled = false\n";

#[tokio::test]
async fn nodes_sharing_a_manifest_list_each_others_rows() {
    within(40, async {
        let origin = Origin::start();
        let dir_a = NodeDir::new();
        let shared_db = dir_a.db();
        let a = Caje::start_in(dir_a, CajeConfig::for_origin(&origin.base(), NO_WARMING));
        let b = Caje::start_with(CajeConfig {
            db: Some(shared_db),
            ..CajeConfig::for_origin(&origin.base(), NO_WARMING)
        });

        a.store(&gen("from-a", "cc=max-age%3D300")).await;
        b.store(&gen("from-b", "cc=max-age%3D300")).await;
        // Each node sees the other's row once the shared manifest has it.
        a.settle_listed("/gen/from-b").await;
        b.settle_listed("/gen/from-a").await;

        for (node, name, own, other) in [
            (&a, "a", "/gen/from-a", "/gen/from-b"),
            (&b, "b", "/gen/from-b", "/gen/from-a"),
        ] {
            let list = node.list().await;
            let own_rows = node.list_entries(own).await;
            let other_rows = node.list_entries(other).await;
            assert_eq!(own_rows.len(), 1, "node {name}: own row missing: {list}");
            assert_eq!(
                other_rows.len(),
                1,
                "node {name}: other node's row missing: {list}"
            );
            assert_eq!(own_rows[0]["on_disk"], true, "node {name}: {list}");
            assert_eq!(other_rows[0]["on_disk"], false, "node {name}: {list}");
        }
    })
    .await
}
