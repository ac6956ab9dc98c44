//! Process-wide counters, shared by every request and served by `GET /_caje/stats`.
//!
//! Plain relaxed atomics: they are statistics, nothing is ordered by them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Counters of what the cache did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Proxied requests (admin requests excluded).
    pub requests: AtomicU64,
    /// Answered from the cache.
    pub hits: AtomicU64,
    /// Hits answered on the fast path ([`crate::fast`]), without hyper (also in `hits`).
    pub fast_hits: AtomicU64,
    /// Fast-path hits whose body the kernel sent from a kept entry file (`sendfile`).
    pub fast_sendfile: AtomicU64,
    /// Requests the fast path passed to the full path one at a time, keeping the connection
    /// (misses, conditionals, admin calls: any bodiless request it does not answer).
    pub fast_passed: AtomicU64,
    /// Connections the fast path handed to hyper for good: a request with a body or an
    /// upgrade, or one hyper refuses.
    pub fast_handovers: AtomicU64,
    /// Went to the origin.
    pub misses: AtomicU64,
    /// Responses written to the cache.
    pub stored: AtomicU64,
    /// Responses the policy refused to store.
    pub not_stored: AtomicU64,
    /// Store attempts that failed (I/O error, disk full, writer too slow).
    pub store_failures: AtomicU64,
    /// Entries found corrupt (undecodable metadata, bad body checksum) and removed.
    pub corrupt_entries: AtomicU64,
    /// Origin failures answered with 502/504 or an aborted body.
    pub origin_errors: AtomicU64,
    /// Requests that waited for another request's origin fetch instead of making their own.
    pub collapsed: AtomicU64,
    /// Conditional revalidations the origin answered with 304.
    pub revalidated: AtomicU64,
    /// Stale responses served (stale-while-revalidate, stale-if-error, origin unreachable).
    pub stale_served: AtomicU64,
    /// Background revalidations started (stale-while-revalidate).
    pub background_revalidations: AtomicU64,
    /// Entries removed by purges and invalidations.
    pub purged: AtomicU64,
    /// Entries evicted to stay within `cache.max_disk_bytes` / `cache.max_entries` (counted
    /// once their files are deleted).
    pub evictions: AtomicU64,
    /// Fills from edge warming dropped at commit: no free room, or the warming share
    /// (`populate.max_fraction`) was used up. Warming never evicts.
    pub warm_refused: AtomicU64,
    /// Peer requests this node answered from its cache.
    pub peer_served: AtomicU64,
    /// Peer requests this node refused or could not answer (miss, behind on purges, token).
    pub peer_misses: AtomicU64,
    /// Pages this node filled from a peer's answer.
    pub peer_fills: AtomicU64,
    /// Peer fills that went to the origin instead (no answer in time, a miss, a bad answer).
    pub peer_fallbacks: AtomicU64,
    /// Origin response body bytes received (client fetches, revalidations and populate).
    pub origin_body_bytes: AtomicU64,
    /// Last time a store failure was logged, for rate limiting.
    last_store_failure_log: Mutex<Option<Instant>>,
}

impl Stats {
    /// Adds one to a counter.
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads a counter.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Counts a store failure and logs it at most once per 10 s, so a full disk does not
    /// flood the log with one line per request.
    pub fn store_failed(&self, what: &str, err: &dyn std::fmt::Display) {
        let n = self.store_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_store_failure_log
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10)) {
            *last = Some(now);
            tracing::warn!(
                failures_total = n,
                "cache store failed ({what}): {err}; the response was served uncached"
            );
        }
    }
}
