//! cachefilesctl's library side: inspecting, checking and editing a cache directory offline,
//! laid out exactly as the kernel does (see [`crate::layout`]).
//!
//! Every path below the cache root is opened one component at a time without following
//! symlinks (crate::cull::tree), and removals are renames into `graveyard/` followed by the
//! same no-follow reaping the daemon does, so nothing outside the cache root can be reached
//! whatever the tree contains. Commands that write take the cache lock ([`crate::lock`]).

pub mod check;
pub mod cli;
pub mod inventory;
pub mod prefill;
pub mod remove;
pub mod sys;

use crate::cull::tree;
use crate::layout::{CACHE_DIR, GRAVEYARD_DIR};
use crate::lock::LockError;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::RenameFlags;
use nix::sys::stat::Mode;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("{what} {path}: {errno}")]
    Os {
        what: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("cannot read {path}: {source}")]
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
    pub fn os(what: &'static str, path: impl Into<String>, errno: Errno) -> ToolError {
        ToolError::Os {
            what,
            path: path.into(),
            errno,
        }
    }
}

/// The cache root (the `dir` of cachefilesd.conf), opened once; everything else is reached
/// from this fd.
pub struct CacheRoot {
    pub path: PathBuf,
    pub dir: Dir,
}

impl CacheRoot {
    /// The root itself is the user's choice, so a symlink there is followed; below it nothing is.
    pub fn open(path: &Path) -> Result<CacheRoot, ToolError> {
        let dir = Dir::open(
            path,
            nix::fcntl::OFlag::O_RDONLY
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| ToolError::os("cannot open cache directory", path.display().to_string(), e))?;
        Ok(CacheRoot {
            path: path.to_path_buf(),
            dir,
        })
    }

    pub fn show(&self, rel: &[&[u8]]) -> String {
        let mut s = self.path.display().to_string();
        for c in rel {
            s.push('/');
            s.push_str(&String::from_utf8_lossy(c));
        }
        s
    }

    /// Opens `rel` (components below the root) without following links.
    pub fn open_rel(&self, rel: &[&[u8]]) -> Result<Dir, Errno> {
        let comps: Vec<Box<[u8]>> = rel.iter().map(|c| Box::from(*c)).collect();
        tree::open_path(&self.dir, &comps)
    }

    /// `<root>/<name>` as a 0700 directory, made if missing (as the kernel does at bind).
    pub fn ensure_dir(
        &self,
        parent: &Dir,
        rel_parent: &[&[u8]],
        name: &[u8],
    ) -> Result<Dir, ToolError> {
        match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name, Mode::S_IRWXU) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => {
                let mut p = rel_parent.to_vec();
                p.push(name);
                return Err(ToolError::os("cannot make directory", self.show(&p), e));
            }
        }
        tree::open_dir_at(parent, name).map_err(|e| {
            let mut p = rel_parent.to_vec();
            p.push(name);
            ToolError::os("cannot open directory", self.show(&p), e)
        })
    }

    pub fn cache_dir(&self, create: bool) -> Result<Dir, ToolError> {
        if create {
            self.ensure_dir(&self.dir, &[], CACHE_DIR.as_bytes())
        } else {
            tree::open_dir_at(&self.dir, CACHE_DIR.as_bytes())
                .map_err(|e| ToolError::os("cannot open", self.show(&[CACHE_DIR.as_bytes()]), e))
        }
    }

    pub fn graveyard(&self) -> Result<Dir, ToolError> {
        self.ensure_dir(&self.dir, &[], GRAVEYARD_DIR.as_bytes())
    }

    /// Moves `name` in `parent` into the graveyard under a fresh grave name, as
    /// cachefiles_bury_object does for directories. A symlink is moved as a link.
    pub fn bury(&self, parent: &impl AsRawFd, name: &[u8], graveyard: &Dir) -> Result<(), Errno> {
        loop {
            let grave = grave_name();
            match nix::fcntl::renameat2(
                Some(parent.as_raw_fd()),
                name,
                Some(graveyard.as_raw_fd()),
                grave.as_bytes(),
                RenameFlags::RENAME_NOREPLACE,
            ) {
                Err(Errno::EEXIST) => continue,
                r => return r,
            }
        }
    }

    /// Empties the graveyard (no-follow, as the daemon reaps it).
    pub fn reap(&self, graveyard: &Dir) -> Result<u64, ToolError> {
        let report = crate::cull::graveyard::reap(graveyard);
        match report.first_error {
            None => Ok(report.removed),
            Some((path, errno)) => Err(ToolError::Reap {
                failed: report.failed,
                first: format!("{path}: {errno}"),
            }),
        }
    }
}

/// `%08x%08x` like the kernel's graves: seconds, then a counter (seeded from the pid so two
/// tools in a row do not start at the same number; collisions are retried anyway).
pub(crate) fn grave_name() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    format!(
        "{secs:08x}{:08x}",
        (std::process::id() << 12).wrapping_add(n)
    )
}

/// Bytes for people: printable UTF-8 as is, anything else as hex.
pub fn show_bytes(b: &[u8]) -> String {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control()) => s.to_string(),
        _ => format!("0x{}", hex(b)),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
