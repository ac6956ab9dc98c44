//! The [`Manifest`] handle: opening a manifest (which starts its owner thread), and every
//! call, each a command to that thread answered on a oneshot.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::litefs::litefs_database;
use super::owner::{Command, Owner, Reply};
use super::row::{check_tag, encode_vary, Key, Record};
use super::schema::open_connection;
use super::stats::LogLimit;
use super::tombstone::{check_tombstone, unix_now};
use super::write::{Answer, WriteInput, WriteOp};
use super::writer::{Spawn, WriterHelper};
use super::{
    duration_ms, Database, ListPage, ListQuery, ManifestError, ManifestOptions, ManifestRole,
    ManifestStats, PageRow, Purge, PurgeGuard, PurgeOutcome, Tombstone, TombstoneLog, Upsert,
};
// Only named by doc links.
#[cfg(doc)]
use super::LitefsMode;

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
    pub(super) litefs: Option<Database>,
}

/// State shared by the handles and the owner thread.
#[derive(Debug)]
pub(super) struct Shared {
    /// Writes sent and not yet answered: incremented by the handle before sending, decremented by
    /// the owner thread when it answers.
    pub(super) pending: AtomicUsize,
    /// [`ManifestOptions::max_queue`].
    pub(super) max_queue: usize,
    /// Writes refused because `pending` reached `max_queue`.
    pub(super) overflow: AtomicU64,
    /// Rate limit of the "queue full" warning. A std mutex: never held across an `.await`.
    pub(super) overflow_log: Mutex<LogLimit>,
}

impl Manifest {
    /// Opens (creating if needed) the database at `path` with the default
    /// [`ManifestOptions`]: [`LitefsMode::Auto`], so plain SQLite unless `path` is on a real
    /// LiteFS mount. See [`Manifest::open_with`].
    ///
    /// # Examples
    ///
    /// Opening blocks (it may create or migrate the file), so an async caller runs it on a
    /// blocking thread; the handle's methods are async.
    ///
    /// ```
    /// use caje::manifest::{Manifest, PageRow, Upsert};
    ///
    /// #[tokio::main(flavor = "current_thread")]
    /// async fn main() -> Result<(), Box<dyn std::error::Error>> {
    ///     let dir = tempfile::tempdir()?;
    ///     let path = dir.path().join("manifest.db");
    ///     let manifest = tokio::task::spawn_blocking(move || Manifest::open(&path)).await??;
    ///
    ///     let page = PageRow {
    ///         host: "example.com".to_owned(),
    ///         method: "GET".to_owned(),
    ///         path: "/index.html".to_owned(),
    ///         vary: Vec::new(),
    ///         status: 200,
    ///         stored_at: 1_700_000_000,
    ///         expires_at: 1_700_000_060,
    ///         size: 1234,
    ///         etag: None,
    ///         last_modified: None,
    ///         tags: vec!["home".to_owned()],
    ///         node: "http://10.0.0.1:8080".to_owned(),
    ///     };
    ///     assert_eq!(manifest.upsert(page.clone()).await?, Upsert::Inserted);
    ///     // The same page again is not written.
    ///     assert_eq!(manifest.upsert(page.clone()).await?, Upsert::Unchanged);
    ///     assert_eq!(manifest.list().await?, vec![page]);
    ///     Ok(())
    /// }
    /// ```
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
        #[cfg(test)]
        let litefs = match (litefs, &options.halt_clock) {
            (Some(db), Some(clock)) => Some(db.with_clock(clock.clone())),
            (litefs, _) => litefs,
        };
        if let Some(db) = &litefs {
            tracing::info!(
                path = %path.display(),
                mode = options.litefs.as_str(),
                fuse = db.mount().is_fuse_mount(),
                "manifest in LiteFS mode: writes from a replica take HALT"
            );
        }
        let (conn, held) = open_connection(
            path,
            litefs.as_ref(),
            options.halt_timeout,
            options.open_timeout,
        )?;
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
            writer: writer_helper(path, litefs.as_ref(), &options),
            litefs: litefs.clone(),
            options,
            shared: Arc::clone(&shared),
            stats: ManifestStats {
                halts: u64::from(held.is_some()),
                halt_max_held_ms: held.map_or(0, duration_ms),
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
        self.write(WriteInput::Upsert(record), Answer::Upsert).await
    }

    /// Like [`upsert`](Manifest::upsert), for a node announcing a copy it holds: the row is
    /// not written, and [`Upsert::Purged`] is answered, when a tombstone that `guard` does not
    /// name as applied covers the page (its URL, one of its tags, or everything). The check
    /// runs in the write transaction, so a purge and an announcement of the same page are
    /// ordered: either the purge comes first and refuses the row, or it comes after and
    /// deletes it. A copy that predates a purge never puts its row back.
    pub async fn announce(&self, row: PageRow, guard: PurgeGuard) -> Result<Upsert, ManifestError> {
        let mut record = Record::encode(row)?;
        record.guard = Some(guard);
        self.write(WriteInput::Upsert(record), Answer::Upsert).await
    }

    /// Every row, ordered by host, path, vary (then method). Vary orders by its stored JSON text,
    /// so it is deterministic but not meant to be meaningful.
    pub async fn list(&self) -> Result<Vec<PageRow>, ManifestError> {
        self.call(Command::List).await
    }

    /// One page of the listing (see [`ListQuery`]), in [`Manifest::list`]'s order.
    pub async fn list_page(&self, query: ListQuery) -> Result<ListPage, ManifestError> {
        self.call(|reply| Command::ListPage(Box::new(query), reply))
            .await
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
        self.write(WriteInput::Remove(key), Answer::Bool).await
    }

    /// Deletes every row; returns how many.
    pub async fn clear(&self) -> Result<u64, ManifestError> {
        self.write(WriteInput::Clear, Answer::Count).await
    }

    /// Deletes every row of one page (all methods and `Vary` variants of `host` + `path`, both
    /// compared exactly) and returns them, in [`list`](Manifest::list) order. Records no
    /// tombstone: see [`purge`](Manifest::purge) for that.
    pub async fn remove_page(&self, host: &str, path: &str) -> Result<Vec<PageRow>, ManifestError> {
        let target = Purge::Url {
            host: host.to_owned(),
            path: path.to_owned(),
        };
        self.write(WriteInput::RemoveRows(target), Answer::Rows)
            .await
    }

    /// Deletes every row carrying exactly `tag` (`a` does not match `ab`; case matters) and
    /// returns them, in [`list`](Manifest::list) order. Records no tombstone: see
    /// [`purge`](Manifest::purge) for that. Fails with [`ManifestError::InvalidTag`] for a tag
    /// that is empty or contains whitespace.
    pub async fn remove_tag(&self, tag: &str) -> Result<Vec<PageRow>, ManifestError> {
        check_tag(tag)?;
        let target = Purge::Tag(tag.to_owned());
        self.write(WriteInput::RemoveRows(target), Answer::Rows)
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
        self.write(WriteInput::Purge(tombstone), Answer::Purge)
            .await
    }

    /// Records a tombstone without touching any page (e.g. one learned from elsewhere); returns
    /// its id. Fails with [`ManifestError::InvalidTag`] for a [`Purge::Tag`] that is empty or
    /// contains whitespace.
    pub async fn add_tombstone(&self, t: Tombstone) -> Result<i64, ManifestError> {
        check_tombstone(&t)?;
        self.write(WriteInput::AddTombstone(t), Answer::Id).await
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

    /// The tombstones above `after_id`, with what a node needs to know whether it missed any:
    /// the last id ever issued, and whether some id above `after_id` was deleted (expired)
    /// before this read, or `after_id` is beyond the last id (a cursor from another manifest).
    pub async fn tombstone_log(&self, after_id: i64) -> Result<TombstoneLog, ManifestError> {
        self.call(|reply| Command::TombstoneLog(after_id, reply))
            .await
    }

    /// Deletes the tombstones that expired by `now` (`expires_at <= now`, unix seconds);
    /// returns how many.
    pub async fn expire_tombstones(&self, now: i64) -> Result<u64, ManifestError> {
        self.write(WriteInput::ExpireTombstones(now), Answer::Count)
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

    /// Writes what is queued (one attempt per batch) and stops the owner thread; answers how
    /// many writes were left unwritten. Once it returns no manifest write is in flight and none
    /// will start, so the process may exit: on a LiteFS replica an exit in the middle of a
    /// COMMIT makes LiteFS itself exit (`docs/cluster.md`). Every later call, on any clone,
    /// fails with [`ManifestError::Closed`].
    pub async fn close(&self) -> Result<u64, ManifestError> {
        self.call(Command::Close).await
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

    /// [`announce`](Manifest::announce) for several rows: one message to the owner thread for
    /// all of them, so a burst of fills wakes it once instead of once per row (each wake-up a
    /// context switch away from the async worker on a busy core). The answers come in the
    /// order of `rows`; each row is refused alone when the queue is full.
    pub async fn announce_many(
        &self,
        rows: Vec<(PageRow, PurgeGuard)>,
    ) -> Vec<Result<Upsert, ManifestError>> {
        let mut ops = Vec::with_capacity(rows.len());
        let mut answers = Vec::with_capacity(rows.len());
        for (row, guard) in rows {
            let record = match Record::encode(row) {
                Ok(mut record) => {
                    record.guard = Some(guard);
                    record
                }
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            if let Err(e) = self.admit() {
                answers.push(Err(e));
                continue;
            }
            let (reply, answer) = oneshot::channel();
            ops.push(WriteOp {
                input: WriteInput::Upsert(record),
                answer: Answer::Upsert(reply),
            });
            answers.push(Ok(answer));
        }
        let sent = ops.len();
        if sent > 0 && self.commands.send(Command::Writes(ops)).is_err() {
            self.shared.pending.fetch_sub(sent, Ordering::SeqCst);
        }
        let mut out = Vec::with_capacity(answers.len());
        for answer in answers {
            out.push(match answer {
                Ok(answer) => answer.await.unwrap_or(Err(ManifestError::Closed)),
                Err(e) => Err(e),
            });
        }
        out
    }

    /// Counts one more queued write, unless [`ManifestOptions::max_queue`] already wait.
    fn admit(&self) -> Result<(), ManifestError> {
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
        Ok(())
    }

    /// Queues a write unless [`ManifestOptions::max_queue`] writes already wait, and awaits its
    /// answer.
    async fn write<T>(
        &self,
        input: WriteInput,
        answer: impl FnOnce(Reply<T>) -> Answer,
    ) -> Result<T, ManifestError> {
        let shared = &self.shared;
        self.admit()?;
        let (reply, answered) = oneshot::channel();
        let op = WriteOp {
            input,
            answer: answer(reply),
        };
        if self.commands.send(Command::Write(Box::new(op))).is_err() {
            shared.pending.fetch_sub(1, Ordering::SeqCst);
            return Err(ManifestError::Closed);
        }
        // A dropped reply sender means the thread died mid-command (a panic).
        answered.await.map_err(|_| ManifestError::Closed)?
    }

    async fn call<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ManifestError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| ManifestError::Closed)?;
        answer.await.map_err(|_| ManifestError::Closed)?
    }
}

/// The writer helper for a manifest in LiteFS mode on a real LiteFS (FUSE) mount, when
/// [`ManifestOptions::halt_helper`] names the executable to start; `None` writes in-process.
/// On the primary too: the role can change at any batch, and one code path is simpler.
fn writer_helper(
    path: &Path,
    litefs: Option<&Database>,
    options: &ManifestOptions,
) -> Option<WriterHelper> {
    #[cfg(test)]
    let spawn = if options.writer_thread {
        Some(Spawn::Thread)
    } else {
        None
    };
    #[cfg(not(test))]
    let spawn = None;
    let spawn = spawn.or_else(|| {
        let db = litefs.filter(|db| db.mount().is_fuse_mount())?;
        let executable = options.halt_helper.clone()?;
        tracing::info!(db = %db.path().display(), helper = %executable.display(), "manifest batches are written by a helper process");
        Some(Spawn::Process(executable))
    })?;
    Some(WriterHelper::new(
        spawn,
        path.to_owned(),
        options.litefs,
        options.halt_timeout,
        options.open_timeout,
    ))
}
