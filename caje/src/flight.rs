//! Request coalescing: concurrent misses for one URL make one origin request.
//!
//! The first request for a URL becomes the *leader* and goes to the origin; requests that
//! arrive while it is in flight become *waiters*. When the leader's response turns out to be
//! storable, the leader publishes its head and the fill's progress, and each waiter whose
//! `Vary` variant matches reads the body from the fill's spool ([`crate::spool`]), as it arrives. When
//! it is not storable (or the leader fails or is dropped), waiters are released to fetch on
//! their own and the URL is remembered as uncacheable for a short time (hit-for-miss), so the
//! next burst is not serialised behind one request.
//!
//! A leader that is cancelled (its client went away, its task was dropped) releases its
//! waiters from `Drop`, so nobody waits for a request that no longer exists.
//!
//! Waiters are woken in the order they started waiting (one FIFO [`Notify`]), so under a
//! herd the clients that asked first are answered first. (A `watch` channel spreads its
//! receivers over 8 wait lists at random, which answered a herd in a shuffled order: the
//! slowest client was then often one that had asked early.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::{HeaderMap, StatusCode};
use tokio::sync::{watch, Notify};

use crate::cache::key::{CacheKey, Variant};
use crate::cache::store::{Entry, FillProgress};

/// What a waiter can use of the leader's response.
#[derive(Debug)]
pub struct SharedHead {
    /// Response status.
    pub status: StatusCode,
    /// Response headers as sent to the leader's client (hop-by-hop removed, without
    /// `Cache-Status`).
    pub headers: HeaderMap,
    /// The variant the response is stored under.
    pub variant: Variant,
    /// Declared body length, if any.
    pub content_length: Option<u64>,
    /// True once the leader handed the whole body to the cache writer.
    pub body_complete: Arc<std::sync::atomic::AtomicBool>,
    /// The fill's body, which every client of the flight reads at its own pace.
    pub spool: Arc<crate::spool::Spool>,
    /// The response's RFC 9111 policy, as it will be stored: a request that joins once the
    /// response has arrived may reuse it only while it is fresh for that request.
    pub policy: http_cache_semantics::CachePolicy,
}

/// The state of one flight, as waiters see it.
#[derive(Debug, Clone)]
pub enum FlightState {
    /// The leader is waiting for the origin.
    Fetching,
    /// The leader's response is storable and being written.
    Streaming {
        /// The response head.
        head: Arc<SharedHead>,
        /// The fill's progress.
        progress: watch::Receiver<FillProgress>,
    },
    /// A revalidation refreshed (or confirmed) this entry; serve it.
    Refreshed(Arc<Entry>),
    /// Nothing to share: fetch on your own.
    Released,
}

struct Flight {
    state: Mutex<FlightState>,
    /// Wakes the waiters, in the order they started waiting, when `state` changes.
    changed: Notify,
}

impl Flight {
    fn new() -> Arc<Flight> {
        Arc::new(Flight {
            state: Mutex::new(FlightState::Fetching),
            changed: Notify::new(),
        })
    }

    fn state(&self) -> FlightState {
        // Nothing panics while holding this lock; recover rather than poison every waiter.
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, state: FlightState) {
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = state;
        self.changed.notify_waiters();
    }
}

/// A request's hold on the flight it joined (or looked at).
pub struct Waiter {
    flight: Arc<Flight>,
}

impl Waiter {
    /// The flight's state now.
    pub fn state(&self) -> FlightState {
        self.flight.state()
    }

    /// Waits until the leader has settled the flight (anything but `Fetching`).
    pub async fn settled(&self) -> FlightState {
        loop {
            let changed = self.flight.changed.notified();
            tokio::pin!(changed);
            // Registered (in FIFO order) before the check, so a change in between is seen.
            changed.as_mut().enable();
            let state = self.flight.state();
            if !matches!(state, FlightState::Fetching) {
                return state;
            }
            changed.await;
        }
    }
}

#[derive(Default)]
struct Inner {
    flights: HashMap<CacheKey, Arc<Flight>>,
    uncacheable: HashMap<CacheKey, Instant>,
}

/// The table of flights in progress; cheap to clone.
#[derive(Clone, Default)]
pub struct Flights {
    inner: Arc<Mutex<Inner>>,
}

/// The role a request gets for a URL.
pub enum Join {
    /// Go to the origin; publish what you get through the guard.
    Leader(Leader),
    /// Wait for the leader's response.
    Waiter(Waiter),
    /// The URL was recently found uncacheable: go to the origin without coalescing.
    Bypass,
}

impl Flights {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // No code panics while holding this lock; recover rather than poison every request.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the flight for `key`, starting one if none is in progress.
    pub fn join(&self, key: &CacheKey) -> Join {
        let mut inner = self.lock();
        self.join_locked(&mut inner, key)
    }

    fn join_locked(&self, inner: &mut Inner, key: &CacheKey) -> Join {
        if let Some(until) = inner.uncacheable.get(key) {
            if *until > Instant::now() {
                return Join::Bypass;
            }
            inner.uncacheable.remove(key);
        }
        if let Some(f) = inner.flights.get(key) {
            return Join::Waiter(Waiter { flight: f.clone() });
        }
        let flight = Flight::new();
        inner.flights.insert(key.clone(), flight.clone());
        Join::Leader(Leader {
            flights: self.clone(),
            key: key.clone(),
            flight,
            settled: false,
        })
    }

    /// Joins the flight for `key` again after the flight `done` could not serve this request
    /// (its fill is committed, and the entry is not fresh for the request): `done` is over
    /// for this request, so it is replaced by a new flight this request leads, rather than
    /// joined again (it stays in the table until its own task removes it, just after the
    /// commit). Any other flight for `key` is joined as [`Flights::join`] does.
    pub fn rejoin(&self, key: &CacheKey, done: &Waiter) -> Join {
        let mut inner = self.lock();
        let finished = inner
            .flights
            .get(key)
            .is_some_and(|f| Arc::ptr_eq(f, &done.flight));
        if finished {
            inner.flights.remove(key);
        }
        self.join_locked(&mut inner, key)
    }

    /// Joins only if no flight is in progress (for background work that must happen at most
    /// once at a time, such as a stale-while-revalidate refresh).
    pub fn lead(&self, key: &CacheKey) -> Option<Leader> {
        match self.join(key) {
            Join::Leader(l) => Some(l),
            _ => None,
        }
    }

    /// The state of the flight in progress for `key`, if there is one; never starts one.
    pub fn watch(&self, key: &CacheKey) -> Option<Waiter> {
        self.lock()
            .flights
            .get(key)
            .map(|f| Waiter { flight: f.clone() })
    }

    /// Number of flights in progress.
    pub fn len(&self) -> usize {
        self.lock().flights.len()
    }

    /// Whether no flight is in progress.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn finish(&self, key: &CacheKey, flight: &Arc<Flight>) {
        let mut inner = self.lock();
        if inner
            .flights
            .get(key)
            .is_some_and(|f| Arc::ptr_eq(f, flight))
        {
            inner.flights.remove(key);
        }
    }

    fn mark_uncacheable(&self, key: &CacheKey, for_: Duration) {
        let mut inner = self.lock();
        // Keep the table small: drop expired marks while we hold the lock anyway.
        if inner.uncacheable.len() > 10_000 {
            let now = Instant::now();
            inner.uncacheable.retain(|_, until| *until > now);
        }
        inner.uncacheable.insert(key.clone(), Instant::now() + for_);
    }
}

/// The leader's handle. Dropping it without settling releases the waiters.
pub struct Leader {
    flights: Flights,
    key: CacheKey,
    flight: Arc<Flight>,
    settled: bool,
}

impl Leader {
    /// The response is storable and being written: waiters stream it from the fill. The
    /// flight stays joinable until the fill is committed or fails, so late arrivals share it.
    pub fn streaming(mut self, head: SharedHead, progress: watch::Receiver<FillProgress>) {
        self.settled = true;
        self.flight.set(FlightState::Streaming {
            head: Arc::new(head),
            progress: progress.clone(),
        });
        let flights = self.flights.clone();
        let key = self.key.clone();
        let flight = self.flight.clone();
        let mut progress = progress;
        tokio::spawn(async move {
            // Ends when the fill is committed or fails (or its sender is gone).
            let committed = progress
                .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
                .await
                .is_ok_and(|p| matches!(*p, FillProgress::Committed(..)));
            if !committed {
                // Requests joining from now on fetch on their own.
                flight.set(FlightState::Released);
            }
            flights.finish(&key, &flight);
        });
    }

    /// A revalidation confirmed or refreshed the stored entry: waiters serve it.
    pub fn refreshed(mut self, entry: Arc<Entry>) {
        self.settled = true;
        self.flight.set(FlightState::Refreshed(entry));
        self.flights.finish(&self.key, &self.flight);
    }

    /// The response is not storable: release the waiters and skip coalescing for this URL
    /// for `hit_for_miss`.
    pub fn uncacheable(mut self, hit_for_miss: Duration) {
        self.settled = true;
        if !hit_for_miss.is_zero() {
            self.flights.mark_uncacheable(&self.key, hit_for_miss);
        }
        self.release();
    }

    fn release(&self) {
        self.flight.set(FlightState::Released);
        self.flights.finish(&self.key, &self.flight);
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.settled {
            self.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::new(&crate::host::Host::parse("h", "http").unwrap(), "/a")
    }

    #[tokio::test]
    async fn second_request_waits_and_is_released_when_the_leader_drops() {
        let flights = Flights::default();
        let Join::Leader(leader) = flights.join(&key()) else {
            panic!("first must lead")
        };
        let Join::Waiter(waiter) = flights.join(&key()) else {
            panic!("second must wait")
        };
        drop(leader);
        assert!(matches!(waiter.settled().await, FlightState::Released));
        assert!(flights.is_empty());
        assert!(matches!(flights.join(&key()), Join::Leader(_)));
    }

    #[tokio::test]
    async fn waiters_are_woken_in_the_order_they_started_waiting() {
        let flights = Flights::default();
        let Join::Leader(leader) = flights.join(&key()) else {
            panic!("first must lead")
        };
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..40 {
            let Join::Waiter(waiter) = flights.join(&key()) else {
                panic!("must wait")
            };
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                waiter.settled().await;
                order.lock().unwrap().push(i);
            }));
            // Let this one start waiting before the next joins.
            tokio::task::yield_now().await;
        }
        drop(leader);
        for t in tasks {
            t.await.unwrap();
        }
        let order = order.lock().unwrap().clone();
        assert_eq!(order, (0..40).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn uncacheable_marks_hit_for_miss() {
        let flights = Flights::default();
        let Join::Leader(leader) = flights.join(&key()) else {
            panic!()
        };
        leader.uncacheable(Duration::from_secs(60));
        assert!(matches!(flights.join(&key()), Join::Bypass));
        assert!(matches!(
            flights.join(&CacheKey::new(
                &crate::host::Host::parse("h", "http").unwrap(),
                "/b"
            )),
            Join::Leader(_)
        ));
    }

    #[tokio::test]
    async fn lead_is_exclusive() {
        let flights = Flights::default();
        let first = flights.lead(&key());
        assert!(first.is_some());
        assert!(flights.lead(&key()).is_none());
        drop(first);
        assert!(flights.lead(&key()).is_some());
    }
}
