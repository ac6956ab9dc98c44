//! A fill that runs at the origin's speed, whatever its clients do.
//!
//! For a storable response, a background task (the *pump*) reads the origin body through a
//! [`Tee`] into the store's [`crate::cache::store::Fill`], with the fill's own bounded
//! backpressure toward the disk and the origin body idle timeout. Every client of the fill,
//! the one that started it included, reads with a [`SpoolReader`] at its own pace from what
//! has arrived: recent chunks from a small in-memory window (so a small miss never touches
//! the disk twice), older ones from the file being written, one bounded read per frame on
//! the blocking pool (no thread is held while a client does not read). This is Varnish's
//! streaming fetch: one slow reader never slows the fetch or another reader.
//!
//! Older chunks are read through the writer's own descriptor, never by opening a path: the
//! commit renames the file, and an eviction may unlink the committed body while a slow
//! client is still reading it; the descriptor keeps the bytes readable to the end.
//!
//! Memory stays bounded: a chunk leaves the window once it is on disk and the window holds
//! more than [`WINDOW`] bytes, and the pump stops reading the origin while the window holds
//! more than [`WINDOW_CAP`] (only possible while the writer has no file yet; the fill's own
//! backpressure already bounds what is not yet written).
//!
//! When the fill is abandoned mid-body (the object grew past `max_object_bytes`, or the disk
//! failed or fell behind) the pump stops and parks the origin body; the first client reads
//! what was retained and then the rest straight from the origin, as an uncached response
//! would be. Coalesced clients are aborted there, as a failed fill always aborted them (never
//! a short 200). An origin body that fails aborts every reader at the point of failure.

use std::collections::VecDeque;
use std::fs::File;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::body::{BodyError, StreamError, Tee};
use crate::cache::store::format::read_body_at;
use crate::cache::store::FillProgress;
use crate::file_body::CHUNK;

/// Bytes already on disk that the window keeps in memory for readers close behind the pump.
pub const WINDOW: u64 = 1024 * 1024;
/// The pump waits while the window holds more than this.
pub const WINDOW_CAP: u64 = 16 * 1024 * 1024;

/// How the origin body ended, as the readers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Running,
    /// The whole body arrived (with its declared length, if any).
    Complete,
    /// The origin body failed (error, idle timeout, short body).
    Failed,
    /// The fill was abandoned; the rest of the origin body is parked for the first client.
    HandedOff,
}

enum DiskFile {
    /// The writer has no file yet: nothing may leave the window.
    Pending,
    /// The writer's descriptor (readable; it outlives a rename or an unlink of its path), and
    /// where the body starts in it (after the entry file's header).
    Open(Arc<File>, u64),
}

struct State {
    /// Received chunks still in memory, with their offsets, oldest first.
    chunks: VecDeque<(u64, Bytes)>,
    /// Offset of the first byte in `chunks` (== `received` when it is empty).
    window_start: u64,
    /// Bytes received from the origin.
    received: u64,
    /// Bytes the writer has written to the file.
    on_disk: u64,
    file: DiskFile,
    end: End,
    handoff: Option<Tee>,
    leader_gone: bool,
    /// The pump no longer waits for the window to shrink.
    uncapped: bool,
    wakers: Vec<(u64, Waker)>,
    next_reader: u64,
}

/// The shared state of one fill's body; see the module documentation.
pub struct Spool {
    state: Mutex<State>,
    /// Wakes the pump when the window shrinks.
    room: Notify,
    /// Wakes [`Spool::first_bytes`] when the first bytes arrive or the body ends.
    started: Notify,
    expected: Option<u64>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("Spool")
            .field("received", &s.received)
            .field("on_disk", &s.on_disk)
            .field("end", &s.end)
            .finish_non_exhaustive()
    }
}

impl Spool {
    /// An empty spool for a body of `expected` bytes (if declared).
    pub fn new(expected: Option<u64>) -> Arc<Self> {
        Arc::new(Spool {
            state: Mutex::new(State {
                chunks: VecDeque::new(),
                window_start: 0,
                received: 0,
                on_disk: 0,
                file: DiskFile::Pending,
                end: End::Running,
                handoff: None,
                leader_gone: false,
                uncapped: false,
                wakers: Vec::new(),
                next_reader: 0,
            }),
            room: Notify::new(),
            started: Notify::new(),
            expected,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding this lock; recover rather than poison every reader.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the pump (origin → fill and window) and the disk follower; returns the body for
    /// the client that started the fill.
    pub fn start(
        self: &Arc<Self>,
        tee: Tee,
        progress: watch::Receiver<FillProgress>,
    ) -> SpoolReader {
        let leader = self.reader_inner(true);
        tokio::spawn(pump(self.clone(), tee));
        tokio::spawn(follow_disk(self.clone(), progress));
        leader
    }

    /// A body for a request coalesced onto this fill, from the first byte.
    pub fn reader(self: &Arc<Self>) -> SpoolReader {
        self.reader_inner(false)
    }

    fn reader_inner(self: &Arc<Self>, leader: bool) -> SpoolReader {
        let id = {
            let mut s = self.lock();
            s.next_reader += 1;
            s.next_reader
        };
        SpoolReader {
            spool: self.clone(),
            id,
            leader,
            pos: 0,
            pending: None,
            direct: None,
            failed: false,
        }
    }

    fn wake_all(s: &mut State) {
        for (_, w) in s.wakers.drain(..) {
            w.wake();
        }
    }

    fn push(&self, data: Bytes) {
        let mut s = self.lock();
        let at = s.received;
        s.received += data.len() as u64;
        s.chunks.push_back((at, data));
        Self::wake_all(&mut s);
        drop(s);
        if at == 0 {
            self.started.notify_waiters();
        }
    }

    /// Waits until the body's first bytes have arrived, or the body has ended (empty, failed,
    /// handed off); at once if that is already so.
    ///
    /// A coalesced request answers only then: its response head and first bytes leave in one
    /// write. Answering on the head alone costs every waiter a second write and its client a
    /// second wake-up, and under a herd the body then waits behind all the heads: the pump
    /// that reads it runs after the hundreds of waiters the head woke (one origin response
    /// fanned out to 200 clients on one core: the last body left 15 ms after the origin
    /// answered, all of it spent writing heads first).
    pub async fn first_bytes(&self) {
        loop {
            let started = self.started.notified();
            tokio::pin!(started);
            // Registered before the check, so a push between the check and the await is seen.
            started.as_mut().enable();
            {
                let s = self.lock();
                if s.received > 0 || s.end != End::Running {
                    return;
                }
            }
            started.await;
        }
    }

    fn end(&self, end: End, handoff: Option<Tee>) {
        let parked = {
            let mut s = self.lock();
            s.end = end;
            Self::wake_all(&mut s);
            if s.leader_gone {
                handoff
            } else {
                s.handoff = handoff;
                None
            }
        };
        self.started.notify_waiters();
        // Dropped outside the lock: the origin connection goes with it.
        drop(parked);
    }

    /// Whether the pump may read another chunk now.
    fn has_room(&self) -> bool {
        let s = self.lock();
        s.uncapped || s.received - s.window_start <= WINDOW_CAP
    }

    fn uncap(&self) {
        self.lock().uncapped = true;
        self.room.notify_waiters();
    }

    /// The writer reached `written` bytes; chunks that are on disk may leave the window.
    fn on_disk(&self, written: u64) {
        let mut s = self.lock();
        s.on_disk = s.on_disk.max(written);
        Self::evict(&mut s);
        drop(s);
        self.room.notify_waiters();
    }

    fn set_file(&self, file: Arc<File>, body_offset: u64) {
        let mut s = self.lock();
        s.file = DiskFile::Open(file, body_offset);
        Self::evict(&mut s);
        drop(s);
        self.room.notify_waiters();
    }

    fn evict(s: &mut State) {
        if matches!(s.file, DiskFile::Pending) {
            return;
        }
        while let Some((at, front)) = s.chunks.front() {
            let end = at + front.len() as u64;
            let behind = s.received - end;
            if behind < WINDOW || end > s.on_disk {
                break;
            }
            s.window_start = end;
            s.chunks.pop_front();
        }
    }
}

/// Reads the origin body into the fill and the window, at the origin's (and disk's) pace.
async fn pump(spool: Arc<Spool>, mut tee: Tee) {
    loop {
        // Bounded memory even if the file could not be opened yet.
        loop {
            let room = spool.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if spool.has_room() {
                break;
            }
            room.await;
        }
        match tee.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if !data.is_empty() {
                        spool.push(data);
                    }
                }
            }
            Some(Err(e)) => {
                tracing::debug!("fill: origin body failed: {e}");
                spool.end(End::Failed, None);
                return;
            }
            None => {
                spool.end(End::Complete, None);
                return;
            }
        }
        if tee.abandoned() {
            spool.end(End::HandedOff, Some(tee));
            return;
        }
    }
}

/// Follows the writer: hands the spool the writer's own descriptor of the file (so no path
/// is ever opened: neither the commit's rename nor an eviction's unlink of the committed
/// body can take the bytes from under a reader) and lets written chunks leave the window.
async fn follow_disk(spool: Arc<Spool>, mut progress: watch::Receiver<FillProgress>) {
    let mut opened = false;
    loop {
        let (file, written, last) = match &*progress.borrow_and_update() {
            FillProgress::Starting => (None, 0, false),
            FillProgress::Writing {
                file,
                body_offset,
                written,
                ..
            } => (Some((file.clone(), *body_offset)), *written, false),
            FillProgress::Committed(entry, file) => (
                Some((file.clone(), entry.body_offset)),
                entry.meta.body_len,
                true,
            ),
            FillProgress::Failed => (None, 0, true),
        };
        if let (false, Some((file, body_offset))) = (opened, file) {
            opened = true;
            spool.set_file(file, body_offset);
        }
        if opened {
            spool.on_disk(written);
        }
        if last || progress.changed().await.is_err() {
            if !opened {
                // The writer is done without ever having a file: nothing will shrink the
                // window any more, so the pump must not wait for that (the fill is over, so
                // the pump stops or hands off at its next chunk).
                spool.uncap();
            }
            return;
        }
    }
}

/// One client's body of a fill; see [`Spool`].
pub struct SpoolReader {
    spool: Arc<Spool>,
    id: u64,
    /// The client that started the fill: it alone may take over a parked origin body.
    leader: bool,
    pos: u64,
    pending: Option<JoinHandle<std::io::Result<Bytes>>>,
    /// The origin body, once the fill was abandoned and this reader caught up.
    direct: Option<Tee>,
    failed: bool,
}

/// What a reader does next.
enum Step {
    Data(Bytes),
    /// Read `len` body bytes at `pos` from the file, whose body starts at `offset`.
    Read(Arc<File>, u64, u64, usize),
    End,
    Fail(&'static str),
    Direct(Tee),
    Wait,
}

impl SpoolReader {
    fn next_step(&self, cx: &Context<'_>) -> Step {
        let mut s = self.spool.lock();
        let pos = self.pos;
        if pos < s.window_start {
            return match &s.file {
                DiskFile::Open(f, offset) => {
                    let len = (s.window_start.min(s.on_disk) - pos).min(CHUNK as u64) as usize;
                    if len == 0 {
                        return Step::Fail("the fill's body is no longer available");
                    }
                    Step::Read(f.clone(), *offset, pos, len)
                }
                _ => Step::Fail("the fill's body is no longer available"),
            };
        }
        if pos < s.received {
            let i = s
                .chunks
                .partition_point(|(at, b)| at + b.len() as u64 <= pos);
            if let Some((at, b)) = s.chunks.get(i) {
                return Step::Data(b.slice((pos - at) as usize..));
            }
            return Step::Fail("the fill's window lost a chunk");
        }
        match s.end {
            End::Complete => Step::End,
            End::Failed => Step::Fail("the origin body failed"),
            End::HandedOff if self.leader => match s.handoff.take() {
                Some(tee) => Step::Direct(tee),
                None => Step::Fail("the origin body is gone"),
            },
            End::HandedOff => Step::Fail("the coalesced fill was abandoned"),
            End::Running => {
                match s.wakers.iter_mut().find(|(id, _)| *id == self.id) {
                    Some((_, w)) => w.clone_from(cx.waker()),
                    None => s.wakers.push((self.id, cx.waker().clone())),
                }
                Step::Wait
            }
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.failed = true;
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for SpoolReader {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if this.failed {
            return Poll::Ready(None);
        }
        loop {
            if let Some(tee) = this.direct.as_mut() {
                let polled = Pin::new(tee).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        this.pos += frame.data_ref().map_or(0, |d| d.len() as u64);
                    }
                    Poll::Ready(Some(Err(_))) => this.failed = true,
                    _ => {}
                }
                return polled;
            }
            if let Some(read) = this.pending.as_mut() {
                let joined = std::task::ready!(Pin::new(read).poll(cx));
                this.pending = None;
                return match joined.map_err(std::io::Error::other).and_then(|r| r) {
                    Ok(data) => {
                        this.pos += data.len() as u64;
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Err(e) => this.fail(StreamError::Io(e).into()),
                };
            }
            match this.next_step(cx) {
                Step::Data(data) => {
                    this.pos += data.len() as u64;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Step::Read(file, offset, pos, len) => {
                    this.pending = Some(tokio::task::spawn_blocking(move || {
                        read_body_at(&file, offset, pos, len)
                    }));
                }
                Step::End => return Poll::Ready(None),
                Step::Fail(why) => return this.fail(why.into()),
                Step::Direct(tee) => this.direct = Some(tee),
                Step::Wait => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.spool.expected == Some(self.pos) && self.pending.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.spool.expected {
            Some(n) => SizeHint::with_exact(n.saturating_sub(self.pos)),
            None => SizeHint::default(),
        }
    }
}

impl Drop for SpoolReader {
    fn drop(&mut self) {
        let parked = {
            let mut s = self.spool.lock();
            s.wakers.retain(|(id, _)| *id != self.id);
            if self.leader {
                s.leader_gone = true;
                s.handoff.take()
            } else {
                None
            }
        };
        // Dropped outside the lock: the origin connection goes with it.
        drop(parked);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn first_bytes_waits_for_the_first_chunk_or_the_end() {
        let spool = Spool::new(Some(3));
        let waiting = tokio::spawn({
            let spool = spool.clone();
            async move { spool.first_bytes().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "returned before any byte arrived");
        spool.push(Bytes::from_static(b"abc"));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the first chunk")
            .unwrap();
        // Already there: at once.
        tokio::time::timeout(Duration::from_secs(5), spool.first_bytes())
            .await
            .expect("bytes already arrived");

        // An empty (or failed) body has no first bytes: its end wakes the waiters.
        let empty = Spool::new(Some(0));
        let waiting = tokio::spawn({
            let empty = empty.clone();
            async move { empty.first_bytes().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        empty.end(End::Complete, None);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the end")
            .unwrap();
    }
}
