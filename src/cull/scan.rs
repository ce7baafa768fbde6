//! The cull scan: a bounded LRU walk of the cache tree with dirfds, run on the worker thread.
//!
//! A depth-first walk that keeps only the N least recently used objects (a max-heap on atime),
//! so memory is bounded by the culltable size whatever the size of the cache. No `inuse`
//! writes: the kernel refuses to cull an object in use (EBUSY) and that answer is taken at
//! cull time.

use crate::cachedir::layout::decode_name;
use crate::cachedir::names::show_path;
use crate::cachedir::tree::{file_type, open_dir_at, open_path, reopen, stat_at, RawDir};
use nix::dir::{Dir, Type};
use nix::sys::stat::SFlag;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Deeper than any layout the kernel makes (cache/I<volume>/@xx/<object>).
const MAX_DEPTH: usize = 6;

/// A directory below the cache root, as the components that lead to it.
#[derive(Debug, PartialEq, Eq)]
pub struct DirPath(pub Vec<Box<[u8]>>);

impl DirPath {
    pub fn display(&self) -> String {
        show_path(self.0.iter().map(|c| &c[..]))
    }
}

#[derive(Debug, Clone)]
pub struct Candidate {
    pub atime: (i64, i64),
    pub ino: u64,
    /// Bytes allocated (st_blocks * 512): what culling it frees.
    pub allocated: u64,
    pub dir: Arc<DirPath>,
    pub name: Box<[u8]>,
}

impl Candidate {
    pub fn path(&self) -> String {
        let mut s = self.dir.display();
        if !s.is_empty() {
            s.push('/');
        }
        s.push_str(&show_path([&self.name[..]]));
        s
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        self.atime.cmp(&other.atime).then(self.ino.cmp(&other.ino))
    }
}

/// Entries that do not belong in a cache tree; logged and left alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oddity {
    /// Escaped ([`crate::cachedir::Escaped`]): it goes to the log.
    pub path: String,
    pub what: &'static str,
}

#[derive(Debug, Default)]
pub struct ScanReport {
    /// Oldest first.
    pub candidates: Vec<Candidate>,
    pub objects: u64,
    /// Bytes allocated by all the objects seen.
    pub allocated: u64,
    pub directories: u64,
    /// More objects were seen than the table holds.
    pub table_overflowed: bool,
    /// The first few odd entries (the count is in `oddities_seen`).
    pub oddities: Vec<Oddity>,
    pub oddities_seen: u64,
    /// Entries that vanished or could not be read while scanning (normal on a live cache).
    pub vanished: u64,
    pub duration: Duration,
    /// Of `duration`, the time a paced scan slept.
    pub paused: Duration,
}

/// The throttle of a background scan: after each directory it sleeps as long as it worked on
/// it (half the time busy at most, so it never hogs a CPU or the disk), until `hurry` is set
/// (the kernel asks for culling: the table is wanted now).
pub struct Pace {
    hurry: Arc<AtomicBool>,
    mark: Instant,
    paused: Duration,
}

/// The longest nap after one directory: a hurry is noticed within this.
const MAX_NAP: Duration = Duration::from_millis(50);

impl Pace {
    pub fn new(hurry: Arc<AtomicBool>) -> Pace {
        Pace {
            hurry,
            mark: Instant::now(),
            paused: Duration::ZERO,
        }
    }

    fn after_directory(&mut self) {
        if !self.hurry.load(AtomicOrdering::Relaxed) {
            let nap = self.mark.elapsed().min(MAX_NAP);
            std::thread::sleep(nap);
            self.paused += nap;
        }
        self.mark = Instant::now();
    }
}

const ODDITIES_KEPT: usize = 16;

/// Object file names: exactly those the kernel makes (fs/cachefiles/key.c), by the decoder
/// behind [`crate::cachedir::ObjectName`] that `cachefilesctl` uses too (a name from readdir is already one
/// component, so the decoder alone decides).
pub fn is_object_name(name: &[u8]) -> bool {
    decode_name(name).is_ok()
}

/// Depth (components below the cache root) whose directories are shared out among the scan
/// threads: cache/<volume>/<fanout>, 256 of them per volume.
const SPLIT_DEPTH: usize = 2;

/// Scan threads: more only add lock and I/O contention.
const MAX_SCAN_THREADS: usize = 4;

/// Candidates all scan threads may hold together; a table this large is scanned by one thread.
const MAX_ENTRIES_ALL_THREADS: usize = 1 << 20;

/// Scans with one thread per CPU (up to `MAX_SCAN_THREADS`), as many as keep the threads' tables
/// together within `MAX_ENTRIES_ALL_THREADS` (each may need the whole `capacity`).
pub fn scan(root: &Dir, capacity: usize) -> ScanReport {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_SCAN_THREADS)
        .min(MAX_ENTRIES_ALL_THREADS / capacity.max(1))
        .max(1);
    scan_with_threads(root, capacity, threads)
}

/// The calling thread walks the top of the tree; the directories at `SPLIT_DEPTH` are then
/// walked by `threads` threads, each with its own bounded table, and the tables are merged.
/// The N oldest of the union of per-thread N-oldest sets are the N oldest of the tree, so the
/// result is the same as a single walk's; memory is `threads` tables at most.
pub fn scan_with_threads(root: &Dir, capacity: usize, threads: usize) -> ScanReport {
    walk_tree(root, capacity, threads, None)
}

/// A scan on the calling thread alone, throttled by `pace`: a background refresh.
pub fn scan_paced(root: &Dir, capacity: usize, pace: Pace) -> ScanReport {
    walk_tree(root, capacity, 1, Some(pace))
}

fn walk_tree(root: &Dir, capacity: usize, threads: usize, pace: Option<Pace>) -> ScanReport {
    let start = Instant::now();
    let root_fd = RawDir(root.as_raw_fd());
    let mut top = Walker::new(capacity);
    top.pace = pace;
    let mut units = Vec::new();
    match reopen(&root_fd) {
        Ok(dir) => top.walk(dir, &mut Vec::new(), Some(&mut units)),
        Err(_) => top.report.vanished += 1,
    }
    let queue = Mutex::new(units);
    let walk_units = |w: &mut Walker| loop {
        let Some(mut path) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
            break;
        };
        // Opened again one component at a time: whatever replaced it meanwhile is not followed.
        match open_path(&root_fd, &path) {
            Ok(dir) => w.walk(dir, &mut path, None),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                let name = path.pop().unwrap_or_default();
                note(
                    &mut w.report,
                    &path,
                    &name,
                    "symbolic link or non-directory",
                );
            }
            Err(_) => w.report.vanished += 1,
        }
    };
    let mut walkers = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads)
            .map_while(|i| {
                std::thread::Builder::new()
                    .name(format!("cachefilesd-scan{i}"))
                    .spawn_scoped(s, || {
                        let mut w = Walker::new(capacity);
                        walk_units(&mut w);
                        w
                    })
                    .ok()
            })
            .collect();
        walk_units(&mut top);
        let mut walkers = vec![top];
        for h in helpers {
            match h.join() {
                Ok(w) => walkers.push(w),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        walkers
    });
    let paused = walkers[0]
        .pace
        .as_ref()
        .map_or(Duration::ZERO, |p| p.paused);
    let mut report = merge(&mut walkers, capacity);
    report.duration = start.elapsed();
    report.paused = paused;
    report
}

/// The threads' tables merged into the `capacity` oldest of their union, and their counts summed.
fn merge(walkers: &mut [Walker], capacity: usize) -> ScanReport {
    let mut report = ScanReport::default();
    let mut candidates = Vec::new();
    for w in walkers.iter_mut() {
        let r = std::mem::take(&mut w.report);
        report.objects += r.objects;
        report.allocated = report.allocated.saturating_add(r.allocated);
        report.directories += r.directories;
        report.table_overflowed |= r.table_overflowed;
        report.oddities_seen += r.oddities_seen;
        report.vanished += r.vanished;
        let room = ODDITIES_KEPT.saturating_sub(report.oddities.len());
        report.oddities.extend(r.oddities.into_iter().take(room));
        candidates.append(&mut std::mem::take(&mut w.heap).into_vec());
    }
    candidates.sort_unstable();
    if candidates.len() > capacity {
        report.table_overflowed = true;
        candidates.truncate(capacity);
    }
    report.candidates = candidates;
    report
}

/// One scan thread's bounded table and counts.
struct Walker {
    heap: BinaryHeap<Candidate>,
    capacity: usize,
    report: ScanReport,
    pace: Option<Pace>,
}

impl Walker {
    fn new(capacity: usize) -> Walker {
        Walker {
            heap: BinaryHeap::with_capacity(capacity.min(1 << 16)),
            capacity,
            report: ScanReport::default(),
            pace: None,
        }
    }
}

fn note(report: &mut ScanReport, path: &[Box<[u8]>], name: &[u8], what: &'static str) {
    report.oddities_seen += 1;
    if report.oddities.len() < ODDITIES_KEPT {
        report.oddities.push(Oddity {
            path: show_path(path.iter().map(|c| &c[..]).chain([name])),
            what,
        });
    }
}

/// A directory entry as the walk sees it.
enum Entry {
    File(nix::sys::stat::FileStat),
    Dir,
    /// Left alone and reported: a link or a special file.
    Odd(&'static str),
    Vanished,
}

/// What the entry `name` of the directory `fd` is: from its d_type where that settles it, else
/// (and for every regular file, whose atime is needed) from a stat that follows no link.
fn classify(d_type: Option<Type>, fd: std::os::fd::RawFd, name: &[u8]) -> Entry {
    match d_type {
        Some(Type::Directory) => return Entry::Dir,
        Some(Type::Symlink) => return Entry::Odd("symbolic link"),
        Some(Type::File) | None => {}
        Some(_) => return Entry::Odd("special file"),
    }
    let Ok(st) = stat_at(&RawDir(fd), name) else {
        return Entry::Vanished;
    };
    match file_type(&st) {
        SFlag::S_IFREG => Entry::File(st),
        SFlag::S_IFDIR => Entry::Dir,
        SFlag::S_IFLNK => Entry::Odd("symbolic link"),
        _ => Entry::Odd("special file"),
    }
}

/// Counts an object and keeps it in `heap` while it is among the `capacity` oldest seen.
fn count_object(
    heap: &mut BinaryHeap<Candidate>,
    capacity: usize,
    report: &mut ScanReport,
    st: &nix::sys::stat::FileStat,
    here: &Arc<DirPath>,
    name: &[u8],
) {
    report.objects += 1;
    let allocated = (st.st_blocks as u64).saturating_mul(512);
    report.allocated = report.allocated.saturating_add(allocated);
    let atime = (st.st_atime, st.st_atime_nsec);
    if heap.len() >= capacity {
        report.table_overflowed = true;
        match heap.peek() {
            Some(youngest) if atime < youngest.atime => {
                heap.pop();
            }
            _ => return,
        }
    }
    heap.push(Candidate {
        atime,
        ino: st.st_ino,
        allocated,
        dir: here.clone(),
        name: name.into(),
    });
}

impl Walker {
    /// Walks `dir` (at `path`) depth first. With `split`, the directories at `SPLIT_DEPTH`
    /// are not walked but listed there for the scan threads.
    fn walk(
        &mut self,
        mut dir: Dir,
        path: &mut Vec<Box<[u8]>>,
        split: Option<&mut Vec<Vec<Box<[u8]>>>>,
    ) {
        let report = &mut self.report;
        let heap = &mut self.heap;
        let capacity = self.capacity;
        report.directories += 1;
        let here = Arc::new(DirPath(path.clone()));
        let mut subdirs: Vec<Box<[u8]>> = Vec::new();
        let fd = dir.as_raw_fd();
        for entry in dir.iter() {
            let Ok(entry) = entry else {
                report.vanished += 1;
                break;
            };
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let st = match classify(entry.file_type(), fd, name) {
                Entry::File(st) => st,
                Entry::Dir => {
                    subdirs.push(name.into());
                    continue;
                }
                Entry::Odd(what) => {
                    note(report, path, name, what);
                    continue;
                }
                Entry::Vanished => {
                    report.vanished += 1;
                    continue;
                }
            };
            if path.is_empty() || !is_object_name(name) {
                note(
                    report,
                    path,
                    name,
                    "file with a name the kernel does not make",
                );
                continue;
            }
            count_object(heap, capacity, report, &st, &here, name);
        }
        if let Some(pace) = self.pace.as_mut() {
            pace.after_directory();
        }
        self.descend(fd, path, subdirs, split);
    }

    /// Walks the subdirectories of the directory `fd` (at `path`), or with `split` lists those
    /// at `SPLIT_DEPTH` for the scan threads.
    fn descend(
        &mut self,
        fd: std::os::fd::RawFd,
        path: &mut Vec<Box<[u8]>>,
        subdirs: Vec<Box<[u8]>>,
        mut split: Option<&mut Vec<Vec<Box<[u8]>>>>,
    ) {
        if path.len() >= MAX_DEPTH {
            for name in subdirs {
                note(
                    &mut self.report,
                    path,
                    &name,
                    "directory nested deeper than the kernel makes",
                );
            }
            return;
        }
        for name in subdirs {
            if let Some(units) = split.as_deref_mut() {
                if path.len() + 1 == SPLIT_DEPTH {
                    let mut unit = path.clone();
                    unit.push(name);
                    units.push(unit);
                    continue;
                }
            }
            match open_dir_at(&RawDir(fd), &name) {
                Ok(sub) => {
                    path.push(name);
                    self.walk(sub, path, split.as_deref_mut());
                    path.pop();
                }
                Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => note(
                    &mut self.report,
                    path,
                    &name,
                    "symbolic link or non-directory",
                ),
                Err(_) => self.report.vanished += 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachedir::tree::dir_flags;
    use nix::sys::stat::{utimensat, UtimensatFlags};
    use nix::sys::time::TimeSpec;
    use std::fs;
    use std::path::Path;

    pub fn make_object(root: &Path, rel: &str, atime: i64) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![1u8; 4096]).unwrap();
        utimensat(
            None,
            &p,
            &TimeSpec::new(atime, 0),
            &TimeSpec::new(atime, 0),
            UtimensatFlags::NoFollowSymlink,
        )
        .unwrap();
    }

    /// `n` objects named by `name`, with the atimes `base..base + n` in an order unrelated to
    /// their names and directories.
    fn plant_shuffled(root: &Path, n: usize, base: i64, name: impl Fn(usize) -> String) {
        for i in 0..n {
            make_object(root, &name(i), base + ((i * 7919) % n) as i64);
        }
    }

    fn open(p: &Path) -> Dir {
        Dir::open(p, dir_flags(), nix::sys::stat::Mode::empty()).unwrap()
    }

    #[test]
    fn keeps_the_oldest_objects_in_bounded_memory() {
        let t = tempfile::tempdir().unwrap();
        plant_shuffled(t.path(), 200, 1_000_000, |i| {
            format!("Ierofs,v{}/@{:02x}/Dobj{i}", i % 3, i % 256)
        });
        let r = scan(&open(t.path()), 10);
        assert_eq!(r.objects, 200);
        assert!(r.table_overflowed);
        let atimes: Vec<i64> = r.candidates.iter().map(|c| c.atime.0).collect();
        assert_eq!(atimes, (1_000_000..1_000_010).collect::<Vec<_>>());
        assert!(r.candidates[0].path().starts_with("Ierofs,v"));
        assert_eq!(r.oddities_seen, 0);
    }

    #[test]
    fn threads_share_the_walk_and_find_the_same_oldest_objects() {
        let t = tempfile::tempdir().unwrap();
        plant_shuffled(t.path(), 600, 2_000_000, |i| {
            // T0, is not a kernel name (the all-zero key is S,).
            format!("I9p,v{}/@{:02x}/T{},", i % 4, (i * 31) % 256, i + 1)
        });
        // Objects above the split depth are the calling thread's.
        make_object(t.path(), "I9p,v0/Dshallow", 1_000);
        std::os::unix::fs::symlink("/", t.path().join("I9p,v1/@zz")).unwrap();
        let one = scan_with_threads(&open(t.path()), 50, 1);
        let paths = |r: &ScanReport| r.candidates.iter().map(Candidate::path).collect::<Vec<_>>();
        assert_eq!(one.objects, 601);
        assert_eq!(one.candidates[0].path(), "I9p,v0/Dshallow");
        assert_eq!(one.candidates[1].atime.0, 2_000_000);
        for threads in [2, 4] {
            let many = scan_with_threads(&open(t.path()), 50, threads);
            assert_eq!(paths(&many), paths(&one), "{threads} threads");
            assert_eq!(many.objects, one.objects);
            assert_eq!(many.allocated, one.allocated);
            assert_eq!(many.directories, one.directories);
            assert!(many.table_overflowed);
            assert_eq!(many.oddities, one.oddities);
        }
    }

    #[test]
    fn a_paced_scan_finds_the_same_and_stops_pausing_when_hurried() {
        let t = tempfile::tempdir().unwrap();
        plant_shuffled(t.path(), 300, 3_000_000, |i| {
            format!("Ierofs,v{}/@{:02x}/Dobj{i}", i % 2, i % 64)
        });
        let plain = scan_with_threads(&open(t.path()), 20, 1);
        let paths = |r: &ScanReport| r.candidates.iter().map(Candidate::path).collect::<Vec<_>>();
        let hurry = Arc::new(AtomicBool::new(false));
        let paced = scan_paced(&open(t.path()), 20, Pace::new(hurry.clone()));
        assert_eq!(paths(&paced), paths(&plain));
        assert_eq!(paced.objects, 300);
        assert_eq!(paced.directories, plain.directories);
        assert!(paced.paused > Duration::ZERO, "a paced scan never paused");
        assert!(paced.paused <= paced.duration);
        hurry.store(true, AtomicOrdering::Relaxed);
        let hurried = scan_paced(&open(t.path()), 20, Pace::new(hurry));
        assert_eq!(paths(&hurried), paths(&plain));
        assert_eq!(hurried.paused, Duration::ZERO);
        assert_eq!(plain.paused, Duration::ZERO);
    }

    #[test]
    fn odd_entries_are_reported_and_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        make_object(outside.path(), "Dsecret", 1);
        make_object(t.path(), "I9p,x/@00/T1,", 100);
        std::os::unix::fs::symlink(outside.path(), t.path().join("I9p,x/@01")).unwrap();
        std::os::unix::fs::symlink(
            outside.path().join("Dsecret"),
            t.path().join("I9p,x/@00/Dlink"),
        )
        .unwrap();
        nix::unistd::mkfifo(
            &t.path().join("I9p,x/@00/Dfifo"),
            nix::sys::stat::Mode::S_IRWXU,
        )
        .unwrap();
        fs::write(t.path().join("I9p,x/@00/weird"), b"x").unwrap();
        // A kernel prefix is not enough: the name must decode to a key.
        fs::write(t.path().join("I9p,x/@00/Snothex"), b"x").unwrap();
        fs::write(t.path().join("I9p,x/@00/line\nbreak"), b"x").unwrap();
        fs::write(t.path().join("toplevel"), b"x").unwrap();
        let r = scan(&open(t.path()), 100);
        assert_eq!(r.objects, 1);
        assert_eq!(r.candidates[0].path(), "I9p,x/@00/T1,");
        let mut whats: Vec<(String, &str)> = r
            .oddities
            .iter()
            .map(|o| (o.path.clone(), o.what))
            .collect();
        whats.sort();
        assert_eq!(
            whats,
            vec![
                ("I9p,x/@00/Dfifo".into(), "special file"),
                ("I9p,x/@00/Dlink".into(), "symbolic link"),
                (
                    "I9p,x/@00/Snothex".into(),
                    "file with a name the kernel does not make"
                ),
                (
                    "I9p,x/@00/line\\x0abreak".into(),
                    "file with a name the kernel does not make"
                ),
                (
                    "I9p,x/@00/weird".into(),
                    "file with a name the kernel does not make"
                ),
                ("I9p,x/@01".into(), "symbolic link"),
                (
                    "toplevel".into(),
                    "file with a name the kernel does not make"
                ),
            ]
        );
    }
}
