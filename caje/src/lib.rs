//! caje: an edge CDN node — a caching reverse proxy that stores origin responses on local disk
//! as RFC 9111 allows and records every cached page in a SQLite manifest shared by all nodes.
//!
//! # Using the library
//! Build a [`config::Config`] (in code, or with [`config::Config::from_toml`]), start the
//! node's state with [`app::App::start`], bind a listener with [`server::bind`] and serve it
//! with [`server::run`] until a shutdown future completes; [`populate::spawn`] starts the
//! background work (reconcile, purges from other nodes, edge warming). The examples on
//! [`app::App::start`] and [`server::run`] compile and run as doctests.
//!
//! # Layout
//! The request path, in the order a request meets it:
//! - [`server`]: accepts connections, HTTP/1.1 via hyper, graceful shutdown; [`framing`]
//!   watches each connection for ambiguous request framing that hyper would accept (and
//!   writes the 1xx heads [`interim`] queues), and [`send_timeout`] disconnects clients that
//!   stop reading.
//! - [`request`]: what a client may send (limits, framing, host) and caje's own answers;
//!   [`host`] computes the one canonical host that routing, the key and the origin share.
//! - [`proxy`]: the only module that knows the order of steps (validate → admin → route →
//!   lookup → fresh hit, stale, or the flight's leader/waiters → fill).
//! - [`admin`]: the `/_caje/` JSON API and its authentication.
//! - [`hit`]: answering from a stored entry (client conditionals, byte ranges, HEAD).
//! - [`stale`]: stale-while-revalidate and its background revalidation, stale-if-error,
//!   applying a 304.
//! - [`fill`]: one origin request streamed to its client while it is stored; also used by
//!   [`populate`] without a client ([`fill::fill_page`]).
//! - [`peer`]: the origin shield: other nodes' `GET /_caje/peer`, and asking a peer before
//!   the origin ([`secret`] compares the tokens).
//! - [`invalidate`]: unsafe methods, and the URLs a success invalidates.
//! - [`client_body`]: a client's request body on its way to the origin; a failure of it is
//!   the client's fault (400/413), not the origin's.
//! - [`origin`]: host → origin routing and the pooled HTTP(S) client; 502/504 classification.
//! - [`cache`]: keys ([`cache::key`]), the RFC 9111 policy ([`cache::policy`], the only user
//!   of `http-cache-semantics`), entry metadata ([`cache::entry`]), request coalescing
//!   ([`flight`]), the memory tier ([`cache::hot`]) and the disk store
//!   ([`cache::store`]).
//! - [`body`]: the tee that streams a miss to the client while filling the cache, and the
//!   verified reader that serves hits.
//! - [`manifest`]: the SQLite manifest (one owner thread, batched transactions, LiteFS HALT
//!   on replicas).
//! - [`populate`]: edge warming from the manifest, purge tombstones, start-up reconcile; its
//!   shared state ([`populate_state`]) is what [`app::App`] holds.
//! - [`tombstones`]: applying other nodes' purges in order (before serving at start, then as
//!   they come), the per-node cursor, and the guard that keeps purged rows from coming back.
//! - [`headers`], [`cache_status`], [`stats`], [`config`], [`time`], [`app`]: supporting
//!   pieces.
//! - Process lifecycle, used by the binary: [`listen`] (a listening socket from systemd or
//!   from the previous process) and [`upgrade`] (SIGUSR2: hand the socket and the cache
//!   directory to a new process).
//!
//! No module imports one that imports it back: `scripts/module-cycles.sh` prints the edges
//! and fails on a cycle; `docs/architecture.md` draws them.

pub mod access_log;
pub mod admin;
pub mod app;
pub mod body;
pub mod cache;
pub mod cache_status;
pub mod client_body;
pub mod config;
pub mod dashboard;
pub mod fast;
pub mod file_body;
pub mod fill;
pub mod flight;
pub mod framing;
pub mod headers;
pub mod histogram;
pub mod hit;
pub mod host;
pub mod interim;
pub mod invalidate;
pub mod ipnet;
pub mod listen;
pub mod manifest;
pub mod metrics;
pub mod observe;
pub mod one_request;
pub mod origin;
pub mod peer;
pub mod populate;
pub mod populate_state;
pub mod proxy;
pub mod request;
pub mod secret;
pub mod send_timeout;
pub mod server;
pub mod spool;
pub mod stale;
pub mod stats;
pub mod telemetry;
pub mod time;
pub mod tombstones;
pub mod upgrade;
