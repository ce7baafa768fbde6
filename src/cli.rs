//! The command line of cachefilesd(8), parsed as its getopt does.
//!
//! `-d` (repeatable) `-s` `-n` `-N` `-f FILE` `-p FILE` `-v`/`--version` `--help`, plus `-t`
//! (check the config and exit). Short options may be bundled (`-dns`) and take their argument
//! attached or separate, as getopt allows.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub debug: u8,
    pub stderr: bool,
    pub no_daemon: bool,
    pub nocull: bool,
    pub config: PathBuf,
    pub pidfile: Option<PathBuf>,
    pub check_config: bool,
    /// Keep the device fd in a parent process and restart the worker with it.
    pub supervise: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Run(Options),
    Version,
    Help,
}

pub const USAGE: &str = "\
Usage: cachefilesd [-d]* [-s] [-n] [-N] [-t] [-f <configfile>] [-p <pidfile>]
       cachefilesd --supervise [options]
       cachefilesd -v | --version | --help

  -d         increase debugging level (repeatable)
  -s         log to stderr instead of syslog
  -n         do not daemonise (stay in the foreground)
  -N         disable culling and scanning
  -t         check the configuration file and exit
  -f FILE    configuration file (default /etc/cachefilesd.conf)
  -p FILE    pid file (default /var/run/cachefilesd.pid when daemonising)
  -v         print the version and exit
  --supervise  hold the device in a parent process and restart the daemon
             with it if it dies, so the cache survives the crash
";

pub const DEFAULT_PIDFILE: &str = "/var/run/cachefilesd.pid";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UsageError {
    #[error("unknown option {0:?}")]
    Unknown(String),
    #[error("option -{0} needs an argument")]
    MissingArgument(char),
    #[error("unexpected argument {0:?}")]
    Extra(String),
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Action, UsageError> {
    let mut o = Options {
        debug: 0,
        stderr: false,
        no_daemon: false,
        nocull: false,
        config: PathBuf::from(crate::config::DEFAULT_PATH),
        pidfile: None,
        check_config: false,
        supervise: false,
    };
    let mut args = args.into_iter().skip(1);
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        match bytes {
            b"--version" => return Ok(Action::Version),
            b"--help" => return Ok(Action::Help),
            b"--supervise" => {
                o.supervise = true;
                continue;
            }
            b"--" => {
                if let Some(extra) = args.next() {
                    return Err(UsageError::Extra(extra.to_string_lossy().into_owned()));
                }
                break;
            }
            _ if bytes.len() >= 2 && bytes[0] == b'-' && bytes[1] != b'-' => {}
            _ => {
                let shown = arg.to_string_lossy().into_owned();
                return Err(if bytes.starts_with(b"--") {
                    UsageError::Unknown(shown)
                } else {
                    UsageError::Extra(shown)
                });
            }
        }
        if let Some(action) = short_options(&mut o, bytes, &mut args)? {
            return Ok(action);
        }
    }
    Ok(Action::Run(o))
}

/// Applies one bundle of short options (`-dns`, `-fFILE`, `-f FILE`); `Some` for an option
/// that ends parsing (`-v`).
fn short_options(
    o: &mut Options,
    bytes: &[u8],
    args: &mut impl Iterator<Item = OsString>,
) -> Result<Option<Action>, UsageError> {
    let mut i = 1;
    while i < bytes.len() {
        let flag = bytes[i] as char;
        i += 1;
        match flag {
            'd' => o.debug = o.debug.saturating_add(1),
            's' => o.stderr = true,
            'n' => o.no_daemon = true,
            'N' => o.nocull = true,
            't' => o.check_config = true,
            'v' => return Ok(Some(Action::Version)),
            'f' | 'p' => {
                let value: OsString = if i < bytes.len() {
                    std::ffi::OsStr::from_bytes(&bytes[i..]).to_owned()
                } else {
                    args.next().ok_or(UsageError::MissingArgument(flag))?
                };
                i = bytes.len();
                if flag == 'f' {
                    o.config = value.into();
                } else {
                    o.pidfile = Some(value.into());
                }
            }
            other => return Err(UsageError::Unknown(format!("-{other}"))),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Action, UsageError> {
        parse(
            std::iter::once("cachefilesd")
                .chain(args.iter().copied())
                .map(OsString::from),
        )
    }

    #[test]
    fn getopt_compatible() {
        let Action::Run(o) = run(&["-ddns", "-N", "-f", "/tmp/c.conf", "-p/run/x.pid"]).unwrap()
        else {
            panic!()
        };
        assert_eq!(o.debug, 2);
        assert!(o.stderr && o.no_daemon && o.nocull && !o.check_config);
        assert_eq!(o.config, PathBuf::from("/tmp/c.conf"));
        assert_eq!(o.pidfile, Some(PathBuf::from("/run/x.pid")));
        let Action::Run(o) = run(&["-tf/etc/x"]).unwrap() else {
            panic!()
        };
        assert!(o.check_config);
        assert_eq!(o.config, PathBuf::from("/etc/x"));
        let Action::Run(o) = run(&[]).unwrap() else {
            panic!()
        };
        assert_eq!(o.config, PathBuf::from("/etc/cachefilesd.conf"));
        assert_eq!(o.pidfile, None);
        assert_eq!(run(&["-v"]).unwrap(), Action::Version);
        assert_eq!(run(&["--version"]).unwrap(), Action::Version);
        assert_eq!(run(&["--help"]).unwrap(), Action::Help);
    }

    #[test]
    fn usage_errors() {
        assert_eq!(run(&["-x"]).unwrap_err(), UsageError::Unknown("-x".into()));
        assert_eq!(run(&["-f"]).unwrap_err(), UsageError::MissingArgument('f'));
        assert_eq!(
            run(&["--frob"]).unwrap_err(),
            UsageError::Unknown("--frob".into())
        );
        assert_eq!(
            run(&["extra"]).unwrap_err(),
            UsageError::Extra("extra".into())
        );
    }
}
