//! The memory tier: bodies of small entries served recently, bounded in bytes, on the same
//! scan-resistant policy as the disk tier (S3-FIFO, [`crate::cache::evict`]): a body enters a
//! small probation queue and joins the main queue only if it is served again, so a one-time
//! crawl of many small pages cannot push the pages clients keep asking for out of RAM (an LRU
//! would).
//!
//! A body enters only after it was read from disk and passed its checksum, so the memory tier
//! never serves bytes the disk tier would have refused. Keys are body file names, which are
//! unique per fill: a replaced entry's old body can never be served for the new one, and the
//! store drops the key when it removes the entry.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;

use super::evict::{Key, Policy};

/// Bodies larger than this stay on disk only.
pub const MAX_HOT_BODY: u64 = 256 * 1024;

/// The policy's key for a body file name: 128-bit FNV-1a. Names come from SHA-256 and a
/// per-process counter, so nobody can aim at a collision; a collision would still only cost a
/// miss, since the stored name is compared on every lookup.
fn key_of(name: &str) -> Key {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    name.bytes()
        .fold(OFFSET, |h, b| (h ^ u128::from(b)).wrapping_mul(PRIME))
}

struct Bodies {
    /// policy key → (body file name, body)
    map: HashMap<Key, (Box<str>, Bytes)>,
    policy: Policy,
    bytes: usize,
}

impl Bodies {
    fn new(budget: usize) -> Bodies {
        Bodies {
            map: HashMap::new(),
            policy: Policy::new(budget as u64, None),
            bytes: 0,
        }
    }

    fn drop_key(&mut self, key: Key) {
        if let Some((_, b)) = self.map.remove(&key) {
            self.bytes -= b.len();
        }
    }
}

/// A byte-bounded, scan-resistant set of bodies.
pub struct HotTier {
    budget: usize,
    bodies: Mutex<Bodies>,
}

impl HotTier {
    /// A tier holding at most `budget` bytes of bodies (0 disables it).
    pub fn new(budget: usize) -> HotTier {
        HotTier {
            budget,
            bodies: Mutex::new(Bodies::new(budget)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bodies> {
        // Nothing panics while holding it; a poisoned map is still consistent enough to use.
        self.bodies.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body stored under `key`, counted as a use.
    pub fn get(&self, key: &str) -> Option<Bytes> {
        if self.budget == 0 {
            return None;
        }
        let k = key_of(key);
        let mut b = self.lock();
        let body = match b.map.get(&k) {
            Some((name, body)) if &**name == key => body.clone(),
            _ => return None,
        };
        b.policy.touch(k);
        Some(body)
    }

    /// Keeps `body` under `key` (it was just read from disk: a use), evicting what the policy
    /// names to stay within the budget.
    pub fn insert(&self, key: &str, body: Bytes) {
        if self.budget == 0 || body.len() as u64 > MAX_HOT_BODY || body.len() > self.budget {
            return;
        }
        let k = key_of(key);
        let mut b = self.lock();
        if b.map.get(&k).is_some_and(|(name, _)| &**name != key) {
            // Another name under the same key (never in practice): the newer one wins.
            b.policy.remove(k);
            b.drop_key(k);
        }
        for victim in b.policy.admit(k, body.len() as u64) {
            b.drop_key(victim);
        }
        if b.policy.contains(k) {
            b.bytes += body.len();
            if let Some((_, old)) = b.map.insert(k, (key.into(), body)) {
                b.bytes -= old.len();
            }
        } else {
            b.drop_key(k);
        }
    }

    /// Forgets `key` (its entry was removed or replaced).
    pub fn remove(&self, key: &str) {
        let k = key_of(key);
        let mut b = self.lock();
        if b.map.get(&k).is_some_and(|(name, _)| &**name == key) {
            b.policy.remove(k);
            b.drop_key(k);
        }
    }

    /// Forgets everything.
    pub fn clear(&self) {
        *self.lock() = Bodies::new(self.budget);
    }

    /// Bodies held and their bytes.
    pub fn usage(&self) -> (usize, usize) {
        let b = self.lock();
        (b.map.len(), b.bytes)
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
    fn a_one_time_scan_does_not_flush_the_bodies_served_again() {
        // 100 KiB of RAM; ten 4 KiB bodies served over and over, then 1,000 served once.
        let hot = HotTier::new(100 * 1024);
        let body = Bytes::from(vec![7u8; 4096]);
        for round in 0..3 {
            for i in 0..10 {
                let name = format!("hot{i}");
                if hot.get(&name).is_none() {
                    assert_eq!(round, 0, "{name} was lost before the scan");
                    hot.insert(&name, body.clone());
                }
            }
        }
        for i in 0..1000 {
            let name = format!("scan{i}");
            if hot.get(&name).is_none() {
                hot.insert(&name, body.clone());
            }
        }
        let kept = (0..10)
            .filter(|i| hot.get(&format!("hot{i}")).is_some())
            .count();
        assert_eq!(kept, 10, "the scan flushed the hot bodies");
        let (_, bytes) = hot.usage();
        assert!(bytes <= 100 * 1024, "{bytes} bytes over the budget");
    }

    #[test]
    fn zero_budget_disables() {
        let hot = HotTier::new(0);
        hot.insert("a", Bytes::from_static(b"a"));
        assert!(hot.get("a").is_none());
    }
}
