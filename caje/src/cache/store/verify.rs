//! Verification: the start-up scan that rebuilds the index and removes leftovers and
//! undecodable metadata, and the removal of entries found corrupt when served.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{body_suffix, shard_dir, EntryRef, Store, StoreError};
use crate::cache::entry::EntryMeta;
use crate::cache::key::{entry_digest, hex_name};
use crate::stats::Stats;

/// Each shard directory's modification time, as read before its files were.
pub(super) type ShardTimes = HashMap<PathBuf, SystemTime>;

/// A directory modified less than this before it is compared is read again whatever its time
/// says: file times advance in the kernel's clock ticks (1 to 10 ms), and two changes within
/// one tick look like one.
const RECENT_DIR_CHANGE: Duration = Duration::from_millis(100);

/// The modification time of `dir`, if it is a directory.
fn modified_dir(dir: &Path) -> Option<SystemTime> {
    let meta = fs::metadata(dir).ok()?;
    meta.is_dir().then(|| meta.modified().ok()).flatten()
}

impl Store {
    /// Rebuilds the index from disk, removing leftovers of interrupted writes, unless
    /// `keep_leftovers` (a hand-over: the previous process may still be writing them).
    /// Returns each shard directory's modification time as it was before it was read.
    pub(super) fn scan(&self, keep_leftovers: bool) -> Result<ShardTimes, StoreError> {
        let mut times = ShardTimes::new();
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
                let Some(mtime) = modified_dir(&dir) else {
                    continue;
                };
                times.insert(dir.clone(), mtime);
                loaded += self.scan_shard(&dir, keep_leftovers);
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
        Ok(times)
    }

    /// After a hand-over: reads again the shard directories that changed since [`Store::scan`]
    /// read them, and the ones modified too shortly before to tell (directory times are only
    /// as fine as the kernel's clock tick). Holds the lock: nobody else writes now.
    pub(super) fn rescan_changed(&self, read: &ShardTimes) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let now = std::time::SystemTime::now();
        let mut changed = HashSet::new();
        let root = self.inner.root.clone();
        let read_dir = |p: &Path| {
            fs::read_dir(p).map_err(|source| StoreError::Io {
                path: p.to_owned(),
                source,
            })
        };
        for l1 in read_dir(&root)?.flatten() {
            let Ok(l2s) = fs::read_dir(l1.path()) else {
                continue;
            };
            for l2 in l2s.flatten() {
                let dir = l2.path();
                let Some(mtime) = modified_dir(&dir) else {
                    continue;
                };
                let recent = now
                    .duration_since(mtime)
                    .map_or(true, |age| age < RECENT_DIR_CHANGE);
                if recent || read.get(&dir) != Some(&mtime) {
                    changed.insert(dir);
                }
            }
        }
        // Shards that disappeared lose their entries too.
        changed.extend(read.keys().filter(|d| !d.is_dir()).cloned());
        let stale: Vec<EntryRef> = self
            .refs()
            .into_iter()
            .filter(|r| changed.contains(&shard_dir(&root, &r.name())))
            .collect();
        for r in &stale {
            self.inner.metas.remove(r.id());
            self.index().remove(r);
        }
        let mut loaded = 0;
        for dir in &changed {
            loaded += self.scan_shard(dir, true);
        }
        tracing::info!(
            shards = changed.len(),
            entries = loaded,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache index caught up with the previous process's last changes"
        );
        Ok(())
    }

    /// Loads one shard directory; returns the number of entries loaded.
    fn scan_shard(&self, dir: &Path, keep_leftovers: bool) -> u64 {
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        let mut bodies = Vec::new();
        let mut referenced = HashSet::new();
        let mut loaded = 0;
        for f in rd.flatten() {
            let path = f.path();
            let file_name = f.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".tmp") {
                if !keep_leftovers {
                    let _ = fs::remove_file(&path);
                }
            } else if file_name.ends_with(".body") {
                bodies.push((file_name, path));
            } else if let Some(name) = file_name.strip_suffix(".meta") {
                let bytes = match fs::read(&path) {
                    // Removed since it was listed (by the previous process, in a hand-over).
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    other => other,
                };
                let decoded = bytes
                    .map_err(|e| e.to_string())
                    .and_then(|b| EntryMeta::decode(&b).map_err(|e| e.to_string()));
                let named = |meta: &EntryMeta| {
                    let digest = entry_digest(&meta.key(), &meta.variant);
                    let file = body_suffix(name, &meta.body_file);
                    (hex_name(&digest) == name)
                        .then_some(file)
                        .flatten()
                        .map(|f| (digest, f))
                };
                match decoded {
                    Ok(meta) if named(&meta).is_some() => {
                        let Some((digest, file)) = named(&meta) else {
                            continue;
                        };
                        referenced.insert(meta.body_file.clone());
                        // Over the cap (lowered, or evictions interrupted by a stop): the
                        // policy names victims as the scan goes, and they are deleted.
                        if let Ok(done) =
                            self.index().insert(&meta, digest, file, usize::MAX, false)
                        {
                            self.inner.evictor.evict(done.evicted);
                        }
                        loaded += 1;
                    }
                    Ok(_) => {
                        Stats::incr(&self.inner.stats.corrupt_entries);
                        tracing::warn!("removing {}: name does not match its key, or its body file name is not its own", path.display());
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
            if !keep_leftovers && !referenced.contains(&file_name) {
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
    use std::sync::Arc;
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
