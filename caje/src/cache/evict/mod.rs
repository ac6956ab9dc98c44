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
//! fixed-size key, a lowest-priority class for warmed pages and a few bytes per entry.
//!
//! # Priorities
//! Three resident FIFOs, evicted in this order:
//! 1. `warm`: pages brought in by edge warming ([`Fifo::admit_warm`]) that no client of this
//!    node has asked for yet. They are evicted before anything a client used, and they are
//!    only admitted into free room, so warming never evicts a page.
//! 2. `small`: new client admissions; leave for `main` if touched, else are evicted (their
//!    fingerprint goes to the ghost).
//! 3. `main`: objects touched at least once in `small`, or that came back from the ghost.
//!
//! # Where the state lives
//! [`Fifo`] holds only the queues' ends, the counters and the ghost. Each entry's own state
//! (its weight, its queue, its frequency and its two neighbours in that queue: a [`Node`],
//! 13 bytes) lives with the caller's record of the entry, in a slab the caller owns and
//! hands in as [`Nodes`]; the queues are doubly linked lists threaded through those records
//! by slab index. The disk store's index keeps the nodes inside its 88-byte records, so the
//! policy adds 13 bytes per entry plus the ghost (`ghost.rs`, 12-17 bytes per fingerprint).
//! [`Policy`] is the same policy for callers keyed by a 128-bit hash (the memory tier, the
//! hot metadata, the trace replay): it keeps its own slab of keys and nodes.
//!
//! # Cost
//! Every operation is O(1) (the ghost's is amortised).

mod ghost;
mod keyed;

use ghost::Ghost;
pub use keyed::{Key, Policy};

/// How many times an entry's frequency counts a touch (S3-FIFO's two bits).
const MAX_FREQ: u8 = 3;
/// The small queue's share of the capacity, in percent (the paper's 10%).
const SMALL_PERCENT: u64 = 10;
/// No slot: the end of a queue.
const NIL: u32 = u32::MAX;

/// Which queue a resident entry is in.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Queue {
    Warm = 1,
    Small = 2,
    Main = 3,
}

/// One entry's policy state, as the caller stores it (see [`Nodes`]). A default node is not
/// resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    /// Weight in the caller's unit (bytes or disk blocks).
    pub weight: u32,
    /// The previous slot in its queue (towards the oldest), or none.
    pub prev: u32,
    /// The next slot in its queue (towards the newest), or none.
    pub next: u32,
    /// Bits 0-1: the frequency; bits 2-3: the queue (0: not resident).
    pub bits: u8,
}

impl Default for Node {
    fn default() -> Node {
        Node {
            weight: 0,
            prev: NIL,
            next: NIL,
            bits: 0,
        }
    }
}

impl Node {
    fn freq(&self) -> u8 {
        self.bits & 3
    }
    fn queue(&self) -> Option<Queue> {
        match self.bits >> 2 & 3 {
            1 => Some(Queue::Warm),
            2 => Some(Queue::Small),
            3 => Some(Queue::Main),
            _ => None,
        }
    }
    fn set(&mut self, queue: Option<Queue>, freq: u8) {
        self.bits = queue.map_or(0, |q| q as u8) << 2 | freq.min(MAX_FREQ);
    }
    /// Whether the entry is in the policy.
    pub fn resident(&self) -> bool {
        self.queue().is_some()
    }
}

/// The caller's slab, as the policy sees it: a [`Node`] per slot index, and the key's
/// fingerprint for the ghost.
pub trait Nodes {
    /// The node of slot `i`.
    fn node(&self, i: u32) -> Node;
    /// Stores the node of slot `i`.
    fn set_node(&mut self, i: u32, node: Node);
    /// 64 bits of slot `i`'s key (uniformly distributed), remembered by the ghost.
    fn fingerprint(&self, i: u32) -> u64;
}

/// Why [`Fifo::admit_warm`] refused a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WarmRefused {
    /// Admitting it would evict something: warming only uses free room.
    #[error("no free room: warming never evicts")]
    NoRoom,
    /// Warmed pages would exceed their share of the capacity.
    #[error("the warming share of the capacity is used up")]
    ShareUsed,
}

/// Counters for one policy, for stats and tests.
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

/// A queue: a doubly linked list through the nodes, oldest first.
#[derive(Clone, Copy)]
struct List {
    head: u32,
    tail: u32,
    len: usize,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        len: 0,
    };

    fn push_back(&mut self, n: &mut impl Nodes, i: u32) {
        let mut node = n.node(i);
        node.prev = self.tail;
        node.next = NIL;
        n.set_node(i, node);
        if self.tail == NIL {
            self.head = i;
        } else {
            let mut t = n.node(self.tail);
            t.next = i;
            n.set_node(self.tail, t);
        }
        self.tail = i;
        self.len += 1;
    }

    fn unlink(&mut self, n: &mut impl Nodes, i: u32) {
        let mut node = n.node(i);
        if node.prev == NIL {
            self.head = node.next;
        } else {
            let mut p = n.node(node.prev);
            p.next = node.next;
            n.set_node(node.prev, p);
        }
        if node.next == NIL {
            self.tail = node.prev;
        } else {
            let mut x = n.node(node.next);
            x.prev = node.prev;
            n.set_node(node.next, x);
        }
        node.prev = NIL;
        node.next = NIL;
        n.set_node(i, node);
        self.len -= 1;
    }
}

/// The eviction policy over a caller's slab: which slots are resident, their weights and
/// who goes next. Not thread-safe by itself; callers share it behind one `Mutex`.
pub struct Fifo {
    capacity: u64,
    max_entries: usize,
    entries: usize,
    warm: List,
    small: List,
    main: List,
    ghost: Ghost,
    used: u64,
    warm_used: u64,
    small_used: u64,
}

impl Fifo {
    /// A policy holding at most `capacity` weight units and, if given, `max_entries` entries.
    /// The unit is the caller's: bytes for the memory tier, disk blocks for the disk tier.
    pub fn new(capacity: u64, max_entries: Option<usize>) -> Fifo {
        Fifo {
            capacity,
            max_entries: max_entries.unwrap_or(usize::MAX),
            entries: 0,
            warm: List::EMPTY,
            small: List::EMPTY,
            main: List::EMPTY,
            ghost: Ghost::default(),
            used: 0,
            warm_used: 0,
            small_used: 0,
        }
    }

    /// Entries, weight used, warm weight and capacity.
    pub fn usage(&self) -> Usage {
        Usage {
            entries: self.entries,
            used: self.used,
            warm: self.warm_used,
            capacity: self.capacity,
        }
    }

    /// Heap bytes of the policy's own tables (the ghost); the nodes are the caller's.
    pub fn heap_bytes(&self) -> usize {
        self.ghost.heap_bytes()
    }

    /// Fingerprints the ghost remembers, and its heap bytes.
    pub fn ghost_usage(&self) -> (usize, usize) {
        (self.ghost.len(), self.ghost.heap_bytes())
    }

    /// Records a client's use of slot `i` (a hit), if resident. A warmed entry becomes a
    /// client entry.
    pub fn touch(&mut self, n: &mut impl Nodes, i: u32) {
        let mut node = n.node(i);
        let Some(queue) = node.queue() else {
            return;
        };
        let freq = (node.freq() + 1).min(MAX_FREQ);
        if queue == Queue::Warm && freq == 1 {
            // It stays in the warm queue until it reaches the tail; eviction then moves it to
            // `small` because it is no longer unused (freq > 0).
            self.warm_used -= u64::from(node.weight);
        }
        node.set(Some(queue), freq);
        n.set_node(i, node);
    }

    /// Admits slot `i` with `weight` for a client (a fill) and pushes onto `victims` the
    /// slots to delete to stay within the capacity, already out of the policy. `i` itself is
    /// named when it can never fit (heavier than the whole capacity, or a weight over
    /// `u32::MAX` units). Admitting a resident slot updates its weight and counts as a use.
    pub fn admit(&mut self, n: &mut impl Nodes, i: u32, weight: u64, victims: &mut Vec<u32>) {
        let Ok(w) = u32::try_from(weight) else {
            self.remove(n, i);
            victims.push(i);
            return;
        };
        if weight > self.capacity || self.max_entries == 0 {
            self.remove(n, i);
            victims.push(i);
            return;
        }
        if n.node(i).resident() {
            self.reweigh(n, i, w);
            self.touch(n, i);
            while self.over(0, 0) {
                if !self.evict_one(n, victims) {
                    break;
                }
            }
            return;
        }
        // Evict before inserting, as the paper does, so a new object never evicts itself.
        while self.over(weight, 1) {
            if !self.evict_one(n, victims) {
                break;
            }
        }
        let queue = if self.ghost.take(n.fingerprint(i)) {
            Queue::Main
        } else {
            Queue::Small
        };
        self.insert(n, i, w, queue);
    }

    /// Admits slot `i` for edge warming, at the lowest priority: only into free room (it
    /// never evicts), only while warmed entries untouched by clients weigh at most `share`
    /// units, and first in line for eviction until a client touches it. A resident slot (a
    /// warmed refresh of a stale copy) keeps its place and its use count (warming is not a
    /// use); its weight is updated if the difference fits in the free room.
    pub fn admit_warm(
        &mut self,
        n: &mut impl Nodes,
        i: u32,
        weight: u64,
        share: u64,
    ) -> Result<(), WarmRefused> {
        self.warm_check(n, Some(i), weight, share)?;
        // `warm_check` refused weights over `u32::MAX`.
        let w = u32::try_from(weight).map_err(|_| WarmRefused::NoRoom)?;
        if n.node(i).resident() {
            self.reweigh(n, i, w);
        } else {
            self.insert(n, i, w, Queue::Warm);
        }
        Ok(())
    }

    /// Whether [`Fifo::admit_warm`] would admit slot `i` (`None`: a new entry) with `weight`
    /// now (changes nothing).
    pub fn warm_check(
        &self,
        n: &impl Nodes,
        i: Option<u32>,
        weight: u64,
        share: u64,
    ) -> Result<(), WarmRefused> {
        if u32::try_from(weight).is_err() {
            return Err(WarmRefused::NoRoom);
        }
        let (old, untouched_warm, entries) = match i.map(|i| n.node(i)).filter(Node::resident) {
            Some(m) => (
                u64::from(m.weight),
                m.queue() == Some(Queue::Warm) && m.freq() == 0,
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

    /// Takes slot `i` out of the policy (purged, replaced elsewhere, found corrupt). Returns
    /// its weight, or `None` if it was not resident.
    pub fn remove(&mut self, n: &mut impl Nodes, i: u32) -> Option<u64> {
        let node = n.node(i);
        let queue = node.queue()?;
        let weight = u64::from(node.weight);
        self.list(queue).unlink(n, i);
        self.used -= weight;
        match queue {
            Queue::Warm if node.freq() == 0 => self.warm_used -= weight,
            Queue::Warm | Queue::Main => {}
            Queue::Small => self.small_used -= weight,
        }
        self.entries -= 1;
        let mut node = n.node(i);
        node.set(None, 0);
        n.set_node(i, node);
        Some(weight)
    }

    /// Changes the capacity, pushing the victims needed to fit under the new one.
    pub fn set_capacity(&mut self, n: &mut impl Nodes, capacity: u64, victims: &mut Vec<u32>) {
        self.capacity = capacity;
        while self.over(0, 0) {
            if !self.evict_one(n, victims) {
                break;
            }
        }
    }

    fn list(&mut self, queue: Queue) -> &mut List {
        match queue {
            Queue::Warm => &mut self.warm,
            Queue::Small => &mut self.small,
            Queue::Main => &mut self.main,
        }
    }

    fn over(&self, weight: u64, entries: usize) -> bool {
        self.used + weight > self.capacity || self.entries + entries > self.max_entries
    }

    /// A resident slot's new weight.
    fn reweigh(&mut self, n: &mut impl Nodes, i: u32, w: u32) {
        let mut node = n.node(i);
        let (old, weight) = (u64::from(node.weight), u64::from(w));
        node.weight = w;
        n.set_node(i, node);
        self.used = self.used - old + weight;
        match node.queue() {
            Some(Queue::Small) => self.small_used = self.small_used - old + weight,
            Some(Queue::Warm) if node.freq() == 0 => self.warm_used = self.warm_used - old + weight,
            _ => {}
        }
    }

    fn insert(&mut self, n: &mut impl Nodes, i: u32, w: u32, queue: Queue) {
        let weight = u64::from(w);
        self.used += weight;
        self.entries += 1;
        match queue {
            Queue::Warm => self.warm_used += weight,
            Queue::Small => self.small_used += weight,
            Queue::Main => {}
        }
        let mut node = n.node(i);
        node.weight = w;
        node.set(Some(queue), 0);
        n.set_node(i, node);
        self.list(queue).push_back(n, i);
    }

    /// Moves a resident slot to the back of `to`, with frequency `freq`.
    fn requeue(&mut self, n: &mut impl Nodes, i: u32, to: Queue, freq: u8) {
        let node = n.node(i);
        let Some(from) = node.queue() else {
            return;
        };
        let weight = u64::from(node.weight);
        self.list(from).unlink(n, i);
        // Only touched (freq > 0) warm entries are requeued; their weight already left
        // `warm_used` when they were touched.
        if from == Queue::Small {
            self.small_used -= weight;
        }
        if to == Queue::Small {
            self.small_used += weight;
        }
        let mut node = n.node(i);
        node.set(Some(to), freq);
        n.set_node(i, node);
        self.list(to).push_back(n, i);
    }

    /// Evicts one entry, or moves entries between queues on the way to one. Returns false when
    /// nothing is left to evict.
    fn evict_one(&mut self, n: &mut impl Nodes, victims: &mut Vec<u32>) -> bool {
        // 1. Warmed pages no client asked for go first.
        if self.warm.head != NIL {
            let i = self.warm.head;
            let freq = n.node(i).freq();
            if freq == 0 {
                self.drop_entry(n, i, victims, false);
            } else {
                self.requeue(n, i, Queue::Small, freq);
            }
            return true;
        }
        let small_target =
            self.capacity / 100 * SMALL_PERCENT + self.capacity % 100 * SMALL_PERCENT / 100;
        if (self.small_used >= small_target || self.main.len == 0) && self.small.head != NIL {
            let i = self.small.head;
            if n.node(i).freq() > 0 {
                // Used again while on probation: it joins the main queue.
                self.requeue(n, i, Queue::Main, 0);
            } else {
                self.drop_entry(n, i, victims, true);
            }
            return true;
        }
        if self.main.head != NIL {
            let i = self.main.head;
            let freq = n.node(i).freq();
            if freq > 0 {
                self.requeue(n, i, Queue::Main, freq - 1);
            } else {
                self.drop_entry(n, i, victims, false);
            }
            return true;
        }
        // `main` was empty: anything left is in `small`.
        if self.small.head != NIL {
            let i = self.small.head;
            self.drop_entry(n, i, victims, true);
            return true;
        }
        false
    }

    fn drop_entry(&mut self, n: &mut impl Nodes, i: u32, victims: &mut Vec<u32>, to_ghost: bool) {
        self.remove(n, i);
        victims.push(i);
        if to_ghost {
            // The ghost remembers about as many keys as the main queue holds.
            self.ghost.insert(n.fingerprint(i), self.main.len.max(16));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_stays_16_bytes() {
        assert_eq!(std::mem::size_of::<Node>(), 16);
    }
}
