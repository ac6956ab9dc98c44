//! The memory tier: bodies of small, recently served entries kept in RAM, least recently used
//! evicted first, bounded in bytes.
//!
//! A body enters only after it was read from disk and passed its checksum, so the memory tier
//! never serves bytes the disk tier would have refused. Keys are body file names, which are
//! unique per fill: a replaced entry's old body can never be served for the new one, and the
//! store drops the key when it removes the entry.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use bytes::Bytes;

/// Bodies larger than this stay on disk only.
pub const MAX_HOT_BODY: u64 = 256 * 1024;

#[derive(Default)]
struct Lru {
    /// body file → (body, last use tick)
    bodies: HashMap<String, (Bytes, u64)>,
    /// last use tick → body file, oldest first
    order: BTreeMap<u64, String>,
    bytes: usize,
    tick: u64,
}

/// A byte-bounded LRU of bodies.
pub struct HotTier {
    budget: usize,
    lru: Mutex<Lru>,
}

impl HotTier {
    /// A tier holding at most `budget` bytes of bodies (0 disables it).
    pub fn new(budget: usize) -> HotTier {
        HotTier {
            budget,
            lru: Mutex::new(Lru::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru> {
        // Nothing panics while holding it; a poisoned map is still consistent enough to use.
        self.lru.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body stored under `key`, marking it recently used.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        if self.budget == 0 {
            return None;
        }
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        let (body, old) = {
            let (body, last) = lru.bodies.get_mut(key)?;
            let old = std::mem::replace(last, tick);
            (body.clone(), old)
        };
        if let Some(name) = lru.order.remove(&old) {
            lru.order.insert(tick, name);
        }
        Some(body)
    }

    /// Keeps `body` under `key`, evicting the least recently used bodies beyond the budget.
    pub fn insert(&self, key: &str, body: Bytes) {
        if self.budget == 0 || body.len() as u64 > MAX_HOT_BODY || body.len() > self.budget {
            return;
        }
        let mut lru = self.lock();
        lru.tick += 1;
        let tick = lru.tick;
        if let Some((old, last)) = lru.bodies.insert(key.to_owned(), (body.clone(), tick)) {
            lru.bytes -= old.len();
            lru.order.remove(&last);
        }
        lru.order.insert(tick, key.to_owned());
        lru.bytes += body.len();
        while lru.bytes > self.budget {
            let Some((_, victim)) = lru.order.pop_first() else {
                break;
            };
            if let Some((b, _)) = lru.bodies.remove(&victim) {
                lru.bytes -= b.len();
            }
        }
    }

    /// Forgets `key` (its entry was removed or replaced).
    pub fn remove(&self, key: &str) {
        let mut lru = self.lock();
        if let Some((b, last)) = lru.bodies.remove(key) {
            lru.bytes -= b.len();
            lru.order.remove(&last);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        *self.lock() = Lru::default();
    }

    /// Bodies held and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let lru = self.lock();
        (lru.bodies.len(), lru.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_budget() {
        let hot = HotTier::new(10);
        hot.insert("a", Bytes::from_static(b"aaaa"));
        hot.insert("b", Bytes::from_static(b"bbbb"));
        assert!(hot.get("a").is_some()); // a is now newer than b
        hot.insert("c", Bytes::from_static(b"cccc"));
        assert!(hot.get("b").is_none(), "b was least recently used");
        assert_eq!(hot.get("a").as_deref(), Some(&b"aaaa"[..]));
        assert_eq!(hot.get("c").as_deref(), Some(&b"cccc"[..]));
        assert_eq!(hot.usage(), (2, 8));
        hot.remove("a");
        assert_eq!(hot.usage(), (1, 4));
        hot.insert("big", Bytes::from(vec![0u8; 11]));
        assert!(hot.get("big").is_none(), "larger than the budget");
        hot.clear();
        assert_eq!(hot.usage(), (0, 0));
    }

    #[test]
    fn zero_budget_disables() {
        let hot = HotTier::new(0);
        hot.insert("a", Bytes::from_static(b"a"));
        assert!(hot.get("a").is_none());
    }
}
