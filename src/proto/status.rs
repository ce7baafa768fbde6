//! The classic-mode status line that read() returns, parsed.
//!
//! `cull=<0|1> frun=<hex> fcull=<hex> fstop=<hex> brun=<hex> bcull=<hex> bstop=<hex> freleased=<hex> breleased=<hex>`.

/// The kernel's view of the cache. Thresholds are absolute counts (files, or blocks of the
/// backing filesystem's f_bsize) computed at bind time from the percentages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// The kernel wants the daemon to cull until both free counts are above the run limits.
    pub cull: bool,
    pub frun: u64,
    pub fcull: u64,
    pub fstop: u64,
    pub brun: u64,
    pub bcull: u64,
    pub bstop: u64,
    /// Objects the kernel stopped using since the previous read (the counter resets on read).
    pub freleased: u64,
    /// Blocks of those objects.
    pub breleased: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StatusError {
    #[error("status line is not ASCII text")]
    NotText,
    #[error("status field {0:?} has no value")]
    NoValue(String),
    #[error("status field {0} has a bad value {1:?}")]
    BadValue(&'static str, String),
    #[error("status field {0} is missing")]
    Missing(&'static str),
    #[error("status field {0} appears twice")]
    Duplicate(&'static str),
}

const FIELDS: [&str; 9] = [
    "cull",
    "frun",
    "fcull",
    "fstop",
    "brun",
    "bcull",
    "bstop",
    "freleased",
    "breleased",
];

impl Status {
    /// Parses by whole fields: a substring search for `cull=1` would also match `fcull=1…`.
    /// Unknown fields are ignored so that a newer kernel adding one does not stop the daemon.
    pub fn parse(line: &[u8]) -> Result<Status, StatusError> {
        let text = std::str::from_utf8(line).map_err(|_| StatusError::NotText)?;
        let text = text.trim_end_matches(['\0', '\n']);
        let mut values: [Option<u64>; 9] = [None; 9];
        for field in text.split_ascii_whitespace() {
            let (name, value) = field
                .split_once('=')
                .ok_or_else(|| StatusError::NoValue(field.to_string()))?;
            let Some(index) = FIELDS.iter().position(|f| *f == name) else {
                continue;
            };
            let key = FIELDS[index];
            let parsed = if index == 0 {
                match value {
                    "0" => 0,
                    "1" => 1,
                    _ => return Err(StatusError::BadValue(key, value.to_string())),
                }
            } else {
                if value.is_empty() || value.starts_with(['+', '-']) {
                    return Err(StatusError::BadValue(key, value.to_string()));
                }
                u64::from_str_radix(value, 16)
                    .map_err(|_| StatusError::BadValue(key, value.to_string()))?
            };
            if values[index].replace(parsed).is_some() {
                return Err(StatusError::Duplicate(key));
            }
        }
        let get = |i: usize| values[i].ok_or(StatusError::Missing(FIELDS[i]));
        Ok(Status {
            cull: get(0)? == 1,
            frun: get(1)?,
            fcull: get(2)?,
            fstop: get(3)?,
            brun: get(4)?,
            bcull: get(5)?,
            bstop: get(6)?,
            // Kernels before releases were reported lack these two fields.
            freleased: values[7].unwrap_or(0),
            breleased: values[8].unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_line_from_linux_6_12() {
        let s = Status::parse(
            b"cull=0 frun=11e9 fcull=ccb fstop=28f brun=5bf4 bcull=405e bstop=1b96 freleased=1 breleased=2000",
        )
        .unwrap();
        assert_eq!(
            s,
            Status {
                cull: false,
                frun: 0x11e9,
                fcull: 0xccb,
                fstop: 0x28f,
                brun: 0x5bf4,
                bcull: 0x405e,
                bstop: 0x1b96,
                freleased: 1,
                breleased: 0x2000,
            }
        );
    }

    #[test]
    fn cull_flag_is_read_from_its_own_field_only() {
        let s = Status::parse(b"cull=0 frun=1 fcull=1 fstop=0 brun=1 bcull=1 bstop=0").unwrap();
        assert!(!s.cull);
        let s = Status::parse(b"cull=1 frun=1 fcull=1 fstop=0 brun=1 bcull=1 bstop=0").unwrap();
        assert!(s.cull);
        assert_eq!(s.freleased, 0);
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(Status::parse(b""), Err(StatusError::Missing("cull")));
        assert!(matches!(
            Status::parse(b"cull=2 frun=1 fcull=1 fstop=0 brun=1 bcull=1 bstop=0"),
            Err(StatusError::BadValue("cull", _))
        ));
        assert!(matches!(
            Status::parse(b"cull=1 frun=zz fcull=1 fstop=0 brun=1 bcull=1 bstop=0"),
            Err(StatusError::BadValue("frun", _))
        ));
        assert!(matches!(
            Status::parse(b"cull=1 frun=-1 fcull=1 fstop=0 brun=1 bcull=1 bstop=0"),
            Err(StatusError::BadValue("frun", _))
        ));
        assert_eq!(
            Status::parse(b"cull=1 cull=0 frun=1"),
            Err(StatusError::Duplicate("cull"))
        );
        assert!(matches!(
            Status::parse(b"cull"),
            Err(StatusError::NoValue(_))
        ));
        assert_eq!(Status::parse(&[0xff, 0xfe]), Err(StatusError::NotText));
        assert!(matches!(
            Status::parse(
                b"cull=0 frun=11111111111111111111 fcull=1 fstop=0 brun=1 bcull=1 bstop=0"
            ),
            Err(StatusError::BadValue("frun", _))
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
            let _ = Status::parse(&bytes);
        }

        #[test]
        fn round_trips(cull in proptest::bool::ANY, v in proptest::array::uniform8(proptest::num::u64::ANY)) {
            let line = format!("cull={} frun={:x} fcull={:x} fstop={:x} brun={:x} bcull={:x} bstop={:x} freleased={:x} breleased={:x}",
                cull as u8, v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]);
            let s = Status::parse(line.as_bytes()).unwrap();
            proptest::prop_assert_eq!(s, Status { cull, frun: v[0], fcull: v[1], fstop: v[2], brun: v[3], bcull: v[4], bstop: v[5], freleased: v[6], breleased: v[7] });
        }
    }
}
