//! The manifest: one SQLite row per cached page.
//!
//! Cached bodies live on local disk; the manifest records *which* pages are cached, so that a
//! restarted node, an admin listing or (through LiteFS replication) another node can know what
//! exists without walking the cache directory. Several caje processes may share one file: locally
//! they open the same path, in production LiteFS replicates it to every node.
//!
//! # Layout
//! - [`Manifest`] is a cheap-clone handle. `rusqlite::Connection` is blocking, so it never touches
//!   the async runtime: it lives on one owner thread (`caje-manifest`), and the handle sends it
//!   commands over a channel and awaits the reply on a oneshot.
//! - Reads run as single statements outside any write transaction, so no read transaction is
//!   held open across a channel wait (a long reader would stop WAL checkpoints for every process)
//!   or across a HALT acquisition. They see committed rows, not writes still queued.
//!
//! # Files
//! - `mod.rs`: the options and row types;
//! - `handle.rs`: the [`Manifest`] handle: opening, and every call, sent to the owner thread;
//! - `stats.rs`: [`ManifestStats`], and the rate limit of repeated warnings;
//! - `error.rs`: [`ManifestError`] and [`Op`];
//! - `owner.rs`: the owner thread: its queue, batching, flush policy, retries and backoff,
//!   and the reads;
//! - `batch.rs`: one batch in one transaction under HALT: the only code that writes;
//! - `write.rs`: one write's input and output, and how it runs inside a batch transaction;
//! - `writer.rs`: the writer helper process that runs the batches on a real LiteFS mount;
//! - `schema.rs`: opening a file, checking that it is a manifest, [`MIGRATIONS`];
//! - `row.rs`: a [`PageRow`] in its stored form (vary and tag encoding) and the page SQL;
//! - `tombstone.rs`: [`Purge`] targets and their [`Tombstone`]s;
//! - `litefs.rs`: the LiteFS glue (role, HALT), the only module that names litefs-rs.
//!
//! # Writes: queued, batched, retried
//! - Every write (upsert, remove, purge, tombstones, clear) joins the owner thread's queue and is
//!   answered once its batch commits. A batch is flushed when its oldest write has waited
//!   [`ManifestOptions::flush_interval`], or at once when [`ManifestOptions::max_batch`] writes
//!   wait, in one transaction opened by `BatchWriter::write` (`batch.rs`): after `open`, the
//!   only code that writes. A burst of cache fills costs one commit (and one HALT), not one
//!   per page.
//! - A flush that fails as a whole (HALT refused or timed out, `SQLITE_BUSY` beyond the busy
//!   timeout, an I/O error, a read-only file) keeps every write of its batch queued and is
//!   retried with capped exponential backoff; callers simply wait longer (in caje they are
//!   background tasks, never client requests). Reads are answered between attempts. Only an
//!   error of one write (a constraint) fails that write alone; if it aborted the whole
//!   transaction, the batch is replayed one write per transaction to single it out.
//! - The queue is bounded ([`ManifestOptions::max_queue`]): beyond it a new write fails at once
//!   with [`ManifestError::QueueFull`] and is counted in [`ManifestStats::overflow`]. A queued
//!   write is never dropped while the process lives (the owner thread keeps retrying even after
//!   the last handle is gone).
//! - An upsert identical to its stored row is answered without any write (or HALT).
//!
//! # LiteFS
//! [`LitefsMode`] decides whether the manifest is written the LiteFS way: `on` treats the
//! database's directory as a LiteFS mount even if it is a plain one (tests, local clusters
//! simulated with `.primary` files), `auto` (the default) only when it really is a LiteFS FUSE
//! mount, `off` never. In LiteFS mode the role is re-read before every flush (so `.primary`
//! appearing or disappearing is picked up): on a replica, or when no primary is known, HALT is
//! taken *before* `BEGIN IMMEDIATE` and released after the commit or rollback; on the primary
//! the batch is written directly. Each `COMMIT` under HALT runs only while the HALT's lease
//! lasts (litefs-rs's `HaltGuard::write`; LiteFS expires a HALT after 30 s without telling the
//! replica): past it the transaction is rolled back and the batch stays queued for a new HALT.
//! [`ManifestStats::halt_max_held_ms`] records the longest HALT. Opening a manifest that needs a
//! write (a new file, a migration) on a replica takes HALT too, or fails with
//! [`ManifestError::Halt`]. Outside LiteFS
//! mode writes rely on SQLite's own locking, so several local processes can share one file.
//!
//! On a real LiteFS (FUSE) mount, when [`ManifestOptions::halt_helper`] names caje's binary,
//! the batches (HALT, transaction, `COMMIT`, release) run in a writer helper process
//! (`writer.rs`), on the primary too, so that a kill -9 of caje never interrupts a `COMMIT` (on
//! a replica LiteFS exits then) or a HALT acquisition (the primary stays halted). The owner
//! thread keeps the queue, the batching and the reads, and sends each batch's inputs to the
//! helper, which runs the same `batch.rs` code and answers each write's outcome.
//!
//! # Vary encoding
//! A page's identity includes the request headers its response's `Vary` names. In [`PageRow`]
//! they are `(lower-case name, value)` pairs; a header named by `Vary` but absent from the
//! request has the value [`VARY_ABSENT`] (a lone NUL, which RFC 9110 §5.5 forbids in a field
//! value, so it cannot collide with a real one). In the database the pairs are stored in the
//! `vary` TEXT column as compact JSON, sorted by name then value, with `null` for an absent
//! header: `[["accept-encoding","gzip"],["x-tenant",null]]`, and `[]` when there is no `Vary`.
//! That text is part of the `UNIQUE` key, so it must be canonical: the manifest itself
//! lower-cases names and sorts pairs before storing, and [`Manifest::list`] returns that form.
//!
//! # Purge tags
//! [`PageRow::tags`] are the page's purge tags (its response's `Surrogate-Key`): case-sensitive
//! tokens without whitespace. The `tags` column stores the set as one space-separated string,
//! sorted, deduplicated, with a space before and after every tag, `' a b c '`, and `''` for none.
//! Then "carries tag `t`" is `instr(tags, ' t ') > 0`: exact (`a` never matches `ab`), needs no
//! index table, and has no wildcard characters to escape (unlike `LIKE`).
//!
//! # Purges and tombstones
//! [`Manifest::purge`] removes (or, when soft, only selects) the rows of a [`Purge`] target and
//! records a [`Tombstone`] for it in the same transaction, so that other nodes, reading
//! [`Manifest::tombstones_since`] from the replicated file, learn of every purge whose rows
//! vanished. Tombstone ids only grow (`AUTOINCREMENT`), even after
//! [`Manifest::expire_tombstones`] deleted the newest ones, so "every id above the last one I
//! applied" is a sound cursor.
//!
//! # Schema
//! Versioned by `PRAGMA user_version` with the append-only [`MIGRATIONS`] list; the file is
//! marked with `PRAGMA application_id` = [`APPLICATION_ID`] so that a random SQLite file is never
//! adopted (and silently modified) as a manifest.

mod batch;
mod error;
mod handle;
mod list;
mod litefs;
mod owner;
mod row;
mod schema;
mod stats;
#[cfg(test)]
mod test_support;
mod tombstone;
mod write;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use self::error::{ManifestError, Op};
pub use self::handle::Manifest;
pub use self::list::{Cursor, ListPage, ListQuery};
pub use self::litefs::{LitefsMode, ManifestRole};
pub use self::row::PurgeGuard;
pub use self::schema::{APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION};
pub use self::stats::ManifestStats;
pub use self::tombstone::{Purge, PurgeOutcome, Tombstone, TombstoneKind, TombstoneLog};
pub use self::writer::{serve_writer, WRITER_ENV};

// The LiteFS glue is the only module that names litefs-rs; the others take its types from here.
use self::handle::Shared;
use self::litefs::{Database, HaltGuard, LitefsError};

/// `d` in whole milliseconds, saturating.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The value recorded in [`PageRow::vary`] for a header that `Vary` names but the request lacks.
///
/// It differs from the empty string, which is a header sent with an empty value.
pub const VARY_ABSENT: &str = "\0";

/// How [`Manifest::open_with`] opens and writes the manifest. `Default` gives the values below.
#[derive(Clone)]
pub struct ManifestOptions {
    /// LiteFS detection. Default [`LitefsMode::Auto`].
    pub litefs: LitefsMode,
    /// Longest a write waits for others to share its transaction. Default 100 ms. Zero writes as
    /// soon as the owner thread is free, batching only what has already arrived.
    pub flush_interval: Duration,
    /// Most writes in one transaction; a full batch is flushed without waiting. Default 512
    /// (at least 1).
    pub max_batch: usize,
    /// Most writes waiting (queued, or in a batch being written) before a new one fails with
    /// [`ManifestError::QueueFull`]. Default 100,000 (at least 1).
    pub max_queue: usize,
    /// Longest wait for HALT before a flush counts as failed and is retried later. Default 10 s,
    /// LiteFS's own acquisition limit. The owner thread (reads included) waits this long at
    /// most per attempt. With the writer helper, the owner thread waits this long plus 1 s
    /// for the helper's answer to a batch (the helper itself never gives up an acquisition;
    /// a late answer is read at the next attempt).
    pub halt_timeout: Duration,
    /// Cap of the backoff between attempts of a failing flush (which starts at 100 ms and
    /// doubles). Default 5 s.
    pub retry_max_backoff: Duration,
    /// How long [`Manifest::open_with`] goes on retrying transient failures on a LiteFS mount
    /// (a primary halted by a HALT whose holder died, a replica catching up) before it gives
    /// up. Default 60 s: LiteFS keeps a stuck HALT 30-35 s.
    pub open_timeout: Duration,
    /// The executable to run as the writer helper on a real LiteFS mount (caje's own binary,
    /// which serves it when it finds [`WRITER_ENV`]); `None` writes (HALT and COMMIT) in this
    /// process. See `writer.rs` for why.
    pub halt_helper: Option<std::path::PathBuf>,
    /// Test hook: run the writer helper on a thread of this process even on a plain directory
    /// (unit tests have no caje binary to start).
    #[cfg(test)]
    pub(crate) writer_thread: bool,
    /// Test hook, called inside every write transaction after its writes and before `COMMIT`
    /// (on the owner thread, so it must not call the manifest).
    #[doc(hidden)]
    pub on_flush: Option<Arc<dyn Fn() + Send + Sync>>,
    /// Test hook: the clock HALT leases are counted on, instead of the monotonic clock, so a
    /// test can make a lease run out in the middle of a flush.
    #[cfg(test)]
    pub(crate) halt_clock: Option<self::litefs::ManualClock>,
}

impl Default for ManifestOptions {
    fn default() -> Self {
        ManifestOptions {
            litefs: LitefsMode::Auto,
            flush_interval: Duration::from_millis(100),
            max_batch: 512,
            max_queue: 100_000,
            halt_timeout: Duration::from_secs(10),
            retry_max_backoff: Duration::from_secs(5),
            open_timeout: Duration::from_secs(60),
            halt_helper: None,
            on_flush: None,
            #[cfg(test)]
            writer_thread: false,
            #[cfg(test)]
            halt_clock: None,
        }
    }
}

impl fmt::Debug for ManifestOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManifestOptions")
            .field("litefs", &self.litefs)
            .field("flush_interval", &self.flush_interval)
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .field("halt_timeout", &self.halt_timeout)
            .field("retry_max_backoff", &self.retry_max_backoff)
            .field("open_timeout", &self.open_timeout)
            .field("halt_helper", &self.halt_helper)
            .field("on_flush", &self.on_flush.as_ref().map(|_| "Fn"))
            .finish()
    }
}

/// One cached page as recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRow {
    /// Lower-case `host[:port]` the client asked for.
    pub host: String,
    /// Request method, e.g. `"GET"`.
    pub method: String,
    /// Path and query as requested, e.g. `"/gen/a?x=1"`.
    pub path: String,
    /// Request headers named by the response's `Vary`, as `(lower-case name, value)` sorted by
    /// name; [`VARY_ABSENT`] as the value of a header the request did not send. Empty without
    /// `Vary`. See the module docs for how it is stored.
    pub vary: Vec<(String, String)>,
    /// Response status code.
    pub status: u16,
    /// When the response was stored, in unix seconds.
    pub stored_at: i64,
    /// When it stops being fresh (`stored_at` + freshness lifetime), in unix seconds.
    pub expires_at: i64,
    /// Body size in bytes.
    pub size: u64,
    /// The response's `ETag`, for revalidation.
    pub etag: Option<String>,
    /// The response's `Last-Modified`, for revalidation.
    pub last_modified: Option<String>,
    /// Purge tags from the response's `Surrogate-Key`: case-sensitive, non-empty, without
    /// whitespace. Content, not identity: a changed set makes an upsert
    /// [`Updated`](Upsert::Updated). Stored as a set, so [`Manifest::list`] returns them sorted
    /// and deduplicated.
    pub tags: Vec<String>,
    /// The `cluster.advertise_url` of the node that stored this version ('' when unknown), so
    /// another node can fetch the page from it. Not content: an upsert that changes only this
    /// is [`Unchanged`](Upsert::Unchanged) (rows do not move between nodes holding the same
    /// version); it is written along with any other change.
    pub node: String,
}

/// What [`Manifest::upsert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upsert {
    /// No row had this identity; one was added.
    Inserted,
    /// A row with this identity existed and at least one column changed.
    Updated,
    /// An identical row existed; nothing was written.
    Unchanged,
    /// [`Manifest::announce`] only: a tombstone the announcing node had not applied covers the
    /// page, so the copy may predate that purge; nothing was written.
    Purged,
}

impl Upsert {
    /// Stable name for logs, metrics and test assertions.
    pub fn as_str(self) -> &'static str {
        match self {
            Upsert::Inserted => "inserted",
            Upsert::Updated => "updated",
            Upsert::Unchanged => "unchanged",
            Upsert::Purged => "purged",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::test_support::*;

    use std::sync::Arc;
    use std::time::Duration;

    use serde::Deserialize;

    #[tokio::test]
    async fn upsert_reports_inserted_unchanged_updated_without_rewriting() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            let raw = observer(&path);
            let row = page("a.example", "/gen/a?x=1");

            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Inserted);
            let before = data_version_of(&raw);
            let stats_before = m.stats().await.unwrap();

            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Unchanged);
            assert_eq!(
                data_version_of(&raw),
                before,
                "an identical upsert must not write"
            );
            let stats = m.stats().await.unwrap();
            assert_eq!(stats.write_transactions, stats_before.write_transactions);
            assert_eq!(stats.skipped_batches, stats_before.skipped_batches + 1);

            let later = PageRow {
                expires_at: row.expires_at + 60,
                ..row.clone()
            };
            assert_eq!(m.upsert(later.clone()).await.unwrap(), Upsert::Updated);
            assert_ne!(data_version_of(&raw), before);
            assert_eq!(m.list().await.unwrap(), vec![later.clone()]);

            // A None <-> Some change is a change too (the WHERE uses IS NOT, not !=).
            let no_etag = PageRow {
                etag: None,
                ..later
            };
            assert_eq!(m.upsert(no_etag.clone()).await.unwrap(), Upsert::Updated);
            assert_eq!(m.upsert(no_etag).await.unwrap(), Upsert::Unchanged);
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    /// A batch of announcements is one message to the owner thread and one transaction,
    /// answered row by row in the order given.
    #[tokio::test]
    async fn announce_many_answers_each_row_in_order_in_one_transaction() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            m.upsert(page("a.example", "/kept")).await.unwrap();
            let before = m.stats().await.unwrap().write_transactions;
            let guard = || PurgeGuard {
                applied: 0,
                also: Vec::new(),
            };
            let rows = ["/kept", "/1", "/2"]
                .map(|p| (page("a.example", p), guard()))
                .to_vec();
            let answers: Vec<Upsert> = m
                .announce_many(rows)
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
            assert_eq!(
                answers,
                [Upsert::Unchanged, Upsert::Inserted, Upsert::Inserted]
            );
            assert_eq!(m.stats().await.unwrap().write_transactions - before, 1);
            assert_eq!(paths(&m.list().await.unwrap()), ["/1", "/2", "/kept"]);
        })
        .await
    }

    #[tokio::test]
    async fn vary_absent_empty_and_values_are_distinct_rows() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let with = |v: Vec<(String, String)>| PageRow {
                vary: v,
                ..page("a.example", "/v")
            };

            let variants = [
                vary(&[("accept-encoding", VARY_ABSENT)]),
                vary(&[("accept-encoding", "")]),
                vary(&[("accept-encoding", "gzip")]),
                vary(&[("accept-encoding", "br")]),
                Vec::new(),
            ];
            for v in &variants {
                assert_eq!(
                    m.upsert(with(v.clone())).await.unwrap(),
                    Upsert::Inserted,
                    "{v:?}"
                );
            }
            assert_eq!(m.count().await.unwrap(), variants.len() as u64);
            let listed: Vec<_> = m
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.vary)
                .collect();
            for v in &variants {
                assert!(listed.contains(v), "{v:?} lost its identity: {listed:?}");
            }

            // Identity is canonical: name case and pair order do not make a new row.
            let two = vary(&[("accept-encoding", "gzip"), ("accept-language", "en")]);
            assert_eq!(m.upsert(with(two.clone())).await.unwrap(), Upsert::Inserted);
            let shuffled = vary(&[("Accept-Language", "en"), ("accept-encoding", "gzip")]);
            assert_eq!(
                m.upsert(with(shuffled.clone())).await.unwrap(),
                Upsert::Unchanged
            );
            assert!(m.remove("a.example", "GET", "/v", &shuffled).await.unwrap());
        })
        .await
    }

    #[tokio::test]
    async fn remove_and_clear_return_counts() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            for i in 0..5 {
                m.upsert(page("a.example", &format!("/{i}"))).await.unwrap();
            }
            let gzip = vary(&[("accept-encoding", "gzip")]);
            m.upsert(PageRow {
                vary: gzip.clone(),
                ..page("a.example", "/0")
            })
            .await
            .unwrap();

            // Every identity column must match.
            assert!(!m.remove("a.example", "HEAD", "/0", &[]).await.unwrap());
            assert!(!m.remove("b.example", "GET", "/0", &[]).await.unwrap());
            assert!(!m
                .remove(
                    "a.example",
                    "GET",
                    "/0",
                    &vary(&[("accept-encoding", "br")])
                )
                .await
                .unwrap());
            assert!(m.remove("a.example", "GET", "/0", &gzip).await.unwrap());
            assert!(!m.remove("a.example", "GET", "/0", &gzip).await.unwrap());
            assert!(m.remove("a.example", "GET", "/0", &[]).await.unwrap());

            assert_eq!(m.count().await.unwrap(), 4);
            assert_eq!(m.clear().await.unwrap(), 4);
            assert_eq!(m.clear().await.unwrap(), 0);
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    #[tokio::test]
    async fn list_is_ordered_by_host_path_vary() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let rows = [
                page("b.example", "/a"),
                PageRow {
                    vary: vary(&[("accept", "x")]),
                    ..page("a.example", "/b")
                },
                page("a.example", "/b"),
                page("a.example", "/a"),
            ];
            for r in &rows {
                m.upsert(r.clone()).await.unwrap();
            }
            let listed: Vec<_> = m
                .list()
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.host, r.path, r.vary))
                .collect();
            assert_eq!(
                listed,
                vec![
                    ("a.example".into(), "/a".into(), vec![]),
                    // vary sorts by its stored JSON text, where `[["…` comes before `[]`.
                    ("a.example".into(), "/b".into(), vary(&[("accept", "x")])),
                    ("a.example".into(), "/b".into(), vec![]),
                    ("b.example".into(), "/a".into(), vec![]),
                ]
            );
        })
        .await
    }

    /// Two handles on one file are two owner threads with their own connections, like two caje
    /// processes on one machine: both write at once and busy_timeout absorbs the lock waits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_write_concurrently() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            // Open both at once on a file that does not exist yet: both race to create/migrate.
            let (a, b) = {
                let (pa, pb) = (path.clone(), path.clone());
                let ta = std::thread::spawn(move || Manifest::open(&pa));
                let tb = std::thread::spawn(move || Manifest::open(&pb));
                (ta.join().unwrap().unwrap(), tb.join().unwrap().unwrap())
            };

            let mut tasks = tokio::task::JoinSet::new();
            for i in 0..500 {
                for (name, m) in [("a", a.clone()), ("b", b.clone())] {
                    tasks.spawn(async move {
                        m.upsert(page(&format!("{name}.example"), &format!("/{i}")))
                            .await
                    });
                }
            }
            while let Some(result) = tasks.join_next().await {
                assert_eq!(result.unwrap().unwrap(), Upsert::Inserted);
            }

            for m in [&a, &b] {
                let rows = m.list().await.unwrap();
                assert_eq!(rows.len(), 1000);
                assert_eq!(rows.iter().filter(|r| r.host == "a.example").count(), 500);
                assert_eq!(rows.iter().filter(|r| r.host == "b.example").count(), 500);
            }
        })
        .await
    }

    #[tokio::test]
    async fn data_version_changes_only_on_other_connections_commits() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let a = Manifest::open(&path).unwrap();
            let b = Manifest::open(&path).unwrap();
            let v0 = a.data_version().await.unwrap();
            a.upsert(page("a.example", "/own")).await.unwrap();
            assert_eq!(
                a.data_version().await.unwrap(),
                v0,
                "own commits do not count"
            );
            b.upsert(page("a.example", "/other")).await.unwrap();
            assert_ne!(a.data_version().await.unwrap(), v0);
        })
        .await
    }

    #[tokio::test]
    async fn dropping_the_last_handle_closes_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            let clone = m.clone();
            m.upsert(page("a.example", "/x")).await.unwrap();
            drop(m);
            // A surviving clone keeps the thread alive.
            assert_eq!(clone.count().await.unwrap(), 1);
            drop(clone);
            // SQLite removes the WAL when its last connection closes: proof the thread exited
            // and dropped its connection.
            let wal = dir.path().join("manifest.db-wal");
            while wal.exists() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
    }

    #[tokio::test]
    async fn oversized_page_is_refused_before_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let err = m
                .upsert(PageRow {
                    size: u64::MAX,
                    ..page("a.example", "/x")
                })
                .await
                .unwrap_err();
            assert!(
                matches!(err, ManifestError::SizeOutOfRange { size: u64::MAX }),
                "{err:?}"
            );
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    #[test]
    fn options_default_and_litefs_mode_parses_from_config() {
        #[derive(Deserialize)]
        struct Config {
            litefs: LitefsMode,
        }
        for (text, mode) in [
            ("off", LitefsMode::Off),
            ("auto", LitefsMode::Auto),
            ("on", LitefsMode::On),
        ] {
            let parsed: Config = toml::from_str(&format!("litefs = {text:?}")).unwrap();
            assert_eq!(parsed.litefs, mode);
            assert_eq!(mode.as_str(), text);
        }
        assert!(toml::from_str::<Config>("litefs = \"yes\"").is_err());

        let o = ManifestOptions::default();
        assert_eq!(o.litefs, LitefsMode::Auto);
        assert_eq!(o.flush_interval, Duration::from_millis(100));
        assert_eq!((o.max_batch, o.max_queue), (512, 100_000));
        assert_eq!(o.halt_timeout, Duration::from_secs(10));
        assert_eq!(o.retry_max_backoff, Duration::from_secs(5));
        let hooked = ManifestOptions {
            on_flush: Some(Arc::new(|| {})),
            ..o
        };
        assert!(format!("{hooked:?}").contains("on_flush: Some"));
    }
}
