//! The few syscalls nix 0.29 does not wrap safely for us: `openat` returning an owned fd, and
//! the fd-based xattr calls. Each `unsafe` block is a leaf with its reason stated.

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

/// `openat(dir, name, flags, mode)` as an owned `File` (closed on drop, whatever happens next).
pub fn openat_file(
    dir: &impl AsRawFd,
    name: &[u8],
    flags: OFlag,
    mode: Mode,
) -> Result<File, Errno> {
    let fd = nix::fcntl::openat(Some(dir.as_raw_fd()), name, flags | OFlag::O_CLOEXEC, mode)?;
    // SAFETY: openat just returned this fd and nothing else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

fn xattr_name(name: &str) -> CString {
    CString::new(name).expect("xattr names are constants without NUL")
}

/// `fgetxattr`; `Ok(None)` when the file has no such attribute (ENODATA).
pub fn get_xattr(fd: &impl AsRawFd, name: &str) -> Result<Option<Vec<u8>>, Errno> {
    let cname = xattr_name(name);
    // Xattr values are at most 64 KiB (XATTR_SIZE_MAX); ours are tiny.
    let mut buf = vec![0u8; 65536];
    // SAFETY: the fd is borrowed for the call, cname is NUL-terminated, and the kernel writes at
    // most buf.len() bytes into buf.
    let n = unsafe {
        libc::fgetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return match Errno::last() {
            Errno::ENODATA => Ok(None),
            e => Err(e),
        };
    }
    buf.truncate(n as usize);
    Ok(Some(buf))
}

/// `fsetxattr` (create or replace).
pub fn set_xattr(fd: &impl AsRawFd, name: &str, value: &[u8]) -> Result<(), Errno> {
    let cname = xattr_name(name);
    // SAFETY: the fd is borrowed for the call, cname is NUL-terminated, and the kernel reads
    // value.len() bytes from value.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_raw_fd(),
            cname.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}
