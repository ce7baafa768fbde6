//! Adaptive readahead against `readahead = 0` and a fixed 2 MiB, over HTTP from nginx on
//! 127.0.0.1: the kernel's READs are replayed through `Readahead` + `HttpBlob` + `serve_read`
//! (what an engine worker runs for a READ) into a sparse cache file, one READ at a time, the
//! next one where the kernel would ask (the first page not yet in the cache file).
//!
//! (a) a sequential read of the first 256 MiB, READs of 128 KiB (the kernel's size);
//! (b) 2,000 random 4 KiB reads over a 1 GiB blob (a page already cached is not asked for).
//!
//! Printed per policy: bytes fetched, bytes read, their ratio and the median time, all three
//! policies interleaved in one run. Goal for (b): adaptive fetches ≤ 4× what is read, in ≤
//! 1.1× the time of `readahead = 0`.
//!
//! cargo bench --bench readahead     # needs nginx; RUNS=n (default 3)

#[path = "../tests/common/mod.rs"]
mod common;

use cachefilesd_rs::ondemand::readahead::Readahead;
use cachefilesd_rs::ondemand::serve_read;
use cachefilesd_rs::ondemand::sourcemap::FetchSettings;
use cachefilesd_rs::ondemand::sources::{self, Blob, HttpBlob};
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const BLOB: u64 = 1 << 30;
const SEQUENTIAL: u64 = 256 << 20;
const KERNEL_READ: u64 = 128 << 10;
const RANDOM_READS: usize = 2000;
const PAGE: u64 = 4096;
const MAX: u64 = 2 << 20;

#[derive(Clone, Copy)]
enum Policy {
    Adaptive,
    Fixed(u64),
}

impl Policy {
    fn name(self) -> String {
        match self {
            Policy::Adaptive => format!("adaptive (max {} MiB)", MAX >> 20),
            Policy::Fixed(0) => "readahead = 0".into(),
            Policy::Fixed(n) => format!("fixed {} MiB", n >> 20),
        }
    }

    /// The readahead of each READ, as the engine would decide it (its window fetched in the
    /// same call here, not in the background).
    fn decider(self) -> Box<dyn FnMut(u64, u64) -> u64> {
        match self {
            Policy::Adaptive => {
                let mut r = Readahead::new(MAX);
                // Replayed one READ at a time, each window lands before the next READ, so
                // every window starts where its READ ends.
                Box::new(move |off, len| {
                    r.on_read(off, len).map_or(0, |(start, end)| {
                        assert_eq!(start, off + len);
                        end - start
                    })
                })
            }
            Policy::Fixed(n) => Box::new(move |_, _| n),
        }
    }
}

struct Run {
    fetched: u64,
    read: u64,
    time: Duration,
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    // Kept between runs: writing 1 GiB is not what is measured.
    let dir = base.join("readahead");
    std::fs::create_dir_all(dir.join("www")).unwrap();
    let blob_path = dir.join("www/blob");
    if std::fs::metadata(&blob_path).map(|m| m.len()).ok() != Some(BLOB) {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&blob_path).unwrap());
        let mut chunk = vec![0u8; 1 << 20];
        for c in 0..BLOB >> 20 {
            for (i, b) in chunk.iter_mut().enumerate() {
                *b = pattern((c << 20) + i as u64);
            }
            f.write_all(&chunk).unwrap();
        }
        f.flush().unwrap();
    }
    let server = common::servers::start_nginx(&dir, "");
    let url = server.url("/blob");
    let settings = FetchSettings::default();
    let agent = sources::agent(&settings);
    let blob = HttpBlob::open(url, agent, &settings).unwrap();
    assert_eq!(blob.size(), BLOB);
    let out = dir.join("cache-file");

    let policies = [Policy::Adaptive, Policy::Fixed(0), Policy::Fixed(MAX)];
    let offsets = random_offsets();
    type Case<'a> = (&'a str, &'a dyn Fn(Policy, &OwnedFd) -> Run);
    let sequential = |p: Policy, fd: &OwnedFd| replay_sequential(&blob, fd, p);
    let random = |p: Policy, fd: &OwnedFd| replay_random(&blob, fd, p, &offsets);
    let cases: [Case; 2] = [
        ("(a) sequential 256 MiB, 128 KiB READs", &sequential),
        ("(b) 2,000 random 4 KiB reads over 1 GiB", &random),
    ];
    println!("# Readahead bench: {} GiB blob from nginx on 127.0.0.1, {runs} interleaved runs after one warm-up, medians", BLOB >> 30);
    println!();
    println!("| case | policy | bytes fetched | bytes read | fetched/read | time (median) | time / readahead=0 |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for (name, case) in cases {
        let mut results: Vec<Vec<Run>> = policies.iter().map(|_| Vec::new()).collect();
        for round in 0..=runs {
            for (i, &p) in policies.iter().enumerate() {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(true)
                    .read(true)
                    .write(true)
                    .open(&out)
                    .unwrap();
                file.set_len(BLOB).unwrap();
                let fd: OwnedFd = file.try_clone().unwrap().into();
                let run = case(p, &fd);
                check(&file, name);
                // Round 0 warms nginx, the page cache and the connection.
                if round > 0 {
                    results[i].push(run);
                }
            }
        }
        let base_time = median(&results[1]).time;
        for (p, r) in policies.iter().zip(&results) {
            let m = median(r);
            println!(
                "| {name} | {} | {:.1} MiB | {:.1} MiB | {:.2}× | {:.0} ms | {:.2}× |",
                p.name(),
                m.fetched as f64 / (1 << 20) as f64,
                m.read as f64 / (1 << 20) as f64,
                m.fetched as f64 / m.read as f64,
                m.time.as_secs_f64() * 1e3,
                m.time.as_secs_f64() / base_time.as_secs_f64()
            );
            let times: Vec<String> = r
                .iter()
                .map(|x| format!("{:.0}", x.time.as_secs_f64() * 1e3))
                .collect();
            eprintln!("  {name}, {}: runs {} ms", p.name(), times.join(" / "));
        }
    }
    let _ = std::fs::remove_file(&out);
}

/// The byte at `pos` of the blob: not constant, so misplaced data shows.
fn pattern(pos: u64) -> u8 {
    ((pos / PAGE) as u32).wrapping_mul(2654435761).to_le_bytes()[3] ^ (pos as u8)
}

/// The cache file holds the blob's bytes wherever it holds data (pages never written read 0
/// and are skipped by looking for data first).
fn check(file: &std::fs::File, name: &str) {
    let mut page = [0u8; PAGE as usize];
    let mut pos = 0;
    let mut checked = 0;
    while checked < 64 {
        let Ok(data) = nix::unistd::lseek(
            std::os::fd::AsRawFd::as_raw_fd(file),
            pos as i64,
            nix::unistd::Whence::SeekData,
        ) else {
            break;
        };
        let data = data as u64 / PAGE * PAGE;
        file.read_exact_at(&mut page, data).unwrap();
        for (i, &b) in page.iter().enumerate() {
            assert_eq!(
                b,
                pattern(data + i as u64),
                "{name}: byte {}",
                data + i as u64
            );
        }
        checked += 1;
        pos = data + 7 * PAGE * 1013;
    }
    assert!(checked > 0, "{name}: nothing landed in the cache file");
}

/// Page-aligned offsets over the blob, fixed (a small LCG) so that every policy gets the same.
fn random_offsets() -> Vec<u64> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..RANDOM_READS)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 24) % (BLOB / PAGE) * PAGE
        })
        .collect()
}

fn replay_sequential(blob: &dyn Blob, fd: &OwnedFd, p: Policy) -> Run {
    let mut decide = p.decider();
    let t = Instant::now();
    let (mut off, mut fetched) = (0, 0);
    while off < SEQUENTIAL {
        let len = KERNEL_READ.min(SEQUENTIAL - off);
        let ra = decide(off, len);
        fetched += serve_read(blob, fd, off, len, ra).unwrap();
        off += len + ra;
    }
    Run {
        fetched,
        read: SEQUENTIAL,
        time: t.elapsed(),
    }
}

fn replay_random(blob: &dyn Blob, fd: &OwnedFd, p: Policy, offsets: &[u64]) -> Run {
    let mut decide = p.decider();
    let mut cached = vec![false; (BLOB / PAGE) as usize];
    let t = Instant::now();
    let mut fetched = 0;
    for &off in offsets {
        let page = (off / PAGE) as usize;
        if cached[page] {
            continue;
        }
        let ra = decide(off, PAGE);
        fetched += serve_read(blob, fd, off, PAGE, ra).unwrap();
        let end = ((off + PAGE + ra).min(BLOB) / PAGE) as usize;
        cached[page..end].iter_mut().for_each(|c| *c = true);
    }
    Run {
        fetched,
        read: offsets.len() as u64 * PAGE,
        time: t.elapsed(),
    }
}

fn median(v: &[Run]) -> &Run {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by_key(|&i| v[i].time);
    &v[idx[idx.len() / 2]]
}
