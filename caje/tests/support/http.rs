//! A deliberately small HTTP/1.1 client over a raw `TcpStream`.
//!
//! Why not hyper's client: the tests need to send request targets and headers *exactly* as
//! written (`//_caje/list`, `/a%00b`, duplicate `Content-Length`), to see a body that was cut
//! short as an error rather than a short success, and to time the first body byte. Every
//! request uses a fresh connection; nothing is added to the request except a `Host` header
//! when the caller did not give one.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

/// Longest response head accepted from a server.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Read buffer size for bodies.
const READ_CHUNK: usize = 64 * 1024;

/// A complete response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    /// Header fields in the order received, names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    /// First value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// Every value of a header (case-insensitive name).
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body parsed as JSON; panics with the body when it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// caje's member of the `Cache-Status` header; panics when there is none.
    pub fn cache_status(&self) -> CacheStatus {
        self.try_cache_status().unwrap_or_else(|| {
            panic!(
                "no `caje` Cache-Status in response: status {} headers {:?}",
                self.status, self.headers
            )
        })
    }

    /// caje's member of the `Cache-Status` header, if any.
    pub fn try_cache_status(&self) -> Option<CacheStatus> {
        self.header_all("cache-status")
            .into_iter()
            .flat_map(|v| v.split(','))
            .map(CacheStatus::parse)
            .rfind(|cs| cs.cache == "caje")
    }

    /// The `X-Origin-Version` slow_server puts on every `/gen` response.
    pub fn origin_version(&self) -> Option<u64> {
        self.header("x-origin-version")?.trim().parse().ok()
    }

    /// The `Age` header as seconds.
    pub fn age(&self) -> Option<u64> {
        self.header("age")?.trim().parse().ok()
    }

    /// The first line of the body (slow_server's `path=... version=N`).
    pub fn first_line(&self) -> String {
        let end = self
            .body
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.body.len());
        String::from_utf8_lossy(&self.body[..end]).into_owned()
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let name = name.to_ascii_lowercase();
    headers
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.as_str())
}

/// One cache's entry of an RFC 9211 `Cache-Status` header, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheStatus {
    /// The cache name (`caje`).
    pub cache: String,
    /// Parameters as `(key, value)`; flags such as `hit` or `stored` have value `None`.
    pub params: Vec<(String, Option<String>)>,
    /// The raw text, for failure messages.
    pub raw: String,
}

impl CacheStatus {
    pub fn parse(raw: &str) -> CacheStatus {
        let mut parts = raw.split(';').map(str::trim);
        let cache = parts.next().unwrap_or_default().to_owned();
        let params = parts
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (
                    k.trim().to_ascii_lowercase(),
                    Some(v.trim().trim_matches('"').to_owned()),
                ),
                None => (p.to_ascii_lowercase(), None),
            })
            .collect();
        CacheStatus {
            cache,
            params,
            raw: raw.trim().to_owned(),
        }
    }

    /// Whether a bare flag (`hit`, `stored`) is present.
    pub fn has(&self, flag: &str) -> bool {
        self.params.iter().any(|(k, v)| k == flag && v.is_none())
    }

    /// The value of `key=value`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    pub fn is_hit(&self) -> bool {
        self.has("hit")
    }

    pub fn is_stored(&self) -> bool {
        self.has("stored")
    }

    pub fn fwd(&self) -> Option<&str> {
        self.get("fwd")
    }

    pub fn detail(&self) -> Option<&str> {
        self.get("detail")
    }

    pub fn ttl(&self) -> Option<u64> {
        self.get("ttl")?.parse().ok()
    }

    pub fn fwd_status(&self) -> Option<u16> {
        self.get("fwd-status")?.parse().ok()
    }

    /// Panics unless this is a fresh hit (`caje; hit; ttl=N`).
    pub fn assert_hit(&self) {
        assert!(
            self.is_hit() && self.fwd().is_none() && self.ttl().is_some(),
            "expected `caje; hit; ttl=N`, got `{}`",
            self.raw
        );
    }

    /// Panics unless this is `caje; fwd=<fwd>; fwd-status=<status>` (+ `stored` if `stored`).
    pub fn assert_fwd(&self, fwd: &str, status: u16, stored: bool) {
        assert!(
            !self.is_hit()
                && self.fwd() == Some(fwd)
                && self.fwd_status() == Some(status)
                && self.is_stored() == stored,
            "expected `caje; fwd={fwd}; fwd-status={status}{}`, got `{}`",
            if stored { "; stored" } else { "" },
            self.raw
        );
    }

    /// Panics unless this is a forwarded, not stored response with `detail=<detail>`.
    pub fn assert_not_stored(&self, detail: &str) {
        assert!(
            !self.is_hit() && !self.is_stored() && self.detail() == Some(detail),
            "expected a forwarded, not stored response with `detail={detail}`, got `{}`",
            self.raw
        );
    }
}

/// Why a request failed.
#[derive(Debug)]
pub enum ClientError {
    /// Connecting, writing or reading the head failed.
    Io(io::Error),
    /// The response head was malformed.
    BadHead(String),
    /// The head arrived but the body ended before its framing said it would.
    Incomplete {
        status: u16,
        headers: Vec<(String, String)>,
        got: Vec<u8>,
        why: String,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o error: {e}"),
            ClientError::BadHead(s) => write!(f, "bad response head: {s}"),
            ClientError::Incomplete {
                status, got, why, ..
            } => write!(
                f,
                "incomplete body (status {status}, {} bytes): {why}",
                got.len()
            ),
        }
    }
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

/// `(authority, request target)` of `http://authority/target`.
pub fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("only http:// URLs are supported: {url}"));
    match rest.find('/') {
        Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
        None => (rest.to_owned(), "/".to_owned()),
    }
}

/// Builds the bytes of a request. `Host` is added from the URL unless given.
pub fn request_bytes(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let (authority, target) = split_url(url);
    let mut out = format!("{method} {target} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.push_str(&format!("Host: {authority}\r\n"));
    }
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty()
        && !headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"))
    {
        out.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Where a request is sent and from where.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnectOpts {
    /// Bind the client socket to this local IP first (e.g. 127.0.0.2).
    pub source_ip: Option<IpAddr>,
}

async fn connect(addr: SocketAddr, opts: ConnectOpts) -> io::Result<TcpStream> {
    match opts.source_ip {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = if ip.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
}

fn authority_addr(url: &str) -> SocketAddr {
    let (authority, _) = split_url(url);
    authority
        .parse()
        .unwrap_or_else(|e| panic!("URL authority {authority:?} is not IP:PORT: {e}"))
}

/// A response whose head has been read and whose body is read chunk by chunk.
pub struct Streaming {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// When the request was sent.
    pub sent_at: Instant,
    /// When the head was complete.
    pub head_at: Instant,
    reader: BufReader<TcpStream>,
    framing: Framing,
}

#[derive(Debug, Clone, Copy)]
enum Framing {
    Empty,
    Length { remaining: u64 },
    Chunked { in_chunk: u64, done: bool },
    UntilEof { done: bool },
}

impl Streaming {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// caje's `Cache-Status` member; panics when missing.
    pub fn cache_status(&self) -> CacheStatus {
        Resp {
            status: self.status,
            headers: self.headers.clone(),
            body: Vec::new(),
        }
        .cache_status()
    }

    /// The declared Content-Length, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// The next piece of body; `Ok(None)` at the end of a correctly framed body; an error when
    /// the connection ends (or fails) before the framing says the body is complete.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, String> {
        match self.framing {
            Framing::Empty | Framing::UntilEof { done: true } => Ok(None),
            Framing::Chunked { done: true, .. } => Ok(None),
            Framing::Length { remaining: 0 } => Ok(None),
            Framing::Length { remaining } => {
                let want = remaining.min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let n = self
                    .reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading body: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "connection closed with {remaining} body bytes still expected"
                    ));
                }
                buf.truncate(n);
                self.framing = Framing::Length {
                    remaining: remaining - n as u64,
                };
                Ok(Some(buf))
            }
            Framing::UntilEof { done: false } => {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = self
                    .reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading close-delimited body: {e}"))?;
                if n == 0 {
                    self.framing = Framing::UntilEof { done: true };
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(buf))
            }
            Framing::Chunked {
                in_chunk,
                done: false,
            } => {
                let mut in_chunk = in_chunk;
                if in_chunk == 0 {
                    let line = read_line(&mut self.reader).await?;
                    let size_text = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|e| format!("bad chunk size line {line:?}: {e}"))?;
                    if size == 0 {
                        // Trailers until the empty line.
                        loop {
                            let t = read_line(&mut self.reader).await?;
                            if t.is_empty() {
                                break;
                            }
                        }
                        self.framing = Framing::Chunked {
                            in_chunk: 0,
                            done: true,
                        };
                        return Ok(None);
                    }
                    in_chunk = size;
                }
                let want = in_chunk.min(READ_CHUNK as u64) as usize;
                let mut buf = vec![0u8; want];
                let n = self
                    .reader
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("reading chunk: {e}"))?;
                if n == 0 {
                    return Err(format!(
                        "connection closed inside a chunk ({in_chunk} bytes missing)"
                    ));
                }
                buf.truncate(n);
                let left = in_chunk - n as u64;
                if left == 0 {
                    let crlf = read_line(&mut self.reader).await?;
                    if !crlf.is_empty() {
                        return Err(format!("chunk not followed by CRLF: {crlf:?}"));
                    }
                }
                self.framing = Framing::Chunked {
                    in_chunk: left,
                    done: false,
                };
                Ok(Some(buf))
            }
        }
    }

    /// Reads the rest of the body into memory.
    pub async fn collect(mut self) -> Result<Resp, ClientError> {
        let mut body = Vec::new();
        loop {
            match self.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                Ok(None) => {
                    return Ok(Resp {
                        status: self.status,
                        headers: self.headers,
                        body,
                    })
                }
                Err(why) => {
                    return Err(ClientError::Incomplete {
                        status: self.status,
                        headers: self.headers,
                        got: body,
                        why,
                    })
                }
            }
        }
    }

    /// Reads and discards the rest of the body; returns how many bytes there were, plus the
    /// first `keep` bytes.
    pub async fn drain(mut self, keep: usize) -> Result<(u64, Vec<u8>), String> {
        let mut total = 0u64;
        let mut head = Vec::new();
        while let Some(c) = self.chunk().await? {
            if head.len() < keep {
                let take = (keep - head.len()).min(c.len());
                head.extend_from_slice(&c[..take]);
            }
            total += c.len() as u64;
        }
        Ok((total, head))
    }

    /// Whether the server closed the connection after this response (waits up to `wait`).
    pub async fn server_closed(mut self, wait: Duration) -> bool {
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout(wait, self.reader.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // unexpected extra bytes: keep reading
            }
        }
    }
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let mut line = Vec::new();
    let n = reader
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading line: {e}"))?;
    if n == 0 || !line.ends_with(b"\n") {
        return Err("connection closed in the middle of a line".to_owned());
    }
    while line.last() == Some(&b'\n') || line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(String::from_utf8_lossy(&line).into_owned())
}

/// Reads one response head (skipping 1xx) from `reader`.
async fn read_head(
    reader: &mut BufReader<TcpStream>,
) -> Result<(u16, Vec<(String, String)>), ClientError> {
    loop {
        let mut total = 0usize;
        let status_line = read_line(reader).await.map_err(ClientError::BadHead)?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(ClientError::BadHead(format!(
                "bad status line {status_line:?}"
            )));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ClientError::BadHead(format!("bad status line {status_line:?}")))?;
        let mut headers = Vec::new();
        loop {
            let line = read_line(reader).await.map_err(ClientError::BadHead)?;
            total += line.len() + 2;
            if total > MAX_HEAD_BYTES {
                return Err(ClientError::BadHead("response head too large".into()));
            }
            if line.is_empty() {
                break;
            }
            let (n, v) = line
                .split_once(':')
                .ok_or_else(|| ClientError::BadHead(format!("bad header line {line:?}")))?;
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        return Ok((status, headers));
    }
}

fn framing(method: &str, status: u16, headers: &[(String, String)]) -> Result<Framing, String> {
    if method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
        return Ok(Framing::Empty);
    }
    let te: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "transfer-encoding")
        .map(|(_, v)| v.as_str())
        .collect();
    if te
        .iter()
        .any(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return Ok(Framing::Chunked {
            in_chunk: 0,
            done: false,
        });
    }
    let cls: Vec<&str> = headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| v.as_str())
        .collect();
    match cls.as_slice() {
        [] => Ok(Framing::UntilEof { done: false }),
        [one] => one
            .trim()
            .parse()
            .map(|remaining| Framing::Length { remaining })
            .map_err(|e| format!("bad Content-Length {one:?}: {e}")),
        many => Err(format!("several Content-Length headers: {many:?}")),
    }
}

/// Sends a request and returns once the response head has arrived.
pub async fn open(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Streaming, ClientError> {
    open_with(
        method,
        url,
        ConnectOpts::default(),
        request_bytes(method, url, headers, body),
    )
    .await
}

async fn open_with(
    method: &str,
    url: &str,
    opts: ConnectOpts,
    bytes: Vec<u8>,
) -> Result<Streaming, ClientError> {
    let addr = authority_addr(url);
    let mut stream = connect(addr, opts).await?;
    stream.set_nodelay(true)?;
    let sent_at = Instant::now();
    stream.write_all(&bytes).await?;
    stream.flush().await?;
    let mut reader = BufReader::with_capacity(READ_CHUNK, stream);
    let (status, headers) = read_head(&mut reader).await?;
    let head_at = Instant::now();
    let framing = framing(method, status, &headers).map_err(ClientError::BadHead)?;
    Ok(Streaming {
        status,
        headers,
        sent_at,
        head_at,
        reader,
        framing,
    })
}

/// Sends a request and reads the whole response.
pub async fn try_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Resp, ClientError> {
    open(method, url, headers, body).await?.collect().await
}

/// Like [`try_request`] but from a given local source address.
pub async fn try_request_from(
    source_ip: IpAddr,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Resp, ClientError> {
    open_with(
        method,
        url,
        ConnectOpts {
            source_ip: Some(source_ip),
        },
        request_bytes(method, url, headers, b""),
    )
    .await?
    .collect()
    .await
}

/// Sends a request and reads the whole response; panics on any transport error.
pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    try_request(method, url, headers, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// `GET url` with extra headers; panics on any transport error.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", url, headers, b"").await
}

/// `POST url` with an empty body; panics on any transport error.
pub async fn post(url: &str, headers: &[(&str, &str)]) -> Resp {
    request("POST", url, headers, b"").await
}

/// What happened to a hand-written request sent over a raw connection.
#[derive(Debug)]
pub struct RawOutcome {
    /// The response head, if one arrived.
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the server closed the connection after the response (within the wait).
    pub closed: bool,
    /// The error that stopped reading, if any.
    pub error: Option<String>,
}

impl RawOutcome {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// Writes `bytes` as-is to `addr`, reads one response (method used for framing: GET), then
/// waits up to `close_wait` to see whether the server closes the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8], close_wait: Duration) -> RawOutcome {
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream.set_nodelay(true).ok();
    // The server may answer and close before reading everything; a failed write is not the
    // test's concern, the response is.
    let write_error = stream.write_all(bytes).await.err();
    let mut reader = BufReader::with_capacity(READ_CHUNK, stream);
    let (status, headers) = match read_head(&mut reader).await {
        Ok(h) => h,
        Err(e) => {
            return RawOutcome {
                status: None,
                headers: Vec::new(),
                body: Vec::new(),
                closed: true,
                error: Some(format!("{e} (write error: {write_error:?})")),
            }
        }
    };
    let framing = match framing("GET", status, &headers) {
        Ok(f) => f,
        Err(e) => {
            return RawOutcome {
                status: Some(status),
                headers,
                body: Vec::new(),
                closed: false,
                error: Some(e),
            }
        }
    };
    let now = Instant::now();
    let mut s = Streaming {
        status,
        headers: headers.clone(),
        sent_at: now,
        head_at: now,
        reader,
        framing,
    };
    let mut body = Vec::new();
    let mut error = None;
    loop {
        match s.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            Ok(None) => break,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let closed = if error.is_some() {
        true
    } else {
        s.server_closed(close_wait).await
    };
    RawOutcome {
        status: Some(status),
        headers,
        body,
        closed,
        error,
    }
}
