//! Issue 15's cold-read benchmark on the host's own kernel: tests/vm/scenarios/fanotify-bench.sh's
//! procedure (an EROFS image of 1,024 random files of 4-508 KiB in 16 directories, a cold
//! mount + `cat` of every file + umount per run) without the VM, whose TCG makes every event
//! ~30x dearer than on hardware.
//!
//! Per round, page cache dropped before each run: (a) a complete copy of the image on ext4
//! through `mount -o loop`, (b) the same copy file-backed (mount(2) on the file), a plain copy
//! of the image from its source into a new ext4 file (what the fetches do to every byte,
//! without events), (c) the real engine and pre-content group (in this process, as
//! benches/fanotify.rs has them) serving a fresh sparse blob (a new fsid) from the image on
//! /dev/shm while a child mounts it file-backed and reads every file. Then one more fresh blob
//! read through EROFS with `sha256sum` of every file against the source tree (untimed), its
//! file read whole so that it is complete (unmarked), and per round (d) the copy file-backed
//! against (e) that complete blob file-backed, the engine still serving. Printed: each run,
//! medians, ratios, and for (c) events, fetches and the serving process's CPU.
//!
//! On 6.18 EROFS reads its metadata (superblock, inodes, directories) from the backing file's
//! page cache without a pre-content event, so a fresh blob mounts as zeros ("cannot find
//! valid erofs superblock", or "bogus i_mode (0)" past a filled head); only its data reads
//! (through the file's read_iter) raise events. So by default (c) first reads the whole blob
//! file through its mark (`dd bs=104k`: EROFS's read size, the same ~2,500 events and every
//! fetch) and then mounts and reads every file, all of it timed; HEAD_KIB=n reads only the
//! first n KiB first, HEAD_KIB=0 none (the VM's procedure, for a kernel that raises events
//! for metadata reads too).
//!
//! Needs root, a 6.14+ kernel with pre-content events and file-backed EROFS, mkfs.erofs, cc
//! (builds tests/vm/erofs-filemount.c when target/vm/erofs-filemount is missing), and a target
//! dir on ext4, xfs or btrfs. Mounts are undone on failure too.
//!
//! cargo bench --bench fanotify_erofs     # MB=n (default 256), RUNS=n (default 3), HEAD_KIB=n

mod common;

use cachefilesd_rs::ondemand::engine::Engine;
use cachefilesd_rs::ondemand::fanotify::{Fanotify, Group};
use cachefilesd_rs::ondemand::sourcemap::SourceMap;
use common::{cpu, env_or};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn sh(script: &str) {
    let st = Command::new("sh").arg("-c").arg(script).status().unwrap();
    assert!(st.success(), "sh -c {script:?}: {st}");
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn drop_caches() {
    nix::unistd::sync();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").expect("drop caches (root)");
}

/// Unmounts the mount point on drop if something is still mounted there (a failed run), so
/// that a panic leaves neither a mount nor a loop device behind.
struct MountGuard(PathBuf);

impl MountGuard {
    fn mounted(&self) -> bool {
        let p = self.0.to_str().unwrap();
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(p))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        while self.mounted() {
            if nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH).is_err() {
                break;
            }
        }
    }
}

/// The serving side: the engine, its group and the fetch workers' wake-up.
struct Server {
    engine: Engine<Fanotify>,
    group: Group,
    woken: UnixDatagram,
}

impl Server {
    /// Attaches the blob `fsid` at `path` and waits until the engine serves it.
    fn attach(&mut self, path: &Path, fsid: &str) -> u32 {
        let id = self
            .engine
            .attach(&mut self.group, path, fsid.as_bytes(), fsid.as_bytes())
            .unwrap();
        let t = Instant::now();
        while !self.engine.objects().contains_key(&id) {
            assert!(t.elapsed() < Duration::from_secs(30), "attach {fsid}");
            std::thread::sleep(Duration::from_millis(1));
            self.engine.drain_done(&mut self.group).unwrap();
        }
        id
    }

    /// Runs `script` in a child shell while serving events, until it exits.
    fn serve_while(&mut self, script: &str) {
        let mut child = Command::new("sh").arg("-c").arg(script).spawn().unwrap();
        let mut buf = [0u8; 64];
        loop {
            let mut fds = [
                PollFd::new(self.group.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.woken.as_fd(), PollFlags::POLLIN),
            ];
            poll(&mut fds, PollTimeout::from(50u8)).unwrap();
            while self.woken.recv(&mut buf).is_ok() {}
            self.engine.drain_group(&mut self.group).unwrap();
            self.engine.drain_done(&mut self.group).unwrap();
            if let Some(st) = child.try_wait().unwrap() {
                assert!(st.success(), "sh -c {script:?}: {st}");
                break;
            }
        }
    }
}

/// Page cache dropped, then `script` timed (served by `server` when given).
fn timed(script: &str, server: Option<&mut Server>) -> Duration {
    drop_caches();
    let t = Instant::now();
    match server {
        Some(s) => s.serve_while(script),
        None => sh(script),
    }
    t.elapsed()
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}

fn list(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes tests/vm/scenarios/fanotify-bench.sh's tree: `files` random files of 4 KiB to
/// 508 KiB in 16 directories.
fn make_tree(tree: &Path, files: u64) {
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    let mut buf = vec![0u8; 508 << 10];
    for n in 0..files {
        let dir = tree.join(format!("d{}", n % 16));
        std::fs::create_dir_all(&dir).unwrap();
        let len = 4096 * (1 + (n * 37) % 127) as usize;
        random.read_exact(&mut buf[..len]).unwrap();
        std::fs::write(dir.join(format!("f{n}")), &buf[..len]).unwrap();
    }
}

fn main() {
    let mb = env_or("MB", 256);
    let runs = env_or("RUNS", 3) as usize;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let filemount = root.join("target/vm/erofs-filemount");
    if !filemount.exists() {
        std::fs::create_dir_all(filemount.parent().unwrap()).unwrap();
        sh(&format!(
            "cc -O2 -o {} {}",
            filemount.display(),
            root.join("tests/vm/erofs-filemount.c").display()
        ));
    }
    let base = root.join("target/bench-tree");
    std::fs::create_dir_all(&base).unwrap();
    let dir = tempfile::tempdir_in(&base).unwrap();
    let shm = tempfile::tempdir_in("/dev/shm").unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let guard = MountGuard(mnt.clone());

    let tree = shm.path().join("tree");
    make_tree(&tree, mb * 4);
    let sums = shm.path().join("tree.sha");
    sh(&format!(
        "cd {} && find . -type f | sort | xargs sha256sum >{}",
        tree.display(),
        sums.display()
    ));
    let srcdir = shm.path().join("src");
    std::fs::create_dir(&srcdir).unwrap();
    let image = srcdir.join("image");
    sh(&format!(
        "mkfs.erofs --quiet {} {} >/dev/null",
        image.display(),
        tree.display()
    ));
    let img_bytes = std::fs::metadata(&image).unwrap().len();
    let copy = dir.path().join("copy.img");
    std::fs::copy(&image, &copy).unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir(&cache).unwrap();

    let map = SourceMap::parse(
        "t.toml",
        &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", srcdir.display()),
    )
    .unwrap();
    let (waker, woken) = UnixDatagram::pair().unwrap();
    waker.set_nonblocking(true).unwrap();
    woken.set_nonblocking(true).unwrap();
    let group = Group::new().expect("a pre-content group: root and a 6.14+ kernel");
    let engine: Engine<Fanotify> = Engine::new(
        map,
        Arc::new(move || {
            let _ = waker.send(&[1]);
        }),
    );
    let mut server = Server {
        engine,
        group,
        woken,
    };

    let m = mnt.display();
    let fm = filemount.display();
    let read_all = format!("find {m} -type f -exec cat {{}} + >/dev/null");
    let loop_run = format!(
        "mount -t erofs -o loop,ro {} {m} && {read_all} && umount {m}",
        copy.display()
    );
    let file_run = |img: &Path| format!("{fm} {} {m} && {read_all} && umount {m}", img.display());
    // How much of a fresh blob a reader reads through the marked file (events, fetches;
    // `dd bs=104k`, EROFS's read size) before the mount: see the module's comment.
    let head = std::env::var("HEAD_KIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(img_bytes, |k| k << 10);
    let head = |img: &Path| match head {
        0 => String::new(),
        n => format!(
            "dd if={} of=/dev/null bs=104k iflag=count_bytes count={n} status=none && ",
            img.display()
        ),
    };
    let copytest = dir.path().join("copytest");
    let copy_run = format!(
        "dd if={} of={} bs=1M status=none && sync",
        image.display(),
        copytest.display()
    );

    println!(
        "{mb} MiB: {} files, image {img_bytes} bytes; {runs} rounds; load {}",
        mb * 4,
        loadavg()
    );
    let (mut a, mut b, mut k, mut c, mut filled) = (vec![], vec![], vec![], vec![], vec![]);
    for r in 1..=runs {
        a.push(timed(&loop_run, None));
        b.push(timed(&file_run(&copy), None));
        k.push(timed(&copy_run, None));
        std::fs::remove_file(&copytest).unwrap();

        let fsid = format!("b{r}");
        std::fs::hard_link(&image, srcdir.join(&fsid)).unwrap();
        let blob = cache.join(&fsid);
        let id = server.attach(&blob, &fsid);
        let (g0, calls0) = (server.group.stats.clone(), server.group.stats.calls.clone());
        let e0 = server.engine.stats.clone();
        let (u0, s0) = cpu();
        // Timed in two parts: the fill through the mark (if any), then the mount and read.
        drop_caches();
        let t = Instant::now();
        let first = head(&blob);
        if !first.is_empty() {
            server.serve_while(first.trim_end_matches(" && "));
        }
        filled.push(t.elapsed());
        server.serve_while(&file_run(&blob));
        c.push(t.elapsed());
        let (u1, s1) = cpu();
        let (g1, calls1) = (&server.group.stats, &server.group.stats.calls);
        let e1 = &server.engine.stats;
        println!(
            "round {r}: (a) loop {:.2} s, (b) file-backed {:.2} s, source-to-cache copy {:.2} s, (c) fanotify {:.2} s (of which the fill through the mark {:.2} s): {} events ({} allowed at once, {} waited for a fill in flight, {} fills ahead), {} fetches, {} of {img_bytes} bytes fetched; serving process CPU user {:.2} s, sys {:.2} s; loop thread's calls: read {} ms, fstat {} ms, answer {} ms, close {} ms",
            a[r - 1].as_secs_f64(),
            b[r - 1].as_secs_f64(),
            k[r - 1].as_secs_f64(),
            c[r - 1].as_secs_f64(),
            filled[r - 1].as_secs_f64(),
            g1.events - g0.events,
            g1.present - g0.present,
            g1.waited - g0.waited,
            g1.ahead - g0.ahead,
            e1.reads - e0.reads,
            e1.bytes_written - e0.bytes_written,
            (u1 - u0).as_secs_f64(),
            (s1 - s0).as_secs_f64(),
            (calls1.read - calls0.read).as_millis(),
            (calls1.adopt - calls0.adopt).as_millis(),
            (calls1.answer - calls0.answer).as_millis(),
            (calls1.close - calls0.close).as_millis(),
        );
        assert!(
            e1.bytes_written > e0.bytes_written,
            "round {r} fetched nothing"
        );
        server.engine.detach(&mut server.group, id);
        std::fs::remove_file(&blob).unwrap();
        std::fs::remove_file(srcdir.join(&fsid)).unwrap();
    }

    // Every file of a fresh blob, read through EROFS, against the source tree.
    std::fs::hard_link(&image, srcdir.join("v")).unwrap();
    let blob = cache.join("v");
    let id = server.attach(&blob, "v");
    let got = shm.path().join("got.sha");
    drop_caches();
    server.serve_while(&format!(
        "{}{fm} {} {m} && (cd {m} && find . -type f | sort | xargs sha256sum) >{} && umount {m}",
        head(&blob),
        blob.display(),
        got.display()
    ));
    let (want, got) = (
        std::fs::read_to_string(&sums).unwrap(),
        std::fs::read_to_string(&got).unwrap(),
    );
    assert_eq!(
        want.lines().count() as u64,
        mb * 4,
        "the source tree's sums"
    );
    assert!(
        want == got,
        "a file read through fanotify differs from its source"
    );
    println!(
        "sha256 of all {} files read through a fresh blob: equal to the source tree",
        mb * 4
    );

    // That blob made complete: its file read whole, so the group unmarks it.
    server.serve_while(&format!("cat {} >/dev/null", blob.display()));
    assert!(server.group.is_complete(id), "the blob is not complete");
    sh(&format!("cmp {} {}", blob.display(), image.display()));
    let events0 = server.group.stats.events;
    let (mut d, mut e) = (vec![], vec![]);
    for r in 1..=runs {
        d.push(timed(&file_run(&copy), None));
        e.push(timed(&file_run(&blob), Some(&mut server)));
        println!(
            "complete round {r}: (d) file-backed {:.2} s, (e) complete blob {:.2} s",
            d[r - 1].as_secs_f64(),
            e[r - 1].as_secs_f64()
        );
    }
    assert_eq!(
        server.group.stats.events, events0,
        "the complete blob raised events"
    );
    server.engine.detach(&mut server.group, id);

    let s = |v: &[Duration]| format!("{:.2} s [{}]", median(v).as_secs_f64(), list(v));
    println!(
        "medians: (a) loop {}, (b) file-backed {}, source-to-cache copy {}, (c) fanotify {} (the fill through the mark {}); (d) file-backed {}, (e) complete blob {}",
        s(&a),
        s(&b),
        s(&k),
        s(&c),
        s(&filled),
        s(&d),
        s(&e)
    );
    let ratio = |x: &[Duration], y: &[Duration]| median(x).as_secs_f64() / median(y).as_secs_f64();
    println!(
        "throughput ratios: fanotify/loop {:.2} (goal >= 0.9), fanotify/file-backed {:.2}, complete/file-backed {:.2} (goal >= 0.98); load {}",
        ratio(&a, &c),
        ratio(&b, &c),
        ratio(&d, &e),
        loadavg()
    );
    drop(guard);
}
