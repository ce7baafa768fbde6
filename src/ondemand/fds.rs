//! The table of kernel fds the engine owns, so that each is wrapped and closed exactly once.
//!
//! A message naming an owned number again (damaged, hostile or stale) is refused without
//! wrapping or closing it. Two `OwnedFd`s on one number would mean a later double close, and
//! the second close would hit whatever file got that number in between.

use std::collections::HashSet;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

/// Why an fd number named by the kernel was not adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AdoptError {
    #[error("fd {0} is already owned by the engine")]
    AlreadyOwned(RawFd),
    #[error("fd {0} is not one the kernel installed for us")]
    NotKernelFd(RawFd),
    #[error("fd number {0} is out of range")]
    OutOfRange(u32),
}

/// The fd numbers the engine owns. Cloned handles share one table.
#[derive(Clone, Default)]
pub struct FdTable(Arc<Mutex<HashSet<RawFd>>>);

impl FdTable {
    fn lock(&self) -> MutexGuard<'_, HashSet<RawFd>> {
        // The set is updated in single inserts and removes: a panic elsewhere while it was
        // held cannot leave it half-changed.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes ownership of the fd number `raw` named in a kernel message. `is_kernel_fd` is the
    /// device's check that the number really is a fd the kernel installed for us (its type);
    /// the table adds that nobody here owns it already. Check and insert happen under the
    /// table's lock, and `KernelFd` closes under it: a number is never free in the table
    /// while still open, nor open twice in it.
    pub fn adopt(
        &self,
        raw: u32,
        is_kernel_fd: impl FnOnce(RawFd) -> bool,
    ) -> Result<KernelFd, AdoptError> {
        let fd = RawFd::try_from(raw).map_err(|_| AdoptError::OutOfRange(raw))?;
        let mut owned = self.lock();
        if owned.contains(&fd) {
            return Err(AdoptError::AlreadyOwned(fd));
        }
        if !is_kernel_fd(fd) {
            return Err(AdoptError::NotKernelFd(fd));
        }
        // SAFETY: the device confirmed the kernel installed this fd in our table for this
        // message, and the table shows nothing here owns it: wrapped once, closed once.
        let owned_fd = unsafe { OwnedFd::from_raw_fd(fd) };
        owned.insert(fd);
        Ok(KernelFd {
            fd: Some(owned_fd),
            table: self.clone(),
        })
    }

    /// Registers an fd the daemon opened itself (the fanotify front end's blob files), so the
    /// engine holds it like a kernel fd. Its number cannot be in the table already: the table
    /// holds only numbers that are open, each through exactly one `OwnedFd`.
    pub fn own(&self, fd: OwnedFd) -> KernelFd {
        let newly = self.lock().insert(fd.as_raw_fd());
        debug_assert!(newly, "an open fd number was registered twice");
        KernelFd {
            fd: Some(fd),
            table: self.clone(),
        }
    }

    /// Whether the engine owns fd number `fd` right now.
    pub fn owns(&self, fd: RawFd) -> bool {
        self.lock().contains(&fd)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An fd from the kernel, registered in its `FdTable` until closed.
pub struct KernelFd {
    /// `Some` until dropped.
    fd: Option<OwnedFd>,
    table: FdTable,
}

impl AsFd for KernelFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd
            .as_ref()
            .expect("a KernelFd holds its fd until dropped")
            .as_fd()
    }
}

impl std::fmt::Debug for KernelFd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelFd({})", self.as_fd().as_raw_fd())
    }
}

impl Drop for KernelFd {
    fn drop(&mut self) {
        if let Some(fd) = self.fd.take() {
            let number = fd.as_raw_fd();
            let mut owned = self.table.lock();
            drop(fd);
            owned.remove(&number);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_file() -> u32 {
        use std::os::fd::IntoRawFd;
        tempfile::tempfile().unwrap().into_raw_fd() as u32
    }

    #[test]
    fn a_number_is_owned_once_and_released_when_closed() {
        let table = FdTable::default();
        let raw = open_file();
        let fd = table.adopt(raw, |_| true).unwrap();
        assert!(table.owns(raw as RawFd));
        assert_eq!(
            table.adopt(raw, |_| true).unwrap_err(),
            AdoptError::AlreadyOwned(raw as RawFd)
        );
        // Refused, the fd is untouched: still open.
        assert!(nix::fcntl::fcntl(raw as RawFd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
        drop(fd);
        assert!(table.is_empty());
        assert!(nix::fcntl::fcntl(raw as RawFd, nix::fcntl::FcntlArg::F_GETFD).is_err());
    }

    #[test]
    fn the_devices_verdict_and_the_range_are_checked() {
        let table = FdTable::default();
        let raw = open_file();
        assert_eq!(
            table.adopt(raw, |_| false).unwrap_err(),
            AdoptError::NotKernelFd(raw as RawFd)
        );
        assert!(nix::fcntl::fcntl(raw as RawFd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
        assert_eq!(
            table.adopt(u32::MAX, |_| true).unwrap_err(),
            AdoptError::OutOfRange(u32::MAX)
        );
        assert!(table.is_empty());
        // SAFETY: `raw` came from into_raw_fd above and was refused, so nothing owns it.
        drop(unsafe { OwnedFd::from_raw_fd(raw as RawFd) });
    }
}
