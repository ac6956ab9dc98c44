//! caje: an edge CDN node — a caching reverse proxy that stores origin responses on local disk
//! as RFC 9111 allows and records every cached page in a SQLite manifest shared by all nodes.
//!
//! # Layout
//! The request path, in the order a request meets it:
//! - [`server`]: accepts connections, HTTP/1.1 via hyper, graceful shutdown; [`framing`]
//!   watches each connection for ambiguous request framing that hyper would accept.
//! - [`request`]: what a client may send (limits, framing, host) and caje's own answers.
//! - [`proxy`]: the only module that knows the order of steps (validate → admin → route →
//!   lookup → forward and tee).
//! - [`admin`]: the `/_caje/` JSON API and its authentication.
//! - [`origin`]: host → origin routing and the pooled HTTP(S) client; 502/504 classification.
//! - [`cache`]: keys ([`cache::key`]), the RFC 9111 policy ([`cache::policy`], the only user
//!   of `http-cache-semantics`), entry metadata ([`cache::entry`]) and the disk store
//!   ([`cache::store`]).
//! - [`body`]: the tee that streams a miss to the client while filling the cache, and the
//!   verified reader that serves hits.
//! - [`manifest`]: the SQLite manifest (one owner thread, batched transactions, LiteFS HALT
//!   on replicas).
//! - [`populate`]: edge warming from the manifest, purge tombstones, start-up reconcile.
//! - [`headers`], [`cache_status`], [`stats`], [`config`], [`app`]: supporting pieces.

pub mod admin;
pub mod app;
pub mod body;
pub mod cache;
pub mod cache_status;
pub mod client_body;
pub mod config;
pub mod framing;
pub mod headers;
pub mod hit;
pub mod interim;
pub mod manifest;
pub mod origin;
pub mod populate;
pub mod proxy;
pub mod request;
pub mod server;
pub mod stats;
