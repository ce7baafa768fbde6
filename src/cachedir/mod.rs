//! The cache-directory layer: root, validated names, no-follow tree ops, xattrs, graveyard.
//!
//! Shared by the daemon, the cull scan and cachefilesctl: the root ([`CacheDir`]), the
//! validated names every path component is built from ([`names`]), the kernel's naming and
//! xattr formats ([`layout`]), no-follow tree operations ([`tree`]), the xattrs ([`xattr`])
//! and the graveyard ([`graveyard`]).
//!
//! Nothing below the root is reached by a path string: every step is a dirfd-relative call
//! with a [`names::Name`], and no symlink is followed, so neither a name typed by a user nor
//! one found on disk can lead outside the root.

pub mod graveyard;
pub mod layout;
pub mod names;
pub mod tree;
pub mod xattr;

pub use names::{Escaped, Name, ObjectName, VolumeName, CACHE, GRAVEYARD};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A failed operation in the cache tree, with the path (escaped) it was about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {path}: {errno}")]
pub struct CacheDirError {
    pub what: &'static str,
    pub path: String,
    pub errno: Errno,
}

/// The cache root (the `dir` of cachefilesd.conf), opened once; everything else is reached
/// from this fd.
#[derive(Debug)]
pub struct CacheDir {
    path: PathBuf,
    dir: Dir,
}

impl CacheDir {
    /// Opens the root with O_DIRECTORY|O_NOFOLLOW: a symlink as the root itself is refused
    /// (ENOTDIR) like any other link in the tree; the directories above it are the admin's.
    pub fn open(path: &Path) -> Result<CacheDir, CacheDirError> {
        let dir = Dir::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| CacheDirError {
            what: "cannot open cache directory",
            path: Escaped(path.as_os_str().as_encoded_bytes()).to_string(),
            errno,
        })?;
        Ok(CacheDir {
            path: path.to_path_buf(),
            dir,
        })
    }

    /// `<root>/<name>`, for the calls that take a path only (an inotify watch).
    pub fn path_of(root: &Path, name: &Name) -> PathBuf {
        root.join(std::ffi::OsStr::from_bytes(name.as_bytes()))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root's dirfd.
    pub fn dir(&self) -> &Dir {
        &self.dir
    }

    /// `<root>/a/b/...` for messages, every component escaped.
    pub fn show(&self, rel: &[&[u8]]) -> String {
        let mut s = Escaped(self.path.as_os_str().as_encoded_bytes()).to_string();
        for c in rel {
            s.push('/');
            s.push_str(&Escaped(c).to_string());
        }
        s
    }

    pub fn error(&self, what: &'static str, rel: &[&[u8]], errno: Errno) -> CacheDirError {
        CacheDirError {
            what,
            path: self.show(rel),
            errno,
        }
    }

    /// Opens the directory at `rel` below the root, never following a link.
    pub fn open_dir(&self, rel: &[Name]) -> Result<Dir, Errno> {
        tree::open_names(&self.dir, rel)
    }

    /// The directory `name` of the root as a `File`, for calls that want an fd only (fstatfs).
    pub fn dir_file(&self, name: &Name) -> Result<std::fs::File, CacheDirError> {
        tree::open_file(&self.dir, name, rustix::fs::OFlags::DIRECTORY)
            .map_err(|e| self.error("cannot open", &[name.as_bytes()], e))
    }

    /// `cache/`.
    pub fn cache(&self) -> Result<Dir, CacheDirError> {
        self.open_dir(std::slice::from_ref(&CACHE))
            .map_err(|e| self.error("cannot open", &[CACHE.as_bytes()], e))
    }

    /// `graveyard/`.
    pub fn graveyard(&self) -> Result<Dir, CacheDirError> {
        self.open_dir(std::slice::from_ref(&GRAVEYARD))
            .map_err(|e| self.error("cannot open", &[GRAVEYARD.as_bytes()], e))
    }

    /// `<parent>/<name>` (at `rel_parent`) as a 0700 directory, made if missing, as the kernel
    /// makes `cache/` and `graveyard/` at bind.
    pub fn ensure_dir(
        &self,
        parent: &Dir,
        rel_parent: &[&[u8]],
        name: &Name,
    ) -> Result<Dir, CacheDirError> {
        let rel = || {
            let mut p = rel_parent.to_vec();
            p.push(name.as_bytes());
            p
        };
        tree::make_dir(parent, name).map_err(|e| self.error("cannot make directory", &rel(), e))?;
        tree::open_dir(parent, name).map_err(|e| self.error("cannot open directory", &rel(), e))
    }

    /// `cache/`, made if missing.
    pub fn ensure_cache(&self) -> Result<Dir, CacheDirError> {
        self.ensure_dir(&self.dir, &[], &CACHE)
    }

    /// `graveyard/`, made if missing.
    pub fn ensure_graveyard(&self) -> Result<Dir, CacheDirError> {
        self.ensure_dir(&self.dir, &[], &GRAVEYARD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlinked_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("real")).unwrap();
        std::os::unix::fs::symlink(t.path().join("real"), t.path().join("link")).unwrap();
        assert!(CacheDir::open(&t.path().join("real")).is_ok());
        let err = CacheDir::open(&t.path().join("link")).unwrap_err();
        // O_DIRECTORY looks at the link itself: ENOTDIR, or ELOOP from O_NOFOLLOW.
        assert!(matches!(err.errno, Errno::ENOTDIR | Errno::ELOOP), "{err}");
        let root = CacheDir::open(&t.path().join("real")).unwrap();
        assert_eq!(root.cache().unwrap_err().errno, Errno::ENOENT);
        root.ensure_cache().unwrap();
        root.ensure_graveyard().unwrap();
        root.cache().unwrap();
        root.graveyard().unwrap();
        assert!(root.dir_file(&CACHE).unwrap().metadata().unwrap().is_dir());
        std::os::unix::fs::symlink(t.path(), t.path().join("real/linked")).unwrap();
        let linked = Name::new(b"linked").unwrap();
        assert!(matches!(
            root.dir_file(&linked).unwrap_err().errno,
            Errno::ELOOP | Errno::ENOTDIR
        ));
    }
}
