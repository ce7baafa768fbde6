//! The fanotify front end: FAN_PRE_ACCESS events on each attached blob's sparse file, answered
//! FAN_ALLOW once the range is in the file, or FAN_DENY with EIO when it cannot be.
//!
//! Attaching a blob opens (or creates) its sparse file for writing *before* marking it:
//! whether an open file raises pre-content events is decided when it is opened, so the
//! engine's fills through that fd raise none. Then the file is sized and gets an inode mark
//! of FAN_PRE_ACCESS. Each event names the range a reader is about to see; a range already in
//! the file is allowed at once, any other is filled through the engine (the same pools,
//! sources and fill code as the cachefiles front end) and then allowed. What is in the file is
//! the blob's `Ranges`: read from the file at attach (SEEK_DATA/SEEK_HOLE), grown by each fill
//! that succeeded, and asked of the file again (SEEK_HOLE from the event's offset) only for a
//! range it does not hold, which finds the readahead of earlier fills and what prefetch wrote.
//! An event held in it costs no system call but its answer and the one fstat that tells whose
//! file it is. An event inside a fill in flight waits for that fill (`Group::waiting`); a
//! reader nearing the end of a filled run gets the next readahead window filled in the
//! background (`fill_ahead`), so a sequential reader rarely waits for a fetch. Every event is
//! answered exactly once: from the moment its fd is adopted it is held by a `ReadReply`,
//! which a dropped job or a panic turns into FAN_DENY with EIO. Never zeros, never a hang.
//!
//! The group must outlive every mark: closing it allows all pending events (readers would see
//! zeros in holes). The daemon keeps it across a worker crash (the `--supervise` holder,
//! systemd's fd store); a successor takes it with `Group::adopt` and `keep_record`, and
//! `Lazy::new` then recovers what the dead worker owed, from `inflight`'s record: events it
//! recorded are filled and allowed (the kernel matches a response by fd number only), every
//! other fd number it could have held is denied with EIO (events read but not recorded), and
//! the recorded blobs are attached again (their marks survived with the group). A recorded
//! number is reserved in our fd table until answered, so a new event rarely gets it; when one
//! does, the old event is denied first (the kernel answers the oldest event of a number).
//! A re-attached blob's file is opened while marked, so its fills raise events of our own
//! (allowed at once) and it is not completed by this worker: hashing it on the loop thread
//! would wait on the loop itself.

use super::engine::{Engine, OpenRequest};
use super::fds::{AdoptError, KernelFd};
use super::inflight::{self, Pending, Record};
use super::pool::panic_message;
use super::ranges::Ranges;
use super::reply::{FrontEnd, ReadReply, Ticket};
use super::sourcemap::{is_safe_name, Location};
use super::sources::digest_from_fsid;
use crate::cachedir::{tree, xattr, CacheDir, Name};
use crate::device::DeviceError;
use crate::proto::fanotify::{self as wire, Event, Response, Verdict, FAN_PRE_ACCESS};
use nix::errno::Errno;
use nix::sys::fanotify::{EventFFlags, Fanotify as NixGroup, InitFlags, MarkFlags, MaskFlags};
use nix::sys::stat::{fstat, SFlag};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zerocopy::IntoBytes;

/// Blob files are sized to whole pages: the fill code writes whole pages, as the cachefiles
/// front end's cache files need, and a write past the end would grow the file.
const PAGE: u64 = 4096;

/// Open tickets and event tickets share the engine's in-flight set: opens are keyed above
/// every fd number.
const OPEN_KEY_BASE: u64 = 1 << 32;

/// The fanotify pre-content protocol as a front end of the engine.
pub struct Fanotify;

#[derive(Debug, thiserror::Error)]
pub enum FanotifyError {
    /// EINVAL from fanotify_init: a kernel without pre-content groups (before 6.14, or
    /// without CONFIG_FANOTIFY_ACCESS_PERMISSIONS); EPERM: no CAP_SYS_ADMIN.
    #[error("cannot create a fanotify pre-content group: {0}")]
    Init(Errno),
    #[error("reading fanotify events failed: {0}")]
    Read(Errno),
    #[error("{path}: {source}")]
    BlobFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the inherited fd {0} is not a fanotify pre-content group: refusing to adopt it")]
    NotAGroup(i32),
}

/// What the group did without the engine (the engine counts fills and failures).
#[derive(Debug, Default, Clone)]
pub struct GroupStats {
    pub events: u64,
    /// Ranges already in the file, allowed at once.
    pub present: u64,
    /// Times the file was asked (SEEK_HOLE) what its map did not hold: for an event's range,
    /// and for where a run ends before a fill ahead of it.
    pub lookups: u64,
    /// Fills started ahead of a reader nearing the end of what is filled (no event waits).
    pub ahead: u64,
    /// Events that waited for a fill in flight instead of fetching their range again.
    pub waited: u64,
    /// Events of our own process (a fill through an fd that raises events), allowed at once.
    pub own: u64,
    /// Events for a file no attached blob has: denied.
    pub unknown: u64,
    pub bad_events: u64,
    /// Blobs found whole: unmarked and recorded (COMPLETE_XATTR).
    pub completed: u64,
    /// Blobs attached whole already (recorded by an earlier run): never marked.
    pub complete_at_attach: u64,
    /// Complete registry blobs whose bytes did not match their digest.
    pub digest_mismatches: u64,
    /// Events a dead predecessor recorded, answered here.
    pub recovered: u64,
    /// Events a dead predecessor read but did not record (or whose number a new event
    /// took), denied with EIO.
    pub recovered_denied: u64,
    /// Where the loop thread's time per event goes (logged at each detach).
    pub calls: CallTimes,
}

/// Time spent in the loop thread's system calls for events, summed (wall clock around each
/// call, so a call that sleeps or is preempted counts whole).
#[derive(Debug, Default, Clone)]
pub struct CallTimes {
    /// `read` of the group that returned events, and those reads.
    pub reads: u64,
    pub read: std::time::Duration,
    /// Taking each event's fd (its fstat).
    pub adopt: std::time::Duration,
    /// Writing each answer.
    pub answer: std::time::Duration,
    /// Closing each event's fd.
    pub close: std::time::Duration,
}

/// `sha256:<hex>` of a blob and the blob's size in bytes.
type BlobDigest = (String, u64);

/// A fanotify pre-content group and the blobs marked in it. Register its fd (`as_fd`) with
/// the loop for readability and call `Engine::drain_group` when it is readable.
pub struct Group {
    fan: NixGroup,
    /// (st_dev, st_ino) of each attached blob's file: its object id.
    blobs: HashMap<(u64, u64), u32>,
    next_id: u32,
    /// Our pid, as events report it (the thread group id).
    pid: i32,
    /// Each attached blob's file and what it is known to hold.
    files: HashMap<u32, BlobFile>,
    /// Blobs whose file holds them whole: unmarked, so their reads raise no event.
    complete: std::collections::HashSet<u32>,
    /// Blobs whose complete file did not match its digest: every read is denied.
    corrupt: std::collections::HashSet<u32>,
    /// Blobs whose file was opened while marked (attached again by a successor): their fills
    /// raise events of our own, so they are never read on the loop thread.
    marked_at_open: std::collections::HashSet<u32>,
    /// Each attached blob's name, for the record.
    names: HashMap<u32, BlobKey>,
    /// The record of what is in flight, once `keep_record` started it.
    record: Option<inflight::Writer>,
    /// What a dead predecessor left, until `Lazy::new` takes it.
    recovered: Option<Record>,
    /// Fd numbers of a predecessor's events not yet answered, each with the placeholder that
    /// keeps the number out of our new events (when it was free here).
    owed: HashMap<i32, Option<OwnedFd>>,
    /// Files of blobs being attached again (marked already): their object id by inode.
    reattaching: HashMap<(u64, u64), u32>,
    /// Events on those files, served once their attach settles (`Lazy::settle`).
    parked: Vec<Parked>,
    /// The fills in flight, by their event's ticket key: the blob and the range asked for,
    /// which its blob's map holds once the fill succeeded (never after a failure).
    fills: HashMap<u64, Fill>,
    /// Numbers each attach's `BlobFile`.
    next_serial: u64,
    /// Events whose range a fill in flight is writing: answered when it is done.
    waiting: Vec<Waiting>,
    /// Numbers the fills started ahead of the readers (their tickets' keys).
    next_ahead: u64,
    /// Where the EROFS metadata-events verdict is kept for a restart in the same boot (beside
    /// the record, once `keep_record` started it).
    meta_events_path: Option<PathBuf>,
    pub stats: GroupStats,
}

/// An event waiting for its blob's attach: object id, range, reply, fd number.
type Parked = (u32, Option<wire::Range>, ReadReply<Fanotify>, i32);

/// An attached blob's file.
struct BlobFile {
    /// The fd it was sized and is filled through.
    fd: Arc<KernelFd>,
    /// What its bytes must hash to once complete (registry blobs), with the blob's size: the
    /// file is longer, to a whole page, and that tail is not the blob's.
    digest: Option<BlobDigest>,
    /// The file's length, set at attach (the blob's size to a whole page).
    len: u64,
    /// What of `[0, len)` is known to hold the blob's bytes.
    filled: Ranges,
    /// Tells this attach from an earlier one with the same object id.
    serial: u64,
    /// The ranges fills in flight were asked for: an event inside one waits for it.
    filling: Vec<(u64, u64)>,
    /// Whether a reader's event asked for the range holding EROFS's superblock: the only
    /// evidence of metadata events a probe mount can give (a prefetch, a fill ahead, or the
    /// daemon's own writes fill that block without one).
    superblock_asked: bool,
}

/// Where EROFS's superblock starts in its image.
const EROFS_SUPERBLOCK: u64 = 1024;

/// An event waiting for a fill in flight that covers its range (`Group::waiting`).
struct Waiting {
    object_id: u32,
    serial: u64,
    start: u64,
    end: u64,
    reply: ReadReply<Fanotify>,
}

/// A fill in flight: the event's range of the blob attached as `serial`.
#[derive(Clone, Copy)]
struct Fill {
    object_id: u32,
    serial: u64,
    start: u64,
    end: u64,
}

impl AsFd for Group {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fan.as_fd()
    }
}

impl Group {
    pub fn new() -> Result<Group, FanotifyError> {
        // An unlimited queue: a pre-content event must never be lost while a reader waits.
        let fan = NixGroup::init(
            InitFlags::FAN_CLASS_PRE_CONTENT
                | InitFlags::FAN_CLOEXEC
                | InitFlags::FAN_NONBLOCK
                | InitFlags::FAN_UNLIMITED_QUEUE,
            EventFFlags::O_RDONLY | EventFFlags::O_LARGEFILE | EventFFlags::O_CLOEXEC,
        )
        .map_err(FanotifyError::Init)?;
        Ok(Group::new_with(fan))
    }

    /// Takes a group kept open for us (by our supervisor or the service manager's fd store):
    /// only a fanotify pre-content group is adopted, anything else is refused (and closed:
    /// the caller gave it up).
    pub fn adopt(fd: OwnedFd) -> Result<Group, FanotifyError> {
        if !is_pre_content_group(fd.as_fd()) {
            return Err(FanotifyError::NotAGroup(fd.as_raw_fd()));
        }
        use std::os::fd::{FromRawFd, IntoRawFd};
        // SAFETY: `into_raw_fd` hands over the only owner of this open fd.
        let fan = unsafe { NixGroup::from_raw_fd(fd.into_raw_fd()) };
        let mut group = Group::new_with(fan);
        group.recovered = Some(Record::default());
        Ok(group)
    }

    fn new_with(fan: NixGroup) -> Group {
        Group {
            fan,
            blobs: HashMap::new(),
            next_id: 1,
            pid: std::process::id() as i32,
            files: HashMap::new(),
            complete: Default::default(),
            corrupt: Default::default(),
            marked_at_open: Default::default(),
            names: HashMap::new(),
            record: None,
            recovered: None,
            owed: HashMap::new(),
            reattaching: HashMap::new(),
            parked: Vec::new(),
            fills: HashMap::new(),
            next_serial: 0,
            waiting: Vec::new(),
            next_ahead: 0,
            meta_events_path: None,
            stats: GroupStats::default(),
        }
    }

    /// A second fd of the group, for whoever keeps it open across our death.
    pub fn try_clone_fd(&self) -> std::io::Result<OwnedFd> {
        self.fan.as_fd().try_clone_to_owned()
    }

    /// Keeps the record of what is in flight at `path` from now on. A group made here
    /// starts an empty record (one left there belongs to a group gone with its pending
    /// events); an adopted one first reads what its predecessor left, for `Lazy::new`.
    pub fn keep_record(&mut self, path: &Path) {
        self.meta_events_path = path.parent().map(|dir| dir.join(META_EVENTS_FILE));
        let start = match self.recovered.as_mut() {
            Some(left) => {
                *left = inflight::load(path).unwrap_or_default();
                // From now on this process reads events: a successor sweeps.
                Record {
                    unread: false,
                    ..left.clone()
                }
            }
            None => Record::default(),
        };
        match inflight::Writer::create(path, start) {
            Ok(w) => self.record = Some(w),
            Err(e) => log::warn!(
                "{}: {e}: a successor cannot recover the events in flight",
                path.display()
            ),
        }
    }

    fn save_record(&mut self, change: impl FnOnce(&mut Record) -> bool) {
        if let Some(w) = self.record.as_mut() {
            if change(&mut w.record) {
                w.save();
            }
        }
    }

    /// Writes a deny for every fd number below `limit` but the recorded ones: the events a
    /// dead predecessor read and did not record are released with EIO (most numbers name no
    /// event: ENOENT, nothing happens). Must run before this process reads any event.
    fn deny_unrecorded(&mut self, limit: i32, recorded: &Record) -> u64 {
        let mut denied = 0;
        for fd in 0..limit {
            if recorded.events.contains_key(&fd) {
                continue;
            }
            let response = Response::new(fd, Verdict::Deny(Errno::EIO as u8));
            if nix::unistd::write(&self.fan, response.as_bytes()).is_ok() {
                denied += 1;
            }
        }
        self.stats.recovered_denied += denied;
        denied
    }

    /// Keeps fd number `fd` (a predecessor's pending event) out of our new events while it
    /// is owed: a placeholder takes the number when it is free here.
    fn owe(&mut self, fd: i32) {
        let placeholder = nix::fcntl::fcntl(
            self.fan.as_fd().as_raw_fd(),
            nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(fd),
        )
        .ok()
        .map(|n| {
            use std::os::fd::FromRawFd;
            // SAFETY: F_DUPFD just made this fd for us; nothing else owns it.
            unsafe { OwnedFd::from_raw_fd(n) }
        });
        // Taken by another of our fds: it holds the number as well as long as it is open.
        let placeholder = placeholder.filter(|p| p.as_raw_fd() == fd);
        self.owed.insert(fd, placeholder);
    }

    /// A new event got fd number `fd` while a predecessor's event of that number is owed:
    /// the kernel answers the older first, so it is denied now (EIO, never zeros) and its
    /// fill, when done, answers nothing.
    fn settle_collision(&mut self, fd: i32) {
        if self.owed.remove(&fd).is_some() {
            log::warn!("a new event took fd number {fd} of an event owed since the takeover: failing the old one");
            self.respond(fd, Verdict::Deny(Errno::EIO as u8));
            self.stats.recovered_denied += 1;
            self.save_record(|r| r.events.remove(&fd).is_some());
        }
    }

    /// The object id of the blob attached with this file, if any.
    pub fn attached(&self, fd: impl AsFd) -> Option<u32> {
        inode_key(fd.as_fd())
            .ok()
            .and_then(|k| self.blobs.get(&k).copied())
    }

    fn mark(&self, flags: MarkFlags, fd: BorrowedFd<'_>) -> nix::Result<()> {
        self.fan.mark(
            flags | MarkFlags::FAN_MARK_INODE,
            MaskFlags::from_bits_retain(FAN_PRE_ACCESS),
            Some(fd.as_raw_fd()),
            None::<&Path>,
        )
    }

    /// Writes the answer to the event named by fd number `fd`. An error means the kernel no
    /// longer waits for it (ENOENT) or the group is broken; either way nothing can be
    /// answered again, so it is logged.
    fn respond(&self, fd: i32, verdict: Verdict) {
        let response = Response::new(fd, verdict);
        loop {
            match nix::unistd::write(&self.fan, response.as_bytes()) {
                Ok(_) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    log::warn!("fanotify response {verdict:?} for event fd {fd}: {e}");
                    return;
                }
            }
        }
    }
}

impl Group {
    /// Whether an event of a reader of `object_id` (this attach) asked for its superblock.
    pub fn superblock_asked(&self, object_id: u32) -> bool {
        self.files
            .get(&object_id)
            .is_some_and(|blob| blob.superblock_asked)
    }

    /// Whether the blob `object_id` is whole in its file (unmarked, no event on its reads).
    pub fn is_complete(&self, object_id: u32) -> bool {
        self.complete.contains(&object_id)
    }

    /// After a fill: once the file has no hole left, a registry blob is checked against its
    /// digest, then the mark goes and the completion is recorded for the next attach (a
    /// restart). A mismatch keeps the mark and fails every read of the blob.
    fn check_complete(&mut self, object_id: u32) {
        if self.complete.contains(&object_id)
            || self.corrupt.contains(&object_id)
            || self.marked_at_open.contains(&object_id)
        {
            return;
        }
        let Some(blob) = self.files.get_mut(&object_id) else {
            return;
        };
        let len = blob.len;
        if !blob.filled.contains(0, len) {
            return;
        }
        // Once per blob, before it is recorded: the file itself must agree.
        if !is_present(blob.fd.as_fd(), 0, len) {
            log::error!("object {object_id}: its file has a hole where the daemon filled it; reading what it holds again");
            blob.filled = Ranges::of_file(blob.fd.as_fd(), len).unwrap_or_default();
            return;
        }
        let (file, digest) = (blob.fd.clone(), blob.digest.clone());
        let fd = file.as_fd();
        if let Some((want, size)) = &digest {
            match sha256_of(fd, *size) {
                Ok(got) if got == *want => {}
                Ok(got) => {
                    log::error!("object {object_id}: the complete blob hashes to {got}, not {want}: its reads fail from now on");
                    self.stats.digest_mismatches += 1;
                    self.corrupt.insert(object_id);
                    return;
                }
                Err(e) => {
                    log::warn!("object {object_id}: cannot hash the complete blob: {e}");
                    return;
                }
            }
        }
        if let Err(e) = self.mark(MarkFlags::FAN_MARK_REMOVE, fd) {
            log::warn!("object {object_id}: removing the mark of the complete blob: {e}");
            return;
        }
        if let Err(e) =
            xattr::set_named(&fd.as_raw_fd(), COMPLETE_XATTR, len.to_string().as_bytes())
        {
            // Served all the same; the next attach marks it and finds nothing to fetch.
            log::warn!("object {object_id}: recording the complete blob: {e}");
        }
        self.complete.insert(object_id);
        self.stats.completed += 1;
    }
}

impl Group {
    /// After a fill of `object_id` ended: each event waiting on it is allowed when its range
    /// is filled now, waits on when another fill in flight covers it, and fails with EIO
    /// when the fill failed (it had the source's retries; fetching again for each waiter in
    /// turn would make the last one wait once per waiter) or its blob was detached meanwhile.
    fn wake_waiting(&mut self, object_id: u32) {
        if !self.waiting.iter().any(|w| w.object_id == object_id) {
            return;
        }
        let (mine, others): (Vec<Waiting>, Vec<Waiting>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.object_id == object_id);
        self.waiting = others;
        for w in mine {
            let blob = self.files.get(&object_id).filter(|b| b.serial == w.serial);
            match blob {
                Some(b) if b.filled.contains(w.start, w.end) => {
                    self.stats.present += 1;
                    let _ = w.reply.answer(self, Ok(0));
                }
                Some(b) if covering(&b.filling, w.start, w.end) => self.waiting.push(w),
                // Failed, or detached (its id maybe another blob's now).
                _ => {
                    let _ = w.reply.answer(self, Err(Errno::EIO));
                }
            }
        }
    }
}

/// Whether one of `fills` covers `[start, end)`.
fn covering(fills: &[(u64, u64)], start: u64, end: u64) -> bool {
    fills.iter().any(|&(s, e)| s <= start && end <= e)
}

/// The xattr that records, on a blob's file, that it holds the whole blob: the file's size,
/// in decimal. An attach finding it (and the size, and no hole) does not mark the file.
pub const COMPLETE_XATTR: &str = "user.cachefilesd.complete";

/// `sha256:<hex>` of the first `len` bytes of `fd`.
fn sha256_of(fd: BorrowedFd<'_>, len: u64) -> Result<String, Errno> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < len {
        let want = buf.len().min((len - off) as usize);
        let n = nix::sys::uio::pread(fd, &mut buf[..want], off as i64)?;
        if n == 0 {
            return Err(Errno::EIO);
        }
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Whether `fd` is a fanotify group of class FAN_CLASS_PRE_CONTENT: its fdinfo starts with
/// `fanotify flags:HEX`, and the class bits of those flags say which.
pub fn is_pre_content_group(fd: BorrowedFd<'_>) -> bool {
    let Ok(info) = std::fs::read(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())) else {
        return false;
    };
    pre_content_flags(&info)
}

/// The parsing half of `is_pre_content_group`.
fn pre_content_flags(fdinfo: &[u8]) -> bool {
    const FAN_CLASS_MASK: u32 = 0x0c;
    const FAN_CLASS_PRE_CONTENT: u32 = 0x08;
    let text = String::from_utf8_lossy(&fdinfo[..fdinfo.len().min(64 << 10)]);
    text.lines()
        .find_map(|l| l.strip_prefix("fanotify flags:"))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|hex| u32::from_str_radix(hex, 16).ok())
        .is_some_and(|flags| flags & FAN_CLASS_MASK == FAN_CLASS_PRE_CONTENT)
}

fn inode_key(fd: BorrowedFd<'_>) -> nix::Result<(u64, u64)> {
    let st = fstat(fd.as_raw_fd())?;
    Ok((st.st_dev, st.st_ino))
}

/// An attach waiting for the blob's size: then the file is sized and marked.
pub struct AttachTicket {
    object_id: u32,
    file: KernelFd,
    path: PathBuf,
    /// `sha256:<hex>` for a registry blob: checked once the file holds it whole.
    digest: Option<String>,
    /// Attached again by a successor: the file is marked already (see the module's comment).
    reattach: bool,
}

/// A pre-content event waiting for its answer. Its fd is closed only after the answer: the
/// kernel finds the pending event by this fd number. A predecessor's event has no fd here,
/// only its number.
pub struct EventTicket {
    fd: Option<KernelFd>,
    number: i32,
    /// A fill ahead of the readers, which answers no event: its number.
    ahead: Option<u64>,
}

/// A predecessor's events are keyed apart from ours, which may reuse their numbers.
const OWED_KEY_BASE: u64 = 1 << 40;

impl Ticket for AttachTicket {
    fn key(&self) -> u64 {
        OPEN_KEY_BASE + u64::from(self.object_id)
    }
}

/// Fills ahead of the readers are keyed above everything else.
const AHEAD_KEY_BASE: u64 = 1 << 48;

impl Ticket for EventTicket {
    fn key(&self) -> u64 {
        match (self.ahead, &self.fd) {
            (Some(n), _) => AHEAD_KEY_BASE + n,
            (None, Some(_)) => self.number as u64,
            (None, None) => OWED_KEY_BASE + self.number as u64,
        }
    }
}

/// The errnos FAN_DENY_ERRNO takes for a reader's read; anything else is reported as EIO.
fn deny_errno(errno: Errno) -> u8 {
    match errno {
        Errno::EIO | Errno::ENOSPC | Errno::EDQUOT | Errno::EAGAIN | Errno::EPERM => errno as u8,
        _ => Errno::EIO as u8,
    }
}

impl FrontEnd for Fanotify {
    type Kernel<'k> = Group;
    type Open = AttachTicket;
    type Read = EventTicket;

    fn answer_open(
        group: &mut Group,
        open: AttachTicket,
        result: Result<u64, Errno>,
    ) -> Result<Option<Arc<KernelFd>>, DeviceError> {
        let AttachTicket {
            object_id,
            file,
            path,
            digest,
            reattach,
        } = open;
        group.reattaching.retain(|_, id| *id != object_id);
        let size = match result {
            Ok(size) => size,
            Err(errno) => {
                log::warn!("{}: not attached: {errno}", path.display());
                return Ok(None);
            }
        };
        let len = size.div_ceil(PAGE).saturating_mul(PAGE);
        let fd = file.as_fd();
        let prepared = (|| {
            let current = fstat(fd.as_raw_fd())?.st_size as u64;
            let recorded = xattr::get_named(&fd.as_raw_fd(), COMPLETE_XATTR)?;
            if current != len && reattach {
                // Marked already: truncating would raise an event this very thread must
                // answer. Another version of the blob: it is attached afresh after a detach.
                return Err(Errno::ESTALE);
            }
            if current != len {
                // Another blob's bytes, or a different version of this one: start empty.
                xattr::remove_named(&fd.as_raw_fd(), COMPLETE_XATTR)?;
                nix::unistd::ftruncate(fd, 0)?;
                nix::unistd::ftruncate(fd, len as i64)?;
            }
            // What an earlier attach (or run) filled is kept. Read before the mark: nothing
            // writes the file from here on but our fills.
            let filled = if current == len {
                Ranges::of_file(fd, len).unwrap_or_default()
            } else {
                Ranges::new()
            };
            let complete =
                recorded.as_deref() == Some(len.to_string().as_bytes()) && filled.contains(0, len);
            if !complete {
                // Sized before the mark: a truncate of a marked file raises an event itself.
                group.mark(MarkFlags::FAN_MARK_ADD, fd)?;
            }
            Ok::<_, Errno>((inode_key(fd)?, complete, filled))
        })();
        match prepared {
            Ok((key, complete, filled)) => {
                group.blobs.insert(key, object_id);
                let file = Arc::new(file);
                group.next_serial += 1;
                let blob = BlobFile {
                    fd: file.clone(),
                    digest: digest.map(|d| (d, size)),
                    len,
                    filled,
                    serial: group.next_serial,
                    filling: Vec::new(),
                    superblock_asked: false,
                };
                group.files.insert(object_id, blob);
                if complete {
                    group.complete.insert(object_id);
                    group.stats.complete_at_attach += 1;
                } else if reattach {
                    group.marked_at_open.insert(object_id);
                }
                Ok(Some(file))
            }
            Err(e) => {
                // EOPNOTSUPP: a filesystem without pre-content support (tmpfs, 9p, ...).
                log::warn!("{}: not attached: {e}", path.display());
                Ok(None)
            }
        }
    }

    fn answer_read(
        group: &mut Group,
        read: EventTicket,
        result: Result<u64, Errno>,
    ) -> Result<(), DeviceError> {
        let verdict = match result {
            Ok(_) => Verdict::Allow,
            Err(errno) => Verdict::Deny(deny_errno(errno)),
        };
        let number = read.number;
        let fill = group.fills.remove(&read.key());
        let filled = fill.filter(|_| result.is_ok());
        let fill = fill.as_ref();
        if let Some(fill) = fill {
            // Only into the file of the attach that started it: a detach may have given its
            // id to another.
            if let Some(blob) =
                (group.files.get_mut(&fill.object_id)).filter(|b| b.serial == fill.serial)
            {
                if let Some(i) = (blob.filling.iter()).position(|r| *r == (fill.start, fill.end)) {
                    blob.filling.swap_remove(i);
                }
                if result.is_ok() {
                    // The fill wrote at least the range it was asked for (page-aligned; the
                    // readahead beyond it the next event finds in the file).
                    blob.filled.insert(fill.start, fill.end);
                }
            }
            group.wake_waiting(fill.object_id);
        }
        if read.ahead.is_some() {
            if let Err(e) = result {
                log::debug!("a fill ahead of the readers failed ({e}); their events fetch it");
            }
            if let Some(fill) = filled {
                group.check_complete(fill.object_id);
            }
            return Ok(());
        }
        if read.fd.is_none() {
            if group.owed.remove(&number).is_none() {
                // Denied already: a new event took its number (`settle_collision`).
                return Ok(());
            }
            group.stats.recovered += 1;
        }
        let started = std::time::Instant::now();
        group.respond(number, verdict);
        group.stats.calls.answer += started.elapsed();
        group.save_record(|r| r.events.remove(&number).is_some());
        if let Some(fill) = filled {
            group.check_complete(fill.object_id);
        }
        // Answered first, closed now.
        let started = std::time::Instant::now();
        drop(read);
        group.stats.calls.close += started.elapsed();
        Ok(())
    }

    fn prefetched(group: &mut Group, object_id: u32) {
        // Prefetch writes past what any event asked: what it wrote is read from the file.
        if let Some(blob) = group.files.get_mut(&object_id) {
            match Ranges::of_file(blob.fd.as_fd(), blob.len) {
                Ok(found) => found.iter().for_each(|(s, e)| blob.filled.insert(s, e)),
                Err(e) => log::warn!("object {object_id}: reading what its file holds: {e}"),
            }
        }
        group.check_complete(object_id);
    }
}

impl Engine<Fanotify> {
    /// Attaches the blob `fsid` (in `domain`, which is the fsid itself for a blob named
    /// without one, as EROFS's volume keys have it) with its sparse file at `path` (created if
    /// missing; never through a symlink). Returns the object id at once; the blob is served
    /// once `objects()` holds it (after the source told its size), or not at all when the
    /// source fails (logged, counted as a failed open). A file attached already keeps its id.
    pub fn attach(
        &mut self,
        group: &mut Group,
        path: &Path,
        domain: &[u8],
        fsid: &[u8],
    ) -> Result<u32, FanotifyError> {
        let blob_file = |source| FanotifyError::BlobFile {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(blob_file)?;
        Ok(self.attach_file(group, file, path, domain, fsid))
    }

    /// `attach` with the blob's file opened already (read-write, before any mark: see the
    /// module's comment); `path` names it in messages.
    pub fn attach_file(
        &mut self,
        group: &mut Group,
        file: std::fs::File,
        path: &Path,
        domain: &[u8],
        fsid: &[u8],
    ) -> u32 {
        self.attach_file_as(group, file, path, domain, fsid, false)
    }

    /// `attach_file`; `reattach`: the file was opened while marked (a successor attaching
    /// what its predecessor had attached).
    pub fn attach_file_as(
        &mut self,
        group: &mut Group,
        file: std::fs::File,
        path: &Path,
        domain: &[u8],
        fsid: &[u8],
        reattach: bool,
    ) -> u32 {
        if let Some(id) = group.attached(&file) {
            return id;
        }
        self.stats.opens += 1;
        let object_id = self.free_object_id(group);
        if reattach {
            if let Ok(key) = inode_key(file.as_fd()) {
                group.reattaching.insert(key, object_id);
            }
        }
        let file = self.fds().own(OwnedFd::from(file));
        let digest = std::str::from_utf8(domain)
            .ok()
            .zip(std::str::from_utf8(fsid).ok())
            .and_then(
                |(d, f)| match self.map().resolve(d.as_bytes(), f.as_bytes()) {
                    Some((_, Location::Registry { .. })) => digest_from_fsid(f),
                    _ => None,
                },
            );
        let reply = self.open_reply(AttachTicket {
            object_id,
            file,
            path: path.to_owned(),
            digest,
            reattach,
        });
        let request = OpenRequest {
            object_id,
            volume: b"fanotify",
            domain,
            fsid,
        };
        if let Err(e) = self.open(group, request, reply) {
            log::warn!("{}: {e}", path.display());
        }
        object_id
    }

    /// Whether the attach of `object_id` still waits for its source.
    pub fn attaching(&self, object_id: u32) -> bool {
        self.is_in_flight(OPEN_KEY_BASE + u64::from(object_id))
    }

    fn free_object_id(&self, group: &mut Group) -> u32 {
        loop {
            let id = group.next_id;
            group.next_id = group.next_id.wrapping_add(1).max(1);
            let pending = self.is_in_flight(OPEN_KEY_BASE + u64::from(id));
            if !pending && !self.objects().contains_key(&id) {
                return id;
            }
        }
    }

    /// Removes a blob's mark and forgets it. Fills in flight finish into the file; events
    /// already read are answered as usual.
    pub fn detach(&mut self, group: &mut Group, object_id: u32) {
        let Some(object) = self.objects().get(&object_id) else {
            return;
        };
        let (g, c) = (&group.stats, &group.stats.calls);
        log::info!(
            "fanotify so far: {} events ({} allowed at once, {} looked up in the file, {} waited for a fill in flight; {} fills ahead of the readers) in {} reads of the group; the loop thread's calls for them: read {} ms, fstat {} ms, answer {} ms, close {} ms",
            g.events,
            g.present,
            g.lookups,
            g.waited,
            g.ahead,
            c.reads,
            c.read.as_millis(),
            c.adopt.as_millis(),
            c.answer.as_millis(),
            c.close.as_millis()
        );
        if !group.complete.remove(&object_id) {
            if let Err(e) = group.mark(MarkFlags::FAN_MARK_REMOVE, object.fd.as_fd()) {
                log::warn!("removing the mark of object {object_id}: {e}");
            }
        }
        group.corrupt.remove(&object_id);
        group.marked_at_open.remove(&object_id);
        if let Some(key) = group.names.remove(&object_id) {
            group.save_record(|r| r.blobs.remove(&key));
        }
        group.files.remove(&object_id);
        group.blobs.retain(|_, id| *id != object_id);
        self.close(object_id);
    }

    /// Reads and dispatches every pending event (the group is non-blocking). A failed read
    /// (EMFILE: no fd for the event's file) has consumed the event it failed on, which the
    /// kernel denied; the events behind it raise no new wake-up, so reading goes on (up to
    /// `MAX_READ_ERRORS` in a row), and the first error is returned after.
    pub fn drain_group(&mut self, group: &mut Group) -> Result<(), FanotifyError> {
        const MAX_READ_ERRORS: u32 = 1024;
        // Events are 48 bytes: one read takes hundreds.
        let mut buf = vec![0u8; 16 << 10];
        let mut failed: Option<Errno> = None;
        let mut in_a_row = 0;
        loop {
            let started = std::time::Instant::now();
            let read = nix::unistd::read(group.fan.as_fd().as_raw_fd(), &mut buf);
            if matches!(read, Ok(n) if n > 0) {
                group.stats.calls.reads += 1;
                group.stats.calls.read += started.elapsed();
            }
            let n = match read {
                Ok(0) | Err(Errno::EAGAIN) => {
                    return failed.map_or(Ok(()), |e| Err(FanotifyError::Read(e)))
                }
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    in_a_row += 1;
                    if in_a_row >= MAX_READ_ERRORS {
                        return Err(FanotifyError::Read(e));
                    }
                    failed.get_or_insert(e);
                    continue;
                }
            };
            in_a_row = 0;
            for item in wire::events(&buf[..n]) {
                group.stats.events += 1;
                if !group.owed.is_empty() {
                    let fd = match &item {
                        Ok(event) => Some(event.fd),
                        Err(e) => e.fd,
                    };
                    if let Some(fd) = fd.filter(|fd| *fd >= 0) {
                        group.settle_collision(fd);
                    }
                }
                match item {
                    Ok(event) => self.dispatch(group, event),
                    Err(e) => {
                        group.stats.bad_events += 1;
                        log::warn!("bad fanotify event: {e}");
                        // Framed, so its fd is the kernel's: deny it, then close it.
                        if let Some(fd) = e.fd {
                            self.refuse(group, fd, e.mask.unwrap_or(0));
                        }
                    }
                }
            }
        }
    }

    /// Handles one event under `catch_unwind`: a panic fails that event, never the loop.
    fn dispatch(&mut self, group: &mut Group, event: Event) {
        let mut guarded = false;
        let handled = catch_unwind(AssertUnwindSafe(|| {
            self.on_event(group, event, &mut guarded)
        }));
        if let Err(panic) = handled {
            group.stats.bad_events += 1;
            log::error!(
                "handling a fanotify event panicked ({}); failing it",
                panic_message(&*panic)
            );
            // A reply that held it was dropped while unwinding and answers in `drain_done`.
            if !guarded && event.fd != wire::FAN_NOFD && event.mask & FAN_PRE_ACCESS != 0 {
                group.respond(event.fd, Verdict::Deny(Errno::EIO as u8));
            }
        }
    }

    fn adopt(&self, fd: i32) -> Result<KernelFd, AdoptError> {
        self.adopt_keyed(fd).map(|(fd, _)| fd)
    }

    /// Adopts an event's fd and tells whose file it is ((st_dev, st_ino)), with one fstat.
    fn adopt_keyed(&self, fd: i32) -> Result<(KernelFd, (u64, u64)), AdoptError> {
        let mut key = (0, 0);
        // Only a pre-content watched file is ever in an event of this group: a regular file.
        let owned = self.fds().adopt(fd as u32, |fd| {
            fstat(fd).is_ok_and(|st| {
                key = (st.st_dev, st.st_ino);
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFREG
            })
        })?;
        Ok((owned, key))
    }

    /// Denies an event that cannot be served, and closes its fd when it is ours.
    fn refuse(&mut self, group: &mut Group, fd: i32, mask: u64) {
        match self.adopt(fd) {
            Ok(owned) => {
                if mask & FAN_PRE_ACCESS != 0 {
                    let reply = self.read_reply(EventTicket {
                        number: fd,
                        fd: Some(owned),
                        ahead: None,
                    });
                    let _ = reply.answer(group, Err(Errno::EIO));
                }
            }
            Err(e) => {
                // Not ours to close; answering by number still releases the reader.
                log::warn!("{e}");
                if mask & FAN_PRE_ACCESS != 0 {
                    group.respond(fd, Verdict::Deny(Errno::EIO as u8));
                }
            }
        }
    }

    fn on_event(&mut self, group: &mut Group, event: Event, guarded: &mut bool) {
        if event.fd == wire::FAN_NOFD {
            // A queue overflow; permission events are never among the lost ones.
            log::warn!("fanotify event without a file (mask {:#x})", event.mask);
            return;
        }
        if event.mask & FAN_PRE_ACCESS == 0 {
            // Only FAN_PRE_ACCESS is asked for; anything else needs no answer.
            log::warn!("unexpected fanotify event (mask {:#x})", event.mask);
            drop(self.adopt(event.fd));
            return;
        }
        let started = std::time::Instant::now();
        let (fd, key) = match self.adopt_keyed(event.fd) {
            Ok(adopted) => adopted,
            Err(_) => return self.refuse(group, event.fd, event.mask),
        };
        group.stats.calls.adopt += started.elapsed();
        let number = event.fd;
        let reply = self.read_reply(EventTicket {
            fd: Some(fd),
            number,
            ahead: None,
        });
        *guarded = true;
        if event.pid == group.pid {
            // Our own fill through an fd opened after the mark: allowing it is what lets the
            // fill complete (it waits for this very answer).
            group.stats.own += 1;
            let _ = reply.answer(group, Ok(0));
            return;
        }
        let object = (group.blobs.get(&key).copied())
            .and_then(|id| self.objects().get(&id).map(|o| (id, o.fd.clone())));
        let waiting = group.reattaching.get(&key).copied();
        if let (None, Some(object_id)) = (&object, waiting) {
            // Marked by our predecessor, attached again by us: served once the source
            // answers (a denial now would fail a read that will be served in a moment).
            group.parked.push((object_id, event.range, reply, number));
            return;
        }
        let Some((object_id, file)) = object else {
            group.stats.unknown += 1;
            log::warn!("fanotify event for a file no attached blob has; denying it");
            let _ = reply.answer(group, Err(Errno::EIO));
            return;
        };
        self.serve(group, object_id, &file, event.range, reply, number);
    }

    /// Serves an event a dead predecessor recorded (fd `number`, kept out of our own events
    /// by `Group::owe`) on the blob now attached as `object_id`: filled, then allowed.
    pub fn recover(&mut self, group: &mut Group, object_id: u32, number: i32, p: &Pending) {
        let reply = self.read_reply(EventTicket {
            fd: None,
            number,
            ahead: None,
        });
        let Some(file) = self.objects().get(&object_id).map(|o| o.fd.clone()) else {
            let _ = reply.answer(group, Err(Errno::EIO));
            return;
        };
        let range = wire::Range {
            offset: p.offset,
            count: p.count,
        };
        self.serve(group, object_id, &file, Some(range), reply, number);
    }

    /// Allows a range already in the file at once; starts filling any other.
    fn serve(
        &mut self,
        group: &mut Group,
        object_id: u32,
        file: &KernelFd,
        range: Option<wire::Range>,
        reply: ReadReply<Fanotify>,
        number: i32,
    ) {
        // Here, not only for new events: a parked or recovered one may meet a blob that
        // failed its digest meanwhile.
        if group.corrupt.contains(&object_id) {
            let _ = reply.answer(group, Err(Errno::EIO));
            return;
        }
        let Some(blob) = group.files.get_mut(&object_id) else {
            log::warn!("object {object_id} has no file; failing the read");
            let _ = reply.answer(group, Err(Errno::EIO));
            return;
        };
        let len = blob.len;
        // No range: the access may touch anything (an open for write, a truncate).
        let (off, count) = range.map_or((0, len), |r| (r.offset, r.count));
        let end = off.saturating_add(count).min(len);
        if (off..end).contains(&EROFS_SUPERBLOCK) {
            blob.superblock_asked = true;
        }
        if off >= end || blob.filled.contains(off, end) {
            group.stats.present += 1;
            let _ = reply.answer(group, Ok(0));
            self.fill_ahead(group, object_id, end);
            return;
        }
        // A fill in flight covers it: wait for that (the file, being written, is not asked).
        let waits = covering(&blob.filling, off, end);
        // Not known to be there, it may be all the same: the readahead of a fill (which
        // records only the range its event asked for), a prefetch, a fill that finished after
        // a detach. What the file holds from `off` on is kept, unless a fill in flight is
        // still writing into it.
        let writing = |filling: &[(u64, u64)], start: u64, end: u64| {
            filling.iter().any(|&(s, e)| s < end && start < e)
        };
        let found = !waits && !writing(&blob.filling, off, end) && {
            group.stats.lookups += 1;
            hole_after(file.as_fd(), off).is_some_and(|hole| {
                let hole = hole.min(len);
                if !writing(&blob.filling, off, hole) {
                    blob.filled.insert(off, hole);
                }
                hole >= end
            })
        };
        if found {
            group.stats.present += 1;
            let _ = reply.answer(group, Ok(0));
            group.check_complete(object_id);
            self.fill_ahead(group, object_id, end);
            return;
        }
        let serial = blob.serial;
        // Recorded before the work starts, for a successor should we die before answering.
        if let Some(blob) = group.names.get(&object_id).cloned() {
            let pending = Pending {
                blob,
                offset: off,
                count: end - off,
            };
            group.save_record(|r| {
                r.events.insert(number, pending);
                true
            });
        }
        if waits {
            group.stats.waited += 1;
            group.waiting.push(Waiting {
                object_id,
                serial,
                start: off,
                end,
                reply,
            });
            return;
        }
        self.stats.reads += 1;
        if let Some(blob) = group.files.get_mut(&object_id) {
            blob.filling.push((off, end));
        }
        let fill = Fill {
            object_id,
            serial,
            start: off,
            end,
        };
        group.fills.insert(reply.key(), fill);
        self.read(object_id, off, end - off, reply);
    }

    /// A reader of `object_id` was allowed up to `pos`: when that is within half a readahead
    /// window of the end of the filled run it reads in, the next window is filled now, in the
    /// background, so that the reader finds it there instead of waiting for it.
    fn fill_ahead(&mut self, group: &mut Group, object_id: u32, pos: u64) {
        let window = self.map().fetch.readahead;
        let Some(blob) = group.files.get_mut(&object_id) else {
            return;
        };
        let Some(mut run_end) = blob.filled.end_of_run(pos.saturating_sub(1)) else {
            return;
        };
        let len = blob.len;
        let wanted = |run_end: u64, filling: &[(u64, u64)]| {
            window > 0
                && run_end < len
                && run_end - pos <= window / 2
                && !filling.iter().any(|&(s, e)| s <= run_end && run_end < e)
        };
        if !wanted(run_end, &blob.filling) {
            return;
        }
        // The fill that made this run wrote readahead past what it was asked for: the file
        // knows where the run really ends.
        group.stats.lookups += 1;
        let found = hole_after(blob.fd.as_fd(), run_end).filter(|hole| *hole > run_end);
        if let Some(hole) = found {
            blob.filled.insert(run_end, hole.min(len));
            run_end = blob.filled.end_of_run(run_end).unwrap_or(run_end);
        }
        if !wanted(run_end, &blob.filling) {
            if found.is_some() {
                group.check_complete(object_id);
            }
            return;
        }
        let end = run_end.saturating_add(window).min(blob.len);
        blob.filling.push((run_end, end));
        group.next_ahead += 1;
        group.stats.ahead += 1;
        let reply = self.read_reply(EventTicket {
            fd: None,
            number: -1,
            ahead: Some(group.next_ahead),
        });
        let fill = Fill {
            object_id,
            serial: blob.serial,
            start: run_end,
            end,
        };
        group.fills.insert(reply.key(), fill);
        self.read(object_id, run_end, end - run_end, reply);
    }
}

/// Whether `[off, end)` of the file holds data throughout (SEEK_HOLE finds no hole before
/// `end`). Any error just means "fill it".
fn is_present(fd: BorrowedFd<'_>, off: u64, end: u64) -> bool {
    hole_after(fd, off).is_some_and(|hole| hole >= end)
}

/// The first hole of the file at or after `off` (its end when there is none); `None` when
/// the filesystem cannot tell.
fn hole_after(fd: BorrowedFd<'_>, off: u64) -> Option<u64> {
    let off = i64::try_from(off).ok()?;
    nix::unistd::lseek(fd.as_raw_fd(), off, nix::unistd::Whence::SeekHole)
        .ok()
        .map(|hole| hole as u64)
}

/// The directory under the cache root holding the attached blobs' sparse files, as
/// `lazy/DOMAIN/FSID`: beside `cache/` and `graveyard/`, so the kernel's classic culling
/// never sees them, while they count against the same filesystem's limits.
pub const LAZY_DIR: &str = "lazy";

/// A blob's names as `attach` takes them, each checked once: safe in a path component and
/// in the source map's substitutions (`{domain}` is the fsid when none is given, as EROFS's
/// volume keys have it).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobKey {
    domain: Name,
    fsid: Name,
}

impl BlobKey {
    pub fn new(domain: Option<&str>, fsid: &str) -> Result<BlobKey, String> {
        let name = |what: &str, s: &str| {
            if !is_safe_name(s.as_bytes()) {
                return Err(format!(
                    "{what} {s:?} must be 1-255 of A-Z a-z 0-9 - . _ ~ : + , = @"
                ));
            }
            Name::new(s.as_bytes()).map_err(|e| format!("{what} {s:?}: {e}"))
        };
        Ok(BlobKey {
            fsid: name("fsid", fsid)?,
            domain: name("domain", domain.unwrap_or(fsid))?,
        })
    }

    pub fn fsid(&self) -> &str {
        std::str::from_utf8(self.fsid.as_bytes()).unwrap_or_default()
    }

    pub fn domain(&self) -> &str {
        std::str::from_utf8(self.domain.as_bytes()).unwrap_or_default()
    }
}

/// Where an `attach` stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attach {
    /// Sized and marked: mount this file.
    Ready(PathBuf),
    /// Waiting for the source to tell the blob's size: ask again.
    Pending,
    Failed(String),
}

/// Counters of the front end as a whole, for the report.
#[derive(Debug, Default, Clone)]
pub struct AttachStats {
    pub attaches: u64,
    pub attaches_failed: u64,
    pub detaches: u64,
    /// Detached blob files culled.
    pub culled: u64,
}

/// The fanotify front end as the daemon runs it: the group, the engine and the attached
/// blobs by name.
pub struct Lazy {
    pub engine: Engine<Fanotify>,
    pub group: Group,
    root: PathBuf,
    attached: HashMap<BlobKey, (u32, PathBuf)>,
    pending: HashMap<BlobKey, (u32, PathBuf)>,
    /// Attaches that failed since last asked about: the next `attach` of the key reports
    /// the failure once, the one after tries again.
    failed: HashMap<BlobKey, String>,
    /// A dead predecessor's events, waiting for their blob's attach to settle.
    recovering: std::collections::BTreeMap<i32, Pending>,
    pub stats: AttachStats,
    /// What `cachefilesctl mount` found out about this kernel's EROFS, this boot (kept
    /// beside the in-flight record for a restart: `META_EVENTS_FILE`).
    meta_events: MetaEvents,
}

/// Whether this kernel's EROFS raises pre-content events for the metadata it reads from a
/// file-backed mount's blob. 7.3 does (`erofs_read_meta_folio` reads through the file);
/// 6.14-6.18 do not (`read_mapping_folio` on the file's page cache): there a blob must be
/// whole before it is mounted, or its metadata holes read as zeros. No kernel version
/// tells (distributions backport): `cachefilesctl mount` finds out with its first mount of
/// a blob whose first block is a hole, and tells the daemon, which keeps the verdict for
/// every later mount of the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetaEvents {
    #[default]
    Unknown,
    Raised,
    NotRaised,
}

impl MetaEvents {
    /// The word of the control socket's `meta-events` request and reply.
    pub fn as_str(self) -> &'static str {
        match self {
            MetaEvents::Unknown => "unknown",
            MetaEvents::Raised => "raised",
            MetaEvents::NotRaised => "not-raised",
        }
    }

    /// The verdict held once `verdict` is reported. "Not raised" stays: a later "raised"
    /// would make mounts lazy on a kernel one mount proved reads zeros from holes (both
    /// cannot be right in one boot; the safe one wins). "Unknown" reports nothing.
    pub fn then(self, verdict: MetaEvents) -> MetaEvents {
        match (self, verdict) {
            (held, MetaEvents::Unknown) | (held @ MetaEvents::NotRaised, _) => held,
            (_, new) => new,
        }
    }

    pub fn parse(word: &str) -> Option<MetaEvents> {
        [
            MetaEvents::Unknown,
            MetaEvents::Raised,
            MetaEvents::NotRaised,
        ]
        .into_iter()
        .find(|v| v.as_str() == word)
    }
}

/// The file beside the in-flight record that keeps the verdict for a restart of the daemon:
/// `BOOT_ID VERDICT`, trusted only in the boot it names (another kernel may answer otherwise).
const META_EVENTS_FILE: &str = "erofs-meta-events";

/// This boot's id (36 characters of hex digits and dashes), if the kernel tells it.
fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim_end();
    (id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| id.to_string())
}

/// The verdict `text` keeps for the boot `boot`; anything else is unknown.
fn parse_meta_events(text: &str, boot: &str) -> MetaEvents {
    match text
        .trim_end_matches('\n')
        .split(' ')
        .collect::<Vec<_>>()
        .as_slice()
    {
        [b, word] if *b == boot => MetaEvents::parse(word).unwrap_or_default(),
        _ => MetaEvents::Unknown,
    }
}

/// What the file at `path` keeps for this boot (never through a symlink, at most a line).
fn load_meta_events(path: &Path) -> MetaEvents {
    let Some(boot) = boot_id() else {
        return MetaEvents::Unknown;
    };
    match crate::rundir::read(path, 128) {
        Ok(Some(bytes)) => std::str::from_utf8(&bytes)
            .map_or(MetaEvents::Unknown, |text| parse_meta_events(text, &boot)),
        _ => MetaEvents::Unknown,
    }
}

/// Writes `verdict` for this boot at `path`.
fn save_meta_events(path: &Path, verdict: MetaEvents) -> std::io::Result<()> {
    let boot = boot_id().ok_or_else(|| std::io::Error::other("no boot id"))?;
    crate::rundir::replace(path, format!("{boot} {}\n", verdict.as_str()).as_bytes())
}

impl Lazy {
    /// What is known of the kernel's EROFS metadata events.
    pub fn meta_events(&self) -> MetaEvents {
        self.meta_events
    }

    /// Whether a reader's event asked for the superblock of the blob attached as `key`: a
    /// probe's "raised" is taken only for such a blob.
    pub fn superblock_asked(&self, key: &BlobKey) -> bool {
        self.attached
            .get(key)
            .is_some_and(|(id, _)| self.group.superblock_asked(*id))
    }

    /// Records a probe's verdict (see `MetaEvents::then`); a change is logged once.
    pub fn set_meta_events(&mut self, verdict: MetaEvents) -> MetaEvents {
        let held = self.meta_events.then(verdict);
        match (held == self.meta_events, held) {
            (false, MetaEvents::NotRaised) => log::warn!(
                "this kernel's EROFS reads a file-backed mount's metadata without fanotify pre-content events (6.14-6.18 do): `cachefilesctl mount` fills each blob whole before mounting it (correct, not lazy)"
            ),
            (false, _) => log::info!(
                "this kernel's EROFS reads metadata through fanotify pre-content events: blobs are mounted lazily"
            ),
            (true, MetaEvents::NotRaised) if verdict == MetaEvents::Raised => log::warn!(
                "a mount found EROFS metadata reads raising fanotify events, an earlier one found they do not: blobs are still filled whole before they are mounted"
            ),
            (true, _) => {}
        }
        if held != self.meta_events {
            if let Some(path) = self.group.meta_events_path.as_deref() {
                if let Err(e) = save_meta_events(path, held) {
                    log::warn!("{}: {e}: a restart will not know it", path.display());
                }
            }
        }
        self.meta_events = held;
        held
    }

    pub fn new(
        map: super::sourcemap::SourceMap,
        group: Group,
        wake: super::reply::Wake,
        root: &Path,
    ) -> Lazy {
        let mut group = group;
        let left = group.recovered.take();
        let mut lazy = Lazy {
            engine: Engine::new(map, wake),
            group,
            root: root.to_owned(),
            attached: HashMap::new(),
            pending: HashMap::new(),
            failed: HashMap::new(),
            recovering: Default::default(),
            stats: AttachStats::default(),
            meta_events: MetaEvents::Unknown,
        };
        if let Some(path) = lazy.group.meta_events_path.as_deref() {
            lazy.meta_events = load_meta_events(path);
            if lazy.meta_events != MetaEvents::Unknown {
                log::info!(
                    "EROFS metadata events {}, as found earlier in this boot ({})",
                    lazy.meta_events.as_str(),
                    path.display()
                );
            }
        }
        if let Some(left) = left {
            lazy.recover(left);
        }
        lazy
    }

    /// Takes over what a dead predecessor owed (its group adopted, `Group::keep_record`):
    /// before any event is read, every fd number it could have held but did not record is
    /// denied, the recorded ones are kept out of our new events, and its blobs are attached
    /// again; each recorded event is served once its blob is (`settle`).
    fn recover(&mut self, left: Record) {
        if left.unread {
            log::info!("fanotify group taken over from the process that made it: nothing owed");
        } else {
            let limit = fd_limit();
            let started = std::time::Instant::now();
            // ~2 µs a number: a second or two at LimitNOFILE=1048576, once per crash.
            let denied = self.group.deny_unrecorded(limit, &left);
            log::info!(
                "fanotify group taken over: {} blob(s) and {} event(s) in flight recorded; {denied} unrecorded event(s) failed (fd numbers below {limit} swept in {:?})",
                left.blobs.len(),
                left.events.len(),
                started.elapsed()
            );
        }
        for fd in left.events.keys() {
            self.group.owe(*fd);
        }
        let blobs: std::collections::BTreeSet<BlobKey> = (left.blobs.iter())
            .chain(left.events.values().map(|p| &p.blob))
            .cloned()
            .collect();
        for key in &blobs {
            if let Attach::Failed(e) = self.attach_as(key, true) {
                log::warn!("{e}");
            }
        }
        // Only now: `settle` serves each event whose blob is no longer pending.
        self.recovering = left.events;
        self.settle();
    }

    /// Serves or fails each recovered event whose blob's attach has settled.
    fn serve_recovered(&mut self) {
        let settled: Vec<i32> = (self.recovering.iter())
            .filter(|(_, p)| !self.pending.contains_key(&p.blob))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in settled {
            let Some(p) = self.recovering.remove(&fd) else {
                continue;
            };
            match self.attached.get(&p.blob) {
                Some((id, _)) => {
                    let id = *id;
                    self.engine.recover(&mut self.group, id, fd, &p);
                }
                None => {
                    log::warn!(
                        "fsid {} (domain {}) cannot be attached again: its read in flight at the takeover fails",
                        p.blob.fsid(),
                        p.blob.domain()
                    );
                    let reply = self.engine.read_reply(EventTicket {
                        fd: None,
                        number: fd,
                        ahead: None,
                    });
                    let _ = reply.answer(&mut self.group, Err(Errno::EIO));
                }
            }
        }
    }

    /// The attached blobs: name, object id, file.
    pub fn attached(&self) -> impl Iterator<Item = (&BlobKey, u32, &Path)> {
        self.attached
            .iter()
            .map(|(k, (id, p))| (k, *id, p.as_path()))
    }

    /// Attaches `key` (or tells how its attach stands): creates or reuses its sparse file
    /// through the cache-directory layer (validated names, no symlink followed).
    pub fn attach(&mut self, key: &BlobKey) -> Attach {
        self.attach_as(key, false)
    }

    fn attach_as(&mut self, key: &BlobKey, reattach: bool) -> Attach {
        self.settle();
        if let Some((_, path)) = self.attached.get(key) {
            return Attach::Ready(path.clone());
        }
        if self.pending.contains_key(key) {
            return Attach::Pending;
        }
        if let Some(e) = self.failed.remove(key) {
            return Attach::Failed(e);
        }
        let (file, path) = match self.open_blob_file(key) {
            Ok(f) => f,
            Err(e) => {
                self.stats.attaches_failed += 1;
                return Attach::Failed(e);
            }
        };
        let id = self.engine.attach_file_as(
            &mut self.group,
            file,
            &path,
            key.domain.as_bytes(),
            key.fsid.as_bytes(),
            reattach,
        );
        self.stats.attaches += 1;
        self.pending.insert(key.clone(), (id, path));
        self.settle();
        match self.attached.get(key) {
            Some((_, path)) => Attach::Ready(path.clone()),
            None => Attach::Pending,
        }
    }

    fn open_blob_file(&self, key: &BlobKey) -> Result<(std::fs::File, PathBuf), String> {
        let root = CacheDir::open(&self.root).map_err(|e| e.to_string())?;
        let lazy = Name::new(LAZY_DIR.as_bytes()).map_err(|e| e.to_string())?;
        let top = root
            .ensure_dir(root.dir(), &[], &lazy)
            .map_err(|e| e.to_string())?;
        root.ensure_dir(&top, &[lazy.as_bytes()], &key.domain)
            .map_err(|e| e.to_string())?;
        let rel: [&[u8]; 3] = [lazy.as_bytes(), key.domain.as_bytes(), key.fsid.as_bytes()];
        // As a `File`: rustix's openat takes an `AsFd`.
        let domain = tree::open_file(&top, &key.domain, rustix::fs::OFlags::DIRECTORY)
            .map_err(|e| root.error("cannot open", &rel[..2], e).to_string())?;
        let file = rustix::fs::openat(
            &domain,
            key.fsid.as_bytes(),
            rustix::fs::OFlags::RDWR
                | rustix::fs::OFlags::CREATE
                | rustix::fs::OFlags::NOFOLLOW
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        )
        .map(std::fs::File::from)
        .map_err(|e| {
            let errno = Errno::from_raw(e.raw_os_error());
            root.error("cannot open", &rel, errno).to_string()
        })?;
        let path = rel.iter().fold(self.root.clone(), |p, c| {
            p.join(std::ffi::OsStr::from_bytes(c))
        });
        Ok((file, path))
    }

    /// Moves answered attaches out of `pending`: into `attached`, or `failed` when the
    /// engine refused them (the source failed or the file cannot be marked: logged).
    fn settle(&mut self) {
        let done: Vec<BlobKey> = self
            .pending
            .iter()
            .filter(|(_, (id, _))| !self.engine.attaching(*id))
            .map(|(k, _)| k.clone())
            .collect();
        for key in done {
            let Some((id, path)) = self.pending.remove(&key) else {
                continue;
            };
            if self.engine.objects().contains_key(&id) {
                log::info!(
                    "attached {} (fsid {}, domain {})",
                    path.display(),
                    key.fsid(),
                    key.domain()
                );
                self.group.names.insert(id, key.clone());
                let recorded = key.clone();
                self.group.save_record(|r| r.blobs.insert(recorded));
                self.attached.insert(key, (id, path));
            } else {
                let recorded = key.clone();
                self.group.save_record(|r| r.blobs.remove(&recorded));
                self.stats.attaches_failed += 1;
                self.failed.insert(
                    key.clone(),
                    format!(
                        "fsid {} (domain {}): no source served it, or its file cannot be marked (see the daemon's log)",
                        key.fsid(),
                        key.domain()
                    ),
                );
            }
        }
        if !self.recovering.is_empty() {
            self.serve_recovered();
        }
        if !self.group.parked.is_empty() {
            self.serve_parked();
        }
    }

    /// Serves the events parked while their blob was attached again, once it is (or fails
    /// them when it cannot be).
    fn serve_parked(&mut self) {
        let parked = std::mem::take(&mut self.group.parked);
        for (object_id, range, reply, number) in parked {
            if self.engine.attaching(object_id) {
                self.group.parked.push((object_id, range, reply, number));
                continue;
            }
            match self.engine.objects().get(&object_id).map(|o| o.fd.clone()) {
                Some(file) => {
                    self.engine
                        .serve(&mut self.group, object_id, &file, range, reply, number)
                }
                None => {
                    let _ = reply.answer(&mut self.group, Err(Errno::EIO));
                }
            }
        }
    }

    /// Detaches the blob attached as `path` (absolute) or named `key`; its file stays.
    pub fn detach(&mut self, what: Detach) -> Result<PathBuf, String> {
        self.settle();
        let key = match &what {
            Detach::Key(k) => k.clone(),
            Detach::Path(p) => self
                .attached
                .iter()
                .find(|(_, (_, path))| path == p)
                .map(|(k, _)| k.clone())
                .ok_or_else(|| format!("{} is not attached", p.display()))?,
        };
        let Some((id, path)) = self.attached.remove(&key) else {
            return Err(format!(
                "fsid {} (domain {}) is not attached",
                key.fsid(),
                key.domain()
            ));
        };
        self.engine.detach(&mut self.group, id);
        self.stats.detaches += 1;
        log::info!("detached {}", path.display());
        Ok(path)
    }

    /// Culls the detached blob file in `lazy/` used least recently (by atime, as the
    /// classic culler orders `cache/`): moved into the graveyard, which the reaper empties. A
    /// blob attached or being attached (mounted, or about to be) is never chosen. The path
    /// culled, `None` when no detached blob is left.
    pub fn cull_one(&mut self) -> Result<Option<PathBuf>, String> {
        self.settle();
        let root = CacheDir::open(&self.root).map_err(|e| e.to_string())?;
        let lazy = Name::new(LAZY_DIR.as_bytes()).map_err(|e| e.to_string())?;
        let mut top = match root.open_dir(std::slice::from_ref(&lazy)) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(root.error("cannot open", &[lazy.as_bytes()], e).to_string()),
        };
        let in_use: std::collections::HashSet<&Path> = (self.attached.values())
            .chain(self.pending.values())
            .map(|(_, p)| p.as_path())
            .collect();
        let mut oldest: Option<((i64, i64), Name, Name)> = None;
        for domain in tree::list(&mut top).map_err(|e| e.to_string())? {
            let Ok(mut dir) = tree::open_dir(&top, &domain) else {
                continue;
            };
            for file in tree::list(&mut dir).unwrap_or_default() {
                let Ok(st) = tree::stat(&dir, &file) else {
                    continue;
                };
                let path = self
                    .root
                    .join(LAZY_DIR)
                    .join(std::ffi::OsStr::from_bytes(domain.as_bytes()))
                    .join(std::ffi::OsStr::from_bytes(file.as_bytes()));
                if tree::file_type(&st) != SFlag::S_IFREG || in_use.contains(path.as_path()) {
                    continue;
                }
                let atime = (st.st_atime, st.st_atime_nsec);
                if oldest.as_ref().is_none_or(|(t, _, _)| atime < *t) {
                    oldest = Some((atime, domain.clone(), file));
                }
            }
        }
        let Some((_, domain, file)) = oldest else {
            return Ok(None);
        };
        let rel: [&[u8]; 3] = [lazy.as_bytes(), domain.as_bytes(), file.as_bytes()];
        let dir = tree::open_dir(&top, &domain)
            .map_err(|e| root.error("cannot open", &rel[..2], e).to_string())?;
        let graveyard = root.graveyard().map_err(|e| e.to_string())?;
        crate::cachedir::graveyard::bury(&dir, &file, &graveyard)
            .map_err(|e| root.error("cannot bury", &rel, e).to_string())?;
        self.stats.culled += 1;
        let shown = root.show(&rel);
        log::info!("culled the detached blob {shown}");
        Ok(Some(PathBuf::from(shown)))
    }

    /// The group is readable.
    pub fn on_events(&mut self) -> Result<(), FanotifyError> {
        self.engine.drain_group(&mut self.group)
    }

    /// Pool results are in.
    pub fn on_completions(&mut self) -> Result<(), DeviceError> {
        let r = self.engine.drain_done(&mut self.group);
        self.settle();
        r
    }
}

impl Drop for Lazy {
    /// Once its last fd closes, the kernel lets every read through: a mounted blob that is
    /// not complete would show zeros in its holes. Say which.
    fn drop(&mut self) {
        for (key, (id, path)) in &self.attached {
            if !self.group.is_complete(*id) {
                log::error!(
                    "{} (fsid {}) is still attached and incomplete: unless the group is kept for a successor (--supervise, the fd store), unmount it: its unfilled ranges read as zeros once the group is closed",
                    path.display(),
                    key.fsid()
                );
            }
        }
    }
}

/// The fd numbers a process of ours can hold: its open-file limit (raised to the hard limit
/// at start, the same for a predecessor), capped.
fn fd_limit() -> i32 {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    soft.min(1 << 20) as i32
}

/// What `detach` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detach {
    Path(PathBuf),
    Key(BlobKey),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_pre_content_group_is_recognised_in_fdinfo() {
        let info = |flags: &str| {
            format!("pos:\t0\nflags:\t02004002\nmnt_id:\t15\nino:\t1057\nfanotify flags:{flags} event-flags:8002\nfanotify ino:d dev:fd00 mflags:0 mask:100000 ignored_mask:0\n")
        };
        // FAN_CLASS_PRE_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE, as made.
        assert!(pre_content_flags(info("1b").as_bytes()));
        assert!(pre_content_flags(info("8").as_bytes()));
        // FAN_CLASS_NOTIF, FAN_CLASS_CONTENT, both class bits (no such class).
        for flags in ["0", "13", "4", "c", "", "zz", "-8"] {
            assert!(!pre_content_flags(info(flags).as_bytes()), "{flags:?}");
        }
        // Not a fanotify fd at all (an inotify one, a plain file).
        assert!(!pre_content_flags(
            b"pos:\t0\nflags:\t02004000\nmnt_id:\t15\ninotify wd:1 ino:2 sdev:3 mask:8 ignored_mask:0\n"
        ));
        assert!(!pre_content_flags(
            b"pos:\t0\nflags:\t0100000\nmnt_id:\t24\n"
        ));
    }

    #[test]
    fn a_kernel_found_to_read_metadata_without_events_stays_so() {
        use MetaEvents::*;
        assert_eq!(Unknown.then(Raised), Raised);
        assert_eq!(Unknown.then(NotRaised), NotRaised);
        assert_eq!(Raised.then(NotRaised), NotRaised);
        assert_eq!(NotRaised.then(Raised), NotRaised);
        for held in [Unknown, Raised, NotRaised] {
            assert_eq!(held.then(Unknown), held);
            assert_eq!(MetaEvents::parse(held.as_str()), Some(held));
        }
        assert_eq!(MetaEvents::parse("yes"), None);
    }

    #[test]
    fn the_verdict_is_kept_for_its_boot_only_and_never_through_a_symlink() {
        const BOOT: &str = "0f6b2c1e-8d1a-4c57-9c3e-2a7d9b6e5f40";
        assert_eq!(
            parse_meta_events(&format!("{BOOT} not-raised\n"), BOOT),
            MetaEvents::NotRaised
        );
        assert_eq!(
            parse_meta_events(&format!("{BOOT} raised"), BOOT),
            MetaEvents::Raised
        );
        let other = "11111111-2222-3333-4444-555555555555";
        for text in [
            format!("{other} not-raised\n"),
            format!("{BOOT} maybe\n"),
            format!("{BOOT} raised extra\n"),
            String::new(),
        ] {
            assert_eq!(
                parse_meta_events(&text, BOOT),
                MetaEvents::Unknown,
                "{text:?}"
            );
        }
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(META_EVENTS_FILE);
        assert_eq!(load_meta_events(&path), MetaEvents::Unknown);
        save_meta_events(&path, MetaEvents::NotRaised).unwrap();
        assert_eq!(load_meta_events(&path), MetaEvents::NotRaised);
        // A symlink in its place is neither read through nor written through.
        let target = dir.path().join("elsewhere");
        std::fs::copy(&path, &target).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert_eq!(load_meta_events(&path), MetaEvents::Unknown);
        save_meta_events(&path, MetaEvents::Raised).unwrap();
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(load_meta_events(&path), MetaEvents::Raised);
        assert!(std::fs::read_to_string(&target)
            .unwrap()
            .ends_with(" not-raised\n"));
    }

    #[test]
    fn adopt_refuses_what_is_not_a_pre_content_group() {
        let dir = tempfile::tempdir().unwrap();
        let file: OwnedFd = std::fs::File::create(dir.path().join("f")).unwrap().into();
        assert!(matches!(
            Group::adopt(file),
            Err(FanotifyError::NotAGroup(_))
        ));
        let (pipe, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            Group::adopt(pipe),
            Err(FanotifyError::NotAGroup(_))
        ));
        // A notification-class group is a fanotify fd, but answers no permission event.
        if let Ok(notif) = NixGroup::init(InitFlags::FAN_CLASS_NOTIF, EventFFlags::O_RDONLY) {
            let fd = notif.as_fd().try_clone_to_owned().unwrap();
            assert!(matches!(Group::adopt(fd), Err(FanotifyError::NotAGroup(_))));
        }
        if let Ok(made) = Group::new() {
            assert!(Group::adopt(made.try_clone_fd().unwrap()).is_ok());
        }
    }
}
