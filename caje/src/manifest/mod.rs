//! The manifest: one SQLite row per cached page.
//!
//! Cached bodies live on local disk; the manifest records *which* pages are cached, so that a
//! restarted node, an admin listing or (through LiteFS replication) another node can know what
//! exists without walking the cache directory. Several caje processes may share one file: locally
//! they open the same path, in production LiteFS replicates it to every node.
//!
//! # Layout
//! - [`Manifest`] is a cheap-clone handle. `rusqlite::Connection` is blocking, so it never touches
//!   the async runtime: it lives on one owner thread (`caje-manifest`), and the handle sends it
//!   commands over a channel and awaits the reply on a oneshot.
//! - Reads run as single statements outside any write transaction, so no read transaction is
//!   held open across a channel wait (a long reader would stop WAL checkpoints for every process)
//!   or across a HALT acquisition. They see committed rows, not writes still queued.
//!
//! # Writes: queued, batched, retried
//! - Every write (upsert, remove, purge, tombstones, clear) joins the owner thread's queue and is
//!   answered once its batch commits. A batch is flushed when its oldest write has waited
//!   [`ManifestOptions::flush_interval`], or at once when [`ManifestOptions::max_batch`] writes
//!   wait, in one transaction opened by `Owner::transaction`: after `open`, the only place that
//!   writes. A burst of cache fills costs one commit (and one HALT), not one per page.
//! - A flush that fails as a whole (HALT refused or timed out, `SQLITE_BUSY` beyond the busy
//!   timeout, an I/O error, a read-only file) keeps every write of its batch queued and is
//!   retried with capped exponential backoff; callers simply wait longer (in caje they are
//!   background tasks, never client requests). Reads are answered between attempts. Only an
//!   error of one write (a constraint) fails that write alone; if it aborted the whole
//!   transaction, the batch is replayed one write per transaction to single it out.
//! - The queue is bounded ([`ManifestOptions::max_queue`]): beyond it a new write fails at once
//!   with [`ManifestError::QueueFull`] and is counted in [`ManifestStats::overflow`]. A queued
//!   write is never dropped while the process lives (the owner thread keeps retrying even after
//!   the last handle is gone).
//! - An upsert identical to its stored row is answered without any write (or HALT).
//!
//! # LiteFS
//! [`LitefsMode`] decides whether the manifest is written the LiteFS way: `on` treats the
//! database's directory as a LiteFS mount even if it is a plain one (tests, local clusters
//! simulated with `.primary` files), `auto` (the default) only when it really is a LiteFS FUSE
//! mount, `off` never. In LiteFS mode the role is re-read before every flush (so `.primary`
//! appearing or disappearing is picked up): on a replica, or when no primary is known, HALT is
//! taken *before* `BEGIN IMMEDIATE` and released after the commit or rollback; on the primary
//! the batch is written directly. Opening a manifest that needs a write (a new file, a
//! migration) on a replica takes HALT too, or fails with [`ManifestError::Halt`]. Outside LiteFS
//! mode writes rely on SQLite's own locking, so several local processes can share one file.
//!
//! # Vary encoding
//! A page's identity includes the request headers its response's `Vary` names. In [`PageRow`]
//! they are `(lower-case name, value)` pairs; a header named by `Vary` but absent from the
//! request has the value [`VARY_ABSENT`] (a lone NUL, which RFC 9110 §5.5 forbids in a field
//! value, so it cannot collide with a real one). In the database the pairs are stored in the
//! `vary` TEXT column as compact JSON, sorted by name then value, with `null` for an absent
//! header: `[["accept-encoding","gzip"],["x-tenant",null]]`, and `[]` when there is no `Vary`.
//! That text is part of the `UNIQUE` key, so it must be canonical: the manifest itself
//! lower-cases names and sorts pairs before storing, and [`Manifest::list`] returns that form.
//!
//! # Purge tags
//! [`PageRow::tags`] are the page's purge tags (its response's `Surrogate-Key`): case-sensitive
//! tokens without whitespace. The `tags` column stores the set as one space-separated string,
//! sorted, deduplicated, with a space before and after every tag, `' a b c '`, and `''` for none.
//! Then "carries tag `t`" is `instr(tags, ' t ') > 0`: exact (`a` never matches `ab`), needs no
//! index table, and has no wildcard characters to escape (unlike `LIKE`).
//!
//! # Purges and tombstones
//! [`Manifest::purge`] removes (or, when soft, only selects) the rows of a [`Purge`] target and
//! records a [`Tombstone`] for it in the same transaction, so that other nodes, reading
//! [`Manifest::tombstones_since`] from the replicated file, learn of every purge whose rows
//! vanished. Tombstone ids only grow (`AUTOINCREMENT`), even after
//! [`Manifest::expire_tombstones`] deleted the newest ones, so "every id above the last one I
//! applied" is a sound cursor.
//!
//! # Schema
//! Versioned by `PRAGMA user_version` with the append-only [`MIGRATIONS`] list; the file is
//! marked with `PRAGMA application_id` = [`APPLICATION_ID`] so that a random SQLite file is never
//! adopted (and silently modified) as a manifest.

use std::collections::VecDeque;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use litefs::{HaltGuard, Role};
use rusqlite::{params, params_from_iter, Connection, Transaction, TransactionBehavior};
use serde::Deserialize;
use thiserror::Error;
use tokio::sync::oneshot;

/// `PRAGMA application_id` of a caje manifest: the ASCII bytes `caje`.
pub const APPLICATION_ID: i32 = 0x6361_6a65;

/// The value recorded in [`PageRow::vary`] for a header that `Vary` names but the request lacks.
///
/// It differs from the empty string, which is a header sent with an empty value.
pub const VARY_ABSENT: &str = "\0";

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
];

/// Other processes hold the write lock only for one short batch, so waiting this long for it
/// should never time out in practice; SQLITE_BUSY surfacing would mean something is stuck.
/// Other processes hold the write lock only for one short batch, and a primary's writers wait
/// while a replica holds HALT, so waiting this long for the lock should never time out in
/// practice; SQLITE_BUSY surfacing would mean something is stuck (the flush is then retried).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// First pause before a failed flush is retried; it doubles up to
/// [`ManifestOptions::retry_max_backoff`].
const RETRY_FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// A failing flush or a full queue is logged at most this often (with the number of events not
/// logged), so that an outage of the primary does not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// While a batch is replayed one write at a time under a remote HALT, the replay stops when
/// less than this is left of the HALT's lifetime; the rest waits for the next flush and HALT.
const HALT_MARGIN: Duration = Duration::from_secs(5);

/// Whether the manifest is written the LiteFS way; see the module docs. Configured as
/// `litefs = "off" | "auto" | "on"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
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

/// How [`Manifest::open_with`] opens and writes the manifest. `Default` gives the values below.
#[derive(Clone)]
pub struct ManifestOptions {
    /// LiteFS detection. Default [`LitefsMode::Auto`].
    pub litefs: LitefsMode,
    /// Longest a write waits for others to share its transaction. Default 100 ms. Zero writes as
    /// soon as the owner thread is free, batching only what has already arrived.
    pub flush_interval: Duration,
    /// Most writes in one transaction; a full batch is flushed without waiting. Default 512
    /// (at least 1).
    pub max_batch: usize,
    /// Most writes waiting (queued, or in a batch being written) before a new one fails with
    /// [`ManifestError::QueueFull`]. Default 100,000 (at least 1).
    pub max_queue: usize,
    /// Longest wait for HALT before a flush counts as failed and is retried later. Default 10 s,
    /// LiteFS's own acquisition limit. The owner thread (reads included) waits this long at
    /// most per attempt.
    pub halt_timeout: Duration,
    /// Cap of the backoff between attempts of a failing flush (which starts at 100 ms and
    /// doubles). Default 5 s.
    pub retry_max_backoff: Duration,
    /// Test hook, called inside every write transaction after its writes and before `COMMIT`
    /// (on the owner thread, so it must not call the manifest).
    #[doc(hidden)]
    pub on_flush: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            litefs: LitefsMode::Auto,
            flush_interval: Duration::from_millis(100),
            max_batch: 512,
            max_queue: 100_000,
            halt_timeout: Duration::from_secs(10),
            retry_max_backoff: Duration::from_secs(5),
            on_flush: None,
        }
    }
}

impl fmt::Debug for ManifestOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestOptions")
            .field("litefs", &self.litefs)
            .field("flush_interval", &self.flush_interval)
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .field("halt_timeout", &self.halt_timeout)
            .field("retry_max_backoff", &self.retry_max_backoff)
            .field("on_flush", &self.on_flush.as_ref().map(|_| "Fn"))
            .finish()
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

/// One cached page as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRow {
    /// Lower-case `host[:port]` the client asked for.
    pub host: String,
    /// Request method, e.g. `"GET"`.
    pub method: String,
    /// Path and query as requested, e.g. `"/gen/a?x=1"`.
    pub path: String,
    /// Request headers named by the response's `Vary`, as `(lower-case name, value)` sorted by
    /// name; [`VARY_ABSENT`] as the value of a header the request did not send. Empty without
    /// `Vary`. See the module docs for how it is stored.
    pub vary: Vec<(String, String)>,
    /// Response status code.
    pub status: u16,
    /// When the response was stored, in unix seconds.
    pub stored_at: i64,
    /// When it stops being fresh (`stored_at` + freshness lifetime), in unix seconds.
    pub expires_at: i64,
    /// Body size in bytes.
    pub size: u64,
    /// The response's `ETag`, for revalidation.
    pub etag: Option<String>,
    /// The response's `Last-Modified`, for revalidation.
    pub last_modified: Option<String>,
    /// Purge tags from the response's `Surrogate-Key`: case-sensitive, non-empty, without
    /// whitespace. Content, not identity: a changed set makes an upsert
    /// [`Updated`](Upsert::Updated). Stored as a set, so [`Manifest::list`] returns them sorted
    /// and deduplicated.
    pub tags: Vec<String>,
}

/// The target of a purge: which rows [`Manifest::purge`] removes, and what its [`Tombstone`]
/// tells other nodes to invalidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Every row of one page: all methods and `Vary` variants of `host` + `path`, compared
    /// exactly as stored (the caller canonicalises them as it does for [`PageRow`]).
    Url {
        /// Lower-case `host[:port]`, as in [`PageRow::host`].
        host: String,
        /// Path and query, as in [`PageRow::path`].
        path: String,
    },
    /// Every row carrying exactly this tag (see [`PageRow::tags`]).
    Tag(String),
    /// Every row.
    All,
}

/// What a [`Tombstone`] invalidates: the target of the purge it records.
pub type TombstoneKind = Purge;

/// A record that a purge happened, kept until `expires_at` so that other nodes can apply it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    /// What was purged.
    pub kind: TombstoneKind,
    /// A soft purge marks copies stale (to be revalidated) instead of deleting them.
    pub soft: bool,
    /// When the purge happened, in unix seconds. A node should not apply it to a copy stored
    /// after this.
    pub created_at: i64,
    /// When [`Manifest::expire_tombstones`] may delete it, in unix seconds.
    pub expires_at: i64,
}

/// What [`Manifest::purge`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurgeOutcome {
    /// The rows that matched, in [`Manifest::list`] order: deleted by a hard purge, still
    /// present after a soft one. Either way the caller invalidates these copies.
    pub rows: Vec<PageRow>,
    /// Id of the tombstone recorded for the purge, for [`Manifest::tombstones_since`].
    pub tombstone_id: i64,
}

/// What [`Manifest::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upsert {
    /// No row had this identity; one was added.
    Inserted,
    /// A row with this identity existed and at least one column changed.
    Updated,
    /// An identical row existed; nothing was written.
    Unchanged,
}

impl Upsert {
    /// Stable name for logs, metrics and test assertions.
    pub fn as_str(self) -> &'static str {
        match self {
            Upsert::Inserted => "inserted",
            Upsert::Updated => "updated",
            Upsert::Unchanged => "unchanged",
        }
    }
}

/// Counters of one [`Manifest`]'s owner thread (shared by its clones, not by other handles).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ManifestStats {
    /// Upsert requests received.
    pub upserts: u64,
    /// Write transactions committed.
    pub write_transactions: u64,
    /// Rows inserted, updated or deleted by committed transactions.
    pub rows_written: u64,
    /// Batches answered without a write transaction because every upsert in them was identical
    /// to its stored row.
    pub skipped_batches: u64,
    /// Write operations waiting now: queued, or in a batch being written.
    pub pending: u64,
    /// Flushes that wrote their batch (committed, or answered a refused write with its error).
    pub flushes: u64,
    /// Flushes that failed as a whole and left their batch queued for a retry.
    pub failed_flushes: u64,
    /// HALT locks taken (LiteFS mode, on a replica or with no primary known), including one at
    /// open for a migration.
    pub halts: u64,
    /// Writes refused with [`ManifestError::QueueFull`].
    pub overflow: u64,
    /// The most recent flush failure. Kept after the flushes recover; compare
    /// [`failed_flushes`](Self::failed_flushes) and [`pending`](Self::pending) to tell.
    pub last_error: Option<String>,
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        source: litefs::Error,
    },
    /// Opening needed a write (a new file, a migration, switching to WAL) on a LiteFS replica or
    /// with no primary known, and HALT could not be taken.
    #[error("cannot take the LiteFS HALT lock to initialise or migrate manifest {} on this replica", path.display())]
    Halt {
        /// The manifest path.
        path: PathBuf,
        /// What litefs-rs said.
        #[source]
        source: litefs::Error,
    },
}

impl ManifestError {
    fn sqlite(op: Op, source: rusqlite::Error) -> Self {
        ManifestError::Sqlite {
            op,
            source: Arc::new(source),
        }
    }
}

/// Handle to the manifest. Cloning is cheap; all clones talk to the same owner thread, which
/// exits (closing the database) once the last clone is dropped and its queue is written.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// Commands to the owner thread; the thread's only way to learn it should stop is this
    /// channel closing. Unbounded: writes are bounded by [`Shared::pending`], and each reader
    /// waits for its answer before sending again.
    commands: mpsc::Sender<Command>,
    /// Counters the handle itself keeps, so that a full queue is refused without waiting.
    shared: Arc<Shared>,
    /// The LiteFS database in LiteFS mode, for [`Manifest::role`] and [`Manifest::txid`], which
    /// read its files without asking the owner thread (it may be waiting for HALT).
    litefs: Option<litefs::Database>,
}

/// State shared by the handles and the owner thread.
#[derive(Debug)]
struct Shared {
    /// Writes sent and not yet answered: incremented by the handle before sending, decremented by
    /// the owner thread when it answers.
    pending: AtomicUsize,
    /// [`ManifestOptions::max_queue`].
    max_queue: usize,
    /// Writes refused because `pending` reached `max_queue`.
    overflow: AtomicU64,
    /// Rate limit of the "queue full" warning. A std mutex: never held across an `.await`.
    overflow_log: Mutex<LogLimit>,
}

impl Manifest {
    /// Opens (creating if needed) the database at `path` with the default
    /// [`ManifestOptions`]: [`LitefsMode::Auto`], so plain SQLite unless `path` is on a real
    /// LiteFS mount. See [`Manifest::open_with`].
    pub fn open(path: &Path) -> Result<Manifest, ManifestError> {
        Manifest::open_with(path, ManifestOptions::default())
    }

    /// Opens (creating if needed) the database at `path`, applies migrations (under HALT on a
    /// LiteFS replica), spawns the owner thread.
    ///
    /// Blocking: call from startup or `spawn_blocking`. Fails with
    /// [`ManifestError::NotAManifest`] for a foreign SQLite file, [`ManifestError::TooNew`] for a
    /// manifest from a newer caje, [`ManifestError::Open`] for anything that is not a database,
    /// [`ManifestError::Litefs`] / [`ManifestError::Halt`] when LiteFS mode cannot be set up or
    /// a needed migration cannot take HALT.
    pub fn open_with(path: &Path, mut options: ManifestOptions) -> Result<Manifest, ManifestError> {
        options.max_batch = options.max_batch.max(1);
        let litefs = litefs_database(path, options.litefs)?;
        if let Some(db) = &litefs {
            tracing::info!(
                path = %path.display(),
                mode = options.litefs.as_str(),
                fuse = db.mount().is_fuse_mount(),
                "manifest in LiteFS mode: writes from a replica take HALT"
            );
        }
        let (conn, halted) = open_connection(path, litefs.as_ref(), options.halt_timeout)?;
        let shared = Arc::new(Shared {
            pending: AtomicUsize::new(0),
            max_queue: options.max_queue.max(1),
            overflow: AtomicU64::new(0),
            overflow_log: Mutex::new(LogLimit::default()),
        });
        let (commands, rx) = mpsc::channel();
        let owner = Owner {
            conn,
            rx,
            litefs: litefs.clone(),
            options,
            shared: Arc::clone(&shared),
            stats: ManifestStats {
                halts: u64::from(halted),
                ..ManifestStats::default()
            },
            pending: VecDeque::new(),
            retry: None,
            failure_log: LogLimit::default(),
        };
        std::thread::Builder::new()
            .name("caje-manifest".into())
            .spawn(move || owner.run())
            .map_err(ManifestError::Spawn)?;
        Ok(Manifest {
            commands,
            shared,
            litefs,
        })
    }

    /// Inserts the row or updates it when any column differs; a row that is identical is not
    /// written (no write per hit).
    ///
    /// Once this returns `Inserted` or `Updated` the change is committed. If the caller is
    /// cancelled after sending, the write still happens: the page is on disk either way.
    pub async fn upsert(&self, row: PageRow) -> Result<Upsert, ManifestError> {
        let record = Record::encode(row)?;
        self.write(|reply| WriteOp::Upsert(Slot::new(record, reply)))
            .await
    }

    /// Every row, ordered by host, path, vary (then method). Vary orders by its stored JSON text,
    /// so it is deterministic but not meant to be meaningful.
    pub async fn list(&self) -> Result<Vec<PageRow>, ManifestError> {
        self.call(Command::List).await
    }

    /// Deletes one page (all identity columns must match). Returns whether a row was removed.
    pub async fn remove(
        &self,
        host: &str,
        method: &str,
        path: &str,
        vary: &[(String, String)],
    ) -> Result<bool, ManifestError> {
        let key = Key {
            host: host.to_owned(),
            method: method.to_owned(),
            path: path.to_owned(),
            vary: encode_vary(vary),
        };
        self.write(|reply| WriteOp::Remove(Slot::new(key, reply)))
            .await
    }

    /// Deletes every row; returns how many.
    pub async fn clear(&self) -> Result<u64, ManifestError> {
        self.write(|reply| WriteOp::Clear(Slot::new((), reply)))
            .await
    }

    /// Deletes every row of one page (all methods and `Vary` variants of `host` + `path`, both
    /// compared exactly) and returns them, in [`list`](Manifest::list) order. Records no
    /// tombstone: see [`purge`](Manifest::purge) for that.
    pub async fn remove_page(&self, host: &str, path: &str) -> Result<Vec<PageRow>, ManifestError> {
        let target = Purge::Url {
            host: host.to_owned(),
            path: path.to_owned(),
        };
        self.write(|reply| WriteOp::RemoveRows(Slot::new(target, reply)))
            .await
    }

    /// Deletes every row carrying exactly `tag` (`a` does not match `ab`; case matters) and
    /// returns them, in [`list`](Manifest::list) order. Records no tombstone: see
    /// [`purge`](Manifest::purge) for that. Fails with [`ManifestError::InvalidTag`] for a tag
    /// that is empty or contains whitespace.
    pub async fn remove_tag(&self, tag: &str) -> Result<Vec<PageRow>, ManifestError> {
        check_tag(tag)?;
        let target = Purge::Tag(tag.to_owned());
        self.write(|reply| WriteOp::RemoveRows(Slot::new(target, reply)))
            .await
    }

    /// Purges `what` and records its tombstone (created now, expiring `tombstone_ttl_secs`
    /// later) in one transaction: either both happen or neither.
    ///
    /// A hard purge deletes the matching rows; a soft one (`soft`) leaves them, since the nodes
    /// only mark their copies stale. Either way the matching rows are returned, for the caller
    /// to invalidate its own copies. Fails with [`ManifestError::InvalidTag`] for a
    /// [`Purge::Tag`] that is empty or contains whitespace.
    pub async fn purge(
        &self,
        what: Purge,
        soft: bool,
        tombstone_ttl_secs: i64,
    ) -> Result<PurgeOutcome, ManifestError> {
        let created_at = unix_now();
        let tombstone = Tombstone {
            kind: what,
            soft,
            created_at,
            expires_at: created_at.saturating_add(tombstone_ttl_secs),
        };
        check_tombstone(&tombstone)?;
        self.write(|reply| WriteOp::Purge(Slot::new(tombstone, reply)))
            .await
    }

    /// Records a tombstone without touching any page (e.g. one learned from elsewhere); returns
    /// its id. Fails with [`ManifestError::InvalidTag`] for a [`Purge::Tag`] that is empty or
    /// contains whitespace.
    pub async fn add_tombstone(&self, t: Tombstone) -> Result<i64, ManifestError> {
        check_tombstone(&t)?;
        self.write(|reply| WriteOp::AddTombstone(Slot::new(t, reply)))
            .await
    }

    /// Every stored tombstone with an id above `after_id` (0 for all), by increasing id, which
    /// is the order they were committed in. Expired tombstones are included until
    /// [`expire_tombstones`](Manifest::expire_tombstones) deletes them.
    pub async fn tombstones_since(
        &self,
        after_id: i64,
    ) -> Result<Vec<(i64, Tombstone)>, ManifestError> {
        self.call(|reply| Command::Tombstones(after_id, reply))
            .await
    }

    /// Deletes the tombstones that expired by `now` (`expires_at <= now`, unix seconds);
    /// returns how many.
    pub async fn expire_tombstones(&self, now: i64) -> Result<u64, ManifestError> {
        self.write(|reply| WriteOp::ExpireTombstones(Slot::new(now, reply)))
            .await
    }

    /// SQLite `PRAGMA data_version` of the owner connection: it changes when ANOTHER connection
    /// (another process, or another `Manifest` opened on the same file, or LiteFS applying a
    /// replicated transaction) commits, and not for this handle's own commits. For change
    /// detection.
    pub async fn data_version(&self) -> Result<i64, ManifestError> {
        self.call(Command::DataVersion).await
    }

    /// Number of rows.
    pub async fn count(&self) -> Result<u64, ManifestError> {
        self.call(Command::Count).await
    }

    /// Counters of this handle's owner thread, e.g. to check that writes are batched.
    pub async fn stats(&self) -> Result<ManifestStats, ManifestError> {
        self.call(Command::Stats).await
    }

    /// This node's role as a writer, read now from the LiteFS files (`.primary`, `.lag`);
    /// [`ManifestRole::Standalone`] outside LiteFS mode, [`ManifestRole::Unknown`] if the files
    /// cannot be read. Answered without the owner thread.
    pub async fn role(&self) -> ManifestRole {
        let Some(db) = self.litefs.clone() else {
            return ManifestRole::Standalone;
        };
        match tokio::task::spawn_blocking(move || db.mount().role()).await {
            Ok(Ok(role)) => role.into(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cannot read the LiteFS role");
                ManifestRole::Unknown
            }
            Err(e) => {
                tracing::debug!(error = %e, "reading the LiteFS role panicked");
                ManifestRole::Unknown
            }
        }
    }

    /// The TXID LiteFS reports in `<db>-pos`: how far this node's copy has been replicated.
    /// `None` outside LiteFS mode or without a readable `-pos` file.
    pub async fn txid(&self) -> Option<u64> {
        let db = self.litefs.clone()?;
        match tokio::task::spawn_blocking(move || db.txid()).await {
            Ok(Ok(txid)) => Some(txid.into()),
            Ok(Err(_)) | Err(_) => None,
        }
    }

    /// Queues a write unless [`ManifestOptions::max_queue`] writes already wait, and awaits its
    /// answer.
    async fn write<T>(&self, op: impl FnOnce(Reply<T>) -> WriteOp) -> Result<T, ManifestError> {
        let shared = &self.shared;
        if shared.pending.fetch_add(1, Ordering::SeqCst) >= shared.max_queue {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            let overflow = shared.overflow.fetch_add(1, Ordering::Relaxed) + 1;
            let allowed = shared
                .overflow_log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .allow();
            if let Some(suppressed) = allowed {
                tracing::warn!(
                    max_queue = shared.max_queue,
                    overflow,
                    suppressed,
                    "manifest write queue full: refusing writes until queued ones are written"
                );
            }
            return Err(ManifestError::QueueFull);
        }
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Write(Box::new(op(reply))))
            .is_err()
        {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ManifestError::Closed);
        }
        // A dropped reply sender means the thread died mid-command (a panic).
        answer.await.map_err(|_| ManifestError::Closed)?
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ManifestError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| ManifestError::Closed)?;
        answer.await.map_err(|_| ManifestError::Closed)?
    }
}

/// The LiteFS database of `path` when LiteFS mode applies (see [`LitefsMode`]).
fn litefs_database(
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
/// directly. Must be called outside any transaction.
fn halt_unless_primary(
    db: Option<&litefs::Database>,
    timeout: Duration,
) -> Result<Option<HaltGuard>, litefs::Error> {
    let Some(db) = db else {
        return Ok(None);
    };
    match db.mount().role() {
        Ok(Role::Primary) => return Ok(None),
        Ok(role) => tracing::trace!(%role, "manifest write takes HALT"),
        Err(e) => tracing::debug!(error = %e, "cannot read the LiteFS role; taking HALT"),
    }
    db.halt_timeout(timeout).map(Some)
}

/// Releases HALT after the transaction ended. A failed release is only logged: the commits
/// already reached the primary, and closing the lock file releases HALT anyway.
fn release_halt(guard: Option<HaltGuard>) {
    if let Some(guard) = guard {
        if let Err(e) = guard.release() {
            tracing::warn!(error = %e, "releasing the manifest HALT failed");
        }
    }
}

/// Lets an event be logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(events not logged since the last time)` when this one may be logged.
    fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < LOG_EVERY)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

type Reply<T> = oneshot::Sender<Result<T, ManifestError>>;

enum Command {
    /// Boxed: a write is much larger than a read's reply, and it waits in the queue.
    Write(Box<WriteOp>),
    List(Reply<Vec<PageRow>>),
    Count(Reply<u64>),
    DataVersion(Reply<i64>),
    Stats(Reply<ManifestStats>),
    /// [`Manifest::tombstones_since`]: ids above the first field.
    Tombstones(i64, Reply<Vec<(i64, Tombstone)>>),
}

/// One queued write: its input, its caller's reply, and — between running inside a transaction
/// and that transaction's end — its outcome. The outcome is sent only after the commit, and
/// forgotten if the transaction rolls back, so the write can run again in a later batch.
struct Slot<I, T> {
    input: I,
    reply: Reply<T>,
    outcome: Option<Result<T, ManifestError>>,
}

impl<I, T> Slot<I, T> {
    fn new(input: I, reply: Reply<T>) -> Self {
        Slot {
            input,
            reply,
            outcome: None,
        }
    }

    /// Runs `write` in the current transaction; `rows` counts what a success changed.
    fn run(
        &mut self,
        op: Op,
        write: impl FnOnce(&I) -> rusqlite::Result<T>,
        rows: impl FnOnce(&I, &T) -> u64,
    ) -> Step {
        match write(&self.input) {
            Ok(value) => {
                let rows = rows(&self.input, &value);
                self.outcome = Some(Ok(value));
                Step::Done(rows)
            }
            Err(e) if is_retryable(&e) => Step::Retry(op, e),
            Err(e) => {
                let e = Arc::new(e);
                self.outcome = Some(Err(ManifestError::Sqlite {
                    op,
                    source: Arc::clone(&e),
                }));
                Step::Failed(op, e)
            }
        }
    }

    /// Answers the caller with its outcome, or with `error` when it has none (its transaction
    /// did not commit because of it).
    fn finish(self, error: Option<ManifestError>) {
        // A send fails only if the caller stopped waiting; the write stands regardless. Having
        // neither an outcome nor an error cannot happen; the dropped reply would read as
        // `Closed` rather than hang the caller.
        if let Some(outcome) = self.outcome.or(error.map(Err)) {
            drop(self.reply.send(outcome));
        }
    }
}

/// A write waiting in the owner thread's queue.
enum WriteOp {
    Upsert(Slot<Record, Upsert>),
    Remove(Slot<Key, bool>),
    /// [`Manifest::remove_page`] and [`Manifest::remove_tag`]: a hard purge without tombstone.
    RemoveRows(Slot<Purge, Vec<PageRow>>),
    /// The target is `tombstone.kind`; hard unless `tombstone.soft`.
    Purge(Slot<Tombstone, PurgeOutcome>),
    AddTombstone(Slot<Tombstone, i64>),
    /// Deletes the tombstones expired at this unix time.
    ExpireTombstones(Slot<i64, u64>),
    Clear(Slot<(), u64>),
}

/// Runs `$body` with `$slot` bound to the [`Slot`] of whichever variant `$op` is.
macro_rules! with_slot {
    ($op:expr, $slot:ident => $body:expr) => {
        match $op {
            WriteOp::Upsert($slot) => $body,
            WriteOp::Remove($slot) => $body,
            WriteOp::RemoveRows($slot) => $body,
            WriteOp::Purge($slot) => $body,
            WriteOp::AddTombstone($slot) => $body,
            WriteOp::ExpireTombstones($slot) => $body,
            WriteOp::Clear($slot) => $body,
        }
    };
}

/// How one write went inside a transaction.
enum Step {
    /// Done, changing this many rows (pages and tombstones).
    Done(u64),
    /// Refused for a reason of its own (a constraint): its outcome is that error. The others
    /// go on, unless SQLite rolled the whole transaction back.
    Failed(Op, Arc<rusqlite::Error>),
    /// Failed for a reason that is not this write's (busy, I/O, read-only): the whole batch
    /// rolls back and is retried later.
    Retry(Op, rusqlite::Error),
}

impl WriteOp {
    /// Runs the write inside the batch's transaction. A write made of several statements runs
    /// in a savepoint, so that it fails whole.
    fn run(&mut self, tx: &mut Transaction<'_>) -> Step {
        match self {
            WriteOp::Upsert(slot) => slot.run(
                Op::Upsert,
                |record| upsert_one(tx, record),
                |_, outcome| u64::from(*outcome != Upsert::Unchanged),
            ),
            WriteOp::Remove(slot) => slot.run(
                Op::Remove,
                |key| {
                    tx.prepare_cached(REMOVE_SQL)?
                        .execute(params![key.host, key.method, key.path, key.vary])
                        .map(|n| n > 0)
                },
                |_, removed| u64::from(*removed),
            ),
            WriteOp::RemoveRows(slot) => slot.run(
                Op::Purge,
                |target| select_rows(tx, target, RowAction::Delete),
                |_, rows| rows.len() as u64,
            ),
            WriteOp::Purge(slot) => slot.run(
                Op::Purge,
                |tombstone| {
                    let sp = tx.savepoint()?;
                    let action = if tombstone.soft {
                        RowAction::Expire(tombstone.created_at)
                    } else {
                        RowAction::Delete
                    };
                    let rows = select_rows(&sp, &tombstone.kind, action)?;
                    let tombstone_id = insert_tombstone(&sp, tombstone)?;
                    sp.commit()?;
                    Ok(PurgeOutcome { rows, tombstone_id })
                },
                // The matching rows (deleted, or expired by a soft purge) and the tombstone.
                |_, outcome| outcome.rows.len() as u64 + 1,
            ),
            WriteOp::AddTombstone(slot) => slot.run(
                Op::AddTombstone,
                |tombstone| insert_tombstone(tx, tombstone),
                |_, _| 1,
            ),
            WriteOp::ExpireTombstones(slot) => slot.run(
                Op::ExpireTombstones,
                |now| {
                    tx.prepare_cached(EXPIRE_TOMBSTONES_SQL)?
                        .execute([now])
                        .map(|n| n as u64)
                },
                |_, n| *n,
            ),
            WriteOp::Clear(slot) => slot.run(
                Op::Clear,
                |()| tx.execute("DELETE FROM pages", []).map(|n| n as u64),
                |_, n| *n,
            ),
        }
    }

    /// Forgets the outcome of a run whose transaction rolled back.
    fn reset(&mut self) {
        with_slot!(self, slot => slot.outcome = None)
    }

    /// Answers the caller; see [`Slot::finish`].
    fn finish(self, error: Option<ManifestError>) {
        with_slot!(self, slot => slot.finish(error))
    }
}

/// Whether a failed statement says nothing about the write itself, so that the same write may
/// succeed later: the database was busy or locked, read-only (a LiteFS replica without HALT, a
/// lost HALT), failing I/O (LiteFS reports a lost primary as `EIO`), full, or changed under us.
/// A constraint, a type or size error, or SQL the schema does not accept belong to the write.
fn is_retryable(e: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode as C;
    matches!(
        e.sqlite_error_code(),
        Some(
            C::DatabaseBusy
                | C::DatabaseLocked
                | C::ReadOnly
                | C::SystemIoFailure
                | C::DiskFull
                | C::CannotOpen
                | C::FileLockingProtocolFailed
                | C::PermissionDenied
                | C::OutOfMemory
                | C::OperationInterrupted
                | C::SchemaChanged
                | C::DatabaseCorrupt
                | C::NotADatabase
        )
    )
}

/// The identity columns of a page, vary already encoded.
struct Key {
    host: String,
    method: String,
    path: String,
    vary: String,
}

/// A [`PageRow`] in its stored form. Encoded on the caller's task so that a row the database
/// cannot hold is refused before it reaches a batch.
struct Record {
    key: Key,
    status: u16,
    stored_at: i64,
    expires_at: i64,
    size: i64,
    etag: Option<String>,
    last_modified: Option<String>,
    /// Canonical tag set; see the module docs.
    tags: String,
}

impl Record {
    fn encode(row: PageRow) -> Result<Record, ManifestError> {
        let size = i64::try_from(row.size)
            .map_err(|_| ManifestError::SizeOutOfRange { size: row.size })?;
        let tags = encode_tags(&row.tags)?;
        Ok(Record {
            key: Key {
                vary: encode_vary(&row.vary),
                host: row.host,
                method: row.method,
                path: row.path,
            },
            status: row.status,
            stored_at: row.stored_at,
            expires_at: row.expires_at,
            size,
            etag: row.etag,
            last_modified: row.last_modified,
            tags,
        })
    }
}

/// Canonical stored form of a vary list; see the module docs.
fn encode_vary(vary: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, Option<&str>)> = vary
        .iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                (value != VARY_ABSENT).then_some(value.as_str()),
            )
        })
        .collect();
    pairs.sort();
    // Serializing strings and nulls cannot fail.
    serde_json::to_string(&pairs).expect("vary pairs serialize")
}

/// Refuses a tag that could not be one token of the stored set.
fn check_tag(tag: &str) -> Result<(), ManifestError> {
    if tag.is_empty() || tag.contains(char::is_whitespace) {
        return Err(ManifestError::InvalidTag {
            tag: tag.to_owned(),
        });
    }
    Ok(())
}

fn check_tombstone(t: &Tombstone) -> Result<(), ManifestError> {
    match &t.kind {
        Purge::Tag(tag) => check_tag(tag),
        Purge::Url { .. } | Purge::All => Ok(()),
    }
}

/// Canonical stored form of a tag set, `' a b '` or `''`; see the module docs.
fn encode_tags(tags: &[String]) -> Result<String, ManifestError> {
    let mut set: Vec<&str> = Vec::with_capacity(tags.len());
    for tag in tags {
        check_tag(tag)?;
        set.push(tag);
    }
    set.sort_unstable();
    set.dedup();
    if set.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(" {} ", set.join(" ")))
}

fn decode_tags(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Current time in unix seconds (0 before the epoch, which only a broken clock reports).
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

fn decode_vary(text: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    let pairs: Vec<(String, Option<String>)> = serde_json::from_str(text)?;
    Ok(pairs
        .into_iter()
        .map(|(name, value)| (name, value.unwrap_or_else(|| VARY_ABSENT.to_owned())))
        .collect())
}

const UPSERT_SQL: &str = "
    INSERT INTO pages
        (host, method, path, vary, status, stored_at, expires_at, size, etag, last_modified, tags)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
    ON CONFLICT (host, method, path, vary) DO UPDATE SET
        status = excluded.status, stored_at = excluded.stored_at, expires_at = excluded.expires_at,
        size = excluded.size, etag = excluded.etag, last_modified = excluded.last_modified,
        tags = excluded.tags
    WHERE pages.status IS NOT excluded.status
       OR pages.stored_at IS NOT excluded.stored_at
       OR pages.expires_at IS NOT excluded.expires_at
       OR pages.size IS NOT excluded.size
       OR pages.etag IS NOT excluded.etag
       OR pages.last_modified IS NOT excluded.last_modified
       OR pages.tags IS NOT excluded.tags";

const EXISTS_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM pages WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4)";

const IDENTICAL_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM pages
        WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4
          AND status = ?5 AND stored_at = ?6 AND expires_at = ?7 AND size = ?8
          AND etag IS ?9 AND last_modified IS ?10 AND tags = ?11)";

const REMOVE_SQL: &str =
    "DELETE FROM pages WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4";

/// The columns [`page_from_row`] reads, in its order.
const PAGE_COLUMNS: &str =
    "host, method, path, vary, status, stored_at, expires_at, size, etag, last_modified, tags";

/// The order of [`Manifest::list`] and of every other answer made of rows.
const PAGE_ORDER: &str = "ORDER BY host, path, vary, method";

const INSERT_TOMBSTONE_SQL: &str = "
    INSERT INTO tombstones (kind, host, path, tag, soft, created_at, expires_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const TOMBSTONES_SINCE_SQL: &str = "
    SELECT id, kind, host, path, tag, soft, created_at, expires_at
    FROM tombstones WHERE id > ?1 ORDER BY id";

const EXPIRE_TOMBSTONES_SQL: &str = "DELETE FROM tombstones WHERE expires_at <= ?1";

/// The thread that owns the connection.
struct Owner {
    conn: Connection,
    rx: mpsc::Receiver<Command>,
    /// The LiteFS database in LiteFS mode: its role is read before every flush.
    litefs: Option<litefs::Database>,
    options: ManifestOptions,
    shared: Arc<Shared>,
    /// Counters; `pending` and `overflow` live in `shared` and are filled in by `stats`.
    stats: ManifestStats,
    /// Writes not yet answered, oldest first. A flush takes its batch from the front and pops
    /// each write only when answering it.
    pending: VecDeque<Queued>,
    /// Set while flushes fail: the next attempt waits until then.
    retry: Option<Retry>,
    /// Rate limit of the "flush failed" warning.
    failure_log: LogLimit,
}

struct Queued {
    op: Box<WriteOp>,
    /// When it was queued: the batch it starts is due `flush_interval` later.
    since: Instant,
}

/// A failing flush's backoff.
struct Retry {
    /// Consecutive failed attempts.
    failures: u32,
    /// When to try again.
    at: Instant,
}

/// Why a flush failed as a whole; its batch stays queued.
#[derive(Debug)]
enum FlushError {
    Halt(litefs::Error),
    Sqlite { op: Op, source: rusqlite::Error },
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Halt(e) => write!(f, "LiteFS {e}"),
            FlushError::Sqlite { op, source } => write!(f, "manifest {op} failed: {source}"),
        }
    }
}

/// How one write transaction ended.
enum Batch {
    /// Committed: every write has its outcome.
    Committed,
    /// Rolled back for a reason that is not one write's: retry the batch later.
    Retry(FlushError),
    /// Rolled back because of one write (its error rolled back the whole transaction, or the
    /// commit refused a constraint): find it by writing the batch one write at a time.
    OneWrite(Op, Arc<rusqlite::Error>),
}

impl Batch {
    fn from_error(op: Op, source: rusqlite::Error) -> Batch {
        if is_retryable(&source) {
            Batch::Retry(FlushError::Sqlite { op, source })
        } else {
            Batch::OneWrite(op, Arc::new(source))
        }
    }
}

/// The pause before retry number `failures` (1-based): 100 ms doubling, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    RETRY_FIRST_BACKOFF.saturating_mul(factor).min(max)
}

impl Owner {
    fn run(mut self) {
        // Set once every handle is gone: the queue is then written without waiting, and the
        // thread exits when it is empty.
        let mut closing = false;
        // Commands taken while a flush was already due; bounded so a flood cannot postpone it.
        let mut drained = 0;
        loop {
            let due = self.flush_due_at(closing);
            let now = Instant::now();
            let received = match due {
                None if closing => break,
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(at) if at > now && closing => {
                    std::thread::sleep(at - now);
                    Err(RecvTimeoutError::Timeout)
                }
                Some(at) if at > now => self.rx.recv_timeout(at - now),
                // Due: what has already arrived joins first, so even a zero interval batches a
                // burst, and reads that arrived are not kept waiting behind the flush.
                Some(_) if !closing && drained < self.options.max_batch => {
                    self.rx.try_recv().map_err(|e| match e {
                        TryRecvError::Empty => RecvTimeoutError::Timeout,
                        TryRecvError::Disconnected => RecvTimeoutError::Disconnected,
                    })
                }
                Some(_) => Err(RecvTimeoutError::Timeout),
            };
            match received {
                Ok(command) => {
                    if due.is_some_and(|at| at <= now) {
                        drained += 1;
                    }
                    self.handle(command);
                }
                Err(RecvTimeoutError::Timeout) => {
                    drained = 0;
                    self.flush();
                }
                Err(RecvTimeoutError::Disconnected) => closing = true,
            }
        }
        tracing::debug!("manifest owner thread exiting");
        // Dropping `self.conn` closes the database (and checkpoints the WAL if it was the last
        // connection).
    }

    /// When the next flush is due: `None` with nothing queued.
    fn flush_due_at(&self, closing: bool) -> Option<Instant> {
        let oldest = self.pending.front()?;
        if let Some(retry) = &self.retry {
            return Some(retry.at);
        }
        if closing || self.pending.len() >= self.options.max_batch {
            return Some(Instant::now());
        }
        // An interval too large for `Instant` means "only when full".
        Some(
            oldest
                .since
                .checked_add(self.options.flush_interval)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)),
        )
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Write(op) => self.enqueue(op),
            Command::List(reply) => drop(reply.send(self.list())),
            Command::Count(reply) => drop(reply.send(self.count())),
            Command::DataVersion(reply) => drop(reply.send(self.data_version())),
            Command::Stats(reply) => drop(reply.send(Ok(self.stats()))),
            Command::Tombstones(after_id, reply) => {
                drop(reply.send(self.tombstones_since(after_id)))
            }
        }
    }

    fn enqueue(&mut self, mut op: Box<WriteOp>) {
        if let WriteOp::Upsert(slot) = &mut *op {
            self.stats.upserts += 1;
            // Repeated fills of an unchanged page must not write (nor take the write lock or
            // HALT, a round trip to the primary). With nothing queued before it, answering now
            // cannot reorder it against an earlier write of the same key.
            if self.pending.is_empty() && self.is_identical(&slot.input) {
                slot.outcome = Some(Ok(Upsert::Unchanged));
                self.stats.skipped_batches += 1;
                self.answer(op, None);
                return;
            }
        }
        self.pending.push_back(Queued {
            op,
            since: Instant::now(),
        });
    }

    /// Sends a write's answer and stops counting it as pending.
    fn answer(&self, op: Box<WriteOp>, error: Option<ManifestError>) {
        op.finish(error);
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Answers the oldest queued write; see [`Slot::finish`].
    fn answer_front(&mut self, error: Option<ManifestError>) {
        if let Some(queued) = self.pending.pop_front() {
            self.answer(queued.op, error);
        }
    }

    /// Writes the oldest batch. On failure the batch stays queued and the next attempt is
    /// scheduled with backoff.
    fn flush(&mut self) {
        let n = self.pending.len().min(self.options.max_batch);
        if n == 0 {
            return;
        }
        // A batch made only of no-op upserts needs no transaction. Only a whole batch is
        // answered here: answering part of one early could reorder it against a later write of
        // the same key.
        if self.all_identical(n) {
            self.stats.skipped_batches += 1;
            for queued in self.pending.iter_mut().take(n) {
                if let WriteOp::Upsert(slot) = &mut *queued.op {
                    slot.outcome = Some(Ok(Upsert::Unchanged));
                }
            }
            for _ in 0..n {
                self.answer_front(None);
            }
            self.recovered();
            return;
        }
        let started = Instant::now();
        match self.flush_batch(n) {
            Ok(()) => {
                self.stats.flushes += 1;
                tracing::debug!(writes = n, elapsed = ?started.elapsed(), "manifest batch written");
                self.recovered();
            }
            Err(e) => self.failed(e),
        }
    }

    /// HALT when needed, then the batch's transaction(s), then the release.
    fn flush_batch(&mut self, n: usize) -> Result<(), FlushError> {
        // The role is re-read every time: `.primary` appears and disappears with failovers.
        let halt = halt_unless_primary(self.litefs.as_ref(), self.options.halt_timeout)
            .map_err(FlushError::Halt)?;
        if halt.is_some() {
            self.stats.halts += 1;
        }
        let result = match self.transaction(n) {
            Batch::Committed => {
                for _ in 0..n {
                    self.answer_front(None);
                }
                Ok(())
            }
            Batch::Retry(e) => Err(e),
            Batch::OneWrite(op, source) => self.write_one_by_one(n, halt.as_ref(), op, &source),
        };
        // After the transaction ended: holding HALT across COMMIT/ROLLBACK is the point.
        release_halt(halt);
        result
    }

    /// Replays a batch that one write aborted as one transaction per write, so that only that
    /// write fails. Rare (a write's error normally undoes only its own statement).
    fn write_one_by_one(
        &mut self,
        n: usize,
        halt: Option<&HaltGuard>,
        op: Op,
        cause: &rusqlite::Error,
    ) -> Result<(), FlushError> {
        tracing::warn!(%op, error = %cause, writes = n, "a manifest write aborted its batch; writing the batch one write at a time");
        for _ in 0..n {
            if halt
                .and_then(HaltGuard::remaining_lifetime)
                .is_some_and(|left| left < HALT_MARGIN)
            {
                // The rest stays queued, already due, and gets a fresh HALT.
                return Ok(());
            }
            match self.transaction(1) {
                Batch::Committed => self.answer_front(None),
                Batch::OneWrite(op, source) => {
                    tracing::warn!(%op, error = %source, "manifest write refused");
                    self.answer_front(Some(ManifestError::Sqlite { op, source }));
                }
                Batch::Retry(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs the oldest `n` queued writes in one `BEGIN IMMEDIATE` transaction: after `open`,
    /// the only place that writes. HALT, if needed, is already held. Outcomes are kept in the
    /// queued writes and answered by the caller after a commit; any other end forgets them.
    fn transaction(&mut self, n: usize) -> Batch {
        let Owner {
            conn,
            pending,
            options,
            stats,
            ..
        } = self;
        let mut tx = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Ok(tx) => tx,
            // Not being able to begin is never one write's fault.
            Err(source) => {
                return Batch::Retry(FlushError::Sqlite {
                    op: Op::Begin,
                    source,
                })
            }
        };
        let mut rows = 0;
        let mut aborted = None;
        for queued in pending.iter_mut().take(n) {
            match queued.op.run(&mut tx) {
                Step::Done(changed) => rows += changed,
                // SQLite undid the whole transaction, not just the statement.
                Step::Failed(op, source) if tx.is_autocommit() => {
                    aborted = Some(Batch::OneWrite(op, source));
                    break;
                }
                // The write answers with its own error; the others go on.
                Step::Failed(..) => {}
                Step::Retry(op, source) => {
                    aborted = Some(Batch::Retry(FlushError::Sqlite { op, source }));
                    break;
                }
            }
        }
        let ended = match aborted {
            Some(batch) => batch, // dropping `tx` rolls back
            None => {
                if let Some(hook) = &options.on_flush {
                    hook();
                }
                match tx.commit() {
                    Ok(()) => {
                        stats.write_transactions += 1;
                        stats.rows_written += rows;
                        return Batch::Committed;
                    }
                    // A failed commit was rolled back when `commit` dropped the transaction.
                    Err(source) => Batch::from_error(Op::Commit, source),
                }
            }
        };
        for queued in pending.iter_mut().take(n) {
            queued.op.reset();
        }
        ended
    }

    fn failed(&mut self, e: FlushError) {
        let failures = self.retry.as_ref().map_or(0, |r| r.failures) + 1;
        let delay = backoff(failures, self.options.retry_max_backoff);
        self.retry = Some(Retry {
            failures,
            at: Instant::now() + delay,
        });
        self.stats.failed_flushes += 1;
        let message = e.to_string();
        if let Some(suppressed) = self.failure_log.allow() {
            tracing::warn!(
                error = %message,
                pending = self.pending.len(),
                failures,
                suppressed,
                retry_in = ?delay,
                "manifest flush failed; its writes stay queued and will be retried"
            );
        }
        self.stats.last_error = Some(message);
    }

    fn recovered(&mut self) {
        if let Some(retry) = self.retry.take() {
            tracing::info!(
                failures = retry.failures,
                "manifest flushes work again after failing"
            );
            // The next outage's first failure is logged at once.
            self.failure_log = LogLimit::default();
        }
    }

    fn stats(&self) -> ManifestStats {
        ManifestStats {
            pending: self.shared.pending.load(Ordering::SeqCst) as u64,
            overflow: self.shared.overflow.load(Ordering::Relaxed),
            ..self.stats.clone()
        }
    }

    /// Whether the oldest `n` queued writes are all upserts identical to their stored rows.
    fn all_identical(&self, n: usize) -> bool {
        self.pending.iter().take(n).all(|queued| match &*queued.op {
            WriteOp::Upsert(slot) => self.is_identical(&slot.input),
            _ => false,
        })
    }

    /// Whether the upsert matches its stored row exactly. Each check is its own short implicit
    /// read transaction. A failed check just means "not known identical": the write
    /// transaction will run and report any real error.
    fn is_identical(&self, r: &Record) -> bool {
        self.conn
            .prepare_cached(IDENTICAL_SQL)
            .and_then(|mut stmt| {
                stmt.query_row(
                    params![
                        r.key.host,
                        r.key.method,
                        r.key.path,
                        r.key.vary,
                        r.status,
                        r.stored_at,
                        r.expires_at,
                        r.size,
                        r.etag,
                        r.last_modified,
                        r.tags
                    ],
                    |row| row.get::<_, bool>(0),
                )
            })
            .inspect_err(|e| tracing::debug!(error = %e, op = %Op::Check, "manifest check failed"))
            .unwrap_or(false)
    }

    fn list(&self) -> Result<Vec<PageRow>, ManifestError> {
        let sql = format!("SELECT {PAGE_COLUMNS} FROM pages {PAGE_ORDER}");
        let err = |e| ManifestError::sqlite(Op::List, e);
        let mut stmt = self.conn.prepare_cached(&sql).map_err(err)?;
        let rows = stmt.query_map([], page_from_row).map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn tombstones_since(&self, after_id: i64) -> Result<Vec<(i64, Tombstone)>, ManifestError> {
        let err = |e| ManifestError::sqlite(Op::Tombstones, e);
        let mut stmt = self
            .conn
            .prepare_cached(TOMBSTONES_SINCE_SQL)
            .map_err(err)?;
        let rows = stmt
            .query_map([after_id], tombstone_from_row)
            .map_err(err)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(err)
    }

    fn count(&self) -> Result<u64, ManifestError> {
        self.conn
            .query_row("SELECT count(*) FROM pages", [], |row| row.get::<_, i64>(0))
            // count(*) is never negative.
            .map(|n| n.unsigned_abs())
            .map_err(|e| ManifestError::sqlite(Op::Count, e))
    }

    fn data_version(&self) -> Result<i64, ManifestError> {
        self.conn
            .pragma_query_value(None, "data_version", |row| row.get(0))
            .map_err(|e| ManifestError::sqlite(Op::DataVersion, e))
    }
}

/// Reads one row selected as [`PAGE_COLUMNS`].
fn page_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PageRow> {
    let vary: String = row.get(3)?;
    // Stored as i64 (SQLite has no unsigned INTEGER); `encode` refused larger sizes.
    let size: i64 = row.get(7)?;
    let size =
        u64::try_from(size).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(7, size))?;
    let vary = decode_vary(&vary).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let tags: String = row.get(10)?;
    Ok(PageRow {
        host: row.get(0)?,
        method: row.get(1)?,
        path: row.get(2)?,
        vary,
        status: row.get(4)?,
        stored_at: row.get(5)?,
        expires_at: row.get(6)?,
        size,
        etag: row.get(8)?,
        last_modified: row.get(9)?,
        tags: decode_tags(&tags),
    })
}

/// Reads one row selected by [`TOMBSTONES_SINCE_SQL`].
fn tombstone_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Tombstone)> {
    let kind: String = row.get(1)?;
    let kind = match kind.as_str() {
        "url" => Purge::Url {
            host: row.get(2)?,
            path: row.get(3)?,
        },
        "tag" => Purge::Tag(row.get(4)?),
        "all" => Purge::All,
        // The CHECK constraint admits no other kind; a newer schema would have a new version.
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown tombstone kind {other:?}").into(),
            ))
        }
    };
    Ok((
        row.get(0)?,
        Tombstone {
            kind,
            soft: row.get(5)?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
        },
    ))
}

/// The pages a purge target matches, in list order, deleting them when `delete`. Both
/// statements run in the caller's write transaction, so they see the same rows.
/// What a purge does to the rows it matches.
#[derive(Debug, Clone, Copy)]
enum RowAction {
    /// Delete them (hard purges, `remove_page`, `remove_tag`).
    Delete,
    /// Soft purge: keep them, but expired as of this time (unix seconds), so every node
    /// lists them as stale and none warms them from the manifest.
    Expire(i64),
}

fn select_rows(
    conn: &Connection,
    target: &Purge,
    action: RowAction,
) -> rusqlite::Result<Vec<PageRow>> {
    let (filter, args): (&str, Vec<String>) = match target {
        Purge::Url { host, path } => ("host = ?1 AND path = ?2", vec![host.clone(), path.clone()]),
        // Exact token match on the canonical form; see the module docs.
        Purge::Tag(tag) => ("instr(tags, ?1) > 0", vec![format!(" {tag} ")]),
        Purge::All => ("1", Vec::new()),
    };
    let sql = format!("SELECT {PAGE_COLUMNS} FROM pages WHERE {filter} {PAGE_ORDER}");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(&args), page_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(rows);
    }
    match action {
        RowAction::Delete => {
            conn.prepare_cached(&format!("DELETE FROM pages WHERE {filter}"))?
                .execute(params_from_iter(&args))?;
        }
        RowAction::Expire(at) => {
            // `?N` after the filter's own parameters.
            let n = args.len() + 1;
            let mut all: Vec<rusqlite::types::Value> = args
                .iter()
                .cloned()
                .map(rusqlite::types::Value::Text)
                .collect();
            all.push(rusqlite::types::Value::Integer(at));
            conn.prepare_cached(&format!(
                "UPDATE pages SET expires_at = MIN(expires_at, ?{n}) WHERE {filter}"
            ))?
            .execute(params_from_iter(&all))?;
        }
    }
    Ok(rows)
}

/// Inserts a tombstone; returns its id.
fn insert_tombstone(conn: &Connection, t: &Tombstone) -> rusqlite::Result<i64> {
    let (kind, host, path, tag) = match &t.kind {
        Purge::Url { host, path } => ("url", host.as_str(), path.as_str(), ""),
        Purge::Tag(tag) => ("tag", "", "", tag.as_str()),
        Purge::All => ("all", "", "", ""),
    };
    conn.prepare_cached(INSERT_TOMBSTONE_SQL)?.execute(params![
        kind,
        host,
        path,
        tag,
        t.soft,
        t.created_at,
        t.expires_at
    ])?;
    Ok(conn.last_insert_rowid())
}

/// One upsert inside the batch transaction. The prior SELECT tells an insert from an update;
/// `changes()` tells an update from a no-op (the `WHERE` of `DO UPDATE` skips identical rows).
fn upsert_one(conn: &Connection, r: &Record) -> rusqlite::Result<Upsert> {
    let existed: bool = conn.prepare_cached(EXISTS_SQL)?.query_row(
        params![r.key.host, r.key.method, r.key.path, r.key.vary],
        |row| row.get(0),
    )?;
    let changed = conn.prepare_cached(UPSERT_SQL)?.execute(params![
        r.key.host,
        r.key.method,
        r.key.path,
        r.key.vary,
        r.status,
        r.stored_at,
        r.expires_at,
        r.size,
        r.etag,
        r.last_modified,
        r.tags
    ])?;
    Ok(match (changed, existed) {
        (0, _) => Upsert::Unchanged,
        (_, true) => Upsert::Updated,
        (_, false) => Upsert::Inserted,
    })
}
/// Opens and configures the connection, checks the file is ours, migrates. Runs on the caller's
/// thread (startup), before the owner thread exists. Returns whether it took HALT: in LiteFS
/// mode, off the primary, when the file needs a write (a new file, a migration, WAL).
fn open_connection(
    path: &Path,
    litefs: Option<&litefs::Database>,
    halt_timeout: Duration,
) -> Result<(Connection, bool), ManifestError> {
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
        halt_unless_primary(litefs, halt_timeout).map_err(|source| ManifestError::Halt {
            path: path.to_owned(),
            source,
        })?
    } else {
        None
    };
    let halted = halt.is_some();
    let configured = configure(&mut conn, path, wal);
    release_halt(halt);
    configured?;
    Ok((conn, halted))
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
    use litefs::ofd;
    use std::fs::File;
    use std::future::Future;

    /// Every async test runs under this bound so a deadlock fails instead of hanging CI.
    async fn bounded<F: Future>(fut: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), fut)
            .await
            .expect("test exceeded its time bound")
    }

    fn page(host: &str, path: &str) -> PageRow {
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
        }
    }

    fn vary(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A second, plain connection: plays "another process" looking at the file.
    fn observer(path: &Path) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(BUSY_TIMEOUT).unwrap();
        conn
    }

    fn data_version_of(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "data_version", |r| r.get(0))
            .unwrap()
    }

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

    #[tokio::test]
    async fn upsert_reports_inserted_unchanged_updated_without_rewriting() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            let raw = observer(&path);
            let row = page("a.example", "/gen/a?x=1");

            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Inserted);
            let before = data_version_of(&raw);
            let stats_before = m.stats().await.unwrap();

            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Unchanged);
            assert_eq!(
                data_version_of(&raw),
                before,
                "an identical upsert must not write"
            );
            let stats = m.stats().await.unwrap();
            assert_eq!(stats.write_transactions, stats_before.write_transactions);
            assert_eq!(stats.skipped_batches, stats_before.skipped_batches + 1);

            let later = PageRow {
                expires_at: row.expires_at + 60,
                ..row.clone()
            };
            assert_eq!(m.upsert(later.clone()).await.unwrap(), Upsert::Updated);
            assert_ne!(data_version_of(&raw), before);
            assert_eq!(m.list().await.unwrap(), vec![later.clone()]);

            // A None <-> Some change is a change too (the WHERE uses IS NOT, not !=).
            let no_etag = PageRow {
                etag: None,
                ..later
            };
            assert_eq!(m.upsert(no_etag.clone()).await.unwrap(), Upsert::Updated);
            assert_eq!(m.upsert(no_etag).await.unwrap(), Upsert::Unchanged);
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    /// The in-transaction path (taken when a batch also holds real changes) decides the outcome
    /// from the SQL itself: prior SELECT + `changes()` of the guarded ON CONFLICT update.
    #[test]
    fn upsert_sql_reports_outcomes_inside_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _) =
            open_connection(&dir.path().join("manifest.db"), None, Duration::ZERO).unwrap();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let record = |row: PageRow| Record::encode(row).unwrap();
        let row = page("a.example", "/x");
        assert_eq!(
            upsert_one(&tx, &record(row.clone())).unwrap(),
            Upsert::Inserted
        );
        assert_eq!(
            upsert_one(&tx, &record(row.clone())).unwrap(),
            Upsert::Unchanged
        );
        let bigger = PageRow { size: 99, ..row };
        assert_eq!(upsert_one(&tx, &record(bigger)).unwrap(), Upsert::Updated);
        tx.commit().unwrap();
    }

    #[tokio::test]
    async fn vary_absent_empty_and_values_are_distinct_rows() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let with = |v: Vec<(String, String)>| PageRow {
                vary: v,
                ..page("a.example", "/v")
            };

            let variants = [
                vary(&[("accept-encoding", VARY_ABSENT)]),
                vary(&[("accept-encoding", "")]),
                vary(&[("accept-encoding", "gzip")]),
                vary(&[("accept-encoding", "br")]),
                Vec::new(),
            ];
            for v in &variants {
                assert_eq!(
                    m.upsert(with(v.clone())).await.unwrap(),
                    Upsert::Inserted,
                    "{v:?}"
                );
            }
            assert_eq!(m.count().await.unwrap(), variants.len() as u64);
            let listed: Vec<_> = m
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.vary)
                .collect();
            for v in &variants {
                assert!(listed.contains(v), "{v:?} lost its identity: {listed:?}");
            }

            // Identity is canonical: name case and pair order do not make a new row.
            let two = vary(&[("accept-encoding", "gzip"), ("accept-language", "en")]);
            assert_eq!(m.upsert(with(two.clone())).await.unwrap(), Upsert::Inserted);
            let shuffled = vary(&[("Accept-Language", "en"), ("accept-encoding", "gzip")]);
            assert_eq!(
                m.upsert(with(shuffled.clone())).await.unwrap(),
                Upsert::Unchanged
            );
            assert!(m.remove("a.example", "GET", "/v", &shuffled).await.unwrap());
        })
        .await
    }

    #[test]
    fn vary_encoding_is_canonical_json_with_null_for_absent() {
        assert_eq!(encode_vary(&[]), "[]");
        let v = vary(&[("X-Tenant", VARY_ABSENT), ("accept-encoding", "gzip")]);
        let text = encode_vary(&v);
        assert_eq!(text, r#"[["accept-encoding","gzip"],["x-tenant",null]]"#);
        assert_eq!(
            decode_vary(&text).unwrap(),
            vary(&[("accept-encoding", "gzip"), ("x-tenant", VARY_ABSENT)])
        );
    }

    #[tokio::test]
    async fn remove_and_clear_return_counts() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            for i in 0..5 {
                m.upsert(page("a.example", &format!("/{i}"))).await.unwrap();
            }
            let gzip = vary(&[("accept-encoding", "gzip")]);
            m.upsert(PageRow {
                vary: gzip.clone(),
                ..page("a.example", "/0")
            })
            .await
            .unwrap();

            // Every identity column must match.
            assert!(!m.remove("a.example", "HEAD", "/0", &[]).await.unwrap());
            assert!(!m.remove("b.example", "GET", "/0", &[]).await.unwrap());
            assert!(!m
                .remove(
                    "a.example",
                    "GET",
                    "/0",
                    &vary(&[("accept-encoding", "br")])
                )
                .await
                .unwrap());
            assert!(m.remove("a.example", "GET", "/0", &gzip).await.unwrap());
            assert!(!m.remove("a.example", "GET", "/0", &gzip).await.unwrap());
            assert!(m.remove("a.example", "GET", "/0", &[]).await.unwrap());

            assert_eq!(m.count().await.unwrap(), 4);
            assert_eq!(m.clear().await.unwrap(), 4);
            assert_eq!(m.clear().await.unwrap(), 0);
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    #[tokio::test]
    async fn list_is_ordered_by_host_path_vary() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let rows = [
                page("b.example", "/a"),
                PageRow {
                    vary: vary(&[("accept", "x")]),
                    ..page("a.example", "/b")
                },
                page("a.example", "/b"),
                page("a.example", "/a"),
            ];
            for r in &rows {
                m.upsert(r.clone()).await.unwrap();
            }
            let listed: Vec<_> = m
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.host, r.path, r.vary))
                .collect();
            assert_eq!(
                listed,
                vec![
                    ("a.example".into(), "/a".into(), vec![]),
                    // vary sorts by its stored JSON text, where `[["…` comes before `[]`.
                    ("a.example".into(), "/b".into(), vary(&[("accept", "x")])),
                    ("a.example".into(), "/b".into(), vec![]),
                    ("b.example".into(), "/a".into(), vec![]),
                ]
            );
        })
        .await
    }

    /// Two handles on one file are two owner threads with their own connections, like two caje
    /// processes on one machine: both write at once and busy_timeout absorbs the lock waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_write_concurrently() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            // Open both at once on a file that does not exist yet: both race to create/migrate.
            let (a, b) = {
                let (pa, pb) = (path.clone(), path.clone());
                let ta = std::thread::spawn(move || Manifest::open(&pa));
                let tb = std::thread::spawn(move || Manifest::open(&pb));
                (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
            };

            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..500 {
                for (name, m) in [("a", a.clone()), ("b", b.clone())] {
                    tasks.spawn(async move {
                        m.upsert(page(&format!("{name}.example"), &format!("/{i}")))
                            .await
                    });
                }
            }
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }

            for m in [&a, &b] {
                let rows = m.list().await.unwrap();
                assert_eq!(rows.len(), 1000);
                assert_eq!(rows.iter().filter(|r| r.host == "a.example").count(), 500);
                assert_eq!(rows.iter().filter(|r| r.host == "b.example").count(), 500);
            }
        })
        .await
    }

    #[tokio::test]
    async fn data_version_changes_only_on_other_connections_commits() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let a = Manifest::open(&path).unwrap();
            let b = Manifest::open(&path).unwrap();
            let v0 = a.data_version().await.unwrap();
            a.upsert(page("a.example", "/own")).await.unwrap();
            assert_eq!(
                a.data_version().await.unwrap(),
                v0,
                "own commits do not count"
            );
            b.upsert(page("a.example", "/other")).await.unwrap();
            assert_ne!(a.data_version().await.unwrap(), v0);
        })
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_upserts_are_batched() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..1000 {
                let m = m.clone();
                tasks.spawn(async move { m.upsert(page("a.example", &format!("/{i}"))).await });
            }
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }
            let stats = m.stats().await.unwrap();
            assert_eq!((stats.upserts, stats.rows_written), (1000, 1000));
            assert!(stats.write_transactions < 1000, "not batched: {stats:?}");
            assert_eq!(m.count().await.unwrap(), 1000);
        })
        .await
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            let clone = m.clone();
            m.upsert(page("a.example", "/x")).await.unwrap();
            drop(m);
            // A surviving clone keeps the thread alive.
            assert_eq!(clone.count().await.unwrap(), 1);
            drop(clone);
            // SQLite removes the WAL when its last connection closes: proof the thread exited
            // and dropped its connection.
            let wal = dir.path().join("manifest.db-wal");
            while wal.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn oversized_page_is_refused_before_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let err = m
                .upsert(PageRow {
                    size: u64::MAX,
                    ..page("a.example", "/x")
                })
                .await
                .unwrap_err();
            assert!(
                matches!(err, ManifestError::SizeOutOfRange { size: u64::MAX }),
                "{err:?}"
            );
            assert_eq!(m.count().await.unwrap(), 0);
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

    fn tagged(host: &str, path: &str, tags: &[&str]) -> PageRow {
        PageRow {
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ..page(host, path)
        }
    }

    fn paths(rows: &[PageRow]) -> Vec<&str> {
        rows.iter().map(|r| r.path.as_str()).collect()
    }

    fn tombstone(kind: TombstoneKind, created_at: i64, expires_at: i64) -> Tombstone {
        Tombstone {
            kind,
            soft: false,
            created_at,
            expires_at,
        }
    }

    #[tokio::test]
    async fn tags_round_trip_as_a_sorted_set() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(tagged("a.example", "/t", &["b", "A", "a", "b"]))
                .await
                .unwrap();
            m.upsert(page("a.example", "/untagged")).await.unwrap();

            let listed = m.list().await.unwrap();
            assert_eq!(listed[0].tags, ["A", "a", "b"]);
            assert_eq!(listed[1].tags, Vec::<String>::new());

            let stored: Vec<String> = observer(&path)
                .prepare("SELECT tags FROM pages ORDER BY path")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(stored, [" A a b ", ""]);
        })
        .await
    }

    #[tokio::test]
    async fn tag_change_is_an_update_and_reordering_is_not() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let row = tagged("a.example", "/t", &["a", "b"]);
            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Inserted);
            // Same set, other order and a duplicate: nothing to write.
            let same = tagged("a.example", "/t", &["b", "a", "a"]);
            assert_eq!(m.upsert(same).await.unwrap(), Upsert::Unchanged);
            let changed = tagged("a.example", "/t", &["a", "c"]);
            assert_eq!(m.upsert(changed).await.unwrap(), Upsert::Updated);
            assert_eq!(m.list().await.unwrap()[0].tags, ["a", "c"]);
            assert_eq!(
                m.upsert(page("a.example", "/t")).await.unwrap(),
                Upsert::Updated
            );
            assert!(m.list().await.unwrap()[0].tags.is_empty());
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    #[tokio::test]
    async fn invalid_tags_are_refused_before_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            for bad in ["", "a b", "a\tb", " a"] {
                let err = m
                    .upsert(tagged("a.example", "/t", &["ok", bad]))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(&err, ManifestError::InvalidTag { tag } if tag == bad),
                    "{err:?}"
                );
                let err = m.remove_tag(bad).await.unwrap_err();
                assert!(matches!(err, ManifestError::InvalidTag { .. }), "{err:?}");
                let err = m
                    .purge(Purge::Tag(bad.to_owned()), false, 60)
                    .await
                    .unwrap_err();
                assert!(matches!(err, ManifestError::InvalidTag { .. }), "{err:?}");
            }
            assert_eq!(m.count().await.unwrap(), 0);
            assert!(m.tombstones_since(0).await.unwrap().is_empty());
            assert_eq!(m.stats().await.unwrap().write_transactions, 0);
        })
        .await
    }

    #[tokio::test]
    async fn remove_page_removes_every_variant_of_that_page_only() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let target = [
                page("a.example", "/p"),
                PageRow {
                    method: "HEAD".into(),
                    ..page("a.example", "/p")
                },
                PageRow {
                    vary: vary(&[("accept-encoding", "gzip")]),
                    ..page("a.example", "/p")
                },
                PageRow {
                    vary: vary(&[("accept-encoding", VARY_ABSENT)]),
                    ..tagged("a.example", "/p", &["t"])
                },
            ];
            let others = [
                page("a.example", "/p?x=1"),
                page("a.example", "/p/"),
                page("a.example", "/P"),
                page("b.example", "/p"),
            ];
            for r in target.iter().chain(&others) {
                m.upsert(r.clone()).await.unwrap();
            }

            let removed = m.remove_page("a.example", "/p").await.unwrap();
            let mut expected = target.to_vec();
            expected.sort_by_key(|r| (encode_vary(&r.vary), r.method.clone()));
            assert_eq!(removed, expected);

            let left = m.list().await.unwrap();
            assert_eq!(left.len(), others.len());
            for r in &others {
                assert!(left.contains(r), "{r:?} was removed");
            }
            assert!(m.remove_page("a.example", "/p").await.unwrap().is_empty());
            // No tombstone: that is `purge`'s job.
            assert!(m.tombstones_since(0).await.unwrap().is_empty());
        })
        .await
    }

    #[tokio::test]
    async fn remove_tag_matches_whole_tags_only() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let rows = [
                ("/only", vec!["a"]),
                ("/first", vec!["a", "b", "c"]),
                ("/middle", vec!["0", "a", "z"]),
                ("/last", vec!["0", "a"]),
                ("/ab", vec!["ab"]),
                ("/ba", vec!["ba", "b"]),
                ("/upper", vec!["A"]),
                ("/percent", vec!["a%", "_"]),
                ("/none", vec![]),
            ];
            for (path, tags) in &rows {
                m.upsert(tagged("a.example", path, tags)).await.unwrap();
            }

            let removed = m.remove_tag("a").await.unwrap();
            assert_eq!(paths(&removed), ["/first", "/last", "/middle", "/only"]);
            assert!(removed.iter().all(|r| r.tags.contains(&"a".to_owned())));
            // Tags are not patterns: `%` and `_` are plain characters.
            assert!(m.remove_tag("%").await.unwrap().is_empty());
            assert!(m.remove_tag("a_").await.unwrap().is_empty());
            assert_eq!(paths(&m.remove_tag("a%").await.unwrap()), ["/percent"]);
            assert!(m.remove_tag("a").await.unwrap().is_empty());
            assert_eq!(paths(&m.remove_tag("b").await.unwrap()), ["/ba"]);

            let left = m.list().await.unwrap();
            assert_eq!(paths(&left), ["/ab", "/none", "/upper"]);
        })
        .await
    }

    #[tokio::test]
    async fn purge_deletes_rows_and_records_its_tombstone_in_one_transaction() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(tagged("a.example", "/1", &["t"])).await.unwrap();
            m.upsert(tagged("a.example", "/2", &["t", "u"]))
                .await
                .unwrap();
            m.upsert(tagged("a.example", "/3", &["u"])).await.unwrap();
            let before = m.stats().await.unwrap();

            let started = unix_now();
            let outcome = m.purge(Purge::Tag("t".into()), false, 600).await.unwrap();
            assert_eq!(paths(&outcome.rows), ["/1", "/2"]);

            let stats = m.stats().await.unwrap();
            assert_eq!(stats.write_transactions, before.write_transactions + 1);
            // Two pages deleted and one tombstone inserted.
            assert_eq!(stats.rows_written, before.rows_written + 3);

            assert_eq!(paths(&m.list().await.unwrap()), ["/3"]);
            let tombstones = m.tombstones_since(0).await.unwrap();
            assert_eq!(tombstones.len(), 1);
            let (id, t) = &tombstones[0];
            assert_eq!(*id, outcome.tombstone_id);
            assert_eq!((&t.kind, t.soft), (&Purge::Tag("t".into()), false));
            assert!((started..=unix_now()).contains(&t.created_at), "{t:?}");
            assert_eq!(t.expires_at, t.created_at + 600);

            // Another process sees both halves.
            let raw = observer(&path);
            let (pages, tombstones): (i64, i64) = raw
                .query_row(
                    "SELECT (SELECT count(*) FROM pages), (SELECT count(*) FROM tombstones)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!((pages, tombstones), (1, 1));
        })
        .await
    }

    /// If the tombstone cannot be written, the rows must stay: a purge that other nodes never
    /// hear of must not happen on this one alone.
    #[tokio::test]
    async fn purge_whose_tombstone_fails_removes_no_rows() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(page("a.example", "/p")).await.unwrap();
            let raw = observer(&path);
            raw.execute_batch(
                "CREATE TRIGGER no_tombstones BEFORE INSERT ON tombstones
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .unwrap();

            let url = Purge::Url {
                host: "a.example".into(),
                path: "/p".into(),
            };
            let err = m.purge(url.clone(), false, 60).await.unwrap_err();
            assert!(
                matches!(err, ManifestError::Sqlite { op: Op::Purge, .. }),
                "{err:?}"
            );
            assert_eq!(m.list().await.unwrap(), vec![page("a.example", "/p")]);
            assert!(m.tombstones_since(0).await.unwrap().is_empty());

            raw.execute_batch("DROP TRIGGER no_tombstones").unwrap();
            let outcome = m.purge(url, false, 60).await.unwrap();
            assert_eq!(outcome.rows, vec![page("a.example", "/p")]);
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    #[tokio::test]
    async fn soft_purge_keeps_rows_and_records_a_soft_tombstone() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let far = 4_000_000_000;
            m.upsert(PageRow {
                expires_at: far,
                ..page("a.example", "/p")
            })
            .await
            .unwrap();
            m.upsert(PageRow {
                expires_at: far,
                ..page("b.example", "/q")
            })
            .await
            .unwrap();
            let before = m.stats().await.unwrap();

            let outcome = m.purge(Purge::All, true, 60).await.unwrap();
            assert_eq!(paths(&outcome.rows), ["/p", "/q"]);
            assert_eq!(m.count().await.unwrap(), 2);
            // Kept, but expired as of the purge, so every node sees them stale.
            let created = m.tombstones_since(0).await.unwrap()[0].1.created_at;
            assert!(m
                .list()
                .await
                .unwrap()
                .iter()
                .all(|r| r.expires_at <= created));
            let stats = m.stats().await.unwrap();
            assert_eq!(
                (stats.write_transactions, stats.rows_written),
                (before.write_transactions + 1, before.rows_written + 3)
            );
            let tombstones = m.tombstones_since(0).await.unwrap();
            assert_eq!(tombstones.len(), 1);
            assert_eq!(tombstones[0].0, outcome.tombstone_id);
            assert_eq!(
                (&tombstones[0].1.kind, tombstones[0].1.soft),
                (&Purge::All, true)
            );

            // The hard version deletes them all.
            let outcome = m.purge(Purge::All, false, 60).await.unwrap();
            assert_eq!(outcome.rows.len(), 2);
            assert_eq!(m.count().await.unwrap(), 0);
            // A purge that matches nothing still records its tombstone: other nodes may hold
            // copies this manifest never listed.
            let outcome = m
                .purge(
                    Purge::Url {
                        host: "c.example".into(),
                        path: "/".into(),
                    },
                    false,
                    60,
                )
                .await
                .unwrap();
            assert!(outcome.rows.is_empty());
            assert_eq!(m.tombstones_since(0).await.unwrap().len(), 3);
        })
        .await
    }

    #[tokio::test]
    async fn tombstones_since_is_in_id_order_and_expire_deletes_expired_ones() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let kinds = [
                Purge::Url {
                    host: "a.example".into(),
                    path: "/p?x=1".into(),
                },
                Purge::Tag("t".into()),
                Purge::All,
            ];
            let mut ids = Vec::new();
            for (i, kind) in kinds.iter().enumerate() {
                let t = Tombstone {
                    soft: i == 1,
                    ..tombstone(kind.clone(), 1000, 1100 + 100 * i as i64)
                };
                ids.push(m.add_tombstone(t).await.unwrap());
            }
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

            let all = m.tombstones_since(0).await.unwrap();
            assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
            assert_eq!(
                all.iter().map(|(_, t)| t.kind.clone()).collect::<Vec<_>>(),
                kinds
            );
            assert_eq!(
                all[1].1,
                Tombstone {
                    soft: true,
                    ..tombstone(Purge::Tag("t".into()), 1000, 1200)
                }
            );
            let newer = m.tombstones_since(ids[0]).await.unwrap();
            assert_eq!(newer, all[1..]);
            assert!(m.tombstones_since(ids[2]).await.unwrap().is_empty());

            // `expires_at <= now` is expired.
            assert_eq!(m.expire_tombstones(1099).await.unwrap(), 0);
            assert_eq!(m.expire_tombstones(1200).await.unwrap(), 2);
            assert_eq!(m.tombstones_since(0).await.unwrap(), all[2..]);
            assert_eq!(m.expire_tombstones(1200).await.unwrap(), 0);
        })
        .await
    }

    /// A node whose cursor is at the newest tombstone must see the next purge even when every
    /// tombstone expired in between (a plain rowid would hand out the same id again).
    #[tokio::test]
    async fn tombstone_ids_are_not_reused_after_expiry() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let cursor = m
                .add_tombstone(tombstone(Purge::All, 1000, 1001))
                .await
                .unwrap();
            assert_eq!(m.expire_tombstones(2000).await.unwrap(), 1);
            let next = m.purge(Purge::All, false, 60).await.unwrap().tombstone_id;
            assert!(next > cursor, "{next} reuses an id at or below {cursor}");
            let seen = m.tombstones_since(cursor).await.unwrap();
            assert_eq!(seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [next]);
        })
        .await
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

    // ---- Write queue, LiteFS mode, HALT ----

    /// What `F_OFD_GETLK` on the HALT byte reports: (kind, pid) of a holder.
    type Holder = Option<(ofd::LockKind, i32)>;

    type Hook = Arc<dyn Fn() + Send + Sync>;

    /// A plain directory whose `.primary` names another node: in `litefs = "on"` mode, a
    /// simulated replica.
    fn replica_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".primary"), "other-node\n").unwrap();
        dir
    }

    /// Short timings, so that failing flushes are retried within a test's time.
    fn quick(litefs: LitefsMode) -> ManifestOptions {
        ManifestOptions {
            litefs,
            flush_interval: Duration::from_millis(10),
            halt_timeout: Duration::from_millis(200),
            retry_max_backoff: Duration::from_millis(200),
            ..ManifestOptions::default()
        }
    }

    fn side_file(db: &Path, suffix: &str) -> PathBuf {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    }

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
    /// would; closing the file releases it.
    fn hold_halt(db: &Path) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(side_file(db, "-lock"))
            .unwrap();
        ofd::try_lock(&file, ofd::LockKind::Write, ofd::LockRange::HALT).unwrap();
        file
    }

    /// An `on_flush` hook recording [`halt_holder`] inside every write transaction.
    fn recording_hook(db: &Path) -> (Hook, Arc<Mutex<Vec<Holder>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (db, record) = (db.to_owned(), Arc::clone(&seen));
        let hook = move || record.lock().unwrap().push(halt_holder(&db));
        (Arc::new(hook), seen)
    }

    /// Polls the stats until `done` holds (the caller's `bounded` stops a test that never gets
    /// there).
    async fn stats_until(m: &Manifest, done: impl Fn(&ManifestStats) -> bool) -> ManifestStats {
        loop {
            let stats = m.stats().await.unwrap();
            if done(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_queue_refuses_new_writes_and_keeps_the_queued_ones() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    max_queue: 10,
                    ..quick(LitefsMode::On)
                },
            )
            .unwrap();
            let lock = hold_halt(&path);
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..10 {
                let m = m.clone();
                tasks.spawn(async move { m.upsert(page("a.example", &format!("/{i}"))).await });
            }
            stats_until(&m, |s| s.pending == 10).await;

            for i in 10..12 {
                let err = m
                    .upsert(page("a.example", &format!("/{i}")))
                    .await
                    .unwrap_err();
                assert!(matches!(err, ManifestError::QueueFull), "{err:?}");
            }
            let err = m.clear().await.unwrap_err();
            assert!(matches!(err, ManifestError::QueueFull), "{err:?}");
            assert_eq!(m.count().await.unwrap(), 0, "reads are still answered");
            let stats = m.stats().await.unwrap();
            assert_eq!((stats.pending, stats.overflow), (10, 3), "{stats:?}");

            drop(lock);
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }
            assert_eq!(m.count().await.unwrap(), 10);
            assert_eq!(m.stats().await.unwrap().pending, 0);
            assert_eq!(
                m.upsert(page("a.example", "/10")).await.unwrap(),
                Upsert::Inserted
            );
        })
        .await
    }

    /// One HALT serves many fills: writes arriving within the interval share its transaction.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_within_the_flush_interval_share_one_transaction_and_halt() {
        bounded(async {
            let dir = replica_dir();
            let m = Manifest::open_with(
                &dir.path().join("manifest.db"),
                ManifestOptions {
                    flush_interval: Duration::from_millis(100),
                    ..quick(LitefsMode::On)
                },
            )
            .unwrap();
            let before = m.stats().await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..200 {
                let m = m.clone();
                tasks.spawn(async move { m.upsert(page("a.example", &format!("/{i}"))).await });
            }
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }
            let stats = m.stats().await.unwrap();
            assert_eq!(stats.rows_written, 200);
            assert!(stats.write_transactions <= 3, "not batched: {stats:?}");
            assert!(stats.halts - before.halts <= 3, "{stats:?}");
            assert!(stats.halts > before.halts, "{stats:?}");
        })
        .await
    }

    /// `RAISE(ROLLBACK)` undoes the whole transaction, not just the statement: the batch is
    /// replayed one write at a time and only the guilty write fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn write_that_aborts_its_batch_fails_alone() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    flush_interval: Duration::from_millis(200),
                    ..quick(LitefsMode::Off)
                },
            )
            .unwrap();
            observer(&path)
                .execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON tombstones
                     WHEN NEW.host = 'bad.example' BEGIN SELECT RAISE(ROLLBACK, 'refused'); END",
                )
                .unwrap();
            let url = |host: &str| Purge::Url {
                host: host.into(),
                path: "/".into(),
            };
            let mut upserts = tokio::task::JoinSet::new();
            for i in 0..5 {
                let m = m.clone();
                upserts.spawn(async move { m.upsert(page("a.example", &format!("/{i}"))).await });
            }
            let (bad, good) = tokio::join!(
                m.add_tombstone(tombstone(url("bad.example"), 1000, 2000)),
                m.add_tombstone(tombstone(url("good.example"), 1000, 2000)),
            );
            let err = bad.unwrap_err();
            assert!(
                matches!(
                    err,
                    ManifestError::Sqlite {
                        op: Op::AddTombstone,
                        ..
                    }
                ),
                "{err:?}"
            );
            let good = good.unwrap();
            while let Some(result) = upserts.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }
            assert_eq!(m.count().await.unwrap(), 5);
            let tombstones = m.tombstones_since(0).await.unwrap();
            assert_eq!(tombstones.len(), 1);
            assert_eq!(tombstones[0].0, good);
            let stats = m.stats().await.unwrap();
            assert_eq!((stats.failed_flushes, stats.pending), (0, 0), "{stats:?}");
            // One batch, replayed as one transaction per write; the refused one commits nothing.
            assert!(stats.write_transactions >= 6, "not replayed: {stats:?}");
        })
        .await
    }

    #[tokio::test]
    async fn opening_on_a_replica_writes_only_under_halt() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");

            // A new file needs its schema: without HALT the open fails, and says why.
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

    /// A write whose caller went away, on a manifest whose last handle is dropped before its
    /// batch was due, is still written.
    #[tokio::test]
    async fn queued_writes_outlive_their_callers_and_the_last_handle() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    flush_interval: Duration::from_secs(3600),
                    ..quick(LitefsMode::Off)
                },
            )
            .unwrap();
            let writer = {
                let m = m.clone();
                tokio::spawn(async move { m.upsert(page("a.example", "/orphan")).await })
            };
            stats_until(&m, |s| s.pending == 1).await;
            writer.abort();
            assert!(writer.await.unwrap_err().is_cancelled());
            assert_eq!(m.count().await.unwrap(), 0, "written before its interval");
            drop(m);

            let raw = observer(&path);
            while raw
                .query_row("SELECT count(*) FROM pages", [], |r| r.get::<_, i64>(0))
                .unwrap()
                == 0
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[test]
    fn options_default_and_litefs_mode_parses_from_config() {
        #[derive(Deserialize)]
        struct Config {
            litefs: LitefsMode,
        }
        for (text, mode) in [
            ("off", LitefsMode::Off),
            ("auto", LitefsMode::Auto),
            ("on", LitefsMode::On),
        ] {
            let parsed: Config = toml::from_str(&format!("litefs = {text:?}")).unwrap();
            assert_eq!(parsed.litefs, mode);
            assert_eq!(mode.as_str(), text);
        }
        assert!(toml::from_str::<Config>("litefs = \"yes\"").is_err());

        let o = ManifestOptions::default();
        assert_eq!(o.litefs, LitefsMode::Auto);
        assert_eq!(o.flush_interval, Duration::from_millis(100));
        assert_eq!((o.max_batch, o.max_queue), (512, 100_000));
        assert_eq!(o.halt_timeout, Duration::from_secs(10));
        assert_eq!(o.retry_max_backoff, Duration::from_secs(5));
        let hooked = ManifestOptions {
            on_flush: Some(Arc::new(|| {})),
            ..o
        };
        assert!(format!("{hooked:?}").contains("on_flush: Some"));
    }

    #[test]
    fn retry_backoff_doubles_from_100ms_up_to_its_cap() {
        let cap = Duration::from_secs(5);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(backoff(1, cap), ms(100));
        assert_eq!(backoff(2, cap), ms(200));
        assert_eq!(backoff(6, cap), ms(3200));
        assert_eq!(backoff(7, cap), cap);
        assert_eq!(backoff(u32::MAX, cap), cap);
    }

    #[test]
    fn busy_io_and_readonly_errors_are_retried_constraints_are_not() {
        let sqlite = |code| {
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), Some("x".into()))
        };
        for code in [
            rusqlite::ffi::SQLITE_BUSY,
            rusqlite::ffi::SQLITE_IOERR,
            rusqlite::ffi::SQLITE_READONLY,
            rusqlite::ffi::SQLITE_FULL,
        ] {
            assert!(is_retryable(&sqlite(code)), "{code}");
        }
        for code in [
            rusqlite::ffi::SQLITE_CONSTRAINT,
            rusqlite::ffi::SQLITE_MISMATCH,
            rusqlite::ffi::SQLITE_ERROR,
        ] {
            assert!(!is_retryable(&sqlite(code)), "{code}");
        }
        assert!(!is_retryable(&rusqlite::Error::InvalidQuery));
    }

    /// Rows/s for 10,000 upserts, batched (concurrent callers) vs one transaction per row
    /// (sequential callers). `cargo test -- --ignored --nocapture bench_` to run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark"]
    async fn bench_batched_vs_per_row_upserts() {
        const N: usize = 10_000;
        let dir = tempfile::tempdir().unwrap();

        let m = Manifest::open(&dir.path().join("serial.db")).unwrap();
        let started = Instant::now();
        for i in 0..N {
            m.upsert(page("a.example", &format!("/{i}"))).await.unwrap();
        }
        let serial = started.elapsed();
        let serial_stats = m.stats().await.unwrap();

        let m = Manifest::open(&dir.path().join("batched.db")).unwrap();
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..N {
            let m = m.clone();
            tasks.spawn(async move { m.upsert(page("a.example", &format!("/{i}"))).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.unwrap().unwrap();
        }
        let batched = started.elapsed();
        let batched_stats = m.stats().await.unwrap();

        let rate = |d: Duration| N as f64 / d.as_secs_f64();
        println!(
            "per-row: {:.0} rows/s ({} transactions); batched: {:.0} rows/s ({} transactions)",
            rate(serial),
            serial_stats.write_transactions,
            rate(batched),
            batched_stats.write_transactions
        );
    }
}
