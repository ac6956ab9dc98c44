//! A page row in its stored form: vary and tag encoding, row <-> struct, the page SQL.

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use super::{ManifestError, PageRow, Upsert, VARY_ABSENT};
// Only named by doc links.
#[cfg(doc)]
use super::Manifest;

/// The identity columns of a page, vary already encoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Key {
    pub(super) host: String,
    pub(super) method: String,
    pub(super) path: String,
    pub(super) vary: String,
}

/// A [`PageRow`] in its stored form. Encoded on the caller's task so that a row the database
/// cannot hold is refused before it reaches a batch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Record {
    pub(super) key: Key,
    pub(super) status: u16,
    pub(super) stored_at: i64,
    pub(super) expires_at: i64,
    pub(super) size: i64,
    pub(super) etag: Option<String>,
    pub(super) last_modified: Option<String>,
    /// Canonical tag set; see the module docs.
    pub(super) tags: String,
    /// The storing node's URL (not compared: see [`PageRow::node`]).
    pub(super) node: String,
    /// Set by [`Manifest::announce`]: the write is refused when a tombstone this record's
    /// writer had not applied covers the page.
    pub(super) guard: Option<PurgeGuard>,
}

/// Which tombstones an announced copy has already been through: every id up to `applied`,
/// and the ids in `also` (purges its node made itself, applied when they were made).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurgeGuard {
    /// The node's tombstone cursor: every tombstone with an id up to this one was applied.
    pub applied: i64,
    /// Ids above `applied` that the node applied anyway (its own purges).
    pub also: Vec<i64>,
}

impl Record {
    pub(super) fn encode(row: PageRow) -> Result<Record, ManifestError> {
        let size = i64::try_from(row.size)
            .map_err(|_| ManifestError::SizeOutOfRange { size: row.size })?;
        let tags = encode_tags(&row.tags)?;
        Ok(Record {
            key: Key {
                vary: encode_vary(&row.vary),
                host: row.host,
                method: row.method,
                path: row.path,
            },
            status: row.status,
            stored_at: row.stored_at,
            expires_at: row.expires_at,
            size,
            etag: row.etag,
            last_modified: row.last_modified,
            tags,
            node: row.node,
            guard: None,
        })
    }
}

/// Canonical stored form of a vary list; see the module docs.
pub(super) fn encode_vary(vary: &[(String, String)]) -> String {
    let mut pairs: Vec<(String, Option<&str>)> = vary
        .iter()
        .map(|(name, value)| {
            (
                name.to_ascii_lowercase(),
                (value != VARY_ABSENT).then_some(value.as_str()),
            )
        })
        .collect();
    pairs.sort();
    // Serializing strings and nulls cannot fail.
    serde_json::to_string(&pairs).expect("vary pairs serialize")
}

/// Refuses a tag that could not be one token of the stored set.
pub(super) fn check_tag(tag: &str) -> Result<(), ManifestError> {
    if tag.is_empty() || tag.contains(char::is_whitespace) {
        return Err(ManifestError::InvalidTag {
            tag: tag.to_owned(),
        });
    }
    Ok(())
}

/// Canonical stored form of a tag set, `' a b '` or `''`; see the module docs.
fn encode_tags(tags: &[String]) -> Result<String, ManifestError> {
    let mut set: Vec<&str> = Vec::with_capacity(tags.len());
    for tag in tags {
        check_tag(tag)?;
        set.push(tag);
    }
    set.sort_unstable();
    set.dedup();
    if set.is_empty() {
        return Ok(String::new());
    }
    Ok(format!(" {} ", set.join(" ")))
}

fn decode_tags(text: &str) -> Vec<String> {
    text.split(' ')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

fn decode_vary(text: &str) -> Result<Vec<(String, String)>, serde_json::Error> {
    let pairs: Vec<(String, Option<String>)> = serde_json::from_str(text)?;
    Ok(pairs
        .into_iter()
        .map(|(name, value)| (name, value.unwrap_or_else(|| VARY_ABSENT.to_owned())))
        .collect())
}

const UPSERT_SQL: &str = "
    INSERT INTO pages
        (host, method, path, vary, status, stored_at, expires_at, size, etag, last_modified, tags,
         node_url)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
    ON CONFLICT (host, method, path, vary) DO UPDATE SET
        status = excluded.status, stored_at = excluded.stored_at, expires_at = excluded.expires_at,
        size = excluded.size, etag = excluded.etag, last_modified = excluded.last_modified,
        tags = excluded.tags, node_url = excluded.node_url
    WHERE pages.status IS NOT excluded.status
       OR pages.stored_at IS NOT excluded.stored_at
       OR pages.expires_at IS NOT excluded.expires_at
       OR pages.size IS NOT excluded.size
       OR pages.etag IS NOT excluded.etag
       OR pages.last_modified IS NOT excluded.last_modified
       OR pages.tags IS NOT excluded.tags";

const EXISTS_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM pages WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4)";

pub(super) const IDENTICAL_SQL: &str = "
    SELECT EXISTS (SELECT 1 FROM pages
        WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4
          AND status = ?5 AND stored_at = ?6 AND expires_at = ?7 AND size = ?8
          AND etag IS ?9 AND last_modified IS ?10 AND tags = ?11)";

pub(super) const REMOVE_SQL: &str =
    "DELETE FROM pages WHERE host = ?1 AND method = ?2 AND path = ?3 AND vary = ?4";

/// The columns [`page_from_row`] reads, in its order.
pub(super) const PAGE_COLUMNS: &str =
    "host, method, path, vary, status, stored_at, expires_at, size, etag, last_modified, tags, \
     node_url";

/// The order of [`Manifest::list`] and of every other answer made of rows.
pub(super) const PAGE_ORDER: &str = "ORDER BY host, path, vary, method";

/// Reads one row selected as [`PAGE_COLUMNS`].
pub(super) fn page_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<PageRow> {
    let vary: String = row.get(3)?;
    // Stored as i64 (SQLite has no unsigned INTEGER); `encode` refused larger sizes.
    let size: i64 = row.get(7)?;
    let size =
        u64::try_from(size).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(7, size))?;
    let vary = decode_vary(&vary).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let tags: String = row.get(10)?;
    Ok(PageRow {
        host: row.get(0)?,
        method: row.get(1)?,
        path: row.get(2)?,
        vary,
        status: row.get(4)?,
        stored_at: row.get(5)?,
        expires_at: row.get(6)?,
        size,
        etag: row.get(8)?,
        last_modified: row.get(9)?,
        tags: decode_tags(&tags),
        node: row.get(11)?,
    })
}

/// The tombstones above `?1` that cover a page (`?2` host, `?3` path, `?4` canonical tags).
const COVERING_TOMBSTONES_SQL: &str = "
    SELECT id FROM tombstones
    WHERE id > ?1
      AND (kind = 'all'
           OR (kind = 'url' AND host = ?2 AND path = ?3)
           OR (kind = 'tag' AND instr(?4, ' ' || tag || ' ') > 0))";

/// Whether a tombstone the record's writer has not applied covers its page. Read inside the
/// write transaction, so a purge commits either before it (and refuses the row) or after it
/// (and deletes the row).
fn purged_since(conn: &Connection, r: &Record, guard: &PurgeGuard) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(COVERING_TOMBSTONES_SQL)?;
    let ids = stmt.query_map(
        params![guard.applied, r.key.host, r.key.path, r.tags],
        |row| row.get::<_, i64>(0),
    )?;
    for id in ids {
        if !guard.also.contains(&id?) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// One upsert inside the batch transaction. The prior SELECT tells an insert from an update;
/// `changes()` tells an update from a no-op (the `WHERE` of `DO UPDATE` skips identical rows).
/// A guarded record ([`Manifest::announce`]) covered by a newer tombstone is not written.
pub(super) fn upsert_one(conn: &Connection, r: &Record) -> rusqlite::Result<Upsert> {
    if let Some(guard) = &r.guard {
        if purged_since(conn, r, guard)? {
            return Ok(Upsert::Purged);
        }
    }
    let existed: bool = conn.prepare_cached(EXISTS_SQL)?.query_row(
        params![r.key.host, r.key.method, r.key.path, r.key.vary],
        |row| row.get(0),
    )?;
    let changed = conn.prepare_cached(UPSERT_SQL)?.execute(params![
        r.key.host,
        r.key.method,
        r.key.path,
        r.key.vary,
        r.status,
        r.stored_at,
        r.expires_at,
        r.size,
        r.etag,
        r.last_modified,
        r.tags,
        r.node
    ])?;
    Ok(match (changed, existed) {
        (0, _) => Upsert::Unchanged,
        (_, true) => Upsert::Updated,
        (_, false) => Upsert::Inserted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::schema::open_connection;
    use crate::manifest::test_support::*;
    use crate::manifest::*;

    use rusqlite::TransactionBehavior;
    use std::time::Duration;

    /// The in-transaction path (taken when a batch also holds real changes) decides the outcome
    /// from the SQL itself: prior SELECT + `changes()` of the guarded ON CONFLICT update.
    #[test]
    fn upsert_sql_reports_outcomes_inside_a_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut conn, _) = open_connection(
            &dir.path().join("manifest.db"),
            None,
            Duration::ZERO,
            Duration::ZERO,
        )
        .unwrap();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .unwrap();
        let record = |row: PageRow| Record::encode(row).unwrap();
        let row = page("a.example", "/x");
        assert_eq!(
            upsert_one(&tx, &record(row.clone())).unwrap(),
            Upsert::Inserted
        );
        assert_eq!(
            upsert_one(&tx, &record(row.clone())).unwrap(),
            Upsert::Unchanged
        );
        let bigger = PageRow { size: 99, ..row };
        assert_eq!(upsert_one(&tx, &record(bigger)).unwrap(), Upsert::Updated);
        tx.commit().unwrap();
    }

    #[test]
    fn vary_encoding_is_canonical_json_with_null_for_absent() {
        assert_eq!(encode_vary(&[]), "[]");
        let v = vary(&[("X-Tenant", VARY_ABSENT), ("accept-encoding", "gzip")]);
        let text = encode_vary(&v);
        assert_eq!(text, r#"[["accept-encoding","gzip"],["x-tenant",null]]"#);
        assert_eq!(
            decode_vary(&text).unwrap(),
            vary(&[("accept-encoding", "gzip"), ("x-tenant", VARY_ABSENT)])
        );
    }

    #[tokio::test]
    async fn tags_round_trip_as_a_sorted_set() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("manifest.db");
            let m = Manifest::open(&path).unwrap();
            m.upsert(tagged("a.example", "/t", &["b", "A", "a", "b"]))
                .await
                .unwrap();
            m.upsert(page("a.example", "/untagged")).await.unwrap();

            let listed = m.list().await.unwrap();
            assert_eq!(listed[0].tags, ["A", "a", "b"]);
            assert_eq!(listed[1].tags, Vec::<String>::new());

            let stored: Vec<String> = observer(&path)
                .prepare("SELECT tags FROM pages ORDER BY path")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(stored, [" A a b ", ""]);
        })
        .await
    }

    #[tokio::test]
    async fn tag_change_is_an_update_and_reordering_is_not() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let row = tagged("a.example", "/t", &["a", "b"]);
            assert_eq!(m.upsert(row.clone()).await.unwrap(), Upsert::Inserted);
            // Same set, other order and a duplicate: nothing to write.
            let same = tagged("a.example", "/t", &["b", "a", "a"]);
            assert_eq!(m.upsert(same).await.unwrap(), Upsert::Unchanged);
            let changed = tagged("a.example", "/t", &["a", "c"]);
            assert_eq!(m.upsert(changed).await.unwrap(), Upsert::Updated);
            assert_eq!(m.list().await.unwrap()[0].tags, ["a", "c"]);
            assert_eq!(
                m.upsert(page("a.example", "/t")).await.unwrap(),
                Upsert::Updated
            );
            assert!(m.list().await.unwrap()[0].tags.is_empty());
            assert_eq!(m.count().await.unwrap(), 1);
        })
        .await
    }

    #[tokio::test]
    async fn invalid_tags_are_refused_before_the_database() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            for bad in ["", "a b", "a\tb", " a"] {
                let err = m
                    .upsert(tagged("a.example", "/t", &["ok", bad]))
                    .await
                    .unwrap_err();
                assert!(
                    matches!(&err, ManifestError::InvalidTag { tag } if tag == bad),
                    "{err:?}"
                );
                let err = m.remove_tag(bad).await.unwrap_err();
                assert!(matches!(err, ManifestError::InvalidTag { .. }), "{err:?}");
                let err = m
                    .purge(Purge::Tag(bad.to_owned()), false, 60)
                    .await
                    .unwrap_err();
                assert!(matches!(err, ManifestError::InvalidTag { .. }), "{err:?}");
            }
            assert_eq!(m.count().await.unwrap(), 0);
            assert!(m.tombstones_since(0).await.unwrap().is_empty());
            assert_eq!(m.stats().await.unwrap().write_transactions, 0);
        })
        .await
    }

    /// The storing node is recorded, but a row that differs only in it stays as it is: two
    /// nodes holding the same version do not move the row between them.
    #[tokio::test]
    async fn the_storing_node_is_recorded_but_moving_it_alone_writes_nothing() {
        bounded(async {
            let dir = tempfile::tempdir().unwrap();
            let m = Manifest::open(&dir.path().join("manifest.db")).unwrap();
            let from_a = PageRow {
                node: "http://10.0.0.1:8080".into(),
                ..page("a.example", "/n")
            };
            assert_eq!(m.upsert(from_a.clone()).await.unwrap(), Upsert::Inserted);
            let from_b = PageRow {
                node: "http://10.0.0.2:8080".into(),
                ..from_a.clone()
            };
            assert_eq!(m.upsert(from_b.clone()).await.unwrap(), Upsert::Unchanged);
            assert_eq!(m.list().await.unwrap(), vec![from_a]);
            let newer = PageRow {
                stored_at: from_b.stored_at + 1,
                ..from_b
            };
            assert_eq!(m.upsert(newer.clone()).await.unwrap(), Upsert::Updated);
            assert_eq!(m.list().await.unwrap(), vec![newer]);
        })
        .await
    }
}
