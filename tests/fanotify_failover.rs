//! A worker killed mid-read, against the host's kernel: the fanotify group is held by another
//! process (this test, as the `--supervise` supervisor or systemd's fd store holds it), and a
//! successor taking the group answers what the dead worker owed. A reader blocked on an
//! unfilled range at the kill gets the right bytes; one whose event was read but never
//! recorded gets EIO; never zeros, never a hang.
//!
//! The workers are this test binary run again (`worker` below, acting only when
//! `FANOCRASH_WORKER` is set): real processes, so SIGKILL really kills the one that read the
//! events. The source is made slow by a second pre-content group held here, marking the
//! source file and never answering until the worker is dead.
//!
//! Needs root and a kernel with FAN_PRE_ACCESS (6.14+) on a filesystem with pre-content
//! events (ext4, xfs, btrfs); CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::fanotify::{Attach, BlobKey, Group, Lazy};
use cachefilesd_rs::ondemand::inflight::Record;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::fanotify::pattern;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::fanotify::{EventFFlags, Fanotify, InitFlags, MarkFlags, MaskFlags};
use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const FAN_PRE_ACCESS: u64 = 0x0010_0000;

/// The worker process: adopts the group at `FANOCRASH_GROUP_FD`, keeps its record at
/// `FANOCRASH_RECORD`, attaches the blob `blob` and serves until killed. Not a test of its
/// own: the tests below run it in a child process (`--ignored --exact worker`).
#[test]
#[ignore = "the worker process the failover tests start; not a test by itself"]
fn worker() {
    let fd =
        std::env::var_os("FANOCRASH_WORKER").expect("FANOCRASH_WORKER names the test's directory");
    let dir = PathBuf::from(fd);
    cachefilesd_rs::logging::init(true, 0);
    let fd: i32 = std::env::var("FANOCRASH_GROUP_FD")
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: the holder passed this open fd to us for the group; taken once.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut group = Group::adopt(fd).unwrap();
    group.keep_record(&dir.join("record"));
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "frontend = \"fanotify\"\n[fetch]\nworkers = 2\nreadahead = 0\n[[source]]\npath = \"{}/{{fsid}}\"\n",
            dir.join("src").display()
        ),
    )
    .unwrap();
    let mut lazy = Lazy::new(map, group, Arc::new(|| {}), &dir.join("cache"));
    let key = BlobKey::new(None, "blob").unwrap();
    let mut ready = false;
    loop {
        {
            let mut fds = [PollFd::new(lazy.group.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(5u8)).unwrap();
        }
        lazy.on_events().unwrap();
        lazy.on_completions().unwrap();
        if !ready {
            match lazy.attach(&key) {
                Attach::Ready(_) => {
                    ready = true;
                    std::fs::write(dir.join(format!("ready.{}", std::process::id())), b"").unwrap();
                }
                Attach::Pending => {}
                Attach::Failed(e) => panic!("{e}"),
            }
        }
    }
}

struct Holder {
    dir: tempfile::TempDir,
    group: Group,
    data: Vec<u8>,
}

fn holder() -> Option<Holder> {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return None;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::create_dir(dir.path().join("cache")).unwrap();
    let data = pattern(4 << 20, 11);
    std::fs::write(dir.path().join("src/blob"), &data).unwrap();
    let group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    // As the supervisor starts it: no event of this group has been read yet.
    let unread = Record {
        unread: true,
        ..Record::default()
    };
    cachefilesd_rs::ondemand::inflight::Writer::create(&dir.path().join("record"), unread).unwrap();
    Some(Holder { dir, group, data })
}

impl Holder {
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Starts a worker with the group (its fd passed as the supervisor passes it) and waits
    /// until it has attached the blob.
    fn start_worker(&self) -> Child {
        let child = self.spawn_worker();
        let ready = self.path(&format!("ready.{}", child.id()));
        wait_for("the worker's attach", || ready.exists());
        child
    }

    fn spawn_worker(&self) -> Child {
        let held = self.group.try_clone_fd().unwrap();
        // Inheritable in the child only: cleared of CLOEXEC on this copy, closed after spawn.
        nix::fcntl::fcntl(
            held.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
        )
        .unwrap();
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "worker",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("FANOCRASH_WORKER", self.dir.path())
            .env("FANOCRASH_GROUP_FD", held.as_raw_fd().to_string())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        drop(held);
        child
    }

    fn record(&self) -> Record {
        Record::parse(&std::fs::read(self.path("record")).unwrap()).unwrap()
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A reader of `count` pages from page `skip` of `file`, in a process of its own; its output
/// comes back through the returned channel.
fn reader(
    file: &Path,
    skip: u64,
    count: u64,
) -> std::sync::mpsc::Receiver<(bool, Vec<u8>, String)> {
    let mut child = Command::new("dd")
        .arg(format!("if={}", file.display()))
        .args([
            "bs=4096".to_string(),
            format!("skip={skip}"),
            format!("count={count}"),
            "status=none".to_string(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let ok = child.wait().unwrap().success();
        let _ = tx.send((ok, out, err));
    });
    rx
}

/// A permission group on `file` that answers nothing: whatever raises `mask` there waits
/// until the group is dropped (and is then allowed), which makes a source slow at will.
fn gate(file: &Path, mask: MaskFlags) -> Fanotify {
    let gate = Fanotify::init(
        InitFlags::FAN_CLASS_PRE_CONTENT | InitFlags::FAN_CLOEXEC,
        EventFFlags::O_RDONLY,
    )
    .unwrap();
    gate.mark(
        MarkFlags::FAN_MARK_ADD | MarkFlags::FAN_MARK_INODE,
        mask,
        None,
        Some(file),
    )
    .unwrap();
    gate
}

fn kill(mut child: Child) {
    let _ = child.kill();
    child.wait().unwrap();
}

#[test]
fn a_read_blocked_when_the_worker_dies_completes_with_the_right_bytes() {
    let Some(h) = holder() else { return };
    // The source is slow: every read of it waits on this group, which answers nothing.
    let gate = gate(
        &h.path("src/blob"),
        MaskFlags::from_bits_retain(FAN_PRE_ACCESS),
    );
    let first = h.start_worker();
    let file = h.path("cache/lazy/blob/blob");
    let done = reader(&file, 100, 16);
    // The worker read the event, recorded it and is stuck fetching it.
    wait_for("the event in the record", || {
        h.path("record").exists() && !h.record().events.is_empty()
    });
    assert!(done.try_recv().is_err(), "the read finished unfilled");
    kill(first);
    // The source answers again; the dead worker's group still holds the reader.
    drop(gate);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        done.try_recv().is_err(),
        "the read finished with the worker dead"
    );
    let second = h.start_worker();
    let got = done.recv_timeout(Duration::from_secs(20));
    // Each answer is written before its record entry goes: wait for the last one to go.
    if got.is_ok() {
        wait_for("an empty record", || h.record().events.is_empty());
    }
    kill(second);
    let (ok, out, err) = got.expect("the successor never answered the blocked read");
    assert!(ok, "the read failed: {err}");
    assert_eq!(out.len(), 16 * 4096);
    assert!(
        out == h.data[100 * 4096..116 * 4096],
        "the read saw other bytes than the blob's"
    );
}

#[test]
fn an_event_read_but_never_recorded_fails_with_eio_at_the_takeover() {
    let Some(h) = holder() else { return };
    let first = h.start_worker();
    kill(first);
    // A worker that died between reading an event and recording it: read here, never
    // answered, its fd closed (as the kernel closes a dead process's).
    let file = h.path("cache/lazy/blob/blob");
    let done = reader(&file, 0, 1);
    let mut buf = vec![0u8; 4096];
    wait_for("the event", || {
        let mut fds = [PollFd::new(h.group.as_fd(), PollFlags::POLLIN)];
        poll(&mut fds, PollTimeout::from(10u8)).unwrap() > 0
    });
    let n = nix::unistd::read(h.group.as_fd().as_raw_fd(), &mut buf).unwrap();
    assert!(n >= 24);
    let event_fd = i32::from_ne_bytes(buf[16..20].try_into().unwrap());
    assert!(event_fd >= 0);
    nix::unistd::close(event_fd).unwrap();
    assert!(h.record().events.is_empty());
    std::thread::sleep(Duration::from_millis(100));
    assert!(done.try_recv().is_err(), "the read finished unanswered");
    let second = h.start_worker();
    let got = done.recv_timeout(Duration::from_secs(20));
    kill(second);
    let (ok, out, err) = got.expect("the successor left the unrecorded read hanging");
    assert!(!ok, "the read succeeded ({} bytes)", out.len());
    assert!(out.is_empty(), "the read returned bytes");
    assert!(err.contains("Input/output error"), "{err}");
}

#[test]
fn a_read_while_the_successor_attaches_the_blob_again_waits_for_it() {
    let Some(h) = holder() else { return };
    let first = h.start_worker();
    kill(first);
    // The successor's source is slow to open: its attach stays pending until the gate goes.
    let gate = gate(&h.path("src/blob"), MaskFlags::FAN_OPEN_PERM);
    let second = h.spawn_worker();
    std::thread::sleep(Duration::from_millis(300));
    // The blob file is still marked (the group outlived the first worker): this read raises
    // an event the successor reads while its attach waits.
    let done = reader(&h.path("cache/lazy/blob/blob"), 40, 4);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        done.try_recv().is_err(),
        "the read finished before the attach"
    );
    drop(gate);
    let got = done.recv_timeout(Duration::from_secs(20));
    kill(second);
    let (ok, out, err) = got.expect("the read was never answered");
    assert!(ok, "the read failed: {err}");
    assert!(
        out == h.data[40 * 4096..44 * 4096],
        "the read saw other bytes than the blob's"
    );
}
