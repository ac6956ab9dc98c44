//! `caje populate` does one edge-warming pass for a cache directory and exits: a node started
//! on that directory afterwards answers the pages from disk.

mod support;

use std::process::Command;

use support::{caje_bin, gen, within, Caje, CajeConfig, NodeDir, Origin};

#[tokio::test]
async fn populate_subcommand_warms_a_cache_dir_and_exits() {
    within(60, async {
        let origin = Origin::start();
        let first = NodeDir::new();
        let db = first.db();
        let extra = "[populate]\nenabled = false\n[manifest]\nflush_interval_ms = 10\n";
        let a = Caje::start_in(first, CajeConfig::for_origin(&origin.base(), extra));
        for i in 0..3 {
            a.get_site(&gen(&format!("cli{i}"), "cc=max-age%3D300&bytes=3000"))
                .await;
        }
        a.settle_listed("/gen/cli2").await;

        // A second node's directory, warmed by the CLI while no caje runs on it.
        let second = NodeDir::new();
        let cfg = CajeConfig {
            db: Some(db.clone()),
            ..CajeConfig::for_origin(&origin.base(), extra)
        };
        std::fs::write(second.config_path(), cfg.toml()).unwrap();
        let out = tokio::task::spawn_blocking({
            let second = second.clone();
            move || {
                Command::new(caje_bin())
                    .arg("populate")
                    .arg("--config")
                    .arg(second.config_path())
                    .arg("--cache-dir")
                    .arg(second.cache_dir())
                    .arg("--db")
                    .arg(&db)
                    .current_dir(second.cwd())
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "exit {}: {stdout}\n{stderr}",
            out.status
        );
        assert!(stdout.contains("3 fetched"), "{stdout}");
        assert!(stderr.contains("populate ["), "no progress bar: {stderr}");
        assert_eq!(origin.requests("/gen/cli0").await, 2);

        let b = Caje::start_in(second, cfg);
        for i in 0..3 {
            b.get_site(&gen(&format!("cli{i}"), "cc=max-age%3D300&bytes=3000"))
                .await
                .cache_status()
                .assert_hit();
        }
        assert_eq!(origin.requests("/gen/cli0").await, 2);
    })
    .await
}
