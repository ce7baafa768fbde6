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

type Syslog = syslog::Logger<syslog::LoggerBackend, syslog::Formatter3164>;

/// Where syslog is reached: the system's socket (`/dev/log`, found by the syslog crate), or a
/// given one (tests).
enum SyslogSocket {
    System,
    #[cfg_attr(not(test), allow(dead_code))]
    At(std::path::PathBuf),
}

impl SyslogSocket {
    fn connect(&self) -> syslog::Result<Syslog> {
        let formatter = syslog::Formatter3164 {
            facility: syslog::Facility::LOG_DAEMON,
            hostname: None,
            process: "cachefilesd".into(),
            pid: std::process::id(),
        };
        match self {
            SyslogSocket::System => syslog::unix(formatter),
            SyslogSocket::At(path) => syslog::unix_custom(formatter, path),
        }
    }
}

/// Syslog output whose pid is the process's at each record: logging starts before the
/// daemon forks (the bind messages must reach the log), and the lines after the fork must
/// carry the daemon's pid, not its parent's.
///
/// A datagram socket stays connected to the syslog daemon that was listening when it was
/// made: once rsyslog or journald restarts, every send fails. A failed send reconnects and
/// is tried once more, so a long-running daemon does not go silent after a log rotation or
/// a syslog upgrade.
struct SyslogLogger {
    socket: SyslogSocket,
    logger: std::sync::Mutex<Syslog>,
}

impl SyslogLogger {
    fn new(socket: SyslogSocket) -> syslog::Result<SyslogLogger> {
        let logger = std::sync::Mutex::new(socket.connect()?);
        Ok(SyslogLogger { socket, logger })
    }

    fn send(logger: &mut Syslog, level: Level, message: &str) -> syslog::Result<()> {
        logger.formatter.pid = std::process::id();
        match level {
            Level::Error => logger.err(message),
            Level::Warn => logger.warning(message),
            Level::Info => logger.info(message),
            Level::Debug | Level::Trace => logger.debug(message),
        }
    }
}

impl Log for SyslogLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        let message = record.args().to_string();
        let mut logger = self.logger.lock().unwrap_or_else(|e| e.into_inner());
        if Self::send(&mut logger, record.level(), &message).is_ok() {
            return;
        }
        // A lost log line is no reason to fail: there is nowhere left to report it. Without
        // a new connection the old one is kept, and the next record tries again.
        if let Ok(fresh) = self.socket.connect() {
            *logger = fresh;
            let _ = Self::send(&mut logger, record.level(), &message);
        }
    }

    fn flush(&self) {
        let _ = self
            .logger
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
        match SyslogLogger::new(SyslogSocket::System) {
            Ok(logger) => {
                if log::set_boxed_logger(Box::new(Filtered(logger))).is_ok() {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    fn listen(path: &std::path::Path) -> UnixDatagram {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        socket
    }

    fn log_line(logger: &SyslogLogger, text: &str) {
        logger.log(
            &Record::builder()
                .args(format_args!("{text}"))
                .level(Level::Warn)
                .target("cachefilesd::test")
                .build(),
        );
    }

    fn received(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 1024];
        let n = socket.recv(&mut buf).expect("no syslog datagram arrived");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn syslog_survives_a_restart_of_the_syslog_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = listen(&path);
        let logger = SyslogLogger::new(SyslogSocket::At(path.clone())).unwrap();
        log_line(&logger, "before the restart");
        let line = received(&first);
        assert!(line.contains("before the restart"), "{line}");
        // <28>: facility daemon (3 << 3) + warning (4), and the process's own pid.
        assert!(line.starts_with("<28>"), "{line}");
        assert!(
            line.contains(&format!("cachefilesd[{}]", std::process::id())),
            "{line}"
        );

        // What rsyslog does when it restarts: a new socket at the same path.
        drop(first);
        std::fs::remove_file(&path).unwrap();
        let second = listen(&path);
        log_line(&logger, "after the restart");
        let line = received(&second);
        assert!(line.contains("after the restart"), "{line}");
    }

    #[test]
    fn a_record_with_no_syslog_listening_is_dropped_and_the_next_one_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let first = listen(&path);
        let logger = SyslogLogger::new(SyslogSocket::At(path.clone())).unwrap();
        drop(first);
        std::fs::remove_file(&path).unwrap();
        log_line(&logger, "nobody listens");
        let second = listen(&path);
        log_line(&logger, "listening again");
        assert!(received(&second).contains("listening again"));
    }
}
