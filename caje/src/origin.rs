//! Origins: which origin serves a client host, and the pooled HTTP(S) client that talks to it.
//!
//! One client is built at start-up and shared by every request (connection pooling). Failures
//! are classified here, once: a connect failure or reset is a 502, any timeout a 504, and the
//! message names the origin and what went wrong.

use std::error::Error as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{HttpConnector, HttpInfo};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::body::Body;
use crate::config::{HostHeader, OriginConfig, OriginTimeouts};
use crate::histogram::Histogram;
use crate::host::Host;

/// One configured origin.
#[derive(Debug, Clone)]
pub struct Origin {
    /// Client host this origin answers for; `None` for `*`.
    pub host: Option<String>,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// `host[:port]` of the origin.
    pub authority: Authority,
    /// Path prefix from the origin URL (no trailing slash), prepended to request paths.
    pub prefix: String,
    /// Which Host header to send.
    pub host_header: HostHeader,
    /// The URL as configured, for messages.
    pub url: String,
}

impl Origin {
    /// The origin URI for a client path+query.
    pub fn uri_for(&self, path_and_query: &str) -> Result<Uri, http::Error> {
        let pq = format!("{}{}", self.prefix, path_and_query);
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(pq)
            .build()
    }
}

/// The routing table: client host → origin.
#[derive(Debug, Clone)]
pub struct Origins {
    list: Vec<Arc<Origin>>,
}

impl Origins {
    /// Builds the table from config (already validated).
    pub fn from_config(configs: &[OriginConfig]) -> Result<Origins, String> {
        let mut list = Vec::new();
        for c in configs {
            let uri: Uri = c
                .url
                .parse()
                .map_err(|e| format!("origin url {:?}: {e}", c.url))?;
            let scheme = uri
                .scheme()
                .cloned()
                .ok_or_else(|| format!("origin url {:?} has no scheme", c.url))?;
            let authority = uri
                .authority()
                .cloned()
                .ok_or_else(|| format!("origin url {:?} has no host", c.url))?;
            let prefix = uri.path().trim_end_matches('/').to_owned();
            list.push(Arc::new(Origin {
                // Validated at load (`Config::validate`); the canonical form is what requests
                // are routed by.
                host: (c.host != "*").then(|| {
                    Host::parse(&c.host, "http")
                        .map_or_else(|_| c.host.to_ascii_lowercase(), Host::into_string)
                }),
                scheme,
                authority,
                prefix,
                host_header: c.host_header,
                url: c.url.clone(),
            }));
        }
        Ok(Origins { list })
    }

    /// The origin for a normalised client host: an exact match first, then `*`.
    pub fn route(&self, host: &str) -> Option<&Arc<Origin>> {
        self.list
            .iter()
            .find(|o| o.host.as_deref() == Some(host))
            .or_else(|| self.list.iter().find(|o| o.host.is_none()))
    }

    /// Whether the host is named explicitly (not only matched by `*`). Absolute-form request
    /// targets are accepted only for such hosts, so caje can never be used as an open proxy.
    pub fn is_explicit(&self, host: &str) -> bool {
        self.list.iter().any(|o| o.host.as_deref() == Some(host))
    }
}

/// Why a request to the origin failed.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// TCP/TLS connection could not be established.
    #[error("could not connect to origin {origin}: {reason}")]
    Connect {
        /// The origin URL.
        origin: String,
        /// What failed.
        reason: String,
    },
    /// The origin did not answer in time.
    #[error("origin {origin} did not {what} within {after:?}")]
    Timeout {
        /// The origin URL.
        origin: String,
        /// What did not happen in time.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The connection failed after it was established.
    #[error("origin {origin} closed or reset the connection: {reason}")]
    Reset {
        /// The origin URL.
        origin: String,
        /// What failed.
        reason: String,
    },
}

impl OriginError {
    /// 502 for connection failures, 504 for timeouts.
    pub fn status(&self) -> http::StatusCode {
        match self {
            OriginError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// The `Cache-Status` detail token.
    pub fn detail(&self) -> &'static str {
        match self {
            OriginError::Connect { .. } => "origin-connect",
            OriginError::Timeout { .. } => "origin-timeout",
            OriginError::Reset { .. } => "origin-reset",
        }
    }
}

/// The shared origin client.
#[derive(Clone)]
pub struct OriginClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    timeouts: OriginTimeouts,
    /// Time from sending a request to its response head (or failure), every fetch included
    /// (clients', revalidations, populate): `caje_origin_fetch_duration_seconds`.
    pub latency: Arc<Histogram>,
}

/// What the origin did for the client request being served: set by
/// [`crate::observe`] around each request, read back for its access log line.
#[derive(Debug, Default)]
pub struct OriginTrace {
    /// Microseconds spent waiting for origin response heads (0: the origin was not asked).
    pub micros: AtomicU64,
    /// The address of the origin's socket that answered, when known.
    pub addr: std::sync::Mutex<Option<SocketAddr>>,
}

tokio::task_local! {
    /// The trace of the client request this task serves (absent in background tasks).
    pub static TRACE: Arc<OriginTrace>;
}

/// Bytes read from an origin connection at a time.
const ORIGIN_READ_BUF: usize = 64 * 1024;

impl OriginClient {
    /// Builds the pooled client.
    pub fn new(timeouts: &OriginTimeouts) -> OriginClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeouts.connect()));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            // Reads of up to 64 KiB from the origin (hyper's adaptive default starts at 8 KiB):
            // a response of a few dozen KiB then reaches the fill's spool as one chunk, and a
            // herd of coalesced clients each gets it in one write. With 8 KiB reads a 16 KiB
            // body came in two chunks, and every waiter was woken and wrote twice.
            .http1_read_buf_exact_size(ORIGIN_READ_BUF)
            .pool_idle_timeout(timeouts.pool_idle())
            .pool_timer(TokioTimer::new())
            .build(https);
        OriginClient {
            client,
            timeouts: timeouts.clone(),
            latency: Arc::default(),
        }
    }

    /// Sends a request and waits for the response head (bounded by the first-byte timeout,
    /// which includes connecting).
    pub async fn send(
        &self,
        origin: &Origin,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, OriginError> {
        let after = self.timeouts.first_byte();
        let started = std::time::Instant::now();
        let result = match tokio::time::timeout(after, self.client.request(req)).await {
            Err(_) => Err(OriginError::Timeout {
                origin: origin.url.clone(),
                what: "send a response head",
                after,
            }),
            Ok(Ok(res)) => Ok(res),
            Ok(Err(e)) => Err(classify(origin, &self.timeouts, &e)),
        };
        let took = started.elapsed();
        self.latency.observe(took);
        let _ = TRACE.try_with(|t| {
            let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
            t.micros.fetch_add(micros, Ordering::Relaxed);
            if let Ok(res) = &result {
                if let Some(info) = res.extensions().get::<HttpInfo>() {
                    *t.addr.lock().unwrap_or_else(|e| e.into_inner()) = Some(info.remote_addr());
                }
            }
        });
        result
    }
}

fn classify(
    origin: &Origin,
    timeouts: &OriginTimeouts,
    err: &hyper_util::client::legacy::Error,
) -> OriginError {
    // Walk the source chain for the root cause; it carries the useful text ("connection
    // refused") and tells a connect timeout apart from a refusal.
    let mut reason = err.to_string();
    let mut timed_out = false;
    let mut src = err.source();
    while let Some(s) = src {
        reason = s.to_string();
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            timed_out |= io.kind() == std::io::ErrorKind::TimedOut;
        }
        src = s.source();
    }
    if err.is_connect() {
        if timed_out || reason.contains("timed out") || reason.contains("timeout") {
            OriginError::Timeout {
                origin: origin.url.clone(),
                what: "accept the connection",
                after: timeouts.connect(),
            }
        } else {
            OriginError::Connect {
                origin: origin.url.clone(),
                reason,
            }
        }
    } else {
        OriginError::Reset {
            origin: origin.url.clone(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[(&str, &str)]) -> Origins {
        let cfg: Vec<OriginConfig> = list
            .iter()
            .map(|(h, u)| OriginConfig {
                host: h.to_string(),
                url: u.to_string(),
                host_header: HostHeader::Origin,
            })
            .collect();
        Origins::from_config(&cfg).unwrap()
    }

    #[test]
    fn exact_host_beats_wildcard() {
        let o = origins(&[("*", "http://a:1"), ("b.example", "https://b:2/base/")]);
        assert_eq!(o.route("b.example").unwrap().url, "https://b:2/base/");
        assert_eq!(o.route("c.example").unwrap().url, "http://a:1");
        assert!(o.is_explicit("b.example"));
        assert!(!o.is_explicit("c.example"));
        let uri = o.route("b.example").unwrap().uri_for("/x?y=1").unwrap();
        assert_eq!(uri.to_string(), "https://b:2/base/x?y=1");
    }

    #[test]
    fn no_wildcard_no_route() {
        let o = origins(&[("b.example", "http://b:2")]);
        assert!(o.route("c.example").is_none());
    }
}
