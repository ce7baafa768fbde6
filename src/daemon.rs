//! The daemon: composes the event sources on one reactor — the device, the completions of the
//! cull worker and the on-demand pools, signals, the graveyard watch, the control socket and
//! the tick — and runs the loop. Handler errors are logged and counted by the sources; only a
//! dead cache (EIO) or a broken loop ends it.

use crate::config::Config;
use crate::control::{ControlServer, Request};
use crate::cull::driver::{CullDriver, CullError};
use crate::cull::signal::CullSignal;
use crate::cull::worker::Worker;
use crate::cull::Culler;
use crate::device::{Device, DeviceError};
use crate::events::{Completions, GraveyardWatch, Signal, Signals};
use crate::ondemand::sourcemap::SourceMap;
use crate::ondemand::OnDemand;
use crate::proto::{Limit, Status};
use crate::reactor::{Reactor, Ready, Ticker};
use crate::report::{Culling, OnDemandReport, Report, Space};
use mio::unix::SourceFd;
use mio::{Interest, Token};
use nix::dir::Dir;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::events::SignalPipes;

/// Idle tick: re-reads the kernel's state and re-evaluates throttled rescans.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the cache is dead (the kernel returns EIO): {0}")]
    CacheDead(DeviceError),
    #[error(transparent)]
    Device(DeviceError),
    #[error("cannot open {what} {path}: {errno}")]
    CacheTree {
        what: &'static str,
        path: String,
        errno: nix::errno::Errno,
    },
    #[error("event loop: {0}")]
    Loop(#[from] std::io::Error),
    #[error("unparseable status line from the kernel: {0}")]
    Status(#[from] crate::proto::StatusError),
}

impl From<DeviceError> for DaemonError {
    fn from(e: DeviceError) -> DaemonError {
        if e.cache_is_dead() {
            DaemonError::CacheDead(e)
        } else {
            DaemonError::Device(e)
        }
    }
}

impl From<CullError> for DaemonError {
    fn from(e: CullError) -> DaemonError {
        match e {
            CullError::Device(e) => e.into(),
            CullError::Status(e) => e.into(),
        }
    }
}

/// The mode the cache is bound in.
pub enum Mode {
    /// Culling only: the device reads return the kernel's status line.
    Classic,
    /// `bind ondemand`: the device reads return requests, which the engine serves.
    OnDemand(Box<OnDemand>),
}

/// Stops a running daemon from another thread (tests, supervisors).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    completions: Completions,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.completions.wake();
    }
}

/// What the event sources act on: the device, the mode's engine and the cull driver.
struct Engine<'d> {
    device: &'d mut dyn Device,
    mode: Mode,
    cull: CullDriver,
    started: Instant,
    dir: PathBuf,
    tag: String,
    /// The effective limit percentages, indexed by `Limit`.
    limits: [u8; 6],
}

pub struct Daemon<'d> {
    reactor: Reactor,
    engine: Engine<'d>,
    device: Token,
    completions: Completions,
    stop: Arc<AtomicBool>,
    signals: Option<Signals>,
    graveyard: Option<GraveyardWatch>,
    control: Option<ControlServer>,
    ticker: Ticker,
}

fn open_cache_dir(config: &Config, name: &str) -> Result<Dir, DaemonError> {
    let path = config.dir.value.join(name);
    Dir::open(
        &path,
        crate::cull::tree::dir_flags(),
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|errno| DaemonError::CacheTree {
        what: "cache directory",
        path: path.display().to_string(),
        errno,
    })
}

impl<'d> Daemon<'d> {
    /// Sets up the loop for a device that is already bound (the kernel then has created
    /// `cache/` and `graveyard/` under the cache directory).
    pub fn new(
        config: &Config,
        device: &'d mut dyn Device,
        nocull: bool,
        signals: Option<SignalPipes>,
        source_map: Option<SourceMap>,
    ) -> Result<Daemon<'d>, DaemonError> {
        let mut reactor = Reactor::new()?;
        let mut reg = reactor.registrar();
        let completions = Completions::register(&mut reg)?;
        let control = (config.control.as_deref()).and_then(|p| ControlServer::start(p, &mut reg));
        let limits = Limit::ALL.map(|l| config.limit(l));
        let (mode, signal, interest) = match source_map {
            None => (
                Mode::Classic,
                CullSignal::StatusLine(Status::default()),
                Interest::READABLE,
            ),
            Some(map) => (
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
        };
        let worker_dirs = (
            open_cache_dir(config, "cache")?,
            open_cache_dir(config, "graveyard")?,
        );
        let worker = Worker::start(worker_dirs.0, worker_dirs.1, completions.waker_fn())?;
        let culler = (!nocull && !config.nocull)
            .then(|| Culler::new(config.culltable, config.resume_files, config.resume_blocks));
        let cache_root = open_cache_dir(config, "cache")?;
        let cache_fs = std::fs::File::open(config.dir.value.join("cache"))?;
        let cull = CullDriver::new(culler, signal, cache_root, cache_fs, worker);
        let signals = signals
            .map(|p| Signals::register(p, &mut reg))
            .transpose()?;
        let device_token = reg.register(&mut SourceFd(&device.poll_fd()), interest)?;
        let graveyard = GraveyardWatch::new(&config.dir.value.join("graveyard"), &mut reg);
        let engine = Engine {
            device,
            mode,
            cull,
            started: Instant::now(),
            dir: config.dir.value.clone(),
            tag: config.tag.clone().unwrap_or_else(|| "CacheFiles".into()),
            limits,
        };
        Ok(Daemon {
            reactor,
            engine,
            device: device_token,
            completions,
            stop: Arc::new(AtomicBool::new(false)),
            signals,
            graveyard,
            control,
            ticker: Ticker::new(TICK, Instant::now()),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            completions: self.completions.clone(),
        }
    }

    /// Everything the daemon can tell about itself.
    pub fn report(&self) -> Report {
        self.engine.report()
    }

    pub fn stats_line(&self) -> String {
        self.report().stats_line()
    }

    /// Runs until SIGTERM/SIGINT or `StopHandle::stop`. A dead cache is an error.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        self.engine.cull.refresh(self.engine.device)?;
        self.engine.serve_requests()?;
        self.engine.cull.request_reap();
        let mut ready = Vec::new();
        loop {
            self.engine.cull.cull_batch(self.engine.device)?;
            let timeout = self
                .ticker
                .timeout(self.engine.cull.has_work(), Instant::now());
            self.reactor.wait(timeout, &mut ready)?;
            let mut device_ready = false;
            for event in &ready {
                if event.token == self.device {
                    device_ready = true;
                    if event.writable {
                        self.engine.cull.kernel_hint();
                    }
                } else if self.dispatch(*event)? == Flow::Stop {
                    return Ok(());
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            if device_ready {
                self.engine.on_device_ready()?;
            }
            if self.ticker.due(Instant::now()) {
                self.on_tick()?;
            }
        }
    }

    /// Hands an event to the source that owns its token.
    fn dispatch(&mut self, event: Ready) -> Result<Flow, DaemonError> {
        let token = event.token;
        if self.completions.owns(token) {
            self.engine.on_completions()?;
        } else if let Some(signal) = self.signals.as_mut().and_then(|s| s.on_event(token)) {
            match signal {
                Signal::Terminate => {
                    log::info!("terminating on signal");
                    return Ok(Flow::Stop);
                }
                Signal::Report => log::info!("{}", self.stats_line()),
            }
        } else if self.graveyard.as_mut().is_some_and(|g| g.on_event(token)) {
            self.engine.cull.request_reap();
        } else if let Some(control) = self.control.as_mut() {
            let engine = &self.engine;
            control.on_event(&mut self.reactor.registrar(), token, &|r| engine.answer(r));
        }
        Ok(Flow::Continue)
    }

    fn on_tick(&mut self) -> Result<(), DaemonError> {
        crate::service::watchdog();
        if let Some(control) = self.control.as_mut() {
            control.expire(&mut self.reactor.registrar(), Instant::now());
        }
        if crate::service::notifying() {
            crate::service::status(&self.report().summary());
        }
        if self.graveyard.is_none() {
            self.engine.cull.request_reap();
        }
        self.engine.cull.refresh(self.engine.device)?;
        crate::device::check_alive(self.engine.device).map_err(DaemonError::CacheDead)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl Engine<'_> {
    /// On demand: decodes and dispatches the pending requests (classic mode has none).
    fn serve_requests(&mut self) -> Result<(), DaemonError> {
        match &mut self.mode {
            Mode::Classic => Ok(()),
            Mode::OnDemand(od) => Ok(od.drain_device(self.device)?),
        }
    }

    /// The device is readable: a new status line (classic) or new requests (on demand).
    fn on_device_ready(&mut self) -> Result<(), DaemonError> {
        match self.mode {
            Mode::Classic => Ok(self.cull.refresh(self.device)?),
            Mode::OnDemand(_) => self.serve_requests(),
        }
    }

    fn on_completions(&mut self) -> Result<(), DaemonError> {
        self.cull.on_completions();
        match &mut self.mode {
            Mode::Classic => Ok(()),
            Mode::OnDemand(od) => Ok(od.drain_done(self.device)?),
        }
    }

    fn answer(&self, request: Request) -> String {
        let report = self.report();
        match request {
            Request::Status => report.text(),
            Request::StatusJson => report.json(),
            Request::Metrics => report.metrics(),
        }
    }

    fn report(&self) -> Report {
        let (mode, ondemand) = match &self.mode {
            Mode::Classic => ("classic", None),
            Mode::OnDemand(od) => ("on-demand", Some(OnDemandReport::new(od))),
        };
        Report {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: mode.into(),
            dir: self.dir.display().to_string(),
            tag: self.tag.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            space: Space::new(self.cull.space(), self.limits),
            culling: Culling::new(self.cull.culler(), self.cull.culling()),
            graveyard_entries: std::fs::read_dir(self.dir.join("graveyard"))
                .map_or(0, |d| d.count() as u64),
            graveyard_entries_removed: self.cull.reaped,
            ondemand,
        }
    }
}
