//! Validated names: the only way a string becomes a path component below the cache root.
//!
//! Every path component below the cache root is built from one of these types, so a string
//! from the command line or from disk becomes a path only after passing a check that it is one
//! component (no `/`, no NUL, not `.`/`..`, at most NAME_MAX bytes).

use super::layout::{self, DecodedName, KeyEncoding, NameError, MAX_VOLUME_KEY, NAME_MAX};
use std::borrow::Cow;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadName {
    #[error("empty name")]
    Empty,
    #[error("name of {0} bytes is longer than NAME_MAX ({NAME_MAX})")]
    TooLong(usize),
    #[error("name contains '/'")]
    Slash,
    #[error("name contains a NUL byte")]
    Nul,
    #[error("'.' and '..' are not names")]
    Dot,
    #[error("volume key of {0} bytes is longer than the kernel allows ({MAX_VOLUME_KEY})")]
    VolumeKeyTooLong(usize),
    #[error(transparent)]
    Object(#[from] NameError),
}

/// One path component that names an entry of the directory it is looked up in, never another.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(Cow<'static, [u8]>);

/// The directory under the cache root holding the volumes.
pub const CACHE: Name = Name(Cow::Borrowed(layout::CACHE_DIR.as_bytes()));
/// The directory under the cache root whose contents the daemon deletes.
pub const GRAVEYARD: Name = Name(Cow::Borrowed(layout::GRAVEYARD_DIR.as_bytes()));

impl Name {
    pub fn new(bytes: &[u8]) -> Result<Name, BadName> {
        check_component(bytes)?;
        Ok(Name(Cow::Owned(bytes.to_vec())))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// For people: see [`Escaped`].
    pub fn escaped(&self) -> Escaped<'_> {
        Escaped(&self.0)
    }
}

impl std::ops::Deref for Name {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for Name {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

fn check_component(b: &[u8]) -> Result<(), BadName> {
    if b.is_empty() {
        Err(BadName::Empty)
    } else if b.len() > NAME_MAX {
        Err(BadName::TooLong(b.len()))
    } else if b.contains(&b'/') {
        Err(BadName::Slash)
    } else if b.contains(&0) {
        Err(BadName::Nul)
    } else if b == b"." || b == b".." {
        Err(BadName::Dot)
    } else {
        Ok(())
    }
}

/// A volume, as its key (`erofs,<domain>`, `9p,<tag>,`, ...) and its directory `I<key>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeName {
    dir: Name,
}

impl VolumeName {
    /// A volume key as a user gives it (`--volume`).
    pub fn new(key: &[u8]) -> Result<VolumeName, BadName> {
        if key.is_empty() {
            return Err(BadName::Empty);
        }
        if key.len() > MAX_VOLUME_KEY {
            return Err(BadName::VolumeKeyTooLong(key.len()));
        }
        // `I` + key is never `.`/`..`, so the checks that remain are `/` and NUL.
        Ok(VolumeName {
            dir: Name::new(&layout::volume_dir_name(key))?,
        })
    }

    /// A volume directory name found on disk, if the kernel could have made it.
    pub fn from_dir_name(name: &Name) -> Option<VolumeName> {
        layout::parse_volume_dir_name(name)?;
        Some(VolumeName { dir: name.clone() })
    }

    pub fn key(&self) -> &[u8] {
        &self.dir[1..]
    }

    pub fn dir_name(&self) -> &Name {
        &self.dir
    }
}

/// A data object's file name: exactly the names `cachefiles_cook_key` makes. This is the one
/// definition of "object" for the scan, the tools and the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectName {
    name: Name,
    decoded: DecodedName,
}

impl ObjectName {
    /// The name the kernel gives the object of cookie key `key`.
    pub fn for_key(key: &[u8]) -> Result<ObjectName, BadName> {
        let encoded = layout::encode_key(key)?;
        ObjectName::parse(&encoded)
    }

    /// A name found on disk; only names the kernel makes are objects.
    pub fn parse(name: &[u8]) -> Result<ObjectName, BadName> {
        let decoded = layout::decode_name(name)?;
        Ok(ObjectName {
            name: Name::new(name)?,
            decoded,
        })
    }

    pub fn name(&self) -> &Name {
        &self.name
    }

    /// The cookie key (S/T keys padded to whole words, see [`DecodedName`]).
    pub fn key(&self) -> &[u8] {
        &self.decoded.key
    }

    pub fn encoding(&self) -> KeyEncoding {
        self.decoded.encoding
    }
}

/// The fanout directory `@xx` of an index.
pub fn fanout_dir(index: u8) -> Name {
    Name(Cow::Owned(layout::fanout_name(index).into_bytes()))
}

/// The fanout directory an object of `key` in `volume` lives in.
pub fn fanout_dir_of(volume: &VolumeName, key: &[u8]) -> Name {
    fanout_dir(layout::fanout(volume.key(), key))
}

/// Bytes shown to people without letting them drive a terminal: printable UTF-8 stays as is,
/// a backslash is doubled and anything else (control characters, escape sequences, invalid
/// UTF-8) is written `\xNN`.
#[derive(Debug, Clone, Copy)]
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            for c in chunk.valid().chars() {
                match c {
                    '\\' => f.write_str("\\\\")?,
                    c if c.is_control() || is_invisible(c) => {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            write!(f, "\\x{b:02x}")?;
                        }
                    }
                    c => write!(f, "{c}")?,
                }
            }
            for b in chunk.invalid() {
                write!(f, "\\x{b:02x}")?;
            }
        }
        Ok(())
    }
}

/// Characters that reorder or hide text on a terminal without being "control" characters.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

/// `a/b/c` with every component escaped.
pub fn show_path<'a>(components: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut s = String::new();
    for (i, c) in components.into_iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(&Escaped(c).to_string());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_components_are_names() {
        for bad in [&b""[..], b".", b"..", b"a/b", b"/", b"a\0b", &[b'x'; 256]] {
            assert!(Name::new(bad).is_err(), "{bad:?}");
        }
        for good in [&b"a"[..], b"...", b"@00", b"line\nbreak", &[b'x'; 255]] {
            assert_eq!(Name::new(good).unwrap().as_bytes(), good);
        }
        assert_eq!(Name::new(b"cache").unwrap(), CACHE);
        assert_eq!(Name::new(b"graveyard").unwrap(), GRAVEYARD);
    }

    #[test]
    fn volume_keys_that_would_leave_the_cache_are_refused() {
        assert_eq!(
            VolumeName::new(b"erofs,good/../../../canary"),
            Err(BadName::Slash)
        );
        assert_eq!(VolumeName::new(b"a\0b"), Err(BadName::Nul));
        assert_eq!(VolumeName::new(b""), Err(BadName::Empty));
        assert_eq!(
            VolumeName::new(&[b'v'; 255]),
            Err(BadName::VolumeKeyTooLong(255))
        );
        // `..` as a key is the harmless directory `I..`.
        assert_eq!(
            VolumeName::new(b"..").unwrap().dir_name().as_bytes(),
            b"I.."
        );
        let v = VolumeName::new(b"erofs,x").unwrap();
        assert_eq!(v.key(), b"erofs,x");
        assert_eq!(
            VolumeName::from_dir_name(&Name::new(b"Ierofs,x").unwrap()),
            Some(v)
        );
        assert_eq!(VolumeName::from_dir_name(&Name::new(b"I").unwrap()), None);
    }

    #[test]
    fn object_names_are_what_the_kernel_makes() {
        let o = ObjectName::for_key(b"testblob").unwrap();
        assert_eq!(o.name().as_bytes(), b"Dtestblob");
        assert_eq!(ObjectName::parse(b"Dtestblob").unwrap(), o);
        // Keys with `/` or NUL are encoded, never used verbatim.
        assert_eq!(
            ObjectName::for_key(b"../x").unwrap().name().as_bytes(),
            b"S2e2e2f78"
        );
        assert!(ObjectName::parse(b"Tshallow,").is_err());
        assert!(ObjectName::parse(b"weird").is_err());
        assert_eq!(fanout_dir(0x7d).as_bytes(), b"@7d");
    }

    #[test]
    fn escaping_keeps_terminals_out_of_reach() {
        assert_eq!(Escaped(b"plain,name").to_string(), "plain,name");
        assert_eq!(Escaped(b"a\nb").to_string(), "a\\x0ab");
        assert_eq!(Escaped(b"\x1b[2J").to_string(), "\\x1b[2J");
        assert_eq!(Escaped(b"back\\slash").to_string(), "back\\\\slash");
        assert_eq!(Escaped(b"\xff\xfe").to_string(), "\\xff\\xfe");
        assert_eq!(
            Escaped("é\u{202e}".as_bytes()).to_string(),
            "é\\xe2\\x80\\xae"
        );
        assert_eq!(Escaped(b"\x7f").to_string(), "\\x7f");
        assert_eq!(show_path([&b"cache"[..], b"I\tx"]), "cache/I\\x09x");
    }
}
