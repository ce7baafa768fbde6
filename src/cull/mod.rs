//! Culling end to end: signal, scan, worker, the table of oldest objects (`Culler`), driver.
//!
//! The cull signal (`signal`), the scan of the cache tree (`scan`, run on the `worker` thread
//! with graveyard reaping), the table of the oldest objects (`Culler`, here) and the `driver`
//! the event loop calls to cull them until there is room again.
//!
//! `cull NAME` is resolved against the process's current directory, so only the event-loop
//! thread may call `cull_one` (it `fchdir`s into the object's directory). Culling from threads
//! with a cwd each (`unshare(CLONE_FS)`) would not be faster: the kernel runs every command,
//! `cull` included, under the cache's `daemon_mutex` (measured slower, BENCHMARKS-vm.md). Scans and graveyard
//! reaping use dirfds only and run on a worker thread (a scan shares its directories among
//! scan threads of its own).

pub mod driver;
pub mod scan;
pub mod signal;
pub mod worker;

use crate::cachedir::{graveyard, tree};
use crate::device::{Device, DeviceError};
use crate::proto::{Command, Status};
use nix::dir::Dir;
use nix::errno::Errno;
use scan::{Candidate, ScanReport};
use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CullOutcome {
    Culled {
        bytes: u64,
    },
    /// The kernel holds the object (EBUSY).
    InUse,
    /// Gone before we got to it (ENOENT/ESTALE, or missing at re-check).
    Vanished,
    /// Used or replaced since the scan: it is no longer among the oldest.
    Changed,
    /// The name cannot be sent or the kernel refused it for another reason; logged, skipped.
    Refused,
}

#[derive(Debug, Default, Clone)]
pub struct CullStats {
    pub scans: u64,
    pub objects_last_scan: u64,
    pub last_scan_duration: Duration,
    pub culled: u64,
    pub bytes_freed: u64,
    pub in_use: u64,
    pub vanished: u64,
    pub changed: u64,
    pub refused: u64,
    pub oddities_last_scan: u64,
    /// Where culling's time goes on the loop thread: opening and entering directories,
    /// re-checking each victim, and the kernel's `cull` itself.
    pub time_entering: Duration,
    pub time_rechecking: Duration,
    pub time_kernel: Duration,
}

/// What culling must still free before the kernel is above both run limits.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deficit {
    pub bytes: u64,
    pub files: u64,
    /// Bytes per object on the cache's filesystem (used space / used inodes): the estimate of
    /// an object's size until a scan has measured one.
    pub fs_average_object: u64,
}

/// The largest table a scan builds: culltable's own maximum.
pub const MAX_TABLE: usize = 1 << 20;

pub struct Culler {
    /// The configured table size (culltable): the least a scan keeps.
    capacity: usize,
    /// The size of the table the last scan built (larger than `capacity` when the deficit
    /// needed more candidates).
    table_capacity: usize,
    /// Allocated bytes per object, measured by the last scan.
    average_object: Option<u64>,
    ready: VecDeque<Candidate>,
    /// What culling all of `ready` would free.
    ready_bytes: u64,
    scanning: bool,
    scanned_once: bool,
    last_scan_overflowed: bool,
    last_scan_end: Option<Instant>,
    last_scan_empty: bool,
    released_files: u64,
    released_blocks: u64,
    resume_files: Option<u64>,
    resume_blocks: Option<u64>,
    /// Directories of the current table opened so far, keyed by their `DirPath`'s address
    /// (the entry keeps the `Arc`, so the address cannot be reused while cached).
    dirs: HashMap<usize, (Arc<scan::DirPath>, Dir)>,
    /// The key of the directory the process is in, to skip repeated fchdirs.
    cwd: Option<usize>,
    /// Objects culled while a scan runs, as (inode, atime): the scan may have listed them
    /// before their cull, and its table must not offer them again (each would cost a
    /// re-check that finds it gone). Emptied by `scan_finished`, the only end of a scan.
    culled_while_scanning: HashSet<(u64, (i64, i64))>,
    /// Objects culled from the current table.
    table_culled: u64,
    /// Tables in a row that ran dry without a single cull (every candidate in use or refused).
    fruitless_tables: u32,
    /// After a fruitless table, no rescan before this: the next table would be the same.
    rescan_not_before: Option<Instant>,
    /// What the last scan cost: its duration without the pauses of a paced scan.
    last_scan_busy: Duration,
    pub stats: CullStats,
}

/// Directory fds kept open between culls (a cache has 256 fanouts per volume).
const MAX_OPEN_DIRS: usize = 1024;

/// A scan that found nothing to cull is not repeated sooner than this without releases.
const IDLE_RESCAN: Duration = Duration::from_secs(5);

/// While the cache is healthy the table is rescanned in the background so that it is current
/// when the kernel asks (culling then starts from it at once): not more often than this...
const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// ...nor than once per this many times the last scan's busy time: an idle daemon spends at most
/// 1/20 of its time scanning (on one thread, paced: see `worker::Job::Refresh`).
const REFRESH_DUTY: u32 = 20;

/// The pause after a table whose every candidate was refused, doubled for each such table in
/// a row up to `MAX_FRUITLESS_PAUSE`: rescanning at once would only find the same objects.
const FRUITLESS_PAUSE: Duration = Duration::from_secs(1);
const MAX_FRUITLESS_PAUSE: Duration = Duration::from_secs(16);

impl Culler {
    pub fn new(
        culltable_log2: u8,
        resume_files: Option<u64>,
        resume_blocks: Option<u64>,
    ) -> Culler {
        Culler {
            capacity: 1usize << culltable_log2,
            table_capacity: 1usize << culltable_log2,
            average_object: None,
            ready: VecDeque::new(),
            ready_bytes: 0,
            scanning: false,
            scanned_once: false,
            last_scan_overflowed: false,
            last_scan_end: None,
            last_scan_empty: false,
            released_files: 0,
            released_blocks: 0,
            resume_files,
            resume_blocks,
            dirs: HashMap::new(),
            cwd: None,
            culled_while_scanning: HashSet::new(),
            table_culled: 0,
            fruitless_tables: 0,
            rescan_not_before: None,
            last_scan_busy: Duration::ZERO,
            stats: CullStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// How many candidates the next scan keeps: the configured table, or enough to cover the
    /// deficit if that is larger (a quarter more, as objects in use or used meanwhile are
    /// skipped), so that one scan serves a large cull instead of one rescan per table.
    /// The LRU order needs the size fixed before the scan: a table that grew midway would
    /// have dropped older objects that it would then want.
    pub fn scan_capacity(&self, deficit: Deficit) -> usize {
        let average = self
            .average_object
            .unwrap_or(deficit.fs_average_object)
            .max(1);
        let needed = deficit.bytes.div_ceil(average).max(deficit.files);
        let wanted = needed.saturating_add(needed / 4);
        usize::try_from(wanted)
            .unwrap_or(MAX_TABLE)
            .clamp(self.capacity, MAX_TABLE)
    }

    /// The size of the table the last scan built.
    pub fn table_capacity(&self) -> usize {
        self.table_capacity
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn is_scanning(&self) -> bool {
        self.scanning
    }

    /// Takes the released counters of a status read (the kernel zeroes them on each read).
    pub fn note_status(&mut self, status: &Status) {
        self.released_files = self.released_files.saturating_add(status.freleased);
        self.released_blocks = self.released_blocks.saturating_add(status.breleased);
    }

    /// Whether culling the whole ready table would make up the deficit.
    fn covers(&self, deficit: Deficit) -> bool {
        self.ready_bytes >= deficit.bytes && self.ready.len() as u64 >= deficit.files
    }

    /// Whether a scan should start now; `culling` is what remains to free while the kernel
    /// asks for culling, `None` when it does not.
    pub fn wants_scan(&self, culling: Option<Deficit>, now: Instant) -> bool {
        if self.scanning {
            return false;
        }
        if !self.scanned_once {
            return true;
        }
        let released_enough = self.resume_files.is_some_and(|n| self.released_files >= n)
            || self
                .resume_blocks
                .is_some_and(|n| self.released_blocks >= n);
        if culling.is_some() && self.ready.is_empty() {
            if self.rescan_not_before.is_some_and(|t| now < t) {
                return false;
            }
            // Everything we knew of is gone or in use; rescan at once unless the last scan
            // found nothing and nothing has been released since (that would spin).
            let idle = self
                .last_scan_end
                .is_none_or(|t| now.duration_since(t) >= IDLE_RESCAN);
            return !self.last_scan_empty || self.released_files > 0 || idle;
        }
        // While culling, refill a table that cannot cover the deficit before it runs dry
        // (culls of objects that the new table lists again are cheap: they are found gone).
        if let Some(deficit) = culling {
            if self.last_scan_overflowed
                && !self.covers(deficit)
                && self.ready.len() <= self.table_capacity / 2
            {
                return true;
            }
        }
        if culling.is_none()
            && self
                .last_scan_end
                .is_some_and(|t| now.duration_since(t) >= self.refresh_interval())
        {
            return true;
        }
        // Background refresh, throttled to a tenth of the time at most.
        let rested = self.last_scan_end.is_none_or(|t| {
            now.duration_since(t)
                >= (self.stats.last_scan_duration * 10).max(Duration::from_secs(1))
        });
        rested
            && (released_enough
                || (self.last_scan_overflowed && self.ready.len() <= self.table_capacity / 2))
    }

    /// How long a healthy cache's table may age before it is rescanned.
    pub fn refresh_interval(&self) -> Duration {
        REFRESH_EVERY.max(self.last_scan_busy.saturating_mul(REFRESH_DUTY))
    }

    pub fn scan_started(&mut self, table_capacity: usize) {
        self.scanning = true;
        self.table_capacity = table_capacity;
        self.released_files = 0;
        self.released_blocks = 0;
    }

    pub fn scan_finished(&mut self, report: ScanReport, now: Instant) {
        self.scanning = false;
        self.scanned_once = true;
        self.last_scan_end = Some(now);
        self.last_scan_overflowed = report.table_overflowed;
        self.last_scan_empty = report.candidates.is_empty();
        self.stats.scans += 1;
        self.stats.objects_last_scan = report.objects;
        self.stats.last_scan_duration = report.duration;
        self.last_scan_busy = report.duration.saturating_sub(report.paused);
        self.stats.oddities_last_scan = report.oddities_seen;
        if let Some(average) = report.allocated.checked_div(report.objects) {
            self.average_object = Some(average);
        }
        let culled = std::mem::take(&mut self.culled_while_scanning);
        self.ready = (report.candidates.into_iter())
            .filter(|c| !culled.contains(&(c.ino, c.atime)))
            .collect();
        self.ready_bytes = self.ready.iter().map(|c| c.allocated).sum();
        self.table_culled = 0;
        // The new table has new directory identities.
        self.dirs.clear();
    }

    /// Culls the oldest candidate. `Ok(None)`: the table is empty.
    pub fn cull_one(
        &mut self,
        root: &Dir,
        device: &mut dyn Device,
    ) -> Result<Option<(Candidate, CullOutcome)>, DeviceError> {
        let Some(candidate) = self.ready.pop_front() else {
            return Ok(None);
        };
        let outcome = match self.cull_candidate(root, device, &candidate) {
            Ok(o) => o,
            Err(e) => {
                // Kept for the next attempt: the error may pass.
                self.ready.push_front(candidate);
                return Err(e);
            }
        };
        self.ready_bytes = self.ready_bytes.saturating_sub(candidate.allocated);
        match outcome {
            CullOutcome::Culled { bytes } => {
                self.note_culled(&candidate);
                self.stats.culled += 1;
                self.stats.bytes_freed += bytes;
                self.table_culled += 1;
                self.fruitless_tables = 0;
                self.rescan_not_before = None;
            }
            CullOutcome::InUse => self.stats.in_use += 1,
            CullOutcome::Vanished => self.stats.vanished += 1,
            CullOutcome::Changed => self.stats.changed += 1,
            CullOutcome::Refused => self.stats.refused += 1,
        }
        if self.ready.is_empty() && self.table_culled == 0 {
            self.table_ran_dry_unculled(Instant::now());
        }
        Ok(Some((candidate, outcome)))
    }

    /// Remembers a cull made while a scan runs, for `scan_finished` to leave out.
    fn note_culled(&mut self, c: &Candidate) {
        if self.scanning {
            self.culled_while_scanning.insert((c.ino, c.atime));
        }
    }

    /// Every candidate of the table was refused, in use, changed or gone: pause rescans, longer
    /// each time in a row (objects held by mounts stay held; a name the kernel cannot take
    /// stays so).
    fn table_ran_dry_unculled(&mut self, now: Instant) {
        self.fruitless_tables = self.fruitless_tables.saturating_add(1);
        let pause = FRUITLESS_PAUSE
            .saturating_mul(1 << (self.fruitless_tables - 1).min(8))
            .min(MAX_FRUITLESS_PAUSE);
        self.rescan_not_before = Some(now + pause);
        let level = if self.fruitless_tables == 1 {
            log::Level::Info
        } else {
            log::Level::Debug
        };
        log::log!(
            level,
            "no candidate could be culled ({} in use, {} refused so far); next scan in {pause:?}",
            self.stats.in_use,
            self.stats.refused
        );
    }

    fn cull_candidate(
        &mut self,
        root: &Dir,
        device: &mut dyn Device,
        c: &Candidate,
    ) -> Result<CullOutcome, DeviceError> {
        let started = Instant::now();
        let key = Arc::as_ptr(&c.dir) as usize;
        if !self.dirs.contains_key(&key) {
            if self.dirs.len() >= MAX_OPEN_DIRS {
                self.dirs.clear();
            }
            let dir = match tree::open_path(root, &c.dir.0) {
                Ok(d) => d,
                Err(Errno::ENOENT) => return Ok(CullOutcome::Vanished),
                Err(_) => return Ok(CullOutcome::Changed),
            };
            self.dirs.insert(key, (c.dir.clone(), dir));
        }
        let (_, dir) = &self.dirs[&key];
        if self.cwd != Some(key) {
            self.cwd = None;
            if nix::unistd::fchdir(dir.as_raw_fd()).is_err() {
                return Ok(CullOutcome::Vanished);
            }
            self.cwd = Some(key);
        }
        let entered = Instant::now();
        self.stats.time_entering += entered - started;
        // Re-check: a used object has a newer atime; a replaced one a new inode.
        let rechecked = tree::stat_at(dir, &c.name);
        let sent = Instant::now();
        self.stats.time_rechecking += sent - entered;
        match rechecked {
            Ok(st) => {
                if tree::file_type(&st) != nix::sys::stat::SFlag::S_IFREG
                    || st.st_ino != c.ino
                    || (st.st_atime, st.st_atime_nsec) != c.atime
                {
                    return Ok(CullOutcome::Changed);
                }
            }
            Err(Errno::ENOENT) => return Ok(CullOutcome::Vanished),
            Err(_) => return Ok(CullOutcome::Changed),
        }
        let answer = device.send(&Command::Cull(c.name.to_vec()));
        self.stats.time_kernel += sent.elapsed();
        match answer {
            Ok(()) => Ok(CullOutcome::Culled { bytes: c.allocated }),
            Err(e) => match e.errno() {
                Some(Errno::EBUSY) => Ok(CullOutcome::InUse),
                Some(Errno::ENOENT | Errno::ESTALE) => Ok(CullOutcome::Vanished),
                _ if e.cache_is_dead() => Err(e),
                _ => {
                    log::warn!("cull {} failed: {e}", c.path());
                    Ok(CullOutcome::Refused)
                }
            },
        }
    }

    /// Leaves the cache tree so that the process's cwd pins nothing in it between batches.
    pub fn leave_cache_dir(&mut self) {
        if self.cwd.take().is_some() {
            let _ = nix::unistd::chdir("/");
        }
    }
}

/// Logs what a scan found odd, and its size at debug level.
fn log_scan(report: &ScanReport) {
    for o in &report.oddities {
        log::warn!("cache/{}: {} left alone", o.path.escape_debug(), o.what);
    }
    if report.oddities_seen > report.oddities.len() as u64 {
        log::warn!(
            "{} more odd entries in the cache tree left alone",
            report.oddities_seen - report.oddities.len() as u64
        );
    }
    log::debug!(
        "scan: {} objects in {} directories, {} candidates, {:?}",
        report.objects,
        report.directories,
        report.candidates.len(),
        report.duration
    );
}

fn log_reap(report: &graveyard::ReapReport) {
    if report.removed > 0 {
        log::debug!("graveyard: removed {} entries", report.removed);
    }
    if let Some((path, errno)) = &report.first_error {
        log::warn!(
            "graveyard: {} entries not removed, first graveyard{}: {errno}",
            report.failed,
            path.escape_debug()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deficit(bytes: u64, files: u64, fs_average_object: u64) -> Deficit {
        Deficit {
            bytes,
            files,
            fs_average_object,
        }
    }

    #[test]
    fn the_table_never_shrinks_below_culltable() {
        let c = Culler::new(12, None, None);
        assert_eq!(c.scan_capacity(Deficit::default()), 4096);
        assert_eq!(c.scan_capacity(deficit(100 * 4096, 10, 4096)), 4096);
    }

    #[test]
    fn a_large_deficit_gets_a_table_that_covers_it_with_a_margin() {
        let c = Culler::new(12, None, None);
        // 16,510 objects of 4 KiB, as in the 100k-object benchmark.
        assert_eq!(c.scan_capacity(deficit(16_510 * 4096, 0, 4096)), 20_637);
        // Files can be the larger need.
        assert_eq!(c.scan_capacity(deficit(4096, 10_000, 4096)), 12_500);
    }

    #[test]
    fn a_measured_average_replaces_the_filesystem_estimate() {
        let mut c = Culler::new(12, None, None);
        c.scan_started(4096);
        c.scan_finished(
            ScanReport {
                objects: 100,
                allocated: 100 * 8192,
                ..ScanReport::default()
            },
            Instant::now(),
        );
        // The filesystem says 4 KiB per object, the scan measured 8 KiB.
        assert_eq!(c.scan_capacity(deficit(16_000 * 8192, 0, 4096)), 20_000);
    }

    fn candidate(rank: i64) -> Candidate {
        Candidate {
            atime: (rank, 0),
            ino: rank as u64,
            allocated: 4096,
            dir: Arc::new(scan::DirPath(vec![])),
            name: format!("D{rank}").into_bytes().into(),
        }
    }

    #[test]
    fn no_refill_while_the_table_covers_the_deficit() {
        let mut c = Culler::new(12, None, None);
        c.scan_started(4096);
        c.scan_finished(
            ScanReport {
                candidates: (0..1000).map(candidate).collect(),
                objects: 50_000,
                allocated: 50_000 * 4096,
                table_overflowed: true,
                ..ScanReport::default()
            },
            Instant::now(),
        );
        let now = Instant::now();
        // 1000 candidates of 4 KiB, under half of the table: a refill only if they fall short.
        assert!(!c.wants_scan(Some(deficit(1000 * 4096, 0, 4096)), now));
        assert!(!c.wants_scan(Some(deficit(4096, 1000, 4096)), now));
        assert!(c.wants_scan(Some(deficit(1001 * 4096, 0, 4096)), now));
        assert!(c.wants_scan(Some(deficit(4096, 1001, 4096)), now));
    }

    #[test]
    fn a_table_of_refused_candidates_delays_the_next_scan_longer_each_time() {
        let mut c = Culler::new(12, None, None);
        let culling = Some(deficit(4096, 1, 4096));
        let t0 = Instant::now();
        for round in 0..6u32 {
            c.scan_started(4096);
            c.scan_finished(
                ScanReport {
                    candidates: (0..3).map(candidate).collect(),
                    ..ScanReport::default()
                },
                t0,
            );
            // Each candidate culled in turn and found in use.
            c.ready.clear();
            c.table_ran_dry_unculled(t0);
            let pause = Duration::from_secs(1 << round.min(4));
            assert!(!c.wants_scan(culling, t0 + pause - Duration::from_millis(1)));
            assert!(c.wants_scan(culling, t0 + pause), "round {round}");
        }
        assert_eq!(c.rescan_not_before, Some(t0 + MAX_FRUITLESS_PAUSE));
    }

    #[test]
    fn a_healthy_cache_is_rescanned_at_a_bounded_pace() {
        let mut c = Culler::new(12, None, None);
        let t0 = Instant::now();
        assert!(c.wants_scan(None, t0), "the first scan");
        for (took, every) in [
            (Duration::from_millis(10), REFRESH_EVERY),
            (Duration::from_secs(9), Duration::from_secs(9 * 20)),
        ] {
            c.scan_started(4096);
            c.scan_finished(
                ScanReport {
                    candidates: (0..10).map(candidate).collect(),
                    // A paced scan: the pauses are not its cost.
                    duration: took * 2,
                    paused: took,
                    ..ScanReport::default()
                },
                t0,
            );
            assert_eq!(c.refresh_interval(), every);
            assert!(!c.wants_scan(None, t0 + every - Duration::from_millis(1)));
            assert!(c.wants_scan(None, t0 + every), "scan of {took:?}");
        }
        // While culling from a table that covers the deficit, no refresh: culls go on.
        assert!(!c.wants_scan(Some(deficit(4096, 1, 4096)), t0 + Duration::from_secs(3600)));
    }

    /// A rescan that ended during a culling episode offered 1,770 objects culled after it had
    /// stat'ed them, each costing a re-check that found it gone (steady-state bench, 100k).
    #[test]
    fn a_scan_table_leaves_out_what_was_culled_while_it_ran() {
        let mut c = Culler::new(12, None, None);
        // A cull before the scan started is not held against it: the scan sees it gone.
        c.note_culled(&candidate(4));
        c.scan_started(4096);
        c.note_culled(&candidate(1));
        c.note_culled(&candidate(3));
        let table = |n| ScanReport {
            candidates: (0..n).map(candidate).collect(),
            ..ScanReport::default()
        };
        c.scan_finished(table(6), Instant::now());
        let ranks: Vec<i64> = c.ready.iter().map(|x| x.atime.0).collect();
        assert_eq!(ranks, [0, 2, 4, 5]);
        assert_eq!(c.ready_bytes, 4 * 4096);
        // The next scan starts afresh.
        c.scan_started(4096);
        c.scan_finished(table(3), Instant::now());
        assert_eq!(c.ready_len(), 3);
    }

    #[test]
    fn the_table_is_capped_at_culltables_maximum() {
        let c = Culler::new(12, None, None);
        assert_eq!(c.scan_capacity(deficit(u64::MAX, u64::MAX, 0)), MAX_TABLE);
    }
}
