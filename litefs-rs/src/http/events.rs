//! `/events`: typed events and a stream that reconnects with capped backoff.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_core::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::Method;
use serde::Deserialize;

use super::client::{status_error, Client};
use super::HttpError;
use crate::error::{Error, ParseError, Result};
use crate::mount::Role;
use crate::pos::Txid;

/// Longest `/events` line accepted; LiteFS's lines are a few hundred bytes.
const MAX_LINE: usize = 1 << 20;

/// One event from `/events`.
///
/// ```
/// use litefs::http::Event;
/// let e = Event::from_json(r#"{"type":"init","data":{"isPrimary":false,"hostname":"node-a"}}"#).unwrap();
/// assert!(matches!(e, Event::Init { is_primary: false, ref hostname, .. } if hostname.as_deref() == Some("node-a")));
/// assert_eq!(e.role(), Some(litefs::Role::Replica { primary: "node-a".into() }));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// First event of every connection: the node's role at that moment.
    #[non_exhaustive]
    Init {
        /// Whether this node is the primary.
        is_primary: bool,
        /// The primary's hostname (absent on the primary itself, or when none is known).
        hostname: Option<String>,
    },
    /// A transaction was applied to a database on this node.
    Tx(TxEvent),
    /// The primary changed.
    #[non_exhaustive]
    PrimaryChange {
        /// Whether this node is now the primary.
        is_primary: bool,
        /// The new primary's hostname, when this node is not it.
        hostname: Option<String>,
    },
    /// An event type this crate does not know, kept as received.
    #[non_exhaustive]
    Unknown {
        /// The `type` field.
        kind: String,
        /// The whole event.
        raw: serde_json::Value,
    },
}

/// A `tx` event: a transaction applied to `db`.
///
/// ```
/// use litefs::http::Event;
/// let line = r#"{"type":"tx","db":"caje.db","data":{"txID":"0000000000000027","postApplyChecksum":"83b0a1b2c3d4e5f6","pageSize":4096,"commit":2,"timestamp":"2023-09-06T19:12:34.985Z"}}"#;
/// let Event::Tx(tx) = Event::from_json(line).unwrap() else { panic!() };
/// assert_eq!((tx.db.as_str(), tx.txid.get(), tx.page_size, tx.commit), ("caje.db", 39, 4096, 2));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TxEvent {
    /// Database name.
    pub db: String,
    /// The transaction's ID.
    pub txid: Txid,
    /// The database checksum after the transaction (hex, as sent).
    pub post_apply_checksum: String,
    /// Page size in bytes.
    pub page_size: u32,
    /// Database size in pages after the commit.
    pub commit: u32,
    /// When the transaction was committed on the primary (RFC 3339, as sent).
    pub timestamp: String,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    db: Option<String>,
    #[serde(default)]
    data: serde_json::Value,
}

#[derive(Deserialize)]
struct RoleData {
    #[serde(rename = "isPrimary", default)]
    is_primary: bool,
    #[serde(default)]
    hostname: Option<String>,
}

#[derive(Deserialize)]
struct TxData {
    #[serde(rename = "txID")]
    txid: String,
    #[serde(rename = "postApplyChecksum", default)]
    post_apply_checksum: String,
    #[serde(rename = "pageSize", default)]
    page_size: u32,
    #[serde(default)]
    commit: u32,
    #[serde(default)]
    timestamp: String,
}

impl Event {
    /// Parses one line of `/events`.
    ///
    /// ```
    /// use litefs::http::Event;
    /// let e = Event::from_json(r#"{"type":"somethingNew","data":{"x":1}}"#).unwrap();
    /// assert!(matches!(e, Event::Unknown { ref kind, .. } if kind == "somethingNew"));
    /// assert!(Event::from_json("not json").is_err());
    /// ```
    pub fn from_json(line: &str) -> Result<Event, ParseError> {
        let bad = |reason: String| ParseError::new("event", line, reason);
        let raw: RawEvent = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        match raw.kind.as_str() {
            "init" | "primaryChange" => {
                let d: RoleData =
                    serde_json::from_value(raw.data).map_err(|e| bad(e.to_string()))?;
                let hostname = d.hostname.filter(|h| !h.is_empty());
                Ok(if raw.kind == "init" {
                    Event::Init {
                        is_primary: d.is_primary,
                        hostname,
                    }
                } else {
                    Event::PrimaryChange {
                        is_primary: d.is_primary,
                        hostname,
                    }
                })
            }
            "tx" => {
                let d: TxData = serde_json::from_value(raw.data).map_err(|e| bad(e.to_string()))?;
                Ok(Event::Tx(TxEvent {
                    db: raw.db.ok_or_else(|| bad("tx event without db".into()))?,
                    txid: Txid::from_hex16(&d.txid).map_err(|e| bad(e.to_string()))?,
                    post_apply_checksum: d.post_apply_checksum,
                    page_size: d.page_size,
                    commit: d.commit,
                    timestamp: d.timestamp,
                }))
            }
            _ => {
                // Re-parse to keep every field of an unknown event, not just the known ones.
                let raw_value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
                Ok(Event::Unknown {
                    kind: raw.kind,
                    raw: raw_value,
                })
            }
        }
    }

    /// The role this event announces, for `init` and `primaryChange`.
    ///
    /// ```
    /// let e = litefs::http::Event::from_json(r#"{"type":"primaryChange","data":{"isPrimary":true}}"#).unwrap();
    /// assert_eq!(e.role(), Some(litefs::Role::Primary));
    /// ```
    pub fn role(&self) -> Option<Role> {
        let (is_primary, hostname) = match self {
            Event::Init {
                is_primary,
                hostname,
            }
            | Event::PrimaryChange {
                is_primary,
                hostname,
            } => (*is_primary, hostname),
            _ => return None,
        };
        Some(match (is_primary, hostname) {
            (true, _) => Role::Primary,
            (false, Some(h)) => Role::Replica { primary: h.clone() },
            (false, None) => Role::Unknown,
        })
    }
}

/// Reconnection delays: `initial`, doubling per consecutive failure, capped at `max`.
///
/// ```
/// use std::time::Duration;
/// let b = litefs::http::Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
/// assert_eq!(b.delay(1), Duration::from_millis(100));
/// assert_eq!(b.delay(2), Duration::from_millis(200));
/// assert_eq!(b.delay(9), Duration::from_millis(300));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// A backoff from `initial` to `max`. `initial` is at least 1 ms so that a server that
    /// closes every connection at once can never cause a busy loop.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let b = litefs::http::Backoff::new(Duration::ZERO, Duration::ZERO);
    /// assert_eq!(b.delay(1), Duration::from_millis(1));
    /// ```
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        let initial = initial.max(Duration::from_millis(1));
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// The delay before reconnection attempt `failures` (1-based count of consecutive
    /// failures).
    ///
    /// ```
    /// assert_eq!(litefs::http::Backoff::default().delay(1), std::time::Duration::from_millis(100));
    /// ```
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial
            .checked_mul(factor)
            .unwrap_or(self.max)
            .min(self.max)
    }
}

/// The `/events` stream of one node, reconnecting forever.
///
/// Items are `Ok(event)`, or `Err(e)` when the connection failed or dropped (the stream then
/// waits per its [`Backoff`] and reconnects; `e.is_retryable()` is true) or a line did not
/// parse. The stream never ends; drop it to stop — nothing runs in the background.
///
/// After every reconnection LiteFS sends `init` again, so the first `Ok` item after an `Err`
/// is always a fresh [`Event::Init`]. Transactions that happened while disconnected (or that
/// LiteFS dropped because this reader was slow) are not replayed: resynchronise from
/// [`crate::Database::pos`] when you see an `Err`.
///
/// A connection that stays up at least as long as the maximum backoff resets the backoff; a
/// server that accepts and closes at once is retried at growing intervals, never in a loop.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> litefs::Result<()> {
/// use futures_util::StreamExt;
/// use litefs::http::{Client, Event};
/// let mut events = Client::new(Client::DEFAULT_URL)?.events();
/// while let Some(item) = events.next().await {
///     match item {
///         Ok(Event::Tx(tx)) => println!("{} is at {}", tx.db, tx.txid),
///         Ok(other) => println!("{other:?}"),
///         Err(e) => eprintln!("events: {e}; reconnecting"),
///     }
/// }
/// # Ok(()) }
/// ```
pub struct EventStream {
    inner: Pin<Box<dyn Stream<Item = Result<Event>> + Send>>,
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventStream")
    }
}

impl Stream for EventStream {
    type Item = Result<Event>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        self.inner.as_mut().poll_next(cx)
    }
}

struct State {
    client: Client,
    backoff: Backoff,
    /// Consecutive failed or short-lived connections; decides the next delay.
    failures: u32,
    conn: Option<Conn>,
}

struct Conn {
    body: Incoming,
    buf: Vec<u8>,
    opened: Instant,
}

impl EventStream {
    pub(crate) fn new(client: Client, backoff: Backoff) -> EventStream {
        let state = State {
            client,
            backoff,
            failures: 0,
            conn: None,
        };
        EventStream {
            inner: Box::pin(futures_util::stream::unfold(state, |mut st| async move {
                let item = st.next_item().await;
                Some((item, st))
            })),
        }
    }
}

impl State {
    async fn next_item(&mut self) -> Result<Event> {
        const PATH: &str = "/events";
        loop {
            let Some(conn) = self.conn.as_mut() else {
                if self.failures > 0 {
                    tokio::time::sleep(self.backoff.delay(self.failures)).await;
                }
                match self.connect(PATH).await {
                    Ok(conn) => self.conn = Some(conn),
                    Err(e) => {
                        self.failures = self.failures.saturating_add(1);
                        return Err(e.into());
                    }
                }
                continue;
            };
            if let Some(end) = conn.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = conn.buf.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                return Event::from_json(line).map_err(Error::from);
            }
            if conn.buf.len() > MAX_LINE {
                self.disconnected();
                return Err(HttpError::LineTooLong { limit: MAX_LINE }.into());
            }
            match conn.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        conn.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    self.disconnected();
                    return Err(HttpError::Disconnected {
                        source: Some(Box::new(e)),
                    }
                    .into());
                }
                None => {
                    self.disconnected();
                    return Err(HttpError::Disconnected { source: None }.into());
                }
            }
        }
    }

    async fn connect(&self, path: &'static str) -> Result<Conn, HttpError> {
        let res = self.client.send(Method::GET, path).await?;
        let status = res.status();
        if !status.is_success() {
            // Best effort: the body only improves the message.
            let body = res
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            return Err(status_error(path, status, &body));
        }
        Ok(Conn {
            body: res.into_body(),
            buf: Vec::new(),
            opened: Instant::now(),
        })
    }

    fn disconnected(&mut self) {
        let lived = self.conn.take().map(|c| c.opened.elapsed());
        // A connection that lived long was healthy: start the backoff over. One that died
        // young counts as another failure, so a flapping server is not hammered.
        if lived.is_some_and(|d| d >= self.backoff.max) {
            self.failures = 1;
        } else {
            self.failures = self.failures.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_events() {
        let init = Event::from_json(r#"{"type":"init","data":{"isPrimary":true}}"#).unwrap();
        assert_eq!(
            init,
            Event::Init {
                is_primary: true,
                hostname: None
            }
        );
        let change = Event::from_json(
            r#"{"type":"primaryChange","data":{"isPrimary":false,"hostname":"b"}}"#,
        )
        .unwrap();
        assert_eq!(
            change.role(),
            Some(Role::Replica {
                primary: "b".into()
            })
        );
        let tx = Event::from_json(
            r#"{"type":"tx","db":"caje.db","data":{"txID":"0000000000000027","postApplyChecksum":"83b0","pageSize":4096,"commit":2,"timestamp":"2023-09-06T19:12:34.985Z"}}"#,
        )
        .unwrap();
        let Event::Tx(tx) = tx else { panic!("{tx:?}") };
        assert_eq!(tx.txid, Txid::new(0x27));
        assert_eq!(tx.timestamp, "2023-09-06T19:12:34.985Z");
        assert_eq!(tx.post_apply_checksum, "83b0");
    }

    #[test]
    fn keeps_unknown_events_raw() {
        let e = Event::from_json(r#"{"type":"future","data":{"a":[1,2]},"extra":true}"#).unwrap();
        let Event::Unknown { kind, raw } = e else {
            panic!()
        };
        assert_eq!(kind, "future");
        assert_eq!(raw["extra"], serde_json::Value::Bool(true));
        assert_eq!(raw["data"]["a"][1], 2);
    }

    #[test]
    fn rejects_malformed_known_events() {
        for bad in [
            r#"{"data":{}}"#,
            r#"{"type":"tx","data":{"txID":"0000000000000027"}}"#,
            r#"{"type":"tx","db":"a","data":{"txID":"27"}}"#,
            r#"{"type":"init","data":{"isPrimary":"yes"}}"#,
            "",
        ] {
            assert_eq!(Event::from_json(bad).unwrap_err().what(), "event", "{bad}");
        }
    }

    #[test]
    fn backoff_is_capped_and_never_zero() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let delays: Vec<_> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, [10, 20, 35, 35, 35]);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(35));
        assert_eq!(b.delay(0), Duration::from_millis(10));
    }
}
