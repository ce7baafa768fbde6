//! The front-end-neutral engine: objects served, requests in flight, open and fill jobs.
//!
//! Front ends (see `reply::FrontEnd`) turn kernel requests into `open`/`read`/`close` calls;
//! every answer goes back through the request's pending reply, on the loop thread, in
//! `drain_done`.

use super::fds::{FdTable, KernelFd};
use super::fill::serve_read;
use super::pool::{panic_message, Job, Pool};
use super::prefetch::{self, Gate, Plan, PrefetchStats, Step};
use super::readahead::Readahead;
use super::reply::{FrontEnd, OpenReply, Orphan, Orphans, ReadReply, Ticket, Wake};
use super::sourcemap::{Location, SourceMap};
use super::sources::{self, Blob, FetchError};
use super::stats::{SourceStats, Stats};
use crate::device::DeviceError;
use nix::errno::Errno;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

const PAGE: u64 = 4096;

/// Opens the blob a resolved location names; `sources::open` unless a test or another kind
/// of source says otherwise. Runs on a worker thread.
pub type Opener = Arc<dyn Fn(Location, &str) -> Result<Box<dyn Blob>, FetchError> + Send + Sync>;

pub struct Object {
    /// Where the object's data is written (cachefiles: the anon fd of its OPEN).
    pub fd: Arc<KernelFd>,
    pub blob: Arc<dyn Blob>,
    pub volume: String,
    pub fsid: String,
    pub source: usize,
    /// How far beyond each READ to fetch: grows while this object is read sequentially.
    readahead: Readahead,
    /// Its readahead windows being fetched: `(start, end, id)`.
    ahead: Vec<(u64, u64, u64)>,
    /// The background fill under way, if the source asks for one and it is not done.
    prefetch: Option<Prefetching>,
}

/// An object's prefetch: what is left of its plan, one chunk in flight at a time.
struct Prefetching {
    plan: Arc<Plan>,
    /// Set at CLOSE: the chunk in flight returns before fetching, if it can.
    stop: Arc<AtomicBool>,
    /// Tells this prefetch's results from an earlier one of a reused object id.
    serial: u64,
}

/// Where a fill reads and writes: copied from the object when the job is queued, because the
/// object may be closed, and its id reused, before the job runs or lands.
struct Target {
    fd: Arc<KernelFd>,
    blob: Arc<dyn Blob>,
    source: usize,
}

impl Object {
    fn target(&self) -> Target {
        Target {
            fd: self.fd.clone(),
            blob: self.blob.clone(),
            source: self.source,
        }
    }

    /// Whether a background prefetch of this object is under way.
    pub fn prefetching(&self) -> bool {
        self.prefetch.is_some()
    }
}

/// An open as the front end decoded it: the names a source is chosen by.
pub struct OpenRequest<'a> {
    pub object_id: u32,
    /// For logs and the report (cachefiles: the volume key, `erofs,<domain>`).
    pub volume: &'a [u8],
    pub domain: &'a [u8],
    pub fsid: &'a [u8],
}

/// The local and the remote background lane.
type Lanes<F> = (Pool<Done<F>>, Pool<Done<F>>);

/// A finished job, on its way to the loop thread with the reply it answers.
enum Done<F: FrontEnd> {
    Opened {
        reply: OpenReply<F>,
        object_id: u32,
        volume: String,
        fsid: String,
        result: Result<(usize, Arc<dyn Blob>), (Errno, String)>,
    },
    Read {
        reply: ReadReply<F>,
        source: usize,
        result: Result<u64, String>,
        started: Instant,
    },
    Prefetched {
        object_id: u32,
        serial: u64,
        step: Step,
    },
    /// A readahead window, fetched apart from the READ that asked for it.
    Ahead {
        object_id: u32,
        id: u64,
        source: usize,
        result: Result<u64, String>,
    },
}

/// A READ whose whole range lies in a readahead window being fetched: it is answered when
/// that window is in, instead of fetching its range a second time.
struct Parked<F: FrontEnd> {
    reply: ReadReply<F>,
    off: u64,
    len: u64,
    started: Instant,
    target: Target,
}

pub struct Engine<F: FrontEnd> {
    map: Arc<SourceMap>,
    opener: Opener,
    objects: HashMap<u32, Object>,
    /// Keys (`Ticket::key`) of the requests whose reply is pending.
    in_flight: HashSet<u64>,
    local: Pool<Done<F>>,
    remote: Pool<Done<F>>,
    /// Background lanes for prefetch, local and remote apart as the pools are; started only
    /// when a source asks for prefetch.
    lanes: Option<Lanes<F>>,
    gate: Arc<Gate>,
    prefetch_serial: u64,
    pub prefetch: PrefetchStats,
    done: mpsc::Receiver<Done<F>>,
    orphans: Orphans<F>,
    unanswered: mpsc::Receiver<Orphan<F>>,
    fds: FdTable,
    /// READs waiting for a readahead window, by the window's id.
    parked: HashMap<u64, Vec<Parked<F>>>,
    next_ahead: u64,
    pub stats: Stats,
    /// Keyed by the source's position in the map (1-based).
    pub per_source: BTreeMap<usize, SourceStats>,
}

impl<F: FrontEnd> Engine<F> {
    /// `wake` is called from worker threads when a result is ready (a mio Waker).
    pub fn new(map: SourceMap, wake: Wake) -> Engine<F> {
        let settings = map.fetch.clone();
        let opener: Opener =
            Arc::new(move |location, fsid| sources::open(location, fsid, &settings));
        Engine::with_opener(map, wake, opener)
    }

    pub fn with_opener(map: SourceMap, wake: Wake, opener: Opener) -> Engine<F> {
        let (done_tx, done) = mpsc::channel();
        let workers = map.fetch.workers;
        let (orphans, unanswered) = Orphans::new(wake.clone());
        Engine {
            local: Pool::start("fetch-local", workers, done_tx.clone(), wake.clone()),
            remote: Pool::start("fetch-remote", workers, done_tx.clone(), wake.clone()),
            lanes: (map.sources.iter().any(|s| s.prefetch.is_some())).then(|| {
                (
                    Pool::background("prefetch-local", done_tx.clone(), wake.clone()),
                    Pool::background("prefetch-remote", done_tx.clone(), wake.clone()),
                )
            }),
            gate: Arc::new(Gate::new(map.fetch.prefetch_rate)),
            prefetch_serial: 0,
            prefetch: PrefetchStats::default(),
            map: Arc::new(map),
            opener,
            objects: HashMap::new(),
            in_flight: HashSet::new(),
            done,
            orphans,
            unanswered,
            fds: FdTable::default(),
            parked: HashMap::new(),
            next_ahead: 0,
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

    /// The fds the engine owns; front ends adopt kernel fds through it.
    pub fn fds(&self) -> &FdTable {
        &self.fds
    }

    /// A pending reply for an open; from here on the request is answered exactly once.
    pub fn open_reply(&self, ticket: F::Open) -> OpenReply<F> {
        self.orphans.open(ticket)
    }

    /// A pending reply for a read; from here on the request is answered exactly once.
    pub fn read_reply(&self, ticket: F::Read) -> ReadReply<F> {
        self.orphans.read(ticket)
    }

    /// Whether a reply with this key is pending.
    pub fn is_in_flight(&self, key: u64) -> bool {
        self.in_flight.contains(&key)
    }

    /// Whether a request with this key is still being answered (re-delivered after
    /// `restore`); counted. The original's reply answers it.
    pub fn is_duplicate(&mut self, key: u64) -> bool {
        let dup = self.in_flight.contains(&key);
        if dup {
            self.stats.duplicates += 1;
        }
        dup
    }

    /// Starts opening the blob for `request`; the reply is answered in `drain_done`, or here
    /// at once when no source matches.
    pub fn open(
        &mut self,
        kernel: &mut F::Kernel<'_>,
        request: OpenRequest<'_>,
        reply: OpenReply<F>,
    ) -> Result<(), DeviceError> {
        let volume = String::from_utf8_lossy(request.volume).into_owned();
        let fsid = String::from_utf8_lossy(request.fsid).into_owned();
        let Some((source, location)) = self.map.resolve(request.domain, request.fsid) else {
            log::warn!("OPEN {volume:?} {fsid:?}: no source matches; refusing with ENOENT");
            self.stats.opens_failed += 1;
            return reply.answer(kernel, Err(Errno::ENOENT)).map(drop);
        };
        self.in_flight.insert(reply.key());
        let index = source.index;
        let remote = !matches!(location, Location::Path(_));
        let opener = self.opener.clone();
        let object_id = request.object_id;
        let job: Job<Done<F>> = Box::new(move || {
            let result = opener(location, &fsid)
                .map(|b| (index, Arc::<dyn Blob>::from(b)))
                .map_err(|e| (e.errno(), e.to_string()));
            Done::Opened {
                reply,
                object_id,
                volume,
                fsid,
                result,
            }
        });
        self.submit(remote, job);
        Ok(())
    }

    /// Starts filling `[off, off+len)` of an object's cache file, and the object's adaptive
    /// readahead beyond it as a job of its own. For an object not open the reply is dropped,
    /// which fails the read.
    pub fn read(&mut self, object_id: u32, off: u64, len: u64, reply: ReadReply<F>) {
        let Some(object) = self.objects.get_mut(&object_id) else {
            log::warn!("read for object {object_id}, which is not open; failing it");
            return;
        };
        self.in_flight.insert(reply.key());
        self.gate.read_started();
        let end = off.saturating_add(len);
        let window = (object.ahead.iter())
            .find(|&&(start, stop, _)| start <= off && end <= stop)
            .map(|&(_, _, id)| id);
        let ahead = object.readahead.on_read(off, len);
        let target = object.target();
        match window {
            Some(id) => {
                self.parked.entry(id).or_default().push(Parked {
                    reply,
                    off,
                    len,
                    started: Instant::now(),
                    target,
                });
            }
            None => self.fill(target, off, len, reply),
        }
        if let Some((start, stop)) = ahead {
            self.fetch_window(object_id, start, stop);
        }
    }

    /// Queues the fill of a READ's own range; its reply is answered when it is written.
    fn fill(&self, target: Target, off: u64, len: u64, reply: ReadReply<F>) {
        let Target { fd, blob, source } = target;
        let remote = blob.is_remote();
        let job: Job<Done<F>> = Box::new(move || {
            let started = Instant::now();
            let result = serve_read(&*blob, &*fd, off, len, 0);
            Done::Read {
                reply,
                source,
                result,
                started,
            }
        });
        self.submit(remote, job);
    }

    /// Queues the fetch of readahead window `[start, stop)` of an object, unless it lies past
    /// the blob's end.
    fn fetch_window(&mut self, object_id: u32, start: u64, stop: u64) {
        let Some(object) = self.objects.get(&object_id) else {
            return;
        };
        let size = object.blob.size();
        if start >= stop.min(size) {
            return;
        }
        // Up to the end of the last page: the kernel asks for that page whole and the fill
        // writes it whole (zero-padded), so a READ of it is inside the window.
        let stop = stop.min(size.div_ceil(PAGE) * PAGE);
        self.next_ahead += 1;
        let id = self.next_ahead;
        let Target { fd, blob, source } = object.target();
        let remote = blob.is_remote();
        let job: Job<Done<F>> = Box::new(move || {
            // Caught here, not by the pool: READs may be parked on this window, and a job
            // that panicked would send nothing to answer them by.
            let result = catch_unwind(AssertUnwindSafe(|| {
                serve_read(&*blob, &*fd, start, 0, stop - start)
            }))
            .unwrap_or_else(|panic| {
                Err(format!(
                    "fetching ahead panicked: {}",
                    panic_message(&*panic)
                ))
            });
            Done::Ahead {
                object_id,
                id,
                source,
                result,
            }
        });
        if self.submit(remote, job) {
            if let Some(object) = self.objects.get_mut(&object_id) {
                object.ahead.push((start, stop, id));
            }
        }
    }

    /// Forgets an object. In-flight reads keep their own reference to its fd: it stays open
    /// until they are answered, so the kernel cannot recycle the object id under them.
    pub fn close(&mut self, object_id: u32) {
        match self.objects.remove(&object_id) {
            None => log::debug!("close for unknown object {object_id}"),
            Some(object) => {
                if let Some(p) = object.prefetch {
                    p.stop.store(true, Ordering::SeqCst);
                    self.prefetch.stopped += 1;
                    log::debug!("object {object_id} closed: its prefetch stops");
                }
            }
        }
    }

    /// Objects whose background prefetch is under way.
    pub fn prefetches_active(&self) -> usize {
        self.objects.values().filter(|o| o.prefetching()).count()
    }

    /// Starts the background fill of a just-opened object when its source asks for one.
    fn start_prefetch(&mut self, object_id: u32) {
        let Some(object) = self.objects.get_mut(&object_id) else {
            return;
        };
        let Some(spec) = (self.map.sources.iter())
            .find(|s| s.index == object.source)
            .and_then(|s| s.prefetch.as_ref())
        else {
            return;
        };
        let plan = Plan::new(spec, object.blob.size());
        if plan.total() == 0 {
            return;
        }
        self.prefetch_serial += 1;
        self.prefetch.started += 1;
        log::info!(
            "object {object_id} ({}): prefetching {} bytes in the background",
            object.fsid,
            plan.total()
        );
        object.prefetch = Some(Prefetching {
            plan: Arc::new(plan),
            stop: Arc::new(AtomicBool::new(false)),
            serial: self.prefetch_serial,
        });
        self.next_prefetch_chunk(object_id, 0);
    }

    /// Queues the object's next chunk from `cursor` on its background lane.
    fn next_prefetch_chunk(&mut self, object_id: u32, cursor: u64) {
        let Some(object) = self.objects.get(&object_id) else {
            return;
        };
        let Some(p) = &object.prefetch else {
            return;
        };
        let (fd, blob, plan, stop) = (
            object.fd.clone(),
            object.blob.clone(),
            p.plan.clone(),
            p.stop.clone(),
        );
        let (serial, gate) = (p.serial, self.gate.clone());
        let Some((local, remote)) = &self.lanes else {
            return;
        };
        let lane = if blob.is_remote() { remote } else { local };
        let job: Job<Done<F>> = Box::new(move || {
            // Caught here, not by the pool: a panic must still end this prefetch's state.
            let step = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                prefetch::step(&*blob, &fd, &plan, cursor, &stop, &gate)
            }))
            .unwrap_or_else(|panic| {
                Step::Failed(format!(
                    "panicked ({})",
                    super::pool::panic_message(&*panic)
                ))
            });
            Done::Prefetched {
                object_id,
                serial,
                step,
            }
        });
        if let Err(e) = lane.submit(job) {
            log::error!("{e}; prefetch of object {object_id} stops");
            self.prefetch.failed += 1;
            if let Some(o) = self.objects.get_mut(&object_id) {
                o.prefetch = None;
            }
        }
    }

    /// A chunk's outcome: the next chunk, or the end (complete, failed; a closed object's is
    /// dropped, counted at its CLOSE).
    fn prefetched(&mut self, kernel: &mut F::Kernel<'_>, object_id: u32, serial: u64, step: Step) {
        if let Step::Chunk { bytes, .. } = step {
            self.prefetch.bytes += bytes;
        }
        let Some(object) = self.objects.get_mut(&object_id) else {
            return;
        };
        if object.prefetch.as_ref().is_none_or(|p| p.serial != serial) {
            return;
        }
        match step {
            Step::Chunk { cursor, .. } => self.next_prefetch_chunk(object_id, cursor),
            Step::Finished => {
                object.prefetch = None;
                self.prefetch.completed += 1;
                log::info!("object {object_id} ({}): prefetch complete", object.fsid);
                F::prefetched(kernel, object_id);
            }
            Step::Stopped => object.prefetch = None,
            Step::Failed(why) => {
                // Once, and no retry: foreground READs still fetch what they need.
                object.prefetch = None;
                self.prefetch.failed += 1;
                log::warn!(
                    "object {object_id} ({}): prefetch failed: {why}; not retried",
                    object.fsid
                );
            }
        }
    }

    /// Remote fetches have their own pool so that a slow server never delays local blobs.
    /// Queues `job`; false when it was dropped (and with it any reply it held, which answers
    /// with EIO).
    fn submit(&self, remote: bool, job: Job<Done<F>>) -> bool {
        let pool = if remote { &self.remote } else { &self.local };
        match pool.submit(job) {
            Ok(()) => true,
            Err(e) => {
                log::error!("{e}; failing the request");
                false
            }
        }
    }

    /// Answers everything the workers have finished, and every reply dropped unanswered.
    pub fn drain_done(&mut self, kernel: &mut F::Kernel<'_>) -> Result<(), DeviceError> {
        while let Ok(done) = self.done.try_recv() {
            match done {
                Done::Opened {
                    reply,
                    object_id,
                    volume,
                    fsid,
                    result,
                } => self.opened(kernel, reply, object_id, volume, fsid, result)?,
                Done::Read {
                    reply,
                    source,
                    result,
                    started,
                } => self.read_done(kernel, reply, source, result, started)?,
                Done::Prefetched {
                    object_id,
                    serial,
                    step,
                } => self.prefetched(kernel, object_id, serial, step),
                Done::Ahead {
                    object_id,
                    id,
                    source,
                    result,
                } => self.ahead_done(kernel, object_id, id, source, result)?,
            }
        }
        while let Ok(orphan) = self.unanswered.try_recv() {
            match orphan {
                Orphan::Open(ticket) => {
                    self.in_flight.remove(&ticket.key());
                    self.stats.opens_failed += 1;
                    log::warn!("an open was left unanswered; refusing it with EIO");
                    F::answer_open(kernel, ticket, Err(Errno::EIO))?;
                }
                Orphan::Read(ticket) => {
                    if self.in_flight.remove(&ticket.key()) {
                        self.gate.read_finished();
                    }
                    self.stats.reads_failed += 1;
                    log::warn!("a read was left unanswered; failing it");
                    F::answer_read(kernel, ticket, Err(Errno::EIO))?;
                }
            }
        }
        Ok(())
    }

    fn opened(
        &mut self,
        kernel: &mut F::Kernel<'_>,
        reply: OpenReply<F>,
        object_id: u32,
        volume: String,
        fsid: String,
        result: Result<(usize, Arc<dyn Blob>), (Errno, String)>,
    ) -> Result<(), DeviceError> {
        self.in_flight.remove(&reply.key());
        match result {
            Ok((source, blob)) => {
                let size = blob.size();
                let Some(fd) = reply.answer(kernel, Ok(size))? else {
                    self.stats.opens_failed += 1;
                    return Ok(());
                };
                log::info!(
                    "OPEN {volume} {fsid}: {size} bytes from {}",
                    blob.describe()
                );
                let object = Object {
                    fd,
                    blob,
                    volume,
                    fsid,
                    source,
                    readahead: Readahead::new(self.map.fetch.readahead),
                    ahead: Vec::new(),
                    prefetch: None,
                };
                self.objects.insert(object_id, object);
                self.start_prefetch(object_id);
            }
            Err((errno, why)) => {
                self.stats.opens_failed += 1;
                log::warn!("OPEN {volume} {fsid}: {why}; refusing with {errno}");
                reply.answer(kernel, Err(errno))?;
            }
        }
        Ok(())
    }

    fn read_done(
        &mut self,
        kernel: &mut F::Kernel<'_>,
        reply: ReadReply<F>,
        source: usize,
        result: Result<u64, String>,
        started: Instant,
    ) -> Result<(), DeviceError> {
        let key = reply.key();
        if self.in_flight.remove(&key) {
            self.gate.read_finished();
        }
        let per = self.per_source.entry(source).or_default();
        per.reads += 1;
        per.latency.record(started.elapsed());
        match &result {
            Ok(bytes) => {
                per.bytes += bytes;
                self.stats.bytes_written += bytes;
                log::trace!("read {key}: {bytes} bytes in {:?}", started.elapsed());
            }
            Err(why) => {
                per.errors += 1;
                self.stats.reads_failed += 1;
                log::warn!("read {key} failed: {why}; completing without data");
            }
        }
        reply.answer(kernel, result.map_err(|_| Errno::EIO))
    }

    /// A readahead window is in (or failed): the READs parked on it are answered, or, when
    /// it failed, each fetches its own range (the failure may have been in the window's part
    /// beyond it, or may pass).
    fn ahead_done(
        &mut self,
        kernel: &mut F::Kernel<'_>,
        object_id: u32,
        id: u64,
        source: usize,
        result: Result<u64, String>,
    ) -> Result<(), DeviceError> {
        if let Some(o) = self.objects.get_mut(&object_id) {
            o.ahead.retain(|&(_, _, a)| a != id);
        }
        let per = self.per_source.entry(source).or_default();
        match &result {
            Ok(bytes) => {
                per.bytes += bytes;
                self.stats.bytes_written += bytes;
                // Only windows that fetched something: one whose pages were all cached cost
                // nothing.
                if *bytes > 0 {
                    self.stats.reads_ahead += 1;
                }
            }
            Err(why) => {
                per.errors += 1;
                log::warn!("readahead for object {object_id} failed: {why}");
            }
        }
        for parked in self.parked.remove(&id).unwrap_or_default() {
            match &result {
                Ok(_) => {
                    // Counted here, not when parked: a READ whose window failed is served
                    // by its own fetch.
                    self.stats.reads_joined += 1;
                    self.read_done(kernel, parked.reply, source, Ok(0), parked.started)?
                }
                Err(_) => self.fill(parked.target, parked.off, parked.len, parked.reply),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The engine with the cachefiles front end on the fake device, driven by hand (no
    //! daemon loop), with sources that panic on purpose.

    use super::*;
    use crate::fake::{FakeDevice, FakeKernel, FakeState};
    use crate::ondemand::sourcemap::FetchSettings;
    use crate::ondemand::OnDemand;
    use crate::proto::msg::{encode_close, encode_open, encode_read};
    use std::os::unix::fs::FileExt;
    use std::time::Duration;

    /// Says it has 8 KiB; any read panics, as a buggy source or HTTP client would.
    struct PanickingBlob;

    impl Blob for PanickingBlob {
        fn size(&self) -> u64 {
            8192
        }
        fn read_exact_at(&self, _off: u64, _buf: &mut [u8]) -> Result<(), FetchError> {
            panic!("test: a blob whose read panics");
        }
        fn describe(&self) -> String {
            "panicking blob".into()
        }
        fn is_remote(&self) -> bool {
            false
        }
    }

    struct Harness {
        dir: tempfile::TempDir,
        kernel: FakeKernel,
        device: FakeDevice,
        engine: OnDemand,
    }

    /// fsid `boom-open` panics while opening, `boom-read` opens a `PanickingBlob`, anything
    /// else is a file in the temp dir (`good` holds 8 KiB of 5s).
    fn harness(workers: usize) -> Harness {
        harness_with(workers, 0)
    }

    /// `harness`, with `[fetch] readahead` at `readahead` and a 1 MiB blob `big` of 6s.
    fn harness_with(workers: usize, readahead: u64) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("good"), vec![5u8; 8192]).unwrap();
        std::fs::write(dir.path().join("big"), vec![6u8; 1 << 20]).unwrap();
        let mut map = SourceMap::parse(
            "t.toml",
            &format!("[[source]]\npath = \"{}/{{fsid}}\"\n", dir.path().display()),
        )
        .unwrap();
        map.fetch.workers = workers;
        map.fetch.readahead = readahead;
        let opener: Opener = Arc::new(move |location, fsid| match fsid {
            "boom-open" => panic!("test: an open that panics"),
            "boom-read" => Ok(Box::new(PanickingBlob)),
            _ => sources::open(location, fsid, &FetchSettings::default()),
        });
        let (kernel, device) = FakeKernel::new();
        kernel.with(|s| s.commands.push("bind ondemand".into()));
        let engine = OnDemand::with_opener(map, Arc::new(|| {}), opener);
        Harness {
            dir,
            kernel,
            device,
            engine,
        }
    }

    impl Harness {
        /// An anon fd stand-in for an OPEN, and a handle to read back what lands in it.
        fn anon(&self, name: &str) -> (u32, std::fs::File) {
            let path = self.dir.path().join(name);
            let w = std::fs::File::create(&path).unwrap();
            (self.kernel.anon_fd(w), std::fs::File::open(&path).unwrap())
        }

        fn push(&self, message: Vec<u8>) {
            self.kernel.with(|k| k.messages.push_back(message));
        }

        /// Runs the loop thread's two steps until `done` holds (10 s at most).
        fn pump_until(&mut self, what: &str, done: impl Fn(&FakeState) -> bool) {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                self.engine.drain_device(&mut self.device).unwrap();
                self.engine.drain_done(&mut self.device).unwrap();
                if done(&self.kernel.state.lock().unwrap()) {
                    return;
                }
                assert!(Instant::now() < deadline, "timed out waiting for {what}");
                std::thread::sleep(Duration::from_millis(2));
            }
        }

        fn copens(&self) -> Vec<String> {
            let st = self.kernel.state.lock().unwrap();
            let mut c: Vec<String> = st
                .commands
                .iter()
                .filter(|c| c.starts_with("copen"))
                .cloned()
                .collect();
            c.sort();
            c
        }
    }

    fn copens_sent(n: usize) -> impl Fn(&FakeState) -> bool {
        move |s| s.commands.iter().filter(|c| c.starts_with("copen")).count() >= n
    }

    #[test]
    fn a_panicking_open_is_refused_and_its_worker_serves_the_next() {
        // One worker: the next OPEN is only served if it survived.
        let mut h = harness(1);
        let (fd1, _) = h.anon("a1");
        let (fd2, _) = h.anon("a2");
        h.push(encode_open(1, 1, b"erofs,x", b"boom-open", fd1));
        h.push(encode_open(2, 2, b"erofs,x", b"good", fd2));
        h.pump_until("two copens", copens_sent(2));
        assert_eq!(h.copens(), vec!["copen 1,-5", "copen 2,8192"]);
        assert_eq!(h.engine.in_flight(), 0);
        assert_eq!(h.engine.stats.opens_failed, 1);
        assert_eq!(h.engine.objects().len(), 1);
    }

    #[test]
    fn a_panicking_read_fails_that_read_only() {
        let mut h = harness(1);
        let (fd1, _) = h.anon("a1");
        let (fd2, back2) = h.anon("a2");
        h.push(encode_open(1, 1, b"erofs,x", b"boom-read", fd1));
        h.push(encode_open(2, 2, b"erofs,x", b"good", fd2));
        h.pump_until("two copens", copens_sent(2));
        assert_eq!(h.copens(), vec!["copen 1,8192", "copen 2,8192"]);
        h.push(encode_read(3, 1, 0, 4096));
        h.push(encode_read(4, 2, 0, 8192));
        h.pump_until("both completions", |s| s.completed.len() >= 2);
        let mut completed = h.kernel.state.lock().unwrap().completed.clone();
        completed.sort();
        assert_eq!(completed, vec![3, 4], "one completion per READ");
        assert_eq!(h.engine.stats.reads_failed, 1);
        assert_eq!(h.engine.in_flight(), 0);
        let mut got = vec![0u8; 8192];
        back2.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(got, vec![5u8; 8192], "the READ after the panic was served");
    }

    #[test]
    fn a_panic_in_the_loop_thread_fails_that_message_only() {
        let mut h = harness(2);
        let (fd1, _) = h.anon("a1");
        let (fd2, _) = h.anon("a2");
        h.kernel.with(|k| k.panic_in_next_fd_check = true);
        h.push(encode_open(1, 1, b"erofs,x", b"good", fd1));
        h.push(encode_open(2, 2, b"erofs,x", b"good", fd2));
        h.pump_until("two copens", copens_sent(2));
        assert_eq!(h.copens(), vec!["copen 1,-5", "copen 2,8192"]);
        // Whose fd it was is unknown after the panic: left alone rather than closed.
        assert!(nix::fcntl::fcntl(fd1 as i32, nix::fcntl::FcntlArg::F_GETFD).is_ok());
        assert_eq!(h.engine.objects().len(), 1);
        // SAFETY: fd1 came from `anon` and the engine refused it, so nothing else owns it.
        drop(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd1 as i32) });
    }

    impl Harness {
        /// Object 1 opened on the blob `fsid` and its copen sent; the handle reads back
        /// what lands in its cache file.
        fn open_object(&mut self, fsid: &[u8]) -> std::fs::File {
            let (fd1, back) = self.anon("a1");
            self.push(encode_open(1, 1, b"erofs,x", fsid, fd1));
            self.pump_until("a copen", copens_sent(1));
            back
        }

        /// Runs the loop until no readahead window is being fetched.
        fn pump_until_windows_landed(&mut self) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.engine.objects.values().any(|o| !o.ahead.is_empty()) {
                self.engine.drain_done(&mut self.device).unwrap();
                assert!(Instant::now() < deadline, "timed out waiting for readahead");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    #[test]
    fn a_window_whose_pages_were_all_cached_is_not_counted() {
        let mut h = harness_with(1, 64 << 10);
        let back = h.open_object(b"big");
        // 8..64 KiB cached by a READ that continues no stream, then a stream from 0 whose
        // first window lies inside it.
        h.push(encode_read(10, 1, 8 << 10, 56 << 10));
        h.push(encode_read(11, 1, 0, 4096));
        h.pump_until("two completions", |s| s.completed.len() == 2);
        h.push(encode_read(12, 1, 4096, 4096));
        h.pump_until("the third completion", |s| s.completed.len() == 3);
        h.pump_until_windows_landed();
        assert_eq!(h.engine.next_ahead, 1, "READ 12 started a window");
        assert_eq!(
            back.metadata().unwrap().len(),
            64 << 10,
            "nothing past 64 KiB"
        );
        assert_eq!(
            h.engine.stats.bytes_written,
            (56 + 4 + 4) << 10,
            "the window wrote nothing"
        );
        assert_eq!(h.engine.stats.reads_ahead, 0);
        // A window that does fetch is counted.
        h.push(encode_read(13, 1, 64 << 10, 4096));
        h.pump_until("the fourth completion", |s| s.completed.len() == 4);
        h.pump_until_windows_landed();
        assert!(back.metadata().unwrap().len() > (68 << 10));
        assert_eq!(h.engine.stats.reads_ahead, 1);
    }

    #[test]
    fn readahead_grows_per_object_while_reads_are_sequential() {
        let mut h = harness_with(1, 64 << 10);
        let back = h.open_object(b"big");
        // Each READ where the previous one's data ends, as the kernel asks; what lands
        // in the cache file is the READ plus the readahead the engine chose.
        let mut off = 0;
        let mut landed = Vec::new();
        for id in 0..6u32 {
            h.push(encode_read(10 + id, 1, off, 4096));
            h.pump_until("the completion", |s| s.completed.len() > id as usize);
            h.pump_until_windows_landed();
            let end = back.metadata().unwrap().len();
            landed.push(end - off);
            off = end;
        }
        // 4 KiB as asked, then 8, 16, 32 and 64 KiB (the maximum) of readahead.
        let k = 4096;
        assert_eq!(landed, vec![k, 3 * k, 5 * k, 9 * k, 17 * k, 17 * k]);
        assert_eq!(h.engine.stats.reads_ahead, 5);
        // A jump elsewhere in the blob: served as asked.
        h.push(encode_read(20, 1, 512 << 10, 4096));
        h.pump_until("the completion", |s| s.completed.len() > 6);
        assert_eq!(back.metadata().unwrap().len(), (512 << 10) + 4096);
    }

    /// `size` bytes of 7s whose reads from `GATED` on wait for `open`; the first such read fails
    /// when `fail_once` is set. Counts the reads that cover `GATED`.
    struct GatedBlob {
        size: u64,
        open: std::sync::Mutex<bool>,
        opened: std::sync::Condvar,
        fail_once: AtomicBool,
        reads_of_gated: std::sync::atomic::AtomicU32,
    }

    const GATED: u64 = 8192;

    impl GatedBlob {
        fn new(fail_once: bool, size: u64) -> Arc<GatedBlob> {
            Arc::new(GatedBlob {
                size,
                open: std::sync::Mutex::new(false),
                opened: std::sync::Condvar::new(),
                fail_once: AtomicBool::new(fail_once),
                reads_of_gated: Default::default(),
            })
        }
        fn open_gate(&self) {
            *self.open.lock().unwrap() = true;
            self.opened.notify_all();
        }
    }

    /// The harness's `Blob` for one shared `GatedBlob`.
    struct Shared(Arc<GatedBlob>);

    impl Blob for Shared {
        fn size(&self) -> u64 {
            self.0.size
        }
        fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
            let b = &self.0;
            if off + buf.len() as u64 > GATED {
                let mut open = b.open.lock().unwrap();
                while !*open {
                    open = b.opened.wait(open).unwrap();
                }
            }
            if off <= GATED && GATED < off + buf.len() as u64 {
                b.reads_of_gated.fetch_add(1, Ordering::SeqCst);
                if b.fail_once.swap(false, Ordering::SeqCst) {
                    return Err(FetchError::Io("test: the window's fetch fails".into()));
                }
            }
            buf.fill(7);
            Ok(())
        }
        fn describe(&self) -> String {
            "gated blob".into()
        }
        fn is_remote(&self) -> bool {
            false
        }
    }

    /// An engine over one `GatedBlob` (fsid `gated`), readahead up to 64 KiB, 3 workers (two
    /// windows may wait at the gate);
    /// READs at 0 and 4 KiB make a stream whose first window, [8K, 16K), waits at the gate.
    fn gated(fail_once: bool) -> (Harness, Arc<GatedBlob>, std::fs::File) {
        gated_sized(fail_once, 1 << 20)
    }

    /// `gated`, with a blob of `size` bytes.
    fn gated_sized(fail_once: bool, size: u64) -> (Harness, Arc<GatedBlob>, std::fs::File) {
        let blob = GatedBlob::new(fail_once, size);
        let mut h = harness_with(3, 64 << 10);
        let shared = blob.clone();
        h.engine.opener = Arc::new(move |_, _| Ok(Box::new(Shared(shared.clone()))));
        let back = h.open_object(b"gated");
        h.push(encode_read(10, 1, 0, 4096));
        h.pump_until("the first completion", |s| s.completed.len() == 1);
        h.push(encode_read(11, 1, 4096, 4096));
        h.pump_until("the second completion", |s| s.completed.len() == 2);
        assert_eq!(
            h.engine.objects[&1].ahead.len(),
            1,
            "the window is in flight"
        );
        (h, blob, back)
    }

    #[test]
    fn a_read_inside_a_window_in_flight_waits_for_it_and_is_not_fetched_twice() {
        let (mut h, blob, back) = gated(false);
        h.push(encode_read(12, 1, GATED, 4096));
        for _ in 0..20 {
            h.engine.drain_device(&mut h.device).unwrap();
            h.engine.drain_done(&mut h.device).unwrap();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(h.kernel.state.lock().unwrap().completed, vec![10, 11]);
        assert_eq!(h.engine.parked.values().map(Vec::len).sum::<usize>(), 1);
        blob.open_gate();
        h.pump_until("the waiting READ's completion", |s| s.completed.len() == 3);
        h.pump_until_windows_landed();
        assert_eq!(h.kernel.state.lock().unwrap().completed, vec![10, 11, 12]);
        assert_eq!(
            blob.reads_of_gated.load(Ordering::SeqCst),
            1,
            "fetched once"
        );
        let mut got = vec![0u8; 4096];
        back.read_exact_at(&mut got, GATED).unwrap();
        assert_eq!(got, vec![7u8; 4096]);
        assert_eq!((h.engine.stats.reads_failed, h.engine.in_flight()), (0, 0));
        assert_eq!(h.engine.stats.reads_joined, 1);
        // The waiting READ also started the window after the one it waited for.
        assert_eq!(h.engine.stats.reads_ahead, 2);
        assert!(h.engine.parked.is_empty());
    }

    #[test]
    fn a_read_of_the_last_page_waits_for_the_window_that_ends_inside_it() {
        // The window [8K, 16K) holds the blob's end: its last page is written whole.
        let size = GATED + 4096 + 100;
        let (mut h, blob, back) = gated_sized(false, size);
        h.push(encode_read(12, 1, GATED + 4096, 4096));
        h.pump_until("the READ parked", |_| true);
        assert_eq!(h.engine.parked.values().map(Vec::len).sum::<usize>(), 1);
        blob.open_gate();
        h.pump_until("the waiting READ's completion", |s| s.completed.len() == 3);
        h.pump_until_windows_landed();
        assert_eq!(h.engine.stats.reads_joined, 1);
        assert_eq!((h.engine.stats.reads_failed, h.engine.in_flight()), (0, 0));
        let mut got = vec![0u8; 100];
        back.read_exact_at(&mut got, GATED + 4096).unwrap();
        assert_eq!(got, vec![7u8; 100]);
        assert!(back.metadata().unwrap().len() >= size);
    }

    #[test]
    fn when_a_window_fails_the_reads_waiting_for_it_fetch_their_own_range() {
        let (mut h, blob, back) = gated(true);
        h.push(encode_read(12, 1, GATED, 4096));
        h.pump_until("the READ parked", |_| true);
        blob.open_gate();
        h.pump_until("the waiting READ's completion", |s| s.completed.len() == 3);
        h.pump_until_windows_landed();
        assert_eq!(h.engine.stats.reads_joined, 0, "not answered by the window");
        assert_eq!(h.engine.stats.reads_failed, 0, "served by its own fetch");
        assert_eq!(blob.reads_of_gated.load(Ordering::SeqCst), 2);
        let mut got = vec![0u8; 4096];
        back.read_exact_at(&mut got, GATED).unwrap();
        assert_eq!(got, vec![7u8; 4096]);
        assert_eq!(h.engine.in_flight(), 0);
    }

    /// `gated`, then a READ parked on the window at the gate, then its object closed and its
    /// id reused for the 6s of `big`; returns the handles to both objects' files.
    fn parked_then_id_reused(
        fail_once: bool,
    ) -> (Harness, Arc<GatedBlob>, std::fs::File, std::fs::File) {
        let (mut h, blob, back) = gated(fail_once);
        h.push(encode_read(12, 1, GATED, 4096));
        h.pump_until("the READ parked", |_| true);
        assert_eq!(h.engine.parked.values().map(Vec::len).sum::<usize>(), 1);
        h.push(encode_close(13, 1));
        h.engine.opener =
            Arc::new(|location, fsid| sources::open(location, fsid, &FetchSettings::default()));
        let (fd2, back2) = h.anon("a2");
        h.push(encode_open(14, 1, b"erofs,x", b"big", fd2));
        h.pump_until("the second copen", copens_sent(2));
        (h, blob, back, back2)
    }

    #[test]
    fn a_read_waiting_on_a_failed_window_is_filled_into_its_own_object_after_a_close() {
        // The object is closed and its id reused by another blob before the window fails.
        let (mut h, blob, back, back2) = parked_then_id_reused(true);
        blob.open_gate();
        h.pump_until("the waiting READ's completion", |s| s.completed.len() == 3);
        let mut got = vec![0u8; 4096];
        back.read_exact_at(&mut got, GATED).unwrap();
        assert_eq!(got, vec![7u8; 4096], "the READ's own object got its range");
        let len2 = back2.metadata().unwrap().len();
        assert!(
            len2 <= GATED,
            "nothing of the old object landed in the new one ({len2})"
        );
    }

    #[test]
    fn a_read_waiting_on_a_window_is_answered_from_its_own_object_after_its_id_is_reused() {
        let (mut h, blob, back, back2) = parked_then_id_reused(false);
        // The new object's READ of the same range is its own, not parked on the old window.
        h.push(encode_read(15, 1, GATED, 4096));
        h.pump_until("the new object's READ", |s| s.completed.contains(&15));
        assert_eq!(h.kernel.state.lock().unwrap().completed, vec![10, 11, 15]);
        blob.open_gate();
        h.pump_until("the waiting READ's completion", |s| s.completed.len() == 4);
        let mut got = vec![0u8; 4096];
        back.read_exact_at(&mut got, GATED).unwrap();
        assert_eq!(
            got,
            vec![7u8; 4096],
            "the old object's window landed in its file"
        );
        back2.read_exact_at(&mut got, GATED).unwrap();
        assert_eq!(
            got,
            vec![6u8; 4096],
            "the new object holds its own blob's bytes"
        );
        assert_eq!(h.engine.stats.reads_joined, 1);
        assert_eq!(h.engine.stats.reads_failed, 0);
    }

    #[test]
    fn without_a_worker_requests_are_refused_not_a_panic() {
        let mut h = harness(0);
        h.open_object(b"good");
        assert_eq!(h.copens(), vec!["copen 1,-5"]);
        assert_eq!(h.engine.in_flight(), 0);
        assert!(
            h.engine.fds().is_empty(),
            "the refused OPEN's fd was closed"
        );
    }
}
