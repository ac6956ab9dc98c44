//! Starts the real `slow_server` binary on port 0 and speaks HTTP/1.1 to it.
// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Upper bound for any single test body, so a regression hangs nothing.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn bounded<F: Future>(test: F) -> F::Output {
    tokio::time::timeout(TEST_TIMEOUT, test)
        .await
        .expect("test exceeded its time bound")
}

/// A running origin; killed when dropped.
pub struct Origin {
    child: Child,
    /// The exact line the server printed on stdout.
    pub line: String,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Origin {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_slow_server"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra_args)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("RUST_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawning slow_server");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            // Keep draining so the server can never block on a full pipe.
            for _ in lines {}
        });
        let mut origin = Origin {
            child,
            line: String::new(),
            base: String::new(),
        };
        // `origin` already owns the child, so a failed start below still kills it.
        origin.line = match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Some(Ok(line))) => line,
            other => panic!("slow_server printed no listening line: {other:?}"),
        };
        origin.base = origin
            .line
            .strip_prefix("slow_server listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {:?}", origin.line))
            .to_owned();
        origin
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("{}{path_and_query}", self.base)
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(mut self) -> ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + TEST_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for slow_server") {
                return status;
            }
            assert!(Instant::now() < deadline, "slow_server ignored SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fully read response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header"))
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().expect("ASCII header"))
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn build(method: Method, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::new())).expect("valid request")
}

pub async fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Reply {
    let response = client()
        .request(build(method, url, headers))
        .await
        .expect("request failed");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("reading body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    request(Method::GET, url, &[]).await
}

pub async fn post(url: &str) -> Reply {
    request(Method::POST, url, &[]).await
}

/// Sends a raw GET and reads until the server closes the connection; returns the head (as
/// text) and the body bytes that arrived. Only for responses that end the connection.
pub async fn raw_get_until_close(addr: &str, path: &str) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    // A reset instead of a FIN is also a way to end; what arrived before it is what counts.
    let _ = stream.read_to_end(&mut raw).await;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    (head, raw[split + 4..].to_vec())
}
