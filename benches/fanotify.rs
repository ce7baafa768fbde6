//! The fanotify front end's cold read on the host: another process reads a marked sparse blob
//! file whole (`dd`, 104 KiB reads, about what EROFS asks of its backing file) while the real
//! engine and pre-content group fill it from a local source on /dev/shm; against a `dd` of a
//! complete copy on the same disk with its page cache dropped, and a plain copy of the source
//! into a new file there (what every fetch does to every byte, without events).
//!
//! Needs root and a 6.14+ kernel with pre-content events, and a target dir on ext4, xfs or
//! btrfs. Printed per run: times, events, ranges allowed at once, fetches, and the serving
//! process's CPU time (user, sys: the engine's loop and workers; the reader is apart).
//!
//! cargo bench --bench fanotify     # MB=n (default 256), RUNS=n (default 3)

mod common;

use cachefilesd_rs::ondemand::engine::Engine;
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::{cpu, env_or};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn dd(args: &[String]) {
    let st = Command::new("dd")
        .args(args)
        .arg("status=none")
        .status()
        .unwrap();
    assert!(st.success(), "dd {args:?}");
}

fn main() {
    let mb = env_or("MB", 256);
    let runs = env_or("RUNS", 3);
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let image = shm.path().join("image");
    dd(&[
        "if=/dev/urandom".into(),
        format!("of={}", image.display()),
        "bs=1M".into(),
        format!("count={mb}"),
    ]);
    let copy = dir.path().join("copy");
    std::fs::copy(&image, &copy).unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", shm.path().display()),
    )
    .unwrap();
    let (waker, woken) = UnixDatagram::pair().unwrap();
    waker.set_nonblocking(true).unwrap();
    woken.set_nonblocking(true).unwrap();
    let mut group = Group::new().expect("a pre-content group: root and a 6.14+ kernel");
    let mut engine: Engine<Fanotify> = Engine::new(
        map,
        Arc::new(move || {
            let _ = waker.send(&[1]);
        }),
    );
    let reader = |path: &Path| {
        vec![
            format!("if={}", path.display()),
            "of=/dev/null".into(),
            "bs=104k".into(),
        ]
    };
    println!("{mb} MiB, {runs} runs; reader: dd bs=104k");
    for r in 1..=runs {
        // The copy, cold: its page cache dropped (nocache with no count drops the whole file).
        dd(&[
            format!("if={}", copy.display()),
            "iflag=nocache".into(),
            "count=0".into(),
        ]);
        let t = Instant::now();
        dd(&reader(&copy));
        let plain = t.elapsed();

        let target = dir.path().join("copied");
        let t = Instant::now();
        dd(&[
            format!("if={}", image.display()),
            format!("of={}", target.display()),
            "bs=1M".into(),
            "conv=fsync".into(),
        ]);
        let copied = t.elapsed();
        std::fs::remove_file(&target).unwrap();

        let fsid = format!("b{r}");
        std::fs::hard_link(&image, shm.path().join(&fsid)).unwrap();
        let blob: PathBuf = cache.join(&fsid);
        let id = engine
            .attach(&mut group, &blob, fsid.as_bytes(), fsid.as_bytes())
            .unwrap();
        let mut buf = [0u8; 64];
        while !engine.objects().contains_key(&id) {
            std::thread::sleep(Duration::from_millis(1));
            engine.drain_done(&mut group).unwrap();
        }
        let (events0, present0) = (group.stats.events, group.stats.present);
        let (fetches0, bytes0) = (engine.stats.reads, engine.stats.bytes_written);
        let (u0, s0) = cpu();
        let t = Instant::now();
        let mut child = Command::new("dd")
            .args(reader(&blob))
            .arg("status=none")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        loop {
            let mut fds = [
                PollFd::new(group.as_fd(), PollFlags::POLLIN),
                PollFd::new(woken.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::from(50u8)).unwrap();
            while woken.recv(&mut buf).is_ok() {}
            engine.drain_group(&mut group).unwrap();
            engine.drain_done(&mut group).unwrap();
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "the reader failed");
                break;
            }
        }
        let fan = t.elapsed();
        let (u1, s1) = cpu();
        println!(
            "run {r}: copy cold {:.2} s, source-to-cache copy {:.2} s, fanotify {:.2} s ({:.2}x the copy's read): {} events, {} allowed at once, {} fetches, {} MiB fetched; CPU user {:.2} s, sys {:.2} s",
            plain.as_secs_f64(),
            copied.as_secs_f64(),
            fan.as_secs_f64(),
            plain.as_secs_f64() / fan.as_secs_f64(),
            group.stats.events - events0,
            group.stats.present - present0,
            engine.stats.reads - fetches0,
            (engine.stats.bytes_written - bytes0) >> 20,
            (u1 - u0).as_secs_f64(),
            (s1 - s0).as_secs_f64(),
        );
        engine.detach(&mut group, id);
        std::fs::remove_file(&blob).unwrap();
        std::fs::remove_file(shm.path().join(&fsid)).unwrap();
    }
}
