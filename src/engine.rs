//! The daemon's engine: the device, the `Mode` (classic or on demand) and the cull driver.
//!
//! What the event sources act on and what the report describes; on demand the mode holds the
//! request engine.

use crate::config::Config;
use crate::control::Request;
use crate::cull::driver::CullDriver;
use crate::cull::signal::CullSignal;
use crate::cull::worker::Worker;
use crate::cull::Culler;
use crate::daemon::DaemonError;
use crate::device::Device;
use crate::events::Completions;
use crate::ondemand::fanotify::{Attach, BlobKey, Detach, FanotifyError, Group, Lazy, MetaEvents};
use crate::ondemand::sourcemap::{FrontEndChoice, SourceMap};
use crate::ondemand::OnDemand;
use crate::proto::{Limit, Status};
use crate::reactor::{Ready, Registrar};
use crate::report::{Culling, OnDemandReport, Report, Space};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::dir::Dir;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// What the configuration asks the daemon to serve: chosen at start, from whether the config
/// names a source map and, for `frontend = auto`, from what the kernel's `bind` accepts.
pub enum Serving {
    /// Culling only.
    Classic,
    /// `bind ondemand` (or, before the bind, whatever the map's `frontend` asks for), with
    /// the sources of this map.
    OnDemand(SourceMap),
    /// The cache bound classic, and blobs served through fanotify pre-content events in this
    /// group (made while the process still has CAP_SYS_ADMIN).
    Fanotify(SourceMap, Box<Group>),
}

impl Serving {
    /// The mode's name as the logs and reports spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Serving::Classic => "classic",
            Serving::OnDemand(_) => "on-demand",
            Serving::Fanotify(..) => "fanotify",
        }
    }

    /// The front end the map asks for; `None` in classic mode.
    pub fn frontend(&self) -> Option<FrontEndChoice> {
        match self {
            Serving::Classic => None,
            Serving::OnDemand(map) => Some(map.frontend),
            Serving::Fanotify(..) => Some(FrontEndChoice::Fanotify),
        }
    }

    /// The same sources, served through fanotify: makes the group, which needs
    /// CAP_SYS_ADMIN and a 6.14+ kernel.
    pub fn with_fanotify(self) -> Result<Serving, FanotifyError> {
        Ok(match self {
            Serving::OnDemand(map) => Serving::Fanotify(map, Box::new(Group::new()?)),
            other => other,
        })
    }
}

/// The mode the cache is bound in.
pub enum Mode {
    /// Culling only: the device reads return the kernel's status line.
    Classic,
    /// `bind ondemand`: the device reads return requests, which the engine serves.
    OnDemand(Box<OnDemand>),
    /// Bound classic (the device reads return status lines); blobs served through the
    /// fanotify group, registered under `token`.
    Fanotify { lazy: Box<Lazy>, token: Token },
}

/// What the event sources act on: the device, the mode's engine and the cull driver.
pub(crate) struct Engine<'d> {
    pub device: &'d mut dyn Device,
    device_token: Token,
    /// The device was ready in this loop turn.
    device_ready: bool,
    pub mode: Mode,
    pub cull: CullDriver,
    started: Instant,
    dir: PathBuf,
    tag: String,
    /// The effective limit percentages, indexed by `Limit`.
    limits: [u8; 6],
}

/// What the engine works on in the cache directory (opened by the daemon).
pub(crate) struct CacheDirs {
    /// `cache/` and `graveyard/` for the scan/reap worker thread.
    pub worker_cache: Dir,
    pub worker_graveyard: Dir,
    /// `cache/` for the loop thread's culls.
    pub cache: Dir,
    /// Any fd on the cache's filesystem, for statfs.
    pub statfs: std::fs::File,
    /// The graveyard's path, for its inotify watch.
    pub graveyard: PathBuf,
}

impl<'d> Engine<'d> {
    /// The engine for `config`'s mode (on demand with a source map); registers the device
    /// for the readiness that mode polls for.
    pub fn new(
        config: &Config,
        device: &'d mut dyn Device,
        nocull: bool,
        serving: Serving,
        completions: &Completions,
        dirs: CacheDirs,
        reg: &mut Registrar,
    ) -> std::io::Result<Engine<'d>> {
        let limits = Limit::ALL.map(|l| config.limit(l));
        let (mode, signal, interest) = match serving {
            Serving::Classic => (
                Mode::Classic,
                CullSignal::StatusLine(Status::default()),
                Interest::READABLE,
            ),
            Serving::OnDemand(map) => (
                Mode::OnDemand(Box::new(OnDemand::new(
                    map,
                    Arc::new(completions.waker_fn()),
                ))),
                CullSignal::Statfs {
                    limits,
                    culling: false,
                },
                // read() returns requests, so "please cull" is only visible as POLLOUT.
                Interest::READABLE | Interest::WRITABLE,
            ),
            Serving::Fanotify(map, group) => {
                let lazy = Lazy::new(
                    map,
                    *group,
                    Arc::new(completions.waker_fn()),
                    &config.dir.value,
                );
                let token = reg.register(
                    &mut SourceFd(&lazy.group.as_fd().as_raw_fd()),
                    Interest::READABLE,
                )?;
                (
                    Mode::Fanotify {
                        lazy: Box::new(lazy),
                        token,
                    },
                    CullSignal::StatusLine(Status::default()),
                    Interest::READABLE,
                )
            }
        };
        let worker = Worker::start(
            dirs.worker_cache,
            dirs.worker_graveyard,
            completions.waker_fn(),
        )?;
        let culler = (!nocull && !config.nocull)
            .then(|| Culler::new(config.culltable, config.resume_files, config.resume_blocks));
        let cull = CullDriver::new(culler, signal, dirs.cache, dirs.statfs, worker);
        let device_token = reg.register(&mut SourceFd(&device.poll_fd()), interest)?;
        Ok(Engine {
            device,
            device_token,
            device_ready: false,
            mode,
            cull,
            started: Instant::now(),
            dir: config.dir.value.clone(),
            tag: config.tag.clone().unwrap_or_else(|| "CacheFiles".into()),
            limits,
        })
    }

    /// Serves the fanotify group's events if `event` is the group's (false otherwise). A
    /// failed read is logged, never fatal: ending the loop would close the group, and the
    /// kernel would then let every read of a hole through (EMFILE, the usual failure, is the
    /// kernel denying that one event itself).
    pub fn on_group_event(&mut self, event: Ready) -> bool {
        match &mut self.mode {
            Mode::Fanotify { lazy, token } if *token == event.token => {
                if let Err(e) = lazy.on_events() {
                    log::warn!("{e}");
                }
                true
            }
            _ => false,
        }
    }

    /// Takes the device's readiness; false if `event` is not the device's. The work is
    /// done once per loop turn, by `serve_device`.
    pub fn on_device_event(&mut self, event: Ready) -> bool {
        if event.token != self.device_token {
            return false;
        }
        if event.writable {
            self.cull.kernel_hint();
        }
        self.device_ready = true;
        true
    }

    /// After the turn's events: reads what the device has, if it was ready.
    pub fn serve_device(&mut self) -> Result<(), DaemonError> {
        if std::mem::take(&mut self.device_ready) {
            self.on_device_ready()?;
        }
        Ok(())
    }

    /// On demand: decodes and dispatches the pending requests (classic mode has none).
    pub fn serve_requests(&mut self) -> Result<(), DaemonError> {
        match &mut self.mode {
            Mode::Classic | Mode::Fanotify { .. } => Ok(()),
            Mode::OnDemand(od) => Ok(od.drain_device(self.device)?),
        }
    }

    /// The device is readable: a new status line (classic) or new requests (on demand).
    fn on_device_ready(&mut self) -> Result<(), DaemonError> {
        match self.mode {
            Mode::Classic | Mode::Fanotify { .. } => Ok(self.cull.refresh(self.device)?),
            Mode::OnDemand(_) => self.serve_requests(),
        }
    }

    pub fn on_completions(&mut self) -> Result<(), DaemonError> {
        self.cull.on_completions();
        match &mut self.mode {
            Mode::Classic => Ok(()),
            Mode::OnDemand(od) => Ok(od.drain_done(self.device)?),
            Mode::Fanotify { lazy, .. } => Ok(lazy.on_completions()?),
        }
    }

    /// While the kernel asks for culling (and culling is on): one detached fanotify blob
    /// goes per call, oldest first; the classic culler works on `cache/` meanwhile.
    pub fn cull_detached_blobs(&mut self) {
        if self.cull.culler().is_none() || !self.cull.culling() {
            return;
        }
        if let Mode::Fanotify { lazy, .. } = &mut self.mode {
            if let Err(e) = lazy.cull_one() {
                log::warn!("culling detached blobs: {e}");
            }
        }
    }

    pub fn answer(&mut self, request: Request) -> String {
        match request {
            Request::Status => self.report().text(),
            Request::StatusJson => self.report().json(),
            Request::Metrics => self.report().metrics(),
            Request::Remove(target) => crate::live::answer(&self.dir, &target, self.device),
            Request::Attach(key) => self.attach(&key),
            Request::Detach(what) => self.detach(what),
            Request::MetaEvents(verdict) => match &mut self.mode {
                Mode::Fanotify { lazy, .. } => {
                    let held = match verdict {
                        Some(v) => lazy.set_meta_events(v),
                        None => lazy.meta_events(),
                    };
                    format!("{}\n", held.as_str())
                }
                _ => "error: no fanotify front end\n".into(),
            },
            Request::MetaEventsRaisedBy(key) => match &mut self.mode {
                Mode::Fanotify { lazy, .. } => {
                    let held = if lazy.superblock_asked(&key) {
                        lazy.set_meta_events(MetaEvents::Raised)
                    } else {
                        // Filled by a prefetch or a fill ahead, not by the mount's read:
                        // taking it would make mounts lazy on a kernel that reads zeros.
                        log::warn!(
                            "a probe mount of fsid {} found its superblock filled, but no reader's event asked for it: not taken as EROFS metadata events",
                            key.fsid()
                        );
                        lazy.meta_events()
                    };
                    format!("{}\n", held.as_str())
                }
                _ => "error: no fanotify front end\n".into(),
            },
        }
    }

    /// `attach`: `ok PATH` once the blob's file is sized and marked, `pending` while its
    /// source is asked (the client asks again), `fscache` when the cachefiles front end
    /// serves (the client mounts with `fsid=`), else `error: ...`.
    fn attach(&mut self, key: &BlobKey) -> String {
        match &mut self.mode {
            Mode::Fanotify { lazy, .. } => match lazy.attach(key) {
                Attach::Ready(path) => format!("ok {}\n", path.display()),
                Attach::Pending => "pending\n".into(),
                Attach::Failed(e) => format!("error: {e}\n"),
            },
            Mode::OnDemand(_) => "fscache\n".into(),
            Mode::Classic => "error: the daemon runs in classic mode (no ondemand map)\n".into(),
        }
    }

    fn detach(&mut self, what: Detach) -> String {
        match &mut self.mode {
            Mode::Fanotify { lazy, .. } => match lazy.detach(what) {
                Ok(path) => format!("ok {}\n", path.display()),
                Err(e) => format!("error: {e}\n"),
            },
            // The kernel closes an fscache blob's objects at umount.
            Mode::OnDemand(_) => "fscache\n".into(),
            Mode::Classic => "error: the daemon runs in classic mode (no ondemand map)\n".into(),
        }
    }

    pub fn report(&self) -> Report {
        let (mode, ondemand) = match &self.mode {
            Mode::Classic => ("classic", None),
            Mode::OnDemand(od) => ("on-demand", Some(OnDemandReport::new(od))),
            Mode::Fanotify { lazy, .. } => ("fanotify", Some(OnDemandReport::fanotify(lazy))),
        };
        Report {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: mode.into(),
            dir: self.dir.display().to_string(),
            tag: self.tag.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            space: Space::new(self.cull.space(), self.limits),
            culling: Culling::new(self.cull.culler(), self.cull.culling()),
            // Through the cache-directory layer: a symlink in place of graveyard/ is not
            // followed.
            graveyard_entries: crate::cachedir::CacheDir::open(&self.dir)
                .ok()
                .and_then(|root| root.graveyard().ok())
                .and_then(|g| crate::cachedir::graveyard::count(&g).ok())
                .unwrap_or(0),
            graveyard_entries_removed: self.cull.reaped,
            ondemand,
        }
    }
}
