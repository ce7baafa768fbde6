//! fanotify events and responses, mirroring include/uapi/linux/fanotify.h (pre-content groups).
//!
//! One read() of a fanotify group returns whole events back to back; each is a
//! `fanotify_event_metadata` followed by info records. Decoding checks every length against
//! the bytes actually read and salvages the event's fd whenever its header is readable, so the
//! caller can still answer (and close) an event whose info records are damaged. The structs
//! are in the host's byte order, as the kernel writes them.

use zerocopy::native_endian::{I32, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `FANOTIFY_METADATA_VERSION`: the only layout this decoder knows.
pub const METADATA_VERSION: u8 = 3;
/// `FAN_PRE_ACCESS`: a read (or write, truncate, fallocate) of a marked file is about to see
/// its content. Only pre-content groups get it; since 6.14.
pub const FAN_PRE_ACCESS: u64 = 0x0010_0000;
/// `FAN_Q_OVERFLOW`: events were lost (never a permission event: those are not dropped).
pub const FAN_Q_OVERFLOW: u64 = 0x0000_4000;
/// `FAN_EVENT_INFO_TYPE_RANGE`: the byte range a pre-content event is about.
pub const INFO_TYPE_RANGE: u8 = 6;
/// `FAN_NOFD`: an event without a file (a queue overflow).
pub const FAN_NOFD: i32 = -1;

pub const FAN_ALLOW: u32 = 0x01;
pub const FAN_DENY: u32 = 0x02;
const ERRNO_SHIFT: u32 = 24;

/// `struct fanotify_event_metadata`
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct EventMetadata {
    pub event_len: U32,
    pub vers: u8,
    pub reserved: u8,
    pub metadata_len: U16,
    pub mask: U64,
    pub fd: I32,
    pub pid: I32,
}

/// `struct fanotify_event_info_header`
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct InfoHeader {
    pub info_type: u8,
    pub pad: u8,
    pub len: U16,
}

/// `struct fanotify_event_info_range`
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct InfoRange {
    pub hdr: InfoHeader,
    pub pad: U32,
    pub offset: U64,
    pub count: U64,
}

/// `struct fanotify_response`, written to the group fd to answer a permission event.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct Response {
    pub fd: I32,
    pub response: U32,
}

/// How a permission event is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// `FAN_DENY_ERRNO(errno)`: the reader's call fails with this errno. The kernel accepts
    /// only EIO, EPERM, EBUSY, ETXTBSY, EAGAIN, ENOSPC and EDQUOT (and 0, a plain deny).
    Deny(u8),
}

impl Response {
    pub fn new(fd: i32, verdict: Verdict) -> Response {
        let response = match verdict {
            Verdict::Allow => FAN_ALLOW,
            Verdict::Deny(errno) => FAN_DENY | (u32::from(errno) << ERRNO_SHIFT),
        };
        Response {
            fd: I32::new(fd),
            response: U32::new(response),
        }
    }
}

/// The byte range of a pre-content event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub offset: u64,
    pub count: u64,
}

/// One decoded event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub mask: u64,
    /// An fd of the file, installed in our fd table for this event (`FAN_NOFD` for none): the
    /// caller owns it, and for a permission event it is also the event's name in the response.
    pub fd: i32,
    pub pid: i32,
    /// `None` when the kernel sent no range record (it sends none when the access has no
    /// range, e.g. an open for write of a pre-content watched file).
    pub range: Option<Range>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeErrorKind {
    /// The rest of the buffer cannot be framed into events: nothing after it is trusted.
    #[error("{0} bytes left, shorter than an event header")]
    ShortHeader(usize),
    #[error("event_len {event_len} with {left} bytes left")]
    EventLen { event_len: u32, left: usize },
    #[error("metadata version {0}, expected {METADATA_VERSION}")]
    Version(u8),
    #[error("metadata_len {metadata_len} does not fit event_len {event_len}")]
    MetadataLen { metadata_len: u16, event_len: u32 },
    #[error("info record at {at}: length {len} with {left} bytes left")]
    InfoLen { at: usize, len: u16, left: usize },
    #[error("range record of {0} bytes")]
    RangeLen(u16),
    #[error("two range records")]
    TwoRanges,
    #[error("range {offset}+{count} overflows")]
    RangeOverflow { offset: u64, count: u64 },
}

/// An event that could not be decoded, with its fd when its header was readable, so that the
/// caller can deny it (a permission event waits until answered) and close the fd.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub fd: Option<i32>,
    pub mask: Option<u64>,
}

impl DecodeError {
    /// Whether the events after this one can still be framed.
    pub fn ends_buffer(&self) -> bool {
        matches!(
            self.kind,
            DecodeErrorKind::ShortHeader(_)
                | DecodeErrorKind::EventLen { .. }
                | DecodeErrorKind::Version(_)
        )
    }
}

/// Iterates over the events of one read(): an error that `ends_buffer` is the last item.
pub fn events(buf: &[u8]) -> Events<'_> {
    Events { rest: buf }
}

pub struct Events<'a> {
    rest: &'a [u8],
}

impl Iterator for Events<'_> {
    type Item = Result<Event, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let (result, used) = decode_one(self.rest);
        self.rest = &self.rest[used.min(self.rest.len())..];
        Some(result)
    }
}

/// Decodes the event at the head of `buf`; returns it and how many bytes it took (all of
/// `buf` when the rest cannot be framed).
fn decode_one(buf: &[u8]) -> (Result<Event, DecodeError>, usize) {
    let mut err = DecodeError {
        kind: DecodeErrorKind::ShortHeader(buf.len()),
        fd: None,
        mask: None,
    };
    let Ok((meta, _)) = EventMetadata::read_from_prefix(buf) else {
        return (Err(err), buf.len());
    };
    let event_len = meta.event_len.get();
    let header_len = std::mem::size_of::<EventMetadata>();
    if (event_len as usize) < header_len || event_len as usize > buf.len() {
        err.kind = DecodeErrorKind::EventLen {
            event_len,
            left: buf.len(),
        };
        return (Err(err), buf.len());
    }
    if meta.vers != METADATA_VERSION {
        // Another layout: not even the fd's place is known.
        err.kind = DecodeErrorKind::Version(meta.vers);
        return (Err(err), buf.len());
    }
    let used = event_len as usize;
    let fd = meta.fd.get();
    let mask = meta.mask.get();
    // From here the event is framed and its fd known: it can be answered whatever follows.
    err.fd = (fd != FAN_NOFD).then_some(fd);
    err.mask = Some(mask);
    let metadata_len = meta.metadata_len.get();
    if (metadata_len as usize) < header_len || u32::from(metadata_len) > event_len {
        err.kind = DecodeErrorKind::MetadataLen {
            metadata_len,
            event_len,
        };
        return (Err(err), used);
    }
    match decode_range(&buf[metadata_len as usize..used], metadata_len as usize) {
        Ok(range) => (
            Ok(Event {
                mask,
                fd,
                pid: meta.pid.get(),
                range,
            }),
            used,
        ),
        Err(kind) => {
            err.kind = kind;
            (Err(err), used)
        }
    }
}

/// Walks the info records (`at` is their offset in the event, for errors); records of other
/// types are skipped.
fn decode_range(mut info: &[u8], mut at: usize) -> Result<Option<Range>, DecodeErrorKind> {
    let mut range = None;
    while !info.is_empty() {
        let left = info.len();
        let Ok((hdr, _)) = InfoHeader::read_from_prefix(info) else {
            return Err(DecodeErrorKind::InfoLen { at, len: 0, left });
        };
        let len = hdr.len.get();
        if (len as usize) < std::mem::size_of::<InfoHeader>() || len as usize > left {
            return Err(DecodeErrorKind::InfoLen { at, len, left });
        }
        let (record, rest) = info.split_at(len as usize);
        if hdr.info_type == INFO_TYPE_RANGE {
            let Ok(r) = InfoRange::read_from_bytes(record) else {
                return Err(DecodeErrorKind::RangeLen(len));
            };
            if range.is_some() {
                return Err(DecodeErrorKind::TwoRanges);
            }
            let (offset, count) = (r.offset.get(), r.count.get());
            if offset.checked_add(count).is_none() {
                return Err(DecodeErrorKind::RangeOverflow { offset, count });
            }
            range = Some(Range { offset, count });
        }
        info = rest;
        at += len as usize;
    }
    Ok(range)
}

/// Encodes one pre-content event as the kernel would (for tests and fuzz seeds).
pub fn encode_event(mask: u64, fd: i32, pid: i32, range: Option<Range>) -> Vec<u8> {
    let range_len = range.map_or(0, |_| std::mem::size_of::<InfoRange>());
    let event_len = std::mem::size_of::<EventMetadata>() + range_len;
    let meta = EventMetadata {
        event_len: U32::new(event_len as u32),
        vers: METADATA_VERSION,
        reserved: 0,
        metadata_len: U16::new(std::mem::size_of::<EventMetadata>() as u16),
        mask: U64::new(mask),
        fd: I32::new(fd),
        pid: I32::new(pid),
    };
    let mut out = meta.as_bytes().to_vec();
    if let Some(r) = range {
        let info = InfoRange {
            hdr: InfoHeader {
                info_type: INFO_TYPE_RANGE,
                pad: 0,
                len: U16::new(std::mem::size_of::<InfoRange>() as u16),
            },
            pad: U32::new(0),
            offset: U64::new(r.offset),
            count: U64::new(r.count),
        };
        out.extend_from_slice(info.as_bytes());
    }
    out
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;

    /// A FAN_PRE_ACCESS event for fd 7, pid 0x1234, range 4096+8192, byte for byte as 7.3
    /// writes it on x86-64 (metadata 24 bytes, range record 24 bytes).
    const GOLDEN: [u8; 48] = [
        48, 0, 0, 0, // event_len
        3, 0, // vers, reserved
        24, 0, // metadata_len
        0, 0, 0x10, 0, 0, 0, 0, 0, // mask FAN_PRE_ACCESS
        7, 0, 0, 0, // fd
        0x34, 0x12, 0, 0, // pid
        6, 0, 24, 0, // info_type RANGE, pad, len
        0, 0, 0, 0, // pad
        0, 0x10, 0, 0, 0, 0, 0, 0, // offset 4096
        0, 0x20, 0, 0, 0, 0, 0, 0, // count 8192
    ];

    #[test]
    fn golden_event_decodes_and_encodes() {
        let range = Some(Range {
            offset: 4096,
            count: 8192,
        });
        let want = Event {
            mask: FAN_PRE_ACCESS,
            fd: 7,
            pid: 0x1234,
            range,
        };
        let got: Vec<_> = events(&GOLDEN).collect();
        assert_eq!(got, vec![Ok(want)]);
        assert_eq!(encode_event(FAN_PRE_ACCESS, 7, 0x1234, range), GOLDEN);
    }

    #[test]
    fn golden_responses() {
        assert_eq!(
            Response::new(7, Verdict::Allow).as_bytes(),
            [7, 0, 0, 0, 1, 0, 0, 0]
        );
        // FAN_DENY_ERRNO(EIO) = FAN_DENY | 5 << 24
        assert_eq!(
            Response::new(9, Verdict::Deny(5)).as_bytes(),
            [9, 0, 0, 0, 2, 0, 0, 5]
        );
    }

    #[test]
    fn back_to_back_events_and_unknown_records() {
        let mut buf = encode_event(FAN_PRE_ACCESS, 3, 1, None);
        // An event with an unknown record (type 99, 8 bytes) before its range.
        let mut second = encode_event(
            FAN_PRE_ACCESS,
            4,
            2,
            Some(Range {
                offset: 0,
                count: 1,
            }),
        );
        second.splice(24..24, [99, 0, 8, 0, 0xaa, 0xbb, 0xcc, 0xdd]);
        second[0] += 8;
        buf.extend_from_slice(&second);
        let got: Vec<_> = events(&buf).map(|e| e.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].fd, got[0].range), (3, None));
        assert_eq!(
            (got[1].fd, got[1].range),
            (
                4,
                Some(Range {
                    offset: 0,
                    count: 1
                })
            )
        );
    }

    #[test]
    fn a_damaged_record_keeps_the_fd_and_the_next_event() {
        let mut bad = GOLDEN.to_vec();
        bad[26] = 16; // range record says 16 bytes: too short for a range
        bad.extend_from_slice(&encode_event(FAN_PRE_ACCESS, 8, 1, None));
        let got: Vec<_> = events(&bad).collect();
        assert_eq!(got.len(), 2);
        let err = got[0].as_ref().unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::RangeLen(16));
        assert_eq!(err.fd, Some(7));
        assert!(!err.ends_buffer());
        assert_eq!(got[1].as_ref().unwrap().fd, 8);

        let mut two = GOLDEN.to_vec();
        two.extend_from_slice(&GOLDEN[24..]);
        two[0] = 72;
        let err = events(&two).next().unwrap().unwrap_err();
        assert_eq!((err.kind, err.fd), (DecodeErrorKind::TwoRanges, Some(7)));

        let mut overflow = GOLDEN.to_vec();
        overflow[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = events(&overflow).next().unwrap().unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::RangeOverflow { .. }));
        assert_eq!(err.fd, Some(7));
    }

    #[test]
    fn framing_errors_end_the_buffer() {
        let got: Vec<_> = events(&GOLDEN[..20]).collect();
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().unwrap_err().ends_buffer());

        let mut long = GOLDEN.to_vec();
        long[0] = 200;
        let err = events(&long).next().unwrap().unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::EventLen { .. }));
        assert_eq!(err.fd, None, "an unframed event's fd is not trusted");
        assert_eq!(events(&long).count(), 1);

        let mut vers = GOLDEN.to_vec();
        vers[4] = 4;
        let err = events(&vers).next().unwrap().unwrap_err();
        assert_eq!(err.kind, DecodeErrorKind::Version(4));

        let mut meta = GOLDEN.to_vec();
        meta[6] = 60; // metadata_len past event_len
        let err = events(&meta).next().unwrap().unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::MetadataLen { .. }));
        assert_eq!(err.fd, Some(7));

        let mut zero = GOLDEN.to_vec();
        zero[26] = 0; // a zero-length record would loop forever if accepted
        let err = events(&zero).next().unwrap().unwrap_err();
        assert!(matches!(err.kind, DecodeErrorKind::InfoLen { len: 0, .. }));
    }
}
