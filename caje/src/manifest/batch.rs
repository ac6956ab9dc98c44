//! One batch of writes in one transaction, under HALT when this node is not the LiteFS
//! primary: after `open`, the only code that writes the manifest. The owner thread runs it in
//! this process, or the writer helper (`writer.rs`) runs the very same code in its own process
//! and sends back what it returns.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::litefs::{commit_under, halt_unless_primary, release_halt};
use super::write::{is_retryable, Outcome, Step, WriteInput};
use super::{duration_ms, Database, HaltGuard, LitefsError, ManifestError, Op};

/// What one batch adds to [`super::ManifestStats`]; sent back by the writer helper.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct BatchStats {
    pub(super) write_transactions: u64,
    pub(super) rows_written: u64,
    pub(super) halts: u64,
    pub(super) halt_max_held_ms: u64,
    pub(super) halt_wait_micros: u64,
}

/// Why a batch failed as a whole; its writes not answered stay queued.
#[derive(Debug)]
pub(super) enum FlushError {
    Halt(LitefsError),
    Sqlite {
        op: Op,
        source: rusqlite::Error,
    },
    /// The writer helper failed, or has not answered yet; or (its text) what failed there.
    Helper(String),
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::Halt(e) => write!(f, "LiteFS {e}"),
            FlushError::Sqlite { op, source } => write!(f, "manifest {op} failed: {source}"),
            FlushError::Helper(text) => f.write_str(text),
        }
    }
}

/// What writing a batch did.
#[derive(Debug)]
pub(super) struct Flushed {
    /// The answers of the batch's first writes, in order: all of them, unless `error`.
    pub(super) outcomes: Vec<Outcome>,
    /// Why the writes after `outcomes` were not written (they are retried later).
    pub(super) error: Option<FlushError>,
    pub(super) stats: BatchStats,
}

impl Flushed {
    /// Nothing written: the whole batch is retried later.
    pub(super) fn failed(error: FlushError) -> Flushed {
        Flushed {
            outcomes: Vec::new(),
            error: Some(error),
            stats: BatchStats::default(),
        }
    }
}

/// How one write transaction ended.
enum Batch {
    /// Committed: every write has its outcome.
    Committed(Vec<Outcome>),
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

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// A connection that writes batches, and what it needs for that.
pub(super) struct BatchWriter<'a> {
    pub(super) conn: &'a mut Connection,
    /// The LiteFS database in LiteFS mode: its role is read before every batch.
    pub(super) litefs: Option<&'a Database>,
    /// Longest wait for HALT; `None` waits as long as LiteFS does (10 s, then `EIO`): the
    /// writer helper, which must never give up an acquisition half-way (see `writer.rs`).
    pub(super) halt_timeout: Option<Duration>,
    /// [`super::ManifestOptions::on_flush`].
    pub(super) on_flush: Option<&'a (dyn Fn() + Send + Sync)>,
}

impl BatchWriter<'_> {
    /// HALT when needed, then the batch's transaction(s), then the release.
    pub(super) fn write(&mut self, inputs: &[&WriteInput]) -> Flushed {
        let mut stats = BatchStats::default();
        // The role is re-read every time: `.primary` appears and disappears with failovers.
        let waited = Instant::now();
        let halt = halt_unless_primary(self.litefs, self.halt_timeout);
        stats.halt_wait_micros = micros(waited.elapsed());
        let halt = match halt {
            Ok(halt) => halt,
            Err(e) => return Flushed::failed(FlushError::Halt(e)),
        };
        stats.halts = u64::from(halt.is_some());
        let mut outcomes = Vec::with_capacity(inputs.len());
        let error = match self.transaction(inputs, halt.as_ref(), &mut stats) {
            Batch::Committed(answered) => {
                outcomes = answered;
                None
            }
            Batch::Retry(e) => Some(e),
            Batch::OneWrite(op, source) => self
                .write_one_by_one(
                    inputs,
                    halt.as_ref(),
                    op,
                    &source,
                    &mut outcomes,
                    &mut stats,
                )
                .err(),
        };
        // After the transaction ended: holding HALT across COMMIT/ROLLBACK is the point.
        if let Some(held) = release_halt(halt) {
            stats.halt_max_held_ms = duration_ms(held);
        }
        Flushed {
            outcomes,
            error,
            stats,
        }
    }

    /// Replays a batch that one write aborted as one transaction per write, so that only that
    /// write fails. Rare (a write's error normally undoes only its own statement).
    fn write_one_by_one(
        &mut self,
        inputs: &[&WriteInput],
        halt: Option<&HaltGuard>,
        op: Op,
        cause: &rusqlite::Error,
        outcomes: &mut Vec<Outcome>,
        stats: &mut BatchStats,
    ) -> Result<(), FlushError> {
        tracing::warn!(%op, error = %cause, writes = inputs.len(), "a manifest write aborted its batch; writing the batch one write at a time");
        for input in inputs {
            // Past the lease the rest stays queued (the writes already committed are answered)
            // and is retried under a fresh HALT; `transaction` checks again right before COMMIT.
            if let Some(halt) = halt {
                halt.check_lease().map_err(FlushError::Halt)?;
            }
            match self.transaction(std::slice::from_ref(input), halt, stats) {
                Batch::Committed(mut answered) => outcomes.append(&mut answered),
                Batch::OneWrite(op, source) => {
                    tracing::warn!(%op, error = %source, "manifest write refused");
                    outcomes.push(Err(ManifestError::Sqlite { op, source }));
                }
                Batch::Retry(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Runs `inputs` in one `BEGIN IMMEDIATE` transaction. HALT, if needed, is already held as
    /// `halt`, and `COMMIT` runs only while its lease lasts: past it the transaction is rolled
    /// back and the batch retried under a new HALT. The outcomes count only once committed.
    fn transaction(
        &mut self,
        inputs: &[&WriteInput],
        halt: Option<&HaltGuard>,
        stats: &mut BatchStats,
    ) -> Batch {
        let mut tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
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
        let mut outcomes = Vec::with_capacity(inputs.len());
        // Every early return drops `tx`, which rolls back.
        for input in inputs {
            match input.run(&mut tx) {
                Step::Done(output, changed) => {
                    rows += changed;
                    outcomes.push(Ok(output));
                }
                // SQLite undid the whole transaction, not just the statement.
                Step::Failed(op, source) if tx.is_autocommit() => {
                    return Batch::OneWrite(op, source)
                }
                // The write answers with its own error; the others go on.
                Step::Failed(op, source) => {
                    outcomes.push(Err(ManifestError::Sqlite { op, source }))
                }
                Step::Retry(op, source) => return Batch::Retry(FlushError::Sqlite { op, source }),
            }
        }
        if let Some(hook) = self.on_flush {
            hook();
        }
        // `tx` moves into the closure only when the lease allows the commit; refused, the
        // closure (and `tx` with it) is dropped, which rolls back.
        match commit_under(halt, move || tx.commit()) {
            Ok(Ok(())) => {
                stats.write_transactions += 1;
                stats.rows_written += rows;
                Batch::Committed(outcomes)
            }
            // A failed commit was rolled back when `commit` dropped the transaction.
            Ok(Err(source)) => Batch::from_error(Op::Commit, source),
            Err(expired) => Batch::Retry(FlushError::Halt(expired)),
        }
    }
}
