//! On-demand mode (`bind ondemand`): the kernel sends OPEN/READ/CLOSE; every OPEN gets exactly
//! one `copen`, every READ exactly one READ_COMPLETE, whatever the source does. Opening a
//! source and fetching data run on worker pools (local and remote apart, so a slow server
//! never delays local blobs); the loop thread only decodes, dispatches and answers.

pub mod sourcemap;
pub mod sources;

use crate::device::{Device, DeviceError};
use crate::proto::msg::{self, DecodeError, Request, MSG_MAX_SIZE};
use crate::proto::Command;
use nix::errno::Errno;
use sourcemap::{FetchSettings, Location, SourceMap};
use sources::Blob;
use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

const PAGE: u64 = 4096;
/// Data moves through the anon fd in chunks of this size (whole pages, page aligned).
const CHUNK: usize = 1 << 20;

/// A page-aligned page: the kernel writes the anon fd with O_DIRECT.
#[cfg(test)]
mod tests {
    #[test]
    fn readahead_skips_chunks_already_cached() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        std::fs::write(&src, vec![7u8; 4 << 20]).unwrap();
        let blob = super::sources::LocalBlob::open(src).unwrap();
        let cache = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("cache"))
            .unwrap();
        cache.set_len(4 << 20).unwrap();
        // The third MiB is already cached (marked 9s); the rest is a hole.
        cache.write_all_at(&vec![9u8; 1 << 20], 2 << 20).unwrap();
        let fd: std::os::fd::OwnedFd = cache.try_clone().unwrap().into();
        // Ask for 4 KiB at 0 with 3 MiB of readahead: chunks 0, 1 and 3 are written, 2 skipped.
        let written = super::serve_read(&blob, &fd, 0, 4096, 3 << 20).unwrap();
        assert_eq!(written, (2 << 20) + 4096);
        let mut back = vec![0u8; 4 << 20];
        cache.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..2 << 20].iter().all(|&b| b == 7));
        assert!(
            back[2 << 20..3 << 20].iter().all(|&b| b == 9),
            "cached chunk rewritten"
        );
        assert!(back[3 << 20..(3 << 20) + 4096].iter().all(|&b| b == 7));
    }

    #[test]
    fn latency_quantiles() {
        let mut l = super::Latency::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in [1u64, 1, 1, 1, 1, 1, 1, 1, 1, 200] {
            l.record(std::time::Duration::from_millis(ms));
        }
        // 1 ms lies in the bucket below 1.024 ms; 200 ms below 262 ms.
        assert_eq!(l.quantile(0.5), Some(0.001024));
        assert_eq!(l.quantile(0.99), Some(0.262144));
    }
}

#[derive(FromBytes, IntoBytes, Immutable, KnownLayout, Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; 4096]);

pub struct Object {
    pub fd: Arc<OwnedFd>,
    pub blob: Arc<dyn Blob>,
    pub volume: String,
    pub fsid: String,
    pub source: usize,
}

#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub opens: u64,
    pub opens_failed: u64,
    pub reads: u64,
    pub reads_failed: u64,
    pub bytes_written: u64,
    pub closes: u64,
    pub bad_messages: u64,
    pub duplicates: u64,
    pub unknown_objects: u64,
}

/// READ latency histogram: bucket i counts latencies below 2^(i+6) microseconds.
#[derive(Debug, Clone, Default)]
pub struct Latency {
    buckets: [u64; 22],
}

impl Latency {
    pub fn record(&mut self, d: std::time::Duration) {
        let us = d.as_micros().max(1) as u64;
        let i = (64 - us.leading_zeros() as usize)
            .saturating_sub(6)
            .min(self.buckets.len() - 1);
        self.buckets[i] += 1;
    }

    /// Upper bound of the bucket holding quantile `q`, in seconds; `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some((1u64 << (i + 6)) as f64 / 1e6);
            }
        }
        None
    }
}

/// Per `[[source]]` entry: what was fetched through it.
#[derive(Debug, Clone, Default)]
pub struct SourceStats {
    pub reads: u64,
    pub bytes: u64,
    pub errors: u64,
    pub latency: Latency,
}

type Job = Box<dyn FnOnce() -> Done + Send>;

enum Done {
    Opened {
        msg_id: u32,
        object_id: u32,
        fd: OwnedFd,
        volume: String,
        fsid: String,
        result: Result<(usize, Arc<dyn Blob>), (Errno, String)>,
    },
    Read {
        msg_id: u32,
        source: usize,
        fd: Arc<OwnedFd>,
        result: Result<u64, String>,
        started: Instant,
    },
}

struct Pool {
    jobs: mpsc::Sender<Job>,
}

impl Pool {
    fn start(
        name: &str,
        workers: usize,
        done: mpsc::Sender<Done>,
        wake: Arc<dyn Fn() + Send + Sync>,
    ) -> Pool {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let done = done.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().expect("job queue").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    if done.send(job()).is_err() {
                        return;
                    }
                    wake();
                })
                .expect("spawning a fetch worker");
        }
        Pool { jobs }
    }
}

pub struct OnDemand {
    map: Arc<SourceMap>,
    agent: ureq::Agent,
    objects: HashMap<u32, Object>,
    in_flight: HashSet<u32>,
    local: Pool,
    remote: Pool,
    done: mpsc::Receiver<Done>,
    pub stats: Stats,
    /// Keyed by the source's position in the map (1-based).
    pub per_source: std::collections::BTreeMap<usize, SourceStats>,
}

impl OnDemand {
    /// `wake` is called from worker threads when a result is ready (a mio Waker).
    pub fn new(map: SourceMap, wake: Arc<dyn Fn() + Send + Sync>) -> OnDemand {
        let (done_tx, done) = mpsc::channel();
        let workers = map.fetch.workers;
        let agent = sources::agent(&map.fetch);
        OnDemand {
            local: Pool::start("fetch-local", workers, done_tx.clone(), wake.clone()),
            remote: Pool::start("fetch-remote", workers, done_tx, wake),
            map: Arc::new(map),
            agent,
            objects: HashMap::new(),
            in_flight: HashSet::new(),
            done,
            stats: Stats::default(),
            per_source: Default::default(),
        }
    }

    pub fn objects(&self) -> &HashMap<u32, Object> {
        &self.objects
    }

    pub fn map(&self) -> &SourceMap {
        &self.map
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Reads and dispatches every pending request: the kernel returns 0, not EAGAIN, when
    /// none is left.
    pub fn drain_device(&mut self, device: &mut dyn Device) -> Result<(), DeviceError> {
        let mut buf = [0u8; MSG_MAX_SIZE];
        loop {
            let n = match device.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.cache_is_dead() => return Err(e),
                Err(e) => {
                    log::warn!("{e}");
                    return Ok(());
                }
            };
            match msg::decode(&buf[..n]) {
                Ok(request) => self.dispatch(request, device)?,
                Err(e) => self.bad_message(e, device)?,
            }
        }
    }

    fn bad_message(&mut self, e: DecodeError, device: &mut dyn Device) -> Result<(), DeviceError> {
        self.stats.bad_messages += 1;
        log::warn!(
            "bad message from the kernel (msg_id {:?}, opcode {:?}): {e}",
            e.msg_id,
            e.opcode
        );
        if let Some(fd) = e.open_fd.filter(|&fd| device.is_anon_fd(fd as i32)) {
            // SAFETY: the device confirmed this is the anonymous fd the kernel installed in
            // our table for this OPEN; nothing else owns it, so it is closed exactly once.
            let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
            drop(fd);
        }
        if let (Some(msg_id), Some(msg::OP_OPEN)) = (e.msg_id, e.opcode) {
            self.reply_open(device, msg_id, -(Errno::EINVAL as i64))?;
        }
        Ok(())
    }

    /// Sends `copen`; `Ok(false)` when the kernel refused it (logged: the OPEN is gone, e.g.
    /// its waiter was killed). Only a dead cache is an error.
    fn reply_open(
        &mut self,
        device: &mut dyn Device,
        msg_id: u32,
        size: i64,
    ) -> Result<bool, DeviceError> {
        match device.send(&Command::Copen { msg_id, size }) {
            Ok(()) => Ok(true),
            Err(e) if e.cache_is_dead() => Err(e),
            Err(e) => {
                log::warn!("{e}");
                Ok(false)
            }
        }
    }

    fn dispatch(
        &mut self,
        request: Request<'_>,
        device: &mut dyn Device,
    ) -> Result<(), DeviceError> {
        match request {
            Request::Open {
                msg_id,
                object_id,
                volume_key,
                cookie_key,
                fd,
                ..
            } => {
                self.stats.opens += 1;
                if !device.is_anon_fd(fd as i32) {
                    // Not ours to use or close: answer so the kernel's waiter is released.
                    self.stats.bad_messages += 1;
                    log::warn!("OPEN msg_id {msg_id} names fd {fd}, which is not an anonymous cachefiles fd; refusing");
                    return self
                        .reply_open(device, msg_id, -(Errno::EBADF as i64))
                        .map(drop);
                }
                // SAFETY: the device confirmed the kernel installed this fd in our table for
                // this OPEN; nothing else owns it. Owned from here, it can never leak.
                let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
                if !self.in_flight.insert(msg_id) {
                    // Re-delivered after `restore` while we are still answering it.
                    self.stats.duplicates += 1;
                    return Ok(());
                }
                let volume = String::from_utf8_lossy(volume_key).into_owned();
                let fsid = String::from_utf8_lossy(cookie_key).into_owned();
                let domain = volume_key.strip_prefix(b"erofs,").unwrap_or(b"");
                let Some((source, location)) = self.map.resolve(domain, cookie_key) else {
                    log::warn!("OPEN {volume:?} {fsid:?}: no source matches; refusing with ENOENT");
                    self.in_flight.remove(&msg_id);
                    self.stats.opens_failed += 1;
                    // Answer first: closing the fd before its copen fails the OPEN with EBADFD.
                    self.reply_open(device, msg_id, -(Errno::ENOENT as i64))?;
                    drop(fd);
                    return Ok(());
                };
                let index = source.index;
                let remote = !matches!(location, Location::Path(_));
                let agent = self.agent.clone();
                let settings: FetchSettings = self.map.fetch.clone();
                let job: Job = Box::new(move || {
                    let result = sources::open(location, &fsid, &agent, &settings)
                        .map(|b| (index, Arc::<dyn Blob>::from(b)))
                        .map_err(|e| (e.errno(), e.to_string()));
                    Done::Opened {
                        msg_id,
                        object_id,
                        fd,
                        volume,
                        fsid,
                        result,
                    }
                });
                self.submit(remote, job);
                Ok(())
            }
            Request::Read {
                msg_id,
                object_id,
                off,
                len,
            } => {
                self.stats.reads += 1;
                let Some(object) = self.objects.get(&object_id) else {
                    // Without an fd of the object there is no way to complete it; the kernel
                    // fails it when the object is dropped.
                    self.stats.unknown_objects += 1;
                    log::warn!("READ msg_id {msg_id} for unknown object {object_id}");
                    return Ok(());
                };
                if !self.in_flight.insert(msg_id) {
                    self.stats.duplicates += 1;
                    return Ok(());
                }
                let fd = object.fd.clone();
                let blob = object.blob.clone();
                let source = object.source;
                let readahead = self.map.fetch.readahead;
                let remote = blob.is_remote();
                let job: Job = Box::new(move || {
                    let started = Instant::now();
                    let result = serve_read(&*blob, &fd, off, len, readahead);
                    Done::Read {
                        msg_id,
                        source,
                        fd,
                        result,
                        started,
                    }
                });
                self.submit(remote, job);
                Ok(())
            }
            Request::Close { object_id, .. } => {
                self.stats.closes += 1;
                // In-flight READs keep their own reference: the fd stays open until they
                // are completed, so the object id cannot be recycled under them.
                if self.objects.remove(&object_id).is_none() {
                    log::debug!("CLOSE for unknown object {object_id}");
                }
                Ok(())
            }
        }
    }

    /// Remote fetches have their own pool so that a slow server never delays local blobs.
    fn submit(&self, remote: bool, job: Job) {
        let pool = if remote { &self.remote } else { &self.local };
        pool.jobs.send(job).expect("fetch pool alive");
    }

    /// Answers everything the workers have finished.
    pub fn drain_done(&mut self, device: &mut dyn Device) -> Result<(), DeviceError> {
        while let Ok(done) = self.done.try_recv() {
            match done {
                Done::Opened {
                    msg_id,
                    object_id,
                    fd,
                    volume,
                    fsid,
                    result,
                } => {
                    self.in_flight.remove(&msg_id);
                    match result {
                        Ok((source, blob)) => {
                            let size = blob.size();
                            if self.reply_open(device, msg_id, size as i64)? {
                                log::info!(
                                    "OPEN {volume} {fsid}: {size} bytes from {}",
                                    blob.describe()
                                );
                                let fd = Arc::new(fd);
                                self.objects.insert(
                                    object_id,
                                    Object {
                                        fd,
                                        blob,
                                        volume,
                                        fsid,
                                        source,
                                    },
                                );
                            } else {
                                self.stats.opens_failed += 1;
                            }
                        }
                        Err((errno, why)) => {
                            self.stats.opens_failed += 1;
                            log::warn!("OPEN {volume} {fsid}: {why}; refusing with {errno}");
                            self.reply_open(device, msg_id, -(errno as i64))?;
                            drop(fd);
                        }
                    }
                }
                Done::Read {
                    msg_id,
                    source,
                    fd,
                    result,
                    started,
                } => {
                    self.in_flight.remove(&msg_id);
                    let per = self.per_source.entry(source).or_default();
                    per.reads += 1;
                    per.latency.record(started.elapsed());
                    match &result {
                        Ok(bytes) => per.bytes += bytes,
                        Err(_) => per.errors += 1,
                    }
                    match result {
                        Ok(bytes) => {
                            self.stats.bytes_written += bytes;
                            log::trace!(
                                "READ msg_id {msg_id}: {bytes} bytes in {:?}",
                                started.elapsed()
                            );
                        }
                        Err(why) => {
                            self.stats.reads_failed += 1;
                            log::warn!(
                                "READ msg_id {msg_id} failed: {why}; completing without data"
                            );
                        }
                    }
                    // The kernel refuses a completion only for a READ it no longer waits for
                    // (EINVAL); a dead cache is caught by the daemon's liveness probe.
                    if let Err(e) = device.complete_read(fd.as_fd(), msg_id) {
                        log::warn!("{e}");
                    }
                }
            }
        }
        Ok(())
    }
}

/// Fetches `[off, off+len)` plus readahead and writes it into the anon fd in whole pages from
/// page-aligned offsets (the kernel refuses unaligned starts with ENOBUFS), zero-padding the
/// blob's tail. Returns the bytes written.
pub fn serve_read(
    blob: &dyn Blob,
    fd: &OwnedFd,
    off: u64,
    len: u64,
    readahead: u64,
) -> Result<u64, String> {
    let size = blob.size();
    let start = off / PAGE * PAGE;
    let padded_size = size.div_ceil(PAGE) * PAGE;
    let end = off
        .saturating_add(len)
        .saturating_add(readahead)
        .div_ceil(PAGE)
        .saturating_mul(PAGE)
        .min(padded_size);
    if start >= end {
        return Ok(0);
    }
    thread_local! {
        /// One chunk per worker thread, reused: no page-aligned allocation (which glibc always
        /// serves with mmap + munmap) and no zero-filling per READ.
        static PAGES: std::cell::RefCell<Vec<Page>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // Chunks wholly past the asked range are readahead: skipped when already cached.
    let asked_end = off.saturating_add(len);
    PAGES.with_borrow_mut(|pages| serve_chunks(blob, fd, start, end, asked_end, pages))
}

/// Whether `[pos, pos+n)` of the cache file holds data throughout. The anon fd passes
/// SEEK_HOLE through to the backing file; any error just means "write it".
fn already_cached(fd: &OwnedFd, pos: u64, n: u64) -> bool {
    use std::os::fd::AsRawFd;
    matches!(
        nix::unistd::lseek(fd.as_raw_fd(), pos as i64, nix::unistd::Whence::SeekHole),
        Ok(hole) if hole as u64 >= pos + n
    )
}

fn serve_chunks(
    blob: &dyn Blob,
    fd: &OwnedFd,
    start: u64,
    end: u64,
    asked_end: u64,
    pages: &mut Vec<Page>,
) -> Result<u64, String> {
    let size = blob.size();
    let want = (CHUNK as u64).min(end - start).div_ceil(PAGE) as usize;
    if pages.len() < want {
        pages.resize(want, Page([0; 4096]));
    }
    let mut pos = start;
    let mut written = 0;
    while pos < end {
        let n = (end - pos).min(CHUNK as u64) as usize;
        if pos >= asked_end && already_cached(fd, pos, n as u64) {
            pos += n as u64;
            continue;
        }
        let buf = &mut pages.as_mut_bytes()[..n];
        let data = (size.saturating_sub(pos) as usize).min(n);
        blob.read_exact_at(pos, &mut buf[..data])
            .map_err(|e| e.to_string())?;
        buf[data..].fill(0);
        let mut done = 0;
        while done < n {
            match nix::sys::uio::pwrite(fd, &buf[done..], (pos + done as u64) as i64) {
                Ok(0) => return Err(format!("writing at {}: no progress", pos + done as u64)),
                Ok(w) => done += w,
                Err(Errno::EINTR) => continue,
                Err(e) => return Err(format!("writing the cache at {}: {e}", pos + done as u64)),
            }
        }
        written += n as u64;
        pos += n as u64;
    }
    Ok(written)
}
