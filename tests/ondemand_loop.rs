//! The on-demand loop against the fake device: every OPEN gets exactly one copen, every READ
//! exactly one completion, data lands page-aligned in the object's fd, failures complete
//! without data, hostile messages are answered where possible.

mod common;

use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::proto::msg::{encode_close, encode_open, encode_read};
use common::fake_daemon::{anon_file, make_ondemand_tree, start_ondemand, wait_for, DaemonThread};
use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    kernel: FakeKernel,
    daemon: DaemonThread,
}

/// An on-demand daemon over a fresh temp dir; `ROOT` in `map` stands for that dir.
fn start(map: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    make_ondemand_tree(&root);
    let map =
        SourceMap::parse("t.toml", &map.replace("ROOT", &root.display().to_string())).unwrap();
    let (kernel, daemon) = start_ondemand(&root, map);
    Setup {
        _dir: dir,
        root,
        kernel,
        daemon,
    }
}

fn copens(kernel: &FakeKernel) -> Vec<String> {
    kernel.with(|s| {
        s.commands
            .iter()
            .filter(|c| c.starts_with("copen"))
            .cloned()
            .collect()
    })
}

#[test]
fn serves_opens_and_reads_with_exactly_one_answer_each() {
    let s = start("[[source]]\nfsid = \"*\"\npath = \"ROOT/blobs/{fsid}\"\n[fetch]\nworkers = 2\nreadahead = 8192\n");
    let data = blob(3 * 4096 + 100, 3);
    fs::write(s.root.join("blobs/img1"), &data).unwrap();
    let (fd, inspect) = anon_file(&s.kernel, &s.root, "anon1");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "anon2");
    let (fd3, _) = anon_file(&s.kernel, &s.root, "anon3");
    s.kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,img1", b"img1", fd));
        // Unknown fsid, and a name that tries to escape the blob directory.
        k.messages
            .push_back(encode_open(1, 2, b"erofs,x", b"missing", fd2));
        k.messages
            .push_back(encode_open(2, 3, b"erofs,x", b"../../etc/passwd", fd3));
    });
    wait_for("three copens", || copens(&s.kernel).len() == 3);
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(
        c,
        vec![
            format!("copen 0,{}", data.len()),
            "copen 1,-2".into(),
            "copen 2,-2".into()
        ]
    );

    // A READ in the middle of a page: written from the page start, with readahead, and the
    // tail past the blob's end zero-padded to a whole page.
    s.kernel
        .with(|k| k.messages.push_back(encode_read(3, 1, 5000, 10)));
    wait_for("completion of READ 3", || {
        s.kernel.with(|k| k.completed.contains(&3))
    });
    let mut got = vec![0u8; 4 * 4096];
    let n = inspect.read_at(&mut got, 0).unwrap();
    assert_eq!(n, 4 * 4096, "written up to the padded end of the blob");
    assert_eq!(
        &got[..4096],
        &[0u8; 4096][..],
        "page before the range untouched"
    );
    assert_eq!(&got[4096..data.len()], &data[4096..]);
    assert!(got[data.len()..].iter().all(|&b| b == 0));

    // The blob is truncated while served: the READ still completes, without data.
    fs::OpenOptions::new()
        .write(true)
        .open(s.root.join("blobs/img1"))
        .unwrap()
        .set_len(5)
        .unwrap();
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(4, 1, 0, 4096));
        // READ for an object we never opened: logged, nothing to complete it with.
        k.messages.push_back(encode_read(5, 99, 0, 4096));
        k.messages.push_back(encode_close(6, 1));
    });
    wait_for("completion of READ 4", || {
        s.kernel.with(|k| k.completed.contains(&4))
    });
    std::thread::sleep(Duration::from_millis(100));
    let stats = s.daemon.stop_expecting_ok();
    assert_eq!(
        s.kernel.with(|k| k.completed.clone()),
        vec![3, 4],
        "exactly one completion per READ"
    );
    assert_eq!(copens(&s.kernel).len(), 3, "exactly one copen per OPEN");
    assert!(stats.contains("reads 3 (1 failed)"), "{stats}");
    assert!(stats.contains("0 objects open"), "{stats}");
}

#[test]
fn hostile_messages_are_answered_and_survived() {
    let s = start("[[source]]\npath = \"ROOT/blobs/{fsid}\"\n");
    fs::write(s.root.join("blobs/b"), blob(8192, 1)).unwrap();
    let (fd, _) = anon_file(&s.kernel, &s.root, "a");
    let (fd2, _) = anon_file(&s.kernel, &s.root, "b2");
    s.kernel.with(|k| {
        // An OPEN whose key sizes overflow: the fd is closed, the OPEN refused.
        let mut bad = encode_open(10, 1, b"erofs,b", b"b", fd);
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        k.messages.push_back(bad);
        k.messages.push_back(vec![1, 2, 3]);
        let mut unknown = encode_close(11, 1);
        unknown[4] = 77;
        k.messages.push_back(unknown);
        let mut short = encode_read(12, 1, 0, 1);
        short[8] = 40;
        k.messages.push_back(short);
        k.messages
            .push_back(encode_open(13, 2, b"erofs,b", b"b", fd2));
        // OPENs naming fds that are not anonymous object fds: never used, never closed.
        k.messages
            .push_back(encode_open(14, 3, b"erofs,b", b"b", 9999));
        k.messages
            .push_back(encode_open(15, 4, b"erofs,b", b"b", 1));
    });
    wait_for("four copens", || copens(&s.kernel).len() == 4);
    // The same READ twice (as after `restore`): one completion.
    s.kernel.with(|k| {
        k.messages.push_back(encode_read(20, 2, 0, 4096));
        k.messages.push_back(encode_read(20, 2, 0, 4096));
        k.messages.push_back(encode_read(21, 2, 4096, 4096));
    });
    wait_for("completions", || s.kernel.with(|k| k.completed.len() >= 2));
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    let mut c = copens(&s.kernel);
    c.sort();
    assert_eq!(
        c,
        vec![
            "copen 10,-22",
            "copen 13,8192",
            "copen 14,-9",
            "copen 15,-9"
        ]
    );
    let mut done = s.kernel.with(|k| k.completed.clone());
    done.sort();
    assert_eq!(done, vec![20, 21]);
    assert!(stats.contains("6 bad messages"), "{stats}");
    assert!(stats.contains("1 duplicates"), "{stats}");
    // stdout (fd 1) must still be open.
    assert!(nix::fcntl::fcntl(1, nix::fcntl::FcntlArg::F_GETFD).is_ok());
}
