//! Graceful binary upgrade (SIGUSR2, as in nginx): the running caje starts its binary again,
//! hands it the listening socket, and leaves once the new process serves.
//!
//! The hand-over, with the old process `O` and the new one `N`:
//!
//! 1. `O` writes a fresh index snapshot (`cache_dir/index.snapshot`, atomically, while it
//!    goes on serving), then starts `N` from `argv[0]` (so a binary replaced on disk is the
//!    one that runs) with the same arguments, the listening socket's fd in `CAJE_LISTEN_FD`
//!    and the write end of a pipe in `CAJE_UPGRADE_FD`. `O` keeps accepting.
//! 2. `N` loads and checks its configuration, loads the cache index from that snapshot
//!    (without the lock, deleting nothing; without a usable snapshot it reads every entry's
//!    header instead) and writes [`PREPARED`]: all it still needs is the cache directory,
//!    which `O` holds locked.
//! 3. `O` stops accepting (new connections wait in the socket's accept queue, which both
//!    hold), lets its open connections finish their current request, and releases the store
//!    lock. Its in-flight requests, long streams included, go on with the files they have
//!    open.
//! 4. `N` takes the lock and starts checking the directory against the snapshot in the
//!    background (what `O` stored, replaced or removed since it was written; deleting no
//!    temp file `O` may still be writing), or, after a read of every header, reads again the
//!    shard directories that changed since; it opens the manifest, applies the purges other
//!    nodes recorded, writes [`READY`] and starts accepting.
//! 5. `O` drains (bounded by `server.shutdown_grace_ms`) and exits 0. Fills of its drain
//!    that commit after `N` took the lock are not in `N`'s index (the next start finds them).
//!
//! If `N` exits, or stays silent past `server.upgrade_timeout_ms` in step 2 or 4, `O` kills
//! it, takes the lock back and goes on accepting: a bad configuration or a crash at start
//! costs nothing but a log line.
//!
//! Between steps 3 and 4 nobody accepts; that pause (the catch-up of step 4) is seen by
//! clients as latency, not as errors.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::listen::{set_cloexec, LISTEN_FD_ENV};

/// The variable naming the pipe the new process reports on.
pub const UPGRADE_FD_ENV: &str = "CAJE_UPGRADE_FD";

/// Byte the new process writes once its configuration is loaded and it needs the store.
pub const PREPARED: u8 = b'P';
/// Byte the new process writes once it is about to accept.
pub const READY: u8 = b'R';

/// Why an upgrade did not happen.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The new process could not be started.
    #[error("cannot start {exe}: {source}")]
    Spawn {
        /// What was executed.
        exe: String,
        /// The error.
        source: std::io::Error,
    },
    /// The new process ended before it was ready.
    #[error("the new process (pid {pid}) exited before it was {phase}: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// What it had not reached yet.
        phase: &'static str,
        /// How it ended.
        status: String,
    },
    /// The new process did not report in time; it was killed.
    #[error("the new process (pid {pid}) was not {phase} within {timeout:?}; killed it")]
    Timeout {
        /// Its pid.
        pid: u32,
        /// What it had not reached.
        phase: &'static str,
        /// How long it had.
        timeout: Duration,
    },
}

/// The new process, as the old one sees it.
pub struct Successor {
    child: Option<Child>,
    pid: u32,
    reports: mpsc::UnboundedReceiver<u8>,
}

impl Successor {
    /// Starts the binary again with this process's arguments, handing it `listener`.
    pub fn spawn(listener: RawFd) -> Result<Successor, UpgradeError> {
        let mut args = std::env::args_os();
        // argv[0], not /proc/self/exe: after a new build is installed over the old path,
        // /proc/self/exe still names the old (deleted) file.
        let exe = args.next().unwrap_or_else(|| "caje".into());
        let spawn_err = |source| UpgradeError::Spawn {
            exe: exe.to_string_lossy().into_owned(),
            source,
        };
        let (read, write) = pipe().map_err(spawn_err)?;
        let write_fd = write.as_raw_fd();
        let mut cmd = Command::new(&exe);
        cmd.args(args)
            .env(LISTEN_FD_ENV, listener.to_string())
            .env(UPGRADE_FD_ENV, write_fd.to_string())
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        // SAFETY: the closure runs between fork and exec and only calls fcntl, which is
        // async-signal-safe; it clears close-on-exec on the two fds the new process inherits.
        unsafe {
            cmd.pre_exec(move || {
                set_cloexec(listener, false)?;
                set_cloexec(write_fd, false)
            });
        }
        let child = cmd.spawn().map_err(spawn_err)?;
        // Only the child may hold the write end: its exit must end the pipe.
        drop(write);
        let pid = child.id();
        let (tx, reports) = mpsc::unbounded_channel();
        let mut read = File::from(read);
        // A blocking read on its own thread: the pipe carries two bytes in its life.
        std::thread::Builder::new()
            .name("caje-upgrade".into())
            .spawn(move || {
                let mut byte = [0u8; 1];
                while let Ok(1) = read.read(&mut byte) {
                    if tx.send(byte[0]).is_err() {
                        break;
                    }
                }
            })
            .map_err(spawn_err)?;
        Ok(Successor {
            child: Some(child),
            pid,
            reports,
        })
    }

    /// The new process's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits until the new process has loaded its configuration and needs the store.
    pub async fn prepared(&mut self, timeout: Duration) -> Result<(), UpgradeError> {
        self.wait_for(PREPARED, "prepared", timeout).await
    }

    /// Waits until the new process is about to accept. On success the process is left to run
    /// on its own (it outlives this one).
    pub async fn ready(mut self, timeout: Duration) -> Result<u32, UpgradeError> {
        self.wait_for(READY, "ready", timeout).await?;
        // Dropping a `Child` neither kills nor waits for it.
        self.child.take();
        Ok(self.pid)
    }

    async fn wait_for(
        &mut self,
        want: u8,
        phase: &'static str,
        timeout: Duration,
    ) -> Result<(), UpgradeError> {
        let got = tokio::time::timeout(timeout, async {
            loop {
                match self.reports.recv().await {
                    Some(b) if b == want => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await;
        match got {
            Ok(true) => Ok(()),
            Ok(false) => {
                let status = self.reap(false).await;
                Err(UpgradeError::Exited {
                    pid: self.pid,
                    phase,
                    status,
                })
            }
            Err(_) => {
                self.reap(true).await;
                Err(UpgradeError::Timeout {
                    pid: self.pid,
                    phase,
                    timeout,
                })
            }
        }
    }

    /// Kills (if asked) and waits for the child, so that it leaves no zombie and releases the
    /// store lock before this process takes it back.
    async fn reap(&mut self, kill: bool) -> String {
        let Some(mut child) = self.child.take() else {
            return "unknown".into();
        };
        if kill {
            let _ = child.kill();
        }
        let waited = tokio::task::spawn_blocking(move || child.wait()).await;
        match waited {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => format!("cannot wait for it: {e}"),
            Err(e) => format!("cannot wait for it: {e}"),
        }
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        // A successor abandoned before it was ready must not go on to serve beside us.
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two fds into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The old process, as the new one sees it: where to report progress.
pub struct Predecessor {
    pipe: File,
}

impl Predecessor {
    /// The pipe named by `CAJE_UPGRADE_FD`, if this process was started by an upgrade.
    /// Removes the variable. Call once, at start-up, before any other thread exists.
    pub fn take_from_env() -> Option<Predecessor> {
        let fd = std::env::var(UPGRADE_FD_ENV).ok()?;
        std::env::remove_var(UPGRADE_FD_ENV);
        let fd: RawFd = fd.parse().ok()?;
        // Not ours to own unless it is open; it must not leak into processes we start.
        set_cloexec(fd, true).ok()?;
        // SAFETY: the old process passed this fd to this process for its own use, it is open
        // (checked by fcntl above), and nothing else here refers to it.
        let pipe = unsafe { File::from_raw_fd(fd) };
        Some(Predecessor { pipe })
    }

    /// A second handle on the same pipe.
    pub fn try_clone(&self) -> std::io::Result<Predecessor> {
        Ok(Predecessor {
            pipe: self.pipe.try_clone()?,
        })
    }

    /// Tells the old process that this one needs the store now.
    pub fn prepared(&mut self) -> std::io::Result<()> {
        self.pipe.write_all(&[PREPARED])
    }

    /// Tells the old process that this one is about to accept; it may leave.
    pub fn ready(mut self) -> std::io::Result<()> {
        self.pipe.write_all(&[READY])
    }
}
