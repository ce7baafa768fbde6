//! Fetching a whole 256 MiB blob from nginx on 127.0.0.1 through `HttpBlob` + `serve_read`
//! (1 MiB Range GETs over ureq's keep-alive Agent, written into a file, as the engine does)
//! against `curl -s -o FILE URL` (one GET), in alternating pairs; the ratio of each pair is
//! printed too, since the target is to match curl in every run, not only in the median.
//!
//! cargo bench --bench http          # needs nginx and curl (Debian packages nginx, curl)

#[path = "../tests/common/mod.rs"]
mod common;

use cachefilesd_rs::ondemand::serve_read;
use cachefilesd_rs::ondemand::sourcemap::FetchSettings;
use cachefilesd_rs::ondemand::sources::{self, Blob, HttpBlob};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BLOB: u64 = 256 << 20;
const RUNS: usize = 5;

fn main() {
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let server = common::servers::start_nginx(dir.path(), "");
    let blob_path = dir.path().join("www/blob");
    let data: Vec<u8> = (0..BLOB as usize)
        .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
        .collect();
    std::fs::write(&blob_path, &data).unwrap();
    drop(data);
    let url = server.url("/blob");
    let out = dir.path().join("out");

    let settings = FetchSettings::default();
    let agent = sources::agent(&settings);
    let ours = || {
        let t = Instant::now();
        let blob = HttpBlob::open(url.clone(), agent.clone(), &settings).unwrap();
        let fd: OwnedFd = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&out)
            .unwrap()
            .into();
        let n = serve_read(&blob, &fd, 0, blob.size(), 0).unwrap();
        let d = t.elapsed();
        assert_eq!(n, BLOB);
        d
    };
    let curl = || {
        let t = Instant::now();
        let st = Command::new("curl")
            .args(["-s", "-o"])
            .arg(&out)
            .arg(&url)
            .status()
            .expect("running curl (apt-get install curl)");
        let d = t.elapsed();
        assert!(st.success());
        d
    };
    curl();
    ours();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        b.push(curl());
        a.push(ours());
    }
    // Per pair, before the medians sort the runs.
    let ratios: Vec<String> = a
        .iter()
        .zip(&b)
        .map(|(x, y)| format!("{:.2}x", y.as_secs_f64() / x.as_secs_f64()))
        .collect();
    // The last run was ours: check the file holds the blob.
    let check = std::fs::File::open(&blob_path).unwrap();
    let got = std::fs::File::open(&out).unwrap();
    for off in [0, BLOB / 2 + 12345, BLOB - 4096] {
        let (mut x, mut y) = ([0u8; 4096], [0u8; 4096]);
        check.read_at(&mut x, off).unwrap();
        got.read_at(&mut y, off).unwrap();
        assert_eq!(x, y, "bytes at {off}");
    }
    let (ma, mb) = (median(&mut a), median(&mut b));
    let mbs = |d: Duration| BLOB as f64 / d.as_secs_f64() / 1e6;
    println!("# HTTP bench: {} MiB blob from nginx on 127.0.0.1, {RUNS} alternating runs each after one warm-up run, medians", BLOB >> 20);
    println!();
    println!("| fetch | ours (median) | ours MB/s | curl (median) | curl MB/s | ours/curl (throughput) |");
    println!("|---|---:|---:|---:|---:|---:|");
    println!(
        "| whole blob, 1 MiB Range GETs vs one GET | {:.0} ms | {:.0} | {:.0} ms | {:.0} | {:.2}x |",
        ma.as_secs_f64() * 1e3,
        mbs(ma),
        mb.as_secs_f64() * 1e3,
        mbs(mb),
        mb.as_secs_f64() / ma.as_secs_f64()
    );
    println!();
    println!("ours/curl per pair: {}", ratios.join(" "));
    eprintln!("  ours {a:?} curl {b:?}");
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}
