//! The event loop: one mio Poll over the device, the worker's completions, signals and the
//! graveyard's inotify watch. Handler errors are logged and counted inside the loop; only a
//! dead cache (EIO) or a broken loop ends it.

use crate::config::Config;
use crate::cull::{graveyard, scan, CullOutcome, Culler, Deficit};
use crate::device::{Device, DeviceError};
use crate::ondemand::sourcemap::SourceMap;
use crate::ondemand::OnDemand;
use crate::proto::{Limit, Status};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use nix::dir::Dir;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

const DEVICE: Token = Token(0);
const WAKER: Token = Token(1);
const TERMINATE: Token = Token(2);
const REPORT: Token = Token(3);
const GRAVEYARD: Token = Token(4);

/// Culls per loop turn before events are looked at again.
const CULL_BATCH: usize = 64;
/// After a cull fails with an I/O error on a live cache, wait this long before the next.
const CULL_PAUSE: Duration = Duration::from_secs(1);
/// Idle tick: re-reads the kernel's state and re-evaluates throttled rescans.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("the cache is dead (the kernel returns EIO): {0}")]
    CacheDead(DeviceError),
    #[error(transparent)]
    Device(#[from] DeviceError),
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

impl DaemonError {
    fn from_device(e: DeviceError) -> DaemonError {
        if e.cache_is_dead() {
            DaemonError::CacheDead(e)
        } else {
            DaemonError::Device(e)
        }
    }
}

/// Stops a running daemon from another thread (tests, supervisors).
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl StopHandle {
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// Signal pipes: each becomes readable when its signal arrives (see signal_hook::low_level::pipe).
pub struct SignalPipes {
    pub terminate: mio::net::UnixStream,
    pub report: mio::net::UnixStream,
}

enum Job {
    /// Scan keeping this many candidates.
    Scan(usize),
    Reap,
}

enum JobDone {
    Scan(scan::ScanReport),
    Reap(graveyard::ReapReport),
}

/// Runs scans and graveyard reaping off the loop thread; they need only dirfds.
struct Worker {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<JobDone>,
}

impl Worker {
    fn start(cache: Dir, grave: Dir, waker: Arc<Waker>) -> Worker {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("cachefilesd-worker".into())
            .spawn(move || {
                for job in job_rx {
                    let result = match job {
                        Job::Scan(capacity) => JobDone::Scan(scan::scan(&cache, capacity)),
                        Job::Reap => JobDone::Reap(graveyard::reap(&grave)),
                    };
                    if done_tx.send(result).is_err() {
                        break;
                    }
                    let _ = waker.wake();
                }
            })
            .expect("spawning the worker thread");
        Worker { jobs, done }
    }
}

pub struct Daemon<'d> {
    device: &'d mut dyn Device,
    poll: Poll,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    signals: Option<SignalPipes>,
    cache_root: Dir,
    /// For statfs: free space as the kernel sees it.
    cache_fs: std::fs::File,
    culler: Option<Culler>,
    worker: Worker,
    inotify: Option<Inotify>,
    reaping: bool,
    reap_again: bool,
    status: Status,
    ondemand: Option<OnDemand>,
    started: Instant,
    pub reaped: u64,
    control: Option<crate::control::ControlServer>,
    cull_paused_until: Option<Instant>,
    dir: std::path::PathBuf,
    tag: String,
    /// The effective limit percentages, indexed by `Limit`.
    limits: [u8; 6],
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
        source_map: Option<SourceMap>,
    ) -> Result<Daemon<'d>, DaemonError> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let cache_root = open_cache_dir(config, &crate::cachedir::CACHE)?;
        let cache_fs = crate::cachedir::CacheDir::open(&config.dir.value)
            .and_then(|root| root.dir_file(&crate::cachedir::CACHE))
            .map_err(|e| DaemonError::CacheTree {
                what: "cache directory",
                path: e.path,
                errno: e.errno,
            })?;
        let control = config.control.as_ref().and_then(|path| {
            match crate::control::ControlServer::bind(path) {
                Ok(mut server) => match server.register(poll.registry()) {
                    Ok(()) => Some(server),
                    Err(e) => {
                        log::warn!("control socket {}: {e}", path.display());
                        None
                    }
                },
                Err(e) => {
                    log::warn!("control socket {} not available: {e}", path.display());
                    None
                }
            }
        });
        let grave = open_cache_dir(config, &crate::cachedir::GRAVEYARD)?;
        let culler = (!nocull && !config.nocull)
            .then(|| Culler::new(config.culltable, config.resume_files, config.resume_blocks));
        let worker_cache = open_cache_dir(config, &crate::cachedir::CACHE)?;
        let worker_grave = open_cache_dir(config, &crate::cachedir::GRAVEYARD)?;
        let worker = Worker::start(worker_cache, worker_grave, waker.clone());
        drop(grave);
        let mut signals = signals;
        if let Some(s) = signals.as_mut() {
            poll.registry()
                .register(&mut s.terminate, TERMINATE, Interest::READABLE)?;
            poll.registry()
                .register(&mut s.report, REPORT, Interest::READABLE)?;
        }
        // On demand, read() returns requests, so "please cull" is only visible as POLLOUT.
        let interest = if source_map.is_some() {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        poll.registry()
            .register(&mut SourceFd(&device.poll_fd()), DEVICE, interest)?;
        let ondemand = source_map.map(|map| {
            let w = waker.clone();
            OnDemand::new(
                map,
                Arc::new(move || {
                    let _ = w.wake();
                }),
            )
        });
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(ino) => {
                let path = config.dir.value.join("graveyard");
                match ino.add_watch(
                    &path,
                    AddWatchFlags::IN_MOVED_TO
                        | AddWatchFlags::IN_CREATE
                        | AddWatchFlags::IN_ONLYDIR
                        | AddWatchFlags::IN_DONT_FOLLOW,
                ) {
                    Ok(_) => {
                        poll.registry().register(
                            &mut SourceFd(&ino.as_fd().as_raw_fd()),
                            GRAVEYARD,
                            Interest::READABLE,
                        )?;
                        Some(ino)
                    }
                    Err(e) => {
                        log::warn!(
                            "cannot watch {}: {e}; the graveyard is reaped on a timer instead",
                            path.display()
                        );
                        None
                    }
                }
            }
            Err(e) => {
                log::warn!("inotify unavailable ({e}); the graveyard is reaped on a timer instead");
                None
            }
        };
        Ok(Daemon {
            device,
            poll,
            waker,
            stop: Arc::new(AtomicBool::new(false)),
            signals,
            cache_root,
            cache_fs,
            culler,
            worker,
            inotify,
            reaping: false,
            reap_again: false,
            status: Status::default(),
            ondemand,
            started: Instant::now(),
            reaped: 0,
            control,
            cull_paused_until: None,
            dir: config.dir.value.clone(),
            tag: config.tag.clone().unwrap_or_else(|| "CacheFiles".into()),
            limits: Limit::ALL.map(|l| config.limit(l)),
        })
    }

    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    pub fn culler(&self) -> Option<&Culler> {
        self.culler.as_ref()
    }

    pub fn ondemand(&self) -> Option<&OnDemand> {
        self.ondemand.as_ref()
    }

    /// Refreshes the cull flag: from the status line in classic mode; on demand from statfs
    /// and the configured percentages, computed as the kernel does (total / 100 * pct) and
    /// with its hysteresis (start below a cull limit, stop when both are above run).
    fn refresh_cull(&mut self) -> Result<(), DaemonError> {
        if self.ondemand.is_none() {
            return self.read_status();
        }
        let Ok(st) = nix::sys::statfs::fstatfs(&self.cache_fs) else {
            return Ok(());
        };
        let limit = |l: Limit| self.limit_count(&st, l);
        let (bavail, ffree) = (st.blocks_available(), st.files_free());
        let was = self.status.cull;
        if bavail < limit(Limit::Bcull) || ffree < limit(Limit::Fcull) {
            self.status.cull = true;
        } else if bavail >= limit(Limit::Brun) && ffree >= limit(Limit::Frun) {
            self.status.cull = false;
        }
        if was != self.status.cull {
            log::info!(
                "{}",
                if self.status.cull {
                    "cache space low: culling"
                } else {
                    "culling no longer needed"
                }
            );
        }
        Ok(())
    }

    /// A limit as the kernel computes it from the percentage: blocks (of f_bsize) or files.
    fn limit_count(&self, st: &nix::sys::statfs::Statfs, limit: Limit) -> u64 {
        let total = match limit {
            Limit::Brun | Limit::Bcull | Limit::Bstop => st.blocks(),
            Limit::Frun | Limit::Fcull | Limit::Fstop => st.files(),
        };
        total / 100 * u64::from(self.limits[limit as usize])
    }

    /// What culling must free to get above both run limits (zero when not short). In classic
    /// mode against the run limits of the kernel's status line: those decide when it stops
    /// asking.
    fn deficit(&self) -> Deficit {
        let Ok(st) = nix::sys::statfs::fstatfs(&self.cache_fs) else {
            return Deficit::default();
        };
        let (brun, frun) = if self.ondemand.is_some() {
            (
                self.limit_count(&st, Limit::Brun),
                self.limit_count(&st, Limit::Frun),
            )
        } else {
            (self.status.brun, self.status.frun)
        };
        let bsize = st.block_size() as u64;
        let used_files = st.files().saturating_sub(st.files_free()).max(1);
        let used_bytes = st
            .blocks()
            .saturating_sub(st.blocks_free())
            .saturating_mul(bsize);
        Deficit {
            bytes: brun
                .saturating_sub(st.blocks_available())
                .saturating_mul(bsize),
            files: frun.saturating_sub(st.files_free()),
            fs_average_object: used_bytes / used_files,
        }
    }

    /// Hands a scan to the worker if the culler wants one; its table covers the deficit.
    /// `culling`: what remains to free while the kernel asks for culling.
    fn start_scan_if_wanted(&mut self, now: Instant, culling: Option<Deficit>) {
        let Some(culler) = self.culler.as_mut() else {
            return;
        };
        if !culler.wants_scan(culling, now) {
            return;
        }
        let deficit = culling.unwrap_or_default();
        let capacity = culler.scan_capacity(deficit);
        if capacity > culler.capacity() {
            log::info!(
                "scanning for {capacity} candidates (culltable: {}): about {} MiB and {} files to free",
                culler.capacity(),
                deficit.bytes >> 20,
                deficit.files
            );
        }
        if self.worker.jobs.send(Job::Scan(capacity)).is_ok() {
            culler.scan_started(capacity);
        }
    }

    fn read_status(&mut self) -> Result<(), DaemonError> {
        let mut buf = [0u8; 512];
        let n = self
            .device
            .read(&mut buf)
            .map_err(DaemonError::from_device)?;
        if n == 0 {
            // Not bound (yet): nothing to learn.
            return Ok(());
        }
        let status = Status::parse(&buf[..n])?;
        if status.cull != self.status.cull {
            log::info!(
                "{}",
                if status.cull {
                    "kernel requests culling"
                } else {
                    "culling no longer needed"
                }
            );
        }
        if let Some(c) = self.culler.as_mut() {
            c.note_status(&status);
        }
        self.status = status;
        Ok(())
    }

    fn request_reap(&mut self) {
        if self.reaping {
            self.reap_again = true;
        } else if self.worker.jobs.send(Job::Reap).is_ok() {
            self.reaping = true;
        }
    }

    fn drain_worker(&mut self) {
        while let Ok(done) = self.worker.done.try_recv() {
            match done {
                JobDone::Scan(report) => {
                    for o in &report.oddities {
                        log::warn!("cache/{}: {} left alone", o.path.escape_debug(), o.what);
                    }
                    if report.oddities_seen > report.oddities.len() as u64 {
                        log::warn!(
                            "{} more odd entries in the cache tree left alone",
                            report.oddities_seen - report.oddities.len() as u64
                        );
                    }
                    log::debug!(
                        "scan: {} objects in {} directories, {} candidates, {:?}",
                        report.objects,
                        report.directories,
                        report.candidates.len(),
                        report.duration
                    );
                    if let Some(c) = self.culler.as_mut() {
                        c.scan_finished(report, Instant::now());
                    }
                }
                JobDone::Reap(report) => {
                    self.reaping = false;
                    self.reaped += report.removed;
                    if report.removed > 0 {
                        log::debug!("graveyard: removed {} entries", report.removed);
                    }
                    if let Some((path, errno)) = &report.first_error {
                        log::warn!(
                            "graveyard: {} entries not removed, first graveyard{}: {errno}",
                            report.failed,
                            path.escape_debug()
                        );
                    }
                    if std::mem::take(&mut self.reap_again) {
                        self.request_reap();
                    }
                }
            }
        }
    }

    fn cull_batch(&mut self) -> Result<(), DaemonError> {
        if self.culler.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let culling = self.status.cull.then(|| self.deficit());
        self.start_scan_if_wanted(now, culling);
        let Some(mut owed) = culling else {
            return Ok(());
        };
        if self.cull_paused_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        // The cull flag is read again once the culls made up the deficit, not after each one:
        // a status read costs a statfs in the kernel, and the candidates' sizes are exact.
        for _ in 0..CULL_BATCH {
            let culler = self.culler.as_mut().expect("checked above");
            let outcome = match culler.cull_one(&self.cache_root, self.device) {
                Ok(outcome) => outcome,
                Err(e) if e.cache_is_dead() => {
                    // The kernel answers EIO both for a dead cache and for an internal error
                    // on one object (e.g. a failed unlink); only the probe tells them apart.
                    self.check_alive()?;
                    log::warn!("{e}; the cache is alive, culling paused for {CULL_PAUSE:?}");
                    self.cull_paused_until = Some(Instant::now() + CULL_PAUSE);
                    break;
                }
                Err(e) => return Err(DaemonError::from_device(e)),
            };
            match outcome {
                None => break,
                Some((c, outcome)) => {
                    if log::log_enabled!(log::Level::Debug) {
                        log::debug!("cull {}: {outcome:?}", c.path().escape_debug());
                    }
                    if let CullOutcome::Culled { bytes } = outcome {
                        owed.bytes = owed.bytes.saturating_sub(bytes);
                        owed.files = owed.files.saturating_sub(1);
                        if owed.bytes == 0 && owed.files == 0 {
                            self.refresh_cull()?;
                            if !self.status.cull {
                                break;
                            }
                            owed = self.deficit();
                        }
                    }
                }
            }
        }
        let culler = self.culler.as_mut().expect("checked above");
        culler.leave_cache_dir();
        if self.status.cull && culler.ready_len() == 0 {
            let deficit = self.deficit();
            self.start_scan_if_wanted(Instant::now(), Some(deficit));
        }
        Ok(())
    }

    fn serve_requests(&mut self) -> Result<(), DaemonError> {
        if let Some(od) = self.ondemand.as_mut() {
            od.drain_device(self.device)
                .map_err(DaemonError::from_device)?;
        }
        Ok(())
    }

    fn has_work(&self) -> bool {
        self.status.cull
            && self.culler.as_ref().is_some_and(|c| c.ready_len() > 0)
            && self.cull_paused_until.is_none_or(|t| Instant::now() >= t)
    }

    fn answer(&self, request: crate::control::Request) -> String {
        let report = self.report();
        match request {
            crate::control::Request::Status => report.text(),
            crate::control::Request::StatusJson => report.json(),
            crate::control::Request::Metrics => report.metrics(),
        }
    }

    /// Everything the daemon can tell about itself, for the control socket.
    pub fn report(&self) -> crate::report::Report {
        use crate::report::*;
        let mut space = Space {
            blocks_limits_percent: [self.limits[0], self.limits[1], self.limits[2]],
            files_limits_percent: [self.limits[3], self.limits[4], self.limits[5]],
            ..Default::default()
        };
        if let Ok(st) = nix::sys::statfs::fstatfs(&self.cache_fs) {
            space.block_size = st.block_size() as u64;
            space.blocks_total = st.blocks();
            space.blocks_available = st.blocks_available();
            space.files_total = st.files();
            space.files_free = st.files_free();
        }
        let culling = match &self.culler {
            Some(c) => Culling {
                enabled: true,
                kernel_wants_culling: self.status.cull,
                scanning: c.is_scanning(),
                scans: c.stats.scans,
                objects_last_scan: c.stats.objects_last_scan,
                last_scan_seconds: c.stats.last_scan_duration.as_secs_f64(),
                table_entries: c.ready_len() as u64,
                table_capacity: c.table_capacity() as u64,
                culled: c.stats.culled,
                bytes_freed: c.stats.bytes_freed,
                skipped_in_use: c.stats.in_use,
            },
            None => Culling {
                kernel_wants_culling: self.status.cull,
                ..Default::default()
            },
        };
        let graveyard_entries =
            std::fs::read_dir(self.dir.join("graveyard")).map_or(0, |d| d.count() as u64);
        let ondemand = self.ondemand.as_ref().map(|od| {
            let mut objects: Vec<ObjectReport> = od
                .objects()
                .iter()
                .map(|(id, o)| ObjectReport {
                    object_id: *id,
                    volume: o.volume.clone(),
                    fsid: o.fsid.clone(),
                    size: o.blob.size(),
                    source: o.blob.describe(),
                })
                .collect();
            objects.sort_by_key(|o| o.object_id);
            let sources = od
                .map()
                .sources
                .iter()
                .map(|src| {
                    let per = od.per_source.get(&src.index).cloned().unwrap_or_default();
                    SourceReport {
                        index: src.index,
                        location: match &src.location {
                            crate::ondemand::sourcemap::Location::Path(p) => {
                                p.display().to_string()
                            }
                            crate::ondemand::sourcemap::Location::Url(u) => u.clone(),
                            crate::ondemand::sourcemap::Location::Registry { base, repository } => {
                                format!("{base} {repository}")
                            }
                        },
                        reads: per.reads,
                        bytes: per.bytes,
                        errors: per.errors,
                        latency_p50_seconds: per.latency.quantile(0.5),
                        latency_p90_seconds: per.latency.quantile(0.9),
                        latency_p99_seconds: per.latency.quantile(0.99),
                    }
                })
                .collect();
            let s = &od.stats;
            OnDemandReport {
                objects,
                requests_in_flight: od.in_flight() as u64,
                opens: s.opens,
                opens_failed: s.opens_failed,
                reads: s.reads,
                reads_failed: s.reads_failed,
                bytes_written: s.bytes_written,
                bad_messages: s.bad_messages,
                sources,
            }
        });
        Report {
            version: env!("CARGO_PKG_VERSION").into(),
            mode: if self.ondemand.is_some() {
                "on-demand"
            } else {
                "classic"
            }
            .into(),
            dir: self.dir.display().to_string(),
            tag: self.tag.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            space,
            culling,
            graveyard_entries,
            ondemand,
        }
    }

    /// One line for systemd's STATUS=: "culling: 12% free, 1234 culled; on-demand: 3 blobs, 0 in flight".
    pub fn summary(&self) -> String {
        let free = nix::sys::statfs::fstatfs(&self.cache_fs)
            .map(|st| format!("{}% free", st.blocks_available() * 100 / st.blocks().max(1)))
            .unwrap_or_else(|_| "free space unknown".into());
        let culling = match &self.culler {
            Some(c) if self.status.cull => format!("culling: {free}, {} culled", c.stats.culled),
            Some(c) => format!("idle: {free}, {} culled", c.stats.culled),
            None => format!("culling disabled: {free}"),
        };
        match &self.ondemand {
            Some(od) => format!(
                "{culling}; on-demand: {} blobs, {} in flight",
                od.objects().len(),
                od.in_flight()
            ),
            None => culling,
        }
    }

    pub fn stats_line(&self) -> String {
        let up = self.started.elapsed().as_secs();
        let ondemand = self.ondemand.as_ref().map_or(String::new(), |od| {
            let s = &od.stats;
            format!(
                "; on-demand: {} objects open, {} in flight, opens {} ({} failed), reads {} ({} failed), {} bytes written, {} bad messages, {} duplicates",
                od.objects().len(), od.in_flight(), s.opens, s.opens_failed, s.reads, s.reads_failed, s.bytes_written, s.bad_messages, s.duplicates
            )
        });
        let line = match &self.culler {
            Some(c) => {
                let s = &c.stats;
                format!(
                    "uptime {up}s; scans {}, objects in last scan {}, last scan {:.3}s; culled {}, freed {} bytes, in use {}, vanished {}, changed {}, refused {}; table {}/{}; graveyard entries removed {}",
                    s.scans, s.objects_last_scan, s.last_scan_duration.as_secs_f64(), s.culled, s.bytes_freed, s.in_use, s.vanished, s.changed, s.refused, c.ready_len(), c.table_capacity(), self.reaped
                )
            }
            None => format!(
                "uptime {up}s; culling disabled; graveyard entries removed {}",
                self.reaped
            ),
        };
        line + &ondemand
    }

    /// Runs until SIGTERM/SIGINT or `StopHandle::stop`. A dead cache is an error.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let mut events = Events::with_capacity(16);
        self.refresh_cull()?;
        self.serve_requests()?;
        self.request_reap();
        let mut last_tick = Instant::now();
        loop {
            self.cull_batch()?;
            let timeout = if self.has_work() {
                Duration::ZERO
            } else {
                TICK
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            }
            let mut device_ready = false;
            for event in events.iter() {
                match event.token() {
                    DEVICE => {
                        device_ready = true;
                        if event.is_writable() && self.ondemand.is_some() && !self.status.cull {
                            log::info!("kernel requests culling");
                            self.status.cull = true;
                        }
                    }
                    WAKER => {
                        self.drain_worker();
                        if let Some(od) = self.ondemand.as_mut() {
                            od.drain_done(self.device)
                                .map_err(DaemonError::from_device)?;
                        }
                    }
                    TERMINATE => {
                        drain(self.signals.as_mut().map(|s| &mut s.terminate));
                        log::info!("terminating on signal");
                        return Ok(());
                    }
                    REPORT => {
                        drain(self.signals.as_mut().map(|s| &mut s.report));
                        log::info!("{}", self.stats_line());
                    }
                    GRAVEYARD => {
                        if let Some(ino) = &self.inotify {
                            while matches!(ino.read_events(), Ok(ev) if !ev.is_empty()) {}
                        }
                        self.request_reap();
                    }
                    token => {
                        if let Some(mut control) = self.control.take() {
                            if control.owns(token) {
                                control.on_event(self.poll.registry(), token, &|r| self.answer(r));
                            }
                            self.control = Some(control);
                        }
                    }
                }
            }
            if self.stop.load(Ordering::SeqCst) {
                return Ok(());
            }
            let tick = last_tick.elapsed() >= TICK;
            if tick {
                last_tick = Instant::now();
                crate::service::watchdog();
                if let Some(control) = self.control.as_mut() {
                    control.expire(self.poll.registry(), Instant::now());
                }
                crate::service::status(&self.summary());
                if self.inotify.is_none() {
                    self.request_reap();
                }
            }
            if device_ready {
                self.serve_requests()?;
            }
            if tick || (device_ready && self.ondemand.is_none()) {
                self.refresh_cull()?;
            }
            if tick {
                self.check_alive()?;
            }
        }
    }

    /// Neither the status read nor poll() reveals a cache the kernel has marked dead (after
    /// a backing-filesystem I/O error); see `Command::liveness_probe`.
    fn check_alive(&mut self) -> Result<(), DaemonError> {
        match self.device.send(&crate::proto::Command::liveness_probe()) {
            Err(e) if e.cache_is_dead() => Err(DaemonError::CacheDead(e)),
            _ => Ok(()),
        }
    }
}

fn drain(stream: Option<&mut mio::net::UnixStream>) {
    if let Some(s) = stream {
        let mut buf = [0u8; 64];
        while matches!(s.read(&mut buf), Ok(n) if n > 0) {}
    }
}
