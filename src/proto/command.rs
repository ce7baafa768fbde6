//! Commands written to /dev/cachefiles, one per write(), rendered exactly as the kernel parses them.

use std::fmt;

/// One of the six free-space limits. The kernel range-checks each against its current
/// neighbours when it is written: `0 <= stop < cull < run < 100` per family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Limit {
    Brun,
    Bcull,
    Bstop,
    Frun,
    Fcull,
    Fstop,
}

impl Limit {
    pub const ALL: [Limit; 6] = [
        Limit::Brun,
        Limit::Bcull,
        Limit::Bstop,
        Limit::Frun,
        Limit::Fcull,
        Limit::Fstop,
    ];

    pub fn keyword(self) -> &'static str {
        match self {
            Limit::Brun => "brun",
            Limit::Bcull => "bcull",
            Limit::Bstop => "bstop",
            Limit::Frun => "frun",
            Limit::Fcull => "fcull",
            Limit::Fstop => "fstop",
        }
    }

    pub fn from_keyword(word: &str) -> Option<Limit> {
        Limit::ALL.into_iter().find(|l| l.keyword() == word)
    }

    /// The value the kernel starts with when the device is opened (7/5/1 for both families).
    pub fn kernel_default(self) -> u8 {
        match self {
            Limit::Brun | Limit::Frun => 7,
            Limit::Bcull | Limit::Fcull => 5,
            Limit::Bstop | Limit::Fstop => 1,
        }
    }
}

/// A command the daemon sends to the kernel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Dir(Vec<u8>),
    Tag(String),
    /// An LSM label, as bytes: the kernel takes any but NUL and newline.
    Secctx(Vec<u8>),
    Debug(u32),
    Limit(Limit, u8),
    Bind {
        ondemand: bool,
    },
    /// Resolved by the kernel against the daemon process's current directory.
    Cull(Vec<u8>),
    Inuse(Vec<u8>),
    /// Answer to an on-demand OPEN: a size, or a negative errno that fails the OPEN.
    Copen {
        msg_id: u32,
        size: i64,
    },
    Restore,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CommandError {
    /// The kernel stops at the first newline and rejects NUL: such an argument would name
    /// something other than what was meant.
    #[error("argument of `{0}` contains a newline or NUL byte")]
    ControlByte(&'static str),
    #[error("argument of `{0}` is empty")]
    Empty(&'static str),
    #[error("`{0}` takes one path component, not {1:?}")]
    NotAComponent(&'static str, String),
    #[error("limit {0} must be below 100%")]
    LimitRange(u8),
    #[error("command is longer than the kernel accepts ({0} bytes)")]
    TooLong(usize),
}

/// The kernel rejects writes of PAGE_SIZE bytes or more.
const MAX_COMMAND_LEN: usize = 4095;

impl Command {
    /// A command that tells a live cache from a dead one and changes nothing: the kernel
    /// answers every write with EIO once the cache is dead, checking that first; a bound, live
    /// cache already has a tag, so `tag` is refused with EEXIST.
    pub fn liveness_probe() -> Command {
        Command::Tag("liveness-probe".into())
    }

    pub fn keyword(&self) -> &'static str {
        match self {
            Command::Dir(_) => "dir",
            Command::Tag(_) => "tag",
            Command::Secctx(_) => "secctx",
            Command::Debug(_) => "debug",
            Command::Limit(l, _) => l.keyword(),
            Command::Bind { .. } => "bind",
            Command::Cull(_) => "cull",
            Command::Inuse(_) => "inuse",
            Command::Copen { .. } => "copen",
            Command::Restore => "restore",
        }
    }

    /// The exact bytes of one write(), validated so that the kernel parses what we mean.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CommandError> {
        let kw = self.keyword();
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(kw.as_bytes());
        let arg: Vec<u8> = match self {
            Command::Dir(path) => checked_arg(kw, path)?.to_vec(),
            Command::Tag(s) => checked_arg(kw, s.as_bytes())?.to_vec(),
            Command::Secctx(s) => checked_arg(kw, s)?.to_vec(),
            Command::Debug(mask) => mask.to_string().into_bytes(),
            Command::Limit(_, pct) => {
                if *pct >= 100 {
                    return Err(CommandError::LimitRange(*pct));
                }
                format!("{pct}%").into_bytes()
            }
            Command::Bind { ondemand: false } | Command::Restore => Vec::new(),
            Command::Bind { ondemand: true } => b"ondemand".to_vec(),
            Command::Cull(name) | Command::Inuse(name) => {
                let name = checked_arg(kw, name)?;
                if name.contains(&b'/') || name == b"." || name == b".." {
                    return Err(CommandError::NotAComponent(
                        kw,
                        String::from_utf8_lossy(name).into_owned(),
                    ));
                }
                name.to_vec()
            }
            Command::Copen { msg_id, size } => format!("{msg_id},{size}").into_bytes(),
        };
        if !arg.is_empty() {
            out.push(b' ');
            out.extend_from_slice(&arg);
        }
        if out.len() > MAX_COMMAND_LEN {
            return Err(CommandError::TooLong(out.len()));
        }
        Ok(out)
    }
}

fn checked_arg<'a>(kw: &'static str, arg: &'a [u8]) -> Result<&'a [u8], CommandError> {
    if arg.is_empty() {
        return Err(CommandError::Empty(kw));
    }
    if arg.iter().any(|&b| b == b'\n' || b == 0) {
        return Err(CommandError::ControlByte(kw));
    }
    Ok(arg)
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.to_bytes() {
            Ok(bytes) => f.write_str(&String::from_utf8_lossy(&bytes)),
            Err(_) => write!(f, "{} <invalid argument>", self.keyword()),
        }
    }
}

/// Orders the limit commands so that each one passes the kernel's check against the values
/// set at that moment (`current`), whatever they were. Returns `None` when the target itself
/// violates `stop < cull < run < 100`.
pub fn limit_order(current: [u8; 3], target: [u8; 3], family: [Limit; 3]) -> Option<Vec<Command>> {
    fn valid(v: [u8; 3]) -> bool {
        v[2] < v[1] && v[1] < v[0] && v[0] < 100
    }
    if !valid(target) {
        return None;
    }
    // Indexes into [run, cull, stop]. Two orders cover every case: raising needs run first,
    // lowering needs stop first; trying all six keeps the reasoning out of the code.
    const ORDERS: [[usize; 3]; 6] = [
        [0, 1, 2],
        [2, 1, 0],
        [0, 2, 1],
        [1, 0, 2],
        [1, 2, 0],
        [2, 0, 1],
    ];
    'orders: for order in ORDERS {
        let mut state = current;
        for &i in &order {
            let v = target[i];
            let ok = match i {
                0 => v > state[1] && v < 100,
                1 => v > state[2] && v < state[0],
                _ => v < state[1],
            };
            if !ok {
                continue 'orders;
            }
            state[i] = v;
        }
        return Some(
            order
                .iter()
                .filter(|&&i| current[i] != target[i])
                .map(|&i| Command::Limit(family[i], target[i]))
                .collect(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    // Golden bytes: what the kernel's cachefiles_daemon_write() parses.
    #[test]
    fn golden_bytes() {
        let rows: &[(Command, &[u8])] = &[
            (
                Command::Dir(b"/var/cache/fscache".to_vec()),
                b"dir /var/cache/fscache",
            ),
            (Command::Tag("mycache".into()), b"tag mycache"),
            (
                Command::Secctx("system_u:system_r:cachefiles_kernel_t:s0".into()),
                b"secctx system_u:system_r:cachefiles_kernel_t:s0",
            ),
            (Command::Debug(7), b"debug 7"),
            (Command::Limit(Limit::Brun, 10), b"brun 10%"),
            (Command::Limit(Limit::Fstop, 0), b"fstop 0%"),
            (Command::Bind { ondemand: false }, b"bind"),
            (Command::Bind { ondemand: true }, b"bind ondemand"),
            (Command::Cull(b"Dtestblob".to_vec()), b"cull Dtestblob"),
            (Command::Inuse(b"T1234,".to_vec()), b"inuse T1234,"),
            (
                Command::Copen {
                    msg_id: 0,
                    size: 3145728,
                },
                b"copen 0,3145728",
            ),
            (
                Command::Copen {
                    msg_id: 4294967295,
                    size: -2,
                },
                b"copen 4294967295,-2",
            ),
            (Command::Restore, b"restore"),
        ];
        for (cmd, bytes) in rows {
            assert_eq!(cmd.to_bytes().unwrap(), *bytes, "{cmd:?}");
        }
    }

    #[test]
    fn names_that_would_mislead_the_kernel_are_refused() {
        assert_eq!(
            Command::Cull(b"Da\nb".to_vec()).to_bytes(),
            Err(CommandError::ControlByte("cull"))
        );
        assert!(matches!(
            Command::Cull(b"../etc".to_vec()).to_bytes(),
            Err(CommandError::NotAComponent(..))
        ));
        assert!(Command::Inuse(b"..".to_vec()).to_bytes().is_err());
        assert_eq!(
            Command::Inuse(Vec::new()).to_bytes(),
            Err(CommandError::Empty("inuse"))
        );
        assert!(Command::Dir(b"/a\0b".to_vec()).to_bytes().is_err());
        assert!(Command::Limit(Limit::Brun, 100).to_bytes().is_err());
        assert!(Command::Dir(vec![b'a'; 5000]).to_bytes().is_err());
    }

    const B: [Limit; 3] = [Limit::Brun, Limit::Bcull, Limit::Bstop];

    fn simulate(start: [u8; 3], cmds: &[Command]) -> [u8; 3] {
        let mut s = start;
        for c in cmds {
            let Command::Limit(l, v) = c else { panic!() };
            let i = B.iter().position(|x| x == l).unwrap();
            let ok = match i {
                0 => *v > s[1] && *v < 100,
                1 => *v > s[2] && *v < s[0],
                _ => *v < s[1],
            };
            assert!(ok, "kernel would refuse {c} in state {s:?}");
            s[i] = *v;
        }
        s
    }

    #[test]
    fn limits_raised_and_lowered_in_an_accepted_order() {
        for target in [
            [10, 7, 3],
            [4, 3, 2],
            [99, 98, 97],
            [3, 2, 1],
            [7, 5, 1],
            [50, 6, 0],
        ] {
            let cmds = limit_order([7, 5, 1], target, B).unwrap();
            assert_eq!(simulate([7, 5, 1], &cmds), target);
        }
        assert!(limit_order([7, 5, 1], [5, 5, 1], B).is_none());
        assert!(limit_order([7, 5, 1], [100, 5, 1], B).is_none());
    }

    proptest::proptest! {
        #[test]
        fn any_valid_transition_has_an_accepted_order(
            a in 0u8..98, b in 0u8..98, c in 0u8..98, d in 0u8..98, e in 0u8..98, f in 0u8..98
        ) {
            let mut cur = [a, b, c]; cur.sort(); cur.reverse();
            let mut tgt = [d, e, f]; tgt.sort(); tgt.reverse();
            cur[0] += 2; cur[1] += 1; tgt[0] += 2; tgt[1] += 1;
            let cmds = limit_order(cur, tgt, B).expect("an order exists");
            proptest::prop_assert_eq!(simulate(cur, &cmds), tgt);
        }
    }
}
