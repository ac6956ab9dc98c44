//! A Rust client for [LiteFS](https://fly.io/docs/litefs/): write from any node with HALT, know
//! who the primary is, and give clients read-your-writes consistency.
//!
//! LiteFS replicates SQLite databases from one primary to read-only replicas. A replica can
//! still write by taking **HALT**, a lock on `<db>-lock` that makes the primary pause its
//! writers while the replica's commits are shipped to it. This crate wraps HALT in an RAII
//! guard that is hard to misuse (no `O_CREAT`, no duplicated descriptor, `EINTR` retried,
//! typed errors, timeouts, async without blocking the runtime) and adds the rest of a LiteFS
//! client: mount and role detection, TXID reading and waiting, the HTTP API with a
//! reconnecting event stream, and consistency cookies.
//!
//! # Example: a write that works on the primary and on replicas
//!
//! ```
//! use std::time::Duration;
//! use litefs::Mount;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! // On a LiteFS node: `Mount::from_env()?` ($LITEFS_DIR, default /litefs).
//! // Here a plain directory stands in; the same code then takes a local lock.
//! let mount = Mount::open(dir.path())?;
//! let db = mount.database("app.db")?;
//! # rusqlite::Connection::open(db.path())?.execute_batch("CREATE TABLE hits (path TEXT)")?;
//!
//! let mut conn = rusqlite::Connection::open(db.path())?;
//! // The primary's writers wait while a replica holds HALT: give SQLite room.
//! conn.busy_timeout(Duration::from_secs(5))?;
//!
//! // Take HALT *before* BEGIN, keep it short, batch the rows into one transaction.
//! let halt = db.halt_timeout(Duration::from_secs(12))?;
//! let tx = conn.transaction()?;
//! for path in ["/a", "/b", "/c"] {
//!     tx.execute("INSERT INTO hits (path) VALUES (?1)", [path])?;
//! }
//! tx.commit()?; // on a replica, COMMIT returns once the primary has applied it
//! println!("wrote under a {:?} HALT", halt.kind());
//! halt.release()?;
//!
//! let count: i64 = conn.query_row("SELECT count(*) FROM hits", [], |r| r.get(0))?;
//! assert_eq!(count, 3);
//! # Ok(()) }
//! ```
//!
//! # What you need to know about HALT
//!
//! - The database must already exist on the node (create it on the primary).
//! - LiteFS gives up an acquisition after 10 s (`EIO`) and expires a held HALT after 30 s
//!   without telling the replica. A guard therefore trusts itself for a shorter lease
//!   ([`DEFAULT_HALT_LEASE`], on an injectable [`Clock`]): afterwards [`HaltGuard::is_held`]
//!   is `false` and [`HaltGuard::write`] refuses with [`Error::HaltExpired`]. Keep halts in
//!   milliseconds.
//! - One HALT per database at a time in a process: this crate queues them
//!   ([`WaitPhase::ProcessQueue`]), because LiteFS makes a second handle fail after 10 s.
//! - Closing any copy of the lock descriptor releases HALT; the guard never exposes it. Do not
//!   spawn child processes while holding a guard.
//! - If the primary changes while halted, commits fail (`EIO`, then `EACCES`): drop the guard,
//!   re-check the role and retry ([`RetryPolicy`]).
//! - On the primary, HALT is a successful no-op ([`HaltKind::Primary`]), so the same code
//!   runs everywhere.
//!
//! # Without LiteFS
//!
//! On a plain directory (a laptop, CI) everything still works and degrades predictably:
//! the node is its own primary ([`Role::Primary`]) unless a `.primary` file exists, HALT is a
//! real OFD lock on `<db>-lock` ([`HaltKind::Local`]) so several local processes sharing the
//! file are still serialised, [`Database::pos`] fails with [`Error::PosUnavailable`] unless a
//! `-pos` file exists, and [`Mount::open_as_litefs`] lets tests simulate a node with files.
//!
//! # Features
//!
//! - `tokio`: `Database::halt_async`, `wait_for_txid_async`, `watch_pos`,
//!   `check_consistency_async`.
//! - `http` (implies `tokio`): the `http` module — `/info`, `/events`, `/promote` and
//!   `PrimaryMonitor`.
//!
//! # Platform
//!
//! OFD locks and mount detection are Linux-only (LiteFS is too). Elsewhere the crate compiles,
//! file parsing works, and lock operations fail with [`Error::UnsupportedPlatform`] /
//! [`ofd::LockError::UnsupportedPlatform`].
//!
//! # Layout
//!
//! - [`ofd`]: raw OFD lock calls over any descriptor.
//! - `mount` / `database`: [`Mount`], [`Role`], [`Database`], paths, `-pos`, `.lag`, `.primary`.
//! - `halt`: [`HaltGuard`], [`HaltKind`]; `lease`: [`Clock`], [`ManualClock`], the lease
//!   constants; `retry`: [`RetryPolicy`]; `coordinator` queues HALTs in-process.
//! - `nonblocking`: the async entry points (feature `tokio`).
//! - `consistency`: cookies, `fly-replay`, [`check_consistency`].
//! - `http`: the HTTP API client (feature `http`).
#![deny(missing_docs)]

#[cfg(target_os = "linux")]
mod broker;
mod consistency;
mod coordinator;
mod database;
mod error;
mod halt;
mod lag;
mod lease;
mod mount;
mod mountinfo;
#[cfg(feature = "tokio")]
mod nonblocking;
pub mod ofd;
mod pos;
mod retry;

#[cfg(feature = "http")]
pub mod http;

#[cfg(target_os = "linux")]
pub use broker::{serve_broker, BrokeredHalt, HaltBroker, BROKER_ENV};
#[cfg(feature = "tokio")]
pub use consistency::check_consistency_async;
pub use consistency::{
    check_consistency, fly_replay_value, txid_from_cookie_header, txid_set_cookie,
    txnum_set_cookie, Consistency, FLY_REPLAY, TXID_COOKIE, TXNUM_COOKIE,
};
pub use database::Database;
pub use error::{Error, ParseError, Result, WaitPhase};
pub use halt::{HaltGuard, HaltKind, HALT_ACQUIRE_LIMIT, HALT_LIFETIME};
#[cfg(feature = "http")]
pub use http::PrimaryMonitor;
pub use lag::Lag;
pub use lease::{Clock, ManualClock, MonotonicClock, DEFAULT_HALT_LEASE, HALT_SAFETY_MARGIN};
pub use mount::{Mount, Role, DEFAULT_DIR, DIR_ENV};
pub use pos::{Pos, Txid};
pub use retry::RetryPolicy;
