//! Directory access that never follows a symlink: every path under the cache root is opened
//! one component at a time with O_NOFOLLOW, so nothing found on disk can lead outside it.

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use std::os::fd::AsRawFd;

pub fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens a directory named by one component under `parent`; a symlink fails (ELOOP/ENOTDIR).
pub fn open_dir_at(parent: &impl AsRawFd, name: &[u8]) -> Result<Dir, Errno> {
    if !is_component(name) {
        return Err(Errno::EINVAL);
    }
    Dir::openat(Some(parent.as_raw_fd()), name, dir_flags(), Mode::empty())
}

pub fn stat_at(parent: &impl AsRawFd, name: &[u8]) -> Result<FileStat, Errno> {
    nix::sys::stat::fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW)
}

/// A single path component: not empty, no `/`, no NUL, not `.` or `..`.
pub fn is_component(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.iter().any(|&b| b == b'/' || b == 0)
}

pub fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// Opens `components` below `root`, one at a time, never following a link.
pub fn open_path(root: &impl AsRawFd, components: &[Box<[u8]>]) -> Result<Dir, Errno> {
    let mut dir = Dir::openat(Some(root.as_raw_fd()), ".", dir_flags(), Mode::empty())?;
    for c in components {
        dir = open_dir_at(&dir, c)?;
    }
    Ok(dir)
}

/// A raw dirfd borrowed while its `Dir` is being iterated (iteration borrows the `Dir`
/// mutably, yet entries must be looked up relative to it).
pub struct RawDir(pub std::os::fd::RawFd);

impl AsRawFd for RawDir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}
