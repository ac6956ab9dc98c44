//! The manifest's writer helper: on a real LiteFS mount the batches are written (HALT, `BEGIN`,
//! the writes, `COMMIT`, release) by a helper process, caje's own executable started with
//! [`WRITER_ENV`], so that a kill -9 of caje can never cut a `COMMIT` or a HALT acquisition
//! short.
//!
//! # Why
//!
//! On a LiteFS replica every `COMMIT` under HALT is shipped to the primary inside the FUSE
//! write of the WAL's commit frame. A process killed during it cancels that request, and
//! LiteFS v0.5.14 treats that as fatal: `fatal error occurred while committing WAL ... context
//! canceled`, then it exits (code 99), and every process on the mount fails until it restarts.
//! A process killed while LiteFS acquires its HALT leaves the primary halted for 30-35 s and
//! can wedge the replica's replication (litefs-rs's `broker.rs`). Neither can be caught by the
//! process that dies. A helper can: it outlives caje, finishes the batch it is writing, gives
//! HALT back, and exits.
//!
//! # Protocol (private to caje, same executable on both sides)
//!
//! Frames on the helper's stdin and stdout: a 4-byte little-endian length, a protocol version
//! byte, then postcard. caje sends [`Setup`] once, then one batch of [`WriteInput`]s at a time;
//! the helper answers each batch with an [`Answer`]: the outcome of each write it answered, in
//! order, why the rest was not written, and the batch's counters. It runs the batch with the
//! very code the owner thread runs in-process ([`BatchWriter`]). At end-of-file (caje exited or
//! was killed) it has already finished the batch in progress, and exits 0; it ignores SIGTERM,
//! SIGINT, SIGHUP and SIGUSR2, so that a signal to caje's process group does not cut it short
//! either. A helper that dies is replaced by a new one, which writes the unanswered batch again.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::batch::{BatchStats, BatchWriter, FlushError, Flushed};
use super::litefs::litefs_database;
use super::schema::{no_checkpoint_on_close, open_connection};
use super::write::{WriteInput, WriteOutput};
use super::{LitefsMode, ManifestError, Op};

/// The environment variable that makes caje's executable the manifest's writer helper. The
/// binary checks it first thing in `main` and then runs [`serve_writer`] only.
pub const WRITER_ENV: &str = "CAJE_MANIFEST_WRITER";

/// Bumped when a frame's shape changes. The helper is started from `/proc/self/exe`, the
/// running binary even after an upgrade replaced the file, so both sides normally agree.
const PROTOCOL: u8 = 1;

/// Largest frame accepted: a batch of `max_batch` rows, or the rows a purge of everything
/// returns, are far below it; a larger length means a broken stream.
const MAX_FRAME: usize = 1 << 30;

/// What the helper needs to open the manifest: sent once, first.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Setup {
    path: PathBuf,
    litefs: LitefsMode,
    halt_timeout: Duration,
    open_timeout: Duration,
}

/// A write's own error, as the helper reports it: the SQLite code (extended) and message,
/// rebuilt into the same [`ManifestError::Sqlite`] on caje's side.
#[derive(Debug, Serialize, Deserialize)]
struct WriteError {
    op: Op,
    code: i32,
    message: Option<String>,
}

/// The helper's answer to one batch: [`Flushed`] on the wire.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    outcomes: Vec<Result<WriteOutput, WriteError>>,
    /// Why the writes after `outcomes` were not written: the text of the [`FlushError`].
    error: Option<String>,
    stats: BatchStats,
}

impl From<Flushed> for Answer {
    fn from(flushed: Flushed) -> Answer {
        let outcomes = flushed
            .outcomes
            .into_iter()
            .map(|outcome| outcome.map_err(WriteError::from))
            .collect();
        Answer {
            outcomes,
            error: flushed.error.map(|e| e.to_string()),
            stats: flushed.stats,
        }
    }
}

impl From<ManifestError> for WriteError {
    fn from(e: ManifestError) -> WriteError {
        match e {
            ManifestError::Sqlite { op, source } => match &*source {
                rusqlite::Error::SqliteFailure(code, message) => WriteError {
                    op,
                    code: code.extended_code,
                    message: message.clone(),
                },
                other => WriteError {
                    op,
                    code: rusqlite::ffi::SQLITE_ERROR,
                    message: Some(other.to_string()),
                },
            },
            // A write's outcome is only ever a statement's error; anything else is reported
            // as a generic SQLite error with its text.
            other => WriteError {
                op: Op::Commit,
                code: rusqlite::ffi::SQLITE_ERROR,
                message: Some(other.to_string()),
            },
        }
    }
}

impl From<WriteError> for ManifestError {
    fn from(e: WriteError) -> ManifestError {
        ManifestError::Sqlite {
            op: e.op,
            source: Arc::new(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(e.code),
                e.message,
            )),
        }
    }
}

fn write_frame(output: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let body = postcard::to_stdvec(value).map_err(std::io::Error::other)?;
    let len = u32::try_from(body.len() + 1).map_err(std::io::Error::other)?;
    let mut frame = Vec::with_capacity(body.len() + 5);
    frame.extend_from_slice(&len.to_le_bytes());
    frame.push(PROTOCOL);
    frame.extend_from_slice(&body);
    output.write_all(&frame)?;
    output.flush()
}

/// The next frame, or `None` at end-of-file before it.
fn read_frame<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> std::io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::other(format!("bad frame length {len}")));
    }
    let mut body = vec![0u8; len];
    input.read_exact(&mut body)?;
    if body[0] != PROTOCOL {
        return Err(std::io::Error::other(format!(
            "protocol {} where {PROTOCOL} was expected",
            body[0]
        )));
    }
    postcard::from_bytes(&body[1..])
        .map(Some)
        .map_err(std::io::Error::other)
}

/// The helper process: serves batches on stdin/stdout until end-of-file. Blocking; returns
/// when caje is gone (or on a broken stream, logged by the caller).
///
/// ```no_run
/// // First thing in caje's `main`:
/// if std::env::var_os(caje::manifest::WRITER_ENV).is_some() {
///     caje::manifest::serve_writer().expect("the manifest writer helper");
///     return;
/// }
/// ```
pub fn serve_writer() -> std::io::Result<()> {
    // A batch must finish whatever signal the group gets; end-of-file stops us.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
        // SAFETY: setting a signal to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    serve(std::io::stdin().lock(), std::io::stdout().lock())
}

/// The helper's loop: [`Setup`], then one batch at a time, each written and answered before
/// the next is read, so end-of-file is only ever seen between batches.
fn serve(mut input: impl Read, mut output: impl Write) -> std::io::Result<()> {
    let Some(setup): Option<Setup> = read_frame(&mut input)? else {
        return Ok(());
    };
    let opened = litefs_database(&setup.path, setup.litefs).and_then(|litefs| {
        let (conn, _) = open_connection(
            &setup.path,
            litefs.as_ref(),
            setup.halt_timeout,
            setup.open_timeout,
        )?;
        Ok((litefs, conn))
    });
    let (litefs, mut conn) = opened.map_err(|e| std::io::Error::other(e.with_causes()))?;
    // This connection closes after caje exited, maybe while a new caje opens the file: its
    // close must change no file (see `no_checkpoint_on_close`; already so on a real LiteFS
    // mount, and here for any file).
    no_checkpoint_on_close(&conn).map_err(std::io::Error::other)?;
    while let Some(batch) = read_frame::<Vec<WriteInput>>(&mut input)? {
        let inputs: Vec<&WriteInput> = batch.iter().collect();
        let flushed = BatchWriter {
            conn: &mut conn,
            litefs: litefs.as_ref(),
            // Never give up an acquisition half-way: LiteFS bounds it (10 s, then EIO), and
            // caje stops waiting for the answer on its own clock.
            halt_timeout: None,
            on_flush: None,
        }
        .write(&inputs);
        // Failing to answer means caje is gone: the batch is written (or not) all the same,
        // and HALT released; stop as at end-of-file.
        match write_frame(&mut output, &Answer::from(flushed)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// How a helper is started.
#[derive(Debug, Clone)]
pub(super) enum Spawn {
    /// This executable, with [`WRITER_ENV`].
    Process(PathBuf),
    /// [`serve`] on a thread of this process, over a socket pair: for unit tests, which have
    /// no caje binary to start.
    #[cfg(test)]
    Thread,
}

/// One running helper: the pipes to it, and whether it owes an answer.
struct Channel {
    to_helper: File,
    from_helper: File,
    child: Option<Child>,
    /// Writes in the batch sent and not answered yet (its answer was not in by the deadline).
    in_flight: Option<usize>,
}

impl Drop for Channel {
    /// Closing its input tells the helper to finish the batch it is writing and exit; it is
    /// never killed (that is the very interruption it exists to prevent).
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            reap_later(child);
        }
    }
}

/// Collects the helper's exit on a detached thread, so that it does not stay a zombie.
fn reap_later(mut child: Child) {
    let _ = std::thread::Builder::new()
        .name("caje-writer-reap".into())
        .spawn(move || {
            let _ = child.wait();
        });
}

/// The owner thread's side of the writer helper: started at the first batch, and again after
/// one died.
pub(super) struct WriterHelper {
    spawn: Spawn,
    setup: Setup,
    channel: Option<Channel>,
}

impl std::fmt::Debug for WriterHelper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHelper")
            .field("spawn", &self.spawn)
            .field("running", &self.channel.is_some())
            .finish()
    }
}

/// Why a batch got no answer from the helper.
enum NoAnswer {
    /// Not by the deadline: the helper is still at it; its answer is read at the next attempt.
    NotYet(Duration),
    /// The helper is gone or its stream is broken: a new one writes the batch again.
    Gone(std::io::Error),
}

impl WriterHelper {
    pub(super) fn new(
        spawn: Spawn,
        path: PathBuf,
        litefs: LitefsMode,
        halt_timeout: Duration,
        open_timeout: Duration,
    ) -> WriterHelper {
        WriterHelper {
            spawn,
            setup: Setup {
                path,
                litefs,
                halt_timeout,
                open_timeout,
            },
            channel: None,
        }
    }

    /// Stops the helper: closes its input and waits, at most `timeout`, for it to finish the
    /// batch it may be writing and exit, so that a process that closes its manifest before
    /// exiting leaves no writer behind on the file (a new process may open it next).
    pub(super) fn finish(mut self, timeout: Duration) {
        let Some(mut channel) = self.channel.take() else {
            return;
        };
        let Some(mut child) = channel.child.take() else {
            return;
        };
        drop(channel);
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if !status.success() => {
                    tracing::warn!(%status, "the manifest writer helper exited with an error");
                    return;
                }
                Ok(Some(_)) | Err(_) => return,
                Ok(None) if Instant::now() >= deadline => {
                    tracing::warn!(
                        ?timeout,
                        "the manifest writer helper is still writing; leaving it to finish"
                    );
                    reap_later(child);
                    return;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }

    /// Whether a batch was sent and its answer is still owed: the queue's first writes are
    /// the helper's until it answers.
    pub(super) fn in_flight(&self) -> bool {
        self.channel.as_ref().is_some_and(|c| c.in_flight.is_some())
    }

    /// Writes `inputs` through the helper, waiting at most `wait` for its answer. A batch
    /// still in flight from an earlier call is answered first instead (its writes are the
    /// first of `inputs`, which stay queued until answered).
    pub(super) fn write(&mut self, inputs: &[&WriteInput], wait: Duration) -> Flushed {
        match self.try_write(inputs, wait) {
            Ok(flushed) => flushed,
            Err(NoAnswer::NotYet(waited)) => Flushed::failed(FlushError::Helper(format!(
                "the manifest writer helper has not answered in {waited:?}; its batch goes on"
            ))),
            Err(NoAnswer::Gone(e)) => {
                self.channel = None;
                Flushed::failed(FlushError::Helper(format!(
                    "the manifest writer helper failed ({e}); a new one writes the batch again"
                )))
            }
        }
    }

    fn try_write(&mut self, inputs: &[&WriteInput], wait: Duration) -> Result<Flushed, NoAnswer> {
        let deadline = Instant::now() + wait;
        let channel = match &mut self.channel {
            Some(channel) => channel,
            None => self
                .channel
                .insert(start(&self.spawn, &self.setup).map_err(NoAnswer::Gone)?),
        };
        let sent = match channel.in_flight {
            Some(sent) => sent,
            None => {
                write_frame(&mut channel.to_helper, &inputs).map_err(NoAnswer::Gone)?;
                channel.in_flight = Some(inputs.len());
                inputs.len()
            }
        };
        wait_readable(&channel.from_helper, deadline)
            .map_err(NoAnswer::Gone)?
            .then_some(())
            .ok_or(NoAnswer::NotYet(wait))?;
        let answer: Answer = read_frame(&mut channel.from_helper)
            .map_err(NoAnswer::Gone)?
            .ok_or_else(|| NoAnswer::Gone(std::io::ErrorKind::UnexpectedEof.into()))?;
        channel.in_flight = None;
        if answer.outcomes.len() > sent {
            return Err(NoAnswer::Gone(std::io::Error::other(format!(
                "{} answers for {sent} writes",
                answer.outcomes.len()
            ))));
        }
        Ok(Flushed {
            outcomes: answer
                .outcomes
                .into_iter()
                .map(|o| o.map_err(ManifestError::from))
                .collect(),
            error: answer.error.map(FlushError::Helper),
            stats: answer.stats,
        })
    }
}

/// Starts a helper and sends it its [`Setup`].
fn start(spawn: &Spawn, setup: &Setup) -> std::io::Result<Channel> {
    let mut channel = match spawn {
        Spawn::Process(executable) => {
            let mut child = Command::new(executable)
                .env(WRITER_ENV, "1")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // Its log lines go where caje's go.
                .stderr(Stdio::inherit())
                .spawn()?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(std::io::Error::other("the helper's pipes are missing"));
            };
            Channel {
                to_helper: File::from(OwnedFd::from(stdin)),
                from_helper: File::from(OwnedFd::from(stdout)),
                child: Some(child),
                in_flight: None,
            }
        }
        #[cfg(test)]
        Spawn::Thread => {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
            let theirs_out = theirs.try_clone()?;
            std::thread::Builder::new()
                .name("caje-writer-test".into())
                .spawn(move || {
                    if let Err(e) = serve(theirs, theirs_out) {
                        eprintln!("caje manifest writer (test thread): {e}");
                    }
                })?;
            let ours_out = ours.try_clone()?;
            Channel {
                to_helper: File::from(OwnedFd::from(ours)),
                from_helper: File::from(OwnedFd::from(ours_out)),
                child: None,
                in_flight: None,
            }
        }
    };
    write_frame(&mut channel.to_helper, setup)?;
    Ok(channel)
}

/// Waits until `file` has something to read (or its writer is gone) or `deadline` passes:
/// `Ok(false)` on the deadline.
fn wait_readable(file: &File, deadline: Instant) -> std::io::Result<bool> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: file.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        match unsafe { libc::poll(&mut poll, 1, ms) } {
            0 => return Ok(false),
            n if n > 0 => return Ok(true),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::litefs::tests::hold_halt;
    use crate::manifest::row::Record;
    use crate::manifest::test_support::*;
    use crate::manifest::*;

    /// A manifest whose batches go through a writer helper (on a thread: a unit test has no
    /// caje binary), on a plain directory in `litefs = "on"` mode.
    fn through_helper(litefs: LitefsMode) -> ManifestOptions {
        ManifestOptions {
            writer_thread: true,
            ..quick(litefs)
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn batches_written_by_the_helper_answer_every_write_and_count_their_halts() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(&path, through_helper(LitefsMode::On)).unwrap();
            let at_open = m.stats().await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..20 {
                let m = m.clone();
                tasks.spawn(async move {
                    m.upsert(tagged("a.example", &format!("/{i}"), &["t"]))
                        .await
                });
            }
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }
            assert!(m.remove("a.example", "GET", "/0", &[]).await.unwrap());
            let purged = m.purge(Purge::Tag("t".into()), false, 60).await.unwrap();
            assert_eq!(purged.rows.len(), 19);
            let id = m
                .add_tombstone(tombstone(Purge::All, 1000, 2000))
                .await
                .unwrap();
            assert_eq!(id, purged.tombstone_id + 1);
            assert_eq!(m.expire_tombstones(3000).await.unwrap(), 1);
            m.upsert(page("a.example", "/kept")).await.unwrap();
            assert_eq!(m.clear().await.unwrap(), 1);

            let stats = m.stats().await.unwrap();
            // 20 inserts, a remove, 19 purged rows and their tombstone, a tombstone, its
            // expiry, an insert and its clear.
            assert_eq!(
                stats.rows_written,
                20 + 1 + 19 + 1 + 1 + 1 + 1 + 1,
                "{stats:?}"
            );
            assert!(stats.halts > at_open.halts, "{stats:?}");
            assert_eq!(
                stats.halts - at_open.halts,
                stats.write_transactions,
                "{stats:?}"
            );
            assert_eq!((stats.pending, stats.failed_flushes), (0, 0), "{stats:?}");
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    /// A write refused in the helper reaches its caller as the same typed error, with
    /// SQLite's code, and alone: the batch's other writes land.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_refused_in_the_helper_fails_alone_with_its_sqlite_error() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(
                &path,
                ManifestOptions {
                    flush_interval: Duration::from_millis(200),
                    ..through_helper(LitefsMode::Off)
                },
            )
            .unwrap();
            observer(&path)
                .execute_batch(
                    "CREATE TRIGGER refuse BEFORE INSERT ON tombstones
                     WHEN NEW.host = 'bad.example' BEGIN SELECT RAISE(ROLLBACK, 'refused'); END",
                )
                .unwrap();
            let url = |host: &str| Purge::Url {
                host: host.into(),
                path: "/".into(),
            };
            let (bad, good, row) = tokio::join!(
                m.add_tombstone(tombstone(url("bad.example"), 1000, 2000)),
                m.add_tombstone(tombstone(url("good.example"), 1000, 2000)),
                m.upsert(page("a.example", "/1")),
            );
            match bad.unwrap_err() {
                ManifestError::Sqlite {
                    op: Op::AddTombstone,
                    source,
                } => {
                    assert_eq!(
                        source.sqlite_error_code(),
                        Some(rusqlite::ErrorCode::ConstraintViolation),
                        "{source}"
                    );
                    assert!(source.to_string().contains("refused"), "{source}");
                }
                other => panic!("{other:?}"),
            }
            assert!(good.unwrap() > 0);
            assert_eq!(row.unwrap(), Upsert::Inserted);
            assert_eq!(m.tombstones_since(0).await.unwrap().len(), 1);
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    /// HALT held by someone else: the helper waits for it (it never gives an acquisition up),
    /// the owner thread stops waiting for the answer and answers reads meanwhile, and once
    /// HALT is free the late answer is read and the write answered, written once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_helper_waiting_for_halt_keeps_its_batch_while_reads_go_on() {
        bounded(async {
            let dir = replica_dir();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open_with(&path, through_helper(LitefsMode::On)).unwrap();
            m.upsert(page("a.example", "/before")).await.unwrap();

            let lock = hold_halt(&path);
            let writer = {
                let m = m.clone();
                tokio::spawn(async move { m.upsert(page("a.example", "/during")).await })
            };
            let stats = stats_until(&m, |s| s.failed_flushes >= 1).await;
            let error = stats.last_error.unwrap_or_default();
            assert!(error.contains("not answered"), "{error}");
            assert_eq!(paths(&m.list().await.unwrap()), ["/before"]);
            assert!(!writer.is_finished(), "answered without HALT");

            drop(lock);
            assert_eq!(writer.await.unwrap().unwrap(), Upsert::Inserted);
            assert_eq!(paths(&m.list().await.unwrap()), ["/before", "/during"]);
            let stats = m.stats().await.unwrap();
            assert_eq!((stats.pending, stats.rows_written), (0, 2), "{stats:?}");
        })
        .await
    }

    /// A helper that dies without answering (here: an executable that exits at once) fails
    /// the batch as a whole, unanswered; the next attempt starts a new helper, which writes
    /// it.
    #[test]
    fn a_batch_whose_helper_died_is_written_by_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.db");
        drop(Manifest::open(&path).unwrap());
        let mut helper = WriterHelper::new(
            Spawn::Process("/bin/true".into()),
            path.clone(),
            LitefsMode::Off,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let input = WriteInput::Upsert(Record::encode(page("a.example", "/a")).unwrap());
        let died = helper.write(&[&input], Duration::from_secs(5));
        assert!(died.outcomes.is_empty(), "{died:?}");
        let error = died.error.map(|e| e.to_string()).unwrap_or_default();
        assert!(
            error.contains("a new one writes the batch again"),
            "{error}"
        );
        assert!(!helper.in_flight());

        helper.spawn = Spawn::Thread;
        let written = helper.write(&[&input], Duration::from_secs(5));
        assert!(written.error.is_none(), "{written:?}");
        assert!(matches!(
            written.outcomes[..],
            [Ok(WriteOutput::Upsert(Upsert::Inserted))]
        ));
        assert_eq!(written.stats.write_transactions, 1);
    }

    /// caje dies right after sending a batch (end-of-file, and its answer cannot be
    /// delivered): the helper writes the batch all the same, then stops.
    #[test]
    fn the_helper_finishes_its_batch_when_caje_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.db");
        drop(Manifest::open(&path).unwrap());
        let mut frames = Vec::new();
        let setup = Setup {
            path: path.clone(),
            litefs: LitefsMode::Off,
            halt_timeout: Duration::from_secs(1),
            open_timeout: Duration::from_secs(1),
        };
        write_frame(&mut frames, &setup).unwrap();
        let batch: Vec<WriteInput> = ["/a", "/b"]
            .map(|p| WriteInput::Upsert(Record::encode(page("a.example", p)).unwrap()))
            .to_vec();
        write_frame(&mut frames, &batch).unwrap();

        // The answer goes to a writer that fails, as a pipe to a dead process does (EPIPE).
        struct Gone;
        impl Write for Gone {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        serve(&frames[..], Gone).expect("a caje that is gone ends the helper cleanly");
        let rows: i64 = observer(&path)
            .query_row("SELECT count(*) FROM pages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 2, "the batch was not written");

        // With someone to answer: one outcome per write, then a clean end at end-of-file.
        let mut answers = Vec::new();
        serve(&frames[..], &mut answers).unwrap();
        let answer: Answer = read_frame(&mut &answers[..]).unwrap().unwrap();
        let outcomes: Vec<_> = answer.outcomes.into_iter().map(Result::unwrap).collect();
        assert!(
            matches!(
                outcomes[..],
                [
                    WriteOutput::Upsert(Upsert::Unchanged),
                    WriteOutput::Upsert(Upsert::Unchanged)
                ]
            ),
            "{outcomes:?}"
        );
        assert!(answer.error.is_none());
    }
}
