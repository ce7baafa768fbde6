//! The cull worker thread: scans and graveyard reaping run off the loop thread (they need only
//! dirfds, not the process's cwd); each result wakes the loop.

use super::scan;
use crate::cachedir::graveyard;
use nix::dir::Dir;
use std::sync::mpsc;

pub enum Job {
    /// Scan keeping this many candidates.
    Scan(usize),
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
                    let result = match job {
                        Job::Scan(capacity) => JobDone::Scan(scan::scan(&cache, capacity)),
                        Job::Reap => JobDone::Reap(graveyard::reap(&grave)),
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
