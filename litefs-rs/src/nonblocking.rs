//! Async entry points (feature `tokio`): HALT, TXID waits and `-pos` watching that never block
//! a runtime worker.
//!
//! Blocking work goes elsewhere: the HALT `fcntl` runs on a dedicated thread per acquisition
//! (so a long LiteFS wait never occupies tokio's blocking pool), and reads of `-pos` go
//! through `spawn_blocking` (on LiteFS each read is a round trip to the FUSE daemon).

use std::ops::ControlFlow;
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::coordinator;
use crate::database::{Database, TxidWait};
use crate::error::{Error, Result, WaitPhase};
use crate::halt::{self, HaltGuard};
use crate::pos::{Pos, Txid};
use crate::retry::RetryPolicy;

impl Database {
    /// Acquires HALT without blocking the runtime, giving up with [`Error::Timeout`] after
    /// `timeout`.
    ///
    /// First waits (asynchronously) for other HALTs of this database in this process — LiteFS
    /// allows one per handle and makes a second handle fail after 10 s — then runs the blocking
    /// lock call on a dedicated thread. Cancel-safe: if the future is dropped or times out and
    /// the lock is granted later, the thread releases it immediately.
    ///
    /// The guard is `Send`: move it into `spawn_blocking` together with the SQLite work.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> litefs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// let db = litefs::Mount::open(dir.path())?.database("x.db")?;
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt_async(std::time::Duration::from_secs(5)).await?;
    /// tokio::task::spawn_blocking(move || {
    ///     // ... write with SQLite ...
    ///     guard.release()
    /// })
    /// .await
    /// .expect("write task")?;
    /// # Ok(()) }
    /// ```
    pub async fn halt_async(&self, timeout: Duration) -> Result<HaltGuard> {
        // `timeout_at` with a deadline far in the future is fine; an overflow means "forever".
        let deadline = Instant::now().checked_add(timeout);
        let slot = coordinator::slot_for(self.lock_path());
        let permit = match deadline {
            Some(d) => tokio::time::timeout_at(d, slot.acquire()).await.ok(),
            None => Some(slot.acquire().await),
        }
        .ok_or(Error::Timeout {
            phase: WaitPhase::ProcessQueue,
            after: timeout,
        })?;

        let (tx, rx) = oneshot::channel();
        halt::spawn_acquire(halt::Request::new(self), permit, move |result| {
            // Err means the future is gone: the guard is dropped here, releasing the lock.
            let _ = tx.send(result);
        })?;
        let received = match deadline {
            Some(d) => tokio::time::timeout_at(d, rx)
                .await
                .map_err(|_| Error::Timeout {
                    phase: WaitPhase::Lock,
                    after: timeout,
                })?,
            None => rx.await,
        };
        received.unwrap_or(Err(Error::WorkerLost))
    }

    /// [`Database::halt_async`] with retries of retryable failures, as `policy` says. Each
    /// attempt is bounded by the policy's attempt timeout, or by `HALT_ACQUIRE_LIMIT` + 2 s if
    /// it has none.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> litefs::Result<()> {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path())?.database("x.db")?;
    /// # std::fs::write(db.path(), b"").unwrap();
    /// let guard = db.halt_async_with_retry(&litefs::RetryPolicy::default()).await?;
    /// # drop(guard); Ok(()) }
    /// ```
    pub async fn halt_async_with_retry(&self, policy: &RetryPolicy) -> Result<HaltGuard> {
        let per_attempt = policy
            .attempt_timeout()
            .unwrap_or(halt::HALT_ACQUIRE_LIMIT + Duration::from_secs(2));
        let mut retry = 0;
        loop {
            match self.halt_async(per_attempt).await {
                Err(e) if e.is_retryable() && retry + 1 < policy.max_attempts() => {
                    retry += 1;
                    tokio::time::sleep(policy.backoff(retry)).await;
                }
                other => return other,
            }
        }
    }

    /// Reads [`Database::pos`] on the blocking pool.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// assert!(db.pos_async().await.is_err()); // no -pos on a plain directory
    /// # }
    /// ```
    pub async fn pos_async(&self) -> Result<Pos> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || db.pos())
            .await
            .unwrap_or(Err(Error::WorkerLost))
    }

    /// Waits until the database has applied `min`, without blocking the runtime. Same
    /// contract as [`Database::wait_for_txid`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// std::fs::write(db.pos_path(), "0000000000000002/0000000000000000\n").unwrap();
    /// let pos = db.wait_for_txid_async(2.into(), Duration::from_millis(50)).await.unwrap();
    /// assert_eq!(pos.txid().get(), 2);
    /// # }
    /// ```
    pub async fn wait_for_txid_async(&self, min: Txid, timeout: Duration) -> Result<Pos> {
        let start = Instant::now();
        let mut wait = TxidWait::new(min, timeout);
        loop {
            match wait.step(self.pos_async().await?, start.elapsed()) {
                ControlFlow::Break(done) => return done,
                ControlFlow::Continue(pause) => tokio::time::sleep(pause).await,
            }
        }
    }

    /// Watches `-pos`: a background task reads it every `interval` and publishes changes
    /// (`None` while it is missing or unreadable). The task stops at its next tick once every
    /// receiver is dropped. Must be called within a tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # let dir = tempfile::tempdir().unwrap();
    /// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
    /// let mut rx = db.watch_pos(Duration::from_millis(5));
    /// std::fs::write(db.pos_path(), "0000000000000001/0000000000000000\n").unwrap();
    /// rx.wait_for(|p| p.is_some()).await.unwrap();
    /// # }
    /// ```
    pub fn watch_pos(&self, interval: Duration) -> watch::Receiver<Option<Pos>> {
        let (tx, rx) = watch::channel(None);
        let db = self.clone();
        let interval = interval.max(Duration::from_millis(1));
        tokio::spawn(async move {
            while !tx.is_closed() {
                let pos = db.pos_async().await.ok();
                tx.send_if_modified(|current| {
                    let changed = *current != pos;
                    *current = pos;
                    changed
                });
                tokio::time::sleep(interval).await;
            }
        });
        rx
    }
}
