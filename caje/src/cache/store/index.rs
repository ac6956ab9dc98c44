//! The in-memory index: which variants of which pages this node holds, and the lookups on it.
//!
//! The eviction policy ([`crate::cache::evict`]) lives inside the index, behind the same lock,
//! so what the index serves and what the policy counts against `cache.max_disk_bytes` never
//! disagree: an entry leaves both in one critical section, before its files are unlinked.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use http::HeaderMap;

use super::{Entry, Lookup, Store};
use crate::cache::evict::{Policy, WarmRefused};
use crate::cache::key::{CacheKey, Variant};

/// Disk usage is counted in blocks of this size, as a filesystem allocates them.
pub const BLOCK: u64 = 4096;

/// Blocks an entry occupies on disk: its file (header and body) rounded up to whole blocks,
/// as a file system allocates them (what `du` counts for it).
pub(super) fn disk_blocks(entry: &Entry) -> u64 {
    (entry.body_offset + entry.meta.body_len).div_ceil(BLOCK)
}

/// Blocks a page of `body_len` bytes will take, before its header is known: one block more
/// than its body needs, which covers any header up to 4 KiB (nearly all of them).
fn estimated_blocks(body_len: u64) -> u64 {
    body_len.div_ceil(BLOCK) + 1
}

/// The limits of the disk tier.
#[derive(Debug, Clone, Copy)]
pub struct DiskLimits {
    /// Bodies plus metadata, in bytes, as they occupy the disk.
    pub max_bytes: u64,
    /// Most entries, if bounded.
    pub max_entries: Option<usize>,
    /// Most bytes (as blocks on disk) that pages brought in by edge warming and not yet asked
    /// for by a client may occupy (`populate.max_fraction` of `max_bytes`).
    pub max_warm_bytes: u64,
}

impl DiskLimits {
    /// No limit (tests and tools).
    pub const UNLIMITED: DiskLimits = DiskLimits {
        max_bytes: u64::MAX,
        max_entries: None,
        max_warm_bytes: u64::MAX,
    };

    fn policy(self) -> Policy {
        Policy::new(self.max_bytes / BLOCK, self.max_entries)
    }
}

/// What [`Index::insert`] took out: (replaced or dropped variants, entries evicted to stay
/// within the disk limits).
pub(super) type Inserted = (Vec<Arc<Entry>>, Vec<Arc<Entry>>);

/// How many evicted page versions are remembered (about 40 bytes each).
const EVICTED_REMEMBERED: usize = 16_384;

/// Pages evicted to stay within the cap, with the `stored_at` of the copy that was evicted, so
/// edge warming does not bring a page back until its manifest row changes. Bounded: the oldest
/// are forgotten first.
#[derive(Default)]
struct Evicted {
    stored_at: HashMap<u128, i64>,
    order: VecDeque<u128>,
}

impl Evicted {
    fn record(&mut self, id: u128, stored_at: i64) {
        if self.stored_at.insert(id, stored_at).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > EVICTED_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.stored_at.remove(&old);
            }
        }
    }
}

pub(super) struct Index {
    pub(super) pages: HashMap<CacheKey, Vec<Arc<Entry>>>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
    /// Entries by policy key, to turn the victims the policy names into entries.
    by_id: HashMap<u128, Arc<Entry>>,
    policy: Policy,
    limits: DiskLimits,
    evicted: Evicted,
}

impl Index {
    pub(super) fn new(limits: DiskLimits) -> Index {
        Index {
            pages: HashMap::new(),
            entries: 0,
            bytes: 0,
            by_id: HashMap::new(),
            policy: limits.policy(),
            limits,
            evicted: Evicted::default(),
        }
    }

    /// Empties the index (and the policy); returns every entry it held.
    /// What was evicted is still remembered (warming keeps leaving those versions out).
    pub(super) fn take_all(&mut self) -> Vec<Arc<Entry>> {
        let all = std::mem::take(&mut self.pages);
        let evicted = std::mem::take(&mut self.evicted);
        *self = Index::new(self.limits);
        self.evicted = evicted;
        all.into_values().flatten().collect()
    }

    /// Disk blocks the policy counts and the capacity in blocks.
    pub(super) fn disk_usage(&self) -> (u64, u64) {
        let u = self.policy.usage();
        (u.used * BLOCK, u.capacity.saturating_mul(BLOCK))
    }

    /// Bytes (as blocks on disk) of warmed pages no client has asked for yet.
    pub(super) fn warm_bytes(&self) -> u64 {
        self.policy.usage().warm * BLOCK
    }

    /// Whether a warmed page of `blocks` disk blocks would be admitted now under `id` (an
    /// `id` already resident only needs room for its growth).
    pub(super) fn warm_check(&self, id: u128, blocks: u64) -> Result<(), WarmRefused> {
        self.policy
            .warm_check(id, blocks, self.limits.max_warm_bytes / BLOCK)
    }

    /// Inserts or replaces the entry with the same name. When the page then has more than
    /// `max_variants` variants, the oldest are dropped. Returns the replaced and dropped
    /// entries, whose files the caller removes, and the entries evicted to stay within the
    /// disk limits (already out of the index; their files are still on disk).
    ///
    /// `warm`: the entry comes from edge warming. It is admitted at the lowest priority and
    /// only into free room within the warming share; if it does not fit, nothing changes
    /// and the refusal is returned (the caller drops the fill).
    pub(super) fn insert(
        &mut self,
        entry: Arc<Entry>,
        max_variants: usize,
        warm: bool,
    ) -> Result<Inserted, WarmRefused> {
        if warm {
            let share = self.limits.max_warm_bytes / BLOCK;
            self.policy
                .admit_warm(entry.id, disk_blocks(&entry), share)?;
        }
        let variants = self.pages.entry(entry.meta.key()).or_default();
        self.entries += 1;
        self.bytes += entry.meta.body_len;
        let mut gone = Vec::new();
        match variants.iter().position(|e| e.name == entry.name) {
            Some(i) => gone.push(std::mem::replace(&mut variants[i], entry.clone())),
            None => variants.push(entry.clone()),
        }
        while variants.len() > max_variants.max(1) {
            let oldest = variants
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| e.meta.stored_at)
                .map_or(0, |(i, _)| i);
            gone.push(variants.remove(oldest));
        }
        for old in &gone {
            self.entries -= 1;
            self.bytes -= old.meta.body_len;
            if old.id != entry.id && self.by_id.remove(&old.id).is_some() {
                self.policy.remove(old.id);
            }
        }
        if !variants.iter().any(|e| Arc::ptr_eq(e, &entry)) {
            // The new entry was itself the oldest variant: nothing under its name is left.
            if self.by_id.remove(&entry.id).is_some() || warm {
                self.policy.remove(entry.id);
            }
            return Ok((gone, Vec::new()));
        }
        self.by_id.insert(entry.id, entry.clone());
        let mut evicted = Vec::new();
        // A warmed entry is already admitted (and evicts nothing).
        let victims = if warm {
            Vec::new()
        } else {
            self.policy.admit(entry.id, disk_blocks(&entry))
        };
        for victim in victims {
            if let Some(e) = self.by_id.get(&victim).cloned() {
                if self.remove(&e) {
                    self.evicted.record(e.id, e.meta.stored_at as i64);
                    evicted.push(e);
                }
            }
        }
        Ok((gone, evicted))
    }

    /// Whether an entry with this policy id (so this name) is in the index.
    pub(super) fn holds_id(&self, id: u128) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Records a client's use of an entry for the eviction policy.
    pub(super) fn touch(&mut self, entry: &Entry) {
        self.policy.touch(entry.id);
    }

    /// Swaps `old` for `new` (same page and name) if `old` is still current.
    pub(super) fn replace(&mut self, old: &Arc<Entry>, new: Arc<Entry>) -> bool {
        let Some(variants) = self.pages.get_mut(&old.meta.key()) else {
            return false;
        };
        let Some(slot) = variants.iter_mut().find(|e| Arc::ptr_eq(e, old)) else {
            return false;
        };
        self.bytes = self.bytes - old.meta.body_len + new.meta.body_len;
        self.by_id.insert(new.id, new.clone());
        *slot = new;
        true
    }

    /// Removes exactly this entry (not a newer one with the same name).
    pub(super) fn remove(&mut self, entry: &Arc<Entry>) -> bool {
        let key = entry.meta.key();
        let Some(variants) = self.pages.get_mut(&key) else {
            return false;
        };
        let Some(i) = variants.iter().position(|e| Arc::ptr_eq(e, entry)) else {
            return false;
        };
        variants.swap_remove(i);
        if variants.is_empty() {
            self.pages.remove(&key);
        }
        self.entries -= 1;
        self.bytes -= entry.meta.body_len;
        self.by_id.remove(&entry.id);
        self.policy.remove(entry.id);
        true
    }

    /// Removes every variant of a page.
    pub(super) fn remove_page(&mut self, key: &CacheKey) -> Vec<Arc<Entry>> {
        let removed = self.pages.remove(key).unwrap_or_default();
        for e in &removed {
            self.entries -= 1;
            self.bytes -= e.meta.body_len;
            self.by_id.remove(&e.id);
            self.policy.remove(e.id);
        }
        removed
    }
}

impl Store {
    /// Number of entries and their body bytes.
    pub fn usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.entries, idx.bytes)
    }

    /// Bytes the entries occupy on disk as the eviction policy counts them (each entry file
    /// in whole 4 KiB blocks), and the cap (`cache.max_disk_bytes`).
    pub fn disk_usage(&self) -> (u64, u64) {
        self.index().disk_usage()
    }

    /// Bytes on disk (whole blocks, as the cap counts them) of pages edge warming brought in
    /// that no client of this node has asked for yet, and the most they may take
    /// (`populate.max_fraction` of the cap).
    pub fn warm_usage(&self) -> (u64, u64) {
        let idx = self.index();
        (idx.warm_bytes(), idx.limits.max_warm_bytes)
    }

    /// Like [`Store::lookup`], but not a client's use: the eviction policy is not told (edge
    /// warming looks before it fetches).
    pub fn peek(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        let idx = self.index();
        match idx.pages.get(key) {
            None => Lookup::Miss,
            Some(variants) => variants
                .iter()
                .find(|e| e.meta.variant.matches(headers))
                .map_or(Lookup::VaryMiss, |e| Lookup::Found(e.clone())),
        }
    }

    /// Whether edge warming may bring in a page of `body_len` bytes now: it fits in the free
    /// room and in the warming share (`populate.max_fraction`). Warming never evicts.
    pub fn warm_fits(&self, body_len: u64) -> Result<(), WarmRefused> {
        // A key no entry has: the check for a new page.
        self.index()
            .warm_check(u128::MAX, estimated_blocks(body_len))
    }

    /// Finds the entry that may answer a request for `key` with these headers.
    pub fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        let mut idx = self.index();
        let found = match idx.pages.get(key) {
            None => return Lookup::Miss,
            Some(variants) => variants
                .iter()
                .find(|e| e.meta.variant.matches(headers))
                .cloned(),
        };
        match found {
            Some(e) => {
                idx.touch(&e);
                Lookup::Found(e)
            }
            None => Lookup::VaryMiss,
        }
    }

    /// Whether `entry` is still the one the index serves (not replaced or removed).
    pub fn is_current(&self, entry: &Arc<Entry>) -> bool {
        let idx = self.index();
        idx.pages
            .get(&entry.meta.key())
            .is_some_and(|v| v.iter().any(|e| Arc::ptr_eq(e, entry)))
    }

    /// Whether this node evicted its copy of the page variant to stay within the cap, and the
    /// manifest row has not changed since: the row was stored (`row_stored_at`, unix seconds)
    /// no later than the copy that was evicted. Edge warming skips such rows.
    pub fn evicted_unchanged(&self, key: &CacheKey, variant: &Variant, row_stored_at: i64) -> bool {
        let id = super::policy_id(&crate::cache::key::entry_name(key, variant));
        self.index()
            .evicted
            .stored_at
            .get(&id)
            .is_some_and(|&evicted| row_stored_at <= evicted)
    }

    /// Whether this node holds the given page variant.
    pub fn holds(&self, key: &CacheKey, variant: &Variant) -> bool {
        let idx = self.index();
        idx.pages
            .get(key)
            .is_some_and(|v| v.iter().any(|e| &e.meta.variant == variant))
    }

    /// Every entry, for listings.
    pub fn entries(&self) -> Vec<Arc<Entry>> {
        self.index().pages.values().flatten().cloned().collect()
    }
}
