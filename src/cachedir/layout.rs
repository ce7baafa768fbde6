//! The kernel's naming of cache objects and their xattrs, as pure functions (no I/O).
//!
//! The on-disk layout of a cachefiles cache (Linux 5.17+): the fscache hashes that pick the
//! `@xx` fanout, the key→file-name encoding of `cachefiles_cook_key` and its inverse, and the
//! `user.CacheFiles.cache` xattrs.
//!
//! Everything is checked against Linux 6.12: fs/netfs/fscache_main.c (`fscache_hash`),
//! fs/netfs/fscache_volume.c and fscache_cookie.c (what is hashed), fs/cachefiles/key.c (names)
//! and fs/cachefiles/xattr.c (xattr layout).

/// The xattr the kernel keeps on volume directories and data files.
pub const XATTR_NAME: &str = "user.CacheFiles.cache";
/// Directory under the cache root holding the volumes.
pub const CACHE_DIR: &str = "cache";
/// Directory under the cache root whose contents the daemon deletes.
pub const GRAVEYARD_DIR: &str = "graveyard";
/// `cachefiles_cook_key` BUGs on longer keys: the name must fit NAME_MAX with room to spare.
pub const MAX_COOKIE_KEY: usize = 255 - 3;
pub const NAME_MAX: usize = 255;
/// The volume key length is stored in one byte in front of the key for hashing.
pub const MAX_VOLUME_KEY: usize = 254;
/// Backing files are sized in multiples of the DIO block (CACHEFILES_DIO_BLOCK_SIZE).
pub const DIO_BLOCK: u64 = 4096;
/// `struct cachefiles_xattr` without the netfs aux data.
pub const OBJECT_XATTR_HEADER: usize = 18;
/// `CACHEFILES_COOKIE_TYPE_DATA`, the only object type the kernel makes.
pub const TYPE_DATA: u8 = 1;

const GOLDEN_RATIO_32: u32 = 0x61C8_8647;

/// `fscache_hash`: full_name_hash-style mixing over little-endian 32-bit words, made arch
/// independent because its low byte names a directory on disk. `data` must be padded to a
/// multiple of 4 by the caller, as in the kernel; a trailing partial word is ignored there too.
pub fn fscache_hash(salt: u32, data: &[u8]) -> u32 {
    let (mut x, mut y) = (0u32, salt);
    for w in data.chunks_exact(4) {
        let a = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        x ^= a;
        y ^= x;
        x = x.rotate_left(7);
        x = x.wrapping_add(y);
        y = y.rotate_left(20);
        y = y.wrapping_mul(9);
    }
    // fold_hash: __hash_32(y ^ __hash_32(x)), the full 32-bit products (no shift).
    (y ^ x.wrapping_mul(GOLDEN_RATIO_32)).wrapping_mul(GOLDEN_RATIO_32)
}

/// The hash of a volume key: fscache hashes `[len, key..., NUL]` zero-padded to 4 bytes.
pub fn volume_hash(volume_key: &[u8]) -> u32 {
    let mut buf = Vec::with_capacity(volume_key.len() + 5);
    buf.push(volume_key.len() as u8);
    buf.extend_from_slice(volume_key);
    buf.push(0);
    pad4(&mut buf);
    fscache_hash(0, &buf)
}

/// The hash of a cookie key, salted with its volume's hash; the key is zero-padded to 4 bytes.
pub fn cookie_hash(volume_hash: u32, cookie_key: &[u8]) -> u32 {
    let mut buf = cookie_key.to_vec();
    pad4(&mut buf);
    fscache_hash(volume_hash, &buf)
}

/// The fanout directory index: `(u8)cookie->key_hash`.
pub fn fanout(volume_key: &[u8], cookie_key: &[u8]) -> u8 {
    cookie_hash(volume_hash(volume_key), cookie_key) as u8
}

pub fn fanout_name(index: u8) -> String {
    format!("@{index:02x}")
}

/// The index of a fanout directory name `@00`..`@ff` (lowercase, as the kernel's `%02x`).
pub fn parse_fanout_name(name: &[u8]) -> Option<u8> {
    match name {
        [b'@', h, l] if is_lower_hex(*h) && is_lower_hex(*l) => {
            Some((hex_val(*h) << 4) | hex_val(*l))
        }
        _ => None,
    }
}

/// `I<volume key>`: the key verbatim, no escaping.
pub fn volume_dir_name(volume_key: &[u8]) -> Vec<u8> {
    let mut name = Vec::with_capacity(volume_key.len() + 1);
    name.push(b'I');
    name.extend_from_slice(volume_key);
    name
}

/// The volume key of a volume directory name, if the kernel could have made it.
pub fn parse_volume_dir_name(name: &[u8]) -> Option<&[u8]> {
    match name.split_first() {
        Some((b'I', key)) if !key.is_empty() && key.len() <= MAX_VOLUME_KEY => Some(key),
        _ => None,
    }
}

pub fn round_up_dio(size: u64) -> u64 {
    size.div_ceil(DIO_BLOCK).saturating_mul(DIO_BLOCK)
}

fn pad4(buf: &mut Vec<u8>) {
    buf.resize(buf.len().next_multiple_of(4), 0);
}

fn is_lower_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b)
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        _ => b - b'a' + 10,
    }
}

/// cachefiles_filecharmap: `!`..`.` and `0`..DEL (127 is included by the kernel's range).
fn is_name_char(b: u8) -> bool {
    matches!(b, 33..=46 | 48..=127)
}

const CHARMAP: &[u8; 64] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-";

fn charmap_index(c: u8) -> Option<u32> {
    CHARMAP.iter().position(|&m| m == c).map(|i| i as u32)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEncoding {
    /// `D`: the key verbatim (all bytes printable).
    Direct,
    /// `S`: comma-separated big-endian 32-bit words in hex.
    BigEndianWords,
    /// `T`: comma-separated little-endian 32-bit words in hex.
    LittleEndianWords,
    /// `E`: the kernel's base64 variant.
    Base64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("cookie key of {0} bytes is longer than the kernel allows ({MAX_COOKIE_KEY})")]
    KeyTooLong(usize),
    /// Base64 names of keys over 189 bytes: the kernel makes the name anyway, the lookup fails
    /// with ENAMETOOLONG and the object is never cached.
    #[error("the name for this key would be {0} bytes, longer than NAME_MAX (255)")]
    NameTooLong(usize),
    #[error("object name is empty")]
    Empty,
    #[error("object name does not start with D, S, T or E")]
    UnknownPrefix,
    #[error("object name has a byte the kernel does not put in {0:?} names")]
    BadChar(KeyEncoding),
    #[error("malformed hex word in an S/T name")]
    BadWord,
    #[error("malformed base64 name")]
    BadBase64,
    #[error("the kernel would name this key differently ({0:?}): not a name it makes")]
    NotCanonical(String),
}

fn hex_digits(x: u32) -> usize {
    if x == 0 {
        0
    } else {
        (32 - x.leading_zeros() as usize).div_ceil(4)
    }
}

/// `cachefiles_cook_key`: the file name of the data object for `key`.
pub fn encode_key(key: &[u8]) -> Result<Vec<u8>, NameError> {
    if key.len() > MAX_COOKIE_KEY {
        return Err(NameError::KeyTooLong(key.len()));
    }
    if key.iter().all(|&b| is_name_char(b)) {
        let mut name = Vec::with_capacity(key.len() + 1);
        name.push(b'D');
        name.extend_from_slice(key);
        return Ok(name);
    }
    // The kernel reads the key as whole words out of its zero-padded buffer.
    let mut padded = key.to_vec();
    pad4(&mut padded);
    let words = || padded.chunks_exact(4).map(|w| [w[0], w[1], w[2], w[3]]);
    let nbe: usize = words().map(|w| 1 + hex_digits(u32::from_be_bytes(w))).sum();
    let nle: usize = words().map(|w| 1 + hex_digits(u32::from_le_bytes(w))).sum();
    let groups = key.len().div_ceil(3);
    let pad = groups * 3 - key.len();
    let b64len = 2 + groups * 4;
    if nbe < b64len || nle < b64len {
        if nbe.min(nle) > NAME_MAX {
            return Err(NameError::NameTooLong(nbe.min(nle)));
        }
        let big = nbe <= nle;
        let mut name = Vec::with_capacity(nbe.min(nle));
        let mut sep = if big { b'S' } else { b'T' };
        for w in words() {
            let x = if big {
                u32::from_be_bytes(w)
            } else {
                u32::from_le_bytes(w)
            };
            name.push(sep);
            if x != 0 {
                name.extend_from_slice(format!("{x:x}").as_bytes());
            }
            sep = b',';
        }
        return Ok(name);
    }
    if b64len > NAME_MAX {
        return Err(NameError::NameTooLong(b64len));
    }
    let mut name = Vec::with_capacity(b64len);
    name.push(b'E');
    name.push(b'0' + pad as u8);
    // The kernel's loop runs at least once, so an empty key would give "E0" + 4 chars; an
    // empty key is printable and never gets here.
    for chunk in key.chunks(3) {
        let mut acc = 0u32;
        for (i, &b) in chunk.iter().enumerate() {
            acc |= u32::from(b) << (8 * i);
        }
        for _ in 0..4 {
            name.push(CHARMAP[(acc & 63) as usize]);
            acc >>= 6;
        }
    }
    Ok(name)
}

/// A cookie key recovered from an object name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedName {
    pub encoding: KeyEncoding,
    /// For S/T names the key as the kernel padded it to whole words: a key whose length is not
    /// a multiple of 4 gets up to 3 trailing zero bytes that the name cannot tell apart. The
    /// kernel hashes the same padded buffer, so the fanout check is exact either way.
    pub key: Vec<u8>,
}

/// The words of an `S` (big-endian) or `T` (little-endian) name: comma-separated lowercase hex,
/// at most 8 digits each.
fn decode_words(big: bool, rest: &[u8]) -> Result<DecodedName, NameError> {
    let mut key = Vec::new();
    for word in rest.split(|&b| b == b',') {
        if word.len() > 8 || !word.iter().all(|&b| is_lower_hex(b)) {
            return Err(NameError::BadWord);
        }
        let x = word
            .iter()
            .fold(0u32, |acc, &b| (acc << 4) | u32::from(hex_val(b)));
        key.extend_from_slice(&if big {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        });
    }
    Ok(DecodedName {
        encoding: if big {
            KeyEncoding::BigEndianWords
        } else {
            KeyEncoding::LittleEndianWords
        },
        key,
    })
}

/// The key of an `E` name: the pad count (`0`..`2`), then the kernel's base64 in groups of 4.
fn decode_base64(rest: &[u8]) -> Result<Vec<u8>, NameError> {
    let (&pad, body) = rest.split_first().ok_or(NameError::BadBase64)?;
    if !(b'0'..=b'2').contains(&pad) || body.is_empty() || !body.len().is_multiple_of(4) {
        return Err(NameError::BadBase64);
    }
    let mut key = Vec::with_capacity(body.len() / 4 * 3);
    for group in body.chunks_exact(4) {
        let mut acc = 0u32;
        for (i, &c) in group.iter().enumerate() {
            acc |= charmap_index(c).ok_or(NameError::BadChar(KeyEncoding::Base64))? << (6 * i);
        }
        key.extend_from_slice(&acc.to_le_bytes()[..3]);
    }
    key.truncate(key.len() - usize::from(pad - b'0'));
    Ok(key)
}

/// The inverse of [`encode_key`]: accepts exactly the names the kernel makes.
pub fn decode_name(name: &[u8]) -> Result<DecodedName, NameError> {
    let (&prefix, rest) = name.split_first().ok_or(NameError::Empty)?;
    let decoded = match prefix {
        b'D' => {
            if !rest.iter().all(|&b| is_name_char(b)) {
                return Err(NameError::BadChar(KeyEncoding::Direct));
            }
            DecodedName {
                encoding: KeyEncoding::Direct,
                key: rest.to_vec(),
            }
        }
        b'S' | b'T' => decode_words(prefix == b'S', rest)?,
        b'E' => DecodedName {
            encoding: KeyEncoding::Base64,
            key: decode_base64(rest)?,
        },
        _ => return Err(NameError::UnknownPrefix),
    };
    // Many byte strings decode; only the one the kernel would produce is a real object name
    // (e.g. "S0001" or a base64 name of a printable key never come from the kernel).
    let again = encode_key(&decoded.key)?;
    if again != name {
        return Err(NameError::NotCanonical(
            String::from_utf8_lossy(&again).into_owned(),
        ));
    }
    Ok(decoded)
}

/// Content presence as recorded in the object xattr (enum cachefiles_content).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Content {
    NoData,
    Single,
    All,
    BackfsMap,
    /// Locally modified and not committed: the kernel discards such an object on lookup.
    Dirty,
    Unknown(u8),
}

impl Content {
    pub fn from_byte(b: u8) -> Content {
        match b {
            0 => Content::NoData,
            1 => Content::Single,
            2 => Content::All,
            3 => Content::BackfsMap,
            4 => Content::Dirty,
            n => Content::Unknown(n),
        }
    }

    pub fn to_byte(self) -> u8 {
        match self {
            Content::NoData => 0,
            Content::Single => 1,
            Content::All => 2,
            Content::BackfsMap => 3,
            Content::Dirty => 4,
            Content::Unknown(n) => n,
        }
    }
}

impl std::fmt::Display for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::NoData => f.write_str("no-data"),
            Content::Single => f.write_str("single"),
            Content::All => f.write_str("all"),
            Content::BackfsMap => f.write_str("backfs-map"),
            Content::Dirty => f.write_str("dirty"),
            Content::Unknown(n) => write!(f, "unknown({n})"),
        }
    }
}

/// `struct cachefiles_xattr` (packed, big-endian) followed by the netfs aux data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectXattr {
    pub object_size: u64,
    /// Always written as 0 by 6.12.
    pub zero_point: u64,
    pub kind: u8,
    pub content: Content,
    pub aux: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XattrError {
    #[error("xattr of {got} bytes is shorter than its {need}-byte header")]
    Short { got: usize, need: usize },
}

impl ObjectXattr {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(OBJECT_XATTR_HEADER + self.aux.len());
        v.extend_from_slice(&self.object_size.to_be_bytes());
        v.extend_from_slice(&self.zero_point.to_be_bytes());
        v.push(self.kind);
        v.push(self.content.to_byte());
        v.extend_from_slice(&self.aux);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<ObjectXattr, XattrError> {
        if bytes.len() < OBJECT_XATTR_HEADER {
            return Err(XattrError::Short {
                got: bytes.len(),
                need: OBJECT_XATTR_HEADER,
            });
        }
        let be64 = |b: &[u8]| u64::from_be_bytes(b.try_into().expect("8 bytes"));
        Ok(ObjectXattr {
            object_size: be64(&bytes[0..8]),
            zero_point: be64(&bytes[8..16]),
            kind: bytes[16],
            content: Content::from_byte(bytes[17]),
            aux: bytes[18..].to_vec(),
        })
    }
}

/// `struct cachefiles_vol_xattr`: be32 reserved (must be 0) + the netfs volume coherency data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeXattr {
    pub reserved: u32,
    pub coherency: Vec<u8>,
}

impl VolumeXattr {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = self.reserved.to_be_bytes().to_vec();
        v.extend_from_slice(&self.coherency);
        v
    }

    pub fn decode(bytes: &[u8]) -> Result<VolumeXattr, XattrError> {
        if bytes.len() < 4 {
            return Err(XattrError::Short {
                got: bytes.len(),
                need: 4,
            });
        }
        Ok(VolumeXattr {
            reserved: u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes")),
            coherency: bytes[4..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Measured in a VM (6.12): EROFS `-o fsid=testblob` made
    /// `cache/Ierofs,testblob/@7d/Dtestblob`.
    #[test]
    fn erofs_vector_from_a_real_kernel() {
        assert_eq!(fanout(b"erofs,testblob", b"testblob"), 0x7d);
        assert_eq!(encode_key(b"testblob").unwrap(), b"Dtestblob");
        assert_eq!(volume_dir_name(b"erofs,testblob"), b"Ierofs,testblob");
    }

    /// Measured in the prefill VM scenario (6.12): the kernel itself made
    /// `cache/Ierofs,fresh/@eb/Dfresh`, and accepted a prefilled `cache/Ierofs,pre/@3b/Dpre`
    /// (zero READs, same inode afterwards).
    #[test]
    fn more_erofs_vectors_from_a_real_kernel() {
        assert_eq!(fanout(b"erofs,fresh", b"fresh"), 0xeb);
        assert_eq!(fanout(b"erofs,pre", b"pre"), 0x3b);
    }

    /// Measured in a VM (6.12): a 9p inode with qid.path 0x514039 (key = le64 qid.path) in
    /// volume `9p,fscached,` was `cache/I9p,fscached,/@95/T514039,`.
    #[test]
    fn ninep_vector_from_a_real_kernel() {
        let key = 0x514039u64.to_le_bytes();
        assert_eq!(encode_key(&key).unwrap(), b"T514039,");
        assert_eq!(fanout(b"9p,fscached,", &key), 0x95);
        let d = decode_name(b"T514039,").unwrap();
        assert_eq!(d.key, key);
        assert_eq!(d.encoding, KeyEncoding::LittleEndianWords);
    }

    #[test]
    fn hash_of_nothing_is_the_fold_of_zero_and_salt() {
        // No words: x = 0, y = salt; fold = (salt ^ 0) * golden.
        assert_eq!(fscache_hash(0, &[]), 0);
        assert_eq!(fscache_hash(1, &[]), GOLDEN_RATIO_32);
    }

    #[test]
    fn hash_of_one_word_by_hand() {
        // a = 1: x = 1, y = 1, x = rol(1,7) + 1 = 129, y = rol(1,20) * 9 = 0x900000.
        let expect =
            (0x0090_0000u32 ^ 129u32.wrapping_mul(GOLDEN_RATIO_32)).wrapping_mul(GOLDEN_RATIO_32);
        assert_eq!(fscache_hash(0, &[1, 0, 0, 0]), expect);
    }

    #[test]
    fn volume_hash_pads_length_key_and_nul() {
        // "ab": [2, 'a', 'b', 0] is exactly one word; "abc" needs a second, zero word.
        assert_eq!(volume_hash(b"ab"), fscache_hash(0, &[2, b'a', b'b', 0]));
        assert_eq!(
            volume_hash(b"abc"),
            fscache_hash(0, &[3, b'a', b'b', b'c', 0, 0, 0, 0])
        );
    }

    #[test]
    fn names_of_printable_keys_are_direct() {
        assert_eq!(encode_key(b"a!.0~").unwrap(), b"Da!.0~");
        // DEL is inside the kernel's 48..=127 range.
        assert_eq!(encode_key(b"a\x7f").unwrap(), b"Da\x7f");
        assert_eq!(encode_key(b"").unwrap(), b"D");
    }

    #[test]
    fn big_endian_words_win_ties() {
        // 0x01 0 0 0: BE word 0x01000000 (7 digits), LE 0x1 (1 digit) -> T1.
        assert_eq!(encode_key(&[1, 0, 0, 0]).unwrap(), b"T1");
        // 0 0 0 1: BE 0x1 -> S1.
        assert_eq!(encode_key(&[0, 0, 0, 1]).unwrap(), b"S1");
        // All zero: both forms are "S" plus separators; BE wins the tie.
        assert_eq!(encode_key(&[0; 8]).unwrap(), b"S,");
        // 9p inode 2 (qid.path 0): le64(0).
        assert_eq!(encode_key(&0u64.to_le_bytes()).unwrap(), b"S,");
    }

    #[test]
    fn words_are_used_only_when_shorter_than_base64() {
        // 3 bytes: base64 is 6 chars. [0, 0, 1] pads to 00 00 01 00: BE 0x100 -> "S100" (4).
        assert_eq!(encode_key(&[0, 0, 1]).unwrap(), b"S100");
        // A space makes the key non-printable; 4 random-ish bytes need 9 chars as words
        // (1 + 8) against 2 + 8 = 10 for base64.
        assert_eq!(encode_key(b"a b\xff").unwrap(), b"S612062ff".to_vec());
        // 6 non-zero bytes with high bits everywhere: words cost 1+8 + 1+4 = 14 (BE) and
        // 1+8 + 1+4 = 14 (LE); base64 is 2 + 8 = 10.
        let key = [0x81, 0x82, 0x83, 0x84, 0x85, 0x86];
        let name = encode_key(&key).unwrap();
        assert_eq!(name[..2], *b"E0");
        assert_eq!(name.len(), 10);
    }

    #[test]
    fn base64_by_hand() {
        // [0xff, 0x00, 0x10, 0x20]: group 1 acc = 0x1000ff -> 63, 3, 0, 4 = "-304";
        // group 2 acc = 0x20 -> 32, 0, 0, 0 = "w000"; pad 2.
        let key = [0xff, 0x00, 0x10, 0x20];
        // Words would be: BE ff001020 (9) / LE 201000ff (9) = 9 >= b64len 10? 9 < 10: words.
        assert_eq!(encode_key(&key).unwrap(), b"Sff001020");
        // Seven bytes with every word full: words 1+8+1+8 = 18; base64 2 + 12 = 14.
        let key = [0xff, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50];
        let name = encode_key(&key).unwrap();
        assert_eq!(name, b"E2-304w03gg100");
        assert_eq!(decode_name(&name).unwrap().key, key);
    }

    #[test]
    fn names_the_kernel_never_makes_are_refused() {
        assert_eq!(decode_name(b""), Err(NameError::Empty));
        assert_eq!(decode_name(b"Xabc"), Err(NameError::UnknownPrefix));
        assert!(matches!(decode_name(b"Da b"), Err(NameError::BadChar(_))));
        assert!(matches!(
            decode_name(b"Dline\nbreak"),
            Err(NameError::BadChar(_))
        ));
        assert!(matches!(
            decode_name(b"S0001"),
            Err(NameError::NotCanonical(_))
        ));
        assert!(matches!(decode_name(b"SABC"), Err(NameError::BadWord)));
        assert!(matches!(
            decode_name(b"S123456789"),
            Err(NameError::BadWord)
        ));
        assert!(decode_name(b"T1").is_ok());
        // "S1" decodes to 00 00 00 01 whose LE reading is longer: fine. But "T" for a key the
        // kernel would write as S is not canonical.
        assert!(matches!(
            decode_name(b"T1000000"),
            Err(NameError::NotCanonical(_))
        ));
        // Base64 of a printable key: the kernel would have used D.
        assert_eq!(
            decode_name(b"E0x9So"),
            Err(NameError::NotCanonical("Dabc".into()))
        );
        assert!(matches!(decode_name(b"E3abcd"), Err(NameError::BadBase64)));
        assert!(matches!(decode_name(b"E0abc"), Err(NameError::BadBase64)));
        assert_eq!(
            encode_key(&[0xff; 190]),
            Err(NameError::NameTooLong(2 + 64 * 4))
        );
        assert_eq!(encode_key(&[0xff; 189]).unwrap().len(), 254);
        let long = [b'D'; 254];
        assert_eq!(decode_name(&long), Err(NameError::KeyTooLong(253)));
    }

    #[test]
    fn fanout_names() {
        assert_eq!(fanout_name(0x7d), "@7d");
        assert_eq!(parse_fanout_name(b"@7d"), Some(0x7d));
        assert_eq!(parse_fanout_name(b"@7D"), None);
        assert_eq!(parse_fanout_name(b"@7"), None);
        assert_eq!(parse_volume_dir_name(b"Ierofs,x"), Some(&b"erofs,x"[..]));
        assert_eq!(parse_volume_dir_name(b"I"), None);
        assert_eq!(parse_volume_dir_name(b"Jx"), None);
    }

    #[test]
    fn xattrs_round_trip_and_match_the_kernel_layout() {
        let x = ObjectXattr {
            object_size: 0x0102_0304_0506_0708,
            zero_point: 0,
            kind: TYPE_DATA,
            content: Content::All,
            aux: vec![9, 9],
        };
        let bytes = x.encode();
        assert_eq!(
            bytes,
            [1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2, 9, 9]
        );
        assert_eq!(ObjectXattr::decode(&bytes).unwrap(), x);
        assert_eq!(
            ObjectXattr::decode(&bytes[..17]),
            Err(XattrError::Short { got: 17, need: 18 })
        );
        let v = VolumeXattr {
            reserved: 0,
            coherency: vec![],
        };
        assert_eq!(v.encode(), [0, 0, 0, 0]);
        assert_eq!(
            VolumeXattr::decode(&[0, 0, 0, 0, 7]).unwrap().coherency,
            [7]
        );
        assert!(VolumeXattr::decode(&[0, 0]).is_err());
        assert_eq!(round_up_dio(0), 0);
        assert_eq!(round_up_dio(1), 4096);
        assert_eq!(round_up_dio(4096), 4096);
    }

    proptest! {
        #[test]
        fn decode_inverts_encode(key in proptest::collection::vec(any::<u8>(), 0..=MAX_COOKIE_KEY)) {
            let name = match encode_key(&key) {
                Err(NameError::NameTooLong(n)) => {
                    prop_assert!(n > NAME_MAX);
                    return Ok(());
                }
                r => r.unwrap(),
            };
            prop_assert!(name.len() <= NAME_MAX);
            let d = decode_name(&name).unwrap();
            match d.encoding {
                KeyEncoding::BigEndianWords | KeyEncoding::LittleEndianWords => {
                    // The padding the kernel adds is indistinguishable from key bytes.
                    prop_assert_eq!(&d.key[..key.len()], &key[..]);
                    prop_assert!(d.key[key.len()..].iter().all(|&b| b == 0));
                    prop_assert_eq!(d.key.len(), key.len().next_multiple_of(4));
                }
                _ => prop_assert_eq!(&d.key, &key),
            }
            // Same padded buffer, same hash: the fanout survives the round trip.
            prop_assert_eq!(fanout(b"v", &d.key), fanout(b"v", &key));
        }

        #[test]
        fn printable_keys_round_trip_exactly(key in "[!-.0-~]{0,60}") {
            let name = encode_key(key.as_bytes()).unwrap();
            prop_assert_eq!(decode_name(&name).unwrap().key, key.as_bytes());
        }

        #[test]
        fn decode_never_panics(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(d) = decode_name(&name) {
                prop_assert_eq!(encode_key(&d.key).unwrap(), name);
            }
        }
    }
}
