//! Removing entries: purges by page or tag (hard or soft), purges recorded by other nodes,
//! and clearing the whole store.
//!
//! A fill that was sent to the origin before a purge may commit after it, with a response that
//! predates the purge. Every purge is therefore logged with a sequence number (its *epoch*)
//! before it touches the index, and a fill remembers the epoch from before its origin request
//! ([`Store::purge_epoch`]); its commit drops it when a purge logged since covers it. No clock
//! is involved, so a copy fetched after a purge, however soon, is never dropped by it.

use std::collections::VecDeque;

use super::{EntryRef, Store, StoreEvent};
use crate::cache::entry::EntryMeta;
use crate::cache::key::CacheKey;

/// Purges kept for fills still running. A fill older than the oldest one kept is dropped at
/// commit (it cannot be told apart from one a forgotten purge covers); that takes this many
/// purges during one fill.
const KEPT_PURGES: usize = 4096;

/// What a purge covered.
#[derive(Debug)]
enum Target {
    Page(CacheKey),
    Tag(String),
    All,
}

/// The recent purges, by epoch. Lives behind the store's commit mutex.
#[derive(Debug, Default)]
pub(super) struct PurgeLog {
    /// Epoch of the next purge: purges logged so far.
    next: u64,
    /// The last [`KEPT_PURGES`] purges, oldest first, with their epochs.
    recent: VecDeque<(u64, Target)>,
}

impl PurgeLog {
    fn push(&mut self, target: Target) {
        if self.recent.len() == KEPT_PURGES {
            self.recent.pop_front();
        }
        self.recent.push_back((self.next, target));
        self.next += 1;
    }

    /// Whether a purge logged at or after epoch `since` covers this entry.
    pub(super) fn covers(&self, since: u64, meta: &EntryMeta) -> bool {
        self.covers_page(since, &meta.host, &meta.path, &meta.tags)
    }

    /// Whether a purge logged at or after epoch `since` covers the page `host` `path` with
    /// these tags.
    fn covers_page(&self, since: u64, host: &str, path: &str, tags: &[String]) -> bool {
        let forgotten = self.next - self.recent.len() as u64;
        if since < forgotten {
            return true;
        }
        self.recent
            .iter()
            .filter(|(epoch, _)| *epoch >= since)
            .any(|(_, target)| match target {
                Target::Page(key) => key.host == host && key.path == path,
                Target::Tag(tag) => tags.iter().any(|t| t == tag),
                Target::All => true,
            })
    }
}

impl Store {
    /// The current purge epoch. Read it before sending a request whose response will be
    /// stored, and pass it to [`Store::begin_fill`].
    pub fn purge_epoch(&self) -> u64 {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next
    }

    /// Whether a purge logged here since epoch `since` covers the page `key` with `tags`
    /// (the tags its manifest row lists). Populate asks before it fetches a page it listed at
    /// `since`, and again when the copy was not committed: a page purged since is not fetched
    /// (again) without a client asking for it.
    pub fn purged_since(&self, since: u64, key: &CacheKey, tags: &[String]) -> bool {
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .covers_page(since, &key.host, &key.path, tags)
    }

    /// Logs a purge before it is applied: from now on, no fill that started earlier commits an
    /// entry it covers. Taken in the commit critical section, so every commit either comes
    /// before (and its entry is in the index for the purge to find) or sees it.
    fn log_purge(&self, key: Option<&CacheKey>, tag: Option<&str>) {
        let target = match (key, tag) {
            (Some(k), _) => Target::Page(k.clone()),
            (None, Some(t)) => Target::Tag(t.to_owned()),
            (None, None) => Target::All,
        };
        self.inner
            .commit
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(target);
    }

    /// Removes every entry; returns (entries, bytes) removed. Blocking.
    pub fn clear(&self) -> (u64, u64) {
        self.log_purge(None, None);
        let removed = self.index().take_all();
        self.inner.hot.clear();
        self.inner.metas.clear();
        let bytes = removed.iter().map(EntryRef::body_len).sum();
        self.unlink_unheld(&removed);
        (removed.len() as u64, bytes)
    }

    /// Removes every variant of a page; returns the removed entries. Blocking.
    pub fn remove_page(&self, key: &CacheKey) -> Vec<EntryRef> {
        self.log_purge(Some(key), None);
        let removed = self.index().remove_page(key);
        self.forget(&removed);
        removed
    }

    /// Removes every entry carrying `tag`; returns them. Blocking.
    pub fn remove_tag(&self, tag: &str) -> Vec<EntryRef> {
        self.log_purge(None, Some(tag));
        let removed = self.index().remove_tag(tag);
        self.forget(&removed);
        removed
    }

    /// The entries a purge of `key`, of `tag`, or of everything (both `None`) covers.
    fn targets(&self, key: Option<&CacheKey>, tag: Option<&str>) -> Vec<EntryRef> {
        let idx = self.index();
        match (key, tag) {
            (Some(k), _) => idx.page(k),
            (None, Some(t)) => idx.tagged(t),
            (None, None) => idx.all(),
        }
    }

    /// Marks these entries invalidated (each read from disk, rewritten with the flag set);
    /// returns how many were marked now.
    fn mark_invalidated(&self, targets: &[EntryRef]) -> usize {
        let mut marked = 0;
        for r in targets.iter().filter(|r| !r.invalidated()) {
            let Some(e) = self.load(r) else { continue };
            let mut meta = e.meta.clone();
            meta.invalidated = true;
            match self.update_meta(&e, meta, false) {
                Ok(Some(_)) => marked += 1,
                Ok(None) => {}
                Err(err) => self
                    .inner
                    .stats
                    .store_failed("marking an entry stale", &err),
            }
        }
        marked
    }

    /// Soft purge: marks every variant of a page, or every entry carrying `tag`, as
    /// invalidated (stale until refreshed; still usable for revalidation). Returns how many
    /// were marked. Blocking.
    pub fn invalidate(&self, key: Option<&CacheKey>, tag: Option<&str>) -> usize {
        self.log_purge(key, tag);
        let targets = self.targets(key, tag);
        self.mark_invalidated(&targets) + targets.iter().filter(|r| r.invalidated()).count()
    }

    /// Applies a purge recorded by another node: every entry that matches is removed, or
    /// marked stale when `soft`. `key`/`tag` `None` for both means every entry. Every entry
    /// held now was stored before this node applied the purge, so none is spared by its
    /// time; a fill still running is dropped at its commit. Returns how many were affected.
    /// Blocking.
    pub fn apply_purge(&self, key: Option<&CacheKey>, tag: Option<&str>, soft: bool) -> usize {
        self.log_purge(key, tag);
        let targets = self.targets(key, tag);
        if soft {
            return self.mark_invalidated(&targets);
        }
        let removed: Vec<EntryRef> = {
            let mut idx = self.index();
            targets.into_iter().filter(|r| idx.remove(r)).collect()
        };
        self.forget(&removed);
        removed.len()
    }

    /// Removes exactly these entries of these pages (those still current); returns how many.
    /// Each page is logged as purged first, so a fill of it already running does not put it
    /// back. Blocking.
    pub fn remove_entries(&self, entries: &[(CacheKey, EntryRef)]) -> usize {
        let mut pages: Vec<&CacheKey> = entries.iter().map(|(k, _)| k).collect();
        pages.sort();
        pages.dedup();
        for key in pages {
            self.log_purge(Some(key), None);
        }
        let removed: Vec<EntryRef> = {
            let mut idx = self.index();
            entries
                .iter()
                .map(|(_, r)| *r)
                .filter(|r| idx.remove(r))
                .collect()
        };
        self.forget(&removed);
        removed.len()
    }

    /// Unlinks the files of entries already taken out of the index.
    fn forget(&self, removed: &[EntryRef]) {
        for r in removed {
            self.inner.hot.remove(&r.body_file());
            self.inner.metas.remove(r.id());
        }
        self.unlink_unheld(removed);
        for r in removed {
            let _ = self.inner.events.send(StoreEvent::Removed(*r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::store::tests::open;

    use bytes::Bytes;

    /// A fill sent before a purge and committed after it: its response may predate the purge,
    /// so it is not stored. One sent after the purge is.
    async fn commit_after(purge: impl FnOnce(&Store), tags: &[&str]) -> (bool, bool) {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        let mut meta = sample();
        meta.tags = tags.iter().map(|t| t.to_string()).collect();
        let before = store.purge_epoch();
        let mut early = store.begin_fill(meta.clone(), u64::MAX, true, before);
        early.push(&Bytes::from_static(b"old"));
        purge(&store);
        let mut late = store.begin_fill(meta, u64::MAX, true, store.purge_epoch());
        late.push(&Bytes::from_static(b"new"));
        let (mut p_early, mut p_late) = (early.progress(), late.progress());
        early.finish();
        let early_stored = p_early
            .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
            .await
            .map(|p| matches!(*p, FillProgress::Committed(..)))
            .unwrap();
        late.finish();
        let late_stored = p_late
            .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
            .await
            .map(|p| matches!(*p, FillProgress::Committed(..)))
            .unwrap();
        (early_stored, late_stored)
    }

    use super::super::FillProgress;

    #[tokio::test]
    async fn a_fill_older_than_a_purge_of_its_page_is_not_committed() {
        let key = sample().key();
        let page = commit_after(|s| drop(s.remove_page(&key)), &[]).await;
        assert_eq!(page, (false, true));
        let tag = commit_after(|s| _ = s.apply_purge(None, Some("t"), false), &["t"]).await;
        assert_eq!(tag, (false, true));
        let all = commit_after(|s| _ = s.apply_purge(None, None, true), &[]).await;
        assert_eq!(all, (false, true));
        // Purges of other pages and tags leave it alone.
        let other = CacheKey::new(
            &crate::host::Host::parse("example.com", "http").expect("a valid host"),
            "/other",
        );
        assert_eq!(
            commit_after(|s| drop(s.remove_page(&other)), &["t"]).await,
            (true, true)
        );
        assert_eq!(
            commit_after(|s| drop(s.remove_tag("u")), &["t"]).await,
            (true, true)
        );
    }

    #[test]
    fn purged_since_sees_page_tag_and_all_purges_after_the_epoch_only() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _rx) = open(dir.path());
        let key = sample().key();
        let other = CacheKey::new(
            &crate::host::Host::parse("example.com", "http").expect("a valid host"),
            "/other",
        );
        let tags = ["t".to_owned()];
        let before = store.purge_epoch();
        assert!(!store.purged_since(before, &key, &tags));
        drop(store.remove_page(&other));
        drop(store.remove_tag("u"));
        assert!(
            !store.purged_since(before, &key, &tags),
            "other pages and tags"
        );
        drop(store.remove_tag("t"));
        assert!(store.purged_since(before, &key, &tags));
        assert!(!store.purged_since(before, &key, &[]), "untagged");
        let after_tag = store.purge_epoch();
        drop(store.remove_page(&key));
        assert!(store.purged_since(after_tag, &key, &[]));
        let after_page = store.purge_epoch();
        assert!(!store.purged_since(after_page, &key, &tags));
        store.apply_purge(None, None, false);
        assert!(store.purged_since(after_page, &other, &[]));
    }

    #[test]
    fn a_fill_older_than_the_kept_purges_counts_as_covered() {
        let mut log = PurgeLog::default();
        let meta = sample();
        for i in 0..KEPT_PURGES + 1 {
            log.push(Target::Tag(format!("x{i}")));
        }
        assert!(log.covers(0, &meta), "purges since 0 were forgotten");
        assert!(!log.covers(1, &meta));
        assert!(!log.covers(log.next, &meta));
    }
}
