//! The daemon's runtime directory (/run/cachefilesd by default): its records and sockets.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

/// Creates the directory that will hold `path`, if missing, readable by root only: what lives
/// there (the bound configuration, events in flight, the control socket) is for the daemon and
/// its successor, not for other users.
pub fn create_parent(path: &Path) -> std::io::Result<()> {
    match path
        .parent()
        .filter(|p| !p.as_os_str().is_empty() && !p.exists())
    {
        Some(parent) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent),
        None => Ok(()),
    }
}

/// Replaces the file at `path` with `contents` atomically (a crash leaves the old file or
/// the new one, never a mix): a new file beside it, synced, then renamed over it. A rename
/// replaces a symlink at `path` instead of following it, and the new file is opened with
/// `O_NOFOLLOW`.
pub fn replace(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    create_parent(path)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".new");
    let tmp = std::path::PathBuf::from(tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(&tmp)?;
    f.write_all(contents)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// Reads the record at `path`, never through a symlink, and at most `max + 1` bytes (a longer
/// file is not one of ours; the caller tells by the length). `Ok(None)`: there is none.
pub fn read(path: &Path, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(max + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_missing_parent_is_made_for_root_only_and_an_existing_one_is_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let made = dir.path().join("a/b/record");
        create_parent(&made).unwrap();
        let mode = std::fs::metadata(dir.path().join("a/b"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);

        let existing = dir.path().join("open");
        std::fs::create_dir(&existing).unwrap();
        std::fs::set_permissions(&existing, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_parent(&existing.join("record")).unwrap();
        let mode = std::fs::metadata(&existing).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        create_parent(Path::new("record")).unwrap();
    }

    #[test]
    fn a_replaced_file_has_the_new_contents_and_a_symlink_in_its_place_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/record");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let target = dir.path().join("target");
        std::fs::write(&target, b"kept").unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        replace(&path, b"three").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
    }
}
