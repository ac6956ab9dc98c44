//! The access log: one JSON line per request, buffered the way nginx buffers its log.
//!
//! A request formats its line straight into a buffer of its own thread's shard (no allocation,
//! no wake-up of another thread, no system call): a shard is a mutex only its thread takes,
//! but for the writer swapping the buffer out. A full buffer (about [`BATCH_BYTES`]) is
//! handed to the writer thread as one batch; the writer also sweeps every shard each
//! `log.access_flush_ms` (100 ms), so a quiet node's lines reach the file within that time,
//! and on [`AccessLog::flush`] (graceful shutdown and upgrade). Each batch is whole lines written in
//! one `write(2)` to a file opened `O_APPEND`, so the lines of two processes sharing the file
//! during an upgrade do not interleave within a line.
//!
//! The log never makes a request wait for the disk: when the writer falls behind and
//! `log.access_queue` lines are already waiting for it, a full shard is not handed over and
//! further lines on that shard are dropped and counted (`caje_access_log_dropped_total`).
//! The writer reopens its file when asked ([`AccessLog::reopen`], on SIGHUP in the binary),
//! so logrotate can move it away.

mod format;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant, SystemTime};

use format::SecondCache;

/// Where the lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard output.
    Stdout,
    /// A file, appended to and reopened on [`AccessLog::reopen`].
    File(PathBuf),
}

impl Target {
    /// Parses `log.access`: `off` (None), `stdout`, or a path.
    pub fn parse(value: &str) -> Option<Target> {
        match value.trim() {
            "" | "off" => None,
            "stdout" | "-" => Some(Target::Stdout),
            path => Some(Target::File(PathBuf::from(path))),
        }
    }
}

/// One request, as logged (borrowed from the request's own record: logging copies nothing
/// but the bytes of the line).
#[derive(Debug, Clone, Copy)]
pub struct Line<'a> {
    /// When the response ended; written as RFC 3339 UTC with milliseconds (`time`).
    pub time: SystemTime,
    /// The client's address (the TCP peer).
    pub client: SocketAddr,
    /// The request method.
    pub method: &'a str,
    /// The request's host (`Host` or the absolute-form authority) as sent.
    pub host: &'a str,
    /// The request target's path and query.
    pub path: &'a str,
    /// The response status.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// From the request's arrival to the end of its response body (`duration_ms`).
    pub duration: Duration,
    /// Time spent waiting for origin response heads (`origin_ms`); `None` (`null`) if the
    /// origin was not asked.
    pub origin: Option<Duration>,
    /// What the cache did (`hit`, `miss`, `stale`, `revalidated`, `collapsed`, `pass`,
    /// `error`, or `admin`).
    pub cache: &'a str,
    /// The full `Cache-Status` value.
    pub cache_status: Option<&'a str>,
    /// The origin's socket address, when the origin was asked and it is known.
    pub origin_addr: Option<SocketAddr>,
}

/// A shard's buffer is handed to the writer once it holds this many bytes (a few hundred
/// lines): one wake-up of the writer and one `write(2)` per batch, not per line.
pub const BATCH_BYTES: usize = 64 * 1024;

/// The lines one thread formats, waiting to be handed over.
#[derive(Debug, Default)]
struct Shard {
    buf: Vec<u8>,
    lines: u64,
    seconds: SecondCache,
}

/// A shard's full buffer on its way to the writer.
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    lines: u64,
}

enum Msg {
    /// A full buffer, counted in `queued`.
    Batch(Batch),
    /// Write these (the shards' lines when the reopen was asked), then reopen the file.
    Reopen(Vec<Batch>),
    /// Write everything, then answer.
    Flush(Sender<()>),
}

#[derive(Debug)]
struct Shared {
    shards: Box<[Mutex<Shard>]>,
    /// Lines in batches handed over and not yet written.
    queued: AtomicU64,
    /// The most `queued` may reach before full shards are kept (and new lines dropped).
    queue_limit: u64,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl Shared {
    fn lock(&self, i: usize) -> MutexGuard<'_, Shard> {
        let shard = &self.shards[i % self.shards.len()];
        // A panic while a shard was held leaves at worst a torn line in its buffer: go on
        // rather than lose the log.
        match shard.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(e)) => e.into_inner(),
            Err(TryLockError::WouldBlock) => shard.lock().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Takes every shard's lines, in shard order.
    fn sweep(&self) -> Vec<Batch> {
        let mut out = Vec::new();
        for i in 0..self.shards.len() {
            let mut s = self.lock(i);
            if s.lines > 0 {
                out.push(Batch {
                    buf: std::mem::take(&mut s.buf),
                    lines: std::mem::take(&mut s.lines),
                });
            }
        }
        out
    }
}

/// The handle requests use; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
    tx: Sender<Msg>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Batch(b) => write!(f, "Batch({} lines)", b.lines),
            Msg::Reopen(b) => write!(f, "Reopen({} batches)", b.len()),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot open the access log {path}: {source}")]
pub struct OpenError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// This thread's number, assigned on its first line: threads that log get consecutive
/// numbers, so the runtime's workers each find a shard of their own.
fn thread_number() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static NUMBER: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    NUMBER.with(|n| *n)
}

impl AccessLog {
    /// Opens the target (a file is created if missing, appended to) and starts the writer
    /// thread, which takes every shard's lines each `flush` (at least 1 ms); up to `queue`
    /// lines may wait for it in full batches before new lines are dropped.
    pub fn start(target: Target, queue: usize, flush: Duration) -> Result<AccessLog, OpenError> {
        let out = Output::open(&target)?;
        // Twice the cores: the runtime's workers (one per core) get a shard each, with room
        // for the occasional other thread.
        let shards = std::thread::available_parallelism().map_or(4, |n| n.get()) * 2;
        let shared = Arc::new(Shared {
            shards: (0..shards.clamp(2, 256))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            queued: AtomicU64::new(0),
            queue_limit: queue.max(1) as u64,
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        });
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            shared: shared.clone(),
            target,
            out,
            failing: false,
            interval: flush.max(Duration::from_millis(1)),
        };
        std::thread::Builder::new()
            .name("caje-access-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| OpenError {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        Ok(AccessLog { shared, tx })
    }

    /// Appends a line to this thread's shard; never waits for the disk. Drops the line (and
    /// counts it) if the writer is so far behind that the shard cannot hand its full buffer
    /// over.
    pub fn log(&self, line: &Line<'_>) {
        let mut s = self.shared.lock(thread_number());
        if s.buf.len() >= BATCH_BYTES && !self.hand_over(&mut s) {
            drop(s);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if s.buf.capacity() == 0 {
            // A fresh buffer (the last one was handed over or swept): room for a batch, so
            // that it never grows by copying.
            s.buf.reserve(BATCH_BYTES + 4096);
        }
        let Shard { buf, seconds, .. } = &mut *s;
        format::line(buf, seconds, line);
        s.lines += 1;
        if s.buf.len() >= BATCH_BYTES {
            self.hand_over(&mut s);
        }
    }

    /// Hands the shard's buffer to the writer unless `log.access_queue` lines already wait
    /// for it (one batch may always wait, however small the queue). False if it was kept.
    fn hand_over(&self, s: &mut Shard) -> bool {
        let n = s.lines;
        let limit = self.shared.queue_limit;
        let room = self
            .shared
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                (q == 0 || q + n <= limit).then_some(q + n)
            });
        if room.is_err() {
            return false;
        }
        let batch = Batch {
            buf: std::mem::take(&mut s.buf),
            lines: std::mem::take(&mut s.lines),
        };
        if self.tx.send(Msg::Batch(batch)).is_err() {
            // The writer is gone (it only stops when every handle is dropped): nothing will
            // write these lines.
            self.shared.queued.fetch_sub(n, Ordering::Relaxed);
            self.shared.dropped.fetch_add(n, Ordering::Relaxed);
        }
        true
    }

    /// Writes every line logged so far (the shards' included) and waits, at most `timeout`,
    /// until the writer has. False on timeout. Blocks: call it from a blocking thread, as
    /// the binary does at the end of a graceful shutdown or upgrade.
    pub fn flush(&self, timeout: Duration) -> bool {
        let (ack, done) = mpsc::channel();
        self.tx.send(Msg::Flush(ack)).is_ok() && done.recv_timeout(timeout).is_ok()
    }

    /// Makes the writer reopen its file (logrotate): the lines logged before this call go to
    /// the old file, later ones to the new. Does not wait for the disk (it only takes the
    /// shards' buffers, as the writer's sweep does).
    pub fn reopen(&self) {
        let _ = self.tx.send(Msg::Reopen(self.shared.sweep()));
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// Lines lost: dropped because the writer was behind, or in a write that failed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// Reopens `log`'s file on every SIGHUP (logrotate's `postrotate`: `kill -HUP <pid>`).
/// Must be called inside a tokio runtime.
pub fn reopen_on_sighup(log: AccessLog) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reopening the access log");
                    log.reopen();
                }
            });
        }
        Err(e) => tracing::warn!("cannot install the SIGHUP handler: {e}"),
    }
}

enum Output {
    Stdout(std::io::Stdout),
    File(File),
}

impl Output {
    fn open(target: &Target) -> Result<Output, OpenError> {
        Ok(match target {
            Target::Stdout => Output::Stdout(std::io::stdout()),
            Target::File(path) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| OpenError {
                        path: path.clone(),
                        source,
                    })?;
                Output::File(f)
            }
        })
    }

    /// One batch of whole lines in one write (unbuffered: the batch is the buffer).
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout(w) => {
                let mut w = w.lock();
                w.write_all(buf).and_then(|()| w.flush())
            }
            Output::File(f) => f.write_all(buf),
        }
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    target: Target,
    out: Output,
    /// A write failed and the failure was logged; cleared by the next success.
    failing: bool,
    /// How often the shards are swept: the longest a line waits in memory.
    interval: Duration,
}

impl Writer {
    /// Writes batches as they come and sweeps the shards every `interval`; exits,
    /// after a last sweep, when every handle is gone.
    fn run(mut self, rx: Receiver<Msg>) {
        let mut next_sweep = Instant::now() + self.interval;
        loop {
            match rx.recv_timeout(next_sweep.saturating_duration_since(Instant::now())) {
                Ok(Msg::Batch(b)) => {
                    self.shared.queued.fetch_sub(b.lines, Ordering::Relaxed);
                    self.write(&b);
                }
                Ok(Msg::Reopen(before)) => {
                    // Handed-over batches sent before came first on the channel.
                    for b in &before {
                        self.write(b);
                    }
                    match Output::open(&self.target) {
                        Ok(o) => self.out = o,
                        Err(e) => {
                            tracing::warn!("access log: reopen failed, keeping the old file: {e}")
                        }
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    // Batches sent before the flush came before it on the channel; the
                    // shards hold the rest.
                    self.sweep();
                    let _ = ack.send(());
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    self.sweep();
                    return;
                }
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + self.interval;
            }
        }
    }

    fn sweep(&mut self) {
        for b in self.shared.sweep() {
            self.write(&b);
        }
    }

    fn write(&mut self, b: &Batch) {
        match self.out.write(&b.buf) {
            Ok(()) => {
                self.shared.written.fetch_add(b.lines, Ordering::Relaxed);
                self.failing = false;
            }
            Err(e) => {
                self.shared.dropped.fetch_add(b.lines, Ordering::Relaxed);
                if !self.failing {
                    self.failing = true;
                    tracing::warn!("access log: write failed, lines are lost: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
