//! A scriptable, pollable stand-in for /dev/cachefiles, for fast tests of the whole loop.
//!
//! It imitates the kernel's observable rules (one command per write, `cull` relative to the
//! process's cwd, EBUSY for objects in use, status line format, one message per read, 0 when
//! none is pending). It is not the proof: the VM suite runs the real kernel.

use crate::device::{Device, DeviceError};
use crate::proto::{Command, Status};
use nix::errno::Errno;
use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

#[derive(Default)]
pub struct FakeState {
    /// Every command written, as text.
    pub commands: Vec<String>,
    /// Names (as given to `cull`, relative to cwd) culled so far, with the cwd they were in.
    pub culled: Vec<std::path::PathBuf>,
    /// Object names the "kernel" holds: `cull`/`inuse` answer EBUSY.
    pub in_use: BTreeSet<Vec<u8>>,
    /// The kernel wants culling until this many objects have been culled.
    pub cull_until: usize,
    pub status: Status,
    /// Messages waiting to be read (on-demand mode).
    pub messages: VecDeque<Vec<u8>>,
    /// READ completions in order.
    pub completed: Vec<u32>,
    /// Makes every operation fail with EIO, as a dead cache does.
    pub dead: bool,
    /// Errors to return for the next commands with this keyword.
    pub fail_next: Vec<(&'static str, Errno)>,
    /// Fds handed out as anonymous object fds (see `FakeKernel::anon_fd`), with the file
    /// (device, inode) each stood for: like the kernel's type check, a number that now names
    /// another file is not an anon fd, and one still naming its file is, whoever owns it.
    pub anon_fds: std::collections::HashMap<RawFd, FileId>,
    /// The next `is_anon_fd` call panics, as a bug in the loop thread's handling would.
    pub panic_in_next_fd_check: bool,
    /// The next message read fails with this errno and is gone, as an OPEN is when the
    /// kernel cannot install its fd (EMFILE): the kernel fails that request itself.
    pub fail_next_read: Option<Errno>,
}

#[derive(Clone)]
pub struct FakeKernel {
    pub state: Arc<Mutex<FakeState>>,
    poke: Arc<UnixStream>,
}

pub struct FakeDevice {
    kernel: FakeKernel,
    readable: UnixStream,
}

impl FakeKernel {
    pub fn new() -> (FakeKernel, FakeDevice) {
        let (poke, readable) = UnixStream::pair().expect("socketpair");
        readable.set_nonblocking(true).expect("nonblocking");
        let kernel = FakeKernel {
            state: Arc::new(Mutex::new(FakeState::default())),
            poke: Arc::new(poke),
        };
        (kernel.clone(), FakeDevice { kernel, readable })
    }

    /// Makes the device readable, as a kernel state change or a new request does.
    pub fn wake(&self) {
        let _ = (&*self.poke).write(&[1]);
    }

    /// Registers a file as an anonymous object fd and returns its number for an OPEN.
    pub fn anon_fd(&self, file: std::fs::File) -> u32 {
        use std::os::fd::IntoRawFd;
        let id = file_id(file.as_raw_fd()).expect("fstat of a new anon fd");
        let fd = file.into_raw_fd();
        self.state
            .lock()
            .expect("fake state")
            .anon_fds
            .insert(fd, id);
        fd as u32
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        let r = f(&mut self.state.lock().expect("fake state"));
        self.wake();
        r
    }
}

impl Device for FakeDevice {
    fn send(&mut self, command: &Command) -> Result<(), DeviceError> {
        let bytes = crate::device::encode(command)?;
        let mut st = self.kernel.state.lock().expect("fake state");
        let fail = |errno| {
            Err(DeviceError::Command {
                command: command.to_string(),
                errno,
            })
        };
        if st.dead {
            return fail(Errno::EIO);
        }
        if let Some(i) = st
            .fail_next
            .iter()
            .position(|(k, _)| *k == command.keyword())
        {
            let (_, errno) = st.fail_next.remove(i);
            return fail(errno);
        }
        st.commands
            .push(String::from_utf8_lossy(&bytes).into_owned());
        match command {
            Command::Cull(name) | Command::Inuse(name) => {
                if st.in_use.contains(name) {
                    return fail(Errno::EBUSY);
                }
                let path = std::path::Path::new(std::ffi::OsStr::from_bytes(name));
                let meta = std::fs::symlink_metadata(path);
                if meta.is_err() {
                    return fail(Errno::ENOENT);
                }
                if matches!(command, Command::Cull(_)) {
                    let cwd = std::env::current_dir().expect("cwd");
                    // The kernel buries a culled volume directory whole.
                    let removed = if meta.as_ref().is_ok_and(|m| m.is_dir()) {
                        std::fs::remove_dir_all(path)
                    } else {
                        std::fs::remove_file(path)
                    };
                    removed.map_err(|e| DeviceError::Command {
                        command: command.to_string(),
                        errno: Errno::from_raw(e.raw_os_error().unwrap_or(0)),
                    })?;
                    st.culled.push(cwd.join(path));
                    let wanted = st.culled.len() < st.cull_until;
                    if st.status.cull != wanted {
                        st.status.cull = wanted;
                        self.kernel.wake();
                    }
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, DeviceError> {
        let mut sink = [0u8; 64];
        while matches!((&self.readable).read(&mut sink), Ok(n) if n > 0) {}
        let mut st = self.kernel.state.lock().expect("fake state");
        if st.dead {
            return Err(DeviceError::Read(Errno::EIO));
        }
        let mode_ondemand = st.commands.iter().any(|c| c == "bind ondemand");
        let bytes = if mode_ondemand {
            match st.messages.front() {
                None => return Ok(0),
                Some(m) if m.len() > buf.len() => return Err(DeviceError::Read(Errno::EMSGSIZE)),
                Some(_) => {
                    let m = st.messages.pop_front().expect("checked");
                    if let Some(errno) = st.fail_next_read.take() {
                        return Err(DeviceError::Read(errno));
                    }
                    m
                }
            }
        } else {
            let s = st.status;
            st.status.freleased = 0;
            st.status.breleased = 0;
            format!(
                "cull={} frun={:x} fcull={:x} fstop={:x} brun={:x} bcull={:x} bstop={:x} freleased={:x} breleased={:x}",
                s.cull as u8, s.frun, s.fcull, s.fstop, s.brun, s.bcull, s.bstop, s.freleased, s.breleased
            )
            .into_bytes()
        };
        buf[..bytes.len()].copy_from_slice(&bytes);
        Ok(bytes.len())
    }

    fn complete_read(&mut self, _anon_fd: BorrowedFd<'_>, msg_id: u32) -> Result<(), DeviceError> {
        let mut st = self.kernel.state.lock().expect("fake state");
        if st.dead {
            return Err(DeviceError::ReadComplete {
                msg_id,
                errno: Errno::EIO,
            });
        }
        st.completed.push(msg_id);
        Ok(())
    }

    fn poll_fd(&self) -> RawFd {
        self.readable.as_raw_fd()
    }

    fn is_anon_fd(&self, fd: RawFd) -> bool {
        let (known, panic) = {
            let mut st = self.kernel.state.lock().expect("fake state");
            let panic = std::mem::take(&mut st.panic_in_next_fd_check);
            (st.anon_fds.get(&fd).copied(), panic)
        };
        // Raised with the state unlocked, so that the fake goes on working afterwards.
        if panic {
            panic!("fake device: is_anon_fd({fd}) panics, as the test asked");
        }
        known.is_some_and(|id| file_id(fd) == Some(id))
    }
}

/// Which file an fd is open on: (device, inode).
pub type FileId = (u64, u64);

/// The file `fd` is open on; `None` when it is not open.
fn file_id(fd: RawFd) -> Option<FileId> {
    nix::sys::stat::fstat(fd)
        .ok()
        .map(|st| (st.st_dev, st.st_ino))
}
