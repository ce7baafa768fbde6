//! Scanning the cache tree for cull candidates: a depth-first walk with dirfds that keeps only
//! the N least recently used objects (a max-heap on atime), so memory is bounded by the
//! culltable size whatever the size of the cache. No `inuse` writes: the kernel refuses to
//! cull an object in use (EBUSY) and that answer is taken at cull time.

use super::tree::{file_type, open_dir_at, stat_at, RawDir};
use nix::dir::{Dir, Type};
use nix::sys::stat::SFlag;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Deeper than any layout the kernel makes (cache/I<volume>/@xx/<object>).
const MAX_DEPTH: usize = 6;

/// A directory below the cache root, as the components that lead to it.
#[derive(Debug, PartialEq, Eq)]
pub struct DirPath(pub Vec<Box<[u8]>>);

impl DirPath {
    pub fn display(&self) -> String {
        self.0
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect::<Vec<_>>()
            .join("/")
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
        s.push_str(&String::from_utf8_lossy(&self.name));
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
}

const ODDITIES_KEPT: usize = 16;

/// Object file names the kernel makes (fs/cachefiles/key.c): D, S, T or E and then the key.
pub fn is_object_name(name: &[u8]) -> bool {
    matches!(name.first(), Some(b'D' | b'S' | b'T' | b'E')) && name.len() > 1
}

pub fn scan(root: &Dir, capacity: usize) -> ScanReport {
    let start = Instant::now();
    let mut report = ScanReport::default();
    let mut heap: BinaryHeap<Candidate> = BinaryHeap::with_capacity(capacity.min(1 << 16));
    let mut path = Vec::new();
    match Dir::openat(
        Some(root.as_raw_fd()),
        ".",
        super::tree::dir_flags(),
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(dir) => walk(dir, &mut path, &mut heap, capacity, &mut report),
        Err(_) => report.vanished += 1,
    }
    report.candidates = heap.into_sorted_vec();
    report.duration = start.elapsed();
    report
}

fn note(report: &mut ScanReport, path: &[Box<[u8]>], name: &[u8], what: &'static str) {
    report.oddities_seen += 1;
    if report.oddities.len() < ODDITIES_KEPT {
        let mut p: Vec<String> = path
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        p.push(String::from_utf8_lossy(name).into_owned());
        report.oddities.push(Oddity {
            path: p.join("/"),
            what,
        });
    }
}

fn walk(
    mut dir: Dir,
    path: &mut Vec<Box<[u8]>>,
    heap: &mut BinaryHeap<Candidate>,
    capacity: usize,
    report: &mut ScanReport,
) {
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
        let kind = match entry.file_type() {
            Some(Type::Directory) => Some(SFlag::S_IFDIR),
            Some(Type::File) => Some(SFlag::S_IFREG),
            Some(Type::Symlink) => Some(SFlag::S_IFLNK),
            Some(_) => Some(SFlag::S_IFIFO),
            None => None,
        };
        if kind == Some(SFlag::S_IFDIR) {
            subdirs.push(name.into());
            continue;
        }
        if matches!(kind, Some(SFlag::S_IFLNK)) {
            note(report, path, name, "symbolic link");
            continue;
        }
        if matches!(kind, Some(SFlag::S_IFIFO)) {
            note(report, path, name, "special file");
            continue;
        }
        let Ok(st) = stat_at(&RawDir(fd), name) else {
            report.vanished += 1;
            continue;
        };
        match file_type(&st) {
            SFlag::S_IFREG => {}
            SFlag::S_IFDIR => {
                subdirs.push(name.into());
                continue;
            }
            SFlag::S_IFLNK => {
                note(report, path, name, "symbolic link");
                continue;
            }
            _ => {
                note(report, path, name, "special file");
                continue;
            }
        }
        if path.is_empty() || !is_object_name(name) {
            note(
                report,
                path,
                name,
                "file with a name the kernel does not make",
            );
            continue;
        }
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
                _ => continue,
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
    if path.len() >= MAX_DEPTH {
        for name in subdirs {
            note(
                report,
                path,
                &name,
                "directory nested deeper than the kernel makes",
            );
        }
        return;
    }
    for name in subdirs {
        match open_dir_at(&RawDir(fd), &name) {
            Ok(sub) => {
                path.push(name);
                walk(sub, path, heap, capacity, report);
                path.pop();
            }
            Err(nix::errno::Errno::ELOOP | nix::errno::Errno::ENOTDIR) => {
                note(report, path, &name, "symbolic link or non-directory")
            }
            Err(_) => report.vanished += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cull::tree::dir_flags;
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

    fn open(p: &Path) -> Dir {
        Dir::open(p, dir_flags(), nix::sys::stat::Mode::empty()).unwrap()
    }

    #[test]
    fn keeps_the_oldest_objects_in_bounded_memory() {
        let t = tempfile::tempdir().unwrap();
        for i in 0..200 {
            // Atimes out of order relative to names and directories.
            let atime = 1_000_000 + ((i * 7919) % 200) as i64;
            make_object(
                t.path(),
                &format!("Ierofs,v{}/@{:02x}/Dobj{i}", i % 3, i % 256),
                atime,
            );
        }
        let r = scan(&open(t.path()), 10);
        assert_eq!(r.objects, 200);
        assert!(r.table_overflowed);
        let atimes: Vec<i64> = r.candidates.iter().map(|c| c.atime.0).collect();
        assert_eq!(atimes, (1_000_000..1_000_010).collect::<Vec<_>>());
        assert!(r.candidates[0].path().starts_with("Ierofs,v"));
        assert_eq!(r.oddities_seen, 0);
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
                    "I9p,x/@00/line\nbreak".into(),
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
