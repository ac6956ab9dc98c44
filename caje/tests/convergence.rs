//! A seeded, time-bounded convergence test (Jepsen-style): three nodes on one shared manifest
//! file, a random workload of reads through random nodes, origin version bumps each followed
//! by a purge (by URL or by tag) through a random node, and kill -9 / SIGTERM restarts with
//! purges while a node is down. Then heal, quiesce, and read every page from every node. The
//! workload and its checks are in `support/convergence.rs`; `convergence_litefs.rs` runs the
//! same on a real LiteFS cluster.
//!
//! It prints its seed; `CONVERGENCE_SEED=<n>` replays one, `CONVERGENCE_SECS=<n>` lengthens the
//! workload (default 20 s, for CI). `scripts/convergence.sh` runs the longer form over seeds.

#[path = "support/convergence.rs"]
mod convergence;
mod support;

use std::time::Duration;

use convergence::{node_toml, seed, workload_secs, NodeSpec, Options};
use support::{within, CajeConfig, NodeDir, Origin};

#[tokio::test]
async fn three_nodes_converge_under_purges_and_restarts() {
    let secs = workload_secs(20);
    within(secs + 120, async {
        let origin = Origin::start();
        let first = NodeDir::new();
        let db = first.db();
        let specs = (0..3)
            .map(|i| NodeSpec {
                dir: if i == 0 {
                    first.clone()
                } else {
                    NodeDir::new()
                },
                cfg: CajeConfig {
                    db: Some(db.clone()),
                    ..CajeConfig::for_origin(&origin.base(), &node_toml(""))
                },
                name: format!("local manifest, node {i}"),
            })
            .collect();
        let opts = Options {
            seed: seed(),
            secs,
            grace: Duration::from_secs(2),
            quiet: Duration::from_secs(4),
            request_limit: Duration::from_secs(15),
            label: "convergence",
        };
        let report = convergence::run(&origin, specs, &opts).await;
        println!("convergence: done in {:.1} s", report.took.as_secs_f64());
    })
    .await;
}
