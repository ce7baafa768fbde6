//! A registry blob served through the fanotify front end and read whole: its digest check
//! must hash the blob, not the page-rounded file it is kept in.
//!
//! Needs root, a kernel with FAN_PRE_ACCESS (6.14+) on the target dir's filesystem, and
//! docker-registry; CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::engine::Engine;
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::servers::{sha256_hex, start_registry, upload_blob};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn pump_until(
    engine: &mut Engine<Fanotify>,
    group: &mut Group,
    what: &str,
    mut done: impl FnMut(&mut Engine<Fanotify>, &mut Group) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        {
            let mut fds = [PollFd::new(group.as_fd(), PollFlags::POLLIN)];
            poll(&mut fds, PollTimeout::from(5u8)).unwrap();
        }
        engine.drain_group(group).unwrap();
        engine.drain_done(group).unwrap();
        if done(engine, group) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
    }
}

#[test]
fn a_registry_blob_of_any_size_passes_its_digest_check_once_whole() {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return;
    }
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let reg_dir = t.path().join("registry");
    std::fs::create_dir(&reg_dir).unwrap();
    let registry = start_registry(&reg_dir);
    // Not a whole number of pages: the file holding it is longer, its tail zeros.
    let content: Vec<u8> = (0..(64 << 10) + 1000u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    upload_blob(registry.port, "lib/app", &content);
    let digest = sha256_hex(&content);
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "[[source]]\nregistry = \"http://127.0.0.1:{}\"\nrepository = \"lib/app\"\n",
            registry.port
        ),
    )
    .unwrap();
    let mut group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    let mut engine: Engine<Fanotify> = Engine::new(map, Arc::new(|| {}));
    let cache = t.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let path = cache.join(&digest);
    let id = engine
        .attach(&mut group, &path, digest.as_bytes(), digest.as_bytes())
        .unwrap();
    pump_until(&mut engine, &mut group, "the attach", |e, _| {
        e.objects().contains_key(&id)
    });

    // Another process reads it whole: filled, then found complete and checked.
    let mut reader = Command::new("cat")
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = reader.stdout.take().unwrap();
    let collect = std::thread::spawn(move || {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut { stdout }, &mut out).unwrap();
        out
    });
    pump_until(&mut engine, &mut group, "the reader", |_, _| {
        reader.try_wait().unwrap().is_some()
    });
    let out = collect.join().unwrap();
    assert_eq!(
        group.stats.digest_mismatches, 0,
        "a good blob failed its check"
    );
    assert!(reader.wait().unwrap().success());
    assert_eq!(&out[..content.len()], &content[..]);
    assert!(
        group.is_complete(id),
        "the whole blob was not found complete"
    );

    // And it stays readable.
    let again = Command::new("cat").arg(&path).output().unwrap();
    assert!(again.status.success(), "{:?}", again);
    assert_eq!(&again.stdout[..content.len()], &content[..]);
}
