//! [`Policy`]: the S3-FIFO policy ([`Fifo`]) for callers that name entries by a 128-bit hash
//! and keep no slab of their own (the memory tier, the decoded hot metadata, the trace
//! replay). It keeps a slab of (key, [`Node`]) slots, 32 bytes each, found through a table of
//! slot indices keyed by the key's bits.

use hashbrown::HashTable;

use super::{Fifo, Node, Nodes, Usage, WarmRefused};

/// A cache key as the policy sees it: a uniformly distributed 128-bit hash of the entry's
/// identity (caje uses the leading bytes of the entry's SHA-256 name).
pub type Key = u128;

/// Stored in 4-byte words so that a slot stays 4-byte aligned (a `u128` field would pad
/// every slot to 16-byte alignment).
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
    /// The ghost remembers the low 64 bits: a false match only admits an object into `main`.
    fn fingerprint(self) -> u64 {
        u64::from(self.0[0]) | u64::from(self.0[1]) << 32
    }
    /// Keys are already hashes, so one multiply-and-fold spreads them over the table; a
    /// cryptographic hasher would only cost time.
    fn hash(self) -> u64 {
        let x = self.fingerprint().wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }
}

struct Slab(Vec<(K, Node)>);

impl Nodes for Slab {
    fn node(&self, i: u32) -> Node {
        self.0[i as usize].1
    }
    fn set_node(&mut self, i: u32, node: Node) {
        self.0[i as usize].1 = node;
    }
    fn fingerprint(&self, i: u32) -> u64 {
        self.0[i as usize].0.fingerprint()
    }
}

/// The eviction policy keyed by [`Key`]: which keys are resident, their weights and who goes
/// next. Not thread-safe by itself; callers share it behind one `Mutex` (every call is O(1)
/// amortised).
pub struct Policy {
    fifo: Fifo,
    slab: Slab,
    free: Vec<u32>,
    by_key: HashTable<u32>,
}

impl Policy {
    /// A policy holding at most `capacity` weight units and, if given, `max_entries` entries.
    /// The unit is the caller's: bytes for the memory tier, disk blocks for the disk tier.
    pub fn new(capacity: u64, max_entries: Option<usize>) -> Policy {
        Policy {
            fifo: Fifo::new(capacity, max_entries),
            slab: Slab(Vec::new()),
            free: Vec::new(),
            by_key: HashTable::new(),
        }
    }

    fn slot(&self, k: K) -> Option<u32> {
        let slab = &self.slab.0;
        self.by_key
            .find(k.hash(), |&i| slab[i as usize].0 == k)
            .copied()
    }

    /// A free slot for `k`, not yet resident.
    fn alloc(&mut self, k: K) -> u32 {
        let i = match self.free.pop() {
            Some(i) => {
                self.slab.0[i as usize] = (k, Node::default());
                i
            }
            None => {
                self.slab.0.push((k, Node::default()));
                (self.slab.0.len() - 1) as u32
            }
        };
        let slab = &self.slab.0;
        self.by_key
            .insert_unique(k.hash(), i, |&j| slab[j as usize].0.hash());
        i
    }

    /// Frees slot `i` (already out of the fifo) and returns its key.
    fn release(&mut self, i: u32) -> Key {
        let k = self.slab.0[i as usize].0;
        if let Ok(e) = self.by_key.find_entry(k.hash(), |&j| j == i) {
            e.remove();
        }
        self.free.push(i);
        k.get()
    }

    fn release_all(&mut self, slots: Vec<u32>) -> Vec<Key> {
        slots.into_iter().map(|i| self.release(i)).collect()
    }

    /// Entries, weight used, warm weight and capacity.
    pub fn usage(&self) -> Usage {
        self.fifo.usage()
    }

    /// Whether `key` is resident (does not count as a use).
    pub fn contains(&self, key: Key) -> bool {
        self.slot(K::new(key)).is_some()
    }

    /// Records a client's use of `key` (a hit). Returns whether it is resident. A warmed
    /// entry becomes a client entry.
    pub fn touch(&mut self, key: Key) -> bool {
        let Some(i) = self.slot(K::new(key)) else {
            return false;
        };
        self.fifo.touch(&mut self.slab, i);
        true
    }

    /// Admits `key` with `weight` for a client (a fill) and returns the keys to delete to stay
    /// within the capacity. `key` itself is named when it can never fit (heavier than the whole
    /// capacity, or a weight over `u32::MAX` units). Admitting a resident key updates its
    /// weight and counts as a use.
    pub fn admit(&mut self, key: Key, weight: u64) -> Vec<Key> {
        let k = K::new(key);
        let i = match self.slot(k) {
            Some(i) => i,
            None => self.alloc(k),
        };
        let mut victims = Vec::new();
        self.fifo.admit(&mut self.slab, i, weight, &mut victims);
        self.release_all(victims)
    }

    /// Admits `key` for edge warming (see [`Fifo::admit_warm`]).
    pub fn admit_warm(&mut self, key: Key, weight: u64, share: u64) -> Result<(), WarmRefused> {
        let k = K::new(key);
        let found = self.slot(k);
        self.fifo.warm_check(&self.slab, found, weight, share)?;
        let i = found.unwrap_or_else(|| self.alloc(k));
        let done = self.fifo.admit_warm(&mut self.slab, i, weight, share);
        if done.is_err() && found.is_none() {
            self.release(i);
        }
        done
    }

    /// Whether [`Policy::admit_warm`] would admit `key` with `weight` now (changes nothing).
    pub fn warm_check(&self, key: Key, weight: u64, share: u64) -> Result<(), WarmRefused> {
        self.fifo
            .warm_check(&self.slab, self.slot(K::new(key)), weight, share)
    }

    /// Forgets `key` (purged, replaced elsewhere, found corrupt). Returns its weight.
    pub fn remove(&mut self, key: Key) -> Option<u64> {
        let i = self.slot(K::new(key))?;
        let weight = self.fifo.remove(&mut self.slab, i);
        self.release(i);
        weight
    }

    /// Changes the capacity, returning the victims needed to fit under the new one.
    pub fn set_capacity(&mut self, capacity: u64) -> Vec<Key> {
        let mut victims = Vec::new();
        self.fifo
            .set_capacity(&mut self.slab, capacity, &mut victims);
        self.release_all(victims)
    }

    /// Fingerprints the ghost remembers, and its heap bytes (part of [`Policy::heap_bytes`]).
    pub fn ghost_usage(&self) -> (usize, usize) {
        self.fifo.ghost_usage()
    }

    /// Heap bytes held by the policy's slab, table and ghost, from their capacities (what the
    /// allocator gave them, not just what is in use).
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        // hashbrown: one control byte per bucket plus the entry; buckets = capacity * 8/7.
        (self.by_key.capacity() * 8 / 7).next_power_of_two() * (size_of::<u32>() + 1)
            + self.slab.0.capacity() * size_of::<(K, Node)>()
            + self.free.capacity() * size_of::<u32>()
            + self.fifo.heap_bytes()
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
        // Freed slots are reused: the slab holds one round's keys at most.
        assert!(p.slab.0.len() <= 1000, "{} slots kept", p.slab.0.len());
    }

    #[test]
    fn entry_layout_stays_compact() {
        assert_eq!(std::mem::size_of::<(K, Node)>(), 32);
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
