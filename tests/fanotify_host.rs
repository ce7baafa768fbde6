//! The fanotify front end against the host's kernel: a real pre-content group, real sparse
//! files on the filesystem of the target dir, readers in other processes (events of our own
//! process are allowed unfilled by design, see `ondemand::fanotify`).
//!
//! Needs root (CAP_SYS_ADMIN) and a kernel with FAN_PRE_ACCESS (6.14+ with
//! CONFIG_FANOTIFY_ACCESS_PERMISSIONS) on a filesystem that supports pre-content events (ext4,
//! xfs, btrfs); set CACHEFILESD_NO_FANOTIFY=1 to skip it elsewhere (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::engine::{Engine, Opener};
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::ondemand::sources::{Blob, FetchError};
use common::fanotify::pattern;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Harness {
    _dir: tempfile::TempDir,
    src: PathBuf,
    cache: PathBuf,
    group: Group,
    engine: Engine<Fanotify>,
}

/// `None` when the run asked to skip (CACHEFILESD_NO_FANOTIFY).
fn harness(readahead: u64) -> Option<Harness> {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return None;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = dir.path().join("src");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&cache).unwrap();
    let mut map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", src.display()),
    )
    .unwrap();
    map.fetch.workers = 2;
    map.fetch.readahead = readahead;
    let group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    let engine = Engine::new(map, Arc::new(|| {}));
    Some(Harness {
        _dir: dir,
        src,
        cache,
        group,
        engine,
    })
}

impl Harness {
    /// Runs the loop thread's two steps until `done` (10 s at most).
    fn pump_until(&mut self, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            {
                let mut fds = [PollFd::new(self.group.as_fd(), PollFlags::POLLIN)];
                poll(&mut fds, PollTimeout::from(5u8)).unwrap();
            }
            self.engine.drain_group(&mut self.group).unwrap();
            self.engine.drain_done(&mut self.group).unwrap();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
        }
    }

    fn attach(&mut self, fsid: &str) -> (u32, PathBuf) {
        let path = self.cache.join(fsid);
        let id = self
            .engine
            // As EROFS names a blob mounted without domain_id: the fsid is its own domain.
            .attach(&mut self.group, &path, fsid.as_bytes(), fsid.as_bytes())
            .unwrap();
        self.pump_until("the attach", |h| h.engine.objects().contains_key(&id));
        (id, path)
    }

    /// Runs `cmd` in a child process while serving its events.
    fn run(&mut self, cmd: &mut Command) -> Output {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.pump_until("the reader", |_| child.try_wait().unwrap().is_some());
        child.wait_with_output().unwrap()
    }
}

fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

#[test]
fn reads_of_a_marked_sparse_file_are_filled_then_served_from_it() {
    let Some(mut h) = harness(0) else { return };
    let data = pattern(5 << 20, 7);
    std::fs::write(h.src.join("blob"), &data).unwrap();
    let (id, file) = h.attach("blob");
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 5 << 20);
    assert_eq!(allocated(&file), 0, "attached as a hole");

    // One page in the middle: only what the reader's range needs is fetched.
    let out = h.run(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["bs=4096", "skip=300", "count=1", "status=none"]),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, data[300 * 4096..301 * 4096]);
    let first = h.engine.stats.bytes_written;
    assert!((4096..=128 << 10).contains(&first), "fetched {first}");
    assert!(h.group.stats.events >= 1);

    // The whole file, compared byte for byte with the source by another process.
    let out = h.run(Command::new("cmp").arg(h.src.join("blob")).arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(h.engine.stats.bytes_written >= (5 << 20) - first);
    assert_eq!(h.engine.stats.reads_failed, 0);

    // Complete now: unmarked, so a second reader reads the file without an event.
    assert!(h.group.is_complete(id), "{:?}", h.group.stats);
    let written = h.engine.stats.bytes_written;
    let events = h.group.stats.events;
    let out = h.run(Command::new("cmp").arg(h.src.join("blob")).arg(&file));
    assert!(out.status.success());
    assert_eq!(
        h.engine.stats.bytes_written, written,
        "nothing fetched again"
    );
    assert_eq!(h.group.stats.events, events, "no event for a complete blob");
    assert_eq!(h.engine.in_flight(), 0);
    assert!(
        h.engine.fds().len() == 1,
        "only the blob's own fd stays open"
    );
}

#[test]
fn a_fill_that_fails_is_eio_for_the_reader_never_zeros() {
    let Some(mut h) = harness(0) else { return };
    let data = pattern(1 << 20, 9);
    std::fs::write(h.src.join("shrinks"), &data).unwrap();
    let (_, file) = h.attach("shrinks");
    // The source loses its second half after telling its size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(h.src.join("shrinks"))
        .unwrap()
        .set_len(512 << 10)
        .unwrap();
    let out = h.run(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["bs=4096", "skip=200", "count=1", "status=none"]),
    );
    assert!(
        !out.status.success(),
        "the read succeeded: {:?}",
        out.stdout
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("Input/output error"), "{stderr}");
    assert!(out.stdout.is_empty(), "no bytes reached the reader");
    assert_eq!(h.engine.stats.reads_failed, 1);

    // The half that is still there is served.
    let out = h.run(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["bs=4096", "skip=10", "count=1", "status=none"]),
    );
    assert!(out.status.success());
    assert_eq!(out.stdout, data[10 * 4096..11 * 4096]);
    assert_eq!(h.engine.in_flight(), 0);
}

#[test]
fn a_blob_with_no_source_is_not_attached_and_its_file_raises_nothing() {
    let Some(mut h) = harness(0) else { return };
    let path = h.cache.join("missing");
    let id = h
        .engine
        .attach(&mut h.group, &path, b"missing", b"missing")
        .unwrap();
    h.pump_until("the refusal", |h| h.engine.stats.opens_failed == 1);
    assert!(!h.engine.objects().contains_key(&id));
    let out = h.run(Command::new("cat").arg(&path));
    assert!(out.status.success());
    assert_eq!(h.group.stats.events, 0, "no mark was left on the file");
}

/// Says it has 64 KiB; any read panics, as a buggy source or HTTP client would.
struct PanickingBlob;

impl Blob for PanickingBlob {
    fn size(&self) -> u64 {
        64 << 10
    }
    fn read_exact_at(&self, _off: u64, _buf: &mut [u8]) -> Result<(), FetchError> {
        panic!("test: a blob whose read panics");
    }
    fn describe(&self) -> String {
        "panicking blob".into()
    }
    fn is_remote(&self) -> bool {
        false
    }
}

#[test]
fn a_fill_that_panics_is_eio_through_the_dropped_reply() {
    let Some(mut h) = harness(0) else { return };
    let map = h.engine.map().clone();
    let opener: Opener = Arc::new(|_, _| Ok(Box::new(PanickingBlob)));
    h.engine = Engine::with_opener(map, Arc::new(|| {}), opener);
    let (_, file) = h.attach("boom");
    let out = h.run(Command::new("cat").arg(&file));
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Input/output error"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert_eq!(h.engine.stats.reads_failed, 1);
    assert_eq!(h.engine.in_flight(), 0);
}

#[test]
fn a_detached_blob_raises_no_more_events() {
    let Some(mut h) = harness(0) else { return };
    std::fs::write(h.src.join("gone"), pattern(64 << 10, 3)).unwrap();
    let (id, file) = h.attach("gone");
    h.engine.detach(&mut h.group, id);
    assert!(!h.engine.objects().contains_key(&id));
    assert!(h.engine.fds().is_empty(), "the blob's fd was closed");
    let out = h.run(Command::new("cat").arg(&file));
    assert!(out.status.success());
    // Unmarked, the file is what it is on disk: a hole.
    assert_eq!(out.stdout, vec![0u8; 64 << 10]);
    assert_eq!(h.group.stats.events, 0);
    assert_eq!(h.engine.stats.bytes_written, 0);
}

/// `dd` of `len` bytes at `off` of `file`, by another process; its status, with the bytes
/// read as its stdout (through a file: a pipe would fill up while the reader waits on us).
fn read_range(h: &mut Harness, file: &Path, off: u64, len: u64, bs: u64) -> Output {
    let copy = h.cache.with_file_name("read-range");
    let _ = std::fs::remove_file(&copy);
    let mut out = h.run(
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .arg(format!("of={}", copy.display()))
            .arg(format!("skip={off}"))
            .arg(format!("count={len}"))
            .arg(format!("bs={bs}"))
            .args(["iflag=skip_bytes,count_bytes", "status=none"]),
    );
    out.stdout = std::fs::read(&copy).unwrap_or_default();
    out
}

#[test]
fn no_range_is_allowed_before_it_is_in_the_file_whatever_the_order_of_reads() {
    // Readahead on, so that fills run past what events asked for, and reads that start in
    // filled ranges and end in holes (and the reverse), of odd sizes, at the blob's end.
    let Some(mut h) = harness(256 << 10) else {
        return;
    };
    let len = 8u64 << 20;
    let data = pattern(len as usize - 1000, 11);
    std::fs::write(h.src.join("odd"), &data).unwrap();
    let (id, file) = h.attach("odd");
    let size = data.len() as u64;
    // The file is the blob to a whole page: zeros after the blob's end.
    let mut padded = data.clone();
    padded.resize(len as usize, 0);
    let check = |h: &mut Harness, off: u64, n: u64| {
        let out = read_range(h, &file, off, n, 64 << 10);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let end = (off + n).min(len) as usize;
        assert!(
            out.stdout == padded[off as usize..end],
            "bytes {off}..{end} differ from the source"
        );
    };
    for (off, n) in [
        (3 << 20, 5000),
        ((3 << 20) - 4096, 8192),
        (0, 1),
        (size - 10, 10),
        ((5 << 20) + 4095, 2),
        ((3 << 20) + 200_000, 300_000),
        (1 << 20, 3 << 20),
        (size - 70_000, 70_000),
    ] {
        check(&mut h, off, n);
    }
    assert!(h.group.stats.present > 0, "{:?}", h.group.stats);
    // Attached again, the map is read from the file: what is there is used, the holes are
    // still filled before a read sees them.
    h.engine.detach(&mut h.group, id);
    let fetched = h.engine.stats.bytes_written;
    let (_, again) = h.attach("odd");
    assert_eq!(again, file);
    for (off, n) in [
        ((3 << 20) - 100, 200),
        ((5 << 20) + 4000, 1 << 20),
        (6 << 20, 2 << 20),
        (4096, 12 << 10),
    ] {
        check(&mut h, off, n);
    }
    assert!(
        h.engine.stats.bytes_written > fetched,
        "the holes were fetched"
    );
    let out = h.run(
        Command::new("cmp")
            .arg(h.src.join("odd"))
            .arg(&file)
            .arg("-n")
            .arg(size.to_string()),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(h.engine.stats.reads_failed, 0);
}

#[test]
fn a_failed_fill_leaves_its_range_unfilled_and_it_is_fetched_again() {
    let Some(mut h) = harness(0) else { return };
    let data = pattern(3 << 20, 13);
    std::fs::write(h.src.join("flaky"), &data).unwrap();
    let (_, file) = h.attach("flaky");
    let src = std::fs::OpenOptions::new()
        .write(true)
        .open(h.src.join("flaky"))
        .unwrap();
    // The source loses its end after telling its size: a fill of 2 MiB from 0 writes its
    // first MiB (one chunk), then fails.
    src.set_len(1536 << 10).unwrap();
    // One read, one event for all of it.
    let out = read_range(&mut h, &file, 0, 2 << 20, 2 << 20);
    assert!(!out.status.success(), "the read succeeded");
    assert!(out.stdout.is_empty(), "no bytes reached the reader");
    let out = read_range(&mut h, &file, 1600 << 10, 4096, 4096);
    assert!(!out.status.success(), "the read succeeded");
    assert_eq!(h.engine.stats.reads_failed, 2);
    // Whole again: the same ranges are fetched, never allowed as they are (zeros).
    use std::os::unix::fs::FileExt;
    src.write_all_at(&data[1536 << 10..], 1536 << 10).unwrap();
    let before = h.engine.stats.bytes_written;
    for (off, n) in [(1600u64 << 10, 4096u64), (0, 2 << 20)] {
        let out = read_range(&mut h, &file, off, n, n);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == data[off as usize..(off + n) as usize],
            "bytes {off}..{} differ from the source",
            off + n
        );
    }
    assert!(h.engine.stats.bytes_written > before);
    assert_eq!(h.engine.stats.reads_failed, 2);
}

#[test]
fn events_inside_what_a_fill_read_ahead_are_answered_from_the_map() {
    let Some(mut h) = harness(2 << 20) else {
        return;
    };
    let data = pattern(32 << 20, 17);
    std::fs::write(h.src.join("seq"), &data).unwrap();
    let (id, file) = h.attach("seq");
    let out = h.run(Command::new("cmp").arg(h.src.join("seq")).arg(&file));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let g = h.group.stats.clone();
    let fetches = h.engine.stats.reads;
    // The file asked (SEEK_HOLE) at most once per fetch, for the readahead it left behind
    // (and once more per fetch that raced another's), not per event.
    assert!(g.events > 4 * fetches, "{g:?}, {fetches} fetches");
    assert!(
        g.lookups <= 2 * (fetches + g.ahead),
        "{g:?}, {fetches} fetches"
    );
    // A sequential reader is filled ahead of, in the background, after its first fetches.
    assert!(g.ahead > 0, "{g:?}");
    assert!(fetches < 8, "{g:?}, {fetches} fetches");
    assert!(h.group.is_complete(id), "{g:?}");
}

#[test]
fn concurrent_readers_of_one_range_get_its_bytes_and_it_is_fetched_about_once() {
    let Some(mut h) = harness(1 << 20) else {
        return;
    };
    let data = pattern(16 << 20, 19);
    std::fs::write(h.src.join("two"), &data).unwrap();
    let (_, file) = h.attach("two");
    let mut readers: Vec<std::process::Child> = (0..3)
        .map(|_| {
            Command::new("cmp")
                .arg(h.src.join("two"))
                .arg(&file)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    h.pump_until("three readers", |_| {
        readers.iter_mut().all(|c| c.try_wait().unwrap().is_some())
    });
    for c in readers {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    assert_eq!(h.engine.stats.reads_failed, 0);
    let fetched = h.engine.stats.bytes_written;
    // Readers inside a fill in flight wait for it instead of fetching their range again;
    // only readahead past what a fill was asked for may be written twice.
    assert!(
        fetched < (16 << 20) * 3 / 2,
        "{fetched} bytes fetched, {:?}",
        h.group.stats
    );
}
