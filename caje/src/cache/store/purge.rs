//! Removing entries: purges by page or tag (hard or soft), purges recorded by other nodes,
//! and clearing the whole store.

use std::fs;
use std::sync::Arc;

use super::{Entry, Store, StoreEvent};
use crate::cache::key::CacheKey;

impl Store {
    /// Removes every entry; returns (entries, bytes) removed. Blocking.
    pub fn clear(&self) -> (u64, u64) {
        let removed: Vec<Arc<Entry>> = self.index().take_all();
        self.inner.hot.clear();
        let bytes = removed.iter().map(|e| e.meta.body_len).sum();
        for e in &removed {
            let _ = fs::remove_file(e.meta_path());
            let _ = fs::remove_file(e.body_path());
        }
        (removed.len() as u64, bytes)
    }

    /// Removes every variant of a page; returns the removed entries. Blocking.
    pub fn remove_page(&self, key: &CacheKey) -> Vec<Arc<Entry>> {
        let removed = self.index().remove_page(key);
        self.forget(&removed);
        removed
    }

    /// Removes every entry carrying `tag`; returns them. Blocking.
    pub fn remove_tag(&self, tag: &str) -> Vec<Arc<Entry>> {
        let tagged: Vec<Arc<Entry>> = self
            .index()
            .pages
            .values()
            .flatten()
            .filter(|e| e.meta.tags.iter().any(|t| t == tag))
            .cloned()
            .collect();
        let removed: Vec<Arc<Entry>> = {
            let mut idx = self.index();
            tagged.into_iter().filter(|e| idx.remove(e)).collect()
        };
        self.forget(&removed);
        removed
    }

    /// Soft purge: marks every variant of a page, or every entry carrying `tag`, as
    /// invalidated (stale until refreshed; still usable for revalidation). Returns how many
    /// were marked. Blocking.
    pub fn invalidate(&self, key: Option<&CacheKey>, tag: Option<&str>) -> usize {
        let targets: Vec<Arc<Entry>> = {
            let idx = self.index();
            match (key, tag) {
                (Some(k), _) => idx.pages.get(k).cloned().unwrap_or_default(),
                (None, Some(t)) => idx
                    .pages
                    .values()
                    .flatten()
                    .filter(|e| e.meta.tags.iter().any(|x| x == t))
                    .cloned()
                    .collect(),
                (None, None) => idx.pages.values().flatten().cloned().collect(),
            }
        };
        let mut marked = 0;
        for e in targets.iter().filter(|e| !e.meta.invalidated) {
            let mut meta = e.meta.clone();
            meta.invalidated = true;
            match self.update_meta(e, meta, false) {
                Ok(Some(_)) => marked += 1,
                Ok(None) => {}
                Err(err) => self
                    .inner
                    .stats
                    .store_failed("marking an entry stale", &err),
            }
        }
        marked + targets.iter().filter(|e| e.meta.invalidated).count()
    }

    /// Applies a purge recorded by another node: entries stored at or before `before` (unix
    /// seconds) that match are removed, or marked stale when `soft`. `key`/`tag` `None` for
    /// both means every entry. Returns how many were affected. Blocking.
    pub fn apply_purge(
        &self,
        key: Option<&CacheKey>,
        tag: Option<&str>,
        soft: bool,
        before: u64,
    ) -> usize {
        let targets: Vec<Arc<Entry>> = {
            let idx = self.index();
            let candidates: Vec<&Arc<Entry>> = match (key, tag) {
                (Some(k), _) => idx
                    .pages
                    .get(k)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                (None, Some(t)) => idx
                    .pages
                    .values()
                    .flatten()
                    .filter(|e| e.meta.tags.iter().any(|x| x == t))
                    .collect(),
                (None, None) => idx.pages.values().flatten().collect(),
            };
            candidates
                .into_iter()
                .filter(|e| e.meta.stored_at <= before)
                .cloned()
                .collect()
        };
        if soft {
            let mut marked = 0;
            for e in targets.iter().filter(|e| !e.meta.invalidated) {
                let mut meta = e.meta.clone();
                meta.invalidated = true;
                if let Ok(Some(_)) = self.update_meta(e, meta, false) {
                    marked += 1;
                }
            }
            return marked;
        }
        let removed: Vec<Arc<Entry>> = {
            let mut idx = self.index();
            targets.into_iter().filter(|e| idx.remove(e)).collect()
        };
        self.forget(&removed);
        removed.len()
    }

    /// Unlinks the files of entries already taken out of the index.
    fn forget(&self, removed: &[Arc<Entry>]) {
        for e in removed {
            self.inner.hot.remove(&e.meta.body_file);
            let _ = fs::remove_file(e.meta_path());
            let _ = fs::remove_file(e.body_path());
        }
        for e in removed {
            let _ = self.inner.events.send(StoreEvent::Removed(e.clone()));
        }
    }
}
