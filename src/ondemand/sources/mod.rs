//! Blob sources: a local file, an HTTP(S) URL, or an OCI registry blob, behind `Blob`.
//!
//! HTTP(S) URLs are read with Range requests; registry blobs come with Basic or bearer
//! authentication, redirects to blob storage and digest checks. Remote sources carry their
//! own client (TLS roots, client certificate, proxy), credentials and mirrors ([`remote`]). All of them answer "how big" and "give me
//! exactly these bytes"; anything less, and anything a hostile server answers, is an error for
//! that OPEN or READ, never a panic or a hang.

pub mod auth;
pub mod head;
mod http;
mod local;
mod registry;
pub mod remote;

pub use http::{agent, HttpBlob};
pub use local::LocalBlob;
pub use registry::{digest_from_fsid, integrity_failures, RegistryBlob};
pub use remote::{Access, EndpointStatus, Remote};

use super::sourcemap::{FetchSettings, Location};
use nix::errno::Errno;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Io(String),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("{0}")]
    Protocol(String),
    /// The bytes are not the blob the digest names.
    #[error("integrity error: {0}")]
    Integrity(String),
}

impl FetchError {
    /// The errno an OPEN fails with, so the mount reports something meaningful.
    pub fn errno(&self) -> Errno {
        match self {
            FetchError::NotFound => Errno::ENOENT,
            FetchError::Status(401 | 403) => Errno::EACCES,
            FetchError::Status(404 | 410) => Errno::ENOENT,
            _ => Errno::EIO,
        }
    }

    fn retryable(&self) -> bool {
        match self {
            FetchError::Io(_) => true,
            FetchError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            FetchError::NotFound | FetchError::Protocol(_) | FetchError::Integrity(_) => false,
        }
    }
}

pub trait Blob: Send + Sync {
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `off`; short data is an error.
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError>;
    /// A short description for logs and status: the file or URL (without user info or query).
    fn describe(&self) -> String;
    fn is_remote(&self) -> bool;
    /// Writes the `len` bytes at `off` into `out` at `out_off` without bringing them through
    /// this process, where the source can (a local file: splice); `None` when it cannot, and
    /// nothing was written: the caller reads and writes them itself.
    fn copy_to(
        &self,
        _off: u64,
        _len: usize,
        _out: std::os::fd::BorrowedFd<'_>,
        _out_off: u64,
    ) -> Option<Result<(), FetchError>> {
        None
    }
}

/// A read must lie within the blob.
fn check_read(size: u64, off: u64, len: usize) -> Result<(), FetchError> {
    match off.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(FetchError::Protocol(format!(
            "read of {len} bytes at {off} is beyond the blob's {size} bytes"
        ))),
    }
}

fn with_retries<T>(
    retries: u32,
    mut f: impl FnMut() -> Result<T, FetchError>,
) -> Result<T, FetchError> {
    let mut attempt = 0;
    loop {
        match f() {
            Err(e) if e.retryable() && attempt < retries => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 << attempt.min(6)));
            }
            other => return other,
        }
    }
}

/// Opens the blob a resolved location names. Remote locations use their source's own client.
pub fn open(
    location: Location,
    fsid: &str,
    settings: &FetchSettings,
) -> Result<Box<dyn Blob>, FetchError> {
    Ok(match location {
        Location::Path(p) => Box::new(LocalBlob::open(p)?),
        Location::Url { urls, remote } => Box::new(HttpBlob::open_remote(urls, remote, settings)?),
        Location::Registry {
            repository,
            verify,
            remote,
        } => Box::new(RegistryBlob::open_remote(
            remote,
            &repository,
            fsid,
            settings,
            verify,
        )?),
    })
}
