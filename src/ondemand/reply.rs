//! Pending replies that answer exactly once, and the `FrontEnd` trait they answer through.
//!
//! Answering consumes a reply; dropped unanswered (a panicking job, an early return, a lost
//! pool) it is handed back to the loop thread, which answers it with EIO. `FrontEnd` is the
//! seam between the engine and a kernel interface: how an answer is written.

use super::fds::KernelFd;
use crate::device::DeviceError;
use nix::errno::Errno;
use std::sync::{mpsc, Arc};

/// Called from any thread when something is ready for the loop thread (a mio `Waker`).
pub type Wake = Arc<dyn Fn() + Send + Sync>;

/// A kernel interface the engine serves. The front end decodes the kernel's requests into
/// engine calls (`Engine::open`/`read`/`close`), each with a pending reply holding its
/// ticket; the engine answers through these functions, on the loop thread.
///
/// cachefiles (`super::cachefiles`) answers with `copen` and READ_COMPLETE. A fanotify
/// pre-content front end would answer FAN_PRE_ACCESS events with FAN_ALLOW / FAN_DENY on its
/// group fd: `Read` = the event's fd, `answer_read` writes the response and closes it.
pub trait FrontEnd: Sized + 'static {
    /// What answers are written to, borrowed on the loop thread (cachefiles: the device).
    type Kernel<'k>: ?Sized;
    /// What answering one open needs (cachefiles: msg_id and the new object's anon fd).
    type Open: Ticket;
    /// What answering one read needs (cachefiles: msg_id and the object's anon fd).
    type Read: Ticket;

    /// Answers an open with the blob's size, or refuses it with an errno. `Ok(Some(fd))` when
    /// the kernel took a successful answer: the object lives and is filled through `fd`.
    /// Only an error that ends the front end (a dead cache) is `Err`.
    fn answer_open(
        kernel: &mut Self::Kernel<'_>,
        open: Self::Open,
        result: Result<u64, Errno>,
    ) -> Result<Option<Arc<KernelFd>>, DeviceError>;

    /// Answers a read: `Ok(bytes)` when its range is in the cache file, `Err` when it is not.
    fn answer_read(
        kernel: &mut Self::Kernel<'_>,
        read: Self::Read,
        result: Result<u64, Errno>,
    ) -> Result<(), DeviceError>;

    /// A background prefetch of the object finished filling its plan: the front end's own
    /// completion steps, the same as after a read (fanotify: unmark, record, digest check).
    fn prefetched(_kernel: &mut Self::Kernel<'_>, _object_id: u32) {}
}

/// A request's identity while it is in flight: a re-delivered request with the same key is a
/// duplicate (cachefiles: the msg_id, which `restore` re-sends).
pub trait Ticket: Send + 'static {
    fn key(&self) -> u64;
}

/// A ticket nobody answered, on its way to the loop thread.
pub(super) enum Orphan<F: FrontEnd> {
    Open(F::Open),
    Read(F::Read),
}

/// Where dropped replies go: the loop thread drains the receiving end. Shared by every
/// reply (one reference count per reply, nothing more on the READ path).
pub(super) struct Orphans<F: FrontEnd>(Arc<(mpsc::Sender<Orphan<F>>, Wake)>);

impl<F: FrontEnd> Clone for Orphans<F> {
    fn clone(&self) -> Self {
        Orphans(self.0.clone())
    }
}

impl<F: FrontEnd> Orphans<F> {
    pub(super) fn new(wake: Wake) -> (Orphans<F>, mpsc::Receiver<Orphan<F>>) {
        let (tx, rx) = mpsc::channel();
        (Orphans(Arc::new((tx, wake))), rx)
    }

    fn send(&self, orphan: Orphan<F>) {
        let (tx, wake) = &*self.0;
        // Without a receiver the engine is gone and the device with it: the kernel fails
        // what is pending when the device is closed.
        if tx.send(orphan).is_ok() {
            wake();
        }
    }

    pub(super) fn open(&self, ticket: F::Open) -> OpenReply<F> {
        OpenReply {
            ticket: Some(ticket),
            orphans: self.clone(),
        }
    }

    pub(super) fn read(&self, ticket: F::Read) -> ReadReply<F> {
        ReadReply {
            ticket: Some(ticket),
            orphans: self.clone(),
        }
    }
}

/// An open the kernel waits on. Answer it with `answer`; dropped, it is refused with EIO.
#[must_use = "dropping a reply refuses the request with EIO"]
pub struct OpenReply<F: FrontEnd> {
    /// `Some` until answered or dropped.
    ticket: Option<F::Open>,
    orphans: Orphans<F>,
}

impl<F: FrontEnd> OpenReply<F> {
    pub fn key(&self) -> u64 {
        self.ticket().key()
    }

    fn ticket(&self) -> &F::Open {
        self.ticket
            .as_ref()
            .expect("a reply holds its ticket until answered")
    }

    pub fn answer(
        mut self,
        kernel: &mut F::Kernel<'_>,
        result: Result<u64, Errno>,
    ) -> Result<Option<Arc<KernelFd>>, DeviceError> {
        let ticket = self
            .ticket
            .take()
            .expect("a reply holds its ticket until answered");
        F::answer_open(kernel, ticket, result)
    }
}

impl<F: FrontEnd> Drop for OpenReply<F> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.orphans.send(Orphan::Open(ticket));
        }
    }
}

/// A read the kernel waits on. Answer it with `answer`; dropped, it is failed with EIO.
#[must_use = "dropping a reply fails the request with EIO"]
pub struct ReadReply<F: FrontEnd> {
    /// `Some` until answered or dropped.
    ticket: Option<F::Read>,
    orphans: Orphans<F>,
}

impl<F: FrontEnd> ReadReply<F> {
    pub fn key(&self) -> u64 {
        self.ticket
            .as_ref()
            .expect("a reply holds its ticket until answered")
            .key()
    }

    pub fn answer(
        mut self,
        kernel: &mut F::Kernel<'_>,
        result: Result<u64, Errno>,
    ) -> Result<(), DeviceError> {
        let ticket = self
            .ticket
            .take()
            .expect("a reply holds its ticket until answered");
        F::answer_read(kernel, ticket, result)
    }
}

impl<F: FrontEnd> Drop for ReadReply<F> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            self.orphans.send(Orphan::Read(ticket));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A front end whose answers are lines in a list.
    struct Recorder;

    struct T(u64);

    impl Ticket for T {
        fn key(&self) -> u64 {
            self.0
        }
    }

    impl FrontEnd for Recorder {
        type Kernel<'k> = Vec<String>;
        type Open = T;
        type Read = T;

        fn answer_open(
            kernel: &mut Vec<String>,
            open: T,
            result: Result<u64, Errno>,
        ) -> Result<Option<Arc<KernelFd>>, DeviceError> {
            kernel.push(format!("open {} {result:?}", open.0));
            Ok(None)
        }

        fn answer_read(
            kernel: &mut Vec<String>,
            read: T,
            result: Result<u64, Errno>,
        ) -> Result<(), DeviceError> {
            kernel.push(format!("read {} {result:?}", read.0));
            Ok(())
        }
    }

    #[test]
    fn answered_once_and_dropped_replies_come_back_as_orphans() {
        let woken = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = woken.clone();
        let (orphans, rx) = Orphans::<Recorder>::new(Arc::new(move || {
            w.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }));
        let mut kernel = Vec::new();
        orphans.open(T(1)).answer(&mut kernel, Ok(4096)).unwrap();
        orphans.read(T(2)).answer(&mut kernel, Ok(7)).unwrap();
        assert_eq!(kernel, vec!["open 1 Ok(4096)", "read 2 Ok(7)"]);
        assert!(rx.try_recv().is_err(), "an answered reply is not an orphan");
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Dropped by a panicking thread while unwinding.
        let open = orphans.open(T(3));
        let read = orphans.read(T(4));
        let result = std::thread::spawn(move || {
            let _owned = (open, read);
            panic!("test: a job that panics with two replies");
        })
        .join();
        assert!(result.is_err());
        let keys: Vec<(bool, u64)> = rx
            .try_iter()
            .map(|o| match o {
                Orphan::Open(t) => (true, t.0),
                Orphan::Read(t) => (false, t.0),
            })
            .collect();
        assert_eq!(keys, vec![(true, 3), (false, 4)]);
        assert_eq!(woken.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
