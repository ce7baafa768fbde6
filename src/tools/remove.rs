//! `invalidate` (one object) and `purge` (a whole volume), by burial in the graveyard.
//!
//! The entry is renamed into the graveyard and the graveyard reaped, so a crash half-way
//! leaves only graveyard contents the daemon deletes. The caller holds the cache lock. Both
//! take validated names only: the volume is a [`VolumeName`] and the object name is made from
//! the key by the kernel's encoding, so neither can name anything but an entry of its own
//! directory.

use super::{reap, ToolError};
use crate::cachedir::graveyard::bury;
use crate::cachedir::names::{fanout_dir_of, show_path, Name, ObjectName, VolumeName, CACHE};
use crate::cachedir::tree::stat;
use crate::cachedir::CacheDir;
use nix::dir::Dir;
use nix::errno::Errno;

/// Removes the object of `key` in `volume`; returns its path below the cache root.
pub fn invalidate(root: &CacheDir, volume: &VolumeName, key: &[u8]) -> Result<String, ToolError> {
    let object = ObjectName::for_key(key)?;
    let fan = fanout_dir_of(volume, key);
    let names = [CACHE, volume.dir_name().clone(), fan];
    let rel: [&[u8]; 4] = [&names[0], &names[1], &names[2], object.name()];
    let dir = match root.open_dir(&names) {
        Ok(d) => d,
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what: "object",
                path: root.show(&rel),
            })
        }
        Err(e) => return Err(ToolError::os(root, "cannot open", &rel[..3], e)),
    };
    remove(root, &dir, object.name(), &rel, "object")
}

/// Removes `cache/I<volume>` with everything in it.
pub fn purge(root: &CacheDir, volume: &VolumeName) -> Result<String, ToolError> {
    let rel: [&[u8]; 2] = [&CACHE, volume.dir_name()];
    let cache = match root.open_dir(&[CACHE]) {
        Ok(d) => d,
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what: "volume",
                path: root.show(&rel),
            })
        }
        Err(e) => return Err(ToolError::os(root, "cannot open", &rel[..1], e)),
    };
    remove(root, &cache, volume.dir_name(), &rel, "volume")
}

fn remove(
    root: &CacheDir,
    parent: &Dir,
    name: &Name,
    rel: &[&[u8]],
    what: &'static str,
) -> Result<String, ToolError> {
    match stat(parent, name) {
        Ok(_) => {}
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what,
                path: root.show(rel),
            })
        }
        Err(e) => return Err(ToolError::os(root, "cannot stat", rel, e)),
    }
    let graveyard = root.ensure_graveyard()?;
    bury(parent, name, &graveyard)
        .map_err(|e| ToolError::os(root, "cannot move into the graveyard", rel, e))?;
    reap(&graveyard)?;
    Ok(show_path(rel.iter().copied()))
}
