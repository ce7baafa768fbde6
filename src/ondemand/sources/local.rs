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
