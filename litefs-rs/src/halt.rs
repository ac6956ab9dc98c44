//! HALT: the write lock that lets a replica write, as an RAII guard.
//!
//! # How the guard decides what it holds
//!
//! After the lock call returns, the guard classifies itself:
//!
//! - **Real LiteFS mount** (FUSE, detected from `/proc/self/mountinfo`): LiteFS answers
//!   `F_OFD_GETLK` on the halting handle with `F_WRLCK` / pid `-1` while this node holds a
//!   *remote* HALT ([`HaltKind::Remote`]); on the primary the lock call is a successful no-op
//!   and the query reports `F_UNLCK` ([`HaltKind::Primary`]).
//! - **Plain directory** (also with [`crate::Mount::open_as_litefs`]): the kernel never reports a
//!   lock as conflicting with the open file description that holds it, so the same query
//!   cannot tell anything. Such a node is its own primary and the lock is a real OFD lock that
//!   serialises every process on this host using the same file ([`HaltKind::Local`]).
//!
//! # The lease
//!
//! LiteFS expires a remote HALT after 30–35 s without telling the replica, so the guard keeps
//! its own lease (see `lease.rs`): [`DEFAULT_HALT_LEASE`] unless configured, counted on an
//! injectable clock from just before the lock request. Once it has run out, `is_held` answers
//! `false` without asking LiteFS, `check_lease` and `write` refuse with
//! [`Error::HaltExpired`], and dropping the guard releases it from a background thread (see
//! [`HaltGuard`] for why).

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::coordinator::{self, SlotPermit};
use crate::database::Database;
use crate::error::{Error, Result, WaitPhase};
#[cfg(doc)]
use crate::lease::DEFAULT_HALT_LEASE;
use crate::lease::{Lease, LeaseConfig};
use crate::mount::Mount;
#[cfg(target_os = "linux")]
use crate::ofd::{self, LockKind, LockRange};

/// How long LiteFS keeps a remote HALT before expiring it (checked every 5 s, so expiry
/// happens between 30 and 35 s after acquisition). Not configurable in LiteFS; a guard trusts
/// itself for a shorter lease ([`DEFAULT_HALT_LEASE`]).
pub const HALT_LIFETIME: Duration = Duration::from_secs(30);

/// How long LiteFS lets a HALT acquisition wait before failing with `EIO`. Not configurable.
pub const HALT_ACQUIRE_LIMIT: Duration = Duration::from_secs(10);

/// What a [`HaltGuard`] holds.
///
/// ```
/// assert!(litefs::HaltKind::Remote.is_remote());
/// assert!(!litefs::HaltKind::Local.is_remote());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HaltKind {
    /// A replica's HALT: the primary has halted its writers for this node. Expires after
    /// [`HALT_LIFETIME`]; lost on failover.
    Remote,
    /// This node is the primary: HALT was a successful no-op and writes need nothing more.
    Primary,
    /// Not a LiteFS FUSE mount: a plain OFD lock, serialising the processes of this host that
    /// share the database file. The node is its own primary.
    Local,
}

impl HaltKind {
    /// Whether the primary is halted on this node's behalf (commits make a round trip to it).
    ///
    /// ```
    /// assert!(!litefs::HaltKind::Primary.is_remote());
    /// ```
    pub fn is_remote(self) -> bool {
        self == HaltKind::Remote
    }
}

/// Proof that this node may write a database, until dropped.
///
/// Obtained from [`Database::halt`], [`Database::halt_timeout`], `Database::halt_async`
/// (feature `tokio`) and friends. Dropping the guard unlocks byte 72 and closes the lock file,
/// which releases HALT; [`HaltGuard::release`] does the same and reports errors.
///
/// The lock descriptor is private: it is never exposed, duplicated, or inherited (it is opened
/// with `O_CLOEXEC`), because on LiteFS closing *any* copy of it releases the HALT. Do not spawn
/// child processes while holding a guard all the same. The guard is `Send`, so it may move into
/// a `spawn_blocking` closure or a database thread.
///
/// # Lease
///
/// LiteFS expires a remote HALT 30–35 s after granting it without telling this node
/// (`F_OFD_GETLK` still reports the lock), so the guard keeps its own lease,
/// [`DEFAULT_HALT_LEASE`] (25 s) unless set with [`Database::with_halt_lease`], counted from
/// just before the lock request. Remote and local guards have a lease; a [`HaltKind::Primary`]
/// guard holds nothing at LiteFS and never expires. Once the lease has run out:
///
/// - [`HaltGuard::is_held`] answers `false` without asking LiteFS;
/// - [`HaltGuard::check_lease`] and [`HaltGuard::write`] refuse with [`Error::HaltExpired`];
/// - [`HaltGuard::release`] reports [`Error::HaltExpired`] (after releasing);
/// - dropping or releasing an expired **remote** guard sends the release from a detached
///   thread instead of the caller's. The release itself is safe and is what clears the halt
///   on this node; what wedges LiteFS v0.5.14 is a replica that still holds a halt when the
///   primary writes after expiring it (it deadlocks applying that transaction, and a release
///   sent afterwards blocks until that LiteFS restarts). Holding the descriptor open instead
///   would only make that wedge certain, so the guard releases as soon as it can but never
///   lets the release block its caller. Other HALTs of the database in this process wait
///   until that release returned.
/// - an expired local guard is unlocked and closed at once: a plain OFD lock cannot wedge.
///
/// Keep halts in milliseconds and far below the lease: batch rows into one transaction.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
/// std::fs::write(db.path(), b"").unwrap();
///
/// let guard = db.halt().unwrap();
/// // ... BEGIN; INSERT ...; COMMIT; with any SQLite connection ...
/// assert!(guard.is_held().unwrap());
/// guard.release().unwrap();
/// ```
pub struct HaltGuard {
    /// The open lock file; `None` only after [`HaltGuard::release`] took it.
    file: Option<File>,
    kind: HaltKind,
    lock_path: PathBuf,
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))] // read by `is_held` on Linux
    mount: Mount,
    lease: Lease,
    /// Keeps other HALTs of this database in this process waiting; dropped after the file
    /// (field order), so the next one starts only once this lock is gone. `None` only once
    /// handed to a background release with the file.
    permit: Option<SlotPermit>,
}

impl fmt::Debug for HaltGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately no descriptor number: nobody should be tempted to use it.
        f.debug_struct("HaltGuard")
            .field("kind", &self.kind)
            .field("lock_path", &self.lock_path)
            .field("held_for", &self.lease.elapsed())
            .field("lease", &self.lease.duration())
            .finish()
    }
}

impl HaltGuard {
    /// Whether this is a remote HALT, the primary's no-op, or a local lock.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt().unwrap();
    /// assert_eq!(guard.kind(), litefs::HaltKind::Local); // plain directory
    /// ```
    pub fn kind(&self) -> HaltKind {
        self.kind
    }

    /// The `<db>-lock` file this guard locks.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// assert_eq!(db.halt().unwrap().lock_path(), db.lock_path());
    /// ```
    pub fn lock_path(&self) -> &Path {
        &self.lock_path
    }

    /// How long the guard has been held, on its lease's clock, counted from just before the
    /// lock was requested (so it includes the acquisition itself).
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// assert!(db.halt().unwrap().held_for() < std::time::Duration::from_secs(5));
    /// ```
    pub fn held_for(&self) -> Duration {
        self.lease.elapsed()
    }

    /// The lease this guard was given ([`DEFAULT_HALT_LEASE`] unless set with
    /// [`Database::with_halt_lease`]); `None` for a [`HaltKind::Primary`] guard, which never
    /// expires.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// assert_eq!(db.halt().unwrap().lease(), Some(litefs::DEFAULT_HALT_LEASE));
    /// ```
    pub fn lease(&self) -> Option<Duration> {
        self.expires().then(|| self.lease.duration())
    }

    /// The time left on the lease (zero once expired); `None` for a [`HaltKind::Primary`]
    /// guard, which never expires. Stop starting transactions well before it reaches zero.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt().unwrap();
    /// clock.advance(Duration::from_secs(20));
    /// assert_eq!(guard.remaining_lifetime(), Some(Duration::from_secs(5)));
    /// ```
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.expires().then(|| self.lease.remaining())
    }

    /// Whether the lease has run out (never for a [`HaltKind::Primary`] guard). Pure clock
    /// arithmetic: no call to LiteFS.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt().unwrap();
    /// assert!(!guard.is_expired());
    /// clock.advance(litefs::DEFAULT_HALT_LEASE);
    /// assert!(guard.is_expired());
    /// ```
    pub fn is_expired(&self) -> bool {
        self.expires() && self.lease.is_expired()
    }

    /// `Ok(())` while the lease lasts, [`Error::HaltExpired`] once it has run out. Call it
    /// before each transaction (or `COMMIT`) made under this guard; [`HaltGuard::write`] does.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt().unwrap();
    /// assert!(guard.check_lease().is_ok());
    /// clock.advance(Duration::from_secs(30));
    /// assert!(matches!(guard.check_lease(), Err(litefs::Error::HaltExpired { .. })));
    /// ```
    pub fn check_lease(&self) -> Result<()> {
        if self.is_expired() {
            return Err(self.expired_error());
        }
        Ok(())
    }

    /// Runs a write under this guard if its lease still lasts, else refuses with
    /// [`Error::HaltExpired`] without running it. Wrap each transaction (or at least its
    /// `COMMIT`) in it.
    ///
    /// Only the lease is checked (no call to LiteFS); [`HaltGuard::is_held`] also asks LiteFS
    /// and re-reads the role.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// let db = litefs::Mount::open(dir.path())?.database("x.db")?;
    /// let mut conn = rusqlite::Connection::open(db.path())?;
    /// conn.execute_batch("CREATE TABLE t (a)")?;
    ///
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt()?;
    /// let tx = conn.transaction()?;
    /// tx.execute("INSERT INTO t VALUES (1)", [])?;
    /// guard.write(|| tx.commit())??; // lease checked, then COMMIT
    ///
    /// clock.advance(Duration::from_secs(40)); // a stalled job
    /// let refused = guard.write(|| conn.execute("INSERT INTO t VALUES (2)", []));
    /// assert!(matches!(refused, Err(litefs::Error::HaltExpired { .. })));
    /// let n: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0))?;
    /// assert_eq!(n, 1);
    /// # Ok(()) }
    /// ```
    pub fn write<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lease()?;
        Ok(f())
    }

    /// Whether this kind of guard has a lease at all: a primary's no-op HALT holds nothing.
    fn expires(&self) -> bool {
        self.kind != HaltKind::Primary
    }

    fn expired_error(&self) -> Error {
        Error::HaltExpired {
            path: self.lock_path.clone(),
            held_for: self.lease.elapsed(),
            lease: self.lease.duration(),
        }
    }

    /// Checks that writes are still allowed.
    ///
    /// First the lease: `false` once it has run out ([`HaltGuard::is_expired`]), whatever
    /// LiteFS reports, because LiteFS keeps reporting an expired remote HALT as held. Then:
    ///
    /// - [`HaltKind::Remote`]: `F_OFD_GETLK` on the halting handle, which reports whether this
    ///   node holds a HALT of the database right now. It says `false` after a release or a
    ///   transaction from another writer reached this node, but it does **not** see expiry.
    /// - [`HaltKind::Primary`]: re-reads the role; `false` once this node is no longer primary.
    /// - [`HaltKind::Local`]: queries the lock through a *separate* open file description of the
    ///   lock file, which sees this guard's lock (pid `-1`) if it is still in place; `false` if
    ///   the lock file was deleted or replaced.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let clock = litefs::ManualClock::new();
    /// let guard = db.with_clock(clock.clone()).halt().unwrap();
    /// assert!(guard.is_held().unwrap());
    /// clock.advance(Duration::from_secs(26));
    /// assert!(!guard.is_held().unwrap()); // the lock is still in place; the lease is not
    /// ```
    pub fn is_held(&self) -> Result<bool> {
        if self.is_expired() {
            return Ok(false);
        }
        #[cfg(target_os = "linux")]
        {
            let lock_err = |source| Error::Lock {
                path: self.lock_path.clone(),
                source,
            };
            match self.kind {
                HaltKind::Remote => {
                    let Some(file) = &self.file else {
                        return Ok(false);
                    };
                    let holder =
                        ofd::query(file, LockKind::Write, LockRange::HALT).map_err(lock_err)?;
                    Ok(holder.is_some_and(|h| h.kind() == LockKind::Write))
                }
                HaltKind::Primary => self.mount.is_primary(),
                HaltKind::Local => {
                    // A separate description sees our lock as a conflict; closing it does not
                    // touch our lock (OFD locks belong to their own description).
                    let probe = match std::fs::OpenOptions::new().read(true).open(&self.lock_path) {
                        Ok(f) => f,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                        Err(e) => return Err(Error::io("open", &self.lock_path, e)),
                    };
                    let holder =
                        ofd::query(&probe, LockKind::Write, LockRange::HALT).map_err(lock_err)?;
                    Ok(holder.is_some_and(|h| h.kind() == LockKind::Write && h.pid() == -1))
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Err(Error::UnsupportedPlatform { what: "HALT" })
        }
    }

    /// Releases HALT now, reporting what dropping the guard would silently ignore: a failed
    /// unlock, or a failed close (on LiteFS, the close is when the release reaches the
    /// primary).
    ///
    /// If the lease had run out, the halt is released all the same (an expired remote guard
    /// from a background thread, see [`HaltGuard`]) and the result is [`Error::HaltExpired`],
    /// so that an overlong halt is noticed.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// db.halt().unwrap().release().unwrap();
    /// ```
    pub fn release(mut self) -> Result<()> {
        if self.is_expired() {
            let error = self.expired_error();
            self.release_expired();
            return Err(error);
        }
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::IntoRawFd;
            let unlocked = ofd::unlock(&file, LockRange::HALT).map_err(|source| Error::Lock {
                path: self.lock_path.clone(),
                source,
            });
            let fd = file.into_raw_fd();
            // SAFETY: `fd` came from `into_raw_fd`, so we own it and close it exactly once.
            // A failed close is not retried: Linux releases the descriptor even then.
            let closed = if unsafe { libc::close(fd) } == -1 {
                Err(Error::io(
                    "close",
                    &self.lock_path,
                    std::io::Error::last_os_error(),
                ))
            } else {
                Ok(())
            };
            unlocked.and(closed)
        }
        #[cfg(not(target_os = "linux"))]
        {
            drop(file);
            Ok(())
        }
    }

    /// Releases an expired guard without blocking the caller. A remote release goes to a
    /// detached thread together with the process-queue permit: if LiteFS has wedged (the
    /// primary wrote after expiring the halt), that unlock blocks until LiteFS restarts, and
    /// only that thread waits. A local lock is released here; it cannot block.
    fn release_expired(&mut self) {
        let Some(file) = self.file.take() else {
            return;
        };
        if self.kind != HaltKind::Remote {
            crate::lease::unlock_and_close(file);
            return;
        }
        crate::lease::release_in_background(file, self.permit.take());
    }
}

impl Drop for HaltGuard {
    fn drop(&mut self) {
        if self.is_expired() {
            self.release_expired();
        } else if let Some(file) = self.file.take() {
            crate::lease::unlock_and_close(file);
        }
    }
}

/// Everything the lock thread needs, detached from the caller's borrow.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux can lock
pub(crate) struct Request {
    mount: Mount,
    db_path: PathBuf,
    lock_path: PathBuf,
    lease: LeaseConfig,
}

impl Request {
    pub(crate) fn new(db: &Database) -> Request {
        Request {
            mount: db.mount().clone(),
            db_path: db.path().to_owned(),
            lock_path: db.lock_path().to_owned(),
            lease: db.lease_config().clone(),
        }
    }

    /// Opens the lock file and takes the lock, blocking. Consumes the permit so that it lives
    /// exactly as long as the lock: in the guard, or until this function drops it on failure.
    pub(crate) fn acquire(self, permit: SlotPermit) -> Result<HaltGuard> {
        #[cfg(target_os = "linux")]
        {
            let file = self.open_lock_file()?;
            // Before the request: the primary's 30 s start when it grants the halt, later.
            let lease = self.lease.start();
            ofd::lock_wait(&file, LockKind::Write, LockRange::HALT).map_err(
                |source| match source {
                    ofd::LockError::NotFound => Error::DatabaseNotFound {
                        path: self.db_path.clone(),
                    },
                    source => Error::Lock {
                        path: self.lock_path.clone(),
                        source,
                    },
                },
            )?;
            let kind = if self.mount.is_fuse_mount() {
                // LiteFS reports its remote HALT to the halting handle itself; a plain file
                // system never does, hence this query only on FUSE.
                match ofd::query(&file, LockKind::Write, LockRange::HALT) {
                    Ok(Some(_)) => HaltKind::Remote,
                    Ok(None) => HaltKind::Primary,
                    Err(source) => {
                        return Err(Error::Lock {
                            path: self.lock_path,
                            source,
                        })
                    }
                }
            } else {
                HaltKind::Local
            };
            Ok(HaltGuard {
                file: Some(file),
                kind,
                lock_path: self.lock_path,
                mount: self.mount,
                lease,
                permit: Some(permit),
            })
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (self, permit);
            Err(Error::UnsupportedPlatform { what: "HALT" })
        }
    }

    #[cfg(target_os = "linux")]
    fn open_lock_file(&self) -> Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        // The database must exist: on LiteFS, opening `-lock` of a missing database with
        // O_CREAT can break file creation on the whole mount.
        match std::fs::metadata(&self.db_path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::DatabaseNotFound {
                    path: self.db_path.clone(),
                })
            }
            Err(e) => return Err(Error::io("open", &self.db_path, e)),
        }
        let mut options = std::fs::OpenOptions::new();
        // std already adds O_CLOEXEC; spelled out because an inherited copy closed by a child
        // would release the HALT.
        options.read(true).write(true).custom_flags(libc::O_CLOEXEC);
        if !self.mount.is_fuse_mount() {
            // A plain directory has no lock file until someone creates it.
            options.create(true).mode(0o644);
        }
        options.open(&self.lock_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::DatabaseNotFound {
                    path: self.db_path.clone(),
                }
            } else {
                Error::io("open", &self.lock_path, e)
            }
        })
    }
}

/// Runs `Request::acquire` on a dedicated thread and hands the result to `deliver`. If the
/// receiver behind `deliver` is gone (timed out, future dropped), the guard it could not
/// deliver is dropped there, which releases the late lock.
pub(crate) fn spawn_acquire(
    request: Request,
    permit: SlotPermit,
    deliver: impl FnOnce(Result<HaltGuard>) + Send + 'static,
) -> Result<()> {
    let lock_path = request.lock_path.clone();
    std::thread::Builder::new()
        .name("litefs-halt".into())
        .spawn(move || deliver(request.acquire(permit)))
        .map(|_| ())
        .map_err(|e| Error::io("start a lock thread for", lock_path, e))
}

pub(crate) fn acquire_blocking(db: &Database, timeout: Option<Duration>) -> Result<HaltGuard> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let slot = coordinator::slot_for(db.lock_path());
    let permit = slot.acquire_blocking(deadline).ok_or(Error::Timeout {
        phase: WaitPhase::ProcessQueue,
        after: timeout.unwrap_or_default(),
    })?;
    let (Some(timeout), Some(deadline)) = (timeout, deadline) else {
        // Unbounded: no reason for a second thread.
        return Request::new(db).acquire(permit);
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    spawn_acquire(Request::new(db), permit, move |result| {
        // Err means the caller gave up: the guard inside is dropped here, releasing the lock.
        let _ = tx.send(result);
    })?;
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(result) => result,
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Timeout {
            phase: WaitPhase::Lock,
            after: timeout,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::WorkerLost),
    }
}
