//! Files on disk: unique names, shard directories, a fill's commit (its temp file renamed
//! into place), metadata-only updates (a new entry file renamed over the old one), and
//! unlinking the files of entries that left the index.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{format, index, Entry, EntryRef, HitMeta, Store, StoreEvent};
use crate::cache::entry::EntryMeta;
use crate::cache::key::entry_digest;
use crate::stats::Stats;

/// The shard directories (`ab/cd`, 65,536 of them) this process has seen exist, one bit each.
///
/// A hint for a fill's temp file: in a directory known to exist it is created at once; in
/// another, the directory is created first. Without it, every fill into a new directory
/// (most of them while a cache fills up: 65,536 directories) paid a failed `open`, then
/// `create_dir_all`, then the `open` again. A wrong hint (a directory removed behind it) only
/// costs that fallback, which [`format`]'s create keeps.
pub(super) struct ShardDirs(Box<[AtomicU64]>);

impl Default for ShardDirs {
    fn default() -> Self {
        ShardDirs((0..1024).map(|_| AtomicU64::new(0)).collect())
    }
}

impl ShardDirs {
    /// The directory's bit: the name's first four hex digits (`None` for a name too short or
    /// not hex, which then always takes the slow path).
    fn bit(name: &str) -> Option<usize> {
        let digits = name.get(..4)?;
        u16::from_str_radix(digits, 16).ok().map(usize::from)
    }

    fn known(&self, name: &str) -> bool {
        Self::bit(name)
            .is_some_and(|b| self.0[b / 64].load(Ordering::Relaxed) & (1 << (b % 64)) != 0)
    }

    fn mark(&self, name: &str) {
        if let Some(b) = Self::bit(name) {
            self.0[b / 64].fetch_or(1 << (b % 64), Ordering::Relaxed);
        }
    }
}

/// This process's id, read once: `std::process::id` is a `getpid` system call each time.
fn pid() -> u64 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    u64::from(*PID.get_or_init(std::process::id))
}

impl Store {
    pub(super) fn unique(&self) -> u64 {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        // Mix in the pid and time so names stay unique across restarts too.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        t ^ (pid() << 48) ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }

    /// Makes sure the shard directory `dir` of entry `name` exists before a temp file is
    /// created in it: nothing when this process has seen it, else one `mkdir` (the parent's
    /// too when that is missing). Blocking (a `mkdir`, only the first time per directory).
    pub(super) fn ensure_shard_dir(&self, dir: &Path, name: &str) -> io::Result<()> {
        let dirs = &self.inner.dirs;
        if dirs.known(name) {
            return Ok(());
        }
        match fs::create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir)?,
            Err(e) => return Err(e),
        }
        dirs.mark(name);
        Ok(())
    }

    pub(super) fn shard_dir(&self, name: &str) -> PathBuf {
        super::shard_dir(&self.inner.root, name)
    }

    /// A new temp file name for entry `name` in `dir` (the start-up scan removes leftovers).
    pub(super) fn temp_path(&self, dir: &Path, name: &str) -> PathBuf {
        dir.join(format!(".{name}.{:016x}.tmp", self.unique()))
    }

    /// Replaces the metadata of an entry whose body stays the same (after a 304, or a soft
    /// purge), atomically. Returns the new entry; `None` if the entry is no longer current.
    /// Blocking.
    ///
    /// The new entry file is a copy: the new header, then the body copied in the kernel
    /// (`copy_file_range`, a reflink where the file system has them), renamed over the old
    /// file. Not a rewrite in place, because entry files never change once in place: a hit,
    /// a peer or a coalesced reader that opened the old file keeps reading one consistent
    /// version through its descriptor, and the header's length changes with the headers a
    /// 304 brings (in place would need reserved slack and a second checksum to make a torn
    /// rewrite detectable). Refreshes and soft purges are rare next to hits and fills, and
    /// cost one in-kernel copy of the body.
    pub fn update_meta(
        &self,
        entry: &Arc<Entry>,
        mut meta: EntryMeta,
        announce: bool,
    ) -> io::Result<Option<Arc<Entry>>> {
        // Same body, so the same stored version: the memory tier's copy stays valid.
        meta.body_file.clone_from(&entry.meta.body_file);
        meta.body_len = entry.meta.body_len;
        meta.body_crc32 = entry.meta.body_crc32;
        let src = match File::open(entry.path()) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && !self.is_current(entry) => {
                return Ok(None)
            }
            other => other?,
        };
        let head = format::read_up_to(&src, 0, entry.body_offset as usize)?;
        match format::check_header(&head) {
            Ok(f) if f.tag == entry.tag() && f.body_len == entry.meta.body_len => {}
            // Replaced by a newer fill since the caller looked it up.
            _ if !self.is_current(entry) => return Ok(None),
            Ok(_) => return Err(io::Error::other("the entry file holds another version")),
            Err(e) => return Err(io::Error::other(e)),
        }
        let encoded = format::encode_meta(&mut meta)?;
        let tmp = self.temp_path(
            &super::shard_dir(&self.inner.root, &entry.name),
            &entry.name,
        );
        let written = (|| -> io::Result<u64> {
            (&src).seek(SeekFrom::Start(entry.body_offset))?;
            let mut body = (&src).take(entry.meta.body_len);
            let (mut out, fixed) = format::write_entry_file(&tmp, &encoded, entry.tag(), &[])?;
            // Writes the header with an empty body's length and CRC; the real ones are
            // written below, once the copy is complete.
            let copied = io::copy(&mut body, &mut out)?;
            if copied != entry.meta.body_len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let head = format::header(&encoded, copied, entry.meta.body_crc32, entry.tag());
            std::os::unix::fs::FileExt::write_all_at(&out, &head, 0)?;
            Ok(fixed.body_offset())
        })();
        let body_offset = match written {
            Ok(f) => f,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        let updated = {
            // No commit can replace the entry while the commit lock is held (a fill of the
            // same name committed meanwhile is never overwritten by this older copy); a purge
            // or an eviction still can, so it is checked again after the rename.
            let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            if !self.index().is_current(&entry.r) {
                let _ = fs::remove_file(&tmp);
                return Ok(None);
            }
            // The file first, the index after: a reader never finds a header older than the
            // index says (`lookup.rs`).
            if let Err(e) = fs::rename(&tmp, entry.path()) {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            let Some(r) = self.index().replace(&entry.r, &meta) else {
                // Removed between the check and the rename: its file goes, this one too.
                let _ = fs::remove_file(entry.path());
                return Ok(None);
            };
            Arc::new(Entry::new(meta, r, &self.inner.root, body_offset))
        };
        self.inner.metas.refresh(&updated.hit);
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: updated.clone(),
            announce,
        });
        Ok(Some(updated))
    }

    /// Whether `entry` is current, asked under the commit lock: a fill's rename and its index
    /// update are one step for this question. (A reader that opened an entry's file and found
    /// another version in it: `false` means it was replaced, `true` that the file is damaged.)
    /// Blocking (waits for a commit in progress).
    pub fn is_current_committed(&self, entry: &HitMeta) -> bool {
        let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
        self.index().is_current(&entry.r)
    }

    /// Whether the index still serves the version `hit` describes (not replaced, refreshed
    /// or removed).
    pub fn serves(&self, hit: &HitMeta) -> bool {
        self.index().is_current(&hit.r)
    }

    /// Unlinks the files of entries already out of the index, unless a newer version of the
    /// same name was committed since (its file is at the same path and must stay). Checked
    /// and unlinked under the commit lock, which every rename into place holds. Blocking.
    pub(super) fn unlink_unheld(&self, removed: &[EntryRef]) {
        if removed.is_empty() {
            return;
        }
        let _commit = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
        let unheld: Vec<PathBuf> = {
            let idx = self.index();
            removed
                .iter()
                .filter(|e| !idx.holds_id(e.id()))
                .map(|e| self.path_of(e))
                .collect()
        };
        for path in unheld {
            let _ = fs::remove_file(path);
        }
    }

    /// Renames a fill's temp file into place and updates the index, in one critical section
    /// with purges and other commits. `None`: purged meanwhile, or no room to warm (the
    /// caller removes the temp file).
    pub(super) fn commit(
        &self,
        (name, tag, tmp): (&str, u64, &Path),
        meta: EntryMeta,
        body_offset: u64,
        (announce, since): (bool, u64),
    ) -> io::Result<Option<Arc<Entry>>> {
        let digest = entry_digest(&meta.key(), &meta.variant);
        let id = index::id_of(&digest);
        let path = super::entry_path(&self.inner.root, name);
        let blocks = index::file_blocks(body_offset + meta.body_len);
        let done = {
            let log = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
            // Checked and inserted in one critical section with the purges' logging, so a
            // purge either sees this entry in the index or this check sees the purge.
            if log.covers(since, &meta) {
                return Ok(None);
            }
            // Edge warming's fills (the only ones not announced) only use free room within
            // the warming share. Checked before the rename, so a refusal leaves an older
            // copy's file alone; nothing else adds weight while the commit lock is held, so
            // the insert below admits it.
            if !announce {
                if let Err(why) = self.index().warm_check(id, blocks) {
                    tracing::debug!(name, "warming not stored: {why}");
                    Stats::incr(&self.inner.stats.warm_refused);
                    return Ok(None);
                }
            }
            // Over the previous version of this entry, if any: a reader that opened it
            // keeps its bytes (and tells by the tag that it has the old version). The file
            // first, the index after: a reader never finds a header older than the index
            // says (`lookup.rs`).
            fs::rename(tmp, &path)?;
            match self.index().insert(
                &meta,
                digest,
                tag,
                blocks,
                self.inner.max_variants,
                !announce,
            ) {
                Ok(done) => done,
                Err(why) => {
                    // Not reached (checked above under the same lock); if it were, the index
                    // is unchanged and the new file goes.
                    let _ = fs::remove_file(&path);
                    tracing::warn!(name, "warming not stored after the check: {why}");
                    return Ok(None);
                }
            }
        };
        let entry = Arc::new(Entry::new(meta, done.entry, &self.inner.root, body_offset));
        for e in &done.evicted {
            self.inner.hot.remove(&e.body_file());
            self.inner.metas.remove(e.id());
        }
        self.inner.evictor.evict(done.evicted);
        for old in &done.gone {
            self.inner.hot.remove(&old.body_file());
            // Also a replaced version of this name: its metadata would never be returned
            // again (another generation), but it would keep its file open until evicted.
            self.inner.metas.remove(old.id());
        }
        if announce {
            // A client's fill: the hits that follow find its metadata without reading the
            // file (after the removal above, which covers the version this one replaced).
            self.inner.metas.insert(entry.hit.clone());
        }
        // Variants dropped beyond `max_variants` (the replaced version of this name had its
        // file renamed over).
        let dropped: Vec<EntryRef> = done
            .gone
            .into_iter()
            .filter(|o| o.name != done.entry.name)
            .collect();
        self.unlink_unheld(&dropped);
        for old in dropped {
            let _ = self.inner.events.send(StoreEvent::Removed(old));
        }
        Stats::incr(&self.inner.stats.stored);
        self.inner.stored_events.fetch_add(1, Ordering::AcqRel);
        let _ = self.inner.events.send(StoreEvent::Stored {
            entry: entry.clone(),
            announce,
        });
        Ok(Some(entry))
    }
}
