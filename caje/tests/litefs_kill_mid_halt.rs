//! A caje node on a LiteFS replica killed with -9 while it takes HALT, on the real cluster of
//! `../shared/litefs` (n1 primary, n2 replica): the primary must not stay halted, and the
//! replica must keep replicating.
//!
//! What LiteFS v0.5.14 does when the process asking for HALT dies during the acquisition (see
//! litefs-rs's `broker.rs`): the primary stays halted until it expires the halt, 30-35 s
//! later (every write there waits 10 s and fails with `SQLITE_PROTOCOL`), and the replica's
//! replication can deadlock for good. And when it dies in the middle of a COMMIT under HALT
//! (the remote commit is cut short), the replica's LiteFS exits (`fatal error occurred while
//! committing WAL`). caje writes its flushes (HALT, COMMIT, release) through a helper process
//! that a kill -9 of caje does not interrupt, so neither may happen here. Run with
//! `CAJE_HALT_HELPER=off` in the nodes' environment (`HALT_HELPER=off` for this test) to see
//! the failures it prevents.
//!
//! Needs `LITEFS_BIN`, root, `/dev/fuse` and `fusermount3`; without them it prints
//! `SKIP real-litefs: <why>` and passes.
#![cfg(target_os = "linux")]

#[path = "support/litefs.rs"]
mod litefs;
mod support;

use std::time::{Duration, Instant};

use litefs::Litefs;
use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

const DB: &str = "caje.db";

/// Many small flushes, so a kill at a random moment often lands in a HALT acquisition.
const CONFIG: &str =
    "[manifest]\nlitefs = \"auto\"\nflush_interval_ms = 1\nhalt_timeout_ms = 1000\n\
                      purge_wait_ms = 2000\n[populate]\nenabled = false\n";

/// Kills of the replica's node, each in the middle of a burst of fills (each fill one flush
/// under HALT).
const KILLS: usize = 12;

/// What n2's LiteFS logs before it exits when a COMMIT under HALT was cut short.
const COMMIT_CUT: &str = "fatal error occurred while committing WAL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_node_during_its_halts_leaves_the_primary_writable() {
    let litefs = match Litefs::start() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP real-litefs: {why}");
            return;
        }
    };
    within(90, async {
        let origin = Origin::start();
        let cfg = |db| CajeConfig {
            db: Some(db),
            ..CajeConfig::for_origin(&origin.base(), CONFIG)
        };
        let mut b_cfg = cfg(litefs.db("n2", DB));
        if std::env::var("HALT_HELPER").as_deref() == Ok("off") {
            b_cfg.env.push(("CAJE_HALT_HELPER".into(), "off".into()));
        }
        let a = Caje::start_in(NodeDir::new(), cfg(litefs.db("n1", DB)));
        let replicated = litefs.db("n2", DB);
        eventually(15, "the manifest replicated to n2", || {
            let exists = replicated.exists();
            async move { exists }
        })
        .await;
        let b_dir = NodeDir::new();
        let mut slowest = Duration::ZERO;
        for round in 0..KILLS {
            let b = Caje::start_in(b_dir.clone(), b_cfg.clone());
            // A burst of distinct misses on B: each stored page is a manifest row written
            // under HALT. Kill B while they are being written.
            let mut burst = tokio::task::JoinSet::new();
            for i in 0..40 {
                let url = b.url(&gen(&format!("k{round}-{i}"), "cc=max-age%3D600"));
                burst.spawn(async move {
                    support::http::try_request("GET", &url, &[("host", SITE_HOST)], b"").await
                });
            }
            tokio::time::sleep(Duration::from_millis(60 + 23 * round as u64 % 120)).await;
            // SAFETY: a plain syscall on our own, not yet reaped, child.
            unsafe { libc::kill(b.pid(), libc::SIGKILL) };
            let mut b = b;
            b.wait_exit(Duration::from_secs(10));
            drop(b);
            burst.abort_all();

            // The primary's node writes at once: a purge answered 200 (not queued), in well
            // under LiteFS's 10 s wait.
            let began = Instant::now();
            let r = a
                .admin("POST", &format!("/_caje/purge?tag=round{round}"))
                .await;
            let took = began.elapsed();
            let n2_log = litefs.log("n2");
            assert!(
                !n2_log.contains(COMMIT_CUT),
                "round {round}: the kill -9 of the replica's node cut a COMMIT short and n2's \
                 LiteFS exited; its log:\n{n2_log}"
            );
            slowest = slowest.max(took);
            assert_eq!(
                r.status,
                200,
                "round {round}: a purge on the primary's node after a kill -9 of the replica's \
                 node mid-HALT: {} in {took:?} (the primary is halted: LiteFS could not release \
                 the dead process's HALT)",
                r.text()
            );
        }
        // The replica still replicates: a node started on n2 sees the last purge.
        let last = a.admin("GET", "/_caje/status").await.json()["recent_purges"][0]["id"]
            .as_i64()
            .unwrap();
        let b = Caje::start_in(b_dir.clone(), b_cfg.clone());
        eventually(15, "n2 replicated the primary's last purge", || async {
            b.admin("GET", "/_caje/status").await.json()["recent_purges"][0]["id"].as_i64()
                == Some(last)
        })
        .await;
        assert!(!litefs.log("n2").contains(COMMIT_CUT), "n2's LiteFS exited");
        println!(
            "kill-mid-halt: {KILLS} kill -9 of the replica's node during its flushes; the \
             primary's slowest purge afterwards {} ms; n2's LiteFS never exited",
            slowest.as_millis()
        );
        drop(b);
        drop(a);
    })
    .await;
    drop(litefs);
}
