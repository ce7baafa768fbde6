//! `ondemand::sourcemap::SourceMap::parse` on arbitrary UTF-8: never panics, and `resolve` on
//! a map it accepts never panics either, whatever the domain and fsid. A resolved location
//! has the shape of its template: a name substituted for `{fsid}` or `{domain}` adds no path
//! component, no `..` and no URL separator.
//!
//! Input: the TOML text, optionally followed by NUL, domain, NUL, fsid (TOML text cannot
//! contain a NUL, so the seeds are plain source maps).
#![no_main]

use cachefilesd_rs::ondemand::sourcemap::{is_safe_name, Location, SourceMap};
use libfuzzer_sys::fuzz_target;
use std::path::{Component, Path};

/// The template with a fixed safe name in both places.
fn shape(template: &str) -> String {
    template.replace("{fsid}", "n").replace("{domain}", "n")
}

/// One entry per path component, true where it is `..`.
fn components(p: &Path) -> Vec<bool> {
    p.components().map(|c| c == Component::ParentDir).collect()
}

/// What a URL's structure hangs on: path, query and fragment separators.
fn separators(u: &str) -> usize {
    u.bytes().filter(|b| b"/?#".contains(b)).count()
}

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |&b| b == 0);
    let Ok(text) = std::str::from_utf8(parts.next().unwrap_or_default()) else {
        return;
    };
    let Ok(map) = SourceMap::parse("fuzz.toml", text) else {
        return;
    };
    let _ = map.uses_network();
    let names: [(&[u8], &[u8]); 4] = [
        (
            parts.next().unwrap_or(b"images"),
            parts.next().unwrap_or(b"app-1"),
        ),
        (b"images", b"sha256:abcd"),
        (b"..", b"x"),
        (b"d", b"a/../b"),
    ];
    for (domain, fsid) in names {
        let Some((source, location)) = map.resolve(domain, fsid) else {
            continue;
        };
        assert!(is_safe_name(domain) && is_safe_name(fsid));
        assert!(std::ptr::eq(source, &map.sources[source.index - 1]));
        match (&source.location, &location) {
            (Location::Path(template), Location::Path(resolved)) => {
                let template = shape(&template.to_string_lossy());
                assert_eq!(
                    components(resolved),
                    components(Path::new(&template)),
                    "{resolved:?} from {template:?}"
                );
            }
            (
                Location::Url {
                    urls: templates, ..
                },
                Location::Url { urls: resolved, .. },
            ) => {
                assert_eq!(templates.len(), resolved.len());
                for (template, resolved) in templates.iter().zip(resolved) {
                    assert_eq!(separators(resolved), separators(&shape(template)));
                }
            }
            (Location::Registry { .. }, Location::Registry { .. }) => {
                assert_eq!(source.location, location);
            }
            (t, r) => panic!("{t:?} resolved to {r:?}"),
        }
    }
});
