//! The cull driver: what the loop calls to scan, reap and cull in batches; it never blocks.
//!
//! It follows the cull signal, starts scans and graveyard reaps on the worker, and culls the
//! table in batches through the device, pausing when the kernel fails a cull on a live cache.

use super::signal::{CullSignal, Space};
use super::worker::{Job, JobDone, Worker};
use super::{CullOutcome, CullStats, Culler, Deficit};
use crate::device::{Device, DeviceError};
use crate::proto::{Status, StatusError};
use nix::dir::Dir;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Culls per loop turn before events are looked at again.
const CULL_BATCH: usize = 64;
/// After a cull fails with an I/O error on a live cache, wait this long before the next.
const CULL_PAUSE: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CullError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("unparseable status line from the kernel: {0}")]
    Status(#[from] StatusError),
}

pub struct CullDriver {
    /// `None` with culling disabled (`nocull`, `-N`): the graveyard is still reaped.
    culler: Option<Culler>,
    signal: CullSignal,
    /// Where `cull` names are resolved (the loop thread fchdirs into its directories).
    cache_root: Dir,
    /// For statfs: free space as the kernel sees it.
    cache_fs: std::fs::File,
    worker: Worker,
    /// Classic mode: the device's reads are status lines, read on every refresh (the kernel
    /// signals a changed status once, by readability, until it is read).
    reads_status: bool,
    reaping: bool,
    reap_again: bool,
    /// Graveyard entries removed so far.
    pub reaped: u64,
    paused_until: Option<Instant>,
    /// Set while culling: a paced background scan then runs at full speed.
    hurry: Arc<AtomicBool>,
    /// The culling episode under way: what it cost is logged when it ends.
    episode: Option<Episode>,
}

impl CullDriver {
    pub fn new(
        culler: Option<Culler>,
        signal: CullSignal,
        cache_root: Dir,
        cache_fs: std::fs::File,
        worker: Worker,
    ) -> CullDriver {
        CullDriver {
            culler,
            reads_status: matches!(signal, CullSignal::StatusLine(_)),
            signal,
            cache_root,
            cache_fs,
            worker,
            reaping: false,
            reap_again: false,
            reaped: 0,
            paused_until: None,
            hurry: Arc::new(AtomicBool::new(false)),
            episode: None,
        }
    }

    pub fn culler(&self) -> Option<&Culler> {
        self.culler.as_ref()
    }

    pub fn culling(&self) -> bool {
        self.signal.culling()
    }

    pub fn space(&self) -> Option<Space> {
        Space::of(&self.cache_fs)
    }

    /// Classic mode on a cache the kernel bound with other limits than `limits` (a restart
    /// after the config's limits were edited: the kernel turns percentages into block and
    /// file counts only at bind). Culling is then decided from statfs with `limits`, as on
    /// demand, so the edited limits are in force without withdrawing the cache; the status
    /// lines are still read, and still wake the daemon.
    pub fn follow_limits(&mut self, limits: [u8; 6]) {
        self.signal = CullSignal::Statfs {
            limits,
            culling: false,
        };
    }

    /// Re-reads the cull signal: the status line in classic mode, then statfs where the
    /// daemon decides (on demand, or classic limits the kernel did not bind with).
    pub fn refresh(&mut self, device: &mut dyn Device) -> Result<(), CullError> {
        if self.reads_status {
            self.read_status(device)?;
        }
        if let CullSignal::Statfs { .. } = self.signal {
            if let Some(space) = self.space() {
                if self.signal.on_space(&space) {
                    log::info!(
                        "{}",
                        if self.culling() {
                            "cache space low: culling"
                        } else {
                            "culling no longer needed"
                        }
                    );
                }
            }
        }
        Ok(())
    }

    fn read_status(&mut self, device: &mut dyn Device) -> Result<(), CullError> {
        let mut buf = [0u8; 512];
        let n = device.read(&mut buf)?;
        if n == 0 {
            // Not bound (yet): nothing to learn.
            return Ok(());
        }
        let status = Status::parse(&buf[..n])?;
        if let Some(c) = self.culler.as_mut() {
            c.note_status(&status);
        }
        if self.signal.on_status(status) {
            log::info!(
                "{}",
                if status.cull {
                    "kernel requests culling"
                } else {
                    "culling no longer needed"
                }
            );
        }
        Ok(())
    }

    /// The device polled writable: on demand, the kernel asks for culling.
    pub fn kernel_hint(&mut self) {
        if self.signal.on_kernel_hint(self.space().as_ref()) {
            log::info!("kernel requests culling");
        }
    }

    fn deficit(&self) -> Deficit {
        self.space()
            .map_or_else(Deficit::default, |s| self.signal.deficit(&s))
    }

    /// Whether culls are ready to go now (the loop then polls without waiting).
    pub fn has_work(&self) -> bool {
        self.culling()
            && self.culler.as_ref().is_some_and(|c| c.ready_len() > 0)
            && self.paused_until.is_none_or(|t| Instant::now() >= t)
    }

    /// Hands a scan to the worker if the culler wants one; its table covers the deficit, or
    /// while the cache is healthy, the most the kernel can ask to free (`warm_deficit`).
    /// `culling`: what remains to free while culling is wanted.
    fn start_scan_if_wanted(&mut self, now: Instant, culling: Option<Deficit>) {
        if !self
            .culler
            .as_ref()
            .is_some_and(|c| c.wants_scan(culling, now))
        {
            return;
        }
        let deficit = culling.unwrap_or_else(|| {
            self.space()
                .map_or_else(Deficit::default, |s| self.signal.warm_deficit(&s))
        });
        let Some(culler) = self.culler.as_mut() else {
            return;
        };
        let capacity = culler.scan_capacity(deficit);
        if capacity > culler.capacity() {
            // While the cache is healthy nothing is to be freed yet: the table is sized for the
            // most the kernel could ask.
            let why = if culling.is_some() {
                "to free"
            } else {
                "the most culling can have to free"
            };
            log::info!(
                "scanning for {capacity} candidates (culltable: {}): about {} MiB and {} files, {why}",
                culler.capacity(),
                deficit.bytes >> 20,
                deficit.files
            );
        }
        let job = if culling.is_some() || culler.stats.scans == 0 {
            Job::Scan(capacity)
        } else {
            self.hurry.store(false, Ordering::Relaxed);
            Job::Refresh(capacity, self.hurry.clone())
        };
        if self.worker.send(job) {
            culler.scan_started(capacity);
        }
    }

    pub fn request_reap(&mut self) {
        if self.reaping {
            self.reap_again = true;
        } else if self.worker.send(Job::Reap) {
            self.reaping = true;
        }
    }

    /// Takes the worker's finished scans and reaps.
    pub fn on_completions(&mut self) {
        while let Some(done) = self.worker.try_done() {
            match done {
                JobDone::Scan(report) => {
                    super::log_scan(&report);
                    if let Some(c) = self.culler.as_mut() {
                        c.scan_finished(report, Instant::now());
                    }
                }
                JobDone::Reap(report) => {
                    self.reaping = false;
                    self.reaped += report.removed;
                    super::log_reap(&report);
                    if std::mem::take(&mut self.reap_again) {
                        self.request_reap();
                    }
                }
            }
        }
    }

    /// Logs what a culling episode (from the kernel's request to the run limits) culled and
    /// where the loop thread's time went, so that a slow one can be told apart from a slow
    /// kernel without a profiler.
    fn follow_episode(&mut self, culling: bool, now: Instant) {
        let Some(culler) = self.culler.as_ref() else {
            return;
        };
        if let Some((Episode { before, .. }, length)) =
            Episode::follow(&mut self.episode, &culler.stats, culling, now)
        {
            let after = &culler.stats;
            log::info!(
                    "culling episode: {} culled ({} bytes), {} skipped, in {:.3}s; loop thread: entering directories {:.3}s, re-checks {:.3}s, kernel culls {:.3}s",
                    after.culled - before.culled,
                    after.bytes_freed - before.bytes_freed,
                    (after.in_use + after.vanished + after.changed + after.refused)
                        - (before.in_use + before.vanished + before.changed + before.refused),
                    length.as_secs_f64(),
                    (after.time_entering - before.time_entering).as_secs_f64(),
                    (after.time_rechecking - before.time_rechecking).as_secs_f64(),
                    (after.time_kernel - before.time_kernel).as_secs_f64(),
                );
        }
    }

    /// Culls up to `CULL_BATCH` candidates while culling is wanted, and starts scans as needed.
    pub fn cull_batch(&mut self, device: &mut dyn Device) -> Result<(), CullError> {
        let done = self.batch(device);
        Episode::batch_ended(&mut self.episode, Instant::now());
        done
    }

    fn batch(&mut self, device: &mut dyn Device) -> Result<(), CullError> {
        if self.culler.is_none() {
            return Ok(());
        }
        let now = Instant::now();
        let culling = self.culling().then(|| self.deficit());
        self.follow_episode(culling.is_some(), now);
        if culling.is_some() {
            self.hurry.store(true, Ordering::Relaxed);
        }
        self.start_scan_if_wanted(now, culling);
        let Some(mut owed) = culling else {
            return Ok(());
        };
        if self.paused_until.is_some_and(|t| now < t) {
            return Ok(());
        }
        // The cull signal is read again once the culls made up the deficit, not after each
        // one: a status read costs a statfs in the kernel, and the candidates' sizes are exact.
        for _ in 0..CULL_BATCH {
            let culler = self.culler.as_mut().expect("checked above");
            let outcome = match culler.cull_one(&self.cache_root, device) {
                Ok(Some((c, outcome))) => {
                    if log::log_enabled!(log::Level::Debug) {
                        log::debug!("cull {}: {outcome:?}", c.path().escape_debug());
                    }
                    outcome
                }
                Ok(None) => break,
                Err(e) if e.cache_is_dead() => {
                    // The kernel answers EIO both for a dead cache and for an internal error
                    // on one object (e.g. a failed unlink); only the probe tells them apart.
                    crate::device::check_alive(device)?;
                    log::warn!("{e}; the cache is alive, culling paused for {CULL_PAUSE:?}");
                    self.paused_until = Some(Instant::now() + CULL_PAUSE);
                    break;
                }
                Err(e) => return Err(e.into()),
            };
            if let CullOutcome::Culled { bytes } = outcome {
                owed.bytes = owed.bytes.saturating_sub(bytes);
                owed.files = owed.files.saturating_sub(1);
                if owed.bytes == 0 && owed.files == 0 {
                    self.refresh(device)?;
                    if !self.culling() {
                        break;
                    }
                    owed = self.deficit();
                }
            }
        }
        let culler = self.culler.as_mut().expect("checked above");
        culler.leave_cache_dir();
        let dry = culler.ready_len() == 0;
        if self.culling() && dry {
            let deficit = self.deficit();
            self.start_scan_if_wanted(Instant::now(), Some(deficit));
        }
        Ok(())
    }
}

/// A culling episode followed for its log line.
#[derive(Debug)]
struct Episode {
    /// When a batch first saw the kernel want culling.
    since: Instant,
    /// The culler's counts then.
    before: CullStats,
    /// When its last batch ended: the loop may sleep up to a tick after it before a batch
    /// sees that culling is no longer wanted.
    last_batch_end: Instant,
}

impl Episode {
    /// Starts an episode when culling is wanted and none is under way; ends the one under
    /// way when it is not, returning it and how long it lasted (to its last batch's end).
    fn follow(
        episode: &mut Option<Episode>,
        stats: &CullStats,
        culling: bool,
        now: Instant,
    ) -> Option<(Episode, Duration)> {
        match (episode.as_ref(), culling) {
            (None, true) => {
                *episode = Some(Episode {
                    since: now,
                    before: stats.clone(),
                    last_batch_end: now,
                });
                None
            }
            (Some(_), false) => episode.take().map(|e| {
                let length = e.last_batch_end.duration_since(e.since);
                (e, length)
            }),
            _ => None,
        }
    }

    /// Notes that a batch of the episode under way ended at `now`.
    fn batch_ended(episode: &mut Option<Episode>, now: Instant) {
        if let Some(e) = episode.as_mut() {
            e.last_batch_end = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_lasts_to_its_last_batch_not_to_the_tick_that_sees_it_over() {
        let t0 = Instant::now();
        let mut episode = None;
        let stats = CullStats::default();
        assert!(Episode::follow(&mut episode, &stats, true, t0).is_none());
        Episode::batch_ended(&mut episode, t0 + Duration::from_millis(4));
        assert!(
            Episode::follow(&mut episode, &stats, true, t0 + Duration::from_millis(5)).is_none()
        );
        Episode::batch_ended(&mut episode, t0 + Duration::from_millis(10));
        // The loop slept a tick before its next batch saw culling was over.
        let (_, length) =
            Episode::follow(&mut episode, &stats, false, t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(length, Duration::from_millis(10));
        assert!(episode.is_none());
        assert!(
            Episode::follow(&mut episode, &stats, false, t0 + Duration::from_secs(2)).is_none()
        );
    }
}
