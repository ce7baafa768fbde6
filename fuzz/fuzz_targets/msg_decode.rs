//! `proto::msg::decode` on arbitrary bytes, as read() could return them: never panics, and
//! whatever it accepts or rejects, the caller gets what it needs to answer the kernel.
#![no_main]

use cachefilesd_rs::proto::msg::{decode, Request, OP_OPEN};
use libfuzzer_sys::fuzz_target;

fn le32(data: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(data[at..at + 4].try_into().unwrap())
}

fuzz_target!(|data: &[u8]| {
    let result = decode(data);
    match &result {
        Ok(req) => {
            // Only a message whose `len` is exactly what was read is accepted.
            assert_eq!(le32(data, 8) as usize, data.len());
            assert_eq!(req.msg_id(), le32(data, 0));
            match *req {
                Request::Open {
                    volume_key,
                    cookie_key,
                    ..
                } => {
                    // The keys (and the volume key's NUL) lie inside the message.
                    assert!(32 + volume_key.len() + 1 + cookie_key.len() <= data.len());
                }
                Request::Read { off, len, .. } => assert!(off.checked_add(len).is_some()),
                Request::Close { .. } => {}
            }
        }
        Err(e) => {
            let _ = e.to_string();
            // A whole header: the msg_id is salvaged, so the request can still be answered.
            if data.len() >= 16 {
                assert_eq!(e.msg_id, Some(le32(data, 0)));
                assert_eq!(e.opcode, Some(le32(data, 4)));
            }
        }
    }
    // An OPEN whose fixed body was read carries an fd the kernel installed in our table: it is
    // handed to the caller on success and on every failure, so it is never leaked.
    if data.len() >= 32 && le32(data, 4) == OP_OPEN {
        let fd = le32(data, 24);
        match result {
            Ok(Request::Open { fd: got, .. }) => assert_eq!(got, fd),
            Ok(other) => panic!("opcode OPEN decoded as {other:?}"),
            Err(e) => assert_eq!(e.open_fd, Some(fd)),
        }
    }
});
