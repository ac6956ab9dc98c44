//! The index's slab: records in fixed-size chunks rather than one `Vec`.
//!
//! A `Vec` of a million 88-byte records grows by doubling: it holds up to twice the memory
//! it uses (a third more on average), and each growth copies the whole slab while the
//! index's lock is held (tens of milliseconds at a million entries, during which no lookup
//! is answered). Chunks of [`CHUNK`] records never move: growing allocates one more chunk,
//! and at most one chunk is unused.

use std::ops::{Index, IndexMut};

/// Records per chunk (4,096 of the index's records: 352 KiB).
pub(super) const CHUNK: usize = 4096;

pub(super) struct Slab<T> {
    chunks: Vec<Box<[T]>>,
    len: usize,
    /// What unused slots of a chunk hold.
    blank: T,
}

impl<T: Copy> Slab<T> {
    pub(super) fn new(blank: T) -> Slab<T> {
        Slab {
            chunks: Vec::new(),
            len: 0,
            blank,
        }
    }

    /// Slots used (live or free), the first `len` of the slab.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Slots allocated (used or not).
    pub(super) fn capacity(&self) -> usize {
        self.chunks.len() * CHUNK
    }

    /// Appends `value`; returns its slot.
    pub(super) fn push(&mut self, value: T) -> usize {
        if self.len == self.capacity() {
            self.chunks.push(vec![self.blank; CHUNK].into_boxed_slice());
        }
        let i = self.len;
        self.len += 1;
        self[i] = value;
        i
    }
}

impl<T> Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        &self.chunks[i / CHUNK][i % CHUNK]
    }
}

impl<T> IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i / CHUNK][i % CHUNK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_chunks_and_keeps_every_slot() {
        let mut s = Slab::new(0u64);
        assert_eq!((s.len(), s.capacity()), (0, 0));
        for i in 0..(2 * CHUNK + 3) as u64 {
            assert_eq!(s.push(i * 7), i as usize);
        }
        assert_eq!((s.len(), s.capacity()), (2 * CHUNK + 3, 3 * CHUNK));
        s[CHUNK] = 1;
        assert_eq!(s[CHUNK], 1);
        assert_eq!(s[2 * CHUNK + 2], (2 * CHUNK as u64 + 2) * 7);
    }
}
