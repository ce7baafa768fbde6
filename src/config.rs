//! cachefilesd.conf(5): parsed, validated, with every error naming file:line.
//!
//! Accepts what cachefilesd 0.10.10 accepts: the same keywords, `#` comments and blank lines,
//! a `bind` line refused, any bytes in comments and in paths (the C daemon hands lines to the
//! kernel verbatim, so a Latin-1 comment or directory name works there), and a keyword given
//! again (lines appended with `tee -a`): the last one wins, with a warning naming both lines.
//! Differences a user would only notice as kindness: surrounding whitespace is trimmed, a last
//! line without a newline is read, unknown keywords are reported at their line instead of by
//! the kernel, and `dir`/`tag`/`secctx` given twice (the kernel refuses the second one, so the
//! C daemon exits) follow the same last-wins rule as every other keyword.

use crate::proto::{Command, Limit};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/cachefilesd.conf";
/// cachefilesd's default culltable: 2^12 candidates.
pub const DEFAULT_CULLTABLE: u8 = 12;
/// cachefilesd's default: rescan after 5 released files; blocks ignored.
pub const DEFAULT_RESUME_FILES: u64 = 5;
/// The kernel rejects a write of a page or more; the C daemon refuses such a line too.
const MAX_LINE: usize = 4095;
/// cachefilesd's limit on the cache path: PATH_MAX - 10, room for the names below it.
const MAX_DIR: usize = 4096 - 10;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub path: PathBuf,
    /// Any bytes but NUL and newline, as the kernel takes them.
    pub dir: Located<PathBuf>,
    pub tag: Option<String>,
    /// An LSM label; bytes, passed to the kernel as written.
    pub secctx: Option<OsString>,
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
    /// Daemon-only: the HTTP scrape endpoint for the Prometheus metrics (`metrics_listen
    /// ADDR:PORT`), off unless given; loopback only unless `metrics_listen_public`.
    pub metrics_listen: Option<Located<std::net::SocketAddr>>,
    pub metrics_listen_public: bool,
    /// What the file says that the daemon accepts but the administrator should know about:
    /// to be logged at warning level once logging is up.
    pub warnings: Vec<ConfigWarning>,
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

/// A line the daemon accepts with a caveat, e.g. a keyword that overrides an earlier line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigWarning {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

/// Bytes from the file, quoted for a message: as `{:?}` shows text, with bytes that are not
/// UTF-8 as `\xNN`.
fn quoted(bytes: &[u8]) -> String {
    let mut out = String::from('"');
    for chunk in bytes.utf8_chunks() {
        out.extend(chunk.valid().escape_debug());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out.push('"');
    out
}

/// The C daemon's isspace() in the "C" locale.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r')
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

fn path_from(bytes: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(bytes))
}

/// The settings as read so far: a later line overwrites an earlier one.
#[derive(Default)]
struct Builder {
    dir: Option<Located<PathBuf>>,
    tag: Option<String>,
    secctx: Option<OsString>,
    debug: Option<u32>,
    limits: [Option<Located<u8>>; 6],
    culltable: Option<u8>,
    nocull: bool,
    resume: Option<(Option<u64>, Option<u64>)>,
    ondemand: Option<Located<PathBuf>>,
    control: Option<Option<PathBuf>>,
    metrics_listen: Option<Located<std::net::SocketAddr>>,
    metrics_listen_public: bool,
    /// The line each keyword was last given on, to name it when it comes again.
    seen: HashMap<&'static str, usize>,
    warnings: Vec<ConfigWarning>,
}

/// One non-comment line: its number, keyword and (trimmed) argument.
struct Line<'a> {
    no: usize,
    keyword: &'static str,
    arg: &'a [u8],
    path: &'a Path,
}

impl Line<'_> {
    fn err(&self, message: String) -> ConfigError {
        ConfigError {
            path: self.path.to_path_buf(),
            line: self.no,
            message,
        }
    }

    fn need_arg(&self, what: &str) -> Result<&[u8], ConfigError> {
        if self.arg.is_empty() {
            Err(self.err(format!("{} needs {what}", self.keyword)))
        } else {
            Ok(self.arg)
        }
    }

    /// A numeric argument: only ASCII can spell one.
    fn text_arg(&self, what: &str) -> Result<&str, ConfigError> {
        let arg = self.need_arg(what)?;
        std::str::from_utf8(arg)
            .ok()
            .filter(|s| s.is_ascii())
            .ok_or_else(|| self.err(format!("{} {} is not {what}", self.keyword, quoted(arg))))
    }

    fn absolute_path(&self, what: &str) -> Result<PathBuf, ConfigError> {
        let p = self.need_arg(what)?;
        if !p.starts_with(b"/") {
            return Err(self.err(format!(
                "{} {} must be an absolute path",
                self.keyword,
                quoted(p)
            )));
        }
        Ok(path_from(p))
    }
}

const KEYWORDS: [&str; 18] = [
    "dir",
    "tag",
    "secctx",
    "debug",
    "culltable",
    "nocull",
    "resume_thresholds",
    "ondemand",
    "control",
    "metrics_listen",
    "metrics_listen_public",
    "bind",
    "brun",
    "bcull",
    "bstop",
    "frun",
    "fcull",
    "fstop",
];

/// One raw line as (keyword, argument); `None` for a blank or comment line.
fn split_line(raw: &[u8]) -> Result<Option<(&'static str, &[u8])>, String> {
    if raw.contains(&0) {
        return Err("line contains a NUL byte".into());
    }
    if raw.len() >= MAX_LINE {
        return Err(format!("line is longer than {} bytes", MAX_LINE - 1));
    }
    let text = trim(raw);
    if text.is_empty() || text.starts_with(b"#") {
        return Ok(None);
    }
    let (word, arg) = match text.iter().position(|&c| is_space(c)) {
        Some(i) => (&text[..i], trim(&text[i..])),
        None => (text, &text[text.len()..]),
    };
    let Some(keyword) = KEYWORDS.into_iter().find(|k| k.as_bytes() == word) else {
        return Err(format!("unknown keyword {}", quoted(word)));
    };
    Ok(Some((keyword, arg)))
}

impl Builder {
    /// The config the lines gave, with the defaults for what they left out.
    fn finish(self, path: &Path) -> Result<Config, ConfigError> {
        let dir = self.dir.ok_or_else(|| ConfigError {
            path: path.to_path_buf(),
            line: 0,
            message: "no dir line: the cache directory must be given".into(),
        })?;
        if let Some(listen) = self.metrics_listen.as_ref() {
            if !listen.value.ip().is_loopback() && !self.metrics_listen_public {
                return Err(ConfigError {
                    path: path.to_path_buf(),
                    line: listen.line,
                    message: format!(
                        "metrics_listen {} is not a loopback address: the metrics would be open to the network; add a line `metrics_listen_public` to mean it",
                        listen.value
                    ),
                });
            }
        }
        Ok(Config {
            path: path.to_path_buf(),
            dir,
            tag: self.tag,
            secctx: self.secctx,
            debug: self.debug,
            limits: self.limits,
            culltable: self.culltable.unwrap_or(DEFAULT_CULLTABLE),
            nocull: self.nocull,
            resume_blocks: self.resume.and_then(|r| r.0),
            resume_files: self.resume.map_or(Some(DEFAULT_RESUME_FILES), |r| r.1),
            ondemand: self.ondemand,
            control: self
                .control
                .unwrap_or_else(|| Some(PathBuf::from(crate::control::DEFAULT_PATH))),
            metrics_listen: self.metrics_listen,
            metrics_listen_public: self.metrics_listen_public,
            warnings: self.warnings,
        })
    }

    fn line(&mut self, line: &Line) -> Result<(), ConfigError> {
        self.warn_if_repeated(line);
        match line.keyword {
            "dir" => {
                self.dir = Some(Located {
                    value: dir(line)?,
                    line: line.no,
                });
            }
            "tag" => self.tag = Some(tag(line)?),
            "secctx" => {
                let arg = line.need_arg("a security context")?;
                self.secctx = Some(OsStr::from_bytes(arg).to_owned());
            }
            "debug" => {
                let a = line.text_arg("a mask")?;
                self.debug = Some(
                    parse_c_number(a)
                        .ok_or_else(|| line.err(format!("debug mask {a:?} is not a number")))?,
                );
            }
            "culltable" => self.culltable = Some(culltable(line)?),
            "nocull" => {
                if !line.arg.is_empty() {
                    return Err(line.err(format!(
                        "nocull takes no argument, found {}",
                        quoted(line.arg)
                    )));
                }
                self.nocull = true;
            }
            "resume_thresholds" => self.resume = Some(resume_thresholds(line)?),
            "ondemand" => {
                let p = line.need_arg("the path of a TOML source map")?;
                self.ondemand = Some(Located {
                    value: path_from(p),
                    line: line.no,
                });
            }
            "control" => self.control = Some(control(line)?),
            "metrics_listen" => {
                let a = line.text_arg("ADDR:PORT, e.g. 127.0.0.1:9401")?;
                let addr = a.parse().map_err(|_| {
                    line.err(format!(
                        "metrics_listen {a:?} is not ADDR:PORT (e.g. 127.0.0.1:9401 or [::1]:9401)"
                    ))
                })?;
                self.metrics_listen = Some(Located {
                    value: addr,
                    line: line.no,
                });
            }
            "metrics_listen_public" => {
                if !line.arg.is_empty() {
                    return Err(line.err(format!(
                        "metrics_listen_public takes no argument, found {}",
                        quoted(line.arg)
                    )));
                }
                self.metrics_listen_public = true;
            }
            "bind" => {
                return Err(line.err(
                    "bind must not be given in the config: the daemon binds the cache itself"
                        .into(),
                ));
            }
            word => {
                let limit = Limit::from_keyword(word).expect("KEYWORDS lists only known words");
                self.limits[limit as usize] = Some(Located {
                    value: percentage(line)?,
                    line: line.no,
                });
            }
        }
        Ok(())
    }

    /// A keyword given again: the later line wins, as in the C daemon, with a warning.
    fn warn_if_repeated(&mut self, line: &Line) {
        if line.keyword == "bind" {
            return;
        }
        if let Some(before) = self.seen.insert(line.keyword, line.no) {
            self.warnings.push(ConfigWarning {
                path: line.path.to_path_buf(),
                line: line.no,
                message: format!(
                    "{} given again (before at {}:{before}): the later line is used",
                    line.keyword,
                    line.path.display()
                ),
            });
        }
    }
}

fn dir(line: &Line) -> Result<PathBuf, ConfigError> {
    let value = line.absolute_path("a directory")?;
    if line.arg.len() > MAX_DIR {
        return Err(line.err("dir path is too long".into()));
    }
    Ok(value)
}

fn tag(line: &Line) -> Result<String, ConfigError> {
    let arg = line.need_arg("a name")?;
    // Carried as text in reports and metrics.
    let tag = std::str::from_utf8(arg)
        .map_err(|_| line.err(format!("tag {} is not valid UTF-8", quoted(arg))))?;
    Ok(tag.to_string())
}

fn culltable(line: &Line) -> Result<u8, ConfigError> {
    let a = line.text_arg("a size (log2, 12..20)")?;
    let v: u8 = a
        .parse()
        .map_err(|_| line.err(format!("culltable {a:?} is not a number")))?;
    if !(12..=20).contains(&v) {
        return Err(line.err(format!("culltable {v} is out of range 12..20")));
    }
    Ok(v)
}

/// `control PATH` or `control none` (no socket).
fn control(line: &Line) -> Result<Option<PathBuf>, ConfigError> {
    if line.need_arg("a socket path or none")? == b"none" {
        return Ok(None);
    }
    let path = line.absolute_path("a socket path or none").map_err(|_| {
        line.err(format!(
            "control {} must be an absolute path or none",
            quoted(line.arg)
        ))
    })?;
    Ok(Some(path))
}

/// A limit's `N%`, 0 to 99.
fn percentage(line: &Line) -> Result<u8, ConfigError> {
    let a = line.text_arg("a percentage like 10%").ok();
    let pct = a
        .and_then(|a| a.strip_suffix('%'))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u8>().ok())
        .filter(|&n| n < 100);
    let Some(pct) = pct else {
        line.need_arg("a percentage like 10%")?;
        return Err(line.err(format!(
            "{} {} must be a percentage from 0% to 99%",
            line.keyword,
            quoted(line.arg)
        )));
    };
    Ok(pct)
}

fn resume_thresholds(line: &Line) -> Result<(Option<u64>, Option<u64>), ConfigError> {
    let a = line.text_arg("two values: <blocks|-> <files|->")?;
    let parts: Vec<&str> = a.split_ascii_whitespace().collect();
    if parts.len() != 2 {
        return Err(line.err(format!(
            "resume_thresholds needs two values <blocks|-> <files|->, found {a:?}"
        )));
    }
    let value = |s: &str, what: &str| -> Result<Option<u64>, ConfigError> {
        if s == "-" {
            return Ok(None);
        }
        match s.parse::<u64>() {
            Ok(0) => Err(line.err(format!("resume_thresholds {what} must not be 0"))),
            Ok(v) => Ok(Some(v)),
            Err(_) => Err(line.err(format!(
                "resume_thresholds {what} {s:?} is not a number or -"
            ))),
        }
    };
    Ok((value(parts[0], "blocks")?, value(parts[1], "files")?))
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
        let mut b = Builder::default();
        let mut lines = bytes.split(|&b| b == b'\n').enumerate().peekable();
        while let Some((index, raw)) = lines.next() {
            let no = index + 1;
            if raw.is_empty() && lines.peek().is_none() {
                break;
            }
            let Some((keyword, arg)) = split_line(raw).map_err(|message| err(no, message))? else {
                continue;
            };
            b.line(&Line {
                no,
                keyword,
                arg,
                path,
            })?;
        }
        let config = b.finish(path)?;
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
            out.push(Command::Secctx(secctx.as_bytes().to_vec()));
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
        assert!(c.warnings.is_empty());
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
        assert_eq!(parse("dir /c\n").unwrap().metrics_listen, None);
        let m = parse("dir /c\nmetrics_listen [::1]:9401\n").unwrap();
        assert_eq!(
            m.metrics_listen.unwrap().value,
            "[::1]:9401".parse().unwrap()
        );
        let public = "dir /c\nmetrics_listen 0.0.0.0:9401\n";
        assert_eq!(
            error(public),
            "/etc/cachefilesd.conf:2: metrics_listen 0.0.0.0:9401 is not a loopback address: the metrics would be open to the network; add a line `metrics_listen_public` to mean it"
        );
        let c = parse(&format!("metrics_listen_public\n{public}")).unwrap();
        assert!(c.metrics_listen_public);
        assert!(error("dir /c\nmetrics_listen localhost\n").contains("is not ADDR:PORT"));
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
        let bytes_cases: [(&[u8], &str); 4] = [
            (
                b"dir /c\ntag \xff\n",
                "/etc/cachefilesd.conf:2: tag \"\\xff\" is not valid UTF-8",
            ),
            (
                b"dir /c\nbr\xfcn 5%\n",
                "/etc/cachefilesd.conf:2: unknown keyword \"br\\xfcn\"",
            ),
            (
                b"dir /c\nbrun 5\xff\n",
                "/etc/cachefilesd.conf:2: brun \"5\\xff\" must be a percentage from 0% to 99%",
            ),
            (
                b"dir /c\nculltable 1\xb2\n",
                "/etc/cachefilesd.conf:2: culltable \"1\\xb2\" is not a size (log2, 12..20)",
            ),
        ];
        for (bytes, expected) in bytes_cases {
            let e = Config::parse(Path::new("/etc/cachefilesd.conf"), bytes).unwrap_err();
            assert_eq!(e.to_string(), expected, "for {bytes:?}");
        }
    }

    /// An administrator's file as `tee -a` leaves it: a limit and the cache directory given
    /// again further down. The C daemon passes every line to the kernel, so the last limit
    /// is the one in force; we do the same, and say so.
    #[test]
    fn repeated_keyword_last_wins_with_a_warning_naming_both_lines() {
        let c = parse(
            "dir /var/cache/fscache\ntag mycache\nbrun 10%\nbcull 7%\nbstop 3%\n\
             brun 20%\nnocull\nnocull\ndir /srv/fscache\nbrun 25%\nculltable 13\nculltable 14\n",
        )
        .unwrap();
        assert_eq!(c.limit(Limit::Brun), 25);
        assert_eq!(c.limits[Limit::Brun as usize].as_ref().unwrap().line, 10);
        assert_eq!(
            c.dir,
            Located {
                value: PathBuf::from("/srv/fscache"),
                line: 9
            }
        );
        assert_eq!(c.culltable, 14);
        assert!(c.nocull);
        let warnings: Vec<String> = c.warnings.iter().map(|w| w.to_string()).collect();
        assert_eq!(
            warnings,
            [
                "/etc/cachefilesd.conf:6: brun given again (before at /etc/cachefilesd.conf:3): the later line is used",
                "/etc/cachefilesd.conf:8: nocull given again (before at /etc/cachefilesd.conf:7): the later line is used",
                "/etc/cachefilesd.conf:9: dir given again (before at /etc/cachefilesd.conf:1): the later line is used",
                "/etc/cachefilesd.conf:10: brun given again (before at /etc/cachefilesd.conf:6): the later line is used",
                "/etc/cachefilesd.conf:12: culltable given again (before at /etc/cachefilesd.conf:11): the later line is used",
            ]
        );
        let cmds: Vec<String> = c.commands().iter().map(|c| c.to_string()).collect();
        assert_eq!(cmds[0], "dir /srv/fscache");
        assert!(cmds.contains(&"brun 25%".to_string()), "{cmds:?}");
        assert!(!cmds.contains(&"brun 20%".to_string()), "{cmds:?}");
        // The range check sees the values in force, not an overridden one.
        assert_eq!(
            error("dir /c\nbrun 10%\nbcull 7%\nbrun 6%\n"),
            "/etc/cachefilesd.conf:4: bcull 7% must be below brun 6%"
        );
        assert!(parse("dir /c\nbcull 9%\nbrun 8%\nbrun 12%\n").is_ok());
    }

    #[test]
    fn comments_may_hold_any_bytes() {
        let c = Config::parse(
            Path::new("/etc/cachefilesd.conf"),
            b"# Cache f\xfcr die Workstation (Latin-1)\n  #\xff\xfe\ndir /c\n\t# caf\xe9\nbrun 9%\n",
        )
        .unwrap();
        assert_eq!(c.dir.value, PathBuf::from("/c"));
        assert_eq!(c.limit(Limit::Brun), 9);
        assert!(c.warnings.is_empty());
    }

    /// The kernel takes the cache path and the security label as bytes; so does the C daemon.
    #[test]
    fn paths_and_secctx_are_bytes() {
        let c = Config::parse(
            Path::new("/etc/cachefilesd.conf"),
            b"dir /srv/caf\xe9\nsecctx system_u:object_r:\xe9_t:s0\nondemand /etc/m\xe4p.toml\ncontrol /run/s\xf6ck\n",
        )
        .unwrap();
        assert_eq!(c.dir.value.as_os_str().as_bytes(), b"/srv/caf\xe9");
        assert_eq!(
            c.secctx.as_deref().map(OsStr::as_bytes),
            Some(&b"system_u:object_r:\xe9_t:s0"[..])
        );
        assert_eq!(
            c.ondemand.unwrap().value.as_os_str().as_bytes(),
            b"/etc/m\xe4p.toml"
        );
        assert_eq!(c.control.unwrap().as_os_str().as_bytes(), b"/run/s\xf6ck");
        let c = Config::parse(
            Path::new("/etc/cachefilesd.conf"),
            b"dir /srv/caf\xe9\nsecctx l\xe9\n",
        )
        .unwrap();
        let bytes: Vec<Vec<u8>> = c.commands().iter().map(|c| c.to_bytes().unwrap()).collect();
        assert_eq!(
            bytes,
            [
                b"dir /srv/caf\xe9".to_vec(),
                b"secctx l\xe9".to_vec(),
                b"bind".to_vec()
            ]
        );
        assert_eq!(
            Config::parse(Path::new("/etc/cachefilesd.conf"), b"dir caf\xe9\n")
                .unwrap_err()
                .to_string(),
            "/etc/cachefilesd.conf:1: dir \"caf\\xe9\" must be an absolute path"
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
