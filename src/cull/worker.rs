//! The cull worker thread: scans and graveyard reaps, off the loop thread.
//!
//! They need only dirfds, not the process's cwd; each result wakes the loop.

use super::scan;
use crate::cachedir::graveyard;
use nix::dir::Dir;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};

pub enum Job {
    /// Scan keeping this many candidates.
    Scan(usize),
    /// The same, on one thread and paced (`scan::Pace`): a background refresh while the cache
    /// is healthy, whose cost is bounded (half of one CPU at most, and
    /// `Culler::refresh_interval` between refreshes). Full speed once the flag is set.
    Refresh(usize, Arc<AtomicBool>),
    Reap,
}

pub enum JobDone {
    Scan(scan::ScanReport),
    Reap(graveyard::ReapReport),
}

pub struct Worker {
    jobs: mpsc::Sender<Job>,
    done: mpsc::Receiver<JobDone>,
}

impl Worker {
    /// Starts the thread over the `cache/` and `graveyard/` dirfds; `wake` is called after
    /// each finished job.
    pub fn start(
        cache: Dir,
        grave: Dir,
        wake: impl Fn() + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (jobs, job_rx) = mpsc::channel::<Job>();
        let (done_tx, done) = mpsc::channel();
        std::thread::Builder::new()
            .name("cachefilesd-worker".into())
            .spawn(move || {
                for job in job_rx {
                    // A panicking job (logged by the panic hook) is reported as one that found
                    // nothing, so that the driver's scan or reap ends, and the thread lives on.
                    let result = match job {
                        Job::Scan(capacity) => JobDone::Scan(
                            guarded(|| scan::scan(&cache, capacity)).unwrap_or_default(),
                        ),
                        Job::Refresh(capacity, hurry) => JobDone::Scan(
                            guarded(|| scan::scan_paced(&cache, capacity, scan::Pace::new(hurry)))
                                .unwrap_or_default(),
                        ),
                        Job::Reap => {
                            JobDone::Reap(guarded(|| graveyard::reap(&grave)).unwrap_or_default())
                        }
                    };
                    if done_tx.send(result).is_err() {
                        break;
                    }
                    wake();
                }
            })?;
        Ok(Worker { jobs, done })
    }

    /// Queues a job; false if the thread is gone.
    pub fn send(&self, job: Job) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// A finished job, if any.
    pub fn try_done(&self) -> Option<JobDone> {
        self.done.try_recv().ok()
    }
}

/// Runs one job, `None` if it panicked.
fn guarded<T>(job: impl FnOnce() -> T) -> Option<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        #[cfg(test)]
        if tests::PANIC_IN_NEXT_JOB.swap(false, std::sync::atomic::Ordering::SeqCst) {
            panic!("test: a cull worker job that panics");
        }
        job()
    }))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cachedir::tree::dir_flags;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};

    /// Makes the worker's next job panic, as a bug in the scan or the reap would.
    pub(super) static PANIC_IN_NEXT_JOB: AtomicBool = AtomicBool::new(false);

    fn done_within(worker: &Worker, limit: Duration) -> Option<JobDone> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(d) = worker.try_done() {
                return Some(d);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A job that panics is answered with an empty report (so the driver's "scanning" and
    /// "reaping" end) and the thread takes the next job. Before, the thread died with it: no
    /// scan or reap ever again, the daemon up but culling nothing.
    #[test]
    fn a_panicking_job_is_reported_and_the_worker_goes_on() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(t.path().join("cache/Ierofs,x/@00")).unwrap();
        std::fs::write(t.path().join("cache/Ierofs,x/@00/Dblob"), b"x").unwrap();
        std::fs::create_dir(t.path().join("graveyard")).unwrap();
        let open = |d: &str| {
            Dir::open(
                &t.path().join(d),
                dir_flags(),
                nix::sys::stat::Mode::empty(),
            )
            .unwrap()
        };
        let worker = Worker::start(open("cache"), open("graveyard"), || {}).unwrap();
        PANIC_IN_NEXT_JOB.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(worker.send(Job::Scan(16)));
        match done_within(&worker, Duration::from_secs(5)) {
            Some(JobDone::Scan(r)) => assert!(r.candidates.is_empty()),
            _ => panic!("no report for the job that panicked"),
        }
        assert!(worker.send(Job::Scan(16)), "the worker thread is gone");
        match done_within(&worker, Duration::from_secs(5)) {
            Some(JobDone::Scan(r)) => assert_eq!(r.objects, 1),
            _ => panic!("the next scan was not done"),
        }
    }
}
