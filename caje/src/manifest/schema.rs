//! Schema and migrations: opening a file, checking that it is a caje manifest, migrating it.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

use super::litefs::{halt_unless_primary, release_halt};
use super::{Database, ManifestError};

/// `PRAGMA application_id` of a caje manifest: the ASCII bytes `caje`.
pub const APPLICATION_ID: i32 = 0x6361_6a65;

/// Schema version this code writes: the number of [`MIGRATIONS`].
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Schema migrations; entry `i` takes `user_version` from `i` to `i + 1`.
///
/// Append only: a released migration is never edited, because files in the field already ran it.
pub const MIGRATIONS: &[&str] = &[
    // 1: the pages table. STRICT so a wrongly typed bind fails instead of being stored as text.
    "CREATE TABLE pages (
        id            INTEGER PRIMARY KEY,
        host          TEXT    NOT NULL,
        method        TEXT    NOT NULL,
        path          TEXT    NOT NULL,
        vary          TEXT    NOT NULL,
        status        INTEGER NOT NULL,
        stored_at     INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        size          INTEGER NOT NULL,
        etag          TEXT,
        last_modified TEXT,
        UNIQUE (host, method, path, vary)
    ) STRICT;
    CREATE INDEX pages_expires_at ON pages (expires_at);",
    // 2: purge tags on pages (canonical form: see the module docs), and purge tombstones.
    // AUTOINCREMENT: a plain rowid is max + 1, so expiring the newest tombstones would hand
    // their ids out again and a node whose cursor is past them would miss the new purges.
    "ALTER TABLE pages ADD COLUMN tags TEXT NOT NULL DEFAULT '';
    CREATE TABLE tombstones (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        kind       TEXT    NOT NULL CHECK (kind IN ('url', 'tag', 'all')),
        host       TEXT    NOT NULL DEFAULT '',
        path       TEXT    NOT NULL DEFAULT '',
        tag        TEXT    NOT NULL DEFAULT '',
        soft       INTEGER NOT NULL DEFAULT 0 CHECK (soft IN (0, 1)),
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL
    ) STRICT;
    CREATE INDEX tombstones_created_at ON tombstones (created_at);",
    // 3: which node stored the page (its `cluster.advertise_url`; '' when unknown), so
    // populate can fetch the page from that node instead of from the origin.
    "ALTER TABLE pages ADD COLUMN node_url TEXT NOT NULL DEFAULT '';",
];

/// Other processes hold the write lock only for one short batch, and a primary's writers wait
/// while a replica holds HALT, so waiting this long for the lock should never time out in
/// practice; SQLITE_BUSY surfacing would mean something is stuck (the flush is then retried).
pub(super) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause before opening a manifest again after a transient failure on a LiteFS mount;
/// it doubles up to [`OPEN_MAX_BACKOFF`].
const OPEN_FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two attempts to open a manifest on a LiteFS mount.
const OPEN_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Opens and configures the connection, checks the file is ours, migrates. Runs on the caller's
/// thread (startup), before the owner thread exists. Returns how long it held HALT, if it took
/// it: in LiteFS mode, off the primary, when the file needs a write (a new file, a migration,
/// WAL).
///
/// Transient failures are retried until `open_timeout` has passed (see
/// [`ManifestError::is_transient_open`]): `SQLITE_BUSY` anywhere, and on a LiteFS mount what a
/// halted primary or a replica that is catching up answers (`SQLITE_CANTOPEN`,
/// `SQLITE_PROTOCOL`, an I/O error, a HALT that cannot be taken). A node started while another
/// process's HALT is stuck on the primary (LiteFS keeps it 30-35 s) then waits for it instead of
/// exiting.
pub(super) fn open_connection(
    path: &Path,
    litefs: Option<&Database>,
    halt_timeout: Duration,
    open_timeout: Duration,
) -> Result<(Connection, Option<Duration>), ManifestError> {
    let started = std::time::Instant::now();
    // SQLITE_BUSY is retried at least as long as before the timeout existed: two processes
    // opening a new file at once both read it, then both need the write lock to switch it to
    // WAL or migrate it, and SQLite answers one of them SQLITE_BUSY at once, without waiting
    // (its busy handler would deadlock there). Opening again is then safe.
    let deadline = started + open_timeout.max(BUSY_TIMEOUT);
    let mut pause = OPEN_FIRST_BACKOFF;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match open_once(path, litefs, halt_timeout) {
            Ok(opened) => {
                if attempts > 1 && litefs.is_some() {
                    tracing::info!(path = %path.display(), attempts, waited = ?started.elapsed(), "manifest opened after transient failures");
                }
                return Ok(opened);
            }
            Err(e) => e,
        };
        let now = std::time::Instant::now();
        if error.is_busy() && now < deadline {
            tracing::debug!(path = %path.display(), "manifest busy while opening, retrying");
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        if !(litefs.is_some() && error.is_transient_open()) || now >= deadline {
            return Err(error);
        }
        let wait = pause.min(deadline - now);
        tracing::warn!(
            path = %path.display(),
            error = %error.with_causes(),
            attempts,
            retry_in = ?wait,
            gives_up_in = ?(deadline - now),
            "manifest cannot be opened yet on this LiteFS mount (a halted primary or a replica catching up); retrying"
        );
        std::thread::sleep(wait);
        pause = (pause * 2).min(OPEN_MAX_BACKOFF);
    }
}

fn open_once(
    path: &Path,
    litefs: Option<&Database>,
    halt_timeout: Duration,
) -> Result<(Connection, Option<Duration>), ManifestError> {
    let open_err = |source| ManifestError::Open {
        path: path.to_owned(),
        source,
    };
    let mut conn = Connection::open(path).map_err(open_err)?;
    // First, so that every statement below waits for other processes' locks.
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_err)?;
    // Before anything that writes (even switching to WAL): a foreign file is left untouched.
    // This is also the first read, where a non-database file fails (SQLITE_NOTADB).
    check_application_id(&conn, path)?;

    // Single statements, no transaction: nothing is held across the HALT acquisition.
    let mode: String = conn
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .map_err(open_err)?;
    let wal = mode.eq_ignore_ascii_case("wal");
    let version = user_version(&conn).map_err(open_err)?;
    let needs_write = !wal || (0..SCHEMA_VERSION).contains(&version);
    let halt = if needs_write {
        halt_unless_primary(litefs, Some(halt_timeout)).map_err(|source| ManifestError::Halt {
            path: path.to_owned(),
            source,
        })?
    } else {
        None
    };
    let configured = configure(&mut conn, path, wal).and_then(|()| {
        if litefs.is_some_and(|db| db.mount().is_fuse_mount()) {
            no_checkpoint_on_close(&conn).map_err(open_err)?;
        }
        Ok(())
    });
    let held = release_halt(halt);
    configured?;
    Ok((conn, held))
}

/// Makes closing `conn` change no file. On a real LiteFS mount a close that finds itself the
/// last connection checkpoints, deletes the WAL and unlinks `-shm`; a process starting on the
/// same mount at that moment, mapping `-shm`, died of SIGBUS (seen on the real cluster when a
/// node was restarted right after a clean stop). The writer's commits checkpoint on their own
/// (SQLite's automatic checkpoint), which keeps the WAL short.
pub(super) fn no_checkpoint_on_close(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .map(|_| ())
}

/// Switches to WAL unless `wal`, sets the connection's pragmas, migrates.
fn configure(conn: &mut Connection, path: &Path, wal: bool) -> Result<(), ManifestError> {
    let open_err = |source| ManifestError::Open {
        path: path.to_owned(),
        source,
    };
    if !wal {
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "wal", |row| row.get(0))
            .map_err(open_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            // E.g. a filesystem without shared memory: still correct, just more lock contention.
            tracing::warn!(path = %path.display(), mode, "manifest is not in WAL mode");
        }
    }
    // NORMAL is durable across process crashes in WAL mode; an OS crash may lose the last
    // commits, which only costs re-recording pages that are still on disk.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_err)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_err)?;
    migrate(conn, path)
}

fn check_application_id(conn: &Connection, path: &Path) -> Result<(), ManifestError> {
    // One statement, so one snapshot: read separately, another process's migration could
    // commit in between and make a new manifest look like an unmarked file with tables.
    let (found, version, objects): (i32, i32, i64) = conn
        .query_row(
            "SELECT (SELECT application_id FROM pragma_application_id),
                    (SELECT user_version FROM pragma_user_version),
                    (SELECT count(*) FROM sqlite_schema)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .map_err(|source| ManifestError::Open {
            path: path.to_owned(),
            source,
        })?;
    // Unmarked is ours to initialise only if empty (a new file). We set the id in the same
    // transaction as the schema, so a manifest is never unmarked but non-empty.
    if found == APPLICATION_ID || (found == 0 && version == 0 && objects == 0) {
        return Ok(());
    }
    Err(ManifestError::NotAManifest {
        path: path.to_owned(),
        found,
    })
}

fn user_version(conn: &Connection) -> rusqlite::Result<i32> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), ManifestError> {
    let too_new = |found| ManifestError::TooNew {
        path: path.to_owned(),
        found,
        supported: SCHEMA_VERSION,
    };
    let found = user_version(conn).map_err(|source| ManifestError::Open {
        path: path.to_owned(),
        source,
    })?;
    if found == SCHEMA_VERSION {
        // The common case takes no write lock.
        return Ok(());
    }
    if !(0..=SCHEMA_VERSION).contains(&found) {
        return Err(too_new(found));
    }
    let migrate_err = |version| {
        move |source| ManifestError::Migrate {
            path: path.to_owned(),
            version,
            source,
        }
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(migrate_err(found + 1))?;
    // Re-read under the write lock: another process may have migrated since.
    let from = user_version(&tx).map_err(migrate_err(found + 1))?;
    // No caje writes a negative version; refuse it like an unknown future one rather than guess.
    if !(0..=SCHEMA_VERSION).contains(&from) {
        return Err(too_new(from));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(from as usize) {
        let version = index as i32 + 1;
        tx.execute_batch(sql).map_err(migrate_err(version))?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_err(version))?;
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(migrate_err(SCHEMA_VERSION))?;
    tx.commit().map_err(migrate_err(SCHEMA_VERSION))?;
    if from < SCHEMA_VERSION {
        tracing::info!(path = %path.display(), from, to = SCHEMA_VERSION, "manifest migrated");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::test_support::*;
    use crate::manifest::*;

    use std::path::Path;

    use rusqlite::Connection;

    #[tokio::test]
    async fn open_creates_schema_and_reopen_keeps_rows() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            assert_eq!(m.count().await.unwrap(), 0);
            assert_eq!(
                m.upsert(page("a.example", "/x")).await.unwrap(),
                Upsert::Inserted
            );

            let raw = observer(&path);
            let version: i32 = raw
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            let app_id: i32 = raw
                .pragma_query_value(None, "application_id", |r| r.get(0))
                .unwrap();
            let mode: String = raw
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(
                (version, app_id, mode.as_str()),
                (SCHEMA_VERSION, APPLICATION_ID, "wal")
            );
            let index: i64 = raw
                .query_row(
                    "SELECT count(*) FROM sqlite_schema WHERE name = 'pages_expires_at'",
                    [],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(index, 1);
            drop(raw);

            // Restart: a new handle on the same file sees the row, and migrations do not rerun.
            drop(m);
            let m = Manifest::open(&path).unwrap();
            assert_eq!(m.list().await.unwrap(), vec![page("a.example", "/x")]);
        })
        .await
    }

    #[test]
    fn file_that_is_not_a_database_is_rejected_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.db");
        let junk = b"this is a cache index, not SQLite\n".repeat(200);
        std::fs::write(&path, &junk).unwrap();
        let err = Manifest::open(&path).unwrap_err();
        match &err {
            ManifestError::Open { path: p, source } => {
                assert_eq!(p, &path);
                assert_eq!(
                    source.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::NotADatabase),
                    "{source}"
                );
            }
            other => panic!("expected Open, got {other:?}"),
        }
        assert!(err.to_string().contains("manifest.db"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), junk);
    }

    #[test]
    fn database_with_another_application_id_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let raw = Connection::open(&path).unwrap();
        raw.pragma_update(None, "application_id", 42).unwrap();
        raw.execute_batch("CREATE TABLE t (x)").unwrap();
        drop(raw);
        let err = Manifest::open(&path).unwrap_err();
        assert!(
            matches!(err, ManifestError::NotAManifest { found: 42, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("not a caje manifest"), "{err}");
    }

    #[test]
    fn unmarked_database_with_tables_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = Manifest::open(&path).unwrap_err();
        assert!(
            matches!(err, ManifestError::NotAManifest { found: 0, .. }),
            "{err:?}"
        );
        let tables: i64 = Connection::open(&path)
            .unwrap()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'pages'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "the foreign file was modified");
    }

    #[test]
    fn newer_schema_version_is_too_new() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.db");
        drop(Manifest::open(&path).unwrap());
        observer(&path)
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = Manifest::open(&path).unwrap_err();
        match err {
            ManifestError::TooNew {
                found, supported, ..
            } => assert_eq!((found, supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION)),
            other => panic!("expected TooNew, got {other:?}"),
        }
    }

    /// Migration 1 exactly as released: the files in the field were made by this text.
    const SCHEMA_V1: &str = "CREATE TABLE pages (
        id            INTEGER PRIMARY KEY,
        host          TEXT    NOT NULL,
        method        TEXT    NOT NULL,
        path          TEXT    NOT NULL,
        vary          TEXT    NOT NULL,
        status        INTEGER NOT NULL,
        stored_at     INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        size          INTEGER NOT NULL,
        etag          TEXT,
        last_modified TEXT,
        UNIQUE (host, method, path, vary)
    ) STRICT;
    CREATE INDEX pages_expires_at ON pages (expires_at);";

    /// A manifest file as the version-1 caje left it, holding `page("a.example", "/old")`.
    fn version_1_file(path: &Path) {
        let raw = Connection::open(path).unwrap();
        raw.pragma_update(None, "journal_mode", "wal").unwrap();
        raw.execute_batch(SCHEMA_V1).unwrap();
        raw.pragma_update(None, "user_version", 1).unwrap();
        raw.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
        raw.execute(
            "INSERT INTO pages
                (host, method, path, vary, status, stored_at, expires_at, size, etag, last_modified)
             VALUES ('a.example', 'GET', '/old', '[]', 200, 1700000000, 1700000060, 1234,
                     '\"abc\"', NULL)",
            [],
        )
        .unwrap();
    }

    #[test]
    fn migration_1_is_unchanged() {
        assert_eq!(
            MIGRATIONS[0], SCHEMA_V1,
            "released migrations are append-only"
        );
    }

    #[tokio::test]
    async fn version_1_file_migrates_and_keeps_its_rows_with_no_tags() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            version_1_file(&path);

            let m = Manifest::open(&path).unwrap();
            assert_eq!(m.list().await.unwrap(), vec![page("a.example", "/old")]);
            let version: i32 = observer(&path)
                .pragma_query_value(None, "user_version", |r| r.get(0))
                .unwrap();
            assert_eq!(version, SCHEMA_VERSION);

            // The new column and table work on the migrated file.
            let old_tagged = tagged("a.example", "/old", &["t"]);
            assert_eq!(m.upsert(old_tagged).await.unwrap(), Upsert::Updated);
            let outcome = m.purge(Purge::Tag("t".into()), false, 60).await.unwrap();
            assert_eq!(paths(&outcome.rows), ["/old"]);
            assert_eq!(m.tombstones_since(0).await.unwrap().len(), 1);
        })
        .await
    }

    /// Two processes upgrading the same version-1 file at once: one migrates, the other finds
    /// it done under the write lock (ALTER TABLE twice would fail with "duplicate column").
    #[tokio::test]
    async fn concurrent_opens_migrate_a_version_1_file_once() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            version_1_file(&path);
            let (a, b) = {
                let (pa, pb) = (path.clone(), path.clone());
                let ta = std::thread::spawn(move || Manifest::open(&pa));
                let tb = std::thread::spawn(move || Manifest::open(&pb));
                (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
            };
            assert_eq!(a.list().await.unwrap(), b.list().await.unwrap());
            assert_eq!(a.count().await.unwrap(), 1);
        })
        .await
    }
}
