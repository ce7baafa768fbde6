//! Background prefetch on the fanotify front end, against the host's kernel: an attached
//! blob is filled with no reader at all and then goes through the same completion as a blob
//! read whole (unmarked, recorded in its xattr); a detach stops a prefetch under way.
//!
//! Needs root and a kernel with FAN_PRE_ACCESS (6.14+) on a filesystem with pre-content
//! events (ext4, xfs, btrfs); CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::fanotify::COMPLETE_XATTR;
use common::fanotify::{pattern, Running};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn query(socket: &Path, request: &str) -> String {
    cachefilesd_rs::control::query(socket, request, Duration::from_secs(5)).unwrap()
}

fn attach(socket: &Path, fsid: &str) -> PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_cachefilesctl"))
        .args(["--dir", "/nonexistent", "--socket"])
        .arg(socket)
        .args(["attach", fsid])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim_end())
}

/// The number after `label` in the first line of `status` that starts with `line`.
fn counter(status: &str, line: &str, label: &str) -> u64 {
    let l = status
        .lines()
        .find(|l| l.starts_with(line))
        .unwrap_or_else(|| panic!("no {line:?} line in {status}"));
    common::fanotify::number_after(l, label)
}

/// The daemon over `root` in fanotify mode serving `src/{fsid}` with `prefetch = "all"` at
/// `rate` bytes/s, with its control socket at `socket`.
fn start(root: &Path, src: &Path, socket: &Path, rate: u64) -> Running {
    common::fanotify::start(
        root,
        socket,
        &format!(
            "frontend = \"fanotify\"\n[[source]]\npath = \"{}/{{fsid}}\"\nprefetch = \"all\"\n[fetch]\nreadahead = 0\nprefetch_rate = {rate}\n",
            src.display()
        ),
    )
}

fn setup() -> Option<(tempfile::TempDir, PathBuf, PathBuf, PathBuf)> {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return None;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = t.path().join("fscache");
    let src = t.path().join("src");
    for d in ["cache", "graveyard"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir(&src).unwrap();
    let socket = t.path().join("ctl.sock");
    Some((t, root, src, socket))
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn an_attached_blob_is_prefetched_and_completed_with_no_reader() {
    let Some((_t, root, src, socket)) = setup() else {
        return;
    };
    let data = pattern((3 << 20) + 1000, 21);
    std::fs::write(src.join("app"), &data).unwrap();
    let daemon = start(&root, &src, &socket, 0);
    let file = attach(&socket, "app");
    wait_for("the prefetch to complete the blob", || {
        counter(&query(&socket, "status"), "fanotify:", "completed") == 1
    });
    let status = query(&socket, "status");
    // Nobody read it: no event, no READ; the completion came from the prefetch.
    assert_eq!(counter(&status, "fanotify:", "events"), 0, "{status}");
    assert_eq!(counter(&status, "fanotify:", "fetched"), 0, "{status}");
    assert_eq!(counter(&status, "prefetch:", "completed"), 1, "{status}");
    let padded = data.len().div_ceil(4096) as u64 * 4096;
    assert_eq!(counter(&status, "prefetch:", "fetched"), padded, "{status}");
    let recorded = xattr_of(&file);
    assert_eq!(recorded, padded.to_string());
    // Unmarked: another process reads it whole without raising a single event.
    let read = Command::new("cat").arg(&file).output().unwrap();
    assert_eq!(&read.stdout[..data.len()], &data[..]);
    let status = query(&socket, "status");
    assert_eq!(counter(&status, "fanotify:", "events"), 0, "{status}");
    daemon.stop();
}

#[test]
fn detach_stops_a_prefetch_under_way() {
    let Some((_t, root, src, socket)) = setup() else {
        return;
    };
    // 4 MiB at 1 MiB/s: at least 3 s to complete.
    let data = pattern(4 << 20, 5);
    std::fs::write(src.join("app"), &data).unwrap();
    let daemon = start(&root, &src, &socket, 1 << 20);
    let file = attach(&socket, "app");
    wait_for("the prefetch to start", || {
        counter(&query(&socket, "status"), "prefetch:", "prefetch:") == 1
    });
    let reply = query(&socket, &format!("detach {}", file.display()));
    assert_eq!(reply.trim_end(), format!("ok {}", file.display()));
    let status = query(&socket, "status");
    assert_eq!(counter(&status, "prefetch:", "prefetch:"), 0, "{status}");
    assert_eq!(counter(&status, "prefetch:", "stopped"), 1, "{status}");
    // Long after the prefetch would have finished, it has not: nothing completed it.
    std::thread::sleep(Duration::from_secs(5));
    let status = query(&socket, "status");
    assert_eq!(counter(&status, "prefetch:", "completed"), 0, "{status}");
    assert!(
        counter(&status, "prefetch:", "fetched") < 4 << 20,
        "the whole blob was fetched after the detach: {status}"
    );
    daemon.stop();
}

fn xattr_of(file: &Path) -> String {
    let f = std::fs::File::open(file).unwrap();
    let v = cachefilesd_rs::cachedir::xattr::get_named(&f, COMPLETE_XATTR)
        .unwrap()
        .unwrap_or_else(|| panic!("no {COMPLETE_XATTR} on {}", file.display()));
    String::from_utf8(v).unwrap()
}
