//! Live invalidate and purge: removing one object or a volume from a running daemon's cache.
//!
//! The kernel's `cull` does the removal, as for culling: it refuses with EBUSY an object or a
//! volume the kernel holds (an open cookie, an acquired volume, a mounted EROFS blob) and
//! otherwise moves it into the graveyard, which the daemon reaps. Unlinking behind the
//! kernel's back would pull a file from under an object in use. `cull NAME` is resolved
//! against the process's cwd, so this runs on the loop thread only, between cull batches
//! (the culler has then left the tree and will `fchdir` again before its next cull); it goes
//! back to `/` when done.
//!
//! On the control socket the names travel as hex (`invalidate VOLUME_HEX KEY_HEX`,
//! `purge VOLUME_HEX`), so any volume key and cookie key fits one line; both sides validate
//! them as [`VolumeName`] and [`ObjectName`].

use crate::cachedir::names::{fanout_dir_of, show_path, Name, ObjectName, VolumeName, CACHE};
use crate::cachedir::CacheDir;
use crate::device::{Device, DeviceError};
use crate::proto::Command;
use nix::errno::Errno;
use std::os::fd::AsRawFd;
use std::path::Path;

/// What to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The object of a cookie key in a volume.
    Object { volume: VolumeName, key: Vec<u8> },
    /// A volume with everything in it.
    Volume(VolumeName),
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error("no such {what}: {path}")]
    NotFound { what: &'static str, path: String },
    #[error("{what} {path} is in use by the kernel (an open file, a mounted filesystem or an acquired volume holds it): not removed; try again once it is released")]
    InUse { what: &'static str, path: String },
    #[error("{what} {path}: {errno}")]
    Tree {
        what: &'static str,
        path: String,
        errno: Errno,
    },
    #[error("cull {path} refused by the kernel: {source}")]
    Refused { path: String, source: DeviceError },
    #[error("bad request: {0}")]
    Request(String),
}

fn unhex(s: &str) -> Result<Vec<u8>, LiveError> {
    match hex::decode(s) {
        Ok(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(LiveError::Request(format!("{s:?} is not hex"))),
    }
}

impl Target {
    /// The request line for the control socket.
    pub fn request(&self) -> String {
        match self {
            Target::Object { volume, key } => {
                format!(
                    "invalidate {} {}",
                    hex::encode(volume.key()),
                    hex::encode(key)
                )
            }
            Target::Volume(volume) => format!("purge {}", hex::encode(volume.key())),
        }
    }

    /// The arguments of an `invalidate` (two) or `purge` (one) request, validated.
    pub fn parse(word: &str, args: &[&str]) -> Result<Target, LiveError> {
        let volume = |s: &str| {
            VolumeName::new(&unhex(s)?).map_err(|e| LiveError::Request(format!("volume: {e}")))
        };
        match (word, args) {
            ("invalidate", [v, k]) => {
                let key = unhex(k)?;
                ObjectName::for_key(&key).map_err(|e| LiveError::Request(format!("key: {e}")))?;
                Ok(Target::Object {
                    volume: volume(v)?,
                    key,
                })
            }
            ("purge", [v]) => Ok(Target::Volume(volume(v)?)),
            _ => Err(LiveError::Request(format!(
                "usage: invalidate VOLUME_HEX KEY_HEX | purge VOLUME_HEX, not {word} with {} arguments",
                args.len()
            ))),
        }
    }
}

/// Removes `target` from the bound cache at `root` through the kernel's `cull`; the path
/// removed, below the cache root.
pub fn remove(root: &Path, target: &Target, device: &mut dyn Device) -> Result<String, LiveError> {
    let root = CacheDir::open(root).map_err(|e| LiveError::Tree {
        what: "cannot open",
        path: e.path,
        errno: e.errno,
    })?;
    let (what, dirs, name): (&'static str, Vec<Name>, Name) = match target {
        Target::Object { volume, key } => {
            let object =
                ObjectName::for_key(key).map_err(|e| LiveError::Request(format!("key: {e}")))?;
            let fan = fanout_dir_of(volume, key);
            (
                "object",
                vec![CACHE, volume.dir_name().clone(), fan],
                object.name().clone(),
            )
        }
        Target::Volume(volume) => ("volume", vec![CACHE], volume.dir_name().clone()),
    };
    let mut rel: Vec<&[u8]> = dirs.iter().map(|n| n.as_bytes()).collect();
    rel.push(name.as_bytes());
    let path = show_path(rel.iter().copied());
    let not_found = || LiveError::NotFound {
        what,
        path: path.clone(),
    };
    let dir = match root.open_dir(&dirs) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Err(not_found()),
        Err(errno) => {
            return Err(LiveError::Tree {
                what: "cannot open the directory of",
                path,
                errno,
            })
        }
    };
    match crate::cachedir::tree::stat(&dir, &name) {
        Ok(_) => {}
        Err(Errno::ENOENT) => return Err(not_found()),
        Err(errno) => {
            return Err(LiveError::Tree {
                what: "cannot stat",
                path,
                errno,
            })
        }
    }
    nix::unistd::fchdir(dir.as_raw_fd()).map_err(|errno| LiveError::Tree {
        what: "cannot enter the directory of",
        path: path.clone(),
        errno,
    })?;
    let sent = device.send(&Command::Cull(name.as_bytes().to_vec()));
    // Out of the tree again: the cwd must pin nothing, and the culler re-enters its own.
    let _ = nix::unistd::chdir("/");
    match sent {
        Ok(()) => Ok(path),
        Err(e) => match e.errno() {
            Some(Errno::EBUSY) => Err(LiveError::InUse { what, path }),
            Some(Errno::ENOENT | Errno::ESTALE) => Err(not_found()),
            _ => Err(LiveError::Refused { path, source: e }),
        },
    }
}

/// The control socket's answer to a removal: one line, `removed PATH` or `error: ...`.
pub fn answer(root: &Path, target: &Target, device: &mut dyn Device) -> String {
    match remove(root, target, device) {
        Ok(path) => {
            log::info!("removed {path} on request");
            format!("removed {path}\n")
        }
        Err(e) => format!("error: {e}\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_names_are_refused() {
        let t = Target::Object {
            volume: VolumeName::new(b"erofs,dom ain").unwrap(),
            key: b"blob\n1".to_vec(),
        };
        let line = t.request();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{line}");
        assert_eq!(Target::parse(words[0], &words[1..]).unwrap(), t);
        let p = Target::Volume(VolumeName::new(b"9p,tag,").unwrap());
        let line = p.request();
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(Target::parse(words[0], &words[1..]).unwrap(), p);
        // "a/b" as a volume, odd hex, non-hex, missing key.
        for (w, args) in [
            ("purge", vec!["612f62"]),
            ("purge", vec!["abc"]),
            ("purge", vec!["zz"]),
            // Signs: "+f" is 15 to `u8::from_str_radix`, never a hex digit.
            ("purge", vec!["+f+f"]),
            ("invalidate", vec!["61", "-1"]),
            ("invalidate", vec!["61"]),
            ("purge", vec![]),
        ] {
            assert!(
                matches!(Target::parse(w, &args), Err(LiveError::Request(_))),
                "{w} {args:?}"
            );
        }
    }
}
