//! `prefill`: puts a blob into the cache so that its EROFS mount finds it whole and reads none.
//!
//! The blob becomes the object an EROFS-over-fscache mount will look up, so that the mount
//! finds it valid and fully present and sends no READ to the daemon.
//!
//! What the kernel checks (fs/cachefiles/namei.c cachefiles_open_file → xattr.c
//! cachefiles_check_auxdata, after the daemon's `copen` set the cookie's object size):
//! * the xattr is exactly header + aux long (EROFS cookies have no aux data: 18 bytes),
//!   type 1, object_size equal to what `copen` answers (the daemon answers the blob size),
//!   content anything but DIRTY. The kernel itself always writes content 0 (NO_DATA:
//!   `content_info` is never changed in 6.12); presence of data is decided by SEEK_DATA /
//!   SEEK_HOLE, not by this byte. We write 0 too, so a prefilled object is byte-for-byte what
//!   the kernel would have committed.
//! * no hole in any range EROFS reads: the data is written in full (zeros included, never
//!   skipped) and the tail is zero-filled up to round_up(size, 4096), the size the kernel
//!   truncates its tmpfiles to, so the last page is data too even on a 1 KiB-block filesystem.
//! * the volume directory `cache/I<volume>` carries the volume xattr (be32 0, no coherency for
//!   EROFS) or the kernel buries the whole volume; all 256 fanouts exist.
//!
//! Crash safety: the data goes into an O_TMPFILE in the fanout directory, is fsynced with its
//! xattr, then linked under a temporary name in `graveyard/` and renamed over the object name.
//! rename(2) replaces atomically, so the name always refers to the old object or the complete
//! new one; a crash between link and rename leaves only a graveyard entry, which the daemon
//! deletes. A new volume directory is likewise built in the graveyard and renamed into place.
//!
//! Linking the tmpfile: `linkat(fd, "", ..., AT_EMPTY_PATH)` needs CAP_DAC_READ_SEARCH on 6.12,
//! so we link `/proc/self/fd/N` with AT_SYMLINK_FOLLOW (the method open(2) documents for
//! O_TMPFILE), and fall back to AT_EMPTY_PATH only when /proc is not mounted.

use super::ToolError;
use crate::cachedir::graveyard::grave_name;
use crate::cachedir::layout::{self, ObjectXattr, VolumeXattr};
use crate::cachedir::names::{
    fanout_dir, fanout_dir_of, show_path, Name, ObjectName, VolumeName, CACHE, GRAVEYARD,
};
use crate::cachedir::tree::{file_type, make_dir, open_dir, open_tmpfile, rename, stat};
use crate::cachedir::{xattr, CacheDir, Escaped};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::SFlag;
use rustix::fs::{Mode, OFlags};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

pub struct Prefill<'a> {
    pub volume: &'a VolumeName,
    pub key: &'a [u8],
    pub from: &'a Path,
}

#[derive(Debug, serde::Serialize)]
pub struct PrefillOutcome {
    /// Below the cache root: `cache/I<volume>/@xx/<name>`, escaped.
    pub path: String,
    pub object_size: u64,
    pub volume_created: bool,
    pub replaced: bool,
}

/// The volume xattr EROFS volumes get: reserved 0, no coherency data.
fn erofs_volume_xattr() -> Vec<u8> {
    VolumeXattr {
        reserved: 0,
        coherency: Vec::new(),
    }
    .encode()
}

fn validate(req: &Prefill) -> Result<ObjectName, ToolError> {
    let v = req.volume.key();
    if !v.starts_with(b"erofs,") || v.len() == 6 {
        return Err(ToolError::Invalid(
            "prefill makes EROFS objects only: --volume must be erofs,<domain_id or fsid>".into(),
        ));
    }
    if req.key.is_empty() || req.key.contains(&0) {
        return Err(ToolError::Invalid(
            "the key (EROFS fsid) must be non-empty text".into(),
        ));
    }
    Ok(ObjectName::for_key(req.key)?)
}

/// Opens the source without blocking (a FIFO with no writer would block `open` for ever, with
/// the cache lock held) and refuses anything but a regular file. O_NONBLOCK stays set: it
/// changes nothing for regular files.
fn open_source(from: &Path) -> Result<File, ToolError> {
    let source_err = |source| ToolError::Source {
        path: from.to_path_buf(),
        source,
    };
    let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let src =
        File::from(rustix::fs::open(from, flags, Mode::empty()).map_err(|e| source_err(e.into()))?);
    if !src.metadata().map_err(source_err)?.is_file() {
        return Err(ToolError::Invalid(format!(
            "{} is not a regular file",
            Escaped(from.as_os_str().as_encoded_bytes())
        )));
    }
    Ok(src)
}

pub fn prefill(root: &CacheDir, req: &Prefill) -> Result<PrefillOutcome, ToolError> {
    let object = validate(req)?;
    let name = object.name();
    let mut src = open_source(req.from)?;

    let cache = root.ensure_cache()?;
    let graveyard = root.ensure_graveyard()?;
    let vol_name = req.volume.dir_name();
    let volume_created = ensure_volume(root, &cache, &graveyard, vol_name)?;
    let vol = open_dir(&cache, vol_name)
        .map_err(|e| ToolError::os(root, "cannot open", &[&CACHE, vol_name], e))?;
    let fan_name = fanout_dir_of(req.volume, req.key);
    let rel: [&[u8]; 4] = [&CACHE, vol_name, &fan_name, name];
    let fan =
        open_dir(&vol, &fan_name).map_err(|e| ToolError::os(root, "cannot open", &rel[..3], e))?;

    let replaced = match stat(&fan, name) {
        Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
            return Err(ToolError::Invalid(format!(
                "{} is a directory; run `cachefilesctl check --repair` first",
                root.show(&rel)
            )))
        }
        Ok(_) => true,
        Err(Errno::ENOENT) => false,
        Err(e) => return Err(ToolError::os(root, "cannot stat", &rel, e)),
    };

    let mut tmp = open_tmpfile(&fan)
        .map_err(|e| ToolError::os(root, "cannot make an O_TMPFILE in", &rel[..3], e))?;
    let size = write_object(root, &rel, req.from, &mut src, &mut tmp)?;

    let temp = grave_name();
    link_tmpfile(&tmp, &graveyard, &temp)
        .map_err(|e| ToolError::os(root, "cannot link the new object into", &[&GRAVEYARD], e))?;
    rename(&graveyard, &temp, &fan, name, false)
        .map_err(|e| ToolError::os(root, "cannot rename the new object to", &rel, e))?;
    for d in [&fan, &graveyard] {
        nix::unistd::fsync(d.as_raw_fd())
            .map_err(|e| ToolError::os(root, "cannot fsync", &rel[..3], e))?;
    }
    Ok(PrefillOutcome {
        path: show_path(rel),
        object_size: size,
        volume_created,
        replaced,
    })
}

/// Copies the blob into the unnamed new object, zero-fills it up to the size the kernel
/// truncates to, sets its xattr and syncs it. Returns the blob's size.
fn write_object(
    root: &CacheDir,
    rel: &[&[u8]; 4],
    from: &Path,
    src: &mut File,
    tmp: &mut File,
) -> Result<u64, ToolError> {
    let source_err = |source| ToolError::Source {
        path: from.to_path_buf(),
        source,
    };
    let tmp_err = |e: std::io::Error| {
        ToolError::os(
            root,
            "cannot write the new object for",
            rel,
            Errno::from_raw(e.raw_os_error().unwrap_or(Errno::EIO as i32)),
        )
    };
    let mut size = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(source_err(e)),
        };
        tmp.write_all(&buf[..n]).map_err(tmp_err)?;
        size += n as u64;
    }
    let padded = layout::round_up_dio(size);
    let tail = (padded - size) as usize;
    tmp.write_all(&vec![0u8; tail]).map_err(tmp_err)?;
    tmp.set_len(padded).map_err(tmp_err)?;
    let xattr = ObjectXattr {
        object_size: size,
        zero_point: 0,
        kind: layout::TYPE_DATA,
        content: layout::Content::NoData,
        aux: Vec::new(),
    };
    xattr::set(tmp, &xattr.encode())
        .map_err(|e| ToolError::os(root, "cannot set the xattr on the new object for", rel, e))?;
    tmp.sync_all().map_err(tmp_err)?;
    Ok(size)
}

fn link_tmpfile(tmp: &File, dir: &Dir, name: &Name) -> Result<(), Errno> {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let proc_path = format!("/proc/self/fd/{}", tmp.as_raw_fd());
    let name = OsStr::from_bytes(name.as_bytes());
    match nix::unistd::linkat(
        None,
        OsStr::new(&proc_path),
        Some(dir.as_raw_fd()),
        name,
        AtFlags::AT_SYMLINK_FOLLOW,
    ) {
        Err(Errno::ENOENT) if !Path::new("/proc/self/fd").exists() => nix::unistd::linkat(
            Some(tmp.as_raw_fd()),
            OsStr::new(""),
            Some(dir.as_raw_fd()),
            name,
            AtFlags::AT_EMPTY_PATH,
        ),
        r => r,
    }
}

/// Makes `cache/<vol_name>` as the kernel would (0700, volume xattr, 256 fanouts) unless it is
/// there; an existing one must carry the xattr the kernel expects, or the kernel would bury it
/// and the prefilled object with it. Returns whether it was created.
fn ensure_volume(
    root: &CacheDir,
    cache: &Dir,
    graveyard: &Dir,
    vol_name: &Name,
) -> Result<bool, ToolError> {
    let rel: [&[u8]; 2] = [&CACHE, vol_name];
    let want = erofs_volume_xattr();
    match stat(cache, vol_name) {
        Ok(st) if file_type(&st) == SFlag::S_IFDIR => {
            let vol = open_dir(cache, vol_name)
                .map_err(|e| ToolError::os(root, "cannot open", &rel, e))?;
            match xattr::get(&vol) {
                Ok(Some(x)) if x == want => {}
                Ok(_) => {
                    return Err(ToolError::Invalid(format!(
                    "{} lacks the volume xattr the kernel expects (it would discard the volume); \
                         remove it with `cachefilesctl purge --volume {}` first",
                    root.show(&rel),
                    Escaped(&vol_name[1..])
                )))
                }
                Err(e) => return Err(ToolError::os(root, "cannot read the xattr of", &rel, e)),
            }
            make_fanouts(root, &vol, &rel)?;
            Ok(false)
        }
        Ok(_) => Err(ToolError::Invalid(format!(
            "{} is not a directory; run `cachefilesctl check --repair` first",
            root.show(&rel)
        ))),
        Err(Errno::ENOENT) => {
            let temp = grave_name();
            let g: [&[u8]; 2] = [&GRAVEYARD, &temp];
            let vol = root.ensure_dir(graveyard, &g[..1], &temp)?;
            xattr::set(&vol, &want)
                .map_err(|e| ToolError::os(root, "cannot set the volume xattr on", &g, e))?;
            make_fanouts(root, &vol, &g)?;
            nix::unistd::fsync(vol.as_raw_fd())
                .map_err(|e| ToolError::os(root, "cannot fsync", &g, e))?;
            rename(graveyard, &temp, cache, vol_name, true)
                .map_err(|e| ToolError::os(root, "cannot rename the new volume to", &rel, e))?;
            nix::unistd::fsync(cache.as_raw_fd())
                .map_err(|e| ToolError::os(root, "cannot fsync", &rel[..1], e))?;
            Ok(true)
        }
        Err(e) => Err(ToolError::os(root, "cannot stat", &rel, e)),
    }
}

fn make_fanouts(root: &CacheDir, vol: &Dir, rel: &[&[u8]]) -> Result<(), ToolError> {
    for i in 0..=255u8 {
        let name = fanout_dir(i);
        make_dir(vol, &name).map_err(|e| {
            let mut p = rel.to_vec();
            p.push(&name);
            ToolError::os(root, "cannot make directory", &p, e)
        })?;
    }
    Ok(())
}
