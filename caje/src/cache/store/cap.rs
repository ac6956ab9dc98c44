//! The disk cap: its limits, how an entry is weighed against it (whole file-system blocks),
//! and the page versions it evicted, remembered so that edge warming leaves them out.

use std::collections::{HashMap, VecDeque};

use crate::cache::evict::Fifo;

/// Disk usage is counted in blocks of this size, as a filesystem allocates them.
pub const BLOCK: u64 = 4096;

/// Blocks an entry file (header and body) of `file_len` bytes occupies, as a file system
/// allocates them (what `du` counts for it).
pub(super) fn file_blocks(file_len: u64) -> u64 {
    file_len.div_ceil(BLOCK)
}

/// Blocks a page of `body_len` bytes will take, before its header is known: one block more
/// than its body needs, which covers any header up to 4 KiB (nearly all of them).
pub(super) fn estimated_blocks(body_len: u64) -> u64 {
    body_len.div_ceil(BLOCK) + 1
}

/// The limits of the disk tier.
#[derive(Debug, Clone, Copy)]
pub struct DiskLimits {
    /// Bodies plus metadata, in bytes, as they occupy the disk.
    pub max_bytes: u64,
    /// Most entries, if bounded.
    pub max_entries: Option<usize>,
    /// Most bytes (as blocks on disk) that pages brought in by edge warming and not yet asked
    /// for by a client may occupy (`populate.max_fraction` of `max_bytes`).
    pub max_warm_bytes: u64,
}

impl DiskLimits {
    /// No limit (tests and tools).
    pub const UNLIMITED: DiskLimits = DiskLimits {
        max_bytes: u64::MAX,
        max_entries: None,
        max_warm_bytes: u64::MAX,
    };

    pub(super) fn policy(self) -> Fifo {
        Fifo::new(self.max_bytes / BLOCK, self.max_entries)
    }
}

/// How many evicted page versions are remembered (about 40 bytes each).
const EVICTED_REMEMBERED: usize = 16_384;

/// Pages evicted to stay within the cap, with the `stored_at` of the copy that was evicted, so
/// edge warming does not bring a page back until its manifest row changes. Bounded: the oldest
/// are forgotten first.
#[derive(Default)]
pub(super) struct Evicted {
    pub(super) stored_at: HashMap<u128, i64>,
    order: VecDeque<u128>,
}

impl Evicted {
    pub(super) fn record(&mut self, id: u128, stored_at: i64) {
        if self.stored_at.insert(id, stored_at).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > EVICTED_REMEMBERED {
            if let Some(old) = self.order.pop_front() {
                self.stored_at.remove(&old);
            }
        }
    }
}
