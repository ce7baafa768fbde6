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
}
