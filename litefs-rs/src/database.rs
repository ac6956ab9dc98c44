//! One database in a mount: its paths, its replication position, and the entry points for HALT.

use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::halt::{self, HaltGuard};
use crate::lease::{Clock, LeaseConfig};
use crate::mount::Mount;
use crate::pos::{Pos, Txid};
use crate::retry::RetryPolicy;

/// First and last pause between two reads of `-pos` while waiting for a TXID: short at first
/// because replication usually lands within milliseconds, capped so a long wait stays cheap.
const POLL_MIN: Duration = Duration::from_millis(2);
const POLL_MAX: Duration = Duration::from_millis(50);

/// The logic of a wait for a TXID, shared by [`Database::wait_for_txid`] and its async twin:
/// when to stop, with what, and how long to pause before the next read of `-pos`. The caller
/// reads `-pos`, measures the time with its own clock and sleeps in its own way (a thread
/// sleep, or a tokio timer that a paused test clock controls).
pub(crate) struct TxidWait {
    min: Txid,
    timeout: Duration,
    pause: Duration,
}

impl TxidWait {
    pub(crate) fn new(min: Txid, timeout: Duration) -> TxidWait {
        TxidWait {
            min,
            timeout,
            pause: POLL_MIN,
        }
    }

    /// Given the position just read, `elapsed` after the wait began: `Break` with the result
    /// when the wait is over, else `Continue` with the pause before the next read.
    pub(crate) fn step(
        &mut self,
        pos: Pos,
        elapsed: Duration,
    ) -> ControlFlow<Result<Pos>, Duration> {
        if pos.txid() >= self.min {
            return ControlFlow::Break(Ok(pos));
        }
        if elapsed >= self.timeout {
            return ControlFlow::Break(Err(Error::TxidTimeout {
                wanted: self.min,
                current: pos.txid(),
                after: self.timeout,
            }));
        }
        let pause = self.pause.min(self.timeout - elapsed);
        self.pause = (self.pause * 2).min(POLL_MAX);
        ControlFlow::Continue(pause)
    }
}

/// A database in a [`Mount`]. Cheap to clone; the file need not exist.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let mount = litefs::Mount::open(dir.path()).unwrap();
/// let db = mount.database("caje.db").unwrap();
/// assert_eq!(db.name(), "caje.db");
/// assert!(db.pos_path().ends_with("caje.db-pos"));
/// assert!(!db.exists());
/// ```
#[derive(Clone, Debug)]
pub struct Database {
    mount: Mount,
    name: String,
    path: PathBuf,
    lock_path: PathBuf,
    /// The lease (and its clock) given to the HALT guards of this handle.
    lease: LeaseConfig,
}

impl Database {
    pub(crate) fn new(mount: Mount, name: String) -> Database {
        let path = mount.path().join(&name);
        let lock_path = mount.path().join(format!("{name}-lock"));
        Database {
            mount,
            name,
            path,
            lock_path,
            lease: LeaseConfig::default(),
        }
    }

    /// This handle with another HALT lease: how long its guards trust themselves before
    /// [`HaltGuard::is_held`] says `false` and writes through them are refused
    /// ([`crate::Error::HaltExpired`]). Default [`crate::DEFAULT_HALT_LEASE`] (25 s).
    ///
    /// A lease longer than LiteFS's [`crate::HALT_LIFETIME`] (30 s) defeats its purpose; a
    /// shorter one suits jobs that want more margin (a slow link to the primary).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// let db = db.with_halt_lease(Duration::from_secs(5));
    /// assert_eq!(db.halt_lease(), Duration::from_secs(5));
    /// ```
    pub fn with_halt_lease(mut self, lease: Duration) -> Database {
        self.lease.duration = lease;
        self
    }

    /// This handle with another clock for HALT leases (default [`crate::MonotonicClock`]).
    /// Tests pass a [`crate::ManualClock`] to expire guards without waiting.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt().unwrap();
    /// clock.advance(Duration::from_secs(60));
    /// assert!(guard.is_expired());
    /// ```
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Database {
        self.lease.clock = std::sync::Arc::new(clock);
        self
    }

    /// The lease given to this handle's HALT guards.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// assert_eq!(db.halt_lease(), litefs::DEFAULT_HALT_LEASE);
    /// ```
    pub fn halt_lease(&self) -> Duration {
        self.lease.duration
    }

    pub(crate) fn lease_config(&self) -> &LeaseConfig {
        &self.lease
    }

    /// The database's file name inside the mount.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.database("x.db").unwrap().name(), "x.db");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The mount this database belongs to.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.database("x.db").unwrap().mount().path(), m.path());
    /// ```
    pub fn mount(&self) -> &Mount {
        &self.mount
    }

    /// Path of the database file, to open with SQLite.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert_eq!(m.database("x.db").unwrap().path(), m.path().join("x.db"));
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of `<db>-pos`, LiteFS's position file.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(m.database("x.db").unwrap().pos_path().ends_with("x.db-pos"));
    /// ```
    pub fn pos_path(&self) -> PathBuf {
        self.side_path("-pos")
    }

    /// Path of `<db>-lock`, the HALT lock file (hidden from `ls` on LiteFS).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(m.database("x.db").unwrap().lock_path().ends_with("x.db-lock"));
    /// ```
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// Path of the WAL file (`<db>-wal`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(m.database("x.db").unwrap().wal_path().ends_with("x.db-wal"));
    /// ```
    pub fn wal_path(&self) -> PathBuf {
        self.side_path("-wal")
    }

    /// Path of the shared-memory file (`<db>-shm`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(m.database("x.db").unwrap().shm_path().ends_with("x.db-shm"));
    /// ```
    pub fn shm_path(&self) -> PathBuf {
        self.side_path("-shm")
    }

    /// Path of the rollback journal (`<db>-journal`).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// assert!(m.database("x.db").unwrap().journal_path().ends_with("x.db-journal"));
    /// ```
    pub fn journal_path(&self) -> PathBuf {
        self.side_path("-journal")
    }

    fn side_path(&self, suffix: &str) -> PathBuf {
        self.mount.path().join(format!("{}{suffix}", self.name))
    }

    /// Whether the database file exists.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// std::fs::write(dir.path().join("x.db"), b"").unwrap();
    /// assert!(m.database("x.db").unwrap().exists());
    /// ```
    pub fn exists(&self) -> bool {
        self.path.is_file()
    }

    /// The current replication position, read from `<db>-pos`.
    ///
    /// [`Error::PosUnavailable`] when the file does not exist (plain directory, or a database
    /// LiteFS does not know).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// let db = m.database("x.db").unwrap();
    /// assert!(matches!(db.pos(), Err(litefs::Error::PosUnavailable { .. })));
    /// std::fs::write(db.pos_path(), "0000000000000027/83b0c1d2e3f40516\n").unwrap();
    /// assert_eq!(db.pos().unwrap().txid().get(), 39);
    /// ```
    pub fn pos(&self) -> Result<Pos> {
        let path = self.pos_path();
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.parse()?),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(Error::PosUnavailable { path }),
            Err(e) => Err(Error::io("read", path, e)),
        }
    }

    /// The current TXID (from [`Database::pos`]).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// # let db = m.database("x.db").unwrap();
    /// std::fs::write(db.pos_path(), "00000000000000ff/0000000000000000\n").unwrap();
    /// assert_eq!(db.txid().unwrap(), litefs::Txid::new(255));
    /// ```
    pub fn txid(&self) -> Result<Txid> {
        Ok(self.pos()?.txid())
    }

    /// Blocks until the database has applied `min` (TXID ≥ `min`) or `timeout` passes
    /// ([`Error::TxidTimeout`]). Returns the position reached.
    ///
    /// Polls `-pos` (2 ms at first, backing off to 50 ms). Fails at once with
    /// [`Error::PosUnavailable`] if there is no `-pos` file. Async callers use
    /// `wait_for_txid_async` (feature `tokio`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let m = litefs::Mount::open(dir.path()).unwrap();
    /// # let db = m.database("x.db").unwrap();
    /// std::fs::write(db.pos_path(), "0000000000000005/0000000000000000\n").unwrap();
    /// let pos = db.wait_for_txid(5.into(), Duration::from_millis(10)).unwrap();
    /// assert_eq!(pos.txid().get(), 5);
    /// assert!(db.wait_for_txid(6.into(), Duration::from_millis(10)).is_err());
    /// ```
    pub fn wait_for_txid(&self, min: Txid, timeout: Duration) -> Result<Pos> {
        let start = Instant::now();
        let mut wait = TxidWait::new(min, timeout);
        loop {
            match wait.step(self.pos()?, start.elapsed()) {
                ControlFlow::Break(done) => return done,
                ControlFlow::Continue(pause) => std::thread::sleep(pause),
            }
        }
    }

    /// Acquires HALT, blocking until it is granted: this node may then write the database.
    ///
    /// Opens `<db>-lock` read-write (never creating it on a real LiteFS mount), waits for
    /// other HALTs of this database in this process, then takes the OFD write lock on byte 72.
    /// The wait is bounded by LiteFS (10 s, then `EIO`) but not on a plain directory, where it
    /// lasts as long as another process holds the lock; prefer [`Database::halt_timeout`].
    /// Runs on the calling thread: never call it from an async task (use `halt_async`).
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt().unwrap();
    /// assert_eq!(guard.kind(), litefs::HaltKind::Local);
    /// guard.release().unwrap();
    /// ```
    pub fn halt(&self) -> Result<HaltGuard> {
        halt::acquire_blocking(self, None)
    }

    /// Like [`Database::halt`], giving up with [`Error::Timeout`] after `timeout`.
    ///
    /// The blocking `fcntl` runs on its own thread so that the wait can be abandoned; if the
    /// lock is granted after the timeout, that thread releases it at once (and until then, other
    /// HALTs of this database in this process keep waiting, so they cannot collide with it).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt_timeout(Duration::from_secs(1)).unwrap();
    /// drop(guard); // released
    /// ```
    pub fn halt_timeout(&self, timeout: Duration) -> Result<HaltGuard> {
        halt::acquire_blocking(self, Some(timeout))
    }

    /// Acquires HALT, retrying retryable failures (`EIO` during failover, timeouts) with capped
    /// exponential backoff as `policy` says.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt_with_retry(&litefs::RetryPolicy::default()).unwrap();
    /// # drop(guard);
    /// ```
    pub fn halt_with_retry(&self, policy: &RetryPolicy) -> Result<HaltGuard> {
        let mut retry = 0;
        loop {
            let attempt = match policy.attempt_timeout() {
                Some(t) => self.halt_timeout(t),
                None => self.halt(),
            };
            match attempt {
                Err(e) if e.is_retryable() && retry + 1 < policy.max_attempts() => {
                    retry += 1;
                    std::thread::sleep(policy.backoff(retry));
                }
                other => return other,
            }
        }
    }

    /// Runs `f` under HALT and releases it afterwards (also if `f` panics).
    ///
    /// Release errors are not reported: commits that returned OK under HALT are already on the
    /// primary, and the lock is dropped with the descriptor anyway. Use [`HaltGuard::release`]
    /// to see them.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.path(), b"").unwrap();
    /// let n = db.with_halt(|guard| {
    ///     assert!(guard.is_held().unwrap());
    ///     42 // write with SQLite here
    /// }).unwrap();
    /// assert_eq!(n, 42);
    /// ```
    pub fn with_halt<T>(&self, f: impl FnOnce(&HaltGuard) -> T) -> Result<T> {
        let guard = self.halt()?;
        Ok(f(&guard))
    }

    /// [`Database::with_halt`] with a bounded wait for the lock.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.path(), b"").unwrap();
    /// assert!(db.with_halt_timeout(Duration::from_secs(1), |_| ()).is_ok());
    /// ```
    pub fn with_halt_timeout<T>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&HaltGuard) -> T,
    ) -> Result<T> {
        let guard = self.halt_timeout(timeout)?;
        Ok(f(&guard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn at(txid: u64) -> Pos {
        Pos::new(Txid::new(txid), 0)
    }

    #[test]
    fn txid_wait_backs_off_to_the_cap_then_clips_to_the_time_left() {
        let mut wait = TxidWait::new(Txid::new(5), ms(100));
        let mut pauses = Vec::new();
        for elapsed in 0..7 {
            match wait.step(at(4), ms(elapsed)) {
                ControlFlow::Continue(pause) => pauses.push(pause),
                ControlFlow::Break(r) => panic!("stopped early: {r:?}"),
            }
        }
        assert_eq!(
            pauses,
            [ms(2), ms(4), ms(8), ms(16), ms(32), ms(50), ms(50)]
        );
        assert!(matches!(wait.step(at(4), ms(90)), ControlFlow::Continue(p) if p == ms(10)));
    }

    #[test]
    fn txid_wait_times_out_with_the_current_txid() {
        let mut wait = TxidWait::new(Txid::new(5), ms(100));
        match wait.step(at(3), ms(100)) {
            ControlFlow::Break(Err(Error::TxidTimeout {
                wanted,
                current,
                after,
            })) => {
                assert_eq!((wanted.get(), current.get(), after), (5, 3, ms(100)));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }

    #[test]
    fn txid_wait_returns_a_reached_position_even_at_the_deadline() {
        let mut wait = TxidWait::new(Txid::new(5), ms(100));
        assert!(matches!(
            wait.step(at(6), ms(500)),
            ControlFlow::Break(Ok(p)) if p == at(6)
        ));
    }
}
