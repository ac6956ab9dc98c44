//! The origin sections: `[[origins]]` (which origin serves which host) and
//! `[origin_timeouts]`.

use std::time::Duration;

use serde::Deserialize;

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
