//! Scan-resistant, weighted eviction (S3-FIFO, Yang et al., SOSP 2023) that only names
//! victims: the caller stores and deletes, the policy decides who goes.
//!
//! # Why S3-FIFO, and why by hand
//! Most objects a CDN sees are requested once. S3-FIFO admits every new object into a small
//! FIFO (10% of the capacity); only objects asked for again while there move to the main
//! FIFO, which keeps a 2-bit frequency and reinserts used objects instead of evicting them.
//! A one-time scan therefore passes through the small queue and leaves the main queue (the
//! hot set) alone, which an LRU cannot do. A ghost FIFO of key fingerprints remembers recent
//! one-time victims, so an object that comes back soon is admitted straight into main.
//!
//! The maintained crates were weighed (see docs/benchmarks.md): `quick_cache` is an
//! S3-FIFO-like map, but it owns the values, reports a replaced value as an eviction, admits
//! new entries "hot" while the cache fills (so warmed pages would outrank client pages) and
//! splits the weight capacity across shards; `moka` (W-TinyLFU) keeps each entry as a
//! reference-counted node in access-order deques and runs its own housekeeping; `foyer` is a whole hybrid storage engine that
//! would replace the store rather than serve it. caje needs a victim-naming policy with a
//! fixed-size key, a lowest-priority class for warmed pages and a few dozen bytes per entry.
//!
//! # Priorities
//! Three resident FIFOs, evicted in this order:
//! 1. `warm`: pages brought in by edge warming ([`Policy::admit_warm`]) that no client of this
//!    node has asked for yet. They are evicted before anything a client used, and they are
//!    only admitted into free room, so warming never evicts a page.
//! 2. `small`: new client admissions; leave for `main` if touched, else are evicted (their
//!    fingerprint goes to the ghost).
//! 3. `main`: objects touched at least once in `small`, or that came back from the ghost.
//!
//! # Cost
//! Every operation is O(1) amortised. Queues hold `(key, stamp)` slots and are cleaned
//! lazily: a slot whose stamp no longer matches its entry is skipped, and a queue is compacted
//! when more than half of its slots are stale. See [`Policy::heap_bytes`] for the memory.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// A cache key as the policy sees it: a uniformly distributed 128-bit hash of the entry's
/// identity (caje uses the leading bytes of the entry's SHA-256 name).
pub type Key = u128;

/// How many times an entry's frequency counts a touch (S3-FIFO's two bits).
const MAX_FREQ: u8 = 3;
/// The small queue's share of the capacity, in percent (the paper's 10%).
const SMALL_PERCENT: u64 = 10;

/// Stored in 4-byte words so that the map's entries stay 4-byte aligned (a `u128` field
/// would pad every entry to 16-byte alignment).
#[derive(Clone, Copy, PartialEq, Eq)]
struct K([u32; 4]);

impl K {
    fn new(k: Key) -> K {
        K([
            k as u32,
            (k >> 32) as u32,
            (k >> 64) as u32,
            (k >> 96) as u32,
        ])
    }
    fn get(self) -> Key {
        let [a, b, c, d] = self.0.map(u128::from);
        a | b << 32 | c << 64 | d << 96
    }
    fn fingerprint(self) -> Fp {
        Fp([self.0[0], self.0[1]])
    }
}

impl Hash for K {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | u64::from(self.0[1]) << 32);
    }
}

/// The ghost remembers 64 bits of a key: a false match only admits an object into `main`.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Fp([u32; 2]);

impl Hash for Fp {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(u64::from(self.0[0]) | u64::from(self.0[1]) << 32);
    }
}

/// Keys are already hashes, so one multiply-and-fold spreads them over the table; a cryptographic
/// hasher would only cost time. (An adversary cannot aim at buckets without inverting SHA-256.)
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type Build = BuildHasherDefault<FoldHasher>;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Warm,
    Small,
    Main,
}

/// One resident entry: 12 bytes.
#[derive(Clone, Copy)]
struct Meta {
    weight: u32,
    /// The stamp of the one queue slot that is this entry's current position.
    stamp: u32,
    freq: u8,
    queue: Queue,
}

#[derive(Clone, Copy)]
struct Slot {
    key: K,
    stamp: u32,
}

#[derive(Clone, Copy)]
struct GhostSlot {
    fp: Fp,
    stamp: u32,
}

/// Why [`Policy::admit_warm`] refused a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WarmRefused {
    /// Admitting it would evict something: warming only uses free room.
    #[error("no free room: warming never evicts")]
    NoRoom,
    /// Warmed pages would exceed their share of the capacity.
    #[error("the warming share of the capacity is used up")]
    ShareUsed,
}

/// The eviction policy: which keys are resident, their weights and who goes next. Not
/// thread-safe by itself; callers share it behind one `Mutex` (every call is O(1) amortised).
pub struct Policy {
    capacity: u64,
    max_entries: usize,
    map: HashMap<K, Meta, Build>,
    warm: VecDeque<Slot>,
    small: VecDeque<Slot>,
    main: VecDeque<Slot>,
    ghost: HashMap<Fp, u32, Build>,
    ghost_order: VecDeque<GhostSlot>,
    used: u64,
    warm_used: u64,
    small_used: u64,
    main_len: usize,
    stamp: u32,
}

/// Counters for one [`Policy`], for stats and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Resident entries.
    pub entries: usize,
    /// Sum of their weights.
    pub used: u64,
    /// Weight of warmed entries no client has touched yet.
    pub warm: u64,
    /// The capacity in weight units.
    pub capacity: u64,
}

impl Policy {
    /// A policy holding at most `capacity` weight units and, if given, `max_entries` entries.
    /// The unit is the caller's: bytes for the memory tier, disk blocks for the disk tier.
    pub fn new(capacity: u64, max_entries: Option<usize>) -> Policy {
        Policy {
            capacity,
            max_entries: max_entries.unwrap_or(usize::MAX),
            map: HashMap::default(),
            warm: VecDeque::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: HashMap::default(),
            ghost_order: VecDeque::new(),
            used: 0,
            warm_used: 0,
            small_used: 0,
            main_len: 0,
            stamp: 0,
        }
    }

    /// Entries, weight used, warm weight and capacity.
    pub fn usage(&self) -> Usage {
        Usage {
            entries: self.map.len(),
            used: self.used,
            warm: self.warm_used,
            capacity: self.capacity,
        }
    }

    /// Whether `key` is resident (does not count as a use).
    pub fn contains(&self, key: Key) -> bool {
        self.map.contains_key(&K::new(key))
    }

    /// The weight `key` is admitted with, if resident (does not count as a use).
    pub fn weight(&self, key: Key) -> Option<u64> {
        self.map.get(&K::new(key)).map(|m| u64::from(m.weight))
    }

    /// Records a client's use of `key` (a hit). Returns whether it is resident. A warmed
    /// entry becomes a client entry.
    pub fn touch(&mut self, key: Key) -> bool {
        let Some(m) = self.map.get_mut(&K::new(key)) else {
            return false;
        };
        m.freq = (m.freq + 1).min(MAX_FREQ);
        if m.queue == Queue::Warm && m.freq == 1 {
            // It stays in the warm queue until it reaches the tail; eviction then moves it to
            // `small` because it is no longer unused (freq > 0).
            self.warm_used -= u64::from(m.weight);
        }
        true
    }

    /// Admits `key` with `weight` for a client (a fill) and returns the keys to delete to stay
    /// within the capacity. `key` itself is named when it can never fit (heavier than the whole
    /// capacity, or a weight over `u32::MAX` units). Admitting a resident key updates its
    /// weight and counts as a use.
    pub fn admit(&mut self, key: Key, weight: u64) -> Vec<Key> {
        let mut victims = Vec::new();
        let k = K::new(key);
        let Ok(w) = u32::try_from(weight) else {
            self.remove(key);
            victims.push(key);
            return victims;
        };
        if weight > self.capacity || self.max_entries == 0 {
            self.remove(key);
            victims.push(key);
            return victims;
        }
        if let Some(m) = self.map.get_mut(&k) {
            let old = u64::from(m.weight);
            m.weight = w;
            self.used = self.used - old + weight;
            match m.queue {
                Queue::Small => self.small_used = self.small_used - old + weight,
                Queue::Warm if m.freq == 0 => self.warm_used = self.warm_used - old + weight,
                _ => {}
            }
            self.touch(key);
            while self.over(0, 0) {
                if !self.evict_one(&mut victims) {
                    break;
                }
            }
            return victims;
        }
        // Evict before inserting, as the paper does, so a new object never evicts itself.
        while self.over(weight, 1) {
            if !self.evict_one(&mut victims) {
                break;
            }
        }
        let queue = if self.ghost.remove(&k.fingerprint()).is_some() {
            Queue::Main
        } else {
            Queue::Small
        };
        self.insert(k, w, queue);
        victims
    }

    /// Admits `key` for edge warming, at the lowest priority: only into free room (it never
    /// evicts), only while warmed entries untouched by clients weigh at most `share` units,
    /// and first in line for eviction until a client touches it. A resident key (a warmed
    /// refresh of a stale copy) keeps its place and its use count (warming is not a use); its
    /// weight is updated if the difference fits in the free room.
    pub fn admit_warm(&mut self, key: Key, weight: u64, share: u64) -> Result<(), WarmRefused> {
        self.warm_check(key, weight, share)?;
        let k = K::new(key);
        // `warm_check` refused weights over `u32::MAX`.
        let w = u32::try_from(weight).map_err(|_| WarmRefused::NoRoom)?;
        let Some(m) = self.map.get_mut(&k) else {
            self.insert(k, w, Queue::Warm);
            return Ok(());
        };
        let old = u64::from(m.weight);
        m.weight = w;
        self.used = self.used - old + weight;
        match m.queue {
            Queue::Small => self.small_used = self.small_used - old + weight,
            Queue::Warm if m.freq == 0 => self.warm_used = self.warm_used - old + weight,
            _ => {}
        }
        Ok(())
    }

    /// Whether [`Policy::admit_warm`] would admit `key` with `weight` now (changes nothing).
    pub fn warm_check(&self, key: Key, weight: u64, share: u64) -> Result<(), WarmRefused> {
        if u32::try_from(weight).is_err() {
            return Err(WarmRefused::NoRoom);
        }
        let (old, untouched_warm, entries) = match self.map.get(&K::new(key)) {
            Some(m) => (
                u64::from(m.weight),
                m.queue == Queue::Warm && m.freq == 0,
                0,
            ),
            None => (0, true, 1),
        };
        let grows = weight.saturating_sub(old);
        if (grows > 0 || entries > 0) && self.over(grows, entries) {
            return Err(WarmRefused::NoRoom);
        }
        if untouched_warm && grows > 0 && self.warm_used + grows > share {
            return Err(WarmRefused::ShareUsed);
        }
        Ok(())
    }

    /// Forgets `key` (purged, replaced elsewhere, found corrupt). Returns its weight.
    pub fn remove(&mut self, key: Key) -> Option<u64> {
        let m = self.map.remove(&K::new(key))?;
        let weight = u64::from(m.weight);
        self.used -= weight;
        match m.queue {
            Queue::Warm if m.freq == 0 => self.warm_used -= weight,
            Queue::Warm => {}
            Queue::Small => self.small_used -= weight,
            Queue::Main => self.main_len -= 1,
        }
        self.compact_if_stale();
        Some(weight)
    }

    /// Changes the capacity, returning the victims needed to fit under the new one.
    pub fn set_capacity(&mut self, capacity: u64) -> Vec<Key> {
        self.capacity = capacity;
        let mut victims = Vec::new();
        while self.over(0, 0) {
            if !self.evict_one(&mut victims) {
                break;
            }
        }
        victims
    }

    /// Heap bytes held by the policy's tables and queues, from their capacities (what the
    /// allocator gave them, not just what is in use).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one control byte per bucket plus the entries; buckets = capacity * 8/7.
        let table = |cap: usize, entry: usize| (cap * 8 / 7).next_power_of_two() * (entry + 1);
        table(self.map.capacity(), size_of::<(K, Meta)>())
            + table(self.ghost.capacity(), size_of::<(Fp, u32)>())
            + (self.warm.capacity() + self.small.capacity() + self.main.capacity())
                * size_of::<Slot>()
            + self.ghost_order.capacity() * size_of::<GhostSlot>()
    }

    fn over(&self, weight: u64, entries: usize) -> bool {
        self.used + weight > self.capacity || self.map.len() + entries > self.max_entries
    }

    fn next_stamp(&mut self) -> u32 {
        // Wrapping is harmless: a stale slot that matches again only moves one entry's turn.
        self.stamp = self.stamp.wrapping_add(1);
        self.stamp
    }

    fn insert(&mut self, k: K, w: u32, queue: Queue) {
        let stamp = self.next_stamp();
        let weight = u64::from(w);
        self.used += weight;
        let q = match queue {
            Queue::Warm => {
                self.warm_used += weight;
                &mut self.warm
            }
            Queue::Small => {
                self.small_used += weight;
                &mut self.small
            }
            Queue::Main => {
                self.main_len += 1;
                &mut self.main
            }
        };
        q.push_back(Slot { key: k, stamp });
        self.map.insert(
            k,
            Meta {
                weight: w,
                stamp,
                freq: 0,
                queue,
            },
        );
    }

    /// Pops the oldest live slot of `queue`, skipping stale ones.
    fn pop_live(&mut self, queue: Queue) -> Option<(K, Meta)> {
        loop {
            let q = match queue {
                Queue::Warm => &mut self.warm,
                Queue::Small => &mut self.small,
                Queue::Main => &mut self.main,
            };
            let slot = q.pop_front()?;
            if let Some(m) = self.map.get(&slot.key) {
                if m.stamp == slot.stamp && m.queue == queue {
                    return Some((slot.key, *m));
                }
            }
        }
    }

    /// Moves a resident entry to the back of `to`.
    fn requeue(&mut self, k: K, to: Queue, freq: u8) {
        let stamp = self.next_stamp();
        let Some(m) = self.map.get_mut(&k) else {
            return;
        };
        let weight = u64::from(m.weight);
        match m.queue {
            Queue::Small => self.small_used -= weight,
            Queue::Main => self.main_len -= 1,
            // Only touched (freq > 0) warm entries are requeued; their weight already left
            // `warm_used` when they were touched.
            Queue::Warm => {}
        }
        m.queue = to;
        m.stamp = stamp;
        m.freq = freq;
        let q = match to {
            Queue::Warm => &mut self.warm,
            Queue::Small => {
                self.small_used += weight;
                &mut self.small
            }
            Queue::Main => {
                self.main_len += 1;
                &mut self.main
            }
        };
        q.push_back(Slot { key: k, stamp });
    }

    /// Evicts one entry, or moves entries between queues on the way to one. Returns false when
    /// nothing is left to evict.
    fn evict_one(&mut self, victims: &mut Vec<Key>) -> bool {
        // 1. Warmed pages no client asked for go first.
        if let Some((k, m)) = self.pop_live(Queue::Warm) {
            if m.freq == 0 {
                self.drop_entry(k, victims, false);
            } else {
                self.requeue(k, Queue::Small, m.freq);
            }
            return true;
        }
        let small_target =
            self.capacity / 100 * SMALL_PERCENT + self.capacity % 100 * SMALL_PERCENT / 100;
        if self.small_used >= small_target || self.main_len == 0 {
            if let Some((k, m)) = self.pop_live(Queue::Small) {
                if m.freq > 0 {
                    // Used again while on probation: it joins the main queue.
                    self.requeue(k, Queue::Main, 0);
                } else {
                    self.drop_entry(k, victims, true);
                }
                return true;
            }
        }
        if let Some((k, m)) = self.pop_live(Queue::Main) {
            if m.freq > 0 {
                self.requeue(k, Queue::Main, m.freq - 1);
            } else {
                self.drop_entry(k, victims, false);
            }
            return true;
        }
        // `main` was empty: anything left is in `small`.
        if let Some((k, _)) = self.pop_live(Queue::Small) {
            self.drop_entry(k, victims, true);
            return true;
        }
        false
    }

    fn drop_entry(&mut self, k: K, victims: &mut Vec<Key>, to_ghost: bool) {
        self.remove(k.get());
        victims.push(k.get());
        if to_ghost {
            let stamp = self.next_stamp();
            let fp = k.fingerprint();
            self.ghost.insert(fp, stamp);
            self.ghost_order.push_back(GhostSlot { fp, stamp });
            // The ghost remembers about as many keys as the main queue holds.
            while self.ghost.len() > self.main_len.max(16) {
                let Some(g) = self.ghost_order.pop_front() else {
                    break;
                };
                if self.ghost.get(&g.fp) == Some(&g.stamp) {
                    self.ghost.remove(&g.fp);
                }
            }
        }
    }

    /// Drops stale slots once they are the majority of a queue, so purges cannot grow the
    /// queues without bound when nothing is being evicted.
    fn compact_if_stale(&mut self) {
        let live = self.map.len();
        let slots = self.warm.len() + self.small.len() + self.main.len();
        if slots > 64 && slots > 2 * live {
            let map = &self.map;
            for (q, which) in [
                (&mut self.warm, Queue::Warm),
                (&mut self.small, Queue::Small),
                (&mut self.main, Queue::Main),
            ] {
                q.retain(|s| {
                    map.get(&s.key)
                        .is_some_and(|m| m.stamp == s.stamp && m.queue == which)
                });
            }
        }
        if self.ghost_order.len() > 64 && self.ghost_order.len() > 2 * self.ghost.len() {
            let ghost = &self.ghost;
            self.ghost_order
                .retain(|g| ghost.get(&g.fp) == Some(&g.stamp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap as Model;

    /// A small deterministic generator (splitmix64) so the tests need no dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
    }

    fn key(i: u64) -> Key {
        let mut r = Rng(i);
        u128::from(r.next()) << 64 | u128::from(r.next())
    }

    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let mut p = Policy::new(100, None);
        for round in 0..5 {
            for i in 0..60 {
                if !p.touch(key(i)) {
                    p.admit(key(i), 1);
                }
            }
            let _ = round;
        }
        // A one-time scan of four times the capacity.
        for i in 1000..1400 {
            p.admit(key(i), 1);
        }
        let kept = (0..60).filter(|&i| p.contains(key(i))).count();
        assert_eq!(kept, 60, "the hot set survived the scan");
        assert!(p.usage().used <= 100);
    }

    #[test]
    fn weights_and_capacity_hold_against_a_model() {
        let mut rng = Rng(7);
        let mut p = Policy::new(10_000, Some(300));
        let mut model: Model<Key, u64> = Model::new();
        for _ in 0..50_000 {
            let k = key(rng.next() % 2_000);
            match rng.next() % 10 {
                0 => {
                    assert_eq!(p.remove(k), model.remove(&k));
                }
                1..=3 => {
                    assert_eq!(p.touch(k), model.contains_key(&k));
                }
                _ => {
                    let w = 1 + rng.next() % 300;
                    let victims = p.admit(k, w);
                    model.insert(k, w);
                    for v in &victims {
                        assert!(model.remove(v).is_some(), "a victim was resident");
                    }
                    assert!(p.contains(k), "a new entry never evicts itself");
                }
            }
            let u = p.usage();
            assert!(u.used <= 10_000, "capacity exceeded: {}", u.used);
            assert!(u.entries <= 300, "max_entries exceeded: {}", u.entries);
            assert_eq!(u.entries, model.len());
            assert_eq!(u.used, model.values().sum::<u64>());
        }
        for (k, _) in model {
            assert!(p.contains(k));
        }
        // Tables and queues stay proportional to the entries, stale slots included.
        assert!(p.heap_bytes() < 300 * 400, "{} heap bytes", p.heap_bytes());
    }

    #[test]
    fn an_entry_that_cannot_fit_is_its_own_victim() {
        let mut p = Policy::new(100, None);
        assert!(p.admit(key(1), 60).is_empty());
        assert_eq!(p.admit(key(2), 101), vec![key(2)]);
        assert!(p.contains(key(1)));
        // Fits, but only by evicting the other one.
        assert_eq!(p.admit(key(3), 90), vec![key(1)]);
        assert_eq!(p.usage().used, 90);
        assert_eq!(p.admit(key(4), u64::from(u32::MAX) + 1), vec![key(4)]);
    }

    #[test]
    fn warming_uses_free_room_only_and_goes_first() {
        let mut p = Policy::new(100, None);
        for i in 0..5 {
            assert!(p.admit(key(i), 10).is_empty());
        }
        // Share of 30: three warmed pages, then refused.
        for i in 100..103 {
            assert_eq!(p.admit_warm(key(i), 10, 30), Ok(()));
        }
        assert_eq!(p.admit_warm(key(103), 10, 30), Err(WarmRefused::ShareUsed));
        assert_eq!(p.usage().warm, 30);
        // A client touches one: it is a client page now and frees share.
        assert!(p.touch(key(100)));
        assert_eq!(p.usage().warm, 20);
        assert_eq!(p.admit_warm(key(103), 10, 30), Ok(()));
        assert_eq!(p.admit_warm(key(104), 10, 100), Ok(()));
        assert_eq!(p.usage().used, 100);
        assert_eq!(p.admit_warm(key(105), 10, 100), Err(WarmRefused::NoRoom));
        // Client fills evict untouched warmed pages before any client page.
        let mut victims = Vec::new();
        for i in 10..14 {
            victims.extend(p.admit(key(i), 10));
        }
        victims.sort();
        let mut warmed = vec![key(101), key(102), key(103), key(104)];
        warmed.sort();
        assert_eq!(victims, warmed);
        assert!(p.contains(key(100)), "the touched warm page stays");
        assert!((0..5).all(|i| p.contains(key(i))));
        assert_eq!(p.usage().warm, 0);
    }

    #[test]
    fn removals_do_not_grow_the_queues() {
        let mut p = Policy::new(1_000_000, None);
        for round in 0..20u64 {
            for i in 0..1000 {
                p.admit(key(round * 1000 + i), 1);
            }
            for i in 0..1000 {
                p.remove(key(round * 1000 + i));
            }
        }
        assert_eq!(p.usage().entries, 0);
        let slots = p.warm.len() + p.small.len() + p.main.len();
        assert!(slots <= 64, "{slots} stale slots kept");
    }

    #[test]
    fn entry_layout_stays_compact() {
        assert_eq!(std::mem::size_of::<(K, Meta)>(), 28);
        assert_eq!(std::mem::size_of::<Slot>(), 20);
        assert_eq!(std::mem::size_of::<(Fp, u32)>(), 12);
    }

    #[test]
    fn a_warm_refresh_keeps_its_place_and_only_grows_into_free_room() {
        let mut p = Policy::new(100, None);
        assert_eq!(p.admit(key(1), 50), Vec::<Key>::new());
        assert!(p.touch(key(1)));
        // A warmed refresh of a client page: not a use, weight updated.
        assert_eq!(p.admit_warm(key(1), 60, 10), Ok(()));
        assert_eq!(p.usage().used, 60);
        assert_eq!(p.usage().warm, 0, "a client page does not count as warmed");
        // Growth past the free room is refused and changes nothing.
        assert_eq!(p.warm_check(key(1), 120, 10), Err(WarmRefused::NoRoom));
        assert_eq!(p.admit_warm(key(1), 120, 10), Err(WarmRefused::NoRoom));
        assert_eq!(p.usage().used, 60);
        // A new warmed page: share and room checked, as admit_warm would.
        assert_eq!(p.warm_check(key(2), 11, 10), Err(WarmRefused::ShareUsed));
        assert_eq!(p.warm_check(key(2), 41, 100), Err(WarmRefused::NoRoom));
        assert_eq!(p.warm_check(key(2), 10, 10), Ok(()));
        assert_eq!(p.admit_warm(key(2), 10, 10), Ok(()));
        assert_eq!(p.usage().warm, 10);
        // Its refresh may not grow past the share either.
        assert_eq!(p.admit_warm(key(2), 12, 10), Err(WarmRefused::ShareUsed));
        assert_eq!(p.admit_warm(key(2), 8, 10), Ok(()));
        assert_eq!(
            p.usage(),
            Usage {
                entries: 2,
                used: 68,
                warm: 8,
                capacity: 100
            }
        );
    }
}
