//! The cache: keys, the RFC 9111 policy, entry metadata and the disk store.

pub mod entry;
pub mod flight;
pub mod key;
pub mod policy;
pub mod store;
