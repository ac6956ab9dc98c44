//! The index snapshot: the in-memory index written to `cache_dir/index.snapshot` at a clean
//! shutdown, every `cache.index_snapshot_secs` (when the index changed) and when a SIGUSR2
//! upgrade begins (for the new process), so that a start reads one file instead of every
//! entry's header, and serves at once.
//!
//! A snapshot is a hint, never trusted blindly. It is used only if its magic, format
//! version, layout version, cache directory instance (the `v2` directory's device, inode and
//! birth time: a directory deleted and made again is another instance) and CRC-32 are
//! right; anything else and the directory is scanned as without one. Even then it may be
//! stale: entries stored, replaced or removed after it was written (a kill -9 between two
//! snapshots). So after loading it the store checks the directory in the background while
//! requests are served (`check.rs`). Meanwhile a hit still reads the entry's header from
//! disk and checks that it carries the tag the index has, and the body is checked against its
//! length and CRC as it is served: a stale snapshot can cost a miss, never a wrong or torn
//! body.
//!
//! Written atomically: a temp file in `cache_dir`, fsynced, renamed over the previous one,
//! the directory fsynced. The index lock is held only to copy a chunk of records at a time.
//!
//! # Format (version 1, little-endian)
//! - header: magic `CAJEIDX\0`, `u32` format version, `u32` layout version (2: the `v2`
//!   directory of one file per entry), `u64` instance of the cache directory, `u64` unix
//!   nanoseconds when the copy began, `u8` 1 if written at a clean shutdown, `u32` bytes per
//!   record ([`REC`]);
//! - records, in frames of a `u32` count and that many records, the last frame empty; each
//!   record as [`encode_rec`] writes it;
//! - `Vary` sets: `u32` count, each a `u32` count of names, each a `u32` length and bytes;
//! - tags: `u32` count, each a `u32` length and bytes, a `u32` count of ids and 16 bytes each;
//! - `u32` CRC-32 of everything before it.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::index::SnapRec;
use super::{IndexSource, Store};

/// File name of the snapshot inside `cache_dir`.
pub(super) const SNAPSHOT_FILE: &str = "index.snapshot";

const MAGIC: &[u8; 8] = b"CAJEIDX\0";
const FORMAT: u32 = 1;
/// The layout the records describe (`cache_dir/v2`, one file per entry).
const LAYOUT: u32 = 2;
/// Bytes per record: name, page, tag, body length, stored_at, `Vary` set, blocks, flags.
pub(super) const REC: usize = 32 + 8 + 8 + 8 + 4 + 4 + 4 + 1;
/// Records copied per hold of the index lock: a few milliseconds at most, so lookups (which
/// take the same lock) barely wait while a periodic snapshot is written.
const CHUNK: usize = 4096;

/// Why a snapshot was not used.
#[derive(Debug, thiserror::Error)]
pub(super) enum SnapshotError {
    #[error("reading it: {0}")]
    Io(#[from] io::Error),
    #[error("not a caje index snapshot, or another format or layout version")]
    Foreign,
    #[error("it describes another instance of the cache directory")]
    OtherInstance,
    #[error("truncated or malformed")]
    Malformed,
    #[error("checksum mismatch")]
    Checksum,
}

/// One record's bytes. The one place a record is encoded: a field added here is added to
/// [`decode_rec`] and [`REC`], and [`FORMAT`] is bumped.
fn encode_rec(r: &SnapRec, out: &mut Vec<u8>) {
    out.extend_from_slice(&r.name);
    out.extend_from_slice(&r.page.to_le_bytes());
    out.extend_from_slice(&r.file.to_le_bytes());
    out.extend_from_slice(&r.body_len.to_le_bytes());
    out.extend_from_slice(&r.stored_at.to_le_bytes());
    out.extend_from_slice(&r.vary.to_le_bytes());
    out.extend_from_slice(&r.blocks.to_le_bytes());
    out.push(u8::from(r.invalidated));
}

/// The record in `b` (exactly [`REC`] bytes, as [`encode_rec`] wrote them).
fn decode_rec(b: &[u8; REC]) -> SnapRec {
    let u64_at = |at: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[at..at + 8]);
        u64::from_le_bytes(a)
    };
    let u32_at = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let mut name = [0u8; 32];
    name.copy_from_slice(&b[..32]);
    SnapRec {
        name,
        page: u64_at(32),
        file: u64_at(40),
        body_len: u64_at(48),
        stored_at: u32_at(56),
        vary: u32_at(60),
        blocks: u32_at(64),
        invalidated: b[68] != 0,
    }
}

/// A snapshot read back and checked: its records (decoded on demand from the file's
/// bytes), `Vary` sets and tags.
pub(super) struct Snapshot {
    bytes: Vec<u8>,
    /// Where each frame's records start, and how many it has.
    frames: Vec<(usize, usize)>,
    count: usize,
    pub(super) vary_sets: Vec<Vec<String>>,
    pub(super) tags: Vec<(String, Vec<u128>)>,
    /// When the copy of the index began.
    pub(super) written_at: SystemTime,
    pub(super) clean: bool,
}

/// The records of a [`Snapshot`], in the order they were written.
pub(super) struct Recs<'a> {
    s: &'a Snapshot,
    frame: usize,
    at: usize,
    left: usize,
}

impl Iterator for Recs<'_> {
    type Item = SnapRec;
    fn next(&mut self) -> Option<SnapRec> {
        while self.at == self.s.frames.get(self.frame).map_or(0, |f| f.1) {
            self.frame += 1;
            self.at = 0;
            self.s.frames.get(self.frame)?;
        }
        let (start, _) = self.s.frames[self.frame];
        let off = start + self.at * REC;
        self.at += 1;
        self.left -= 1;
        let b: &[u8; REC] = self.s.bytes.get(off..off + REC)?.try_into().ok()?;
        Some(decode_rec(b))
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl ExactSizeIterator for Recs<'_> {}

impl Snapshot {
    pub(super) fn recs(&self) -> Recs<'_> {
        Recs {
            s: self,
            frame: 0,
            at: 0,
            left: self.count,
        }
    }
}

/// A cursor over a snapshot's bytes; every read is bounds-checked.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], SnapshotError> {
        let end = self.at.checked_add(n).ok_or(SnapshotError::Malformed)?;
        let s = self.b.get(self.at..end).ok_or(SnapshotError::Malformed)?;
        self.at = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn string(&mut self) -> Result<String, SnapshotError> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| SnapshotError::Malformed)
    }
}

/// The instance of the cache directory whose layout root is `root`: its device, inode and
/// birth time (where the file system keeps one), hashed. A root deleted and made again is
/// another instance, so a snapshot of the old one is not used for it.
pub(super) fn instance_of(root: &Path) -> io::Result<u64> {
    let m = fs::metadata(root)?;
    let born = m
        .created()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    let mut h = crc32fast::Hasher::new();
    h.update(&m.dev().to_le_bytes());
    h.update(&m.ino().to_le_bytes());
    let low = u64::from(h.finalize());
    h = crc32fast::Hasher::new();
    h.update(&born.to_le_bytes());
    h.update(&m.ino().to_le_bytes());
    Ok(low | u64::from(h.finalize()) << 32)
}

/// Decodes and checks a snapshot's bytes, written for the cache directory `instance`.
pub(super) fn decode(bytes: Vec<u8>, instance: u64) -> Result<Snapshot, SnapshotError> {
    if bytes.len() < MAGIC.len() + 4 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::Foreign);
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(SnapshotError::Checksum);
    }
    let mut r = Reader {
        b: body,
        at: MAGIC.len(),
    };
    if r.u32()? != FORMAT || r.u32()? != LAYOUT {
        return Err(SnapshotError::Foreign);
    }
    if r.u64()? != instance {
        return Err(SnapshotError::OtherInstance);
    }
    let written_at = UNIX_EPOCH + Duration::from_nanos(r.u64()?);
    let clean = r.take(1)?[0] == 1;
    if r.u32()? as usize != REC {
        return Err(SnapshotError::Foreign);
    }
    let mut frames = Vec::new();
    let mut count = 0usize;
    loop {
        let n = r.u32()? as usize;
        if n == 0 {
            break;
        }
        frames.push((r.at, n));
        r.take(n.checked_mul(REC).ok_or(SnapshotError::Malformed)?)?;
        count += n;
    }
    let mut vary_sets = Vec::new();
    for _ in 0..r.u32()? {
        let mut names = Vec::new();
        for _ in 0..r.u32()? {
            names.push(r.string()?);
        }
        vary_sets.push(names);
    }
    let mut tags = Vec::new();
    for _ in 0..r.u32()? {
        let tag = r.string()?;
        let mut ids = Vec::new();
        for _ in 0..r.u32()? {
            let mut id = [0u8; 16];
            id.copy_from_slice(r.take(16)?);
            ids.push(u128::from_be_bytes(id));
        }
        tags.push((tag, ids));
    }
    if r.at != body.len() {
        return Err(SnapshotError::Malformed);
    }
    Ok(Snapshot {
        bytes,
        frames,
        count,
        vary_sets,
        tags,
        written_at,
        clean,
    })
}

/// Reads and checks the snapshot in `dir`; `Ok(None)` if there is none.
pub(super) fn read(dir: &Path, instance: u64) -> Result<Option<Snapshot>, SnapshotError> {
    match fs::read(dir.join(SNAPSHOT_FILE)) {
        Ok(bytes) => decode(bytes, instance).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A writer that keeps the CRC of what it wrote.
struct Crc<W: Write> {
    w: W,
    crc: crc32fast::Hasher,
}

impl<W: Write> Crc<W> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.w.write_all(b)
    }
    fn u32(&mut self, n: u32) -> io::Result<()> {
        self.put(&n.to_le_bytes())
    }
    fn string(&mut self, s: &str) -> io::Result<()> {
        self.u32(len32(s.len())?)?;
        self.put(s.as_bytes())
    }
}

fn len32(n: usize) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::other("a snapshot section over 4 Gi items"))
}

impl Store {
    /// Path of the snapshot file.
    fn snapshot_path(&self) -> PathBuf {
        self.inner.dir.join(SNAPSHOT_FILE)
    }

    /// Writes the index to `cache_dir/index.snapshot`, atomically (temp file, fsync, rename,
    /// directory fsync). `clean`: written at a clean shutdown. Returns the number of entries
    /// written; `Ok(None)` when not written: this process does not hold the directory (a
    /// graceful upgrade gave it away), or the index loaded from the previous snapshot is not
    /// yet checked against the directory (the previous snapshot stays, and the next start
    /// checks against it again). Blocking; holds the index lock only to copy each chunk.
    pub fn write_snapshot(&self, clean: bool) -> io::Result<Option<usize>> {
        if self.lock_slot().is_none() || self.index().checking() {
            return Ok(None);
        }
        let started = std::time::Instant::now();
        let tmp = self
            .inner
            .dir
            .join(format!(".{SNAPSHOT_FILE}.{:016x}.tmp", self.unique()));
        let written = match self.write_snapshot_to(&tmp, clean) {
            Ok(n) => n,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        fs::rename(&tmp, self.snapshot_path())?;
        File::open(&self.inner.dir)?.sync_all()?;
        tracing::info!(
            entries = written,
            clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index snapshot written"
        );
        Ok(Some(written))
    }

    fn write_snapshot_to(&self, tmp: &Path, clean: bool) -> io::Result<usize> {
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(tmp)?;
        let mut w = Crc {
            w: io::BufWriter::with_capacity(1 << 20, file),
            crc: crc32fast::Hasher::new(),
        };
        // Taken before the first record is copied: an entry file changed after it (its
        // ctime, which a rename sets, is later) is read again by the next start's check.
        let began = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        w.put(MAGIC)?;
        w.u32(FORMAT)?;
        w.u32(LAYOUT)?;
        w.put(&instance_of(&self.inner.root)?.to_le_bytes())?;
        w.put(&began.to_le_bytes())?;
        w.put(&[u8::from(clean)])?;
        w.u32(len32(REC)?)?;
        // Each frame is one chunk copied under one hold of the lock; `Vary` sets are numbered
        // by their names as they are met.
        let mut vary: Vec<Vec<String>> = Vec::new();
        let mut vary_by_names: HashMap<Vec<String>, u32> = HashMap::new();
        let mut count = 0usize;
        let mut from = 0;
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut frame = Vec::with_capacity(CHUNK * REC);
        loop {
            chunk.clear();
            let next = self
                .index()
                .snapshot_chunk(from, CHUNK, &mut chunk, |names| {
                    if let Some(&i) = vary_by_names.get(names) {
                        return i;
                    }
                    let i = vary.len() as u32;
                    vary.push(names.to_vec());
                    vary_by_names.insert(names.to_vec(), i);
                    i
                });
            frame.clear();
            for r in &chunk {
                encode_rec(r, &mut frame);
            }
            if !chunk.is_empty() {
                w.u32(len32(chunk.len())?)?;
                w.put(&frame)?;
            }
            count += chunk.len();
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        w.u32(0)?;
        let tags = self.index().live_tags();
        w.u32(len32(vary.len())?)?;
        for names in &vary {
            w.u32(len32(names.len())?)?;
            for n in names {
                w.string(n)?;
            }
        }
        w.u32(len32(tags.len())?)?;
        for (tag, ids) in &tags {
            w.string(tag)?;
            w.u32(len32(ids.len())?)?;
            for id in ids {
                w.put(&id.to_be_bytes())?;
            }
        }
        let crc = w.crc.clone().finalize();
        w.w.write_all(&crc.to_le_bytes())?;
        let file = w.w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(count)
    }

    /// Loads the snapshot in `cache_dir` into the (empty) index, if there is a usable one.
    /// Returns when its copy began; `None` if there was none or it was not usable (the
    /// caller scans the directory instead). `handover`: the previous process still holds the
    /// directory (and may be writing a snapshot). Blocking: one read of the file, no
    /// per-entry system call.
    pub(super) fn load_snapshot(&self, handover: bool) -> Option<SystemTime> {
        let started = std::time::Instant::now();
        // What a stop in the middle of a write left (this process holds the lock: no other
        // writer).
        let prefix = format!(".{SNAPSHOT_FILE}.");
        let listed = if handover {
            None
        } else {
            fs::read_dir(&self.inner.dir).ok()
        };
        for e in listed.into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(&prefix) && name.ends_with(".tmp") {
                let _ = fs::remove_file(e.path());
            }
        }
        let snapshot = instance_of(&self.inner.root)
            .map_err(SnapshotError::Io)
            .and_then(|instance| read(&self.inner.dir, instance));
        let snapshot = match snapshot {
            Ok(Some(s)) => s,
            Ok(None) => {
                tracing::info!("no index snapshot: reading every entry's header");
                return None;
            }
            Err(e) => {
                Self::log_unused(&e);
                return None;
            }
        };
        let read_ms = started.elapsed().as_millis() as u64;
        self.index()
            .load_snapshot(snapshot.recs(), &snapshot.vary_sets, &snapshot.tags);
        let (entries, bytes) = self.usage();
        let elapsed_ms = started.elapsed().as_millis() as u64;
        self.inner
            .start
            .built(IndexSource::Snapshot, handover, entries, elapsed_ms);
        tracing::info!(
            entries,
            bytes,
            clean = snapshot.clean,
            handover,
            read_ms,
            elapsed_ms,
            "cache index loaded from its snapshot; checking the directory in the background"
        );
        Some(snapshot.written_at)
    }

    fn log_unused(e: &SnapshotError) {
        tracing::warn!("index snapshot not used ({e}): reading every entry's header");
    }

    /// Starts the thread that writes the snapshot every `every` when the index changed. It
    /// holds the store only while writing, and ends once the store is dropped.
    pub(super) fn spawn_snapshots(&self, every: Option<Duration>) {
        let Some(every) = every.filter(|d| !d.is_zero()) else {
            return;
        };
        let weak = std::sync::Arc::downgrade(&self.inner);
        let spawned = std::thread::Builder::new()
            .name("caje-snapshot".into())
            .spawn(move || {
                let step = Duration::from_millis(200).min(every);
                let mut written = None;
                loop {
                    let mut waited = Duration::ZERO;
                    while waited < every {
                        std::thread::sleep(step);
                        waited += step;
                        if weak.strong_count() == 0 {
                            return;
                        }
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    let store = Store { inner };
                    let stamp = store.index().change_stamp();
                    if written == Some(stamp) {
                        continue;
                    }
                    match store.write_snapshot(false) {
                        Ok(Some(_)) => written = Some(stamp),
                        Ok(None) => {}
                        Err(e) => store
                            .inner
                            .stats
                            .store_failed("writing the index snapshot", &e),
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot start the index snapshot thread: {e}");
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;
    use crate::cache::key::CacheKey;
    use crate::cache::store::tests::open;
    use crate::cache::store::{FillProgress, Lookup};
    use crate::stats::Stats;
    use bytes::Bytes;

    pub(in crate::cache::store) fn key(path: &str) -> CacheKey {
        let mut k = sample().key();
        k.path = path.into();
        k
    }

    pub(in crate::cache::store) async fn put(
        store: &Store,
        path: &str,
        body: &[u8],
        tags: &[&str],
    ) {
        let mut m = sample();
        m.path = path.into();
        m.tags = tags.iter().map(|t| t.to_string()).collect();
        let mut f = store.begin_fill(m, u64::MAX, true, store.purge_epoch());
        let mut progress = f.progress();
        f.push(&Bytes::copy_from_slice(body));
        f.finish();
        let stored = progress
            .wait_for(|p| matches!(p, FillProgress::Committed(..) | FillProgress::Failed))
            .await
            .map(|p| matches!(*p, FillProgress::Committed(..)))
            .unwrap();
        assert!(stored, "{path} not stored");
    }

    /// The body a hit on `path` serves, if it is a hit: read as a hit reads it, from the
    /// entry file whose header carries the looked-up tag, checked by length and CRC.
    pub(in crate::cache::store) async fn hit(store: &Store, path: &str) -> Option<Vec<u8>> {
        let Lookup::Found(e) = store.lookup(&key(path), &http::HeaderMap::new()).await else {
            return None;
        };
        let file = fs::read(e.path()).ok()?;
        let (_, fixed) = crate::cache::store::format::decode_header(&file).ok()?;
        let body = file.get(e.body_offset as usize..)?.to_vec();
        (fixed.tag == e.tag()
            && body.len() as u64 == e.meta.body_len
            && crc32fast::hash(&body) == e.meta.body_crc32)
            .then_some(body)
    }

    pub(in crate::cache::store) async fn checked(store: &Store) {
        tokio::time::timeout(std::time::Duration::from_secs(20), store.checked())
            .await
            .expect("the background check ends");
    }

    #[tokio::test]
    async fn a_start_from_a_snapshot_serves_at_once_and_without_one_scans() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &["t"]).await;
            put(&store, "/b", b"bbbb", &[]).await;
            assert_eq!(store.write_snapshot(true).unwrap(), Some(2));
        }
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage(), (2, 7), "loaded from the snapshot");
        assert_eq!(hit(&store, "/a").await.as_deref(), Some(&b"aaa"[..]));
        checked(&store).await;
        assert_eq!(store.usage(), (2, 7), "the check found nothing to change");
        // Tags came with the snapshot: a tag purge finds the entry.
        assert_eq!(store.remove_tag("t").len(), 1);
        assert_eq!(hit(&store, "/a").await, None);
        drop(store);
        fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
        let (store, _rx) = open(dir.path());
        assert!(store.is_checked(), "no snapshot: the start scanned");
        assert_eq!(store.usage(), (1, 4));
        assert_eq!(hit(&store, "/b").await.as_deref(), Some(&b"bbbb"[..]));
    }

    #[tokio::test]
    async fn a_corrupt_foreign_or_other_instance_snapshot_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &[]).await;
            store.write_snapshot(true).unwrap();
        }
        let path = dir.path().join(SNAPSHOT_FILE);
        let good = fs::read(&path).unwrap();
        let instance = instance_of(&dir.path().join("v2")).unwrap();
        assert!(decode(good.clone(), instance).is_ok());
        assert!(matches!(
            decode(good.clone(), instance ^ 1),
            Err(SnapshotError::OtherInstance)
        ));
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 0x10;
        let mut foreign = good.clone();
        foreign[8] = 9;
        for (bad, why) in [
            (flipped, "checksum"),
            (good[..good.len() - 7].to_vec(), "truncated"),
            (Vec::new(), "empty"),
            (foreign, "another format version"),
        ] {
            fs::write(&path, &bad).unwrap();
            assert!(decode(bad.clone(), instance).is_err(), "{why}");
            let (store, _rx) = open(dir.path());
            assert!(
                store.is_checked(),
                "{why}: the directory was scanned instead"
            );
            assert_eq!(store.usage(), (1, 3), "{why}");
            assert_eq!(
                hit(&store, "/a").await.as_deref(),
                Some(&b"aaa"[..]),
                "{why}"
            );
        }
    }

    /// A stop in the middle of a snapshot's write leaves its temp file: the next start removes
    /// it, and uses the previous snapshot.
    #[tokio::test]
    async fn a_torn_snapshot_write_leaves_the_previous_snapshot_in_use() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &[]).await;
            store.write_snapshot(true).unwrap();
        }
        let torn = dir
            .path()
            .join(format!(".{SNAPSHOT_FILE}.00000000000000ff.tmp"));
        fs::write(&torn, b"CAJEIDX\0half").unwrap();
        let (store, _rx) = open(dir.path());
        assert!(!torn.exists());
        assert_eq!(store.usage(), (1, 3));
        checked(&store).await;
        assert_eq!(hit(&store, "/a").await.as_deref(), Some(&b"aaa"[..]));
    }

    /// The layout directory deleted and made again (its entries gone): a snapshot of the old
    /// one describes another instance and is not used.
    #[tokio::test]
    async fn a_snapshot_of_a_removed_cache_dir_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &[]).await;
            store.write_snapshot(true).unwrap();
        }
        fs::remove_dir_all(dir.path().join("v2")).unwrap();
        let (store, _rx) = open(dir.path());
        assert!(store.is_checked());
        assert_eq!(store.usage(), (0, 0));
    }

    /// What a kill -9 between two snapshots leaves: pages added, replaced and removed after
    /// the snapshot, and a temp file. The start serves from the snapshot without ever serving
    /// the removed page or the old copy of the replaced one; the check then settles the index
    /// on what the directory holds.
    #[tokio::test]
    async fn a_stale_snapshot_is_corrected_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let stats;
        {
            let (store, _rx) = open(dir.path());
            for p in ["/a", "/b", "/c"] {
                put(&store, p, b"old", &[]).await;
            }
            store.write_snapshot(false).unwrap();
            put(&store, "/d", b"new", &[]).await;
            put(&store, "/a", b"newer", &[]).await;
            store.remove_page(&key("/b"));
            let shard = store.path_of(&store.refs()[0]).parent().unwrap().to_owned();
            fs::write(shard.join(".leftover.0000000000000001.tmp"), b"torn").unwrap();
            stats = store.inner.stats.clone();
        }
        let before = Stats::get(&stats.corrupt_entries);
        let (store, _rx) = open(dir.path());
        assert_eq!(store.usage().0, 3, "what the snapshot listed: a, b, c");
        // Before the check: never the removed page, never the old copy of the replaced one.
        assert_eq!(hit(&store, "/b").await, None);
        assert_ne!(hit(&store, "/a").await.as_deref(), Some(&b"old"[..]));
        checked(&store).await;
        assert_eq!(hit(&store, "/a").await.as_deref(), Some(&b"newer"[..]));
        assert_eq!(hit(&store, "/b").await, None);
        assert_eq!(hit(&store, "/c").await.as_deref(), Some(&b"old"[..]));
        assert_eq!(hit(&store, "/d").await.as_deref(), Some(&b"new"[..]));
        assert_eq!(store.usage(), (3, 11));
        assert_eq!(
            Stats::get(&stats.corrupt_entries),
            before,
            "stale is not corrupt"
        );
        let temps = walk(dir.path()).filter(|n| n.ends_with(".tmp")).count();
        assert_eq!(temps, 0, "the leftover temp file is removed");
        // What the check settled is what the next snapshot holds.
        assert_eq!(store.write_snapshot(true).unwrap(), Some(3));
        drop(store);
        let (store, _rx) = open(dir.path());
        assert!(!store.is_checked() || store.usage() == (3, 11));
        checked(&store).await;
        assert_eq!(store.usage(), (3, 11));
        assert_eq!(hit(&store, "/d").await.as_deref(), Some(&b"new"[..]));
    }

    /// A page stored after the snapshot, then purged by this process before the check finds
    /// its file (a tombstone applied at start): the check does not bring it back.
    #[tokio::test]
    async fn the_check_never_adds_back_a_page_purged_since_the_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &[]).await;
            store.write_snapshot(false).unwrap();
            put(&store, "/late", b"late", &["t"]).await;
        }
        let (store, _rx) = open(dir.path());
        // The index does not know /late yet: the purge finds nothing, but it is logged, and
        // the check does not add /late back. The check runs on its own thread from the open
        // on, and with two entries it may find /late's file first: then the purge removes
        // it. Either way it must be gone, file and all.
        let purged = store.apply_purge(Some(&key("/late")), None, false);
        assert!(purged <= 1, "{purged}");
        checked(&store).await;
        assert_eq!(hit(&store, "/late").await, None);
        assert_eq!(store.usage(), (1, 3));
        let files = walk(dir.path()).filter(|n| n.ends_with(".entry")).count();
        assert_eq!(files, 1, "its file is removed");
    }

    /// A clear while the check runs (or before it starts): nothing the snapshot listed or the
    /// check finds comes back, and what is stored after the clear stays.
    #[tokio::test]
    async fn a_clear_during_the_check_is_not_undone() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (store, _rx) = open(dir.path());
            put(&store, "/a", b"aaa", &[]).await;
            put(&store, "/b", b"bbb", &[]).await;
            store.write_snapshot(false).unwrap();
            put(&store, "/late", b"late", &[]).await;
        }
        let (store, _rx) = open(dir.path());
        store.clear();
        put(&store, "/new", b"new", &[]).await;
        checked(&store).await;
        assert_eq!(store.usage(), (1, 3));
        assert_eq!(hit(&store, "/new").await.as_deref(), Some(&b"new"[..]));
        for p in ["/a", "/b", "/late"] {
            assert_eq!(hit(&store, p).await, None, "{p}");
        }
    }

    /// Every file name under `dir`, recursively.
    pub(in crate::cache::store) fn walk(dir: &Path) -> impl Iterator<Item = String> {
        let mut out = Vec::new();
        let mut todo = vec![dir.to_owned()];
        while let Some(d) = todo.pop() {
            for e in fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    todo.push(e.path());
                } else {
                    out.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        out.into_iter()
    }

    #[test]
    fn a_record_round_trips_field_by_field() {
        let r = SnapRec {
            name: [7; 32],
            page: 1 << 40,
            file: u64::MAX - 3,
            body_len: 123_456_789,
            stored_at: 1_700_000_000,
            vary: 5,
            blocks: 31,
            invalidated: true,
        };
        let mut b = Vec::new();
        encode_rec(&r, &mut b);
        assert_eq!(b.len(), REC);
        assert_eq!(decode_rec(b.as_slice().try_into().unwrap()), r);
    }
}
