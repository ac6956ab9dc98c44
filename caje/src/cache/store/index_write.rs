//! The index's changes: inserting an entry (its variants, tags and admission into the
//! eviction policy), replacing its metadata, and removing entries by name, page or tag. A
//! child of `index.rs` (it works on the slab's private fields) kept in its own file so the
//! index's lookups and its changes read apart.

use super::{id_hash, id_of, EntryRef, Index, Inserted, Rec, BLOCK, NONE};
use crate::cache::entry::EntryMeta;
use crate::cache::evict::{Node, WarmRefused};
use crate::cache::key::{page_hash, CacheKey, Digest};

impl Index {
    /// Inserts or replaces the entry named `name` (stored version `file`, an entry file of
    /// `blocks` disk blocks), described by `meta`. When the page then has more than `max_variants` variants, the oldest are
    /// dropped. Returns the new entry, the replaced and dropped ones, whose files the caller
    /// removes, and the entries evicted to stay within the disk limits (already out of the
    /// index; their files are still on disk).
    ///
    /// `warm`: the entry comes from edge warming. It is admitted at the lowest priority and
    /// only into free room within the warming share; if it does not fit, nothing changes
    /// and the refusal is returned (the caller drops the fill).
    pub(in crate::cache::store) fn insert(
        &mut self,
        meta: &EntryMeta,
        name: Digest,
        file: u64,
        blocks: u64,
        max_variants: usize,
        warm: bool,
    ) -> Result<Inserted, WarmRefused> {
        let id = id_of(&name);
        if warm {
            // Checked before anything changes; dropping variants below only frees room, so
            // the admission at the end cannot be refused.
            self.warm_check_slot(self.slot(&name), blocks)?;
        }
        let page = page_hash(&meta.key());
        let gen = self.new_gen();
        let unqueued = Node::default();
        let rec = Rec {
            name,
            page,
            file,
            body_len: meta.body_len,
            stored_at: u32::try_from(meta.stored_at).unwrap_or(u32::MAX),
            gen,
            vary: self.vary.intern(meta.variant.names()),
            next: NONE,
            weight: 0,
            q_prev: unqueued.prev,
            q_next: unqueued.next,
            q_bits: unqueued.bits,
            invalidated: meta.invalidated,
        };
        let mut gone = Vec::new();
        match self.slot(&name) {
            Some(i) => {
                let old = self.recs[i as usize];
                gone.push(old.as_ref());
                self.vary.release(old.vary);
                self.bytes = self.bytes - old.body_len + rec.body_len;
                // Same slot, same place in the policy's queues (the admission below updates
                // the weight).
                self.recs[i as usize] = Rec {
                    next: old.next,
                    ..rec.with_policy_of(&old)
                };
            }
            None => self.link(rec),
        }
        self.add_tags(&meta.tags, id, rec.gen);
        // Too many variants: the oldest go (the first stored among equals).
        loop {
            let chain = self.chain(self.head(page));
            if chain.len() <= max_variants.max(1) {
                break;
            }
            let oldest = chain
                .iter()
                .copied()
                .min_by_key(|&j| self.recs[j as usize].stored_at)
                .unwrap_or(chain[0]);
            gone.push(self.recs[oldest as usize].as_ref());
            self.unlink(oldest);
        }
        let entry = rec.as_ref();
        let Some(i) = self
            .slot(&name)
            .filter(|&i| self.recs[i as usize].gen == gen)
        else {
            // The new entry was itself the oldest variant: nothing under its name is left.
            return Ok(Inserted {
                entry,
                gone,
                evicted: Vec::new(),
            });
        };
        let mut victims = Vec::new();
        if warm {
            // Admitted into free room only: evicts nothing.
            let share = self.limits.max_warm_bytes / BLOCK;
            if let Err(why) = self.policy.admit_warm(&mut self.recs, i, blocks, share) {
                // Not reached (checked above); if it were, the entry must not stay unweighed.
                self.unlink(i);
                return Err(why);
            }
        } else {
            self.policy.admit(&mut self.recs, i, blocks, &mut victims);
        }
        let mut evicted = Vec::new();
        for j in victims {
            // Already out of the policy.
            let r = self.recs[j as usize];
            self.unlink(j);
            self.evicted.record(r.id(), i64::from(r.stored_at));
            evicted.push(r.as_ref());
        }
        Ok(Inserted {
            entry,
            gone,
            evicted,
        })
    }

    /// Takes a free slot for `rec` and links it into both tables and its page's chain (last).
    pub(super) fn link(&mut self, rec: Rec) {
        let i = match self.free.pop() {
            Some(i) => {
                self.recs[i as usize] = rec;
                i
            }
            None => {
                // A slab of more than `u32::MAX` entries would need 350 GiB of RAM.
                self.recs.push(rec) as u32
            }
        };
        let recs = &self.recs;
        self.by_id
            .insert_unique(id_hash(rec.id()), i, |&j| id_hash(recs[j as usize].id()));
        match self.head(rec.page) {
            Some(head) => {
                let mut at = head;
                while self.recs[at as usize].next != NONE {
                    at = self.recs[at as usize].next;
                }
                self.recs[at as usize].next = i;
            }
            None => {
                let recs = &self.recs;
                self.pages
                    .insert_unique(rec.page, i, |&j| recs[j as usize].page);
            }
        }
        self.entries += 1;
        self.bytes += rec.body_len;
    }

    /// Takes slot `i` out of both tables, its page's chain and the policy, and frees it.
    pub(super) fn unlink(&mut self, i: u32) {
        let r = self.recs[i as usize];
        self.note_removed(&r);
        if let Ok(e) = self.by_id.find_entry(id_hash(r.id()), |&j| j == i) {
            e.remove();
        }
        let head = self.head(r.page);
        if head == Some(i) {
            if let Ok(mut e) = self.pages.find_entry(r.page, |&j| j == i) {
                if r.next == NONE {
                    e.remove();
                } else {
                    *e.get_mut() = r.next;
                }
            }
        } else {
            let mut at = head.unwrap_or(NONE);
            while at != NONE {
                let next = self.recs[at as usize].next;
                if next == i {
                    self.recs[at as usize].next = r.next;
                    break;
                }
                at = next;
            }
        }
        self.vary.release(r.vary);
        self.policy.remove(&mut self.recs, i);
        self.entries -= 1;
        self.bytes -= r.body_len;
        self.recs[i as usize].next = NONE;
        // Generation 0 marks a free slot (for snapshots, which copy the slab).
        self.recs[i as usize].gen = 0;
        self.free.push(i);
    }

    /// Records the new metadata of an entry whose body stays the same (after a 304 or a soft
    /// purge), if `old` is still current. Returns the entry as it now is.
    pub(in crate::cache::store) fn replace(
        &mut self,
        old: &EntryRef,
        meta: &EntryMeta,
    ) -> Option<EntryRef> {
        let i = self.slot(&old.name)?;
        if self.recs[i as usize].gen != old.gen {
            return None;
        }
        let gen = self.new_gen();
        let r = &mut self.recs[i as usize];
        r.gen = gen;
        r.stored_at = u32::try_from(meta.stored_at).unwrap_or(u32::MAX);
        r.invalidated = meta.invalidated;
        let r = *r;
        self.add_tags(&meta.tags, r.id(), gen);
        Some(r.as_ref())
    }

    /// Removes exactly this entry (not a newer one with the same name).
    pub(in crate::cache::store) fn remove(&mut self, r: &EntryRef) -> bool {
        match self.slot(&r.name) {
            Some(i) if self.recs[i as usize].gen == r.gen => {
                self.unlink(i);
                true
            }
            _ => false,
        }
    }

    /// Removes every variant of a page.
    pub(in crate::cache::store) fn remove_page(&mut self, key: &CacheKey) -> Vec<EntryRef> {
        let chain = self.chain(self.head(page_hash(key)));
        let removed = chain
            .iter()
            .map(|&i| self.recs[i as usize].as_ref())
            .collect();
        for i in chain {
            self.unlink(i);
        }
        removed
    }

    /// Removes every entry carrying `tag`.
    pub(in crate::cache::store) fn remove_tag(&mut self, tag: &str) -> Vec<EntryRef> {
        let tagged = self.tagged(tag);
        for r in &tagged {
            self.remove(r);
        }
        self.tags.remove(tag);
        tagged
    }

    pub(super) fn add_tags(&mut self, tags: &[String], id: u128, gen: u32) {
        for t in tags {
            self.tags.add(t, id, gen);
        }
        if self.tags.should_compact() {
            let mut tags = std::mem::take(&mut self.tags);
            tags.compact(|id, gen| {
                self.slot_of_id(id)
                    .is_some_and(|i| self.recs[i as usize].gen == gen)
            });
            self.tags = tags;
        }
    }
}
