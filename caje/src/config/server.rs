//! The client-facing and operations sections: `[server]`, `[limits]`, `[admin]`,
//! `[metrics]` and `[log]`.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[limits]` on what a client may send.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Longest method + request target accepted (414 beyond).
    pub max_request_line_bytes: usize,
    /// Largest header section accepted (431 beyond).
    pub max_header_bytes: usize,
    /// Most header fields accepted (431 beyond).
    pub max_headers: usize,
    /// Largest request body forwarded (413 beyond).
    pub max_request_body_bytes: u64,
    /// Time a client has to send its complete request head.
    pub header_read_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_line_bytes: 8 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_request_body_bytes: 10 * 1024 * 1024,
            header_read_timeout_ms: 30_000,
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Bearer token for `/_caje/`; empty means "no token": only `allow_from` clients.
    pub token: String,
    /// Networks allowed to use the admin API when no token is set.
    pub allow_from: Vec<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            token: String::new(),
            allow_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// How long in-flight requests may run after SIGTERM/SIGINT, or after a graceful upgrade
    /// (SIGUSR2) handed the listener to the new process.
    pub shutdown_grace_ms: u64,
    /// On SIGUSR2, how long the new process gets to load its configuration, and then to load
    /// the cache index, before the old one gives up on it and goes on serving.
    pub upgrade_timeout_ms: u64,
    /// Trust `X-Forwarded-For` / `X-Forwarded-Proto` sent by the client (set this only behind
    /// a proxy you control, such as Fly's edge).
    pub trust_forwarded: bool,
    /// A client that reads nothing of a response for this long is disconnected (nginx's
    /// `send_timeout`), so a stalled reader cannot hold a connection and what feeds it.
    pub send_timeout_ms: u64,
    /// Request fields removed before anything else looks at the request: fields with which
    /// some frameworks rewrite the method or URL after the cache has keyed the request.
    pub strip_request_headers: Vec<String>,
    /// Answer fresh hits on plain GET/HEAD requests on caje's own HTTP/1.1 path instead of
    /// hyper's ([`crate::fast`]): the same answer for a fraction of the CPU; other requests
    /// go to hyper. Off: hyper serves every request (to compare, or to rule the fast path
    /// out).
    pub fast_path: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_grace_ms: 10_000,
            upgrade_timeout_ms: 30_000,
            trust_forwarded: false,
            send_timeout_ms: 60_000,
            strip_request_headers: crate::headers::REWRITE_DEFAULT
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            fast_path: true,
        }
    }
}

/// `[metrics]`: `GET /metrics` (Prometheus text format) on its own listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the metrics listener, e.g. `0.0.0.0:9091`; absent: no listener.
    pub listen: Option<SocketAddr>,
}

/// `[log]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `"off"`, `"stdout"`, or the path of a file: one JSON line per request.
    pub access: String,
    /// Lines (in full buffers) that may wait for the access log's writer before new ones drop.
    pub access_queue: usize,
    /// How often the writer takes every thread's buffered lines (nginx's `flush=`), in ms.
    pub access_flush_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            access: "off".into(),
            access_queue: 65_536,
            access_flush_ms: 100,
        }
    }
}
