//! The `user.CacheFiles.cache` xattrs, read and written through an fd, with rustix.
//!
//! Never through a path, so a link swapped in cannot redirect them.

use super::layout::XATTR_NAME;
use super::tree::{borrow, errno};
use nix::errno::Errno;
use rustix::fs::XattrFlags;
use std::os::fd::AsRawFd;

/// XATTR_SIZE_MAX: no xattr value is larger.
const MAX_VALUE: usize = 65536;

/// The cachefiles xattr of the open file or directory `fd`; `Ok(None)` if it has none.
pub fn get(fd: &impl AsRawFd) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; MAX_VALUE];
    match rustix::fs::fgetxattr(borrow(fd), XATTR_NAME, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) if errno(e) == Errno::ENODATA => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// Sets (creates or replaces) the cachefiles xattr of `fd`.
pub fn set(fd: &impl AsRawFd, value: &[u8]) -> Result<(), Errno> {
    rustix::fs::fsetxattr(borrow(fd), XATTR_NAME, value, XattrFlags::empty()).map_err(errno)
}

/// The xattr `name` of `fd` (another than the cachefiles one: the daemon's own records on
/// files outside `cache/`); `Ok(None)` if it has none.
pub fn get_named(fd: &impl AsRawFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let mut buf = vec![0u8; MAX_VALUE];
    match rustix::fs::fgetxattr(borrow(fd), name, &mut buf[..]) {
        Ok(n) => {
            buf.truncate(n);
            Ok(Some(buf))
        }
        Err(e) if errno(e) == Errno::ENODATA => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

pub fn set_named(fd: &impl AsRawFd, name: &str, value: &[u8]) -> Result<(), Errno> {
    rustix::fs::fsetxattr(borrow(fd), name, value, XattrFlags::empty()).map_err(errno)
}

/// Removes the xattr `name` of `fd`; none there is fine.
pub fn remove_named(fd: &impl AsRawFd, name: &str) -> Result<(), Errno> {
    match rustix::fs::fremovexattr(borrow(fd), name) {
        Err(e) if errno(e) != Errno::ENODATA => Err(errno(e)),
        _ => Ok(()),
    }
}
