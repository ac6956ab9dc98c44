//! The compact metadata of entries served recently ([`HitMeta`]): what a fresh hit needs, so
//! that a hit on a hot entry reads and decodes nothing but its body. Bounded in bytes (a share
//! of `cache.memory_bytes`, [`metas_budget`]), on the same scan-resistant policy as the tiers
//! (S3-FIFO, [`crate::cache::evict`]), so a crawl of many pages served once does not push out
//! the metadata of the pages clients keep asking for.
//!
//! The full decoded entry (its RFC 9111 policy with two header maps, the stored header list)
//! took about 6 KiB and held the headers four times; it is read from the entry's file when a
//! request needs more than a fresh hit (stale, revalidation, the client's own directives,
//! credentials), which the proxy decides ([`HitMeta::fresh`]).
//!
//! An entry is kept with its generation ([`EntryRef`]): a copy of an entry replaced or
//! refreshed since is never returned, it is read again.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::SystemTime;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::EntryRef;
use crate::cache::evict::Policy;
use crate::cache::policy::{Freshness, Lifetime, PolicyOptions};

/// The share of `cache.memory_bytes` the hot metadata may take: a quarter (16 MiB of the
/// default 64 MiB holds the metadata of about twenty thousand pages with a dozen headers
/// each); the memory tier of bodies takes the rest.
pub fn metas_budget(memory_bytes: usize) -> usize {
    memory_bytes / 4
}

/// Bytes a kept entry costs besides its own allocations: its slot in the map and in the
/// eviction policy, and the `Arc`'s counts.
const OVERHEAD: usize = 96;

/// What a hit needs of a stored entry: where its body is and how to check it, the response
/// head as served, and its freshness lifetime.
#[derive(Debug)]
pub struct HitMeta {
    /// What the index knew of it when it was read (its generation tells whether it is still
    /// current).
    pub(super) r: EntryRef,
    /// The entry file.
    path: PathBuf,
    /// Where the body starts in the entry file (the header's length).
    pub(crate) body_offset: u64,
    /// CRC-32 of the body.
    pub(crate) body_crc32: u32,
    /// The stored version's name: the memory tier's key.
    pub(crate) body_file: Box<str>,
    /// The response status.
    status: StatusCode,
    /// The response headers as served (tags removed, `Via` added), names and values one after
    /// the other in one buffer: a header map took about 120 bytes per header besides its
    /// bytes, this takes 4 ([`HitMeta::head`] builds the map for each hit).
    block: Bytes,
    /// Each header's name and value lengths in `block`, in order.
    spans: Box<[(u16, u16)]>,
    /// The freshness inputs of its RFC 9111 policy.
    lifetime: Lifetime,
    /// What this costs in memory, as the budget counts it.
    bytes: usize,
    /// The entry file, kept open after a hit found in it the version this describes (nginx's
    /// `open_file_cache`): later hits skip the `open` (path walk, descriptor setup and
    /// teardown). Entry files are immutable and replaced by renames, so the descriptor keeps
    /// reading this version; it is used only while the index still serves this version (the
    /// generation check in [`Metas::get`]), and closed when this metadata is dropped (evicted,
    /// purged, replaced). Bounded by [`FdBudget`].
    file: OnceLock<KeptFile>,
}

/// The most entry files kept open whatever the limit: each pins a file, dentry and inode in
/// the kernel (about a kilobyte), and the pages hit most are far fewer than this.
pub const MAX_KEPT_FILES: usize = 65_536;

/// An open entry file and its slot in the budget.
#[derive(Debug)]
struct KeptFile {
    file: Arc<File>,
    /// The file's identity and times before the read that checked it.
    stamp: Stamp,
    _slot: FdSlot,
}

/// What `fstat` says of a file that any write through the file system changes: its inode,
/// size, and modification and change times (nanoseconds). A kept file whose stamp still
/// matches the one taken before the read that checked its CRC holds the bytes that were
/// checked, so a hit may send it without reading it ([`crate::fast`]'s `sendfile`). What no
/// write explains (a bit flipped by the medium) is not seen; a read of the body checks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    ino: u64,
    size: i64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of an open file.
    pub fn of(file: &File) -> std::io::Result<Stamp> {
        let st = nix::sys::stat::fstat(file)?;
        Ok(Stamp {
            ino: st.st_ino,
            size: st.st_size,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
        })
    }
}

/// The most entry files kept open at once: half the process's soft `RLIMIT_NOFILE`
/// (connections, fills and the manifest need the rest), at most [`MAX_KEPT_FILES`].
#[derive(Debug)]
pub(crate) struct FdBudget {
    left: AtomicUsize,
}

impl FdBudget {
    pub(crate) fn new(max: usize) -> Arc<FdBudget> {
        Arc::new(FdBudget {
            left: AtomicUsize::new(max),
        })
    }

    /// From the soft `RLIMIT_NOFILE` (none kept if it cannot be read).
    pub(crate) fn from_rlimit() -> Arc<FdBudget> {
        use nix::sys::resource::{getrlimit, Resource};
        let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
        FdBudget::new(usize::try_from(soft / 2).unwrap_or(0).min(MAX_KEPT_FILES))
    }

    fn take(self: &Arc<Self>) -> Option<FdSlot> {
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .ok()?;
        Some(FdSlot(self.clone()))
    }
}

/// One kept descriptor; gives its slot back when dropped (with the descriptor).
#[derive(Debug)]
struct FdSlot(Arc<FdBudget>);

impl Drop for FdSlot {
    fn drop(&mut self) {
        self.0.left.fetch_add(1, Ordering::AcqRel);
    }
}

impl HitMeta {
    pub(super) fn new(
        r: EntryRef,
        path: PathBuf,
        body_offset: u64,
        body_crc32: u32,
        body_file: &str,
        head: (StatusCode, HeaderMap),
        lifetime: Lifetime,
    ) -> HitMeta {
        let (status, headers) = head;
        let mut block = BytesMut::new();
        let mut spans = Vec::with_capacity(headers.len());
        for (n, v) in &headers {
            // Longer names or values than a u16 measures never come from hyper's parser
            // (its header limits are far below); such a header would be skipped.
            let (Ok(nl), Ok(vl)) = (u16::try_from(n.as_str().len()), u16::try_from(v.len())) else {
                continue;
            };
            block.put_slice(n.as_str().as_bytes());
            block.put_slice(v.as_bytes());
            spans.push((nl, vl));
        }
        let block = block.freeze();
        let spans = spans.into_boxed_slice();
        let bytes = std::mem::size_of::<HitMeta>()
            + OVERHEAD
            + path.as_os_str().len()
            + body_file.len()
            + block.len()
            + spans.len() * std::mem::size_of::<(u16, u16)>();
        HitMeta {
            r,
            path,
            body_offset,
            body_crc32,
            body_file: body_file.into(),
            status,
            block,
            spans,
            lifetime,
            bytes,
            file: OnceLock::new(),
        }
    }

    /// The entry file kept open by an earlier hit, if any.
    pub(crate) fn kept_file(&self) -> Option<Arc<File>> {
        self.file.get().map(|k| k.file.clone())
    }

    /// The kept file and the stamp it had before it was checked.
    pub(crate) fn kept(&self) -> Option<(&Arc<File>, Stamp)> {
        self.file.get().map(|k| (&k.file, k.stamp))
    }

    /// Keeps `file` open for later hits, if the budget allows. Call only after checking that
    /// it holds the version this describes (its header's tag, length and CRC), with the
    /// `stamp` taken before that check's read.
    pub(crate) fn keep_file(&self, file: &Arc<File>, stamp: Stamp, budget: &Arc<FdBudget>) {
        if self.file.get().is_some() {
            return;
        }
        if let Some(slot) = budget.take() {
            // Another hit may have kept one meanwhile: this slot then goes back.
            let _ = self.file.set(KeptFile {
                file: file.clone(),
                stamp,
                _slot: slot,
            });
        }
    }

    /// The stored status and headers, as served: a new map each time (values share the
    /// buffer, no copy), which the caller completes (`Age`, `Cache-Status`...).
    pub fn head(&self) -> (StatusCode, HeaderMap) {
        let mut map = HeaderMap::with_capacity(self.spans.len() + 4);
        let mut at = 0;
        for &(nl, vl) in self.spans.iter() {
            let (n_end, v_end) = (at + nl as usize, at + nl as usize + vl as usize);
            // Both were a valid name and value when the buffer was written.
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(&self.block[at..n_end]),
                HeaderValue::from_maybe_shared(self.block.slice(n_end..v_end)),
            ) {
                map.append(n, v);
            }
            at = v_end;
        }
        (self.status, map)
    }

    /// The stored status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stored headers as served, as name and value bytes in stored order (a name may
    /// repeat), without building a map: what [`crate::fast`] writes.
    pub fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        let mut at = 0;
        self.spans.iter().map(move |&(nl, vl)| {
            let start = at;
            let n_end = start + nl as usize;
            at = n_end + vl as usize;
            (&self.block[start..n_end], &self.block[n_end..at])
        })
    }

    /// Path of the entry file (which may hold a newer version: check the tag).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The tag of this stored version, as the entry file's header carries it.
    pub fn tag(&self) -> u64 {
        self.r.file
    }

    /// The body's length.
    pub fn body_len(&self) -> u64 {
        self.r.body_len
    }

    /// The entry's 64-hex name.
    pub fn name(&self) -> String {
        self.r.name()
    }

    /// Whether this may answer now without the full policy, and with which age: `Some` only
    /// for a fresh entry that no soft purge marked stale, when the client's directives are
    /// not honoured. Anything else (`None`) takes the full entry ([`super::Store::full`]),
    /// which decides as it always did.
    pub fn fresh(&self, now: SystemTime, opts: &PolicyOptions) -> Option<Freshness> {
        if self.r.invalidated {
            return None;
        }
        match self.lifetime.freshness(now, opts)? {
            f @ Freshness::Fresh { .. } => Some(f),
            Freshness::Stale => None,
        }
    }

    /// Bytes this takes, as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

struct Inner {
    map: HashMap<u128, Arc<HitMeta>>,
    policy: Policy,
    bytes: usize,
}

impl Inner {
    fn new(budget: usize) -> Inner {
        Inner {
            map: HashMap::new(),
            policy: Policy::new(budget as u64, None),
            bytes: 0,
        }
    }

    fn drop_key(&mut self, id: u128) {
        if let Some(m) = self.map.remove(&id) {
            self.bytes -= m.bytes;
        }
    }
}

pub(super) struct Metas {
    inner: Mutex<Inner>,
    budget: usize,
}

impl Metas {
    /// Keeps at most `budget` bytes of metadata (0: none).
    pub(super) fn new(budget: usize) -> Metas {
        Metas {
            inner: Mutex::new(Inner::new(budget)),
            budget,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Nothing panics while holding it; a poisoned map is still consistent enough to use.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The metadata `r` names, if kept and still of `r`'s generation; counted as a use.
    pub(super) fn get(&self, r: &EntryRef) -> Option<Arc<HitMeta>> {
        if self.budget == 0 {
            return None;
        }
        let id = r.id();
        let mut m = self.lock();
        let e = m.map.get(&id).filter(|e| e.r.gen == r.gen)?.clone();
        m.policy.touch(id);
        Some(e)
    }

    /// Keeps an entry's metadata (just read for a hit: a use).
    pub(super) fn insert(&self, e: Arc<HitMeta>) {
        if self.budget == 0 {
            return;
        }
        let id = e.r.id();
        let mut m = self.lock();
        for victim in m.policy.admit(id, e.bytes as u64) {
            m.drop_key(victim);
        }
        if m.policy.contains(id) {
            m.drop_key(id);
            m.bytes += e.bytes;
            m.map.insert(id, e);
        }
    }

    /// Puts a refreshed entry's metadata in place of its previous version, if that one is
    /// kept (not a use: a refresh of many entries, such as a soft purge, must not fill this).
    pub(super) fn refresh(&self, e: &Arc<HitMeta>) {
        let id = e.r.id();
        let mut m = self.lock();
        if m.map.contains_key(&id) {
            // Re-admitted with its new weight, which may evict others (or itself).
            for victim in m.policy.admit(id, e.bytes as u64) {
                m.drop_key(victim);
            }
            if m.policy.contains(id) {
                m.drop_key(id);
                m.bytes += e.bytes;
                m.map.insert(id, e.clone());
            }
        }
    }

    /// Forgets the entry with this id (removed).
    pub(super) fn remove(&self, id: u128) {
        let mut m = self.lock();
        if m.map.contains_key(&id) {
            m.drop_key(id);
            m.policy.remove(id);
        }
    }

    /// Forgets everything.
    pub(super) fn clear(&self) {
        *self.lock() = Inner::new(self.budget);
    }

    /// Entries kept.
    pub(super) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Bytes kept, as the budget counts them, and the budget.
    pub(super) fn usage(&self) -> (usize, usize) {
        (self.lock().bytes, self.budget)
    }
}

#[cfg(test)]
impl FdBudget {
    /// Slots not in use.
    pub(crate) fn left(&self) -> usize {
        self.left.load(Ordering::Acquire)
    }
}
