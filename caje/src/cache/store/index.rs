//! The in-memory index: which variants of which pages this node holds, and the lookups on it.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;

use super::{Entry, Lookup, Store};
use crate::cache::key::{CacheKey, Variant};

#[derive(Default)]
pub(super) struct Index {
    pub(super) pages: HashMap<CacheKey, Vec<Arc<Entry>>>,
    pub(super) entries: u64,
    pub(super) bytes: u64,
}

impl Index {
    /// Inserts or replaces the entry with the same name. When the page then has more than
    /// `max_variants` variants, the oldest are evicted. Returns the replaced and evicted
    /// entries, whose files the caller removes.
    pub(super) fn insert(&mut self, entry: Arc<Entry>, max_variants: usize) -> Vec<Arc<Entry>> {
        let variants = self.pages.entry(entry.meta.key()).or_default();
        self.entries += 1;
        self.bytes += entry.meta.body_len;
        let mut gone = Vec::new();
        match variants.iter().position(|e| e.name == entry.name) {
            Some(i) => gone.push(std::mem::replace(&mut variants[i], entry)),
            None => variants.push(entry),
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
        }
        gone
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
        true
    }

    /// Removes every variant of a page.
    pub(super) fn remove_page(&mut self, key: &CacheKey) -> Vec<Arc<Entry>> {
        let removed = self.pages.remove(key).unwrap_or_default();
        for e in &removed {
            self.entries -= 1;
            self.bytes -= e.meta.body_len;
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

    /// Finds the entry that may answer a request for `key` with these headers.
    pub fn lookup(&self, key: &CacheKey, headers: &HeaderMap) -> Lookup {
        let idx = self.index();
        match idx.pages.get(key) {
            None => Lookup::Miss,
            Some(variants) => variants
                .iter()
                .find(|e| e.meta.variant.matches(headers))
                .map_or(Lookup::VaryMiss, |e| Lookup::Found(e.clone())),
        }
    }

    /// Whether `entry` is still the one the index serves (not replaced or removed).
    pub fn is_current(&self, entry: &Arc<Entry>) -> bool {
        let idx = self.index();
        idx.pages
            .get(&entry.meta.key())
            .is_some_and(|v| v.iter().any(|e| Arc::ptr_eq(e, entry)))
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
