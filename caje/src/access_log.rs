//! The access log: one JSON line per request, written by a background thread.
//!
//! A request only builds its [`Line`] and offers it to a bounded channel; it never waits for
//! the disk. When the writer falls behind and the channel is full, the line is dropped and
//! counted (`caje_access_log_dropped_total`). The writer reopens its file when asked
//! ([`AccessLog::reopen`], on SIGHUP in the binary), so logrotate can move it away.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;

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

/// One request, as logged.
#[derive(Debug, Clone, Serialize)]
pub struct Line {
    /// When the response ended, RFC 3339 UTC with milliseconds.
    pub time: String,
    /// The client's address (the TCP peer).
    pub client: String,
    /// The request method.
    pub method: String,
    /// The request's host (`Host` or the absolute-form authority) as sent.
    pub host: String,
    /// The request target's path and query.
    pub path: String,
    /// The response status.
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// From the request's arrival to the end of its response body, in milliseconds.
    pub duration_ms: f64,
    /// Time spent waiting for origin response heads, in milliseconds; `null` if the origin
    /// was not asked.
    pub origin_ms: Option<f64>,
    /// What the cache did (`hit`, `miss`, `stale`, `revalidated`, `collapsed`, `pass`,
    /// `error`, or `admin`).
    pub cache: &'static str,
    /// The full `Cache-Status` value.
    pub cache_status: Option<String>,
    /// The origin's socket address, when the origin was asked and it is known.
    pub origin_addr: Option<String>,
}

#[derive(Debug, Default)]
struct Counters {
    written: AtomicU64,
    dropped: AtomicU64,
    reopen: AtomicBool,
}

/// The handle requests use; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: SyncSender<Line>,
    counters: Arc<Counters>,
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

/// Lines written per flush at most: a burst is written in a few large writes.
const BATCH: usize = 1024;

impl AccessLog {
    /// Opens the target (a file is created if missing, appended to) and starts the writer
    /// thread with room for `queue` lines.
    pub fn start(target: Target, queue: usize) -> Result<AccessLog, OpenError> {
        let out = Output::open(&target)?;
        let (tx, rx) = sync_channel(queue.max(1));
        let counters = Arc::new(Counters::default());
        let c = counters.clone();
        std::thread::Builder::new()
            .name("caje-access-log".into())
            .spawn(move || writer(target, out, rx, &c))
            .map_err(|source| OpenError {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        Ok(AccessLog { tx, counters })
    }

    /// Offers a line to the writer; drops it (and counts it) if the queue is full.
    pub fn log(&self, line: Line) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Makes the writer reopen its file before it writes the next line (logrotate).
    pub fn reopen(&self) {
        self.counters.reopen.store(true, Ordering::Relaxed);
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.counters.written.load(Ordering::Relaxed)
    }

    /// Lines dropped because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
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
    Stdout(BufWriter<std::io::Stdout>),
    File(BufWriter<File>),
}

impl Output {
    fn open(target: &Target) -> Result<Output, OpenError> {
        Ok(match target {
            Target::Stdout => {
                Output::Stdout(BufWriter::with_capacity(64 * 1024, std::io::stdout()))
            }
            Target::File(path) => {
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| OpenError {
                        path: path.clone(),
                        source,
                    })?;
                Output::File(BufWriter::with_capacity(64 * 1024, f))
            }
        })
    }

    fn writer(&mut self) -> &mut dyn Write {
        match self {
            Output::Stdout(w) => w,
            Output::File(w) => w,
        }
    }
}

/// The writer thread: waits for a line, writes it and whatever else is queued (up to
/// [`BATCH`]), then flushes; exits when every handle is gone.
fn writer(target: Target, mut out: Output, rx: Receiver<Line>, counters: &Counters) {
    let mut failing = false;
    while let Ok(first) = rx.recv() {
        if counters.reopen.swap(false, Ordering::Relaxed) {
            let _ = out.writer().flush();
            match Output::open(&target) {
                Ok(o) => out = o,
                Err(e) => tracing::warn!("access log: reopen failed, keeping the old file: {e}"),
            }
        }
        let mut n: u64 = 0;
        let mut result = Ok(());
        for line in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
            let w = out.writer();
            result = serde_json::to_writer(&mut *w, &line)
                .map_err(std::io::Error::from)
                .and_then(|()| w.write_all(b"\n"));
            if result.is_err() {
                break;
            }
            n += 1;
            if n >= BATCH as u64 {
                break;
            }
        }
        let result = result.and_then(|()| out.writer().flush());
        counters.written.fetch_add(n, Ordering::Relaxed);
        match result {
            Err(e) if !failing => {
                failing = true;
                tracing::warn!("access log: write failed: {e}");
            }
            Err(_) => {}
            Ok(()) => failing = false,
        }
    }
    let _ = out.writer().flush();
}

/// `SystemTime` as RFC 3339 UTC with milliseconds, e.g. `2025-01-31T23:59:59.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_709_251_199_123);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59.123Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(951_868_800);
        assert_eq!(rfc3339(t), "2000-03-01T00:00:00.000Z");
    }

    #[test]
    fn targets() {
        assert_eq!(Target::parse("off"), None);
        assert_eq!(Target::parse(""), None);
        assert_eq!(Target::parse("stdout"), Some(Target::Stdout));
        assert_eq!(
            Target::parse("/var/log/caje.log"),
            Some(Target::File("/var/log/caje.log".into()))
        );
    }

    #[test]
    fn lines_are_written_and_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let log = AccessLog::start(Target::File(path.clone()), 16).unwrap();
        let line = |p: &str| Line {
            time: rfc3339(SystemTime::now()),
            client: "127.0.0.1:1".into(),
            method: "GET".into(),
            host: "h".into(),
            path: p.into(),
            status: 200,
            bytes: 1,
            duration_ms: 0.1,
            origin_ms: None,
            cache: "hit",
            cache_status: None,
            origin_addr: None,
        };
        log.log(line("/one"));
        let wait = |n| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while log.written() < n && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        wait(1);
        std::fs::rename(&path, dir.path().join("access.log.1")).unwrap();
        log.reopen();
        log.log(line("/two"));
        wait(2);
        let old = std::fs::read_to_string(dir.path().join("access.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.contains("\"/one\"") && !old.contains("/two"), "{old}");
        let v: serde_json::Value = serde_json::from_str(new.trim()).unwrap();
        assert_eq!(v["path"], "/two");
        assert_eq!(log.dropped(), 0);
    }
}
