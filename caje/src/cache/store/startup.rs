//! How the index is built when the store opens, and what the start left to do: the choice
//! between an index snapshot and a scan of the directory (on an ordinary start and on a
//! graceful upgrade's hand-over), and the state `/_caje/status`, `/_caje/stats` and
//! `/metrics` report: where the index came from, and the progress of the background check
//! that follows a start from a snapshot.

use std::sync::Mutex;
use std::time::SystemTime;

use super::check::Since;
use super::{Handover, Store, StoreError};

/// Where the index came from at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IndexSource {
    /// The index snapshot (`cache_dir/index.snapshot`), checked against the directory in
    /// the background.
    Snapshot,
    /// A scan of every entry's header (no usable snapshot).
    Scan,
}

impl IndexSource {
    /// The value the admin API and `/metrics` show.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexSource::Snapshot => "snapshot",
            IndexSource::Scan => "scan",
        }
    }
}

/// The background check's progress (see `check.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckProgress {
    /// Whether it has finished ([`Store::is_checked`]).
    pub done: bool,
    /// Whether the eviction policy has admitted the loaded entries (the check's first step):
    /// until then the disk cap evicts only among the entries stored since the start.
    pub admitted: bool,
    /// Shard directories checked, and how many there are (0 until they are listed).
    pub shards_checked: u64,
    /// Shard directories to check.
    pub shards_total: u64,
    /// Entry files looked at.
    pub files_checked: u64,
    /// Entry files trusted as the snapshot described them.
    pub trusted: u64,
    /// Entry files read again (changed since the snapshot) and kept.
    pub reread: u64,
    /// Entry files the snapshot did not list, added.
    pub added: u64,
    /// Entries dropped (file gone, purged since the start, or damaged).
    pub dropped: u64,
    /// When it started.
    pub started_at: SystemTime,
    /// When it finished.
    pub finished_at: Option<SystemTime>,
    /// How long the admission of the loaded entries took (0 until it is over).
    pub admit_ms: u64,
}

/// How the index was built at start-up, and what is left to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StartReport {
    /// Where the index came from.
    pub source: IndexSource,
    /// Taken over from a previous process by a graceful upgrade (SIGUSR2).
    pub handover: bool,
    /// Entries in the index once it was built (before the check).
    pub loaded_entries: u64,
    /// How long building it took (the snapshot's read and load, or the scan), in ms.
    pub load_ms: u64,
    /// The background check, after a start from a snapshot.
    pub check: Option<CheckProgress>,
}

/// The [`StartReport`] the store keeps up to date. Written a few times per shard directory
/// by the check's one thread, read by the admin API: a plain mutex is cheap enough.
pub(super) struct StartState(Mutex<StartReport>);

impl StartState {
    pub(super) fn new() -> StartState {
        StartState(Mutex::new(StartReport {
            source: IndexSource::Scan,
            handover: false,
            loaded_entries: 0,
            load_ms: 0,
            check: None,
        }))
    }

    pub(super) fn get(&self) -> StartReport {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn update(&self, f: impl FnOnce(&mut StartReport)) {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Records how the index was built.
    pub(super) fn built(&self, source: IndexSource, handover: bool, entries: u64, ms: u64) {
        self.update(|r| {
            r.source = source;
            r.handover = handover;
            r.loaded_entries = entries;
            r.load_ms = ms;
        });
    }

    /// Updates the check's progress (starting it if needed).
    pub(super) fn check(&self, f: impl FnOnce(&mut CheckProgress)) {
        self.update(|r| {
            let c = r.check.get_or_insert(CheckProgress {
                done: false,
                admitted: false,
                shards_checked: 0,
                shards_total: 0,
                files_checked: 0,
                trusted: 0,
                reread: 0,
                added: 0,
                dropped: 0,
                started_at: SystemTime::now(),
                finished_at: None,
                admit_ms: 0,
            });
            f(c);
        });
    }
}

impl Store {
    /// How the index was built at start-up, and the background check's progress.
    pub fn start_report(&self) -> StartReport {
        self.inner.start.get()
    }

    /// Builds the index of a store just opened: from the snapshot if there is a usable one
    /// (then the directory is checked against it in the background), else by reading every
    /// entry's header. Blocking.
    ///
    /// On a hand-over the previous process still serves from the directory, and holds its
    /// lock, while this runs: the snapshot it wrote when the upgrade began (or its last
    /// periodic one) is loaded first, without the lock and deleting nothing; then it is asked
    /// to release the lock, and once this process holds it the background check brings the
    /// index in line with what the previous process changed since the snapshot, as after a
    /// kill -9. Without a usable snapshot the directory is read without the lock, and only
    /// the shard directories that changed meanwhile are read again once it is held.
    pub(super) fn build_index(&self, handover: Option<Handover>) -> Result<(), StoreError> {
        let dir = self.inner.dir.clone();
        let io_err = |source| StoreError::Io {
            path: dir.clone(),
            source,
        };
        let Some(handover) = handover else {
            match self.load_snapshot(false) {
                Some(written_at) => {
                    let since = Since {
                        snapshot: written_at,
                        own: self.inner.opened_at,
                        handover: false,
                    };
                    self.spawn_check(since).map_err(io_err)?;
                }
                None => {
                    self.scan(false)?;
                    self.inner.checked.send_replace(true);
                }
            }
            return Ok(());
        };
        if let Some(written_at) = self.load_snapshot(true) {
            (handover.ask)().map_err(io_err)?;
            self.relock(handover.wait)?;
            // From here on nothing but this process's own work and the previous process's
            // drain changes the directory: files changed since are this process's own
            // (or late commits of that drain, which the next start finds).
            let since = Since {
                snapshot: written_at,
                own: SystemTime::now(),
                handover: true,
            };
            self.spawn_check(since).map_err(io_err)?;
            return Ok(());
        }
        let read = self.scan(true)?;
        (handover.ask)().map_err(io_err)?;
        self.relock(handover.wait)?;
        self.rescan_changed(&read)?;
        self.inner.checked.send_replace(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::mpsc;

    use super::*;
    use crate::cache::store::snapshot::tests::{checked, hit, key, put, walk};
    use crate::cache::store::snapshot::SNAPSHOT_FILE;
    use crate::cache::store::tests::open;
    use crate::cache::store::{DiskLimits, OpenOptions, StoreEvent};
    use crate::stats::Stats;

    /// Opens `dir` as a graceful upgrade's new process would while `old` serves from it:
    /// asked, `old` releases the lock (as `main.rs` does on the new process's *prepared*).
    fn take_over(dir: &Path, old: &Store) -> (Store, mpsc::UnboundedReceiver<StoreEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let old = old.clone();
        let options = OpenOptions {
            handover: Some(Handover {
                wait: Duration::from_secs(5),
                ask: Box::new(move || {
                    old.release_lock();
                    Ok(())
                }),
            }),
            snapshot_every: None,
        };
        let stats = Arc::new(Stats::default());
        let store = Store::open_with(dir, 8, 1 << 20, DiskLimits::UNLIMITED, stats, tx, options)
            .expect("the new process opens the store");
        (store, rx)
    }

    /// A graceful upgrade's new process loads the snapshot the old one wrote when the upgrade
    /// began and serves from it. What the old one changed after writing it (a page stored,
    /// one replaced, one removed) is brought in by the check once the lock is handed over,
    /// which leaves the old process's temp files (its fills still streaming) alone.
    #[tokio::test]
    async fn a_handover_loads_the_old_process_snapshot_and_checks_what_changed_since() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _old_rx) = open(dir.path());
        for p in ["/a", "/b", "/c"] {
            put(&old, p, b"old", &[]).await;
        }
        assert_eq!(old.write_snapshot(false).unwrap(), Some(3));
        // While the new process starts, the old one goes on serving.
        put(&old, "/d", b"new", &[]).await;
        put(&old, "/a", b"newer", &[]).await;
        old.remove_page(&key("/b"));
        let shard = old.path_of(&old.refs()[0]).parent().unwrap().to_owned();
        let in_flight = shard.join(".in-flight.0000000000000001.tmp");
        fs::write(&in_flight, b"half a fill").unwrap();

        let (new, _rx) = take_over(dir.path(), &old);
        let r = new.start_report();
        assert_eq!(
            (r.source, r.handover, r.loaded_entries),
            (IndexSource::Snapshot, true, 3)
        );
        // Never the old copy of the replaced page, never the removed one, even before the
        // check.
        assert_ne!(hit(&new, "/a").await.as_deref(), Some(&b"old"[..]));
        assert_eq!(hit(&new, "/b").await, None);
        checked(&new).await;
        assert_eq!(hit(&new, "/a").await.as_deref(), Some(&b"newer"[..]));
        assert_eq!(hit(&new, "/b").await, None);
        assert_eq!(hit(&new, "/c").await.as_deref(), Some(&b"old"[..]));
        assert_eq!(hit(&new, "/d").await.as_deref(), Some(&b"new"[..]));
        assert_eq!(new.usage(), (3, 11));
        let c = new.start_report().check.expect("a check ran");
        assert!(c.done && c.admitted && c.finished_at.is_some(), "{c:?}");
        assert_eq!((c.files_checked, c.added), (3, 1), "{c:?}");
        // /a was replaced; /c was written less than a second before the snapshot, too
        // close to trust its record.
        assert_eq!(c.trusted + c.reread, 2, "{c:?}");
        assert!(c.reread >= 1, "{c:?}");
        assert!(
            in_flight.exists(),
            "a temp file of the old process was removed"
        );
        // The new process holds the directory now: its snapshots are written, the old one's
        // are not.
        assert_eq!(old.write_snapshot(false).unwrap(), None);
        assert_eq!(new.write_snapshot(true).unwrap(), Some(3));
    }

    /// Without a usable snapshot, a hand-over reads every header without the lock, and the
    /// shards changed meanwhile again once it holds it (what it did before snapshots).
    #[tokio::test]
    async fn a_handover_without_a_snapshot_reads_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let (old, _old_rx) = open(dir.path());
        put(&old, "/a", b"aaa", &[]).await;
        put(&old, "/b", b"bbb", &[]).await;
        assert!(!dir.path().join(SNAPSHOT_FILE).exists());
        let (new, _rx) = take_over(dir.path(), &old);
        let r = new.start_report();
        assert_eq!(
            (r.source, r.handover, r.loaded_entries, r.check),
            (IndexSource::Scan, true, 2, None)
        );
        assert!(new.is_checked());
        assert_eq!(hit(&new, "/b").await.as_deref(), Some(&b"bbb"[..]));
        assert_eq!(
            walk(dir.path()).filter(|n| n.ends_with(".entry")).count(),
            2
        );
    }

    /// An ordinary start reports where its index came from: a scan on a fresh directory,
    /// the snapshot after a clean stop.
    #[tokio::test]
    async fn a_start_reports_where_its_index_came_from() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            let r = store.start_report();
            assert_eq!(
                (r.source, r.handover, r.check),
                (IndexSource::Scan, false, None)
            );
            put(&store, "/a", b"aaa", &[]).await;
            store.write_snapshot(true).unwrap();
        }
        let (store, _rx) = open(dir.path());
        let r = store.start_report();
        assert_eq!(
            (r.source, r.handover, r.loaded_entries),
            (IndexSource::Snapshot, false, 1)
        );
        checked(&store).await;
        let c = store.start_report().check.expect("a check ran");
        assert!(c.done && c.shards_checked == c.shards_total && c.shards_total >= 1);
        assert_eq!(c.files_checked, 1);
    }
}
