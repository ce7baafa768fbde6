//! cachefilesctl's library side: inspecting, checking and editing a cache directory offline.
//!
//! The tree is laid out exactly as the kernel does (see [`crate::cachedir::layout`]).
//! Every path below the cache root goes through the cache-directory layer ([`crate::cachedir`]):
//! names from the command line are validated names before they touch the tree, nothing is
//! followed, and removals are renames into `graveyard/` followed by the
//! same no-follow reaping the daemon does, so nothing outside the cache root can be reached
//! whatever the tree contains. Commands that write take the cache lock ([`crate::lock`]).

pub mod check;
pub mod cli;
pub mod inventory;
pub mod mount;
pub mod prefill;
pub mod remove;

use crate::cachedir::graveyard;
use crate::cachedir::names::BadName;
use crate::cachedir::{CacheDir, CacheDirError};
use crate::lock::LockError;
use nix::dir::Dir;
use nix::errno::Errno;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Tree(#[from] CacheDirError),
    #[error("{0}")]
    Name(#[from] BadName),
    #[error("cannot read {}: {source}", crate::cachedir::Escaped(path.as_os_str().as_encoded_bytes()))]
    Source {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("no such {what}: {path}")]
    NotFound { what: &'static str, path: String },
    #[error("graveyard: {failed} entries could not be removed (first: {first})")]
    Reap { failed: u64, first: String },
}

impl ToolError {
    /// An OS error about `rel` below `root`.
    pub fn os(root: &CacheDir, what: &'static str, rel: &[&[u8]], errno: Errno) -> ToolError {
        ToolError::Tree(root.error(what, rel, errno))
    }
}

/// Empties the graveyard (no-follow, as the daemon reaps it); every entry must go.
pub fn reap(graveyard: &Dir) -> Result<u64, ToolError> {
    let report = graveyard::reap(graveyard);
    match report.first_error {
        None => Ok(report.removed),
        Some((path, errno)) => Err(ToolError::Reap {
            failed: report.failed,
            first: format!("{path}: {errno}"),
        }),
    }
}

/// Bytes for people: printable UTF-8 as is, anything a terminal would act on (see
/// [`crate::cachedir::Escaped`]) or invalid UTF-8 as `0x` + hex.
pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if crate::cachedir::Escaped(b).to_string() == s => s.to_string(),
        _ => format!("0x{}", hex::encode(b)),
    }
}
