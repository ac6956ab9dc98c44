//! HALT through a helper process, so that the death of the writing process can never cut a
//! HALT acquisition short.
//!
//! # Why
//!
//! LiteFS v0.5.14 handles a HALT request that is abandoned half-way badly. When the handle
//! asking for HALT is closed while LiteFS is acquiring it (the process was killed: its file
//! descriptors are closed, and FUSE's flush cancels the request), LiteFS
//! - tries to release the halt it may already hold on the primary with the *cancelled*
//!   context, which fails (`cannot release remote halt lock after acquisition error: ...
//!   context canceled` in the replica's log), so the primary stays halted until it expires the
//!   halt, 30-35 s later: every write on every node waits 10 s and fails with
//!   `SQLITE_PROTOCOL` meanwhile;
//! - keeps the abandoned halt as the replica's current one; the first transaction the
//!   primary ships after the expiry then deadlocks the replica's replication (the stream
//!   handler holds the database's write lock and, to clear the stale halt, waits for that same
//!   lock): reads on that replica fail with `SQLITE_PROTOCOL` after 10 s and HALT with `EIO`
//!   until that LiteFS node restarts.
//!
//! A process killed with SIGKILL cannot finish or undo its acquisition. A helper process can:
//! HALT is per node (while it is held, any connection on the node may write the database), so
//! the lock may be taken by a helper while the application writes. The helper reads commands
//! on its stdin and answers on its stdout, one request at a time; when the application dies,
//! the helper sees end-of-file only after the request in progress has finished, releases what
//! it holds, and exits. It ignores SIGTERM, SIGINT, SIGHUP and SIGUSR2 for the same reason
//! (a signal to the whole process group must not interrupt an acquisition either).
//!
//! # Protocol (private to this module)
//!
//! `A` → the helper takes HALT (blocking `F_OFD_SETLKW`) and answers `K`, or `E` and the
//! errno as 4 bytes little-endian. `R` → it releases and answers `k`. End-of-file → it
//! releases if it holds, and exits 0.
//!
//! # Use
//!
//! The application runs [`serve_broker`] when it finds [`BROKER_ENV`] in its environment (as
//! the very first thing in `main`), and writes through [`HaltBroker`], which starts the
//! helper from a [`Command`] for the application's own executable.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use crate::database::Database;
use crate::error::{Error, Result, WaitPhase};
use crate::lease::Lease;
use crate::ofd::{self, LockError, LockKind, LockRange};

/// The environment variable that makes a process the HALT helper of the lock file it names.
///
/// The application checks it first thing in `main`:
///
/// ```no_run
/// fn main() -> std::io::Result<()> {
///     if let Some(lock) = std::env::var_os(litefs::BROKER_ENV) {
///         // This process is the helper: serve until the application is gone.
///         return litefs::serve_broker(std::path::Path::new(&lock));
///     }
///     // ... the application itself ...
///     Ok(())
/// }
/// ```
pub const BROKER_ENV: &str = "LITEFS_HALT_BROKER";

/// The helper side: serves HALT requests for `lock_path` (a database's `-lock` file) on
/// stdin/stdout until end-of-file. Blocking; returns when the application is gone.
///
/// ```no_run
/// // In the helper process, started by `HaltBroker::spawn` with `BROKER_ENV` set.
/// let lock = std::env::var_os(litefs::BROKER_ENV).expect("started as the helper");
/// litefs::serve_broker(std::path::Path::new(&lock))?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn serve_broker(lock_path: &Path) -> std::io::Result<()> {
    // The acquisition must finish, whatever signal the group gets; end-of-file stops us.
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR2] {
        // SAFETY: setting a signal to SIG_IGN has no preconditions.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(lock_path)?;
    serve(&file, std::io::stdin().lock(), std::io::stdout().lock())
}

/// The helper's loop on `file` (the open lock file), reading commands from `input`. Whatever
/// ends it (end-of-file, an answer that cannot be written because the application is gone, a
/// read error), a HALT it holds is released first.
fn serve(
    file: &std::fs::File,
    mut input: impl Read,
    mut output: impl Write,
) -> std::io::Result<()> {
    let mut held = false;
    let ended = serve_until_gone(file, &mut input, &mut output, &mut held);
    if held {
        release(file);
    }
    ended
}

fn serve_until_gone(
    file: &std::fs::File,
    input: &mut impl Read,
    output: &mut impl Write,
    held: &mut bool,
) -> std::io::Result<()> {
    let mut command = [0u8; 1];
    loop {
        if input.read(&mut command)? == 0 {
            return Ok(());
        }
        match command[0] {
            b'A' => match ofd::lock_wait(file, LockKind::Write, LockRange::HALT) {
                Ok(_) => {
                    *held = true;
                    output.write_all(b"K")?;
                }
                Err(e) => {
                    let errno = e.errno().unwrap_or(libc::EIO);
                    output.write_all(b"E")?;
                    output.write_all(&errno.to_le_bytes())?;
                }
            },
            b'R' => {
                release(file);
                *held = false;
                output.write_all(b"k")?;
            }
            _ => return Ok(()),
        }
        output.flush()?;
    }
}

/// Attempts at giving a HALT back when LiteFS refuses the release.
const RELEASE_ATTEMPTS: u32 = 3;

/// Releases the HALT `file` holds. A release LiteFS refuses (its local clean-up, a checkpoint,
/// failed, or the primary did not answer) can leave the halt recorded on this replica, or
/// held on the primary, or both: the first wedges replication at the primary's next
/// transaction, the second halts the primary until it expires the halt. Taking HALT again
/// through the same handle asks for the same halt id, which the primary answers as already
/// granted, and releasing that clears both; so a refused release is retried that way a few
/// times, and each failure is reported on stderr (the application's log).
fn release(file: &std::fs::File) {
    for attempt in 1..=RELEASE_ATTEMPTS {
        match ofd::unlock(file, LockRange::HALT) {
            Ok(()) => return,
            Err(e) => {
                eprintln!(
                    "litefs HALT helper: releasing HALT failed (attempt {attempt} of {RELEASE_ATTEMPTS}): {e}"
                );
                if attempt == RELEASE_ATTEMPTS {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                if let Err(e) = ofd::lock_wait(file, LockKind::Write, LockRange::HALT) {
                    eprintln!("litefs HALT helper: taking HALT again to release it failed: {e}");
                }
            }
        }
    }
}

/// A HALT held by the helper: what [`crate::HaltGuard`] is for an in-process lock, without
/// the file. Give it back with [`HaltBroker::release`]; dropping it releases nothing (the
/// helper keeps the lock until the next request or the application's exit).
///
/// ```no_run
/// use std::time::Duration;
///
/// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
/// let me = std::process::Command::new(std::env::current_exe()?);
/// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
/// let halt = broker.acquire(&db, Duration::from_secs(1))?;
/// halt.write(|| { /* BEGIN; INSERT ...; COMMIT; with any SQLite connection */ })?;
/// let held = broker.release(halt)?;
/// assert!(held < Duration::from_secs(30));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```

#[derive(Debug)]
pub struct BrokeredHalt {
    lease: Lease,
    lock_path: PathBuf,
}

impl BrokeredHalt {
    /// How long since the lock was requested.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// assert!(halt.held_for() < Duration::from_secs(30));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn held_for(&self) -> Duration {
        self.lease.elapsed()
    }

    /// [`Error::HaltExpired`] once the lease has run out (see [`crate::HaltGuard::check_lease`]).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// halt.check_lease()?; // still ours: the COMMIT may go
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_lease(&self) -> Result<()> {
        if self.lease.is_expired() {
            return Err(Error::HaltExpired {
                path: self.lock_path.clone(),
                held_for: self.lease.elapsed(),
                lease: self.lease.duration(),
            });
        }
        Ok(())
    }

    /// Runs `f` (a COMMIT) only while the lease lasts, like [`crate::HaltGuard::write`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// let rows = halt.write(|| 1 /* conn.execute("INSERT ...") */)?;
    /// assert_eq!(rows, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn write<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        self.check_lease()?;
        Ok(f())
    }
}

/// The application side: one helper process for one database's lock file.
///
/// ```no_run
/// use std::time::Duration;
///
/// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
/// let me = std::process::Command::new(std::env::current_exe()?);
/// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
/// let halt = broker.acquire(&db, Duration::from_secs(1))?;
/// halt.write(|| { /* COMMIT */ })?;
/// broker.release(halt)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct HaltBroker {
    child: Option<Child>,
    stdin: ChildStdin,
    stdout: ChildStdout,
    lock_path: PathBuf,
    /// An `A` was sent and its answer not read yet (the caller's timeout ran out first).
    late: bool,
    /// A HALT is held by the helper and not released yet.
    held: bool,
}

impl HaltBroker {
    /// Starts the helper: `command` (normally the application's own executable) with
    /// [`BROKER_ENV`] naming `db`'s lock file, stdin and stdout piped. The database must exist
    /// (the helper opens `<db>-lock` without creating it).
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// broker.release(halt)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn spawn(mut command: Command, db: &Database) -> Result<HaltBroker> {
        let lock_path = db.lock_path().to_owned();
        let mut child = command
            .env(BROKER_ENV, &lock_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| Error::io("start the HALT helper for", &lock_path, e))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(Error::WorkerLost);
        };
        Ok(HaltBroker {
            child: Some(child),
            stdin,
            stdout,
            lock_path,
            late: false,
            held: false,
        })
    }

    /// Takes HALT through the helper, waiting at most `timeout`. On a timeout the helper goes
    /// on acquiring; the next call first collects (and releases) that late HALT. An error
    /// other than [`Error::Timeout`] or [`Error::Lock`] means the helper is gone: drop this
    /// broker and spawn a new one.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// broker.release(halt)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn acquire(&mut self, db: &Database, timeout: Duration) -> Result<BrokeredHalt> {
        let deadline = Instant::now() + timeout;
        if self.held {
            // A guard dropped without `release`: give that HALT back first.
            self.release_held()?;
        }
        // The answer to an earlier request that timed out: a late HALT is released at once.
        if self.late && self.answer(deadline, timeout)?.is_ok() {
            self.release_held()?;
        }
        let lease = db.lease_config().start();
        self.send(b'A')?;
        self.late = true;
        self.answer(deadline, timeout)?
            .map_err(|source| Error::Lock {
                path: self.lock_path.clone(),
                source,
            })?;
        Ok(BrokeredHalt {
            lease,
            lock_path: self.lock_path.clone(),
        })
    }

    /// Releases a HALT taken with [`acquire`](HaltBroker::acquire); returns how long it was
    /// held.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// let db = litefs::Mount::open("/litefs")?.database("caje.db")?;
    /// let me = std::process::Command::new(std::env::current_exe()?);
    /// let mut broker = litefs::HaltBroker::spawn(me, &db)?;
    /// let halt = broker.acquire(&db, Duration::from_secs(1))?;
    /// let held = broker.release(halt)?;
    /// println!("HALT held {held:?}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn release(&mut self, halt: BrokeredHalt) -> Result<Duration> {
        let held_for = halt.held_for();
        self.release_held()?;
        Ok(held_for)
    }

    fn release_held(&mut self) -> Result<()> {
        self.send(b'R')?;
        let mut reply = [0u8; 1];
        self.stdout
            .read_exact(&mut reply)
            .map_err(|e| Error::io("read the HALT helper's answer for", &self.lock_path, e))?;
        self.held = false;
        if reply[0] != b'k' {
            return Err(Error::WorkerLost);
        }
        Ok(())
    }

    fn send(&mut self, command: u8) -> Result<()> {
        self.stdin
            .write_all(&[command])
            .and_then(|()| self.stdin.flush())
            .map_err(|e| Error::io("write to the HALT helper for", &self.lock_path, e))
    }

    /// The answer to the outstanding `A`: `Ok(Ok)` acquired, `Ok(Err)` refused by the lock
    /// call, `Err(Timeout)` not yet by `deadline`.
    fn answer(
        &mut self,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<std::result::Result<(), LockError>> {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, ms) };
        if ready == 0 {
            return Err(Error::Timeout {
                phase: WaitPhase::Lock,
                after: timeout,
            });
        }
        let io = |e| Error::io("read the HALT helper's answer for", &self.lock_path, e);
        if ready < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        let mut reply = [0u8; 1];
        self.stdout.read_exact(&mut reply).map_err(io)?;
        self.late = false;
        match reply[0] {
            b'K' => {
                self.held = true;
                Ok(Ok(()))
            }
            b'E' => {
                let mut errno = [0u8; 4];
                self.stdout.read_exact(&mut errno).map_err(io)?;
                Ok(Err(LockError::from_errno(i32::from_le_bytes(errno))))
            }
            _ => Err(Error::WorkerLost),
        }
    }
}

impl Drop for HaltBroker {
    /// Closing stdin tells the helper to finish what it is doing, release, and exit; it is
    /// never killed (that would be the very interruption it exists to prevent). Its exit is
    /// collected on a detached thread so it does not stay a zombie.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = std::thread::Builder::new()
                .name("litefs-halt-reap".into())
                .spawn(move || {
                    let _ = child.wait();
                });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Whether another open file description can take the HALT byte right now.
    fn free(path: &Path) -> bool {
        let other = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let ok = ofd::try_lock(&other, LockKind::Write, LockRange::HALT).is_ok();
        if ok {
            ofd::unlock(&other, LockRange::HALT).unwrap();
        }
        ok
    }

    /// The helper's protocol on a plain file (a real OFD lock): `A` takes the byte, `R` gives
    /// it back, and end-of-file while it is held releases it: what a dead application leaves.
    #[test]
    fn the_helper_takes_releases_and_lets_go_at_end_of_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db-lock");
        std::fs::write(&path, b"").unwrap();
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        // Kept open here too: only an explicit unlock can free the byte, not the close.
        let file = std::sync::Arc::new(file);
        let helper_file = std::sync::Arc::clone(&file);
        let (mut app, helper) = UnixStream::pair().unwrap();
        let served = std::thread::spawn(move || {
            let output = helper.try_clone().unwrap();
            serve(&helper_file, helper, output)
        });
        let mut reply = [0u8; 1];

        app.write_all(b"A").unwrap();
        app.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"K");
        assert!(!free(&path), "taken by the helper");
        app.write_all(b"R").unwrap();
        app.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"k");
        assert!(free(&path), "released on R");

        app.write_all(b"A").unwrap();
        app.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"K");
        // The application dies while the helper holds the byte.
        app.shutdown(std::net::Shutdown::Write).unwrap();
        served.join().unwrap().unwrap();
        assert!(free(&path), "released at end-of-file");
        drop(file);
    }

    /// The application dies between asking for HALT and reading the answer: the helper cannot
    /// write its answer, and must still give the HALT back.
    #[test]
    fn the_helper_releases_when_its_answer_cannot_be_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.db-lock");
        std::fs::write(&path, b"").unwrap();
        let file = std::sync::Arc::new(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap(),
        );
        let helper_file = std::sync::Arc::clone(&file);
        let (mut app, helper) = UnixStream::pair().unwrap();
        let input = helper.try_clone().unwrap();
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
        app.write_all(b"A").unwrap();
        let ended = serve(&helper_file, input, Gone);
        assert!(ended.is_err(), "{ended:?}");
        assert!(free(&path), "HALT kept after the application vanished");
        drop((file, helper));
    }
}
