//! `GET /_caje/list`: the manifest's rows one page at a time, with filters.
//!
//! - `?limit=N` (default [`DEFAULT_LIMIT`], at most [`MAX_LIMIT`]); the answer's `next` is the
//!   cursor for `?after=` (null on the last page). The order is host, path, vary, method.
//! - `?host=H`, `?prefix=/path` (path and query start with it), `?stale=true` (no longer
//!   fresh).
//! - Read-your-writes: before reading, it waits (at most [`SETTLE_LIMIT`]) until every fill
//!   whose body was complete has committed and every commit has been announced in the
//!   manifest ([`crate::cache::store::Store::settled`]), so a page this node cached is listed
//!   right after its response completed.

use std::time::Duration;

use http::{Response, StatusCode};
use serde_json::{json, Value};

use super::{internal, json_response, query_param};
use crate::app::{variant_of, App};
use crate::body::Body;
use crate::cache::key::CacheKey;
use crate::manifest::{Cursor, ListQuery};
use crate::time::unix_now;

/// Rows in a page when `?limit=` is not given.
pub const DEFAULT_LIMIT: usize = 1000;
/// The largest `?limit=`.
pub const MAX_LIMIT: usize = 10_000;
/// Longest a listing waits for this node's own fills to be listed.
const SETTLE_LIMIT: Duration = Duration::from_secs(2);

fn bad_request(msg: &str) -> Response<Body> {
    json_response(StatusCode::BAD_REQUEST, &json!({ "error": msg }))
}

/// Reads the query into a [`ListQuery`], or says what is wrong with it.
fn parse(query: Option<&str>, now: i64) -> Result<ListQuery, &'static str> {
    let limit = match query_param(query, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => return Err("limit must be a number from 1 to 10000"),
        },
    };
    let after = match query_param(query, "after") {
        None => None,
        Some(token) => Some(Cursor::decode(&token).ok_or("after must be a `next` cursor")?),
    };
    let stale_at = match query_param(query, "stale").as_deref() {
        None | Some("false") => None,
        Some("true") => Some(now),
        Some(_) => return Err("stale must be true or false"),
    };
    Ok(ListQuery {
        host: query_param(query, "host").map(|h| h.to_ascii_lowercase()),
        prefix: query_param(query, "prefix"),
        stale_at,
        after,
        limit,
    })
}

pub(super) async fn list(app: &App, query: Option<&str>) -> Response<Body> {
    let now = unix_now() as i64;
    let q = match parse(query, now) {
        Ok(q) => q,
        Err(msg) => return bad_request(msg),
    };
    app.store.settled(SETTLE_LIMIT).await;
    let page = match app.manifest.list_page(q).await {
        Ok(p) => p,
        Err(e) => return internal("reading the manifest", &e),
    };
    let entries: Vec<Value> = page
        .rows
        .iter()
        .map(|row| {
            let key = CacheKey {
                host: row.host.clone(),
                path: row.path.clone(),
            };
            let variant = variant_of(row);
            let vary: serde_json::Map<String, Value> = variant
                .0
                .iter()
                .map(|(n, v)| (n.clone(), v.clone().map_or(Value::Null, Value::String)))
                .collect();
            json!({
                "host": row.host,
                "node": row.node,
                "method": row.method,
                "path": row.path,
                "vary": vary,
                "status": row.status,
                "stored_at": row.stored_at,
                "expires_at": row.expires_at,
                "ttl": (row.expires_at - now).max(0),
                "size": row.size,
                "etag": row.etag,
                "last_modified": row.last_modified,
                "on_disk": app.store.holds(&key, &variant),
                "fresh": row.expires_at > now,
            })
        })
        .collect();
    json_response(
        StatusCode::OK,
        &json!({
            "count": entries.len(),
            "entries": entries,
            "next": page.next.map(|c| c.encode()),
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_and_bad_ones_are_refused() {
        let q = parse(None, 5).unwrap();
        assert_eq!(
            (q.limit, q.host, q.prefix, q.stale_at),
            (1000, None, None, None)
        );
        let q = parse(Some("limit=2&host=A.test&prefix=/a%3Fb&stale=true"), 5).unwrap();
        assert_eq!(q.limit, 2);
        assert_eq!(q.host.as_deref(), Some("a.test"));
        assert_eq!(q.prefix.as_deref(), Some("/a?b"));
        assert_eq!(q.stale_at, Some(5));
        for bad in [
            "limit=0",
            "limit=10001",
            "limit=x",
            "after=zz",
            "after=00",
            "stale=1",
        ] {
            assert!(parse(Some(bad), 5).is_err(), "{bad}");
        }
    }
}
