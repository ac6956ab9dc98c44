//! A request body with malformed chunked framing (an invalid chunk size, chunk data longer
//! than its size, bytes where the last chunk's CRLF belongs) gets 400 and the connection is
//! closed. It is the client's fault: not a 502, not counted in `origin_errors`, and the origin
//! never receives the body as a complete request.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::http::raw;
use support::{within, Caje, CajeConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// An origin that records every byte it receives per connection and answers 200 once a
/// request's chunked body is complete (`0\r\n\r\n` after the head).
struct RecordingOrigin {
    base: String,
    conns: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingOrigin {
    async fn start() -> RecordingOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let conns = Arc::new(Mutex::new(Vec::new()));
        let all = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let idx = {
                    let mut c = all.lock().unwrap();
                    c.push(Vec::new());
                    c.len() - 1
                };
                let all = all.clone();
                tokio::spawn(async move {
                    let mut tmp = [0u8; 4096];
                    loop {
                        let n = match tokio::time::timeout(
                            Duration::from_secs(10),
                            sock.read(&mut tmp),
                        )
                        .await
                        {
                            Ok(Ok(n)) if n > 0 => n,
                            _ => return,
                        };
                        let complete = {
                            let mut c = all.lock().unwrap();
                            c[idx].extend_from_slice(&tmp[..n]);
                            complete_request(&c[idx])
                        };
                        if complete {
                            let _ = sock
                                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
                                .await;
                            return;
                        }
                    }
                });
            }
        });
        RecordingOrigin { base, conns, task }
    }

    /// Whether any connection carried a complete request (head and, for a chunked body, its
    /// last chunk).
    fn saw_complete_request(&self) -> bool {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .any(|c| complete_request(c))
    }
}

fn complete_request(bytes: &[u8]) -> bool {
    let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    if !head.contains("transfer-encoding: chunked") {
        return !head.contains("content-length:") || head.contains("content-length: 0");
    }
    bytes[end + 4..].windows(5).any(|w| w == b"0\r\n\r\n")
}

impl Drop for RecordingOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn check(body: &[u8]) {
    let origin = RecordingOrigin::start().await;
    let caje = Caje::start_with(CajeConfig::for_origin(&origin.base, ""));
    let mut req =
        b"POST /submit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(body);
    let out = raw(caje.addr(), &req, CLOSE_WAIT).await;
    assert_eq!(
        out.status,
        Some(400),
        "body {:?}: {:?} {:?} {:?}",
        String::from_utf8_lossy(body),
        out.status,
        out.headers,
        String::from_utf8_lossy(&out.body)
    );
    assert!(out.closed, "connection left open after a malformed body");
    // Give a forwarded request time to arrive if caje had sent one.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !origin.saw_complete_request(),
        "the origin received a complete request: {:?}",
        origin
            .conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        caje.stat("origin_errors").await,
        0,
        "{}",
        caje.stats().await
    );
}

#[tokio::test]
async fn an_invalid_chunk_size_is_400_and_close() {
    within(30, check(b"5\r\nhello\r\nzz\r\nmore\r\n0\r\n\r\n")).await
}

#[tokio::test]
async fn chunk_data_longer_than_its_size_is_400_and_close() {
    within(30, check(b"3\r\nhello\r\n0\r\n\r\n")).await
}

#[tokio::test]
async fn bytes_after_the_last_chunk_size_are_400_and_close() {
    within(30, check(b"5\r\nhello\r\n0\r\nGARBAGE\r\n\r\n")).await
}

#[tokio::test]
async fn a_well_formed_chunked_body_still_reaches_the_origin() {
    within(30, async {
        let origin = RecordingOrigin::start().await;
        let caje = Caje::start_with(CajeConfig::for_origin(&origin.base, ""));
        let req = b"POST /submit HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let out = raw(caje.addr(), req, CLOSE_WAIT).await;
        assert_eq!(out.status, Some(200), "{:?}", out.headers);
        assert!(origin.saw_complete_request());
    })
    .await
}
