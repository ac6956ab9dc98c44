//! Verification: the start-up scan that rebuilds the index and removes leftovers and
//! undecodable metadata, and the removal of entries found corrupt when served.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::sync::Arc;

use super::{Entry, Store, StoreError};
use crate::cache::entry::EntryMeta;
use crate::cache::key::entry_name;
use crate::stats::Stats;

impl Store {
    /// Removes an entry found corrupt, and counts it. Blocking (unlinks files).
    pub fn remove_corrupt(&self, entry: &Arc<Entry>, why: &dyn std::fmt::Display) {
        Stats::incr(&self.inner.stats.corrupt_entries);
        tracing::warn!(
            host = %entry.meta.host,
            path = %entry.meta.path,
            "removing corrupt cache entry {}: {why}",
            entry.name
        );
        self.inner.hot.remove(&entry.meta.body_file);
        if self.index().remove(entry) {
            let _ = fs::remove_file(entry.meta_path());
            let _ = fs::remove_file(entry.body_path());
        }
    }

    /// Rebuilds the index from disk, removing leftovers of interrupted writes.
    pub(super) fn scan(&self) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut loaded = 0u64;
        let root = self.inner.root.clone();
        let read_dir = |p: &Path| {
            fs::read_dir(p).map_err(|source| StoreError::Io {
                path: p.to_owned(),
                source,
            })
        };
        for l1 in read_dir(&root)? {
            let Ok(l1) = l1 else { continue };
            if !l1.path().is_dir() {
                continue;
            }
            for l2 in read_dir(&l1.path())? {
                let Ok(l2) = l2 else { continue };
                let dir = l2.path();
                if !dir.is_dir() {
                    continue;
                }
                loaded += self.scan_shard(&dir);
                if loaded > 0 && loaded % 10_000 == 0 {
                    tracing::info!(entries = loaded, "loading cache index");
                }
            }
        }
        let (entries, bytes) = self.usage();
        tracing::info!(
            entries,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            dir = %root.display(),
            "cache index loaded"
        );
        Ok(())
    }

    /// Loads one shard directory; returns the number of entries loaded.
    fn scan_shard(&self, dir: &Path) -> u64 {
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        let mut bodies = Vec::new();
        let mut referenced = HashSet::new();
        let mut loaded = 0;
        for f in rd.flatten() {
            let path = f.path();
            let file_name = f.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            } else if file_name.ends_with(".body") {
                bodies.push((file_name, path));
            } else if let Some(name) = file_name.strip_suffix(".meta") {
                match fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| EntryMeta::decode(&b).map_err(|e| e.to_string()))
                {
                    Ok(meta) if entry_name(&meta.key(), &meta.variant) == name => {
                        referenced.insert(meta.body_file.clone());
                        // Over the cap (lowered, or evictions interrupted by a stop): the
                        // policy names victims as the scan goes, and they are deleted.
                        let (_, evicted) = self
                            .index()
                            .insert(
                                Arc::new(Entry::new(meta, name.to_owned(), dir.to_owned())),
                                usize::MAX,
                                false,
                            )
                            .unwrap_or_default();
                        self.inner.evictor.evict(evicted);
                        loaded += 1;
                    }
                    Ok(_) => {
                        Stats::incr(&self.inner.stats.corrupt_entries);
                        tracing::warn!("removing {}: name does not match its key", path.display());
                        let _ = fs::remove_file(&path);
                    }
                    Err(e) => {
                        Stats::incr(&self.inner.stats.corrupt_entries);
                        tracing::warn!("removing undecodable {}: {e}", path.display());
                        let _ = fs::remove_file(&path);
                    }
                }
            }
        }
        for (file_name, path) in bodies {
            if !referenced.contains(&file_name) {
                let _ = fs::remove_file(&path);
            }
        }
        // Metas whose body is missing are dropped when a hit fails to open the body.
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::tests::{fill, open};
    use tokio::sync::mpsc;

    #[tokio::test]
    async fn corrupt_meta_is_removed_at_scan() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        {
            let (store, mut rx) = open(dir.path());
            fill(&store, &mut rx, b"x").await;
            let e = store.entries().pop().unwrap();
            let mut bytes = fs::read(e.meta_path()).unwrap();
            bytes[10] ^= 1;
            fs::write(e.meta_path(), bytes).unwrap();
        }
        let (tx, _rx) = mpsc::unbounded_channel();
        let store = Store::open(
            dir.path(),
            8,
            1 << 20,
            crate::cache::store::DiskLimits::UNLIMITED,
            stats.clone(),
            tx,
        )
        .unwrap();
        assert_eq!(store.usage(), (0, 0));
        assert_eq!(Stats::get(&stats.corrupt_entries), 1);
    }
}
