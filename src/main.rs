//! cachefilesd: the cache daemon. Parses the command line and config, opens and binds the
//! device, daemonises, and hands over to the event loop. Exit status: 0 on a clean stop,
//! 1 for an OS error (including a dead cache), 2 for a usage or config error, 3 internal.

use cachefilesd_rs::cli::{self, Action, Options};
use cachefilesd_rs::config::{Config, ConfigError};
use cachefilesd_rs::daemon::{Daemon, DaemonError, SignalPipes};
use cachefilesd_rs::device::{CachefilesDevice, Device, DeviceError, DEVICE_PATH};
use cachefilesd_rs::lock::lock_cache_dir;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::proto::Command;
use cachefilesd_rs::{service, supervise};
use nix::errno::Errno;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

enum Failure {
    Config(ConfigError),
    Os(anyhow::Error),
    Internal(anyhow::Error),
}

impl Failure {
    fn exit_code(&self) -> u8 {
        match self {
            Failure::Os(_) => 1,
            Failure::Config(_) => 2,
            Failure::Internal(_) => 3,
        }
    }
}

fn main() -> ExitCode {
    let action = match cli::parse(std::env::args_os()) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("cachefilesd: {e}\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    let options = match action {
        Action::Version => {
            println!(
                "cachefilesd version {} (cachefilesd-rs)",
                env!("CARGO_PKG_VERSION")
            );
            return ExitCode::SUCCESS;
        }
        Action::Help => {
            print!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Action::Run(o) => o,
    };
    let logging = std::cell::Cell::new(false);
    match run(&options, &logging) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            let message = match &failure {
                Failure::Config(e) => e.to_string(),
                Failure::Os(e) | Failure::Internal(e) => format!("{e:#}"),
            };
            if logging.get() {
                log::error!("{message}");
            }
            // Logging starts before the device is opened: an administrator starting the daemon
            // by hand still sees why it did not start.
            if !logging.get() || (!options.stderr && std::io::stderr().is_terminal()) {
                eprintln!("cachefilesd: {message}");
            }
            ExitCode::from(failure.exit_code())
        }
    }
}

fn check_dir(config: &Config) -> Result<(), Failure> {
    let dir = &config.dir;
    match std::fs::metadata(&dir.value) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(config_error(
            config,
            dir.line,
            format!("dir {} is not a directory", dir.value.display()),
        )),
        Err(e) => Err(config_error(
            config,
            dir.line,
            format!("dir {}: {e}", dir.value.display()),
        )),
    }
}

fn config_error(config: &Config, line: usize, message: String) -> Failure {
    Failure::Config(ConfigError {
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

fn run(options: &Options, logging: &std::cell::Cell<bool>) -> Result<u8, Failure> {
    let config = Config::load(&options.config).map_err(Failure::Config)?;
    check_dir(&config)?;
    let source_map = match &config.ondemand {
        Some(path) => Some(
            SourceMap::load(&path.value)
                .map_err(|e| config_error(&config, path.line, e.to_string()))?,
        ),
        None => None,
    };
    if options.check_config {
        for w in &config.warnings {
            eprintln!("cachefilesd: warning: {w}");
        }
        println!(
            "cachefilesd: {}: configuration OK",
            options.config.display()
        );
        return Ok(0);
    }
    // Up before the device is opened, as the C daemon's is before `bind`: the config's
    // warnings and the bind messages admins' log monitors look for go to the daemon's log.
    cachefilesd_rs::logging::init(options.stderr, options.debug);
    logging.set(true);
    for w in &config.warnings {
        log::warn!("{w}");
    }

    raise_fd_limit();
    let inherited = service::inherited_device();
    let from_supervisor = inherited.as_ref().is_some_and(|i| i.from_supervisor);
    // Held for the daemon's life so that cachefilesctl refuses to write under it; a
    // supervisor holds it for its workers.
    let _lock = if from_supervisor {
        None
    } else {
        Some(lock_cache_dir(&config.dir.value).map_err(|e| Failure::Os(e.into()))?)
    };
    if options.supervise && inherited.is_none() {
        // The supervisor binds the cache itself, before dropping privileges: the kernel takes
        // the cache's credentials from the process that binds. Every worker takes it over.
        let mut device = open_device()?;
        configure(&config, &mut device)?;
        let pidfile = start_service(options, logging)?;
        drop_privileges()?;
        let worker_args: Vec<std::ffi::OsString> = std::env::args_os()
            .skip(1)
            .filter(|a| a != "--supervise")
            .chain(std::iter::once("-n".into()))
            .collect();
        let code = supervise::run(device.into_fd(), worker_args)
            .map_err(|e| Failure::Os(anyhow::anyhow!("supervisor: {e}")));
        remove_pidfile(&pidfile);
        return code;
    }

    let (mut device, mut bound) = match inherited {
        Some(i) => (CachefilesDevice::from_fd(i.fd), true),
        None => (open_device()?, false),
    };
    if bound
        && device
            .send(&Command::liveness_probe())
            .is_err_and(|e| e.cache_is_dead())
    {
        // A dead cache handed back (by the fd store after the previous daemon saw it die):
        // let it go and start afresh, or every restart would end the same way.
        eprintln!("cachefilesd: the inherited cache device is dead; opening a new one");
        service::forget_stored_device();
        drop(device);
        device = open_device()?;
        bound = false;
    }
    if !bound {
        configure(&config, &mut device)?;
    }
    let pidfile = if from_supervisor {
        cachefilesd_rs::logging::init(options.stderr, options.debug);
        logging.set(true);
        None
    } else {
        start_service(options, logging)?
    };
    if bound {
        log::info!("taking over the bound cache {}", config.dir.value.display());
        if config.ondemand.is_some() {
            // The kernel re-delivers every outstanding request; READs on objects whose fd
            // died with the old daemon come back as fresh OPENs.
            match device.send(&Command::Restore) {
                Ok(()) => log::info!("restore: outstanding requests re-delivered"),
                Err(e) if e.errno() == Some(Errno::EOPNOTSUPP) => {
                    log::warn!("the kernel does not support `restore` (needs Linux 6.8): requests pending before the restart are lost")
                }
                Err(e) => return Err(Failure::Os(e.into())),
            }
        }
    }
    drop_privileges()?;
    service::ready(device.as_fd(), "cache bound");
    log::info!("Daemon Started");
    let result = serve(&config, options, &mut device, source_map);
    service::stopping();
    remove_pidfile(&pidfile);
    if result.is_ok() {
        log::info!("Daemon Terminated");
    }
    result.map(|()| 0)
}

fn configure(config: &Config, device: &mut CachefilesDevice) -> Result<(), Failure> {
    for command in config.commands() {
        let bind = matches!(command, Command::Bind { .. });
        if bind {
            log::info!("About to bind cache");
        }
        device
            .send(&command)
            .map_err(|e| bind_failure(config, &command, e))?;
        if bind {
            log::info!("Bound cache");
        }
    }
    Ok(())
}

fn drop_privileges() -> Result<(), Failure> {
    let kept = cachefilesd_rs::privilege::drop_privileges().map_err(|e| Failure::Os(e.into()))?;
    let mut names: Vec<String> = kept.iter().map(|c| c.to_string()).collect();
    names.sort();
    log::debug!(
        "capabilities kept: {}",
        if names.is_empty() {
            "none".into()
        } else {
            names.join(" ")
        }
    );
    Ok(())
}

fn open_device() -> Result<CachefilesDevice, Failure> {
    CachefilesDevice::open(Path::new(DEVICE_PATH)).map_err(|e| Failure::Os(e.into()))
}

/// Daemonises unless -n, starts logging and writes the pid file; returns the pid file's path.
fn start_service(
    options: &Options,
    logging: &std::cell::Cell<bool>,
) -> Result<Option<PathBuf>, Failure> {
    let pidfile = options
        .pidfile
        .clone()
        .or_else(|| (!options.no_daemon).then(|| PathBuf::from(cli::DEFAULT_PIDFILE)));
    if !options.no_daemon {
        // Forking is safe here: no thread exists yet (workers start in Daemon::new).
        nix::unistd::daemon(false, options.stderr)
            .map_err(|e| Failure::Os(anyhow::anyhow!("cannot daemonise: {e}")))?;
    }
    cachefilesd_rs::logging::init(options.stderr, options.debug);
    logging.set(true);
    if let Some(p) = &pidfile {
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| {
            Failure::Os(anyhow::anyhow!(
                "cannot write pid file {}: {e}",
                p.display()
            ))
        })?;
    }
    Ok(pidfile)
}

fn remove_pidfile(pidfile: &Option<PathBuf>) {
    if let Some(p) = pidfile {
        let _ = std::fs::remove_file(p);
    }
}

fn serve(
    config: &Config,
    options: &Options,
    device: &mut CachefilesDevice,
    source_map: Option<SourceMap>,
) -> Result<(), Failure> {
    let signals = signal_pipes()
        .map_err(|e| Failure::Internal(anyhow::anyhow!("cannot install signal handlers: {e}")))?;
    let mut daemon = Daemon::new(config, device, options.nocull, Some(signals), source_map)
        .map_err(daemon_failure)?;
    log::info!(
        "cache {} bound in {} mode{}",
        config.dir.value.display(),
        if config.ondemand.is_some() {
            "on-demand"
        } else {
            "classic"
        },
        if config.nocull || options.nocull {
            " (culling disabled)"
        } else {
            ""
        }
    );
    daemon.run().map_err(daemon_failure)?;
    log::info!("{}", daemon.stats_line());
    Ok(())
}

fn daemon_failure(e: DaemonError) -> Failure {
    if matches!(e, DaemonError::CacheDead(_)) {
        // The stored fd is useless now; a restarted daemon must open a new one.
        service::forget_stored_device();
    }
    match e {
        DaemonError::Status(_) => Failure::Internal(e.into()),
        e => Failure::Os(e.into()),
    }
}

fn signal_pipes() -> std::io::Result<SignalPipes> {
    use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};
    use signal_hook::low_level::pipe;
    let (term_read, term_write) = std::os::unix::net::UnixStream::pair()?;
    let (report_read, report_write) = std::os::unix::net::UnixStream::pair()?;
    for s in [&term_read, &term_write, &report_read, &report_write] {
        s.set_nonblocking(true)?;
    }
    pipe::register(SIGTERM, term_write.try_clone()?)?;
    pipe::register(SIGINT, term_write)?;
    pipe::register(SIGUSR1, report_write)?;
    Ok(SignalPipes {
        terminate: mio::net::UnixStream::from_std(term_read),
        report: mio::net::UnixStream::from_std(report_read),
    })
}

/// A refused configuration command: config errors name the config file and line.
fn bind_failure(config: &Config, command: &Command, e: DeviceError) -> Failure {
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
    if matches!(errno, Some(Errno::EINVAL | Errno::ERANGE))
        && !matches!(command, Command::Bind { .. })
    {
        return config_error(
            config,
            line,
            format!("the kernel refused `{command}`: {}", errno.unwrap()),
        );
    }
    if matches!(command, Command::Bind { .. }) {
        return Failure::Os(anyhow::anyhow!("CacheFiles bind failed: {e}{hint}"));
    }
    Failure::Os(anyhow::anyhow!("{e}{hint}"))
}
