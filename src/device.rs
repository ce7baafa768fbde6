//! The /dev/cachefiles device behind the `Device` trait: commands, reads, READ_COMPLETE.
//!
//! Opening it, one command per write(), one message or status line per read(), and the
//! READ_COMPLETE ioctl on on-demand anonymous fds. Everything else talks to a `Device`.

use crate::proto::{Command, CommandError};
use nix::errno::Errno;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

pub const DEVICE_PATH: &str = "/dev/cachefiles";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("{path}: another cache daemon is bound (the device is busy)")]
    Busy { path: PathBuf },
    #[error("{path}: cachefiles module not loaded: modprobe cachefiles")]
    NotLoaded { path: PathBuf },
    #[error("{path}: permission denied: opening the cachefiles device needs CAP_SYS_ADMIN")]
    NotPermitted { path: PathBuf },
    #[error("cannot open {path}: {errno}")]
    Open { path: PathBuf, errno: Errno },
    #[error("`{command}` refused by the kernel: {errno}")]
    Command { command: String, errno: Errno },
    #[error("cannot send `{keyword}`: {source}")]
    Invalid {
        keyword: &'static str,
        source: CommandError,
    },
    #[error("reading the device failed: {0}")]
    Read(Errno),
    #[error("READ_COMPLETE for msg_id {msg_id} failed: {errno}")]
    ReadComplete { msg_id: u32, errno: Errno },
}

impl DeviceError {
    /// The kernel returns EIO for everything once the cache is dead (backing-fs error or a
    /// withdrawn cache): no retry can help, the service manager must restart us.
    pub fn cache_is_dead(&self) -> bool {
        matches!(
            self,
            DeviceError::Command {
                errno: Errno::EIO,
                ..
            } | DeviceError::Read(Errno::EIO)
        )
    }

    pub fn errno(&self) -> Option<Errno> {
        match self {
            DeviceError::Command { errno, .. }
            | DeviceError::Read(errno)
            | DeviceError::ReadComplete { errno, .. }
            | DeviceError::Open { errno, .. } => Some(*errno),
            DeviceError::Busy { .. } => Some(Errno::EBUSY),
            DeviceError::NotLoaded { .. } => Some(Errno::ENOENT),
            DeviceError::NotPermitted { .. } => Some(Errno::EPERM),
            DeviceError::Invalid { .. } => None,
        }
    }
}

/// What the daemon needs from the kernel side. The real implementation is `CachefilesDevice`;
/// tests drive the daemon with a scriptable fake.
pub trait Device {
    /// Writes one command; the kernel parses exactly one per write().
    fn send(&mut self, command: &Command) -> Result<(), DeviceError>;
    /// One read(): the status line in classic mode, one message (or 0: none pending) on demand.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError>;
    /// Tells the kernel that a READ's data is in place (or deliberately absent).
    fn complete_read(&mut self, anon_fd: BorrowedFd<'_>, msg_id: u32) -> Result<(), DeviceError>;
    /// The fd to poll: readable on a state change or pending request, writable while the
    /// kernel wants culling.
    fn poll_fd(&self) -> RawFd;
    /// Whether `fd`, named in an OPEN message, really is an anonymous fd the kernel just
    /// installed for us. Anything else (not open, or one of our own fds) must be neither
    /// used nor closed.
    fn is_anon_fd(&self, fd: RawFd) -> bool;
}

pub struct CachefilesDevice {
    file: File,
}

impl CachefilesDevice {
    pub fn open(path: &Path) -> Result<CachefilesDevice, DeviceError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                let errno = Errno::from_raw(e.raw_os_error().unwrap_or(0));
                let path = path.to_path_buf();
                match errno {
                    Errno::EBUSY => DeviceError::Busy { path },
                    Errno::ENOENT | Errno::ENXIO | Errno::ENODEV => DeviceError::NotLoaded { path },
                    Errno::EPERM | Errno::EACCES => DeviceError::NotPermitted { path },
                    errno => DeviceError::Open { path, errno },
                }
            })?;
        Ok(CachefilesDevice { file })
    }

    /// Adopts a device fd handed over by a supervisor or systemd's fd store.
    pub fn from_fd(fd: OwnedFd) -> CachefilesDevice {
        CachefilesDevice {
            file: File::from(fd),
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.file.into()
    }
}

/// Neither the status read nor poll() reveals a cache the kernel has marked dead (after a
/// backing-filesystem I/O error); a harmless command does (see `Command::liveness_probe`).
/// Errs only when the cache is dead.
pub fn check_alive(device: &mut dyn Device) -> Result<(), DeviceError> {
    match device.send(&Command::liveness_probe()) {
        Err(e) if e.cache_is_dead() => Err(e),
        _ => Ok(()),
    }
}

/// Whether `fd` is open on the character device that `device` names (same device number).
pub fn is_device_fd(fd: RawFd, device: &Path) -> bool {
    use nix::sys::stat::{fstat, stat, SFlag};
    let is_chr = |mode| SFlag::from_bits_truncate(mode) & SFlag::S_IFMT == SFlag::S_IFCHR;
    match (fstat(fd), stat(device)) {
        (Ok(got), Ok(want)) => {
            is_chr(got.st_mode) && is_chr(want.st_mode) && got.st_rdev == want.st_rdev
        }
        _ => false,
    }
}

/// A command's bytes as written to the device; what cannot be sent is an `Invalid` error.
pub fn encode(command: &Command) -> Result<Vec<u8>, DeviceError> {
    command.to_bytes().map_err(|source| DeviceError::Invalid {
        keyword: command.keyword(),
        source,
    })
}

impl Device for CachefilesDevice {
    fn send(&mut self, command: &Command) -> Result<(), DeviceError> {
        let bytes = encode(command)?;
        loop {
            match self.file.write(&bytes) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DeviceError::Command {
                        command: command.to_string(),
                        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    })
                }
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
        loop {
            match self.file.read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(DeviceError::Read(Errno::from_raw(
                        e.raw_os_error().unwrap_or(0),
                    )))
                }
            }
        }
    }

    fn complete_read(&mut self, anon_fd: BorrowedFd<'_>, msg_id: u32) -> Result<(), DeviceError> {
        read_complete(anon_fd, msg_id).map_err(|errno| DeviceError::ReadComplete { msg_id, errno })
    }

    fn poll_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    fn is_anon_fd(&self, fd: RawFd) -> bool {
        if fd <= 2 || fd == self.file.as_raw_fd() {
            return false;
        }
        match std::fs::read_link(format!("/proc/self/fd/{fd}")) {
            Ok(target) => target.as_os_str() == "anon_inode:[cachefiles]",
            // Without /proc, settle for an open fd on an anonymous inode (no file type).
            Err(_) if !Path::new("/proc/self/fd").exists() => {
                nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok()
                    && nix::sys::stat::fstat(fd).is_ok_and(|st| {
                        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
                            & nix::sys::stat::SFlag::S_IFMT
                            == nix::sys::stat::SFlag::empty()
                    })
            }
            Err(_) => false,
        }
    }
}

/// The generated wrapper is a `pub unsafe fn`: kept in a private module, out of the API.
mod ioctl {
    // `CACHEFILES_IOC_READ_COMPLETE = _IOW(0x98, 1, int)`: the msg_id is passed by value.
    nix::ioctl_write_int!(cachefiles_ioc_read_complete, 0x98, 1);
}

fn read_complete(anon_fd: BorrowedFd<'_>, msg_id: u32) -> Result<(), Errno> {
    // SAFETY: the ioctl takes its argument by value (no pointer is passed) and the fd is a
    // live borrowed descriptor for the duration of the call.
    unsafe { ioctl::cachefiles_ioc_read_complete(anon_fd.as_raw_fd(), msg_id.into()) }.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_complete_is_refused_on_a_file_that_is_no_anon_fd() {
        // The ioctl reaches the fd: a regular file answers ENOTTY, not EBADF or EFAULT.
        let f = tempfile::tempfile().unwrap();
        assert_eq!(read_complete(f.as_fd(), 1), Err(Errno::ENOTTY));
        // The number the kernel's uapi header gives (x86, arm and most others).
        assert_eq!(nix::request_code_write!(0x98, 1, 4), 0x4004_9801);
    }

    #[test]
    fn open_errors_say_what_to_do() {
        let e = CachefilesDevice::open(Path::new("/nonexistent/cachefiles"))
            .err()
            .unwrap();
        assert_eq!(
            e.to_string(),
            "/nonexistent/cachefiles: cachefiles module not loaded: modprobe cachefiles"
        );
    }

    #[test]
    fn commands_reach_the_fd_one_per_write() {
        // A FIFO shows each write's bytes exactly.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let reader = std::thread::spawn({
            let path = path.clone();
            move || std::fs::read(path).unwrap()
        });
        let mut dev = CachefilesDevice {
            file: OpenOptions::new().write(true).open(&path).unwrap(),
        };
        dev.send(&Command::Limit(crate::proto::Limit::Brun, 10))
            .unwrap();
        let bad = dev.send(&Command::Cull(b"a/b".to_vec())).unwrap_err();
        assert!(matches!(
            bad,
            DeviceError::Invalid {
                keyword: "cull",
                ..
            }
        ));
        drop(dev);
        assert_eq!(reader.join().unwrap(), b"brun 10%");
    }
}
