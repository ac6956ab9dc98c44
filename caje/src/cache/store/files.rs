//! Files on disk: unique names, shard directories and atomic (temp file + rename) writes of
//! metadata.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Entry, Store, StoreEvent};
use crate::cache::entry::EntryMeta;

impl Store {
    pub(super) fn unique(&self) -> u64 {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        // Mix in the pid and time so names stay unique across restarts too.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (u64::from(std::process::id()) << 48) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    pub(super) fn shard_dir(&self, name: &str) -> PathBuf {
        super::shard_dir(&self.inner.root, name)
    }

    /// Writes `meta` to a new fsynced temp file in `dir`, ready to be renamed into place.
    pub(super) fn write_temp_meta(
        &self,
        dir: &Path,
        name: &str,
        meta: &EntryMeta,
    ) -> io::Result<PathBuf> {
        let encoded = meta.encode().map_err(io::Error::other)?;
        let tmp_meta = dir.join(format!(".{name}.{:016x}.tmp", self.unique()));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp_meta)?;
            f.write_all(&encoded)?;
            if self.inner.fsync {
                f.sync_all()?;
            }
            Ok(())
        })();
        match written {
            Ok(()) => Ok(tmp_meta),
            Err(e) => {
                let _ = fs::remove_file(&tmp_meta);
                Err(e)
            }
        }
    }

    /// Replaces the metadata of an entry whose body stays the same (after a 304, or a soft
    /// purge), atomically. Returns the new entry; `None` if the entry is no longer current.
    /// Blocking.
    pub fn update_meta(
        &self,
        entry: &Arc<Entry>,
        meta: EntryMeta,
        announce: bool,
    ) -> io::Result<Option<Arc<Entry>>> {
        let tmp_meta = self.write_temp_meta(&entry.dir, &entry.name, &meta)?;
        let updated = {
            let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            // No commit can replace the entry while the commit lock is held; a purge or an
            // eviction still can, so it is checked again after the rename.
            if !self.index().is_current(&entry.r) {
                let _ = fs::remove_file(&tmp_meta);
                return Ok(None);
            }
            // The file first, the index after: a reader never finds metadata older than the
            // index says (`lookup.rs`).
            if let Err(e) = fs::rename(&tmp_meta, entry.meta_path()) {
                let _ = fs::remove_file(&tmp_meta);
                return Err(e);
            }
            let replaced = self.index().replace(&entry.r, &meta);
            let Some(r) = replaced else {
                // Removed between the check and the rename: its files go, this one too.
                let _ = fs::remove_file(entry.meta_path());
                return Ok(None);
            };
            Arc::new(Entry::new(meta, r, &self.inner.root))
        };
        self.inner.metas.refresh(&updated);
        if let Ok(d) = File::open(&entry.dir) {
            let _ = d.sync_all();
        }
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: updated.clone(),
            announce,
        });
        Ok(Some(updated))
    }
}
