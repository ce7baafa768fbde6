//! Volume names and cookie keys as `cachefilesctl` takes them (`--volume`, `--key`,
//! `--key-hex`), through its own argument parser and then the cache-directory layer. Input:
//! one length byte, that many bytes of volume, the rest the key. None panics, and whatever is
//! accepted becomes the path `cache/I<volume>/@xx/<object>` of exactly four components, none
//! empty, `.`, `..`, longer than NAME_MAX or holding `/` or NUL, so the path stays below the
//! cache root whatever the bytes were.
#![no_main]

use cachefilesd_rs::cachedir::layout::{decode_name, MAX_VOLUME_KEY, NAME_MAX};
use cachefilesd_rs::cachedir::names::{fanout_dir_of, ObjectName, VolumeName, CACHE};
use cachefilesd_rs::tools::cli::{parse, Command};
use libfuzzer_sys::fuzz_target;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path};

/// An independent oracle for "one directory entry": not the crate's own check.
fn is_component(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

fn args(words: &[&[u8]]) -> Vec<OsString> {
    words
        .iter()
        .map(|w| OsString::from_vec(w.to_vec()))
        .collect()
}

fn hex(b: &[u8]) -> Vec<u8> {
    b.iter()
        .flat_map(|x| format!("{x:02x}").into_bytes())
        .collect()
}

/// What the tools would touch for `volume` and `key`: it must stay below the root.
fn check_path(volume: &VolumeName, key: &[u8]) {
    let object = ObjectName::for_key(key).expect("the parser accepted this key");
    let fan = fanout_dir_of(volume, key);
    let comps: [&[u8]; 4] = [&CACHE, volume.dir_name(), &fan, object.name()];
    for c in comps {
        assert!(is_component(c), "{c:?}");
    }
    assert!(decode_name(object.name()).is_ok());
    let root = Path::new("/root-of-the-cache");
    let mut p = root.to_path_buf();
    for c in comps {
        p.push(std::ffi::OsStr::from_bytes(c));
    }
    assert!(p.starts_with(root));
    let below: Vec<Component> = p.strip_prefix(root).unwrap().components().collect();
    assert_eq!(below.len(), 4, "{p:?}");
    assert!(
        below.iter().all(|c| matches!(c, Component::Normal(_))),
        "{p:?}"
    );
}

use std::os::unix::ffi::OsStrExt;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (vol, key) = rest.split_at(usize::from(n).min(rest.len()));
    let hexkey = hex(key);
    let runs: [Vec<&[u8]>; 5] = [
        vec![b"purge", b"--volume", vol],
        vec![b"ls", b"--volume", vol],
        vec![b"invalidate", b"--volume", vol, b"--key", key],
        vec![b"invalidate", b"--volume", vol, b"--key-hex", &hexkey],
        vec![
            b"prefill",
            b"--volume",
            vol,
            b"--key",
            key,
            b"--from",
            b"/f",
        ],
    ];
    for words in runs {
        let Ok(inv) = parse(args(&words)) else {
            continue;
        };
        let (volume, key) = match &inv.command {
            Command::Purge { volume } => (volume, None),
            Command::Ls {
                volume: Some(v), ..
            } => (v, None),
            Command::Invalidate { volume, key } | Command::Prefill { volume, key, .. } => {
                (volume, Some(key))
            }
            other => panic!("{words:?} parsed as {other:?}"),
        };
        assert_eq!(volume.key(), vol, "the volume is taken as given");
        assert!(!vol.is_empty() && vol.len() <= MAX_VOLUME_KEY);
        assert!(is_component(volume.dir_name()));
        if let Some(k) = key {
            assert_eq!(&k[..], key_of(&words));
            check_path(volume, k);
        }
    }
});

/// The key the command line gave (after `--key`, or decoded from `--key-hex`): the fourth
/// and fifth words of the commands that take one.
fn key_of(words: &[&[u8]]) -> Vec<u8> {
    if words[3] == b"--key-hex" {
        words[4]
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    } else {
        assert_eq!(words[3], b"--key");
        words[4].to_vec()
    }
}
