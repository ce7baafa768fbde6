//! Reaping `graveyard/`: the kernel renames directories it wants gone in there and leaves their
//! deletion to the daemon. Removal uses dirfds and unlinkat only: a symlink inside is removed
//! as a link, never followed.

use super::tree::{file_type, open_dir_at, stat_at, RawDir};
use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::sys::stat::SFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};
use std::os::fd::AsRawFd;

/// Trees deeper than this are left for a later pass instead of exhausting fds or the stack.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReapReport {
    pub removed: u64,
    /// Entries that could not be removed, with the first error seen.
    pub failed: u64,
    pub first_error: Option<(String, Errno)>,
}

/// Empties the directory `graveyard` (the directory itself stays).
pub fn reap(graveyard: &Dir) -> ReapReport {
    let mut report = ReapReport::default();
    match Dir::openat(
        Some(graveyard.as_raw_fd()),
        ".",
        super::tree::dir_flags(),
        nix::sys::stat::Mode::empty(),
    ) {
        Ok(dir) => empty_dir(dir, 0, &mut String::new(), &mut report),
        Err(e) => fail(&mut report, ".", e),
    }
    report
}

fn fail(report: &mut ReapReport, path: &str, errno: Errno) {
    report.failed += 1;
    if report.first_error.is_none() {
        report.first_error = Some((path.to_string(), errno));
    }
}

fn empty_dir(mut dir: Dir, depth: usize, path: &mut String, report: &mut ReapReport) {
    let fd = dir.as_raw_fd();
    // Names first, then removal: unlinking while iterating can make getdents skip entries.
    let mut entries: Vec<(Box<[u8]>, Option<Type>)> = Vec::new();
    for entry in dir.iter() {
        match entry {
            Ok(e) => {
                let name = e.file_name().to_bytes();
                if name != b"." && name != b".." {
                    entries.push((name.into(), e.file_type()));
                }
            }
            Err(e) => {
                fail(report, path, e);
                break;
            }
        }
    }
    let parent = RawDir(fd);
    for (name, kind) in entries {
        let is_dir = match kind {
            Some(Type::Directory) => true,
            Some(_) => false,
            None => stat_at(&parent, &name)
                .map(|st| file_type(&st) == SFlag::S_IFDIR)
                .unwrap_or(false),
        };
        let shown = format!("{path}/{}", String::from_utf8_lossy(&name));
        if is_dir {
            if depth >= MAX_DEPTH {
                fail(report, &shown, Errno::ELOOP);
                continue;
            }
            match open_dir_at(&parent, &name) {
                Ok(sub) => {
                    let len = path.len();
                    path.push_str(&shown[len..]);
                    empty_dir(sub, depth + 1, path, report);
                    path.truncate(len);
                }
                Err(Errno::ENOENT) => continue,
                Err(e) => {
                    fail(report, &shown, e);
                    continue;
                }
            }
        }
        let flag = if is_dir {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        match unlinkat(Some(fd), &*name, flag) {
            Ok(()) => report.removed += 1,
            Err(Errno::ENOENT) => {}
            Err(e) => fail(report, &shown, e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

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
        let dir = Dir::open(
            &g,
            super::super::tree::dir_flags(),
            nix::sys::stat::Mode::empty(),
        )
        .unwrap();
        let r = reap(&dir);
        assert_eq!(r.failed, 0, "{r:?}");
        assert_eq!(r.removed, 8);
        assert_eq!(fs::read_dir(&g).unwrap().count(), 0);
        assert_eq!(fs::read(canary.path().join("keep")).unwrap(), b"precious");
    }
}
