//! The entry file: one file per stored response, a header followed by the body.
//!
//! ```text
//! offset   size       field
//! 0        4          magic "caje"
//! 4        1          FORMAT_VERSION
//! 5        3          zero
//! 8        4          meta_len, u32 LE
//! 12       8          body length, u64 LE
//! 20       4          body CRC-32, u32 LE
//! 24       8          tag, u64 LE: which stored version of the entry this file is
//! 32       meta_len   postcard(EntryMeta), its body length and CRC fields zeroed
//! 32+m     4          CRC-32 of bytes 0..32+m, LE
//! 36+m     body len   the body
//! ```
//!
//! The body's length and CRC live in the fixed part, not in the postcard bytes (whose
//! varints would change length with them): the header's length then depends only on what
//! is known when a fill starts, so a streamed body goes right after a header written with
//! zeroes, and that header is rewritten in place (in the temp file, before its rename) once
//! the body's length and CRC are known.
//!
//! The header's CRC covers the fixed part too, so a torn or damaged header is never
//! misread; the body's length (the file's size) and CRC reject a torn body. That is what
//! makes fills safe without fsync: after a crash an entry file is whole, or rejected.
//!
//! Everything that knows this layout is here, behind three functions the rest of the
//! store uses: [`write_entry_file`] / [`EntryWriter`] (write one), [`read_header`] (an
//! entry's metadata and body offset from its file) and [`read_body_at`] (body bytes).

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::{Bytes, BytesMut};

use crate::cache::entry::EntryMeta;

/// Version of the entry file format. Bump on any change to the layout or to [`EntryMeta`].
/// (1 was the two-file layout: `.meta` + `.body`.)
pub const FORMAT_VERSION: u8 = 2;

const MAGIC: [u8; 4] = *b"caje";
/// Bytes before the postcard metadata.
const FIXED: usize = 32;
/// Largest metadata accepted when reading: a damaged length field must not make a reader
/// allocate gigabytes. Stored heads are far smaller (caje limits response heads).
const MAX_META: u32 = 4 << 20;
/// The first read of a header: one page holds the header of nearly every entry.
pub(super) const FIRST_READ: usize = 4096;

/// Why an entry file's header could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than its header says.
    #[error("entry file is truncated")]
    Truncated,
    /// Not an entry file of this format (another version, or not caje's).
    #[error("entry file format version {0} is not supported (this caje reads {FORMAT_VERSION})")]
    Version(u8),
    /// No caje entry file starts like this.
    #[error("not a caje entry file")]
    Magic,
    /// The metadata length is implausible.
    #[error("metadata length {0} is implausible")]
    MetaLen(u32),
    /// The header's checksum does not match.
    #[error("entry header checksum mismatch")]
    Checksum,
    /// postcard could not decode the metadata.
    #[error("metadata does not decode: {0}")]
    Postcard(#[from] postcard::Error),
    /// The metadata names another version than the fixed part.
    #[error("metadata and header disagree on the stored version")]
    Tag,
}

/// Why [`read_header`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Reading the file failed.
    #[error("reading entry file: {0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid header.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// The fixed part of a header: what a hit checks against the entry it looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fixed {
    meta_len: u32,
    /// Body length.
    pub body_len: u64,
    /// Body CRC-32.
    pub body_crc: u32,
    /// The stored version ([`tag_of`]).
    pub tag: u64,
}

impl Fixed {
    /// Where the body starts: the header's length.
    pub fn body_offset(&self) -> u64 {
        (FIXED + self.meta_len as usize + 4) as u64
    }
}

/// The name of one stored version of entry `name`: the memory tier's key, and
/// `EntryMeta::body_file`. `tag` is unique to the fill that wrote it.
pub fn version_name(name: &str, tag: u64) -> String {
    format!("{name}.{tag:016x}")
}

/// The tag of a stored version (the hex after the last dot of `EntryMeta::body_file`).
pub fn tag_of(meta: &EntryMeta) -> u64 {
    meta.body_file
        .rsplit('.')
        .next()
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// The metadata's postcard bytes, its body length and CRC left out (zeroed): the part of the
/// header a fill can write before its body is known.
pub fn encode_meta(meta: &mut EntryMeta) -> io::Result<Vec<u8>> {
    let kept = (meta.body_len, meta.body_crc32);
    (meta.body_len, meta.body_crc32) = (0, 0);
    // Into room for a typical header's metadata: grown from empty, the vector was
    // reallocated several times per fill.
    let encoded = postcard::to_extend(&*meta, Vec::with_capacity(1024));
    (meta.body_len, meta.body_crc32) = kept;
    let encoded = encoded.map_err(io::Error::other)?;
    if encoded.len() > MAX_META as usize {
        return Err(io::Error::other(DecodeError::MetaLen(encoded.len() as u32)));
    }
    Ok(encoded)
}

/// The whole header for metadata bytes from [`encode_meta`].
pub fn header(meta: &[u8], body_len: u64, body_crc: u32, tag: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + meta.len() + 4);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[FORMAT_VERSION, 0, 0, 0]);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&body_len.to_le_bytes());
    out.extend_from_slice(&body_crc.to_le_bytes());
    out.extend_from_slice(&tag.to_le_bytes());
    out.extend_from_slice(meta);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the fixed part (no checksum: that needs the whole header, [`check_header`]).
pub fn parse_fixed(buf: &[u8]) -> Result<Fixed, DecodeError> {
    if buf.len() < FIXED {
        return Err(DecodeError::Truncated);
    }
    if buf[..4] != MAGIC {
        return Err(DecodeError::Magic);
    }
    if buf[4] != FORMAT_VERSION {
        return Err(DecodeError::Version(buf[4]));
    }
    let meta_len = le_u32(&buf[8..12]);
    if meta_len > MAX_META {
        return Err(DecodeError::MetaLen(meta_len));
    }
    let mut len = [0u8; 8];
    len.copy_from_slice(&buf[12..20]);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&buf[24..32]);
    Ok(Fixed {
        meta_len,
        body_len: u64::from_le_bytes(len),
        body_crc: le_u32(&buf[20..24]),
        tag: u64::from_le_bytes(tag),
    })
}

/// Parses and checks a whole header at the start of `buf` (which may hold more).
pub fn check_header(buf: &[u8]) -> Result<Fixed, DecodeError> {
    let fixed = parse_fixed(buf)?;
    let end = fixed.body_offset() as usize;
    if buf.len() < end {
        return Err(DecodeError::Truncated);
    }
    if crc32fast::hash(&buf[..end - 4]) != le_u32(&buf[end - 4..end]) {
        return Err(DecodeError::Checksum);
    }
    Ok(fixed)
}

/// Decodes a whole header at the start of `buf`: the metadata (with its body length and CRC
/// put back) and the fixed part.
pub fn decode_header(buf: &[u8]) -> Result<(EntryMeta, Fixed), DecodeError> {
    let fixed = check_header(buf)?;
    let meta_bytes = &buf[FIXED..fixed.body_offset() as usize - 4];
    let mut meta: EntryMeta = postcard::from_bytes(meta_bytes)?;
    if tag_of(&meta) != fixed.tag {
        return Err(DecodeError::Tag);
    }
    meta.body_len = fixed.body_len;
    meta.body_crc32 = fixed.body_crc;
    Ok((meta, fixed))
}

/// Reads up to `len` bytes at `pos`; fewer only at the end of the file. Blocking.
pub fn read_up_to(file: &File, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], pos + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads an entry's header from its file (never the body): its metadata and where its body
/// starts. The start-up scan's only read of each entry. Blocking.
pub fn read_header(file: &File) -> Result<(EntryMeta, Fixed), ReadError> {
    let mut buf = read_up_to(file, 0, FIRST_READ)?;
    let fixed = parse_fixed(&buf)?;
    let end = fixed.body_offset() as usize;
    if buf.len() < end && buf.len() == FIRST_READ {
        buf.extend(read_up_to(file, buf.len() as u64, end - buf.len())?);
    }
    Ok(decode_header(&buf)?)
}

/// Largest body read on the async worker, with its header, when it is in the page cache (a
/// hit, and a lookup of an entry whose decoded metadata is not kept).
pub const INLINE_MAX: u64 = 64 * 1024;

/// `preadv2(RWF_NOWAIT)` (a plain `pread` on a memory file system, which does not support the
/// flag but never waits for a disk either): bytes read, or `None` if the data is not in the
/// page cache (or the file system does not support the flag, or any other error). Never
/// blocks on the disk, so the async workers may call it.
pub fn read_cached(file: &File, buf: &mut [u8], pos: u64, memory_fs: bool) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let pos = libc::off_t::try_from(pos).ok()?;
    let flags = if memory_fs { 0 } else { libc::RWF_NOWAIT };
    // SAFETY: `iov` points at `buf`, which is valid for writes of `buf.len()` bytes and
    // outlives the call; the fd is owned by `file`, open for the duration of the call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, pos, flags) };
    usize::try_from(n).ok()
}

/// Reads from `pos` until `buf` is full or the file ends, with [`read_cached`]: the bytes
/// read, or `None` as soon as one read would have to wait for the disk (or fails).
pub fn read_all_cached(file: &File, buf: &mut [u8], memory_fs: bool) -> Option<usize> {
    let mut done = 0usize;
    while done < buf.len() {
        let n = read_cached(file, &mut buf[done..], done as u64, memory_fs)?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Some(done)
}

/// Reads `len` bytes of the body at `pos` (from the body's start; `body_offset` is where it
/// starts in the file). A file shorter than that is an `UnexpectedEof` error: a caller never
/// sends a short chunk as if it were whole. Blocking.
pub fn read_body_at(file: &File, body_offset: u64, pos: u64, len: usize) -> io::Result<Bytes> {
    let mut buf = BytesMut::zeroed(len);
    file.read_exact_at(&mut buf, body_offset + pos)?;
    Ok(buf.freeze())
}

/// Writes all of `bufs` at the file's position, in as few `writev` calls as the kernel allows.
fn write_all_bufs(mut file: &File, bufs: &[&[u8]]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = bufs
        .iter()
        .filter(|b| !b.is_empty())
        .map(|b| IoSlice::new(b))
        .collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match file.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Creates `tmp` (new, readable: coalesced readers follow a fill through its descriptor),
/// and its directory if it is missing. The directory is created only when the open says so:
/// a `mkdir` per fill was 3-4 % of the miss path's CPU in a profile.
fn create(tmp: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(tmp)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(dir) = tmp.parent() {
                std::fs::create_dir_all(dir)?;
            }
            open()
        }
        other => other,
    }
}

/// Writes a whole entry file at `tmp` (a new temp file the caller renames into place): the
/// header and `body` in one `writev`. Returns the file (readable), the body's length and CRC
/// and where it starts. Not fsynced (see the module doc). Blocking.
pub fn write_entry_file(
    tmp: &Path,
    meta: &[u8],
    tag: u64,
    body: &[Bytes],
) -> io::Result<(File, Fixed)> {
    let mut crc = crc32fast::Hasher::new();
    let mut len = 0u64;
    for b in body {
        crc.update(b);
        len += b.len() as u64;
    }
    let crc = crc.finalize();
    let head = header(meta, len, crc, tag);
    let file = create(tmp)?;
    let mut bufs: Vec<&[u8]> = Vec::with_capacity(body.len() + 1);
    bufs.push(&head);
    bufs.extend(body.iter().map(|b| &b[..]));
    write_all_bufs(&file, &bufs)?;
    let fixed = parse_fixed(&head).map_err(io::Error::other)?;
    Ok((file, fixed))
}

/// An entry file written as its body streams: the header (zeroes for the body's length and
/// CRC) and the first chunks, then more chunks, then the final header in place.
pub struct EntryWriter {
    file: std::sync::Arc<File>,
    meta: Vec<u8>,
    tag: u64,
    crc: crc32fast::Hasher,
    len: u64,
}

impl EntryWriter {
    /// Creates `tmp` and writes the header and `first` in one `writev`. Blocking.
    pub fn create(tmp: &Path, meta: Vec<u8>, tag: u64, first: &[Bytes]) -> io::Result<Self> {
        let file = create(tmp)?;
        let head = header(&meta, 0, 0, tag);
        let mut w = EntryWriter {
            file: std::sync::Arc::new(file),
            meta,
            tag,
            crc: crc32fast::Hasher::new(),
            len: 0,
        };
        w.write(Some(&head), first)?;
        Ok(w)
    }

    fn write(&mut self, head: Option<&[u8]>, chunks: &[Bytes]) -> io::Result<()> {
        let mut bufs: Vec<&[u8]> = Vec::with_capacity(chunks.len() + 1);
        bufs.extend(head);
        bufs.extend(chunks.iter().map(|b| &b[..]));
        write_all_bufs(&self.file, &bufs)?;
        for c in chunks {
            self.crc.update(c);
            self.len += c.len() as u64;
        }
        Ok(())
    }

    /// Appends body chunks (one `writev`). Blocking.
    pub fn append(&mut self, chunks: &[Bytes]) -> io::Result<()> {
        self.write(None, chunks)
    }

    /// The file, readable (followers read the body through it).
    pub fn file(&self) -> &std::sync::Arc<File> {
        &self.file
    }

    /// Where the body starts in the file.
    pub fn body_offset(&self) -> u64 {
        (FIXED + self.meta.len() + 4) as u64
    }

    /// Body bytes written so far.
    pub fn written(&self) -> u64 {
        self.len
    }

    /// Writes the final header (the body's length and CRC) over the first one. Blocking.
    pub fn finish(&self) -> io::Result<Fixed> {
        let head = header(&self.meta, self.len, self.crc.clone().finalize(), self.tag);
        self.file.write_all_at(&head, 0)?;
        parse_fixed(&head).map_err(io::Error::other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::entry::tests::sample;

    fn sample_meta() -> EntryMeta {
        let mut meta = sample();
        meta.body_file = version_name(&"ab".repeat(32), 0x1234);
        meta
    }

    #[test]
    fn header_roundtrip_keeps_body_fields_outside_postcard() {
        let mut meta = sample_meta();
        let bytes = encode_meta(&mut meta).unwrap();
        // The body fields do not change the metadata bytes (so the header's length).
        meta.body_len = u64::MAX;
        meta.body_crc32 = u32::MAX;
        assert_eq!(encode_meta(&mut meta).unwrap(), bytes);
        assert_eq!(meta.body_len, u64::MAX, "restored");
        let head = header(&bytes, 5, 7, 0x1234);
        let (back, fixed) = decode_header(&head).unwrap();
        assert_eq!((back.body_len, back.body_crc32), (5, 7));
        assert_eq!(fixed.body_offset(), head.len() as u64);
        assert_eq!(back.path, meta.path);
        let (_, headers) = back.response_head();
        assert_eq!(headers.get_all("link").iter().count(), 2);
    }

    #[test]
    fn every_flipped_byte_of_a_header_is_detected() {
        let mut meta = sample_meta();
        let bytes = encode_meta(&mut meta).unwrap();
        let head = header(&bytes, 3, crc32fast::hash(b"abc"), 0x1234);
        for i in 0..head.len() {
            let mut b = head.clone();
            b[i] ^= 0x40;
            assert!(decode_header(&b).is_err(), "flip at {i} not detected");
        }
        assert!(decode_header(&[]).is_err());
        assert!(decode_header(&head[..head.len() - 1]).is_err());
    }

    #[test]
    fn the_old_format_is_never_misread() {
        // A `.meta` file of the two-file layout started with its version byte, 1.
        let mut old = vec![1u8];
        old.extend(postcard::to_stdvec(&sample_meta()).unwrap());
        old.extend([0u8; 4]);
        assert!(decode_header(&old).is_err());
        let mut head = header(b"", 0, 0, 0);
        head[4] = 1;
        assert!(matches!(parse_fixed(&head), Err(DecodeError::Version(1))));
    }

    #[test]
    fn streamed_and_whole_files_read_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = sample_meta();
        let bytes = encode_meta(&mut meta).unwrap();
        let chunks = [Bytes::from_static(b"hello "), Bytes::from_static(b"world")];
        let (whole, fixed) =
            write_entry_file(&dir.path().join("a"), &bytes, 0x1234, &chunks).unwrap();
        let mut w =
            EntryWriter::create(&dir.path().join("b"), bytes, 0x1234, &chunks[..1]).unwrap();
        w.append(&chunks[1..]).unwrap();
        assert_eq!(w.finish().unwrap(), fixed);
        for f in [&whole, &**w.file()] {
            let (meta, fx) = read_header(f).unwrap();
            assert_eq!(fx, fixed);
            assert_eq!(meta.body_len, 11);
            assert_eq!(meta.body_crc32, crc32fast::hash(b"hello world"));
            let body = read_body_at(f, fx.body_offset(), 0, 11).unwrap();
            assert_eq!(&body[..], b"hello world");
            assert!(
                read_body_at(f, fx.body_offset(), 1, 11).is_err(),
                "short read"
            );
        }
    }

    #[test]
    fn a_header_longer_than_the_first_read_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut meta = sample_meta();
        meta.headers
            .push(("x-big".into(), vec![b'a'; 3 * FIRST_READ]));
        let bytes = encode_meta(&mut meta).unwrap();
        let (f, fixed) = write_entry_file(
            &dir.path().join("a"),
            &bytes,
            0x1234,
            &[Bytes::from_static(b"x")],
        )
        .unwrap();
        assert!(fixed.body_offset() > FIRST_READ as u64);
        let (back, _) = read_header(&f).unwrap();
        assert_eq!(back.headers.len(), meta.headers.len());
    }
}
