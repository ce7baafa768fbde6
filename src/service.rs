//! Service-manager integration: sd_notify, the fd store, and taking over a bound device fd.
//!
//! sd_notify: READY, STATUS, WATCHDOG, and the device fd kept in systemd's fd store. A device
//! fd that is already bound is handed to us by systemd (LISTEN_FDS, name `cachefiles`) or by
//! our own `--supervise` parent.
//!
//! Keeping the device fd open across a daemon restart is what stops the kernel from
//! withdrawing the cache (and, on demand, from failing every pending read with EIO). The
//! fanotify front end's group is kept the same way (name `fanotify`, or
//! `CACHEFILESD_FANOTIFY_FD` from the supervisor): closing its last fd would allow every
//! pending read, and readers would see zeros in unfilled ranges.

use crate::device::DEVICE_PATH;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The fd name used in systemd's fd store.
pub const FD_NAME: &str = "cachefiles";
/// Set by the supervisor for its worker: the inherited device fd number.
pub const ENV_DEVICE_FD: &str = "CACHEFILESD_DEVICE_FD";
/// The fanotify group's fd name in systemd's fd store.
pub const GROUP_FD_NAME: &str = "fanotify";
/// Set by the supervisor for its worker: the inherited fanotify group fd number.
pub const ENV_GROUP_FD: &str = "CACHEFILESD_FANOTIFY_FD";
/// A device fd passed in by whoever kept it open for us. It is always bound already: the
/// supervisor binds before starting workers, and systemd only stores the fd after bind (see
/// `ready`).
pub struct Inherited {
    pub fd: OwnedFd,
    /// Passed by our `--supervise` parent (which daemonised and owns the pid file).
    pub from_supervisor: bool,
    /// The fanotify group kept with it, if any: checked by `Group::adopt` before use.
    pub group: Option<OwnedFd>,
}

#[derive(Debug, thiserror::Error)]
#[error("the inherited fd {fd} ({from}) is not {device}: refusing to adopt it")]
pub struct NotTheDevice {
    pub fd: RawFd,
    pub from: &'static str,
    pub device: String,
}

/// Takes ownership of `fd` if it is an open descriptor of the character device at `device`
/// (compared by device number, so a regular file, a pipe or another device is refused and
/// left open: it is not ours to close).
pub fn adopt_device_fd(
    fd: RawFd,
    device: &Path,
    from: &'static str,
) -> Result<OwnedFd, NotTheDevice> {
    if !crate::device::is_device_fd(fd, device) {
        return Err(NotTheDevice {
            fd,
            from,
            device: device.display().to_string(),
        });
    }
    // SAFETY: the fd is open (fstat succeeded) and was handed to this process for the
    // device; nothing else in this process owns it (callers take it once, from the
    // environment they then clear).
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn env_fd(name: &str) -> Option<RawFd> {
    std::env::var(name)
        .ok()?
        .parse::<RawFd>()
        .ok()
        .filter(|&fd| fd > 2)
}

/// Takes ownership of an inherited fd named as a fanotify group, if it is open; whether it
/// is one is `Group::adopt`'s to check.
fn take_group_fd(fd: RawFd) -> Option<OwnedFd> {
    nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).ok()?;
    // SAFETY: the fd is open (F_GETFD succeeded) and was handed to this process as the
    // group; it is taken once, from the environment then cleared.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes the inherited device fd, if any: first the supervisor's, then systemd's fd store.
/// An fd that is not /dev/cachefiles is an error: adopting it would send commands to it.
pub fn inherited_device() -> Result<Option<Inherited>, NotTheDevice> {
    let device = Path::new(DEVICE_PATH);
    let from_supervisor = env_fd(ENV_GROUP_FD);
    std::env::remove_var(ENV_GROUP_FD);
    if let Some(fd) = env_fd(ENV_DEVICE_FD) {
        std::env::remove_var(ENV_DEVICE_FD);
        let fd = adopt_device_fd(fd, device, ENV_DEVICE_FD)?;
        return Ok(Some(Inherited {
            fd,
            from_supervisor: true,
            group: from_supervisor.and_then(take_group_fd),
        }));
    }
    let fds = sd_notify::listen_fds_with_names().ok();
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    let Some(fds) = fds else {
        return Ok(None);
    };
    let fds: Vec<(RawFd, String)> = fds.collect();
    let group = fds
        .iter()
        .find(|(_, name)| name == GROUP_FD_NAME)
        .and_then(|(fd, _)| take_group_fd(*fd));
    let Some((fd, _)) = fds.into_iter().find(|(_, name)| name == FD_NAME) else {
        return Ok(None);
    };
    let fd = adopt_device_fd(fd, device, "the service manager's fd store")?;
    Ok(Some(Inherited {
        fd,
        from_supervisor: false,
        group,
    }))
}

/// Keeps the fanotify group in systemd's fd store (beside the device, see `ready`).
pub fn store_group(group: BorrowedFd<'_>) {
    if let Err(e) = sd_notify::notify_with_fds(
        &[
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(GROUP_FD_NAME),
        ],
        &[group],
    ) {
        log::warn!("cannot store the fanotify group with the service manager: {e}");
    }
}

/// Tells systemd that the cache is bound (READY=1) and, with `store`, keeps the device fd in
/// its fd store.
pub fn ready(device: BorrowedFd<'_>, status: &str, store: bool) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
    if !store {
        return;
    }
    if let Err(e) = sd_notify::notify_with_fds(
        &[
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(FD_NAME),
        ],
        &[device],
    ) {
        log::warn!("cannot store the device fd with the service manager: {e}");
    }
}

/// Whether a service manager listens for notifications (NOTIFY_SOCKET is set): the STATUS=
/// line is only worth building then.
pub fn notifying() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
}

pub fn status(line: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(line)]);
}

pub fn watchdog_enabled() -> bool {
    sd_notify::watchdog_enabled().is_some()
}

pub fn watchdog() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
}

pub fn stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Removes the device fd from systemd's fd store (after the cache died).
pub fn forget_stored_device() {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::FdStoreRemove,
        sd_notify::NotifyState::FdName(FD_NAME),
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::IntoRawFd;

    #[test]
    fn only_the_device_itself_is_adopted() {
        // /dev/null stands for /dev/cachefiles: a character device known to exist here.
        let device = Path::new("/dev/null");
        let dir = tempfile::tempdir().unwrap();
        let file = std::fs::File::create(dir.path().join("plain")).unwrap();
        let zero = std::fs::File::open("/dev/zero").unwrap();
        let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
        for fd in [file.into_raw_fd(), zero.into_raw_fd(), pipe_r.into_raw_fd()] {
            let e = adopt_device_fd(fd, device, "test").unwrap_err();
            assert_eq!(e.fd, fd);
            // Refused and left open, not closed.
            assert!(nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
            nix::unistd::close(fd).unwrap();
        }
        let null = std::fs::File::open(device).unwrap().into_raw_fd();
        drop(adopt_device_fd(null, device, "test").unwrap());
        // Not open at all (just closed by the drop above).
        assert!(adopt_device_fd(null, device, "test").is_err());
    }
}
