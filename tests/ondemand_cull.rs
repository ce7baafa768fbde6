//! On demand the kernel only hints that it wants culling; the daemon decides from statfs with
//! the kernel's hysteresis (`cull::signal::CullSignal::Statfs`). Here the limits are set above
//! what any real disk has free, so statfs says "cull" throughout and every object not held by
//! the kernel goes, oldest first.

mod common;

use cachefilesd_rs::config::Config;
use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::fake_daemon::{make_ondemand_tree, wait_for, DaemonThread};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use std::fs;
use std::path::Path;

#[test]
fn statfs_below_the_cull_limit_culls_on_demand_caches() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    make_ondemand_tree(root);
    let st = nix::sys::statfs::statfs(root).unwrap();
    if st.blocks_available() * 100 >= st.blocks() * 97 {
        eprintln!(
            "the filesystem under {} is over 97% free: nothing to show",
            root.display()
        );
        return;
    }
    let mut names = Vec::new();
    for i in 0..10i64 {
        let p = root.join(format!("cache/Ierofs,x/@{:02x}/Dblob{i}", i % 3));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![1u8; 4096]).unwrap();
        // Oldest first: blob9 is the least recently used.
        let atime = TimeSpec::new(1_000_000 - i, 0);
        utimensat(None, &p, &atime, &atime, UtimensatFlags::NoFollowSymlink).unwrap();
        names.push(format!("Dblob{i}"));
    }
    let cfg = Config::parse(
        Path::new("t.conf"),
        format!(
            "dir {}\nondemand /unused.toml\ncontrol none\nbrun 99%\nbcull 98%\nbstop 97%\n",
            root.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "[[source]]\nfsid = \"*\"\npath = \"{}/blobs/{{fsid}}\"\n",
            root.display()
        ),
    )
    .unwrap();
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| {
        s.commands.push("bind ondemand".into());
        // Two mounted blobs: the kernel refuses to cull them.
        s.in_use = ["Dblob9", "Dblob0"].map(|n| n.as_bytes().to_vec()).into();
    });
    let daemon = DaemonThread::start(cfg, device, Some(map));
    wait_for("8 culls", || kernel.with(|s| s.culled.len() == 8));
    // Let it try the held ones, and back off.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stats = daemon.stop_expecting_ok();
    assert!(stats.contains("culled 8,"), "{stats}");
    let culled: Vec<String> = kernel.with(|s| {
        s.culled
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    });
    let expected: Vec<String> = (1..9).rev().map(|i| format!("Dblob{i}")).collect();
    assert_eq!(
        culled, expected,
        "least recently used first, held ones skipped"
    );
    for held in ["Dblob9", "Dblob0"] {
        let left = fs::read_dir(root.join("cache/Ierofs,x"))
            .unwrap()
            .flat_map(|d| fs::read_dir(d.unwrap().path()).unwrap())
            .any(|e| e.unwrap().file_name() == held);
        assert!(left, "{held} was held and must stay");
    }
}

/// The device polls writable while the kernel's CULLING flag is set, and the kernel clears it
/// only at its next write once space is back: a hint that statfs contradicts (above the run
/// limits) is stale. Each one used to start culling anyway, and the first cull's refresh
/// stopped it: one object culled for nothing per device event.
#[test]
fn a_stale_kernel_hint_culls_nothing_while_statfs_shows_room() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    make_ondemand_tree(root);
    let st = nix::sys::statfs::statfs(root).unwrap();
    if st.blocks_available() * 100 < st.blocks() * 12 || st.files_free() * 100 < st.files() * 12 {
        eprintln!(
            "the filesystem under {} is under 12% free: nothing to show",
            root.display()
        );
        return;
    }
    for i in 0..10i64 {
        let p = root.join(format!("cache/Ierofs,x/@{:02x}/Dblob{i}", i % 3));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![1u8; 4096]).unwrap();
    }
    let cfg = Config::parse(
        Path::new("t.conf"),
        format!(
            "dir {}\nondemand /unused.toml\ncontrol none\nbrun 10%\nbcull 7%\nbstop 3%\nfrun 10%\nfcull 7%\nfstop 3%\n",
            root.display()
        )
        .as_bytes(),
    )
    .unwrap();
    let map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/blobs/{{fsid}}\"\n", root.display()),
    )
    .unwrap();
    // The fake device always polls writable, as the real one does while CULLING is set.
    let (kernel, device) = FakeKernel::new();
    kernel.with(|s| s.commands.push("bind ondemand".into()));
    let daemon = DaemonThread::start(cfg, device, Some(map));
    for _ in 0..10 {
        kernel.wake();
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let stats = daemon.stop_expecting_ok();
    let culled = kernel.with(|s| s.culled.len());
    assert_eq!(culled, 0, "{stats}");
}
