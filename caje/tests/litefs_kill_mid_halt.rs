//! A caje node on a LiteFS replica killed with -9 while it takes HALT, on the real cluster of
//! `../shared/litefs` (n1 primary, n2 replica): the primary must not stay halted, and the
//! replica must keep replicating.
//!
//! What LiteFS v0.5.14 does when the process asking for HALT dies during the acquisition (see
//! litefs-rs's `broker.rs`): the primary stays halted until it expires the halt, 30-35 s
//! later (every write there waits 10 s and fails with `SQLITE_PROTOCOL`), and the replica's
//! replication can deadlock for good. caje takes its flushes' HALTs through a helper process
//! that a kill -9 of caje does not interrupt. Run with `CAJE_HALT_HELPER=off` in the nodes'
//! environment (`HALT_HELPER=off` for this test) to see the failure it prevents.
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

/// Conclusive kills (landed outside a COMMIT) the test needs at least, when kills that landed
/// in a COMMIT used up its time.
const MIN_CONCLUSIVE: usize = 4;

/// No new round starts after this much of the test's time: a round whose kill lands in a
/// COMMIT costs a LiteFS restart and the primary's 30-35 s halt expiry.
const ROUNDS_BUDGET: Duration = Duration::from_secs(80);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_node_during_its_halts_leaves_the_primary_writable() {
    let litefs = match Litefs::start() {
        Ok(l) => l,
        Err(why) => {
            eprintln!("SKIP real-litefs: {why}");
            return;
        }
    };
    within(170, async {
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
        // Rounds whose kill landed in a COMMIT instead: LiteFS exits then (`fatal error
        // occurred while committing WAL`), a behaviour caje cannot prevent (docs/cluster.md,
        // "A node killed during a HALT"). Such a round proves nothing about HALT; it is
        // counted, reported, n2 is restarted, and the test waits for the primary to be
        // writable again (LiteFS expires the dead node's halt) before the next round.
        let mut commit_kills = 0;
        let mut round = 0;
        let mut conclusive = 0;
        let began_rounds = Instant::now();
        while conclusive < KILLS {
            if began_rounds.elapsed() > ROUNDS_BUDGET {
                assert!(
                    conclusive >= MIN_CONCLUSIVE,
                    "{commit_kills} of {round} kills landed in a COMMIT and stopped n2's \
                     LiteFS: only {conclusive} rounds tested HALT in {ROUNDS_BUDGET:?}"
                );
                break;
            }
            let fatal_before = litefs.log("n2").matches("fatal error occurred while committing WAL").count();
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
            let fatal = litefs.log("n2").matches("fatal error occurred while committing WAL").count();
            if fatal > fatal_before {
                commit_kills += 1;
                println!("kill-mid-halt: round {round}: the kill landed in a COMMIT; n2's LiteFS exited (restarting it)");
                litefs.node("stop-node", "n2");
                litefs.node("start-node", "n2");
                eventually(45, "the primary writable again after n2's LiteFS exited", || async {
                    a.admin("POST", "/_caje/purge?tag=probe").await.status == 200
                })
                .await;
                round += 1;
                continue;
            }
            slowest = slowest.max(took);
            assert_eq!(
                r.status,
                200,
                "round {round}: a purge on the primary's node after a kill -9 of the replica's \
                 node mid-HALT: {} in {took:?} (the primary is halted: LiteFS could not release \
                 the dead process's HALT)",
                r.text()
            );
            conclusive += 1;
            round += 1;
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
        println!(
            "kill-mid-halt: {conclusive} kill -9 of the replica's node during its flushes; the \
             primary's slowest purge afterwards {} ms; {commit_kills} more kills landed in a \
             COMMIT and stopped n2's LiteFS",
            slowest.as_millis()
        );
        drop(b);
        drop(a);
    })
    .await;
    drop(litefs);
}
