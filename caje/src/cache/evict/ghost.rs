//! S3-FIFO's ghost: the 64-bit fingerprints of entries evicted from the small queue without
//! a second use, so that one asked for again soon goes straight to the main queue.
//!
//! A FIFO of at most `bound` live fingerprints (the caller passes the main queue's length, as
//! the paper does), in about 12-17 bytes per fingerprint: a ring of the fingerprints in the
//! order they were remembered, and an open-addressing table (linear probing, no tombstones)
//! of `u32` ring sequence numbers for membership. A fingerprint remembered again, or taken
//! back on admission, leaves a stale ring slot behind; a stale slot is skipped when it
//! reaches the front, and the ring is rebuilt once more than half of it is stale.

use std::collections::VecDeque;

/// An empty bucket. Sequence numbers stay below 2^31 (see [`Ghost::rebuild`]), so never this.
const EMPTY: u32 = u32::MAX;
/// Sequence numbers are rebased to 0 before they reach this.
const REBASE_AT: u64 = 1 << 31;

#[derive(Default)]
pub(super) struct Ghost {
    /// Fingerprints, oldest first; stale ones included.
    ring: VecDeque<u64>,
    /// The sequence number of `ring[0]`; `ring[k]` is number `front + k`.
    front: u32,
    /// Power-of-two sized (or empty): for each live fingerprint, the sequence number of its
    /// latest ring slot, or [`EMPTY`].
    table: Vec<u32>,
    live: usize,
}

/// The bucket a fingerprint's probe starts from (fingerprints are hashes already; the
/// multiply spreads any that are not).
fn home(fp: u64, mask: usize) -> usize {
    (fp.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & mask
}

impl Ghost {
    /// Fingerprints remembered.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Heap bytes of the ring and the table, from their capacities.
    pub(super) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * 8 + self.table.capacity() * 4
    }

    fn fp_at(&self, seq: u32) -> u64 {
        self.ring[(seq - self.front) as usize]
    }

    /// The bucket holding `fp`, if remembered.
    fn find(&self, fp: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let mask = self.table.len() - 1;
        let mut b = home(fp, mask);
        loop {
            let s = self.table[b];
            if s == EMPTY {
                return None;
            }
            if self.fp_at(s) == fp {
                return Some(b);
            }
            b = (b + 1) & mask;
        }
    }

    /// Puts `seq` (whose fingerprint is `fp`, not in the table) into the first free bucket.
    fn put(&mut self, fp: u64, seq: u32) {
        let mask = self.table.len() - 1;
        let mut b = home(fp, mask);
        while self.table[b] != EMPTY {
            b = (b + 1) & mask;
        }
        self.table[b] = seq;
    }

    /// Empties bucket `b`, shifting back the entries after it whose probe passed through it
    /// (so lookups never need tombstones).
    fn remove_at(&mut self, b: usize) {
        let mask = self.table.len() - 1;
        self.table[b] = EMPTY;
        let mut hole = b;
        let mut j = (b + 1) & mask;
        loop {
            let s = self.table[j];
            if s == EMPTY {
                break;
            }
            let h = home(self.fp_at(s), mask);
            // The entry may move into the hole if the hole lies on its probe path (between
            // its home bucket and where it is, cyclically).
            if (j.wrapping_sub(h) & mask) >= (j.wrapping_sub(hole) & mask) {
                self.table[hole] = s;
                self.table[j] = EMPTY;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.live -= 1;
    }

    /// Remembers `fp` as the newest, then forgets the oldest until at most `bound` are left.
    pub(super) fn insert(&mut self, fp: u64, bound: usize) {
        if u64::from(self.front) + self.ring.len() as u64 + 1 >= REBASE_AT {
            self.rebuild();
        }
        let seq = self.front + self.ring.len() as u32;
        self.ring.push_back(fp);
        match self.find(fp) {
            Some(b) => self.table[b] = seq,
            None => {
                if (self.live + 1) * 8 > self.table.len() * 7 {
                    self.grow();
                }
                self.put(fp, seq);
                self.live += 1;
            }
        }
        while self.live > bound {
            let Some(&oldest) = self.ring.front() else {
                break;
            };
            if let Some(b) = self.find(oldest).filter(|&b| self.table[b] == self.front) {
                self.remove_at(b);
            }
            self.ring.pop_front();
            self.front += 1;
        }
        if self.ring.len() > 64 && self.ring.len() > 2 * self.live {
            self.rebuild();
        }
    }

    /// Whether `fp` was remembered; forgets it.
    pub(super) fn take(&mut self, fp: u64) -> bool {
        match self.find(fp) {
            Some(b) => {
                self.remove_at(b);
                true
            }
            None => false,
        }
    }

    fn grow(&mut self) {
        let size = (self.table.len() * 2).max(16);
        let old = std::mem::replace(&mut self.table, vec![EMPTY; size]);
        for s in old.into_iter().filter(|&s| s != EMPTY) {
            let fp = self.fp_at(s);
            self.put(fp, s);
        }
    }

    /// Drops the stale ring slots and numbers the live ones from 0 again.
    fn rebuild(&mut self) {
        let live: VecDeque<u64> = (0..self.ring.len())
            .filter_map(|k| {
                let fp = self.ring[k];
                let seq = self.front + k as u32;
                self.find(fp).filter(|&b| self.table[b] == seq).map(|_| fp)
            })
            .collect();
        self.ring = live;
        self.front = 0;
        self.table.fill(EMPTY);
        for k in 0..self.ring.len() {
            let fp = self.ring[k];
            self.put(fp, k as u32);
        }
        self.live = self.ring.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, VecDeque as Order};

    /// The ghost as it was before (a map and a queue of stamps): the model.
    #[derive(Default)]
    struct Model {
        map: HashMap<u64, u64>,
        order: Order<(u64, u64)>,
        stamp: u64,
    }

    impl Model {
        fn insert(&mut self, fp: u64, bound: usize) {
            self.stamp += 1;
            self.map.insert(fp, self.stamp);
            self.order.push_back((fp, self.stamp));
            while self.map.len() > bound {
                let Some((f, s)) = self.order.pop_front() else {
                    break;
                };
                if self.map.get(&f) == Some(&s) {
                    self.map.remove(&f);
                }
            }
        }
        fn take(&mut self, fp: u64) -> bool {
            self.map.remove(&fp).is_some()
        }
    }

    #[test]
    fn behaves_as_a_fifo_of_fingerprints() {
        let mut rng = 0x1234_5678_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut g = Ghost::default();
        let mut m = Model::default();
        for step in 0..200_000u64 {
            // Few distinct fingerprints, so re-insertions and takes of live ones happen often;
            // a bound that moves, as the main queue's length does.
            let fp = next() % 3_000;
            let bound = 16 + (step / 1000 % 7) as usize * 150;
            if next() % 3 == 0 {
                assert_eq!(g.take(fp), m.take(fp), "take {fp} at {step}");
            } else {
                g.insert(fp, bound);
                m.insert(fp, bound);
                // Stale slots never outnumber the live ones for long (takes only make slots
                // stale: the next insert rebuilds).
                assert!(g.ring.len() <= (2 * g.live).max(64), "at {step}");
            }
            assert_eq!(g.len(), m.map.len(), "at {step}");
        }
        for fp in 0..3_000 {
            assert_eq!(g.take(fp), m.take(fp));
        }
    }

    #[test]
    fn sequence_numbers_are_rebased() {
        let mut g = Ghost {
            front: (REBASE_AT - 10) as u32,
            ..Ghost::default()
        };
        for fp in 0..100 {
            g.insert(fp, 50);
        }
        assert!(u64::from(g.front) < 100);
        assert_eq!(g.len(), 50);
        assert!((50..100).all(|fp| g.take(fp)));
        assert!(!(0..50).any(|fp| g.take(fp)));
    }
}
