//! caje on a plain directory treated as a LiteFS mount (`[manifest] litefs = "on"`): with a
//! `.primary` naming another node it is a replica and writes the manifest only under the HALT
//! lock (a real OFD lock on `<db>-lock`, byte 72, observed here with F_OFD_GETLK); when
//! `.primary` disappears it becomes the primary and writes directly.

mod support;

use std::fs::OpenOptions;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use litefs::ofd::{self, LockKind, LockRange};
use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin};

fn config(origin: &Origin) -> CajeConfig {
    CajeConfig::for_origin(
        &origin.base(),
        "[populate]\nenabled = false\n[manifest]\nlitefs = \"on\"\nflush_interval_ms = 20\nhalt_timeout_ms = 300\n",
    )
}

fn lock_path(dir: &NodeDir) -> std::path::PathBuf {
    let mut p = dir.db().into_os_string();
    p.push("-lock");
    p.into()
}

#[tokio::test]
async fn replica_writes_under_halt_and_primary_writes_directly() {
    within(90, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        std::fs::write(dir.root().join(".primary"), "other-node\n").unwrap();
        let node = Caje::start_in(dir.clone(), config(&origin));
        let status = node.admin("GET", "/_caje/status").await.json();
        assert_eq!(status["role"], "replica", "{status}");
        assert_eq!(status["primary"], "other-node", "{status}");

        // 1. Catch caje holding the HALT byte while it flushes: fill pages in the background
        //    and poll F_OFD_GETLK from our own open file description.
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .open(lock_path(&dir))
            .expect("caje created the lock file when it opened the manifest");
        let base = node.url("");
        let fill = tokio::spawn(async move {
            for i in 0..400 {
                let url = format!("{base}{}", gen(&format!("h{i}"), "cc=max-age%3D600"));
                let _ = support::http::try_request("GET", &url, &[], b"").await;
            }
        });
        let seen = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(holder)) = ofd::query(lock.as_fd(), LockKind::Write, LockRange::HALT)
                {
                    return Some(holder);
                }
            }
            None
        })
        .await
        .unwrap();
        fill.abort();
        let holder = seen.expect("caje never held the HALT lock during 20 s of flushes");
        assert_eq!(holder.kind(), LockKind::Write);
        assert_eq!(holder.pid(), -1, "an OFD lock reports pid -1");
        let status = node.admin("GET", "/_caje/status").await.json();
        assert!(
            status["manifest"]["queue"]["halts"].as_u64().unwrap() >= 1,
            "{status}"
        );
        // Each flush holds its HALT for milliseconds (LiteFS expires one after 30 s).
        let held = status["manifest"]["queue"]["halt_max_held_ms"]
            .as_u64()
            .unwrap();
        assert!(held < 1000, "a flush held HALT {held} ms: {status}");

        // 2. While we hold the HALT byte, the replica cannot write: rows stay queued.
        let ours = OpenOptions::new()
            .read(true)
            .write(true)
            .open(lock_path(&dir))
            .unwrap();
        ofd::try_lock(ours.as_fd(), LockKind::Write, LockRange::HALT).expect("take HALT");
        node.get(&gen("blocked", "cc=max-age%3D600")).await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert!(
            node.list_entries("/gen/blocked").await.is_empty(),
            "written without HALT"
        );
        let status = node.admin("GET", "/_caje/status").await.json();
        assert!(
            status["manifest"]["queue"]["failed_flushes"]
                .as_u64()
                .unwrap()
                >= 1,
            "{status}"
        );
        assert!(
            status["manifest"]["queue"]["pending"].as_u64().unwrap() >= 1,
            "{status}"
        );
        // Released: the queued row lands.
        ofd::unlock(ours.as_fd(), LockRange::HALT).unwrap();
        node.settle_listed("/gen/blocked").await;

        // 3. `.primary` disappears: caje is the primary now and writes without HALT, even
        //    while we hold the byte.
        std::fs::remove_file(dir.root().join(".primary")).unwrap();
        eventually(10, "role becomes primary", || async {
            node.admin("GET", "/_caje/status").await.json()["role"] == "primary"
        })
        .await;
        ofd::try_lock(ours.as_fd(), LockKind::Write, LockRange::HALT).expect("take HALT");
        node.get(&gen("direct", "cc=max-age%3D600")).await;
        node.settle_listed("/gen/direct").await;
        drop(ours);
    })
    .await
}

/// A purge on a node whose manifest cannot be written (here: another holder keeps the HALT
/// byte; on LiteFS: a HALT left on the primary by a process killed while acquiring it, kept
/// 30-35 s) answers within `manifest.purge_wait_ms`: `202` with `"queued": true`, this node's
/// copy already dropped. The rows and the tombstone land once HALT can be had again.
#[tokio::test]
async fn a_purge_answers_in_bounded_time_when_the_manifest_cannot_be_written() {
    within(90, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        std::fs::write(dir.root().join(".primary"), "other-node\n").unwrap();
        let node = Caje::start_in(
            dir.clone(),
            CajeConfig::for_origin(
                &origin.base(),
                "[populate]\nenabled = false\n[manifest]\nlitefs = \"on\"\nflush_interval_ms = 20\n\
                 halt_timeout_ms = 300\npurge_wait_ms = 500\n",
            ),
        );
        let page = gen("held", "cc=max-age%3D600");
        assert_eq!(node.get(&page).await.status, 200);
        node.settle_listed("/gen/held").await;

        let ours = OpenOptions::new()
            .read(true)
            .write(true)
            .open(lock_path(&dir))
            .unwrap();
        ofd::try_lock(ours.as_fd(), LockKind::Write, LockRange::HALT).expect("take HALT");
        let began = Instant::now();
        let r = node
            .admin("POST", &format!("/_caje/purge?url={}", enc(&page)))
            .await;
        let took = began.elapsed();
        assert_eq!(r.status, 202, "{}", r.text());
        let j = r.json();
        assert_eq!(j["queued"], true, "{j}");
        assert_eq!(j["entries"], 1, "the local copy is dropped at once: {j}");
        assert!(j["tombstone"].is_null(), "{j}");
        assert!(took < Duration::from_secs(3), "the purge took {took:?}");
        // This node no longer serves its copy, though the row is still listed.
        let again = node.get(&page).await;
        let cache_status = again.header("cache-status").unwrap_or_default();
        assert!(cache_status.contains("fwd="), "{cache_status}");

        // HALT is free again: the queued purge lands, with its tombstone.
        drop(ours);
        eventually(15, "the queued purge's tombstone lands", || async {
            let status = node.admin("GET", "/_caje/status").await.json();
            status["recent_purges"]
                .as_array()
                .is_some_and(|p| !p.is_empty())
        })
        .await;
    })
    .await
}

/// Percent-encodes a query parameter value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
