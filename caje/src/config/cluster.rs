//! The cluster-facing sections: `[cluster]` (this node's address and the peers' secret),
//! `[populate]` (edge warming) and `[manifest]` (how the shared manifest is written).

use std::time::Duration;

use serde::Deserialize;

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
    /// Not configurable: the executable the manifest runs as its writer helper on a real
    /// LiteFS mount (HALT and COMMIT out of process). The binary sets it to itself (which
    /// serves the helper when it finds `CAJE_MANIFEST_WRITER`); `None` (a library user) writes
    /// in-process.
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
