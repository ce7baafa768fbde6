//! The fanotify front end's record of what a worker has in flight, for its successor: the
//! blobs attached and the events read but not yet answered (event fd number, blob, range).
//!
//! The kernel matches a response to a pending permission event by the event's fd number only
//! (`process_access_response` walks the group's access list for `event->fd`), and a pending
//! event outlives the process that read it as long as the group stays open (our supervisor or
//! systemd's fd store holds it). So a successor that knows the number, the blob and the range
//! can fill the range and answer `FAN_ALLOW`, and the reader blocked at the crash gets the
//! right bytes. The record lives in the runtime directory (kept across a restart), written
//! whole on every change (`pwrite` of the text, then `ftruncate`); it ends with `end`, so a
//! record cut short is recognised. Its contents are outside input to the successor: parsed
//! with bounds, every name validated as `attach` validates it.
//!
//! ```text
//! cachefilesd fanotify in-flight 1
//! new                     (only from the process that made the group: no event read yet)
//! blob DOMAIN FSID
//! event FD OFFSET COUNT DOMAIN FSID
//! end
//! ```

use super::fanotify::BlobKey;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Next to `bound.conf`, in the directory systemd keeps across a restart.
pub const INFLIGHT_PATH: &str = "/run/cachefilesd/fanotify-inflight";

const HEADER: &str = "cachefilesd fanotify in-flight 1";

/// A record larger than this is not ours: refused whole (a worker has at most a few thousand
/// events in flight, ~60 bytes each).
pub const MAX_RECORD: u64 = 4 << 20;

/// Event fd numbers above this are refused: no process of ours has so many fds open.
pub const MAX_FD: i32 = 1 << 24;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("larger than {MAX_RECORD} bytes")]
    TooLarge,
    #[error("not valid UTF-8")]
    NotText,
    #[error("no `{HEADER}` header")]
    Header,
    #[error("line {0}: {1}")]
    Line(usize, String),
    #[error("cut short (no `end` line)")]
    Truncated,
    #[error("line {0}: event fd {1} is recorded twice")]
    Duplicate(usize, i32),
}

/// One event read and not yet answered: fill `[offset, offset+count)` of `blob`, then allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub blob: BlobKey,
    pub offset: u64,
    pub count: u64,
}

/// What a record says: the blobs attached and the events in flight, by fd number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// Written by the process that made the group and reads none of its events (the
    /// supervisor): nobody can owe an event yet, so a successor has nothing to sweep.
    pub unread: bool,
    pub blobs: BTreeSet<BlobKey>,
    pub events: BTreeMap<i32, Pending>,
}

impl Record {
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(64 * (1 + self.blobs.len() + self.events.len()));
        s.push_str(HEADER);
        s.push('\n');
        if self.unread {
            s.push_str("new\n");
        }
        for b in &self.blobs {
            s.push_str(&format!("blob {} {}\n", b.domain(), b.fsid()));
        }
        for (fd, p) in &self.events {
            s.push_str(&format!(
                "event {fd} {} {} {} {}\n",
                p.offset,
                p.count,
                p.blob.domain(),
                p.blob.fsid()
            ));
        }
        s.push_str("end\n");
        s
    }

    /// Parses a record; anything not exactly as `render` writes it is an error (the caller
    /// then trusts none of it).
    pub fn parse(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() as u64 > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RecordError::NotText)?;
        let mut lines = text.split('\n').enumerate().map(|(i, l)| (i + 1, l));
        if lines.next().map(|(_, l)| l) != Some(HEADER) {
            return Err(RecordError::Header);
        }
        let mut record = Record::default();
        for (n, line) in lines {
            let bad = |what: &str| RecordError::Line(n, what.to_owned());
            let words: Vec<&str> = line.split(' ').collect();
            match words.as_slice() {
                ["end"] => return Ok(record),
                ["new"] if n == 2 => record.unread = true,
                ["blob", domain, fsid] => {
                    record
                        .blobs
                        .insert(BlobKey::new(Some(domain), fsid).map_err(|e| bad(&e))?);
                }
                ["event", fd, offset, count, domain, fsid] => {
                    let fd: i32 = number(fd).ok_or_else(|| bad("bad fd number"))?;
                    if !(0..=MAX_FD).contains(&fd) {
                        return Err(bad("fd number out of range"));
                    }
                    let offset: u64 = number(offset).ok_or_else(|| bad("bad offset"))?;
                    let count: u64 = number(count).ok_or_else(|| bad("bad count"))?;
                    if count == 0
                        || offset
                            .checked_add(count)
                            .is_none_or(|e| e > i64::MAX as u64)
                    {
                        return Err(bad("bad range"));
                    }
                    let blob = BlobKey::new(Some(domain), fsid).map_err(|e| bad(&e))?;
                    let pending = Pending {
                        blob,
                        offset,
                        count,
                    };
                    if record.events.insert(fd, pending).is_some() {
                        return Err(RecordError::Duplicate(n, fd));
                    }
                }
                _ => return Err(bad("not a blob, event or end line")),
            }
        }
        Err(RecordError::Truncated)
    }
}

/// Decimal digits only (no sign, no spaces), at most 20 of them.
fn number<T: std::str::FromStr>(s: &str) -> Option<T> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads the record at `path`: `None` when there is none; an unreadable or invalid one is
/// logged and trusted in nothing.
pub fn load(path: &Path) -> Option<Record> {
    let bytes = match crate::rundir::read(path, MAX_RECORD) {
        Ok(bytes) => bytes?,
        Err(e) => {
            log::warn!("{}: {e}: no in-flight event is recovered", path.display());
            return Some(Record::default());
        }
    };
    match Record::parse(&bytes) {
        Ok(r) => Some(r),
        Err(e) => {
            log::warn!("{}: {e}: no in-flight event is recovered", path.display());
            Some(Record::default())
        }
    }
}

/// Keeps the record on disk in step with the worker.
pub struct Writer {
    path: PathBuf,
    file: std::fs::File,
    pub record: Record,
}

impl Writer {
    /// Starts the record at `path` with `record` (what a successor still owes), replacing
    /// what was there.
    pub fn create(path: &Path, record: Record) -> std::io::Result<Writer> {
        crate::rundir::create_parent(path)?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::fcntl::OFlag::O_NOFOLLOW.bits())
            .open(path)?;
        let mut w = Writer {
            path: path.to_owned(),
            file,
            record,
        };
        w.save();
        Ok(w)
    }

    /// Writes the record whole: the new text over the old, then cut to its length. A crash
    /// between the two leaves the new text followed by old bytes after its `end`, which
    /// `parse` never reads.
    pub fn save(&mut self) {
        let text = self.record.render();
        let r = self
            .file
            .write_all_at(text.as_bytes(), 0)
            .and_then(|()| self.file.set_len(text.len() as u64));
        if let Err(e) = r {
            log::warn!(
                "{}: {e}: a successor cannot recover the events in flight",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(d: &str, f: &str) -> BlobKey {
        BlobKey::new(Some(d), f).unwrap()
    }

    fn sample() -> Record {
        let mut r = Record::default();
        r.blobs.insert(key("dom", "sha256:abc"));
        r.blobs.insert(key("img", "img"));
        r.events.insert(
            7,
            Pending {
                blob: key("img", "img"),
                offset: 4096,
                count: 131072,
            },
        );
        r.events.insert(
            12,
            Pending {
                blob: key("dom", "sha256:abc"),
                offset: 0,
                count: 1,
            },
        );
        r
    }

    #[test]
    fn a_rendered_record_parses_back() {
        let r = sample();
        let text = r.render();
        assert_eq!(
            text,
            "cachefilesd fanotify in-flight 1\nblob dom sha256:abc\nblob img img\n\
             event 7 4096 131072 img img\nevent 12 0 1 dom sha256:abc\nend\n"
        );
        assert_eq!(Record::parse(text.as_bytes()).unwrap(), r);
        assert_eq!(
            Record::parse(Record::default().render().as_bytes()).unwrap(),
            Record::default()
        );
    }

    #[test]
    fn a_record_of_a_group_nobody_read_says_so() {
        let r = Record {
            unread: true,
            ..Record::default()
        };
        assert_eq!(r.render(), "cachefilesd fanotify in-flight 1\nnew\nend\n");
        assert_eq!(Record::parse(r.render().as_bytes()).unwrap(), r);
    }

    #[test]
    fn old_bytes_after_end_are_not_read() {
        let mut text = sample().render();
        text.push_str("event 9 0 4096 img img\ngarbage\n");
        assert_eq!(Record::parse(text.as_bytes()).unwrap(), sample());
    }

    #[test]
    fn hostile_records_are_refused() {
        let h = "cachefilesd fanotify in-flight 1\n";
        let cases: &[(&str, &str)] = &[
            ("!", "empty"),
            ("!cachefilesd fanotify in-flight 2\nend\n", "other version"),
            ("!blob a b\nend\n", "no header line"),
            ("blob a b\n", "no end"),
            ("blob a b\nevent 7 0 4096 a b", "cut mid-record"),
            ("blob ../etc passwd\nend\n", "path in a name"),
            ("blob a/b c\nend\n", "slash in a name"),
            ("blob a\nend\n", "missing fsid"),
            ("blob a b c\nend\n", "extra word"),
            ("blob  a b\nend\n", "double space"),
            ("event -1 0 4096 a b\nend\n", "negative fd"),
            ("event +7 0 4096 a b\nend\n", "signed fd"),
            ("event 16777217 0 4096 a b\nend\n", "fd too large"),
            (
                "event 99999999999999999999999 0 1 a b\nend\n",
                "fd overflows",
            ),
            ("event 7 0 0 a b\nend\n", "empty range"),
            (
                "event 7 18446744073709551615 1 a b\nend\n",
                "range overflows",
            ),
            ("event 7 9223372036854775807 1 a b\nend\n", "past i64"),
            ("event 7 0x10 1 a b\nend\n", "hex offset"),
            (
                "event 7 0 4096 a b\nevent 7 8192 4096 a b\nend\n",
                "fd twice",
            ),
            ("event 7 0 4096 a\nend\n", "missing fsid"),
            ("cull a b\nend\n", "unknown keyword"),
            ("\nend\n", "empty line"),
            ("end \n", "trailing space"),
            ("blob a b\nnew\nend\n", "new after a blob"),
        ];
        for (body, why) in cases {
            // `!`: the text as is, without the header.
            let text = if let Some(raw) = body.strip_prefix('!') {
                raw.to_string()
            } else {
                format!("{h}{body}")
            };
            assert!(
                Record::parse(text.as_bytes()).is_err(),
                "{why}: {text:?} was accepted"
            );
        }
        let mut not_utf8 = h.as_bytes().to_vec();
        not_utf8.extend_from_slice(b"blob \xff b\nend\n");
        assert_eq!(Record::parse(&not_utf8), Err(RecordError::NotText));
        let mut huge = h.as_bytes().to_vec();
        huge.resize(MAX_RECORD as usize + 1, b'\n');
        assert_eq!(Record::parse(&huge), Err(RecordError::TooLarge));
    }

    #[test]
    fn the_writer_keeps_the_file_in_step_and_load_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run/inflight");
        assert_eq!(load(&path), None);
        let mut w = Writer::create(&path, sample()).unwrap();
        assert_eq!(load(&path), Some(sample()));
        w.record.events.clear();
        w.save();
        let mut want = sample();
        want.events.clear();
        assert_eq!(load(&path), Some(want));
        // Garbage trusts nothing, but says a record was there.
        std::fs::write(&path, b"event 7 0 4096 a b\n").unwrap();
        assert_eq!(load(&path), Some(Record::default()));
        // A symlink is never followed.
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(load(&link), Some(Record::default()));
    }
}
