//! HALT's lease: how long a guard may be trusted, measured on this process's own clock.
//!
//! LiteFS expires a remote HALT 30–35 s after the primary granted it and does not tell the
//! replica: `F_OFD_GETLK` keeps reporting the lock, and the primary still accepts the
//! replica's commits. Worse, once the primary has written after the expiry, the replica's
//! replication stops while the replica still holds the halt (LiteFS v0.5.14 deadlocks applying
//! the primary's transaction; only restarting that node recovers). The only safe signal is a
//! clock: a guard trusts itself for a *lease* shorter than LiteFS's lifetime, counted from just
//! before the lock was requested (so it starts no later than the primary's own timer).
//!
//! The clock is injectable ([`Clock`], [`ManualClock`]) so that expiry can be tested without
//! waiting 30 s.

use std::fmt;
use std::fs::File;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::coordinator::SlotPermit;
use crate::halt::HALT_LIFETIME;
#[cfg(target_os = "linux")]
use crate::ofd::{self, LockRange};

/// How much of LiteFS's [`HALT_LIFETIME`] a guard leaves unused by default: room for the last
/// COMMIT's round trip to the primary, a `busy_timeout` wait inside the transaction, and the
/// release, so that everything done under a live lease lands before LiteFS can expire the halt.
pub const HALT_SAFETY_MARGIN: Duration = Duration::from_secs(5);

/// The default lease of a [`crate::HaltGuard`]: [`HALT_LIFETIME`] less [`HALT_SAFETY_MARGIN`]
/// (25 s). Change it per database with [`crate::Database::with_halt_lease`].
///
/// ```
/// assert_eq!(litefs::DEFAULT_HALT_LEASE, litefs::HALT_LIFETIME - litefs::HALT_SAFETY_MARGIN);
/// ```
pub const DEFAULT_HALT_LEASE: Duration =
    Duration::from_secs(HALT_LIFETIME.as_secs() - HALT_SAFETY_MARGIN.as_secs());

/// A monotonic time source for HALT leases. [`MonotonicClock`] (the default) reads
/// [`Instant::now`]; [`ManualClock`] lets tests move time by hand.
///
/// ```
/// use std::time::Instant;
///
/// /// A clock that runs a minute ahead (any monotonic source will do).
/// #[derive(Debug)]
/// struct Ahead;
/// impl litefs::Clock for Ahead {
///     fn now(&self) -> Instant {
///         Instant::now() + std::time::Duration::from_secs(60)
///     }
/// }
/// assert!(litefs::Clock::now(&Ahead) > Instant::now());
/// ```
pub trait Clock: fmt::Debug + Send + Sync {
    /// The current instant. Must never go backwards.
    fn now(&self) -> Instant;
}

/// The real clock: [`Instant::now`].
///
/// ```
/// use litefs::Clock;
/// let a = litefs::MonotonicClock.now();
/// assert!(litefs::MonotonicClock.now() >= a);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct MonotonicClock;

impl Clock for MonotonicClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that only moves when told to, for tests of lease expiry. Clones share the same
/// time, so keep one and hand a clone to [`crate::Database::with_clock`].
///
/// ```
/// use std::time::Duration;
/// use litefs::Clock;
///
/// let clock = litefs::ManualClock::new();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(26));
/// assert_eq!(clock.clone().now() - before, Duration::from_secs(26));
/// ```
#[derive(Clone, Debug)]
pub struct ManualClock {
    start: Instant,
    offset: Arc<Mutex<Duration>>,
}

impl ManualClock {
    /// A clock stopped at the real current instant.
    ///
    /// ```
    /// use litefs::Clock;
    /// let clock = litefs::ManualClock::new();
    /// assert_eq!(clock.now(), clock.now());
    /// ```
    pub fn new() -> ManualClock {
        ManualClock {
            start: Instant::now(),
            offset: Arc::new(Mutex::new(Duration::ZERO)),
        }
    }

    /// Moves this clock and all its clones forward by `by`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use litefs::Clock;
    /// let clock = litefs::ManualClock::new();
    /// let t0 = clock.now();
    /// clock.advance(Duration::from_millis(5));
    /// assert_eq!(clock.now() - t0, Duration::from_millis(5));
    /// ```
    pub fn advance(&self, by: Duration) {
        // A Duration cannot be left half-updated: a poisoned lock is simply taken over.
        let mut offset = self.offset.lock().unwrap_or_else(|p| p.into_inner());
        *offset = offset.saturating_add(by);
    }
}

impl Default for ManualClock {
    fn default() -> ManualClock {
        ManualClock::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        let offset = *self.offset.lock().unwrap_or_else(|p| p.into_inner());
        // Saturates instead of panicking on an absurd offset: time then just stops.
        self.start.checked_add(offset).unwrap_or(self.start)
    }
}

/// The lease settings a [`crate::Database`] hands to the guards it creates.
#[derive(Clone, Debug)]
pub(crate) struct LeaseConfig {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) duration: Duration,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            clock: Arc::new(MonotonicClock),
            duration: DEFAULT_HALT_LEASE,
        }
    }
}

impl LeaseConfig {
    /// Starts a lease now: call it just before the lock request.
    pub(crate) fn start(&self) -> Lease {
        Lease {
            clock: Arc::clone(&self.clock),
            started: self.clock.now(),
            duration: self.duration,
        }
    }
}

/// One guard's lease.
#[derive(Debug)]
pub(crate) struct Lease {
    clock: Arc<dyn Clock>,
    started: Instant,
    duration: Duration,
}

impl Lease {
    pub(crate) fn duration(&self) -> Duration {
        self.duration
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.clock.now().saturating_duration_since(self.started)
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.duration.saturating_sub(self.elapsed())
    }

    pub(crate) fn is_expired(&self) -> bool {
        self.elapsed() >= self.duration
    }
}

/// Unlocks byte 72 explicitly before closing, so the release does not depend on close
/// semantics; errors cannot be reported here, and the close releases anyway.
pub(crate) fn unlock_and_close(file: File) {
    #[cfg(target_os = "linux")]
    let _ = ofd::unlock(&file, LockRange::HALT);
    drop(file);
}

/// Releases an expired remote HALT from a detached thread, then frees the process-queue
/// permit. If LiteFS has wedged (the primary wrote after expiring the halt), that unlock
/// blocks until LiteFS restarts, and only this thread waits.
pub(crate) fn release_in_background(file: File, permit: Option<SlotPermit>) {
    let spawned = std::thread::Builder::new()
        .name("litefs-expired-halt".into())
        .spawn(move || {
            unlock_and_close(file);
            drop(permit);
        });
    // Without a thread (resource exhaustion) the closure was dropped unrun, which closes the
    // descriptor here: that is the release too, only on the caller's thread.
    drop(spawned);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_expires_exactly_at_its_duration() {
        let clock = ManualClock::new();
        let config = LeaseConfig {
            clock: Arc::new(clock.clone()),
            duration: Duration::from_secs(25),
        };
        let lease = config.start();
        assert!(!lease.is_expired());
        assert_eq!(lease.remaining(), Duration::from_secs(25));
        clock.advance(Duration::from_millis(24_999));
        assert!(!lease.is_expired());
        assert_eq!(lease.remaining(), Duration::from_millis(1));
        clock.advance(Duration::from_millis(1));
        assert!(lease.is_expired());
        assert_eq!(lease.remaining(), Duration::ZERO);
        assert_eq!(lease.elapsed(), Duration::from_secs(25));
    }

    #[test]
    fn an_absurd_advance_saturates_instead_of_panicking() {
        let clock = ManualClock::new();
        clock.advance(Duration::MAX);
        clock.advance(Duration::MAX);
        let _ = clock.now();
    }
}
