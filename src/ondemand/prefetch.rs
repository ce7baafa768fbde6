//! Background prefetch: after an OPEN (or attach) a source's `prefetch` ranges are filled in
//! chunks behind foreground reads, under one bandwidth cap for the whole daemon.
//!
//! The engine (loop thread) keeps, per object, a [`Plan`] and a cursor, and has at most one
//! chunk of it in flight at a time on the pool's background lane (its own thread, so a
//! prefetch never holds a worker a READ needs). A chunk job skips what the file holds already
//! (SEEK_HOLE, as readahead does), waits for its slot under the [`Pacer`], then waits while
//! any foreground READ is in flight, and only then fetches: a READ that arrives while a chunk
//! is being fetched shares the source with at most that one chunk. Ranges are byte ranges of
//! the blob; naming files inside an EROFS image would need the image parsed and is not done.

use super::fds::KernelFd;
use super::fill::{already_cached, serve_read};
use super::sources::Blob;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const PAGE: u64 = 4096;
/// What one background job fetches at most: one fill chunk, so a READ waits behind at most
/// one of them.
pub const CHUNK: u64 = 1 << 20;

/// A source's `prefetch` setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefetchSpec {
    /// `prefetch = "all"`: the whole blob.
    All,
    /// `prefetch = ["0-1048576", "4194304-"]`: these byte ranges, end exclusive, an open end
    /// meaning the blob's end.
    Ranges(Vec<ByteRange>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: Option<u64>,
}

impl ByteRange {
    /// `START-END` or `START-`, decimal bytes, START < END.
    pub fn parse(s: &str) -> Result<ByteRange, String> {
        let bad = || {
            format!("prefetch range {s:?} must be START-END or START- (decimal bytes, START < END)")
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let num = |t: &str| -> Result<u64, String> {
            if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad());
            }
            t.parse().map_err(|_| bad())
        };
        let start = num(a)?;
        let end = if b.is_empty() { None } else { Some(num(b)?) };
        if end.is_some_and(|e| e <= start) {
            return Err(bad());
        }
        Ok(ByteRange { start, end })
    }
}

/// Most ranges one source may list.
pub const MAX_RANGES: usize = 256;

impl PrefetchSpec {
    /// From the TOML value: the string `"all"` or a list of ranges.
    pub fn from_toml(value: &toml::Value) -> Result<PrefetchSpec, String> {
        match value {
            toml::Value::String(s) if s == "all" => Ok(PrefetchSpec::All),
            toml::Value::Array(items) if !items.is_empty() && items.len() <= MAX_RANGES => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => ByteRange::parse(s),
                    _ => Err("prefetch ranges must be strings like \"0-1048576\"".to_string()),
                })
                .collect::<Result<_, _>>()
                .map(PrefetchSpec::Ranges),
            _ => Err(format!(
                "prefetch must be \"all\" or a list of 1 to {MAX_RANGES} ranges like [\"0-1048576\", \"4194304-\"] (files by path are not supported)"
            )),
        }
    }
}

/// The page-aligned, sorted, merged ranges of one blob to prefetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    ranges: Vec<(u64, u64)>,
}

impl Plan {
    /// `spec` over a blob of `size` bytes: ranges clamped to the blob's page-padded end (as
    /// the fill code writes it), widened to whole pages.
    pub fn new(spec: &PrefetchSpec, size: u64) -> Plan {
        let padded = size.div_ceil(PAGE).saturating_mul(PAGE);
        let wanted: Vec<ByteRange> = match spec {
            PrefetchSpec::All => vec![ByteRange {
                start: 0,
                end: None,
            }],
            PrefetchSpec::Ranges(r) => r.clone(),
        };
        let mut ranges: Vec<(u64, u64)> = wanted
            .iter()
            .map(|r| {
                let start = r.start / PAGE * PAGE;
                let end = r
                    .end
                    .map_or(padded, |e| e.div_ceil(PAGE).saturating_mul(PAGE))
                    .min(padded);
                (start, end)
            })
            .filter(|(s, e)| s < e)
            .collect();
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (s, e) in ranges {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        Plan { ranges: merged }
    }

    /// The next chunk at or after `cursor`: at most [`CHUNK`] bytes, inside one range.
    pub fn next_chunk(&self, cursor: u64) -> Option<(u64, u64)> {
        let &(s, e) = self.ranges.iter().find(|(_, e)| *e > cursor)?;
        let start = cursor.max(s);
        Some((start, e.min(start.saturating_add(CHUNK))))
    }

    /// Bytes the plan covers.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|(s, e)| e - s).sum()
    }
}

/// The bandwidth cap: hands out start times so that bytes started over any interval stay
/// within `rate` × the interval plus one chunk. Idle time is not saved up as a burst.
#[derive(Debug)]
pub struct Pacer {
    /// Bytes per second; 0: no cap.
    rate: u64,
    next: Option<Instant>,
}

impl Pacer {
    pub fn new(rate: u64) -> Pacer {
        Pacer { rate, next: None }
    }

    /// When a fetch of `bytes` may start, asked at `now`; reserves its share of the rate.
    pub fn reserve(&mut self, bytes: u64, now: Instant) -> Instant {
        if self.rate == 0 {
            return now;
        }
        let start = self.next.map_or(now, |n| n.max(now));
        self.next = Some(start + Duration::from_secs_f64(bytes as f64 / self.rate as f64));
        start
    }
}

/// What the background jobs share with the engine: the cap, and how many foreground READs
/// are in flight (prefetch waits while there are any).
#[derive(Debug)]
pub struct Gate {
    pacer: Mutex<Pacer>,
    foreground: AtomicUsize,
}

impl Gate {
    pub fn new(rate: u64) -> Gate {
        Gate {
            pacer: Mutex::new(Pacer::new(rate)),
            foreground: AtomicUsize::new(0),
        }
    }

    pub fn read_started(&self) {
        self.foreground.fetch_add(1, Ordering::SeqCst);
    }

    pub fn read_finished(&self) {
        let _ = self
            .foreground
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    fn busy(&self) -> bool {
        self.foreground.load(Ordering::SeqCst) > 0
    }
}

/// What one background job did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Filled up to `cursor`, `bytes` of it fetched (the rest was cached).
    Chunk {
        cursor: u64,
        bytes: u64,
    },
    /// Nothing left: the plan is in the file.
    Finished,
    /// The object was closed.
    Stopped,
    Failed(String),
}

/// How often a job waiting behind foreground READs looks again.
const YIELD: Duration = Duration::from_millis(2);
/// How often a job waiting for its share of the cap looks whether its object was closed.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// One chunk of `plan` from `cursor` into `fd`: skips cached chunks, waits for the cap and
/// for foreground READs, checking `stop` before any fetch. Runs on the background lane.
pub(super) fn step(
    blob: &dyn Blob,
    fd: &KernelFd,
    plan: &Plan,
    mut cursor: u64,
    stop: &AtomicBool,
    gate: &Gate,
) -> Step {
    use std::os::fd::AsFd;
    let fd = fd.as_fd();
    let (off, end) = loop {
        if stop.load(Ordering::SeqCst) {
            return Step::Stopped;
        }
        let Some((off, end)) = plan.next_chunk(cursor) else {
            return Step::Finished;
        };
        if !already_cached(fd, off, end - off) {
            break (off, end);
        }
        cursor = end;
    };
    let at = gate
        .pacer
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .reserve(end - off, Instant::now());
    // In slices: a CLOSE during a long wait (a low cap) frees the lane soon.
    loop {
        let now = Instant::now();
        if at <= now || stop.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep((at - now).min(STOP_CHECK));
    }
    while gate.busy() && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(YIELD);
    }
    if stop.load(Ordering::SeqCst) {
        return Step::Stopped;
    }
    // Nothing "asked", the chunk as readahead: serve_read then skips its cached parts too.
    match serve_read(blob, fd, off, 0, end - off) {
        Ok(bytes) => Step::Chunk { cursor: end, bytes },
        Err(e) => Step::Failed(e),
    }
}

/// Prefetch counters for the report.
#[derive(Debug, Default, Clone)]
pub struct PrefetchStats {
    pub started: u64,
    pub completed: u64,
    /// Stopped by a CLOSE (or detach) before completing.
    pub stopped: u64,
    pub failed: u64,
    /// Bytes fetched by prefetch (not counted again in the READ counters).
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn ranges_parse_and_bad_ones_are_refused() {
        assert_eq!(
            ByteRange::parse("0-1048576").unwrap(),
            ByteRange {
                start: 0,
                end: Some(MIB)
            }
        );
        assert_eq!(
            ByteRange::parse("4194304-").unwrap(),
            ByteRange {
                start: 4 * MIB,
                end: None
            }
        );
        for bad in [
            "",
            "-",
            "-5",
            "5-5",
            "9-3",
            "a-b",
            "1-2-3",
            " 1-2",
            "+1-2",
            "1-99999999999999999999",
        ] {
            assert!(ByteRange::parse(bad).is_err(), "{bad:?}");
        }
        let v: toml::Value = toml::from_str("p = \"all\"").unwrap();
        assert_eq!(PrefetchSpec::from_toml(&v["p"]).unwrap(), PrefetchSpec::All);
        for bad in [
            "p = \"some\"",
            "p = []",
            "p = [1]",
            "p = 3",
            "p = [\"/usr/bin/x\"]",
        ] {
            let v: toml::Value = toml::from_str(bad).unwrap();
            assert!(PrefetchSpec::from_toml(&v["p"]).is_err(), "{bad}");
        }
    }

    #[test]
    fn plans_are_page_aligned_clamped_merged_and_chunked() {
        let spec = PrefetchSpec::Ranges(vec![
            ByteRange::parse("5000000-").unwrap(),
            ByteRange::parse("100-5000").unwrap(),
            ByteRange::parse("4096-9000").unwrap(),
            ByteRange::parse("20000000-30000000").unwrap(),
        ]);
        let size = 6 * MIB + 10;
        let plan = Plan::new(&spec, size);
        let padded = size.div_ceil(PAGE) * PAGE;
        let first_end = 9000u64.div_ceil(PAGE) * PAGE;
        let second = 5_000_000 / PAGE * PAGE;
        assert_eq!(plan.ranges, vec![(0, first_end), (second, padded)]);
        assert_eq!(plan.total(), first_end + padded - second);
        let mut chunks = Vec::new();
        let mut cursor = 0;
        while let Some((s, e)) = plan.next_chunk(cursor) {
            assert!(e - s <= CHUNK && s % PAGE == 0 && e % PAGE == 0);
            chunks.push((s, e));
            cursor = e;
        }
        assert_eq!(chunks.first(), Some(&(0, first_end)));
        assert_eq!(chunks[1], (second, second + CHUNK));
        assert_eq!(chunks.last().unwrap().1, padded);
        assert_eq!(chunks.iter().map(|(s, e)| e - s).sum::<u64>(), plan.total());
        let all = Plan::new(&PrefetchSpec::All, 3 * MIB);
        assert_eq!(all.total(), 3 * MIB);
        assert_eq!(Plan::new(&PrefetchSpec::All, 0).next_chunk(0), None);
    }

    #[test]
    fn a_chunk_waits_while_a_foreground_read_is_in_flight_and_skips_cached_ones() {
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("blob");
        std::fs::write(&src, vec![7u8; 2 << 20]).unwrap();
        let blob = Arc::new(super::super::sources::LocalBlob::open(src).unwrap());
        let cache = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("cache"))
            .unwrap();
        // The first chunk is cached already (9s): skipped, never rewritten.
        std::os::unix::fs::FileExt::write_all_at(&cache, &vec![9u8; 1 << 20], 0).unwrap();
        let fd = Arc::new(super::super::fds::FdTable::default().own(cache.into()));
        let plan = Arc::new(Plan::new(&PrefetchSpec::All, 2 << 20));
        let gate = Arc::new(Gate::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        gate.read_started();
        let (tx, rx) = std::sync::mpsc::channel();
        let job = {
            let (blob, fd, plan, gate, stop) = (
                blob.clone(),
                fd.clone(),
                plan.clone(),
                gate.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || tx.send(step(&*blob, &fd, &plan, 0, &stop, &gate)))
        };
        // Ordering, not timing: while the READ is in flight the chunk is not fetched.
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "fetched while a READ was in flight");
        gate.read_finished();
        let done = rx.recv().unwrap();
        job.join().unwrap().unwrap();
        assert_eq!(
            done,
            Step::Chunk {
                cursor: 2 << 20,
                bytes: 1 << 20
            }
        );
        let mut back = vec![0u8; 2 << 20];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(dir.path().join("cache")).unwrap(),
            &mut back,
            0,
        )
        .unwrap();
        assert!(
            back[..1 << 20].iter().all(|&b| b == 9),
            "cached chunk rewritten"
        );
        assert!(back[1 << 20..].iter().all(|&b| b == 7));
        assert_eq!(
            step(&*blob, &fd, &plan, 2 << 20, &stop, &gate),
            Step::Finished
        );
        stop.store(true, Ordering::SeqCst);
        assert_eq!(step(&*blob, &fd, &plan, 0, &stop, &gate), Step::Stopped);
    }

    #[test]
    fn the_pacer_spaces_reservations_by_the_rate_and_saves_no_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(4 * MIB);
        let starts: Vec<Duration> = (0..4).map(|_| p.reserve(MIB, t0) - t0).collect();
        assert_eq!(
            starts,
            [0, 250, 500, 750].map(Duration::from_millis).to_vec()
        );
        // Long idle: the next one starts when asked, and the one after a quarter second on.
        let later = t0 + Duration::from_secs(10);
        assert_eq!(p.reserve(MIB, later), later);
        assert_eq!(p.reserve(MIB, later) - later, Duration::from_millis(250));
        let mut free = Pacer::new(0);
        assert_eq!(free.reserve(u64::MAX, t0), t0);
    }
}
