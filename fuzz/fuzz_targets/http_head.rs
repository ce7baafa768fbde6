//! The HTTP response-head parsers of the on-demand sources on arbitrary header lines: never
//! panic, and whatever they accept keeps the promises the sources rely on (sizes the kernel
//! can take, ranges in order, redirects only to http(s) with a host and never https → http,
//! redacted URLs without user info or query).
#![no_main]

use cachefilesd_rs::ondemand::sources::head;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    for line in text.split("\r\n") {
        let value = line.split_once(':').map_or(line, |(_, v)| v);
        if let Some(n) = head::parse_content_length(value) {
            assert_eq!(n.to_string(), value.trim().trim_start_matches('0').max("0"));
            if let Ok(size) = head::check_size(n) {
                assert!(size <= head::MAX_BLOB_SIZE && size < i64::MAX as u64);
            }
        }
        if let Some((a, b, total)) = head::parse_content_range(value) {
            assert!(a <= b);
            assert!(total.is_none_or(|t| b < t));
        }
        if let Some((realm, params)) = head::parse_bearer_challenge(value) {
            assert!(!realm.contains('"'));
            assert!(params
                .iter()
                .all(|(k, v)| !k.is_empty() && !v.contains('"')));
        }
        for from in [
            "https://reg.example:5000/v2/a/blobs/x?q=1",
            "http://reg.example/b",
        ] {
            if let Ok(to) = head::redirect_target(from, value) {
                let origin = head::origin(&to).expect("a followed redirect has an origin");
                assert!(!origin.host.is_empty());
                assert!(origin.https || from.starts_with("http:"));
            }
        }
        let redacted = head::redact(value);
        assert!(!redacted.contains('?') && !redacted.contains('#'));
        if let Some((_, rest)) = redacted.split_once("://") {
            assert!(!rest.split('/').next().unwrap_or("").contains('@'));
        }
    }
});
