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

/// The order in which a scan reads the inodes of the objects it stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Inode-number order over several fan-out directories at a time (see `walk_batch`): on a
    /// tree that is not in memory, the inode tables are read in one sweep instead of at random.
    Inode,
    /// Each directory's entries as readdir returns them (hash order on ext4): the scan before
    /// 2026-12, kept so that the scan bench can measure both in one run.
    Readdir,
}

/// Scans with one thread per CPU (up to `MAX_SCAN_THREADS`), as many as keep the threads' tables
/// together within `MAX_ENTRIES_ALL_THREADS` (each may need the whole `capacity`).
pub fn scan(root: &Dir, capacity: usize) -> ScanReport {
    scan_in_order(root, capacity, default_threads(capacity), Order::Inode)
}

fn default_threads(capacity: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_SCAN_THREADS)
        .min(MAX_ENTRIES_ALL_THREADS / capacity.max(1))
        .max(1)
}

/// The calling thread walks the top of the tree; the directories at `SPLIT_DEPTH` are then
/// walked by `threads` threads, each with its own bounded table, and the tables are merged.
/// The N oldest of the union of per-thread N-oldest sets are the N oldest of the tree, so the
/// result is the same as a single walk's; memory is `threads` tables at most.
pub fn scan_with_threads(root: &Dir, capacity: usize, threads: usize) -> ScanReport {
    scan_in_order(root, capacity, threads, Order::Inode)
}

/// [`scan_with_threads`] reading the inodes in `order`.
pub fn scan_in_order(root: &Dir, capacity: usize, threads: usize, order: Order) -> ScanReport {
    walk_tree(root, capacity, threads, None, order)
}

/// A scan on the calling thread alone, throttled by `pace`: a background refresh.
pub fn scan_paced(root: &Dir, capacity: usize, pace: Pace) -> ScanReport {
    walk_tree(root, capacity, 1, Some(pace), Order::Inode)
}

fn walk_tree(
    root: &Dir,
    capacity: usize,
    threads: usize,
    pace: Option<Pace>,
    order: Order,
) -> ScanReport {
    let start = Instant::now();
    let root_fd = RawDir(root.as_raw_fd());
    let mut top = Walker::new(capacity);
    top.pace = pace;
    let mut units = Vec::new();
    match reopen(&root_fd) {
        Ok(dir) => top.walk(dir, &mut Vec::new(), Some(&mut units)),
        Err(_) => top.report.vanished += 1,
    }
    let per_batch = match order {
        Order::Inode => {
            // Directories in inode order too: on ext4 a directory's inode, and often its
            // blocks, lie near those of the directories made just before and after it.
            units.sort_unstable_by_key(|u: &Unit| u.ino);
            batch_dirs(units.len(), threads)
        }
        Order::Readdir => 1,
    };
    let mut batches: Vec<Vec<Vec<Box<[u8]>>>> = Vec::new();
    for (i, u) in units.into_iter().enumerate() {
        if i % per_batch == 0 {
            batches.push(Vec::with_capacity(per_batch));
        }
        if let Some(b) = batches.last_mut() {
            b.push(u.path);
        }
    }
    if order == Order::Inode {
        // Popped from the end: the lowest inodes first.
        batches.reverse();
    }
    let queue = Mutex::new(batches);
    let walk_units = |w: &mut Walker| loop {
        let Some(batch) = queue.lock().unwrap_or_else(|e| e.into_inner()).pop() else {
            break;
        };
        match order {
            Order::Inode => w.walk_batch(&root_fd, batch),
            Order::Readdir => {
                for path in batch {
                    w.walk_unit(&root_fd, path);
                }
            }
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

/// A directory at `SPLIT_DEPTH`, left for the scan threads, and its inode number.
struct Unit {
    ino: u64,
    path: Vec<Box<[u8]>>,
}

/// Fan-out directories per batch of [`Walker::walk_batch`]: a quarter of a thread's share, and
/// at most `MAX_BATCH_DIRS`.
fn batch_dirs(units: usize, threads: usize) -> usize {
    (units / (threads.max(1) * 4)).clamp(1, MAX_BATCH_DIRS)
}

/// A batch's files are stat'ed in inode order across its directories, so the more directories
/// the more of its objects each inode-table block read serves; but the lookups jump from
/// directory to directory, so all the batch's directory blocks must stay in memory meanwhile.
/// Measured (benches/scan.rs, cold, metadata evicted every 50 ms, 100k objects): 8 directories
/// read 900 MB, 16-64 read 370-530 MB, 128 and more were slower again; readdir order 4.3 GB.
const MAX_BATCH_DIRS: usize = 32;

/// Entries a batch lists before it stats them: bounds its memory whatever the directories hold.
const MAX_BATCH_ENTRIES: usize = if cfg!(test) { 64 } else { 1 << 16 };

/// Stats between two pauses of a paced scan: about a fan-out directory's worth.
const STATS_PER_REST: usize = 256;

/// The directories of one [`Walker::walk_batch`], by index.
#[derive(Default)]
struct Batch {
    /// Open while the batch is walked: the stats are relative to them.
    open: Vec<Dir>,
    /// `open`'s fds, and the one being listed.
    fds: Vec<std::os::fd::RawFd>,
    paths: Vec<Arc<DirPath>>,
    /// Subdirectories found, walked after the batch's files.
    subdirs: Vec<(u32, Box<[u8]>)>,
}

/// A regular file (or an entry of unknown type) listed by a batch, to be stat'ed in inode order.
struct Listed {
    ino: u64,
    /// Index into the batch's directories.
    dir: u32,
    d_type: Option<Type>,
    name: Box<[u8]>,
}

/// One scan thread's bounded table and counts.
struct Walker {
    heap: BinaryHeap<Candidate>,
    capacity: usize,
    report: ScanReport,
    pace: Option<Pace>,
}

impl Walker {
    /// Walks the directory at `path` below the root, opened again one component at a time:
    /// whatever replaced it since it was listed is not followed.
    fn walk_unit(&mut self, root: &RawDir, mut path: Vec<Box<[u8]>>) {
        if let Some(dir) = self.open_unit(root, &mut path) {
            self.walk(dir, &mut path, None);
        }
    }

    fn open_unit(&mut self, root: &RawDir, path: &mut Vec<Box<[u8]>>) -> Option<Dir> {
        match open_path(root, path) {
            Ok(dir) => Some(dir),
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                let name = path.pop().unwrap_or_default();
                note(
                    &mut self.report,
                    path,
                    &name,
                    "symbolic link or non-directory",
                );
                None
            }
            Err(_) => {
                self.report.vanished += 1;
                None
            }
        }
    }

    /// Walks the directories at `paths` together: lists them all (keeping them open), then
    /// stats their files in inode-number order, so that on a tree not in memory the inode
    /// tables are read in one sweep rather than at random, once per hash-ordered entry. Their
    /// subdirectories (none in a kernel-made tree) are walked after, one by one.
    fn walk_batch(&mut self, root: &RawDir, paths: Vec<Vec<Box<[u8]>>>) {
        let mut batch = Batch::default();
        let mut listed: Vec<Listed> = Vec::new();
        for mut path in paths {
            let Some(mut dir) = self.open_unit(root, &mut path) else {
                continue;
            };
            self.report.directories += 1;
            let index = batch.fds.len() as u32;
            batch.fds.push(dir.as_raw_fd());
            batch.paths.push(Arc::new(DirPath(path)));
            for entry in dir.iter() {
                let Ok(entry) = entry else {
                    self.report.vanished += 1;
                    break;
                };
                let name = entry.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                match entry.file_type() {
                    Some(Type::Directory) => batch.subdirs.push((index, name.into())),
                    Some(Type::File) | None => {
                        if listed.len() >= MAX_BATCH_ENTRIES {
                            self.stat_listed(&mut listed, &mut batch);
                        }
                        listed.push(Listed {
                            ino: entry.ino(),
                            dir: index,
                            d_type: entry.file_type(),
                            name: name.into(),
                        });
                    }
                    Some(Type::Symlink) => note(
                        &mut self.report,
                        &batch.paths[index as usize].0,
                        name,
                        "symbolic link",
                    ),
                    Some(_) => note(
                        &mut self.report,
                        &batch.paths[index as usize].0,
                        name,
                        "special file",
                    ),
                }
            }
            batch.open.push(dir);
            self.rest();
        }
        self.stat_listed(&mut listed, &mut batch);
        for (index, name) in std::mem::take(&mut batch.subdirs) {
            let i = index as usize;
            let mut path = batch.paths[i].0.clone();
            self.descend(batch.open[i].as_raw_fd(), &mut path, vec![(0, name)], None);
        }
    }

    /// Stats `listed` (entries of `batch`'s directories) in inode order and counts the objects.
    fn stat_listed(&mut self, listed: &mut Vec<Listed>, batch: &mut Batch) {
        listed.sort_unstable_by_key(|l| l.ino);
        for (k, l) in listed.drain(..).enumerate() {
            let i = l.dir as usize;
            let here = &batch.paths[i];
            match classify(l.d_type, batch.fds[i], &l.name) {
                Entry::File(st) => self.count(&st, here, &l.name),
                Entry::Dir => batch.subdirs.push((l.dir, l.name)),
                Entry::Odd(what) => note(&mut self.report, &here.0, &l.name, what),
                Entry::Vanished => self.report.vanished += 1,
            }
            if k % STATS_PER_REST == STATS_PER_REST - 1 {
                self.rest();
            }
        }
    }

    /// Counts a regular file found at `here`: an object if the kernel could have named it so.
    fn count(&mut self, st: &nix::sys::stat::FileStat, here: &Arc<DirPath>, name: &[u8]) {
        if here.0.is_empty() || !is_object_name(name) {
            note(
                &mut self.report,
                &here.0,
                name,
                "file with a name the kernel does not make",
            );
            return;
        }
        count_object(
            &mut self.heap,
            self.capacity,
            &mut self.report,
            st,
            here,
            name,
        );
    }

    /// A paced scan's pause after a slice of work (a directory listed, or `STATS_PER_REST` stats).
    fn rest(&mut self) {
        if let Some(pace) = self.pace.as_mut() {
            pace.after_directory();
        }
    }

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
    fn walk(&mut self, mut dir: Dir, path: &mut Vec<Box<[u8]>>, split: Option<&mut Vec<Unit>>) {
        let report = &mut self.report;
        let heap = &mut self.heap;
        let capacity = self.capacity;
        report.directories += 1;
        let here = Arc::new(DirPath(path.clone()));
        let mut subdirs: Vec<(u64, Box<[u8]>)> = Vec::new();
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
                    subdirs.push((entry.ino(), name.into()));
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
        subdirs: Vec<(u64, Box<[u8]>)>,
        mut split: Option<&mut Vec<Unit>>,
    ) {
        if path.len() >= MAX_DEPTH {
            for (_, name) in subdirs {
                note(
                    &mut self.report,
                    path,
                    &name,
                    "directory nested deeper than the kernel makes",
                );
            }
            return;
        }
        for (ino, name) in subdirs {
            if let Some(units) = split.as_deref_mut() {
                if path.len() + 1 == SPLIT_DEPTH {
                    let mut unit = path.clone();
                    unit.push(name);
                    units.push(Unit { ino, path: unit });
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

    /// Everything a report says but the time, with the oddities sorted (threads find them in
    /// any order).
    type Summary = (Vec<String>, Vec<(i64, u64)>, [u64; 5], bool, Vec<Oddity>);

    fn summary(r: &ScanReport) -> Summary {
        let mut odd = r.oddities.clone();
        odd.sort_by(|a, b| (&a.path, a.what).cmp(&(&b.path, b.what)));
        (
            r.candidates.iter().map(Candidate::path).collect(),
            r.candidates
                .iter()
                .map(|c| (c.atime.0, c.allocated))
                .collect(),
            [
                r.objects,
                r.allocated,
                r.directories,
                r.oddities_seen,
                r.vanished,
            ],
            r.table_overflowed,
            odd,
        )
    }

    #[test]
    fn inode_order_finds_exactly_what_readdir_order_finds() {
        let t = tempfile::tempdir().unwrap();
        // More files per fan-out directory than a batch lists before it stats them, so that
        // some are stat'ed while their directory is still being read.
        const { assert!(MAX_BATCH_ENTRIES < 150) };
        plant_shuffled(t.path(), 1500, 4_000_000, |i| {
            format!("Ierofs,v{}/@{:02x}/Dobj{i}", i % 2, (i / 2) % 9)
        });
        // Not in a kernel-made tree: a directory inside a fan-out directory, walked after the
        // batch, and odd entries among the batched files.
        make_object(t.path(), "Ierofs,v0/@03/deeper/Dold", 1_000);
        make_object(t.path(), "Ierofs,v1/@04/deeper/more/Dolder", 999);
        fs::write(t.path().join("Ierofs,v0/@05/weird"), b"x").unwrap();
        std::os::unix::fs::symlink("/", t.path().join("Ierofs,v1/@06/Dlink")).unwrap();
        let readdir = scan_in_order(&open(t.path()), 40, 1, Order::Readdir);
        assert_eq!(readdir.objects, 1502);
        assert_eq!(
            readdir.candidates[0].path(),
            "Ierofs,v1/@04/deeper/more/Dolder"
        );
        assert_eq!(readdir.candidates[1].path(), "Ierofs,v0/@03/deeper/Dold");
        assert_eq!(readdir.candidates[2].atime.0, 4_000_000);
        assert_eq!(readdir.oddities_seen, 2);
        for threads in [1, 2, 3] {
            let inode = scan_in_order(&open(t.path()), 40, threads, Order::Inode);
            assert_eq!(summary(&inode), summary(&readdir), "{threads} threads");
        }
        let hurry = Arc::new(AtomicBool::new(true));
        let paced = scan_paced(&open(t.path()), 40, Pace::new(hurry));
        assert_eq!(summary(&paced), summary(&readdir));
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
