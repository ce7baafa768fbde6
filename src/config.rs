//! cachefilesd.conf(5): parsed, validated, with every error naming file:line.
//!
//! Compatible with cachefilesd 0.10.10: the same keywords, `#` comments and blank lines, a
//! `bind` line refused. Differences a user would only notice as kindness: trailing whitespace
//! is trimmed, and unknown keywords are reported at their line instead of by the kernel.

use crate::proto::{Command, Limit};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/cachefilesd.conf";
/// cachefilesd's default culltable: 2^12 candidates.
pub const DEFAULT_CULLTABLE: u8 = 12;
/// cachefilesd's default: rescan after 5 released files; blocks ignored.
pub const DEFAULT_RESUME_FILES: u64 = 5;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    pub dir: Located<PathBuf>,
    pub tag: Option<String>,
    pub secctx: Option<String>,
    pub debug: Option<u32>,
    /// Limits set in the file, in percent; unset ones keep the kernel's defaults.
    pub limits: [Option<Located<u8>>; 6],
    /// log2 of the number of cull candidates kept (12..=20).
    pub culltable: u8,
    pub nocull: bool,
    pub resume_blocks: Option<u64>,
    pub resume_files: Option<u64>,
    /// Daemon-only: on-demand mode, with the TOML source map at this path.
    pub ondemand: Option<Located<PathBuf>>,
    /// Daemon-only: the control socket (`control PATH`, or `control none`).
    pub control: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 0 when the error is about the file as a whole.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.path.display(), self.message)
        } else {
            write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let bytes = std::fs::read(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &bytes)
    }

    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
        let err = |line: usize, message: String| ConfigError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut dir: Option<Located<PathBuf>> = None;
        let mut tag = None;
        let mut secctx = None;
        let mut debug = None;
        let mut limits: [Option<Located<u8>>; 6] = Default::default();
        let mut culltable = None;
        let mut nocull = false;
        let mut resume: Option<(Option<u64>, Option<u64>)> = None;
        let mut ondemand = None;
        let mut control: Option<Option<PathBuf>> = None;

        let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((index, raw)) = lines.next() {
            let line_no = index + 1;
            if raw.is_empty() && lines.peek().is_none() {
                break;
            }
            if raw.contains(&0) {
                return Err(err(line_no, "line contains a NUL byte".into()));
            }
            if raw.len() >= 4096 {
                return Err(err(line_no, "line is longer than 4095 bytes".into()));
            }
            let text = std::str::from_utf8(raw)
                .map_err(|_| err(line_no, "line is not valid UTF-8".into()))?
                .trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (keyword, arg) = match text.split_once(char::is_whitespace) {
                Some((k, a)) => (k, a.trim_start()),
                None => (text, ""),
            };
            let need_arg = |what: &str| -> Result<&str, ConfigError> {
                if arg.is_empty() {
                    Err(err(line_no, format!("{keyword} needs {what}")))
                } else {
                    Ok(arg)
                }
            };
            let no_arg = || -> Result<(), ConfigError> {
                if arg.is_empty() {
                    Ok(())
                } else {
                    Err(err(
                        line_no,
                        format!("{keyword} takes no argument, found {arg:?}"),
                    ))
                }
            };
            let once = |set: bool| -> Result<(), ConfigError> {
                if set {
                    Err(err(line_no, format!("{keyword} given twice")))
                } else {
                    Ok(())
                }
            };
            match keyword {
                "dir" => {
                    once(dir.is_some())?;
                    let p = need_arg("a directory")?;
                    if !p.starts_with('/') {
                        return Err(err(line_no, format!("dir {p:?} must be an absolute path")));
                    }
                    if p.len() > 4096 - 10 {
                        return Err(err(line_no, "dir path is too long".into()));
                    }
                    dir = Some(Located {
                        value: PathBuf::from(p),
                        line: line_no,
                    });
                }
                "tag" => {
                    once(tag.is_some())?;
                    tag = Some(need_arg("a name")?.to_string());
                }
                "secctx" => {
                    once(secctx.is_some())?;
                    secctx = Some(need_arg("a security context")?.to_string());
                }
                "debug" => {
                    once(debug.is_some())?;
                    let a = need_arg("a mask")?;
                    debug = Some(parse_c_number(a).ok_or_else(|| {
                        err(line_no, format!("debug mask {a:?} is not a number"))
                    })?);
                }
                "culltable" => {
                    once(culltable.is_some())?;
                    let a = need_arg("a size (log2, 12..20)")?;
                    let v: u8 = a
                        .parse()
                        .map_err(|_| err(line_no, format!("culltable {a:?} is not a number")))?;
                    if !(12..=20).contains(&v) {
                        return Err(err(
                            line_no,
                            format!("culltable {v} is out of range 12..20"),
                        ));
                    }
                    culltable = Some(v);
                }
                "nocull" => {
                    no_arg()?;
                    nocull = true;
                }
                "resume_thresholds" => {
                    once(resume.is_some())?;
                    let a = need_arg("two values: <blocks|-> <files|->")?;
                    let parts: Vec<&str> = a.split_whitespace().collect();
                    if parts.len() != 2 {
                        return Err(err(line_no, format!("resume_thresholds needs two values <blocks|-> <files|->, found {a:?}")));
                    }
                    let value = |s: &str, what: &str| -> Result<Option<u64>, ConfigError> {
                        if s == "-" {
                            return Ok(None);
                        }
                        match s.parse::<u64>() {
                            Ok(0) => Err(err(
                                line_no,
                                format!("resume_thresholds {what} must not be 0"),
                            )),
                            Ok(v) => Ok(Some(v)),
                            Err(_) => Err(err(
                                line_no,
                                format!("resume_thresholds {what} {s:?} is not a number or -"),
                            )),
                        }
                    };
                    resume = Some((value(parts[0], "blocks")?, value(parts[1], "files")?));
                }
                "ondemand" => {
                    once(ondemand.is_some())?;
                    let p = need_arg("the path of a TOML source map")?;
                    ondemand = Some(Located {
                        value: PathBuf::from(p),
                        line: line_no,
                    });
                }
                "control" => {
                    once(control.is_some())?;
                    let p = need_arg("a socket path or none")?;
                    if p == "none" {
                        control = Some(None);
                    } else if p.starts_with('/') {
                        control = Some(Some(PathBuf::from(p)));
                    } else {
                        return Err(err(
                            line_no,
                            format!("control {p:?} must be an absolute path or none"),
                        ));
                    }
                }
                "bind" => {
                    return Err(err(
                        line_no,
                        "bind must not be given in the config: the daemon binds the cache itself"
                            .into(),
                    ));
                }
                word => {
                    let Some(limit) = Limit::from_keyword(word) else {
                        return Err(err(line_no, format!("unknown keyword {word:?}")));
                    };
                    let idx = limit as usize;
                    once(limits[idx].is_some())?;
                    let a = need_arg("a percentage like 10%")?;
                    let pct = a
                        .strip_suffix('%')
                        .and_then(|n| {
                            (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(n)
                        })
                        .and_then(|n| n.parse::<u8>().ok())
                        .filter(|&n| n < 100)
                        .ok_or_else(|| {
                            err(
                                line_no,
                                format!("{word} {a:?} must be a percentage from 0% to 99%"),
                            )
                        })?;
                    limits[idx] = Some(Located {
                        value: pct,
                        line: line_no,
                    });
                }
            }
        }

        let dir =
            dir.ok_or_else(|| err(0, "no dir line: the cache directory must be given".into()))?;
        let config = Config {
            path: path.to_path_buf(),
            dir,
            tag,
            secctx,
            debug,
            limits,
            culltable: culltable.unwrap_or(DEFAULT_CULLTABLE),
            nocull,
            resume_blocks: resume.and_then(|r| r.0),
            resume_files: resume.map_or(Some(DEFAULT_RESUME_FILES), |r| r.1),
            ondemand,
            control: control.unwrap_or_else(|| Some(PathBuf::from(crate::control::DEFAULT_PATH))),
        };
        config.check_limits()?;
        Ok(config)
    }

    /// The effective value of a limit: the file's, else the kernel's default.
    pub fn limit(&self, limit: Limit) -> u8 {
        self.limits[limit as usize]
            .as_ref()
            .map_or(limit.kernel_default(), |l| l.value)
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        for [run, cull, stop] in [
            [Limit::Brun, Limit::Bcull, Limit::Bstop],
            [Limit::Frun, Limit::Fcull, Limit::Fstop],
        ] {
            for (low, high) in [(cull, run), (stop, cull)] {
                let (lv, hv) = (self.limit(low), self.limit(high));
                if lv >= hv {
                    let line = [low, high]
                        .iter()
                        .filter_map(|l| self.limits[*l as usize].as_ref().map(|x| x.line))
                        .max()
                        .unwrap_or(0);
                    let shown = |l: Limit| {
                        if self.limits[l as usize].is_some() {
                            format!("{} {}%", l.keyword(), self.limit(l))
                        } else {
                            format!("{} {}% (kernel default)", l.keyword(), self.limit(l))
                        }
                    };
                    return Err(ConfigError {
                        path: self.path.clone(),
                        line,
                        message: format!("{} must be below {}", shown(low), shown(high)),
                    });
                }
            }
        }
        Ok(())
    }

    /// The commands that configure a freshly opened device, in an order the kernel accepts,
    /// ending with `bind`.
    pub fn commands(&self) -> Vec<Command> {
        let mut out = vec![Command::Dir(self.dir.value.as_os_str().as_bytes().to_vec())];
        if let Some(tag) = &self.tag {
            out.push(Command::Tag(tag.clone()));
        }
        if let Some(secctx) = &self.secctx {
            out.push(Command::Secctx(secctx.clone()));
        }
        if let Some(debug) = self.debug {
            out.push(Command::Debug(debug));
        }
        for family in [
            [Limit::Brun, Limit::Bcull, Limit::Bstop],
            [Limit::Frun, Limit::Fcull, Limit::Fstop],
        ] {
            let current = family.map(Limit::kernel_default);
            let target = family.map(|l| self.limit(l));
            out.extend(
                crate::proto::command::limit_order(current, target, family)
                    .expect("limits were checked when the config was parsed"),
            );
        }
        out.push(Command::Bind {
            ondemand: self.ondemand.is_some(),
        });
        out
    }
}

/// `strtoul(s, NULL, 0)` as the kernel's debug command reads it: decimal, 0x hex or 0 octal.
fn parse_c_number(s: &str) -> Option<u32> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(hex, 16).ok()
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8).ok()
    } else {
        s.parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/cachefilesd.conf"), text.as_bytes())
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn shipped_default_config() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/conf/cachefilesd.conf"
        ))
        .unwrap();
        let c = parse(&text).unwrap();
        assert_eq!(c.dir.value, PathBuf::from("/var/cache/fscache"));
        assert_eq!(c.tag.as_deref(), Some("mycache"));
        assert_eq!(c.secctx, None);
        assert_eq!(Limit::ALL.map(|l| c.limit(l)), [10, 7, 3, 10, 7, 3]);
        assert_eq!(c.culltable, 12);
        assert_eq!((c.resume_blocks, c.resume_files), (None, Some(5)));
        let cmds: Vec<String> = c.commands().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            cmds,
            [
                "dir /var/cache/fscache",
                "tag mycache",
                "brun 10%",
                "bcull 7%",
                "bstop 3%",
                "frun 10%",
                "fcull 7%",
                "fstop 3%",
                "bind"
            ]
        );
    }

    #[test]
    fn every_keyword() {
        let c = parse(
            "# comment\n\n  dir /cache  \ntag t\nsecctx system_u:system_r:cachefiles_kernel_t:s0\ndebug 0x10\n\
             brun 4%\nbcull 3%\nbstop 2%\nfrun 30%\nfcull 20%\nfstop 0%\nculltable 20\nnocull\n\
             resume_thresholds 1000 -\nondemand /etc/cachefilesd/ondemand.toml\n",
        )
        .unwrap();
        assert_eq!(
            c.dir,
            Located {
                value: PathBuf::from("/cache"),
                line: 3
            }
        );
        assert_eq!(c.debug, Some(16));
        assert_eq!(c.culltable, 20);
        assert!(c.nocull);
        assert_eq!((c.resume_blocks, c.resume_files), (Some(1000), None));
        assert_eq!(
            c.ondemand.as_ref().unwrap().value,
            PathBuf::from("/etc/cachefilesd/ondemand.toml")
        );
        let cmds: Vec<String> = c.commands().iter().map(|c| c.to_string()).collect();
        assert_eq!(
            cmds,
            [
                "dir /cache",
                "tag t",
                "secctx system_u:system_r:cachefiles_kernel_t:s0",
                "debug 16",
                "bstop 2%",
                "bcull 3%",
                "brun 4%",
                "frun 30%",
                "fcull 20%",
                "fstop 0%",
                "bind ondemand"
            ]
        );
        assert_eq!(parse("dir /c\ndebug 010").unwrap().debug, Some(8));
        assert_eq!(parse("dir /c\ncontrol none\n").unwrap().control, None);
        assert_eq!(
            parse("dir /c\ncontrol /run/x.sock\n").unwrap().control,
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            parse("dir /c\n").unwrap().control,
            Some(PathBuf::from("/run/cachefilesd/control.sock"))
        );
        // No trailing newline on the last line is accepted.
        assert_eq!(parse("dir /c").unwrap().dir.value, PathBuf::from("/c"));
    }

    #[test]
    fn every_error_names_its_line() {
        let cases = [
            ("dir /c\nbrun 5%\nbcull 7%\n", "/etc/cachefilesd.conf:3: bcull 7% must be below brun 5%"),
            ("dir /c\nbcull 7%\n", "/etc/cachefilesd.conf:2: bcull 7% must be below brun 7% (kernel default)"),
            ("dir /c\nfstop 6%\n", "/etc/cachefilesd.conf:2: fstop 6% must be below fcull 5% (kernel default)"),
            ("dir /c\nbrun 10\n", "/etc/cachefilesd.conf:2: brun \"10\" must be a percentage from 0% to 99%"),
            ("dir /c\nbrun 100%\n", "/etc/cachefilesd.conf:2: brun \"100%\" must be a percentage from 0% to 99%"),
            ("dir /c\nbrun -1%\n", "/etc/cachefilesd.conf:2: brun \"-1%\" must be a percentage from 0% to 99%"),
            ("dir /c\nbrun\n", "/etc/cachefilesd.conf:2: brun needs a percentage like 10%"),
            ("dir /c\nbind\n", "/etc/cachefilesd.conf:2: bind must not be given in the config: the daemon binds the cache itself"),
            ("dir /c\n\nfoo bar\n", "/etc/cachefilesd.conf:3: unknown keyword \"foo\""),
            ("dir /c\ndir /d\n", "/etc/cachefilesd.conf:2: dir given twice"),
            ("dir c\n", "/etc/cachefilesd.conf:1: dir \"c\" must be an absolute path"),
            ("tag x\n", "/etc/cachefilesd.conf: no dir line: the cache directory must be given"),
            ("dir /c\nculltable 11\n", "/etc/cachefilesd.conf:2: culltable 11 is out of range 12..20"),
            ("dir /c\nculltable x\n", "/etc/cachefilesd.conf:2: culltable \"x\" is not a number"),
            ("dir /c\nnocull yes\n", "/etc/cachefilesd.conf:2: nocull takes no argument, found \"yes\""),
            ("dir /c\nresume_thresholds 5\n", "/etc/cachefilesd.conf:2: resume_thresholds needs two values <blocks|-> <files|->, found \"5\""),
            ("dir /c\nresume_thresholds - 0\n", "/etc/cachefilesd.conf:2: resume_thresholds files must not be 0"),
            ("dir /c\nresume_thresholds x -\n", "/etc/cachefilesd.conf:2: resume_thresholds blocks \"x\" is not a number or -"),
            ("dir /c\ndebug z\n", "/etc/cachefilesd.conf:2: debug mask \"z\" is not a number"),
            ("dir /c\ntag\n", "/etc/cachefilesd.conf:2: tag needs a name"),
            ("dir /c\nsecctx\n", "/etc/cachefilesd.conf:2: secctx needs a security context"),
            ("dir /c\nondemand\n", "/etc/cachefilesd.conf:2: ondemand needs the path of a TOML source map"),
            ("dir /c\ncontrol sock\n", "/etc/cachefilesd.conf:2: control \"sock\" must be an absolute path or none"),
            ("dir /c\ntag a\0b\n", "/etc/cachefilesd.conf:2: line contains a NUL byte"),
        ];
        for (text, expected) in cases {
            assert_eq!(error(text), expected, "for {text:?}");
        }
        let not_utf8 =
            Config::parse(Path::new("/etc/cachefilesd.conf"), b"dir /c\ntag \xff\n").unwrap_err();
        assert_eq!(
            not_utf8.to_string(),
            "/etc/cachefilesd.conf:2: line is not valid UTF-8"
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            let _ = Config::parse(Path::new("x"), &bytes);
        }

        #[test]
        fn accepted_limits_are_always_sendable(v in proptest::array::uniform6(0u8..100)) {
            let text = format!("dir /c\nbrun {}%\nbcull {}%\nbstop {}%\nfrun {}%\nfcull {}%\nfstop {}%\n", v[0], v[1], v[2], v[3], v[4], v[5]);
            if let Ok(c) = parse(&text) {
                let cmds = c.commands();
                proptest::prop_assert_eq!(cmds.last(), Some(&Command::Bind { ondemand: false }));
            }
        }
    }
}
