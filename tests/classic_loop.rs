//! The whole classic-mode event loop against the fake device over a cache tree laid out as
//! the kernel lays it out.

mod common;

use cachefilesd_rs::config::Config;
use cachefilesd_rs::daemon::Serving;
use cachefilesd_rs::daemon::{Daemon, DaemonError};
use cachefilesd_rs::fake::FakeKernel;
use common::fake_daemon::{wait_for, DaemonThread};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `cull` resolves against the process-wide cwd: culling tests must not overlap.
static CWD: Mutex<()> = Mutex::new(());

fn object(root: &Path, rel: &str, atime: i64) -> PathBuf {
    let p = root.join("cache").join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, vec![7u8; 8192]).unwrap();
    utimensat(
        None,
        &p,
        &TimeSpec::new(atime, 0),
        &TimeSpec::new(atime, 0),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
    p
}

fn config(dir: &Path, extra: &str) -> Config {
    let text = format!("dir {}\ntag test\ncontrol none\n{extra}", dir.display());
    Config::parse(Path::new("test.conf"), text.as_bytes()).unwrap()
}

#[test]
fn culls_the_oldest_unused_objects_until_the_kernel_is_satisfied() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("canary"), b"keep").unwrap();
    let mut objects = Vec::new();
    for i in 0..300i64 {
        let atime = 1_000_000 + (i * 7919) % 300;
        let rel = format!("I9p,host0,/@{:02x}/T{i},", (i * 31) % 256);
        objects.push((atime, rel.clone(), object(t.path(), &rel, atime)));
    }
    // Hostile entries: links out of the cache, a FIFO, a name the kernel never makes.
    std::os::unix::fs::symlink(outside.path(), t.path().join("cache/I9p,host0,/@ff/Dlink"))
        .unwrap();
    std::os::unix::fs::symlink(outside.path(), t.path().join("cache/Ievil")).unwrap();
    nix::unistd::mkfifo(
        &t.path().join("cache/I9p,host0,/@00/Dfifo"),
        nix::sys::stat::Mode::S_IRWXU,
    )
    .unwrap();
    fs::create_dir_all(t.path().join("graveyard/0000000100000002/@00")).unwrap();
    fs::write(t.path().join("graveyard/0000000100000002/@00/Dold"), b"x").unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        t.path().join("graveyard/0000000100000002/link"),
    )
    .unwrap();

    objects.sort();
    // The three oldest are held by the kernel.
    let in_use: Vec<Vec<u8>> = objects[..3]
        .iter()
        .map(|(_, rel, _)| rel.rsplit('/').next().unwrap().as_bytes().to_vec())
        .collect();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 40;
        s.in_use = in_use.iter().cloned().collect();
    });

    let cfg = config(t.path(), "culltable 12\n");
    let daemon = DaemonThread::start(cfg, device, None);
    wait_for("40 culls and an empty graveyard", || {
        kernel.with(|s| s.culled.len() == 40 && !s.status.cull)
            && fs::read_dir(t.path().join("graveyard")).unwrap().count() == 0
    });
    // Give the loop time to (wrongly) go on culling.
    std::thread::sleep(Duration::from_millis(300));
    let stats = daemon.stop_expecting_ok();
    assert!(stats.contains("culled 40"), "{stats}");

    let culled: Vec<PathBuf> = kernel.with(|s| s.culled.clone());
    // The fake records `cwd/NAME`, with cwd as the kernel would see it (symlinks resolved).
    let resolved = |p: &PathBuf| {
        p.parent()
            .unwrap()
            .canonicalize()
            .unwrap()
            .join(p.file_name().unwrap())
    };
    let culled: Vec<PathBuf> = culled.iter().map(resolved).collect();
    let expected: Vec<PathBuf> = objects[3..43].iter().map(|(_, _, p)| resolved(p)).collect();
    assert_eq!(culled, expected, "culled in LRU order, in-use ones skipped");
    for (_, _, p) in &objects[..3] {
        assert!(p.exists(), "in-use object {} was removed", p.display());
    }
    for (_, _, p) in &objects[43..] {
        assert!(
            p.exists(),
            "{} culled although the kernel was satisfied",
            p.display()
        );
    }
    assert_eq!(fs::read(outside.path().join("canary")).unwrap(), b"keep");
    assert!(
        kernel.with(|s| s.commands.iter().all(|c| !c.starts_with("inuse "))),
        "no inuse writes while scanning"
    );
}

#[test]
fn a_dead_cache_ends_the_loop_with_an_error() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    object(t.path(), "Ierofs,x/@00/Dx", 1);
    fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let (kernel, mut device) = FakeKernel::new();
    let cfg = config(t.path(), "");
    let mut daemon = Daemon::new(&cfg, &mut device, false, None, Serving::Classic).unwrap();
    kernel.with(|s| s.dead = true);
    let err = daemon.run().unwrap_err();
    assert!(matches!(err, DaemonError::CacheDead(_)), "{err}");
}

#[test]
fn nocull_never_culls() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let p = object(t.path(), "Ierofs,x/@00/Dx", 1);
    fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let (kernel, mut device) = FakeKernel::new();
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 1;
    });
    let cfg = config(t.path(), "nocull\n");
    let mut daemon = Daemon::new(&cfg, &mut device, false, None, Serving::Classic).unwrap();
    let stop = daemon.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        stop.stop();
    });
    daemon.run().unwrap();
    stopper.join().unwrap();
    assert!(p.exists());
    assert!(kernel.with(|s| s.commands.iter().all(|c| !c.starts_with("cull "))));
}

#[test]
fn a_cull_failing_with_eio_on_a_live_cache_pauses_and_resumes() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    for i in 0..5 {
        object(t.path(), &format!("Ierofs,x/@00/Dx{i}"), 100 + i);
    }
    fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 3;
        s.fail_next = vec![("cull", nix::errno::Errno::EIO)];
    });
    let cfg = config(t.path(), "");
    let daemon = DaemonThread::start(cfg, device, None);
    let started = Instant::now();
    wait_for("3 culls after the failure", || {
        kernel.with(|s| s.culled.len() == 3)
    });
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "culling paused after the EIO"
    );
    daemon.stop_expecting_ok();
    // The oldest object was retried after the pause, not skipped.
    let first = kernel.with(|s| s.culled[0].file_name().unwrap().to_owned());
    assert_eq!(first, "Dx0");
}

/// The number after `label` in the stats line (`scans 3, ...`).
fn stat(stats: &str, label: &str) -> u64 {
    let at = stats
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {stats}"))
        + label.len();
    let digits: String = stats[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Runs a classic daemon for 3 s over 20 objects named `name(i)`, of which the kernel holds
/// those `held`; returns the stats line and the number of cull commands written.
fn cull_for_3s(name: fn(usize) -> String, held: bool) -> (String, usize) {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let names: Vec<String> = (0..20).map(name).collect();
    for (i, n) in names.iter().enumerate() {
        object(t.path(), &format!("Ierofs,x/@00/{n}"), 100 + i as i64);
    }
    fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 1000;
        if held {
            s.in_use = names.iter().map(|n| n.clone().into_bytes()).collect();
        }
    });
    let daemon = DaemonThread::start(config(t.path(), ""), device, None);
    std::thread::sleep(Duration::from_secs(3));
    let stats = daemon.stop_expecting_ok();
    let culls = kernel.with(|s| s.commands.iter().filter(|c| c.starts_with("cull ")).count());
    (stats, culls)
}

#[test]
fn every_candidate_in_use_backs_off_instead_of_rescanning_at_once() {
    // The kernel wants room and holds every object (mounted on-demand blobs, say).
    let (stats, culls) = cull_for_3s(|i| format!("Dx{i}"), true);
    // The first scan and its 20 refused culls, then a retry after 1 s and after 2 s more.
    let scans = stat(&stats, "scans ");
    assert!((1..=4).contains(&scans), "{scans} scans in 3 s: {stats}");
    assert!(culls <= 4 * 20, "{culls} culls in 3 s: {stats}");
    assert_eq!(stat(&stats, "in use "), culls as u64, "{stats}");
}

#[test]
fn names_the_kernel_never_makes_are_neither_culled_nor_rescanned_at_once() {
    // A newline cannot be carried by the cull command, and the kernel never makes such a
    // name: the scan's object decoder leaves it out, so nothing is written or refused, and
    // an empty table does not make the loop rescan at once.
    let (stats, culls) = cull_for_3s(|i| format!("Dx\n{i}"), false);
    let scans = stat(&stats, "scans ");
    assert!((1..=4).contains(&scans), "{scans} scans in 3 s: {stats}");
    assert_eq!(culls, 0, "{stats}");
    assert_eq!(stat(&stats, "objects in last scan "), 0, "{stats}");
    assert_eq!(stat(&stats, "refused "), 0, "{stats}");
}

/// The report counts `graveyard/` without following a symlink swapped in for it (the daemon
/// opens nothing outside the cache root); it listed the link's target by path.
#[test]
fn the_graveyard_count_never_follows_a_symlink() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("fscache");
    for d in ["cache", "graveyard"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    fs::write(root.join("graveyard/0000000100000001"), b"x").unwrap();
    let outside = t.path().join("outside");
    fs::create_dir(&outside).unwrap();
    for i in 0..3 {
        fs::write(outside.join(format!("secret{i}")), b"x").unwrap();
    }
    let (kernel, mut device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind".into()));
    let daemon = Daemon::new(
        &config(&root, "nocull\n"),
        &mut device,
        true,
        None,
        Serving::Classic,
    )
    .unwrap();
    assert_eq!(daemon.report().graveyard_entries, 1);
    fs::rename(root.join("graveyard"), t.path().join("old-graveyard")).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("graveyard")).unwrap();
    assert_eq!(daemon.report().graveyard_entries, 0);
}

/// The percentage of the temporary directory's filesystem free for unprivileged users, as the
/// daemon's statfs sees it.
fn free_percent(dir: &Path) -> u64 {
    let st = nix::sys::statfs::statfs(dir).unwrap();
    st.blocks_available() * 100 / st.blocks().max(1)
}

/// Twenty objects of the loop tests' shape, and a kernel whose status line says `cull`.
fn bound_cache(root: &Path, cull: bool) -> (FakeKernel, cachefilesd_rs::fake::FakeDevice) {
    for i in 0..20i64 {
        object(root, &format!("I9p,host0,/@{i:02x}/T{i},"), 1_000_000 + i);
    }
    fs::create_dir_all(root.join("graveyard")).unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| {
        s.status.cull = cull;
        s.cull_until = if cull { usize::MAX } else { 0 };
    });
    (kernel, device)
}

#[test]
fn limits_edited_above_the_bound_ones_cull_before_the_kernel_asks() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let free = free_percent(t.path());
    assert!(
        free < 98,
        "the test needs a filesystem less than 98% free for its temporary directory ({free}% free)"
    );
    // The kernel bound the cache with the defaults and is content; the config now asks for
    // more free space than there is.
    let (kernel, device) = bound_cache(t.path(), false);
    let cfg = config(t.path(), "brun 99%\nbcull 98%\nbstop 97%\n");
    let daemon = DaemonThread::start_with(cfg, device, None, |d, c| d.follow_config_limits(c));
    wait_for("culls by the edited limits", || {
        kernel.with(|s| s.culled.len() >= 5)
    });
    let stats = daemon.stop_expecting_ok();
    assert!(!kernel.with(|s| s.status.cull), "the kernel never asked");
    assert!(stats.contains("culled"), "{stats}");
}

#[test]
fn limits_edited_below_the_bound_ones_stop_culling_the_kernel_asks_for() {
    let _cwd = CWD.lock().unwrap();
    let t = tempfile::tempdir().unwrap();
    let free = free_percent(t.path());
    assert!(
        free > 3,
        "the test needs a filesystem more than 3% free for its temporary directory ({free}% free)"
    );
    // The kernel, with the counts of its bind, asks for culling; by the edited limits there
    // is space enough.
    let (kernel, device) = bound_cache(t.path(), true);
    let cfg = config(t.path(), "brun 3%\nbcull 2%\nbstop 1%\n");
    let daemon = DaemonThread::start_with(cfg, device, None, |d, c| d.follow_config_limits(c));
    // Culling by the kernel's flag takes a few milliseconds here (the other tests).
    std::thread::sleep(Duration::from_millis(1500));
    daemon.stop_expecting_ok();
    assert_eq!(
        kernel.with(|s| s.culled.len()),
        0,
        "culled by the bound limits"
    );
}
