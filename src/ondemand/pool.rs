//! Fetch worker pools whose workers survive panicking jobs.
//!
//! Jobs run on named threads; results go back to the loop thread through a channel plus a
//! wake-up. A panicking job is caught and logged; the worker lives on, and the replies the
//! job owned answer with an error as they are dropped.

use super::reply::Wake;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc, Mutex};

pub(super) type Job<T> = Box<dyn FnOnce() -> T + Send>;

pub(super) struct Pool<T> {
    name: String,
    jobs: mpsc::Sender<Job<T>>,
}

impl<T: Send + 'static> Pool<T> {
    pub(super) fn start(name: &str, workers: usize, done: mpsc::Sender<T>, wake: Wake) -> Pool<T> {
        let (jobs, rx) = mpsc::channel::<Job<T>>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            let done = done.clone();
            let wake = wake.clone();
            let thread = format!("{name}-{i}");
            std::thread::Builder::new()
                .name(thread.clone())
                .spawn(move || worker(&thread, &rx, &done, &*wake))
                .expect("spawning a fetch worker");
        }
        Pool {
            name: name.into(),
            jobs,
        }
    }

    /// The background lane: one worker of its own, so that a background job (a prefetch
    /// chunk, which may sleep for its bandwidth share) never holds a worker a foreground
    /// request is queued for.
    pub(super) fn background(name: &str, done: mpsc::Sender<T>, wake: Wake) -> Pool<T> {
        Pool::start(name, 1, done, wake)
    }

    /// Queues `job`. When the pool has no worker left the job is dropped here, on the caller's
    /// thread, and with it the replies it owns: they answer with an error.
    pub(super) fn submit(&self, job: Job<T>) -> Result<(), PoolGone> {
        self.jobs.send(job).map_err(|_| PoolGone(self.name.clone()))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the {0} pool has no worker left")]
pub(super) struct PoolGone(String);

fn worker<T>(
    name: &str,
    rx: &Mutex<mpsc::Receiver<Job<T>>>,
    done: &mpsc::Sender<T>,
    wake: &(dyn Fn() + Send + Sync),
) {
    loop {
        // No job runs while the lock is held, so a panic never poisons it; if it somehow
        // is, the receiver inside is still sound.
        let job = match rx.lock().unwrap_or_else(|e| e.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        match catch_unwind(AssertUnwindSafe(job)) {
            Ok(result) => {
                if done.send(result).is_err() {
                    return;
                }
                wake();
            }
            Err(panic) => log::error!(
                "{name}: a fetch job panicked ({}); its request is answered with an error",
                panic_message(&*panic)
            ),
        }
    }
}

/// The text a panic was raised with, for the log.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "no message"
    }
}
