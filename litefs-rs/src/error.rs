//! The crate's error types.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::ofd::LockError;
use crate::pos::Txid;

/// Shorthand for `Result<T, litefs::Error>`.
///
/// ```
/// fn txid(db: &litefs::Database) -> litefs::Result<litefs::Txid> { db.txid() }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in this crate.
///
/// Match on variants for decisions; [`Error::is_retryable`] tells transient failures (a
/// remote HALT failure during failover, a timeout, a dropped HTTP connection) from permanent
/// ones (a missing database, a malformed file).
///
/// ```
/// use litefs::{Error, Mount};
/// let dir = tempfile::tempdir().unwrap();
/// let db = Mount::open(dir.path()).unwrap().database("missing.db").unwrap();
/// match db.halt() {
///     Err(Error::DatabaseNotFound { path }) => assert!(path.ends_with("missing.db")),
///     other => panic!("unexpected: {other:?}"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file-system operation on a LiteFS file failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was attempted ("open", "read", "list").
        op: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The database file does not exist on this node; HALT needs it (LiteFS must never be asked
    /// to create `<db>-lock` for a missing database).
    #[error("database {} does not exist", path.display())]
    DatabaseNotFound {
        /// Path of the missing database.
        path: PathBuf,
    },
    /// A database name that cannot live in a LiteFS mount (empty, a path, or a dot file).
    #[error("invalid database name {name:?}: expected a plain file name")]
    InvalidDatabaseName {
        /// The rejected name.
        name: String,
    },
    /// `<db>-pos` does not exist: not a LiteFS mount, or the database is not known to LiteFS.
    #[error("{} does not exist: no LiteFS position (not a LiteFS mount, or unknown database)", path.display())]
    PosUnavailable {
        /// Path of the missing `-pos` file.
        path: PathBuf,
    },
    /// The HALT lock operation failed.
    #[error("HALT on {}: {source}", path.display())]
    Lock {
        /// The `<db>-lock` file.
        path: PathBuf,
        /// The mapped errno.
        #[source]
        source: LockError,
    },
    /// A write was refused because the [`crate::HaltGuard`] outlived its lease
    /// ([`crate::DEFAULT_HALT_LEASE`] unless configured): LiteFS may already have expired the
    /// HALT without telling this node, so a commit could land while the primary writes too.
    /// Drop the guard, take a new HALT and redo the transaction.
    #[error("HALT on {} held for {held_for:?}, past its lease of {lease:?}: LiteFS may have expired it; take a new HALT", path.display())]
    HaltExpired {
        /// The `<db>-lock` file.
        path: PathBuf,
        /// How long the guard had been held (since the lock was requested).
        held_for: Duration,
        /// The lease it outlived.
        lease: Duration,
    },
    /// A wait exceeded its deadline.
    #[error("timed out after {after:?} {phase}")]
    Timeout {
        /// What was being waited for.
        phase: WaitPhase,
        /// The timeout that expired.
        after: Duration,
    },
    /// [`crate::Database::wait_for_txid`] gave up before the database reached the TXID.
    #[error("database did not reach TXID {wanted} within {after:?} (at {current})")]
    TxidTimeout {
        /// The TXID waited for.
        wanted: Txid,
        /// The last TXID seen.
        current: Txid,
        /// The timeout that expired.
        after: Duration,
    },
    /// A LiteFS file or API response did not have the documented format.
    #[error(transparent)]
    Parse(#[from] ParseError),
    /// A background thread or blocking task (a HALT lock call, a `-pos` read) ended without
    /// reporting a result: it panicked.
    #[error("a background thread or task ended without a result")]
    WorkerLost,
    /// The operation needs Linux (OFD locks, `/proc/self/mountinfo`).
    #[error("{what} is only supported on Linux")]
    UnsupportedPlatform {
        /// The unsupported operation.
        what: &'static str,
    },
    /// The LiteFS HTTP API failed.
    #[cfg(feature = "http")]
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
}

impl Error {
    /// Whether the same operation may succeed if tried again later.
    ///
    /// ```
    /// use litefs::{Error, WaitPhase};
    /// let e = Error::Timeout { phase: WaitPhase::Lock, after: std::time::Duration::from_secs(1) };
    /// assert!(e.is_retryable());
    /// ```
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Lock { source, .. } => source.is_retryable(),
            Error::Timeout { .. } | Error::TxidTimeout { .. } => true,
            // With a fresh HALT the same write can succeed.
            Error::HaltExpired { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            ),
            #[cfg(feature = "http")]
            Error::Http(e) => e.is_retryable(),
            _ => false,
        }
    }

    /// Whether this is a timeout (of the process queue, the lock, or a TXID wait).
    ///
    /// ```
    /// assert!(!litefs::Error::WorkerLost.is_timeout());
    /// ```
    pub fn is_timeout(&self) -> bool {
        match self {
            Error::Timeout { .. } | Error::TxidTimeout { .. } => true,
            #[cfg(feature = "http")]
            Error::Http(e) => e.is_timeout(),
            _ => false,
        }
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// What a [`Error::Timeout`] was waiting for.
///
/// ```
/// assert_eq!(litefs::WaitPhase::Lock.to_string(), "waiting for the HALT lock");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WaitPhase {
    /// Another HALT of the same database in this process (halts are serialised per process).
    ProcessQueue,
    /// The HALT lock itself (the primary, or another process holding the lock).
    Lock,
}

impl fmt::Display for WaitPhase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WaitPhase::ProcessQueue => "waiting for another HALT of this database in this process",
            WaitPhase::Lock => "waiting for the HALT lock",
        })
    }
}

/// A LiteFS file or message that does not have the documented format.
///
/// ```
/// let e = "nope".parse::<litefs::Pos>().unwrap_err();
/// assert_eq!(e.what(), "-pos");
/// assert_eq!(e.input(), "nope");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {input:?}: {reason}")]
pub struct ParseError {
    what: &'static str,
    input: String,
    reason: String,
}

impl ParseError {
    pub(crate) fn new(what: &'static str, input: &str, reason: impl Into<String>) -> ParseError {
        // Keep errors small even if a file or line is huge.
        let input: String = input.chars().take(200).collect();
        ParseError {
            what,
            input,
            reason: reason.into(),
        }
    }

    pub(crate) fn with_input(mut self, input: &str) -> ParseError {
        self.input = input.chars().take(200).collect();
        self
    }

    /// Which format failed: `"-pos"`, `".lag"`, `"TXID"`, `"cookie"`, `"event"`, …
    ///
    /// ```
    /// assert_eq!("x".parse::<litefs::Lag>().unwrap_err().what(), ".lag");
    /// ```
    pub fn what(&self) -> &'static str {
        self.what
    }

    /// The offending input (truncated to 200 characters).
    ///
    /// ```
    /// assert_eq!("x".parse::<litefs::Lag>().unwrap_err().input(), "x");
    /// ```
    pub fn input(&self) -> &str {
        &self.input
    }

    /// Why it was rejected.
    ///
    /// ```
    /// assert!(!"x".parse::<litefs::Lag>().unwrap_err().reason().is_empty());
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}
