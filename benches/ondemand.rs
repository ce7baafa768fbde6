//! READ completions per second through the real on-demand engine (the daemon's loop, its
//! worker pool and `serve_read`) with the fake device and a local blob, against a plain
//! pread + pwrite loop over the same offsets and sizes in the same process.
//!
//! cargo bench --bench ondemand
//!
//! Every READ of a batch is queued on the fake device at once (the daemon drains them all and
//! hands them to its workers), then the bench waits until every one is completed: throughput
//! with a deep queue, as under readahead. The anon fd is a regular file on the same disk.

#[path = "../tests/common/mod.rs"]
mod common;

use cachefilesd_rs::fake::FakeKernel;
use cachefilesd_rs::ondemand::sourcemap::{FetchSettings, SourceMap};
use cachefilesd_rs::proto::msg::{encode_open, encode_read};
use common::fake_daemon::{anon_file, make_ondemand_tree, start_ondemand};
use std::fs;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BLOB: u64 = 64 << 20;
const RUNS: usize = 3;

struct Case {
    name: &'static str,
    size: u64,
    count: u64,
}

const CASES: [Case; 2] = [
    Case {
        name: "4 KiB",
        size: 4096,
        count: 40_000,
    },
    Case {
        name: "1 MiB",
        size: 1 << 20,
        count: 512,
    },
];

fn main() {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let root = dir.path();
    make_ondemand_tree(root);
    // Written in 1 MiB pieces so that the peak RSS reported at the end is the engine's.
    let mut out = fs::File::create(root.join("blobs/img")).unwrap();
    for piece in 0..BLOB as usize >> 20 {
        let data: Vec<u8> = (piece << 20..(piece + 1) << 20)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
            .collect();
        std::io::Write::write_all(&mut out, &data).unwrap();
    }
    drop(out);

    let workers = FetchSettings::default().workers;
    // Readahead off: this measures one READ's path; readahead (2 MiB by default) would turn each
    // 4 KiB READ into a 2 MiB fetch. Its effect is measured in the VM (BENCHMARKS-vm.md).
    let map = SourceMap::parse(
        "bench.toml",
        &format!(
            "[[source]]\nfsid = \"*\"\npath = \"{}/blobs/{{fsid}}\"\n[fetch]\nworkers = {workers}\nreadahead = 0\n",
            root.display()
        ),
    )
    .unwrap();
    let (kernel, daemon) = start_ondemand(root, map);
    let (fd, target) = anon_file(&kernel, root, "anon");
    kernel.with(|k| {
        k.messages
            .push_back(encode_open(0, 1, b"erofs,img", b"img", fd))
    });
    wait_until(|| {
        kernel
            .state
            .lock()
            .unwrap()
            .commands
            .iter()
            .any(|c| c == &format!("copen 0,{BLOB}"))
    });

    let blob = fs::File::open(root.join("blobs/img")).unwrap();
    let plain_out = fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(root.join("plain"))
        .unwrap();

    println!("# on-demand READ bench: local blob of {} MiB in the page cache, engine with {workers} fetch workers (the default), fake device", BLOB >> 20);
    println!("# {RUNS} alternating runs each after one warm-up run, medians; baseline = pread + pwrite loop, one thread");
    println!();
    println!("| READ size | READs per run | engine req/s | engine MB/s | baseline req/s | baseline MB/s | engine/baseline |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut msg_id = 1u32;
    for case in &CASES {
        let engine = |msg_id: &mut u32| {
            let before = completed(&kernel);
            let t = Instant::now();
            kernel.with(|k| {
                for i in 0..case.count {
                    let off = (i * case.size) % BLOB;
                    k.messages
                        .push_back(encode_read(*msg_id, 1, off, case.size));
                    *msg_id += 1;
                }
            });
            let want = before + case.count as usize;
            wait_until(|| completed(&kernel) >= want);
            t.elapsed()
        };
        let plain = || {
            let mut buf = vec![0u8; case.size as usize];
            let t = Instant::now();
            for i in 0..case.count {
                let off = (i * case.size) % BLOB;
                blob.read_exact_at(&mut buf, off).unwrap();
                plain_out.write_all_at(&buf, off).unwrap();
            }
            t.elapsed()
        };
        engine(&mut msg_id);
        plain();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..RUNS {
            a.push(engine(&mut msg_id));
            b.push(plain());
        }
        let (ma, mb) = (median(&mut a), median(&mut b));
        let rate = |d: Duration| case.count as f64 / d.as_secs_f64();
        let mbs = |d: Duration| (case.count * case.size) as f64 / d.as_secs_f64() / 1e6;
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2}x |",
            case.name,
            case.count,
            rate(ma),
            mbs(ma),
            rate(mb),
            mbs(mb),
            mb.as_secs_f64() / ma.as_secs_f64(),
        );
        eprintln!("  {}: engine {a:?} baseline {b:?}", case.name);
    }
    // The data really landed: spot-check the last 1 MiB READ against the blob.
    let mut got = vec![0u8; 4096];
    let mut want = vec![0u8; 4096];
    target.read_exact_at(&mut got, BLOB - 4096).unwrap();
    blob.read_exact_at(&mut want, BLOB - 4096).unwrap();
    assert_eq!(got, want);
    let stats = daemon.stop_expecting_ok();
    eprintln!("  daemon: {stats}");
    assert_eq!(stats.matches("(0 failed)").count(), 2, "{stats}");
    // Every run queued all its READs at once (40 000 x 4 KiB, 512 x 1 MiB): the process's peak
    // RSS bounds what that many concurrent READs cost (the 64 MiB blob is read from the page
    // cache, not held in memory; the bench's own buffers are included).
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).unwrap();
    println!(
        "\npeak RSS of the whole bench process: {} KiB",
        usage.max_rss()
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn completed(kernel: &FakeKernel) -> usize {
    kernel.state.lock().unwrap().completed.len()
}

/// Polls without waking the daemon (`FakeKernel::with` would).
fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_micros(200));
    }
}
