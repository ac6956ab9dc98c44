//! Purges and their tombstones: the purge target, selecting its rows, the tombstone rows.

use rusqlite::{params, params_from_iter, Connection};
use serde::{Deserialize, Serialize};

use super::row::{check_tag, page_from_row, PAGE_COLUMNS, PAGE_ORDER};
use super::{ManifestError, PageRow};
// Only named by doc links.
#[cfg(doc)]
use super::Manifest;

/// The target of a purge: which rows [`Manifest::purge`] removes, and what its [`Tombstone`]
/// tells other nodes to invalidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Purge {
    /// Every row of one page: all methods and `Vary` variants of `host` + `path`, compared
    /// exactly as stored (the caller canonicalises them as it does for [`PageRow`]).
    Url {
        /// Lower-case `host[:port]`, as in [`PageRow::host`].
        host: String,
        /// Path and query, as in [`PageRow::path`].
        path: String,
    },
    /// Every row carrying exactly this tag (see [`PageRow::tags`]).
    Tag(String),
    /// Every row.
    All,
}

/// What a [`Tombstone`] invalidates: the target of the purge it records.
pub type TombstoneKind = Purge;

/// A record that a purge happened, kept until `expires_at` so that other nodes can apply it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    /// What was purged.
    pub kind: TombstoneKind,
    /// A soft purge marks copies stale (to be revalidated) instead of deleting them.
    pub soft: bool,
    /// When the purge happened, in unix seconds. A node should not apply it to a copy stored
    /// after this.
    pub created_at: i64,
    /// When [`Manifest::expire_tombstones`] may delete it, in unix seconds.
    pub expires_at: i64,
}

/// What [`Manifest::tombstone_log`] read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TombstoneLog {
    /// The stored tombstones above the id asked for, by increasing id.
    pub tombstones: Vec<(i64, Tombstone)>,
    /// The highest id ever issued (0 if none was): ids only grow, even across expiry.
    pub last_id: i64,
    /// Some tombstone above the id asked for is gone (expired and deleted before it was read),
    /// or that id is above `last_id` (it was not issued by this manifest). Either way, the
    /// reader cannot know every purge it has not applied.
    pub missed: bool,
}

/// What [`Manifest::purge`] did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeOutcome {
    /// The rows that matched, in [`Manifest::list`] order: deleted by a hard purge, still
    /// present after a soft one. Either way the caller invalidates these copies.
    pub rows: Vec<PageRow>,
    /// Id of the tombstone recorded for the purge, for [`Manifest::tombstones_since`].
    pub tombstone_id: i64,
}

pub(super) fn check_tombstone(t: &Tombstone) -> Result<(), ManifestError> {
    match &t.kind {
        Purge::Tag(tag) => check_tag(tag),
        Purge::Url { .. } | Purge::All => Ok(()),
    }
}

/// Current time in unix seconds, as SQLite's signed integers hold it.
pub(super) fn unix_now() -> i64 {
    i64::try_from(crate::time::unix_now()).unwrap_or(i64::MAX)
}

const INSERT_TOMBSTONE_SQL: &str = "
    INSERT INTO tombstones (kind, host, path, tag, soft, created_at, expires_at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

pub(super) const TOMBSTONES_SINCE_SQL: &str = "
    SELECT id, kind, host, path, tag, soft, created_at, expires_at
    FROM tombstones WHERE id > ?1 ORDER BY id";

/// The last id issued (AUTOINCREMENT keeps it in `sqlite_sequence`, even once that tombstone
/// is deleted) and how many tombstones above `?1` are still stored. Ids are issued without
/// gaps (a rolled-back insert does not advance the sequence), so fewer stored than issued
/// means some expired.
pub(super) const TOMBSTONE_SPAN_SQL: &str = "
    SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'tombstones'), 0),
           (SELECT count(*) FROM tombstones WHERE id > ?1)";

pub(super) const EXPIRE_TOMBSTONES_SQL: &str = "DELETE FROM tombstones WHERE expires_at <= ?1";

/// Reads one row selected by [`TOMBSTONES_SINCE_SQL`].
pub(super) fn tombstone_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Tombstone)> {
    let kind: String = row.get(1)?;
    let kind = match kind.as_str() {
        "url" => Purge::Url {
            host: row.get(2)?,
            path: row.get(3)?,
        },
        "tag" => Purge::Tag(row.get(4)?),
        "all" => Purge::All,
        // The CHECK constraint admits no other kind; a newer schema would have a new version.
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Text,
                format!("unknown tombstone kind {other:?}").into(),
            ))
        }
    };
    Ok((
        row.get(0)?,
        Tombstone {
            kind,
            soft: row.get(5)?,
            created_at: row.get(6)?,
            expires_at: row.get(7)?,
        },
    ))
}

/// What a purge does to the rows it matches.
#[derive(Debug, Clone, Copy)]
pub(super) enum RowAction {
    /// Delete them (hard purges, `remove_page`, `remove_tag`).
    Delete,
    /// Soft purge: keep them, but expired as of this time (unix seconds), so every node
    /// lists them as stale and none warms them from the manifest.
    Expire(i64),
}

/// The pages a purge target matches, in list order, deleted or expired as `action` says. Both
/// statements run in the caller's write transaction, so they see the same rows.
pub(super) fn select_rows(
    conn: &Connection,
    target: &Purge,
    action: RowAction,
) -> rusqlite::Result<Vec<PageRow>> {
    let (filter, args): (&str, Vec<String>) = match target {
        Purge::Url { host, path } => ("host = ?1 AND path = ?2", vec![host.clone(), path.clone()]),
        // Exact token match on the canonical form; see the module docs.
        Purge::Tag(tag) => ("instr(tags, ?1) > 0", vec![format!(" {tag} ")]),
        Purge::All => ("1", Vec::new()),
    };
    let sql = format!("SELECT {PAGE_COLUMNS} FROM pages WHERE {filter} {PAGE_ORDER}");
    let rows = conn
        .prepare_cached(&sql)?
        .query_map(params_from_iter(&args), page_from_row)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if rows.is_empty() {
        return Ok(rows);
    }
    match action {
        RowAction::Delete => {
            conn.prepare_cached(&format!("DELETE FROM pages WHERE {filter}"))?
                .execute(params_from_iter(&args))?;
        }
        RowAction::Expire(at) => {
            // `?N` after the filter's own parameters.
            let n = args.len() + 1;
            let mut all: Vec<rusqlite::types::Value> = args
                .iter()
                .cloned()
                .map(rusqlite::types::Value::Text)
                .collect();
            all.push(rusqlite::types::Value::Integer(at));
            conn.prepare_cached(&format!(
                "UPDATE pages SET expires_at = MIN(expires_at, ?{n}) WHERE {filter}"
            ))?
            .execute(params_from_iter(&all))?;
        }
    }
    Ok(rows)
}

/// Inserts a tombstone; returns its id.
pub(super) fn insert_tombstone(conn: &Connection, t: &Tombstone) -> rusqlite::Result<i64> {
    let (kind, host, path, tag) = match &t.kind {
        Purge::Url { host, path } => ("url", host.as_str(), path.as_str(), ""),
        Purge::Tag(tag) => ("tag", "", "", tag.as_str()),
        Purge::All => ("all", "", "", ""),
    };
    conn.prepare_cached(INSERT_TOMBSTONE_SQL)?.execute(params![
        kind,
        host,
        path,
        tag,
        t.soft,
        t.created_at,
        t.expires_at
    ])?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::row::encode_vary;
    use crate::manifest::test_support::*;
    use crate::manifest::*;

    #[tokio::test]
    async fn remove_page_removes_every_variant_of_that_page_only() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let target = [
                page("a.example", "/p"),
                PageRow {
                    method: "HEAD".into(),
                    ..page("a.example", "/p")
                },
                PageRow {
                    vary: vary(&[("accept-encoding", "gzip")]),
                    ..page("a.example", "/p")
                },
                PageRow {
                    vary: vary(&[("accept-encoding", VARY_ABSENT)]),
                    ..tagged("a.example", "/p", &["t"])
                },
            ];
            let others = [
                page("a.example", "/p?x=1"),
                page("a.example", "/p/"),
                page("a.example", "/P"),
                page("b.example", "/p"),
            ];
            for r in target.iter().chain(&others) {
                m.upsert(r.clone()).await.unwrap();
            }

            let removed = m.remove_page("a.example", "/p").await.unwrap();
            let mut expected = target.to_vec();
            expected.sort_by_key(|r| (encode_vary(&r.vary), r.method.clone()));
            assert_eq!(removed, expected);

            let left = m.list().await.unwrap();
            assert_eq!(left.len(), others.len());
            for r in &others {
                assert!(left.contains(r), "{r:?} was removed");
            }
            assert!(m.remove_page("a.example", "/p").await.unwrap().is_empty());
            // No tombstone: that is `purge`'s job.
            assert!(m.tombstones_since(0).await.unwrap().is_empty());
        })
        .await
    }

    #[tokio::test]
    async fn remove_tag_matches_whole_tags_only() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let rows = [
                ("/only", vec!["a"]),
                ("/first", vec!["a", "b", "c"]),
                ("/middle", vec!["0", "a", "z"]),
                ("/last", vec!["0", "a"]),
                ("/ab", vec!["ab"]),
                ("/ba", vec!["ba", "b"]),
                ("/upper", vec!["A"]),
                ("/percent", vec!["a%", "_"]),
                ("/none", vec![]),
            ];
            for (path, tags) in &rows {
                m.upsert(tagged("a.example", path, tags)).await.unwrap();
            }

            let removed = m.remove_tag("a").await.unwrap();
            assert_eq!(paths(&removed), ["/first", "/last", "/middle", "/only"]);
            assert!(removed.iter().all(|r| r.tags.contains(&"a".to_owned())));
            // Tags are not patterns: `%` and `_` are plain characters.
            assert!(m.remove_tag("%").await.unwrap().is_empty());
            assert!(m.remove_tag("a_").await.unwrap().is_empty());
            assert_eq!(paths(&m.remove_tag("a%").await.unwrap()), ["/percent"]);
            assert!(m.remove_tag("a").await.unwrap().is_empty());
            assert_eq!(paths(&m.remove_tag("b").await.unwrap()), ["/ba"]);

            let left = m.list().await.unwrap();
            assert_eq!(paths(&left), ["/ab", "/none", "/upper"]);
        })
        .await
    }

    #[tokio::test]
    async fn purge_deletes_rows_and_records_its_tombstone_in_one_transaction() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(tagged("a.example", "/1", &["t"])).await.unwrap();
            m.upsert(tagged("a.example", "/2", &["t", "u"]))
                .await
                .unwrap();
            m.upsert(tagged("a.example", "/3", &["u"])).await.unwrap();
            let before = m.stats().await.unwrap();

            let started = unix_now();
            let outcome = m.purge(Purge::Tag("t".into()), false, 600).await.unwrap();
            assert_eq!(paths(&outcome.rows), ["/1", "/2"]);

            let stats = m.stats().await.unwrap();
            assert_eq!(stats.write_transactions, before.write_transactions + 1);
            // Two pages deleted and one tombstone inserted.
            assert_eq!(stats.rows_written, before.rows_written + 3);

            assert_eq!(paths(&m.list().await.unwrap()), ["/3"]);
            let tombstones = m.tombstones_since(0).await.unwrap();
            assert_eq!(tombstones.len(), 1);
            let (id, t) = &tombstones[0];
            assert_eq!(*id, outcome.tombstone_id);
            assert_eq!((&t.kind, t.soft), (&Purge::Tag("t".into()), false));
            assert!((started..=unix_now()).contains(&t.created_at), "{t:?}");
            assert_eq!(t.expires_at, t.created_at + 600);

            // Another process sees both halves.
            let raw = observer(&path);
            let (pages, tombstones): (i64, i64) = raw
                .query_row(
                    "SELECT (SELECT count(*) FROM pages), (SELECT count(*) FROM tombstones)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .unwrap();
            assert_eq!((pages, tombstones), (1, 1));
        })
        .await
    }

    /// If the tombstone cannot be written, the rows must stay: a purge that other nodes never
    /// hear of must not happen on this one alone.
    #[tokio::test]
    async fn purge_whose_tombstone_fails_removes_no_rows() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(page("a.example", "/p")).await.unwrap();
            let raw = observer(&path);
            raw.execute_batch(
                "CREATE TRIGGER no_tombstones BEFORE INSERT ON tombstones
                 BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .unwrap();

            let url = Purge::Url {
                host: "a.example".into(),
                path: "/p".into(),
            };
            let err = m.purge(url.clone(), false, 60).await.unwrap_err();
            assert!(
                matches!(err, ManifestError::Sqlite { op: Op::Purge, .. }),
                "{err:?}"
            );
            assert_eq!(m.list().await.unwrap(), vec![page("a.example", "/p")]);
            assert!(m.tombstones_since(0).await.unwrap().is_empty());

            raw.execute_batch("DROP TRIGGER no_tombstones").unwrap();
            let outcome = m.purge(url, false, 60).await.unwrap();
            assert_eq!(outcome.rows, vec![page("a.example", "/p")]);
            assert_eq!(m.count().await.unwrap(), 0);
        })
        .await
    }

    #[tokio::test]
    async fn soft_purge_keeps_rows_and_records_a_soft_tombstone() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let far = 4_000_000_000;
            m.upsert(PageRow {
                expires_at: far,
                ..page("a.example", "/p")
            })
            .await
            .unwrap();
            m.upsert(PageRow {
                expires_at: far,
                ..page("b.example", "/q")
            })
            .await
            .unwrap();
            let before = m.stats().await.unwrap();

            let outcome = m.purge(Purge::All, true, 60).await.unwrap();
            assert_eq!(paths(&outcome.rows), ["/p", "/q"]);
            assert_eq!(m.count().await.unwrap(), 2);
            // Kept, but expired as of the purge, so every node sees them stale.
            let created = m.tombstones_since(0).await.unwrap()[0].1.created_at;
            assert!(m
                .list()
                .await
                .unwrap()
                .iter()
                .all(|r| r.expires_at <= created));
            let stats = m.stats().await.unwrap();
            assert_eq!(
                (stats.write_transactions, stats.rows_written),
                (before.write_transactions + 1, before.rows_written + 3)
            );
            let tombstones = m.tombstones_since(0).await.unwrap();
            assert_eq!(tombstones.len(), 1);
            assert_eq!(tombstones[0].0, outcome.tombstone_id);
            assert_eq!(
                (&tombstones[0].1.kind, tombstones[0].1.soft),
                (&Purge::All, true)
            );

            // The hard version deletes them all.
            let outcome = m.purge(Purge::All, false, 60).await.unwrap();
            assert_eq!(outcome.rows.len(), 2);
            assert_eq!(m.count().await.unwrap(), 0);
            // A purge that matches nothing still records its tombstone: other nodes may hold
            // copies this manifest never listed.
            let outcome = m
                .purge(
                    Purge::Url {
                        host: "c.example".into(),
                        path: "/".into(),
                    },
                    false,
                    60,
                )
                .await
                .unwrap();
            assert!(outcome.rows.is_empty());
            assert_eq!(m.tombstones_since(0).await.unwrap().len(), 3);
        })
        .await
    }

    #[tokio::test]
    async fn tombstones_since_is_in_id_order_and_expire_deletes_expired_ones() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let kinds = [
                Purge::Url {
                    host: "a.example".into(),
                    path: "/p?x=1".into(),
                },
                Purge::Tag("t".into()),
                Purge::All,
            ];
            let mut ids = Vec::new();
            for (i, kind) in kinds.iter().enumerate() {
                let t = Tombstone {
                    soft: i == 1,
                    ..tombstone(kind.clone(), 1000, 1100 + 100 * i as i64)
                };
                ids.push(m.add_tombstone(t).await.unwrap());
            }
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");

            let all = m.tombstones_since(0).await.unwrap();
            assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), ids);
            assert_eq!(
                all.iter().map(|(_, t)| t.kind.clone()).collect::<Vec<_>>(),
                kinds
            );
            assert_eq!(
                all[1].1,
                Tombstone {
                    soft: true,
                    ..tombstone(Purge::Tag("t".into()), 1000, 1200)
                }
            );
            let newer = m.tombstones_since(ids[0]).await.unwrap();
            assert_eq!(newer, all[1..]);
            assert!(m.tombstones_since(ids[2]).await.unwrap().is_empty());

            // `expires_at <= now` is expired.
            assert_eq!(m.expire_tombstones(1099).await.unwrap(), 0);
            assert_eq!(m.expire_tombstones(1200).await.unwrap(), 2);
            assert_eq!(m.tombstones_since(0).await.unwrap(), all[2..]);
            assert_eq!(m.expire_tombstones(1200).await.unwrap(), 0);
        })
        .await
    }

    /// A node whose cursor is at the newest tombstone must see the next purge even when every
    /// tombstone expired in between (a plain rowid would hand out the same id again).
    #[tokio::test]
    async fn tombstone_ids_are_not_reused_after_expiry() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let cursor = m
                .add_tombstone(tombstone(Purge::All, 1000, 1001))
                .await
                .unwrap();
            assert_eq!(m.expire_tombstones(2000).await.unwrap(), 1);
            let next = m.purge(Purge::All, false, 60).await.unwrap().tombstone_id;
            assert!(next > cursor, "{next} reuses an id at or below {cursor}");
            let seen = m.tombstones_since(cursor).await.unwrap();
            assert_eq!(seen.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [next]);
        })
        .await
    }

    /// A copy announced by a node that has not applied a purge of its page does not put the
    /// row back; once the node has applied it (cursor, or its own purge), it does.
    #[tokio::test]
    async fn announce_is_refused_under_a_tombstone_the_node_has_not_applied() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let url = m
                .purge(
                    Purge::Url {
                        host: "a.example".into(),
                        path: "/p".into(),
                    },
                    false,
                    600,
                )
                .await
                .unwrap()
                .tombstone_id;
            let tag = m
                .purge(Purge::Tag("t".into()), false, 600)
                .await
                .unwrap()
                .tombstone_id;
            let before = m.stats().await.unwrap().rows_written;
            let guard = |applied, also: &[i64]| PurgeGuard {
                applied,
                also: also.to_vec(),
            };
            let p = page("a.example", "/p");
            let q = tagged("a.example", "/q", &["s", "t"]);
            let r = tagged("a.example", "/r", &["tt"]);
            assert_eq!(
                m.announce(p.clone(), guard(0, &[])).await.unwrap(),
                Upsert::Purged
            );
            assert_eq!(
                m.announce(q.clone(), guard(url, &[])).await.unwrap(),
                Upsert::Purged
            );
            assert_eq!(m.stats().await.unwrap().rows_written, before);
            assert_eq!(m.count().await.unwrap(), 0);
            // A tag that only contains the purged one is not covered.
            assert_eq!(
                m.announce(r, guard(0, &[])).await.unwrap(),
                Upsert::Inserted
            );
            // Applied: by the cursor, or as the node's own purge.
            assert_eq!(
                m.announce(p, guard(url, &[])).await.unwrap(),
                Upsert::Inserted
            );
            assert_eq!(
                m.announce(q, guard(0, &[url, tag])).await.unwrap(),
                Upsert::Inserted
            );
            let all = m.purge(Purge::All, true, 600).await.unwrap().tombstone_id;
            let s = page("b.example", "/s");
            assert_eq!(
                m.announce(s.clone(), guard(tag, &[])).await.unwrap(),
                Upsert::Purged
            );
            assert_eq!(
                m.announce(s, guard(all, &[])).await.unwrap(),
                Upsert::Inserted
            );
        })
        .await
    }

    /// A reader learns when tombstones it never read were deleted, and when its cursor did not
    /// come from this manifest.
    #[tokio::test]
    async fn tombstone_log_reports_expired_unread_tombstones() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            assert_eq!(m.tombstone_log(0).await.unwrap(), TombstoneLog::default());
            let add = |created_at, expires_at| Tombstone {
                kind: Purge::Tag("t".into()),
                soft: false,
                created_at,
                expires_at,
            };
            let first = m.add_tombstone(add(10, 20)).await.unwrap();
            let second = m.add_tombstone(add(10, 100)).await.unwrap();
            let log = m.tombstone_log(0).await.unwrap();
            assert_eq!(
                (log.tombstones.len(), log.last_id, log.missed),
                (2, second, false)
            );
            assert_eq!(m.expire_tombstones(50).await.unwrap(), 1);
            // A reader at 0 never saw the first one: missed. One past it did not miss anything.
            let log = m.tombstone_log(0).await.unwrap();
            assert_eq!((log.tombstones.len(), log.missed), (1, true));
            let log = m.tombstone_log(first).await.unwrap();
            assert_eq!((log.tombstones.len(), log.missed), (1, false));
            // The newest expired too: ids stay issued, so a reader behind it still knows.
            assert_eq!(m.expire_tombstones(200).await.unwrap(), 1);
            let log = m.tombstone_log(first).await.unwrap();
            assert_eq!(
                (log.tombstones.len(), log.last_id, log.missed),
                (0, second, true)
            );
            assert!(!m.tombstone_log(second).await.unwrap().missed);
            // A cursor beyond every issued id belongs to another manifest.
            assert!(m.tombstone_log(second + 5).await.unwrap().missed);
        })
        .await
    }
}
