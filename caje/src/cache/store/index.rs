//! The in-memory index: which variants of which pages this node holds, in about a hundred
//! bytes per entry, and the eviction policy behind the same lock.
//!
//! Only what a lookup, the eviction policy and the removal of files need stays in memory:
//! one 88-byte [`Rec`] per entry in a slab (`recs`, in chunks that never move, slots reused
//! through a free list), found
//! by the entry's name through `by_id` and by its page through `pages`: two
//! `hashbrown::HashTable<u32>` of slab indices, 5 bytes a bucket. The variants of a page are
//! chained through [`Rec::next`]. The response's policy, head, host, path and tags stay on
//! disk in the entry's metadata, read on a hit (`lookup.rs`). The `Vary` names are interned
//! ([`VarySets`]: most pages share one or two sets), so a lookup computes the name of the
//! variant a request selects without reading the disk. Tags are kept only for tagged
//! entries, as tag → (id, generation) lists cleaned lazily ([`Tags`]).
//!
//! The eviction policy ([`crate::cache::evict::Fifo`]) lives here, behind the same lock, so
//! what the index serves and what the policy counts against `cache.max_disk_bytes` never
//! disagree: an entry leaves both in one critical section, before its files are unlinked.
//! Its per-entry state (weight, queue, frequency, queue neighbours: 13 bytes) is kept in the
//! record itself and its queues are linked through the slab by slot index, so the policy
//! needs no table of its own; it names victims by slot.

use hashbrown::HashTable;
use http::HeaderMap;

#[path = "index_snap.rs"]
mod snap;
#[path = "index_write.rs"]
mod write;

pub(super) use snap::{Known, SnapRec};

use super::cap::Evicted;
pub(super) use super::cap::{estimated_blocks, file_blocks};
pub use super::cap::{DiskLimits, BLOCK};
use super::interned::{Tags, VarySets};
use super::slab::Slab;
use super::EntryRef;
use crate::cache::evict::{Fifo, Node, Nodes, WarmRefused};
use crate::cache::key::{entry_digest, page_hash, CacheKey, Digest, Variant};

/// What [`Index::insert`] did: the new entry, the replaced or dropped variants, and the
/// entries evicted to stay within the disk limits (already out of the index; their files are
/// still on disk).
pub(super) struct Inserted {
    pub(super) entry: EntryRef,
    pub(super) gone: Vec<EntryRef>,
    pub(super) evicted: Vec<EntryRef>,
}

/// No slot (end of a page's chain).
const NONE: u32 = u32::MAX;

/// One entry: 88 bytes.
///
/// For a snapshot of the slab: `name`, `page`, `file`, `body_len`, `stored_at`, `gen`
/// (0: a free slot), `weight` and `invalidated` describe the entry and must be kept; `vary`
/// is an index into [`VarySets`] and `next` into this slab, so they are only meaningful with
/// those tables (rebuild them by interning and linking again); `q_prev`, `q_next` and
/// `q_bits` are the eviction policy's queue state and may be reset to [`Node::default`]
/// (then admitted again, e.g. every entry into the main queue in slab order).
#[derive(Clone, Copy)]
struct Rec {
    /// The entry's name (SHA-256 of page and variant): where its files are.
    name: Digest,
    /// [`page_hash`] of its page.
    page: u64,
    /// The body file's unique suffix (`<name>.<file>.body`).
    file: u64,
    body_len: u64,
    /// Unix seconds (saturated at `u32::MAX`, the year 2106).
    stored_at: u32,
    /// Changes whenever the entry's metadata does ([`EntryRef`]); never 0, which marks a
    /// free slot.
    gen: u32,
    /// Its `Vary` names, interned in [`VarySets`].
    vary: u32,
    /// The next variant of the same page, or [`NONE`].
    next: u32,
    /// The eviction policy's state ([`Node`]): the entry file's disk blocks (its weight),
    /// its neighbours in its queue and its queue and frequency bits. Stored as fields, not as
    /// a `Node`, so that the record has no padding inside (a `Node` is 13 bytes in 16).
    weight: u32,
    q_prev: u32,
    q_next: u32,
    q_bits: u8,
    /// Soft-purged: stale until refreshed.
    invalidated: bool,
}

impl Nodes for Slab<Rec> {
    fn node(&self, i: u32) -> Node {
        let r = &self[i as usize];
        Node {
            weight: r.weight,
            prev: r.q_prev,
            next: r.q_next,
            bits: r.q_bits,
        }
    }
    fn set_node(&mut self, i: u32, n: Node) {
        let r = &mut self[i as usize];
        r.weight = n.weight;
        r.q_prev = n.prev;
        r.q_next = n.next;
        r.q_bits = n.bits;
    }
    /// The low 64 bits of the policy id (the name's bytes 8..16), as the ghost always used.
    fn fingerprint(&self, i: u32) -> u64 {
        self[i as usize].id() as u64
    }
}

impl Rec {
    /// What a slot no entry uses holds.
    const FREE: Rec = Rec {
        name: [0; 32],
        page: 0,
        file: 0,
        body_len: 0,
        stored_at: 0,
        gen: 0,
        vary: 0,
        next: NONE,
        weight: 0,
        q_prev: NONE,
        q_next: NONE,
        q_bits: 0,
        invalidated: false,
    };

    fn id(&self) -> u128 {
        id_of(&self.name)
    }

    /// The policy state of `other`, kept when this record replaces it in its slot.
    fn with_policy_of(self, other: &Rec) -> Rec {
        Rec {
            weight: other.weight,
            q_prev: other.q_prev,
            q_next: other.q_next,
            q_bits: other.q_bits,
            ..self
        }
    }

    fn as_ref(&self) -> EntryRef {
        EntryRef {
            name: self.name,
            file: self.file,
            body_len: self.body_len,
            gen: self.gen,
            invalidated: self.invalidated,
        }
    }
}

/// An entry's key in the eviction policy: its name's first 128 bits.
pub(super) fn id_of(name: &Digest) -> u128 {
    let mut b = [0u8; 16];
    b.copy_from_slice(&name[..16]);
    u128::from_be_bytes(b)
}

/// The hash of a name in `by_id`: its first 8 bytes, which are uniform (SHA-256) and part
/// of the policy's id too, so a slot is found from either.
fn id_hash(id: u128) -> u64 {
    (id >> 64) as u64
}

/// The variant of a page a request selects, as [`Index::select`] finds it.
pub(super) enum Selected {
    /// Nothing is stored for the page.
    Miss,
    /// The page is stored, no variant matches.
    VaryMiss,
    /// This entry matches.
    Found(EntryRef),
}

/// What [`Index::select_plain`] found.
pub(super) enum Plain {
    /// The page's only response without `Vary`.
    Found(EntryRef),
    /// The page is held with a `Vary`.
    Varies,
    /// Not held.
    Missing,
}

pub(super) struct Index {
    recs: Slab<Rec>,
    free: Vec<u32>,
    by_id: HashTable<u32>,
    /// The first variant of each page.
    pages: HashTable<u32>,
    vary: VarySets,
    tags: Tags,
    pub(super) entries: u64,
    pub(super) bytes: u64,
    next_gen: u32,
    policy: Fifo,
    pub(super) limits: DiskLimits,
    evicted: Evicted,
    /// Set while entries loaded from a snapshot are checked against the directory.
    check: Option<snap::CheckState>,
}

impl Index {
    pub(super) fn new(limits: DiskLimits) -> Index {
        Index {
            recs: Slab::new(Rec::FREE),
            free: Vec::new(),
            by_id: HashTable::new(),
            pages: HashTable::new(),
            vary: VarySets::default(),
            tags: Tags::default(),
            entries: 0,
            bytes: 0,
            next_gen: 0,
            policy: limits.policy(),
            limits,
            evicted: Evicted::default(),
            check: None,
        }
    }

    /// Heap bytes of the index's tables and the policy's ghost, from their capacities.
    pub(super) fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        self.recs.capacity() * size_of::<Rec>()
            + self.free.capacity() * 4
            + (self.by_id.capacity() * 8 / 7).next_power_of_two() * 5
            + (self.pages.capacity() * 8 / 7).next_power_of_two() * 5
            + self.policy.heap_bytes()
    }

    fn slot(&self, name: &Digest) -> Option<u32> {
        self.by_id
            .find(id_hash(id_of(name)), |&i| {
                self.recs[i as usize].name == *name
            })
            .copied()
    }

    fn slot_of_id(&self, id: u128) -> Option<u32> {
        // Two live names sharing their first 128 bits do not happen (SHA-256).
        self.by_id
            .find(id_hash(id), |&i| self.recs[i as usize].id() == id)
            .copied()
    }

    fn head(&self, page: u64) -> Option<u32> {
        self.pages
            .find(page, |&i| self.recs[i as usize].page == page)
            .copied()
    }

    /// The slots of a page's variants, in the order they were stored.
    fn chain(&self, head: Option<u32>) -> Vec<u32> {
        let mut out = Vec::new();
        let mut at = head.unwrap_or(NONE);
        while at != NONE {
            out.push(at);
            at = self.recs[at as usize].next;
        }
        out
    }

    /// The entry with this name, if held.
    pub(super) fn get(&self, name: &Digest) -> Option<EntryRef> {
        self.slot(name).map(|i| self.recs[i as usize].as_ref())
    }

    /// Whether `r` is still what the index holds under its name (not replaced or removed).
    pub(super) fn is_current(&self, r: &EntryRef) -> bool {
        self.get(&r.name).is_some_and(|c| c.gen == r.gen)
    }

    /// The variant of `key` a request with `headers` selects. Computes one variant name per
    /// distinct `Vary` set among the page's variants (usually one), from the interned names.
    pub(super) fn select(&self, key: &CacheKey, headers: &HeaderMap) -> Selected {
        let page = page_hash(key);
        let chain = self.chain(self.head(page));
        if chain.is_empty() {
            return Selected::Miss;
        }
        let mut tried: Vec<u32> = Vec::new();
        for &i in &chain {
            let vary = self.recs[i as usize].vary;
            if tried.contains(&vary) {
                continue;
            }
            tried.push(vary);
            let variant = Variant::from_request(self.vary.names(vary), headers);
            let name = entry_digest(key, &variant);
            if let Some(j) = chain.iter().find(|&&j| self.recs[j as usize].name == name) {
                return Selected::Found(self.recs[*j as usize].as_ref());
            }
        }
        Selected::VaryMiss
    }

    /// The entry a request selects for a page none of whose stored responses has `Vary`,
    /// counted as a use. A page held with a `Vary` is [`Plain::Varies`]: its selection needs
    /// the request's headers ([`Index::select`]). For the fast path, without allocating.
    pub(super) fn select_plain(&mut self, key: &CacheKey) -> Plain {
        let mut at = self.head(page_hash(key)).unwrap_or(NONE);
        let mut name = None;
        while at != NONE {
            let rec = &self.recs[at as usize];
            if !self.vary.names(rec.vary).is_empty() {
                return Plain::Varies;
            }
            let want = *name.get_or_insert_with(|| entry_digest(key, &Variant::default()));
            if rec.name == want {
                let r = rec.as_ref();
                self.policy.touch(&mut self.recs, at);
                return Plain::Found(r);
            }
            at = rec.next;
        }
        Plain::Missing
    }

    /// Every entry held.
    pub(super) fn all(&self) -> Vec<EntryRef> {
        self.by_id
            .iter()
            .map(|&i| self.recs[i as usize].as_ref())
            .collect()
    }

    /// The variants of a page.
    pub(super) fn page(&self, key: &CacheKey) -> Vec<EntryRef> {
        let page = page_hash(key);
        self.chain(self.head(page))
            .into_iter()
            .map(|i| self.recs[i as usize].as_ref())
            .collect()
    }

    /// The entries whose metadata carries `tag`.
    pub(super) fn tagged(&self, tag: &str) -> Vec<EntryRef> {
        let mut out: Vec<EntryRef> = Vec::new();
        for (id, gen) in self.tags.get(tag) {
            if let Some(i) = self.slot_of_id(id) {
                let r = self.recs[i as usize];
                if r.gen == gen {
                    out.push(r.as_ref());
                }
            }
        }
        // A tag listed twice in one response is recorded twice.
        out.sort_unstable_by_key(|r| r.name);
        out.dedup_by_key(|r| r.name);
        out
    }

    /// Empties the index (and the policy); returns every entry it held.
    /// What was evicted is still remembered (warming keeps leaving those versions out).
    pub(super) fn take_all(&mut self) -> Vec<EntryRef> {
        let all = self.all();
        self.note_all_removed();
        let evicted = std::mem::take(&mut self.evicted);
        let (check, next_gen) = (self.check.take(), self.next_gen);
        *self = Index::new(self.limits);
        self.evicted = evicted;
        // Generations go on growing: the snapshot check tells loaded entries by them.
        (self.check, self.next_gen) = (check, next_gen);
        if let Some(c) = &mut self.check {
            // Nothing loaded is left to weigh.
            c.pending = 0;
        }
        all
    }

    /// Bytes (whole blocks) the entries occupy, and the capacity. The entries loaded from a
    /// snapshot count from the start, though the policy counts them only once the background
    /// check has admitted them (until then it evicts among the entries stored since).
    pub(super) fn disk_usage(&self) -> (u64, u64) {
        let u = self.policy.usage();
        let pending = self.check.as_ref().map_or(0, |c| c.pending);
        ((u.used + pending) * BLOCK, u.capacity.saturating_mul(BLOCK))
    }

    /// Bytes (as blocks on disk) of warmed pages no client has asked for yet.
    pub(super) fn warm_bytes(&self) -> u64 {
        self.policy.usage().warm * BLOCK
    }

    /// Whether a warmed page of `blocks` disk blocks would be admitted now under `id` (an
    /// `id` already resident only needs room for its growth).
    pub(super) fn warm_check(&self, id: u128, blocks: u64) -> Result<(), WarmRefused> {
        self.warm_check_slot(self.slot_of_id(id), blocks)
    }

    fn warm_check_slot(&self, slot: Option<u32>, blocks: u64) -> Result<(), WarmRefused> {
        self.policy
            .warm_check(&self.recs, slot, blocks, self.limits.max_warm_bytes / BLOCK)
    }

    /// Whether an entry with this policy id (so this name) is in the index.
    pub(super) fn holds_id(&self, id: u128) -> bool {
        self.slot_of_id(id).is_some()
    }

    /// Whether this node evicted its copy of the entry `name` to stay within the cap, and a
    /// row stored at `row_stored_at` is no newer than the copy it evicted.
    pub(super) fn evicted_unchanged(&self, name: &Digest, row_stored_at: i64) -> bool {
        self.evicted
            .stored_at
            .get(&id_of(name))
            .is_some_and(|&evicted| row_stored_at <= evicted)
    }

    fn new_gen(&mut self) -> u32 {
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        self.next_gen
    }

    /// Records a client's use of an entry for the eviction policy.
    pub(super) fn touch(&mut self, r: &EntryRef) {
        if let Some(i) = self.slot(&r.name) {
            self.policy.touch(&mut self.recs, i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::entry::EntryMeta;
    use http::HeaderValue;

    fn meta(path: &str, vary: Option<&str>, stored_at: u64, tags: &[&str]) -> EntryMeta {
        let mut m = sample();
        m.path = path.into();
        m.variant = Variant(match vary {
            Some(v) => vec![("accept-encoding".into(), Some(v.into()))],
            None => Vec::new(),
        });
        m.stored_at = stored_at;
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        m
    }

    fn put(idx: &mut Index, m: &EntryMeta, max_variants: usize) -> Inserted {
        let name = entry_digest(&m.key(), &m.variant);
        idx.insert(
            m,
            name,
            7,
            estimated_blocks(m.body_len),
            max_variants,
            false,
        )
        .unwrap()
    }

    fn ae(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("accept-encoding", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_record_stays_88_bytes() {
        assert_eq!(std::mem::size_of::<Rec>(), 88);
    }

    #[test]
    fn lookups_select_the_variant_from_the_interned_vary_names() {
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        let gzip = put(&mut idx, &meta("/a", Some("gzip"), 1, &[]), 8).entry;
        let br = put(&mut idx, &meta("/a", Some("br"), 2, &[]), 8).entry;
        let plain = put(&mut idx, &meta("/b", None, 3, &[]), 8).entry;
        assert_eq!(
            idx.vary.len(),
            2,
            "one set per distinct Vary, not per entry"
        );
        let key = |p: &str| meta(p, None, 0, &[]).key();
        let found = |s: Selected| match s {
            Selected::Found(r) => Some(r),
            Selected::Miss => None,
            Selected::VaryMiss => Some(EntryRef {
                gen: u32::MAX,
                ..plain
            }),
        };
        assert_eq!(found(idx.select(&key("/a"), &ae("gzip"))), Some(gzip));
        assert_eq!(found(idx.select(&key("/a"), &ae("br"))), Some(br));
        assert!(matches!(
            idx.select(&key("/a"), &ae("zstd")),
            Selected::VaryMiss
        ));
        assert!(matches!(idx.select(&key("/c"), &ae("br")), Selected::Miss));
        assert_eq!(found(idx.select(&key("/b"), &ae("br"))), Some(plain));
        assert_eq!(idx.page(&key("/a")).len(), 2);
        assert_eq!((idx.entries, idx.bytes), (3, 9));
        // Removing the page's first variant keeps the other reachable.
        assert!(idx.remove(&gzip));
        assert!(!idx.remove(&gzip));
        assert_eq!(found(idx.select(&key("/a"), &ae("br"))), Some(br));
        assert_eq!(idx.remove_page(&key("/a")), vec![br]);
        assert!(matches!(idx.select(&key("/a"), &ae("br")), Selected::Miss));
        assert_eq!(idx.vary.len(), 1, "the unused set was freed");
        assert_eq!(idx.all(), vec![plain]);
    }

    #[test]
    fn a_replaced_entry_is_a_new_generation_in_the_same_slot() {
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        let m = meta("/a", None, 1, &[]);
        let first = put(&mut idx, &m, 8).entry;
        let second = put(&mut idx, &m, 8);
        assert_eq!(second.gone, vec![first]);
        assert!(!idx.is_current(&first));
        assert!(idx.is_current(&second.entry));
        let mut refreshed = m.clone();
        refreshed.invalidated = true;
        let third = idx.replace(&second.entry, &refreshed).unwrap();
        assert!(third.invalidated() && !idx.is_current(&second.entry));
        assert_eq!(idx.replace(&second.entry, &refreshed), None);
        assert_eq!((idx.entries, idx.recs.len()), (1, 1));
    }

    #[test]
    fn the_oldest_variants_go_beyond_max_variants() {
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        let old = put(&mut idx, &meta("/a", Some("a"), 1, &[]), 2).entry;
        put(&mut idx, &meta("/a", Some("b"), 2, &[]), 2);
        let done = put(&mut idx, &meta("/a", Some("c"), 3, &[]), 2);
        assert_eq!(done.gone, vec![old]);
        assert_eq!(idx.entries, 2);
    }

    #[test]
    fn tags_find_live_entries_only_and_stay_bounded() {
        let mut idx = Index::new(DiskLimits::UNLIMITED);
        let a = put(&mut idx, &meta("/a", None, 1, &["t", "t", "u"]), 8).entry;
        let b = put(&mut idx, &meta("/b", None, 1, &["t"]), 8).entry;
        put(&mut idx, &meta("/c", None, 1, &["u"]), 8);
        let mut both = vec![a, b];
        both.sort_unstable_by_key(|r| r.name);
        assert_eq!(idx.tagged("t"), both);
        // Replaced without the tag: no longer found under it.
        let a2 = put(&mut idx, &meta("/a", None, 2, &[]), 8).entry;
        assert_eq!(idx.tagged("t"), vec![b]);
        assert_eq!(idx.remove_tag("t"), vec![b]);
        assert!(idx.tagged("t").is_empty());
        assert!(idx.is_current(&a2));
        // Many short-lived tagged entries: stale pairs are dropped as they pile up.
        for i in 0..10_000u64 {
            let m = meta(&format!("/n{}", i % 10), None, i, &["v"]);
            put(&mut idx, &m, 8);
        }
        assert!(idx.tags.pairs() < 3_000, "{} pairs", idx.tags.pairs());
        assert_eq!(idx.tagged("v").len(), 10);
    }

    #[test]
    fn a_scan_of_new_pages_does_not_evict_pages_clients_ask_for_again() {
        // 100 blocks: 50 entries of two blocks each.
        let limits = DiskLimits {
            max_bytes: 100 * BLOCK,
            max_entries: None,
            max_warm_bytes: 0,
        };
        let mut idx = Index::new(limits);
        let hot: Vec<EntryRef> = (0..20u64)
            .map(|i| put(&mut idx, &meta(&format!("/hot{i}"), None, i, &[]), 8).entry)
            .collect();
        for r in &hot {
            idx.touch(r);
        }
        // A one-time crawl of four times the capacity.
        let mut evicted = Vec::new();
        for i in 0..200u64 {
            let done = put(&mut idx, &meta(&format!("/scan{i}"), None, i, &[]), 8);
            evicted.extend(done.evicted);
        }
        assert!(
            hot.iter().all(|r| idx.is_current(r)),
            "a hot page was evicted"
        );
        assert!(!evicted.iter().any(|e| hot.contains(e)));
        assert_eq!(evicted.len(), 200 + 20 - 50);
        let (used, cap) = idx.disk_usage();
        assert!(used <= cap, "{used} bytes used of {cap}");
        // Every evicted entry left the index and its record was freed for reuse.
        assert_eq!(idx.entries, 50);
        assert_eq!(idx.free.len() + 50, idx.recs.len());
    }

    #[test]
    fn slots_are_reused_and_the_policy_names_victims_by_slot() {
        let limits = DiskLimits {
            max_bytes: 10 * BLOCK,
            max_entries: None,
            max_warm_bytes: 0,
        };
        let mut idx = Index::new(limits);
        let mut evicted = 0;
        for i in 0..100u64 {
            evicted += put(&mut idx, &meta(&format!("/{i}"), None, i, &[]), 8)
                .evicted
                .len();
        }
        // Each entry weighs two blocks (body and metadata): five fit.
        assert_eq!(idx.entries, 5);
        assert_eq!(evicted, 95);
        assert!(
            idx.recs.len() <= 6,
            "{} slots for 5 entries",
            idx.recs.len()
        );
        assert_eq!(idx.take_all().len(), 5);
        assert_eq!(idx.entries, 0);
    }
}
