//! `proto::Status::parse` on arbitrary bytes: never panics, and a line it accepts, printed back
//! the way the kernel prints it, parses to the same status.
#![no_main]

use cachefilesd_rs::proto::Status;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match Status::parse(data) {
        Ok(s) => {
            let mut line = format!(
                "cull={} frun={:x} fcull={:x} fstop={:x} brun={:x} bcull={:x} bstop={:x}",
                s.cull as u8, s.frun, s.fcull, s.fstop, s.brun, s.bcull, s.bstop
            );
            line += &format!(" freleased={:x} breleased={:x}", s.freleased, s.breleased);
            assert_eq!(Status::parse(line.as_bytes()), Ok(s));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
