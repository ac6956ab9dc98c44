//! [`ManifestStats`], the owner thread's counters, and [`LogLimit`], which keeps a repeated
//! warning (a failing flush, a full queue) to one line per [`LOG_EVERY`].

use std::time::{Duration, Instant};

// Only named by doc links.
#[cfg(doc)]
use super::{Manifest, ManifestError};

/// A failing flush or a full queue is logged at most this often (with the number of events not
/// logged), so that an outage of the primary does not flood the log.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Lets an event be logged at most once per [`LOG_EVERY`].
#[derive(Debug, Default)]
pub(super) struct LogLimit {
    last: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// `Some(events not logged since the last time)` when this one may be logged.
    pub(super) fn allow(&mut self) -> Option<u64> {
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
    /// The longest any of those HALTs was held, in milliseconds, from just before the lock
    /// request to its release (acquisition, transaction and commit round trips included).
    /// LiteFS expires a HALT after 30 s without telling this node; caje's flushes keep theirs
    /// in milliseconds, and a commit past the lease is refused and retried under a new HALT.
    pub halt_max_held_ms: u64,
    /// Writes refused with [`ManifestError::QueueFull`].
    pub overflow: u64,
    /// Time spent in flushes that wrote (or failed), HALT included, in microseconds.
    pub flush_micros: u64,
    /// Time spent waiting for HALT, in microseconds.
    pub halt_wait_micros: u64,
    /// The most recent flush failure. Kept after the flushes recover; compare
    /// [`failed_flushes`](Self::failed_flushes) and [`pending`](Self::pending) to tell.
    pub last_error: Option<String>,
}
