//! The pid file (`-p FILE`), created without following a symlink or reusing a planted file.
//!
//! Written as root, possibly in a directory others can write, so it is created without
//! following a symlink and without opening a file someone else placed there.

use nix::errno::Errno;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write pid file {path}: {errno}")]
pub struct PidFileError {
    pub path: PathBuf,
    pub errno: Errno,
}

/// A written pid file, removed again by `remove`.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes `pid` to `path`. Whatever is at `path` (a stale pid file, or a symlink planted
    /// to make root clobber its target) is unlinked, never followed; the new file is made with
    /// O_EXCL, so a symlink planted again in between makes this fail instead of being followed.
    pub fn write(path: &Path, pid: u32) -> Result<PidFile, PidFileError> {
        use nix::fcntl::OFlag;
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |errno| PidFileError {
            path: path.to_path_buf(),
            errno,
        };
        match nix::unistd::unlink(path) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(errno) => return Err(fail(errno)),
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(OFlag::O_NOFOLLOW.bits())
            .open(path)
            .map_err(|e| fail(errno_of(&e)))?;
        file.write_all(format!("{pid}\n").as_bytes())
            .map_err(|e| fail(errno_of(&e)))?;
        Ok(PidFile {
            path: path.to_path_buf(),
        })
    }

    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn errno_of(e: &std::io::Error) -> Errno {
    Errno::from_raw(e.raw_os_error().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_symlink_in_place_of_the_pid_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("precious");
        std::fs::write(&target, b"keep").unwrap();
        let pid = dir.path().join("cachefilesd.pid");
        std::os::unix::fs::symlink(&target, &pid).unwrap();
        let written = PidFile::write(&pid, 4242).unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep", "symlink followed");
        let meta = std::fs::symlink_metadata(&pid).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), "4242\n");
        written.remove();
        assert!(!pid.exists() && target.exists());
    }

    #[test]
    fn a_stale_pid_file_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let pid = dir.path().join("cachefilesd.pid");
        std::fs::write(&pid, b"1\n").unwrap();
        PidFile::write(&pid, 7).unwrap();
        assert_eq!(std::fs::read_to_string(&pid).unwrap(), "7\n");
    }
}
