//! `control::parse_request` on arbitrary bytes, as the control socket hands them over (lossy
//! UTF-8, up to the first newline), and on the whole input as text: never panics; a request it
//! accepts is one of the known commands, its words and nothing else, and the canonical text of
//! that command parses to it; a request it refuses gets a one-line reply that names the
//! request without echoing a control character to the client's terminal.
#![no_main]

use cachefilesd_rs::control::{parse_request, Request};
use cachefilesd_rs::ondemand::fanotify::{BlobKey, Detach};
use libfuzzer_sys::fuzz_target;

/// The request's canonical text.
fn canonical(r: &Request) -> String {
    match r {
        Request::Status => "status".into(),
        Request::StatusJson => "status json".into(),
        Request::Metrics => "metrics".into(),
        Request::Remove(target) => target.request(),
        Request::Attach(key) => format!("attach {}", key_words(key)),
        Request::Detach(Detach::Key(key)) => format!("detach {}", key_words(key)),
        Request::Detach(Detach::Path(path)) => format!("detach {}", path.display()),
        Request::MetaEvents(None) => "meta-events".into(),
        Request::MetaEvents(Some(verdict)) => format!("meta-events {}", verdict.as_str()),
        Request::MetaEventsRaisedBy(key) => format!("meta-events raised {}", key_words(key)),
    }
}

/// `[--domain D] FSID`: the domain is left out when it is the fsid (its default).
fn key_words(key: &BlobKey) -> String {
    if key.domain() == key.fsid() {
        key.fsid().to_string()
    } else {
        format!("--domain {} {}", key.domain(), key.fsid())
    }
}

/// `attach --domain X X` names the default domain: its canonical text leaves it out.
fn names_the_default_domain(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), ["attach" | "detach", "--domain", d, f] if d == f)
        || matches!(words.as_slice(), ["meta-events", "raised", "--domain", d, f] if d == f)
}

fn check(line: &str) {
    match parse_request(line) {
        Ok(r) => {
            let text = canonical(&r);
            // Hex digits may come in either case; the words are the same otherwise.
            assert!(
                line.split_whitespace()
                    .map(str::to_ascii_lowercase)
                    .eq(text.split_whitespace().map(str::to_ascii_lowercase))
                    || names_the_default_domain(line),
                "{line:?} taken as {text:?}"
            );
            assert_eq!(parse_request(&text), Ok(r));
        }
        Err(reply) => {
            let body = reply
                .strip_prefix("error: unknown request ")
                .or_else(|| reply.strip_prefix("error: bad request: "))
                .or_else(|| reply.strip_prefix("error: attach: "))
                .or_else(|| reply.strip_prefix("error: detach: "))
                .or_else(|| reply.strip_prefix("error: meta-events raised: "))
                .and_then(|r| r.strip_suffix('\n'))
                .unwrap_or_else(|| panic!("reply {reply:?}"));
            assert!(!body.chars().any(char::is_control), "reply {reply:?}");
        }
    }
}

/// The socket takes requests of up to 4 KiB; inputs are cut shorter (what is left is itself a
/// request the socket could get): the refusal quotes the request with `{:?}`, and quoting
/// inputs of up to 4 KiB took most of the run.
const MAX_INPUT: usize = 512;

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(MAX_INPUT)];
    let text = String::from_utf8_lossy(data);
    check(text.split('\n').next().unwrap_or(""));
    check(&text);
});
