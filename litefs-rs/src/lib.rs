//! Rust client for LiteFS (work in progress).
#![deny(missing_docs)]
