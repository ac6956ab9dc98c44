//! LiteFS glue, the only module of caje that names litefs-rs: whether a manifest is in LiteFS
//! mode ([`LitefsMode`]), this node's role ([`ManifestRole`]), and taking and releasing HALT
//! around the writes of a node that is not the primary. The other modules take litefs-rs's
//! types (`Database`, `HaltGuard`, `LitefsError`) from here. Where the writes run (this
//! process or the writer helper) is `writer.rs`'s business; the HALT code is the same.

use std::path::Path;
use std::time::Duration;

use litefs::Role;
use serde::{Deserialize, Serialize};

use super::Manifest;
use super::ManifestError;

/// The injectable clock of HALT leases ([`super::ManifestOptions::halt_clock`]), for tests.
#[cfg(test)]
pub(super) use litefs::ManualClock;
pub(super) use litefs::{Database, Error as LitefsError, HaltGuard};

/// Whether the manifest is written the LiteFS way; see the module docs. Configured as
/// `litefs = "off" | "auto" | "on"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LitefsMode {
    /// Plain SQLite: never HALT, ignore `.primary`.
    Off,
    /// LiteFS mode when the database's directory is a real LiteFS FUSE mount, plain SQLite
    /// otherwise.
    #[default]
    Auto,
    /// LiteFS mode even on a plain directory, whose `.primary` / `.lag` files then decide the
    /// role (absent: this node is the primary) and whose `<db>-lock` carries a real OFD lock.
    On,
}

impl LitefsMode {
    /// Stable name, as in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            LitefsMode::Off => "off",
            LitefsMode::Auto => "auto",
            LitefsMode::On => "on",
        }
    }
}

/// This node's place as a writer of the manifest, from [`Manifest::role`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ManifestRole {
    /// Not in LiteFS mode: plain SQLite, written directly.
    Standalone,
    /// The LiteFS primary: written directly. Also a plain directory in `litefs = "on"` mode
    /// without a `.primary` file (and without a non-zero `.lag`), as litefs-rs reports it.
    Primary,
    /// A LiteFS replica: written under HALT.
    Replica {
        /// The primary's hostname, from `.primary`.
        primary: String,
    },
    /// LiteFS mode, but no primary is known (a disconnected replica, a failover) or the role
    /// could not be read: written under HALT, which fails until a primary is back.
    Unknown,
}

impl ManifestRole {
    /// Stable name for logs, metrics and status output.
    pub fn as_str(&self) -> &'static str {
        match self {
            ManifestRole::Standalone => "standalone",
            ManifestRole::Primary => "primary",
            ManifestRole::Replica { .. } => "replica",
            ManifestRole::Unknown => "unknown",
        }
    }

    /// The primary's hostname when this node is a replica.
    pub fn primary(&self) -> Option<&str> {
        match self {
            ManifestRole::Replica { primary } => Some(primary),
            _ => None,
        }
    }
}

impl From<Role> for ManifestRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Primary => ManifestRole::Primary,
            Role::Replica { primary } => ManifestRole::Replica { primary },
            // `Role::Unknown` and any role a newer litefs-rs adds: not known to be the primary.
            _ => ManifestRole::Unknown,
        }
    }
}

impl Manifest {
    /// How far this node's copy is behind the primary, from LiteFS's `.lag` (zero on the
    /// primary). `None` outside LiteFS mode, before the first replication, or unreadable.
    pub async fn lag(&self) -> Option<Duration> {
        let db = self.litefs.clone()?;
        match tokio::task::spawn_blocking(move || db.mount().lag()).await {
            Ok(Ok(Some(lag))) => lag.duration(),
            _ => None,
        }
    }
}

/// The LiteFS database of `path` when LiteFS mode applies (see [`LitefsMode`]).
pub(super) fn litefs_database(
    path: &Path,
    mode: LitefsMode,
) -> Result<Option<litefs::Database>, ManifestError> {
    let litefs_err = |source| ManifestError::Litefs {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mount = match mode {
        LitefsMode::Off => return Ok(None),
        LitefsMode::On => litefs::Mount::open_as_litefs(dir).map_err(litefs_err)?,
        LitefsMode::Auto => match litefs::Mount::open(dir) {
            Ok(mount) if mount.is_litefs() => mount,
            Ok(_) => return Ok(None),
            Err(e) => {
                // Opening the database will report a missing directory better.
                tracing::debug!(error = %e, "manifest directory not checked for LiteFS");
                return Ok(None);
            }
        },
    };
    let name = path.file_name().unwrap_or_default();
    let name = name
        .to_str()
        .ok_or_else(|| litefs::Error::InvalidDatabaseName {
            name: name.to_string_lossy().into_owned(),
        })
        .map_err(litefs_err)?;
    mount.database(name).map(Some).map_err(litefs_err)
}

/// Takes HALT when this node may not write the database directly: LiteFS mode, and the role
/// (read now) is not the primary: a replica, no primary known, or unreadable. `None`: write
/// directly. Must be called outside any transaction. `timeout` bounds the wait; without one it
/// waits as long as LiteFS does (10 s, then `EIO`).
pub(super) fn halt_unless_primary(
    db: Option<&litefs::Database>,
    timeout: Option<Duration>,
) -> Result<Option<HaltGuard>, litefs::Error> {
    let Some(db) = db else {
        return Ok(None);
    };
    match db.mount().role() {
        Ok(Role::Primary) => return Ok(None),
        Ok(role) => tracing::trace!(%role, "manifest write takes HALT"),
        Err(e) => tracing::debug!(error = %e, "cannot read the LiteFS role; taking HALT"),
    }
    match timeout {
        Some(timeout) => db.halt_timeout(timeout).map(Some),
        None => db.halt().map(Some),
    }
}

/// Releases HALT after the transaction ended, and returns how long it was held (from just
/// before the lock request to the release), for [`super::ManifestStats::halt_max_held_ms`].
/// A failed release is only logged: the commits already reached the primary, and closing the
/// lock file releases HALT anyway. A guard that outlived its lease is still released (by
/// litefs-rs, from a background thread so that a wedged LiteFS cannot block the owner thread)
/// and reported here as an error: its commits were refused by [`HaltGuard::write`].
pub(super) fn release_halt(guard: Option<HaltGuard>) -> Option<Duration> {
    let guard = guard?;
    let held = guard.held_for();
    if let Err(e) = guard.release() {
        tracing::warn!(error = %e, held = ?held, "releasing the manifest HALT failed");
    }
    Some(held)
}

/// Runs `commit` under `halt`'s lease: refused with [`LitefsError::HaltExpired`] (without
/// running it) once the lease has run out, because LiteFS may then have expired the HALT
/// without telling this node and a commit could land while the primary writes too. Without a
/// guard (the primary, plain SQLite) it just runs.
pub(super) fn commit_under<T>(
    halt: Option<&HaltGuard>,
    commit: impl FnOnce() -> T,
) -> Result<T, LitefsError> {
    match halt {
        Some(halt) => halt.write(commit),
        None => Ok(commit()),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::manifest::test_support::*;
    use crate::manifest::*;
    use std::fs::File;
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use ::litefs::ofd;

    /// What `F_OFD_GETLK` on the HALT byte reports: (kind, pid) of a holder.
    type Holder = Option<(ofd::LockKind, i32)>;

    type Hook = Arc<dyn Fn() + Send + Sync>;

    /// The HALT byte as seen through a separate open file description of `<db>-lock`, which is
    /// how another process (or LiteFS's `is_held`) would see it.
    fn halt_holder(db: &Path) -> Holder {
        let file = match File::open(side_file(db, "-lock")) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => panic!("{e}"),
        };
        ofd::query(&file, ofd::LockKind::Write, ofd::LockRange::HALT)
            .unwrap()
            .map(|h| (h.kind(), h.pid()))
    }

    /// Holds the HALT byte through the test's own descriptor, as another writer on this host
    /// would; closing the file releases it. Waits (a bounded time) while the manifest itself
    /// still holds HALT: a write is answered at its commit, before its owner thread releases it.
    pub(in crate::manifest) fn hold_halt(db: &Path) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(side_file(db, "-lock"))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match ofd::try_lock(&file, ofd::LockKind::Write, ofd::LockRange::HALT) {
                Ok(()) => return file,
                Err(ofd::LockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("cannot take HALT: {e:?}"),
            }
        }
    }

    /// An `on_flush` hook recording [`halt_holder`] inside every write transaction.
    fn recording_hook(db: &Path) -> (Hook, Arc<Mutex<Vec<Holder>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (db, record) = (db.to_owned(), Arc::clone(&seen));
        let hook = move || record.lock().unwrap().push(halt_holder(&db));
        (Arc::new(hook), seen)
    }

    const HALTED: Holder = Some((ofd::LockKind::Write, -1));

    #[tokio::test]
    async fn forced_replica_writes_under_halt_and_follows_role_changes() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let (hook, seen) = recording_hook(&path);
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    on_flush: Some(hook),
                    ..quick(LitefsMode::On)
                },
            )
            .unwrap();
            assert_eq!(
                m.role().await,
                ManifestRole::Replica {
                    primary: "other-node".into()
                }
            );
            let at_open = m.stats().await.unwrap().halts;
            assert_eq!(at_open, 1, "creating the schema on a replica takes HALT");

            assert_eq!(
                m.upsert(page("a.example", "/1")).await.unwrap(),
                Upsert::Inserted
            );
            assert_eq!(*seen.lock().unwrap(), [HALTED], "no HALT during the flush");
            assert_eq!(m.stats().await.unwrap().halts, at_open + 1);
            assert_eq!(halt_holder(&path), None, "HALT outlived its transaction");

            // `.primary` disappears: on a plain directory that makes this node the primary.
            std::fs::remove_file(dir.path().join(".primary")).unwrap();
            assert_eq!(m.role().await, ManifestRole::Primary);
            m.upsert(page("a.example", "/2")).await.unwrap();
            assert_eq!(*seen.lock().unwrap(), [HALTED, None]);
            assert_eq!(m.stats().await.unwrap().halts, at_open + 1);

            // And a new primary appears.
            std::fs::write(dir.path().join(".primary"), "node-b\n").unwrap();
            m.upsert(page("a.example", "/3")).await.unwrap();
            assert_eq!(*seen.lock().unwrap(), [HALTED, None, HALTED]);
            assert_eq!(m.role().await.primary(), Some("node-b"));
            assert_eq!(paths(&m.list().await.unwrap()), ["/1", "/2", "/3"]);

            assert_eq!(m.txid().await, None, "no -pos file yet");
            std::fs::write(
                side_file(&path, "-pos"),
                "0000000000000027/83b0c1d2e3f40516\n",
            )
            .unwrap();
            assert_eq!(m.txid().await, Some(0x27));
        })
        .await
    }

    #[tokio::test]
    async fn off_and_auto_modes_ignore_a_primary_file_on_a_plain_directory() {
        bounded(async {
            for mode in [LitefsMode::Off, LitefsMode::Auto] {
                let dir = replica_dir();
                let path = dir.path().join("manifest.db");
                std::fs::write(
                    side_file(&path, "-pos"),
                    "0000000000000001/0000000000000000\n",
                )
                .unwrap();
                let (hook, seen) = recording_hook(&path);
                let m = Manifest::open_with(
                    &path,
                    ManifestOptions {
                        on_flush: Some(hook),
                        ..quick(mode)
                    },
                )
                .unwrap();
                m.upsert(page("a.example", "/1")).await.unwrap();
                assert_eq!(*seen.lock().unwrap(), [None], "{mode:?}");
                assert_eq!(m.stats().await.unwrap().halts, 0, "{mode:?}");
                assert_eq!(m.role().await, ManifestRole::Standalone, "{mode:?}");
                assert_eq!(m.txid().await, None, "{mode:?}");
            }
        })
        .await
    }

    /// Another writer holds HALT: the flush fails and is retried, reads are still answered,
    /// the write completes once HALT is free.
    #[tokio::test]
    async fn foreign_halt_holder_delays_writes_but_not_reads() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(&path, quick(LitefsMode::On)).unwrap();
            m.upsert(page("a.example", "/before")).await.unwrap();

            let lock = hold_halt(&path);
            let writer = {
                let m = m.clone();
                tokio::spawn(async move { m.upsert(page("a.example", "/during")).await })
            };
            let stats = stats_until(&m, |s| s.failed_flushes >= 2).await;
            assert_eq!(stats.pending, 1, "{stats:?}");
            let error = stats.last_error.unwrap_or_default();
            assert!(error.contains("HALT"), "{error}");

            assert_eq!(paths(&m.list().await.unwrap()), ["/before"]);
            assert_eq!(m.count().await.unwrap(), 1);
            assert!(!writer.is_finished(), "the write returned without HALT");

            drop(lock);
            assert_eq!(writer.await.unwrap().unwrap(), Upsert::Inserted);
            assert_eq!(paths(&m.list().await.unwrap()), ["/before", "/during"]);
            let stats = m.stats().await.unwrap();
            assert_eq!(stats.pending, 0);
            assert!(stats.failed_flushes >= 2 && stats.flushes >= 2, "{stats:?}");
        })
        .await
    }

    /// A node started while HALT cannot be had (on LiteFS: a primary halted by a dead
    /// holder's HALT for 30-35 s) waits for it within `open_timeout` instead of exiting.
    #[tokio::test]
    async fn opening_on_a_replica_retries_a_halt_that_is_not_available_yet() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let lock = hold_halt(&path);
            let held = Duration::from_millis(1200);
            let releaser = std::thread::spawn(move || {
                std::thread::sleep(held);
                drop(lock);
            });
            let started = Instant::now();
            let opening = path.clone();
            let m = tokio::task::spawn_blocking(move || {
                Manifest::open_with(
                    &opening,
                    ManifestOptions {
                        open_timeout: Duration::from_secs(10),
                        ..quick(LitefsMode::On)
                    },
                )
            })
            .await
            .unwrap()
            .expect("opening waits for HALT instead of failing");
            assert!(started.elapsed() >= held, "{:?}", started.elapsed());
            releaser.join().unwrap();
            m.upsert(page("a.example", "/1")).await.unwrap();
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    #[tokio::test]
    async fn opening_on_a_replica_writes_only_under_halt() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");

            // A new file needs its schema: without HALT the open fails (after `open_timeout`),
            // and says why.
            let lock = hold_halt(&path);
            let err = Manifest::open_with(&path, quick(LitefsMode::On)).unwrap_err();
            assert!(matches!(err, ManifestError::Halt { .. }), "{err:?}");
            assert!(err.to_string().contains("HALT"), "{err}");
            drop(lock);

            let m = Manifest::open_with(&path, quick(LitefsMode::On)).unwrap();
            m.upsert(page("a.example", "/1")).await.unwrap();
            drop(m);

            // An up-to-date manifest needs no write to open: no HALT, even while another holds it.
            let lock = hold_halt(&path);
            let m = Manifest::open_with(&path, quick(LitefsMode::On)).unwrap();
            assert_eq!(m.stats().await.unwrap().halts, 0);
            assert_eq!(m.count().await.unwrap(), 1);
            drop(lock);
        })
        .await
    }

    /// A HALT whose lease runs out during a flush (a stalled owner thread: the hook advances the
    /// lease clock past 30 s before `COMMIT`): the commit is refused and rolled back, the flush
    /// fails as retryable, and the batch lands once under a fresh HALT. Without the lease check
    /// the first commit would go through on a HALT LiteFS may already have expired.
    #[tokio::test]
    async fn commit_past_the_halt_lease_is_rolled_back_and_retried_under_a_new_halt() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let clock = ManualClock::new();
            let stalls = Arc::new(Mutex::new(1u32));
            let hook: Hook = {
                let (clock, stalls) = (clock.clone(), Arc::clone(&stalls));
                Arc::new(move || {
                    let mut left = stalls.lock().unwrap();
                    if *left > 0 {
                        *left -= 1;
                        clock.advance(Duration::from_secs(31));
                    }
                })
            };
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    on_flush: Some(hook),
                    halt_clock: Some(clock.clone()),
                    ..quick(LitefsMode::On)
                },
            )
            .unwrap();
            let before = m.stats().await.unwrap();
            assert!(before.halt_max_held_ms < 1000, "{before:?}");

            let watcher = observer(&path);
            let writer = {
                let m = m.clone();
                tokio::spawn(async move { m.upsert(page("a.example", "/late")).await })
            };
            let stats = stats_until(&m, |s| s.failed_flushes >= 1).await;
            let error = stats.last_error.clone().unwrap_or_default();
            assert!(error.contains("lease"), "{error}");
            assert_eq!(
                stats.write_transactions, 0,
                "committed past the lease: {stats:?}"
            );
            assert!(
                stats.halt_max_held_ms >= 31_000,
                "the stalled HALT's time is not recorded: {stats:?}"
            );

            assert_eq!(writer.await.unwrap().unwrap(), Upsert::Inserted);
            let stats = m.stats().await.unwrap();
            assert_eq!(
                (stats.write_transactions, stats.rows_written, stats.pending),
                (1, 1, 0),
                "{stats:?}"
            );
            assert!(stats.halts >= before.halts + 2, "no fresh HALT: {stats:?}");
            let rows: i64 = watcher
                .query_row("SELECT count(*) FROM pages", [], |r| r.get(0))
                .unwrap();
            assert_eq!(rows, 1);
            assert_eq!(halt_holder(&path), None, "HALT outlived its flush");
        })
        .await
    }

    /// Every HALT a flush takes is timed, and the longest is kept: on a plain directory a flush
    /// holds it for milliseconds.
    #[tokio::test]
    async fn flushes_record_how_long_they_held_halt() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(&path, quick(LitefsMode::On)).unwrap();
            for i in 0..20 {
                m.upsert(page("a.example", &format!("/{i}"))).await.unwrap();
            }
            let stats = m.stats().await.unwrap();
            assert!(stats.halts >= 2, "{stats:?}");
            assert!(stats.halt_max_held_ms < 1000, "{stats:?}");
        })
        .await
    }
}
