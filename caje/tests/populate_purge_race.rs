//! Edge warming and purges that arrive while it works (issue 12, convergence seed 18): a page
//! purged on this node after populate listed it is not fetched, and a fetch whose copy a
//! purge dropped at its commit is not retried. Before the fix, populate counted the dropped
//! copy as a failed fetch and retried it: the origin served a purged page, that nothing lists
//! any more, three times with no client asking.
//!
//! The node is built with the library (`App::start`), so the test can apply a purge between
//! the listing and the fetch; the origin is a real slow_server.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use caje::app::App;
use caje::config::Config;
use caje::fill::{fill_page, FillResult};
use caje::manifest::{PageRow, Purge};
use support::{eventually, within, Origin, SITE_HOST};

/// A node in front of `origin`, its cache and manifest in `dir`.
async fn node(origin: &Origin, dir: &Path) -> Arc<App> {
    let toml = format!(
        "[[origins]]\nhost = \"*\"\nurl = {:?}\n[populate]\nrate_per_origin = 0\n",
        origin.base()
    );
    let mut config = Config::from_toml(&toml, Path::new("caje.toml")).expect("config");
    config.cache_dir = dir.join("cache");
    config.db = dir.join("manifest.db");
    config.validate().expect("valid config");
    App::start(config).await.expect("node starts")
}

/// Another node's purge of `tag`, as this node's populate task applies it: recorded in the
/// manifest, then applied here from its tombstone.
async fn purge_elsewhere(app: &App, tag: &str) {
    app.manifest
        .purge(Purge::Tag(tag.into()), false, 600)
        .await
        .expect("purge recorded");
    let done = app
        .tombstones
        .catch_up(&app.store, &app.manifest)
        .await
        .expect("tombstones applied");
    assert_eq!(done.applied, 1);
}

/// The manifest row another node would have written for `path` (a site page tagged `tag`).
fn row(path: &str, tag: &str) -> PageRow {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    PageRow {
        host: SITE_HOST.into(),
        method: "GET".into(),
        path: path.into(),
        vary: Vec::new(),
        status: 200,
        stored_at: now,
        expires_at: now + 300,
        size: 2048,
        etag: None,
        last_modified: None,
        tags: vec![tag.into()],
        node: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_purged_after_the_listing_is_not_fetched() {
    within(60, async {
        let origin = Origin::start();
        let dir = tempfile::tempdir().unwrap();
        let app = node(&origin, dir.path()).await;
        let path = "/gen/listed?cc=max-age%3D300&bytes=2048&header=Surrogate-Key:news";
        let tags = ["news".to_owned()];
        let listed_at = app.store.purge_epoch();
        purge_elsewhere(&app, "news").await;
        let got = fill_page(
            &app,
            SITE_HOST,
            path,
            http::HeaderMap::new(),
            None,
            listed_at,
            &tags,
        )
        .await;
        assert_eq!(got, FillResult::Purged);
        assert_eq!(origin.requests("/gen/listed").await, 0, "fetched anyway");
        // Listed after the purge: fetched and stored.
        let got = fill_page(
            &app,
            SITE_HOST,
            path,
            http::HeaderMap::new(),
            None,
            app.store.purge_epoch(),
            &tags,
        )
        .await;
        assert_eq!(got, FillResult::Stored);
        assert_eq!(origin.requests("/gen/listed").await, 1);
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_a_purge_drops_is_not_retried() {
    within(60, async {
        let origin = Origin::start();
        let dir = tempfile::tempdir().unwrap();
        let app = node(&origin, dir.path()).await;
        // 8 chunks 150 ms apart: the body takes over a second, long enough to purge during it.
        let path = "/gen/racing?cc=max-age%3D300&bytes=2048&chunk_bytes=256&stream_delay_ms=150\
                    &header=Surrogate-Key:sport";
        app.manifest
            .upsert(row(path, "sport"))
            .await
            .expect("row written");
        let pass = tokio::spawn({
            let app = app.clone();
            async move { caje::populate::pass(&app, &|_, _| {}).await }
        });
        eventually(10, "populate's fetch reaches the origin", || async {
            origin.requests("/gen/racing").await == 1
        })
        .await;
        purge_elsewhere(&app, "sport").await;
        let report = pass.await.expect("the pass ends");
        assert_eq!(
            (report.candidates, report.fetched, report.failed),
            (1, 0, 0),
            "{report:?}"
        );
        assert_eq!(report.skipped, 1, "{report:?}");
        // The retries of the old code came 400 ms and 1.2 s after the first failure, before the
        // pass ended; wait a little more all the same.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            origin.requests("/gen/racing").await,
            1,
            "a purged page was fetched again"
        );
        assert!(!app.store.holds(
            &caje::cache::key::CacheKey {
                host: SITE_HOST.into(),
                path: path.into()
            },
            &caje::cache::key::Variant::default()
        ));
    })
    .await
}
