//! Log output: syslog (facility daemon, ident cachefilesd) by default, stderr with `-s`.
//!
//! On stderr under systemd (JOURNAL_STREAM names our stderr) each line carries a `<N>`
//! priority prefix and no timestamp, which journald turns into the entry's priority.
//! Panics are logged too: after daemon() stderr is /dev/null, and a dying thread must not go
//! unnoticed.

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::io::Write;
use std::os::fd::AsRawFd;

pub fn level_for(debug: u8) -> LevelFilter {
    match debug {
        0 => LevelFilter::Info,
        1 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    }
}

/// Whether a record is logged: ours at any level, other crates' at warnings and errors only.
/// The HTTP client traces whole requests and answers at debug/trace level, bearer tokens
/// and signed URLs included; none of that may reach a log.
pub fn wanted(metadata: &Metadata) -> bool {
    metadata.level() <= Level::Warn || metadata.target().starts_with("cachefilesd")
}

/// A logger that passes on only what [`wanted`] accepts.
struct Filtered<L>(L);

impl<L: Log> Log for Filtered<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        wanted(metadata) && self.0.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if wanted(record.metadata()) {
            self.0.log(record);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

struct StderrLogger {
    journal: bool,
}

fn syslog_priority(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

impl Log for StderrLogger {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = if self.journal {
            format!("<{}>{}\n", syslog_priority(record.level()), record.args())
        } else {
            let level = match record.level() {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                _ => "",
            };
            format!("cachefilesd: {level}{}\n", record.args())
        };
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// True when stderr is the stream systemd's journal gave us.
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_raw_fd()) else {
        return false;
    };
    dev.parse::<u64>().ok() == Some(st.st_dev) && ino.parse::<u64>().ok() == Some(st.st_ino)
}

/// Logs every panic (thread, location, message) through the logger, then runs the hook that
/// was installed before (the default one prints to stderr). Installed once, by `init`.
pub fn log_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let payload = info.payload();
            let message = payload
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
                .unwrap_or("(no message)");
            let thread = std::thread::current();
            let location = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            log::error!(
                "panic in thread {}{location}: {message}",
                thread.name().unwrap_or("unnamed")
            );
            log::logger().flush();
            previous(info);
        }));
    });
}

/// Syslog output whose pid is the process's at each record: logging starts before the
/// daemon forks (the bind messages must reach the log), and the lines after the fork must
/// carry the daemon's pid, not its parent's.
struct SyslogLogger(std::sync::Mutex<syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>>);

impl Log for SyslogLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        let message = record.args().to_string();
        let mut logger = self.0.lock().unwrap_or_else(|e| e.into_inner());
        logger.formatter.pid = std::process::id();
        // A lost log line is no reason to fail: there is nowhere left to report it.
        let _ = match record.level() {
            Level::Error => logger.err(message),
            Level::Warn => logger.warning(message),
            Level::Info => logger.info(message),
            Level::Debug | Level::Trace => logger.debug(message),
        };
    }

    fn flush(&self) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backend
            .flush();
    }
}

/// Sets up the log output and the panic hook.
pub fn init(stderr: bool, debug: u8) {
    init_logger(stderr, debug);
    log_panics();
}

fn init_logger(stderr: bool, debug: u8) {
    let level = level_for(debug);
    if !stderr {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "cachefilesd".into(),
            pid: std::process::id(),
        };
        match syslog::unix(formatter) {
            Ok(logger) => {
                if log::set_boxed_logger(Box::new(Filtered(SyslogLogger(std::sync::Mutex::new(
                    logger,
                )))))
                .is_ok()
                {
                    log::set_max_level(level);
                }
                return;
            }
            Err(e) => eprintln!("cachefilesd: cannot reach syslog ({e}); logging to stderr"),
        }
    }
    if log::set_boxed_logger(Box::new(Filtered(StderrLogger {
        journal: stderr_is_journal(),
    })))
    .is_ok()
    {
        log::set_max_level(level);
    }
}
