//! caje
