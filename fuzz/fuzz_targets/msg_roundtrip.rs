//! Whatever `proto::msg::decode` accepts, `encode_open`/`encode_read`/`encode_close` rebuild:
//! decoding the re-encoded message gives the same request, and its bytes are exactly those the
//! decoder read (trailing bytes dropped, `len` covering the rest, OPEN flags 0 as encode_open
//! writes them). So the encoders that the fake device and the tests use speak the kernel's
//! layout as the decoder reads it.
#![no_main]

use cachefilesd_rs::proto::msg::{decode, encode_close, encode_open, encode_read, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(req) = decode(data) else {
        return;
    };
    let (encoded, expected, used) = match req {
        Request::Open {
            msg_id,
            object_id,
            volume_key,
            cookie_key,
            fd,
            flags: _,
        } => (
            encode_open(msg_id, object_id, volume_key, cookie_key, fd),
            Request::Open {
                msg_id,
                object_id,
                volume_key,
                cookie_key,
                fd,
                flags: 0,
            },
            32 + volume_key.len() + 1 + cookie_key.len(),
        ),
        Request::Read {
            msg_id,
            object_id,
            off,
            len,
        } => (encode_read(msg_id, object_id, off, len), req, 32),
        Request::Close { msg_id, object_id } => (encode_close(msg_id, object_id), req, 16),
    };
    let again = decode(&encoded).expect("a re-encoded message decodes");
    assert_eq!(again, expected);

    let mut canonical = data[..used].to_vec();
    canonical[8..12].copy_from_slice(&(used as u32).to_le_bytes());
    if matches!(expected, Request::Open { .. }) {
        canonical[28..32].fill(0);
    }
    assert_eq!(encoded, canonical);
});
