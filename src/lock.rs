//! The cache directory lock: an exclusive `flock` held by the daemon and by writing tools.
//!
//! Taken on the cache directory itself, held by the daemon for as long as it runs and taken by
//! every tool that writes into the cache, so the two never work on the same tree at once.
//!
//! flock locks belong to the open file description: the lock lives exactly as long as the
//! returned [`CacheLock`] (and any fd dup'ed from it), and the kernel drops it when the holder
//! dies, so a crashed daemon never leaves a stale lock behind (unlike a pid file).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg, OFlag};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock: a daemon (or another tool) is using the cache.
    #[error("a cachefilesd is running on {}; stop it first", .0.display())]
    Held(PathBuf),
    #[error("cannot open the cache directory {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock the cache directory {}: {errno}", path.display())]
    Lock { path: PathBuf, errno: Errno },
}

/// The held lock; dropping it unlocks.
#[derive(Debug)]
pub struct CacheLock {
    dir: Flock<File>,
    path: PathBuf,
}

impl CacheLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for CacheLock {
    /// The locked directory (opened O_RDONLY|O_DIRECTORY), usable as a dirfd.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.dir.as_fd()
    }
}

/// Takes the lock without waiting: `open(dir, O_RDONLY|O_DIRECTORY)` + `flock(LOCK_EX|LOCK_NB)`.
pub fn lock_cache_dir(dir: &Path) -> Result<CacheLock, LockError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlag::O_DIRECTORY | OFlag::O_CLOEXEC).bits())
        .open(dir)
        .map_err(|source| LockError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(dir_lock) => Ok(CacheLock {
            dir: dir_lock,
            path: dir.to_path_buf(),
        }),
        Err((_, Errno::EWOULDBLOCK)) => Err(LockError::Held(dir.to_path_buf())),
        Err((_, errno)) => Err(LockError::Lock {
            path: dir.to_path_buf(),
            errno,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_locker_is_refused_until_the_first_drops() {
        let t = tempfile::tempdir().unwrap();
        let first = lock_cache_dir(t.path()).unwrap();
        let err = lock_cache_dir(t.path()).unwrap_err();
        assert!(matches!(err, LockError::Held(_)));
        assert_eq!(
            err.to_string(),
            format!(
                "a cachefilesd is running on {}; stop it first",
                t.path().display()
            )
        );
        drop(first);
        lock_cache_dir(t.path()).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_open_error() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            lock_cache_dir(&t.path().join("nope")),
            Err(LockError::Open { .. })
        ));
    }
}
