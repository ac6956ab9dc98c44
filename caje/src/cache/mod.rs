//! The cache: keys, the RFC 9111 policy, entry metadata, the disk store, its memory tier
//! and request coalescing.

pub mod clamp;
pub mod directives;
pub mod entry;
pub mod evict;
pub mod hot;
pub mod key;
pub mod policy;
pub mod store;
