//! Startup: `Start::{Supervise, Worker, Takeover, Fresh}`, chosen purely, then carried out.
//!
//! From the command line and what the process was handed (a bound device fd from our
//! supervisor or from systemd's fd store) to a running daemon, supervisor or worker. `Start`
//! is the decision, made by a pure function; `run` carries it out.

use crate::cli::{self, Options};
use crate::config::{Config, ConfigError};
use crate::daemon::{Daemon, DaemonError, SignalPipes};
use crate::device::{CachefilesDevice, Device, DeviceError, DEVICE_PATH};
use crate::engine::Serving;
use crate::exit::Exit;
use crate::lock::{lock_cache_dir, LockError};
use crate::ondemand::fanotify::{FanotifyError, Group};
use crate::ondemand::inflight::INFLIGHT_PATH;
use crate::ondemand::sourcemap::{FrontEndChoice, SourceMap};
use crate::pidfile::{PidFile, PidFileError};
use crate::proto::{Command, Limit};
use crate::service::{self, Inherited, NotTheDevice};
use crate::supervise::{self, RestartLimit};
use nix::errno::Errno;
use std::cell::Cell;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where a bound device fd came from, if one was handed to this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handed {
    Nothing,
    /// Our `--supervise` parent (which daemonised, holds the lock and the pid file).
    Supervisor,
    /// systemd's fd store, from a previous run of the service.
    ServiceManager,
}

/// How this process starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// `--supervise`: bind the cache, then run workers that take it over, restarting them.
    Supervise,
    /// A worker of our supervisor: take over its bound device.
    Worker,
    /// A bound device from the fd store: take it over (on demand, `restore` the requests).
    Takeover,
    /// Open and bind the device.
    Fresh,
}

impl Start {
    pub fn choose(options: &Options, handed: Handed) -> Start {
        match handed {
            Handed::Supervisor => Start::Worker,
            Handed::ServiceManager => Start::Takeover,
            Handed::Nothing if options.supervise => Start::Supervise,
            Handed::Nothing => Start::Fresh,
        }
    }

    /// Whether this process takes the cache lock, daemonises and writes the pid file (a
    /// supervisor does so for its workers).
    pub fn owns_the_service(self) -> bool {
        self != Start::Worker
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Worded as the C daemon's, which admins' log monitors look for.
    #[error("CacheFiles bind failed: {error}{hint}")]
    Bind {
        error: DeviceError,
        hint: &'static str,
    },
    #[error(transparent)]
    Inherited(#[from] NotTheDevice),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error(transparent)]
    Privilege(#[from] crate::privilege::PrivilegeError),
    #[error(transparent)]
    PidFile(#[from] PidFileError),
    #[error("cannot daemonise: {0}")]
    Daemonise(Errno),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("supervisor: {0}")]
    Supervisor(std::io::Error),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A worker of `--supervise` cannot rebind: the supervisor holds the device, and has
    /// dropped the privilege to open it again.
    #[error("the config changes what a bound cache cannot change ({}); the supervisor holds the cache bound with the old settings: restart cachefilesd --supervise to bind it afresh", reasons.join("; "))]
    CannotRebind { reasons: Vec<String> },
    #[error(transparent)]
    Fanotify(#[from] FanotifyError),
}

impl StartError {
    pub fn exit(&self) -> Exit {
        match self {
            StartError::Config(_) | StartError::CannotRebind { .. } => Exit::Config,
            StartError::Signals(_) | StartError::Daemon(DaemonError::Status(_)) => Exit::Internal,
            _ => Exit::Os,
        }
    }
}

/// Runs cachefilesd with `options`. `logging` is set once log output is set up: errors go
/// there from then on, to stderr before.
pub fn run(options: &Options, logging: &Cell<bool>) -> Result<Exit, StartError> {
    let config = Config::load(&options.config)?;
    check_dir(&config)?;
    let serving = match &config.ondemand {
        Some(path) => Serving::OnDemand(
            SourceMap::load(&path.value)
                .map_err(|e| config_error(&config, path.line, e.to_string()))?,
        ),
        None => Serving::Classic,
    };
    if options.check_config {
        for w in &config.warnings {
            eprintln!("cachefilesd: warning: {w}");
        }
        println!(
            "cachefilesd: {}: configuration OK",
            options.config.display()
        );
        return Ok(Exit::Ok);
    }
    // Up before the device is opened, as the C daemon's is before `bind`: the config's
    // warnings and the bind messages admins' log monitors look for go to the daemon's log.
    crate::logging::init(options.stderr, options.debug);
    logging.set(true);
    for w in &config.warnings {
        log::warn!("{w}");
    }
    raise_fd_limit();
    let inherited = service::inherited_device()?;
    let handed = match &inherited {
        None => Handed::Nothing,
        Some(i) if i.from_supervisor => Handed::Supervisor,
        Some(_) => Handed::ServiceManager,
    };
    let start = Start::choose(options, handed);
    // Held for the daemon's life so that cachefilesctl refuses to write under it.
    let _lock = start
        .owns_the_service()
        .then(|| lock_cache_dir(&config.dir.value))
        .transpose()?;
    if start == Start::Supervise {
        return run_supervisor(&config, options, serving);
    }
    let (device, group) = match inherited {
        Some(Inherited { fd, group, .. }) => (Some(fd), group),
        None => (None, None),
    };
    run_daemon(&config, options, start, device, group, serving)
}

/// The supervisor binds the cache itself, before dropping privileges: the kernel takes the
/// cache's credentials from the process that binds. Every worker takes it over.
fn run_supervisor(
    config: &Config,
    options: &Options,
    serving: Serving,
) -> Result<Exit, StartError> {
    let mut device = open_device()?;
    let serving = configure(config, &mut device, serving)?;
    record_bound(config);
    // Workers run without CAP_SYS_ADMIN: the group is made here and held like the device,
    // so a worker's death never closes it (that would let pending reads see zeros).
    let group = match &serving {
        Serving::Fanotify(_, group) => {
            let held = group.try_clone_fd().map_err(StartError::Supervisor)?;
            // A record left there belongs to a group gone with its events: start empty.
            let unread = crate::ondemand::inflight::Record {
                unread: true,
                ..Default::default()
            };
            if let Err(e) =
                crate::ondemand::inflight::Writer::create(Path::new(INFLIGHT_PATH), unread)
            {
                log::warn!("{INFLIGHT_PATH}: {e}");
            }
            Some(held)
        }
        _ => None,
    };
    log::info!("serving in {} mode", serving.name());
    let pidfile = start_service(options)?;
    drop_privileges()?;
    let exe = std::env::current_exe().map_err(StartError::Supervisor)?;
    let args = worker_args(std::env::args_os());
    let exit = supervise::run(
        device.into_fd(),
        group,
        &exe,
        &args,
        RestartLimit::default(),
    )
    .map_err(StartError::Supervisor);
    remove_pidfile(pidfile);
    exit
}

/// The worker's command line: the supervisor's, without `--supervise`, in the foreground.
pub fn worker_args(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    args.into_iter()
        .skip(1)
        .filter(|a| a != "--supervise")
        .chain(std::iter::once("-n".into()))
        .collect()
}

fn run_daemon(
    config: &Config,
    options: &Options,
    start: Start,
    handed: Option<std::os::fd::OwnedFd>,
    mut group: Option<std::os::fd::OwnedFd>,
    serving: Serving,
) -> Result<Exit, StartError> {
    let was_handed = handed.is_some();
    let handed = handed.and_then(take_over_or_reopen);
    let (mut device, taken, mut serving) = match handed {
        Some(device) => {
            let (device, taken, serving) = take_over(
                config,
                start != Start::Worker,
                &crate::takeover::state_path(&config.path),
                device,
                serving,
                |old| {
                    // Both copies must go for the kernel to unbind: the fd store's and ours.
                    service::forget_stored_device();
                    drop(old);
                },
                open_device,
            )?;
            (device, Some(taken), serving)
        }
        None => {
            // A dead device just let go may still be open in the fd store for a moment.
            let mut device = if was_handed {
                open_when_free(open_device)?
            } else {
                open_device()?
            };
            let serving = configure(config, &mut device, serving)?;
            record_bound(config);
            (device, None, serving)
        }
    };
    let pidfile = if start.owns_the_service() {
        start_service(options)?
    } else {
        None
    };
    let kept = matches!(taken, Some(Taken::Kept | Taken::KeptWithBoundLimits));
    if kept {
        serving = restore(config, serving, &mut device, &mut group)?;
    }
    let (serving, group_adopted) = keep_group(serving, group);
    drop_privileges()?;
    // What the service manager handed back is still in its store: storing it again fails
    // (systemd checks FileDescriptorStoreMax before it looks for duplicates) and logs an
    // error at every restart.
    let from_store = start == Start::Takeover;
    service::ready(device.as_fd(), "cache bound", !(from_store && kept));
    if let (Serving::Fanotify(_, group), true) = (&serving, start.owns_the_service()) {
        if !(from_store && group_adopted) {
            service::store_group(std::os::fd::AsFd::as_fd(&**group));
        }
    }
    log::info!("Daemon Started");
    let follow_limits = taken == Some(Taken::KeptWithBoundLimits);
    let result = serve(config, options, &mut device, serving, follow_limits);
    service::stopping();
    remove_pidfile(pidfile);
    if result.is_ok() {
        log::info!("Daemon Terminated");
    }
    result.map(|()| Exit::Ok)
}

/// What a takeover did with the bound cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Kept bound; the limits were sent again, and are those it was bound with.
    Kept,
    /// Kept bound and the limits sent again, but the kernel's counts are those of the bind
    /// and the config's limits differ from them (or no record says which they are): the
    /// daemon culls by the config's limits itself (`CullDriver::follow_limits`).
    KeptWithBoundLimits,
    /// Unbound and bound afresh with the config.
    Rebound,
}

/// How long a rebind waits for the old cache to go: the kernel lets one process at a time
/// open the device, and the service manager closes its stored copy asynchronously.
const REBIND_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Applies `config` to a handed, bound `device`: the limits and debug mask are sent again and
/// what changed since the recorded bind (`state`) is logged; a change the kernel cannot make
/// on a bound cache (dir, tag, secctx, mode) rebinds: `close` lets the old device go, `open`
/// opens a new one, which is configured and bound (choosing the front end as at a first
/// start, so `serving` may come back changed). Without `may_rebind` (a worker of
/// `--supervise`) such a change is refused.
pub fn take_over<D: Device>(
    config: &Config,
    may_rebind: bool,
    state: &Path,
    mut device: D,
    serving: Serving,
    close: impl FnOnce(D),
    open: impl FnMut() -> Result<D, StartError>,
) -> Result<(D, Taken, Serving), StartError> {
    use crate::takeover::{self, Plan};
    let applied = match takeover::load(state) {
        Ok(a) => a,
        Err(e) => {
            log::warn!("{e}: treated as no record");
            None
        }
    };
    match takeover::plan(applied.as_ref(), config) {
        Plan::Keep { changes } => {
            takeover::resend(applied.as_ref(), config, &mut device)
                .map_err(|(command, e)| bind_failure(config, &command, e))?;
            if applied.is_none() {
                log::warn!(
                    "no record of the settings the cache was bound with ({}): limits sent again; a changed dir, tag or secctx cannot be detected until the next bind",
                    state.display()
                );
                return Ok((device, Taken::KeptWithBoundLimits, serving));
            }
            if changes.is_empty() {
                log::info!("bound cache taken over; its settings are unchanged");
            } else {
                log::info!(
                    "bound cache taken over; sent to the kernel: {}",
                    changes.join(", ")
                );
            }
            let bound = applied.as_ref().expect("checked above");
            if Limit::ALL
                .iter()
                .all(|l| bound.limit(*l) == config.limit(*l))
            {
                if let Err(e) = takeover::record(state, config) {
                    log::warn!("{e}");
                }
                return Ok((device, Taken::Kept, serving));
            }
            // The kernel turned the bound limits into block and file counts at bind and keeps
            // them; the record keeps them too, so every later takeover knows.
            let mut record = config.clone();
            record.limits = bound.limits.clone();
            if let Err(e) = takeover::record(state, &record) {
                log::warn!("{e}");
            }
            log::info!("the kernel counts limits only at bind: the daemon culls by the edited limits itself (from statfs), the cache stays bound");
            for stop in [Limit::Bstop, Limit::Fstop] {
                if bound.limit(stop) != config.limit(stop) {
                    log::warn!(
                        "the kernel keeps refusing new cache objects below {} {}% (bound with it) rather than {}% until the cache is bound afresh (stop and start the service)",
                        stop.keyword(),
                        bound.limit(stop),
                        config.limit(stop)
                    );
                }
            }
            Ok((device, Taken::KeptWithBoundLimits, serving))
        }
        Plan::Rebind { reasons } if !may_rebind => Err(StartError::CannotRebind { reasons }),
        Plan::Rebind { reasons } => {
            // What the withdrawal costs depends on the mode the cache was bound in.
            let cost = if applied.as_ref().is_some_and(|a| a.ondemand.is_some()) {
                "reads of EROFS images mounted on it fail"
            } else {
                "filesystems using it continue uncached"
            };
            log::warn!(
                "rebinding the cache: {} (the kernel cannot change this on a bound cache); the old binding is withdrawn: {cost}",
                reasons.join("; ")
            );
            close(device);
            takeover::forget(state);
            let mut device = open_when_free(open)?;
            let serving = configure(config, &mut device, serving)?;
            if let Err(e) = takeover::record(state, config) {
                log::warn!("{e}");
            }
            log::info!("cache rebound with the new settings");
            Ok((device, Taken::Rebound, serving))
        }
    }
}

/// Opens the device once the last holder of the old one has let it go.
fn open_when_free<D>(mut open: impl FnMut() -> Result<D, StartError>) -> Result<D, StartError> {
    let deadline = std::time::Instant::now() + REBIND_WAIT;
    loop {
        match open() {
            Err(StartError::Device(DeviceError::Busy { .. }))
                if std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            other => return other,
        }
    }
}

/// Records what the cache was just bound with; a failure costs only the comparison at the next
/// takeover.
fn record_bound(config: &Config) {
    if let Err(e) = crate::takeover::record(&crate::takeover::state_path(&config.path), config) {
        log::warn!("{e}");
    }
}

/// A handed device, unless it is dead: a dead cache handed back (by the fd store after the
/// previous daemon saw it die) is let go so that we start afresh, or every restart would end
/// the same way.
fn take_over_or_reopen(fd: std::os::fd::OwnedFd) -> Option<CachefilesDevice> {
    let mut device = CachefilesDevice::from_fd(fd);
    if crate::device::check_alive(&mut device).is_ok() {
        return Some(device);
    }
    eprintln!("cachefilesd: the inherited cache device is dead; opening a new one");
    service::forget_stored_device();
    None
}

/// Taking over a bound cache: on demand, the kernel re-delivers every outstanding request;
/// READs on objects whose fd died with the old daemon come back as fresh OPENs. `restore`
/// also tells how the cache was bound: EOPNOTSUPP on a cache bound classic (or a kernel
/// before 6.8), so fanotify where a pre-content group can be made. How it was bound decides,
/// not the map's `frontend`, which may have been edited since: the bound mode cannot change
/// without a rebind, and the other front end would leave the kernel's requests unanswered
/// (bound on demand) or take status lines for requests (bound classic).
fn restore(
    config: &Config,
    serving: Serving,
    device: &mut dyn Device,
    kept: &mut Option<std::os::fd::OwnedFd>,
) -> Result<Serving, StartError> {
    log::info!("taking over the bound cache {}", config.dir.value.display());
    let Some(choice) = serving.frontend() else {
        return Ok(serving);
    };
    match device.send(&Command::Restore) {
        Ok(()) => {
            log::info!("restore: outstanding requests re-delivered");
            if choice == FrontEndChoice::Fanotify {
                log::warn!("frontend = \"fanotify\", but the cache was bound on demand by an earlier run: served through cachefiles until it is bound afresh (stop and start the service)");
            }
            Ok(serving)
        }
        Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {
            // Bound classic by an earlier run that chose fanotify, or a kernel before 6.8
            // (which has no pre-content events either, so the group cannot be made).
            match take_group(kept) {
                Ok(group) => {
                    if choice == FrontEndChoice::Cachefiles {
                        log::warn!("frontend = \"cachefiles\", but the cache was bound for fanotify by an earlier run: served through fanotify until it is bound afresh (stop and start the service)");
                    }
                    Ok(match serving {
                        Serving::OnDemand(map) => Serving::Fanotify(map, Box::new(group)),
                        other => other,
                    })
                }
                // As at a first start: fanotify asked for and not available is an error.
                Err(e) if choice == FrontEndChoice::Fanotify => Err(e),
                Err(_) => {
                    log::warn!("the kernel does not support `restore` (needs Linux 6.8): requests pending before the restart are lost");
                    Ok(serving)
                }
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The group kept for us (by our supervisor or the fd store) if it is one, else a new one
/// (which needs CAP_SYS_ADMIN).
fn take_group(kept: &mut Option<std::os::fd::OwnedFd>) -> Result<Group, StartError> {
    if let Some(fd) = kept.take() {
        match Group::adopt(fd) {
            Ok(group) => return Ok(group),
            Err(e) => log::warn!("{e}"),
        }
    }
    Ok(Group::new()?)
}

/// Serving through fanotify: the group kept for us replaces one made at a (re)bind, and the
/// record of events in flight is kept from now on (an adopted group first reads what its
/// predecessor left). A kept group no longer served through is closed: its pending reads
/// are allowed, so say so.
/// The serving, with the kept group in place of the one made if there is one; true if the
/// kept group was adopted.
fn keep_group(serving: Serving, kept: Option<std::os::fd::OwnedFd>) -> (Serving, bool) {
    match serving {
        Serving::Fanotify(map, made) => {
            let (mut group, adopted) = match kept.map(Group::adopt) {
                Some(Ok(group)) => (group, true),
                Some(Err(e)) => {
                    log::warn!("{e}");
                    (*made, false)
                }
                None => (*made, false),
            };
            group.keep_record(Path::new(INFLIGHT_PATH));
            (Serving::Fanotify(map, Box::new(group)), adopted)
        }
        other => {
            if kept.is_some() {
                log::warn!("a fanotify group was kept for this daemon, which no longer serves through fanotify: closing it lets reads of blobs still mounted through unfilled ranges");
            }
            (other, false)
        }
    }
}

fn check_dir(config: &Config) -> Result<(), StartError> {
    let dir = &config.dir;
    let message = match std::fs::metadata(&dir.value) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => format!("dir {} is not a directory", dir.value.display()),
        Err(e) => format!("dir {}: {e}", dir.value.display()),
    };
    Err(config_error(config, dir.line, message))
}

fn config_error(config: &Config, line: usize, message: String) -> StartError {
    StartError::Config(ConfigError {
        path: config.path.clone(),
        line,
        message,
    })
}

/// One fd per open on-demand object and up to 1024 cached cull directories outgrow the usual
/// soft limit of 1024; the hard limit is what the administrator allows.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::debug!("cannot raise the open file limit from {soft} to {hard}: {e}");
            }
        }
    }
}

/// Sends the config's commands; the bind chooses the front end (see `FrontEndChoice`).
fn configure(
    config: &Config,
    device: &mut dyn Device,
    serving: Serving,
) -> Result<Serving, StartError> {
    let mut serving = serving;
    for command in config.commands() {
        let bind = matches!(command, Command::Bind { .. });
        if bind {
            log::info!("About to bind cache");
        }
        match (&command, serving.frontend()) {
            (Command::Bind { ondemand: true }, Some(FrontEndChoice::Fanotify)) => {
                // The fanotify front end: the cache is bound classic, for its culling.
                let classic = Command::Bind { ondemand: false };
                device
                    .send(&classic)
                    .map_err(|e| bind_failure(config, &classic, e))?;
                serving = serving.with_fanotify()?;
            }
            (Command::Bind { ondemand: true }, Some(FrontEndChoice::Auto)) => match device
                .send(&command)
            {
                Err(e) if e.errno() == Some(Errno::EINVAL) => {
                    log::info!("the kernel has no `bind ondemand`: using the fanotify front end");
                    let classic = Command::Bind { ondemand: false };
                    device
                        .send(&classic)
                        .map_err(|e| bind_failure(config, &classic, e))?;
                    serving = serving.with_fanotify()?;
                }
                other => other.map_err(|e| bind_failure(config, &command, e))?,
            },
            _ => device
                .send(&command)
                .map_err(|e| bind_failure(config, &command, e))?,
        }
        if bind {
            log::info!("Bound cache");
        }
    }
    Ok(serving)
}

fn drop_privileges() -> Result<(), StartError> {
    let kept = crate::privilege::drop_privileges()?;
    let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    names.sort();
    if names.is_empty() {
        names.push("none".into());
    }
    log::debug!("capabilities kept: {}", names.join(" "));
    Ok(())
}

fn open_device() -> Result<CachefilesDevice, StartError> {
    Ok(CachefilesDevice::open(Path::new(DEVICE_PATH))?)
}

/// Daemonises unless -n and writes the pid file.
fn start_service(options: &Options) -> Result<Option<PidFile>, StartError> {
    let pidfile = options
        .pidfile
        .clone()
        .or_else(|| (!options.no_daemon).then(|| PathBuf::from(cli::DEFAULT_PIDFILE)));
    if !options.no_daemon {
        // Forking is safe here: no thread exists yet (workers start in Daemon::new).
        nix::unistd::daemon(false, options.stderr).map_err(StartError::Daemonise)?;
    }
    Ok(pidfile
        .map(|p| PidFile::write(&p, std::process::id()))
        .transpose()?)
}

fn remove_pidfile(pidfile: Option<PidFile>) {
    if let Some(p) = pidfile {
        p.remove();
    }
}

fn serve(
    config: &Config,
    options: &Options,
    device: &mut CachefilesDevice,
    serving: Serving,
    follow_limits: bool,
) -> Result<(), StartError> {
    let signals = SignalPipes::install().map_err(StartError::Signals)?;
    let mode = serving.name();
    let mut daemon = Daemon::new(config, device, options.nocull, Some(signals), serving)?;
    if follow_limits {
        daemon.follow_config_limits(config);
    }
    log::info!(
        "cache {} bound in {mode} mode{}",
        config.dir.value.display(),
        if config.nocull || options.nocull {
            " (culling disabled)"
        } else {
            ""
        }
    );
    if let Err(e) = daemon.run() {
        if matches!(e, DaemonError::CacheDead(_)) {
            // The stored fd is useless now; a restarted daemon must open a new one.
            service::forget_stored_device();
        }
        return Err(e.into());
    }
    log::info!("{}", daemon.stats_line());
    Ok(())
}

/// A refused configuration command: config errors name the config file and line.
fn bind_failure(config: &Config, command: &Command, e: DeviceError) -> StartError {
    let errno = e.errno();
    let hint = match (command, errno) {
        (Command::Bind { .. }, Some(Errno::EOPNOTSUPP)) => {
            " (the filesystem holding the cache lacks xattrs, O_TMPFILE or sync_fs: tmpfs cannot hold a cache; or the kernel lacks CONFIG_CACHEFILES_ONDEMAND for `bind ondemand`)"
        }
        (Command::Bind { .. }, Some(Errno::EBUSY)) => " (a cache is already bound)",
        (Command::Bind { .. }, Some(Errno::EROFS)) => " (the cache filesystem is read-only)",
        (Command::Bind { .. }, Some(Errno::ENOENT)) => " (the cache directory does not exist)",
        _ => "",
    };
    let line = match command {
        Command::Dir(_) | Command::Bind { .. } => config.dir.line,
        Command::Limit(l, _) => config.limits[*l as usize].as_ref().map_or(0, |x| x.line),
        _ => 0,
    };
    match errno {
        Some(errno @ (Errno::EINVAL | Errno::ERANGE))
            if !matches!(command, Command::Bind { .. }) =>
        {
            config_error(
                config,
                line,
                format!("the kernel refused `{command}`: {errno}"),
            )
        }
        _ => StartError::Bind { error: e, hint },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&str]) -> Options {
        let args = std::iter::once("cachefilesd").chain(args.iter().copied());
        match cli::parse(args.map(OsString::from)).unwrap() {
            cli::Action::Run(o) => o,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_start_follows_what_was_handed_over() {
        let plain = options(&["-n"]);
        let supervise = options(&["--supervise"]);
        assert_eq!(Start::choose(&plain, Handed::Nothing), Start::Fresh);
        assert_eq!(Start::choose(&supervise, Handed::Nothing), Start::Supervise);
        assert_eq!(Start::choose(&plain, Handed::Supervisor), Start::Worker);
        // A supervisor's worker never supervises, even if told to.
        assert_eq!(Start::choose(&supervise, Handed::Supervisor), Start::Worker);
        assert_eq!(
            Start::choose(&plain, Handed::ServiceManager),
            Start::Takeover
        );
        // systemd kept the device: take it over rather than binding a second cache.
        assert_eq!(
            Start::choose(&supervise, Handed::ServiceManager),
            Start::Takeover
        );
        assert!(!Start::Worker.owns_the_service());
        assert!([Start::Supervise, Start::Takeover, Start::Fresh]
            .iter()
            .all(|s| s.owns_the_service()));
    }

    #[test]
    fn workers_run_in_the_foreground_without_supervise() {
        let args = ["cachefilesd", "--supervise", "-d", "-f", "/etc/c.conf"].map(OsString::from);
        assert_eq!(
            worker_args(args),
            ["-d", "-f", "/etc/c.conf", "-n"].map(OsString::from)
        );
    }

    #[test]
    fn exit_statuses_by_error() {
        let config = ConfigError {
            path: "c".into(),
            line: 1,
            message: "bad".into(),
        };
        assert_eq!(StartError::Config(config).exit(), Exit::Config);
        let status = crate::proto::Status::parse(b"cull=2").unwrap_err();
        assert_eq!(
            StartError::Daemon(DaemonError::Status(status)).exit(),
            Exit::Internal
        );
        assert_eq!(StartError::Daemonise(Errno::EAGAIN).exit(), Exit::Os);
    }

    /// A restart after `frontend` was edited: the front end follows how the kept cache is
    /// bound, or no one answers the kernel's requests (bound on demand, served by fanotify)
    /// or the device's status lines are taken for requests (bound classic, served on demand).
    #[test]
    fn a_kept_cache_is_served_as_it_was_bound_whatever_the_map_now_says() {
        let config = Config::parse(
            Path::new("/etc/cachefilesd.conf"),
            b"dir /var/cache/fscache\nondemand /etc/cachefilesd/sources.toml\n",
        )
        .unwrap();
        let map = |frontend: &str| {
            Serving::OnDemand(
                SourceMap::parse(
                    "t.toml",
                    &format!("frontend = \"{frontend}\"\n[[source]]\npath = \"/a/{{fsid}}\"\n"),
                )
                .unwrap(),
            )
        };
        // Bound `ondemand` by an earlier run: `restore` is accepted.
        let (kernel, mut device) = crate::fake::FakeKernel::new();
        let served = restore(&config, map("fanotify"), &mut device, &mut None).unwrap();
        assert_eq!(served.name(), "on-demand");
        assert!(kernel.with(|s| s.commands.iter().any(|c| c == "restore")));
        // Bound classic by an earlier run that chose fanotify: `restore` is refused.
        let (kernel, mut device) = crate::fake::FakeKernel::new();
        kernel.with(|s| s.fail_next.push(("restore", Errno::EOPNOTSUPP)));
        let served = restore(&config, map("cachefiles"), &mut device, &mut None).unwrap();
        // Where no pre-content group can be made (no CAP_SYS_ADMIN, a kernel before 6.14)
        // the cache cannot have been bound for fanotify: a kernel without `restore`.
        let fanotify = crate::ondemand::fanotify::Group::new().is_ok();
        assert_eq!(
            served.name(),
            if fanotify { "fanotify" } else { "on-demand" }
        );
    }
}
