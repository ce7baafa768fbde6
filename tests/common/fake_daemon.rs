//! The daemon's event loop driven by the fake device, as the integration tests and the
//! on-demand bench run it.

use cachefilesd_rs::config::Config;
use cachefilesd_rs::daemon::Serving;
use cachefilesd_rs::daemon::{Daemon, StopHandle};
use cachefilesd_rs::fake::{FakeDevice, FakeKernel};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use std::fs;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The daemon's loop running on its own thread, so that the caller can play the kernel
/// (through the `FakeKernel`) meanwhile.
pub struct DaemonThread {
    stop: StopHandle,
    thread: JoinHandle<(Result<(), String>, String)>,
}

impl DaemonThread {
    /// Builds the daemon for `cfg` on `device` (whose bind the caller has already recorded)
    /// and starts its loop; returns once the loop can be stopped.
    pub fn start(cfg: Config, device: FakeDevice, source_map: Option<SourceMap>) -> Self {
        Self::start_with(cfg, device, source_map, |_, _| {})
    }

    /// `start`, with `prepare` run on the daemon before its loop (as `start.rs` does after
    /// a takeover).
    pub fn start_with(
        cfg: Config,
        mut device: FakeDevice,
        source_map: Option<SourceMap>,
        prepare: impl FnOnce(&mut Daemon, &Config) + Send + 'static,
    ) -> Self {
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let serving = source_map.map_or(Serving::Classic, Serving::OnDemand);
            let mut daemon = Daemon::new(&cfg, &mut device, false, None, serving).unwrap();
            prepare(&mut daemon, &cfg);
            tx.send(daemon.stop_handle()).unwrap();
            let result = daemon.run().map_err(|e| e.to_string());
            (result, daemon.stats_line())
        });
        let stop = rx.recv().unwrap();
        DaemonThread { stop, thread }
    }

    /// Stops the loop and waits for it; panics unless `run` returned Ok. Returns the daemon's
    /// final stats line, which the callers check counters in.
    pub fn stop_expecting_ok(self) -> String {
        self.stop.stop();
        let (result, stats) = self.thread.join().unwrap();
        if let Err(e) = result {
            panic!("the daemon's loop failed: {e}");
        }
        stats
    }
}

/// The directories an on-demand daemon over `root` needs: `cache/` and `graveyard/` (made by
/// the kernel's bind on a real system) and `blobs/` for the local blob source.
pub fn make_ondemand_tree(root: &Path) {
    for d in ["cache", "graveyard", "blobs"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
}

/// An on-demand daemon over `root` (see `make_ondemand_tree`) serving `source_map`, without
/// culling or control socket, on a fake device that is already bound.
pub fn start_ondemand(root: &Path, source_map: SourceMap) -> (FakeKernel, DaemonThread) {
    let cfg = Config::parse(
        Path::new("test.conf"),
        format!(
            "dir {}\nondemand /unused.toml\nnocull\ncontrol none\n",
            root.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind ondemand".into()));
    let daemon = DaemonThread::start(cfg, device, Some(source_map));
    (kernel, daemon)
}

/// An anon fd stand-in: the fd number of a file the engine writes to (registered with the
/// fake kernel), and a separate handle to read back what it wrote.
pub fn anon_file(kernel: &FakeKernel, root: &Path, name: &str) -> (u32, fs::File) {
    let path = root.join(name);
    let w = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let r = fs::File::open(&path).unwrap();
    (kernel.anon_fd(w), r)
}

/// Polls `cond` until it holds; fails the test after 20 s, naming `what` it waited for.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
