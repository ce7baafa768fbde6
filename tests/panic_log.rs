//! A panic on any thread reaches the daemon's logger (syslog or stderr) with its thread,
//! location and message, before the thread or the process ends.

use log::{Log, Metadata, Record};
use std::sync::{Arc, Mutex};

struct Capture(Arc<Mutex<Vec<String>>>);

impl Log for Capture {
    fn enabled(&self, _: &Metadata) -> bool {
        true
    }
    fn log(&self, record: &Record) {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}: {}", record.level(), record.args()));
    }
    fn flush(&self) {}
}

#[test]
fn a_panicking_thread_is_logged() {
    let lines = Arc::new(Mutex::new(Vec::new()));
    log::set_boxed_logger(Box::new(Capture(lines.clone()))).unwrap();
    log::set_max_level(log::LevelFilter::Info);
    cachefilesd_rs::logging::log_panics();
    // Twice: the hook is installed once, so each panic is logged once.
    cachefilesd_rs::logging::log_panics();
    let worker = std::thread::Builder::new()
        .name("fetch-3".into())
        .spawn(|| panic!("hostile redirect: {}", "file:///etc/passwd"))
        .unwrap();
    assert!(worker.join().is_err());
    let lines = lines.lock().unwrap();
    let panics: Vec<&String> = lines.iter().filter(|l| l.contains("panic")).collect();
    assert_eq!(panics.len(), 1, "{lines:?}");
    let line = panics[0];
    assert!(
        line.starts_with("ERROR: panic in thread fetch-3 at "),
        "{line}"
    );
    assert!(line.contains("tests/panic_log.rs:"), "{line}");
    assert!(
        line.ends_with(": hostile redirect: file:///etc/passwd"),
        "{line}"
    );
}
