//! The node's shared state, built once at start-up and shared by every connection.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::cache::policy::{self, PolicyOptions};
use crate::cache::store::{DiskLimits, Entry, OpenOptions, Store, StoreError, StoreEvent};
use crate::config::{Config, IpNet};
use crate::flight::Flights;
use crate::manifest::{Manifest, ManifestError, ManifestOptions, PageRow, Upsert, VARY_ABSENT};
use crate::origin::{OriginClient, Origins};
use crate::populate_state::Populate;
use crate::stats::Stats;
use crate::telemetry::Telemetry;
use crate::tombstones::Tombstones;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The cache directory could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The manifest could not be opened.
    #[error("manifest: {0}")]
    Manifest(#[from] ManifestError),
    /// The configuration is unusable.
    #[error("configuration: {0}")]
    Config(String),
}

/// Everything a request handler needs.
pub struct App {
    /// The configuration the node runs with.
    pub config: Config,
    /// Host → origin routing.
    pub origins: Origins,
    /// The pooled origin client.
    pub client: OriginClient,
    /// The disk cache.
    pub store: Store,
    /// The SQLite manifest.
    pub manifest: Manifest,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Policy knobs from `[cache]`.
    pub policy: PolicyOptions,
    /// The admin token, if any (config, flag or `CAJE_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Networks allowed to use the admin API without a token.
    pub admin_allow: Vec<IpNet>,
    /// Start time, for `/_caje/stats`.
    pub started: SystemTime,
    /// Origin fetches in progress, for request coalescing.
    pub flights: Flights,
    /// Edge-warming state.
    pub populate: Populate,
    /// `server.strip_request_headers`, parsed once.
    pub strip_request_headers: Vec<http::HeaderName>,
    /// How far this node has applied the manifest's purge tombstones.
    pub tombstones: Arc<Tombstones>,
    /// Finished requests: outcomes, latency, hottest URLs, the access log.
    pub telemetry: Arc<Telemetry>,
}

impl App {
    /// Opens the store and the manifest, applies the purges other nodes recorded since this
    /// cache directory last did (see [`crate::tombstones`]), and starts the task that records
    /// stored pages in the manifest. Nothing is served or announced before those purges are
    /// applied. Must be called inside a tokio runtime; blocking work runs on the blocking pool.
    ///
    /// Background work (reconcile, later tombstones, edge warming) is not started here: call
    /// [`crate::populate::spawn`] for it. To serve, hand the `App` to [`crate::server::run`].
    ///
    /// # Example
    ///
    /// A node built from TOML text, with its cache and manifest in a temporary directory:
    ///
    /// ```
    /// use std::path::Path;
    ///
    /// use caje::app::App;
    /// use caje::config::Config;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut config = Config::from_toml(
    ///     r#"
    ///     [[origins]]
    ///     host = "*"
    ///     url = "http://127.0.0.1:9"
    ///     "#,
    ///     Path::new("caje.toml"),
    /// )?;
    /// let dir = tempfile::tempdir()?;
    /// config.cache_dir = dir.path().join("cache");
    /// config.db = dir.path().join("manifest.db");
    /// config.validate()?;
    ///
    /// let runtime = tokio::runtime::Runtime::new()?;
    /// let app = runtime.block_on(App::start(config))?;
    /// assert!(app.origins.route("example.com").is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start(config: Config) -> Result<Arc<App>, StartError> {
        App::start_with(config, OpenOptions::default()).await
    }

    /// [`App::start`], opening the cache directory with `store` options (a graceful upgrade
    /// takes the directory over from the previous process: see [`crate::upgrade`]).
    pub async fn start_with(config: Config, store: OpenOptions) -> Result<Arc<App>, StartError> {
        let mut open_options = store;
        open_options.snapshot_every =
            Some(Duration::from_secs(config.cache.index_snapshot_secs)).filter(|d| !d.is_zero());
        let origins = Origins::from_config(&config.origins).map_err(StartError::Config)?;
        let admin_allow = config
            .admin
            .allow_from
            .iter()
            .map(|n| {
                IpNet::parse(n).ok_or_else(|| StartError::Config(format!("bad network {n:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stats = Arc::new(Stats::default());
        let access_log = crate::access_log::Target::parse(&config.log.access)
            .map(|t| {
                let flush = Duration::from_millis(config.log.access_flush_ms);
                crate::access_log::AccessLog::start(t, config.log.access_queue, flush)
            })
            .transpose()
            .map_err(|e| StartError::Config(e.to_string()))?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let cache_dir = config.cache_dir.clone();
        let db = config.db.clone();
        let store_stats = stats.clone();
        let max_variants = config.cache.max_variants;
        let memory_bytes = usize::try_from(config.cache.memory_bytes).unwrap_or(usize::MAX);
        let limits = DiskLimits {
            max_bytes: config.cache.max_disk_bytes,
            max_entries: config.cache.max_entries,
            // Validated to 0.0..=1.0; the product is at most the cap.
            max_warm_bytes: (config.cache.max_disk_bytes as f64 * config.populate.max_fraction)
                as u64,
        };
        tracing::info!(
            max_disk_bytes = limits.max_bytes,
            max_entries = ?limits.max_entries,
            max_warm_bytes = limits.max_warm_bytes,
            memory_bytes,
            "cache limits"
        );
        let m = &config.manifest;
        let manifest_options = ManifestOptions {
            litefs: m.litefs,
            flush_interval: std::time::Duration::from_millis(m.flush_interval_ms),
            max_batch: m.max_batch.max(1),
            max_queue: m.max_queue.max(1),
            halt_timeout: std::time::Duration::from_millis(m.halt_timeout_ms),
            open_timeout: std::time::Duration::from_millis(m.open_timeout_ms),
            halt_helper: m.halt_helper.clone(),
            ..ManifestOptions::default()
        };
        let (store, manifest, tombstones) = tokio::task::spawn_blocking(move || {
            // The manifest first: in a graceful upgrade, opening the store is when the old
            // process stops accepting, so as little as possible comes after it.
            if let Some(parent) = Path::new(&db)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                let _ = std::fs::create_dir_all(parent);
            }
            let manifest = Manifest::open_with(&db, manifest_options)?;
            let store = Store::open_with(
                &cache_dir,
                max_variants,
                memory_bytes,
                limits,
                store_stats,
                events_tx,
                open_options,
            )?;
            let tombstones = Tombstones::load(&cache_dir);
            Ok::<_, StartError>((store, manifest, tombstones))
        })
        .await
        .map_err(|e| StartError::Config(format!("start-up task failed: {e}")))??;
        let admin_token = Some(config.admin.token.clone()).filter(|t| !t.is_empty());
        let strip_request_headers = config
            .server
            .strip_request_headers
            .iter()
            .map(|n| {
                http::HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    StartError::Config(format!(
                        "server.strip_request_headers entry {n:?} is not a header name"
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let app = Arc::new(App {
            policy: PolicyOptions {
                heuristic_freshness: config.cache.heuristic_freshness,
                heuristic_max: Duration::from_secs(config.cache.heuristic_max_secs),
                store_set_cookie: config.cache.store_set_cookie,
                honor_client_no_cache: config.cache.honor_client_no_cache,
                targeted: targeted_field(&config.cache.targeted_cache_control)?,
            },
            client: OriginClient::new(&config.origin_timeouts),
            origins,
            store,
            manifest,
            stats,
            admin_token,
            admin_allow,
            started: SystemTime::now(),
            flights: Flights::default(),
            populate: Populate::default(),
            strip_request_headers,
            tombstones: Arc::new(tombstones),
            telemetry: Arc::new(Telemetry::new(access_log)),
            config,
        });
        // Before anything can be served, announced or warmed.
        let caught_up = app.tombstones.catch_up(&app.store, &app.manifest).await?;
        app.stats.purged.fetch_add(
            caught_up.affected as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        tracing::info!(
            applied = caught_up.applied,
            affected = caught_up.affected,
            gap = caught_up.gap,
            dropped = caught_up.dropped,
            cursor = caught_up.cursor,
            "purges recorded while this node was away are applied"
        );
        tokio::spawn(record_stored(
            app.config.cluster.advertise_url.clone(),
            app.manifest.clone(),
            app.store.clone(),
            app.tombstones.clone(),
            events_rx,
        ));
        Ok(app)
    }
}

fn targeted_field(name: &str) -> Result<Option<http::HeaderName>, StartError> {
    if name.is_empty() {
        return Ok(None);
    }
    http::HeaderName::from_bytes(name.as_bytes())
        .map(Some)
        .map_err(|_| {
            StartError::Config(format!(
                "cache.targeted_cache_control {name:?} is not a valid header name"
            ))
        })
}

/// The manifest row describing a stored entry, stored by the node at `node` (its
/// `cluster.advertise_url`, '' when it has none).
pub fn page_row(entry: &Entry, node: &str) -> PageRow {
    let meta = &entry.meta;
    let stored_at = meta.stored_at as i64;
    let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(meta.stored_at);
    let ttl_at_store = policy::time_to_live(&meta.policy, at);
    PageRow {
        host: meta.host.clone(),
        method: "GET".into(),
        path: meta.path.clone(),
        vary: meta
            .variant
            .0
            .iter()
            .map(|(n, v)| {
                (
                    n.clone(),
                    v.clone().unwrap_or_else(|| VARY_ABSENT.to_owned()),
                )
            })
            .collect(),
        status: meta.status,
        stored_at,
        expires_at: stored_at + ttl_at_store.as_secs() as i64,
        size: meta.body_len,
        etag: meta.etag(),
        last_modified: meta.last_modified(),
        tags: meta.tags.clone(),
        node: node.to_owned(),
    }
}

pub use crate::tombstones::variant_of;

/// Records every committed entry in the manifest. Failures are logged, never propagated to a
/// client: the manifest describes the cache, it does not gate it. Events that arrive together
/// are submitted together, so the manifest's owner thread commits them in one transaction.
///
/// An entry is announced only if it is still held after the tombstones this node has applied
/// were read, and with those tombstones as its guard: a copy a purge removed in the meantime,
/// or one a purge this node has not applied yet covers, does not put its row back.
async fn record_stored(
    node: String,
    manifest: Manifest,
    store: Store,
    tombstones: Arc<Tombstones>,
    mut events: mpsc::UnboundedReceiver<StoreEvent>,
) {
    while let Some(first) = events.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match events.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let stored = batch
            .iter()
            .filter(|e| matches!(e, StoreEvent::Stored { .. }))
            .count() as u64;
        let mut rows = Vec::new();
        for event in batch {
            // Local removals (old variants, corrupt copies) leave the manifest alone: it
            // says which pages exist in the cluster, not what this node holds. Purges
            // remove rows themselves.
            let StoreEvent::Stored {
                entry,
                announce: true,
            } = event
            else {
                continue;
            };
            // The guard first: a tombstone applied after it was read removed the entry first.
            let guard = tombstones.guard();
            if !store.is_current(&entry) {
                continue;
            }
            rows.push((page_row(&entry, &node), guard));
        }
        // One message to the manifest's thread for the whole batch.
        let keys: Vec<(String, String)> = rows
            .iter()
            .map(|(r, _)| (r.host.clone(), r.path.clone()))
            .collect();
        let answers = if rows.is_empty() {
            Vec::new()
        } else {
            manifest.announce_many(rows).await
        };
        for ((host, path), answer) in keys.iter().zip(answers) {
            match answer {
                Ok(Upsert::Purged) => {
                    tracing::debug!(%host, %path, "not announced: a purge this node has not applied covers it");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%host, %path, "manifest upsert failed: {e}");
                }
            }
        }
        store.recorded(stored);
    }
}
