//! One read-only walk over a cache tree for `ls`, `du` and `check`.
//!
//! It both lists what is there (`ls`, `du`) and records everything the kernel would not have
//! made or would refuse (`check`).
//!
//! A walk keeps only what its command prints ([`Keep`]): `du` aggregates while walking, so its
//! memory is per volume, not per object; `ls` keeps no findings and `check` no objects.
//! Strings in these records are for JSON (exact, lossy only for invalid UTF-8); text output
//! escapes them ([`crate::cachedir::Escaped`]).

use super::{show_bytes, ToolError};
use crate::cachedir::layout::{self, Content, ObjectXattr, VolumeXattr};
use crate::cachedir::names::{show_path, BadName, Name, ObjectName, VolumeName, CACHE, GRAVEYARD};
use crate::cachedir::tree::{file_type, list, open_dir, open_file, stat};
use crate::cachedir::{xattr, CacheDir};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};
use rustix::fs::OFlags;
use serde::Serialize;
use std::os::fd::AsRawFd;

#[derive(Debug, Clone, Serialize)]
pub struct ObjectInfo {
    pub volume: String,
    /// Path below the cache root: `cache/I<volume>/@xx/<name>`.
    pub path: String,
    pub name: String,
    /// The cookie key the kernel used, as text when printable, else `0x` + hex.
    pub key: Option<String>,
    pub encoding: Option<layout::KeyEncoding>,
    pub object_size: Option<u64>,
    pub content: Option<Content>,
    pub file_size: u64,
    pub allocated: u64,
    /// Seconds since the epoch (culling is LRU on atime).
    pub atime: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub volume: String,
    pub path: String,
    pub fanouts: u16,
    /// Empty when the walk keeps totals only.
    pub objects: Vec<ObjectInfo>,
    #[serde(skip)]
    pub usage: Usage,
}

impl VolumeInfo {
    /// A volume directory's record before its fanouts are walked.
    fn empty(volume: &VolumeName, name: &Name) -> VolumeInfo {
        let shown = show_bytes(volume.key());
        VolumeInfo {
            usage: Usage {
                volume: shown.clone(),
                ..Usage::default()
            },
            volume: shown,
            path: format!("{}/{}", layout::CACHE_DIR, String::from_utf8_lossy(name)),
            fanouts: 0,
            objects: Vec::new(),
        }
    }
}

/// What `check` reports; the Display text is the message shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("symbolic link where the kernel keeps {0}")]
    Symlink(&'static str),
    #[error("{0} where the kernel keeps {1}")]
    WrongType(&'static str, &'static str),
    #[error("name the kernel does not make here")]
    StrayName,
    #[error("object name the kernel does not make: {0}")]
    BadObjectName(layout::NameError),
    #[error("object in the wrong fanout: its key hashes to @{0:02x}")]
    WrongFanout(u8),
    #[error("volume xattr {xattr} missing (the kernel buries such a volume)", xattr = layout::XATTR_NAME)]
    VolumeXattrMissing,
    #[error("volume xattr invalid: {0}")]
    VolumeXattrBad(String),
    #[error("object xattr {xattr} missing (the kernel replaces such an object)", xattr = layout::XATTR_NAME)]
    ObjectXattrMissing,
    #[error("object xattr invalid: {0}")]
    ObjectXattrBad(String),
    #[error("file size {file} is larger than the object size {object} rounded up to 4096")]
    SizeMismatch { file: u64, object: u64 },
    #[error("cannot read: {0}")]
    Unreadable(Errno),
    #[error("graveyard holds {0} entries (the daemon deletes them)")]
    GraveyardNotEmpty(u64),
    #[error("{0}")]
    Missing(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// Rename the entry into the graveyard, then reap.
    Bury,
    ReapGraveyard,
    /// Harmless or the kernel fixes it itself; reported only.
    None,
}

#[derive(Debug, Clone)]
pub struct Finding {
    /// Components below the cache root.
    pub path: Vec<Name>,
    pub problem: Problem,
    pub repair: Repair,
    /// The inode found, so a repair can tell the entry was not replaced meanwhile.
    pub ino: Option<u64>,
}

impl Finding {
    /// The path, escaped for people.
    pub fn show(&self) -> String {
        show_path(self.rel())
    }

    pub fn rel(&self) -> Vec<&[u8]> {
        self.path.iter().map(|n| n.as_bytes()).collect()
    }

    /// Counts toward the exit status: everything except notes about missing pieces the kernel
    /// makes itself.
    pub fn is_problem(&self) -> bool {
        !matches!(self.problem, Problem::Missing(_))
    }
}

#[derive(Debug, Default)]
pub struct Survey {
    pub volumes: Vec<VolumeInfo>,
    pub findings: Vec<Finding>,
}

/// What a walk keeps besides the per-volume totals, which it always counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    /// A record per object (`ls`).
    pub objects: bool,
    /// What the kernel would not have made (`check`).
    pub findings: bool,
}

impl Keep {
    pub const LS: Keep = Keep {
        objects: true,
        findings: false,
    };
    pub const CHECK: Keep = Keep {
        objects: false,
        findings: true,
    };
    pub const TOTALS: Keep = Keep {
        objects: false,
        findings: false,
    };
}

struct Walker<'a> {
    root: &'a CacheDir,
    keep: Keep,
    survey: Survey,
}

fn kind_name(st: &FileStat) -> &'static str {
    match file_type(st) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symbolic link",
        SFlag::S_IFIFO => "fifo",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "unknown file type",
    }
}

fn path_of(parent: &[Name], name: &Name) -> Vec<Name> {
    let mut p = parent.to_vec();
    p.push(name.clone());
    p
}

impl Walker<'_> {
    fn find(
        &mut self,
        parent: &[Name],
        name: &Name,
        problem: Problem,
        repair: Repair,
        ino: Option<u64>,
    ) {
        if !self.keep.findings {
            return;
        }
        self.survey.findings.push(Finding {
            path: path_of(parent, name),
            problem,
            repair,
            ino,
        });
    }

    /// A non-directory or symlink where a directory belongs.
    fn not_a_dir(&mut self, parent: &[Name], name: &Name, st: &FileStat, expected: &'static str) {
        let problem = if file_type(st) == SFlag::S_IFLNK {
            Problem::Symlink(expected)
        } else {
            Problem::WrongType(kind_name(st), expected)
        };
        self.find(parent, name, problem, Repair::Bury, Some(st.st_ino));
    }

    fn walk(&mut self, volume_filter: Option<&VolumeName>) -> Result<(), ToolError> {
        let root = self.root;
        match stat(root.dir(), &CACHE) {
            Err(Errno::ENOENT) => self.find(
                &[],
                &CACHE,
                Problem::Missing("no cache/ (the kernel makes it at bind)"),
                Repair::None,
                None,
            ),
            Err(e) => return Err(ToolError::os(root, "cannot stat", &[&CACHE], e)),
            Ok(st) if file_type(&st) != SFlag::S_IFDIR => {
                self.not_a_dir(&[], &CACHE, &st, "the cache directory")
            }
            Ok(_) => {
                let mut dir = root.cache()?;
                let entries =
                    list(&mut dir).map_err(|e| ToolError::os(root, "cannot read", &[&CACHE], e))?;
                for name in entries {
                    if volume_filter.is_some_and(|v| v.dir_name() != &name) {
                        continue;
                    }
                    self.volume(&dir, &name);
                }
            }
        }
        if volume_filter.is_none() {
            self.graveyard();
        }
        Ok(())
    }

    fn graveyard(&mut self) {
        let g = &GRAVEYARD;
        match stat(self.root.dir(), g) {
            Err(_) => self.find(
                &[],
                g,
                Problem::Missing("no graveyard/ (the kernel makes it at bind)"),
                Repair::None,
                None,
            ),
            Ok(st) if file_type(&st) != SFlag::S_IFDIR => {
                self.not_a_dir(&[], g, &st, "the graveyard directory")
            }
            Ok(st) => match open_dir(self.root.dir(), g).and_then(|mut d| list(&mut d)) {
                Ok(n) if n.is_empty() => {}
                Ok(n) => self.find(
                    &[],
                    g,
                    Problem::GraveyardNotEmpty(n.len() as u64),
                    Repair::ReapGraveyard,
                    Some(st.st_ino),
                ),
                Err(e) => self.find(&[], g, Problem::Unreadable(e), Repair::None, None),
            },
        }
    }

    /// Problems with a volume directory's xattr, if any.
    fn volume_xattr_problem(dir: &Dir, key: &[u8]) -> Option<(Problem, Repair)> {
        let bad = |s: String| Some((Problem::VolumeXattrBad(s), Repair::Bury));
        match xattr::get(dir) {
            Ok(None) => Some((Problem::VolumeXattrMissing, Repair::Bury)),
            Ok(Some(bytes)) => match VolumeXattr::decode(&bytes) {
                Err(e) => bad(e.to_string()),
                Ok(x) if x.reserved != 0 => {
                    bad(format!("reserved word is {:#x}, not 0", x.reserved))
                }
                // EROFS acquires its volumes without coherency data (fs/erofs/fscache.c).
                Ok(x) if key.starts_with(b"erofs,") && !x.coherency.is_empty() => bad(format!(
                    "{} bytes of coherency data on an EROFS volume",
                    x.coherency.len()
                )),
                Ok(_) => None,
            },
            Err(e) => Some((Problem::Unreadable(e), Repair::None)),
        }
    }

    fn volume(&mut self, cache: &Dir, name: &Name) {
        let parent = std::slice::from_ref(&CACHE);
        let st = match stat(cache, name) {
            Ok(st) => st,
            Err(_) => return, // vanished while listing
        };
        let Some(volume) = VolumeName::from_dir_name(name) else {
            self.find(
                parent,
                name,
                Problem::StrayName,
                Repair::Bury,
                Some(st.st_ino),
            );
            return;
        };
        if file_type(&st) != SFlag::S_IFDIR {
            self.not_a_dir(parent, name, &st, "volume directories");
            return;
        }
        let mut dir = match open_dir(cache, name) {
            Ok(d) => d,
            Err(e) => {
                self.find(parent, name, Problem::Unreadable(e), Repair::None, None);
                return;
            }
        };
        if let Some((problem, repair)) = Self::volume_xattr_problem(&dir, volume.key()) {
            let ino = (repair == Repair::Bury).then_some(st.st_ino);
            self.find(parent, name, problem, repair, ino);
        }
        let mut info = VolumeInfo::empty(&volume, name);
        let here = [CACHE, name.clone()];
        let entries = match list(&mut dir) {
            Ok(n) => n,
            Err(e) => {
                self.find(parent, name, Problem::Unreadable(e), Repair::None, None);
                return;
            }
        };
        for entry in entries {
            self.volume_entry(&dir, &volume, &here, &entry, &mut info);
        }
        if info.fanouts < 256 {
            self.find(
                parent,
                name,
                Problem::Missing(
                    "fewer than 256 fanout directories (the kernel makes the missing ones)",
                ),
                Repair::None,
                None,
            );
        }
        self.survey.volumes.push(info);
    }

    /// One entry of a volume directory: a fanout directory, walked, or a finding.
    fn volume_entry(
        &mut self,
        dir: &Dir,
        volume: &VolumeName,
        here: &[Name],
        entry: &Name,
        info: &mut VolumeInfo,
    ) {
        let Ok(est) = stat(dir, entry) else {
            return;
        };
        let Some(index) = layout::parse_fanout_name(entry) else {
            self.find(
                here,
                entry,
                Problem::StrayName,
                Repair::Bury,
                Some(est.st_ino),
            );
            return;
        };
        if file_type(&est) != SFlag::S_IFDIR {
            self.not_a_dir(here, entry, &est, "fanout directories");
            return;
        }
        info.fanouts += 1;
        match open_dir(dir, entry) {
            Ok(fan) => self.fanout(fan, volume, index, here, entry, info),
            Err(e) => self.find(here, entry, Problem::Unreadable(e), Repair::None, None),
        }
    }

    fn fanout(
        &mut self,
        mut fan: Dir,
        volume: &VolumeName,
        index: u8,
        vol_path: &[Name],
        fan_name: &Name,
        info: &mut VolumeInfo,
    ) {
        let here = path_of(vol_path, fan_name);
        let entries = match list(&mut fan) {
            Ok(n) => n,
            Err(e) => {
                self.find(
                    vol_path,
                    fan_name,
                    Problem::Unreadable(e),
                    Repair::None,
                    None,
                );
                return;
            }
        };
        for name in entries {
            let Ok(st) = stat(&fan, &name) else {
                continue;
            };
            if file_type(&st) != SFlag::S_IFREG {
                let problem = if file_type(&st) == SFlag::S_IFLNK {
                    Problem::Symlink("data files")
                } else {
                    Problem::WrongType(kind_name(&st), "data files")
                };
                self.find(&here, &name, problem, Repair::Bury, Some(st.st_ino));
                continue;
            }
            let (obj, problems) = self.object(&fan, volume, index, &here, &name, &st, info);
            for p in problems {
                let repair = if matches!(p, Problem::Unreadable(_)) {
                    Repair::None
                } else {
                    Repair::Bury
                };
                self.find(&here, &name, p, repair, Some(st.st_ino));
            }
            let u = &mut info.usage;
            u.objects += 1;
            u.object_bytes = u.object_bytes.saturating_add(obj.object_size.unwrap_or(0));
            u.allocated_bytes = u.allocated_bytes.saturating_add(obj.allocated);
            if self.keep.objects {
                info.objects.push(obj);
            }
        }
    }

    /// One regular file in a fanout: what it is and what is wrong with it.
    #[allow(clippy::too_many_arguments)]
    fn object(
        &self,
        fan: &Dir,
        volume: &VolumeName,
        index: u8,
        here: &[Name],
        name: &Name,
        st: &FileStat,
        info: &VolumeInfo,
    ) -> (ObjectInfo, Vec<Problem>) {
        let mut obj = ObjectInfo {
            volume: info.volume.clone(),
            path: here
                .iter()
                .chain([name])
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join("/"),
            name: String::from_utf8_lossy(name).into_owned(),
            key: None,
            encoding: None,
            object_size: None,
            content: None,
            file_size: st.st_size as u64,
            allocated: (st.st_blocks as u64).saturating_mul(512),
            atime: st.st_atime,
        };
        let mut problems = Vec::new();
        match ObjectName::parse(name) {
            Ok(o) => {
                obj.key = Some(show_bytes(o.key()));
                obj.encoding = Some(o.encoding());
                let want = layout::fanout(volume.key(), o.key());
                if want != index {
                    problems.push(Problem::WrongFanout(want));
                }
            }
            Err(BadName::Object(e)) => problems.push(Problem::BadObjectName(e)),
            // Any other refusal (too long, ...) is a name the kernel does not make either.
            Err(_) => problems.push(Problem::StrayName),
        }
        match read_object_xattr(fan, name, st) {
            Ok(Some(bytes)) => match ObjectXattr::decode(&bytes) {
                Ok(x) => {
                    obj.object_size = Some(x.object_size);
                    obj.content = Some(x.content);
                    check_object_xattr(&x, obj.file_size, &mut problems);
                }
                Err(e) => problems.push(Problem::ObjectXattrBad(e.to_string())),
            },
            Ok(None) => problems.push(Problem::ObjectXattrMissing),
            Err(e) => problems.push(Problem::Unreadable(e)),
        }
        (obj, problems)
    }
}

/// What the kernel would refuse in a decoded object xattr: not data, dirty or unknown content,
/// or a file longer than the object size rounded up as the kernel does.
fn check_object_xattr(x: &ObjectXattr, file_size: u64, problems: &mut Vec<Problem>) {
    if x.kind != layout::TYPE_DATA {
        problems.push(Problem::ObjectXattrBad(format!(
            "type {} is not data (1)",
            x.kind
        )));
    }
    match x.content {
        Content::Dirty => problems.push(Problem::ObjectXattrBad(
            "content is dirty (the kernel discards such an object)".into(),
        )),
        Content::Unknown(n) => problems.push(Problem::ObjectXattrBad(format!(
            "unknown content state {n}"
        ))),
        _ => {}
    }
    if file_size > layout::round_up_dio(x.object_size) {
        problems.push(Problem::SizeMismatch {
            file: file_size,
            object: x.object_size,
        });
    }
}

/// Opens the object without following links or blocking (a fifo swapped in meanwhile), checks
/// it is still the file that was stat'ed, and reads its xattr. Opening does not touch atime.
fn read_object_xattr(fan: &Dir, name: &Name, st: &FileStat) -> Result<Option<Vec<u8>>, Errno> {
    let file = open_file(fan, name, OFlags::RDONLY)?;
    let now = nix::sys::stat::fstat(file.as_raw_fd())?;
    if now.st_ino != st.st_ino || file_type(&now) != SFlag::S_IFREG {
        return Err(Errno::ESTALE);
    }
    xattr::get(&file)
}

/// Walks the cache (only volume `volume` if given; the graveyard is then skipped).
pub fn walk(root: &CacheDir, volume: Option<&VolumeName>, keep: Keep) -> Result<Survey, ToolError> {
    let mut w = Walker {
        root,
        keep,
        survey: Survey::default(),
    };
    w.walk(volume)?;
    Ok(w.survey)
}

/// Per-volume totals. The byte sums saturate at `u64::MAX` (16 EiB) instead of wrapping:
/// object sizes come from xattrs anyone who can write the cache can set.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Usage {
    pub volume: String,
    pub objects: u64,
    /// Sum of the object sizes recorded in the xattrs.
    pub object_bytes: u64,
    pub allocated_bytes: u64,
}

/// `du`: totals per volume and over all, from a walk that keeps no per-object records.
pub fn usage(root: &CacheDir) -> Result<(Vec<Usage>, Usage), ToolError> {
    let survey = walk(root, None, Keep::TOTALS)?;
    let mut total = Usage {
        volume: "total".into(),
        ..Usage::default()
    };
    let per: Vec<Usage> = survey.volumes.into_iter().map(|v| v.usage).collect();
    for u in &per {
        total.objects = total.objects.saturating_add(u.objects);
        total.object_bytes = total.object_bytes.saturating_add(u.object_bytes);
        total.allocated_bytes = total.allocated_bytes.saturating_add(u.allocated_bytes);
    }
    Ok((per, total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// `du` used ~1 KB per object: the totals walk must keep no per-object record.
    #[test]
    fn the_totals_walk_keeps_nothing_per_object() {
        let t = tempfile::tempdir().unwrap();
        let vol = t.path().join("cache/Ierofs,v");
        let mut fanouts = std::collections::BTreeSet::new();
        for i in 0..50 {
            let key = format!("obj{i}");
            let fan = layout::fanout_name(layout::fanout(b"erofs,v", key.as_bytes()));
            fs::create_dir_all(vol.join(&fan)).unwrap();
            fs::write(vol.join(&fan).join(format!("D{key}")), b"x").unwrap();
            fanouts.insert(fan);
        }
        let root = CacheDir::open(t.path()).unwrap();
        let s = walk(&root, None, Keep::TOTALS).unwrap();
        assert_eq!(s.volumes.len(), 1);
        assert!(s.volumes[0].objects.is_empty());
        assert!(s.findings.is_empty());
        assert_eq!(s.volumes[0].usage.objects, 50);
        let (per, total) = usage(&root).unwrap();
        assert_eq!((per.len(), total.objects), (1, 50));
        let ls = walk(&root, None, Keep::LS).unwrap();
        assert_eq!(ls.volumes[0].objects.len(), 50);
        assert!(ls.findings.is_empty());
        // Each object lacks its xattr, the volume its xattr and some fanouts, no graveyard/.
        let check = walk(&root, None, Keep::CHECK).unwrap();
        assert!(check.volumes[0].objects.is_empty());
        assert!(fanouts.len() < 256);
        assert_eq!(check.findings.len(), 53);
    }
}
