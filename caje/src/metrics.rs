//! `GET /metrics` in the Prometheus text format, on its own listener (`metrics.listen`).
//!
//! Nothing here counts anything: each scrape reads the counters the rest of caje keeps
//! ([`crate::stats::Stats`], [`crate::telemetry::Telemetry`], the store, the manifest's
//! owner thread, populate, tombstones) into a [`prometheus_client`] collector, so `/metrics`
//! and the admin JSON can never disagree. Counter names get their `_total` from the encoder.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{prometheus_text, DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::app::App;
use crate::body::{self, Body};
use crate::histogram;
use crate::stats::Stats;

/// One sample's value.
#[derive(Debug, Clone, Copy)]
enum Val {
    Count(u64),
    Seconds(f64),
    Gauge(i64),
    GaugeF(f64),
}

/// One metric family with its samples.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(Vec<(&'static str, String)>, Val)>,
}

/// Everything one scrape reports, read before encoding (some reads are async).
#[derive(Debug, Default)]
struct Scrape {
    families: Vec<Family>,
    histograms: Vec<(&'static str, &'static str, histogram::Snapshot)>,
}

impl Scrape {
    fn one(&mut self, name: &'static str, help: &'static str, v: Val) {
        self.families.push(Family {
            name,
            help,
            samples: vec![(Vec::new(), v)],
        });
    }

    fn labelled(
        &mut self,
        name: &'static str,
        help: &'static str,
        samples: Vec<(Vec<(&'static str, String)>, Val)>,
    ) {
        self.families.push(Family {
            name,
            help,
            samples,
        });
    }

    /// Reads every counter now.
    async fn gather(app: &App) -> Scrape {
        use Val::*;
        let mut s = Scrape::default();
        let t = &app.telemetry;
        s.labelled(
            "caje_http_requests",
            "Finished proxied requests by cache outcome (from Cache-Status), method and status class.",
            t.request_counts()
                .into_iter()
                .map(|(c, m, st, n)| {
                    (
                        vec![("cache", c.into()), ("method", m.into()), ("status", st.into())],
                        Count(n),
                    )
                })
                .collect(),
        );
        s.histograms.push((
            "caje_http_request_duration_seconds",
            "Time from a proxied request's arrival to the end of its response body.",
            t.request_seconds.snapshot(),
        ));
        s.histograms.push((
            "caje_origin_fetch_duration_seconds",
            "Time from sending an origin request to its response head (or failure).",
            app.client.latency.snapshot(),
        ));
        let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        s.one(
            "caje_http_response_body_bytes",
            "Response body bytes sent to clients for proxied requests.",
            Count(load(&t.bytes_served)),
        );
        let st = &app.stats;
        let g = Stats::get;
        s.one(
            "caje_origin_response_body_bytes",
            "Origin response body bytes received.",
            Count(g(&st.origin_body_bytes)),
        );
        s.one(
            "caje_cache_hits",
            "Requests answered from the cache.",
            Count(g(&st.hits)),
        );
        s.one(
            "caje_fast_path_hits",
            "Hits answered on the fast path, without hyper (included in caje_cache_hits).",
            Count(g(&st.fast_hits)),
        );
        s.one(
            "caje_fast_path_passed",
            "Bodiless requests the fast path passed to the full request path one at a time.",
            Count(g(&st.fast_passed)),
        );
        s.one(
            "caje_fast_path_handovers",
            "Connections the fast path handed to hyper for good (a request with a body or an upgrade).",
            Count(g(&st.fast_handovers)),
        );
        s.one(
            "caje_cache_misses",
            "GET/HEAD requests that went to the origin.",
            Count(g(&st.misses)),
        );
        s.one(
            "caje_cache_stored",
            "Responses written to the cache.",
            Count(g(&st.stored)),
        );
        s.one(
            "caje_cache_not_stored",
            "Responses the policy refused to store.",
            Count(g(&st.not_stored)),
        );
        s.one(
            "caje_cache_store_failures",
            "Store attempts that failed (I/O, disk full, slow writer).",
            Count(g(&st.store_failures)),
        );
        s.one(
            "caje_cache_corrupt_entries",
            "Entries found corrupt and removed.",
            Count(g(&st.corrupt_entries)),
        );
        s.one(
            "caje_origin_errors",
            "Origin failures answered with 502/504 or an aborted body.",
            Count(g(&st.origin_errors)),
        );
        s.one(
            "caje_cache_collapsed",
            "Requests that waited for another request's origin fetch.",
            Count(g(&st.collapsed)),
        );
        s.one(
            "caje_cache_revalidated",
            "Revalidations the origin answered with 304.",
            Count(g(&st.revalidated)),
        );
        s.one(
            "caje_cache_stale_served",
            "Stale responses served.",
            Count(g(&st.stale_served)),
        );
        s.one(
            "caje_cache_background_revalidations",
            "Background revalidations started.",
            Count(g(&st.background_revalidations)),
        );
        s.one(
            "caje_cache_purged_entries",
            "Entries removed by purges and invalidations.",
            Count(g(&st.purged)),
        );
        let (disk_entries, disk_bytes) = app.store.usage();
        let (mem_entries, mem_bytes) = app.store.hot().usage();
        let (meta_bytes, meta_cap) = app.store.metas_usage();
        let (_, meta_entries) = app.store.index_memory();
        // `metadata`: the hot entries' compact metadata, a share of `cache.memory_bytes`.
        let tier = |d: i64, m: i64, meta: i64| {
            vec![
                (vec![("tier", "disk".to_owned())], Gauge(d)),
                (vec![("tier", "memory".to_owned())], Gauge(m)),
                (vec![("tier", "metadata".to_owned())], Gauge(meta)),
            ]
        };
        s.labelled(
            "caje_cache_bytes",
            "Bytes held in each cache tier.",
            tier(disk_bytes as i64, mem_bytes as i64, meta_bytes as i64),
        );
        s.labelled(
            "caje_cache_entries",
            "Entries held in each cache tier.",
            tier(disk_entries as i64, mem_entries as i64, meta_entries as i64),
        );
        s.labelled(
            "caje_cache_capacity_bytes",
            "Configured byte cap of each capped cache tier.",
            vec![
                (
                    vec![("tier", "disk".to_owned())],
                    Gauge(i64::try_from(app.config.cache.max_disk_bytes).unwrap_or(i64::MAX)),
                ),
                (
                    vec![("tier", "memory".to_owned())],
                    Gauge(app.config.cache.memory_bytes as i64),
                ),
                (
                    vec![("tier", "metadata".to_owned())],
                    Gauge(meta_cap as i64),
                ),
            ],
        );
        s.one(
            "caje_cache_evictions",
            "Disk entries evicted to stay within cache.max_disk_bytes / cache.max_entries.",
            Count(g(&st.evictions)),
        );
        let start = app.store.start_report();
        s.labelled(
            "caje_cache_index_source",
            "Where the disk index came from at start-up (1 for the current one): the snapshot, or a scan of every header.",
            ["snapshot", "scan"]
                .iter()
                .map(|src| {
                    (
                        vec![("source", (*src).to_owned())],
                        Gauge(i64::from(start.source.as_str() == *src)),
                    )
                })
                .collect(),
        );
        let check = start.check;
        s.one(
            "caje_cache_index_checking",
            "1 while the directory is checked against the index snapshot the start loaded.",
            Gauge(i64::from(check.is_some_and(|c| !c.done))),
        );
        if let Some(c) = check {
            s.one(
                "caje_cache_index_check_files",
                "Entry files the start-up check has looked at.",
                Gauge(c.files_checked as i64),
            );
            s.labelled(
                "caje_cache_index_check_entries",
                "Entries the start-up check trusted, read again, added or dropped.",
                [
                    ("trusted", c.trusted),
                    ("reread", c.reread),
                    ("added", c.added),
                    ("dropped", c.dropped),
                ]
                .iter()
                .map(|(r, n)| (vec![("result", (*r).to_owned())], Gauge(*n as i64)))
                .collect(),
            );
        }
        s.one(
            "caje_populate_warm_refused",
            "Edge-warming fills dropped at commit for lack of free room or warming share.",
            Count(g(&st.warm_refused)),
        );
        s.labelled(
            "caje_peer_requests",
            "Origin-shield traffic by what happened (served to a peer, refused, filled from a peer, fell back to the origin).",
            vec![
                (vec![("result", "served".to_owned())], Count(g(&st.peer_served))),
                (vec![("result", "missed".to_owned())], Count(g(&st.peer_misses))),
                (vec![("result", "filled".to_owned())], Count(g(&st.peer_fills))),
                (vec![("result", "fallback".to_owned())], Count(g(&st.peer_fallbacks))),
            ],
        );
        s.one(
            "caje_origin_fetches_in_flight",
            "Origin fetches other requests may join.",
            Gauge(app.flights.len() as i64),
        );
        if let Ok(m) = app.manifest.stats().await {
            s.one(
                "caje_manifest_queue_depth",
                "Manifest writes queued or being written.",
                Gauge(m.pending as i64),
            );
            s.one(
                "caje_manifest_flushes",
                "Manifest flushes that wrote their batch.",
                Count(m.flushes),
            );
            s.one(
                "caje_manifest_failed_flushes",
                "Manifest flushes that failed and were retried.",
                Count(m.failed_flushes),
            );
            s.one(
                "caje_manifest_flush_duration_seconds",
                "Time spent in manifest flushes, HALT included.",
                Seconds(m.flush_micros as f64 / 1e6),
            );
            s.one(
                "caje_manifest_halt_wait_seconds",
                "Time spent waiting for the LiteFS HALT lock.",
                Seconds(m.halt_wait_micros as f64 / 1e6),
            );
            s.one(
                "caje_manifest_halts",
                "LiteFS HALT locks taken.",
                Count(m.halts),
            );
            s.one(
                "caje_manifest_rows_written",
                "Manifest rows inserted, updated or deleted.",
                Count(m.rows_written),
            );
            s.one(
                "caje_manifest_write_transactions",
                "Manifest write transactions committed.",
                Count(m.write_transactions),
            );
            s.one(
                "caje_manifest_queue_overflows",
                "Manifest writes refused because the queue was full.",
                Count(m.overflow),
            );
        }
        let role = app.manifest.role().await;
        s.labelled(
            "caje_litefs_role",
            "This node's manifest role (1 for the current one).",
            ["standalone", "primary", "replica", "unknown"]
                .iter()
                .map(|r| {
                    (
                        vec![("role", (*r).to_owned())],
                        Gauge(i64::from(role.as_str() == *r)),
                    )
                })
                .collect(),
        );
        if let Some(lag) = app.manifest.lag().await {
            s.one(
                "caje_litefs_replication_lag_seconds",
                "How far this node's manifest is behind the LiteFS primary.",
                GaugeF(lag.as_secs_f64()),
            );
        }
        if let Some(txid) = app.manifest.txid().await {
            s.one(
                "caje_litefs_txid",
                "The manifest's LiteFS transaction id on this node.",
                Gauge(i64::try_from(txid).unwrap_or(i64::MAX)),
            );
        }
        let p = app.populate.status();
        s.labelled(
            "caje_populate_pages",
            "Pages handled by populate passes, by result.",
            [
                ("fetched", p.pages_fetched),
                ("skipped", p.pages_skipped),
                ("failed", p.pages_failed),
            ]
            .iter()
            .map(|(r, n)| (vec![("result", (*r).to_owned())], Count(*n)))
            .collect(),
        );
        s.one(
            "caje_populate_passes",
            "Populate passes completed.",
            Count(p.passes),
        );
        let (applied, gaps) = app.tombstones.counts();
        s.one(
            "caje_tombstones_applied",
            "Other nodes' purges applied to this node's cache.",
            Count(applied),
        );
        s.one(
            "caje_tombstone_gaps",
            "Times purges may have been missed (expired before applied).",
            Count(gaps),
        );
        if let Some(log) = &t.access_log {
            s.one(
                "caje_access_log_lines",
                "Access log lines written.",
                Count(log.written()),
            );
            s.one(
                "caje_access_log_dropped",
                "Access log lines lost: dropped because the writer was behind, or in a failed write.",
                Count(log.dropped()),
            );
        }
        s.one(
            "caje_uptime_seconds",
            "Seconds since this process started.",
            GaugeF(app.started.elapsed().map_or(0.0, |d| d.as_secs_f64())),
        );
        s
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.families {
            if f.samples.is_empty() {
                continue;
            }
            let kind = match f.samples[0].1 {
                Val::Count(_) | Val::Seconds(_) => MetricType::Counter,
                Val::Gauge(_) | Val::GaugeF(_) => MetricType::Gauge,
            };
            let mut me = encoder.encode_descriptor(f.name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let sample = me.encode_family(&labels)?;
                match *v {
                    Val::Count(n) => ConstCounter::new(n).encode(sample)?,
                    Val::Seconds(x) => ConstCounter::new(x).encode(sample)?,
                    Val::Gauge(n) => ConstGauge::new(n).encode(sample)?,
                    Val::GaugeF(x) => ConstGauge::new(x).encode(sample)?,
                }
            }
        }
        for (name, help, h) in &self.histograms {
            let mut me = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            me.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// The whole `/metrics` text for this node now.
pub async fn render(app: &App) -> String {
    let scrape = Scrape::gather(app).await;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing to a String cannot fail, and every value above is encodable.
    let _ = prometheus_text::encode(&mut out, &registry);
    out
}

/// Starts the metrics listener when `metrics.listen` is set. A port still held by the
/// previous process of an upgrade (it serves until its connections drain) is retried every
/// 250 ms instead of failing the new process; other bind errors are logged and give up.
pub fn spawn(app: &Arc<App>) {
    let Some(addr) = app.config.metrics.listen else {
        return;
    };
    let app = app.clone();
    tokio::spawn(async move {
        let mut warned = false;
        let listener = loop {
            match crate::server::bind(addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if !warned {
                        tracing::warn!("metrics.listen {addr} is in use (the previous process of an upgrade?); retrying");
                        warned = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    tracing::error!("cannot listen on {addr} for metrics.listen: {e}; no metrics");
                    return;
                }
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(metrics_addr = %local, "serving Prometheus metrics at http://{local}/metrics");
        serve(listener, app, std::future::pending()).await;
    });
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return,
        };
        let app = app.clone();
        let service = service_fn(move |req: Request<hyper::body::Incoming>| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(answer(&app, &req).await) }
        });
        tokio::spawn(async move {
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
        });
    }
}

async fn answer<B>(app: &App, req: &Request<B>) -> Response<Body> {
    let (status, ctype, text) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => (
            StatusCode::OK,
            prometheus_text::CONTENT_TYPE,
            render(app).await,
        ),
        (_, "/metrics") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".into(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "caje: metrics are at /metrics\n".into(),
        ),
    };
    let mut res = Response::new(body::full(text));
    *res.status_mut() = status;
    res.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    res
}
