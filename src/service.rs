//! Service-manager integration: sd_notify (READY, STATUS, WATCHDOG, the device fd kept in
//! systemd's fd store) and taking over a device fd that is already bound, handed to us by
//! systemd (LISTEN_FDS, name `cachefiles`) or by our own `--supervise` parent.
//!
//! Keeping the device fd open across a daemon restart is what stops the kernel from
//! withdrawing the cache (and, on demand, from failing every pending read with EIO).

use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The fd name used in systemd's fd store.
pub const FD_NAME: &str = "cachefiles";
/// Set by the supervisor for its worker: the inherited device fd number.
pub const ENV_DEVICE_FD: &str = "CACHEFILESD_DEVICE_FD";
/// A device fd passed in by whoever kept it open for us. It is always bound already: the
/// supervisor binds before starting workers, and systemd only stores the fd after bind (see
/// `ready`).
pub struct Inherited {
    pub fd: OwnedFd,
    /// Passed by our `--supervise` parent (which daemonised and owns the pid file).
    pub from_supervisor: bool,
}

fn env_fd(name: &str) -> Option<RawFd> {
    std::env::var(name)
        .ok()?
        .parse::<RawFd>()
        .ok()
        .filter(|&fd| fd > 2)
}

/// Takes the inherited device fd, if any: first the supervisor's, then systemd's fd store.
pub fn inherited_device() -> Option<Inherited> {
    if let Some(fd) = env_fd(ENV_DEVICE_FD) {
        std::env::remove_var(ENV_DEVICE_FD);
        // SAFETY: the supervisor opened this fd for us and passed its number; nothing else in
        // this process refers to it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        return Some(Inherited {
            fd,
            from_supervisor: true,
        });
    }
    let fds = sd_notify::listen_fds_with_names().ok()?;
    let mut found = None;
    for (fd, name) in fds {
        if name == FD_NAME && found.is_none() {
            // SAFETY: systemd passed this fd (LISTEN_FDS for our pid) and names it ours.
            found = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDNAMES");
    found.map(|fd| Inherited {
        fd,
        from_supervisor: false,
    })
}

/// Tells systemd that the cache is bound (READY=1) and keeps the device fd in its fd store.
pub fn ready(device: BorrowedFd<'_>, status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
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
