//! What the origin remembers between requests: per-path version counters (bumped by tests to
//! simulate a changed origin) and per-path request statistics (read by tests to see what the
//! proxy forwarded).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use hyper::header::{IF_MODIFIED_SINCE, IF_NONE_MATCH};
use hyper::{HeaderMap, Method};
use serde_json::{json, Value};

/// Cheap-clone handle to the shared state.
///
/// A std `Mutex` is enough: every critical section is a short map update and none holds the
/// lock across an `.await`.
#[derive(Clone, Default)]
pub struct State {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    /// Keyed by path without query, so every query variant of a path shares a version.
    versions: HashMap<String, u64>,
    total: u64,
    /// BTreeMap so the stats JSON is sorted and diffable.
    paths: BTreeMap<String, PathStats>,
}

#[derive(Default)]
struct PathStats {
    requests: u64,
    /// Requests carrying If-None-Match or If-Modified-Since (revalidations by a cache).
    conditional: u64,
    not_modified: u64,
    by_method: BTreeMap<String, u64>,
    /// Headers of the latest request, so tests can check what a proxy forwarded or stripped.
    last_headers: BTreeMap<String, String>,
}

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere cannot leave these counters inconsistent in a way that matters.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one request for `path` (without query).
    pub fn record(&self, path: &str, method: &Method, headers: &HeaderMap) {
        let mut last_headers = BTreeMap::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value.as_bytes());
            last_headers
                .entry(name.as_str().to_owned())
                .and_modify(|joined: &mut String| {
                    joined.push_str(", ");
                    joined.push_str(&value);
                })
                .or_insert_with(|| value.into_owned());
        }
        let conditional =
            headers.contains_key(IF_NONE_MATCH) || headers.contains_key(IF_MODIFIED_SINCE);

        let mut inner = self.lock();
        inner.total += 1;
        let stats = inner.paths.entry(path.to_owned()).or_default();
        stats.requests += 1;
        stats.conditional += u64::from(conditional);
        *stats
            .by_method
            .entry(method.as_str().to_owned())
            .or_default() += 1;
        stats.last_headers = last_headers;
    }

    /// Counts a 304 for `path`, already counted by [`State::record`].
    pub fn record_not_modified(&self, path: &str) {
        self.lock()
            .paths
            .entry(path.to_owned())
            .or_default()
            .not_modified += 1;
    }

    pub fn version(&self, path: &str) -> u64 {
        self.lock().versions.get(path).copied().unwrap_or(0)
    }

    /// Increments and returns the version of `path`.
    pub fn bump(&self, path: &str) -> u64 {
        let mut inner = self.lock();
        let version = inner.versions.entry(path.to_owned()).or_default();
        *version += 1;
        *version
    }

    /// Forgets all statistics and versions.
    pub fn reset(&self) {
        *self.lock() = Inner::default();
    }

    pub fn stats_json(&self) -> Value {
        let inner = self.lock();
        let paths: serde_json::Map<String, Value> = inner
            .paths
            .iter()
            .map(|(path, s)| {
                let stats = json!({
                    "requests": s.requests,
                    "conditional": s.conditional,
                    "not_modified": s.not_modified,
                    "by_method": s.by_method,
                    "last_headers": s.last_headers,
                });
                (path.clone(), stats)
            })
            .collect();
        json!({ "total": inner.total, "paths": paths })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    #[test]
    fn counts_and_resets() {
        let state = State::default();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, HeaderValue::from_static("\"a\""));
        h.append("x-a", HeaderValue::from_static("1"));
        h.append("x-a", HeaderValue::from_static("2"));
        state.record("/gen/a", &Method::GET, &h);
        state.record("/gen/a", &Method::HEAD, &HeaderMap::new());
        state.record_not_modified("/gen/a");
        assert_eq!(state.bump("/gen/a"), 1);
        assert_eq!(state.version("/gen/a"), 1);

        let stats = state.stats_json();
        assert_eq!(stats["total"], 2);
        let a = &stats["paths"]["/gen/a"];
        assert_eq!(a["requests"], 2);
        assert_eq!(a["conditional"], 1);
        assert_eq!(a["not_modified"], 1);
        assert_eq!(a["by_method"]["GET"], 1);
        assert_eq!(a["by_method"]["HEAD"], 1);
        // last_headers belongs to the latest request only.
        assert_eq!(a["last_headers"], json!({}));

        state.reset();
        assert_eq!(state.version("/gen/a"), 0);
        assert_eq!(state.stats_json(), json!({"total": 0, "paths": {}}));
    }
}
