//! The daemon in fanotify mode against the host's kernel: its loop reads the group, its
//! control socket attaches and detaches blobs, and `cachefilesctl attach` prints the file a
//! mount would use. Readers are other processes (the daemon's own reads are allowed
//! unfilled by design). The cache is bound classic on the fake device, as on 7.3.
//!
//! Needs root and a kernel with FAN_PRE_ACCESS (6.14+) on a filesystem with pre-content
//! events (ext4, xfs, btrfs); CACHEFILESD_NO_FANOTIFY=1 skips it (it says so on stderr).

mod common;

use cachefilesd_rs::ondemand::fanotify::Group;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::fanotify::{ctl, number_after, pattern, Running};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The daemon over `root` (bound classic on a fake device), serving `src/{fsid}` for fsids
/// `app*` through fanotify, with its control socket at `socket`.
fn start(root: &Path, src: &Path, socket: &Path) -> Running {
    common::fanotify::start(
        root,
        socket,
        &format!(
            "frontend = \"fanotify\"\n[[source]]\nfsid = \"app*\"\npath = \"{}/{{fsid}}\"\n[fetch]\nreadahead = 0\n",
            src.display()
        ),
    )
}

#[test]
fn the_daemon_attaches_fills_and_detaches_through_its_control_socket() {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = t.path().join("fscache");
    let src = t.path().join("src");
    for d in ["cache", "graveyard"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir(&src).unwrap();
    let data = pattern((3 << 20) + 1000, 11);
    std::fs::write(src.join("app"), &data).unwrap();
    let socket = t.path().join("ctl.sock");
    let daemon = start(&root, &src, &socket);
    let (ok, out, err) = ctl(&socket, &["attach", "app"]);
    assert!(ok, "{out}{err}");
    let file = PathBuf::from(out.trim_end());
    assert_eq!(file, root.join("lazy/app/app"));
    assert_eq!(
        std::fs::metadata(&file).unwrap().len(),
        data.len().div_ceil(4096) as u64 * 4096,
        "sized to whole pages"
    );
    // Attached again: the same file, no second attach.
    let (ok, again, _) = ctl(&socket, &["attach", "--domain", "app", "app"]);
    assert!(ok && again == out, "{again}");

    // Another process reads the whole blob: every byte comes from the source.
    let read = Command::new("cat").arg(&file).output().unwrap();
    assert!(read.status.success());
    assert_eq!(&read.stdout[..data.len()], &data[..]);
    assert!(read.stdout[data.len()..].iter().all(|&b| b == 0));
    let (_, status, _) = ctl(&socket, &["status"]);
    assert!(status.contains("fanotify: 1 blobs attached"), "{status}");
    let fetched = number_after(&status, "fetched");
    assert!(fetched >= 1, "{status}");
    assert_eq!(number_after(&status, "denied"), 0, "{status}");

    // Whole now: unmarked, so a second read is served from the file without an event.
    assert_eq!(number_after(&status, "completed"), 1, "{status}");
    let events = number_after(&status, "events");
    let read = Command::new("cat").arg(&file).output().unwrap();
    assert_eq!(&read.stdout[..data.len()], &data[..]);
    let (_, status, _) = ctl(&socket, &["status"]);
    assert_eq!(number_after(&status, "fetched"), fetched, "{status}");
    assert_eq!(number_after(&status, "events"), events, "{status}");

    // Names no source serves, or that are not names, are refused cleanly.
    let (ok, out, err) = ctl(&socket, &["attach", "other"]);
    assert!(!ok, "{out}");
    assert!(err.contains("no source served it"), "{err}");
    let (_, status, _) = ctl(&socket, &["status"]);
    assert!(status.contains("fanotify: 1 blobs attached"), "{status}");
    assert!(status.contains("attaches 2 (1 failed)"), "{status}");
    let (ok, _, err) = ctl(&socket, &["attach", "../../etc"]);
    assert!(!ok && err.contains("fsid"), "{err}");

    // Detached by path: its mark is gone (the count says so) and the file stays.
    let (ok, out, err) = ctl(&socket, &["umount", "/nonexistent-mountpoint"]);
    assert!(!ok, "{out}");
    assert!(err.contains("not a mount point"), "{err}");
    let reply = cachefilesd_rs::control::query(
        &socket,
        &format!("detach {}", file.display()),
        std::time::Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(reply.trim_end(), format!("ok {}", file.display()));
    let (_, status, _) = ctl(&socket, &["status"]);
    assert!(status.contains("fanotify: 0 blobs attached"), "{status}");
    assert!(file.exists());

    let stats = daemon.stop();
    assert!(stats.contains("fanotify: 0 blobs attached"), "{stats}");

    // A restart finds the completion recorded: attached unmarked, read without an event.
    let daemon = start(&root, &src, &socket);
    let (ok, out, err) = ctl(&socket, &["attach", "app"]);
    assert!(ok, "{out}{err}");
    let read = Command::new("cat").arg(&file).output().unwrap();
    assert_eq!(&read.stdout[..data.len()], &data[..]);
    let (_, status, _) = ctl(&socket, &["status"]);
    assert_eq!(number_after(&status, "complete at attach"), 1, "{status}");
    assert_eq!(number_after(&status, "events"), 0, "{status}");
    daemon.stop();
}

#[test]
fn detached_blobs_are_culled_oldest_first_and_attached_ones_never() {
    use cachefilesd_rs::ondemand::fanotify::{Attach, BlobKey, Lazy};
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        eprintln!("skipped: CACHEFILESD_NO_FANOTIFY is set");
        return;
    }
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = t.path().join("fscache");
    let src = t.path().join("src");
    for d in ["cache", "graveyard", "lazy/old", "lazy/older"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("app"), pattern(10000, 3)).unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", src.display()),
    )
    .unwrap();
    let group = Group::new().expect(
        "a fanotify pre-content group (root and a 6.14+ kernel; CACHEFILESD_NO_FANOTIFY=1 skips)",
    );
    let mut lazy = Lazy::new(map, group, std::sync::Arc::new(|| {}), &root);
    let key = BlobKey::new(None, "app").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let attached = loop {
        match lazy.attach(&key) {
            Attach::Ready(p) => break p,
            Attach::Pending => {
                assert!(std::time::Instant::now() < deadline, "attach timed out");
                std::thread::sleep(std::time::Duration::from_millis(5));
                lazy.on_completions().unwrap();
            }
            Attach::Failed(e) => panic!("{e}"),
        }
    };
    // The attached blob is the oldest of all: it must still never be culled.
    let at = |secs| TimeSpec::new(secs, 0);
    let touch = |p: &Path, secs| {
        utimensat(
            None,
            p,
            &at(secs),
            &at(secs),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap()
    };
    touch(&attached, 1_000);
    let older = root.join("lazy/older/b");
    let old = root.join("lazy/old/a");
    std::fs::write(&older, b"x").unwrap();
    std::fs::write(&old, b"y").unwrap();
    touch(&older, 2_000);
    touch(&old, 3_000);
    // A symlink in the tree is not a blob: never followed, never culled.
    std::os::unix::fs::symlink(&src, root.join("lazy/old/link")).unwrap();

    assert!(lazy.cull_one().unwrap().unwrap().ends_with("lazy/older/b"));
    assert!(!older.exists());
    assert!(lazy.cull_one().unwrap().unwrap().ends_with("lazy/old/a"));
    assert!(!old.exists());
    assert_eq!(lazy.cull_one().unwrap(), None);
    assert!(attached.exists());
    assert!(src.join("app").exists());
    assert_eq!(
        std::fs::read_dir(root.join("graveyard")).unwrap().count(),
        2
    );
}
