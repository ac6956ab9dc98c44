//! What finished requests did: counts by cache outcome, method and status class, latency,
//! bytes served and the hottest URLs. [`crate::observe`] records each proxied request here
//! once, when its response body is done; `/metrics` ([`crate::metrics`]) and `/_caje/stats`
//! (the dashboard) both read these same counters.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};

use crate::access_log::AccessLog;
use crate::histogram::Histogram;

/// What the cache did for one response, read from its `Cache-Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Served fresh from the cache.
    Hit,
    /// Fetched from the origin (stored or not).
    Miss,
    /// A stale copy served (stale-while-revalidate, stale-if-error).
    Stale,
    /// A stale copy the origin confirmed with 304.
    Revalidated,
    /// Waited for another request's origin fetch.
    Collapsed,
    /// Passed to the origin without the cache (other methods, ranges, request bodies).
    Pass,
    /// No usable answer: the origin failed, or caje refused the request.
    Error,
}

impl CacheOutcome {
    /// Every outcome, in label order.
    pub const ALL: [CacheOutcome; 7] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::Stale,
        CacheOutcome::Revalidated,
        CacheOutcome::Collapsed,
        CacheOutcome::Pass,
        CacheOutcome::Error,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Revalidated => "revalidated",
            CacheOutcome::Collapsed => "collapsed",
            CacheOutcome::Pass => "pass",
            CacheOutcome::Error => "error",
        }
    }

    /// Classifies a response by its `Cache-Status` value (see [`crate::cache_status`]) and
    /// status code.
    pub fn classify(cache_status: Option<&str>, status: u16) -> CacheOutcome {
        let Some(cs) = cache_status else {
            return CacheOutcome::Error;
        };
        let (mut hit, mut collapsed, mut stale, mut local) = (false, false, false, false);
        let (mut fwd, mut fwd_status) = (None, None);
        for param in cs.split(';').skip(1).map(str::trim) {
            let (k, v) = param.split_once('=').unwrap_or((param, ""));
            match k {
                "hit" => hit = true,
                "collapsed" => collapsed = true,
                "ttl" => stale = v.starts_with('-'),
                "fwd" => fwd = Some(v),
                "fwd-status" => fwd_status = v.parse::<u16>().ok(),
                "detail" => local = v == "local",
                _ => {}
            }
        }
        if stale {
            CacheOutcome::Stale
        } else if hit {
            CacheOutcome::Hit
        } else if local {
            // Answered by caje itself on the proxy path: a refused request.
            CacheOutcome::Error
        } else if fwd == Some("stale") && fwd_status == Some(304) {
            CacheOutcome::Revalidated
        } else if collapsed {
            CacheOutcome::Collapsed
        } else if fwd.is_some() && fwd_status.is_none() {
            CacheOutcome::Error
        } else if matches!(fwd, Some("method" | "request" | "bypass")) {
            CacheOutcome::Pass
        } else if fwd.is_some() {
            CacheOutcome::Miss
        } else if status >= 500 {
            CacheOutcome::Error
        } else {
            CacheOutcome::Hit
        }
    }
}

/// Methods with their own label; anything else counts as `OTHER`.
pub const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PURGE", "OTHER",
];

/// Status classes `1xx`..`5xx`.
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

fn method_index(method: &str) -> usize {
    METHODS[..8].iter().position(|m| *m == method).unwrap_or(8)
}

fn class_index(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}

/// One finished proxied request.
#[derive(Debug, Clone, Copy)]
pub struct Finished<'a> {
    /// The request method.
    pub method: &'a str,
    /// The response status.
    pub status: u16,
    /// What the cache did.
    pub outcome: CacheOutcome,
    /// Body bytes sent to the client.
    pub bytes: u64,
    /// From the request's arrival to the end (or abort) of its response body.
    pub duration: Duration,
    /// `host` + path and query, for the hottest URLs.
    pub url: &'a str,
}

/// The request counters of one node.
#[derive(Debug)]
pub struct Telemetry {
    /// `[outcome][method][status class]`: fixed, so counting is one relaxed add.
    requests: Vec<AtomicU64>,
    /// Request durations, arrival to the end of the response body.
    pub request_seconds: Histogram,
    /// Response body bytes sent to clients (proxied requests).
    pub bytes_served: AtomicU64,
    hot: Mutex<HashMap<String, u64>>,
    /// The access log, when `log.access` is not `off`.
    pub access_log: Option<AccessLog>,
}

/// URLs the hottest-URL table tracks before it halves every count and forgets the coldest.
const HOT_CAPACITY: usize = 2048;

impl Telemetry {
    /// Counters at zero, with the access log (if any).
    pub fn new(access_log: Option<AccessLog>) -> Telemetry {
        let n = CacheOutcome::ALL.len() * METHODS.len() * STATUS_CLASSES.len();
        Telemetry {
            requests: (0..n).map(|_| AtomicU64::new(0)).collect(),
            request_seconds: Histogram::default(),
            bytes_served: AtomicU64::new(0),
            hot: Mutex::new(HashMap::new()),
            access_log,
        }
    }

    fn slot(outcome: usize, method: usize, class: usize) -> usize {
        (outcome * METHODS.len() + method) * STATUS_CLASSES.len() + class
    }

    /// Counts one finished request.
    pub fn record(&self, f: &Finished<'_>) {
        let o = CacheOutcome::ALL
            .iter()
            .position(|x| *x == f.outcome)
            .unwrap_or(0);
        let i = Self::slot(o, method_index(f.method), class_index(f.status));
        self.requests[i].fetch_add(1, Ordering::Relaxed);
        self.request_seconds.observe(f.duration);
        self.bytes_served.fetch_add(f.bytes, Ordering::Relaxed);
        // The table is a sample under contention: a request that finds it locked is not
        // counted there rather than wait (it is counted everywhere else).
        if let Ok(mut hot) = self.hot.try_lock() {
            if let Some(n) = hot.get_mut(f.url) {
                *n += 1;
            } else {
                if hot.len() >= HOT_CAPACITY {
                    hot.retain(|_, n| {
                        *n /= 2;
                        *n > 0
                    });
                }
                if hot.len() < HOT_CAPACITY {
                    hot.insert(f.url.to_owned(), 1);
                }
            }
        }
    }

    /// Every non-zero request counter: `(outcome, method, status class, count)`.
    pub fn request_counts(&self) -> Vec<(&'static str, &'static str, &'static str, u64)> {
        let mut out = Vec::new();
        for (o, outcome) in CacheOutcome::ALL.iter().enumerate() {
            for (m, method) in METHODS.iter().enumerate() {
                for (c, class) in STATUS_CLASSES.iter().enumerate() {
                    let n = self.requests[Self::slot(o, m, c)].load(Ordering::Relaxed);
                    if n > 0 {
                        out.push((outcome.as_str(), *method, *class, n));
                    }
                }
            }
        }
        out
    }

    /// The `n` most requested URLs (decayed counts), most requested first.
    pub fn hottest(&self, n: usize) -> Vec<(String, u64)> {
        let hot = self.hot.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(String, u64)> = hot.iter().map(|(k, v)| (k.clone(), *v)).collect();
        drop(hot);
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// The live figures the dashboard polls (part of `/_caje/stats`); `origin` is the origin
    /// fetch histogram.
    pub fn live_json(&self, origin: &Histogram, origin_bytes: u64) -> Value {
        let mut by_outcome: HashMap<&str, u64> =
            CacheOutcome::ALL.iter().map(|o| (o.as_str(), 0)).collect();
        let mut by_class: HashMap<&str, u64> = HashMap::new();
        let mut total = 0;
        for (outcome, _, class, n) in self.request_counts() {
            *by_outcome.entry(outcome).or_default() += n;
            *by_class.entry(class).or_default() += n;
            total += n;
        }
        let req = self.request_seconds.snapshot();
        let ori = origin.snapshot();
        let ms = |s: Option<f64>| s.map(|s| (s * 1e6).round() / 1e3);
        json!({
            "requests": total,
            "by_outcome": by_outcome,
            "by_status_class": by_class,
            "bytes_served": self.bytes_served.load(Ordering::Relaxed),
            "origin_bytes": origin_bytes,
            "origin_fetches": ori.count,
            "latency_ms": { "p50": ms(req.quantile(0.5)), "p99": ms(req.quantile(0.99)) },
            "origin_latency_ms": { "p50": ms(ori.quantile(0.5)), "p99": ms(ori.quantile(0.99)) },
            // Not cumulative; `le` in seconds, the last one +Inf (null in JSON).
            "latency_buckets": req.buckets.iter().map(|(le, n)| json!([if le.is_finite() { json!(le) } else { Value::Null }, n])).collect::<Vec<_>>(),
            "hot_urls": self.hottest(10).into_iter().map(|(url, n)| json!({"url": url, "count": n})).collect::<Vec<_>>(),
            "access_log": self.access_log.as_ref().map(|l| json!({"written": l.written(), "dropped": l.dropped()})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CacheOutcome::*;

    #[test]
    fn outcomes_from_cache_status() {
        let c = |s: &str, st| CacheOutcome::classify(Some(s), st);
        assert_eq!(c("caje; hit; ttl=5", 200), Hit);
        assert_eq!(
            c("caje; hit; ttl=-3; detail=stale-while-revalidate", 200),
            Stale
        );
        assert_eq!(
            c(
                "caje; fwd=stale; fwd-status=503; ttl=-9; detail=stale-if-error",
                200
            ),
            Stale
        );
        assert_eq!(c("caje; fwd=uri-miss; fwd-status=200; stored", 200), Miss);
        assert_eq!(c("caje; fwd=stale; fwd-status=304", 200), Revalidated);
        assert_eq!(
            c("caje; fwd=uri-miss; fwd-status=200; stored; collapsed", 200),
            Collapsed
        );
        assert_eq!(c("caje; fwd=method; fwd-status=201", 201), Pass);
        assert_eq!(
            c("caje; fwd=bypass; fwd-status=200; detail=request-body", 200),
            Pass
        );
        assert_eq!(c("caje; fwd=uri-miss; detail=origin-timeout", 504), Error);
        assert_eq!(c("caje; detail=local", 421), Error);
        assert_eq!(CacheOutcome::classify(None, 500), Error);
    }

    #[test]
    fn counts_by_labels_and_hottest() {
        let t = Telemetry::new(None);
        for i in 0..5 {
            t.record(&Finished {
                method: "GET",
                status: 200,
                outcome: Hit,
                bytes: 10,
                duration: Duration::from_millis(1),
                url: if i < 3 { "a/x" } else { "a/y" },
            });
        }
        t.record(&Finished {
            method: "BREW",
            status: 599,
            outcome: Error,
            bytes: 0,
            duration: Duration::from_millis(1),
            url: "a/z",
        });
        let counts = t.request_counts();
        assert!(counts.contains(&("hit", "GET", "2xx", 5)), "{counts:?}");
        assert!(counts.contains(&("error", "OTHER", "5xx", 1)), "{counts:?}");
        assert_eq!(t.bytes_served.load(Ordering::Relaxed), 50);
        assert_eq!(t.hottest(2), vec![("a/x".into(), 3), ("a/y".into(), 2)]);
    }
}
