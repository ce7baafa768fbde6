//! Background prefetch on the cachefiles front end, against the fake device: a source's
//! `prefetch` fills blobs with no READ, only the ranges asked, under `[fetch] prefetch_rate`,
//! behind foreground READs, and stops at CLOSE or on an error.

mod common;

use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use cachefilesd_rs::proto::msg::{encode_close, encode_open, encode_read};
use common::fake_daemon::{anon_file, make_ondemand_tree, start_ondemand, wait_for, DaemonThread};
use nix::unistd::{lseek, Whence};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

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

/// An on-demand daemon over a fresh temp dir serving `ROOT/blobs/{fsid}` with `source_extra`
/// in its `[[source]]` and `fetch` as its `[fetch]` table.
fn start(source_extra: &str, fetch: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    make_ondemand_tree(&root);
    let map = SourceMap::parse(
        "t.toml",
        &format!(
            "[[source]]\npath = \"{}/blobs/{{fsid}}\"\n{source_extra}\n[fetch]\nreadahead = 0\n{fetch}\n",
            root.display()
        ),
    )
    .unwrap();
    let (kernel, daemon) = start_ondemand(&root, map);
    Setup {
        _dir: dir,
        root,
        kernel,
        daemon,
    }
}

/// Bytes of the file that hold data (SEEK_DATA/SEEK_HOLE walk).
fn data_bytes(f: &fs::File) -> u64 {
    let fd = f.as_raw_fd();
    let len = f.metadata().unwrap().len() as i64;
    let (mut pos, mut total) = (0i64, 0u64);
    while pos < len {
        let Ok(data) = lseek(fd, pos, Whence::SeekData) else {
            break;
        };
        let hole = lseek(fd, data, Whence::SeekHole).unwrap();
        total += (hole - data) as u64;
        pos = hole;
    }
    total
}

fn padded(len: usize) -> u64 {
    len.div_ceil(4096) as u64 * 4096
}

fn open(s: &Setup, msg_id: u32, object: u32, fsid: &str, anon: &str) -> fs::File {
    let (fd, inspect) = anon_file(&s.kernel, &s.root, anon);
    s.kernel.with(|k| {
        k.messages.push_back(encode_open(
            msg_id,
            object,
            format!("erofs,{fsid}").as_bytes(),
            fsid.as_bytes(),
            fd,
        ))
    });
    inspect
}

#[test]
fn prefetch_all_fills_a_blob_with_no_reads() {
    let s = start("prefetch = \"all\"", "prefetch_rate = 0");
    let data = blob(3 * MIB + 100, 3);
    fs::write(s.root.join("blobs/img"), &data).unwrap();
    let inspect = open(&s, 1, 1, "img", "anon1");
    wait_for("the whole blob in the cache file", || {
        data_bytes(&inspect) == padded(data.len())
    });
    let mut got = vec![0u8; padded(data.len()) as usize];
    inspect.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(&got[..data.len()], &data[..]);
    assert!(
        got[data.len()..].iter().all(|&b| b == 0),
        "zero-padded tail"
    );
    // The chunk that fills the last bytes is counted a moment before the loop sees it.
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    assert!(stats.contains("reads 0 (0 failed)"), "{stats}");
    assert!(
        stats.contains(&format!(
            "prefetch: 0 active, {} bytes, completed 1, stopped 0, failed 0",
            padded(data.len())
        )),
        "{stats}"
    );
}

#[test]
fn only_the_ranges_asked_are_prefetched() {
    let s = start("prefetch = [\"0-4096\", \"2097152-\"]", "prefetch_rate = 0");
    let data = blob(3 * MIB, 5);
    fs::write(s.root.join("blobs/img"), &data).unwrap();
    let inspect = open(&s, 1, 1, "img", "anon1");
    let want = 4096 + MIB as u64;
    wait_for("both ranges in the cache file", || {
        data_bytes(&inspect) == want
    });
    let mut got = vec![0u8; 4096];
    inspect.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(got, data[..4096]);
    let mut got = vec![0u8; MIB];
    inspect.read_exact_at(&mut got, 2 * MIB as u64).unwrap();
    assert_eq!(got, data[2 * MIB..]);
    // Between them: a hole (nothing fetched).
    let hole = lseek(inspect.as_raw_fd(), 0, Whence::SeekHole).unwrap();
    assert_eq!(hole, 4096);
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    assert!(
        stats.contains(&format!("prefetch: 0 active, {want} bytes, completed 1")),
        "{stats}"
    );
}

#[test]
fn a_foreground_read_is_answered_before_the_prefetch_completes() {
    // 8 MiB at 1 MiB/s: the prefetch needs 7 s at the very least.
    let s = start("prefetch = \"all\"", "prefetch_rate = 1048576");
    let data = blob(8 * MIB, 7);
    fs::write(s.root.join("blobs/img"), &data).unwrap();
    let inspect = open(&s, 1, 1, "img", "anon1");
    wait_for("the first prefetched chunk", || data_bytes(&inspect) > 0);
    let last = (8 * MIB - 4096) as u64;
    s.kernel
        .with(|k| k.messages.push_back(encode_read(2, 1, last, 4096)));
    wait_for("the READ's completion", || {
        s.kernel.with(|k| k.completed.contains(&2))
    });
    // Ordering, not timing: the READ is answered while the prefetch is still under way.
    let present = data_bytes(&inspect);
    assert!(
        present < 8 * MIB as u64,
        "the prefetch had already completed"
    );
    let mut got = vec![0u8; 4096];
    inspect.read_exact_at(&mut got, last).unwrap();
    assert_eq!(got, data[last as usize..]);
    s.kernel.with(|k| k.messages.push_back(encode_close(3, 1)));
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    assert!(stats.contains("reads 1 (0 failed)"), "{stats}");
    assert!(stats.contains("completed 0, stopped 1"), "{stats}");
}

#[test]
fn the_rate_cap_holds_over_the_prefetch() {
    // 4 MiB at 4 MiB/s, one 1 MiB chunk at a time: chunks may start at 0, 0.25, 0.5 and
    // 0.75 s, so the last byte cannot land before 0.75 s (uncapped, this takes milliseconds).
    let s = start("prefetch = \"all\"", "prefetch_rate = 4194304");
    let data = blob(4 * MIB, 9);
    fs::write(s.root.join("blobs/img"), &data).unwrap();
    let started = Instant::now();
    let inspect = open(&s, 1, 1, "img", "anon1");
    let mut samples = Vec::new();
    wait_for("the whole blob", || {
        let n = data_bytes(&inspect);
        samples.push((started.elapsed(), n));
        n == 4 * MIB as u64
    });
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(700),
        "4 MiB at 4 MiB/s landed in {elapsed:?}"
    );
    // At every sample: no more than the cap allows for the time since the start, plus
    // the one chunk the pacer lets start at once.
    for (t, n) in &samples {
        let allowed = 4.0 * MIB as f64 * t.as_secs_f64() + MIB as f64;
        assert!((*n as f64) <= allowed * 1.05, "{n} bytes at {t:?}");
    }
    std::thread::sleep(Duration::from_millis(200));
    let stats = s.daemon.stop_expecting_ok();
    assert!(stats.contains("completed 1"), "{stats}");
}

#[test]
fn close_stops_the_prefetch() {
    // 3 MiB at 1 MiB/s: left alone, the whole blob would be in by 2 s.
    let s = start("prefetch = \"all\"", "prefetch_rate = 1048576");
    let data = blob(3 * MIB, 11);
    fs::write(s.root.join("blobs/img"), &data).unwrap();
    let inspect = open(&s, 1, 1, "img", "anon1");
    wait_for("the first prefetched chunk", || data_bytes(&inspect) > 0);
    s.kernel.with(|k| k.messages.push_back(encode_close(2, 1)));
    std::thread::sleep(Duration::from_millis(3000));
    let present = data_bytes(&inspect);
    assert!(
        present < 3 * MIB as u64,
        "the prefetch went on after CLOSE ({present} bytes)"
    );
    let stats = s.daemon.stop_expecting_ok();
    assert!(
        stats.contains("0 active") && stats.contains("completed 0, stopped 1, failed 0"),
        "{stats}"
    );
    assert!(stats.contains("0 objects open"), "{stats}");
}

#[test]
fn an_error_ends_the_prefetch_once_without_retries() {
    let s = start("prefetch = \"all\"", "prefetch_rate = 1048576");
    let data = blob(4 * MIB, 13);
    let path = s.root.join("blobs/img");
    fs::write(&path, &data).unwrap();
    let inspect = open(&s, 1, 1, "img", "anon1");
    wait_for("the first prefetched chunk", || data_bytes(&inspect) > 0);
    // The source shrinks under the daemon: the next chunk's read fails.
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(5)
        .unwrap();
    std::thread::sleep(Duration::from_millis(4000));
    let stats = s.daemon.stop_expecting_ok();
    assert!(
        stats.contains("0 active") && stats.contains("completed 0, stopped 0, failed 1"),
        "{stats}"
    );
    assert!(stats.contains("1 objects open"), "{stats}");
}
