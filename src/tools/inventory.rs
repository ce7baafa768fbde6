//! One walk over a cache tree that both lists what is there (`ls`, `du`) and records
//! everything the kernel would not have made or would refuse (`check`). Read-only.

use super::sys::{get_xattr, openat_file};
use super::{show_bytes, CacheRoot, ToolError};
use crate::cull::tree::{file_type, open_dir_at, stat_at};
use crate::layout::{
    self, Content, DecodedName, ObjectXattr, VolumeXattr, CACHE_DIR, GRAVEYARD_DIR,
};
use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{FileStat, Mode, SFlag};
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
    pub objects: Vec<ObjectInfo>,
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
    pub path: Vec<Vec<u8>>,
    pub problem: Problem,
    pub repair: Repair,
    /// The inode found, so a repair can tell the entry was not replaced meanwhile.
    pub ino: Option<u64>,
}

impl Finding {
    pub fn show(&self) -> String {
        self.path
            .iter()
            .map(|c| String::from_utf8_lossy(c))
            .collect::<Vec<_>>()
            .join("/")
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

struct Walker<'a> {
    root: &'a CacheRoot,
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

fn names(dir: &mut Dir) -> Result<Vec<Vec<u8>>, Errno> {
    let mut out = Vec::new();
    for e in dir.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    out.sort();
    Ok(out)
}

fn path_of(parent: &[&[u8]], name: &[u8]) -> Vec<Vec<u8>> {
    let mut p: Vec<Vec<u8>> = parent.iter().map(|c| c.to_vec()).collect();
    p.push(name.to_vec());
    p
}

impl Walker<'_> {
    fn find(
        &mut self,
        parent: &[&[u8]],
        name: &[u8],
        problem: Problem,
        repair: Repair,
        ino: Option<u64>,
    ) {
        self.survey.findings.push(Finding {
            path: path_of(parent, name),
            problem,
            repair,
            ino,
        });
    }

    /// A non-directory or symlink where a directory belongs.
    fn not_a_dir(&mut self, parent: &[&[u8]], name: &[u8], st: &FileStat, expected: &'static str) {
        let problem = if file_type(st) == SFlag::S_IFLNK {
            Problem::Symlink(expected)
        } else {
            Problem::WrongType(kind_name(st), expected)
        };
        self.find(parent, name, problem, Repair::Bury, Some(st.st_ino));
    }

    fn walk(&mut self, volume_filter: Option<&[u8]>) -> Result<(), ToolError> {
        let root = self.root;
        let cache = CACHE_DIR.as_bytes();
        match stat_at(&root.dir, cache) {
            Err(Errno::ENOENT) => self.find(
                &[],
                cache,
                Problem::Missing("no cache/ (the kernel makes it at bind)"),
                Repair::None,
                None,
            ),
            Err(e) => return Err(ToolError::os("cannot stat", root.show(&[cache]), e)),
            Ok(st) if file_type(&st) != SFlag::S_IFDIR => {
                self.not_a_dir(&[], cache, &st, "the cache directory")
            }
            Ok(_) => {
                let mut dir = open_dir_at(&root.dir, cache)
                    .map_err(|e| ToolError::os("cannot open", root.show(&[cache]), e))?;
                let entries = names(&mut dir)
                    .map_err(|e| ToolError::os("cannot read", root.show(&[cache]), e))?;
                for name in entries {
                    if volume_filter
                        .is_some_and(|v| layout::parse_volume_dir_name(&name) != Some(v))
                    {
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
        let g = GRAVEYARD_DIR.as_bytes();
        match stat_at(&self.root.dir, g) {
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
            Ok(st) => match open_dir_at(&self.root.dir, g).and_then(|mut d| names(&mut d)) {
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

    fn volume(&mut self, cache: &Dir, name: &[u8]) {
        let parent: &[&[u8]] = &[CACHE_DIR.as_bytes()];
        let st = match stat_at(cache, name) {
            Ok(st) => st,
            Err(_) => return, // vanished while listing
        };
        let Some(key) = layout::parse_volume_dir_name(name) else {
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
        let mut dir = match open_dir_at(cache, name) {
            Ok(d) => d,
            Err(e) => {
                self.find(parent, name, Problem::Unreadable(e), Repair::None, None);
                return;
            }
        };
        match get_xattr(&dir, layout::XATTR_NAME) {
            Ok(None) => self.find(
                parent,
                name,
                Problem::VolumeXattrMissing,
                Repair::Bury,
                Some(st.st_ino),
            ),
            Ok(Some(bytes)) => match VolumeXattr::decode(&bytes) {
                Err(e) => self.find(
                    parent,
                    name,
                    Problem::VolumeXattrBad(e.to_string()),
                    Repair::Bury,
                    Some(st.st_ino),
                ),
                Ok(x) if x.reserved != 0 => self.find(
                    parent,
                    name,
                    Problem::VolumeXattrBad(format!("reserved word is {:#x}, not 0", x.reserved)),
                    Repair::Bury,
                    Some(st.st_ino),
                ),
                // EROFS acquires its volumes without coherency data (fs/erofs/fscache.c).
                Ok(x) if key.starts_with(b"erofs,") && !x.coherency.is_empty() => self.find(
                    parent,
                    name,
                    Problem::VolumeXattrBad(format!(
                        "{} bytes of coherency data on an EROFS volume",
                        x.coherency.len()
                    )),
                    Repair::Bury,
                    Some(st.st_ino),
                ),
                Ok(_) => {}
            },
            Err(e) => self.find(parent, name, Problem::Unreadable(e), Repair::None, None),
        }
        let mut info = VolumeInfo {
            volume: show_bytes(key),
            path: format!("{CACHE_DIR}/{}", String::from_utf8_lossy(name)),
            fanouts: 0,
            objects: Vec::new(),
        };
        let here: &[&[u8]] = &[CACHE_DIR.as_bytes(), name];
        let entries = match names(&mut dir) {
            Ok(n) => n,
            Err(e) => {
                self.find(parent, name, Problem::Unreadable(e), Repair::None, None);
                return;
            }
        };
        for entry in entries {
            let Ok(est) = stat_at(&dir, &entry) else {
                continue;
            };
            let Some(index) = layout::parse_fanout_name(&entry) else {
                self.find(
                    here,
                    &entry,
                    Problem::StrayName,
                    Repair::Bury,
                    Some(est.st_ino),
                );
                continue;
            };
            if file_type(&est) != SFlag::S_IFDIR {
                self.not_a_dir(here, &entry, &est, "fanout directories");
                continue;
            }
            info.fanouts += 1;
            match open_dir_at(&dir, &entry) {
                Ok(fan) => self.fanout(fan, key, index, here, &entry, &mut info),
                Err(e) => self.find(here, &entry, Problem::Unreadable(e), Repair::None, None),
            }
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

    fn fanout(
        &mut self,
        mut fan: Dir,
        key: &[u8],
        index: u8,
        vol_path: &[&[u8]],
        fan_name: &[u8],
        info: &mut VolumeInfo,
    ) {
        let here: Vec<&[u8]> = vol_path.iter().copied().chain([fan_name]).collect();
        let entries = match names(&mut fan) {
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
            let Ok(st) = stat_at(&fan, &name) else {
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
            let decoded = layout::decode_name(&name);
            let mut obj = ObjectInfo {
                volume: info.volume.clone(),
                path: here
                    .iter()
                    .chain([&name[..]].iter())
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect::<Vec<_>>()
                    .join("/"),
                name: String::from_utf8_lossy(&name).into_owned(),
                key: None,
                encoding: None,
                object_size: None,
                content: None,
                file_size: st.st_size as u64,
                allocated: (st.st_blocks as u64).saturating_mul(512),
                atime: st.st_atime,
            };
            let mut problems = Vec::new();
            match &decoded {
                Ok(DecodedName { encoding, key: ck }) => {
                    obj.key = Some(show_bytes(ck));
                    obj.encoding = Some(*encoding);
                    let want = layout::fanout(key, ck);
                    if want != index {
                        problems.push(Problem::WrongFanout(want));
                    }
                }
                Err(e) => problems.push(Problem::BadObjectName(e.clone())),
            }
            match read_object_xattr(&fan, &name, &st) {
                Ok(Some(bytes)) => match ObjectXattr::decode(&bytes) {
                    Ok(x) => {
                        obj.object_size = Some(x.object_size);
                        obj.content = Some(x.content);
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
                        if obj.file_size > layout::round_up_dio(x.object_size) {
                            problems.push(Problem::SizeMismatch {
                                file: obj.file_size,
                                object: x.object_size,
                            });
                        }
                    }
                    Err(e) => problems.push(Problem::ObjectXattrBad(e.to_string())),
                },
                Ok(None) => problems.push(Problem::ObjectXattrMissing),
                Err(e) => problems.push(Problem::Unreadable(e)),
            }
            for p in problems {
                let repair = if matches!(p, Problem::Unreadable(_)) {
                    Repair::None
                } else {
                    Repair::Bury
                };
                self.find(&here, &name, p, repair, Some(st.st_ino));
            }
            info.objects.push(obj);
        }
    }
}

/// Opens the object without following links or blocking (a fifo swapped in meanwhile), checks
/// it is still the file that was stat'ed, and reads its xattr. Opening does not touch atime.
fn read_object_xattr(fan: &Dir, name: &[u8], st: &FileStat) -> Result<Option<Vec<u8>>, Errno> {
    let file = openat_file(
        &fan.as_raw_fd(),
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )?;
    let now = nix::sys::stat::fstat(file.as_raw_fd())?;
    if now.st_ino != st.st_ino || file_type(&now) != SFlag::S_IFREG {
        return Err(Errno::ESTALE);
    }
    get_xattr(&file, layout::XATTR_NAME)
}

/// Walks the cache (only volume `volume` if given; the graveyard is then skipped).
pub fn survey(root: &CacheRoot, volume: Option<&[u8]>) -> Result<Survey, ToolError> {
    let mut w = Walker {
        root,
        survey: Survey::default(),
    };
    w.walk(volume)?;
    Ok(w.survey)
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Usage {
    pub volume: String,
    pub objects: u64,
    /// Sum of the object sizes recorded in the xattrs.
    pub object_bytes: u64,
    pub allocated_bytes: u64,
}

pub fn usage(survey: &Survey) -> (Vec<Usage>, Usage) {
    let mut total = Usage {
        volume: "total".into(),
        ..Usage::default()
    };
    let per: Vec<Usage> = survey
        .volumes
        .iter()
        .map(|v| {
            let mut u = Usage {
                volume: v.volume.clone(),
                ..Usage::default()
            };
            for o in &v.objects {
                u.objects += 1;
                u.object_bytes += o.object_size.unwrap_or(0);
                u.allocated_bytes += o.allocated;
            }
            total.objects += u.objects;
            total.object_bytes += u.object_bytes;
            total.allocated_bytes += u.allocated_bytes;
            u
        })
        .collect();
    (per, total)
}
