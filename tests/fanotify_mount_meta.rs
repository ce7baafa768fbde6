//! `cachefilesctl mount` of a fresh blob on the host's real kernel, every file compared with
//! its source. Where the kernel's EROFS reads metadata without fanotify pre-content events
//! (6.14-6.18) the tool must fill the blob whole before mounting it; where it reads it
//! through them (7.3) the mount stays lazy. The mount itself is the probe: the test asserts
//! on whichever verdict it reached, and that the bytes are right either way.
//!
//! Needs root, a kernel with FAN_PRE_ACCESS (6.14+), EROFS with file-backed mounts and
//! mkfs.erofs; it skips (saying so on stderr) without them, or when CACHEFILESD_NO_FANOTIFY
//! is set.

mod common;

use cachefilesd_rs::control::query;
use cachefilesd_rs::ondemand::fanotify::Group;
use common::fanotify::{ctl, number_after, pattern, Running};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Why this host cannot run the test, if it cannot.
fn unsupported() -> Option<String> {
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() {
        return Some("CACHEFILESD_NO_FANOTIFY is set".into());
    }
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    let filesystems = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems.split_whitespace().any(|f| f == "erofs") {
        let _ = Command::new("modprobe").arg("erofs").status();
        let again = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !again.split_whitespace().any(|f| f == "erofs") {
            return Some("no erofs in this kernel".into());
        }
    }
    if Command::new("mkfs.erofs").arg("--help").output().is_err() {
        return Some("no mkfs.erofs".into());
    }
    if let Err(e) = Group::new() {
        return Some(format!("{e} (a kernel before 6.14?)"));
    }
    None
}

/// Unmounts what is still mounted when the test ends early: the daemon (this process) goes
/// with the test, and an incomplete blob mounted without it would read zeros.
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// A tree whose files cross blocks, fill a block exactly, or hold nothing, in nested
/// directories with long names (metadata beyond the first block).
fn make_tree(root: &Path) {
    let sizes = [
        0usize,
        1,
        100,
        4095,
        4096,
        4097,
        12_345,
        65_536 + 7,
        (1 << 20) + 3,
        3 << 20,
    ];
    let mut n = 0u32;
    for d in 0..6 {
        let dir = root.join(format!("dir-{d}-{}", "x".repeat(40 + d)));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for (i, size) in sizes.iter().enumerate() {
            n += 1;
            let at = if i % 2 == 0 {
                dir.clone()
            } else {
                dir.join("sub")
            };
            let name = format!("file-{n:03}-{}", "y".repeat(i * 7));
            std::fs::write(at.join(name), pattern(*size / (d + 1) + d, n)).unwrap();
        }
    }
    std::os::unix::fs::symlink(
        "dir-0-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        root.join("link"),
    )
    .unwrap();
}

/// Compares the mounted tree with its source in another process (this one's reads are the
/// daemon's own, allowed unfilled by design): every file's bytes, every name.
fn assert_same_tree(tree: &Path, mnt: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(tree)
        .arg(mnt)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} differs from its source:\n{}{}",
        mnt.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // diff says nothing of two empty trees: the mount holds the files.
    let listed = Command::new("find")
        .arg(mnt)
        .args(["-type", "f"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&listed.stdout).lines().count(),
        60,
        "files under {}",
        mnt.display()
    );
}

/// Whether the file has a hole anywhere (a seek raises no event).
fn has_hole(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    let len = f.metadata().unwrap().len() as i64;
    let hole = nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekHole).unwrap();
    hole < len
}

fn meta_events(socket: &Path) -> String {
    query(socket, "meta-events", Duration::from_secs(5))
        .unwrap()
        .trim_end()
        .to_string()
}

/// The source tree, the cache, and a daemon serving `src/app*` (two copies of one EROFS
/// image of `tree`) through fanotify with its control socket at `socket`.
struct Setup {
    t: tempfile::TempDir,
    root: PathBuf,
    tree: PathBuf,
    socket: PathBuf,
    daemon: Running,
}

fn setup() -> Option<Setup> {
    setup_with("")
}

/// `setup` with `source` (TOML lines) added to the source's table.
fn setup_with(source: &str) -> Option<Setup> {
    if let Some(why) = unsupported() {
        eprintln!("skipped: {why}");
        return None;
    }
    // The target dir, not /tmp: /tmp may be tmpfs, which has no pre-content events.
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let root = t.path().join("fscache");
    let src = t.path().join("src");
    let tree = t.path().join("tree");
    for d in ["cache", "graveyard"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::create_dir(&src).unwrap();
    make_tree(&tree);
    let image = src.join("app1");
    let made = Command::new("mkfs.erofs")
        .arg("--quiet")
        .arg(&image)
        .arg(&tree)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    std::fs::copy(&image, src.join("app2")).unwrap();
    std::fs::copy(&image, src.join("app3")).unwrap();
    let socket = t.path().join("ctl.sock");
    // No readahead: the lazy path fills only what the mount and the readers ask for.
    let daemon: Running = common::fanotify::start(
        &root,
        &socket,
        &format!(
            "frontend = \"fanotify\"\n[[source]]\nfsid = \"app*\"\npath = \"{}/{{fsid}}\"\n{source}[fetch]\nreadahead = 0\n",
            src.display()
        ),
    );
    Some(Setup {
        t,
        root,
        tree,
        socket,
        daemon,
    })
}

/// Reads the blob's first block in another process (`dd`), as a reader would: through its
/// mark, so the daemon fills it.
fn read_first_block(blob: &Path) {
    let head = Command::new("dd")
        .arg(format!("if={}", blob.display()))
        .args(["of=/dev/null", "bs=4096", "count=1", "status=none"])
        .status()
        .unwrap();
    assert!(head.success());
}

/// Attaches `fsid` and has another process read its first block (the daemon fills it):
/// a blob whose first block is filled and the rest not, on which no mount can probe.
fn attach_with_first_block(socket: &Path, fsid: &str) -> PathBuf {
    let blob = attach_raw(socket, fsid);
    read_first_block(&blob);
    assert!(has_hole(&blob));
    blob
}

/// Attaches `fsid` through the socket, not `cachefilesctl attach`, which fills a blob whole
/// on a kernel known to need it: its file.
fn attach_raw(socket: &Path, fsid: &str) -> PathBuf {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let blob = loop {
        let reply = query(socket, &format!("attach {fsid}"), Duration::from_secs(5)).unwrap();
        match reply.trim_end().split_once(' ') {
            Some(("ok", path)) => break PathBuf::from(path),
            _ if reply.trim_end() == "pending" && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            _ => panic!("attach {fsid}: {reply}"),
        }
    };
    blob
}

#[test]
fn a_fresh_blob_mounted_with_cachefilesctl_reads_every_file_right() {
    let Some(Setup {
        t,
        root,
        tree,
        socket,
        daemon,
    }) = setup()
    else {
        return;
    };
    // A fresh blob: its first block is a hole when the mount is tried.
    let mnt1 = t.path().join("mnt1");
    std::fs::create_dir(&mnt1).unwrap();
    let (ok, out, err) = ctl(&socket, &["mount", "app1", mnt1.to_str().unwrap()]);
    let _guard1 = Mounted(mnt1.clone());
    assert!(ok, "cachefilesctl mount of a fresh blob failed: {out}{err}");
    let blob1 = root.join("lazy/app1/app1");
    let verdict = meta_events(&socket);
    eprintln!("this kernel's EROFS metadata events: {verdict}");
    match verdict.as_str() {
        // 6.14-6.18: filled whole before the mount, and the user was told why.
        "not-raised" => {
            assert!(!has_hole(&blob1), "mounted before it was whole");
            assert!(err.contains("filling the blob whole"), "{err}");
        }
        // 7.3: lazy. The 3 MiB files are not read yet: their ranges are still holes.
        "raised" => assert!(has_hole(&blob1), "filled whole on a lazy kernel"),
        other => panic!("the mount reached no verdict: {other:?}\n{err}"),
    }
    let (_, status, _) = ctl(&socket, &["status"]);
    assert!(
        status.contains(&format!("erofs metadata events: {verdict}")),
        "{status}"
    );
    // Every path read ranges the daemon's map did not hold: it asked the file.
    assert!(
        number_after(&status, "looked up in the file") >= 1,
        "{status}"
    );
    assert_same_tree(&tree, &mnt1);

    // The verdict is kept: a blob whose first block is filled and the rest not (no probe
    // possible) is mounted as the verdict says, and reads right too.
    let blob2 = attach_with_first_block(&socket, "app2");
    let mnt2 = t.path().join("mnt2");
    std::fs::create_dir(&mnt2).unwrap();
    let (ok, out, err) = ctl(&socket, &["mount", "app2", mnt2.to_str().unwrap()]);
    let _guard2 = Mounted(mnt2.clone());
    assert!(ok, "{out}{err}");
    assert_eq!(has_hole(&blob2), verdict == "raised", "{err}");
    assert_same_tree(&tree, &mnt2);

    // `cachefilesctl attach` (for fstab, a mount unit) gives a blob such a mount can use:
    // filled whole where the verdict says it must be, left lazy where not.
    let (ok, out, err) = ctl(&socket, &["attach", "app3"]);
    assert!(ok, "{out}{err}");
    let blob3 = PathBuf::from(out.trim_end());
    assert_eq!(has_hole(&blob3), verdict == "raised", "{err}");
    let same = Command::new("cmp")
        .arg(t.path().join("src/app3"))
        .arg(&blob3)
        .args([
            "-n",
            &std::fs::metadata(t.path().join("src/app3"))
                .unwrap()
                .len()
                .to_string(),
        ])
        .output()
        .unwrap();
    assert!(same.status.success(), "{same:?}");

    for mnt in [&mnt1, &mnt2] {
        let (ok, out, err) = ctl(&socket, &["umount", mnt.to_str().unwrap()]);
        assert!(ok, "{out}{err}");
    }
    let detached = query(&socket, "detach app3", Duration::from_secs(5)).unwrap();
    assert!(detached.starts_with("ok "), "{detached}");
    let (_, status, _) = ctl(&socket, &["status"]);
    assert!(status.contains("fanotify: 0 blobs attached"), "{status}");
    daemon.stop();
}

#[test]
fn with_no_verdict_a_partly_filled_blob_is_filled_whole_before_its_mount() {
    let Some(Setup {
        t,
        root: _,
        tree,
        socket,
        daemon,
    }) = setup()
    else {
        return;
    };
    let blob = attach_with_first_block(&socket, "app1");
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (ok, out, err) = ctl(&socket, &["mount", "app1", mnt.to_str().unwrap()]);
    let _guard = Mounted(mnt.clone());
    assert!(ok, "{out}{err}");
    // Safe on every kernel: whole before the mount, and nothing learnt (no probe).
    assert!(!has_hole(&blob), "mounted partly filled with no verdict");
    assert!(err.contains("filling it whole"), "{err}");
    assert_eq!(meta_events(&socket), "unknown");
    assert_same_tree(&tree, &mnt);
    let (ok, out, err) = ctl(&socket, &["umount", mnt.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    daemon.stop();
}

/// A superblock the daemon's prefetch wrote (no event asked for it) proves nothing of the
/// kernel's metadata events: a probe mount that raced such a fill on a kernel without them
/// read a real superblock and would report "raised", and every later mount would be lazy
/// and read zeros from its metadata holes. The daemon takes "raised" only for a blob whose
/// superblock a reader's event asked for.
#[test]
fn a_superblock_written_by_prefetch_is_no_evidence_of_metadata_events() {
    let Some(Setup {
        t: _t,
        socket,
        daemon,
        ..
    }) = setup_with("prefetch = [\"0-4096\"]\n")
    else {
        return;
    };
    let blob = attach_raw(&socket, "app1");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first_block_filled = |blob: &Path| {
        let f = std::fs::File::open(blob).unwrap();
        nix::unistd::lseek(f.as_raw_fd(), 0, nix::unistd::Whence::SeekHole).unwrap() > 0
    };
    while !first_block_filled(&blob) {
        assert!(
            std::time::Instant::now() < deadline,
            "the prefetch never wrote the first block"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(has_hole(&blob), "the prefetch wrote more than asked");
    let reply = query(&socket, RAISED_BY_APP1, Duration::from_secs(5)).unwrap();
    assert_eq!(meta_events(&socket), "unknown", "{reply}");
    // Once a reader (another process) has asked for it, the same report is taken.
    read_first_block(&blob);
    let reply = query(&socket, RAISED_BY_APP1, Duration::from_secs(5)).unwrap();
    assert_eq!(reply.trim_end(), "raised");
    daemon.stop();
}

/// What `cachefilesctl mount` tells the daemon after a probe mount of `app1` that found its
/// superblock filled.
const RAISED_BY_APP1: &str = "meta-events raised app1";

#[test]
fn a_restarted_daemon_keeps_the_verdict_of_its_boot() {
    use cachefilesd_rs::ondemand::fanotify::{Lazy, MetaEvents};
    use cachefilesd_rs::ondemand::sourcemap::SourceMap;
    if std::env::var_os("CACHEFILESD_NO_FANOTIFY").is_some() || Group::new().is_err() {
        eprintln!("skipped: no fanotify pre-content group here");
        return;
    }
    let t = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let run = t.path().join("run");
    let map = SourceMap::parse("t.toml", "[[source]]\npath = \"/nonexistent/{fsid}\"\n").unwrap();
    // As start.rs makes it: the record (and the verdict beside it) in the runtime dir.
    let lazy = |map: &SourceMap| {
        let mut group = Group::new().unwrap();
        group.keep_record(&run.join("fanotify-inflight"));
        Lazy::new(map.clone(), group, std::sync::Arc::new(|| {}), t.path())
    };
    let mut first = lazy(&map);
    assert_eq!(first.meta_events(), MetaEvents::Unknown);
    first.set_meta_events(MetaEvents::NotRaised);
    drop(first);
    let second = lazy(&map);
    assert_eq!(second.meta_events(), MetaEvents::NotRaised);
}
