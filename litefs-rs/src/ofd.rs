//! Low-level open-file-description (OFD) byte-range locks over any file descriptor.
//!
//! LiteFS implements HALT as an OFD write lock on byte 72 of `<db>-lock`, so this module speaks
//! `F_OFD_SETLK` / `F_OFD_SETLKW` / `F_OFD_GETLK` directly (never `flock(2)`, never the classic
//! per-process `F_SETLK`). Every request is built from a zeroed `struct flock` with `l_pid = 0`
//! and `l_whence = SEEK_SET`, blocking waits are retried on `EINTR`, and errno values are mapped
//! to [`LockError`].
//!
//! OFD locks belong to the *open file description*: two `open()` calls on the same file in one
//! process conflict with each other, a lock survives until its description is unlocked or its
//! last descriptor is closed, and `F_OFD_GETLK` reports a conflicting holder with `l_pid == -1`.
//! A query made through the description that holds the lock reports no conflict.
//!
//! Linux only: on other Unix systems the functions return [`LockError::UnsupportedPlatform`],
//! and on non-Unix systems only the types exist.
//!
//! # Example
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # #[cfg(target_os = "linux")] {
//! use litefs::ofd::{self, LockKind, LockRange};
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("app.db-lock");
//! let a = std::fs::File::create(&path)?;
//! let b = std::fs::File::open(&path)?;
//!
//! ofd::try_lock(&a, LockKind::Write, LockRange::HALT)?;
//! // `b` is another open file description: it sees `a`'s lock, with pid -1.
//! let holder = ofd::query(&b, LockKind::Write, LockRange::HALT)?.expect("a holds it");
//! assert_eq!(holder.pid(), -1);
//! ofd::unlock(&a, LockRange::HALT)?;
//! assert!(ofd::query(&b, LockKind::Write, LockRange::HALT)?.is_none());
//! # }
//! # Ok(()) }
//! ```

#[cfg(unix)]
use std::os::fd::AsFd;
#[cfg(target_os = "linux")]
use std::os::fd::AsRawFd;

/// Whether a lock excludes everybody (write) or only writers (read).
///
/// LiteFS only supports [`LockKind::Write`] on the HALT byte; a read lock there fails with
/// `ENOSYS`.
///
/// ```
/// assert_ne!(litefs::ofd::LockKind::Read, litefs::ofd::LockKind::Write);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LockKind {
    /// A shared lock (`F_RDLCK`).
    Read,
    /// An exclusive lock (`F_WRLCK`).
    Write,
}

/// A byte range, relative to the start of the file (`SEEK_SET`).
///
/// ```
/// let r = litefs::ofd::LockRange::HALT;
/// assert_eq!((r.start(), r.len()), (72, 1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LockRange {
    start: i64,
    len: i64,
}

impl LockRange {
    /// The HALT byte LiteFS watches: offset 72, length 1. Any other range is `EINVAL` on LiteFS.
    pub const HALT: LockRange = LockRange { start: 72, len: 1 };

    /// A range of `len` bytes starting at `start`; `len == 0` means "to the end of the file",
    /// as in `fcntl(2)`.
    ///
    /// ```
    /// let r = litefs::ofd::LockRange::new(0, 10);
    /// assert_eq!(r.len(), 10);
    /// ```
    pub const fn new(start: i64, len: i64) -> LockRange {
        LockRange { start, len }
    }

    /// First byte of the range.
    ///
    /// ```
    /// assert_eq!(litefs::ofd::LockRange::new(5, 1).start(), 5);
    /// ```
    pub const fn start(&self) -> i64 {
        self.start
    }

    /// Length of the range in bytes (0 = to the end of the file).
    ///
    /// ```
    /// assert_eq!(litefs::ofd::LockRange::new(5, 2).len(), 2);
    /// ```
    #[allow(clippy::len_without_is_empty)] // a zero length means "to EOF", not "empty"
    pub const fn len(&self) -> i64 {
        self.len
    }
}

/// A conflicting lock reported by [`query`].
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// # use litefs::ofd::*;
/// # let dir = tempfile::tempdir().unwrap();
/// # let p = dir.path().join("f");
/// # let a = std::fs::File::create(&p).unwrap();
/// # let b = std::fs::File::open(&p).unwrap();
/// try_lock(&a, LockKind::Write, LockRange::HALT).unwrap();
/// let h = query(&b, LockKind::Write, LockRange::HALT).unwrap().unwrap();
/// assert_eq!((h.kind(), h.range(), h.pid()), (LockKind::Write, LockRange::HALT, -1));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockHolder {
    kind: LockKind,
    range: LockRange,
    pid: i32,
}

impl LockHolder {
    /// The kind of the conflicting lock.
    ///
    /// ```
    /// # fn f(h: litefs::ofd::LockHolder) { let _ = h.kind(); }
    /// ```
    pub fn kind(&self) -> LockKind {
        self.kind
    }

    /// The range of the conflicting lock as the kernel (or LiteFS) reported it.
    ///
    /// ```
    /// # fn f(h: litefs::ofd::LockHolder) { let _ = h.range(); }
    /// ```
    pub fn range(&self) -> LockRange {
        self.range
    }

    /// The holder's pid: `-1` for OFD locks (they belong to no process); a real pid only when
    /// the holder is a classic POSIX lock.
    ///
    /// ```
    /// # fn f(h: litefs::ofd::LockHolder) { let _ = h.pid(); }
    /// ```
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// What a blocking acquisition went through before it succeeded.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// # let f = tempfile::tempfile().unwrap();
/// use litefs::ofd::{lock_wait, LockKind, LockRange};
/// let acquired = lock_wait(&f, LockKind::Write, LockRange::HALT).unwrap();
/// assert_eq!(acquired.interrupted(), 0);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Acquired {
    interrupted: u32,
}

impl Acquired {
    /// How many times the wait was interrupted by a signal (`EINTR`) and transparently retried.
    ///
    /// ```
    /// assert_eq!(litefs::ofd::Acquired::default().interrupted(), 0);
    /// ```
    pub fn interrupted(&self) -> u32 {
        self.interrupted
    }
}

/// A failed lock operation, mapped from `errno`.
///
/// The meanings in the variant docs are LiteFS's (see the crate docs); on a plain file system
/// the kernel's usual meanings apply.
///
/// ```
/// use litefs::ofd::LockError;
/// let e = LockError::from_errno(libc::EIO);
/// assert_eq!(e, LockError::Io);
/// assert!(e.is_retryable());
/// assert_eq!(e.errno(), Some(libc::EIO));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// `EAGAIN`: a non-blocking request conflicts with a lock held through another open file
    /// description.
    #[error("the lock is held by another open file description (EAGAIN)")]
    WouldBlock,
    /// `ENOSYS`: the file system does not implement this request; on LiteFS only the blocking
    /// write lock on the HALT byte exists.
    #[error("lock request not supported by this file system (ENOSYS); LiteFS only supports a blocking write lock on byte 72")]
    NotSupported,
    /// `EINVAL`: bad range or command, or `l_pid != 0`.
    #[error("invalid lock request (EINVAL): wrong byte range, or l_pid != 0")]
    InvalidArgument,
    /// `ENOLCK`: on LiteFS, this handle already holds or waits for HALT.
    #[error("this handle already holds or waits for the lock (ENOLCK)")]
    AlreadyHeld,
    /// `EIO`: on LiteFS, HALT failed remotely (no primary, primary timed out, another handle on
    /// this node holds HALT, catch-up mismatch). Worth retrying after a backoff.
    #[error("I/O error while locking (EIO): on LiteFS, no primary, primary timeout, or another handle holds HALT")]
    Io,
    /// `ENOENT`: on LiteFS, the database does not exist on this node.
    #[error("the database does not exist (ENOENT)")]
    NotFound,
    /// `EBADF`: the descriptor is not open, or not open for writing for a write lock.
    #[error("bad file descriptor, or not opened for writing (EBADF)")]
    BadDescriptor,
    /// `EDEADLK`: the kernel detected a deadlock.
    #[error("deadlock detected (EDEADLK)")]
    Deadlock,
    /// `EINTR` on a non-blocking call (blocking calls retry it).
    #[error("interrupted by a signal (EINTR)")]
    Interrupted,
    /// Any other errno.
    #[error("lock operation failed with errno {0}")]
    Os(i32),
    /// OFD locks do not exist on this operating system.
    #[error("open file description locks are only available on Linux")]
    UnsupportedPlatform,
}

impl LockError {
    /// Maps an `errno` value.
    ///
    /// ```
    /// assert_eq!(litefs::ofd::LockError::from_errno(libc::ENOSYS), litefs::ofd::LockError::NotSupported);
    /// ```
    pub fn from_errno(errno: i32) -> LockError {
        match errno {
            libc::EAGAIN => LockError::WouldBlock,
            libc::ENOSYS => LockError::NotSupported,
            libc::EINVAL => LockError::InvalidArgument,
            libc::ENOLCK => LockError::AlreadyHeld,
            libc::EIO => LockError::Io,
            libc::ENOENT => LockError::NotFound,
            libc::EBADF => LockError::BadDescriptor,
            libc::EDEADLK => LockError::Deadlock,
            libc::EINTR => LockError::Interrupted,
            other => LockError::Os(other),
        }
    }

    /// The `errno` this error came from, if any.
    ///
    /// ```
    /// assert_eq!(litefs::ofd::LockError::UnsupportedPlatform.errno(), None);
    /// ```
    pub fn errno(&self) -> Option<i32> {
        Some(match self {
            LockError::WouldBlock => libc::EAGAIN,
            LockError::NotSupported => libc::ENOSYS,
            LockError::InvalidArgument => libc::EINVAL,
            LockError::AlreadyHeld => libc::ENOLCK,
            LockError::Io => libc::EIO,
            LockError::NotFound => libc::ENOENT,
            LockError::BadDescriptor => libc::EBADF,
            LockError::Deadlock => libc::EDEADLK,
            LockError::Interrupted => libc::EINTR,
            LockError::Os(e) => *e,
            LockError::UnsupportedPlatform => return None,
        })
    }

    /// Whether trying again later may succeed: a lock held elsewhere, a remote LiteFS failure
    /// (`EIO`, e.g. during failover), a signal or a deadlock.
    ///
    /// ```
    /// assert!(!litefs::ofd::LockError::InvalidArgument.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LockError::WouldBlock | LockError::Io | LockError::Interrupted | LockError::Deadlock
        )
    }
}

/// The three OFD `fcntl` commands, for [`fcntl_raw`].
///
/// ```
/// assert_eq!(litefs::ofd::OfdCommand::SetLockWait.raw(), 38);
/// ```
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OfdCommand {
    /// `F_OFD_GETLK` (36): report a conflicting lock.
    GetLock,
    /// `F_OFD_SETLK` (37): set or clear a lock without waiting.
    SetLock,
    /// `F_OFD_SETLKW` (38): set a lock, waiting for conflicting locks to go away.
    SetLockWait,
}

#[cfg(target_os = "linux")]
impl OfdCommand {
    /// The `fcntl` command number (the same on x86_64 and aarch64).
    ///
    /// ```
    /// assert_eq!(litefs::ofd::OfdCommand::GetLock.raw(), libc::F_OFD_GETLK);
    /// ```
    pub fn raw(self) -> libc::c_int {
        match self {
            OfdCommand::GetLock => libc::F_OFD_GETLK,
            OfdCommand::SetLock => libc::F_OFD_SETLK,
            OfdCommand::SetLockWait => libc::F_OFD_SETLKW,
        }
    }
}

/// Builds the request LiteFS and the kernel expect: every field zeroed first (so padding and
/// `l_pid` are 0 — a non-zero `l_pid` is `EINVAL`), then type, `SEEK_SET`, start and length.
#[cfg(target_os = "linux")]
fn flock_for(l_type: libc::c_int, range: LockRange) -> libc::flock {
    // SAFETY: `flock` is a plain C struct of integers, for which all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = l_type as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = range.start as libc::off_t;
    fl.l_len = range.len as libc::off_t;
    fl
}

#[cfg(target_os = "linux")]
fn l_type(kind: LockKind) -> libc::c_int {
    match kind {
        LockKind::Read => libc::F_RDLCK,
        LockKind::Write => libc::F_WRLCK,
    }
}

/// Issues one OFD `fcntl` with a caller-built `struct flock`, exactly as given.
///
/// This is the escape hatch for protocol experiments and tests (for example checking that a
/// non-zero `l_pid` is refused); prefer [`try_lock`], [`lock_wait`], [`unlock`] and [`query`],
/// which build the request correctly. [`OfdCommand::SetLockWait`] is retried on `EINTR`; the
/// returned count says how often.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use litefs::ofd::{fcntl_raw, LockError, OfdCommand};
/// let f = tempfile::tempfile().unwrap();
/// let mut fl: libc::flock = unsafe { std::mem::zeroed() };
/// fl.l_type = libc::F_WRLCK as _;
/// fl.l_start = 72;
/// fl.l_len = 1;
/// fl.l_pid = 1234; // OFD requests must carry l_pid == 0
/// assert_eq!(fcntl_raw(&f, OfdCommand::SetLock, &mut fl), Err(LockError::InvalidArgument));
/// # }
/// ```
#[cfg(target_os = "linux")]
pub fn fcntl_raw(
    fd: impl AsFd,
    cmd: OfdCommand,
    flock: &mut libc::flock,
) -> Result<u32, LockError> {
    let raw = fd.as_fd().as_raw_fd();
    let mut interrupted = 0u32;
    loop {
        // SAFETY: `raw` is a live descriptor borrowed for the duration of the call, and `flock`
        // is a valid, exclusively borrowed `struct flock` for the kernel to read and update.
        let rc = unsafe { libc::fcntl(raw, cmd.raw(), flock as *mut libc::flock) };
        if rc != -1 {
            return Ok(interrupted);
        }
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // Only the blocking command is restarted: a signal must not turn a waiting HALT into a
        // failure, whereas a non-blocking call reports EINTR so its caller decides.
        if errno == libc::EINTR && cmd == OfdCommand::SetLockWait {
            interrupted = interrupted.saturating_add(1);
            continue;
        }
        return Err(LockError::from_errno(errno));
    }
}

/// Takes a lock without waiting (`F_OFD_SETLK`); [`LockError::WouldBlock`] if it conflicts.
///
/// On LiteFS this always fails with [`LockError::NotSupported`]: HALT is blocking only.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use litefs::ofd::{try_lock, LockKind, LockRange};
/// let f = tempfile::tempfile().unwrap();
/// try_lock(&f, LockKind::Write, LockRange::new(0, 1)).unwrap();
/// # }
/// ```
#[cfg(unix)] // descriptors as `AsFd` only exist on Unix
pub fn try_lock(fd: impl AsFd, kind: LockKind, range: LockRange) -> Result<(), LockError> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = flock_for(l_type(kind), range);
        fcntl_raw(fd, OfdCommand::SetLock, &mut fl).map(|_| ())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd.as_fd(), kind, range);
        Err(LockError::UnsupportedPlatform)
    }
}

/// Takes a lock, waiting as long as it takes (`F_OFD_SETLKW`), retrying on `EINTR`.
///
/// Nothing bounds the wait on a plain file; on LiteFS the daemon gives up after 10 s with
/// [`LockError::Io`]. For a bounded wait use [`crate::Database::halt_timeout`].
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use litefs::ofd::{lock_wait, LockKind, LockRange};
/// let f = tempfile::tempfile().unwrap();
/// lock_wait(&f, LockKind::Write, LockRange::HALT).unwrap();
/// # }
/// ```
#[cfg(unix)] // descriptors as `AsFd` only exist on Unix
pub fn lock_wait(fd: impl AsFd, kind: LockKind, range: LockRange) -> Result<Acquired, LockError> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = flock_for(l_type(kind), range);
        fcntl_raw(fd, OfdCommand::SetLockWait, &mut fl).map(|interrupted| Acquired { interrupted })
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd.as_fd(), kind, range);
        Err(LockError::UnsupportedPlatform)
    }
}

/// Releases a lock held through this open file description (`F_UNLCK`).
///
/// Unlocking a range that is not locked succeeds.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use litefs::ofd::{unlock, LockRange};
/// let f = tempfile::tempfile().unwrap();
/// unlock(&f, LockRange::HALT).unwrap();
/// # }
/// ```
#[cfg(unix)] // descriptors as `AsFd` only exist on Unix
pub fn unlock(fd: impl AsFd, range: LockRange) -> Result<(), LockError> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = flock_for(libc::F_UNLCK, range);
        fcntl_raw(fd, OfdCommand::SetLock, &mut fl).map(|_| ())
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd.as_fd(), range);
        Err(LockError::UnsupportedPlatform)
    }
}

/// Asks whether a lock of `kind` on `range` would conflict (`F_OFD_GETLK`), returning the
/// conflicting holder, or `None` if the lock could be taken.
///
/// A lock held through the *same* open file description never conflicts with itself, so on a
/// plain file the holder's own query returns `None`. LiteFS differs: while this node holds a
/// remote HALT, a query through the halting handle reports `F_WRLCK` with pid `-1`.
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use litefs::ofd::{query, LockKind, LockRange};
/// let f = tempfile::tempfile().unwrap();
/// assert!(query(&f, LockKind::Write, LockRange::HALT).unwrap().is_none());
/// # }
/// ```
#[cfg(unix)] // descriptors as `AsFd` only exist on Unix
pub fn query(
    fd: impl AsFd,
    kind: LockKind,
    range: LockRange,
) -> Result<Option<LockHolder>, LockError> {
    #[cfg(target_os = "linux")]
    {
        let mut fl = flock_for(l_type(kind), range);
        fcntl_raw(fd, OfdCommand::GetLock, &mut fl)?;
        let kind = match fl.l_type as libc::c_int {
            libc::F_UNLCK => return Ok(None),
            libc::F_RDLCK => LockKind::Read,
            _ => LockKind::Write,
        };
        Ok(Some(LockHolder {
            kind,
            range: LockRange::new(fl.l_start as i64, fl.l_len as i64),
            pid: fl.l_pid,
        }))
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (fd.as_fd(), kind, range);
        Err(LockError::UnsupportedPlatform)
    }
}
