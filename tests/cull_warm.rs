//! Culling from a warm table: once the daemon has scanned, a later cull request is served
//! from the table it already holds (no scan first), and an object used since that scan is
//! spared. The classic-mode loop against the fake device.

mod common;

use cachefilesd_rs::config::Config;
use cachefilesd_rs::fake::FakeKernel;
use common::fake_daemon::{wait_for, DaemonThread};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn object(root: &Path, rel: &str, atime: i64) -> PathBuf {
    let p = root.join("cache").join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, vec![7u8; 8192]).unwrap();
    set_atime(&p, atime);
    p
}

fn set_atime(p: &Path, atime: i64) {
    utimensat(
        None,
        p,
        &TimeSpec::new(atime, 0),
        &TimeSpec::new(atime, 0),
        UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// The number after `label` in the stats line (`scans 3, ...`).
fn stat(stats: &str, label: &str) -> u64 {
    let at = stats
        .find(label)
        .unwrap_or_else(|| panic!("{label} in {stats}"))
        + label.len();
    stats[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

fn names(culled: &[PathBuf]) -> Vec<String> {
    culled
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_later_cull_starts_from_the_warm_table_and_spares_objects_used_since() {
    let t = tempfile::tempdir().unwrap();
    // Dx00 is the oldest, Dx49 the newest.
    let objects: Vec<PathBuf> = (0..50)
        .map(|i| {
            object(
                t.path(),
                &format!("Ierofs,x/@{:02x}/Dx{i:02}", i % 7),
                1000 + i,
            )
        })
        .collect();
    fs::create_dir_all(t.path().join("graveyard")).unwrap();
    let (kernel, device) = FakeKernel::new();
    // A first cull of one object: once it is done, the daemon has scanned and holds the rest
    // of the table.
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 1;
    });
    let text = format!("dir {}\ntag test\ncontrol none\n", t.path().display());
    let cfg = Config::parse(Path::new("test.conf"), text.as_bytes()).unwrap();
    let daemon = DaemonThread::start(cfg, device, None);
    wait_for("the first cull", || {
        kernel.with(|s| s.culled.len() == 1 && !s.status.cull)
    });
    assert_eq!(names(&kernel.with(|s| s.culled.clone())), ["Dx00"]);

    // Since that scan: Dx01 was used, and an object older than all others appeared. A fresh
    // scan would cull the newcomer first and Dx01 later; the warm table knows neither.
    set_atime(&objects[1], 5000);
    let newcomer = object(t.path(), "Ierofs,x/@00/Dnew", 10);
    kernel.with(|s| {
        s.status.cull = true;
        s.cull_until = 4;
    });
    kernel.wake();
    wait_for("three more culls", || {
        kernel.with(|s| s.culled.len() == 4 && !s.status.cull)
    });
    std::thread::sleep(Duration::from_millis(200));
    let stats = daemon.stop_expecting_ok();
    assert_eq!(
        names(&kernel.with(|s| s.culled.clone())),
        ["Dx00", "Dx02", "Dx03", "Dx04"],
        "culled from the table of the first scan, the used object skipped"
    );
    assert!(
        objects[1].exists(),
        "the object used since the scan was culled"
    );
    assert!(newcomer.exists());
    assert_eq!(stat(&stats, "scans "), 1, "{stats}");
    assert!(stat(&stats, "changed ") >= 1, "{stats}");
}
