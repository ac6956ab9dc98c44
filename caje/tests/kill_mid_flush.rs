//! Kill -9 a node while it is flushing batches of manifest rows: the manifest is not
//! corrupted, and after a restart (which reconciles the disk with the manifest) every page
//! the node holds has its row again.

mod support;

use std::time::Duration;

use support::{eventually, gen, get, within, Caje, CajeConfig, NodeDir, Origin, SITE_HOST};

#[tokio::test]
async fn kill_9_during_flushes_loses_no_rows() {
    within(120, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        // A short flush interval: many small batches, so the kill lands during one.
        let cfg = CajeConfig::for_origin(
            &origin.base(),
            "[populate]\nenabled = false\n[manifest]\nflush_interval_ms = 5\nmax_batch = 16\n",
        );
        let node = Caje::start_in(dir.clone(), cfg.clone());
        let base = node.url("");
        // Keep filling until the kill.
        let load = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..2000 {
                let url = format!("{base}{}", gen(&format!("k{i}"), "cc=max-age%3D600"));
                tasks.spawn(async move {
                    support::http::try_request("GET", &url, &[("host", SITE_HOST)], b"").await
                });
                if i % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            while tasks.join_next().await.is_some() {}
        });
        // Wait until rows are being written, then kill -9 mid-stream.
        eventually(20, "rows being written", || async {
            node.list().await["count"].as_u64().unwrap_or(0) >= 100
        })
        .await;
        unsafe {
            libc::kill(node.pid(), libc::SIGKILL);
        }
        load.abort();
        let _ = load.await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        // The manifest file is intact.
        {
            let conn = rusqlite::Connection::open(dir.db()).expect("open manifest");
            let check: String = conn
                .query_row("PRAGMA integrity_check", [], |r| r.get(0))
                .expect("integrity_check");
            assert_eq!(check, "ok");
        }

        // Restart on the same dirs: every entry on disk gets (or keeps) its row.
        drop(node);
        let node = Caje::start_in(dir.clone(), cfg);
        let entries = node.stat("entries").await;
        assert!(entries >= 100, "only {entries} entries survived on disk");
        eventually(20, "every on-disk entry listed", || async {
            let list = node.list().await;
            let on_disk = list["entries"]
                .as_array()
                .map(|a| a.iter().filter(|e| e["on_disk"] == true).count() as u64)
                .unwrap_or(0);
            on_disk == entries
        })
        .await;
        // And those entries are served as hits.
        let list = node.list().await;
        let first = list["entries"][0]["path"].as_str().unwrap().to_owned();
        let r = get(&node.url(&first), &[("host", SITE_HOST)]).await;
        r.cache_status().assert_hit();
    })
    .await
}
