//! The convergence workload of `convergence.rs` on a real two-node LiteFS cluster: caje node 0
//! on n1's mount (the primary, which writes directly), nodes 1 and 2 on n2's mount (a replica:
//! both write under HALT, and contend for it), all `[manifest] litefs = "auto"`, in front of
//! one slow_server origin. Same workload (reads, bump + purge by URL or tag, kill -9 and SIGTERM
//! restarts, purges while a node is down), same checks (`support/convergence.rs`), with more
//! time for a purge to propagate (replication).
//!
//! Needs `LITEFS_BIN`, root, `/dev/fuse` and `fusermount3` (see `support/litefs.rs`); without
//! them it prints `SKIP real-litefs: <why>` and passes. It prints its seed;
//! `CONVERGENCE_SEED=<n>` replays one, `CONVERGENCE_SECS=<n>` lengthens the workload (default
//! 20 s). `scripts/convergence.sh --litefs` runs the longer form over seeds.
#![cfg(target_os = "linux")]

#[path = "support/convergence.rs"]
mod convergence;
#[path = "support/litefs.rs"]
mod litefs;
mod support;

use std::time::Duration;

use convergence::{node_toml, seed, workload_secs, NodeSpec, Options};
use litefs::Litefs;
use support::{eventually, within, Caje, CajeConfig, NodeDir, Origin};

/// The manifest's file name on both mounts.
const DB: &str = "caje.db";

// In the default run since the manifest's writes moved into the writer helper: before, LiteFS
// exited when a replica's node was kill -9'd in the middle of a COMMIT (`fatal error occurred
// while committing WAL ... context canceled`), and this workload kill -9s the nodes 25-50 times
// a run (docs/cluster.md, "Convergence test"). About 35 s with the cluster's start and stop.
#[tokio::test]
async fn nodes_on_real_litefs_converge_under_purges_and_restarts() {
    let litefs = match Litefs::start() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP real-litefs: {why}");
            return;
        }
    };
    let secs = workload_secs(20);
    within(secs + 60, async {
        let origin = Origin::start();
        // A HALT wait bounded well below the 10 s LiteFS allows, as in real_litefs_cluster.rs.
        let toml = node_toml("litefs = \"auto\"\nhalt_timeout_ms = 1000");
        let cfg = |node: &str| CajeConfig {
            db: Some(litefs.db(node, DB)),
            ..CajeConfig::for_origin(&origin.base(), &toml)
        };
        let dirs: Vec<_> = (0..3).map(|_| NodeDir::new()).collect();
        // The manifest is created on the primary, and a replica may only open it once it has
        // replicated (HALT needs the database to exist there).
        let mut first = Caje::start_in(dirs[0].clone(), cfg("n1"));
        let replicated = litefs.db("n2", DB);
        eventually(15, "the manifest replicated to n2", || {
            let exists = replicated.exists();
            async move { exists }
        })
        .await;
        assert_eq!(first.stop().code(), Some(0), "{}", first.stderr());
        drop(first);
        let specs = [
            ("n1", "n1 (primary)"),
            ("n2", "n2 (replica)"),
            ("n2", "n2 (replica)"),
        ]
        .into_iter()
        .zip(dirs)
        .map(|((node, name), dir)| NodeSpec {
            dir,
            cfg: cfg(node),
            name: name.into(),
        })
        .collect();
        let opts = Options {
            seed: seed(),
            secs,
            grace: Duration::from_secs(3),
            quiet: Duration::from_secs(5),
            // As in the local test: a node that does not answer within 15 s is a failure.
            request_limit: Duration::from_secs(15),
            label: "convergence-litefs",
        };
        let report = convergence::run(&origin, specs, &opts).await;
        println!(
            "convergence-litefs: done in {:.1} s (cluster start and stop not included); \
             roles and HALTs of the last processes: {:?}",
            report.took.as_secs_f64(),
            report.roles
        );
        let roles: Vec<&str> = report.roles.iter().map(|(r, _)| r.as_str()).collect();
        assert_eq!(
            roles,
            ["primary", "replica", "replica"],
            "{:?}",
            report.roles
        );
    })
    .await;
    // The caje nodes are stopped (run stops them, and a panic drops them first): unmount.
    drop(litefs);
}
