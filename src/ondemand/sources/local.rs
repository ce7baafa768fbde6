//! Local file blobs: regular files only, opened so that nothing can block the worker.
//!
//! A FIFO would block the worker in `open` until a writer appears (forever, holding the OPEN),
//! a device could have side effects on open and has no fixed size. The path is checked before
//! it is opened and the opened file again, with `O_NONBLOCK` so that a FIFO swapped in between
//! cannot block either.

use super::head;
use super::{Blob, FetchError};
use nix::fcntl::OFlag;
use std::fs::File;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::PathBuf;

pub struct LocalBlob {
    path: PathBuf,
    file: File,
    size: u64,
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

impl LocalBlob {
    /// Opens `path` (symlinks in it are followed: the source map is root's and may point at
    /// a link such as `current.img`) if it is a regular file.
    pub fn open(path: PathBuf) -> Result<LocalBlob, FetchError> {
        let io = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::NotFound => FetchError::NotFound,
            _ => FetchError::Io(format!("{}: {e}", path.display())),
        };
        let not_regular = |meta: &std::fs::Metadata| {
            FetchError::Protocol(format!(
                "{} is {}, not a regular file; refused",
                path.display(),
                kind(meta)
            ))
        };
        let before = std::fs::metadata(&path).map_err(io)?;
        if !before.is_file() {
            return Err(not_regular(&before));
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NONBLOCK | OFlag::O_NOCTTY).bits())
            .open(&path)
            .map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() {
            return Err(not_regular(&meta));
        }
        if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
            return Err(FetchError::Io(format!(
                "{} was replaced while being opened",
                path.display()
            )));
        }
        let size = head::check_size(meta.len())
            .map_err(|e| FetchError::Protocol(format!("{}: {e}", path.display())))?;
        Ok(LocalBlob { path, file, size })
    }
}

impl Blob for LocalBlob {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        super::check_read(self.size, off, buf.len())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => FetchError::Io(format!(
                    "{}: shorter than when it was opened",
                    self.path.display()
                )),
                _ => FetchError::Io(format!("{}: {e}", self.path.display())),
            })
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn is_remote(&self) -> bool {
        false
    }

    fn copy_to(
        &self,
        off: u64,
        len: usize,
        out: BorrowedFd<'_>,
        out_off: u64,
    ) -> Option<Result<(), FetchError>> {
        if let Err(e) = super::check_read(self.size, off, len) {
            return Some(Err(e));
        }
        SPLICE_PIPE.with_borrow_mut(|kept| {
            let pipe = match kept.take() {
                Some(p) => p,
                None => match new_pipe() {
                    Ok(p) => p,
                    Err(e) => {
                        log::debug!("no pipe to splice through ({e}): copying through memory");
                        return None;
                    }
                },
            };
            match self.splice_through(&pipe, off, len, out, out_off) {
                Ok(()) => {
                    *kept = Some(pipe);
                    Some(Ok(()))
                }
                // The source's filesystem cannot splice: nothing moved.
                Err(Spliced::Unsupported) => {
                    *kept = Some(pipe);
                    None
                }
                // The pipe may hold bytes of the failed copy: it goes with the error.
                Err(Spliced::Failed(e)) => Some(Err(e)),
            }
        })
    }
}

/// A pipe per worker thread for `copy_to`: (read end, write end).
type Pipe = (OwnedFd, OwnedFd);

thread_local! {
    /// Kept between copies while empty; a copy that fails drops it (it may hold bytes).
    static SPLICE_PIPE: std::cell::RefCell<Option<Pipe>> = const { std::cell::RefCell::new(None) };
}

/// What one pipe load moves at most: a fill's chunk (1 MiB) in one go where the pipe can
/// be that large (the default 64 KiB otherwise, a non-root worker past pipe-max-size).
const PIPE_SIZE: usize = 1 << 20;

fn new_pipe() -> std::io::Result<Pipe> {
    let (r, w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let _ = rustix::pipe::fcntl_setpipe_size(&w, PIPE_SIZE);
    Ok((r, w))
}

enum Spliced {
    Unsupported,
    Failed(FetchError),
}

impl LocalBlob {
    /// Moves `[off, off+len)` of the source into the pipe and from there into `out` at
    /// `out_off`, one pipe load at a time: the kernel copies each byte once, from the
    /// source's page cache into `out`'s.
    fn splice_through(
        &self,
        (r, w): &Pipe,
        off: u64,
        len: usize,
        out: BorrowedFd<'_>,
        out_off: u64,
    ) -> Result<(), Spliced> {
        use rustix::io::Errno;
        use rustix::pipe::{splice, SpliceFlags};
        let failed = |what: String| Spliced::Failed(FetchError::Io(what));
        let mut done = 0usize;
        while done < len {
            let mut src = off + done as u64;
            let loaded = match splice(
                &self.file,
                Some(&mut src),
                w,
                None,
                (len - done).min(PIPE_SIZE),
                SpliceFlags::empty(),
            ) {
                Ok(0) => {
                    return Err(failed(format!(
                        "{}: shorter than when it was opened",
                        self.path.display()
                    )))
                }
                Ok(n) => n,
                Err(Errno::INTR) => continue,
                Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) if done == 0 => {
                    return Err(Spliced::Unsupported)
                }
                Err(e) => return Err(failed(format!("{}: {e}", self.path.display()))),
            };
            let mut moved = 0usize;
            while moved < loaded {
                let mut dst = out_off + (done + moved) as u64;
                match splice(
                    r,
                    None,
                    out,
                    Some(&mut dst),
                    loaded - moved,
                    SpliceFlags::empty(),
                ) {
                    Ok(0) => {
                        return Err(failed(format!("writing the cache at {dst}: no progress")))
                    }
                    Ok(n) => moved += n,
                    Err(Errno::INTR) => continue,
                    Err(e) => return Err(failed(format!("writing the cache at {dst}: {e}"))),
                }
            }
            done += loaded;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_blob_truncated_while_served_is_an_error() {
        let t = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(t.path(), vec![3u8; 10000]).unwrap();
        let blob = LocalBlob::open(t.path().to_path_buf()).unwrap();
        assert_eq!(blob.size(), 10000);
        let mut buf = vec![0u8; 100];
        blob.read_exact_at(9900, &mut buf).unwrap();
        assert_eq!(buf, vec![3u8; 100]);
        assert!(blob.read_exact_at(9950, &mut buf).is_err());
        std::fs::write(t.path(), vec![3u8; 5000]).unwrap();
        assert!(blob.read_exact_at(9900, &mut buf).is_err());
        assert!(matches!(
            LocalBlob::open("/nonexistent/blob".into()),
            Err(FetchError::NotFound)
        ));
    }

    #[test]
    fn copy_to_splices_the_exact_bytes_and_a_failed_copy_leaves_nothing_behind() {
        use std::os::fd::AsFd;
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("src"), &data).unwrap();
        let blob = LocalBlob::open(dir.path().join("src")).unwrap();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(dir.path().join("out"))
            .unwrap();
        // More than a pipe load, at an offset that is not the source's.
        let n = (1 << 20) + 12345;
        blob.copy_to(4096, n, out.as_fd(), 8192)
            .expect("a local file splices")
            .unwrap();
        let mut back = vec![0u8; n];
        out.read_exact_at(&mut back, 8192).unwrap();
        assert!(back == data[4096..4096 + n]);
        // Past the end of the source: refused before anything moves.
        assert!(blob.copy_to(3 << 20, 1, out.as_fd(), 0).unwrap().is_err());
        // A destination that cannot be written: the bytes already in the pipe must not
        // reach the next copy on this thread.
        let read_only = std::fs::File::open(dir.path().join("out")).unwrap();
        assert!(blob
            .copy_to(0, 8192, read_only.as_fd(), 0)
            .unwrap()
            .is_err());
        blob.copy_to(1 << 20, 8192, out.as_fd(), 0)
            .unwrap()
            .unwrap();
        let mut back = vec![0u8; 8192];
        out.read_exact_at(&mut back, 0).unwrap();
        assert!(
            back == data[1 << 20..(1 << 20) + 8192],
            "stale bytes from the failed copy"
        );
        // A source cut short after it was opened: an error, not a short copy.
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("src"))
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let e = blob
            .copy_to(0, 2 << 20, out.as_fd(), 0)
            .unwrap()
            .unwrap_err();
        assert!(
            e.to_string().contains("shorter than when it was opened"),
            "{e}"
        );
    }

    #[test]
    fn fifos_directories_and_devices_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        // Opening a FIFO for reading blocks until a writer comes: run it on a thread and
        // give up after a while instead of hanging the test run.
        let (tx, rx) = std::sync::mpsc::channel();
        let f = fifo.clone();
        std::thread::spawn(move || {
            let _ = tx.send(LocalBlob::open(f).map(|_| ()).map_err(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("opening a FIFO as a source blocked");
        let e = got.unwrap_err();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        // A symlink to a FIFO is refused the same way.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(LocalBlob::open(link).is_err());
        let e = LocalBlob::open(dir.path().to_path_buf()).err().unwrap();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let e = LocalBlob::open("/dev/null".into()).err().unwrap();
        assert!(e.to_string().contains("is a device"), "{e}");
    }
}
