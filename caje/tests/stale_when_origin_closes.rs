//! By default (`cache.stale_if_unreachable_secs` > 0) a stale entry is served when the origin
//! accepts the connection and closes it without an answer, or cannot be reached at all;
//! `must-revalidate`, `proxy-revalidate`, `no-cache` and `s-maxage` still forbid it, and
//! `stale_if_unreachable_secs = 0` turns it off.

mod support;
#[path = "support_ext/mod.rs"]
mod support_ext;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{within, Caje, CajeConfig};
use support_ext::ttl;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Long enough after a `max-age=1` store for the entry to be stale by any rounding.
const PAST_MAX_AGE_1: Duration = Duration::from_millis(2200);

/// An origin that answers `Cache-Control: max-age=1, <path without the slash, `_` as `-`>`
/// (with an `ETag`, so that `no-cache` responses are stored too) until
/// `closing` is set, then reads each request and closes the connection without a byte.
struct ClosingOrigin {
    base: String,
    closing: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ClosingOrigin {
    async fn start() -> ClosingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let closing = Arc::new(AtomicBool::new(false));
        let flag = closing.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let flag = flag.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut tmp = [0u8; 2048];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    if flag.load(Ordering::SeqCst) {
                        return; // dropped: the connection closes with no response
                    }
                    let head = String::from_utf8_lossy(&buf);
                    let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                    let extra = path.trim_start_matches('/').replace('_', "-");
                    let cc = if extra.is_empty() {
                        "max-age=1".to_owned()
                    } else {
                        format!("max-age=1, {extra}")
                    };
                    let body = format!("stored copy of {path}\n");
                    let out = format!(
                        "HTTP/1.1 200 OK\r\nCache-Control: {cc}\r\nETag: \"v1\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(out.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        ClosingOrigin {
            base,
            closing,
            task,
        }
    }
}

impl Drop for ClosingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_stale_copy_is_served_when_the_origin_closes_the_connection() {
    within(30, async {
        let origin = ClosingOrigin::start().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base, ""));
        let forbidding = [
            "/must_revalidate",
            "/proxy_revalidate",
            "/no_cache",
            "/s_maxage=1",
        ];
        let first = caje.store("/").await;
        for path in forbidding {
            let r = caje.get(path).await;
            assert_eq!(r.status, 200, "{path}");
            assert!(
                r.cache_status().is_stored(),
                "{path}: `{}`",
                r.cache_status().raw
            );
            caje.settle(path).await;
        }
        origin.closing.store(true, Ordering::SeqCst);
        tokio::time::sleep(PAST_MAX_AGE_1).await;

        let r = caje.get("/").await;
        assert_eq!(r.status, 200, "stale copy expected: {}", r.text());
        assert_eq!(r.body, first.body);
        let cs = r.cache_status();
        assert_eq!(cs.fwd(), Some("stale"), "`{}`", cs.raw);
        assert!(ttl(&cs).is_some_and(|t| t < 0), "`{}`", cs.raw);

        for path in forbidding {
            let r = caje.get(path).await;
            assert_eq!(
                r.status,
                502,
                "{path} served stale: `{}`",
                r.cache_status().raw
            );
        }
    })
    .await
}

#[tokio::test]
async fn stale_if_unreachable_secs_zero_turns_it_off() {
    within(30, async {
        let origin = ClosingOrigin::start().await;
        let caje = Caje::start_with(CajeConfig::for_origin(
            &origin.base,
            "[cache]\nstale_if_unreachable_secs = 0\n",
        ));
        caje.store("/").await;
        origin.closing.store(true, Ordering::SeqCst);
        tokio::time::sleep(PAST_MAX_AGE_1).await;
        let r = caje.get("/").await;
        assert_eq!(r.status, 502, "stale served: `{}`", r.cache_status().raw);
    })
    .await
}
