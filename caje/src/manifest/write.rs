//! One queued write, and how it runs inside a batch transaction.

use std::sync::Arc;

use rusqlite::{params, Transaction};

use super::owner::Reply;
use super::row::{upsert_one, Key, Record, REMOVE_SQL};
use super::tombstone::{insert_tombstone, select_rows, RowAction, EXPIRE_TOMBSTONES_SQL};
use super::{ManifestError, Op, PageRow, Purge, PurgeOutcome, Tombstone, Upsert};
// Only named by doc links.
#[cfg(doc)]
use super::Manifest;

/// One queued write: its input, its caller's reply, and — between running inside a transaction
/// and that transaction's end — its outcome. The outcome is sent only after the commit, and
/// forgotten if the transaction rolls back, so the write can run again in a later batch.
pub(super) struct Slot<I, T> {
    pub(super) input: I,
    pub(super) reply: Reply<T>,
    pub(super) outcome: Option<Result<T, ManifestError>>,
}

impl<I, T> Slot<I, T> {
    pub(super) fn new(input: I, reply: Reply<T>) -> Self {
        Slot {
            input,
            reply,
            outcome: None,
        }
    }

    /// Runs `write` in the current transaction; `rows` counts what a success changed.
    pub(super) fn run(
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
    pub(super) fn finish(self, error: Option<ManifestError>) {
        // A send fails only if the caller stopped waiting; the write stands regardless. Having
        // neither an outcome nor an error cannot happen; the dropped reply would read as
        // `Closed` rather than hang the caller.
        if let Some(outcome) = self.outcome.or(error.map(Err)) {
            drop(self.reply.send(outcome));
        }
    }
}

/// A write waiting in the owner thread's queue.
pub(super) enum WriteOp {
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
pub(super) enum Step {
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
    pub(super) fn run(&mut self, tx: &mut Transaction<'_>) -> Step {
        match self {
            WriteOp::Upsert(slot) => slot.run(
                Op::Upsert,
                |record| upsert_one(tx, record),
                |_, outcome| u64::from(matches!(outcome, Upsert::Inserted | Upsert::Updated)),
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
    pub(super) fn reset(&mut self) {
        with_slot!(self, slot => slot.outcome = None)
    }

    /// Answers the caller; see [`Slot::finish`].
    pub(super) fn finish(self, error: Option<ManifestError>) {
        with_slot!(self, slot => slot.finish(error))
    }
}

/// Whether a failed statement says nothing about the write itself, so that the same write may
/// succeed later: the database was busy or locked, read-only (a LiteFS replica without HALT, a
/// lost HALT), failing I/O (LiteFS reports a lost primary as `EIO`), full, or changed under us.
/// A constraint, a type or size error, or SQL the schema does not accept belong to the write.
pub(super) fn is_retryable(e: &rusqlite::Error) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
