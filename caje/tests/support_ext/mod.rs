//! Helpers for the caching-feature tests, on top of `tests/support/` (which they never change).
//!
//! Included with `#[path = "support_ext/mod.rs"] mod support_ext;` next to `mod support;`.
//!
//! - [`ttl`]: the signed `ttl=` of a `Cache-Status` (the harness's `ttl()` is unsigned, and
//!   stale responses carry `ttl=-N`).
//! - [`body_version`]: the `version=N` of slow_server's first body line.
//! - [`enc`]: percent-encoding for a query component (purge `url=`, nested `header=` values).
//! - [`burst`]: N concurrent requests on separate connections.
//! - [`MiniOrigin`]: a tiny scripted origin whose answer for the *same URL* can change
//!   between requests (slow_server's answer is a function of the URL, so it cannot turn a
//!   cached URL into a 503 or give it a new ETag).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::http::{CacheStatus, Resp};

/// The signed `ttl=` parameter (`ttl=-3` for a response stale for 3 s).
pub fn ttl(cs: &CacheStatus) -> Option<i64> {
    cs.get("ttl")?.parse().ok()
}

/// The `version=N` of a `/gen` body's first line (`path=... version=N`); panics otherwise.
#[track_caller]
pub fn body_version(r: &Resp) -> u64 {
    let line = r.first_line();
    line.rsplit_once("version=")
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no `version=N` in the first body line {line:?} (status {}, headers {:?})",
                r.status, r.headers
            )
        })
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for a query component.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP-date `secs_ago` seconds in the past (negative: in the future).
pub fn http_date_ago(secs_ago: i64) -> String {
    let now = SystemTime::now();
    let t = if secs_ago >= 0 {
        now - Duration::from_secs(secs_ago as u64)
    } else {
        now + Duration::from_secs((-secs_ago) as u64)
    };
    httpdate::fmt_http_date(t)
}

/// Unix seconds `secs_ago` seconds in the past.
pub fn unix_ago(secs_ago: u64) -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
        - secs_ago
}

/// `n` concurrent requests for `url`, each on its own connection; panics on transport errors.
/// The responses come back in request order.
pub async fn burst(n: usize, method: &str, url: &str, headers: &[(&str, &str)]) -> Vec<Resp> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let url = url.to_owned();
        let method = method.to_owned();
        let headers = headers.clone();
        tasks.push(tokio::spawn(async move {
            let hs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            crate::support::request(&method, &url, &hs, b"").await
        }));
    }
    let mut out = Vec::with_capacity(n);
    for t in tasks {
        out.push(t.await.expect("request task panicked"));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// MiniOrigin
// ---------------------------------------------------------------------------------------------

/// A request as the mini origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the mini origin answers.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn new(status: u16, headers: &[(&str, &str)], body: &str) -> Reply {
        Reply {
            status,
            headers: headers
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }
}

type Handler = Box<dyn FnMut(&Seen) -> Reply + Send>;

struct MiniState {
    handler: Handler,
    seen: Vec<Seen>,
}

/// A scripted HTTP/1.1 origin on `127.0.0.1:0`, one response per connection
/// (`Connection: close`). The script can be replaced at any time with [`MiniOrigin::script`].
pub struct MiniOrigin {
    addr: SocketAddr,
    state: Arc<Mutex<MiniState>>,
    task: tokio::task::JoinHandle<()>,
}

impl MiniOrigin {
    pub async fn start(handler: impl FnMut(&Seen) -> Reply + Send + 'static) -> MiniOrigin {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the mini origin");
        let addr = listener.local_addr().expect("mini origin addr");
        let state = Arc::new(Mutex::new(MiniState {
            handler: Box::new(handler),
            seen: Vec::new(),
        }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let _ = serve_one(sock, st).await;
                });
            }
        });
        MiniOrigin { addr, state, task }
    }

    /// `http://IP:PORT`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Replaces the script.
    pub fn script(&self, handler: impl FnMut(&Seen) -> Reply + Send + 'static) {
        self.state.lock().unwrap().handler = Box::new(handler);
    }

    /// Every request received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// Requests received so far.
    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().seen.len()
    }
}

impl Drop for MiniOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve_one(
    mut sock: tokio::net::TcpStream,
    state: Arc<Mutex<MiniState>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let seen = Seen {
        method,
        target,
        headers,
    };
    // Request bodies (unsafe methods) are read and ignored.
    if let Some(len) = seen
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        let mut have = buf.len() - head_end - 4;
        while have < len {
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                break;
            }
            have += n;
        }
    }
    let reply = {
        let mut st = state.lock().unwrap();
        st.seen.push(seen.clone());
        (st.handler)(&seen)
    };
    let no_body = seen.method == "HEAD" || reply.status == 304 || reply.status == 204;
    let mut out = format!("HTTP/1.1 {} X\r\n", reply.status);
    for (n, v) in &reply.headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if reply.status != 304 && reply.status != 204 {
        out.push_str(&format!("Content-Length: {}\r\n", reply.body.len()));
    }
    out.push_str("Connection: close\r\n\r\n");
    let mut bytes = out.into_bytes();
    if !no_body {
        bytes.extend_from_slice(&reply.body);
    }
    sock.write_all(&bytes).await?;
    sock.shutdown().await?;
    Ok(())
}
