//! The cachefiles front end: `/dev/cachefiles` OPEN/READ/CLOSE in, `copen`/READ_COMPLETE out.
//!
//! Messages become engine calls with pending replies (`bind ondemand` mode). Each message is
//! handled under `catch_unwind`: a panic fails that request, never the loop.

use super::engine::{Engine, OpenRequest};
use super::fds::KernelFd;
use super::pool::panic_message;
use super::reply::{FrontEnd, Ticket};
use crate::device::{Device, DeviceError};
use crate::proto::msg::{self, DecodeError, MsgHeader, Request, MSG_MAX_SIZE};
use crate::proto::Command;
use nix::errno::Errno;
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use zerocopy::FromBytes;

/// The cachefiles protocol as a front end of the engine.
pub struct Cachefiles;

/// An OPEN waiting for its `copen`.
pub struct OpenTicket {
    msg_id: u32,
    /// The anon fd the kernel installed for this OPEN; `None` when the message named a number
    /// that is not ours to use or close. Closed only after the answer: closing it before a
    /// successful `copen` makes the kernel fail the OPEN with EBADFD.
    fd: Option<KernelFd>,
}

/// A READ waiting for its READ_COMPLETE, which goes through the object's anon fd.
pub struct ReadTicket {
    msg_id: u32,
    fd: Arc<KernelFd>,
}

impl Ticket for OpenTicket {
    fn key(&self) -> u64 {
        self.msg_id.into()
    }
}

impl Ticket for ReadTicket {
    fn key(&self) -> u64 {
        self.msg_id.into()
    }
}

impl FrontEnd for Cachefiles {
    type Kernel<'k> = dyn Device + 'k;
    type Open = OpenTicket;
    type Read = ReadTicket;

    fn answer_open(
        device: &mut (dyn Device + '_),
        open: OpenTicket,
        result: Result<u64, Errno>,
    ) -> Result<Option<Arc<KernelFd>>, DeviceError> {
        let OpenTicket { msg_id, fd } = open;
        let size = match (result, &fd) {
            (Ok(size), Some(_)) => i64::try_from(size).unwrap_or(-(Errno::EFBIG as i64)),
            // Only an OPEN whose fd we own is ever opened; refuse rather than lie.
            (Ok(_), None) => -(Errno::EBADF as i64),
            (Err(errno), _) => -(errno as i64),
        };
        let accepted = send_copen(device, msg_id, size)?;
        Ok(match fd {
            Some(fd) if accepted && size >= 0 => Some(Arc::new(fd)),
            // Answered first, closed now.
            _ => None,
        })
    }

    fn answer_read(
        device: &mut (dyn Device + '_),
        read: ReadTicket,
        _result: Result<u64, Errno>,
    ) -> Result<(), DeviceError> {
        // A failed READ is completed too, without data: the kernel then fails the reader's
        // I/O. It refuses a completion only for a READ it no longer waits for (EINVAL); a
        // dead cache is caught by the daemon's liveness probe.
        if let Err(e) = device.complete_read(read.fd.as_fd(), read.msg_id) {
            log::warn!("{e}");
        }
        Ok(())
    }
}

/// Sends `copen`; `Ok(false)` when the kernel refused it (logged: the OPEN is gone, e.g. its
/// waiter was killed). Only a dead cache is an error.
fn send_copen(device: &mut dyn Device, msg_id: u32, size: i64) -> Result<bool, DeviceError> {
    match device.send(&Command::Copen { msg_id, size }) {
        Ok(()) => Ok(true),
        Err(e) if e.cache_is_dead() => Err(e),
        Err(e) => {
            log::warn!("{e}");
            Ok(false)
        }
    }
}

impl Engine<Cachefiles> {
    /// Reads and dispatches every pending request: the kernel returns 0, not EAGAIN, when
    /// none is left.
    pub fn drain_device(&mut self, device: &mut dyn Device) -> Result<(), DeviceError> {
        /// Failed reads in a row before the rest is left to the next tick.
        const MAX_READ_ERRORS: u32 = 16;
        let mut buf = [0u8; MSG_MAX_SIZE];
        let mut errors = 0;
        loop {
            let n = match device.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => {
                    errors = 0;
                    n
                }
                Err(e) if e.cache_is_dead() => return Err(e),
                Err(e) => {
                    // The kernel fails and drops the request whose read failed (an OPEN whose
                    // fd it could not install: EMFILE) and keeps the others. The device only
                    // signals new requests, so those are read now, not at the next one.
                    log::warn!("{e}");
                    errors += 1;
                    if errors >= MAX_READ_ERRORS {
                        return Ok(());
                    }
                    continue;
                }
            };
            let message = &buf[..n];
            // Set once the message's answer is owned by a reply (which answers even when
            // dropped by the unwinding): after a panic before that, the loop answers here.
            let mut guarded = false;
            let handled = catch_unwind(AssertUnwindSafe(|| {
                self.handle(device, message, &mut guarded)
            }));
            match handled {
                Ok(result) => result?,
                Err(panic) => self.after_panic(device, message, guarded, &*panic)?,
            }
        }
    }

    fn handle(
        &mut self,
        device: &mut dyn Device,
        message: &[u8],
        guarded: &mut bool,
    ) -> Result<(), DeviceError> {
        match msg::decode(message) {
            Ok(Request::Open {
                msg_id,
                object_id,
                volume_key,
                cookie_key,
                fd,
                ..
            }) => {
                let request = OpenRequest {
                    object_id,
                    volume: volume_key,
                    domain: volume_key.strip_prefix(b"erofs,").unwrap_or(b""),
                    fsid: cookie_key,
                };
                self.on_open(device, msg_id, fd, request, guarded)
            }
            Ok(Request::Read {
                msg_id,
                object_id,
                off,
                len,
            }) => {
                self.on_read(msg_id, object_id, off, len, guarded);
                Ok(())
            }
            Ok(Request::Close { object_id, .. }) => {
                self.stats.closes += 1;
                self.close(object_id);
                Ok(())
            }
            Err(e) => self.bad_message(device, e, guarded),
        }
    }

    fn on_open(
        &mut self,
        device: &mut dyn Device,
        msg_id: u32,
        fd: u32,
        request: OpenRequest<'_>,
        guarded: &mut bool,
    ) -> Result<(), DeviceError> {
        self.stats.opens += 1;
        let fd = match self.fds().adopt(fd, |fd| device.is_anon_fd(fd)) {
            Ok(fd) => fd,
            Err(e) if self.is_in_flight(msg_id.into()) => {
                // A damaged re-delivery: the pending reply answers this msg_id.
                self.stats.bad_messages += 1;
                log::warn!("OPEN msg_id {msg_id} again: {e}; ignoring it");
                return Ok(());
            }
            Err(e) => {
                // Not ours to use or close: answer so the kernel's waiter is released.
                self.stats.bad_messages += 1;
                log::warn!("OPEN msg_id {msg_id}: {e}; refusing");
                let reply = self.open_reply(OpenTicket { msg_id, fd: None });
                *guarded = true;
                return reply.answer(device, Err(Errno::EBADF)).map(drop);
            }
        };
        if self.is_duplicate(msg_id.into()) {
            // Re-delivered after `restore` while we are still answering it; this delivery's
            // fd is closed.
            return Ok(());
        }
        let reply = self.open_reply(OpenTicket {
            msg_id,
            fd: Some(fd),
        });
        *guarded = true;
        self.open(device, request, reply)
    }

    fn on_read(&mut self, msg_id: u32, object_id: u32, off: u64, len: u64, guarded: &mut bool) {
        self.stats.reads += 1;
        let Some(object) = self.objects().get(&object_id) else {
            // Without an fd of the object there is no way to complete it; the kernel fails it
            // when the object is dropped.
            self.stats.unknown_objects += 1;
            log::warn!("READ msg_id {msg_id} for unknown object {object_id}");
            return;
        };
        let fd = object.fd.clone();
        if self.is_duplicate(msg_id.into()) {
            return;
        }
        let reply = self.read_reply(ReadTicket { msg_id, fd });
        *guarded = true;
        self.read(object_id, off, len, reply);
    }

    fn bad_message(
        &mut self,
        device: &mut dyn Device,
        e: DecodeError,
        guarded: &mut bool,
    ) -> Result<(), DeviceError> {
        self.stats.bad_messages += 1;
        log::warn!(
            "bad message from the kernel (msg_id {:?}, opcode {:?}): {e}",
            e.msg_id,
            e.opcode
        );
        // The fd of an OPEN is ours to close only when the kernel just installed it for us
        // and nothing here owns that number already.
        let fd = e.open_fd.and_then(
            |fd| match self.fds().adopt(fd, |fd| device.is_anon_fd(fd)) {
                Ok(fd) => Some(fd),
                Err(why) => {
                    log::warn!("not closing it: {why}");
                    None
                }
            },
        );
        match (e.msg_id, e.opcode) {
            // A damaged re-delivery of an OPEN still being answered: its pending reply sends
            // the one copen (a second would answer whatever request next gets this id).
            (Some(msg_id), Some(msg::OP_OPEN)) if self.is_duplicate(msg_id.into()) => Ok(()),
            (Some(msg_id), Some(msg::OP_OPEN)) => {
                let reply = self.open_reply(OpenTicket { msg_id, fd });
                *guarded = true;
                reply.answer(device, Err(Errno::EINVAL)).map(drop)
            }
            // A damaged READ for an open object is completed without data (the reader gets
            // EIO): the kernel would wait for it for ever. One still in flight is answered by
            // its pending reply.
            (Some(msg_id), Some(msg::OP_READ)) => {
                let Some(fd) = e
                    .object_id
                    .and_then(|id| self.objects().get(&id))
                    .map(|o| o.fd.clone())
                else {
                    return Ok(());
                };
                if self.is_duplicate(msg_id.into()) {
                    return Ok(());
                }
                let reply = self.read_reply(ReadTicket { msg_id, fd });
                *guarded = true;
                reply.answer(device, Err(Errno::EINVAL))
            }
            // Nothing to answer a damaged CLOSE with (nor a READ for an object not open), and
            // any fd is closed.
            _ => Ok(()),
        }
    }

    /// A message whose handling panicked. If a reply owned its answer, the reply was dropped
    /// while unwinding and is answered from `drain_done`; otherwise an OPEN is refused here
    /// (its fd, of unknown ownership, is left alone), unless it re-delivers one whose reply
    /// is still pending. Either way the loop goes on.
    fn after_panic(
        &mut self,
        device: &mut dyn Device,
        message: &[u8],
        guarded: bool,
        panic: &(dyn std::any::Any + Send),
    ) -> Result<(), DeviceError> {
        self.stats.bad_messages += 1;
        log::error!(
            "handling a kernel message panicked ({}); failing that request",
            panic_message(panic)
        );
        if guarded {
            return Ok(());
        }
        match MsgHeader::ref_from_prefix(message) {
            Ok((header, _))
                if header.opcode.get() == msg::OP_OPEN
                    && !self.is_in_flight(header.msg_id.get().into()) =>
            {
                let msg_id = header.msg_id.get();
                let reply = self.open_reply(OpenTicket { msg_id, fd: None });
                reply.answer(device, Err(Errno::EIO)).map(drop)
            }
            _ => Ok(()),
        }
    }
}
