//! The HTTP client proper: one pooled hyper client per [`Client`], JSON endpoints.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use super::events::{Backoff, EventStream};
use super::HttpError;
use crate::error::Result;
use crate::mount::Role;

/// How much of an error body is kept in [`HttpError::Status`].
const ERROR_BODY_LIMIT: usize = 512;

/// A client for one LiteFS node's HTTP API. Cheap to clone (clones share the connection
/// pool). Requests need a tokio runtime.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> litefs::Result<()> {
/// let client = litefs::http::Client::new(litefs::http::Client::DEFAULT_URL)?;
/// let info = client.info().await?;
/// println!("primary: {}, role: {}", info.is_primary, info.role());
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    base: String,
    http: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>>,
    request_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// What `GET /info` reports about the node.
///
/// ```
/// let info = litefs::http::NodeInfo::from_json(
///     r#"{"clusterID":"LFSC1","isPrimary":false,"candidate":true,"path":"/litefs","primary":{"hostname":"node-a"}}"#,
/// ).unwrap();
/// assert_eq!(info.primary_hostname.as_deref(), Some("node-a"));
/// assert_eq!(info.role(), litefs::Role::Replica { primary: "node-a".into() });
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The cluster ID (`clusterID`), if the node has one.
    pub cluster_id: Option<String>,
    /// Whether this node is the primary.
    pub is_primary: bool,
    /// Whether this node may become primary.
    pub candidate: bool,
    /// The mount path.
    pub path: Option<String>,
    /// The primary's hostname, when known.
    pub primary_hostname: Option<String>,
}

#[derive(Deserialize)]
struct RawInfo {
    #[serde(rename = "clusterID", default)]
    cluster_id: Option<String>,
    #[serde(rename = "isPrimary")]
    is_primary: bool,
    #[serde(default)]
    candidate: bool,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    primary: Option<RawPrimary>,
}

#[derive(Deserialize)]
struct RawPrimary {
    #[serde(default)]
    hostname: Option<String>,
}

impl NodeInfo {
    /// Parses the JSON body of `/info`. Unknown fields are ignored; `isPrimary` is required.
    ///
    /// ```
    /// assert!(litefs::http::NodeInfo::from_json("{}").is_err());
    /// ```
    pub fn from_json(json: &str) -> std::result::Result<NodeInfo, serde_json::Error> {
        let raw: RawInfo = serde_json::from_str(json)?;
        Ok(NodeInfo {
            cluster_id: raw.cluster_id.filter(|s| !s.is_empty()),
            is_primary: raw.is_primary,
            candidate: raw.candidate,
            path: raw.path,
            primary_hostname: raw
                .primary
                .and_then(|p| p.hostname)
                .filter(|h| !h.is_empty()),
        })
    }

    /// The node's role according to `/info`.
    ///
    /// ```
    /// let info = litefs::http::NodeInfo::from_json(r#"{"isPrimary":true}"#).unwrap();
    /// assert_eq!(info.role(), litefs::Role::Primary);
    /// ```
    pub fn role(&self) -> Role {
        if self.is_primary {
            Role::Primary
        } else if let Some(h) = &self.primary_hostname {
            Role::Replica { primary: h.clone() }
        } else {
            Role::Unknown
        }
    }
}

impl Client {
    /// LiteFS's default API address on the local node.
    pub const DEFAULT_URL: &'static str = "http://localhost:20202";

    /// A client for the API at `base_url` (`http://host[:port]`, no path). Requests time out
    /// after 10 s by default; connecting after 2 s.
    ///
    /// ```
    /// let c = litefs::http::Client::new("http://127.0.0.1:20202/").unwrap();
    /// assert_eq!(c.base_url(), "http://127.0.0.1:20202");
    /// ```
    pub fn new(base_url: &str) -> Result<Client> {
        let trimmed = base_url.trim_end_matches('/');
        let uri: Uri = trimmed.parse().map_err(|_| HttpError::InvalidUrl {
            url: base_url.to_owned(),
        })?;
        let path_ok = uri.path().is_empty() || uri.path() == "/";
        if uri.scheme_str() != Some("http") || uri.authority().is_none() || !path_ok {
            return Err(HttpError::InvalidUrl {
                url: base_url.to_owned(),
            }
            .into());
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Client {
            base: trimmed.to_owned(),
            http,
            request_timeout: Duration::from_secs(10),
        })
    }

    /// Sets how long [`Client::info`] and [`Client::promote`] (and the response headers of
    /// `/events`) may take.
    ///
    /// ```
    /// let c = litefs::http::Client::new("http://localhost:20202").unwrap()
    ///     .with_request_timeout(std::time::Duration::from_secs(1));
    /// # drop(c);
    /// ```
    pub fn with_request_timeout(mut self, timeout: Duration) -> Client {
        self.request_timeout = timeout;
        self
    }

    /// The base URL, without a trailing slash.
    ///
    /// ```
    /// let c = litefs::http::Client::new("http://localhost:20202").unwrap();
    /// assert_eq!(c.base_url(), "http://localhost:20202");
    /// ```
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /info`.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> litefs::Result<()> {
    /// let info = litefs::http::Client::new("http://localhost:20202")?.info().await?;
    /// # Ok(()) }
    /// ```
    pub async fn info(&self) -> Result<NodeInfo> {
        const PATH: &str = "/info";
        let res = self.send(Method::GET, PATH).await?;
        let body = self.read_body(PATH, res).await?;
        let text = String::from_utf8_lossy(&body);
        Ok(
            NodeInfo::from_json(&text)
                .map_err(|source| HttpError::Decode { path: PATH, source })?,
        )
    }

    /// `POST /promote`: asks the current primary to hand the lease to this node. Fails with
    /// [`HttpError::Status`] `409` if this node is not a candidate.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> litefs::Result<()> {
    /// litefs::http::Client::new("http://localhost:20202")?.promote().await?;
    /// # Ok(()) }
    /// ```
    pub async fn promote(&self) -> Result<()> {
        const PATH: &str = "/promote";
        let res = self.send(Method::POST, PATH).await?;
        self.read_body(PATH, res).await?;
        Ok(())
    }

    /// `GET /events` as a reconnecting stream (default backoff: 100 ms doubling to 5 s).
    /// See [`EventStream`].
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> litefs::Result<()> {
    /// use futures_util::StreamExt;
    /// let client = litefs::http::Client::new("http://localhost:20202")?;
    /// let mut events = client.events();
    /// while let Some(event) = events.next().await {
    ///     println!("{event:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn events(&self) -> EventStream {
        self.events_with(Backoff::default())
    }

    /// [`Client::events`] with a custom reconnection backoff.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let client = litefs::http::Client::new("http://localhost:20202").unwrap();
    /// let events = client.events_with(litefs::http::Backoff::new(Duration::from_millis(50), Duration::from_secs(1)));
    /// # drop(events);
    /// ```
    pub fn events_with(&self, backoff: Backoff) -> EventStream {
        EventStream::new(self.clone(), backoff)
    }

    /// Sends a body-less request and waits for the response head, within the request timeout.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &'static str,
    ) -> Result<Response<Incoming>, HttpError> {
        let uri: Uri =
            format!("{}{path}", self.base)
                .parse()
                .map_err(|_| HttpError::InvalidUrl {
                    url: self.base.clone(),
                })?;
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Empty::new())
            .map_err(|e| HttpError::Request {
                path,
                source: Box::new(e),
            })?;
        match tokio::time::timeout(self.request_timeout, self.http.request(req)).await {
            Err(_) => Err(HttpError::Timeout {
                path,
                after: self.request_timeout,
            }),
            Ok(Err(e)) => Err(HttpError::Request {
                path,
                source: Box::new(e),
            }),
            Ok(Ok(res)) => Ok(res),
        }
    }

    /// Reads a whole (small) response body; non-2xx statuses become [`HttpError::Status`].
    async fn read_body(
        &self,
        path: &'static str,
        res: Response<Incoming>,
    ) -> Result<Bytes, HttpError> {
        let status = res.status();
        let collected = tokio::time::timeout(self.request_timeout, res.into_body().collect())
            .await
            .map_err(|_| HttpError::Timeout {
                path,
                after: self.request_timeout,
            })?
            .map_err(|e| HttpError::Body {
                path,
                source: Box::new(e),
            })?;
        let body = collected.to_bytes();
        if !status.is_success() {
            return Err(status_error(path, status, &body));
        }
        Ok(body)
    }
}

pub(crate) fn status_error(path: &'static str, status: StatusCode, body: &[u8]) -> HttpError {
    let end = body.len().min(ERROR_BODY_LIMIT);
    HttpError::Status {
        path,
        status: status.as_u16(),
        body: String::from_utf8_lossy(&body[..end]).trim().to_owned(),
    }
}
