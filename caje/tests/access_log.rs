//! `log.access = PATH`: one JSON line per request with the cache outcome and the origin's
//! address when it was asked; SIGHUP reopens the file after logrotate moved it.

mod support;

use std::path::Path;

use serde_json::Value;
use support::{eventually, gen, within, Caje, CajeConfig, NodeDir, Origin};

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

#[tokio::test]
async fn one_json_line_per_request_and_reopen_on_sighup() {
    within(60, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let log = dir.root().join("access.log");
        let extra = format!("[log]\naccess = {:?}\n", log.display().to_string());
        let caje = Caje::start_in(dir.clone(), CajeConfig::for_origin(&origin.base(), &extra));
        let path = gen("log", "cc=max-age%3D60&bytes=1500");

        caje.get(&path)
            .await
            .cache_status()
            .assert_fwd("uri-miss", 200, true);
        caje.settle(&path).await;
        caje.get(&path).await.cache_status().assert_hit();
        eventually(10, "three lines (miss, list, hit)", || {
            let n = lines(&log).len();
            async move { n >= 3 }
        })
        .await;
        let all = lines(&log);
        let miss = &all[0];
        assert_eq!(miss["method"], "GET");
        assert_eq!(miss["path"], path);
        assert_eq!(miss["host"], caje.addr().to_string());
        assert_eq!(miss["status"], 200);
        assert_eq!(miss["bytes"], 1500);
        assert_eq!(miss["cache"], "miss");
        assert_eq!(
            miss["cache_status"],
            "caje; fwd=uri-miss; fwd-status=200; stored"
        );
        assert_eq!(miss["origin_addr"], origin.addr().to_string(), "{miss}");
        assert!(miss["origin_ms"].as_f64().unwrap() > 0.0, "{miss}");
        assert!(miss["duration_ms"].as_f64().unwrap() >= miss["origin_ms"].as_f64().unwrap());
        assert!(miss["client"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(miss["time"].as_str().unwrap().ends_with('Z'), "{miss}");
        let hit = all.last().unwrap();
        assert_eq!(hit["cache"], "hit", "{hit}");
        assert_eq!(hit["bytes"], 1500);
        assert!(
            hit["origin_addr"].is_null() && hit["origin_ms"].is_null(),
            "{hit}"
        );
        assert!(
            all.iter().any(|l| l["cache"] == "admin"),
            "the settle's /_caje/list: {all:?}"
        );

        // logrotate: move the file, then SIGHUP; new lines go to a new file at the old path.
        let rotated = dir.root().join("access.log.1");
        std::fs::rename(&log, &rotated).unwrap();
        // SAFETY: a signal to our own child process.
        unsafe { libc::kill(caje.pid(), libc::SIGHUP) };
        eventually(10, "a new access.log after SIGHUP", || {
            let caje = &caje;
            let path = path.clone();
            let log = log.clone();
            async move {
                caje.get(&path).await.cache_status().assert_hit();
                !lines(&log).is_empty()
            }
        })
        .await;
        assert!(lines(&rotated).len() >= all.len());
        assert_eq!(lines(&log)[0]["cache"], "hit");
        assert!(caje.stderr().contains("reopening the access log"));
        let stats = caje.stats().await;
        assert_eq!(stats["live"]["access_log"]["dropped"], 0, "{stats}");
    })
    .await;
}

#[tokio::test]
async fn an_unwritable_access_log_stops_caje_at_start() {
    within(30, async {
        let origin = Origin::start();
        let dir = NodeDir::new();
        let bad = dir.root().join("no-such-dir").join("access.log");
        let cfg = CajeConfig::for_origin(
            &origin.base(),
            &format!("[log]\naccess = {:?}\n", bad.display().to_string()),
        );
        std::fs::write(dir.config_path(), cfg.toml()).unwrap();
        let out = std::process::Command::new(support::caje_bin())
            .arg("--config")
            .arg(dir.config_path())
            .args(["--listen", "127.0.0.1:0", "--cache-dir"])
            .arg(dir.cache_dir())
            .arg("--db")
            .arg(dir.db())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("cannot open the access log"), "{err}");
    })
    .await;
}
