//! Events that wait for a fill in flight (`Group::waiting`) share its outcome: when the fill
//! fails, each waiter is denied with EIO at once, and the range is not fetched again for it
//! (the fill had the source's retries; fetching again per waiter would make the last one
//! wait once per waiter). Against the host's kernel, with readers in other processes.
//!
//! Needs root and a kernel with FAN_PRE_ACCESS (6.14+) on a filesystem with pre-content
//! events; CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::engine::{Engine, Opener};
use cachefilesd_rs::ondemand::fanotify::{Attach, BlobKey, Group, Lazy};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::ondemand::sources::{Blob, FetchError};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A blob whose reads are counted and held until the gate opens, then fail.
struct GatedBlob {
    reads: Arc<AtomicUsize>,
    open: Arc<AtomicBool>,
}

impl Blob for GatedBlob {
    fn size(&self) -> u64 {
        1 << 20
    }
    fn read_exact_at(&self, _off: u64, _buf: &mut [u8]) -> Result<(), FetchError> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.open.load(Ordering::SeqCst) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        Err(FetchError::Protocol("test: the source failed".into()))
    }
    fn describe(&self) -> String {
        "gated blob".into()
    }
    fn is_remote(&self) -> bool {
        false
    }
}

/// Runs the loop thread's steps until `done` (10 s at most).
fn pump_until(lazy: &mut Lazy, what: &str, mut done: impl FnMut(&mut Lazy) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let mut fds = [PollFd::new(lazy.group.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(5u8)).unwrap();
        }
        lazy.on_events().unwrap();
        lazy.on_completions().unwrap();
        if done(lazy) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

fn read_page(file: &std::path::Path) -> Child {
    Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args(["bs=4096", "skip=10", "count=1", "status=none"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn waiters_of_a_failed_fill_get_eio_and_are_not_fetched_again() {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = t.path().join("fscache");
    for d in ["cache", "graveyard"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let mut map =
        SourceMap::parse("t.toml", "[[source]]\npath = \"/nonexistent/{fsid}\"\n").unwrap();
    map.fetch.workers = 2;
    map.fetch.readahead = 0;
    let group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    let mut lazy = Lazy::new(map.clone(), group, Arc::new(|| {}), &root);
    let reads = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicBool::new(false));
    let opener: Opener = {
        let (reads, open) = (reads.clone(), open.clone());
        Arc::new(move |_, _| {
            Ok(Box::new(GatedBlob {
                reads: reads.clone(),
                open: open.clone(),
            }))
        })
    };
    lazy.engine = Engine::with_opener(map, Arc::new(|| {}), opener);
    let key = BlobKey::new(None, "gated").unwrap();
    let mut file = None;
    pump_until(&mut lazy, "the attach", |l| match l.attach(&key) {
        Attach::Ready(p) => {
            file = Some(p);
            true
        }
        Attach::Pending => false,
        Attach::Failed(e) => panic!("{e}"),
    });
    let file = file.unwrap();

    // The first reader's fill is held at the source; the second reader's event, for the
    // same page, waits for it.
    let mut first = read_page(&file);
    pump_until(&mut lazy, "the first fill", |_| {
        reads.load(Ordering::SeqCst) == 1
    });
    let mut second = read_page(&file);
    pump_until(&mut lazy, "the second event to wait", |l| {
        l.group.stats.waited == 1
    });
    open.store(true, Ordering::SeqCst);
    pump_until(&mut lazy, "both readers", |_| {
        first.try_wait().unwrap().is_some() && second.try_wait().unwrap().is_some()
    });
    for (which, child) in [("first", first), ("second", second)] {
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "the {which} reader got {:?}",
            out.stdout
        );
        assert!(stderr.contains("Input/output error"), "{which}: {stderr}");
        assert!(
            out.stdout.is_empty(),
            "{which}: no bytes reached the reader"
        );
    }
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "the range was fetched again for the waiter"
    );
    assert_eq!(lazy.engine.stats.reads_failed, 1);
    assert_eq!(lazy.engine.in_flight(), 0);
}
