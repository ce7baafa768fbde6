//! The decoders of what `cachefilesctl` and the cull scan read in a cache tree
//! (`cachedir::layout`, `cachedir::names`): every one runs on the
//! whole input, as a name from readdir() or an xattr value, and the input is also taken as a
//! cookie key for `encode_key`. None panics, and:
//! - `decode_name` accepts exactly the names the kernel makes: the key it returns re-encodes to
//!   the very name, which is one path component of at most NAME_MAX bytes; the name it suggests
//!   for a non-canonical one is itself accepted.
//! - `encode_key` gives such a name, and `decode_name` gives the key back (zero-padded to whole
//!   words for S/T names, as the kernel hashes it: same fanout).
//! - `parse_fanout_name` and `parse_volume_dir_name` accept exactly what `fanout_name` and
//!   `volume_dir_name` make, and give their argument back.
//! - `ObjectXattr::decode` and `VolumeXattr::decode` accept every value of at least their
//!   header's size, and `encode` rebuilds it byte for byte.
//! - `Name::new` accepts exactly one path component; `ObjectName::parse` accepts exactly what
//!   `decode_name` does (the one definition of an object), `VolumeName::from_dir_name` exactly
//!   what `parse_volume_dir_name` does, and escaping never lets a control character through.
#![no_main]

use cachefilesd_rs::cachedir::layout::{
    decode_name, encode_key, fanout, fanout_name, parse_fanout_name, parse_volume_dir_name,
    volume_dir_name, volume_hash, Content, KeyEncoding, NameError, ObjectXattr, VolumeXattr,
    XattrError, MAX_COOKIE_KEY, MAX_VOLUME_KEY, NAME_MAX, OBJECT_XATTR_HEADER,
};
use cachefilesd_rs::cachedir::names::{Escaped, Name, ObjectName, VolumeName};
use libfuzzer_sys::fuzz_target;

/// One entry of a directory, as openat() takes it: not empty, no `/`, no NUL, not `.` or `..`,
/// at most NAME_MAX bytes.
fn is_component(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// An accepted object name and what it decodes to.
fn check_name(name: &[u8], encoding: KeyEncoding, key: &[u8]) {
    assert!(is_component(name), "object name {name:?}");
    assert!(key.len() <= MAX_COOKIE_KEY);
    assert_eq!(encode_key(key).as_deref(), Ok(name));
    let prefix = match encoding {
        KeyEncoding::Direct => b'D',
        KeyEncoding::BigEndianWords => b'S',
        KeyEncoding::LittleEndianWords => b'T',
        KeyEncoding::Base64 => b'E',
    };
    assert_eq!(name[0], prefix);
    match encoding {
        KeyEncoding::Direct => assert_eq!(key, &name[1..]),
        KeyEncoding::BigEndianWords | KeyEncoding::LittleEndianWords => {
            assert!(key.len().is_multiple_of(4))
        }
        KeyEncoding::Base64 => {}
    }
}

/// `data` as an object name found in a fanout directory.
fn object_name(name: &[u8]) {
    match decode_name(name) {
        Ok(d) => check_name(name, d.encoding, &d.key),
        Err(e) => {
            let _ = e.to_string();
            match e {
                NameError::Empty => assert!(name.is_empty()),
                NameError::UnknownPrefix => assert!(!b"DSTE".contains(&name[0])),
                NameError::KeyTooLong(n) => assert!(n > MAX_COOKIE_KEY),
                NameError::NameTooLong(n) => assert!(n > NAME_MAX),
                NameError::NotCanonical(kernel) => {
                    let kernel = kernel.as_bytes();
                    assert_ne!(kernel, name);
                    match decode_name(kernel) {
                        Ok(d) => check_name(kernel, d.encoding, &d.key),
                        Err(e) => panic!("suggested name {kernel:?} refused: {e}"),
                    }
                }
                NameError::BadChar(_) | NameError::BadWord | NameError::BadBase64 => {}
            }
        }
    }
}

/// `data` as a cookie key (an EROFS fsid, a 9p qid, a key given to `cachefilesctl`).
fn cookie_key(key: &[u8]) {
    match encode_key(key) {
        Ok(name) => {
            let d = match decode_name(&name) {
                Ok(d) => d,
                Err(e) => panic!("the name {name:?} of key {key:?} is refused: {e}"),
            };
            check_name(&name, d.encoding, &d.key);
            match d.encoding {
                KeyEncoding::BigEndianWords | KeyEncoding::LittleEndianWords => {
                    let mut padded = key.to_vec();
                    padded.resize(key.len().next_multiple_of(4), 0);
                    assert_eq!(d.key, padded);
                }
                KeyEncoding::Direct | KeyEncoding::Base64 => assert_eq!(d.key, key),
            }
            assert_eq!(fanout(b"erofs,v", &d.key), fanout(b"erofs,v", key));
        }
        Err(NameError::KeyTooLong(n)) => assert!(n == key.len() && n > MAX_COOKIE_KEY),
        Err(NameError::NameTooLong(n)) => assert!(n > NAME_MAX && key.len() <= MAX_COOKIE_KEY),
        Err(e) => panic!("encode_key: {e:?}"),
    }
}

/// `data` as an entry of a volume directory.
fn fanout_dir(name: &[u8]) {
    match parse_fanout_name(name) {
        Some(i) => assert_eq!(fanout_name(i).as_bytes(), name),
        None => {
            if let [b'@', digits @ ..] = name {
                if let Ok(i) = u8::from_str_radix(&String::from_utf8_lossy(digits), 16) {
                    assert_ne!(fanout_name(i).as_bytes(), name);
                }
            }
        }
    }
    if let Some(&i) = name.first() {
        assert_eq!(parse_fanout_name(fanout_name(i).as_bytes()), Some(i));
    }
}

/// `data` as an entry of `cache/`, and as a volume key.
fn volume_dir(name: &[u8]) {
    match parse_volume_dir_name(name) {
        Some(key) => {
            assert!(!key.is_empty() && key.len() <= MAX_VOLUME_KEY);
            assert_eq!(volume_dir_name(key), name);
            let _ = volume_hash(key);
        }
        None => {
            assert!(name.first() != Some(&b'I') || !(2..=MAX_VOLUME_KEY + 1).contains(&name.len()))
        }
    }
    let made = volume_dir_name(name);
    let valid = !name.is_empty() && name.len() <= MAX_VOLUME_KEY;
    assert_eq!(parse_volume_dir_name(&made), valid.then_some(name));
}

/// `data` as the `user.CacheFiles.cache` xattr of a data file and of a volume directory.
fn xattrs(bytes: &[u8]) {
    match ObjectXattr::decode(bytes) {
        Ok(x) => {
            assert_eq!(x.encode(), bytes);
            assert_eq!(x.content, Content::from_byte(bytes[17]));
            if let Content::Unknown(n) = x.content {
                // Only a state without a name is reported as "unknown".
                assert!(n > 4);
            }
            let _ = x.content.to_string();
        }
        Err(e) => {
            let _ = e.to_string();
            assert_eq!(
                e,
                XattrError::Short {
                    got: bytes.len(),
                    need: OBJECT_XATTR_HEADER
                }
            );
            assert!(bytes.len() < OBJECT_XATTR_HEADER);
        }
    }
    match VolumeXattr::decode(bytes) {
        Ok(x) => assert_eq!(x.encode(), bytes),
        Err(e) => {
            assert_eq!(
                e,
                XattrError::Short {
                    got: bytes.len(),
                    need: 4
                }
            );
            assert!(bytes.len() < 4);
        }
    }
    if let Some(&b) = bytes.first() {
        assert_eq!(Content::from_byte(b).to_byte(), b);
    }
}

/// `data` through the validated name types.
fn names(data: &[u8]) {
    let name = Name::new(data);
    assert_eq!(name.is_ok(), is_component(data), "{data:?}");
    assert_eq!(ObjectName::parse(data).is_ok(), decode_name(data).is_ok());
    if let Ok(n) = name {
        let v = VolumeName::from_dir_name(&n);
        assert_eq!(v.as_ref().map(|v| v.key()), parse_volume_dir_name(data));
    }
    let shown = Escaped(data).to_string();
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}

fuzz_target!(|data: &[u8]| {
    names(data);
    object_name(data);
    cookie_key(data);
    fanout_dir(data);
    volume_dir(data);
    xattrs(data);
});
