//! The no-follow tree operations, now part of the cache-directory layer ([`crate::cachedir`]).

pub use crate::cachedir::tree::*;
