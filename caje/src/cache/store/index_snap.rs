//! The index's side of its snapshot (`snapshot.rs` owns the file): one entry as a snapshot
//! holds it, copying the index out a chunk at a time, filling an empty index from a
//! snapshot, and what the background check of the directory asks about entries loaded from
//! one. A child of `index.rs` (it reads the slab's private fields) kept in its own file so
//! the index's own code stays apart from the snapshot's.

use std::collections::HashSet;

use super::super::slab::Slab;
use super::{id_hash, id_of, Index, Rec, NONE};
use crate::cache::evict::Nodes;
use crate::cache::key::Digest;
use crate::cache::store::EntryRef;

/// One entry as a snapshot holds it: what the index needs to serve it and to count it
/// against the cap. `snapshot.rs` encodes and decodes it field by field (one pair of
/// functions), never as a memory image of [`Rec`], so fields can be added. The eviction
/// policy's state (queue, frequency) is not kept: a load admits every entry afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::cache::store) struct SnapRec {
    /// The entry's name (SHA-256 of page and variant).
    pub(in crate::cache::store) name: Digest,
    /// The hash of its page.
    pub(in crate::cache::store) page: u64,
    /// The stored version's tag, as the entry file's header carries it.
    pub(in crate::cache::store) file: u64,
    pub(in crate::cache::store) body_len: u64,
    /// Unix seconds.
    pub(in crate::cache::store) stored_at: u32,
    /// Its `Vary` set's number in the snapshot.
    pub(in crate::cache::store) vary: u32,
    /// Disk blocks the eviction policy counts for it (header and body).
    pub(in crate::cache::store) blocks: u32,
    /// Soft-purged.
    pub(in crate::cache::store) invalidated: bool,
}

/// While the directory is checked after a start from a snapshot: which entries are still
/// exactly as the snapshot described them.
pub(super) struct CheckState {
    /// The load gave its entries generations `1..=loaded`; anything inserted or replaced
    /// since has a higher one (generations only grow, and a clear keeps counting).
    loaded: u32,
    /// Ids of loaded entries removed since (evicted, purged, found corrupt): their files may
    /// still be on disk for a moment, and the check must not add them back.
    removed: HashSet<u128>,
    /// Slab slots of loaded entries whose file the check has found, one bit each.
    seen: Vec<u64>,
    /// The disk blocks of each loaded entry, by slot, until the eviction policy has admitted
    /// it ([`Index::admit_loaded`]); emptied then.
    blocks: Vec<u32>,
    /// The sum of `blocks` not yet admitted: counted in [`Index::disk_usage`] meanwhile, so
    /// the usage reported right after a start is the directory's, not only what was stored
    /// since.
    pub(super) pending: u64,
}

/// The live slots of `slab` ordered by the bucket a table of `capacity` puts their `hash`
/// in (the bucket index first, the rest of the hash next, so equal hashes are adjacent), with
/// that sort key: the hash rotated right by the returned number of bits. hashbrown takes the bucket from the hash's low bits, in a power-of-two
/// number of buckets of which `capacity` is seven eighths; a wrong guess costs only speed.
fn bucket_order(
    slab: &Slab<Rec>,
    capacity: usize,
    hash: impl Fn(&Rec) -> u64,
) -> (u32, Vec<(u64, u32)>) {
    let buckets = if capacity < 8 {
        capacity + 1
    } else {
        capacity / 7 * 8
    };
    let bits = buckets.next_power_of_two().trailing_zeros();
    let mut order: Vec<(u64, u32)> = (0..slab.len())
        .map(|i| (i, &slab[i]))
        .filter(|(_, r)| r.gen != 0)
        .map(|(i, r)| (hash(r).rotate_right(bits), i as u32))
        .collect();
    order.sort_unstable();
    (bits, order)
}

/// What the index knows of an entry file the check found.
pub(in crate::cache::store) enum Known {
    /// Loaded from the snapshot and unchanged since.
    Loaded(EntryRef),
    /// Stored, replaced or removed by this process: its files are its own business.
    Changed,
    /// Not in the index, and never was since the start.
    Unknown,
}

impl Index {
    /// Copies the entries of up to `n` slots from slot `from` into `out`, numbering their
    /// `Vary` sets with `number`; returns the slot to continue from, `None` at the end.
    pub(in crate::cache::store) fn snapshot_chunk(
        &self,
        from: usize,
        n: usize,
        out: &mut Vec<SnapRec>,
        mut number: impl FnMut(&[String]) -> u32,
    ) -> Option<usize> {
        let end = from.saturating_add(n).min(self.recs.len());
        // Numbered per chunk by the set's slot, which cannot be reused within one hold of
        // the lock.
        let mut numbered: Vec<(u32, u32)> = Vec::new();
        for i in from..end {
            let r = &self.recs[i];
            if r.gen == 0 {
                continue;
            }
            let vary = match numbered.iter().find(|(live, _)| *live == r.vary) {
                Some(&(_, n)) => n,
                None => {
                    let n = number(self.vary.names(r.vary));
                    numbered.push((r.vary, n));
                    n
                }
            };
            // The weight the policy admitted it with; a loaded entry the background check has
            // not admitted yet still has its weight from the snapshot it came from.
            let blocks = if self.recs.node(i as u32).resident() {
                u64::from(r.weight)
            } else {
                self.check
                    .as_ref()
                    .and_then(|c| c.blocks.get(i).copied())
                    .map_or_else(|| super::estimated_blocks(r.body_len), u64::from)
            };
            out.push(SnapRec {
                name: r.name,
                page: r.page,
                file: r.file,
                body_len: r.body_len,
                stored_at: r.stored_at,
                vary,
                blocks: u32::try_from(blocks).unwrap_or(u32::MAX),
                invalidated: r.invalidated,
            });
        }
        (end < self.recs.len()).then_some(end)
    }

    /// Every tag with the ids of the live entries that carry it.
    pub(in crate::cache::store) fn live_tags(&self) -> Vec<(String, Vec<u128>)> {
        self.tags
            .tags()
            .map(|tag| {
                let ids: Vec<u128> = self.tagged(tag).iter().map(EntryRef::id).collect();
                (tag.to_owned(), ids)
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }

    /// Fills the empty index from a snapshot's records, `Vary` sets and tags, and starts
    /// tracking what the background check needs. The eviction policy is not told here: it
    /// is a third of the load's time, and a lookup does not need it, so the check admits the
    /// loaded entries afresh, in the snapshot's order, as entries seen once
    /// ([`Index::admit_loaded`]; its queues and counts are not kept).
    pub(in crate::cache::store) fn load_snapshot(
        &mut self,
        recs: impl ExactSizeIterator<Item = SnapRec>,
        vary_sets: &[Vec<String>],
        tags: &[(String, Vec<u128>)],
    ) {
        if self.recs.len() != 0 {
            // Only an empty index is filled (at open); slots below are numbered from 0.
            return;
        }
        let count = recs.len();
        let mut blocks: Vec<u32> = Vec::with_capacity(count);
        // The slab first, in the snapshot's order. Each `Vary` set is interned once, then
        // only counted.
        let mut interned: Vec<Option<u32>> = vec![None; vary_sets.len()];
        for s in recs {
            let Some(names) = vary_sets.get(s.vary as usize) else {
                continue;
            };
            let vary = match interned[s.vary as usize] {
                Some(v) => {
                    self.vary.add_ref(v);
                    v
                }
                None => {
                    let v = self.vary.intern(names.clone());
                    interned[s.vary as usize] = Some(v);
                    v
                }
            };
            let gen = self.new_gen();
            self.recs.push(Rec {
                name: s.name,
                page: s.page,
                file: s.file,
                body_len: s.body_len,
                stored_at: s.stored_at,
                gen,
                vary,
                next: NONE,
                invalidated: s.invalidated,
                // Not in the eviction policy until the check admits it.
                ..Rec::FREE
            });
            blocks.push(s.blocks);
            self.entries += 1;
            self.bytes += s.body_len;
        }
        // Then the two tables, each filled in the order of its own buckets: an insert then
        // lands next to the previous one instead of at a random place of a table of tens of
        // MiB (a cache miss or two per insert: most of the load's time, in perf).
        let slab = &self.recs;
        self.by_id
            .reserve(count, |&j| id_hash(slab[j as usize].id()));
        let (bits, order) = bucket_order(slab, self.by_id.capacity(), |r| id_hash(r.id()));
        let mut prev_key = None;
        for (key, i) in order {
            // Equal keys are adjacent: a name listed twice (never written so, but a snapshot
            // is input) keeps its first record. Only then is the slab read here: the key
            // holds the hash, and a read of a random record is itself a cache miss.
            if prev_key == Some(key) && self.slot(&self.recs[i as usize].name).is_some() {
                let r = self.recs[i as usize];
                self.vary.release(r.vary);
                self.entries -= 1;
                self.bytes -= r.body_len;
                self.recs[i as usize].gen = 0;
                self.free.push(i);
                continue;
            }
            prev_key = Some(key);
            let slab = &self.recs;
            self.by_id.insert_unique(key.rotate_left(bits), i, |&j| {
                id_hash(slab[j as usize].id())
            });
        }
        let slab = &self.recs;
        self.pages.reserve(count, |&j| slab[j as usize].page);
        let (bits, order) = bucket_order(slab, self.pages.capacity(), |r| r.page);
        // The variants of a page are adjacent, in slot order: chained behind the first.
        let mut last: Option<(u64, u32)> = None;
        for (key, i) in order {
            let page = key.rotate_left(bits);
            match last {
                Some((p, tail)) if p == page => self.recs[tail as usize].next = i,
                _ => {
                    let slab = &self.recs;
                    self.pages
                        .insert_unique(page, i, |&j| slab[j as usize].page);
                }
            }
            last = Some((page, i));
        }
        for (tag, ids) in tags {
            for &id in ids {
                if let Some(i) = self.slot_of_id(id) {
                    let gen = self.recs[i as usize].gen;
                    self.tags.add(tag, id, gen);
                }
            }
        }
        self.check = Some(CheckState {
            loaded: self.next_gen,
            removed: HashSet::new(),
            seen: vec![0; self.recs.len().div_ceil(64)],
            pending: blocks.iter().map(|&b| u64::from(b)).sum(),
            blocks,
        });
    }

    /// Admits the loaded entries of up to `n` slots from `from` into the eviction policy
    /// (those still as loaded: a fill since has admitted its own). Returns the entries it
    /// evicted to stay within the limits (out of the index; their files are still on disk)
    /// and the slot to continue from (`None` at the end).
    pub(in crate::cache::store) fn admit_loaded(
        &mut self,
        from: usize,
        n: usize,
    ) -> (Vec<EntryRef>, Option<usize>) {
        let Some(c) = &self.check else {
            return (Vec::new(), None);
        };
        let (loaded, end) = (c.loaded, from.saturating_add(n).min(c.blocks.len()));
        let mut evicted = Vec::new();
        for i in from..end {
            // A clear since the load emptied the slab.
            if i >= self.recs.len() {
                break;
            }
            let r = self.recs[i];
            let blocks = self.check.as_mut().map_or(0, |c| {
                c.pending = c.pending.saturating_sub(u64::from(c.blocks[i]));
                c.blocks[i]
            });
            if r.gen == 0 || r.gen > loaded || self.recs.node(i as u32).resident() {
                continue;
            }
            let mut victims = Vec::new();
            self.policy
                .admit(&mut self.recs, i as u32, u64::from(blocks), &mut victims);
            for j in victims {
                // Already out of the policy.
                let v = self.recs[j as usize];
                self.unlink(j);
                evicted.push(v.as_ref());
            }
        }
        let more = self.check.as_ref().is_some_and(|c| end < c.blocks.len());
        if !more {
            if let Some(c) = &mut self.check {
                c.blocks = Vec::new();
                c.pending = 0;
            }
        }
        (evicted, more.then_some(end))
    }

    /// What changed the index since: compared between two periodic snapshots.
    pub(in crate::cache::store) fn change_stamp(&self) -> (u32, u64, u64) {
        (self.next_gen, self.entries, self.bytes)
    }

    /// Whether entries loaded from a snapshot are still being checked against the directory.
    pub(in crate::cache::store) fn checking(&self) -> bool {
        self.check.is_some()
    }

    /// Records that a loaded entry left the index (called by `unlink`).
    pub(super) fn note_removed(&mut self, r: &Rec) {
        if let Some(c) = &mut self.check {
            if r.gen <= c.loaded {
                c.removed.insert(r.id());
            }
        }
    }

    /// Records that every loaded entry left the index (a clear).
    pub(super) fn note_all_removed(&mut self) {
        if let Some(c) = &mut self.check {
            for &i in &self.by_id {
                let r = &self.recs[i as usize];
                if r.gen <= c.loaded {
                    c.removed.insert(r.id());
                }
            }
        }
    }

    /// What the index knows of the entry file named `name` the check found; a loaded entry
    /// is marked as found.
    pub(in crate::cache::store) fn known(&mut self, name: &Digest) -> Known {
        let Some(c) = &self.check else {
            return Known::Changed;
        };
        if c.removed.contains(&id_of(name)) {
            return Known::Changed;
        }
        let Some(i) = self.slot(name) else {
            return Known::Unknown;
        };
        let r = self.recs[i as usize];
        if r.gen > c.loaded {
            return Known::Changed;
        }
        if let Some(c) = &mut self.check {
            if let Some(w) = c.seen.get_mut(i as usize / 64) {
                *w |= 1 << (i % 64);
            }
        }
        Known::Loaded(r.as_ref())
    }

    /// Loaded entries, unchanged since, in up to `n` slots from `from`, whose file the check
    /// did not find; and the slot to continue from (`None` at the end).
    pub(in crate::cache::store) fn unseen_loaded(
        &self,
        from: usize,
        n: usize,
    ) -> (Vec<EntryRef>, Option<usize>) {
        let Some(c) = &self.check else {
            return (Vec::new(), None);
        };
        let end = from.saturating_add(n).min(self.recs.len());
        let mut out = Vec::new();
        for i in from..end {
            let r = &self.recs[i];
            if r.gen == 0 || r.gen > c.loaded {
                continue;
            }
            let seen = c.seen.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0);
            if !seen {
                out.push(r.as_ref());
            }
        }
        (out, (end < self.recs.len()).then_some(end))
    }

    /// The check is over.
    pub(in crate::cache::store) fn end_check(&mut self) {
        self.check = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::{DiskLimits, Selected, BLOCK};
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::key::{entry_digest, page_hash, Variant};
    use http::{HeaderMap, HeaderValue};

    fn rec(path: &str, ae: Option<&str>, vary: u32) -> SnapRec {
        let mut m = sample();
        m.path = path.into();
        m.variant = Variant(vec![("accept-encoding".into(), ae.map(Into::into))]);
        SnapRec {
            name: entry_digest(&m.key(), &m.variant),
            page: page_hash(&m.key()),
            file: 7,
            body_len: 10,
            stored_at: 1,
            vary,
            blocks: 1,
            invalidated: false,
        }
    }

    /// A load builds the same index an insert of each entry would: variants of a page
    /// chained, a name listed twice kept once, every entry found by name and by page.
    #[test]
    fn a_load_chains_variants_and_keeps_a_repeated_name_once() {
        let sets = vec![vec!["accept-encoding".to_owned()]];
        let mut recs = vec![rec("/a", Some("gzip"), 0), rec("/a", Some("br"), 0)];
        recs.extend((0..1000).map(|i| rec(&format!("/n{i}"), None, 0)));
        recs.push(rec("/a", Some("gzip"), 0));
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        idx.load_snapshot(recs.clone().into_iter(), &sets, &[]);
        assert_eq!((idx.entries, idx.bytes), (1002, 10_020));
        assert_eq!(idx.all().len(), 1002);
        let mut key = sample().key();
        key.path = "/a".into();
        assert_eq!(idx.page(&key).len(), 2);
        for (ae, want) in [("gzip", recs[0].name), ("br", recs[1].name)] {
            let mut h = HeaderMap::new();
            h.insert("accept-encoding", HeaderValue::from_static(ae));
            match idx.select(&key, &h) {
                Selected::Found(r) => assert_eq!(r.name, want),
                _ => panic!("{ae} not found"),
            }
        }
        for r in &recs {
            assert!(idx.get(&r.name).is_some());
        }
        // Removing one variant keeps the other reachable.
        let gzip = idx.get(&recs[0].name).unwrap();
        assert!(idx.remove(&gzip));
        assert_eq!(idx.page(&key).len(), 1);
    }

    /// The disk usage reported right after a start counts the loaded entries, before the
    /// background check has the eviction policy admit them, and the same after.
    #[test]
    fn loaded_entries_count_in_the_disk_usage_before_they_are_admitted() {
        let sets = vec![vec!["accept-encoding".to_owned()]];
        let recs: Vec<SnapRec> = (0..10).map(|i| rec(&format!("/n{i}"), None, 0)).collect();
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        idx.load_snapshot(recs.into_iter(), &sets, &[]);
        assert_eq!(idx.disk_usage().0, 10 * BLOCK);
        let (_, next) = idx.admit_loaded(0, 4);
        assert_eq!(next, Some(4));
        assert_eq!(idx.disk_usage().0, 10 * BLOCK, "part admitted");
        assert_eq!(idx.admit_loaded(4, 100).1, None);
        assert_eq!(idx.disk_usage().0, 10 * BLOCK, "all admitted");
        idx.take_all();
        assert_eq!(idx.disk_usage().0, 0, "cleared");
    }
}
