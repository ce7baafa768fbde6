//! The daemon's small event sources: signal pipes, the graveyard watch, the completions waker.
//!
//! Each registers itself with the reactor and recognises its own tokens.

use crate::reactor::Registrar;
use mio::unix::SourceFd;
use mio::{Interest, Token, Waker};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::sync::Arc;

/// Signal pipes: each becomes readable when its signal arrives (see
/// signal_hook::low_level::pipe).
pub struct SignalPipes {
    pub terminate: mio::net::UnixStream,
    pub report: mio::net::UnixStream,
    pub reload: mio::net::UnixStream,
}

impl SignalPipes {
    /// Routes SIGTERM and SIGINT to `terminate`, SIGUSR1 to `report` and SIGHUP to `reload`.
    pub fn install() -> std::io::Result<SignalPipes> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR1};
        use signal_hook::low_level::pipe;
        let (term_read, term_write) = std::os::unix::net::UnixStream::pair()?;
        let (report_read, report_write) = std::os::unix::net::UnixStream::pair()?;
        let (reload_read, reload_write) = std::os::unix::net::UnixStream::pair()?;
        for s in [
            &term_read,
            &term_write,
            &report_read,
            &report_write,
            &reload_read,
            &reload_write,
        ] {
            s.set_nonblocking(true)?;
        }
        pipe::register(SIGTERM, term_write.try_clone()?)?;
        pipe::register(SIGINT, term_write)?;
        pipe::register(SIGUSR1, report_write)?;
        pipe::register(SIGHUP, reload_write)?;
        Ok(SignalPipes {
            terminate: mio::net::UnixStream::from_std(term_read),
            report: mio::net::UnixStream::from_std(report_read),
            reload: mio::net::UnixStream::from_std(reload_read),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM or SIGINT: stop.
    Terminate,
    /// SIGUSR1: log the stats line.
    Report,
    /// SIGHUP: reload what can be reloaded without a restart (source credentials).
    Reload,
}

pub struct Signals {
    pipes: SignalPipes,
    terminate: Token,
    report: Token,
    reload: Token,
}

impl Signals {
    pub fn register(mut pipes: SignalPipes, reg: &mut Registrar) -> std::io::Result<Signals> {
        let terminate = reg.register(&mut pipes.terminate, Interest::READABLE)?;
        let report = reg.register(&mut pipes.report, Interest::READABLE)?;
        let reload = reg.register(&mut pipes.reload, Interest::READABLE)?;
        Ok(Signals {
            pipes,
            terminate,
            report,
            reload,
        })
    }

    /// The signal that `token` reports, if it is one of ours (its pipe is drained).
    pub fn on_event(&mut self, token: Token) -> Option<Signal> {
        let (stream, signal) = if token == self.terminate {
            (&mut self.pipes.terminate, Signal::Terminate)
        } else if token == self.report {
            (&mut self.pipes.report, Signal::Report)
        } else if token == self.reload {
            (&mut self.pipes.reload, Signal::Reload)
        } else {
            return None;
        };
        let mut buf = [0u8; 64];
        while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        Some(signal)
    }
}

/// Watches the graveyard for entries the kernel moves in, so that they are reaped at once.
pub struct GraveyardWatch {
    inotify: Inotify,
    token: Token,
}

impl GraveyardWatch {
    /// `None` (logged) when inotify cannot watch `path`: the graveyard is then reaped on
    /// the tick.
    pub fn new(path: &Path, reg: &mut Registrar) -> Option<GraveyardWatch> {
        let mut watch = || -> Result<GraveyardWatch, String> {
            let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
                .map_err(|e| format!("inotify unavailable ({e})"))?;
            inotify
                .add_watch(
                    path,
                    AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_ONLYDIR
                        | AddWatchFlags::IN_DONT_FOLLOW,
                )
                .map_err(|e| format!("cannot watch {}: {e}", path.display()))?;
            let fd = inotify.as_fd().as_raw_fd();
            let token = reg
                .register(&mut SourceFd(&fd), Interest::READABLE)
                .map_err(|e| format!("cannot poll the inotify fd: {e}"))?;
            Ok(GraveyardWatch { inotify, token })
        };
        watch()
            .map_err(|e| log::warn!("{e}; the graveyard is reaped on a timer instead"))
            .ok()
    }

    /// True if `token` is ours: the graveyard changed (the events are consumed).
    pub fn on_event(&mut self, token: Token) -> bool {
        if token != self.token {
            return false;
        }
        while matches!(self.inotify.read_events(), Ok(ev) if !ev.is_empty()) {}
        true
    }
}

/// The reactor's waker: worker threads (scans, on-demand fetches) call it when they have a
/// result; the loop then collects them.
#[derive(Clone)]
pub struct Completions {
    token: Token,
    waker: Arc<Waker>,
}

impl Completions {
    pub fn register(reg: &mut Registrar) -> std::io::Result<Completions> {
        let (token, waker) = reg.waker()?;
        Ok(Completions { token, waker })
    }

    pub fn owns(&self, token: Token) -> bool {
        token == self.token
    }

    pub fn wake(&self) {
        let _ = self.waker.wake();
    }

    /// A wake function for a worker thread.
    pub fn waker_fn(&self) -> impl Fn() + Send + Sync + 'static {
        let waker = self.waker.clone();
        move || {
            let _ = waker.wake();
        }
    }
}
