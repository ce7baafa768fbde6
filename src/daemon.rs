//! The daemon: composes the event sources on one reactor and runs the loop, nothing else.
//!
//! The sources: the device, the completions of the cull worker and the on-demand pools,
//! signals, the graveyard watch, the control socket and the tick. Handler errors are logged and
//! counted by the sources; only a dead cache (EIO) or a broken loop ends it.

use crate::config::Config;
use crate::control::ControlServer;
use crate::cull::driver::CullError;
use crate::device::{Device, DeviceError};
pub use crate::engine::Serving;
use crate::engine::{CacheDirs, Engine};
use crate::events::{Completions, GraveyardWatch, Signal, Signals};
use crate::reactor::{Reactor, Ready, Ticker};
use crate::report::Report;
use nix::dir::Dir;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::engine::Mode;
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

pub struct Daemon<'d> {
    reactor: Reactor,
    engine: Engine<'d>,
    completions: Completions,
    stop: Arc<AtomicBool>,
    signals: Option<Signals>,
    graveyard: Option<GraveyardWatch>,
    control: Option<ControlServer>,
    metrics: Option<crate::scrape::MetricsServer>,
    ticker: Ticker,
}

fn open_cache_dir(config: &Config, name: &crate::cachedir::Name) -> Result<Dir, DaemonError> {
    let root = crate::cachedir::CacheDir::open(&config.dir.value);
    root.and_then(|root| {
        root.open_dir(std::slice::from_ref(name))
            .map_err(|errno| root.error("cannot open", &[name.as_bytes()], errno))
    })
    .map_err(|e| DaemonError::CacheTree {
        what: "cache directory",
        path: e.path,
        errno: e.errno,
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
        serving: Serving,
    ) -> Result<Daemon<'d>, DaemonError> {
        let mut reactor = Reactor::new()?;
        let mut reg = reactor.registrar();
        let completions = Completions::register(&mut reg)?;
        let control = (config.control.as_deref()).and_then(|p| ControlServer::start(p, &mut reg));
        let metrics = (config.metrics_listen.as_ref())
            .and_then(|l| crate::scrape::MetricsServer::start(l.value, &mut reg));
        let dirs = CacheDirs {
            worker_cache: open_cache_dir(config, &crate::cachedir::CACHE)?,
            worker_graveyard: open_cache_dir(config, &crate::cachedir::GRAVEYARD)?,
            cache: open_cache_dir(config, &crate::cachedir::CACHE)?,
            statfs: crate::cachedir::CacheDir::open(&config.dir.value)
                .and_then(|root| root.dir_file(&crate::cachedir::CACHE))
                .map_err(|e| DaemonError::CacheTree {
                    what: "cache directory",
                    path: e.path,
                    errno: e.errno,
                })?,
            graveyard: crate::cachedir::CacheDir::path_of(
                &config.dir.value,
                &crate::cachedir::GRAVEYARD,
            ),
        };
        let graveyard_path = dirs.graveyard.clone();
        let engine = Engine::new(
            config,
            device,
            nocull,
            serving,
            &completions,
            dirs,
            &mut reg,
        )?;
        let signals = signals
            .map(|p| Signals::register(p, &mut reg))
            .transpose()?;
        let graveyard = GraveyardWatch::new(&graveyard_path, &mut reg);
        Ok(Daemon {
            reactor,
            engine,
            completions,
            stop: Arc::new(AtomicBool::new(false)),
            signals,
            graveyard,
            control,
            metrics,
            ticker: Ticker::new(TICK, Instant::now()),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            completions: self.completions.clone(),
        }
    }

    /// Culls by `config`'s limits, decided from statfs, whatever the kernel's cull signal
    /// says: for a cache bound with other limits (see `CullDriver::follow_limits`).
    pub fn follow_config_limits(&mut self, config: &Config) {
        self.engine
            .cull
            .follow_limits(crate::proto::Limit::ALL.map(|l| config.limit(l)));
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
            for event in &ready {
                if self.engine.on_device_event(*event) || self.engine.on_group_event(*event) {
                    continue;
                }
                if self.dispatch(*event)? == Flow::Stop {
                    return Ok(());
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.engine.serve_device()?;
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
                Signal::Reload => self.reload(),
            }
        } else if self.graveyard.as_mut().is_some_and(|g| g.on_event(token)) {
            self.engine.cull.request_reap();
        } else {
            let engine = &mut self.engine;
            let reg = &mut self.reactor.registrar();
            let handled = self
                .control
                .as_mut()
                .is_some_and(|c| c.on_event(reg, token, &mut |r| engine.answer(r)));
            if !handled {
                if let Some(m) = self.metrics.as_mut() {
                    m.on_event(reg, token, &mut || engine.report().metrics());
                }
            }
        }
        Ok(Flow::Continue)
    }

    /// SIGHUP: the source credentials are read again at their next use; everything else is
    /// read only at start, and the log says so.
    pub fn reload(&mut self) {
        let map = match &self.engine.mode {
            Mode::Classic => None,
            Mode::OnDemand(od) => Some(od.map()),
            Mode::Fanotify { lazy, .. } => Some(lazy.engine.map()),
        };
        let reloaded = map.map(|m| m.reload_credentials()).unwrap_or_default();
        if reloaded.is_empty() {
            log::info!("SIGHUP: nothing to reload (no remote sources)");
        } else {
            log::info!(
                "SIGHUP: credentials are read again at their next use: {}",
                reloaded.join("; ")
            );
        }
        log::info!(
            "SIGHUP: not reloaded (read only at start; restart the daemon to apply): the config file, the source map's sources and [fetch] settings, CA files, client certificates and proxies"
        );
    }

    fn on_tick(&mut self) -> Result<(), DaemonError> {
        crate::service::watchdog();
        if let Some(control) = self.control.as_mut() {
            control.expire(&mut self.reactor.registrar(), Instant::now());
        }
        if let Some(metrics) = self.metrics.as_mut() {
            metrics.expire(&mut self.reactor.registrar(), Instant::now());
        }
        if crate::service::notifying() {
            crate::service::status(&self.report().summary());
        }
        if self.graveyard.is_none() {
            self.engine.cull.request_reap();
        }
        self.engine.cull.refresh(self.engine.device)?;
        self.engine.cull_detached_blobs();
        // Requests left after failed reads: the device signals only new ones.
        self.engine.serve_requests()?;
        crate::device::check_alive(self.engine.device).map_err(DaemonError::CacheDead)
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}
