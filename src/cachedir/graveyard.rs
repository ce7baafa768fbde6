//! The graveyard: entries buried in `graveyard/`, reaped with dirfds and no link followed.
//!
//! The kernel renames directories it wants gone into `graveyard/` and leaves their deletion to
//! the daemon; the tools bury entries the same way. Removal uses dirfds and unlinkat only: a
//! symlink inside is removed as a link, never followed.
//!
//! A tree of any depth is emptied with a bounded number of fds and stack frames: a directory
//! nested deeper than `HOIST_DEPTH` is renamed up to the graveyard's top level and emptied
//! from there in a later round, instead of being left behind with an error.

use super::names::{show_path, Name};
use super::tree::{file_type, list, open_dir, rename, reopen, stat, unlink, RawDir};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::sys::stat::SFlag;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};

/// Directories open at once while emptying one tree.
const HOIST_DEPTH: usize = 16;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub removed: u64,
    /// Entries that could not be removed, with the first error seen.
    pub failed: u64,
    pub first_error: Option<(String, Errno)>,
}

/// `%08x%08x` like the kernel's graves: seconds, then a counter (seeded from the pid so two
/// processes in a row do not start at the same number; collisions are retried anyway).
pub fn grave_name() -> Name {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0);
    let name = format!(
        "{secs:08x}{:08x}",
        (std::process::id() << 12).wrapping_add(n)
    );
    Name::new(name.as_bytes()).expect("16 hex digits are a name")
}

/// Moves `name` in `parent` into `graveyard` under a fresh grave name, as
/// cachefiles_bury_object does. A symlink is moved as a link. Returns the grave's name.
pub fn bury(parent: &impl AsRawFd, name: &Name, graveyard: &impl AsRawFd) -> Result<Name, Errno> {
    loop {
        let grave = grave_name();
        match rename(parent, name, graveyard, &grave, true) {
            Err(Errno::EEXIST) => continue,
            r => return r.map(|()| grave),
        }
    }
}

/// Empties the directory `graveyard` (the directory itself stays).
pub fn reap(graveyard: &Dir) -> ReapReport {
    let mut reaper = Reaper {
        report: ReapReport::default(),
        hoisted: Vec::new(),
    };
    let mut top = match reopen(graveyard) {
        Ok(d) => d,
        Err(e) => {
            reaper.fail(".".into(), e);
            return reaper.report;
        }
    };
    let top_fd = RawDir(top.as_raw_fd());
    reaper.empty(&mut top, 0, &[], &top_fd);
    while let Some(grave) = reaper.hoisted.pop() {
        let path = [grave.as_bytes()];
        reaper.remove(&top_fd, &grave, Some(true), 0, &path, &top_fd);
    }
    reaper.report
}

struct Reaper {
    report: ReapReport,
    /// Deep directories moved to the top level, still to be emptied.
    hoisted: Vec<Name>,
}

impl Reaper {
    fn fail(&mut self, path: String, errno: Errno) {
        self.report.failed += 1;
        if self.report.first_error.is_none() {
            self.report.first_error = Some((path, errno));
        }
    }

    /// Removes everything in `dir` (at `path`, `depth` levels below the top).
    fn empty(&mut self, dir: &mut Dir, depth: usize, path: &[&[u8]], top: &RawDir) {
        let fd = RawDir(dir.as_raw_fd());
        // Names first, then removal: unlinking while iterating can make getdents skip entries.
        let mut entries: Vec<(Name, Option<bool>)> = Vec::new();
        for entry in dir.iter() {
            match entry {
                Ok(e) => {
                    let raw = e.file_name().to_bytes();
                    if raw == b"." || raw == b".." {
                        continue;
                    }
                    match Name::new(raw) {
                        Ok(n) => entries.push((n, e.file_type().map(|t| t == Type::Directory))),
                        Err(_) => self.fail(show_path(path.iter().copied()), Errno::EINVAL),
                    }
                }
                Err(e) => {
                    self.fail(show_path(path.iter().copied()), e);
                    break;
                }
            }
        }
        for (name, is_dir) in entries {
            let mut here = path.to_vec();
            here.push(name.as_bytes());
            self.remove(&fd, &name, is_dir, depth, &here, top);
        }
    }

    fn remove(
        &mut self,
        parent: &RawDir,
        name: &Name,
        is_dir: Option<bool>,
        depth: usize,
        path: &[&[u8]],
        top: &RawDir,
    ) {
        let is_dir = is_dir
            .unwrap_or_else(|| stat(parent, name).is_ok_and(|st| file_type(&st) == SFlag::S_IFDIR));
        if is_dir {
            if depth >= HOIST_DEPTH {
                match bury(parent, name, top) {
                    Ok(grave) => self.hoisted.push(grave),
                    Err(Errno::ENOENT) => {}
                    Err(e) => self.fail(show_path(path.iter().copied()), e),
                }
                return;
            }
            match open_dir(parent, name) {
                Ok(mut sub) => self.empty(&mut sub, depth + 1, path, top),
                Err(Errno::ENOENT) => return,
                Err(e) => {
                    self.fail(show_path(path.iter().copied()), e);
                    return;
                }
            }
        }
        match unlink(parent, name, is_dir) {
            Ok(()) => self.report.removed += 1,
            Err(Errno::ENOENT) => {}
            Err(e) => self.fail(show_path(path.iter().copied()), e),
        }
    }
}

/// The names in `graveyard` (for reports); the count only, nothing is opened below it.
pub fn count(graveyard: &Dir) -> Result<u64, Errno> {
    let mut d = reopen(graveyard)?;
    list(&mut d).map(|v| v.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachedir::tree::dir_flags;
    use std::fs;

    fn open(p: &std::path::Path) -> Dir {
        Dir::open(p, dir_flags(), nix::sys::stat::Mode::empty()).unwrap()
    }

    #[test]
    fn empties_nested_trees_without_following_links() {
        let t = tempfile::tempdir().unwrap();
        let canary = tempfile::tempdir().unwrap();
        fs::write(canary.path().join("keep"), b"precious").unwrap();
        let g = t.path().join("graveyard");
        fs::create_dir_all(g.join("0000000100000001/@00/@01")).unwrap();
        fs::write(g.join("0000000100000001/@00/Dx"), b"x").unwrap();
        fs::write(g.join("0000000100000001/@00/@01/Dy"), b"y").unwrap();
        std::os::unix::fs::symlink(canary.path(), g.join("0000000100000001/link")).unwrap();
        std::os::unix::fs::symlink(canary.path().join("keep"), g.join("filelink")).unwrap();
        nix::unistd::mkfifo(&g.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let r = reap(&open(&g));
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(r.removed, 8);
        assert_eq!(fs::read_dir(&g).unwrap().count(), 0);
        assert_eq!(fs::read(canary.path().join("keep")).unwrap(), b"precious");
    }

    /// Before: entries deeper than 32 levels were left behind and reported as ELOOP.
    #[test]
    fn trees_of_any_depth_are_emptied() {
        let t = tempfile::tempdir().unwrap();
        let g = t.path().join("graveyard");
        let mut deep = g.join("0000000100000002");
        for i in 0..200 {
            deep.push(format!("d{i}"));
        }
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("Dleaf"), b"x").unwrap();
        let r = reap(&open(&g));
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(fs::read_dir(&g).unwrap().count(), 0);
        // 201 directories and the file; hoisted directories are counted once, when removed.
        assert_eq!(r.removed, 202);
        assert_eq!(count(&open(&g)), Ok(0));
    }
}
