//! The owner thread: the one connection, the write queue, batching, the flush policy,
//! retries with backoff, and the reads. Where a batch is written (here, or in the writer
//! helper) is the writer's choice; the batch code is `batch.rs` either way.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, RecvTimeoutError, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use tokio::sync::oneshot;

use super::batch::{BatchStats, BatchWriter, FlushError, Flushed};
use super::row::{page_from_row, Record, IDENTICAL_SQL, PAGE_COLUMNS, PAGE_ORDER};
use super::stats::LogLimit;
use super::tombstone::{
    tombstone_from_row, TombstoneLog, TOMBSTONES_SINCE_SQL, TOMBSTONE_SPAN_SQL,
};
use super::write::{Outcome, WriteInput, WriteOp, WriteOutput};
use super::writer::WriterHelper;
use super::{
    Database, ManifestError, ManifestOptions, ManifestStats, Op, PageRow, Shared, Tombstone, Upsert,
};
// Only named by doc links.
#[cfg(doc)]
use super::Manifest;

/// How much longer than [`ManifestOptions::halt_timeout`] the owner thread (reads included)
/// waits for the writer helper's answer to a batch: about a commit's time. An answer that
/// comes later is not lost: the next attempt reads it.
const HELPER_GRACE: Duration = Duration::from_secs(1);

/// First pause before a failed flush is retried; it doubles up to
/// [`ManifestOptions::retry_max_backoff`].
const RETRY_FIRST_BACKOFF: Duration = Duration::from_millis(100);

pub(super) type Reply<T> = oneshot::Sender<Result<T, ManifestError>>;

pub(super) enum Command {
    /// Boxed: a write is much larger than a read's reply, and it waits in the queue.
    Write(Box<WriteOp>),
    /// Several writes in one message (one wake-up of this thread for a burst).
    Writes(Vec<WriteOp>),
    List(Reply<Vec<PageRow>>),
    ListPage(Box<super::ListQuery>, Reply<super::ListPage>),
    Count(Reply<u64>),
    DataVersion(Reply<i64>),
    Stats(Reply<ManifestStats>),
    /// [`Manifest::tombstones_since`]: ids above the first field.
    Tombstones(i64, Reply<Vec<(i64, Tombstone)>>),
    /// [`Manifest::tombstone_log`]: ids above the first field, and whether any is missing.
    TombstoneLog(i64, Reply<TombstoneLog>),
    /// [`Manifest::close`]: write what is queued (one attempt per batch), answer with how many
    /// writes are left unwritten, and stop.
    Close(Reply<u64>),
}

/// The thread that owns the connection.
pub(super) struct Owner {
    pub(super) conn: Connection,
    pub(super) rx: mpsc::Receiver<Command>,
    /// The LiteFS database in LiteFS mode: its role is read before every flush.
    pub(super) litefs: Option<Database>,
    /// Writes the batches in a helper process (real LiteFS mounts); `None` writes them on this
    /// thread's connection.
    pub(super) writer: Option<WriterHelper>,
    pub(super) options: ManifestOptions,
    pub(super) shared: Arc<Shared>,
    /// Counters; `pending` and `overflow` live in `shared` and are filled in by `stats`.
    pub(super) stats: ManifestStats,
    /// Writes not yet answered, oldest first. A flush takes its batch from the front and pops
    /// each write only when answering it.
    pub(super) pending: VecDeque<Queued>,
    /// Set while flushes fail: the next attempt waits until then.
    pub(super) retry: Option<Retry>,
    /// Rate limit of the "flush failed" warning.
    pub(super) failure_log: LogLimit,
}

pub(super) struct Queued {
    op: WriteOp,
    /// When it was queued: the batch it starts is due `flush_interval` later.
    since: Instant,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A failing flush's backoff.
pub(super) struct Retry {
    /// Consecutive failed attempts.
    failures: u32,
    /// When to try again.
    at: Instant,
}

/// The pause before retry number `failures` (1-based): 100 ms doubling, capped at `max`.
fn backoff(failures: u32, max: Duration) -> Duration {
    let factor = 1u32
        .checked_shl(failures.saturating_sub(1))
        .unwrap_or(u32::MAX);
    RETRY_FIRST_BACKOFF.saturating_mul(factor).min(max)
}

impl ManifestStats {
    /// Adds what one batch did.
    fn absorb(&mut self, batch: &BatchStats) {
        self.write_transactions += batch.write_transactions;
        self.rows_written += batch.rows_written;
        self.halts += batch.halts;
        self.halt_max_held_ms = self.halt_max_held_ms.max(batch.halt_max_held_ms);
        self.halt_wait_micros += batch.halt_wait_micros;
    }
}

impl Owner {
    pub(super) fn run(mut self) {
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
                Ok(Command::Close(reply)) => {
                    let left = self.close();
                    // The connection is closed (SQLite's close may checkpoint and unlink the
                    // WAL and `-shm` on the mount) before the answer lets the process exit:
                    // an exit in the middle of that close left a `-shm` that made the next
                    // process on that LiteFS mount die of SIGBUS.
                    drop(self);
                    drop(reply.send(Ok(left)));
                    return;
                }
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
            Command::Write(op) => self.enqueue(*op),
            Command::Writes(ops) => ops.into_iter().for_each(|op| self.enqueue(op)),
            Command::List(reply) => drop(reply.send(self.list())),
            Command::ListPage(query, reply) => {
                drop(reply.send(super::list::page(&self.conn, &query)))
            }
            Command::Count(reply) => drop(reply.send(self.count())),
            Command::DataVersion(reply) => drop(reply.send(self.data_version())),
            Command::Stats(reply) => drop(reply.send(Ok(self.stats()))),
            // Handled by `run`, which stops after it.
            Command::Close(reply) => drop(reply.send(Ok(self.close()))),
            Command::Tombstones(after_id, reply) => {
                drop(reply.send(self.tombstones_since(after_id)))
            }
            Command::TombstoneLog(after_id, reply) => {
                drop(reply.send(self.tombstone_log(after_id)))
            }
        }
    }

    /// Writes the queue, one attempt per batch, so a process about to exit leaves no write in
    /// memory that it could have written; then stops the writer helper (waiting, bounded, for
    /// it to finish what it writes and exit) and returns the number of writes left. Nothing is written by this process
    /// after this: on a LiteFS replica an exit in the middle of a COMMIT (the remote commit is a
    /// FUSE write LiteFS ships to the primary) makes LiteFS itself exit with `fatal error
    /// occurred while committing WAL`.
    fn close(&mut self) -> u64 {
        self.retry = None;
        while !self.pending.is_empty() {
            let before = self.pending.len();
            self.flush();
            if self.pending.len() >= before {
                break;
            }
        }
        if let Some(writer) = self.writer.take() {
            writer.finish(self.options.halt_timeout + HELPER_GRACE);
        }
        let left = self.pending.len() as u64;
        if left > 0 {
            tracing::warn!(left, "manifest closed with writes it could not write");
        }
        left
    }

    fn enqueue(&mut self, op: WriteOp) {
        if let WriteInput::Upsert(record) = &op.input {
            self.stats.upserts += 1;
            // Repeated fills of an unchanged page must not write (nor take the write lock or
            // HALT, a round trip to the primary). With nothing queued before it, answering now
            // cannot reorder it against an earlier write of the same key.
            if self.pending.is_empty() && self.is_identical(record) {
                self.stats.skipped_batches += 1;
                self.answer(op, Ok(WriteOutput::Upsert(Upsert::Unchanged)));
                return;
            }
        }
        self.pending.push_back(Queued {
            op,
            since: Instant::now(),
        });
    }

    /// Sends a write's answer and stops counting it as pending.
    fn answer(&self, op: WriteOp, outcome: Outcome) {
        op.answer.send(outcome);
        self.shared.pending.fetch_sub(1, Ordering::SeqCst);
    }

    /// Answers the oldest queued write.
    fn answer_front(&mut self, outcome: Outcome) {
        if let Some(queued) = self.pending.pop_front() {
            self.answer(queued.op, outcome);
        }
    }

    /// Writes the oldest batch. On failure the writes not answered stay queued and the next
    /// attempt is scheduled with backoff.
    fn flush(&mut self) {
        let n = self.pending.len().min(self.options.max_batch);
        if n == 0 {
            return;
        }
        // A batch made only of no-op upserts needs no transaction. Only a whole batch is
        // answered here: answering part of one early could reorder it against a later write of
        // the same key. Not while the writer helper owes the answer of the queue's first
        // writes: they are its to answer.
        let helper_owes = self.writer.as_ref().is_some_and(WriterHelper::in_flight);
        if !helper_owes && self.all_identical(n) {
            self.stats.skipped_batches += 1;
            for _ in 0..n {
                self.answer_front(Ok(WriteOutput::Upsert(Upsert::Unchanged)));
            }
            self.recovered();
            return;
        }
        let started = Instant::now();
        let flushed = self.write_batch(n);
        self.stats.flush_micros += micros(started.elapsed());
        self.stats.absorb(&flushed.stats);
        let answered = flushed.outcomes.len();
        for outcome in flushed.outcomes {
            self.answer_front(outcome);
        }
        match flushed.error {
            None => {
                self.stats.flushes += 1;
                tracing::debug!(writes = answered, elapsed = ?started.elapsed(), "manifest batch written");
                self.recovered();
            }
            Some(e) => self.failed(e),
        }
    }

    /// The oldest `n` writes, written in this process or by the writer helper.
    fn write_batch(&mut self, n: usize) -> Flushed {
        let Owner {
            conn,
            litefs,
            writer,
            options,
            pending,
            ..
        } = self;
        let inputs: Vec<&WriteInput> = pending.iter().take(n).map(|q| &q.op.input).collect();
        match writer {
            // The helper takes HALT for as long as LiteFS lets it; this thread (reads
            // included) waits for its answer about as long as it would for HALT and a commit.
            Some(writer) => writer.write(&inputs, options.halt_timeout + HELPER_GRACE),
            None => BatchWriter {
                conn,
                litefs: litefs.as_ref(),
                halt_timeout: Some(options.halt_timeout),
                on_flush: options.on_flush.as_deref(),
            }
            .write(&inputs),
        }
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
        self.pending
            .iter()
            .take(n)
            .all(|queued| match &queued.op.input {
                WriteInput::Upsert(record) => self.is_identical(record),
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

    fn tombstone_log(&self, after_id: i64) -> Result<TombstoneLog, ManifestError> {
        let err = |e| ManifestError::sqlite(Op::Tombstones, e);
        // The span first: a tombstone committed between the two reads is listed and counted
        // in neither, or listed only, which cannot make `missed` true by itself.
        let (last_id, kept): (i64, i64) = self
            .conn
            .prepare_cached(TOMBSTONE_SPAN_SQL)
            .and_then(|mut stmt| stmt.query_row([after_id], |r| Ok((r.get(0)?, r.get(1)?))))
            .map_err(err)?;
        let tombstones = self.tombstones_since(after_id)?;
        let missed = last_id < after_id || kept < last_id - after_id;
        Ok(TombstoneLog {
            tombstones,
            last_id,
            missed,
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::litefs::tests::hold_halt;
    use crate::manifest::test_support::*;
    use crate::manifest::*;

    use std::time::{Duration, Instant};

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
    fn retry_backoff_doubles_from_100ms_up_to_its_cap() {
        let cap = Duration::from_secs(5);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(backoff(1, cap), ms(100));
        assert_eq!(backoff(2, cap), ms(200));
        assert_eq!(backoff(6, cap), ms(3200));
        assert_eq!(backoff(7, cap), cap);
        assert_eq!(backoff(u32::MAX, cap), cap);
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
