//! The background check that follows a start from an index snapshot (`snapshot.rs`): it
//! brings the index in line with the directory while requests are served.
//!
//! Shard by shard, it lists the entry files (one `stat` each, from the directory listing):
//! - a file the snapshot listed, unchanged since (its ctime, which a write and a rename set,
//!   is more than a second older than the snapshot's copy) is trusted as the snapshot
//!   describes it; one changed since is read again (header and length);
//! - a file the snapshot did not list (stored after it, then a kill -9) is read and added;
//! - an entry the snapshot listed whose file is gone is dropped;
//! - temp files older than this start are removed (leftovers of interrupted writes).
//!
//! It never undoes what this process did: entries this process stored, replaced or removed
//! since the start are left alone (the index tells them by generation, and remembers the
//! loaded ones it removed); files changed since this start are this process's own. An entry
//! it adds or replaces goes into the index under the commit lock, as a fill's commit does,
//! and only if no purge logged since the start covers it (it counts as a fill begun before
//! any of them): a purge applied meanwhile, a tombstone from another node included, is never
//! undone by it.
//!
//! Its progress (shard directories and files checked, entries trusted, read again, added and
//! dropped) is kept for `/_caje/status` (`startup.rs`) and logged every few seconds.
//!
//! A hit on an entry not yet checked reads its header from disk and checks the tag and the
//! body's length and CRC as always, so the check is about misses and disk accounting, not
//! about serving wrong bytes.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::{self, Known};
use super::verify::read_checked;
use super::{CheckProgress, EntryRef, Store};
use crate::cache::key::{entry_digest, hex_name, parse_name, Digest};
use crate::stats::Stats;

/// How much older than the snapshot's copy an entry file's last change must be for the
/// check to trust the snapshot's record of it without reading it: covers file times taken
/// from the kernel's coarse clock (a tick behind) and clock steps of that order.
const TRUST_MARGIN: Duration = Duration::from_secs(1);

/// Slots per hold of the index lock when looking for entries whose file is gone (a plain
/// pass over the slab).
const SWEEP_CHUNK: usize = 65_536;
/// Loaded entries admitted into the eviction policy per hold of the index lock: a few
/// milliseconds, so lookups barely wait.
const ADMIT_CHUNK: usize = 8192;

/// Unix nanoseconds of `t` (0 before the epoch).
fn nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// How often a long check logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// What the check compares the directory with, and whose files it must leave alone.
#[derive(Debug, Clone, Copy)]
pub(super) struct Since {
    /// When the copy of the index into the loaded snapshot began.
    pub(super) snapshot: SystemTime,
    /// Files changed from this time on are this process's own (its open; on a hand-over, when
    /// it took the lock).
    pub(super) own: SystemTime,
    /// A hand-over: the previous process may still write temp files (its in-flight fills),
    /// so none is removed.
    pub(super) handover: bool,
}

/// What one check did, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Checked {
    /// Entry files trusted as the snapshot described them.
    pub(super) trusted: u64,
    /// Entry files read again (changed since the snapshot) and kept.
    pub(super) reread: u64,
    /// Entry files the snapshot did not list, added.
    pub(super) added: u64,
    /// Entries dropped: their file was gone, a purge since the start covers it, or it was
    /// found damaged.
    pub(super) dropped: u64,
}

impl Checked {
    /// Copies the counts into the progress the admin API reports.
    fn publish(&self, c: &mut CheckProgress) {
        c.trusted = self.trusted;
        c.reread = self.reread;
        c.added = self.added;
        c.dropped = self.dropped;
    }
}

impl Store {
    /// Starts the background check of the directory against the index loaded from a snapshot.
    /// [`Store::is_checked`] turns true when it is done.
    pub(super) fn spawn_check(&self, since: Since) -> std::io::Result<()> {
        // Reported as under way from now, before the thread first runs.
        self.inner.start.check(|_| {});
        let store = self.clone();
        std::thread::Builder::new()
            .name("caje-check".into())
            .spawn(move || {
                store.check_dir(since);
            })?;
        Ok(())
    }

    /// The check itself. Blocking.
    pub(super) fn check_dir(&self, since: Since) -> Checked {
        let started = std::time::Instant::now();
        let start = &self.inner.start;
        // The eviction policy first: until it has the loaded entries, it counts only what
        // was stored since the start.
        let mut from = Some(0);
        while let Some(at) = from {
            let (evicted, next) = self.index().admit_loaded(at, ADMIT_CHUNK);
            from = next;
            for e in &evicted {
                self.inner.hot.remove(&e.body_file());
                self.inner.metas.remove(e.id());
            }
            self.inner.evictor.evict(evicted);
        }
        let admit_ms = started.elapsed().as_millis() as u64;
        start.check(|c| {
            c.admitted = true;
            c.admit_ms = admit_ms;
        });
        let trust_before = nanos(since.snapshot) - TRUST_MARGIN.as_nanos() as i128;
        let own = nanos(since.own);
        let mut done = Checked::default();
        let root = self.inner.root.clone();
        let mut shards = Vec::new();
        for l1 in fs::read_dir(&root).into_iter().flatten().flatten() {
            if !is_shard_name(&l1.file_name()) {
                continue;
            }
            for l2 in fs::read_dir(l1.path()).into_iter().flatten().flatten() {
                if is_shard_name(&l2.file_name()) {
                    shards.push(l2.path());
                }
            }
        }
        let total = shards.len() as u64;
        start.check(|c| c.shards_total = total);
        let mut logged = std::time::Instant::now();
        let mut files_checked = 0;
        for (i, dir) in shards.iter().enumerate() {
            files_checked += self.check_shard(dir, trust_before, own, since.handover, &mut done);
            start.check(|c| {
                c.shards_checked = i as u64 + 1;
                c.files_checked = files_checked;
                done.publish(c);
            });
            if logged.elapsed() >= PROGRESS_EVERY {
                logged = std::time::Instant::now();
                tracing::info!(
                    shards_checked = i + 1,
                    shards_total = total,
                    files_checked,
                    reread = done.reread,
                    added = done.added,
                    dropped = done.dropped,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "checking the cache directory against the index snapshot"
                );
            }
        }
        // Loaded entries whose file no shard held: removed after the snapshot.
        let mut from = Some(0);
        while let Some(at) = from {
            let (gone, next) = self.index().unseen_loaded(at, SWEEP_CHUNK);
            from = next;
            for r in gone {
                if self.forget_checked(&r) {
                    done.dropped += 1;
                }
            }
        }
        self.index().end_check();
        start.check(|c| {
            done.publish(c);
            c.done = true;
            c.finished_at = Some(SystemTime::now());
        });
        self.inner.checked.send_replace(true);
        let (entries, bytes) = self.usage();
        tracing::info!(
            entries,
            bytes,
            files_checked,
            trusted = done.trusted,
            reread = done.reread,
            added = done.added,
            dropped = done.dropped,
            admit_ms,
            handover = since.handover,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cache directory checked against the index snapshot"
        );
        done
    }

    /// Checks one shard directory; returns the number of entry files it held.
    fn check_shard(
        &self,
        dir: &Path,
        trust_before: i128,
        own: i128,
        handover: bool,
        done: &mut Checked,
    ) -> u64 {
        let Ok(rd) = fs::read_dir(dir) else { return 0 };
        let mut files: Vec<(Digest, std::path::PathBuf, i128)> = Vec::new();
        for f in rd.flatten() {
            let file_name = f.file_name();
            let file_name = file_name.to_string_lossy();
            // The later of the last write and the last rename (or the file is gone).
            let Ok(changed) = f
                .metadata()
                .map(|m| i128::from(m.ctime()) * 1_000_000_000 + i128::from(m.ctime_nsec()))
            else {
                continue;
            };
            if file_name.ends_with(".tmp") {
                // Older than this start: a leftover; newer ones are this process's fills (on
                // a hand-over any may be the previous process's).
                if changed < own && !handover {
                    let _ = fs::remove_file(f.path());
                }
                continue;
            }
            let Some(digest) = file_name.strip_suffix(".entry").and_then(parse_name) else {
                continue;
            };
            files.push((digest, f.path(), changed));
        }
        let known: Vec<Known> = {
            let mut idx = self.index();
            files.iter().map(|(d, _, _)| idx.known(d)).collect()
        };
        let count = files.len() as u64;
        for ((digest, path, changed), known) in files.into_iter().zip(known) {
            match known {
                Known::Changed => {}
                Known::Loaded(_) if changed < trust_before => done.trusted += 1,
                Known::Loaded(r) => self.reread(&digest, &path, Some(r), done),
                Known::Unknown if changed >= own => {}
                Known::Unknown => self.reread(&digest, &path, None, done),
            }
        }
        count
    }

    /// Reads the entry file of `digest` at `path` and puts what it holds in the index in
    /// place of `loaded` (the entry loaded from the snapshot, still unchanged when the file
    /// was listed), or adds it (`None`: the index had nothing under its name).
    fn reread(&self, digest: &Digest, path: &Path, loaded: Option<EntryRef>, done: &mut Checked) {
        let read = read_checked(path).and_then(|found| match found {
            Some((meta, _)) if entry_digest(&meta.key(), &meta.variant) != *digest => {
                Err(format!("{} does not match its key", hex_name(digest)))
            }
            other => Ok(other),
        });
        let log = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
        let mut idx = self.index();
        // Still as it was when the file was listed? Otherwise this process has stored,
        // replaced or removed it since: its files are its own.
        let unchanged = match (idx.known(digest), loaded) {
            (Known::Unknown, None) => true,
            (Known::Loaded(now), Some(then)) => now == then,
            _ => false,
        };
        if !unchanged {
            return;
        }
        let (meta, fixed) = match read {
            Ok(Some(found)) => found,
            // Gone meanwhile: the sweep drops a loaded entry.
            Ok(None) => return,
            Err(why) => {
                Stats::incr(&self.inner.stats.corrupt_entries);
                tracing::warn!("removing unreadable {}: {why}", path.display());
                if let Some(r) = loaded {
                    idx.remove(&r);
                    drop(idx);
                    self.inner.metas.remove(r.id());
                    self.inner.hot.remove(&r.body_file());
                }
                let _ = fs::remove_file(path);
                done.dropped += 1;
                return;
            }
        };
        if log.covers(0, &meta) {
            // A purge since the start covers it: as a fill begun before it, it goes.
            if let Some(r) = loaded {
                idx.remove(&r);
            }
            let _ = fs::remove_file(path);
            done.dropped += 1;
        } else {
            let blocks = index::file_blocks(fixed.body_offset() + fixed.body_len);
            if let Ok(ins) = idx.insert(&meta, *digest, fixed.tag, blocks, usize::MAX, false) {
                self.inner.evictor.evict(ins.evicted);
            }
            if loaded.is_some() {
                done.reread += 1;
            } else {
                done.added += 1;
            }
        }
        drop(idx);
        drop(log);
        if let Some(r) = loaded {
            self.inner.metas.remove(r.id());
            self.inner.hot.remove(&r.body_file());
        }
    }

    /// Drops a loaded entry whose file is gone, if it is still unchanged. Under the commit
    /// lock, so no commit of its name interleaves.
    fn forget_checked(&self, r: &EntryRef) -> bool {
        let _log = self.inner.commit.lock().unwrap_or_else(|e| e.into_inner());
        // Its file was absent when its shard was listed, and nothing since changed it (a
        // commit would have given it a new generation): gone for good.
        if !self.index().remove(r) {
            return false;
        }
        self.inner.metas.remove(r.id());
        self.inner.hot.remove(&r.body_file());
        true
    }
}

/// Whether a directory name is a shard's (two lower-case hex digits).
fn is_shard_name(name: &std::ffi::OsStr) -> bool {
    name.to_str()
        .is_some_and(|s| s.len() == 2 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}
