//! Serialises HALTs of one database inside this process.
//!
//! LiteFS allows one HALT per handle and makes a second handle on the same node wait 10 s and
//! then fail with `EIO`, so halts from different threads or tasks must queue here instead of
//! in the kernel. Each database (keyed by its lock-file path) has one slot; a permit holds it.
//!
//! The slot works for blocking callers (condition variable) and async callers (wakers) alike,
//! without depending on any runtime. It is not strictly FIFO: on release, one blocked thread
//! and every waiting task are woken and race for the slot.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

#[derive(Default)]
pub(crate) struct Slot {
    state: Mutex<SlotState>,
    released: Condvar,
}

#[derive(Default)]
struct SlotState {
    held: bool,
    wakers: Vec<Waker>,
}

/// Holds the slot; dropping it lets the next HALT of the database in this process proceed.
pub(crate) struct SlotPermit {
    slot: Arc<Slot>,
}

impl std::fmt::Debug for SlotPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotPermit")
    }
}

impl Slot {
    /// The state is a flag and a list; a panic while it is locked cannot leave it inconsistent,
    /// so a poisoned lock is simply taken over.
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the slot, until `deadline` if given; `None` on timeout.
    pub(crate) fn acquire_blocking(
        self: &Arc<Self>,
        deadline: Option<Instant>,
    ) -> Option<SlotPermit> {
        let mut state = self.lock();
        while state.held {
            state = match deadline {
                None => self.released.wait(state).unwrap_or_else(|p| p.into_inner()),
                Some(d) => {
                    let left = d.checked_duration_since(Instant::now())?;
                    self.released
                        .wait_timeout(state, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
            };
        }
        state.held = true;
        Some(SlotPermit { slot: self.clone() })
    }

    /// Waits for the slot asynchronously. Cancel-safe: the permit only exists once the future
    /// completes, so dropping it never leaks the slot.
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))] // only the async API waits this way
    pub(crate) fn acquire(self: &Arc<Self>) -> Acquire {
        Acquire { slot: self.clone() }
    }

    #[cfg(test)]
    fn is_held(&self) -> bool {
        self.lock().held
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        let wakers = {
            let mut state = self.slot.lock();
            state.held = false;
            std::mem::take(&mut state.wakers)
        };
        self.slot.released.notify_one();
        // Wake outside the lock: a waker may run the task's poll inline.
        for w in wakers {
            w.wake();
        }
    }
}

/// Future returned by [`Slot::acquire`].
#[cfg_attr(not(feature = "tokio"), allow(dead_code))]
pub(crate) struct Acquire {
    slot: Arc<Slot>,
}

impl Future for Acquire {
    type Output = SlotPermit;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<SlotPermit> {
        let mut state = self.slot.lock();
        if !state.held {
            state.held = true;
            return Poll::Ready(SlotPermit {
                slot: self.slot.clone(),
            });
        }
        if !state.wakers.iter().any(|w| w.will_wake(cx.waker())) {
            state.wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// The slot for the database whose lock file is `lock_path`. Entries die with their last user.
pub(crate) fn slot_for(lock_path: &Path) -> Arc<Slot> {
    static SLOTS: OnceLock<Mutex<HashMap<PathBuf, Weak<Slot>>>> = OnceLock::new();
    let mut slots = SLOTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(slot) = slots.get(lock_path).and_then(Weak::upgrade) {
        return slot;
    }
    slots.retain(|_, w| w.strong_count() > 0);
    let slot = Arc::new(Slot::default());
    slots.insert(lock_path.to_owned(), Arc::downgrade(&slot));
    slot
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn same_path_shares_a_slot_and_others_do_not() {
        let a = slot_for(Path::new("/x/a.db-lock"));
        let b = slot_for(Path::new("/x/a.db-lock"));
        let c = slot_for(Path::new("/x/c.db-lock"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
    }

    #[test]
    fn blocking_acquire_times_out_while_held_and_succeeds_after_release() {
        let slot = Arc::new(Slot::default());
        let permit = slot.acquire_blocking(None).unwrap();
        let deadline = Instant::now() + Duration::from_millis(50);
        assert!(slot.acquire_blocking(Some(deadline)).is_none());
        let waiter = {
            let slot = slot.clone();
            std::thread::spawn(move || {
                slot.acquire_blocking(Some(Instant::now() + Duration::from_secs(5)))
                    .is_some()
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        drop(permit);
        assert!(waiter.join().unwrap());
        assert!(!slot.is_held(), "the waiter's permit was dropped with it");
    }
}
