//! The cull scanner against `find` on the same tree, and its peak RSS at several tree sizes;
//! then the peak RSS of `cachefilesctl du` (which aggregates while walking) and `ls --json`
//! (which keeps every object) on the same trees.
//!
//! Trees are made in the kernel's layout (cache/I<volume>/@00..@ff/D<key>, empty files, every
//! atime distinct) under `$BENCH_DIR` (default `target/bench-tree`) and reused between runs.
//!
//! cargo bench --bench scan                      # 50k, 200k and 1M objects
//! SCAN_SIZES=50000,200000 cargo bench --bench scan
//!
//! Cold mode (root: it drops the page cache before every scan): `SCAN_COLD=100000` (or
//! `100000,300000`) runs only the cold case: each round drops the caches and scans with the
//! inode order the daemon uses, then drops them again and scans in readdir order (the scan
//! before 2026-12), alternating which goes first; `COLD_ROUNDS` rounds (default 3). With
//! `COLD_EVICT_MS=50`, the page cache of the tree's block device (its metadata) is evicted every
//! 50 ms during each scan: a tree whose metadata does not fit in memory. Put the tree on a
//! filesystem of its own (`BENCH_DIR`, see BENCHMARKS.md "Cold scan"): the eviction and the
//! I/O then concern that device alone.
//!
//! SCAN_COLD=100000 cargo bench --bench scan
//! SCAN_COLD=100000,300000 COLD_EVICT_MS=50 BENCH_DIR=/mnt/scratch cargo bench --bench scan
//!
//! Hidden modes (the bench re-executes itself to measure a scan's peak RSS in a fresh process):
//! `scan --scan-child <cache dir> <capacity>` and `scan --noop-child`; and, to run one scan
//! under strace or perf, `scan --cold-child <cache dir> inode|readdir [threads]` (drops the
//! caches first).

use cachefilesd_rs::cachedir::tree::dir_flags;
use cachefilesd_rs::cull::scan::{scan, scan_in_order, Order, ScanReport};
use nix::dir::Dir;
use nix::sys::stat::Mode;
use rustix::fs::{OFlags, Timespec, Timestamps};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CULLTABLE: usize = 4096;
const RUNS: usize = 3;
/// The oldest object's atime; object i gets BASE + (i * STRIDE) mod n, so the atimes are
/// exactly BASE..BASE+n, all distinct and unrelated to directory order.
const BASE: i64 = 1_600_000_000;
/// Prime and coprime with every size made of 2s and 5s (50k, 200k, 1M).
const STRIDE: u64 = 7919;
const VOLUMES: [&str; 4] = [
    "I9p,virtio0,hostshare",
    "Ierofs,domain-a",
    "Ierofs,5f2b6c1e9a0d4e8fb2c3a7d1e6f90b4c",
    "Infs,4,0.0.0.0,2049,fsc,1,1",
];

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--scan-child") => return scan_child(&args[2], args[3].parse().expect("capacity")),
        Some("--noop-child") => return,
        Some("--rss-runner") => return rss_runner(&args[2..]),
        Some("--cold-child") => return cold_child(&args[2..]),
        _ => {}
    }
    let base = std::env::var_os("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-tree"));
    if let Ok(sizes) = std::env::var("SCAN_COLD") {
        return cold(&base, &parse_sizes(&sizes));
    }
    let sizes =
        parse_sizes(&std::env::var("SCAN_SIZES").unwrap_or_else(|_| "50000,200000,1000000".into()));
    println!("# scan bench: culltable {CULLTABLE}, {RUNS} alternating runs each after one warm-up run, medians");
    println!("# trees under {}", base.display());
    let noop = child_rss(&[exe(), "--noop-child".into()], None);
    println!(
        "# baseline RSS of this binary doing nothing: {} KiB",
        noop.max_rss_kib
    );
    println!();
    println!("| objects | make tree | ours (median) | find (median) | ours/find | ours objects/s | scan child max RSS | find max RSS |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &sizes {
        let tree = base.join(format!("tree-{n}"));
        let made = ensure_tree(&tree, n);
        let cache = tree.join("cache");

        // Warm-up (dentries and inodes in memory), then alternate.
        ours(&cache, n);
        find(&tree);
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..RUNS {
            a.push(ours(&cache, n));
            b.push(find(&tree));
        }
        let (ma, mb) = (median(&mut a), median(&mut b));

        let rss = child_rss(
            &[
                exe(),
                "--scan-child".into(),
                cache.display().to_string(),
                CULLTABLE.to_string(),
            ],
            None,
        );
        assert_eq!(
            rss.stdout.trim(),
            n.to_string(),
            "scan child saw every object"
        );
        let find_rss = child_rss(
            &[
                "find".into(),
                "cache".into(),
                "-printf".into(),
                "%A@ %p\\n".into(),
            ],
            Some(&tree),
        );
        println!(
            "| {n} | {} | {} | {} | {:.2}x | {:.0} | {} KiB | {} KiB |",
            made.map_or("reused".into(), |d| format!("{:.1} s", d.as_secs_f64())),
            ms(ma),
            ms(mb),
            ma.as_secs_f64() / mb.as_secs_f64(),
            n as f64 / ma.as_secs_f64(),
            rss.max_rss_kib,
            find_rss.max_rss_kib,
        );
        eprintln!(
            "  n={n}: ours {:?} find {:?}",
            a.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            b.iter().map(|d| ms(*d)).collect::<Vec<_>>()
        );
    }
    println!();
    println!("| objects | cachefilesctl du max RSS | cachefilesctl ls --json max RSS |");
    println!("|---:|---:|---:|");
    for n in sizes {
        let tree = base.join(format!("tree-{n}"));
        let ctl = |args: &[&str]| {
            let mut argv = vec![
                env!("CARGO_BIN_EXE_cachefilesctl").to_string(),
                "--dir".into(),
                tree.display().to_string(),
            ];
            argv.extend(args.iter().map(|a| a.to_string()));
            child_rss(&argv, None).max_rss_kib
        };
        println!(
            "| {n} | {} KiB | {} KiB |",
            ctl(&["du"]),
            ctl(&["ls", "--json"])
        );
    }
}

fn parse_sizes(list: &str) -> Vec<u64> {
    list.split(',')
        .map(|s| s.trim().parse().expect("comma-separated object counts"))
        .collect()
}

/// The page cache, dentries and inodes dropped (dirty data written first), as after a boot.
fn drop_caches() {
    rustix::fs::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3")
        .expect("writing /proc/sys/vm/drop_caches (the cold bench runs as root)");
}

/// Bytes this process has had read from storage (`read_bytes` of /proc/self/io, all threads).
fn read_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("reading /proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("read_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("read_bytes in /proc/self/io")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn order_name(order: Order) -> &'static str {
    match order {
        Order::Inode => "inode order",
        Order::Readdir => "readdir order",
    }
}

/// User + system CPU time of this process, all threads.
fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage");
    let t = |tv: nix::sys::time::TimeVal| {
        Duration::from_secs(tv.tv_sec() as u64) + Duration::from_micros(tv.tv_usec() as u64)
    };
    t(u.user_time()) + t(u.system_time())
}

/// One scan from a cold cache.
struct Cold {
    time: Duration,
    /// CPU time of all the scan's threads (mostly the kernel's, in lookups and inode reads).
    cpu: Duration,
    /// Bytes read from the disk.
    read: u64,
    report: ScanReport,
}

/// Until dropped, a thread evicts the page cache of the block device under `tree` every
/// `every` (inode tables and directory blocks live there): a model of a machine whose memory
/// does not hold the tree's metadata for the length of a scan.
struct Evictor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Evictor {
    fn start(tree: &Path, every: Duration) -> Evictor {
        let dev = rustix::fs::stat(tree).expect("stat of the tree").st_dev;
        let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
            .expect("the tree's block device in /sys/dev/block");
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .expect("DEVNAME in uevent");
        let device = std::fs::File::open(format!("/dev/{name}"))
            .unwrap_or_else(|e| panic!("opening /dev/{name} to evict its cache: {e}"));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(AtomicOrdering::Relaxed) {
                rustix::fs::fadvise(&device, 0, None, rustix::fs::Advice::DontNeed)
                    .expect("fadvise(DONTNEED) on the block device");
                std::thread::sleep(every);
            }
        });
        Evictor {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Evictor {
    fn drop(&mut self) {
        self.stop.store(true, AtomicOrdering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cold_scan(cache: &Path, order: Order, threads: usize, evict: Option<Duration>) -> Cold {
    drop_caches();
    let (read, cpu) = (read_bytes(), cpu_time());
    let evictor = evict.map(|every| Evictor::start(cache, every));
    let t = Instant::now();
    let root = open_dir(cache);
    let report = scan_in_order(&root, CULLTABLE, threads, order);
    let time = t.elapsed();
    drop(evictor);
    Cold {
        time,
        cpu: cpu_time() - cpu,
        read: read_bytes() - read,
        report,
    }
}

fn median_u64(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// The cold case: both orders on the same tree from a dropped cache, alternating.
fn cold(base: &Path, sizes: &[u64]) {
    let rounds = common_env("COLD_ROUNDS", RUNS as u64).max(1) as usize;
    let evict = match common_env("COLD_EVICT_MS", 0) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(4);
    println!("# cold scan bench: culltable {CULLTABLE}, {threads} scan threads, {rounds} rounds of (drop caches, scan) per order, alternating, medians");
    match evict {
        Some(e) => println!(
            "# the tree's block device's page cache is evicted every {} ms during each scan",
            e.as_millis()
        ),
        None => println!("# no eviction during the scans"),
    }
    println!("# trees under {}", base.display());
    println!();
    println!("| objects | readdir order (old) | inode order (new) | **new/old** | CPU old / new | read old / new | load avg before → after |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &n in sizes {
        let tree = base.join(format!("tree-{n}"));
        if let Some(d) = ensure_tree(&tree, n) {
            eprintln!("  made the {n}-object tree in {:.1} s", d.as_secs_f64());
        }
        let cache = tree.join("cache");
        // Untimed: right after the tree is made its metadata is pinned until the journal is
        // checkpointed, and the first dropped cache reads nothing.
        let settle = cold_scan(&cache, Order::Inode, threads, None);
        check(&settle.report, n);
        let load_before = loadavg();
        let orders = [Order::Readdir, Order::Inode];
        let mut times = [Vec::new(), Vec::new()];
        let mut cpus = [Vec::new(), Vec::new()];
        let mut reads = [Vec::new(), Vec::new()];
        for round in 0..rounds {
            for k in 0..2 {
                let which = (k + round) % 2;
                let c = cold_scan(&cache, orders[which], threads, evict);
                check(&c.report, n);
                eprintln!(
                    "  n={n} round {round}: {} {} ms, CPU {} ms, {:.1} MB read",
                    order_name(orders[which]),
                    c.time.as_millis(),
                    c.cpu.as_millis(),
                    c.read as f64 / 1e6
                );
                times[which].push(c.time);
                cpus[which].push(c.cpu);
                reads[which].push(c.read);
            }
        }
        let runs = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>().join(" / ");
        let all = [runs(&times[0]), runs(&times[1])];
        let [old, new] = [median(&mut times[0]), median(&mut times[1])];
        let [cpu_old, cpu_new] = [median(&mut cpus[0]), median(&mut cpus[1])];
        let [read_old, read_new] = [median_u64(&mut reads[0]), median_u64(&mut reads[1])];
        println!(
            "| {n} | {} | {} | **{:.2}x** | {:.2} / {:.2} s | {:.0} / {:.0} MB | {load_before} → {} |",
            ms(old),
            ms(new),
            new.as_secs_f64() / old.as_secs_f64(),
            cpu_old.as_secs_f64(),
            cpu_new.as_secs_f64(),
            read_old as f64 / 1e6,
            read_new as f64 / 1e6,
            loadavg(),
        );
        eprintln!("  n={n}: readdir order {}; inode order {}", all[0], all[1]);
    }
}

fn common_env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `--cold-child <cache> inode|readdir [threads]`: one cold scan, for strace -c or perf.
fn cold_child(args: &[String]) {
    let order = match args[1].as_str() {
        "inode" => Order::Inode,
        "readdir" => Order::Readdir,
        other => panic!("order {other}: inode or readdir"),
    };
    let threads = args.get(2).map_or(2, |t| t.parse().expect("threads"));
    let evict = match common_env("COLD_EVICT_MS", 0) {
        0 => None,
        ms => Some(Duration::from_millis(ms)),
    };
    let c = cold_scan(Path::new(&args[0]), order, threads, evict);
    println!(
        "{}: {} objects in {} ms, CPU {} ms, {:.1} MB read",
        order_name(order),
        c.report.objects,
        c.time.as_millis(),
        c.cpu.as_millis(),
        c.read as f64 / 1e6
    );
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn open_dir(p: &Path) -> Dir {
    Dir::open(p, dir_flags(), Mode::empty()).expect("opening the cache dir")
}

/// One scan; checks it found every object and kept exactly the oldest CULLTABLE.
fn ours(cache: &Path, n: u64) -> Duration {
    let root = open_dir(cache);
    let t = Instant::now();
    let r = scan(&root, CULLTABLE);
    let d = t.elapsed();
    check(&r, n);
    d
}

fn check(r: &ScanReport, n: u64) {
    assert_eq!(r.objects, n, "objects seen");
    assert_eq!(r.oddities_seen, 0);
    let keep = CULLTABLE.min(n as usize);
    assert_eq!(r.candidates.len(), keep);
    assert_eq!(r.candidates[0].atime.0, BASE);
    assert_eq!(r.candidates[keep - 1].atime.0, BASE + keep as i64 - 1);
}

fn find(tree: &Path) -> Duration {
    let t = Instant::now();
    let status = Command::new("find")
        .arg("cache")
        .arg("-printf")
        .arg("%A@ %p\\n")
        .current_dir(tree)
        .stdout(Stdio::null())
        .status()
        .expect("running find");
    let d = t.elapsed();
    assert!(status.success());
    d
}

fn scan_child(cache: &str, capacity: usize) {
    let r = scan(&open_dir(Path::new(cache)), capacity);
    println!("{}", r.objects);
}

fn exe() -> String {
    std::env::current_exe().unwrap().display().to_string()
}

struct ChildRun {
    max_rss_kib: i64,
    stdout: String,
}

/// Peak RSS of `argv` run to completion, as wait4 reports it. The measuring is done by a
/// fresh, small copy of this binary (`--rss-runner`): a process's max RSS starts at the
/// high-water mark of the image it exec'd from (Rust spawns with vfork semantics), so a child
/// spawned from this bench process would inherit our own high-water mark.
fn child_rss(argv: &[String], cwd: Option<&Path>) -> ChildRun {
    let mut cmd = Command::new(exe());
    cmd.arg("--rss-runner").args(argv).stdin(Stdio::null());
    if let Some(d) = cwd {
        cmd.current_dir(d);
    }
    let out = cmd.output().expect("running the RSS runner");
    assert!(out.status.success(), "{argv:?} failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (rss, stdout) = text.split_once('\n').expect("runner output");
    ChildRun {
        max_rss_kib: rss.trim().parse().expect("max RSS"),
        stdout: stdout.to_string(),
    }
}

/// Runs argv, prints its max RSS (KiB) on the first line, then the start of its output.
// The child is reaped by wait4 (for its rusage), not by Child::wait.
#[allow(clippy::zombie_processes)]
fn rss_runner(argv: &[String]) {
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("spawning the child");
    let mut stdout = String::new();
    let mut pipe = child.stdout.take().unwrap();
    let mut buf = [0u8; 65536];
    // find's output is large: keep only the start, drain the rest.
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if stdout.len() < 4096 {
                    stdout.push_str(&String::from_utf8_lossy(&buf[..k]));
                }
            }
            Err(e) => panic!("reading the child's output: {e}"),
        }
    }
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `child.id()` is our unwaited child; both pointers are to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child failed: {status:#x}"
    );
    print!(
        "{}\n{}",
        usage.ru_maxrss,
        if argv[0] == "find" { "" } else { &stdout }
    );
}

/// Makes the tree unless a complete one of this size is there; returns how long making took.
fn ensure_tree(tree: &Path, n: u64) -> Option<Duration> {
    let marker = tree.join(".complete");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(&n.to_string()) {
        return None;
    }
    if tree.exists() {
        std::fs::remove_dir_all(tree).expect("removing an incomplete tree");
    }
    let t = Instant::now();
    let cache = tree.join("cache");
    for v in VOLUMES {
        for x in 0..256 {
            std::fs::create_dir_all(cache.join(v).join(format!("@{x:02x}"))).unwrap();
        }
    }
    // One thread per volume: object i lives in volume i % 4, fanout (i / 4) % 256.
    std::thread::scope(|s| {
        for (vi, v) in VOLUMES.iter().enumerate() {
            let vdir = cache.join(v);
            s.spawn(move || {
                let fanouts: Vec<OwnedFd> = (0..256)
                    .map(|x| {
                        let p = vdir.join(format!("@{x:02x}"));
                        rustix::fs::open(
                            &p,
                            OFlags::DIRECTORY | OFlags::CLOEXEC,
                            rustix::fs::Mode::empty(),
                        )
                        .expect("opening a fanout")
                    })
                    .collect();
                let mut i = vi as u64;
                while i < n {
                    let dir = &fanouts[((i / VOLUMES.len() as u64) % 256) as usize];
                    let atime = BASE + ((i * STRIDE) % n) as i64;
                    make_object(dir, i, atime);
                    i += VOLUMES.len() as u64;
                }
            });
        }
    });
    std::fs::write(&marker, n.to_string()).unwrap();
    Some(t.elapsed())
}

/// An empty `D<key>` file with the given atime (and an mtime a little later).
fn make_object(dir: &OwnedFd, i: u64, atime: i64) {
    let name = format!("D{:016x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::CLOEXEC;
    let mode = rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR;
    let file = rustix::fs::openat(dir, name.as_str(), flags, mode)
        .unwrap_or_else(|e| panic!("creating an object: {e}"));
    let at = |secs| Timespec {
        tv_sec: secs,
        tv_nsec: 0,
    };
    let times = Timestamps {
        last_access: at(atime),
        last_modification: at(atime + 60),
    };
    rustix::fs::futimens(&file, &times).unwrap_or_else(|e| panic!("futimens: {e}"));
}
