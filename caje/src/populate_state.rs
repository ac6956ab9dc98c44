//! The state populate shares with the rest of the node: what wakes its task, the lock that
//! runs one pass at a time, progress counters, the last pass's report and the per-origin rate
//! slots. [`crate::app::App`] holds one [`Populate`] without knowing what populate does with
//! it; only [`crate::populate`] reads and writes its fields. A leaf: it uses nothing else in
//! caje.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Notify;

/// The counts of one pass.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PassReport {
    /// Rows in the manifest.
    pub listed: usize,
    /// Rows this node lacked (fresh, routable).
    pub candidates: usize,
    /// Pages fetched and stored.
    pub fetched: usize,
    /// Pages skipped: already held, being fetched by another request, expired, not
    /// storable when fetched, or purged on this node since the listing.
    pub skipped: usize,
    /// Pages whose fetch failed after retries.
    pub failed: usize,
    /// Rows not fetched because this node evicted that version of the page to stay within
    /// its cap (warmed again once the row changes).
    pub evicted: usize,
    /// Pages not fetched or not stored because warming had no free room or its share of the
    /// cap (`populate.max_fraction`) was used up. Warming never evicts.
    pub no_room: usize,
    /// How long the pass took.
    pub duration_ms: u64,
    /// When it finished, unix seconds.
    pub finished_at: u64,
}

/// What one reconcile did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReconcileReport {
    /// Entries on this node's disk.
    pub entries: usize,
    /// Entries announced: the manifest lacked them, or listed an older version.
    pub announced: usize,
    /// Rows those announcements inserted or updated.
    pub written: usize,
    /// Announcements refused because a purge this node had not applied covers them.
    pub purged: usize,
    /// Announcements that failed.
    pub failed: usize,
    /// How long it took.
    pub duration_ms: u64,
    /// When it finished, unix seconds.
    pub finished_at: u64,
}

/// Live state of the populate task, for `/_caje/status`.
#[derive(Default)]
pub struct Populate {
    /// Wakes the task for an immediate pass.
    pub(crate) wake: Notify,
    /// Serialises passes (the background task, the admin endpoint, the CLI).
    pub(crate) running: tokio::sync::Mutex<()>,
    pub(crate) passes: AtomicU64,
    pub(crate) in_progress_done: AtomicUsize,
    pub(crate) in_progress_total: AtomicUsize,
    pub(crate) tombstones_applied: AtomicU64,
    /// Pages fetched, skipped and failed by every pass since start.
    pub(crate) pages: [AtomicU64; 3],
    pub(crate) last: Mutex<Option<PassReport>>,
    pub(crate) last_reconcile: Mutex<Option<ReconcileReport>>,
    /// Next time each origin may be sent a populate request (per-origin rate limit).
    pub(crate) next_slot: Mutex<HashMap<String, Instant>>,
}

/// A snapshot of [`Populate`] for the status endpoint.
#[derive(Debug, Serialize)]
pub struct PopulateStatus {
    /// Passes completed.
    pub passes: u64,
    /// `[done, total]` of the pass in progress, if any.
    pub in_progress: Option<[usize; 2]>,
    /// Tombstones from other nodes applied to this node's disk.
    pub tombstones_applied: u64,
    /// Pages fetched by every pass since start.
    pub pages_fetched: u64,
    /// Pages skipped (already held, or in flight) by every pass since start.
    pub pages_skipped: u64,
    /// Pages that could not be fetched, every pass since start.
    pub pages_failed: u64,
    /// The last completed pass.
    pub last_pass: Option<PassReport>,
    /// The last reconcile.
    pub last_reconcile: Option<ReconcileReport>,
}

impl Populate {
    /// Asks the background task for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// A snapshot for status output.
    pub fn status(&self) -> PopulateStatus {
        let total = self.in_progress_total.load(Ordering::Relaxed);
        PopulateStatus {
            passes: self.passes.load(Ordering::Relaxed),
            in_progress: (total > 0)
                .then(|| [self.in_progress_done.load(Ordering::Relaxed), total]),
            tombstones_applied: self.tombstones_applied.load(Ordering::Relaxed),
            pages_fetched: self.pages[0].load(Ordering::Relaxed),
            pages_skipped: self.pages[1].load(Ordering::Relaxed),
            pages_failed: self.pages[2].load(Ordering::Relaxed),
            last_pass: self.last.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            last_reconcile: self
                .last_reconcile
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Adds a finished pass's pages to the totals.
    pub(crate) fn count_pages(&self, report: &PassReport) {
        let counts = [report.fetched, report.skipped, report.failed];
        for (total, n) in self.pages.iter().zip(counts) {
            total.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Waits for this origin's next rate-limit slot.
    pub(crate) async fn rate_limit(&self, origin: &str, per_sec: f64) {
        if per_sec <= 0.0 {
            return;
        }
        let gap = Duration::from_secs_f64(1.0 / per_sec);
        let at = {
            let mut slots = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let slot = slots.entry(origin.to_owned()).or_insert(now);
            let at = (*slot).max(now);
            *slot = at + gap;
            at
        };
        tokio::time::sleep_until(at.into()).await;
    }
}
