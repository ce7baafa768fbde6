//! The fanotify front end's daemon for host tests (root and a 6.14+ kernel): bound classic on
//! the fake device, as on 7.3, serving a source map through a real pre-content group, with
//! its control socket; and the blob contents those tests compare.

use cachefilesd_rs::config::Config;
use cachefilesd_rs::daemon::{Daemon, Serving, StopHandle};
use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::fanotify::Group;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use std::path::Path;

/// Bytes that differ at every offset, so a misplaced page cannot compare equal.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// The number after `label` in `text` (a counter of the `status` text).
pub fn number_after(text: &str, label: &str) -> u64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("{label:?} not in {text}"));
    text[at + label.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {text}"))
}

/// A daemon loop on its own thread.
pub struct Running {
    stop: StopHandle,
    thread: std::thread::JoinHandle<(Result<(), String>, String)>,
}

impl Running {
    /// Stops the loop; its final stats line. Panics unless the loop ended well.
    pub fn stop(self) -> String {
        self.stop.stop();
        let (result, stats) = self.thread.join().unwrap();
        result.unwrap();
        stats
    }
}

/// The daemon over `root` (culling off) serving `map` (a source map's text) through the
/// fanotify front end, with its control socket at `socket`.
pub fn start(root: &Path, socket: &Path, map: &str) -> Running {
    let cfg = Config::parse(
        Path::new("test.conf"),
        format!(
            "dir {}\nondemand /unused.toml\nnocull\ncontrol {}\n",
            root.display(),
            socket.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let map = SourceMap::parse("t.toml", map).unwrap();
    let (kernel, mut device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind".into()));
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let _kernel = kernel;
        let group = Group::new().expect(
            "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
        );
        let mut daemon = Daemon::new(
            &cfg,
            &mut device,
            true,
            None,
            Serving::Fanotify(map, Box::new(group)),
        )
        .unwrap();
        tx.send(daemon.stop_handle()).unwrap();
        let result = daemon.run().map_err(|e| e.to_string());
        (result, daemon.stats_line())
    });
    Running {
        stop: rx.recv().unwrap(),
        thread,
    }
}

/// Runs `cachefilesctl` against the daemon's control socket: (success, stdout, stderr).
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .args(["--dir", "/nonexistent", "--socket"])
        .arg(socket)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
