//! The decoded metadata of entries served recently, so that a hit on a hot entry reads and
//! decodes nothing: bounded in entries, on the same scan-resistant policy as the tiers
//! (S3-FIFO, [`crate::cache::evict`]), so a crawl of many pages served once does not push out
//! the metadata of the pages clients keep asking for.
//!
//! An entry is kept with its generation ([`EntryRef`]): a cached copy of an entry replaced or
//! refreshed since is never returned, it is read again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::{Entry, EntryRef};
use crate::cache::evict::Policy;

/// Most decoded entries kept. A decoded entry (the RFC 9111 policy with its header maps, the
/// stored headers and the prepared head) takes about 2-6 KiB, so this is at most a few tens
/// of MiB, whatever the number of entries on disk.
pub(super) const HOT_METAS: usize = 8_192;

struct Inner {
    map: HashMap<u128, Arc<Entry>>,
    policy: Policy,
}

pub(super) struct Metas {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Metas {
    pub(super) fn new(capacity: usize) -> Metas {
        Metas {
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                policy: Policy::new(capacity as u64, None),
            }),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned map is still consistent enough to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The decoded entry `r` names, if kept and still of `r`'s generation; counted as a use.
    pub(super) fn get(&self, r: &EntryRef) -> Option<Arc<Entry>> {
        let id = r.id();
        let mut m = self.lock();
        let e = m.map.get(&id).filter(|e| e.r.gen == r.gen)?.clone();
        m.policy.touch(id);
        Some(e)
    }

    /// Keeps a decoded entry (just read for a hit: a use).
    pub(super) fn insert(&self, e: Arc<Entry>) {
        if self.capacity == 0 {
            return;
        }
        let mut m = self.lock();
        for victim in m.policy.admit(e.id, 1) {
            m.map.remove(&victim);
        }
        if m.policy.contains(e.id) {
            m.map.insert(e.id, e);
        }
    }

    /// Puts a refreshed entry in place of its previous version, if that one is kept (not a
    /// use: a refresh of many entries, such as a soft purge, must not fill this).
    pub(super) fn refresh(&self, e: &Arc<Entry>) {
        let mut m = self.lock();
        if let Some(kept) = m.map.get_mut(&e.id) {
            *kept = e.clone();
        }
    }

    /// Forgets the entry with this id (removed).
    pub(super) fn remove(&self, id: u128) {
        let mut m = self.lock();
        if m.map.remove(&id).is_some() {
            m.policy.remove(id);
        }
    }

    /// Forgets everything.
    pub(super) fn clear(&self) {
        *self.lock() = Inner {
            map: HashMap::new(),
            policy: Policy::new(self.capacity as u64, None),
        };
    }

    /// Entries kept.
    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }
}
