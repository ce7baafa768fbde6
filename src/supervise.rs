//! `cachefilesd --supervise`: a tiny parent that holds the device fd and restarts the worker
//! with it when the worker dies, so the cache survives a crash without systemd's fd store.
//! The kernel keeps the cache bound while any process holds the fd; on demand, the restarted
//! worker writes `restore` and the kernel re-delivers every outstanding request.

use crate::service::ENV_DEVICE_FD;
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// More crashes than this within `CRASH_WINDOW` means restarting will not help.
const MAX_CRASHES: usize = 5;
const CRASH_WINDOW: Duration = Duration::from_secs(60);

fn inheritable(fd: &OwnedFd, yes: bool) -> std::io::Result<()> {
    let flags = if yes {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Runs workers until one stops cleanly or fails in a way a restart cannot fix. Returns the
/// exit status for the supervisor itself.
pub fn run(device: OwnedFd, worker_args: Vec<OsString>) -> std::io::Result<u8> {
    let child_pid = Arc::new(AtomicI32::new(0));
    let terminating = Arc::new(AtomicBool::new(false));
    {
        use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1])?;
        let child_pid = child_pid.clone();
        let terminating = terminating.clone();
        std::thread::Builder::new()
            .name("supervisor-signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    if sig != SIGUSR1 {
                        terminating.store(true, Ordering::SeqCst);
                    }
                    let pid = child_pid.load(Ordering::SeqCst);
                    if pid > 0 {
                        let _ = kill(Pid::from_raw(pid), Signal::try_from(sig).ok());
                    }
                }
            })?;
    }
    let exe = std::env::current_exe()?;
    let mut crashes: Vec<Instant> = Vec::new();
    loop {
        // The supervisor bound the cache before the first worker: every worker takes it over.
        inheritable(&device, true)?;
        let spawned = Command::new(&exe)
            .args(&worker_args)
            .env(ENV_DEVICE_FD, device.as_raw_fd().to_string())
            .spawn();
        inheritable(&device, false)?;
        let mut child = spawned?;
        child_pid.store(child.id() as i32, Ordering::SeqCst);
        if terminating.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        log::info!("worker {} started", child.id());
        let status = child.wait()?;
        child_pid.store(0, Ordering::SeqCst);
        match (status.code(), status.signal()) {
            (Some(0), _) => return Ok(0),
            (Some(code), _) if terminating.load(Ordering::SeqCst) => return Ok(code as u8),
            // Config and OS errors (a dead cache among them) are not cured by a restart.
            (Some(code @ (1 | 2)), _) => {
                log::error!("worker exited with status {code}; not restarting");
                return Ok(code as u8);
            }
            _ if terminating.load(Ordering::SeqCst) => return Ok(0),
            (code, signal) => {
                let now = Instant::now();
                crashes.retain(|t| now.duration_since(*t) < CRASH_WINDOW);
                crashes.push(now);
                if crashes.len() > MAX_CRASHES {
                    log::error!(
                        "worker crashed {} times within {:?}; giving up",
                        crashes.len(),
                        CRASH_WINDOW
                    );
                    return Ok(1);
                }
                log::warn!("worker died (status {code:?}, signal {signal:?}); restarting it with the device fd held");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
