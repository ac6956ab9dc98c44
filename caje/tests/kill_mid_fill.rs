//! Kill -9 a node while it writes fills (small bodies written whole with their header, large
//! ones streamed in batches; nothing is fsynced): after a restart no temp file is left, no
//! entry is found corrupt, and every page it serves, hit or miss, is whole and right.

mod support;

use std::time::Duration;

use support::{
    assert_same_body, eventually, files_with_suffix, gen, get, within, Caje, CajeConfig, NodeDir,
    Origin, SITE_HOST,
};

#[tokio::test]
async fn kill_9_during_fills_serves_no_torn_body_and_leaves_no_temp_files() {
    within(120, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        // The memory tier off: every hit after the restart reads its file.
        let cfg = CajeConfig::for_origin(
            &origin.base(),
            "[populate]\nenabled = false\n[cache]\nmemory_bytes = 0\n",
        );
        let node = Caje::start_in(dir.clone(), cfg.clone());
        // Small pages (one write), and large ones the origin sends slowly in 16 KiB chunks,
        // so that some are half written when the kill comes.
        let paths: Vec<String> = (0..240)
            .map(|i| match i % 3 {
                0 => gen(&format!("s{i}"), "cc=max-age%3D600&bytes=1000"),
                1 => gen(
                    &format!("m{i}"),
                    "cc=max-age%3D600&bytes=70000&chunk_bytes=16384&stream_delay_ms=10",
                ),
                _ => gen(
                    &format!("l{i}"),
                    "cc=max-age%3D600&bytes=600000&chunk_bytes=16384&stream_delay_ms=20",
                ),
            })
            .collect();
        let base = node.url("");
        let load_paths = paths.clone();
        let load = tokio::spawn(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for p in load_paths {
                let url = format!("{}{p}", base.trim_end_matches('/'));
                tasks.spawn(async move {
                    support::http::try_request("GET", &url, &[("host", SITE_HOST)], b"").await
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            while tasks.join_next().await.is_some() {}
        });
        let cache = dir.cache_dir();
        eventually(
            30,
            "fills committed and streamed fills being written",
            || async {
                node.stat("stored").await >= 20 && !files_with_suffix(&cache, ".tmp").is_empty()
            },
        )
        .await;
        unsafe {
            libc::kill(node.pid(), libc::SIGKILL);
        }
        load.abort();
        let _ = load.await;
        let left = files_with_suffix(&cache, ".tmp").len();
        assert!(left > 0, "the kill should have cut streamed fills short");
        drop(node);

        let node = Caje::start_in(dir.clone(), cfg);
        assert_eq!(
            files_with_suffix(&cache, ".tmp"),
            Vec::<std::path::PathBuf>::new(),
            "temp files of the killed fills are left after the restart ({left} before)"
        );
        let entries = node.stat("entries").await;
        assert!(entries >= 20, "only {entries} entries survived");
        // All at once: the large pages take the slow origin most of a second each.
        let mut checks = tokio::task::JoinSet::new();
        for p in paths {
            let (url, origin_url) = (node.url(&p), origin.url(&p));
            checks.spawn(async move {
                let r = get(&url, &[("Host", SITE_HOST)]).await;
                assert_eq!(r.status, 200, "{p}");
                let want = get(&origin_url, &[]).await.body;
                assert_same_body(&r.body, &want, &p);
                u64::from(r.cache_status().is_hit())
            });
        }
        let mut hits = 0;
        while let Some(hit) = checks.join_next().await {
            hits += hit.expect("a check panicked");
        }
        assert_eq!(hits, entries, "every entry on disk is served as a hit");
        assert_eq!(node.stat("corrupt_entries").await, 0);
    })
    .await
}
