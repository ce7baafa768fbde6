//! `cachefilesd --supervise`: a parent that holds the device fd and restarts the worker.
//!
//! It restarts the worker with the fd when the worker dies, so the cache survives a crash
//! without systemd's fd store. The kernel keeps the cache bound while any process holds the
//! fd; on demand, the restarted worker writes `restore` and the kernel re-delivers every
//! outstanding request. A worker that keeps crashing is restarted with a growing delay and
//! given up on, as systemd's StartLimitBurst does.

use crate::exit::Exit;
use crate::service::{ENV_DEVICE_FD, ENV_GROUP_FD};
use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use std::collections::VecDeque;
use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a crashing worker is restarted: more than `burst` crashes within `interval`
/// means restarting will not help; before that, the n-th crash in the interval waits
/// `first_delay * 2^(n-1)` (at most `max_delay`), so a worker that dies at once does not spin.
#[derive(Debug, Clone)]
pub struct RestartLimit {
    pub burst: usize,
    pub interval: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    crashes: VecDeque<Instant>,
}

impl Default for RestartLimit {
    fn default() -> RestartLimit {
        RestartLimit::new(
            5,
            Duration::from_secs(60),
            Duration::from_millis(200),
            Duration::from_secs(10),
        )
    }
}

impl RestartLimit {
    pub fn new(
        burst: usize,
        interval: Duration,
        first_delay: Duration,
        max_delay: Duration,
    ) -> RestartLimit {
        RestartLimit {
            burst,
            interval,
            first_delay,
            max_delay,
            crashes: VecDeque::new(),
        }
    }

    /// A crash at `now`: the delay before the restart, or `None` to give up.
    pub fn on_crash(&mut self, now: Instant) -> Option<Duration> {
        while self
            .crashes
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= self.interval)
        {
            self.crashes.pop_front();
        }
        self.crashes.push_back(now);
        let n = self.crashes.len();
        if n > self.burst {
            return None;
        }
        let factor = 1u32 << (n - 1).min(16);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }

    /// Crashes counted in the current interval.
    pub fn recent(&self) -> usize {
        self.crashes.len()
    }
}

/// What a worker's end means for the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Stop supervising and exit so.
    Stop(Exit),
    /// A crash (a signal, a panic, an internal error): restart, within the limit.
    Crash,
}

/// Judges a worker's exit (`code`, or the `signal` that killed it); `terminating`: the
/// supervisor was asked to stop and passed the signal on.
pub fn judge(code: Option<i32>, terminating: bool) -> Verdict {
    match code.map(|c| (c, Exit::from_code(c))) {
        Some((_, Some(Exit::Ok))) => Verdict::Stop(Exit::Ok),
        Some((_, exit)) if terminating => Verdict::Stop(exit.unwrap_or(Exit::Internal)),
        None if terminating => Verdict::Stop(Exit::Ok),
        Some((_, Some(exit))) if !exit.worth_a_restart() => Verdict::Stop(exit),
        _ => Verdict::Crash,
    }
}

fn inheritable(fd: &OwnedFd, yes: bool) -> std::io::Result<()> {
    let flags = if yes {
        FdFlag::empty()
    } else {
        FdFlag::FD_CLOEXEC
    };
    fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags))?;
    Ok(())
}

/// Passes SIGTERM, SIGINT, SIGUSR1 and SIGHUP on to the current worker; the first two also
/// mark the supervisor as terminating.
fn forward_signals(child_pid: Arc<AtomicI32>, terminating: Arc<AtomicBool>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGUSR1, SIGHUP])?;
    std::thread::Builder::new()
        .name("supervisor-signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig != SIGUSR1 && sig != SIGHUP {
                    terminating.store(true, Ordering::SeqCst);
                }
                let pid = child_pid.load(Ordering::SeqCst);
                if pid > 0 {
                    let _ = kill(Pid::from_raw(pid), Signal::try_from(sig).ok());
                }
            }
        })?;
    Ok(())
}

/// Runs workers (`exe` with `worker_args`, the device fd passed in `ENV_DEVICE_FD`, the
/// fanotify group, if any, in `ENV_GROUP_FD`) until one stops in a way a restart cannot fix
/// or `limit` is reached. Returns the supervisor's own exit status. Holding the group here is
/// what keeps a dead worker's pending events pending (its successor answers them).
pub fn run(
    device: OwnedFd,
    group: Option<OwnedFd>,
    exe: &Path,
    worker_args: &[OsString],
    mut limit: RestartLimit,
) -> std::io::Result<Exit> {
    let child_pid = Arc::new(AtomicI32::new(0));
    let terminating = Arc::new(AtomicBool::new(false));
    forward_signals(child_pid.clone(), terminating.clone())?;
    loop {
        // The supervisor bound the cache before the first worker: every worker takes it over.
        inheritable(&device, true)?;
        let mut command = Command::new(exe);
        command
            .args(worker_args)
            .env(ENV_DEVICE_FD, device.as_raw_fd().to_string());
        if let Some(group) = &group {
            inheritable(group, true)?;
            command.env(ENV_GROUP_FD, group.as_raw_fd().to_string());
        }
        let spawned = command.spawn();
        inheritable(&device, false)?;
        if let Some(group) = &group {
            inheritable(group, false)?;
        }
        let mut child = spawned?;
        child_pid.store(child.id() as i32, Ordering::SeqCst);
        if terminating.load(Ordering::SeqCst) {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        }
        log::info!("worker {} started", child.id());
        let status = child.wait()?;
        child_pid.store(0, Ordering::SeqCst);
        match judge(status.code(), terminating.load(Ordering::SeqCst)) {
            Verdict::Stop(exit) => {
                if exit != Exit::Ok && !terminating.load(Ordering::SeqCst) {
                    log::error!("worker exited with status {}; not restarting", exit.code());
                }
                return Ok(exit);
            }
            Verdict::Crash => {}
        }
        let Some(delay) = limit.on_crash(Instant::now()) else {
            // The wording is the one cachefilesd(8) documents.
            log::error!(
                "worker crashed {} times within {:?}; giving up",
                limit.recent(),
                limit.interval
            );
            return Ok(Exit::Os);
        };
        log::warn!(
            "worker died (status {:?}, signal {:?}); restarting it in {delay:?} with the device fd (and fanotify group) held",
            status.code(),
            status.signal()
        );
        std::thread::sleep(delay);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediate_crashes_back_off_then_give_up() {
        let mut l = RestartLimit::default();
        let t0 = Instant::now();
        let delays: Vec<_> = (0..6)
            .map(|i| l.on_crash(t0 + Duration::from_millis(i)))
            .collect();
        let ms = |m| Some(Duration::from_millis(m));
        assert_eq!(
            delays,
            [ms(200), ms(400), ms(800), ms(1600), ms(3200), None]
        );
    }

    #[test]
    fn crashes_an_interval_apart_restart_at_once_forever() {
        let mut l = RestartLimit::default();
        let t0 = Instant::now();
        for i in 0..20 {
            let at = t0 + Duration::from_secs(61 * i);
            assert_eq!(
                l.on_crash(at),
                Some(Duration::from_millis(200)),
                "crash {i}"
            );
        }
    }

    #[test]
    fn verdicts() {
        assert_eq!(judge(Some(0), false), Verdict::Stop(Exit::Ok));
        assert_eq!(judge(Some(1), false), Verdict::Stop(Exit::Os));
        assert_eq!(judge(Some(2), false), Verdict::Stop(Exit::Config));
        assert_eq!(judge(Some(3), false), Verdict::Crash);
        assert_eq!(judge(Some(101), false), Verdict::Crash, "a panic");
        assert_eq!(judge(None, false), Verdict::Crash, "a signal");
        assert_eq!(judge(None, true), Verdict::Stop(Exit::Ok));
        assert_eq!(judge(Some(3), true), Verdict::Stop(Exit::Internal));
        assert_eq!(judge(Some(101), true), Verdict::Stop(Exit::Internal));
    }

    #[test]
    fn a_worker_that_dies_at_once_is_given_up_on() {
        let dir = tempfile::tempdir().unwrap();
        let starts = dir.path().join("starts");
        let script = format!("echo start >> {}; kill -SEGV $$", starts.display());
        let device: OwnedFd = std::fs::File::open("/dev/null").unwrap().into();
        let limit = RestartLimit::new(
            3,
            Duration::from_secs(60),
            Duration::from_millis(10),
            Duration::from_millis(40),
        );
        let began = Instant::now();
        let exit = run(
            device,
            None,
            Path::new("/bin/sh"),
            &["-c".into(), script.into()],
            limit,
        )
        .unwrap();
        assert_eq!(exit, Exit::Os);
        // The first start and three restarts, 10 + 20 + 40 ms apart.
        let count = std::fs::read_to_string(&starts).unwrap().lines().count();
        assert_eq!(count, 4);
        assert!(began.elapsed() >= Duration::from_millis(70));
    }
}
