//! Why a manifest operation failed: [`ManifestError`], and the [`Op`] that failed.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use thiserror::Error;

use super::{LitefsError, APPLICATION_ID};
// Only named by doc links.
#[cfg(doc)]
use super::{Manifest, ManifestOptions, ManifestStats, PageRow, SCHEMA_VERSION};

/// What the manifest was doing when a statement failed: the `op` of [`ManifestError::Sqlite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Starting a write transaction (`BEGIN IMMEDIATE`).
    Begin,
    /// Checking whether a batch of upserts would change anything.
    Check,
    /// One upsert inside a write transaction.
    Upsert,
    /// One remove inside a write transaction.
    Remove,
    /// A clear inside a write transaction.
    Clear,
    /// [`Manifest::remove_page`], [`Manifest::remove_tag`] or [`Manifest::purge`] inside a write
    /// transaction; a failed purge leaves neither its rows nor its tombstone changed.
    Purge,
    /// [`Manifest::add_tombstone`] inside a write transaction.
    AddTombstone,
    /// [`Manifest::expire_tombstones`] inside a write transaction.
    ExpireTombstones,
    /// [`Manifest::tombstones_since`].
    Tombstones,
    /// Committing a write transaction; every write in the batch fails with it.
    Commit,
    /// [`Manifest::list`].
    List,
    /// [`Manifest::count`].
    Count,
    /// [`Manifest::data_version`].
    DataVersion,
}

impl Op {
    /// Stable name for logs and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Begin => "begin",
            Op::Check => "check",
            Op::Upsert => "upsert",
            Op::Remove => "remove",
            Op::Clear => "clear",
            Op::Purge => "purge",
            Op::AddTombstone => "add_tombstone",
            Op::ExpireTombstones => "expire_tombstones",
            Op::Tombstones => "tombstones",
            Op::Commit => "commit",
            Op::List => "list",
            Op::Count => "count",
            Op::DataVersion => "data_version",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a manifest operation failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The file could not be opened or configured (this includes "file is not a database").
    #[error("cannot open manifest {}", path.display())]
    Open {
        /// The manifest path.
        path: PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file is a SQLite database but not a caje manifest: it carries another
    /// `application_id`, or none (`found` = 0) while already holding other tables.
    #[error("{} is not a caje manifest (application_id {found:#x}, expected {:#x})", path.display(), APPLICATION_ID)]
    NotAManifest {
        /// The manifest path.
        path: PathBuf,
        /// The `application_id` found in the file.
        found: i32,
    },
    /// A migration failed; its transaction was rolled back, so the file is unchanged.
    #[error("cannot migrate manifest {} to schema version {version}", path.display())]
    Migrate {
        /// The manifest path.
        path: PathBuf,
        /// The schema version being migrated to.
        version: i32,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The file was written by a newer caje whose schema this one does not know.
    #[error("manifest {} has schema version {found}, newer than {supported} known to this caje", path.display())]
    TooNew {
        /// The manifest path.
        path: PathBuf,
        /// `user_version` found in the file.
        found: i32,
        /// The newest version this code knows ([`SCHEMA_VERSION`]).
        supported: i32,
    },
    /// The owner thread could not be started.
    #[error("cannot start the manifest owner thread")]
    Spawn(#[source] std::io::Error),
    /// A statement failed after the manifest was open. Shared (`Arc`) because one failed commit
    /// is the answer to every write in its batch.
    #[error("manifest {op} failed")]
    Sqlite {
        /// What was being done.
        op: Op,
        /// What SQLite said.
        #[source]
        source: Arc<rusqlite::Error>,
    },
    /// [`PageRow::size`] exceeds SQLite's signed 64-bit INTEGER.
    #[error("page size {size} does not fit the manifest")]
    SizeOutOfRange {
        /// The rejected size.
        size: u64,
    },
    /// A purge tag is empty or contains whitespace: it could not be stored as one token of the
    /// canonical tag set (see the module docs), nor matched exactly.
    #[error("invalid purge tag {tag:?}: empty or contains whitespace")]
    InvalidTag {
        /// The rejected tag.
        tag: String,
    },
    /// The owner thread is gone (it panicked), so the command was not carried out.
    #[error("the manifest owner thread has stopped")]
    Closed,
    /// [`ManifestOptions::max_queue`] writes are already waiting (the manifest cannot be written
    /// for now): this one was refused and counted in [`ManifestStats::overflow`].
    #[error("the manifest write queue is full; the write was refused")]
    QueueFull,
    /// `litefs = "on"` and the database's directory cannot be opened as a LiteFS mount, or
    /// LiteFS mode and the file name is not a LiteFS database name.
    #[error("cannot use manifest {} as a LiteFS database", path.display())]
    Litefs {
        /// The manifest path.
        path: PathBuf,
        /// What litefs-rs said.
        #[source]
        source: LitefsError,
    },
    /// Opening needed a write (a new file, a migration, switching to WAL) on a LiteFS replica or
    /// with no primary known, and HALT could not be taken.
    #[error("cannot take the LiteFS HALT lock to initialise or migrate manifest {} on this replica", path.display())]
    Halt {
        /// The manifest path.
        path: PathBuf,
        /// What litefs-rs said.
        #[source]
        source: LitefsError,
    },
}

impl ManifestError {
    /// Opening or migrating failed because another connection held the lock
    /// (`SQLITE_BUSY`): worth trying again.
    pub(super) fn is_busy(&self) -> bool {
        let source = match self {
            ManifestError::Open { source, .. } | ManifestError::Migrate { source, .. } => source,
            _ => return false,
        };
        source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
    }

    /// Opening failed in a way a LiteFS mount answers for a while and then stops answering:
    /// worth trying again (for a bounded time) on a LiteFS mount, not on a plain one, where
    /// the same codes mean a wrong path or a broken disk.
    ///
    /// Seen on the real cluster (`docs/cluster.md`): while a HALT is stuck on the primary
    /// (its holder was killed during the acquisition; LiteFS keeps it 30-35 s) the primary's
    /// writers and a migration fail with `SQLITE_PROTOCOL` after 10 s, a replica answers
    /// `SQLITE_CANTOPEN` or `SQLITE_PROTOCOL`, and HALT itself fails (`EIO`, or caje's own
    /// `halt_timeout`).
    pub(super) fn is_transient_open(&self) -> bool {
        use rusqlite::ErrorCode as C;
        let source = match self {
            ManifestError::Halt { .. } => return true,
            ManifestError::Open { source, .. } | ManifestError::Migrate { source, .. } => source,
            _ => return false,
        };
        matches!(
            source.sqlite_error_code(),
            Some(
                C::DatabaseBusy
                    | C::DatabaseLocked
                    | C::CannotOpen
                    | C::FileLockingProtocolFailed
                    | C::SystemIoFailure
            )
        )
    }

    /// This error and its causes, `: `-separated, for a log line.
    pub(super) fn with_causes(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
        text
    }

    pub(super) fn sqlite(op: Op, source: rusqlite::Error) -> Self {
        ManifestError::Sqlite {
            op,
            source: Arc::new(source),
        }
    }
}
