//! `control::parse_request` on arbitrary bytes, as the control socket hands them over (at most
//! 256 bytes, lossy UTF-8, up to the first newline), and on the whole input as text: never
//! panics; a request it accepts is one of the known commands, its words and nothing else, and
//! the canonical text of that command parses to it; a request it refuses gets a one-line reply
//! that names the request without echoing a control character to the client's terminal.
#![no_main]

use cachefilesd_rs::control::{parse_request, Request};
use libfuzzer_sys::fuzz_target;

fn words(r: Request) -> &'static [&'static str] {
    match r {
        Request::Status => &["status"],
        Request::StatusJson => &["status", "json"],
        Request::Metrics => &["metrics"],
    }
}

fn check(line: &str) {
    match parse_request(line) {
        Ok(r) => {
            assert!(line.split_whitespace().eq(words(r).iter().copied()));
            assert_eq!(parse_request(&words(r).join(" ")), Ok(r));
        }
        Err(reply) => {
            let body = reply
                .strip_prefix("error: unknown request ")
                .and_then(|r| r.strip_suffix('\n'))
                .unwrap_or_else(|| panic!("reply {reply:?}"));
            assert!(!body.chars().any(char::is_control), "reply {reply:?}");
        }
    }
}

/// `MAX_REQUEST`: the socket answers a longer request "too long" without parsing it. Longer
/// inputs are cut (what is left is itself a request the socket could get): the refusal quotes
/// the request with `{:?}`, and quoting inputs of up to 4 KiB took most of the run.
const MAX_REQUEST: usize = 256;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_REQUEST)];
    let text = String::from_utf8_lossy(data);
    check(text.split('\n').next().unwrap_or(""));
    check(&text);
});
