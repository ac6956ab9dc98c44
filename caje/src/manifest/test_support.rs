//! Helpers shared by the manifest's unit tests.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::schema::BUSY_TIMEOUT;
use super::{
    LitefsMode, Manifest, ManifestOptions, ManifestStats, PageRow, Tombstone, TombstoneKind,
};

/// Every async test runs under this bound so a deadlock fails instead of hanging CI.
pub(super) async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .expect("test exceeded its time bound")
}

pub(super) fn page(host: &str, path: &str) -> PageRow {
    PageRow {
        host: host.to_owned(),
        method: "GET".to_owned(),
        path: path.to_owned(),
        vary: Vec::new(),
        status: 200,
        stored_at: 1_700_000_000,
        expires_at: 1_700_000_060,
        size: 1234,
        etag: Some("\"abc\"".to_owned()),
        last_modified: None,
        tags: Vec::new(),
        node: String::new(),
    }
}

pub(super) fn vary(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// A second, plain connection: plays "another process" looking at the file.
pub(super) fn observer(path: &Path) -> Connection {
    let conn = Connection::open(path).unwrap();
    conn.busy_timeout(BUSY_TIMEOUT).unwrap();
    conn
}

pub(super) fn data_version_of(conn: &Connection) -> i64 {
    conn.pragma_query_value(None, "data_version", |r| r.get(0))
        .unwrap()
}

pub(super) fn tagged(host: &str, path: &str, tags: &[&str]) -> PageRow {
    PageRow {
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..page(host, path)
    }
}

pub(super) fn paths(rows: &[PageRow]) -> Vec<&str> {
    rows.iter().map(|r| r.path.as_str()).collect()
}

pub(super) fn tombstone(kind: TombstoneKind, created_at: i64, expires_at: i64) -> Tombstone {
    Tombstone {
        kind,
        soft: false,
        created_at,
        expires_at,
    }
}

/// A plain directory whose `.primary` names another node: in `litefs = "on"` mode, a
/// simulated replica.
pub(super) fn replica_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".primary"), "other-node\n").unwrap();
    dir
}

/// Short timings, so that failing flushes are retried within a test's time.
pub(super) fn quick(litefs: LitefsMode) -> ManifestOptions {
    ManifestOptions {
        litefs,
        flush_interval: Duration::from_millis(10),
        halt_timeout: Duration::from_millis(200),
        retry_max_backoff: Duration::from_millis(200),
        // A test that wants opening to fail on a held HALT gets its answer quickly.
        open_timeout: Duration::from_millis(300),
        ..ManifestOptions::default()
    }
}

pub(super) fn side_file(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Polls the stats until `done` holds (the caller's `bounded` stops a test that never gets
/// there).
pub(super) async fn stats_until(
    m: &Manifest,
    done: impl Fn(&ManifestStats) -> bool,
) -> ManifestStats {
    loop {
        let stats = m.stats().await.unwrap();
        if done(&stats) {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
