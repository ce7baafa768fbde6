//! A failed read of the fanotify group must not strand the events queued behind it.
//!
//! The daemon's loop is edge-triggered (mio): the group is read once per wake-up until it
//! says EAGAIN. A read that fails (EMFILE: the kernel cannot open the event's file in our
//! process) consumes and denies one event; the events behind it raise no new wake-up, so
//! unless reading goes on, their readers wait until some other event arrives.
//!
//! Alone in its binary: it lowers the process's open-file limit. Needs root and a kernel
//! with FAN_PRE_ACCESS (6.14+); CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

use cachefilesd_rs::ondemand::engine::Engine;
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The lowest fd number not open in this process: with the limit there, no new fd fits.
fn lowest_free_fd() -> u64 {
    (0..).find(|n| !fd_is_open(*n)).unwrap()
}

fn fd_is_open(fd: u64) -> bool {
    nix::fcntl::fcntl(fd as i32, nix::fcntl::FcntlArg::F_GETFD).is_ok()
}

#[test]
fn events_queued_behind_a_failed_read_are_still_answered() {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return;
    }
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let src = dir.path().join("src");
    let cache = dir.path().join("cache");
    std::fs::create_dir(&src).unwrap();
    std::fs::create_dir(&cache).unwrap();
    std::fs::write(src.join("blob"), vec![7u8; 1 << 20]).unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", src.display()),
    )
    .unwrap();
    let mut group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    let mut engine: Engine<Fanotify> = Engine::new(map, Arc::new(|| {}));
    let file = cache.join("blob");
    let id = engine.attach(&mut group, &file, b"blob", b"blob").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.objects().contains_key(&id) {
        assert!(Instant::now() < deadline, "the attach");
        std::thread::sleep(Duration::from_millis(5));
        engine.drain_done(&mut group).unwrap();
    }

    // Two readers, each waiting for the answer to its event: both queued before we read.
    let reader = |skip: &str| -> Child {
        Command::new("dd")
            .arg(format!("if={}", file.display()))
            .args(["bs=4096", "count=1", &format!("skip={skip}"), "status=none"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut readers = [reader("0"), reader("100")];
    std::thread::sleep(Duration::from_millis(500));

    // As the daemon waits: edge-triggered.
    let mut poll = Poll::new().unwrap();
    let fan = group.as_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fan), Token(0), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(8);

    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free_fd(), hard).unwrap();
    let mut read_errors = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let done = loop {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if !events.is_empty() && engine.drain_group(&mut group).is_err() {
            // The daemon logs it and goes on waiting (`Engine::on_group_event`).
            read_errors += 1;
        }
        let _ = engine.drain_done(&mut group);
        if readers.iter_mut().all(|r| r.try_wait().unwrap().is_some()) {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
    };
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    for r in &mut readers {
        let _ = r.kill();
        let _ = r.wait();
    }
    assert!(read_errors >= 1, "the open-file limit did not fail a read");
    assert!(done, "a reader was left waiting for its answer");
}
