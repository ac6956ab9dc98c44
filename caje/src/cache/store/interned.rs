//! What the index keeps of the parts of entries' metadata that many entries share: their
//! `Vary` name sets, stored once each, and their purge tags, kept only for tagged entries.

use std::collections::HashMap;
use std::sync::Arc;

/// The `Vary` name sets of the stored responses, each stored once with a count of the entries
/// that use it (freed at zero, so an origin that varies on ever new names cannot grow it).
#[derive(Default)]
pub(super) struct VarySets {
    sets: Vec<(Arc<[String]>, u32)>,
    by_names: HashMap<Arc<[String]>, u32>,
    free: Vec<u32>,
}

impl VarySets {
    /// The set's number, counting one more entry that uses it.
    pub(super) fn intern(&mut self, names: Vec<String>) -> u32 {
        if let Some(&i) = self.by_names.get(names.as_slice()) {
            self.sets[i as usize].1 += 1;
            return i;
        }
        let names: Arc<[String]> = names.into();
        let i = match self.free.pop() {
            Some(i) => {
                self.sets[i as usize] = (names.clone(), 1);
                i
            }
            None => {
                self.sets.push((names.clone(), 1));
                (self.sets.len() - 1) as u32
            }
        };
        self.by_names.insert(names, i);
        i
    }

    /// One more entry uses set `i` (a snapshot's load: each set interned once, then counted).
    pub(super) fn add_ref(&mut self, i: u32) {
        self.sets[i as usize].1 += 1;
    }

    /// One entry fewer uses set `i`.
    pub(super) fn release(&mut self, i: u32) {
        let slot = &mut self.sets[i as usize];
        slot.1 -= 1;
        if slot.1 == 0 {
            let names = std::mem::replace(&mut slot.0, Arc::from(Vec::new()));
            self.by_names.remove(&names);
            self.free.push(i);
        }
    }

    /// The names of set `i`.
    pub(super) fn names(&self, i: u32) -> &[String] {
        &self.sets[i as usize].0
    }

    /// Sets in use.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.by_names.len()
    }
}

/// Tagged entries by tag, as (id, generation) pairs. A pair whose entry was removed or has
/// changed since is stale: readers check each pair against the index, and the owner drops the
/// stale ones in one pass whenever the pairs have doubled since the last ([`Tags::compact`]),
/// so memory stays proportional to the live pairs.
#[derive(Default)]
pub(super) struct Tags {
    map: HashMap<Box<str>, Vec<([u8; 16], u32)>>,
    pairs: usize,
    compact_at: usize,
}

impl Tags {
    pub(super) fn add(&mut self, tag: &str, id: u128, gen: u32) {
        let pair = (id.to_be_bytes(), gen);
        match self.map.get_mut(tag) {
            Some(v) => v.push(pair),
            None => {
                self.map.insert(tag.into(), vec![pair]);
            }
        }
        self.pairs += 1;
    }

    /// The (id, generation) pairs recorded for `tag`, stale ones included.
    pub(super) fn get(&self, tag: &str) -> impl Iterator<Item = (u128, u32)> + '_ {
        self.map
            .get(tag)
            .into_iter()
            .flatten()
            .map(|&(id, gen)| (u128::from_be_bytes(id), gen))
    }

    pub(super) fn remove(&mut self, tag: &str) {
        if let Some(v) = self.map.remove(tag) {
            self.pairs -= v.len();
        }
    }

    /// Every tag recorded (some may have only stale pairs).
    pub(super) fn tags(&self) -> impl Iterator<Item = &str> {
        self.map.keys().map(|t| &**t)
    }

    pub(super) fn should_compact(&self) -> bool {
        self.pairs > self.compact_at
    }

    /// Keeps only the pairs `live` accepts.
    pub(super) fn compact(&mut self, live: impl Fn(u128, u32) -> bool) {
        let mut pairs = 0;
        self.map.retain(|_, v| {
            v.retain(|&(id, gen)| live(u128::from_be_bytes(id), gen));
            v.shrink_to_fit();
            pairs += v.len();
            !v.is_empty()
        });
        self.pairs = pairs;
        self.compact_at = pairs * 2 + 1024;
    }

    /// Pairs held (stale ones included).
    #[cfg(test)]
    pub(super) fn pairs(&self) -> usize {
        self.pairs
    }
}
