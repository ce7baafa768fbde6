//! `cachefilesctl attach|mount|umount`: lazy EROFS mounts served by the running daemon.
//!
//! The daemon attaches a blob over its control socket (fanotify front end: a sparse file,
//! sized and marked, whose path it answers; cachefiles front end: `fscache`, and the kernel
//! asks for the blob itself at an `fsid=` mount). The mount is made here, in another process
//! than the daemon's: the daemon's own reads are allowed unfilled by design. Where the
//! kernel's EROFS reads metadata without pre-content events, the blob is filled whole (read
//! through its mark from here) before the mount: see `mount`.

use crate::control::query;
use crate::ondemand::fanotify::MetaEvents;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long an attach may wait for its source (a registry blob with `verify = "digest"` is
/// fetched whole first).
const ATTACH_DEADLINE: Duration = Duration::from_secs(600);
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("cannot reach the daemon at {path}: {error} (is cachefilesd running?)")]
    Daemon { path: String, error: std::io::Error },
    #[error("the daemon refused: {0}")]
    Refused(String),
    #[error("no answer from the daemon's source within {0:?}")]
    Timeout(Duration),
    #[error("mount {what} on {on}: {errno}")]
    Mount {
        what: String,
        on: String,
        errno: nix::errno::Errno,
    },
    #[error("umount {on}: {errno}")]
    Umount {
        on: String,
        errno: nix::errno::Errno,
    },
    #[error("{path}: reading it through its mark, for the daemon to fill it: {errno}")]
    Fill {
        path: String,
        errno: nix::errno::Errno,
    },
    #[error("{0} is not a mount point")]
    NotMounted(String),
    #[error("{what} {name:?} cannot be given in EROFS's fsid= mount options (no ',' or '=')")]
    NotAnOption { what: &'static str, name: String },
}

/// The `fsid=...[,domain_id=...]` options of the cachefiles front end: names the daemon
/// accepts may hold `,` and `=`, which would add options of their own to the mount.
fn fscache_options(
    domain: Option<&str>,
    fsid: &str,
    options: Option<&str>,
) -> Result<String, MountError> {
    let plain = |what: &'static str, name: &str| {
        if name.contains([',', '=']) {
            return Err(MountError::NotAnOption {
                what,
                name: name.to_string(),
            });
        }
        Ok(())
    };
    plain("fsid", fsid)?;
    let mut data = format!("fsid={fsid}");
    if let Some(d) = domain {
        plain("domain", d)?;
        data.push_str(&format!(",domain_id={d}"));
    }
    if let Some(o) = options {
        data.push(',');
        data.push_str(o);
    }
    Ok(data)
}

/// What the daemon serves a blob through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attached {
    /// The fanotify front end: mount EROFS on this file.
    File(PathBuf),
    /// The cachefiles front end: mount with `fsid=`.
    Fscache,
}

fn ask(socket: &Path, request: &str) -> Result<String, MountError> {
    query(socket, request, QUERY_TIMEOUT).map_err(|error| MountError::Daemon {
        path: socket.display().to_string(),
        error,
    })
}

/// `[--domain D] FSID` as the control socket takes it (the daemon validates both).
fn blob_args(domain: Option<&str>, fsid: &str) -> String {
    match domain {
        Some(d) => format!("--domain {d} {fsid}"),
        None => fsid.to_string(),
    }
}

/// Asks the daemon to attach the blob, until its source has answered.
pub fn attach(socket: &Path, domain: Option<&str>, fsid: &str) -> Result<Attached, MountError> {
    let request = format!("attach {}", blob_args(domain, fsid));
    let deadline = Instant::now() + ATTACH_DEADLINE;
    let mut pause = Duration::from_millis(5);
    loop {
        let reply = ask(socket, &request)?;
        let line = reply.lines().next().unwrap_or("").trim_end();
        match line.split_once(' ') {
            Some(("ok", path)) => return Ok(Attached::File(PathBuf::from(path))),
            _ if line == "fscache" => return Ok(Attached::Fscache),
            _ if line == "pending" && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            _ if line == "pending" => return Err(MountError::Timeout(ATTACH_DEADLINE)),
            _ => {
                let e = line.strip_prefix("error: ").unwrap_or(line);
                return Err(MountError::Refused(e.to_string()));
            }
        }
    }
}

/// Attaches the blob and mounts EROFS read-only on `mountpoint`: on the blob's file itself
/// (a file-backed mount, never a loop device, whose reads raise no pre-content events and
/// would see zeros in the holes), or with `fsid=` on the cachefiles front end.
///
/// A file-backed mount is lazy only where the kernel's EROFS reads its metadata through
/// the file (raising events); where it reads the file's page cache directly (6.14-6.18),
/// a hole in the metadata reads as zeros, so the blob is filled whole first. Which kernel
/// this is, the first mount of a blob whose first block is a hole finds out (`probe`); the
/// daemon keeps the verdict for the mounts after it.
pub fn mount(
    socket: &Path,
    domain: Option<&str>,
    fsid: &str,
    mountpoint: &Path,
    options: Option<&str>,
) -> Result<Attached, MountError> {
    let attached = attach(socket, domain, fsid)?;
    let path = match &attached {
        Attached::File(path) => path.clone(),
        Attached::Fscache => {
            let data = fscache_options(domain, fsid, options)?;
            mount_erofs(OsStr::new("none"), mountpoint, Some(&data))?;
            return Ok(attached);
        }
    };
    let blob = BlobFile::open(&path)?;
    mount_blob(socket, &blob_args(domain, fsid), &blob, mountpoint, options)?;
    Ok(attached)
}

/// Mounts the blob's file on `mountpoint` as the kernel allows: lazily where its EROFS
/// reads metadata through fanotify events, else filled whole first; finds out which kernel
/// this is when not known yet and the blob can tell (`probe`).
fn mount_blob(
    socket: &Path,
    key: &str,
    blob: &BlobFile,
    mountpoint: &Path,
    options: Option<&str>,
) -> Result<(), MountError> {
    let path = blob.path.as_os_str();
    match (
        meta_events(socket, "meta-events"),
        blob.first_block_filled()?,
    ) {
        (MetaEvents::Raised, _) => mount_erofs(path, mountpoint, options),
        (MetaEvents::Unknown, false) => probe(socket, key, blob, mountpoint, options),
        (verdict, _) => {
            blob.fill_whole_saying(verdict)?;
            mount_erofs(path, mountpoint, options)
        }
    }
}

/// `attach` for a mount made by other means (fstab, a mount unit), which this tool cannot
/// fill first: where this boot's EROFS is known to read metadata without events, the blob
/// is filled whole before its path is given. Where that is not known yet, nothing is
/// probed here (a probe mounts, and the blob may not even be an EROFS image): the path is
/// given as it is, as the manual page says.
pub fn attach_ready(
    socket: &Path,
    domain: Option<&str>,
    fsid: &str,
) -> Result<Attached, MountError> {
    let attached = attach(socket, domain, fsid)?;
    if let Attached::File(path) = &attached {
        if meta_events(socket, "meta-events") == MetaEvents::NotRaised {
            BlobFile::open(path)?.fill_whole_saying(MetaEvents::NotRaised)?;
        }
    }
    Ok(attached)
}

/// The first mount of a blob whose first block is a hole tells whether EROFS reads
/// metadata through fanotify events: the superblock is in that block, so a mount that
/// succeeds read it, and the daemon filled it (an event was raised); a mount that fails
/// with EINVAL and left the block a hole never asked for it. Then the blob is filled whole
/// and mounted again; only when that mount succeeds is "not raised" recorded (EINVAL may
/// also be bad options, which never read the superblock). A filled superblock is "raised"
/// only when the daemon agrees a reader's event asked for it (`key`: the blob's
/// `[--domain D] FSID`): a prefetch racing the mount fills it with no event, and a mount
/// left lazy on such a kernel reads zeros from the holes of its other metadata.
fn probe(
    socket: &Path,
    key: &str,
    blob: &BlobFile,
    mountpoint: &Path,
    options: Option<&str>,
) -> Result<(), MountError> {
    let path = blob.path.as_os_str();
    match mount_erofs(path, mountpoint, options) {
        Ok(())
            if blob.first_block_filled()?
                && meta_events(socket, &format!("meta-events raised {key}"))
                    == MetaEvents::Raised =>
        {
            Ok(())
        }
        Ok(()) => {
            // Mounted on a superblock nobody filled (what it read is not the blob's), or
            // on one filled without the mount's event (nothing tells whether the rest of
            // its metadata will be asked for). Undone; the blob is filled whole and
            // mounted again, and nothing is recorded.
            nix::mount::umount(mountpoint).map_err(|errno| MountError::Umount {
                on: mountpoint.display().to_string(),
                errno,
            })?;
            blob.fill_whole()?;
            mount_erofs(path, mountpoint, options)
        }
        Err(MountError::Mount {
            errno: nix::errno::Errno::EINVAL,
            ..
        }) if !blob.first_block_filled()? => {
            eprintln!("cachefilesctl: the mount of {} failed (EINVAL) without reading its superblock through a fanotify pre-content event: this kernel's EROFS may read metadata without them (6.14-6.18 do), or it refused the options; filling the blob whole before mounting it again (not lazy)", blob.path.display());
            blob.fill_whole()?;
            mount_erofs(path, mountpoint, options)?;
            meta_events(socket, "meta-events not-raised");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Sends the daemon a `meta-events` request (a question, or a verdict): the verdict it
/// holds after it. A daemon that cannot say (an older one, a broken socket) knows nothing:
/// the blob is then filled whole, which is correct on every kernel.
fn meta_events(socket: &Path, request: &str) -> MetaEvents {
    ask(socket, request)
        .ok()
        .and_then(|r| MetaEvents::parse(r.lines().next().unwrap_or("").trim_end()))
        .unwrap_or(MetaEvents::Unknown)
}

fn mount_erofs(source: &OsStr, mountpoint: &Path, data: Option<&str>) -> Result<(), MountError> {
    nix::mount::mount(
        Some(source),
        mountpoint,
        Some("erofs"),
        nix::mount::MsFlags::MS_RDONLY,
        data,
    )
    .map_err(|errno| MountError::Mount {
        what: Path::new(source).display().to_string(),
        on: mountpoint.display().to_string(),
        errno,
    })
}

/// The attached blob's file, opened (never through a symlink) to read it through its mark:
/// this process is not the daemon, so its reads raise the events the daemon fills. Held
/// locked (flock) while it is probed, filled and mounted: another `cachefilesctl mount` of
/// the same blob filling its first block between a probe's look at it and its mount would
/// make the probe take a mount of a partly filled blob for a kernel with events.
struct BlobFile {
    path: PathBuf,
    file: nix::fcntl::Flock<std::fs::File>,
    len: u64,
}

/// What one read through the mark asks for: the daemon fills it and its readahead.
const FILL_CHUNK: usize = 1 << 20;

impl BlobFile {
    fn open(path: &Path) -> Result<BlobFile, MountError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |errno: nix::errno::Errno| MountError::Fill {
            path: path.display().to_string(),
            errno,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|e| fail(io_errno(&e)))?;
        let meta = file.metadata().map_err(|e| fail(io_errno(&e)))?;
        if !meta.is_file() {
            return Err(fail(nix::errno::Errno::EINVAL));
        }
        let file = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| fail(errno))?;
        Ok(BlobFile {
            path: path.to_owned(),
            file,
            len: meta.len(),
        })
    }

    fn fail(&self, errno: nix::errno::Errno) -> MountError {
        MountError::Fill {
            path: self.path.display().to_string(),
            errno,
        }
    }

    /// The first hole at or after `off` (the file's end when there is none). A seek raises
    /// no event.
    fn hole_after(&self, off: u64) -> Result<u64, MountError> {
        use nix::unistd::{lseek, Whence};
        use std::os::fd::AsRawFd;
        let off = i64::try_from(off).map_err(|_| self.fail(nix::errno::Errno::EOVERFLOW))?;
        match lseek(self.file.as_raw_fd(), off, Whence::SeekHole) {
            Ok(hole) => Ok(hole as u64),
            Err(nix::errno::Errno::ENXIO) => Ok(self.len),
            Err(e) => Err(self.fail(e)),
        }
    }

    /// `fill_whole`, saying why on stderr when there is anything to fill.
    fn fill_whole_saying(&self, verdict: MetaEvents) -> Result<(), MountError> {
        if !self.has_hole()? {
            return Ok(());
        }
        match verdict {
            MetaEvents::NotRaised => eprintln!("cachefilesctl: this kernel's EROFS reads metadata without fanotify pre-content events: filling {} whole before it is mounted (not lazy)", self.path.display()),
            _ => eprintln!("cachefilesctl: not known yet whether this kernel's EROFS reads metadata through fanotify pre-content events, and {} cannot tell (partly filled): filling it whole before it is mounted", self.path.display()),
        }
        self.fill_whole()
    }

    fn has_hole(&self) -> Result<bool, MountError> {
        Ok(self.hole_after(0)? < self.len)
    }

    /// Whether the first block (EROFS's superblock is at 1024) holds data.
    fn first_block_filled(&self) -> Result<bool, MountError> {
        Ok(self.len == 0 || self.hole_after(0)? > 0)
    }

    /// Reads each hole through the mark, which has the daemon fill it (and its readahead,
    /// skipped by the next seek), until the file has none; a fill that fails is EIO here.
    fn fill_whole(&self) -> Result<(), MountError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; FILL_CHUNK];
        let mut pos = self.hole_after(0)?;
        while pos < self.len {
            let want = (self.len - pos).min(FILL_CHUNK as u64) as usize;
            let n = loop {
                match self.file.read_at(&mut buf[..want], pos) {
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    other => break other.map_err(|e| self.fail(io_errno(&e)))?,
                }
            };
            if n == 0 {
                // Shorter than at attach: not the file the daemon sized.
                return Err(self.fail(nix::errno::Errno::ESTALE));
            }
            pos = self.hole_after(pos + n as u64)?;
        }
        // The daemon fills what a read asks for, whole pages: no hole may be left.
        if self.has_hole()? {
            return Err(self.fail(nix::errno::Errno::EIO));
        }
        Ok(())
    }
}

fn io_errno(e: &std::io::Error) -> nix::errno::Errno {
    nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(nix::libc::EIO))
}

/// Unmounts `mountpoint` and detaches its blob (a file-backed EROFS mount of a file the
/// daemon attached); the answer is the detached file, if any.
pub fn umount(socket: &Path, mountpoint: &Path) -> Result<Option<PathBuf>, MountError> {
    let mounts = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    let wanted = std::fs::canonicalize(mountpoint).unwrap_or_else(|_| mountpoint.to_owned());
    let (fstype, source) = mount_of(&mounts, &wanted)
        .ok_or_else(|| MountError::NotMounted(mountpoint.display().to_string()))?;
    nix::mount::umount(&wanted).map_err(|errno| MountError::Umount {
        on: mountpoint.display().to_string(),
        errno,
    })?;
    if fstype != b"erofs" || !source.starts_with(b"/") {
        return Ok(None);
    }
    let source = PathBuf::from(OsStr::from_bytes(&source));
    // Another mount of the same blob keeps it attached.
    let still = std::fs::read("/proc/self/mountinfo").unwrap_or_default();
    if mounts_of_source(&still, source.as_os_str().as_bytes()) > 0 {
        return Ok(None);
    }
    let reply = ask(socket, &format!("detach {}", source.display()))?;
    match reply.lines().next().unwrap_or("") {
        r if r.starts_with("ok ") => Ok(Some(source)),
        "fscache" => Ok(None),
        r => Err(MountError::Refused(
            r.strip_prefix("error: ").unwrap_or(r).to_string(),
        )),
    }
}

/// A mountinfo field, with the kernel's octal escapes (`\040` for a space) undone.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let oct = field
            .get(i + 1..i + 4)
            .filter(|d| field[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                out.push(d.iter().fold(0u8, |v, c| v.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            None => {
                out.push(field[i]);
                i += 1;
            }
        }
    }
    out
}

/// (mount point, fs type, source) of each line of /proc/self/mountinfo.
fn entries(mountinfo: &[u8]) -> impl Iterator<Item = (Vec<u8>, Vec<u8>, Vec<u8>)> + '_ {
    mountinfo.split(|&b| b == b'\n').filter_map(|line| {
        let fields: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
        let dash = fields.iter().position(|f| *f == b"-")?;
        let point = fields.get(4)?;
        let fstype = fields.get(dash + 1)?;
        let source = fields.get(dash + 2)?;
        Some((unescape(point), fstype.to_vec(), unescape(source)))
    })
}

/// The last (topmost) mount on `point`: its fs type and source.
fn mount_of(mountinfo: &[u8], point: &Path) -> Option<(Vec<u8>, Vec<u8>)> {
    entries(mountinfo)
        .filter(|(p, _, _)| p == point.as_os_str().as_bytes())
        .map(|(_, t, s)| (t, s))
        .last()
}

fn mounts_of_source(mountinfo: &[u8], source: &[u8]) -> usize {
    entries(mountinfo)
        .filter(|(_, t, s)| t == b"erofs" && s == source)
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsid_and_domain_cannot_add_mount_options() {
        assert_eq!(
            fscache_options(Some("d"), "app", Some("noacl")).unwrap(),
            "fsid=app,domain_id=d,noacl"
        );
        for (domain, fsid) in [
            (None, "app,dax=always"),
            (Some("d=x"), "app"),
            (None, "a=b"),
        ] {
            let e = fscache_options(domain, fsid, None).unwrap_err();
            assert!(matches!(e, MountError::NotAnOption { .. }), "{e}");
        }
    }

    const MOUNTINFO: &[u8] = b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
40 22 0:50 / /mnt/app\\040one ro,relatime shared:20 - erofs /var/cache/fscache/lazy/d/app ro\n\
41 22 0:51 / /mnt/b ro shared:21 - erofs none ro,fsid=b\n\
42 22 0:52 / /mnt/c ro shared:22 - erofs /var/cache/fscache/lazy/d/app ro\n";

    #[test]
    fn mountinfo_is_read_with_its_escapes() {
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/mnt/app one")),
            Some((b"erofs".to_vec(), b"/var/cache/fscache/lazy/d/app".to_vec()))
        );
        assert_eq!(
            mount_of(MOUNTINFO, Path::new("/mnt/b")),
            Some((b"erofs".to_vec(), b"none".to_vec()))
        );
        assert_eq!(mount_of(MOUNTINFO, Path::new("/mnt/app")), None);
        assert_eq!(
            mounts_of_source(MOUNTINFO, b"/var/cache/fscache/lazy/d/app"),
            2
        );
        assert_eq!(unescape(b"a\\134b\\0"), b"a\\b\\0");
    }
}
