//! `invalidate` (one object) and `purge` (a whole volume): the entry is renamed into the
//! graveyard and the graveyard reaped, so a crash half-way leaves only graveyard contents
//! the daemon deletes. The caller holds the cache lock.

use super::{CacheRoot, ToolError};
use crate::cull::tree::{open_dir_at, stat_at};
use crate::layout::{self, CACHE_DIR};
use nix::errno::Errno;

/// Removes the object of `key` in `volume`; returns its path below the cache root.
pub fn invalidate(root: &CacheRoot, volume: &[u8], key: &[u8]) -> Result<String, ToolError> {
    let name = layout::encode_key(key).map_err(|e| ToolError::Invalid(e.to_string()))?;
    let vol_name = layout::volume_dir_name(volume);
    let fan_name = layout::fanout_name(layout::fanout(volume, key));
    let rel: [&[u8]; 4] = [CACHE_DIR.as_bytes(), &vol_name, fan_name.as_bytes(), &name];
    let fan = match root.open_rel(&rel[..3]) {
        Ok(d) => d,
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what: "object",
                path: root.show(&rel),
            })
        }
        Err(e) => return Err(ToolError::os("cannot open", root.show(&rel[..3]), e)),
    };
    remove(root, &fan, &name, &rel, "object")
}

/// Removes `cache/I<volume>` with everything in it.
pub fn purge(root: &CacheRoot, volume: &[u8]) -> Result<String, ToolError> {
    let vol_name = layout::volume_dir_name(volume);
    let rel: [&[u8]; 2] = [CACHE_DIR.as_bytes(), &vol_name];
    let cache = match open_dir_at(&root.dir, CACHE_DIR.as_bytes()) {
        Ok(d) => d,
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what: "volume",
                path: root.show(&rel),
            })
        }
        Err(e) => return Err(ToolError::os("cannot open", root.show(&rel[..1]), e)),
    };
    remove(root, &cache, &vol_name, &rel, "volume")
}

fn remove(
    root: &CacheRoot,
    parent: &nix::dir::Dir,
    name: &[u8],
    rel: &[&[u8]],
    what: &'static str,
) -> Result<String, ToolError> {
    match stat_at(parent, name) {
        Ok(_) => {}
        Err(Errno::ENOENT) => {
            return Err(ToolError::NotFound {
                what,
                path: root.show(rel),
            })
        }
        Err(e) => return Err(ToolError::os("cannot stat", root.show(rel), e)),
    }
    let graveyard = root.graveyard()?;
    root.bury(parent, name, &graveyard)
        .map_err(|e| ToolError::os("cannot move into the graveyard", root.show(rel), e))?;
    root.reap(&graveyard)?;
    Ok(rel
        .iter()
        .map(|c| String::from_utf8_lossy(c))
        .collect::<Vec<_>>()
        .join("/"))
}
