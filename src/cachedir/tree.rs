//! No-follow tree operations: dirfd-relative opens and stats of validated names.
//!
//! Every path under the cache root is opened from a dirfd with O_NOFOLLOW (several components
//! at once with openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS where the kernel has it, else one
//! at a time), and every name is a validated [`Name`], so nothing found on disk or typed by a
//! user can lead outside the root.

use super::names::Name;
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::UnlinkatFlags;
use rustix::fs::{OFlags, ResolveFlags};
use std::fs::File;
use std::os::fd::{AsRawFd, BorrowedFd};

pub fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The fd of `dir` for the length of one call, for the rustix calls.
pub(super) fn borrow<F: AsRawFd>(dir: &F) -> BorrowedFd<'_> {
    // SAFETY: `dir` owns an open fd (a `Dir`, a `File`) or borrows one from a `Dir` that outlives
    // it (`RawDir`), and the result cannot outlive `dir`, so the fd stays open while it is used.
    unsafe { BorrowedFd::borrow_raw(dir.as_raw_fd()) }
}

pub(crate) fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

fn name_or_einval(name: &[u8]) -> Result<Name, Errno> {
    Name::new(name).map_err(|_| Errno::EINVAL)
}

/// Opens the directory `name` under `parent`; a symlink fails (ELOOP/ENOTDIR).
pub fn open_dir(parent: &impl AsRawFd, name: &Name) -> Result<Dir, Errno> {
    Dir::openat(
        Some(parent.as_raw_fd()),
        name.as_bytes(),
        dir_flags(),
        Mode::empty(),
    )
}

/// [`open_dir`] for a name still in bytes (from readdir): refused (EINVAL) unless a [`Name`].
pub fn open_dir_at(parent: &impl AsRawFd, name: &[u8]) -> Result<Dir, Errno> {
    open_dir(parent, &name_or_einval(name)?)
}

/// `fstatat(AT_SYMLINK_NOFOLLOW)`: a symlink is reported as itself.
pub fn stat(parent: &impl AsRawFd, name: &Name) -> Result<FileStat, Errno> {
    nix::sys::stat::fstatat(
        Some(parent.as_raw_fd()),
        name.as_bytes(),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )
}

/// [`stat`] for a name still in bytes: refused (EINVAL) unless a [`Name`].
pub fn stat_at(parent: &impl AsRawFd, name: &[u8]) -> Result<FileStat, Errno> {
    stat(parent, &name_or_einval(name)?)
}

/// A single path component: not empty, no `/`, no NUL, not `.` or `..`, at most NAME_MAX.
pub fn is_component(name: &[u8]) -> bool {
    Name::new(name).is_ok()
}

pub fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// `dir` opened again (a second fd on the same directory, e.g. for another thread).
pub fn reopen(dir: &impl AsRawFd) -> Result<Dir, Errno> {
    Dir::openat(Some(dir.as_raw_fd()), ".", dir_flags(), Mode::empty())
}

/// Opens `components` below `root` without following any link; every component must be a
/// [`Name`] (EINVAL otherwise).
pub fn open_path(root: &impl AsRawFd, components: &[Box<[u8]>]) -> Result<Dir, Errno> {
    let names = components
        .iter()
        .map(|c| name_or_einval(c))
        .collect::<Result<Vec<_>, _>>()?;
    open_names(root, &names)
}

/// Opens `names` below `root` without following any link.
pub fn open_names(root: &impl AsRawFd, names: &[Name]) -> Result<Dir, Errno> {
    if names.is_empty() {
        return reopen(root);
    }
    let joined = names
        .iter()
        .map(|n| n.as_bytes())
        .collect::<Vec<_>>()
        .join(&b'/');
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat2(
        borrow(root),
        &joined[..],
        flags,
        rustix::fs::Mode::empty(),
        how,
    ) {
        Ok(fd) => Dir::from(fd),
        // Before 5.6, or filtered by a seccomp policy: the same walk one component at a time.
        Err(e)
            if matches!(
                errno(e),
                Errno::ENOSYS | Errno::EPERM | Errno::EINVAL | Errno::EAGAIN
            ) =>
        {
            open_stepwise(root, names)
        }
        Err(e) => Err(errno(e)),
    }
}

/// [`open_names`] one component at a time, each with O_NOFOLLOW.
fn open_stepwise(root: &impl AsRawFd, names: &[Name]) -> Result<Dir, Errno> {
    let mut dir = reopen(root)?;
    for n in names {
        dir = open_dir(&dir, n)?;
    }
    Ok(dir)
}

/// Opens the file `name` in `dir` without following a link, blocking or taking a controlling
/// terminal (a FIFO or device planted there must not hang the caller).
pub fn open_file(dir: &impl AsRawFd, name: &Name, flags: OFlags) -> Result<File, Errno> {
    let flags = flags | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    rustix::fs::openat(
        borrow(dir),
        name.as_bytes(),
        flags,
        rustix::fs::Mode::empty(),
    )
    .map(File::from)
    .map_err(errno)
}

/// An unnamed regular file in `dir` (O_TMPFILE), 0600.
pub fn open_tmpfile(dir: &impl AsRawFd) -> Result<File, Errno> {
    rustix::fs::openat(
        borrow(dir),
        ".",
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .map(File::from)
    .map_err(errno)
}

/// `mkdirat(parent, name, 0700)`; `Ok(false)` if something is there already.
pub fn make_dir(parent: &impl AsRawFd, name: &Name) -> Result<bool, Errno> {
    match nix::sys::stat::mkdirat(Some(parent.as_raw_fd()), name.as_bytes(), Mode::S_IRWXU) {
        Ok(()) => Ok(true),
        Err(Errno::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Renames `from_dir/from` to `to_dir/to`; a symlink is moved as a link. With `noreplace`,
/// an existing `to` is EEXIST.
pub fn rename(
    from_dir: &impl AsRawFd,
    from: &Name,
    to_dir: &impl AsRawFd,
    to: &Name,
    noreplace: bool,
) -> Result<(), Errno> {
    let flags = if noreplace {
        RenameFlags::RENAME_NOREPLACE
    } else {
        RenameFlags::empty()
    };
    nix::fcntl::renameat2(
        Some(from_dir.as_raw_fd()),
        from.as_bytes(),
        Some(to_dir.as_raw_fd()),
        to.as_bytes(),
        flags,
    )
}

/// Removes the entry `name` (an empty directory when `is_dir`); a symlink is removed itself.
pub fn unlink(parent: &impl AsRawFd, name: &Name, is_dir: bool) -> Result<(), Errno> {
    let flag = if is_dir {
        UnlinkatFlags::RemoveDir
    } else {
        UnlinkatFlags::NoRemoveDir
    };
    nix::unistd::unlinkat(Some(parent.as_raw_fd()), name.as_bytes(), flag)
}

/// The entries of `dir` but `.` and `..`, sorted by name.
pub fn list(dir: &mut Dir) -> Result<Vec<Name>, Errno> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            // readdir returns single components; anything else is a corrupt directory.
            out.push(name_or_einval(n)?);
        }
    }
    out.sort();
    Ok(out)
}

/// A raw dirfd borrowed while its `Dir` is being iterated (iteration borrows the `Dir`
/// mutably, yet entries must be looked up relative to it).
pub struct RawDir(pub std::os::fd::RawFd);

impl AsRawFd for RawDir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn paths_never_follow_links_nor_leave_the_root() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), t.path().join("a/link")).unwrap();
        let root = Dir::open(t.path(), dir_flags(), Mode::empty()).unwrap();
        let comps = |v: &[&str]| -> Vec<Box<[u8]>> {
            v.iter().map(|s| s.as_bytes().to_vec().into()).collect()
        };
        assert!(open_path(&root, &comps(&["a", "b"])).is_ok());
        assert!(matches!(
            open_path(&root, &comps(&["a", "link"])),
            Err(Errno::ELOOP | Errno::ENOTDIR)
        ));
        for bad in [&["a", ".."][..], &["a/b"], &[".."], &[""]] {
            assert_eq!(open_path(&root, &comps(bad)).err(), Some(Errno::EINVAL));
        }
        assert_eq!(stat_at(&root, b"../x").err(), Some(Errno::EINVAL));
        // The walk used where openat2 is missing gives the same answers.
        let names = |v: &[&str]| -> Vec<Name> {
            v.iter().map(|s| Name::new(s.as_bytes()).unwrap()).collect()
        };
        assert!(open_stepwise(&root, &names(&["a", "b"])).is_ok());
        assert!(matches!(
            open_stepwise(&root, &names(&["a", "link"])),
            Err(Errno::ELOOP | Errno::ENOTDIR)
        ));
        let st = stat(&root, &Name::new(b"a").unwrap()).unwrap();
        assert_eq!(file_type(&st), SFlag::S_IFDIR);
    }
}
