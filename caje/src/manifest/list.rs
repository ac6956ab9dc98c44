//! One page of `/_caje/list`: filters, a cursor and a limit, answered by one indexed query
//! (the primary key's order), so a listing of a large manifest never holds every row.

use rusqlite::types::Value as Sql;
use rusqlite::{params_from_iter, Connection};

use super::row::{page_from_row, PAGE_COLUMNS};
use super::{ManifestError, Op, PageRow};

/// Which rows one page of the listing holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this host.
    pub host: Option<String>,
    /// Only paths (path and query) starting with this.
    pub prefix: Option<String>,
    /// Only rows no longer fresh at this unix time.
    pub stale_at: Option<i64>,
    /// Only rows after this position (the `next` of the previous page).
    pub after: Option<Cursor>,
    /// Most rows in the page.
    pub limit: usize,
}

/// A position in the listing order (host, path, vary, method): the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    host: String,
    path: String,
    /// The vary column as stored (the order compares the stored text).
    vary: String,
    method: String,
}

impl Cursor {
    /// An opaque token for URLs: the position as a JSON array, hex-encoded.
    pub fn encode(&self) -> String {
        let json = serde_json::json!([self.host, self.path, self.vary, self.method]).to_string();
        json.bytes().map(|b| format!("{b:02x}")).collect()
    }

    /// Reads a token made by [`Cursor::encode`]; `None` if it is not one.
    pub fn decode(token: &str) -> Option<Cursor> {
        if token.len() % 2 != 0 || token.len() > 64 * 1024 {
            return None;
        }
        let bytes = (0..token.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(token.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let [host, path, vary, method]: [String; 4] = serde_json::from_slice(&bytes).ok()?;
        Some(Cursor {
            host,
            path,
            vary,
            method,
        })
    }
}

/// One page of rows, and where the next one starts (`None`: this was the last).
#[derive(Debug, Clone)]
pub struct ListPage {
    /// The rows, in listing order.
    pub rows: Vec<PageRow>,
    /// The cursor for `?after=` if more rows match.
    pub next: Option<Cursor>,
}

pub(super) fn page(conn: &Connection, q: &ListQuery) -> Result<ListPage, ManifestError> {
    let mut sql = format!("SELECT {PAGE_COLUMNS} FROM pages WHERE 1 = 1");
    let mut args: Vec<Sql> = Vec::new();
    if let Some(host) = &q.host {
        sql.push_str(" AND host = ?");
        args.push(Sql::Text(host.clone()));
    }
    if let Some(prefix) = &q.prefix {
        // substr counts characters, as chars() does; no LIKE, so `%` and `_` are literal.
        sql.push_str(" AND substr(path, 1, ?) = ?");
        args.push(Sql::Integer(prefix.chars().count() as i64));
        args.push(Sql::Text(prefix.clone()));
    }
    if let Some(now) = q.stale_at {
        sql.push_str(" AND expires_at <= ?");
        args.push(Sql::Integer(now));
    }
    if let Some(c) = &q.after {
        sql.push_str(" AND (host, path, vary, method) > (?, ?, ?, ?)");
        for v in [&c.host, &c.path, &c.vary, &c.method] {
            args.push(Sql::Text(v.clone()));
        }
    }
    // One more than asked: whether there is a next page.
    sql.push_str(" ORDER BY host, path, vary, method LIMIT ?");
    args.push(Sql::Integer(
        q.limit.saturating_add(1).min(i64::MAX as usize) as i64,
    ));
    let err = |e| ManifestError::sqlite(Op::List, e);
    let mut stmt = conn.prepare_cached(&sql).map_err(err)?;
    let mut found = stmt
        .query_map(params_from_iter(args), |r| {
            // The raw `vary` text (column 3 of PAGE_COLUMNS) is the cursor's, not the decoded one.
            Ok((page_from_row(r)?, r.get::<_, String>(3)?))
        })
        .map_err(err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let more = found.len() > q.limit;
    found.truncate(q.limit);
    let next = if more {
        found.last().map(|(row, vary)| Cursor {
            host: row.host.clone(),
            path: row.path.clone(),
            vary: vary.clone(),
            method: row.method.clone(),
        })
    } else {
        None
    };
    Ok(ListPage {
        rows: found.into_iter().map(|(row, _)| row).collect(),
        next,
    })
}
