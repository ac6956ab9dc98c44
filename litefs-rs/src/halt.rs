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

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::coordinator::{self, SlotPermit};
use crate::database::Database;
use crate::error::{Error, Result, WaitPhase};
use crate::mount::Mount;
#[cfg(target_os = "linux")]
use crate::ofd::{self, LockKind, LockRange};

/// How long LiteFS keeps a remote HALT before expiring it (checked every 5 s, so expiry
/// happens between 30 and 35 s after acquisition). Not configurable.
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
    acquired_at: Instant,
    /// Keeps other HALTs of this database in this process waiting; dropped after the file
    /// (field order), so the next one starts only once this lock is gone.
    _permit: SlotPermit,
}

impl fmt::Debug for HaltGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Deliberately no descriptor number: nobody should be tempted to use it.
        f.debug_struct("HaltGuard")
            .field("kind", &self.kind)
            .field("lock_path", &self.lock_path)
            .field("held_for", &self.acquired_at.elapsed())
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

    /// How long the guard has been held.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// assert!(db.halt().unwrap().held_for() < std::time::Duration::from_secs(5));
    /// ```
    pub fn held_for(&self) -> Duration {
        self.acquired_at.elapsed()
    }

    /// For a remote HALT, the time left before LiteFS may expire it (a lower bound, see
    /// [`HALT_LIFETIME`]); `None` for kinds that do not expire.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// assert_eq!(db.halt().unwrap().remaining_lifetime(), None);
    /// ```
    pub fn remaining_lifetime(&self) -> Option<Duration> {
        self.kind
            .is_remote()
            .then(|| HALT_LIFETIME.saturating_sub(self.held_for()))
    }

    /// Checks that writes are still allowed.
    ///
    /// - [`HaltKind::Remote`]: `F_OFD_GETLK` on the halting handle; LiteFS stops reporting
    ///   `F_WRLCK` once the HALT expired or the primary changed.
    /// - [`HaltKind::Primary`]: re-reads the role; `false` once this node is no longer primary.
    /// - [`HaltKind::Local`]: queries the lock through a *separate* open file description of the
    ///   lock file, which sees this guard's lock (pid `-1`) if it is still in place; `false` if
    ///   the lock file was deleted or replaced.
    ///
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt().unwrap();
    /// assert!(guard.is_held().unwrap());
    /// ```
    pub fn is_held(&self) -> Result<bool> {
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
    /// ```
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// # std::fs::write(db.path(), b"").unwrap();
    /// db.halt().unwrap().release().unwrap();
    /// ```
    pub fn release(mut self) -> Result<()> {
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
}

impl Drop for HaltGuard {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            // Unlock explicitly before closing so the release does not depend on close
            // semantics; errors cannot be reported from drop, and the close releases anyway.
            #[cfg(target_os = "linux")]
            let _ = ofd::unlock(&file, LockRange::HALT);
            drop(file);
        }
    }
}

/// When and how often [`Database::halt_with_retry`] retries.
///
/// Default: 4 attempts, backoff 200 ms doubling to at most 2 s, each attempt bounded to 12 s
/// (LiteFS itself gives up after 10 s, so its `EIO` normally arrives first).
///
/// ```
/// use std::time::Duration;
/// let p = litefs::RetryPolicy::new(3).with_backoff(Duration::from_millis(100), Duration::from_millis(250));
/// assert_eq!(p.backoff(1), Duration::from_millis(100));
/// assert_eq!(p.backoff(2), Duration::from_millis(200));
/// assert_eq!(p.backoff(3), Duration::from_millis(250));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    initial_backoff: Duration,
    max_backoff: Duration,
    attempt_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Some(HALT_ACQUIRE_LIMIT + Duration::from_secs(2)),
        }
    }
}

impl RetryPolicy {
    /// The default policy with `max_attempts` attempts in total (at least 1).
    ///
    /// ```
    /// assert_eq!(litefs::RetryPolicy::new(0).max_attempts(), 1);
    /// ```
    pub fn new(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            ..RetryPolicy::default()
        }
    }

    /// Sets the first pause and the cap of the doubling backoff.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::new(2).with_backoff(Duration::ZERO, Duration::ZERO);
    /// assert_eq!(p.backoff(5), Duration::ZERO);
    /// ```
    pub fn with_backoff(mut self, initial: Duration, max: Duration) -> RetryPolicy {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Bounds each attempt (`None`: wait as long as LiteFS does).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::new(2).with_attempt_timeout(Some(Duration::from_secs(1)));
    /// assert_eq!(p.attempt_timeout(), Some(Duration::from_secs(1)));
    /// ```
    pub fn with_attempt_timeout(mut self, timeout: Option<Duration>) -> RetryPolicy {
        self.attempt_timeout = timeout;
        self
    }

    /// Total number of attempts.
    ///
    /// ```
    /// assert_eq!(litefs::RetryPolicy::default().max_attempts(), 4);
    /// ```
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The per-attempt timeout.
    ///
    /// ```
    /// assert!(litefs::RetryPolicy::default().attempt_timeout().is_some());
    /// ```
    pub fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The pause before retry number `retry` (1-based): `initial × 2^(retry−1)`, capped.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let p = litefs::RetryPolicy::default();
    /// assert_eq!(p.backoff(1), Duration::from_millis(200));
    /// assert_eq!(p.backoff(30), Duration::from_secs(2));
    /// ```
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 1u32
            .checked_shl(retry.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Everything the lock thread needs, detached from the caller's borrow.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // only Linux can lock
pub(crate) struct Request {
    mount: Mount,
    db_path: PathBuf,
    lock_path: PathBuf,
}

impl Request {
    pub(crate) fn new(db: &Database) -> Request {
        Request {
            mount: db.mount().clone(),
            db_path: db.path().to_owned(),
            lock_path: db.lock_path().to_owned(),
        }
    }

    /// Opens the lock file and takes the lock, blocking. Consumes the permit so that it lives
    /// exactly as long as the lock: in the guard, or until this function drops it on failure.
    pub(crate) fn acquire(self, permit: SlotPermit) -> Result<HaltGuard> {
        #[cfg(target_os = "linux")]
        {
            let file = self.open_lock_file()?;
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
                acquired_at: Instant::now(),
                _permit: permit,
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
