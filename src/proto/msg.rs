//! On-demand requests (`bind ondemand`), mirroring include/uapi/linux/cachefiles.h.
//!
//! The kernel returns exactly one message per read(); `len` is the whole message. Decoding
//! checks every length and offset against the bytes actually read.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// `CACHEFILES_MSG_MAX_SIZE`: read buffers of this size always hold a whole message.
pub const MSG_MAX_SIZE: usize = 1024;

pub const OP_OPEN: u32 = 0;
pub const OP_CLOSE: u32 = 1;
pub const OP_READ: u32 = 2;

/// `struct cachefiles_msg`
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct MsgHeader {
    pub msg_id: U32,
    pub opcode: U32,
    pub len: U32,
    pub object_id: U32,
}

/// `struct cachefiles_open` (followed by the volume key with its NUL, then the cookie key)
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct OpenBody {
    pub volume_key_size: U32,
    pub cookie_key_size: U32,
    pub fd: U32,
    pub flags: U32,
}

/// `struct cachefiles_read`
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct ReadBody {
    pub off: U64,
    pub len: U64,
}

/// A decoded request. Keys borrow from the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Open {
        msg_id: u32,
        object_id: u32,
        /// Without the kernel's terminating NUL; for EROFS `erofs,<domain_id or fsid>`.
        volume_key: &'a [u8],
        /// Binary in general; for EROFS the fsid or blob tag.
        cookie_key: &'a [u8],
        /// A new anonymous fd already installed in our fd table: the caller owns it.
        fd: u32,
        flags: u32,
    },
    Close {
        msg_id: u32,
        object_id: u32,
    },
    Read {
        msg_id: u32,
        object_id: u32,
        off: u64,
        len: u64,
    },
}

impl Request<'_> {
    pub fn msg_id(&self) -> u32 {
        match self {
            Request::Open { msg_id, .. }
            | Request::Close { msg_id, .. }
            | Request::Read { msg_id, .. } => *msg_id,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeErrorKind {
    #[error("message shorter than its header ({0} bytes)")]
    ShortHeader(usize),
    #[error("header says {header} bytes but {read} were read")]
    LenMismatch { header: u32, read: usize },
    #[error("unknown opcode {0}")]
    UnknownOpcode(u32),
    #[error("{0} body truncated")]
    ShortBody(&'static str),
    #[error("key sizes {volume}+{cookie} do not fit the {available} bytes after the OPEN body")]
    KeySizes {
        volume: u32,
        cookie: u32,
        available: usize,
    },
    #[error("volume key is not NUL-terminated where its size says")]
    VolumeKeyNotTerminated,
    #[error("READ range {off}+{len} overflows")]
    ReadOverflow { off: u64, len: u64 },
}

/// A message that could not be decoded, with whatever could be salvaged so that the caller
/// can still answer the kernel (an OPEN's fd must be closed and its msg_id answered).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{kind}")]
pub struct DecodeError {
    pub kind: DecodeErrorKind,
    pub msg_id: Option<u32>,
    pub opcode: Option<u32>,
    pub object_id: Option<u32>,
    /// For an OPEN whose fixed body was readable: the fd the kernel installed.
    pub open_fd: Option<u32>,
}

/// Decodes one message from exactly the bytes that read() returned.
pub fn decode(buf: &[u8]) -> Result<Request<'_>, DecodeError> {
    let mut err = DecodeError {
        kind: DecodeErrorKind::ShortHeader(buf.len()),
        msg_id: None,
        opcode: None,
        object_id: None,
        open_fd: None,
    };
    let Ok((header, body)) = MsgHeader::ref_from_prefix(buf) else {
        return Err(err);
    };
    let msg_id = header.msg_id.get();
    let opcode = header.opcode.get();
    let object_id = header.object_id.get();
    err.msg_id = Some(msg_id);
    err.opcode = Some(opcode);
    err.object_id = Some(object_id);
    // For an OPEN the fd is salvaged before any other check can fail, so it is never leaked.
    if opcode == OP_OPEN {
        if let Ok((open, _)) = OpenBody::ref_from_prefix(body) {
            err.open_fd = Some(open.fd.get());
        }
    }
    let fail = |mut err: DecodeError, kind| {
        err.kind = kind;
        Err(err)
    };
    if header.len.get() as usize != buf.len() {
        return fail(
            err,
            DecodeErrorKind::LenMismatch {
                header: header.len.get(),
                read: buf.len(),
            },
        );
    }
    let decoded = match opcode {
        OP_OPEN => decode_open(msg_id, object_id, body),
        OP_CLOSE => Ok(Request::Close { msg_id, object_id }),
        OP_READ => decode_read(msg_id, object_id, body),
        other => Err(DecodeErrorKind::UnknownOpcode(other)),
    };
    decoded.or_else(|kind| fail(err, kind))
}

/// An OPEN's body: the fixed part, then the NUL-terminated volume key and the cookie key.
fn decode_open(msg_id: u32, object_id: u32, body: &[u8]) -> Result<Request<'_>, DecodeErrorKind> {
    let Ok((open, data)) = OpenBody::ref_from_prefix(body) else {
        return Err(DecodeErrorKind::ShortBody("OPEN"));
    };
    let volume = open.volume_key_size.get();
    let cookie = open.cookie_key_size.get();
    let key_sizes = DecodeErrorKind::KeySizes {
        volume,
        cookie,
        available: data.len(),
    };
    let total = (volume as usize).checked_add(cookie as usize);
    if volume == 0 || total.is_none_or(|t| t > data.len()) {
        return Err(key_sizes);
    }
    let (volume_key, rest) = data.split_at(volume as usize);
    let cookie_key = &rest[..cookie as usize];
    let Some((&0, volume_key)) = volume_key.split_last() else {
        return Err(DecodeErrorKind::VolumeKeyNotTerminated);
    };
    Ok(Request::Open {
        msg_id,
        object_id,
        volume_key,
        cookie_key,
        fd: open.fd.get(),
        flags: open.flags.get(),
    })
}

fn decode_read(msg_id: u32, object_id: u32, body: &[u8]) -> Result<Request<'_>, DecodeErrorKind> {
    let Ok((read, _)) = ReadBody::ref_from_prefix(body) else {
        return Err(DecodeErrorKind::ShortBody("READ"));
    };
    let (off, len) = (read.off.get(), read.len.get());
    if off.checked_add(len).is_none() {
        return Err(DecodeErrorKind::ReadOverflow { off, len });
    }
    Ok(Request::Read {
        msg_id,
        object_id,
        off,
        len,
    })
}

/// Builds the bytes of a message as the kernel would; for tests and the fake device.
pub fn encode_open(
    msg_id: u32,
    object_id: u32,
    volume_key: &[u8],
    cookie_key: &[u8],
    fd: u32,
) -> Vec<u8> {
    let vsize = volume_key.len() + 1;
    let len = 16 + 16 + vsize + cookie_key.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(
        MsgHeader {
            msg_id: msg_id.into(),
            opcode: OP_OPEN.into(),
            len: (len as u32).into(),
            object_id: object_id.into(),
        }
        .as_bytes(),
    );
    out.extend_from_slice(
        OpenBody {
            volume_key_size: (vsize as u32).into(),
            cookie_key_size: (cookie_key.len() as u32).into(),
            fd: fd.into(),
            flags: 0.into(),
        }
        .as_bytes(),
    );
    out.extend_from_slice(volume_key);
    out.push(0);
    out.extend_from_slice(cookie_key);
    out
}

pub fn encode_read(msg_id: u32, object_id: u32, off: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.extend_from_slice(
        MsgHeader {
            msg_id: msg_id.into(),
            opcode: OP_READ.into(),
            len: 32.into(),
            object_id: object_id.into(),
        }
        .as_bytes(),
    );
    out.extend_from_slice(
        ReadBody {
            off: off.into(),
            len: len.into(),
        }
        .as_bytes(),
    );
    out
}

pub fn encode_close(msg_id: u32, object_id: u32) -> Vec<u8> {
    MsgHeader {
        msg_id: msg_id.into(),
        opcode: OP_CLOSE.into(),
        len: 16.into(),
        object_id: object_id.into(),
    }
    .as_bytes()
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_open_as_erofs_sends_it() {
        // mount -t erofs none -o fsid=testblob: msg_id 0, object 1, fd 5.
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0, 0, 0, 0,      // msg_id
            0, 0, 0, 0,      // opcode OPEN
            55, 0, 0, 0,     // len = 16 + 16 + 15 + 8
            1, 0, 0, 0,      // object_id
            15, 0, 0, 0,     // volume_key_size, NUL included
            8, 0, 0, 0,      // cookie_key_size
            5, 0, 0, 0,      // fd
            0, 0, 0, 0,      // flags
            b'e', b'r', b'o', b'f', b's', b',', b't', b'e', b's', b't', b'b', b'l', b'o', b'b', 0,
            b't', b'e', b's', b't', b'b', b'l', b'o', b'b',
        ];
        assert_eq!(encode_open(0, 1, b"erofs,testblob", b"testblob", 5), bytes);
        assert_eq!(
            decode(bytes).unwrap(),
            Request::Open {
                msg_id: 0,
                object_id: 1,
                volume_key: b"erofs,testblob",
                cookie_key: b"testblob",
                fd: 5,
                flags: 0
            }
        );
    }

    #[test]
    fn golden_read_and_close() {
        #[rustfmt::skip]
        let read: &[u8] = &[
            7, 0, 0, 0,  2, 0, 0, 0,  32, 0, 0, 0,  1, 0, 0, 0,
            0, 0x10, 0, 0, 0, 0, 0, 0,   // off 4096
            0, 0, 2, 0, 0, 0, 0, 0,      // len 128 KiB
        ];
        assert_eq!(
            decode(read).unwrap(),
            Request::Read {
                msg_id: 7,
                object_id: 1,
                off: 4096,
                len: 131072
            }
        );
        assert_eq!(
            decode(&encode_close(9, 3)).unwrap(),
            Request::Close {
                msg_id: 9,
                object_id: 3
            }
        );
    }

    #[test]
    fn damaged_messages_keep_what_is_needed_to_answer() {
        let mut open = encode_open(4, 2, b"erofs,x", b"x", 9);
        // Cookie key size larger than the message: the fd is still handed back.
        open[20] = 200;
        let e = decode(&open).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::KeySizes { .. }));
        assert_eq!((e.msg_id, e.open_fd), (Some(4), Some(9)));

        let mut open = encode_open(4, 2, b"erofs,x", b"x", 9);
        open[16] = 0xff;
        open[17] = 0xff;
        open[18] = 0xff;
        open[19] = 0xff;
        assert!(matches!(
            decode(&open).unwrap_err().kind,
            DecodeErrorKind::KeySizes { .. }
        ));

        let open = encode_open(4, 2, b"erofs,x", b"x", 9);
        let e = decode(&open[..open.len() - 1]).unwrap_err();
        assert!(matches!(e.kind, DecodeErrorKind::LenMismatch { .. }));
        assert_eq!(e.open_fd, Some(9));

        let mut open = encode_open(4, 2, b"erofs,x", b"x", 9);
        open[16 + 16 + 7] = b'!';
        assert_eq!(
            decode(&open).unwrap_err().kind,
            DecodeErrorKind::VolumeKeyNotTerminated
        );

        assert_eq!(
            decode(&[1, 2, 3]).unwrap_err().kind,
            DecodeErrorKind::ShortHeader(3)
        );
        let mut bad = encode_close(1, 1);
        bad[4] = 9;
        assert_eq!(
            decode(&bad).unwrap_err().kind,
            DecodeErrorKind::UnknownOpcode(9)
        );
        let short_read = &encode_read(1, 1, 0, 1)[..24];
        let mut short_read = short_read.to_vec();
        short_read[8] = 24;
        assert_eq!(
            decode(&short_read).unwrap_err().kind,
            DecodeErrorKind::ShortBody("READ")
        );
        assert!(matches!(
            decode(&encode_read(1, 1, u64::MAX, 2)).unwrap_err().kind,
            DecodeErrorKind::ReadOverflow { .. }
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..1100)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn open_round_trips(v in proptest::collection::vec(1u8..=255, 1..255), c in proptest::collection::vec(proptest::num::u8::ANY, 0..255), id in proptest::num::u32::ANY, fd in proptest::num::u32::ANY) {
            let bytes = encode_open(id, 5, &v, &c, fd);
            let req = decode(&bytes).unwrap();
            proptest::prop_assert_eq!(req, Request::Open { msg_id: id, object_id: 5, volume_key: &v, cookie_key: &c, fd, flags: 0 });
        }
    }
}
