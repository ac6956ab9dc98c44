//! Read-your-writes helpers: TXID cookies, `fly-replay`, and the wait-or-replay decision.
//!
//! After a write, hand the client the TXID it produced (a cookie). On its next request, any
//! node can compare its own TXID with the cookie: if it is behind, wait briefly for
//! replication, else answer with `fly-replay: instance=<primary>` so Fly's proxy replays the
//! request on the primary.
//!
//! Two cookie formats exist: the LiteFS proxy's `__txid` (16 hex digits, the form of `-pos`)
//! and litefs-js's `txnum` (decimal). Both are read; write whichever your other clients use.

use std::time::Duration;

use crate::database::Database;
use crate::error::{Error, ParseError, Result};
use crate::mount::Role;
use crate::pos::Txid;

/// Name of the LiteFS proxy's cookie (value: TXID as 16 hex digits).
pub const TXID_COOKIE: &str = "__txid";

/// Name of litefs-js's cookie (value: TXID in decimal).
pub const TXNUM_COOKIE: &str = "txnum";

/// The Fly proxy header that replays a request on another machine.
pub const FLY_REPLAY: &str = "fly-replay";

/// The `fly-replay` value sending a request to the primary: `instance=<primary>`.
///
/// On Fly the hostname LiteFS writes in `.primary` is the machine ID, which is what `instance=`
/// expects.
///
/// ```
/// assert_eq!(litefs::fly_replay_value("3d8d9e1b2c4e89"), "instance=3d8d9e1b2c4e89");
/// ```
pub fn fly_replay_value(primary: &str) -> String {
    format!("instance={primary}")
}

/// A `Set-Cookie` value carrying `txid` as the LiteFS proxy does (`__txid=%016x`), valid for
/// `max_age` on every path, HTTP-only.
///
/// ```
/// let c = litefs::txid_set_cookie(litefs::Txid::new(39), std::time::Duration::from_secs(300));
/// assert_eq!(c, "__txid=0000000000000027; Path=/; Max-Age=300; HttpOnly; SameSite=Lax");
/// ```
pub fn txid_set_cookie(txid: Txid, max_age: Duration) -> String {
    set_cookie(TXID_COOKIE, &txid.to_string(), max_age)
}

/// A `Set-Cookie` value carrying `txid` the way litefs-js does (`txnum=<decimal>`).
///
/// ```
/// let c = litefs::txnum_set_cookie(litefs::Txid::new(39), std::time::Duration::from_secs(10));
/// assert!(c.starts_with("txnum=39; "));
/// ```
pub fn txnum_set_cookie(txid: Txid, max_age: Duration) -> String {
    set_cookie(TXNUM_COOKIE, &txid.get().to_string(), max_age)
}

fn set_cookie(name: &str, value: &str, max_age: Duration) -> String {
    format!(
        "{name}={value}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax",
        max_age.as_secs()
    )
}

/// The TXID a client last saw, from a `Cookie` request header: `__txid` (hex) or `txnum`
/// (decimal), the larger if both are present; `None` if neither is.
///
/// A malformed value is an error rather than `None`, so a client with a corrupted cookie can be
/// told apart from one that never wrote (callers usually treat both as "no constraint").
///
/// ```
/// use litefs::{txid_from_cookie_header, Txid};
/// let t = txid_from_cookie_header("theme=dark; __txid=0000000000000027").unwrap();
/// assert_eq!(t, Some(Txid::new(39)));
/// assert_eq!(txid_from_cookie_header("txnum=40").unwrap(), Some(Txid::new(40)));
/// assert_eq!(txid_from_cookie_header("theme=dark").unwrap(), None);
/// assert!(txid_from_cookie_header("__txid=zz").is_err());
/// ```
pub fn txid_from_cookie_header(header: &str) -> Result<Option<Txid>, ParseError> {
    let mut best: Option<Txid> = None;
    for pair in header.split(';') {
        let Some((name, value)) = pair.trim().split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"');
        let txid = match name.trim() {
            TXID_COOKIE => Txid::from_hex16(value).map_err(|_| {
                ParseError::new("cookie", pair.trim(), "__txid must be 16 hex digits")
            })?,
            TXNUM_COOKIE => value.parse::<u64>().map(Txid::new).map_err(|_| {
                ParseError::new("cookie", pair.trim(), "txnum must be a decimal integer")
            })?,
            _ => continue,
        };
        best = best.max(Some(txid));
    }
    Ok(best)
}

/// The outcome of [`check_consistency`].
///
/// ```
/// use litefs::{Consistency, Txid};
/// let c = Consistency::Replay { primary: "node-a".into(), txid: Txid::new(3) };
/// assert_eq!(c.fly_replay().as_deref(), Some("instance=node-a"));
/// assert!(!c.is_current());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Consistency {
    /// This node has the wanted TXID (possibly after waiting): serve the request here.
    Current {
        /// This node's TXID.
        txid: Txid,
    },
    /// Still behind after the wait, and the primary is known: replay the request there
    /// (`fly-replay: instance=<primary>`).
    Replay {
        /// The primary's hostname.
        primary: String,
        /// This node's TXID.
        txid: Txid,
    },
    /// Behind, and nobody better to ask: this node is the primary (the wanted TXID was lost or
    /// belongs to another cluster), or no primary is known (failover). Serve what you have or
    /// fail the request.
    Behind {
        /// This node's TXID.
        txid: Txid,
        /// This node's role when the decision was made.
        role: Role,
    },
}

impl Consistency {
    /// Whether the request can be served here with read-your-writes consistency.
    ///
    /// ```
    /// assert!(litefs::Consistency::Current { txid: litefs::Txid::new(1) }.is_current());
    /// ```
    pub fn is_current(&self) -> bool {
        matches!(self, Consistency::Current { .. })
    }

    /// The `fly-replay` header value to answer with, for [`Consistency::Replay`].
    ///
    /// ```
    /// assert_eq!(litefs::Consistency::Current { txid: litefs::Txid::new(1) }.fly_replay(), None);
    /// ```
    pub fn fly_replay(&self) -> Option<String> {
        match self {
            Consistency::Replay { primary, .. } => Some(fly_replay_value(primary)),
            _ => None,
        }
    }
}

/// Decides whether this node can serve a client that has seen `wanted`: immediately if the
/// database is there, otherwise after waiting up to `wait` for replication (not on the
/// primary, where waiting cannot help), otherwise by replaying on the primary. Blocking; async
/// code uses `check_consistency_async` (feature `tokio`).
///
/// ```
/// use std::time::Duration;
/// use litefs::{check_consistency, Consistency, Mount, Txid};
/// let dir = tempfile::tempdir().unwrap();
/// let db = Mount::open_as_litefs(dir.path()).unwrap().database("x.db").unwrap();
/// std::fs::write(db.pos_path(), "0000000000000005/0000000000000000\n").unwrap();
/// std::fs::write(dir.path().join(".primary"), "node-a\n").unwrap();
///
/// let ok = check_consistency(&db, Txid::new(5), Duration::ZERO).unwrap();
/// assert_eq!(ok, Consistency::Current { txid: Txid::new(5) });
/// let replay = check_consistency(&db, Txid::new(6), Duration::from_millis(10)).unwrap();
/// assert_eq!(replay.fly_replay().as_deref(), Some("instance=node-a"));
/// ```
pub fn check_consistency(db: &Database, wanted: Txid, wait: Duration) -> Result<Consistency> {
    let txid = db.txid()?;
    if txid >= wanted {
        return Ok(Consistency::Current { txid });
    }
    let role = db.mount().role()?;
    if role.is_primary() {
        return Ok(Consistency::Behind { txid, role });
    }
    match db.wait_for_txid(wanted, wait) {
        Ok(pos) => Ok(Consistency::Current { txid: pos.txid() }),
        Err(Error::TxidTimeout { current, .. }) => Ok(behind(db.mount().role()?, current)),
        Err(e) => Err(e),
    }
}

/// [`check_consistency`] without blocking the runtime.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use std::time::Duration;
/// # let dir = tempfile::tempdir().unwrap();
/// # let db = litefs::Mount::open(dir.path()).unwrap().database("x.db").unwrap();
/// std::fs::write(db.pos_path(), "0000000000000005/0000000000000000\n").unwrap();
/// let c = litefs::check_consistency_async(&db, 4.into(), Duration::ZERO).await.unwrap();
/// assert!(c.is_current());
/// # }
/// ```
#[cfg(feature = "tokio")]
pub async fn check_consistency_async(
    db: &Database,
    wanted: Txid,
    wait: Duration,
) -> Result<Consistency> {
    let txid = db.pos_async().await?.txid();
    if txid >= wanted {
        return Ok(Consistency::Current { txid });
    }
    let role = role_async(db).await?;
    if role.is_primary() {
        return Ok(Consistency::Behind { txid, role });
    }
    match db.wait_for_txid_async(wanted, wait).await {
        Ok(pos) => Ok(Consistency::Current { txid: pos.txid() }),
        Err(Error::TxidTimeout { current, .. }) => Ok(behind(role_async(db).await?, current)),
        Err(e) => Err(e),
    }
}

#[cfg(feature = "tokio")]
async fn role_async(db: &Database) -> Result<Role> {
    let mount = db.mount().clone();
    tokio::task::spawn_blocking(move || mount.role())
        .await
        .unwrap_or(Err(Error::WorkerLost))
}

fn behind(role: Role, txid: Txid) -> Consistency {
    match role {
        Role::Replica { primary } => Consistency::Replay { primary, txid },
        role => Consistency::Behind { txid, role },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_header_takes_the_larger_of_both_formats() {
        let t = txid_from_cookie_header("txnum=50; __txid=0000000000000027").unwrap();
        assert_eq!(t, Some(Txid::new(50)));
        let t = txid_from_cookie_header(" __txid=\"00000000000000ff\" ;txnum=1").unwrap();
        assert_eq!(t, Some(Txid::new(255)));
    }

    #[test]
    fn cookie_header_ignores_lookalikes_and_rejects_garbage() {
        assert_eq!(
            txid_from_cookie_header("x__txid=1; txnumber=2; ;=;").unwrap(),
            None
        );
        assert_eq!(txid_from_cookie_header("").unwrap(), None);
        let e = txid_from_cookie_header("txnum=-1").unwrap_err();
        assert_eq!(e.what(), "cookie");
        assert!(txid_from_cookie_header("__txid=27").is_err());
    }

    #[test]
    fn set_cookies_round_trip() {
        let t = Txid::new(0xdead_beef);
        let c = txid_set_cookie(t, Duration::from_secs(300));
        let pair = c.split(';').next().unwrap();
        assert_eq!(txid_from_cookie_header(pair).unwrap(), Some(t));
        let c = txnum_set_cookie(t, Duration::from_secs(300));
        let pair = c.split(';').next().unwrap();
        assert_eq!(pair, format!("txnum={}", 0xdead_beefu64));
        assert_eq!(txid_from_cookie_header(pair).unwrap(), Some(t));
    }
}
