//! Configuration: the TOML file, its defaults, and validation.
//!
//! Every key has a default except the origins; `caje --origin URL` supplies one origin for every
//! host, so the demo runs with no file at all. A file that fails to parse is reported with its
//! path, line and column (from `toml`'s span) so an operator can fix it without guessing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::ipnet::IpNet;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a wrong key/value.
    #[error("invalid config file {path}, line {line}, column {column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// The values parse but do not make a usable configuration.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole configuration of one caje node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the proxy listens on.
    pub listen: SocketAddr,
    /// Directory holding cached bodies and metadata.
    pub cache_dir: PathBuf,
    /// Path of the SQLite manifest.
    pub db: PathBuf,
    /// Which origin serves which client `Host`.
    pub origins: Vec<OriginConfig>,
    /// Caching policy knobs.
    pub cache: CacheConfig,
    /// Timeouts toward origins.
    pub origin_timeouts: OriginTimeouts,
    /// Limits on client requests.
    pub limits: Limits,
    /// Admin API access.
    pub admin: AdminConfig,
    /// Listener behaviour.
    pub server: ServerConfig,
    /// Edge warming from the manifest.
    pub populate: PopulateConfig,
    /// The manifest database and LiteFS.
    pub manifest: ManifestConfig,
    /// This node's place in a cluster: its address and the peers' shared secret.
    pub cluster: ClusterConfig,
    /// The Prometheus endpoint.
    pub metrics: MetricsConfig,
    /// The access log.
    pub log: LogConfig,
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

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            cache_dir: PathBuf::from("caje-cache"),
            db: PathBuf::from("caje-manifest.db"),
            origins: Vec::new(),
            cache: CacheConfig::default(),
            origin_timeouts: OriginTimeouts::default(),
            limits: Limits::default(),
            admin: AdminConfig::default(),
            server: ServerConfig::default(),
            populate: PopulateConfig::default(),
            manifest: ManifestConfig::default(),
            cluster: ClusterConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }
}

/// `[cluster]`: how nodes reach each other to fill pages from one another.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// The URL other nodes reach this node's listener at, recorded in the manifest rows this
    /// node stores (e.g. `http://[fdaa::3]:8080`). `{port}` is replaced by the port the node
    /// listens on. Empty: on Fly (`FLY_PRIVATE_IP` set) the machine's private address with
    /// the listen port; elsewhere none, and no node fills from this one.
    pub advertise_url: String,
    /// The secret peers present (`Caje-Peer-Token`) to fill from this node; also read from
    /// `CAJE_CLUSTER_TOKEN`. Empty: this node answers no peer and asks none.
    pub token: String,
    /// Longest wait for a peer's response head before populate asks the origin instead.
    pub peer_timeout_ms: u64,
}

impl ClusterConfig {
    /// The advertised URL once the node listens on `port`: the configured one with `{port}`
    /// replaced, else the Fly private address `fly_private_ip` (IPv6 on Fly) if given.
    pub fn resolve_advertise_url(&self, port: u16, fly_private_ip: Option<&str>) -> String {
        if !self.advertise_url.is_empty() {
            return self.advertise_url.replace("{port}", &port.to_string());
        }
        match fly_private_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
            Some(ip) if ip.contains(':') => format!("http://[{ip}]:{port}"),
            Some(ip) => format!("http://{ip}:{port}"),
            None => String::new(),
        }
    }

    /// The peer timeout (1 s when unset).
    pub fn peer_timeout(&self) -> Duration {
        Duration::from_millis(if self.peer_timeout_ms == 0 {
            1000
        } else {
            self.peer_timeout_ms
        })
    }
}

/// Where populate fetches a page from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PopulateSource {
    /// From the node the manifest row names (`cluster.advertise_url`), answered only from
    /// its cache; the origin when that node does not answer, misses or is this node.
    Peer,
    /// Always from the origin.
    Origin,
}

/// `[populate]`: fetching pages other nodes cached.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PopulateConfig {
    /// Run the background populate task (tombstones are applied either way).
    pub enabled: bool,
    /// Populate fetches in flight at once.
    pub concurrency: usize,
    /// Populate requests per second per origin (0 = unlimited).
    pub rate_per_origin: f64,
    /// Retries of a failed populate fetch.
    pub retries: u32,
    /// How often the manifest is checked for changes (a cheap `PRAGMA data_version`).
    pub poll_ms: u64,
    /// A full pass runs at least this often even without changes.
    pub interval_secs: u64,
    /// Most of `cache.max_disk_bytes` that pages brought in by warming and not yet asked for
    /// by a client of this node may occupy (0.0 to 1.0). Warming never evicts anything; it
    /// only uses free room within this share.
    pub max_fraction: f64,
    /// `peer` or `origin`; unset means `peer` when `cluster.advertise_url` and
    /// `cluster.token` are set, else `origin`.
    pub source: Option<PopulateSource>,
}

impl Default for PopulateConfig {
    fn default() -> Self {
        PopulateConfig {
            enabled: true,
            concurrency: 8,
            rate_per_origin: 100.0,
            retries: 2,
            poll_ms: 250,
            interval_secs: 60,
            max_fraction: 0.5,
            source: None,
        }
    }
}

/// `[manifest]`: how the manifest is written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManifestConfig {
    /// `auto`: use LiteFS HALT when `db` is on a LiteFS mount; `on`: treat the directory as a
    /// LiteFS mount even if it is a plain directory; `off`: plain SQLite.
    pub litefs: crate::manifest::LitefsMode,
    /// Longest a new row waits before its batch is written.
    pub flush_interval_ms: u64,
    /// Most rows written in one transaction.
    pub max_batch: usize,
    /// Most write operations queued; beyond it new writes are refused (counted and logged as
    /// overflow). Queued writes are never dropped.
    pub max_queue: usize,
    /// Longest wait for the LiteFS HALT lock before a flush is retried.
    pub halt_timeout_ms: u64,
    /// At start, how long transient failures to open the manifest on a LiteFS mount (a
    /// halted primary, a replica catching up) are retried before caje exits.
    pub open_timeout_ms: u64,
    /// Longest an admin purge waits for its manifest write (rows and tombstone) before it
    /// answers `202 Accepted`: the local copies are dropped at once, and the write stays queued
    /// and lands when the manifest is writable again.
    pub purge_wait_ms: u64,
    /// Not configurable: the executable the manifest runs as its HALT helper on a real LiteFS
    /// mount. The binary sets it to itself (which serves the helper when it finds
    /// `LITEFS_HALT_BROKER`); `None` (a library user) takes HALT in-process.
    #[serde(skip)]
    pub halt_helper: Option<std::path::PathBuf>,
}

impl Default for ManifestConfig {
    fn default() -> Self {
        ManifestConfig {
            litefs: crate::manifest::LitefsMode::Auto,
            flush_interval_ms: 100,
            max_batch: 512,
            max_queue: 100_000,
            halt_timeout_ms: 10_000,
            open_timeout_ms: 60_000,
            purge_wait_ms: 2_000,
            halt_helper: None,
        }
    }
}

/// One `[[origins]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OriginConfig {
    /// Client `Host` served by this origin (`*` = any host). Compared without case and with
    /// the default port removed.
    pub host: String,
    /// Base URL of the origin, `http://` or `https://`.
    pub url: String,
    /// Which `Host` header to send to the origin.
    #[serde(default)]
    pub host_header: HostHeader,
}

/// The `Host` header caje sends to an origin.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HostHeader {
    /// The origin URL's own host (what `nginx proxy_pass` does by default).
    #[default]
    Origin,
    /// The Host the client asked for (virtual hosting at the origin).
    Client,
}

/// `[cache]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Responses with bodies larger than this are passed through, not stored.
    pub max_object_bytes: u64,
    /// Cache responses without explicit freshness using RFC 9111 §4.2.2 heuristics: a
    /// heuristically cacheable status with `Last-Modified` is fresh for 10% of its age.
    pub heuristic_freshness: bool,
    /// The longest heuristic freshness lifetime, in seconds.
    pub heuristic_max_secs: u64,
    /// Store responses that carry `Set-Cookie`, and replay the stored `Set-Cookie` to every
    /// client that gets the cached copy. Off: such responses are never stored. Only for
    /// origins whose cookies are the same for everyone (a consent banner, an A/B bucket).
    pub store_set_cookie: bool,
    /// Let a client's `Cache-Control: no-cache` / `max-age=0` / `Pragma: no-cache` force an
    /// origin fetch. Off by default so a browser reload cannot bust the cache.
    pub honor_client_no_cache: bool,
    /// Most `Vary` variants kept per URL; the oldest is evicted beyond it.
    pub max_variants: usize,
    /// Longest a request waits for another request's origin fetch of the same URL before
    /// fetching on its own.
    pub lock_timeout_ms: u64,
    /// After a response turns out not to be storable, requests for that URL skip request
    /// coalescing for this long (hit-for-miss), so they are not serialised behind each other.
    pub hit_for_miss_secs: u64,
    /// Serve a stale entry for up to this many seconds past its expiry when the origin cannot
    /// be reached, closes the connection or times out, even without `stale-if-error`
    /// (0 = off). Never overrides `must-revalidate`, `proxy-revalidate`, `no-cache` or
    /// `s-maxage`.
    pub stale_if_unreachable_secs: u64,
    /// The caje-specific targeted cache-control field (RFC 9213). It takes precedence over
    /// `CDN-Cache-Control`, which takes precedence over `Cache-Control`, for caje's own
    /// decisions. Empty disables it.
    pub targeted_cache_control: String,
    /// How long a purge's tombstone stays in the manifest for other nodes to apply it.
    pub tombstone_ttl_secs: u64,
    /// Memory for the hot tier: bodies up to 256 KiB served recently are kept in RAM (evicted
    /// by S3-FIFO, like the disk). 0 disables it; every hit then reads the disk.
    pub memory_bytes: u64,
    /// Disk cap: bodies plus metadata as they occupy the disk (4 KiB blocks). Beyond it, the
    /// scan-resistant eviction policy (S3-FIFO) removes entries in the background.
    pub max_disk_bytes: u64,
    /// Most entries on disk, if set (the byte cap applies either way).
    pub max_entries: Option<usize>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_object_bytes: 1 << 30,
            heuristic_freshness: true,
            heuristic_max_secs: 86_400,
            store_set_cookie: false,
            honor_client_no_cache: false,
            max_variants: 32,
            lock_timeout_ms: 10_000,
            hit_for_miss_secs: 10,
            stale_if_unreachable_secs: 3_600,
            targeted_cache_control: "Caje-Cache-Control".into(),
            tombstone_ttl_secs: 86_400,
            memory_bytes: 64 * 1024 * 1024,
            // 10 GiB: safe on the small volumes nodes usually get; raise it to use more.
            max_disk_bytes: 10 << 30,
            max_entries: None,
        }
    }
}

/// `[origin_timeouts]`, all in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OriginTimeouts {
    /// TCP (and TLS) connect timeout.
    pub connect_ms: u64,
    /// Time from sending the request to receiving the response head.
    pub first_byte_ms: u64,
    /// Longest pause between two body chunks before the transfer is aborted.
    pub body_idle_ms: u64,
    /// Idle pooled connections are closed after this.
    pub pool_idle_ms: u64,
}

impl Default for OriginTimeouts {
    fn default() -> Self {
        OriginTimeouts {
            connect_ms: 5_000,
            first_byte_ms: 30_000,
            body_idle_ms: 30_000,
            pool_idle_ms: 90_000,
        }
    }
}

impl OriginTimeouts {
    /// Connect timeout as a `Duration`.
    pub fn connect(&self) -> Duration {
        Duration::from_millis(self.connect_ms)
    }
    /// First-byte timeout as a `Duration`.
    pub fn first_byte(&self) -> Duration {
        Duration::from_millis(self.first_byte_ms)
    }
    /// Body idle timeout as a `Duration`.
    pub fn body_idle(&self) -> Duration {
        Duration::from_millis(self.body_idle_ms)
    }
    /// Pool idle timeout as a `Duration`.
    pub fn pool_idle(&self) -> Duration {
        Duration::from_millis(self.pool_idle_ms)
    }
}

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
        }
    }
}

impl Config {
    /// Reads and parses a TOML file. Does not validate; call [`Config::validate`] after
    /// applying command-line overrides.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses TOML text; `path` is only used in error messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|span| line_col(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    /// Whether populate asks peers first (see [`PopulateConfig::source`]): never without a
    /// cluster token, since no peer would answer.
    pub fn fills_from_peers(&self) -> bool {
        let cluster = &self.cluster;
        !cluster.token.is_empty()
            && match self.populate.source {
                Some(source) => source == PopulateSource::Peer,
                None => !cluster.advertise_url.is_empty(),
            }
    }

    /// Checks the values that serde cannot: origins present and well-formed, networks parse.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.populate.source == Some(PopulateSource::Peer) && self.cluster.token.is_empty() {
            return Err(ConfigError::Invalid(
                "populate.source = \"peer\" needs cluster.token (or CAJE_CLUSTER_TOKEN): peers answer only a node that presents it".into(),
            ));
        }
        if self.origins.is_empty() {
            return Err(ConfigError::Invalid(
                "no origin configured: add an [[origins]] table or pass --origin URL".into(),
            ));
        }
        for o in &self.origins {
            let uri: http::Uri = o.url.parse().map_err(|e| {
                ConfigError::Invalid(format!("origin url {:?} is not a URL: {e}", o.url))
            })?;
            match uri.scheme_str() {
                Some("http") | Some("https") => {}
                _ => {
                    return Err(ConfigError::Invalid(format!(
                        "origin url {:?} must start with http:// or https://",
                        o.url
                    )))
                }
            }
            if uri.host().is_none() {
                return Err(ConfigError::Invalid(format!(
                    "origin url {:?} has no host",
                    o.url
                )));
            }
            if o.host.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "origin {:?} has an empty host; use \"*\" for any host",
                    o.url
                )));
            }
        }
        for o in self.origins.iter().filter(|o| o.host != "*") {
            crate::host::Host::parse(&o.host, "http").map_err(|e| {
                ConfigError::Invalid(format!(
                    "origin host {:?} is not a valid host ({e}); use a name such as \"www.example.com\" or \"*\"",
                    o.host
                ))
            })?;
        }
        for name in &self.server.strip_request_headers {
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ConfigError::Invalid(format!(
                    "server.strip_request_headers entry {name:?} is not a header name"
                ))
            })?;
        }
        if self.server.upgrade_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "server.upgrade_timeout_ms must be at least 1 (milliseconds)".into(),
            ));
        }
        let f = self.populate.max_fraction;
        if !(0.0..=1.0).contains(&f) {
            return Err(ConfigError::Invalid(format!(
                "populate.max_fraction must be between 0.0 and 1.0, not {f}"
            )));
        }
        if self.server.send_timeout_ms == 0 {
            return Err(ConfigError::Invalid(
                "server.send_timeout_ms must be at least 1 (milliseconds)".into(),
            ));
        }
        for net in &self.admin.allow_from {
            IpNet::parse(net).ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "admin.allow_from entry {net:?} is not an address or CIDR network"
                ))
            })?;
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(ConfigError::Invalid(
                "limits.max_header_bytes must be at least 1024".into(),
            ));
        }
        Ok(())
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_names_line_and_column() {
        let text = "listen = \"127.0.0.1:1\"\n\n[cache]\nmax_object_bytes = \"big\"\n";
        let err = Config::from_toml(text, Path::new("x.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("x.toml"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = Config::from_toml("[cache]\nmax_obj = 1\n", Path::new("c.toml")).unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn missing_origin_is_invalid() {
        let cfg = Config::from_toml("", Path::new("c.toml")).unwrap();
        assert!(cfg.validate().is_err());
    }

    #[test]
    fn ipnet_contains() {
        let n = IpNet::parse("127.0.0.0/8").unwrap();
        assert!(n.contains("127.1.2.3".parse().unwrap()));
        assert!(n.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!n.contains("10.0.0.1".parse().unwrap()));
        let one = IpNet::parse("127.0.0.2").unwrap();
        assert!(!one.contains("127.0.0.1".parse().unwrap()));
        assert!(IpNet::parse("::1/128")
            .unwrap()
            .contains("::1".parse().unwrap()));
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        assert!(IpNet::parse("nonsense").is_none());
    }

    #[test]
    fn advertise_url_takes_the_port_and_defaults_to_the_fly_private_address() {
        let mut c = ClusterConfig::default();
        assert_eq!(c.resolve_advertise_url(8080, None), "");
        assert_eq!(
            c.resolve_advertise_url(8080, Some("fdaa:0:1::3")),
            "http://[fdaa:0:1::3]:8080"
        );
        assert_eq!(
            c.resolve_advertise_url(81, Some("10.0.0.3")),
            "http://10.0.0.3:81"
        );
        c.advertise_url = "http://127.0.0.1:{port}".into();
        assert_eq!(
            c.resolve_advertise_url(4000, Some("fdaa::3")),
            "http://127.0.0.1:4000"
        );
    }

    #[test]
    fn peer_source_needs_a_token_and_defaults_to_peer_with_an_address() {
        let base = "[[origins]]\nhost = \"*\"\nurl = \"http://127.0.0.1:9\"\n";
        let parse = |extra: &str| Config::from_toml(&format!("{base}{extra}"), Path::new("c.toml"));
        let c = parse("[populate]\nsource = \"peer\"\n").unwrap();
        assert!(c.validate().is_err());
        let c = parse("[cluster]\ntoken = \"t\"\nadvertise_url = \"http://h:{port}\"\n").unwrap();
        assert!(c.fills_from_peers());
        let c = parse("[cluster]\ntoken = \"t\"\n").unwrap();
        assert!(!c.fills_from_peers());
        let c = parse(
            "[populate]\nsource = \"origin\"\n[cluster]\ntoken = \"t\"\nadvertise_url = \"http://h\"\n",
        )
        .unwrap();
        assert!(!c.fills_from_peers());
    }
}
