//! One write: its input (what a caller asked for), its output, and how it runs inside a batch
//! transaction. Inputs and outputs are plain data (serde), so that the same write runs in this
//! process or in the manifest's writer helper (`writer.rs`), from the same code.

use std::sync::Arc;

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

use super::owner::Reply;
use super::row::{upsert_one, Key, Record, REMOVE_SQL};
use super::tombstone::{insert_tombstone, select_rows, RowAction, EXPIRE_TOMBSTONES_SQL};
use super::{ManifestError, Op, PageRow, Purge, PurgeOutcome, Tombstone, Upsert};
// Only named by doc links.
#[cfg(doc)]
use super::Manifest;

/// What one queued write asks for.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum WriteInput {
    Upsert(Record),
    Remove(Key),
    /// [`Manifest::remove_page`] and [`Manifest::remove_tag`]: a hard purge without tombstone.
    RemoveRows(Purge),
    /// The target is `tombstone.kind`; hard unless `tombstone.soft`.
    Purge(Tombstone),
    AddTombstone(Tombstone),
    /// Deletes the tombstones expired at this unix time.
    ExpireTombstones(i64),
    Clear,
}

/// What one write did, once its transaction committed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum WriteOutput {
    Upsert(Upsert),
    Removed(bool),
    Rows(Vec<PageRow>),
    Purged(PurgeOutcome),
    TombstoneId(i64),
    Count(u64),
}

/// One queued write: what it asks for, and where its answer goes. The answer is sent only
/// once the write's transaction committed (or the write alone was refused), so the write can
/// run again in a later batch after a rollback.
pub(super) struct WriteOp {
    pub(super) input: WriteInput,
    pub(super) answer: Answer,
}

/// A write's answer: its output, or why it alone was refused.
pub(super) type Outcome = Result<WriteOutput, ManifestError>;

/// Where a write's answer goes: its caller's typed reply.
pub(super) enum Answer {
    Upsert(Reply<Upsert>),
    Bool(Reply<bool>),
    Rows(Reply<Vec<PageRow>>),
    Purge(Reply<PurgeOutcome>),
    Id(Reply<i64>),
    Count(Reply<u64>),
}

impl Answer {
    /// Sends `outcome` to the caller. A send fails only if the caller stopped waiting; the
    /// write stands regardless. An output of another kind than the caller's cannot come from
    /// [`WriteInput::run`]; it would read as [`ManifestError::Closed`] rather than hang.
    pub(super) fn send(self, outcome: Outcome) {
        fn pick<T>(reply: Reply<T>, outcome: Outcome, take: impl FnOnce(WriteOutput) -> Option<T>) {
            let answer = outcome.and_then(|out| take(out).ok_or(ManifestError::Closed));
            drop(reply.send(answer));
        }
        match self {
            Answer::Upsert(r) => pick(r, outcome, |o| match o {
                WriteOutput::Upsert(u) => Some(u),
                _ => None,
            }),
            Answer::Bool(r) => pick(r, outcome, |o| match o {
                WriteOutput::Removed(b) => Some(b),
                _ => None,
            }),
            Answer::Rows(r) => pick(r, outcome, |o| match o {
                WriteOutput::Rows(rows) => Some(rows),
                _ => None,
            }),
            Answer::Purge(r) => pick(r, outcome, |o| match o {
                WriteOutput::Purged(p) => Some(p),
                _ => None,
            }),
            Answer::Id(r) => pick(r, outcome, |o| match o {
                WriteOutput::TombstoneId(id) => Some(id),
                _ => None,
            }),
            Answer::Count(r) => pick(r, outcome, |o| match o {
                WriteOutput::Count(n) => Some(n),
                _ => None,
            }),
        }
    }
}

/// How one write went inside a transaction.
pub(super) enum Step {
    /// Done, changing this many rows (pages and tombstones).
    Done(WriteOutput, u64),
    /// Refused for a reason of its own (a constraint): its outcome is that error. The others
    /// go on, unless SQLite rolled the whole transaction back.
    Failed(Op, Arc<rusqlite::Error>),
    /// Failed for a reason that is not this write's (busy, I/O, read-only): the whole batch
    /// rolls back and is retried later.
    Retry(Op, rusqlite::Error),
}

impl Step {
    fn of<T>(
        op: Op,
        result: rusqlite::Result<T>,
        output: impl FnOnce(T) -> WriteOutput,
        rows: impl FnOnce(&T) -> u64,
    ) -> Step {
        match result {
            Ok(value) => {
                let changed = rows(&value);
                Step::Done(output(value), changed)
            }
            Err(e) if is_retryable(&e) => Step::Retry(op, e),
            Err(e) => Step::Failed(op, Arc::new(e)),
        }
    }
}

impl WriteInput {
    /// Runs the write inside the batch's transaction. A write made of several statements runs
    /// in a savepoint, so that it fails whole.
    pub(super) fn run(&self, tx: &mut Transaction<'_>) -> Step {
        match self {
            WriteInput::Upsert(record) => Step::of(
                Op::Upsert,
                upsert_one(tx, record),
                WriteOutput::Upsert,
                |outcome| u64::from(matches!(outcome, Upsert::Inserted | Upsert::Updated)),
            ),
            WriteInput::Remove(key) => Step::of(
                Op::Remove,
                tx.prepare_cached(REMOVE_SQL).and_then(|mut stmt| {
                    stmt.execute(params![key.host, key.method, key.path, key.vary])
                        .map(|n| n > 0)
                }),
                WriteOutput::Removed,
                |removed| u64::from(*removed),
            ),
            WriteInput::RemoveRows(target) => Step::of(
                Op::Purge,
                select_rows(tx, target, RowAction::Delete),
                WriteOutput::Rows,
                |rows| rows.len() as u64,
            ),
            WriteInput::Purge(tombstone) => Step::of(
                Op::Purge,
                purge(tx, tombstone),
                WriteOutput::Purged,
                // The matching rows (deleted, or expired by a soft purge) and the tombstone.
                |outcome| outcome.rows.len() as u64 + 1,
            ),
            WriteInput::AddTombstone(tombstone) => Step::of(
                Op::AddTombstone,
                insert_tombstone(tx, tombstone),
                WriteOutput::TombstoneId,
                |_| 1,
            ),
            WriteInput::ExpireTombstones(now) => Step::of(
                Op::ExpireTombstones,
                tx.prepare_cached(EXPIRE_TOMBSTONES_SQL)
                    .and_then(|mut stmt| stmt.execute([now]).map(|n| n as u64)),
                WriteOutput::Count,
                |n| *n,
            ),
            WriteInput::Clear => Step::of(
                Op::Clear,
                tx.execute("DELETE FROM pages", []).map(|n| n as u64),
                WriteOutput::Count,
                |n| *n,
            ),
        }
    }
}

/// A purge: its rows and its tombstone in one savepoint, so that it fails whole.
fn purge(tx: &mut Transaction<'_>, tombstone: &Tombstone) -> rusqlite::Result<PurgeOutcome> {
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
