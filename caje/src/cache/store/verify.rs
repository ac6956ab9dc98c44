//! Verification: the start-up scan that rebuilds the index from the entry files' headers
//! and removes leftovers and undecodable or torn files, and the removal of entries found
//! corrupt when served.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::format::{self, Fixed};
use super::{index, shard_dir, EntryRef, IndexSource, Store, StoreError};
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
        let elapsed_ms = started.elapsed().as_millis() as u64;
        // A scan that keeps leftovers is a hand-over's.
        self.inner
            .start
            .built(IndexSource::Scan, keep_leftovers, entries, elapsed_ms);
        tracing::info!(
            entries,
            bytes,
            elapsed_ms,
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

    /// Loads one shard directory (each entry file's header only); returns the number of
    /// entries loaded.
    fn scan_shard(&self, dir: &Path, keep_leftovers: bool) -> u64 {
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        let mut loaded = 0;
        for f in rd.flatten() {
            let path = f.path();
            let file_name = f.file_name().to_string_lossy().into_owned();
            if file_name.ends_with(".tmp") {
                if !keep_leftovers {
                    let _ = fs::remove_file(&path);
                }
                continue;
            }
            let Some(name) = file_name.strip_suffix(".entry") else {
                continue;
            };
            let checked = match read_checked(&path) {
                Ok(None) => continue,
                Ok(Some(found)) => Ok(found),
                Err(e) => Err(e),
            };
            match checked {
                Ok((meta, fixed))
                    if hex_name(&entry_digest(&meta.key(), &meta.variant)) == name =>
                {
                    let digest = entry_digest(&meta.key(), &meta.variant);
                    let blocks = index::file_blocks(fixed.body_offset() + fixed.body_len);
                    // Over the cap (lowered, or evictions interrupted by a stop): the
                    // policy names victims as the scan goes, and they are deleted.
                    if let Ok(done) =
                        self.index()
                            .insert(&meta, digest, fixed.tag, blocks, usize::MAX, false)
                    {
                        self.inner.evictor.evict(done.evicted);
                    }
                    loaded += 1;
                }
                Ok(_) => {
                    Stats::incr(&self.inner.stats.corrupt_entries);
                    tracing::warn!("removing {}: name does not match its key", path.display());
                    let _ = fs::remove_file(&path);
                }
                Err(e) => {
                    Stats::incr(&self.inner.stats.corrupt_entries);
                    tracing::warn!("removing unreadable {}: {e}", path.display());
                    let _ = fs::remove_file(&path);
                }
            }
        }
        loaded
    }
}

/// Reads the header of the entry file at `path` and checks the file's length against it: a
/// crash (nothing is fsynced) can leave a file shorter than its header says. The body's CRC
/// is checked when it is served. `Ok(None)`: the file is gone (removed since it was listed),
/// or cannot be opened.
/// Blocking.
pub(super) fn read_checked(path: &Path) -> Result<Option<(EntryMeta, Fixed)>, String> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            // Not the file's fault (permissions, descriptors): left alone, not loaded.
            tracing::warn!("cannot open {}: {e}", path.display());
            return Ok(None);
        }
    };
    let (meta, fixed) = format::read_header(&file).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let want = fixed.body_offset() + fixed.body_len;
    if len != want {
        return Err(format!("file is {len} bytes, its header says {want}"));
    }
    Ok(Some((meta, fixed)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::store::tests::{fill, open};
    use std::sync::Arc;
    use tokio::sync::mpsc;

    /// Opens `dir` after `damage` was done to the file of its one entry; returns the entries
    /// loaded and the corrupt ones counted.
    async fn reopen_after(damage: impl FnOnce(&Path)) -> ((u64, u64), u64) {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        {
            let (store, mut rx) = open(dir.path());
            fill(&store, &mut rx, b"some body").await;
            damage(&store.entries().pop().unwrap().path());
        }
        // The last fill's job may hold the previous store (and its lock) for a moment.
        for _ in 0..100 {
            let (tx, _rx) = mpsc::unbounded_channel();
            match Store::open(
                dir.path(),
                8,
                1 << 20,
                crate::cache::store::DiskLimits::UNLIMITED,
                stats.clone(),
                tx,
            ) {
                Ok(store) => return (store.usage(), Stats::get(&stats.corrupt_entries)),
                Err(StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("cache dir still locked after 1 s")
    }

    #[tokio::test]
    async fn a_damaged_header_is_removed_at_scan() {
        let flip = |p: &Path| {
            let mut bytes = fs::read(p).unwrap();
            bytes[40] ^= 1;
            fs::write(p, bytes).unwrap();
        };
        assert_eq!(reopen_after(flip).await, ((0, 0), 1));
    }

    /// What a crash can leave without fsync: a file shorter (or longer) than its header says.
    #[tokio::test]
    async fn a_file_whose_length_disagrees_with_its_header_is_removed_at_scan() {
        for delta in [-1i64, 1] {
            let resize = |p: &Path| {
                let f = fs::OpenOptions::new().write(true).open(p).unwrap();
                let len = f.metadata().unwrap().len();
                f.set_len(len.checked_add_signed(delta).unwrap()).unwrap();
            };
            assert_eq!(reopen_after(resize).await, ((0, 0), 1), "delta {delta}");
        }
        assert_eq!(reopen_after(|_| ()).await, ((1, 9), 0), "undamaged");
    }
}
