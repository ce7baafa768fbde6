//! Reaping `graveyard/`, now part of the cache-directory layer ([`crate::cachedir`]).

pub use crate::cachedir::graveyard::{reap, ReapReport};
