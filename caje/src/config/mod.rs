//! Configuration: the TOML file, its defaults, and validation.
//!
//! Every key has a default except the origins; `caje --origin URL` supplies one origin for every
//! host, so the demo runs with no file at all. A file that fails to parse is reported with its
//! path, line and column (from `toml`'s span) so an operator can fix it without guessing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::ipnet::IpNet;

mod cluster;
mod origin;
mod server;

pub use cluster::{ClusterConfig, ManifestConfig, PopulateConfig, PopulateSource};
pub use origin::{HostHeader, OriginConfig, OriginTimeouts};
pub use server::{AdminConfig, Limits, LogConfig, MetricsConfig, ServerConfig};

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
    /// Write the index snapshot (`cache_dir/index.snapshot`) this often when the index has
    /// changed, besides at a clean shutdown (0: only at a clean shutdown). A start reads it
    /// instead of every entry's header, and checks the directory in the background.
    pub index_snapshot_secs: u64,
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
            index_snapshot_secs: 300,
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
