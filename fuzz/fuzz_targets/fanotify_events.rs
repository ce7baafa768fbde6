//! `proto::fanotify::events` on arbitrary bytes, as a group's read() could return them: never
//! panics, never loops, and every framed event's fd reaches the caller so it can be answered.
#![no_main]

use cachefilesd_rs::proto::fanotify::{events, FAN_NOFD};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut seen = 0;
    for item in events(data) {
        // Every item consumes at least one event header's worth of bytes (or ends the buffer).
        seen += 1;
        assert!(seen <= data.len() / 24 + 1);
        match item {
            Ok(event) => {
                if let Some(r) = event.range {
                    assert!(r.offset.checked_add(r.count).is_some());
                }
            }
            Err(e) => {
                let _ = e.to_string();
                assert_ne!(e.fd, Some(FAN_NOFD));
                if e.ends_buffer() {
                    assert_eq!(e.fd, None);
                }
            }
        }
    }
});
